/* Baseline KV policies (src/kv_baselines.c, docs/triattention.md §6): the keep rule of each on hand-built caches
 * whose answer is known (streaming keeps sink + recent, random is seeded, h2o keeps what earlier queries
 * attended to, snapkv what the window attends to, rkv drops a duplicated key), float64 oracles of the SnapKV and
 * R-KV scores and of the h2o / snapkv / rkv keep sets on random data, and (with TRI_DEFAULT_MODEL) a real session
 * per policy. Random inputs, fresh seed each run (TRI_TEST_SEED reproduces one). */
#include "kv_cache.h"
#include "kv_select.h"
#include "model.h"
#include "session.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test_util.h"

/* ---- fixture: a policy on a synthetic cache ------------------------------------------------------- */

typedef struct fx {
    struct triattn_model m;  /* only hp is read by the baselines */
    tri_kv_cache c;
    tri_kv_policy p;
    tri_threadpool * tp;
    int L, H, Hkv, G, D;
} fx;

static bool fx_init(fx * f, const char * name, int L, int H, int Hkv, int D, int budget, int interval, int window,
                    int sink, uint64_t seed) {
    memset(f, 0, sizeof *f);
    f->L = L; f->H = H; f->Hkv = Hkv; f->G = H / Hkv; f->D = D;
    f->m.hp.n_layer = L;
    f->m.hp.n_head = H;
    f->m.hp.n_head_kv = Hkv;
    f->m.hp.head_dim = D;
    f->m.hp.rope_dim = D;
    f->p.ops = tri_kv_policy_find(name);
    CHECK(f->p.ops != NULL, "policy '%s' is not registered", name);
    if (!f->p.ops) {
        return false;
    }
    f->p.cfg = (tri_kv_policy_cfg) { .n_ctx = 1 << 20, .budget = budget, .interval = interval, .window = window,
                                     .sink = sink, .seed = seed };
    char err[256];
    const int cap = f->p.ops->capacity(&f->p.cfg);
    CHECK(cap == budget + interval, "%s: capacity %d != budget + interval", name, cap);
    enum triattn_status st = tri_kv_cache_init(&f->c, L, Hkv, D, cap, err, sizeof err);
    CHECK(st == TRIATTN_OK, "cache: %s", err);
    f->tp = tri_threadpool_create(2);
    f->p.model = &f->m;
    f->p.tp = f->tp;
    st = f->p.ops->init(&f->p, &f->c, err, sizeof err);
    CHECK(st == TRIATTN_OK, "%s init: %s", name, err);
    return st == TRIATTN_OK;
}

static void fx_free(fx * f) {
    if (f->p.ops && f->p.ops->free) {
        f->p.ops->free(&f->p);
    }
    tri_threadpool_free(f->tp);
    tri_kv_cache_free(&f->c);
}

/* Appends a token at position pos to (il, h) with key k (D floats) and a random value row. */
static void fx_append(fx * f, int il, int h, int32_t pos, const float * k) {
    int32_t * live = &f->c.n_live[tri_kv_index(&f->c, il, h)];
    tri_fp16 * K = tri_kv_k(&f->c, il, h) + (size_t) *live * f->D;
    tri_fp16 * V = tri_kv_v(&f->c, il, h) + (size_t) *live * f->D;
    for (int d = 0; d < f->D; d++) {
        K[d] = tri_fp32_to_fp16(k[d]);
        V[d] = tri_fp32_to_fp16((float) tu_symmetric());
    }
    tri_kv_pos(&f->c, il, h)[*live] = pos;
    (*live)++;
}

static void rand_vec(float * x, int n, double scale) {
    for (int i = 0; i < n; i++) {
        x[i] = (float) (scale * tu_normal());
    }
}

static int32_t fx_live(const fx * f, int il, int h) {
    return f->c.n_live[tri_kv_index(&f->c, il, h)];
}

/* Snapshot of every (layer, KV head)'s positions and K rows, to check compaction moved rows intact. */
typedef struct snap {
    int32_t * pos;   /* [LK][cap] */
    tri_fp16 * k;    /* [LK][cap][D] */
    int32_t * n;     /* [LK] */
} snap;

static snap snap_take(const fx * f) {
    const size_t LK = (size_t) f->L * f->Hkv, cap = f->c.capacity;
    snap s = { malloc(sizeof(int32_t) * LK * cap), malloc(sizeof(tri_fp16) * LK * cap * f->D),
               malloc(sizeof(int32_t) * LK) };
    memcpy(s.pos, f->c.pos, sizeof(int32_t) * LK * cap);
    memcpy(s.k, f->c.k, sizeof(tri_fp16) * LK * cap * f->D);
    memcpy(s.n, f->c.n_live, sizeof(int32_t) * LK);
    return s;
}

static void snap_free(snap * s) {
    free(s->pos); free(s->k); free(s->n);
}

/* Kept slots: increasing positions, each one's K row equal to its row before compaction. */
static void check_compacted(const fx * f, const snap * s, const char * what) {
    int order = 0, rows = 0;
    for (int i = 0; i < f->L * f->Hkv; i++) {
        const int il = i / f->Hkv, h = i % f->Hkv;
        const int32_t n = fx_live(f, il, h);
        const int32_t * pos = tri_kv_pos(&f->c, il, h);
        const int32_t * old = s->pos + (size_t) i * f->c.capacity;
        for (int32_t j = 0; j < n; j++) {
            order += j > 0 && pos[j] <= pos[j - 1];
            const int32_t o = tri_kv_count_below(old, s->n[i], pos[j]);
            rows += o >= s->n[i] || old[o] != pos[j] ||
                    memcmp(tri_kv_k(&f->c, il, h) + (size_t) j * f->D,
                           s->k + ((size_t) i * f->c.capacity + o) * f->D, sizeof(tri_fp16) * f->D) != 0;
        }
    }
    CHECK(order == 0, "%s: kept positions not increasing (%d)", what, order);
    CHECK(rows == 0, "%s: %d kept K rows differ from their rows before compaction", what, rows);
}

static bool kept(const fx * f, int il, int h, int32_t p) {
    const int32_t n = fx_live(f, il, h);
    const int32_t * pos = tri_kv_pos(&f->c, il, h);
    const int32_t o = tri_kv_count_below(pos, n, p);
    return o < n && pos[o] == p;
}

/* ---- streaming ------------------------------------------------------------------------------------ */

static void test_streaming(int n_prompt) {
    const int L = 2, H = 4, Hkv = 2, D = 16, sink = 4, window = 8 + (int) tu_below(8);
    const int budget = 40 + (int) tu_below(40), interval = 8 + (int) tu_below(24);
    fx f;
    if (!fx_init(&f, "streaming", L, H, Hkv, D, budget, interval, window, sink, 1)) {
        fx_free(&f);
        return;
    }
    f.p.n_prompt = n_prompt;
    float k[16];
    int32_t p = 0;
    for (int j = 0; j < budget + interval; j++) {
        for (int i = 0; i < L * Hkv; i++) {
            rand_vec(k, D, 1.0);
            fx_append(&f, i / Hkv, i % Hkv, p, k);
        }
        p += 1 + (j >= n_prompt ? (int) tu_below(3) : 0); /* gaps: earlier rounds */
    }
    CHECK(f.p.ops->should_compress(&f.p, &f.c), "streaming: should_compress at budget + interval");
    snap s = snap_take(&f);
    char err[256];
    CHECK(f.p.ops->compress(&f.p, &f.c, p, err, sizeof err) == TRIATTN_OK, "streaming compress: %s", err);
    check_compacted(&f, &s, "streaming");
    /* kept = the first sink + (the prompt when it is shorter than budget - window) + the most recent rest */
    const int head = n_prompt > 0 && n_prompt < budget - window ? TRI_MAX(sink, n_prompt) : sink;
    int bad = 0;
    for (int i = 0; i < L * Hkv; i++) {
        const int32_t n = fx_live(&f, i / Hkv, i % Hkv), old_n = s.n[i];
        bad += n != budget;
        for (int32_t j = 0; j < old_n; j++) {
            const bool want = j < head || j >= old_n - (budget - head);
            bad += kept(&f, i / Hkv, i % Hkv, s.pos[(size_t) i * f.c.capacity + j]) != want;
        }
    }
    CHECK(bad == 0, "streaming (prompt %d): %d slots differ from sink + prompt + most recent", n_prompt, bad);
    CHECK(f.p.n_compressions == 1 && f.p.n_evicted == interval, "streaming counters: %lld rounds %lld evicted",
          (long long) f.p.n_compressions, (long long) f.p.n_evicted);
    CHECK(!f.p.ops->should_compress(&f.p, &f.c), "streaming: should_compress after compress");
    snap_free(&s);
    fx_free(&f);
}

/* ---- random --------------------------------------------------------------------------------------- */

/* Fills f with the same cache for every seed (keys from a fixed local stream), compresses, returns the kept
 * positions of every (layer, KV head), concatenated. */
static int32_t * random_round(uint64_t seed, int budget, int interval, int * n_out) {
    const int L = 2, H = 2, Hkv = 2, D = 8;
    fx f;
    *n_out = 0;
    if (!fx_init(&f, "random", L, H, Hkv, D, budget, interval, 8, 4, seed)) {
        fx_free(&f);
        return NULL;
    }
    float k[8] = { 1, -1, 0.5f, 2, -0.25f, 1, 3, -2 };
    for (int j = 0; j < budget + interval; j++) {
        for (int i = 0; i < L * Hkv; i++) {
            fx_append(&f, i / Hkv, i % Hkv, j, k);
        }
    }
    char err[256];
    CHECK(f.p.ops->compress(&f.p, &f.c, budget + interval, err, sizeof err) == TRIATTN_OK, "random: %s", err);
    int32_t * out = malloc(sizeof(int32_t) * L * Hkv * budget);
    int bad = 0;
    for (int i = 0; i < L * Hkv; i++) {
        const int32_t n = fx_live(&f, i / Hkv, i % Hkv);
        bad += n != budget;
        const int32_t * pos = tri_kv_pos(&f.c, i / Hkv, i % Hkv);
        for (int j = 0; j < n && j < budget; j++) {
            out[(*n_out)++] = pos[j];
            bad += j > 0 && pos[j] <= pos[j - 1];
        }
        for (int j = 0; j < 4; j++) bad += pos[j] != j;                                   /* sink */
        for (int j = 0; j < 8; j++) bad += pos[n - 1 - j] != budget + interval - 1 - j;   /* window */
    }
    CHECK(bad == 0, "random: %d problems (count != budget, order, sink or window evicted)", bad);
    fx_free(&f);
    return out;
}

static void test_random(void) {
    const int budget = 48 + (int) tu_below(32), interval = 16 + (int) tu_below(16);
    const uint64_t s1 = tu_u64() >> 1, s2 = s1 + 1 + tu_below(1000);
    int n1, n2, n3;
    int32_t * a = random_round(s1, budget, interval, &n1);
    int32_t * b = random_round(s1, budget, interval, &n2);
    int32_t * c = random_round(s2, budget, interval, &n3);
    if (a && b && c) {
        CHECK(n1 == n2 && memcmp(a, b, sizeof(int32_t) * n1) == 0, "random: the same seed must keep the same slots");
        CHECK(n1 != n3 || memcmp(a, c, sizeof(int32_t) * n1) != 0, "random: seeds %llu and %llu kept the same slots",
              (unsigned long long) s1, (unsigned long long) s2);
        /* not simply the most recent candidates, and different (layer, KV head)s differ */
        int recent = 1;
        for (int j = 4; j < budget - 8; j++) recent &= a[j] == interval + j;
        CHECK(!recent, "random kept exactly the most recent candidates");
        CHECK(memcmp(a, a + budget, sizeof(int32_t) * budget) != 0, "random: two KV heads kept the same slots");
        /* uniform: over many draws every candidate is kept with probability k / n; the mean kept position
         * of the candidates lies near the middle of the candidate range */
        double mean = 0;
        int cnt = 0;
        for (int i = 0; i < n1; i++) {
            if (a[i] >= 4 && a[i] < budget + interval - 8) { mean += a[i]; cnt++; }
        }
        mean /= cnt;
        const double mid = (4 + budget + interval - 9) / 2.0, sd = (budget + interval) / sqrt(12.0 * cnt);
        CHECK(fabs(mean - mid) < 6 * sd, "random: mean kept position %.1f far from the middle %.1f", mean, mid);
    }
    free(a); free(b); free(c);
}

/* ---- float64 oracles ------------------------------------------------------------------------------ */

static double f16d(tri_fp16 x) {
    return (double) tri_fp16_to_fp32(x);
}

/* SnapKV signal of keys [0, n - nq) in double (see kv_select.h). */
static void ref_snapkv(int D, int G, const float * q, int nq, const tri_fp16 * K, int n, double * out) {
    const int m = n - nq;
    double * mean = calloc(m, sizeof(double)), * lg = malloc(sizeof(double) * m);
    for (int t = 0; t < nq; t++) {
        double mx = -INFINITY, sum = 0;
        for (int j = 0; j < m; j++) {
            lg[j] = -INFINITY;
            for (int g = 0; g < G; g++) {
                double dot = 0;
                for (int d = 0; d < D; d++) dot += (double) q[((size_t) t * G + g) * D + d] * f16d(K[(size_t) j * D + d]);
                lg[j] = tu_max(lg[j], dot / sqrt((double) D));
            }
            mx = tu_max(mx, lg[j]);
        }
        for (int j = 0; j < m; j++) sum += exp(lg[j] - mx);
        for (int j = 0; j < m; j++) mean[j] += exp(lg[j] - mx) / sum / nq;
    }
    for (int j = 0; j < m; j++) {
        out[j] = -INFINITY;
        for (int d = -3; d <= 3; d++) {
            if (j + d >= 0 && j + d < m) out[j] = tu_max(out[j], mean[j + d]);
        }
    }
    free(mean); free(lg);
}

static double ref_cos(int D, const tri_fp16 * a, const tri_fp16 * b) {
    double na = 0, nb = 0, dot = 0;
    for (int d = 0; d < D; d++) {
        na += f16d(a[d]) * f16d(a[d]);
        nb += f16d(b[d]) * f16d(b[d]);
        dot += f16d(a[d]) * f16d(b[d]);
    }
    return dot / ((sqrt(na) + 1e-8) * (sqrt(nb) + 1e-8));
}

/* R-KV redundancy in double, straight from the definition (n x n matrix). */
static void ref_redundancy(int D, const tri_fp16 * K, int n, double * out) {
    double * cs = malloc(sizeof(double) * n * n);
    for (int i = 0; i < n; i++) {
        for (int j = 0; j < n; j++) cs[(size_t) i * n + j] = i == j ? 0.0 : ref_cos(D, K + (size_t) i * D, K + (size_t) j * D);
        for (int j = n - 1; j >= 0; j--) {
            if (j != i && cs[(size_t) i * n + j] > 0.5) { cs[(size_t) i * n + j] = 0.0; break; }
        }
    }
    double mx = -INFINITY, sum = 0;
    for (int j = 0; j < n; j++) {
        out[j] = 0;
        for (int i = 0; i < n; i++) out[j] += cs[(size_t) i * n + j] / n;
        mx = tu_max(mx, out[j]);
    }
    for (int j = 0; j < n; j++) sum += exp(out[j] - mx);
    for (int j = 0; j < n; j++) out[j] = exp(out[j] - mx) / sum;
    free(cs);
}

/* Random keys with a shared offset (many near-duplicates) and exact copies, no pair's cosine within 2e-3 of the
 * 0.5 threshold (so float and double agree on every near-duplicate). */
static void dup_keys(int D, int n, tri_fp16 * K) {
    float * off = malloc(sizeof(float) * D), * k = malloc(sizeof(float) * D);
    rand_vec(off, D, 0.6);
    for (int j = 0; j < n; j++) {
        for (int tries = 0; tries < 200; tries++) {
            if (j > 0 && tu_uniform() < 0.15) {
                const int src = (int) tu_below(j);
                for (int d = 0; d < D; d++) k[d] = tri_fp16_to_fp32(K[(size_t) src * D + d]) * (float) (1 + 0.2 * tu_uniform());
            } else {
                for (int d = 0; d < D; d++) k[d] = off[d] + (float) tu_normal();
            }
            for (int d = 0; d < D; d++) K[(size_t) j * D + d] = tri_fp32_to_fp16(k[d]);
            bool ok = true;
            for (int i = 0; i < j && ok; i++) ok = fabs(ref_cos(D, K + (size_t) i * D, K + (size_t) j * D) - 0.5) > 2e-3;
            if (ok) break;
        }
    }
    free(off); free(k);
}

static void test_oracle_scores(void) {
    const tri_attn_kernels kr = tri_attn_kernels_get(TRI_ISA_COUNT);
    const tri_attn_kernels kref = tri_attn_kernels_get(TRI_ISA_SCALAR);
    for (int rep = 0; rep < 6; rep++) {
        const int D = rep % 2 ? 64 : 16 + 8 * (int) tu_below(3), G = 1 + (int) tu_below(4);
        const int n = 20 + (int) tu_below(300), nq = 1 + (int) tu_below(TRI_SNAPKV_WINDOW);
        const tri_attn_kernels * k = rep % 3 == 2 ? &kref : &kr;
        tri_fp16 * K = malloc(sizeof(tri_fp16) * n * D);
        float * q = malloc(sizeof(float) * nq * G * D);
        dup_keys(D, n, K);
        rand_vec(q, nq * G * D, 1.0 + 2 * tu_uniform());
        float * out = malloc(sizeof(float) * n), * scratch = malloc(sizeof(float) * (tri_snapkv_scratch(n, G) + tri_rkv_scratch(n, D)));
        double * ref = malloc(sizeof(double) * n);
        tri_snapkv_scores(k, D, G, q, nq, K, n, out, scratch);
        ref_snapkv(D, G, q, nq, K, n, ref);
        double err = 0, mx = 0;
        for (int j = 0; j < n - nq; j++) { err = tu_max(err, fabs(out[j] - ref[j])); mx = tu_max(mx, ref[j]); }
        CHECK(err <= 1e-5 * mx + 1e-9, "snapkv scores (D %d G %d n %d w %d): max error %.3g of %.3g", D, G, n, nq, err, mx);
        tri_rkv_redundancy(k, D, K, n, out, scratch);
        ref_redundancy(D, K, n, ref);
        err = 0; mx = 0;
        for (int j = 0; j < n; j++) { err = tu_max(err, fabs(out[j] - ref[j])); mx = tu_max(mx, ref[j]); }
        CHECK(err <= 1e-5 * mx, "rkv redundancy (D %d n %d): max error %.3g of %.3g", D, n, err, mx);
        free(K); free(q); free(out); free(scratch); free(ref);
    }
}

/* ---- keep sets against the oracle on random data -------------------------------------------------- */

/* Checks the kept candidates [lo, hi) of (il, h) (snapshot s) against the top k of score (double): a
 * candidate may differ from the oracle only within tol of the cut. Returns the number of disagreements. */
static int check_topk(const fx * f, const snap * s, int i, int lo, int hi, int k, const double * score, double tol) {
    const int n = hi - lo, il = i / f->Hkv, h = i % f->Hkv;
    double cut_in = INFINITY, cut_out = -INFINITY;
    int bad = 0;
    uint8_t * want = malloc(n);
    for (int j = 0; j < n; j++) {
        int above = 0;
        for (int x = 0; x < n; x++) above += score[x] > score[j] || (score[x] == score[j] && x > j);
        want[j] = above < k;
        if (want[j]) cut_in = fmin(cut_in, score[j]); else cut_out = tu_max(cut_out, score[j]);
    }
    for (int j = 0; j < n; j++) {
        const bool got = kept(f, il, h, s->pos[(size_t) i * f->c.capacity + lo + j]);
        const bool near = fabs(score[j] - cut_in) <= tol || fabs(score[j] - cut_out) <= tol;
        bad += got != (want[j] != 0) && !near;
    }
    free(want);
    return bad;
}

/* h2o / snapkv / rkv on a random cache with random queries in the ring: one round, checked against the oracle. */
static void test_oracle_policy(const char * name) {
    const int L = 2, Hkv = 2, G = 1 + (int) tu_below(3), H = Hkv * G, D = 64, sink = 4, window = 8;
    const int budget = 40 + (int) tu_below(40), interval = 16 + (int) tu_below(16);
    fx f;
    if (!fx_init(&f, name, L, H, Hkv, D, budget, interval, window, sink, 7)) {
        fx_free(&f);
        return;
    }
    const bool h2o = strcmp(name, "h2o") == 0, rkv = strcmp(name, "rkv") == 0;
    const int live = budget + interval;
    float * k = malloc(sizeof(float) * D), * q = malloc(sizeof(float) * H * D);
    int32_t p = 0;
    for (int j = 0; j < live; j++) {
        for (int il = 0; il < L; il++) {
            for (int h = 0; h < Hkv; h++) {
                rand_vec(k, D, 1.0);
                if (rkv && j > 0 && tu_uniform() < 0.2) { /* near-duplicates of an earlier key */
                    const tri_fp16 * src = tri_kv_k(&f.c, il, h) + (size_t) tu_below(j) * D;
                    for (int d = 0; d < D; d++) k[d] = tri_fp16_to_fp32(src[d]) + (float) (0.05 * tu_normal());
                }
                fx_append(&f, il, h, p, k);
            }
            rand_vec(q, H * D, 2.0);
            tri_kv_push_query(&f.c, il, q, p); /* every token's query, as the forward pass does */
        }
        p += 1 + (int) tu_below(2);
    }
    snap s = snap_take(&f);
    char err[256];
    CHECK(f.p.ops->compress(&f.p, &f.c, p, err, sizeof err) == TRIATTN_OK, "%s: %s", name, err);
    check_compacted(&f, &s, name);
    int bad = 0, count = 0;
    double * score = malloc(sizeof(double) * live), * a = malloc(sizeof(double) * live), * red = malloc(sizeof(double) * live);
    double * lg = malloc(sizeof(double) * live);
    for (int i = 0; i < L * Hkv; i++) {
        const int il = i / Hkv, h = i % Hkv;
        const tri_fp16 * K = s.k + (size_t) i * f.c.capacity * D;
        const int32_t * pos = s.pos + (size_t) i * f.c.capacity;
        const int lo = sink, hi = live - window, kk = budget - sink - window;
        count += fx_live(&f, il, h) != budget;
        double tol;
        if (h2o) {
            /* queries still in the ring: the last q_cap ones (only the round's, since none were counted before) */
            memset(a, 0, sizeof(double) * live);
            const int64_t cnt = f.c.q_count[il];
            for (int64_t t = TRI_MAX(0, cnt - f.c.q_cap); t < cnt; t++) {
                const size_t e = (size_t) il * f.c.q_cap + (size_t) (t % f.c.q_cap);
                const float * qq = f.c.q + e * f.c.q_dim + (size_t) h * G * D;
                const int32_t qp = f.c.q_pos[e];
                for (int g = 0; g < G; g++) {
                    double mx = -INFINITY, sum = 0;
                    int nv = 0;
                    while (nv < live && pos[nv] <= qp) nv++;
                    for (int j = 0; j < nv; j++) {
                        double dot = 0;
                        for (int d = 0; d < D; d++) dot += (double) qq[g * D + d] * f16d(K[(size_t) j * D + d]);
                        lg[j] = dot / sqrt((double) D);
                        mx = tu_max(mx, lg[j]);
                    }
                    for (int j = 0; j < nv; j++) sum += exp(lg[j] - mx);
                    for (int j = 0; j < nv; j++) a[j] += exp(lg[j] - mx) / sum;
                }
            }
            for (int j = lo; j < hi; j++) score[j - lo] = a[j];
            tol = 1e-5 * f.c.q_cap * G;
        } else {
            float * wq = malloc(sizeof(float) * TRI_SNAPKV_WINDOW * G * D);
            const int64_t cnt = f.c.q_count[il];
            for (int t = 0; t < TRI_SNAPKV_WINDOW; t++) {
                const size_t e = (size_t) il * f.c.q_cap + (size_t) ((cnt - TRI_SNAPKV_WINDOW + t) % f.c.q_cap);
                memcpy(wq + (size_t) t * G * D, f.c.q + e * f.c.q_dim + (size_t) h * G * D, sizeof(float) * G * D);
            }
            ref_snapkv(D, G, wq, TRI_SNAPKV_WINDOW, K, live, a);
            if (rkv) ref_redundancy(D, K, live, red);
            for (int j = lo; j < hi; j++) score[j - lo] = rkv ? 0.1 * a[j] - 0.9 * red[j] : a[j];
            tol = 1e-5;
            free(wq);
        }
        bad += check_topk(&f, &s, i, lo, hi, kk, score, tol);
    }
    CHECK(count == 0, "%s: live slots after compress != budget", name);
    CHECK(bad == 0, "%s (G %d budget %d interval %d): %d kept candidates differ from the float64 oracle", name, G,
          budget, interval, bad);
    free(score); free(a); free(red); free(lg); free(k); free(q);
    snap_free(&s);
    fx_free(&f);
}

/* ---- hand-built cases --------------------------------------------------------------------------- */

static void rand_unit(float * u, int D) {
    double n = 0;
    rand_vec(u, D, 1.0);
    for (int d = 0; d < D; d++) n += (double) u[d] * u[d];
    for (int d = 0; d < D; d++) u[d] = (float) (u[d] / sqrt(n));
}

/* snapkv: in every (layer, KV head) one random query head of the group has all 8 window queries along a
 * direction u that a few targets share; everything else is random. SnapKV keeps exactly the candidates within
 * 3 slots of a target (kernel-7 max-pool), whatever the other heads of the group do (GQA max). */
static void test_snapkv_hand(void) {
    const int L = 2, Hkv = 2, G = 1 + (int) tu_below(3), H = Hkv * G, D = 16, sink = 4, window = 8;
    const int nt = 2 + (int) tu_below(4), interval = 16 + (int) tu_below(24), budget = sink + window + 7 * nt;
    fx f;
    if (!fx_init(&f, "snapkv", L, H, Hkv, D, budget, interval, window, sink, 1)) {
        fx_free(&f);
        return;
    }
    const int live = budget + interval, lo = sink, hi = live - window, seg = (hi - lo) / nt;
    int gstar[8];
    float u[8][16], k[16], q[8 * 16];
    int32_t * tgt = malloc(sizeof(int32_t) * L * Hkv * nt);
    for (int i = 0; i < L * Hkv; i++) {
        gstar[i] = (int) tu_below(G);
        rand_unit(u[i], D);
        for (int t = 0; t < nt; t++) tgt[i * nt + t] = lo + t * seg + 3 + (int) tu_below(seg - 6); /* 7 slots in its segment */
    }
    for (int j = 0; j < live; j++) {
        for (int il = 0; il < L; il++) {
            for (int h = 0; h < Hkv; h++) {
                const int i = il * Hkv + h;
                bool is_t = false;
                for (int t = 0; t < nt; t++) is_t |= tgt[i * nt + t] == j;
                rand_vec(k, D, 1.0);
                if (is_t) for (int d = 0; d < D; d++) k[d] = 8.0f * u[i][d] + (float) (0.1 * tu_normal());
                fx_append(&f, il, h, j, k);
            }
            rand_vec(q, H * D, 1.0);
            if (j >= live - window) {
                for (int h = 0; h < Hkv; h++) {
                    float * qh = q + (size_t) (h * G + gstar[il * Hkv + h]) * D;
                    for (int d = 0; d < D; d++) qh[d] = 8.0f * u[il * Hkv + h][d] + (float) (0.1 * tu_normal());
                }
            }
            tri_kv_push_query(&f.c, il, q, j);
        }
    }
    snap s = snap_take(&f);
    char err[256];
    CHECK(f.p.ops->compress(&f.p, &f.c, live, err, sizeof err) == TRIATTN_OK, "snapkv: %s", err);
    check_compacted(&f, &s, "snapkv hand");
    int bad = 0;
    for (int i = 0; i < L * Hkv; i++) {
        bad += fx_live(&f, i / Hkv, i % Hkv) != budget;
        for (int j = lo; j < hi; j++) {
            bool want = false;
            for (int t = 0; t < nt; t++) want |= abs(j - tgt[i * nt + t]) <= 3;
            bad += kept(&f, i / Hkv, i % Hkv, j) != want;
        }
    }
    CHECK(bad == 0, "snapkv (G %d, %d targets): %d slots differ from the targets' pooled neighbourhoods", G, nt, bad);
    free(tgt);
    snap_free(&s);
    fx_free(&f);
}

/* h2o: round 1's queries attend to targets T1 -> T1 kept; round 2's queries attend almost uniformly -> T1 is
 * still kept thanks to the accumulated attention (which must follow the compacted slots); after a cache clear,
 * a new target set T3 is kept (no stale state). */
static void h2o_fill(fx * f, int32_t p0, int n, const int32_t * tgt, int nt, const float (*u)[16], bool attend) {
    float k[16], q[8 * 16];
    const int Hkv = f->Hkv, G = f->G, D = f->D;
    for (int j = 0; j < n; j++) {
        const int32_t p = p0 + j;
        for (int il = 0; il < f->L; il++) {
            for (int h = 0; h < Hkv; h++) {
                const int i = il * Hkv + h;
                bool is_t = false;
                for (int t = 0; tgt && t < nt; t++) is_t |= tgt[i * nt + t] == p;
                rand_vec(k, D, 0.5);
                if (is_t) for (int d = 0; d < D; d++) k[d] = 6.0f * u[i][d] + (float) (0.1 * tu_normal());
                fx_append(f, il, h, p, k);
            }
            rand_vec(q, f->H * D, 0.3);
            if (attend) {
                for (int h = 0; h < Hkv; h++) {
                    for (int g = 0; g < G; g++) {
                        for (int d = 0; d < D; d++) q[(h * G + g) * D + d] = 6.0f * u[il * Hkv + h][d] + (float) (0.1 * tu_normal());
                    }
                }
            }
            tri_kv_push_query(&f->c, il, q, p);
        }
    }
}

static int h2o_check(const fx * f, const int32_t * tgt, int nt, int lo_pos, int hi_pos) {
    int bad = 0;
    for (int i = 0; i < f->L * f->Hkv; i++) {
        bad += fx_live(f, i / f->Hkv, i % f->Hkv) != f->p.cfg.budget;
        int n_kept_t = 0;
        for (int t = 0; t < nt; t++) n_kept_t += kept(f, i / f->Hkv, i % f->Hkv, tgt[i * nt + t]);
        bad += n_kept_t != nt;
        /* and nothing else among the candidates */
        int others = 0;
        for (int p = lo_pos; p < hi_pos; p++) others += kept(f, i / f->Hkv, i % f->Hkv, p);
        bad += others != nt;
    }
    return bad;
}

static void test_h2o_hand(void) {
    const int L = 2, Hkv = 2, G = 1 + (int) tu_below(3), H = Hkv * G, D = 16, sink = 4, window = 8;
    const int nt = 3 + (int) tu_below(6), interval = 16 + (int) tu_below(16), budget = sink + window + nt;
    fx f;
    if (!fx_init(&f, "h2o", L, H, Hkv, D, budget, interval, window, sink, 1)) {
        fx_free(&f);
        return;
    }
    const int live = budget + interval;
    float u[8][16];
    int32_t * tgt = malloc(sizeof(int32_t) * L * Hkv * nt);
    char err[256];
    for (int round = 0; round < 2; round++) {
        /* targets among the candidates that every query of the round (the last `interval` tokens) can see */
        for (int i = 0; i < L * Hkv; i++) {
            rand_unit(u[i], D);
            for (int t = 0; t < nt; t++) {
                int32_t p;
                bool dup;
                do {
                    p = sink + (int32_t) tu_below(live - interval - sink);
                    dup = false;
                    for (int x = 0; x < t; x++) dup |= tgt[i * nt + x] == p;
                } while (dup);
                tgt[i * nt + t] = p;
            }
        }
        if (round == 1) {
            tri_kv_cache_clear(&f.c);
        }
        h2o_fill(&f, 0, live - interval, tgt, nt, (const float (*)[16]) u, false);
        h2o_fill(&f, live - interval, interval, tgt, nt, (const float (*)[16]) u, true);
        snap s = snap_take(&f);
        CHECK(f.p.ops->compress(&f.p, &f.c, live, err, sizeof err) == TRIATTN_OK, "h2o: %s", err);
        check_compacted(&f, &s, "h2o hand");
        CHECK(h2o_check(&f, tgt, nt, sink, live - window) == 0, "h2o round 1%s (G %d, %d targets): kept != targets",
              round ? " after a cache clear" : "", G, nt);
        snap_free(&s);
        if (round == 0) {
            /* round 2: near-uniform attention; the accumulated attention keeps T1 */
            h2o_fill(&f, live, interval, NULL, 0, (const float (*)[16]) u, false);
            s = snap_take(&f);
            CHECK(f.p.ops->compress(&f.p, &f.c, live + interval, err, sizeof err) == TRIATTN_OK, "h2o: %s", err);
            check_compacted(&f, &s, "h2o hand round 2");
            CHECK(h2o_check(&f, tgt, nt, sink, live + interval - window) == 0,
                  "h2o round 2 (G %d, %d targets): the accumulated attention must keep round 1's targets", G, nt);
            snap_free(&s);
        }
    }
    free(tgt);
    fx_free(&f);
}

/* rkv: every key = c u + r o_j with orthonormal o_j (pairwise cosine 0.2, below the 0.5 threshold) and window
 * queries along u, so every key gets the same attention; key X appears three times (X1 < X2 < X3), Y once.
 * Redundancy ranks X1 > X2 > everything else, so evicting one token drops X1 (Y, with the same attention, stays),
 * evicting two drops X1 and X2. */
static void test_rkv_hand(int n_evict) {
    const int L = 1, Hkv = 2, G = 2, H = Hkv * G, D = 64, sink = 4, window = 8;
    const int nc = 20 + (int) tu_below(20), budget = sink + window + nc - n_evict, interval = n_evict;
    fx f;
    if (!fx_init(&f, "rkv", L, H, Hkv, D, budget, interval, window, sink, 1)) {
        fx_free(&f);
        return;
    }
    const int live = budget + interval, lo = sink, hi = live - window;
    /* orthonormal basis: u = b[0], directions b[1..] */
    float (*b)[64] = malloc(sizeof(float) * 64 * 64);
    for (int x = 0; x <= live; x++) { /* u and one direction per slot */
        for (;;) {
            rand_vec(b[x], D, 1.0);
            for (int y = 0; y < x; y++) {
                double dot = 0;
                for (int d = 0; d < D; d++) dot += (double) b[x][d] * b[y][d];
                for (int d = 0; d < D; d++) b[x][d] -= (float) (dot * b[y][d]);
            }
            double n2 = 0;
            for (int d = 0; d < D; d++) n2 += (double) b[x][d] * b[x][d];
            if (n2 > 1e-2) {
                for (int d = 0; d < D; d++) b[x][d] = (float) (b[x][d] / sqrt(n2));
                break;
            }
        }
    }
    int slot[4]; /* X1, X2, X3, Y: distinct random candidates, X's in increasing order */
    for (int a = 0; a < 4; a++) {
        bool dup;
        do {
            slot[a] = lo + (int) tu_below(hi - lo);
            dup = false;
            for (int x = 0; x < a; x++) dup |= slot[x] == slot[a];
        } while (dup);
    }
    for (int a = 0; a < 3; a++) for (int x = a + 1; x < 3; x++) if (slot[x] < slot[a]) { int t = slot[a]; slot[a] = slot[x]; slot[x] = t; }
    const float c = 0.5f, r = 1.0f, beta = (float) (1 + 3 * tu_uniform());
    float k[64], q[4 * 64];
    for (int j = 0; j < live; j++) {
        int dir = 1 + j;
        if (j == slot[1] || j == slot[2]) dir = 1 + slot[0]; /* copies of X1 */
        for (int h = 0; h < Hkv; h++) {
            for (int d = 0; d < D; d++) k[d] = c * b[0][d] + r * b[dir][d];
            fx_append(&f, 0, h, j, k);
        }
        rand_vec(q, H * D, 1.0);
        if (j >= live - TRI_SNAPKV_WINDOW) for (int d = 0; d < H * D; d++) q[d] = beta * b[0][d % D];
        tri_kv_push_query(&f.c, 0, q, j);
    }
    snap s = snap_take(&f);
    char err[256];
    CHECK(f.p.ops->compress(&f.p, &f.c, live, err, sizeof err) == TRIATTN_OK, "rkv: %s", err);
    check_compacted(&f, &s, "rkv hand");
    int bad = 0;
    for (int h = 0; h < Hkv; h++) {
        bad += fx_live(&f, 0, h) != budget;
        for (int j = 0; j < live; j++) {
            const bool want = !(j == slot[0] || (n_evict == 2 && j == slot[1]));
            bad += kept(&f, 0, h, j) != want;
        }
    }
    CHECK(bad == 0, "rkv evicting %d (X at %d %d %d, Y at %d): %d slots differ (must drop the oldest copies of X)",
          n_evict, slot[0], slot[1], slot[2], slot[3], bad);
    free(b);
    snap_free(&s);
    fx_free(&f);
}

/* ---- cost of one round at budget 2048 (TRI_BENCH_BASELINES=1) --------------------------------------- */

/* Appends the file at <repo>/<rel> (located from this source file's path) to buf; returns the new length. */
static size_t read_repo_file(const char * rel, char * buf, size_t len, size_t cap) {
    char path[1024];
    const char * f = __FILE__, * cut = strstr(f, "tests/c/");
    if (!cut) return len;
    snprintf(path, sizeof path, "%.*s%s", (int) (cut - f), f, rel);
    FILE * fp = fopen(path, "rb");
    if (!fp) return len;
    len += fread(buf + len, 1, cap - 1 - len, fp);
    buf[len] = '\0';
    fclose(fp);
    return len;
}

static double median3(double a, double b, double c) {
    return a > b ? (b > c ? b : a > c ? c : a) : (a > c ? a : b > c ? c : b);
}

/* Copies the live slots and the newest ring entries of src into dst (other capacities and ring sizes). */
static void copy_cache(tri_kv_cache * dst, const tri_kv_cache * src) {
    const size_t D = src->head_dim;
    for (int il = 0; il < src->n_layer; il++) {
        for (int h = 0; h < src->n_head_kv; h++) {
            const int32_t n = TRI_MIN(src->n_live[tri_kv_index(src, il, h)], dst->capacity);
            memcpy(tri_kv_k(dst, il, h), tri_kv_k(src, il, h), sizeof(tri_fp16) * n * D);
            memcpy(tri_kv_v(dst, il, h), tri_kv_v(src, il, h), sizeof(tri_fp16) * n * D);
            memcpy(tri_kv_pos(dst, il, h), tri_kv_pos(src, il, h), sizeof(int32_t) * n);
            dst->n_live[tri_kv_index(dst, il, h)] = n;
        }
        if (dst->q_cap > 0) {
            const int64_t cnt = src->q_count[il];
            for (int64_t t = TRI_MAX(0, cnt - dst->q_cap); t < cnt; t++) {
                const size_t es = (size_t) il * src->q_cap + (size_t) (t % src->q_cap);
                const size_t ed = (size_t) il * dst->q_cap + (size_t) (t % dst->q_cap);
                memcpy(dst->q + ed * dst->q_dim, src->q + es * src->q_dim, sizeof(float) * src->q_dim);
                dst->q_pos[ed] = src->q_pos[es];
            }
            dst->q_count[il] = cnt;
        }
    }
}

/* Real keys and queries: the docs of this repository prefilled into a full-attention session (2 threads) up to
 * budget + interval tokens; then, per policy, the same cache and query ring are copied into a session of that
 * policy and one round is timed (median of 3), next to the decode time of `interval` tokens at that depth. */
static void bench_rounds(void) {
    const int budget = 2048, interval = 128, live = budget + interval;
    /* the model again, with its TriAttention sidecar from the Python package, to time `triattention` too */
    char side[1024];
    const char * f = __FILE__, * cut = strstr(f, "tests/c/");
    snprintf(side, sizeof side, "%.*spython/pytriattn/data/SmolLM2-135M-Instruct.Q4_1.tri-stats.gguf",
             cut ? (int) (cut - f) : 0, f);
    struct triattn_model_params mp;
    triattn_model_params_init(&mp);
    FILE * fs = fopen(side, "rb");
    if (fs) { fclose(fs); mp.calibration_path = side; }
    triattn_model * m = NULL;
    char lerr[1024];
    if (triattn_model_load(getenv("TRI_DEFAULT_MODEL"), &mp, &m, lerr, sizeof lerr) != TRIATTN_OK) {
        CHECK(0, "bench model: %s", lerr);
        return;
    }
    const size_t cap = 1 << 20;
    char * text = malloc(cap);
    size_t len = 0;
    text[0] = '\0';
    const char * files[] = { "docs/engine.md", "docs/triattention-engine.md", "README.md", "docs/gguf-keys.md" };
    for (int i = 0; i < 4; i++) len = read_repo_file(files[i], text, len, cap);
    triattn_token * toks = malloc(sizeof(triattn_token) * (len + 16 + live + interval));
    int32_t nt = 0;
    triattn_tokenize(m, text, (int32_t) len, true, false, toks, (int32_t) (len + 16), &nt);
    for (; nt < live + interval; nt++) toks[nt] = (triattn_token) tu_below(1000) + 1000; /* pad when short */
    struct triattn_session_params sp;
    triattn_session_params_init(&sp);
    sp.n_threads = 2;
    sp.n_ctx = live + interval;
    sp.kv_policy = "full";
    triattn_session * full = NULL;
    char err[512];
    if (triattn_session_create(m, &sp, &full, err, sizeof err) != TRIATTN_OK ||
        tri_kv_cache_enable_queries(&full->kv, interval, full->kv.q_dim ? full->kv.q_dim : m->hp.n_head * m->hp.head_dim,
                                    err, sizeof err) != TRIATTN_OK) {
        CHECK(0, "bench session: %s", err);
        triattn_session_free(full); triattn_model_free(m); free(text); free(toks);
        return;
    }
    triattn_session_decode(full, toks, live, false);
    double t0 = tri_time_ms();
    for (int i = 0; i < interval; i++) triattn_session_decode(full, toks + live + i, 1, false);
    const double decode_ms = tri_time_ms() - t0;
    triattn_session_reset(full); /* refill: the cache now holds exactly budget + interval tokens */
    triattn_session_decode(full, toks, live, false);
    printf("decode of %d tokens at depth %d (full, 2 threads): %.0f ms\n", interval, live, decode_ms);
    const char * names[6] = { "streaming", "random", "h2o", "snapkv", "rkv", "triattention" };
    for (int i = 0; i < 6; i++) {
        if (i == 5 && !m->centres) break;
        sp = full->params;
        sp.n_ctx = 1 << 20;
        sp.kv_policy = names[i];
        sp.kv_budget = budget;
        sp.kv_interval = interval;
        sp.kv_window = -1;
        sp.kv_mode = NULL;
        triattn_session * s = NULL;
        if (triattn_session_create(m, &sp, &s, err, sizeof err) != TRIATTN_OK) { CHECK(0, "%s: %s", names[i], err); continue; }
        double ms[3];
        for (int r = 0; r < 3; r++) {
            tri_kv_cache_clear(&s->kv); /* a fresh sequence: per-slot policy state starts over */
            copy_cache(&s->kv, &full->kv);
            s->policy.n_prompt = live;
            t0 = tri_time_ms();
            enum triattn_status st = s->policy.ops->compress(&s->policy, &s->kv, live, err, sizeof err);
            ms[r] = tri_time_ms() - t0;
            int32_t lo, hi;
            tri_kv_cache_live_range(&s->kv, &lo, &hi);
            CHECK(st == TRIATTN_OK && hi == budget, "bench %s: %s, live %d", names[i], err, hi);
        }
        const double med = median3(ms[0], ms[1], ms[2]);
        printf("round at budget %d, interval %d, 2 threads: %-12s %7.1f ms (%.1f%% of decoding %d tokens)\n", budget,
               interval, names[i], med, 100.0 * med / decode_ms, interval);
        triattn_session_free(s);
    }
    triattn_session_free(full);
    triattn_model_free(m);
    free(text); free(toks);
}

/* ---- the real model ------------------------------------------------------------------------------ */

static const char * k_text =
    "In the beginning God created the heaven and the earth. And the earth was without form, and void; and darkness "
    "was upon the face of the deep. And the Spirit of God moved upon the face of the waters. And God said, Let there "
    "be light: and there was light. And God saw the light, that it was good: and God divided the light from the "
    "darkness. And God called the light Day, and the darkness he called Night.";

static void test_real_model(void) {
    triattn_model * m = tu_load_default_model("baselines on the real model");
    if (!m) {
        return;
    }
    triattn_token toks[256];
    int32_t nt = 0;
    triattn_tokenize(m, k_text, -1, true, false, toks, 256, &nt);
    const char * names[5] = { "streaming", "random", "h2o", "snapkv", "rkv" };
    for (int i = 0; i < 5; i++) {
        struct triattn_session_params sp;
        triattn_session_params_init(&sp);
        sp.n_threads = 2;
        sp.n_ctx = 4096;
        sp.seed = tu_u64() >> 1;
        sp.kv_policy = names[i];
        sp.kv_budget = 32;
        sp.kv_interval = 8;
        sp.kv_window = 8;
        triattn_session * s = NULL;
        char err[512];
        enum triattn_status st = triattn_session_create(m, &sp, &s, err, sizeof err);
        CHECK(st == TRIATTN_OK, "%s session: %s", names[i], err);
        if (st != TRIATTN_OK) continue;
        st = triattn_session_decode(s, toks, nt, false); /* prompt > budget: chunked, compressed between chunks */
        struct triattn_kv_stats ks;
        int over = 0;
        for (int t = 0; t < 24 && st == TRIATTN_OK; t++) {
            triattn_token cur = 0;
            triattn_session_sample(s, &cur);
            st = triattn_session_decode(s, &cur, 1, false);
            triattn_session_kv_stats(s, &ks);
            over += ks.live_max > 40;
        }
        CHECK(st == TRIATTN_OK, "%s decode: %s", names[i], triattn_session_last_error(s));
        triattn_session_kv_stats(s, &ks);
        CHECK(over == 0 && ks.n_compressions > 0 && strcmp(ks.policy, names[i]) == 0,
              "%s: live_max over budget + interval %d times, %lld rounds, policy '%s'", names[i], over,
              (long long) ks.n_compressions, ks.policy);
        int32_t pos[64], np = 0, bad = 0;
        for (int il = 0; il < 30 && triattn_session_kv_positions(s, il, 0, pos, 64, &np) == TRIATTN_OK; il++) {
            for (int j = 0; j < 4 && j < np; j++) bad += pos[j] != j;
            for (int j = 1; j < np; j++) bad += pos[j] <= pos[j - 1];
            bad += pos[np - 1] != nt + 23;
        }
        CHECK(bad == 0, "%s: sink, order or newest token wrong in the kept positions", names[i]);
        triattn_session_free(s);
    }
    struct triattn_session_params sp;
    triattn_session_params_init(&sp);
    sp.kv_policy = "nope";
    triattn_session * s = NULL;
    char err[512];
    CHECK(triattn_session_create(m, &sp, &s, err, sizeof err) == TRIATTN_ERR_UNSUPPORTED && strstr(err, "snapkv"),
          "unknown policy message lists the baselines: '%s'", err);
    triattn_session_free(s);
    const char * b = getenv("TRI_BENCH_BASELINES");
    if (b && b[0] == '1') {
        bench_rounds();
    }
    triattn_model_free(m);
}


int main(void) {
    tu_seed_init("TRI_TEST_SEED");
    tri_ops_init();
    test_streaming(0);
    test_streaming(12);   /* short prompt kept whole */
    test_random();
    test_oracle_scores();
    test_oracle_policy("h2o");
    test_oracle_policy("snapkv");
    test_oracle_policy("rkv");
    test_snapkv_hand();
    test_h2o_hand();
    test_rkv_hand(1);
    test_rkv_hand(2);
    test_real_model();
    return tu_finish();
}
