/* Forward-pass ops against scalar/double references: attention kernels per ISA, RoPE pairings, RMSNorm,
 * thread pool, KV compaction. Random inputs, fresh seed each run. */
#include "kv_cache.h"
#include "ops.h"
#include "threadpool.h"

#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "test_util.h"

static void test_attn_kernels(void) {
    for (int isa = TRI_ISA_SCALAR; isa < TRI_ISA_COUNT; isa++) {
        tri_attn_kernels k = tri_attn_kernels_get((enum tri_isa) isa);
        if (!k.scores) {
            continue;
        }
        for (int iter = 0; iter < 20; iter++) {
            const int D = (int) (8 + 8 * (int) (tu_uniform() * 16)) + (iter % 3 == 0 ? 3 : 0); /* odd tails too */
            const int G = 1 + (int) (tu_uniform() * 4);
            const int n = 1 + (int) (tu_uniform() * 300);
            float * q = malloc(sizeof(float) * G * D);
            tri_fp16 * K = malloc(sizeof(tri_fp16) * n * D);
            tri_fp16 * V = malloc(sizeof(tri_fp16) * n * D);
            float * s = malloc(sizeof(float) * G * n);
            float * p = malloc(sizeof(float) * G * n);
            float * acc = calloc((size_t) G * D, sizeof(float));
            for (int i = 0; i < G * D; i++) q[i] = (float) tu_symmetric();
            for (int i = 0; i < n * D; i++) {
                K[i] = tri_fp32_to_fp16((float) tu_symmetric());
                V[i] = tri_fp32_to_fp16((float) tu_symmetric());
            }
            const float scale = 1.0f / sqrtf((float) D);
            k.scores(D, G, q, K, n, scale, s, n);
            double max_err = 0.0;
            for (int g = 0; g < G; g++) {
                for (int j = 0; j < n; j++) {
                    double ref = 0.0;
                    for (int d = 0; d < D; d++) ref += (double) q[g * D + d] * tri_fp16_to_fp32(K[j * D + d]);
                    ref *= scale;
                    max_err = tu_max(max_err, fabs(ref - s[g * n + j]));
                }
            }
            CHECK(max_err < 1e-4, "isa %d scores D=%d G=%d n=%d err %g", isa, D, G, n, max_err);

            for (int i = 0; i < G * n; i++) p[i] = (float) tu_uniform();
            k.accum(D, G, p, n, V, n, acc);
            max_err = 0.0;
            for (int g = 0; g < G; g++) {
                for (int d = 0; d < D; d++) {
                    double ref = 0.0;
                    for (int j = 0; j < n; j++) ref += (double) p[g * n + j] * tri_fp16_to_fp32(V[j * D + d]);
                    max_err = tu_max(max_err, fabs(ref - acc[g * D + d]) / (1.0 + fabs(ref)));
                }
            }
            CHECK(max_err < 1e-4, "isa %d accum D=%d G=%d n=%d err %g", isa, D, G, n, max_err);

            float mx = -INFINITY;
            for (int j = 0; j < n; j++) {
                s[j] = (float) tu_symmetric() * 30.0f;
                mx = fmaxf(mx, s[j]);
            }
            memcpy(p, s, sizeof(float) * n);
            const float sum = k.exp_sum(s, n, mx);
            double ref_sum = 0.0, rel = 0.0;
            for (int j = 0; j < n; j++) {
                const double e = exp((double) p[j] - mx);
                ref_sum += e;
                rel = tu_max(rel, fabs(e - s[j]) / (e + 1e-30));
            }
            CHECK(rel < 1e-5 && fabs(ref_sum - sum) / ref_sum < 1e-5, "isa %d exp_sum n=%d rel %g", isa, n, rel);
            free(q); free(K); free(V); free(s); free(p); free(acc);
        }
    }
}

/* The pointer-array kernels of every ISA: against the scalar reference; and bit for bit equal whatever
 * other queries share the call, wherever the keys start and end, and across ISAs (decode hands one token's
 * heads, prefill several tokens', over a wider key range with zero weights outside each query's keys). */
static void test_attn_query_kernels(void) {
    for (int iter = 0; iter < 12; iter++) {
        const int D = iter % 4 == 3 ? 8 * (1 + (int) (tu_uniform() * 8)) + 5 : 64 * (1 + (int) (tu_uniform() * 4));
        const int nq = 1 + (int) (tu_uniform() * 23);
        const int n = 1 + (int) (tu_uniform() * 256);
        const int a = (int) (tu_uniform() * n), b = a + 1 + (int) (tu_uniform() * (n - a)); /* query 0 keeps [a, b) */
        float * q = malloc(sizeof(float) * nq * D);
        tri_fp16 * K = malloc(sizeof(tri_fp16) * n * D), * V = malloc(sizeof(tri_fp16) * n * D);
        float * s = malloc(sizeof(float) * nq * n), * s1 = malloc(sizeof(float) * n);
        float * acc = calloc((size_t) nq * D, sizeof(float)), * acc1 = malloc(sizeof(float) * D);
        float * w = malloc(sizeof(float) * nq * n), * first_acc = malloc(sizeof(float) * nq * D);
        const float * qp[64];
        float * sp[64], * ap[64];
        for (int i = 0; i < nq * D; i++) q[i] = (float) tu_symmetric();
        for (int i = 0; i < n * D; i++) {
            K[i] = tri_fp32_to_fp16((float) tu_symmetric());
            V[i] = tri_fp32_to_fp16((float) tu_symmetric());
        }
        for (int i = 0; i < nq; i++) {
            qp[i] = q + (size_t) i * D;
            sp[i] = s + (size_t) i * n;
            ap[i] = acc + (size_t) i * D;
        }
        /* weights: query 0 only on [a, b) (zeros elsewhere), the others everywhere */
        for (int i = 0; i < nq * n; i++) w[i] = (float) tu_uniform();
        for (int j = 0; j < n; j++) {
            if (j < a || j >= b) w[j] = 0.0f;
        }
        const float scale = 1.0f / sqrtf((float) D);
        int isas = 0, bad_ref = 0, bad_same = 0, bad_isa = 0;
        for (int isa = TRI_ISA_SCALAR; isa < TRI_ISA_COUNT; isa++) {
            tri_attn_kernels k = tri_attn_kernels_get((enum tri_isa) isa);
            if (!k.scores_q) {
                continue;
            }
            k.scores_q(D, nq, qp, K, n, scale, sp);
            for (int i = 0; i < nq; i++) {
                for (int j = 0; j < n; j++) {
                    double ref = 0.0;
                    for (int d = 0; d < D; d++) ref += (double) q[i * D + d] * tri_fp16_to_fp32(K[j * D + d]);
                    bad_ref += !(fabs(ref * scale - s[i * n + j]) < 1e-4);
                }
            }
            /* query 0 alone over its keys [a, b) */
            const float * q0 = q;
            float * s1p = s1;
            k.scores_q(D, 1, &q0, K + (size_t) a * D, b - a, scale, &s1p);
            bad_same += memcmp(s1, s + a, sizeof(float) * (b - a)) != 0;
            memcpy(s, w, sizeof(float) * nq * n);
            memset(acc, 0, sizeof(float) * nq * D);
            k.accum_q(D, nq, (const float * const *) sp, V, n, ap);
            for (int i = 0; i < nq; i++) {
                for (int d = 0; d < D; d++) {
                    double ref = 0.0;
                    for (int j = 0; j < n; j++) ref += (double) s[i * n + j] * tri_fp16_to_fp32(V[j * D + d]);
                    bad_ref += !(fabs(ref - acc[i * D + d]) < 1e-4 * (1.0 + fabs(ref)));
                }
            }
            memset(acc1, 0, sizeof(float) * D);
            const float * p0 = s + a;
            k.accum_q(D, 1, &p0, V + (size_t) a * D, b - a, &acc1);
            bad_same += memcmp(acc1, acc, sizeof(float) * D) != 0;
            if (isa != TRI_ISA_SCALAR && isas > 0) { /* SIMD ISAs agree bit for bit */
                bad_isa += memcmp(first_acc, acc, sizeof(float) * nq * D) != 0;
            }
            if (isa != TRI_ISA_SCALAR) {
                memcpy(first_acc, acc, sizeof(float) * nq * D);
                isas++;
            }
        }
        CHECK(bad_ref == 0, "query kernels D=%d nq=%d n=%d: %d results off the reference", D, nq, n, bad_ref);
        CHECK(bad_same == 0, "query kernels D=%d nq=%d n=%d [%d,%d): a query alone differs from in a batch (%d)", D, nq,
              n, a, b, bad_same);
        CHECK(bad_isa == 0, "query kernels D=%d nq=%d n=%d: ISAs differ", D, nq, n);
        free(q); free(K); free(V); free(s); free(s1); free(acc); free(acc1); free(w); free(first_acc);
    }
}

static void test_rope(void) {
    const int D = 64, F = D / 2, H = 3;
    float x[3 * 64], y[3 * 64], cs[64];
    double ang[32];
    for (int i = 0; i < H * D; i++) x[i] = (float) tu_symmetric();
    for (int f = 0; f < F; f++) {
        ang[f] = tu_uniform() * 100.0;
        cs[2 * f] = (float) cos(ang[f]);
        cs[2 * f + 1] = (float) sin(ang[f]);
    }
    for (int pairing = 0; pairing < 2; pairing++) {
        memcpy(y, x, sizeof x);
        tri_rope(y, H, D, D, cs, (enum tri_rope_pairing) pairing);
        double err = 0.0;
        for (int h = 0; h < H; h++) {
            for (int f = 0; f < F; f++) {
                const int a = pairing == TRI_ROPE_ADJACENT ? 2 * f : f;
                const int b = pairing == TRI_ROPE_ADJACENT ? 2 * f + 1 : f + F;
                /* complex multiply (x_a + i x_b) * e^{i ang} */
                const double re = x[h * D + a] * cos(ang[f]) - x[h * D + b] * sin(ang[f]);
                const double im = x[h * D + a] * sin(ang[f]) + x[h * D + b] * cos(ang[f]);
                err = tu_max(err, fabs(re - y[h * D + a]) + fabs(im - y[h * D + b]));
            }
        }
        CHECK(err < 1e-5, "rope pairing %d err %g", pairing, err);
    }
}

static void test_rmsnorm(void) {
    const int n = 1 + (int) (tu_uniform() * 1000);
    float * x = malloc(sizeof(float) * n), * w = malloc(sizeof(float) * n), * y = malloc(sizeof(float) * n);
    double ss = 0.0;
    for (int i = 0; i < n; i++) {
        x[i] = (float) tu_symmetric() * 10.0f;
        w[i] = (float) tu_symmetric();
        ss += (double) x[i] * x[i];
    }
    tri_rmsnorm(x, w, y, n, 1e-5f);
    const double r = 1.0 / sqrt(ss / n + 1e-5);
    double err = 0.0;
    for (int i = 0; i < n; i++) err = tu_max(err, fabs(x[i] * r * w[i] - y[i]));
    CHECK(err < 1e-5, "rmsnorm n=%d err %g", n, err);
    free(x); free(w); free(y);
}

static atomic_llong tp_sum; /* long is 32-bit on Windows */
static void tp_job(void * arg, int ith, int nth) {
    long b, e;
    tri_split(*(long *) arg, ith, nth, &b, &e);
    long long s = 0;
    for (long i = b; i < e; i++) s += i;
    atomic_fetch_add(&tp_sum, s);
}

static void test_threadpool(void) {
    for (int nt = 1; nt <= 4; nt++) {
        tri_threadpool * tp = tri_threadpool_create(nt);
        CHECK(tp != NULL, "threadpool create %d", nt);
        for (int rep = 0; rep < 200; rep++) {
            long n = (long) (tu_uniform() * 100000);
            atomic_store(&tp_sum, 0);
            tri_threadpool_run(tp, tp_job, &n);
            if (atomic_load(&tp_sum) != (long long) n * (n - 1) / 2) {
                CHECK(0, "threadpool nt=%d n=%ld sum %lld", nt, n, (long long) atomic_load(&tp_sum));
                break;
            }
        }
        tu_n_pass++;
        tri_threadpool_free(tp);
    }
}

static void test_kv_compact(void) {
    tri_kv_cache c;
    char err[256];
    CHECK(tri_kv_cache_init(&c, 2, 3, 16, 64, err, sizeof err) == TRIATTN_OK, "kv init: %s", err);
    for (int il = 0; il < 2; il++) {
        for (int h = 0; h < 3; h++) {
            for (int j = 0; j < 50; j++) {
                for (int d = 0; d < 16; d++) {
                    tri_kv_k(&c, il, h)[j * 16 + d] = tri_fp32_to_fp16((float) (j * 16 + d));
                    tri_kv_v(&c, il, h)[j * 16 + d] = tri_fp32_to_fp16((float) -(j * 16 + d));
                }
                tri_kv_pos(&c, il, h)[j] = 1000 + j;
            }
            c.n_live[tri_kv_index(&c, il, h)] = 50;
        }
    }
    int32_t keep[50];
    int n_keep = 0;
    for (int j = 0; j < 50; j++) {
        if (tu_uniform() < 0.4) keep[n_keep++] = j;
    }
    tri_kv_compact(&c, 1, 2, keep, n_keep);
    int ok = c.n_live[tri_kv_index(&c, 1, 2)] == n_keep;
    for (int i = 0; i < n_keep; i++) {
        ok &= tri_kv_pos(&c, 1, 2)[i] == 1000 + keep[i];
        ok &= tri_fp16_to_fp32(tri_kv_k(&c, 1, 2)[i * 16 + 5]) == (float) (keep[i] * 16 + 5);
        ok &= tri_fp16_to_fp32(tri_kv_v(&c, 1, 2)[i * 16 + 7]) == (float) -(keep[i] * 16 + 7);
    }
    ok &= c.n_live[tri_kv_index(&c, 1, 1)] == 50 && tri_kv_pos(&c, 1, 1)[49] == 1049;
    CHECK(ok, "kv compact keeps the chosen slots in order (n_keep %d)", n_keep);
    int32_t lo, hi;
    tri_kv_cache_live_range(&c, &lo, &hi);
    CHECK(lo == n_keep && hi == 50, "live range %d %d", lo, hi);
    CHECK(tri_kv_cache_bytes(2, 3, 16, 64) == (size_t) 2 * 3 * 64 * (16 * 2 * 2 + 4), "kv bytes");
    tri_kv_cache_free(&c);
}

/* silu_mul and gelu_mul of every ISA against double references; and each element's result independent
 * of its position and of n (the forward pass splits the rows across threads). */
static void test_act_mul(void) {
    const int n = 1 + (int) (tu_uniform() * 500);
    float * g = malloc(sizeof(float) * n), * u = malloc(sizeof(float) * n), * g0 = malloc(sizeof(float) * n);
    float * h = malloc(sizeof(float) * n);
    for (int isa = TRI_ISA_SCALAR; isa < TRI_ISA_COUNT; isa++) {
        if (!tri_cpu_has_isa((enum tri_isa) isa)) {
            continue;
        }
        const tri_act_kernels k = tri_act_kernels_get((enum tri_isa) isa);
        for (int which = 0; which < 2; which++) {
            for (int i = 0; i < n; i++) {
                g[i] = g0[i] = (float) tu_symmetric() * (i % 7 == 0 ? 60.0f : 6.0f);
                u[i] = (float) tu_symmetric() * 3.0f;
            }
            (which ? k.gelu_mul : k.silu_mul)(g, u, n);
            double err = 0.0;
            for (int i = 0; i < n; i++) {
                const double x = g0[i];
                const double act = which ? 0.5 * x * (1.0 + tanh(sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x)))
                                         : x / (1.0 + exp(-x));
                err = tu_max(err, fabs(act * u[i] - g[i]) / (1.0 + fabs(act * u[i])));
            }
            CHECK(err < 1e-5, "isa %d %s_mul n=%d rel err %g", isa, which ? "gelu" : "silu", n, err);
            /* the same values from an odd offset, one short piece at a time */
            const int off = 1 + (int) (tu_uniform() * 7);
            memcpy(h, g0, sizeof(float) * n);
            for (int i = off; i < n; i += 13) {
                (which ? k.gelu_mul : k.silu_mul)(h + i, u + i, n - i < 13 ? n - i : 13);
            }
            CHECK(memcmp(h + off, g + off, sizeof(float) * (n - (off < n ? off : n))) == 0 || off >= n,
                  "isa %d %s_mul depends on the position of an element", isa, which ? "gelu" : "silu");
        }
    }
    free(g); free(u); free(g0); free(h);
}

/* Per-layer capacities: layers do not overlap, bytes add up, a windowed layer drops what left its window. */
static void test_kv_layers_and_window(void) {
    const int L = 3, H = 2, D = 8, W = 5 + (int) (tu_uniform() * 10);
    const int32_t caps[3] = { 40, W + 4, 40 }, windows[3] = { 0, W, 0 };
    tri_kv_cache c;
    char err[256];
    CHECK(tri_kv_cache_init_layers(&c, L, H, D, caps, windows, err, sizeof err) == TRIATTN_OK, "kv init: %s", err);
    CHECK(c.capacity == 40 && c.cap_max == 40 && !tri_kv_windowed(&c, 0) && tri_kv_windowed(&c, 1), "capacities");
    CHECK(c.bytes == tri_kv_cache_bytes(1, H, D, 40) * 2 + tri_kv_cache_bytes(1, H, D, W + 4), "bytes %zu", c.bytes);
    for (int il = 0; il < L; il++) {
        for (int h = 0; h < H; h++) {
            for (int j = 0; j < caps[il]; j++) {
                for (int d = 0; d < D; d++) {
                    tri_kv_k(&c, il, h)[j * D + d] = tri_fp32_to_fp16((float) (il * 200 + h * 50 + j));
                    tri_kv_v(&c, il, h)[j * D + d] = tri_fp32_to_fp16((float) -(il * 200 + h * 50 + j));
                }
                tri_kv_pos(&c, il, h)[j] = j;
            }
            c.n_live[tri_kv_index(&c, il, h)] = caps[il];
        }
    }
    int ok = 1;
    for (int il = 0; il < L; il++) { /* no layer's writes landed in another's slots */
        for (int h = 0; h < H; h++) {
            for (int j = 0; j < caps[il]; j++) {
                ok &= tri_fp16_to_fp32(tri_kv_k(&c, il, h)[j * D + D - 1]) == (float) (il * 200 + h * 50 + j);
            }
        }
    }
    CHECK(ok, "per-layer slot regions are disjoint");
    int32_t lo, hi;
    tri_kv_cache_live_range(&c, &lo, &hi);
    CHECK(lo == 40 && hi == 40, "live range skips windowed layers: %d %d", lo, hi);
    const int32_t p = caps[1] + 1 + (int32_t) (tu_uniform() * 3); /* next query position */
    tri_kv_trim_window(&c, 1, p);
    for (int h = 0; h < H; h++) {
        const int32_t live = c.n_live[tri_kv_index(&c, 1, h)];
        const int32_t first = p - W + 1; /* a query at p sees positions > p - W */
        ok = live == caps[1] - first;
        for (int32_t i = 0; i < live && ok; i++) {
            ok &= tri_kv_pos(&c, 1, h)[i] == first + i;
            ok &= tri_fp16_to_fp32(tri_kv_v(&c, 1, h)[i * D + 3]) == (float) -(200 + h * 50 + first + i);
        }
        CHECK(ok, "trim to window %d at pos %d: head %d keeps %d slots from %d", W, p, h, live, first);
    }
    CHECK(c.n_live[tri_kv_index(&c, 0, 1)] == 40 && c.n_live[tri_kv_index(&c, 2, 0)] == 40, "other layers untouched");
    tri_kv_cache_free(&c);
}

int main(void) {
    tu_seed_init("TRI_TEST_SEED");
    tri_ops_init();
    test_attn_kernels();
    test_attn_query_kernels();
    test_act_mul();
    test_rope();
    test_rmsnorm();
    test_threadpool();
    test_kv_compact();
    test_kv_layers_and_window();
    return tu_finish();
}
