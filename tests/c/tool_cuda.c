/* tool_cuda: the CUDA ops against the CPU reference (only built with -DTRIATTN_CUDA=ON).
 *
 *   tool_cuda info           JSON: device count, the reason when 0, device name (works without a GPU)
 *   tool_cuda parity         every op on random shapes and inputs vs its CPU reference, one JSON line per
 *                            check with its error and tolerance, then "N passed, M failed" (exit 1 on failure)
 *   tool_cuda bench [reps]   JSON lines: median microseconds per op at the default model's shapes
 *
 * parity and bench need a device: without one they print the reason and exit 2. Seed: TRI_TEST_SEED. */
#include "triattn.h"

#include "backend_cuda.h"
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

/* Parity checks the kernels the engine runs under this environment: a switch set in it (docs/cuda.md) pins the
 * variant it names instead of a random draw, read as the engine reads it (backend_cuda.h). */
static bool env_set(const char * name) {
    return getenv(name) != NULL;
}

/* Activation type id (qchunk.h) of a weight type's products, 0 for float weights. */
static int act_type_of(enum tri_type t) {
    return tri_cuda_mm_act_type((int) t);
}

/* Device 8-bit activation buffers for rows x ld values. */
static tri_cuda_q8 q8_new(int rows, int64_t ld, int type) {
    tri_cuda_q8 q = { 0 };
    q.qs = dnew((size_t) rows * ld);
    q.meta = dnew(sizeof(tri_cuda_q8_meta) * rows * (ld / 32));
    q.ld = ld;
    q.type = type;
    return q;
}
static void q8_free(tri_cuda_q8 * q) {
    tri_cuda_free(q->qs);
    tri_cuda_free(q->meta);
}

/* The CPU's product of a weight row and an activation row: the activation converted to the weight's vec_dot type
 * by the reference quantizer, then the reference vec_dot. */
static float cpu_product(enum tri_type t, const void * wrow, const float * x, int64_t n, void * scratch) {
    const tri_type_traits * tt = tri_type_traits_get(t);
    const tri_type_traits * vt = tri_type_traits_get(tt->vec_dot_type);
    vt->from_float(x, scratch, n);
    float s = 0.0f;
    tt->vec_dot_ref((int) n, &s, wrow, scratch);
    return s;
}

/* Dequantization, embedding rows, the matrix-vector kernels (8-bit activations from act_prep, several jobs, bias,
 * accumulation) against the CPU's own products, and the tensor-core kernel against float64 on fp16-rounded inputs. */
static void parity_dequant_matmul(void) {
    for (int ti = 0; ti < N_TYPES; ti++) {
        const enum tri_type t = TYPES[ti].type;
        const char * name = tri_type_traits_get(t)->name;
        const int64_t qk = tri_type_traits_get(t)->blck_size;
        const int64_t unit = qk > 32 ? 256 : 32;
        const int64_t ne0 = unit * tu_int(1, 2048 / unit + 1);
        const int n_jobs = (int) tu_int(1, 3);
        int64_t ne1[3];
        float * wf[3];
        void * wq[3], * dw[3];
        size_t wbytes[3];
        for (int j = 0; j < n_jobs; j++) {
            ne1[j] = tu_int(1, 300);
            wf[j] = hnew(sizeof(float) * ne0 * ne1[j]);
            wq[j] = random_weights(ti, ne0, ne1[j], wf[j], &wbytes[j]);
            dw[j] = dnew(wbytes[j]);
            up(dw[j], wq[j], wbytes[j]);
        }
        char detail[128];
        /* dequantize: the CPU dequantizer's values bit for bit */
        {
            float * dq = dnew(sizeof(float) * ne0 * ne1[0]);
            float * got = hnew(sizeof(float) * ne0 * ne1[0]);
            CU(tri_cuda_dequantize(t, dw[0], ne0, ne1[0], dq, NULL));
            down(got, dq, sizeof(float) * ne0 * ne1[0]);
            long bad = 0;
            for (int64_t i = 0; i < ne0 * ne1[0]; i++) {
                bad += memcmp(&got[i], &wf[0][i], sizeof(float)) != 0;
            }
            snprintf(detail, sizeof detail, "%s %lldx%lld", name, (long long) ne1[0], (long long) ne0);
            report("dequantize", detail, (double) bad, 0.0);
            tri_cuda_free(dq);
            free(got);
        }
        /* embedding rows */
        {
            const int n_tok = (int) tu_int(1, 20);
            int32_t * ids = hnew(sizeof(int32_t) * n_tok);
            for (int i = 0; i < n_tok; i++) {
                ids[i] = (int32_t) tu_below((uint64_t) ne1[0]);
            }
            int32_t * dids = dnew(sizeof(int32_t) * n_tok);
            float * dout = dnew(sizeof(float) * n_tok * ne0), * out = hnew(sizeof(float) * n_tok * ne0);
            up(dids, ids, sizeof(int32_t) * n_tok);
            CU(tri_cuda_get_rows(t, dw[0], ne0, dids, n_tok, dout, NULL));
            down(out, dout, sizeof(float) * n_tok * ne0);
            long bad = 0;
            for (int i = 0; i < n_tok; i++) {
                bad += memcmp(out + (size_t) i * ne0, wf[0] + (size_t) ids[i] * ne0, sizeof(float) * ne0) != 0;
            }
            snprintf(detail, sizeof detail, "%s, %d rows", name, n_tok);
            report("get_rows", detail, (double) bad, 0.0);
            tri_cuda_free(dids);
            tri_cuda_free(dout);
            free(ids);
            free(out);
        }
        /* products: pass 0 matrix-vector (<= 8 tokens), pass 1 fp16 tensor cores, pass 2 integer tensor cores */
        for (int pass = 0; pass < 3; pass++) {
            if (pass == 2 && !act_type_of(t)) {
                continue; /* float weights have no integer products */
            }
            if (pass == 2 && tri_cu_mq_min() > TRI_CU_VEC_ROWS && tri_cu_mq_max() <= TRI_CU_VEC_ROWS) {
                continue; /* the engine runs no integer tensor-core product */
            }
            const int n_tok = pass == 0 ? (int) tu_int(1, TRI_CUDA_MV_TOK)
                            : pass == 1 ? (int) tu_int(1, 300)
                                        : (int) (tu_below(3) ? tu_int(1, TRI_CUDA_MQ_TOK) : tu_int(33, 150));
            const int bn = 32 << tu_below(3);
            const int64_t ldx = ne0 + 4 * tu_int(0, 3);
            const bool accumulate = tu_below(2) == 0;
            float * x = hnew(sizeof(float) * n_tok * ldx);
            fill_normal(x, (size_t) n_tok * ldx, 1.0);
            float * dx = dnew(sizeof(float) * n_tok * ldx);
            up(dx, x, sizeof(float) * n_tok * ldx);
            tri_cuda_mm_job jobs[3];
            float * y0[3], * bias[3], * dbias[3];
            for (int j = 0; j < n_jobs; j++) {
                const int64_t ldy = ne1[j] + tu_int(0, 3);
                y0[j] = hnew(sizeof(float) * n_tok * ldy);
                fill_normal(y0[j], (size_t) n_tok * ldy, 1.0);
                bias[j] = NULL;
                dbias[j] = NULL;
                if (tu_below(2)) {
                    bias[j] = hnew(sizeof(float) * ne1[j]);
                    fill_normal(bias[j], (size_t) ne1[j], 1.0);
                    dbias[j] = dnew(sizeof(float) * ne1[j]);
                    up(dbias[j], bias[j], sizeof(float) * ne1[j]);
                }
                float * dy = dnew(sizeof(float) * n_tok * ldy);
                up(dy, y0[j], sizeof(float) * n_tok * ldy);
                jobs[j] = (tri_cuda_mm_job) { dw[j], ne1[j], dy, ldy, dbias[j] };
            }
            const int at = act_type_of(t);
            tri_cuda_q8 q8 = { 0 };
            if (pass != 1) {
                if (at) {
                    q8 = q8_new(n_tok, ldx + (32 - ldx % 32) % 32, at);
                    CU(tri_cuda_act_prep(dx, ldx, NULL, false, NULL, 0.0f, n_tok, (int) ne0, NULL, 0, &q8, 1, NULL));
                }
                if (pass == 0) {
                    CU(tri_cuda_mm_vec(t, ne0, jobs, n_jobs, dx, ldx, at ? &q8 : NULL, n_tok, accumulate, NULL));
                } else {
                    CU(tri_cuda_mm_q(t, ne0, jobs, n_jobs, &q8, n_tok, accumulate, NULL));
                }
            } else {
                CU(tri_cuda_mm_tc_bn(t, ne0, jobs, n_jobs, dx, ldx, n_tok, accumulate, bn, NULL));
            }
            double worst = 0.0;
            void * scratch = hnew((size_t) ne0 * 4 + 1024);
            const size_t rb = tri_row_size(t, ne0);
            for (int j = 0; j < n_jobs; j++) {
                float * y = hnew(sizeof(float) * n_tok * jobs[j].ldy);
                down(y, jobs[j].y, sizeof(float) * n_tok * jobs[j].ldy);
                for (int tk = 0; tk < n_tok; tk++) {
                    for (int64_t r = 0; r < ne1[j]; r++) {
                        double ref = 0.0, mag = 1e-30;
                        if (pass != 1 && at) { /* the CPU's product: same integers, float order aside */
                            ref = cpu_product(t, (const char *) wq[j] + r * rb, x + tk * ldx, ne0, scratch);
                            for (int64_t i = 0; i < ne0; i++) {
                                mag += fabs((double) wf[j][r * ne0 + i] * x[tk * ldx + i]);
                            }
                        } else { /* float64 over the rounded inputs the kernel multiplies */
                            for (int64_t i = 0; i < ne0; i++) {
                                float w = wf[j][r * ne0 + i], xv = x[tk * ldx + i];
                                if (pass == 1 || t == TRI_TYPE_F16) {
                                    xv = tri_fp16_to_fp32(tri_fp32_to_fp16(xv));
                                }
                                if (pass == 1) {
                                    w = tri_fp16_to_fp32(tri_fp32_to_fp16(w));
                                }
                                ref += (double) w * xv;
                                mag += fabs((double) w * xv);
                            }
                        }
                        const double base = (accumulate ? y0[j][tk * jobs[j].ldy + r] : 0.0) + (bias[j] ? bias[j][r] : 0.0);
                        worst = tu_max(worst, fabs(y[tk * jobs[j].ldy + r] - base - ref) / mag);
                    }
                }
                /* padding columns of y stay untouched */
                for (int tk = 0; tk < n_tok; tk++) {
                    for (int64_t r = ne1[j]; r < jobs[j].ldy; r++) {
                        worst = tu_max(worst, y[tk * jobs[j].ldy + r] != y0[j][tk * jobs[j].ldy + r] ? 1.0 : 0.0);
                    }
                }
                free(y);
            }
            char tile[16] = "";
            if (pass == 1) {
                snprintf(tile, sizeof tile, ", tile %d", bn);
            }
            snprintf(detail, sizeof detail, "%s %d jobs x %lld, %d tokens%s%s", name, n_jobs, (long long) ne0, n_tok,
                     accumulate ? ", accumulate" : "", tile);
            report(pass == 0 ? "mm_vec" : pass == 1 ? "mm_tc" : "mm_q", detail, worst, pass == 1 ? 1e-5 : 2e-5);
            for (int j = 0; j < n_jobs; j++) {
                tri_cuda_free(jobs[j].y);
                tri_cuda_free(dbias[j]);
                free(y0[j]);
                free(bias[j]);
            }
            if (q8.qs) {
                q8_free(&q8);
            }
            tri_cuda_free(dx);
            free(x);
            free(scratch);
        }
        for (int j = 0; j < n_jobs; j++) {
            tri_cuda_free(dw[j]);
            free(wq[j]);
            free(wf[j]);
        }
    }
}

/* act_prep: RMSNorm / SwiGLU / plain rows as floats and as 8-bit codes equal to the reference quantizers' bytes. */
static void parity_act_prep(void) {
    char detail[128];
    static const int acts[3] = { TRI_TYPE_Q8_0, TRI_TYPE_Q8_1, TRI_TYPE_Q8_K };
    for (int pass = 0; pass < 3; pass++) { /* 0 norm, 1 swiglu, 2 plain */
        const int rows = (int) tu_int(1, 12), n = 256 * (int) tu_int(1, 12);
        const int64_t ld = n + 4 * tu_int(0, 4);
        float * x = hnew(sizeof(float) * rows * ld), * u = hnew(sizeof(float) * rows * ld), * w = hnew(sizeof(float) * n);
        fill_normal(x, (size_t) rows * ld, 2.0);
        fill_normal(u, (size_t) rows * ld, 1.0);
        fill_normal(w, (size_t) n, 1.0);
        float * dx = dnew(sizeof(float) * rows * ld), * du = dnew(sizeof(float) * rows * ld);
        float * dwn = dnew(sizeof(float) * n), * df = dnew(sizeof(float) * rows * n);
        up(dx, x, sizeof(float) * rows * ld);
        up(du, u, sizeof(float) * rows * ld);
        up(dwn, w, sizeof(float) * n);
        const int a0 = acts[tu_below(3)], a1 = acts[tu_below(3)];
        tri_cuda_q8 q8[2] = { q8_new(rows, n, a0), q8_new(rows, n, a1) };
        const bool weighted = tu_below(2) == 0;
        CU(tri_cuda_act_prep(dx, ld, pass == 1 ? du : NULL, pass == 0, weighted ? dwn : NULL, 1e-5f, rows, n, df, n, q8,
                             2, NULL));
        float * f = hnew(sizeof(float) * rows * n), * ref = hnew(sizeof(float) * n);
        down(f, df, sizeof(float) * rows * n);
        double e = 0.0;
        long bad = 0;
        int8_t * gq = hnew((size_t) n);
        tri_cuda_q8_meta * gm = hnew(sizeof(tri_cuda_q8_meta) * n / 32);
        void * blocks = hnew((size_t) n * 2);
        for (int r = 0; r < rows; r++) {
            const float * xr = x + r * ld;
            if (pass == 0) {
                tri_rmsnorm(xr, weighted ? w : NULL, ref, n, 1e-5f);
            } else if (pass == 1) {
                memcpy(ref, xr, sizeof(float) * n);
                tri_silu_mul(ref, u + r * ld, n);
            } else {
                memcpy(ref, xr, sizeof(float) * n);
            }
            for (int i = 0; i < n; i++) {
                e = tu_max(e, fabs((double) f[r * n + i] - ref[i]) / (fabs(ref[i]) + 1e-3));
            }
            /* codes and scales of each output against the reference quantizer applied to the device's floats */
            for (int o = 0; o < 2; o++) {
                const tri_type_traits * vt = tri_type_traits_get((enum tri_type) q8[o].type);
                vt->from_float(f + r * n, blocks, n);
                down(gq, q8[o].qs + (size_t) r * n, (size_t) n);
                down(gm, q8[o].meta + (size_t) r * (n / 32), sizeof(tri_cuda_q8_meta) * n / 32);
                for (int c = 0; c < n / 32; c++) {
                    const int8_t * qs;
                    float d, sv = 0.0f;
                    if (q8[o].type == TRI_TYPE_Q8_K) {
                        const tri_block_q8_K * b = (const tri_block_q8_K *) blocks + c / 8;
                        qs = b->qs + 32 * (c % 8);
                        d = b->d;
                    } else if (q8[o].type == TRI_TYPE_Q8_1) {
                        qs = ((const tri_block_q8_1 *) blocks)[c].qs;
                        d = tri_fp16_to_fp32(((const tri_block_q8_1 *) blocks)[c].d);
                        sv = tri_fp16_to_fp32(((const tri_block_q8_1 *) blocks)[c].s);
                    } else {
                        qs = ((const tri_block_q8_0 *) blocks)[c].qs;
                        d = tri_fp16_to_fp32(((const tri_block_q8_0 *) blocks)[c].d);
                    }
                    int s0 = 0, s1 = 0;
                    for (int i = 0; i < 16; i++) {
                        s0 += qs[i];
                        s1 += qs[16 + i];
                    }
                    bad += memcmp(gq + 32 * c, qs, 32) != 0 || memcmp(&gm[c].d, &d, sizeof d) != 0 ||
                           memcmp(&gm[c].s, &sv, sizeof sv) != 0 || gm[c].sum[0] != s0 || gm[c].sum[1] != s1;
                }
            }
        }
        snprintf(detail, sizeof detail, "%s, %d rows of %d", pass == 0 ? (weighted ? "rmsnorm" : "rmsnorm, no weight")
                 : pass == 1 ? "swiglu" : "plain", rows, n);
        report("act_prep", detail, e, pass == 1 ? 2e-6 : 2e-6);
        /* rmsnorm and silu differ from the CPU's by float rounding, so codes can differ only where the device's
         * floats do: compare them with the reference quantizer on the device's own floats */
        report("act_prep_q8", detail, (double) bad, 0.0);
        q8_free(&q8[0]);
        q8_free(&q8[1]);
        tri_cuda_free(dx);
        tri_cuda_free(du);
        tri_cuda_free(dwn);
        tri_cuda_free(df);
        free(x);
        free(u);
        free(w);
        free(f);
        free(ref);
        free(gq);
        free(gm);
        free(blocks);
    }
}

/* A test cache of one session: L layers x Hkv heads x cap slots, on the device and mirrored on the host. */
typedef struct test_cache {
    int L, Hkv, cap, D;
    tri_fp16 * K, * V, * hK, * hV;
    int32_t * pos, * live, * hpos, * hlive;
} test_cache;

static test_cache cache_new(int L, int Hkv, int cap, int D) {
    test_cache c = { L, Hkv, cap, D, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL };
    const size_t slots = (size_t) L * Hkv * cap;
    c.K = dnew(slots * D * 2);
    c.V = dnew(slots * D * 2);
    c.pos = dnew(slots * 4);
    c.live = dnew((size_t) L * Hkv * 4);
    CU(tri_cuda_memset(c.live, 0, (size_t) L * Hkv * 4, NULL));
    c.hK = hnew(slots * D * 2);
    c.hV = hnew(slots * D * 2);
    c.hpos = hnew(slots * 4);
    c.hlive = calloc((size_t) L * Hkv, 4);
    return c;
}
static void cache_free(test_cache * c) {
    tri_cuda_free(c->K);
    tri_cuda_free(c->V);
    tri_cuda_free(c->pos);
    tri_cuda_free(c->live);
    free(c->hK);
    free(c->hV);
    free(c->hpos);
    free(c->hlive);
}

/* float64 attention of query q (D values) at position p over the visible slots of (il, h) of a test cache. */
static void ref_attention(const test_cache * c, int il, int h, const float * q, double * sc, double * out) {
    const size_t lh = (size_t) il * c->Hkv + h;
    const int D = c->D;
    int nv = 0;
    (void) nv;
    double mx = -INFINITY, sum = 0.0;
    const int n = c->hlive[lh];
    for (int j = 0; j < n; j++) {
        double dot = 0.0;
        for (int d = 0; d < D; d++) {
            dot += (double) q[d] * tri_fp16_to_fp32(c->hK[(lh * c->cap + j) * D + d]);
        }
        sc[j] = dot / sqrt((double) D);
        mx = tu_max(mx, sc[j]);
    }
    for (int j = 0; j < n; j++) {
        sum += exp(sc[j] - mx);
    }
    for (int d = 0; d < D; d++) {
        double o = 0.0;
        for (int j = 0; j < n; j++) {
            o += exp(sc[j] - mx) / sum * tri_fp16_to_fp32(c->hV[(lh * c->cap + j) * D + d]);
        }
        out[d] = o;
    }
}

/* A forward step's K/V work and attention over two sessions: qkv_post (q/k norms, RoPE in both pairings, append
 * at each session's own slots), attention of every row over its own cache (several splits), the live-count bump,
 * and compaction. Session A takes a chunk of n tokens, session B one token (as in a batched decode). */
static void parity_kv_attention(void) {
    char detail[160];
    const int L = (int) tu_int(1, 3), Hkv = (int) tu_int(1, 4), G = (int) tu_int(1, 10), H = Hkv * G;
    /* head_dim: any multiple of 16, or one the tensor-core kernel takes (64, 128) */
    const int D = tu_below(2) ? 16 * (int) tu_int(1, 8) : 64 * (int) tu_int(1, 2);
    const int R = 2 * (int) tu_int(1, D / 2), pairing = (int) tu_below(2);
    test_cache cs[2] = { cache_new(L, Hkv, (int) tu_int(16, 700), D), cache_new(L, Hkv, (int) tu_int(16, 300), D) };
    int32_t past[2] = { (int32_t) tu_int(0, 1000), (int32_t) tu_int(0, 5000) };
    const bool norms = tu_below(2) == 0;
    float * qn = hnew(sizeof(float) * D), * kn = hnew(sizeof(float) * D);
    fill_normal(qn, D, 1.0);
    fill_normal(kn, D, 1.0);
    float * dqn = dnew(sizeof(float) * D), * dkn = dnew(sizeof(float) * D);
    up(dqn, qn, sizeof(float) * D);
    up(dkn, kn, sizeof(float) * D);
    const tri_cuda_heads hd = { H, Hkv, D, R, pairing, 1e-6f };
    double worst_q = 0.0, worst_att = 0.0, worst_mma = 0.0;
    long bad = 0;
    const int n_steps = (int) tu_int(1, 4);
    int steps_run = 0;
    for (int step = 0; step < n_steps; step++) {
        const int nA = (int) tu_int(1, TRI_MIN(cs[0].cap - cs[0].hlive[0], 150));
        if (cs[0].cap - cs[0].hlive[0] < 1 || cs[1].cap - cs[1].hlive[0] < 1 || nA < 1) {
            break;
        }
        steps_run++;
        const int n = nA + 1; /* rows: A's chunk, then B's token */
        tri_cuda_row rows[151 + 1];
        float * q = hnew(sizeof(float) * n * H * D), * k = hnew(sizeof(float) * n * Hkv * D);
        float * v = hnew(sizeof(float) * n * Hkv * D), * cst = hnew(sizeof(float) * n * R);
        fill_normal(q, (size_t) n * H * D, 1.0);
        fill_normal(k, (size_t) n * Hkv * D, 1.0);
        fill_normal(v, (size_t) n * Hkv * D, 1.0);
        for (int r = 0; r < n; r++) {
            const int sess = r < nA ? 0 : 1, rank = r < nA ? r : 0;
            const int32_t position = past[sess] + rank;
            for (int f = 0; f < R / 2; f++) {
                const double th = position * pow(10000.0, -2.0 * f / R);
                cst[r * R + 2 * f] = (float) cos(th);
                cst[r * R + 2 * f + 1] = (float) sin(th);
            }
            const test_cache * c = &cs[sess];
            rows[r] = (tri_cuda_row) { c->K, c->V, c->pos, c->live, c->cap, position, rank, sess == 0 ? nA : 1 };
        }
        float * dq = dnew(sizeof(float) * n * H * D), * dk = dnew(sizeof(float) * n * Hkv * D);
        float * dv = dnew(sizeof(float) * n * Hkv * D), * dcs = dnew(sizeof(float) * n * R);
        tri_cuda_row * drows = dnew(sizeof(tri_cuda_row) * n);
        up(dq, q, sizeof(float) * n * H * D);
        up(dk, k, sizeof(float) * n * Hkv * D);
        up(dv, v, sizeof(float) * n * Hkv * D);
        up(dcs, cst, sizeof(float) * n * R);
        up(drows, rows, sizeof(tri_cuda_row) * n);
        /* host reference of qkv_post: norms, rope (the CPU's functions), F16 append */
        for (int r = 0; r < n; r++) {
            float * qr = q + (size_t) r * H * D, * kr = k + (size_t) r * Hkv * D;
            if (norms) {
                for (int h = 0; h < H; h++) {
                    tri_rmsnorm(qr + h * D, qn, qr + h * D, D, 1e-6f);
                }
                for (int h = 0; h < Hkv; h++) {
                    tri_rmsnorm(kr + h * D, kn, kr + h * D, D, 1e-6f);
                }
            }
            tri_rope(qr, H, D, R, cst + r * R, pairing ? TRI_ROPE_HALF : TRI_ROPE_ADJACENT);
            tri_rope(kr, Hkv, D, R, cst + r * R, pairing ? TRI_ROPE_HALF : TRI_ROPE_ADJACENT);
        }
        float * gq = hnew(sizeof(float) * n * H * D), * gout = hnew(sizeof(float) * n * H * D);
        const int il = (int) tu_below((uint64_t) L);
        /* a few parts, or many (more than a merge thread each, most of them empty) */
        const int parts = tu_below(4) == 0 ? (int) tu_int(65, TRI_CUDA_ATT_MAX_PARTS) : (int) tu_int(1, 9);
        float * dpart = dnew(sizeof(float) * n * H * parts * (D + 2)), * dout = dnew(sizeof(float) * n * H * D);
        const size_t nt = (size_t) n * TRI_CUDA_ATT_TICKETS(H, Hkv);
        int * dtickets = dnew(sizeof(int) * nt);
        CU(tri_cuda_memset(dtickets, 0, sizeof(int) * nt, NULL));
        CU(tri_cuda_qkv_post(dq, dk, dv, norms ? dqn : NULL, norms ? dkn : NULL, dcs, drows, n, il, &hd, L, NULL));
        /* the merge in the same launch, or a second kernel's */
        const bool fused = env_set("TRIATTN_CUDA_ATT_FUSED") ? tri_cuda_env_flag("TRIATTN_CUDA_ATT_FUSED", true)
                                                             : tu_below(4) != 0;
        CU(tri_cuda_attention(dq, drows, n, il, H, Hkv, D, 1.0f / sqrtf((float) D), parts, false, dpart,
                              fused ? dtickets : NULL, dout, NULL));
        down(gq, dq, sizeof(float) * n * H * D);
        down(gout, dout, sizeof(float) * n * H * D);
        /* session A's chunk alone, as one session's rows (tensor cores for D 64 and 128, unless
         * TRIATTN_CUDA_ATT_MMA_MIN=0 turns them off) */
        const bool mma = tri_cu_att_mma_min() != INT32_MAX;
        CU(tri_cuda_attention(dq, drows, nA, il, H, Hkv, D, 1.0f / sqrtf((float) D), parts, mma, dpart,
                              fused ? dtickets : NULL, dout, NULL));
        float * gmma = hnew(sizeof(float) * nA * H * D);
        down(gmma, dout, sizeof(float) * nA * H * D);
        /* the part counters are back to zero for the next launch */
        int * gt = hnew(sizeof(int) * nt);
        down(gt, dtickets, sizeof(int) * nt);
        for (size_t i = 0; i < nt; i++) {
            worst_att = gt[i] != 0 ? INFINITY : worst_att;
        }
        free(gt);
        tri_cuda_free(dtickets);
        for (size_t i = 0; i < (size_t) n * H * D; i++) {
            worst_q = tu_max(worst_q, fabs((double) gq[i] - q[i]) / (fabs(q[i]) + 1e-2));
        }
        /* host cache append at layer il, then float64 attention of every row over its prefix */
        for (int r = 0; r < n; r++) {
            test_cache * c = &cs[r < nA ? 0 : 1];
            for (int h = 0; h < Hkv; h++) {
                const size_t lh = (size_t) il * Hkv + h;
                const int slot = c->hlive[lh] + rows[r].rank;
                for (int d = 0; d < D; d++) {
                    c->hK[(lh * c->cap + slot) * D + d] = tri_fp32_to_fp16(k[((size_t) r * Hkv + h) * D + d]);
                    c->hV[(lh * c->cap + slot) * D + d] = tri_fp32_to_fp16(v[((size_t) r * Hkv + h) * D + d]);
                }
                c->hpos[lh * c->cap + slot] = rows[r].position;
            }
        }
        double * sc = hnew(sizeof(double) * 1024), * o = hnew(sizeof(double) * D);
        for (int r = 0; r < n; r++) {
            test_cache * c = &cs[r < nA ? 0 : 1];
            for (int hq = 0; hq < H; hq++) {
                const size_t lh = (size_t) il * Hkv + hq / G;
                const int saved = c->hlive[lh];
                c->hlive[lh] += rows[r].rank + 1; /* visible: what was there, and the chunk up to this row */
                ref_attention(c, il, hq / G, q + ((size_t) r * H + hq) * D, sc, o);
                c->hlive[lh] = saved;
                for (int d = 0; d < D; d++) {
                    worst_att = tu_max(worst_att, fabs(gout[((size_t) r * H + hq) * D + d] - o[d]));
                    if (r < nA) {
                        worst_mma = tu_max(worst_mma, fabs(gmma[((size_t) r * H + hq) * D + d] - o[d]));
                    }
                }
            }
        }
        /* the other layers append nothing in this test: only il's counts move */
        CU(tri_cuda_kv_bump(drows, n, L * Hkv, NULL));
        for (int s2 = 0; s2 < 2; s2++) {
            for (int i = 0; i < L * Hkv; i++) {
                cs[s2].hlive[i] += s2 == 0 ? nA : 1;
            }
        }
        /* layers other than il got no rows: give them the same contents so the mirror stays exact */
        for (int s2 = 0; s2 < 2; s2++) {
            test_cache * c = &cs[s2];
            const size_t sl = (size_t) c->cap * D;
            for (int l = 0; l < L; l++) {
                if (l == il) {
                    continue;
                }
                for (int h = 0; h < Hkv; h++) {
                    const size_t dst = (size_t) l * Hkv + h, src = (size_t) il * Hkv + h;
                    memcpy(c->hK + dst * sl, c->hK + src * sl, sl * 2);
                    memcpy(c->hV + dst * sl, c->hV + src * sl, sl * 2);
                    memcpy(c->hpos + dst * c->cap, c->hpos + src * c->cap, (size_t) c->cap * 4);
                }
            }
            up(c->K, c->hK, (size_t) L * Hkv * sl * 2);
            up(c->V, c->hV, (size_t) L * Hkv * sl * 2);
            up(c->pos, c->hpos, (size_t) L * Hkv * c->cap * 4);
        }
        past[0] += nA + (int32_t) tu_int(0, 50);
        past[1] += 1 + (int32_t) tu_int(0, 50);
        tri_cuda_free(dq);
        tri_cuda_free(dk);
        tri_cuda_free(dv);
        tri_cuda_free(dcs);
        tri_cuda_free(drows);
        tri_cuda_free(dpart);
        tri_cuda_free(dout);
        free(q);
        free(k);
        free(v);
        free(cst);
        free(gq);
        free(gout);
        free(gmma);
        free(sc);
        free(o);
    }
    /* the device cache equals the host's F16 conversions, bit for bit */
    for (int s2 = 0; s2 < 2; s2++) {
        test_cache * c = &cs[s2];
        const size_t slots = (size_t) L * Hkv * c->cap;
        tri_fp16 * gK = hnew(slots * D * 2);
        int32_t * gpos = hnew(slots * 4), * glive = hnew((size_t) L * Hkv * 4);
        down(gK, c->K, slots * D * 2);
        down(gpos, c->pos, slots * 4);
        down(glive, c->live, (size_t) L * Hkv * 4);
        for (size_t lh = 0; lh < (size_t) L * Hkv; lh++) {
            bad += glive[lh] != c->hlive[lh];
            for (int j = 0; j < c->hlive[lh]; j++) {
                bad += gpos[lh * c->cap + j] != c->hpos[lh * c->cap + j];
                bad += memcmp(gK + (lh * c->cap + j) * D, c->hK + (lh * c->cap + j) * D, (size_t) D * 2) != 0;
            }
        }
        free(gK);
        free(gpos);
        free(glive);
    }
    snprintf(detail, sizeof detail, "%d steps, %d layers, %d/%d heads, D %d, rope %d %s%s", steps_run, L, H, Hkv, D, R,
             pairing ? "half" : "adjacent", norms ? ", q/k norms" : "");
    report("qkv_post", detail, worst_q, 2e-5);
    report("attention", detail, worst_att, 2e-5);
    /* Q and the weights in fp16: errors up to a few 1e-3 on values ~N(0, 1) (tests/c/test_cuda_atile.c) */
    report("attention_chunk", detail, worst_mma, 6e-3);
    report("kv_append", detail, (double) bad, 0.0);

    /* compaction: random increasing keep lists, one (layer, KV head) left untouched */
    test_cache * c = &cs[0];
    const size_t slots = (size_t) L * Hkv * c->cap;
    int32_t * keep = hnew(slots * 4), * nkeep = hnew((size_t) L * Hkv * 4);
    for (size_t lh = 0; lh < (size_t) L * Hkv; lh++) {
        int32_t nk = 0;
        for (int j = 0; j < c->hlive[lh]; j++) {
            if (tu_below(3) != 0) {
                keep[lh * c->cap + nk++] = j;
            }
        }
        nkeep[lh] = (lh == 0 && L * Hkv > 1) ? -1 : nk;
    }
    int32_t * dkeep = dnew(slots * 4), * dnkeep = dnew((size_t) L * Hkv * 4);
    up(dkeep, keep, slots * 4);
    up(dnkeep, nkeep, (size_t) L * Hkv * 4);
    CU(tri_cuda_kv_gather(c->K, c->V, c->pos, c->live, dkeep, dnkeep, L * Hkv, c->cap, D, NULL));
    tri_fp16 * gK = hnew(slots * D * 2), * gV = hnew(slots * D * 2);
    int32_t * gpos = hnew(slots * 4), * glive = hnew((size_t) L * Hkv * 4);
    down(gK, c->K, slots * D * 2);
    down(gV, c->V, slots * D * 2);
    down(gpos, c->pos, slots * 4);
    down(glive, c->live, (size_t) L * Hkv * 4);
    bad = 0;
    for (size_t lh = 0; lh < (size_t) L * Hkv; lh++) {
        const int32_t nk = nkeep[lh] < 0 ? c->hlive[lh] : nkeep[lh];
        bad += glive[lh] != nk;
        for (int r = 0; r < nk; r++) {
            const int src = nkeep[lh] < 0 ? r : keep[lh * c->cap + r];
            bad += gpos[lh * c->cap + r] != c->hpos[lh * c->cap + src];
            bad += memcmp(gK + (lh * c->cap + r) * D, c->hK + (lh * c->cap + src) * D, (size_t) D * 2) != 0;
            bad += memcmp(gV + (lh * c->cap + r) * D, c->hV + (lh * c->cap + src) * D, (size_t) D * 2) != 0;
        }
    }
    report("kv_gather", detail, (double) bad, 0.0);
    tri_cuda_free(dkeep);
    tri_cuda_free(dnkeep);
    tri_cuda_free(dqn);
    tri_cuda_free(dkn);
    free(keep);
    free(nkeep);
    free(gK);
    free(gV);
    free(gpos);
    free(glive);
    free(qn);
    free(kn);
    cache_free(&cs[0]);
    cache_free(&cs[1]);
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
                    e = tu_max(e, fabs(sc[(row0 + g) * cap + j] - r) / (fabs(r) + 1.0));
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
                ez = tu_max(ez, fabs(sc[(row0 + g) * cap + j] - ref[(row0 + g) * cap + j]));
            }
        }
        for (int j = 0; j < n; j++) {
            float a = sc[row0 * cap + j]; /* GQA max of the device's z-scores: exact */
            for (int g = 1; g < G; g++) {
                const float v = sc[(row0 + g) * cap + j];
                a = v > a ? v : a;
            }
            agg[i * cap + j] = a;
            ea = tu_max(ea, fabs(gagg[i * cap + j] - a));
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
            em = tu_max(em, fabs(gmean[(size_t) h * cap + j] - mean[(size_t) h * cap + j]));
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

/* Median over reps of (20 launches + sync) / 20; prints the op, shape, microseconds and, when bytes > 0, the
 * bytes moved per microsecond as GB/s (flops > 0: TFLOP/s). */
#define BENCH(name, shape, bytes, flops, call)                                                     \
    do {                                                                                           \
        double t_[64];                                                                             \
        CU(call);                                                                                  \
        CU(tri_cuda_sync(NULL));                                                                   \
        for (int r_ = 0; r_ < reps; r_++) {                                                        \
            const double t0_ = now_us();                                                           \
            for (int i_ = 0; i_ < 20; i_++) {                                                      \
                CU(call);                                                                          \
            }                                                                                      \
            CU(tri_cuda_sync(NULL));                                                               \
            t_[r_] = (now_us() - t0_) / 20.0;                                                      \
        }                                                                                          \
        qsort(t_, (size_t) reps, sizeof(double), cmp_d);                                           \
        const double us_ = t_[reps / 2];                                                           \
        printf("{\"op\": \"%s\", \"shape\": \"%s\", \"us\": %.2f, \"gb_s\": %.1f, \"tflop_s\": %.2f}\n", name, \
               shape, us_, (bytes) > 0 ? (double) (bytes) / us_ / 1e3 : 0.0,                        \
               (flops) > 0 ? (double) (flops) / us_ / 1e6 : 0.0);                                   \
    } while (0)

static int type_index(enum tri_type t) {
    for (int i = 0; i < N_TYPES; i++) {
        if (TYPES[i].type == t) {
            return i;
        }
    }
    return 0;
}

static int bench(int reps) {
    reps = TRI_MAX(1, TRI_MIN(reps, 64));
    char shape[128];
    /* products at the shapes of a 1.1B Llama (n_embd 2048, n_ff 8192) and one large matrix for bandwidth */
    static const enum tri_type types[] = { TRI_TYPE_Q4_K, TRI_TYPE_Q6_K, TRI_TYPE_Q5_0, TRI_TYPE_Q8_0, TRI_TYPE_Q4_1,
                                           TRI_TYPE_F16 };
    static const int64_t shapes[][2] = { { 2048, 2048 }, { 2048, 8192 }, { 8192, 2048 }, { 8192, 8192 } };
    for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
        const enum tri_type t = types[ti];
        const char * tn = tri_type_traits_get(t)->name;
        for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
            const int64_t ne0 = shapes[si][0], ne1 = shapes[si][1];
            if (t != TRI_TYPE_Q4_K && si != 3) {
                continue; /* other types: the bandwidth shape only */
            }
            float * wf = hnew(sizeof(float) * ne0 * ne1);
            size_t wb;
            void * wq = random_weights(type_index(t), ne0, ne1, wf, &wb);
            void * dw = dnew(wb);
            up(dw, wq, wb);
            float * x = hnew(sizeof(float) * 512 * ne0);
            fill_normal(x, (size_t) 512 * ne0, 1.0);
            float * dx = dnew(sizeof(float) * 512 * ne0), * dy = dnew(sizeof(float) * 512 * ne1);
            up(dx, x, sizeof(float) * 512 * ne0);
            const int at = act_type_of(t);
            tri_cuda_q8 q8 = at ? q8_new(512, ne0, at) : (tri_cuda_q8) { 0 };
            if (at) {
                CU(tri_cuda_act_prep(dx, ne0, NULL, false, NULL, 0.0f, 512, (int) ne0, NULL, 0, &q8, 1, NULL));
            }
            tri_cuda_mm_job job = { dw, ne1, dy, ne1, NULL };
            for (int nt = 1; nt <= 8; nt = nt == 1 ? 4 : 2 * nt) {
                snprintf(shape, sizeof shape, "%s %lldx%lld, %d token%s", tn, (long long) ne1, (long long) ne0, nt,
                         nt > 1 ? "s" : "");
                BENCH("mm_vec", shape, (double) wb, 0.0,
                      tri_cuda_mm_vec(t, ne0, &job, 1, dx, ne0, at ? &q8 : NULL, nt, false, NULL));
            }
            for (int nt = 4; at && nt <= 512; nt = nt == TRI_CUDA_MQ_TOK ? 512 : 2 * nt) { /* integer tensor cores */
                snprintf(shape, sizeof shape, "%s %lldx%lld, %d tokens", tn, (long long) ne1, (long long) ne0, nt);
                BENCH("mm_q", shape, (double) wb, 2.0 * ne0 * ne1 * nt,
                      tri_cuda_mm_q(t, ne0, &job, 1, &q8, nt, false, NULL));
            }
            for (int bn = 32; bn <= 128; bn *= 2) {
                snprintf(shape, sizeof shape, "%s %lldx%lld, 512 tokens, tile %d", tn, (long long) ne1, (long long) ne0, bn);
                BENCH("mm_tc", shape, 0.0, 2.0 * ne0 * ne1 * 512,
                      tri_cuda_mm_tc_bn(t, ne0, &job, 1, dx, ne0, 512, false, bn, NULL));
            }
            if (at) {
                snprintf(shape, sizeof shape, "%lld values, 1 row, rmsnorm + %s", (long long) ne0,
                         at == TRI_TYPE_Q8_K ? "Q8_K" : at == TRI_TYPE_Q8_1 ? "Q8_1" : "Q8_0");
                BENCH("act_prep", shape, 0.0, 0.0,
                      tri_cuda_act_prep(dx, ne0, NULL, true, NULL, 1e-5f, 1, (int) ne0, NULL, 0, &q8, 1, NULL));
                q8_free(&q8);
            }
            tri_cuda_free(dw);
            tri_cuda_free(dx);
            tri_cuda_free(dy);
            free(wq);
            free(wf);
            free(x);
        }
    }
    /* attention of one layer: 32/8 heads of 64, one decode row over 2176 and 16384 slots, and a 512-row chunk */
    {
        const int H = 32, Hkv = 8, D = 64, L = 1;
        static const int caps[] = { 2176, 16384 };
        for (int ci = 0; ci < 2; ci++) {
            const int cap = caps[ci];
            test_cache c = cache_new(L, Hkv, cap, D);
            const size_t slots = (size_t) L * Hkv * cap;
            for (size_t i = 0; i < slots * D; i++) {
                c.hK[i] = tri_fp32_to_fp16((float) tu_normal());
            }
            for (size_t i = 0; i < slots; i++) {
                c.hpos[i] = (int32_t) (i % cap);
            }
            for (int i = 0; i < L * Hkv; i++) {
                c.hlive[i] = cap - 512;
            }
            up(c.K, c.hK, slots * D * 2);
            up(c.V, c.hK, slots * D * 2);
            up(c.pos, c.hpos, slots * 4);
            up(c.live, c.hlive, (size_t) L * Hkv * 4);
            tri_cuda_row * rows = hnew(sizeof(tri_cuda_row) * 512);
            for (int r = 0; r < 512; r++) {
                rows[r] = (tri_cuda_row) { c.K, c.V, c.pos, c.live, cap, cap - 512 + r, r, 512 };
            }
            tri_cuda_row * drows = dnew(sizeof(tri_cuda_row) * 512);
            up(drows, rows, sizeof(tri_cuda_row) * 512);
            float * q = dnew(sizeof(float) * 512 * H * D), * out = dnew(sizeof(float) * 512 * H * D);
            float * part = dnew(sizeof(float) * 512 * H * 64 * (D + 2));
            int * tickets = dnew(sizeof(int) * 512 * TRI_CUDA_ATT_TICKETS(H, Hkv));
            CU(tri_cuda_memset(tickets, 0, sizeof(int) * 512 * TRI_CUDA_ATT_TICKETS(H, Hkv), NULL));
            CU(tri_cuda_memset(q, 0, sizeof(float) * 512 * H * D, NULL));
            const double kv_bytes = (double) (cap - 511) * Hkv * D * 2 * 2;
            rows[0] = (tri_cuda_row) { c.K, c.V, c.pos, c.live, cap, cap - 512, 0, 1 };
            up(drows, rows, sizeof(tri_cuda_row));
            const int parts = TRI_MIN(64, (cap + 127) / 128);
            snprintf(shape, sizeof shape, "1 row over %d slots, 32/8 heads, D 64, %d parts", cap - 511, parts);
            BENCH("attention", shape, kv_bytes, 0.0,
                  tri_cuda_attention(q, drows, 1, 0, H, Hkv, D, 0.125f, parts, false, part, tickets, out, NULL));
            rows[0] = (tri_cuda_row) { c.K, c.V, c.pos, c.live, cap, cap - 512, 0, 512 };
            up(drows, rows, sizeof(tri_cuda_row));
            for (int pc = 0; pc < 3; pc++) { /* the fp32 kernel, then tensor cores with 1 and 2 parts */
                const int np = pc == 2 ? 2 : 1;
                snprintf(shape, sizeof shape, "512 rows over <= %d slots, %d part%s%s", cap, np, np > 1 ? "s" : "",
                         pc ? ", tensor cores" : "");
                BENCH("attention", shape, 0.0, 4.0 * 512 * H * D * (cap - 256.0),
                      tri_cuda_attention(q, drows, 512, 0, H, Hkv, D, 0.125f, np, pc > 0, part, tickets, out,
                                         NULL));
            }
            tri_cuda_free(drows);
            tri_cuda_free(q);
            tri_cuda_free(out);
            tri_cuda_free(part);
            tri_cuda_free(tickets);
            free(rows);
            cache_free(&c);
        }
    }
    /* a TriAttention round's device steps over 16 layers x 8 KV heads of 2176 slots (2044 candidates) */
    {
        const int L = 16, H = 32, Hkv = 8, D = 64, cap = 2176;
        const size_t LK = (size_t) L * Hkv, LH = (size_t) L * H;
        void * K = dnew(LK * cap * D * 2);
        CU(tri_cuda_memset(K, 0x3c, LK * cap * D * 2, NULL));
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
        BENCH("triattn_score", shape, 0.0, 0.0, tri_cuda_triattn_score(K, w, w, dl, dl + LK, L, H, Hkv, D, D, 0, cap, cap - 132, sc, NULL));
        BENCH("triattn_zscore", shape, 0.0, 0.0, tri_cuda_triattn_zscore(sc, dl, dl + LK, L, H, Hkv, cap, NULL));
        BENCH("triattn_gqa_max", shape, 0.0, 0.0, tri_cuda_triattn_gqa_max(sc, dl, dl + LK, L, H, Hkv, cap, cap - 132, agg, NULL));
        BENCH("triattn_layer_mean", shape, 0.0, 0.0, tri_cuda_triattn_layer_mean(agg, dl, dl + LK, L, Hkv, cap, cap - 132, 0, mean, NULL));
        snprintf(shape, sizeof shape, "%d KV heads, keep %d of %d", Hkv, 2048 - 132, cap - 132);
        BENCH("topk", shape, 0.0, 0.0, tri_cuda_topk(mean, dl + 2 * LK, dl + 3 * LK, Hkv, cap, mk, NULL));
        tri_cuda_free(K);
        tri_cuda_free(dl);
        tri_cuda_free(w);
        tri_cuda_free(sc);
        tri_cuda_free(agg);
        tri_cuda_free(mean);
        tri_cuda_free(mk);
        free(h);
    }
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
    if (!getenv("TRIATTN_CUDA_TC_PREFETCH") && tu_below(2)) { /* the products' prefetch hints (read once) */
        setenv("TRIATTN_CUDA_TC_PREFETCH", "1", 1);
    }
    printf("tensor-core prefetch: %s\n", getenv("TRIATTN_CUDA_TC_PREFETCH") ? getenv("TRIATTN_CUDA_TC_PREFETCH") : "0");
    static const char * const pinned[] = { "TRIATTN_CUDA_ATT_FUSED", "TRIATTN_CUDA_ATT_MMA_MIN", "TRIATTN_CUDA_MQ_MIN",
                                           "TRIATTN_CUDA_MQ_MAX" };
    for (size_t i = 0; i < sizeof(pinned) / sizeof(pinned[0]); i++) {
        if (env_set(pinned[i])) {
            printf("pinned by the environment: %s=%s\n", pinned[i], getenv(pinned[i]));
        }
    }
    parity_dequant_matmul();
    parity_act_prep();
    for (int i = 0; i < 3; i++) {
        parity_kv_attention();
        parity_triattention();
    }
    return tu_finish();
}
