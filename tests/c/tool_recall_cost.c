/* tool_recall_cost CONTEXT [LAYERS KV_HEADS GROUP HEAD_DIM BUDGET THREADS REPS]: where the time of one recall
 * goes, on a synthetic cache of a model's shape (default: the default model's, 30 layers, 3 KV heads of 64 dims,
 * 3 query heads each; budget 1024 + interval 128; 2 threads) after CONTEXT tokens: the cache full, tier 2 holding
 * the other CONTEXT - budget - 128 rows of every (layer, KV head), 32 queries in the ring. Prints, medians of REPS
 * (default 3): the whole recall (tri_kv_recall, R = 256, per_head sharing) on THREADS threads and on one, the
 * scoring alone on one thread (tri_kv_recall_scores over every (layer, KV head): the rest of the one-thread recall
 * is choosing and swapping), tier-2 bytes, and appending every tier-2 row (the quantisation the compaction rounds
 * pay over the context). Random rows: what is chosen does not matter, the
 * work does not depend on it. */
#include "kv_cache.h"
#include "kv_recall.h"
#include "kv_select.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

static uint64_t rng = 88172645463325252ull;
static float rnd(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float) ((double) (rng >> 11) * 0x1.0p-53 * 2.0 - 1.0);
}

static int cmp(const void * a, const void * b) {
    const double x = *(const double *) a, y = *(const double *) b;
    return (x > y) - (x < y);
}

int main(int argc, char ** argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: tool_recall_cost CONTEXT [LAYERS KV_HEADS GROUP HEAD_DIM BUDGET THREADS REPS]\n");
        return 1;
    }
    const int ctx = atoi(argv[1]);
    const int L = argc > 2 ? atoi(argv[2]) : 30, HKV = argc > 3 ? atoi(argv[3]) : 3, G = argc > 4 ? atoi(argv[4]) : 3;
    const int D = argc > 5 ? atoi(argv[5]) : 64, B = argc > 6 ? atoi(argv[6]) : 1024;
    const int TH = argc > 7 ? atoi(argv[7]) : 2, REPS = argc > 8 ? atoi(argv[8]) : 3, cap = B + 128;
    if (ctx <= cap || L <= 0 || HKV <= 0 || G <= 0 || D <= 0 || D > 512 || REPS <= 0 || REPS > 64) {
        fprintf(stderr, "tool_recall_cost: need CONTEXT > budget + 128 and sane sizes\n");
        return 1;
    }
    char err[256];
    tri_threadpool * tp = tri_threadpool_create(TH), * tp1 = tri_threadpool_create(1);
    double t_all[64], t_one[64], t_sc[64], t_app[64];
    uint64_t t2_bytes = 0;
    int64_t recalled = 0;
    for (int rep = 0; rep < 2 * REPS; rep++) {
        tri_threadpool * pool = rep % 2 ? tp1 : tp;   /* the recall on THREADS threads, then on one */
        tri_kv_cache c;
        if (tri_kv_cache_init(&c, L, HKV, D, cap, err, sizeof err) != TRIATTN_OK ||
            tri_kv_cache_enable_tier2(&c, ctx, 0, err, sizeof err) != TRIATTN_OK ||
            tri_kv_cache_enable_queries(&c, TRI_RECALL_QUERIES, HKV * G * D, err, sizeof err) != TRIATTN_OK) {
            fprintf(stderr, "tool_recall_cost: %s\n", err);
            return 1;
        }
        /* tier 2: positions [4, ctx - cap + 4), the cache: the 4 sink positions and the last cap - 4 */
        static tri_fp16 k[97][512], v[97][512];   /* rows cycled through (a prime count, so heads differ) */
        for (int r = 0; r < 97; r++) {
            for (int d = 0; d < D; d++) {
                k[r][d] = tri_fp32_to_fp16(rnd() * 2.0f);
                v[r][d] = tri_fp32_to_fp16(rnd());
            }
        }
        const double a0 = now_ms();
        for (int32_t p = 4, r = 0; p < ctx - cap + 4; p++) {
            for (int i = 0; i < L * HKV; i++, r = (r + 1) % 97) {
                tri_kv_tier2_append(c.t2, i / HKV, i % HKV, p, k[r], v[r]);
            }
        }
        t_app[rep / 2] = now_ms() - a0;
        for (int i = 0; i < L * HKV; i++) {
            int32_t * pos = tri_kv_pos(&c, i / HKV, i % HKV);
            for (int32_t j = 0; j < cap; j++) {
                pos[j] = j < 4 ? j : ctx - cap + j;
            }
            for (size_t x = 0; x < (size_t) cap * D; x++) {
                tri_kv_k(&c, i / HKV, i % HKV)[x] = tri_fp32_to_fp16(rnd() * 2.0f);
                tri_kv_v(&c, i / HKV, i % HKV)[x] = tri_fp32_to_fp16(rnd());
            }
            c.n_live[i] = cap;
        }
        float * q = malloc(sizeof(float) * (size_t) HKV * G * D);
        for (int il = 0; il < L; il++) {
            for (int t = 0; t < TRI_RECALL_QUERIES; t++) {
                for (int d = 0; d < HKV * G * D; d++) {
                    q[d] = rnd() * 3.0f;
                }
                tri_kv_push_query(&c, il, q, ctx - TRI_RECALL_QUERIES + t);
            }
        }
        free(q);
        t2_bytes = tri_kv_tier2_bytes(c.t2);
        /* the scoring alone, one thread over every (layer, KV head) */
        const size_t n_rows = (size_t) cap + (size_t) tri_kv_tier2_head(c.t2, 0, 0)->n_pages * TRI_T2_PAGE_ROWS;
        float * out = malloc(sizeof(float) * n_rows), * scratch = malloc(sizeof(float) * tri_kv_recall_scratch(&c, G, n_rows));
        double s0 = now_ms();
        for (int i = 0; i < L * HKV; i++) {
            tri_kv_recall_scores(&c, i / HKV, i % HKV, G, 0.125f, out, scratch);
        }
        t_sc[rep / 2] = now_ms() - s0;
        free(out);
        free(scratch);
        tri_kv_policy p;
        memset(&p, 0, sizeof p);
        p.cfg = (tri_kv_policy_cfg) { .n_ctx = ctx, .budget = B, .interval = 128, .window = 128, .sink = 4 };
        p.share = TRI_KV_SHARE_LAYERS;
        s0 = now_ms();
        if (tri_kv_recall(&c, &p, G, 0.125f, 256, 128, pool, &recalled, err, sizeof err) != TRIATTN_OK) {
            fprintf(stderr, "tool_recall_cost: %s\n", err);
            return 1;
        }
        (rep % 2 ? t_one : t_all)[rep / 2] = now_ms() - s0;
        tri_kv_cache_free(&c);
    }
    qsort(t_all, (size_t) REPS, sizeof(double), cmp);
    qsort(t_one, (size_t) REPS, sizeof(double), cmp);
    qsort(t_sc, (size_t) REPS, sizeof(double), cmp);
    qsort(t_app, (size_t) REPS, sizeof(double), cmp);
    const double full_f16 = (double) ctx * L * HKV * D * 4.0;
    printf("context %d, %d layers x %d KV heads (G %d, dim %d), budget %d: recall %.1f ms on %d threads, %.1f ms on one "
           "(scoring %.1f ms, choice and swaps %.1f ms), %lld rows recalled; tier 2 %.1f MiB = %.1f%% of full "
           "attention's F16 K+V; appending every tier-2 row %.1f ms (one thread)\n",
           ctx, L, HKV, G, D, B, t_all[REPS / 2], TH, t_one[REPS / 2], t_sc[REPS / 2], t_one[REPS / 2] - t_sc[REPS / 2],
           (long long) recalled, t2_bytes / 1048576.0, 100.0 * t2_bytes / full_f16, t_app[REPS / 2]);
    tri_threadpool_free(tp);
    tri_threadpool_free(tp1);
    return 0;
}
