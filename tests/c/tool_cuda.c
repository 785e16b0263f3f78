/* tool_cuda: the CUDA ops against the CPU reference (only built with -DTRIATTN_CUDA=ON).
 *
 *   tool_cuda info           JSON: device count, the reason when 0, device name (works without a GPU)
 *   tool_cuda parity         every op on random shapes and inputs vs its CPU reference, one JSON line per
 *                            check with its error and tolerance, then "N passed, M failed" (exit 1 on failure)
 *   tool_cuda bench [reps]   JSON lines: median microseconds per op at the default model's shapes
 *
 * parity and bench need a device: without one they print the reason and exit 2. Seed: TRI_TEST_SEED. */
#include "triattn.h"

#include "calibration.h"
#include "common.h"
#include "ops.h"
#include "quants.h"
#include "test_util.h"
#include "tri_cuda.h"
#include "triattn_score.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* A CUDA failure ends the tool: the parity numbers after it would mean nothing. */
#define CU(call)                                                                                  \
    do {                                                                                          \
        if ((call) != TRIATTN_OK) {                                                               \
            printf("CUDA failure: %s: %s\n", #call, tri_cuda_last_error());                       \
            exit(3);                                                                              \
        }                                                                                         \
    } while (0)

static void * dnew(size_t bytes) {
    void * p = NULL;
    CU(tri_cuda_malloc(&p, bytes));
    return p;
}
static void * hnew(size_t bytes) {
    void * p = malloc(bytes ? bytes : 1);
    if (!p) {
        printf("out of host memory\n");
        exit(3);
    }
    return p;
}
static void up(void * d, const void * h, size_t bytes) {
    CU(tri_cuda_h2d(d, h, bytes, NULL));
    CU(tri_cuda_sync(NULL));
}
static void down(void * h, const void * d, size_t bytes) {
    CU(tri_cuda_d2h(h, d, bytes, NULL));
    CU(tri_cuda_sync(NULL));
}
static void fill_normal(float * x, size_t n, double sd) {
    for (size_t i = 0; i < n; i++) {
        x[i] = (float) (tu_normal() * sd);
    }
}
static void report(const char * op, const char * detail, double err, double tol) {
    const int ok = err <= tol; /* NaN fails */
    printf("{\"op\": \"%s\", \"case\": \"%s\", \"err\": %.3g, \"tol\": %.3g, \"ok\": %s}\n", op, detail, err, tol,
           ok ? "true" : "false");
    CHECK(ok, "%s (%s): error %.3g > tolerance %.3g", op, detail, err, tol);
}

typedef void (*quantize_fn)(const float * x, void * y, int64_t k);
static const struct {
    enum tri_type type;
    quantize_fn   quantize;
} TYPES[] = {
    { TRI_TYPE_F32, tri_quantize_row_f32_ref },   { TRI_TYPE_F16, tri_quantize_row_f16_ref },
    { TRI_TYPE_BF16, tri_quantize_row_bf16_ref }, { TRI_TYPE_Q4_0, tri_quantize_row_q4_0_ref },
    { TRI_TYPE_Q4_1, tri_quantize_row_q4_1_ref }, { TRI_TYPE_Q5_0, tri_quantize_row_q5_0_ref },
    { TRI_TYPE_Q5_1, tri_quantize_row_q5_1_ref }, { TRI_TYPE_Q8_0, tri_quantize_row_q8_0_ref },
    { TRI_TYPE_Q2_K, tri_quantize_row_q2_K_ref }, { TRI_TYPE_Q3_K, tri_quantize_row_q3_K_ref },
    { TRI_TYPE_Q4_K, tri_quantize_row_q4_K_ref }, { TRI_TYPE_Q5_K, tri_quantize_row_q5_K_ref },
    { TRI_TYPE_Q6_K, tri_quantize_row_q6_K_ref },
};
#define N_TYPES ((int) (sizeof TYPES / sizeof TYPES[0]))

/* Random weights of a type: rows x ne0 floats quantized row by row; wf = what the CPU dequantizes back. */
static void *random_weights(int ti, int64_t ne0, int64_t rows, float * wf, size_t * bytes) {
    const tri_type_traits * tt = tri_type_traits_get(TYPES[ti].type);
    const size_t rb = tri_row_size(TYPES[ti].type, ne0);
    float * src = hnew(sizeof(float) * ne0);
    char * q = hnew(rb * rows);
    for (int64_t r = 0; r < rows; r++) {
        fill_normal(src, ne0, 0.5);
        TYPES[ti].quantize(src, q + r * rb, ne0);
        tt->to_float(q + r * rb, wf + r * ne0, ne0);
    }
    free(src);
    *bytes = rb * rows;
    return q;
}

/* ---- parity ----------------------------------------------------------------------------------- */

static void parity_dequant_matmul(void) {
    for (int ti = 0; ti < N_TYPES; ti++) {
        const char * name = tri_type_traits_get(TYPES[ti].type)->name;
        const int64_t qk = tri_type_traits_get(TYPES[ti].type)->blck_size;
        const int64_t unit = qk > 32 ? 256 : 32;
        const int64_t ne0 = unit * tu_int(1, 1024 / unit + 1), ne1 = tu_int(1, 300);
        float * wf = hnew(sizeof(float) * ne0 * ne1);
        size_t wbytes;
        void * wq = random_weights(ti, ne0, ne1, wf, &wbytes);
        void * dw = dnew(wbytes);
        up(dw, wq, wbytes);

        /* dequantize */
        float * dq = dnew(sizeof(float) * ne0 * ne1);
        float * got = hnew(sizeof(float) * ne0 * ne1);
        CU(tri_cuda_dequantize(TYPES[ti].type, dw, ne0, ne1, dq, NULL));
        down(got, dq, sizeof(float) * ne0 * ne1);
        double err = 0.0, scale = 1e-30;
        for (int64_t i = 0; i < ne0 * ne1; i++) {
            err = fmax(err, fabs((double) got[i] - wf[i]));
            scale = fmax(scale, fabs(wf[i]));
        }
        char detail[96];
        snprintf(detail, sizeof detail, "%s %lldx%lld", name, (long long) ne1, (long long) ne0);
        report("dequantize", detail, err / scale, 1e-6);

        /* matmul: vector kernel (<= 8 tokens) and tiled kernel, and the embedding lookup */
        for (int pass = 0; pass < 2; pass++) {
            const int n_tok = pass == 0 ? (int) tu_int(1, 8) : (int) tu_int(9, 150);
            const int64_t ldx = ne0 + tu_int(0, 3), ldy = ne1 + tu_int(0, 3);
            float * x = hnew(sizeof(float) * n_tok * ldx);
            float * y = hnew(sizeof(float) * n_tok * ldy);
            fill_normal(x, (size_t) n_tok * ldx, 1.0);
            float * dx = dnew(sizeof(float) * n_tok * ldx);
            float * dy = dnew(sizeof(float) * n_tok * ldy);
            up(dx, x, sizeof(float) * n_tok * ldx);
            if (pass == 0) {
                CU(tri_cuda_matmul_vec(TYPES[ti].type, dw, ne0, ne1, dx, ldx, n_tok, dy, ldy, NULL));
            } else {
                CU(tri_cuda_matmul_tiled(TYPES[ti].type, dw, ne0, ne1, dx, ldx, n_tok, dy, ldy, NULL));
            }
            down(y, dy, sizeof(float) * n_tok * ldy);
            double worst = 0.0;
            for (int t = 0; t < n_tok; t++) {
                for (int64_t r = 0; r < ne1; r++) {
                    double ref = 0.0, mag = 1e-30;
                    for (int64_t i = 0; i < ne0; i++) {
                        ref += (double) wf[r * ne0 + i] * x[t * ldx + i];
                        mag += fabs((double) wf[r * ne0 + i] * x[t * ldx + i]);
                    }
                    worst = fmax(worst, fabs(y[t * ldy + r] - ref) / mag);
                }
            }
            snprintf(detail, sizeof detail, "%s %lldx%lld, %d tokens", name, (long long) ne1, (long long) ne0, n_tok);
            report(pass == 0 ? "matmul_vec" : "matmul_tiled", detail, worst, 1e-5);
            tri_cuda_free(dx);
            tri_cuda_free(dy);
            free(x);
            free(y);
        }
        {
            const int n_tok = (int) tu_int(1, 20);
            int32_t * ids = hnew(sizeof(int32_t) * n_tok);
            for (int t = 0; t < n_tok; t++) {
                ids[t] = (int32_t) tu_below((uint64_t) ne1);
            }
            int32_t * dids = dnew(sizeof(int32_t) * n_tok);
            float * dout = dnew(sizeof(float) * n_tok * ne0);
            float * out = hnew(sizeof(float) * n_tok * ne0);
            up(dids, ids, sizeof(int32_t) * n_tok);
            CU(tri_cuda_get_rows(TYPES[ti].type, dw, ne0, dids, n_tok, dout, NULL));
            down(out, dout, sizeof(float) * n_tok * ne0);
            double e = 0.0;
            for (int t = 0; t < n_tok; t++) {
                for (int64_t i = 0; i < ne0; i++) {
                    e = fmax(e, fabs((double) out[t * ne0 + i] - wf[ids[t] * ne0 + i]) / scale);
                }
            }
            snprintf(detail, sizeof detail, "%s, %d rows", name, n_tok);
            report("get_rows", detail, e, 1e-6);
            tri_cuda_free(dids);
            tri_cuda_free(dout);
            free(ids);
            free(out);
        }
        tri_cuda_free(dw);
        tri_cuda_free(dq);
        free(wq);
        free(wf);
        free(got);
    }
}

static void parity_small_ops(void) {
    char detail[96];
    /* RMSNorm, with and without weights, strided rows */
    for (int pass = 0; pass < 2; pass++) {
        const int rows = (int) tu_int(1, 40), n = (int) tu_int(1, 2000);
        const int64_t ld = n + tu_int(0, 5);
        float * x = hnew(sizeof(float) * rows * ld), * w = hnew(sizeof(float) * n), * y = hnew(sizeof(float) * rows * ld);
        fill_normal(x, (size_t) rows * ld, 2.0);
        fill_normal(w, n, 1.0);
        float * dx = dnew(sizeof(float) * rows * ld), * dw = dnew(sizeof(float) * n);
        up(dx, x, sizeof(float) * rows * ld);
        up(dw, w, sizeof(float) * n);
        CU(tri_cuda_rmsnorm(dx, pass ? dw : NULL, dx, rows, n, ld, 1e-5f, NULL));
        down(y, dx, sizeof(float) * rows * ld);
        double e = 0.0;
        float * ref = hnew(sizeof(float) * n);
        for (int r = 0; r < rows; r++) {
            tri_rmsnorm(x + r * ld, pass ? w : NULL, ref, n, 1e-5f);
            for (int i = 0; i < n; i++) {
                e = fmax(e, fabs((double) y[r * ld + i] - ref[i]) / (fabs(ref[i]) + 1e-3));
            }
        }
        snprintf(detail, sizeof detail, "%d rows of %d, %s", rows, n, pass ? "weighted" : "no weight");
        report("rmsnorm", detail, e, 2e-6);
        tri_cuda_free(dx);
        tri_cuda_free(dw);
        free(x);
        free(w);
        free(y);
        free(ref);
    }
    /* RoPE in both pairings, rope_dim <= head_dim */
    for (int pairing = 0; pairing < 2; pairing++) {
        const int n_tok = (int) tu_int(1, 20), heads = (int) tu_int(1, 9), hd = 2 * (int) tu_int(1, 64);
        const int rd = 2 * (int) tu_int(1, hd / 2);
        const size_t nx = (size_t) n_tok * heads * hd;
        float * x = hnew(sizeof(float) * nx), * y = hnew(sizeof(float) * nx), * cs = hnew(sizeof(float) * n_tok * rd);
        fill_normal(x, nx, 1.0);
        for (int t = 0; t < n_tok; t++) {
            for (int f = 0; f < rd / 2; f++) {
                const double th = tu_uniform() * 1e4;
                cs[t * rd + 2 * f] = (float) cos(th);
                cs[t * rd + 2 * f + 1] = (float) sin(th);
            }
        }
        float * dx = dnew(sizeof(float) * nx), * dcs = dnew(sizeof(float) * n_tok * rd);
        up(dx, x, sizeof(float) * nx);
        up(dcs, cs, sizeof(float) * n_tok * rd);
        CU(tri_cuda_rope(dx, n_tok, heads, hd, rd, dcs, pairing, NULL));
        down(y, dx, sizeof(float) * nx);
        for (int t = 0; t < n_tok; t++) {
            tri_rope(x + (size_t) t * heads * hd, heads, hd, rd, cs + t * rd,
                     pairing ? TRI_ROPE_HALF : TRI_ROPE_ADJACENT);
        }
        double e = 0.0;
        for (size_t i = 0; i < nx; i++) {
            e = fmax(e, fabs((double) y[i] - x[i]));
        }
        snprintf(detail, sizeof detail, "%s, %d heads x %d (rope %d)", pairing ? "half" : "adjacent", heads, hd, rd);
        report("rope", detail, e, 1e-6);
        tri_cuda_free(dx);
        tri_cuda_free(dcs);
        free(x);
        free(y);
        free(cs);
    }
    /* softmax vs double */
    {
        const int rows = (int) tu_int(1, 30), n = (int) tu_int(1, 5000);
        float * x = hnew(sizeof(float) * rows * n), * y = hnew(sizeof(float) * rows * n);
        fill_normal(x, (size_t) rows * n, 4.0);
        float * dx = dnew(sizeof(float) * rows * n);
        up(dx, x, sizeof(float) * rows * n);
        CU(tri_cuda_softmax(dx, rows, n, n, NULL));
        down(y, dx, sizeof(float) * rows * n);
        double e = 0.0;
        for (int r = 0; r < rows; r++) {
            double mx = -INFINITY, sum = 0.0;
            for (int j = 0; j < n; j++) {
                mx = fmax(mx, x[r * n + j]);
            }
            for (int j = 0; j < n; j++) {
                sum += exp(x[r * n + j] - mx);
            }
            for (int j = 0; j < n; j++) {
                e = fmax(e, fabs(y[r * n + j] - exp(x[r * n + j] - mx) / sum));
            }
        }
        snprintf(detail, sizeof detail, "%d rows of %d", rows, n);
        report("softmax", detail, e, 1e-6);
        tri_cuda_free(dx);
        free(x);
        free(y);
    }
    /* SwiGLU, residual add, bias add */
    {
        const int n_tok = (int) tu_int(1, 16);
        const int64_t n = tu_int(1, 5000), tot = n_tok * n;
        float * g = hnew(sizeof(float) * tot), * u = hnew(sizeof(float) * tot), * b = hnew(sizeof(float) * n);
        float * y = hnew(sizeof(float) * tot);
        fill_normal(g, tot, 3.0);
        fill_normal(u, tot, 1.0);
        fill_normal(b, n, 1.0);
        float * dg = dnew(sizeof(float) * tot), * du = dnew(sizeof(float) * tot), * db = dnew(sizeof(float) * n);
        up(dg, g, sizeof(float) * tot);
        up(du, u, sizeof(float) * tot);
        up(db, b, sizeof(float) * n);
        CU(tri_cuda_swiglu(dg, du, tot, NULL));
        CU(tri_cuda_add(dg, du, tot, NULL));
        CU(tri_cuda_add_bias(dg, db, n_tok, n, NULL));
        down(y, dg, sizeof(float) * tot);
        tri_silu_mul(g, u, (int) tot);
        double e = 0.0;
        for (int64_t i = 0; i < tot; i++) {
            const double ref = (double) (g[i] + u[i]) + b[i % n];
            e = fmax(e, fabs(y[i] - ref) / (fabs(ref) + 1.0));
        }
        snprintf(detail, sizeof detail, "%d x %lld", n_tok, (long long) n);
        report("swiglu+add+bias", detail, e, 1e-6);
        tri_cuda_free(dg);
        tri_cuda_free(du);
        tri_cuda_free(db);
        free(g);
        free(u);
        free(b);
        free(y);
    }
}

/* KV append, attention over positions (decode and prefill, several splits), compaction. */
static void parity_kv_attention(void) {
    char detail[128];
    const int L = (int) tu_int(1, 3), Hkv = (int) tu_int(1, 4), G = (int) tu_int(1, 4), H = Hkv * G;
    const int D = 2 * (int) tu_int(4, 80), cap = (int) tu_int(16, 900);
    const size_t slots = (size_t) L * Hkv * cap;
    tri_fp16 * K = dnew(slots * D * 2), * V = dnew(slots * D * 2);
    int32_t * pos = dnew(slots * 4), * live = dnew((size_t) L * Hkv * 4);
    CU(tri_cuda_memset(live, 0, (size_t) L * Hkv * 4, NULL));
    int32_t * hlive = calloc((size_t) L * Hkv, 4);
    tri_fp16 * hK = hnew(slots * D * 2), * hV = hnew(slots * D * 2);
    int32_t * hpos = hnew(slots * 4);
    /* Append chunks at increasing (gapped) positions, as after compactions. */
    int32_t p = (int32_t) tu_int(0, 1000);
    const int n_chunks = (int) tu_int(1, 4);
    for (int c = 0; c < n_chunks; c++) {
        const int room = cap - hlive[0];
        if (room <= 0) {
            break;
        }
        const int n = (int) tu_int(1, TRI_MIN(room, 200));
        float * k = hnew(sizeof(float) * n * Hkv * D), * v = hnew(sizeof(float) * n * Hkv * D);
        fill_normal(k, (size_t) n * Hkv * D, 1.0);
        fill_normal(v, (size_t) n * Hkv * D, 1.0);
        float * dk = dnew(sizeof(float) * n * Hkv * D), * dv = dnew(sizeof(float) * n * Hkv * D);
        up(dk, k, sizeof(float) * n * Hkv * D);
        up(dv, v, sizeof(float) * n * Hkv * D);
        for (int il = 0; il < L; il++) {
            CU(tri_cuda_kv_append(K, V, pos, live, il, Hkv, cap, D, dk, dv, n, p, NULL));
            for (int h = 0; h < Hkv; h++) {
                const size_t lh = (size_t) il * Hkv + h;
                for (int t = 0; t < n; t++) {
                    const int slot = hlive[lh] + t;
                    for (int d = 0; d < D; d++) {
                        hK[(lh * cap + slot) * D + d] = tri_fp32_to_fp16(k[((size_t) t * Hkv + h) * D + d]);
                        hV[(lh * cap + slot) * D + d] = tri_fp32_to_fp16(v[((size_t) t * Hkv + h) * D + d]);
                    }
                    hpos[lh * cap + slot] = p + t;
                }
            }
        }
        /* attention of the chunk's tokens over what is visible to each, at layer L-1, before the bump */
        const int il = L - 1, parts = (int) tu_int(1, 9);
        float * q = hnew(sizeof(float) * n * H * D), * out = hnew(sizeof(float) * n * H * D);
        fill_normal(q, (size_t) n * H * D, 1.0);
        float * dq = dnew(sizeof(float) * n * H * D), * dout = dnew(sizeof(float) * n * H * D);
        float * dpart = dnew(sizeof(float) * n * H * parts * (D + 2));
        up(dq, q, sizeof(float) * n * H * D);
        const size_t lh0 = (size_t) il * Hkv;
        CU(tri_cuda_attention(dq, K + lh0 * cap * D, V + lh0 * cap * D, pos + lh0 * cap, live + lh0, n, cap, H, Hkv, D, n,
                              p, parts, dpart, dout, NULL));
        down(out, dout, sizeof(float) * n * H * D);
        double e = 0.0;
        double * sc = calloc((size_t) cap, sizeof(double));
        for (int t = 0; t < n; t++) {
            for (int hq = 0; hq < H; hq++) {
                const size_t lh = lh0 + hq / G;
                const int nv = hlive[lh] + t + 1; /* positions increase: the visible ones are a prefix */
                double mx = -INFINITY, sum = 0.0;
                const float * qq = q + ((size_t) t * H + hq) * D;
                for (int j = 0; j < nv; j++) {
                    double dot = 0.0;
                    for (int d = 0; d < D; d++) {
                        dot += (double) qq[d] * tri_fp16_to_fp32(hK[(lh * cap + j) * D + d]);
                    }
                    sc[j] = dot / sqrt((double) D);
                    mx = fmax(mx, sc[j]);
                }
                for (int j = 0; j < nv; j++) {
                    sum += exp(sc[j] - mx);
                }
                for (int d = 0; d < D; d++) {
                    double o = 0.0;
                    for (int j = 0; j < nv; j++) {
                        o += exp(sc[j] - mx) / sum * tri_fp16_to_fp32(hV[(lh * cap + j) * D + d]);
                    }
                    e = fmax(e, fabs(out[((size_t) t * H + hq) * D + d] - o));
                }
            }
        }
        snprintf(detail, sizeof detail, "%d tokens after %d, %d/%d heads, D %d, %d splits", n, hlive[lh0], H, Hkv, D,
                 parts);
        report("attention", detail, e, 2e-5);
        free(sc);
        CU(tri_cuda_kv_bump(live, L * Hkv, n, NULL));
        for (int i = 0; i < L * Hkv; i++) {
            hlive[i] += n;
        }
        p += n + (int32_t) tu_int(0, 50);
        tri_cuda_free(dk);
        tri_cuda_free(dv);
        tri_cuda_free(dq);
        tri_cuda_free(dout);
        tri_cuda_free(dpart);
        free(k);
        free(v);
        free(q);
        free(out);
    }
    /* the appended cache equals the host's F16 conversion, bit for bit */
    tri_fp16 * gK = hnew(slots * D * 2);
    int32_t * gpos = hnew(slots * 4), * glive = hnew((size_t) L * Hkv * 4);
    down(gK, K, slots * D * 2);
    down(gpos, pos, slots * 4);
    down(glive, live, (size_t) L * Hkv * 4);
    long bad = 0;
    for (size_t lh = 0; lh < (size_t) L * Hkv; lh++) {
        bad += glive[lh] != hlive[lh];
        for (int j = 0; j < hlive[lh]; j++) {
            bad += gpos[lh * cap + j] != hpos[lh * cap + j];
            bad += memcmp(gK + (lh * cap + j) * D, hK + (lh * cap + j) * D, (size_t) D * 2) != 0;
        }
    }
    snprintf(detail, sizeof detail, "%d layers x %d KV heads, %d live", L, Hkv, hlive[0]);
    report("kv_append", detail, (double) bad, 0.0);

    /* compaction: random increasing keep lists, one (layer, KV head) left untouched */
    int32_t * keep = hnew(slots * 4), * nkeep = hnew((size_t) L * Hkv * 4);
    for (size_t lh = 0; lh < (size_t) L * Hkv; lh++) {
        int32_t nk = 0;
        for (int j = 0; j < hlive[lh]; j++) {
            if (tu_below(3) != 0) {
                keep[lh * cap + nk++] = j;
            }
        }
        nkeep[lh] = (lh == 0 && L * Hkv > 1) ? -1 : nk;
    }
    int32_t * dkeep = dnew(slots * 4), * dnkeep = dnew((size_t) L * Hkv * 4);
    up(dkeep, keep, slots * 4);
    up(dnkeep, nkeep, (size_t) L * Hkv * 4);
    CU(tri_cuda_kv_gather(K, V, pos, live, dkeep, dnkeep, L * Hkv, cap, D, NULL));
    tri_fp16 * gV = hnew(slots * D * 2);
    down(gK, K, slots * D * 2);
    down(gV, V, slots * D * 2);
    down(gpos, pos, slots * 4);
    down(glive, live, (size_t) L * Hkv * 4);
    bad = 0;
    for (size_t lh = 0; lh < (size_t) L * Hkv; lh++) {
        const int32_t nk = nkeep[lh] < 0 ? hlive[lh] : nkeep[lh];
        bad += glive[lh] != nk;
        for (int r = 0; r < nk; r++) {
            const int src = nkeep[lh] < 0 ? r : keep[lh * cap + r];
            bad += gpos[lh * cap + r] != hpos[lh * cap + src];
            bad += memcmp(gK + (lh * cap + r) * D, hK + (lh * cap + src) * D, (size_t) D * 2) != 0;
            bad += memcmp(gV + (lh * cap + r) * D, hV + (lh * cap + src) * D, (size_t) D * 2) != 0;
        }
    }
    report("kv_gather", detail, (double) bad, 0.0);
    tri_cuda_free(K);
    tri_cuda_free(V);
    tri_cuda_free(pos);
    tri_cuda_free(live);
    tri_cuda_free(dkeep);
    tri_cuda_free(dnkeep);
    free(hlive);
    free(hK);
    free(hV);
    free(hpos);
    free(gK);
    free(gV);
    free(gpos);
    free(glive);
    free(keep);
    free(nkeep);
}

/* The round's steps: fused scores, z-score, GQA max, layer mean, top-k (with forced ties). */
static void parity_triattention(void) {
    char detail[128];
    const int L = (int) tu_int(1, 4), Hkv = (int) tu_int(1, 3), G = (int) tu_int(1, 3), H = Hkv * G;
    const int D = 2 * (int) tu_int(4, 64), R = 2 * (int) tu_int(2, D / 2), cap = (int) tu_int(8, 700);
    const int pairing = (int) tu_below(2);
    const size_t LK = (size_t) L * Hkv, LH = (size_t) L * H;
    tri_fp16 * hK = hnew(LK * cap * D * 2);
    for (size_t i = 0; i < LK * cap * D; i++) {
        hK[i] = tri_fp32_to_fp16((float) tu_normal());
    }
    float * w = hnew(sizeof(float) * LH * D), * cw = hnew(sizeof(float) * LH * D);
    fill_normal(w, LH * D, 1.0);
    for (size_t i = 0; i < LH * D; i++) {
        cw[i] = (float) tu_uniform();
    }
    /* candidate ranges: the same for every layer of a KV head (per_head), random per KV head */
    int32_t * lohi = hnew(sizeof(int32_t) * 2 * LK);
    for (int h = 0; h < Hkv; h++) {
        const int32_t lo = (int32_t) tu_int(0, cap / 4), hi = (int32_t) tu_int(lo, cap);
        for (int l = 0; l < L; l++) {
            lohi[l * Hkv + h] = lo;
            lohi[LK + l * Hkv + h] = hi;
        }
    }
    int max_n = 0;
    for (size_t i = 0; i < LK; i++) {
        max_n = TRI_MAX(max_n, lohi[LK + i] - lohi[i]);
    }
    void * dK = dnew(LK * cap * D * 2);
    float * dw = dnew(sizeof(float) * LH * D), * dcw = dnew(sizeof(float) * LH * D);
    float * dsc = dnew(sizeof(float) * LH * cap), * dagg = dnew(sizeof(float) * LK * cap);
    float * dmean = dnew(sizeof(float) * Hkv * cap);
    int32_t * dlohi = dnew(sizeof(int32_t) * 2 * LK);
    up(dK, hK, LK * cap * D * 2);
    up(dw, w, sizeof(float) * LH * D);
    up(dcw, cw, sizeof(float) * LH * D);
    up(dlohi, lohi, sizeof(int32_t) * 2 * LK);
    CU(tri_cuda_triattn_score(dK, dw, dcw, dlohi, dlohi + LK, L, H, Hkv, D, R, pairing, cap, max_n, dsc, NULL));
    float * sc = hnew(sizeof(float) * LH * cap), * ref = hnew(sizeof(float) * LH * cap);
    down(sc, dsc, sizeof(float) * LH * cap);
    const enum tri_rope_pairing pr = pairing ? TRI_ROPE_HALF : TRI_ROPE_ADJACENT;
    double e = 0.0;
    for (int l = 0; l < L; l++) {
        for (int h = 0; h < Hkv; h++) {
            const size_t i = (size_t) l * Hkv + h, row0 = (size_t) l * H + (size_t) h * G;
            const int lo = lohi[i], n = lohi[LK + i] - lo;
            if (n <= 0) {
                continue;
            }
            tri_triattn_score_ref(D, R, pr, G, w + row0 * D, cw + row0 * D, hK + (i * cap + lo) * D, n, ref + row0 * cap,
                                  cap);
            for (int g = 0; g < G; g++) {
                for (int j = 0; j < n; j++) {
                    const double r = ref[(row0 + g) * cap + j];
                    e = fmax(e, fabs(sc[(row0 + g) * cap + j] - r) / (fabs(r) + 1.0));
                }
            }
        }
    }
    snprintf(detail, sizeof detail, "%d layers, %d/%d heads, D %d, rope %d, %s", L, H, Hkv, D, R,
             pairing ? "half" : "adjacent");
    report("triattn_score", detail, e, 1e-5);

    /* z-score and GQA max from the same (CPU) scores on both sides */
    up(dsc, ref, sizeof(float) * LH * cap);
    CU(tri_cuda_triattn_zscore(dsc, dlohi, dlohi + LK, L, H, Hkv, cap, NULL));
    CU(tri_cuda_triattn_gqa_max(dsc, dlohi, dlohi + LK, L, H, Hkv, cap, max_n, dagg, NULL));
    CU(tri_cuda_triattn_layer_mean(dagg, dlohi, dlohi + LK, L, Hkv, cap, max_n, 0, dmean, NULL));
    down(sc, dsc, sizeof(float) * LH * cap);
    float * agg = hnew(sizeof(float) * LK * cap), * gagg = hnew(sizeof(float) * LK * cap);
    float * mean = hnew(sizeof(float) * Hkv * cap), * gmean = hnew(sizeof(float) * Hkv * cap);
    down(gagg, dagg, sizeof(float) * LK * cap);
    down(gmean, dmean, sizeof(float) * Hkv * cap);
    double ez = 0.0, ea = 0.0, em = 0.0;
    for (size_t i = 0; i < LK; i++) {
        const int l = (int) (i / Hkv), h = (int) (i % Hkv), n = lohi[LK + i] - lohi[i];
        const size_t row0 = (size_t) l * H + (size_t) h * G;
        for (int g = 0; g < G; g++) {
            tri_triattn_zscore(ref + (row0 + g) * cap, n);
            for (int j = 0; j < n; j++) {
                ez = fmax(ez, fabs(sc[(row0 + g) * cap + j] - ref[(row0 + g) * cap + j]));
            }
        }
        for (int j = 0; j < n; j++) {
            float a = sc[row0 * cap + j]; /* GQA max of the device's z-scores: exact */
            for (int g = 1; g < G; g++) {
                const float v = sc[(row0 + g) * cap + j];
                a = v > a ? v : a;
            }
            agg[i * cap + j] = a;
            ea = fmax(ea, fabs(gagg[i * cap + j] - a));
        }
    }
    for (int h = 0; h < Hkv; h++) {
        const int n = lohi[LK + h] - lohi[h];
        for (int j = 0; j < n; j++) {
            float acc = 0.0f;
            for (int l = 0; l < L; l++) {
                acc += agg[((size_t) l * Hkv + h) * cap + j];
            }
            mean[(size_t) h * cap + j] = acc * (1.0f / (float) L);
            em = fmax(em, fabs(gmean[(size_t) h * cap + j] - mean[(size_t) h * cap + j]));
        }
    }
    report("triattn_zscore", detail, ez, 2e-5);
    report("triattn_gqa_max", detail, ea, 0.0);
    report("triattn_layer_mean", detail, em, 1e-6);

    /* top-k: scores rounded to a few levels so ties are common; marks must equal the CPU's exactly */
    for (int pass = 0; pass < 3; pass++) {
        const int groups = (int) tu_int(1, 6), stride = (int) tu_int(1, 3000);
        float * s = hnew(sizeof(float) * groups * stride);
        int32_t * nk = hnew(sizeof(int32_t) * 2 * groups);
        for (int g = 0; g < groups; g++) {
            nk[g] = (int32_t) tu_int(0, stride);
            nk[groups + g] = (int32_t) tu_int(-1, nk[g] + 1);
        }
        for (int i = 0; i < groups * stride; i++) {
            s[i] = pass == 0 ? (float) tu_normal() : (float) floor(tu_normal() * 3.0) * 0.5f;
            if (pass == 2 && tu_below(20) == 0) {
                s[i] = tu_below(2) ? NAN : -0.0f;
            }
        }
        float * ds = dnew(sizeof(float) * groups * stride);
        int32_t * dnk = dnew(sizeof(int32_t) * 2 * groups);
        uint8_t * dm = dnew((size_t) groups * stride);
        up(ds, s, sizeof(float) * groups * stride);
        up(dnk, nk, sizeof(int32_t) * 2 * groups);
        CU(tri_cuda_memset(dm, 7, (size_t) groups * stride, NULL));
        CU(tri_cuda_topk(ds, dnk, dnk + groups, groups, stride, dm, NULL));
        uint8_t * gm = hnew((size_t) groups * stride), * cm = hnew((size_t) stride);
        tri_triattn_cand * sel = hnew(sizeof(tri_triattn_cand) * stride);
        down(gm, dm, (size_t) groups * stride);
        long bad = 0;
        for (int g = 0; g < groups; g++) {
            tri_triattn_topk(s + (size_t) g * stride, nk[g], nk[groups + g], sel, cm);
            for (int j = 0; j < nk[g]; j++) {
                bad += gm[(size_t) g * stride + j] != cm[j];
            }
        }
        snprintf(detail, sizeof detail, "%d groups, stride %d, %s", groups, stride,
                 pass == 0 ? "distinct" : pass == 1 ? "ties" : "ties, NaN, -0");
        report("topk", detail, (double) bad, 0.0);
        tri_cuda_free(ds);
        tri_cuda_free(dnk);
        tri_cuda_free(dm);
        free(s);
        free(nk);
        free(gm);
        free(cm);
        free(sel);
    }
    tri_cuda_free(dK);
    tri_cuda_free(dw);
    tri_cuda_free(dcw);
    tri_cuda_free(dsc);
    tri_cuda_free(dagg);
    tri_cuda_free(dmean);
    tri_cuda_free(dlohi);
    free(hK);
    free(w);
    free(cw);
    free(lohi);
    free(sc);
    free(ref);
    free(agg);
    free(gagg);
    free(mean);
    free(gmean);
}

/* ---- benchmark -------------------------------------------------------------------------------- */

static double now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static int cmp_d(const void * a, const void * b) {
    const double x = *(const double *) a, y = *(const double *) b;
    return x < y ? -1 : x > y;
}

/* Median over reps of (10 launches + sync) / 10. */
#define BENCH(name, shape, call)                                                                   \
    do {                                                                                           \
        double t_[64];                                                                             \
        CU(call);                                                                                  \
        CU(tri_cuda_sync(NULL));                                                                   \
        for (int r_ = 0; r_ < reps; r_++) {                                                        \
            const double t0_ = now_us();                                                           \
            for (int i_ = 0; i_ < 10; i_++) {                                                      \
                CU(call);                                                                          \
            }                                                                                      \
            CU(tri_cuda_sync(NULL));                                                               \
            t_[r_] = (now_us() - t0_) / 10.0;                                                      \
        }                                                                                          \
        qsort(t_, (size_t) reps, sizeof(double), cmp_d);                                           \
        printf("{\"op\": \"%s\", \"shape\": \"%s\", \"us\": %.2f}\n", name, shape, t_[reps / 2]); \
    } while (0)

static int bench(int reps) {
    reps = TRI_MAX(1, TRI_MIN(reps, 64));
    /* SmolLM2-135M shapes: n_embd 576, n_ff 1536, 9/3 heads of 64, 30 layers, vocab 49152, budget 2048 + 128. */
    const int64_t E = 576, FF = 1536, V = 49152;
    const int H = 9, Hkv = 3, D = 64, L = 30, cap = 2176;
    char shape[96];
    for (int ti = 0; ti < N_TYPES; ti++) {
        const enum tri_type t = TYPES[ti].type;
        if (t != TRI_TYPE_Q4_1 && t != TRI_TYPE_Q8_0 && t != TRI_TYPE_Q4_K && t != TRI_TYPE_F16) {
            continue;
        }
        const int64_t ne0 = t == TRI_TYPE_Q4_K ? 1536 : E, ne1 = t == TRI_TYPE_Q4_K ? 576 : FF;
        float * wf = hnew(sizeof(float) * ne0 * ne1);
        size_t wb;
        void * wq = random_weights(ti, ne0, ne1, wf, &wb);
        void * dw = dnew(wb);
        up(dw, wq, wb);
        float * dx = dnew(sizeof(float) * 512 * ne0), * dy = dnew(sizeof(float) * 512 * ne1);
        CU(tri_cuda_memset(dx, 0, sizeof(float) * 512 * ne0, NULL));
        const char * tn = tri_type_traits_get(t)->name;
        snprintf(shape, sizeof shape, "%s %lldx%lld, 1 token", tn, (long long) ne1, (long long) ne0);
        BENCH("matmul_vec", shape, tri_cuda_matmul(t, dw, ne0, ne1, dx, ne0, 1, dy, ne1, NULL));
        snprintf(shape, sizeof shape, "%s %lldx%lld, 512 tokens", tn, (long long) ne1, (long long) ne0);
        BENCH("matmul_tiled", shape, tri_cuda_matmul(t, dw, ne0, ne1, dx, ne0, 512, dy, ne1, NULL));
        tri_cuda_free(dw);
        tri_cuda_free(dx);
        tri_cuda_free(dy);
        free(wq);
        free(wf);
    }
    {   /* logits: tied Q8_0 embedding as output, one token */
        float * wf = hnew(sizeof(float) * E * 4096);
        size_t wb;
        void * wq = random_weights(7, E, 4096, wf, &wb); /* 4096 rows, timed x12 for the full vocab */
        void * dw = dnew(wb);
        up(dw, wq, wb);
        float * dx = dnew(sizeof(float) * E), * dy = dnew(sizeof(float) * 4096);
        CU(tri_cuda_memset(dx, 0, sizeof(float) * E, NULL));
        snprintf(shape, sizeof shape, "Q8_0 4096x%lld (x%lld for the vocab), 1 token", (long long) E, (long long) V / 4096);
        BENCH("matmul_vec", shape, tri_cuda_matmul(TRI_TYPE_Q8_0, dw, E, 4096, dx, E, 1, dy, 4096, NULL));
        tri_cuda_free(dw);
        tri_cuda_free(dx);
        tri_cuda_free(dy);
        free(wq);
        free(wf);
    }
    /* one layer's KV cache, full of slots; attention of one decode token and of a 512-token chunk */
    const size_t slots = (size_t) L * Hkv * cap;
    void * K = dnew(slots * D * 2), * Vv = dnew(slots * D * 2);
    int32_t * pos = dnew(slots * 4), * live = dnew((size_t) L * Hkv * 4);
    {
        int32_t * hp = hnew(slots * 4), * hl = hnew((size_t) L * Hkv * 4);
        for (size_t i = 0; i < slots; i++) {
            hp[i] = (int32_t) (i % cap);
        }
        for (int i = 0; i < L * Hkv; i++) {
            hl[i] = cap - 512;
        }
        up(pos, hp, slots * 4);
        up(live, hl, (size_t) L * Hkv * 4);
        free(hp);
        free(hl);
    }
    CU(tri_cuda_memset(K, 0, slots * D * 2, NULL));
    CU(tri_cuda_memset(Vv, 0, slots * D * 2, NULL));
    float * q = dnew(sizeof(float) * 512 * H * D), * out = dnew(sizeof(float) * 512 * H * D);
    float * part = dnew(sizeof(float) * 512 * H * 64 * (D + 2));
    CU(tri_cuda_memset(q, 0, sizeof(float) * 512 * H * D, NULL));
    snprintf(shape, sizeof shape, "1 token over %d slots, 9/3 heads, D 64, 17 splits", cap - 511);
    BENCH("attention", shape, tri_cuda_attention(q, K, Vv, pos, live, 1, cap, H, Hkv, D, 1, cap - 512, 17, part, out, NULL));
    snprintf(shape, sizeof shape, "512 tokens over <= %d slots, 1 split", cap);
    BENCH("attention", shape, tri_cuda_attention(q, K, Vv, pos, live, 512, cap, H, Hkv, D, 512, cap - 512, 1, part, out, NULL));
    /* a TriAttention round's device steps over 30 layers x 3 KV heads of 2176 slots (2044 candidates) */
    {
        const size_t LK = (size_t) L * Hkv, LH = (size_t) L * H;
        int32_t * h = hnew(sizeof(int32_t) * 4 * LK);
        for (size_t i = 0; i < LK; i++) {
            h[i] = 4;
            h[LK + i] = cap - 128;
            h[2 * LK + i] = cap - 132;
            h[3 * LK + i] = 2048 - 132;
        }
        int32_t * dl = dnew(sizeof(int32_t) * 4 * LK);
        up(dl, h, sizeof(int32_t) * 4 * LK);
        float * w = dnew(sizeof(float) * LH * D), * sc = dnew(sizeof(float) * LH * cap), * agg = dnew(sizeof(float) * LK * cap);
        float * mean = dnew(sizeof(float) * Hkv * cap);
        uint8_t * mk = dnew(LK * cap);
        CU(tri_cuda_memset(w, 0, sizeof(float) * LH * D, NULL));
        snprintf(shape, sizeof shape, "%d layers x %d heads x %d candidates", L, H, cap - 132);
        BENCH("triattn_score", shape, tri_cuda_triattn_score(K, w, w, dl, dl + LK, L, H, Hkv, D, D, 0, cap, cap - 132, sc, NULL));
        BENCH("triattn_zscore", shape, tri_cuda_triattn_zscore(sc, dl, dl + LK, L, H, Hkv, cap, NULL));
        BENCH("triattn_gqa_max", shape, tri_cuda_triattn_gqa_max(sc, dl, dl + LK, L, H, Hkv, cap, cap - 132, agg, NULL));
        BENCH("triattn_layer_mean", shape, tri_cuda_triattn_layer_mean(agg, dl, dl + LK, L, Hkv, cap, cap - 132, 0, mean, NULL));
        snprintf(shape, sizeof shape, "%d KV heads, keep %d of %d", Hkv, 2048 - 132, cap - 132);
        BENCH("topk", shape, tri_cuda_topk(mean, dl + 2 * LK, dl + 3 * LK, Hkv, cap, mk, NULL));
        tri_cuda_free(dl);
        tri_cuda_free(w);
        tri_cuda_free(sc);
        tri_cuda_free(agg);
        tri_cuda_free(mean);
        tri_cuda_free(mk);
        free(h);
    }
    tri_cuda_free(K);
    tri_cuda_free(Vv);
    tri_cuda_free(pos);
    tri_cuda_free(live);
    tri_cuda_free(q);
    tri_cuda_free(out);
    tri_cuda_free(part);
    return 0;
}

int main(int argc, char ** argv) {
    const char * mode = argc > 1 ? argv[1] : "info";
    char why[256] = "";
    const int n_dev = tri_cuda_device_count(why, sizeof why);
    if (strcmp(mode, "info") == 0) {
        char name[256] = "";
        if (n_dev > 0 && tri_cuda_device_name(0, name, sizeof name) != TRIATTN_OK) {
            snprintf(name, sizeof name, "? (%s)", tri_cuda_last_error());
        }
        printf("{\"devices\": %d, \"reason\": \"%s\", \"device0\": \"%s\", \"cuda_available\": %s}\n", n_dev,
               n_dev > 0 ? "" : why, name, triattn_cuda_available() ? "true" : "false");
        return 0;
    }
    if (strcmp(mode, "parity") != 0 && strcmp(mode, "bench") != 0) {
        fprintf(stderr, "usage: tool_cuda info | parity | bench [reps]\n");
        return 2;
    }
    if (n_dev <= 0) {
        printf("no CUDA device: %s\n", why);
        return 2;
    }
    tri_ops_init();
    CU(tri_cuda_set_device(0));
    if (strcmp(mode, "bench") == 0) {
        return bench(argc > 2 ? atoi(argv[2]) : 9);
    }
    tu_seed_init("TRI_TEST_SEED");
    parity_dequant_matmul();
    parity_small_ops();
    for (int i = 0; i < 3; i++) {
        parity_kv_attention();
        parity_triattention();
    }
    return tu_finish();
}
