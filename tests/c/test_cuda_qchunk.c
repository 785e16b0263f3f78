/* The CUDA kernels' quantized arithmetic (cuda/qchunk.h), compiled for the host and checked against the ggml_ops
 * reference without a GPU: chunk values equal the CPU dequantizer bit for bit, the activation quantizer equals the
 * reference Q8_0 / Q8_1 / Q8_K quantizers byte for byte, and a row's chunk dot products sum the same integers as
 * the reference vec_dot (only the float accumulation order differs); a warp of the integer tensor-core kernel
 * (qtile.h's lane functions around an mma emulated from PTX's fragment layout) gives the reference vec_dot of
 * every row and token. Random blocks (random bytes with sane fp16
 * scales, and quantized random floats), fresh each run; TRI_TEST_SEED replays. */
#include "qchunk.h"
#include "qtile.h"
#include "quants.h"
#include "types.h"

#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "ptx_mma.h"
#include "test_util.h"

static const enum tri_type k_types[] = {
    TRI_TYPE_Q4_0, TRI_TYPE_Q4_1, TRI_TYPE_Q5_0, TRI_TYPE_Q5_1, TRI_TYPE_Q8_0,
    TRI_TYPE_Q2_K, TRI_TYPE_Q3_K, TRI_TYPE_Q4_K, TRI_TYPE_Q5_K, TRI_TYPE_Q6_K,
};
#define N_TYPES (int) (sizeof k_types / sizeof k_types[0])

#define TRI_QT_TEST_TOK 32 /* tokens of the integer tensor-core kernel (matmul.cuh: TRI_CUDA_MQ_TOK) */

static void rnd_floats(float * x, int64_t n, float scale) {
    for (int64_t i = 0; i < n; i++) {
        x[i] = scale * (float) tu_normal();
    }
}

/* Byte offsets of the fp16 d / min fields of a block (-1: none). */
static void scale_offsets(enum tri_type t, int * o0, int * o1) {
    *o0 = 0;
    *o1 = -1;
    switch (t) {
        case TRI_TYPE_Q4_1: case TRI_TYPE_Q5_1: case TRI_TYPE_Q4_K: case TRI_TYPE_Q5_K: *o1 = 2; break;
        case TRI_TYPE_Q2_K: *o0 = 80; *o1 = 82; break;
        case TRI_TYPE_Q3_K: *o0 = 108; break;
        case TRI_TYPE_Q6_K: *o0 = 208; break;
        default: break;
    }
}

static void make_row(enum tri_type t, int n, uint8_t * row, float * tmp, bool random_bytes) {
    const tri_type_traits * tt = tri_type_traits_get(t);
    if (!random_bytes) {
        rnd_floats(tmp, n, 0.5f + (float) tu_uniform_open());
        tt->from_float(tmp, row, n);
        return;
    }
    const size_t rs = tri_row_size(t, n);
    for (size_t i = 0; i < rs; i++) {
        row[i] = (uint8_t) tu_u64();
    }
    int o0, o1;
    scale_offsets(t, &o0, &o1);
    for (size_t b = 0; b < rs / tt->type_size; b++) {
        uint8_t * blk = row + b * tt->type_size;
        const tri_fp16 d = tri_fp32_to_fp16(((float) tu_uniform_open() - 0.5f) * 0.1f);
        const tri_fp16 m = tri_fp32_to_fp16(((float) tu_uniform_open() - 0.5f) * 0.1f);
        memcpy(blk + o0, &d, 2);
        if (o1 >= 0) {
            memcpy(blk + o1, &m, 2);
        }
    }
}

/* The device's activation layout for one row of n values, filled the way the quantize kernel does it
 * (cuda/mmvq.cu): codes, per-32 scale (Q8_K: its 256-block's), Q8_1's s per 32, sums per 16. */
typedef struct {
    int8_t  qs[4096];
    float   d[128], s[128];
    int32_t sum[256];
} act_row;

static void quantize_act(int act_type, const float * x, int n, act_row * a) {
    const int blk = act_type == TRI_QC_ACT_Q8_K ? 256 : 32;
    for (int b = 0; b < n / blk; b++) {
        float amax = 0.0f;
        for (int i = 0; i < blk; i++) {
            amax = fmaxf(amax, fabsf(x[b * blk + i]));
        }
        const float d = tri_qc_quant8(x + b * blk, blk, amax, a->qs + b * blk);
        for (int c = b * blk / 32; c < (b + 1) * blk / 32; c++) {
            int sum = 0;
            for (int i = 0; i < 32; i++) {
                sum += a->qs[32 * c + i];
            }
            a->d[c] = act_type == TRI_QC_ACT_Q8_K ? d : tri_qc_round_f16(d);
            a->s[c] = tri_qc_round_f16(d * (float) sum);
        }
    }
    for (int g = 0; g < n / 16; g++) {
        int sum = 0;
        for (int i = 0; i < 16; i++) {
            sum += a->qs[16 * g + i];
        }
        a->sum[g] = sum;
    }
}

/* The reference quantizer's bytes decoded into the same layout. */
static void reference_act(enum tri_type vdt, const void * y, int n, act_row * a) {
    if (vdt == TRI_TYPE_Q8_K) {
        const tri_block_q8_K * b = y;
        for (int k = 0; k < n / 256; k++) {
            memcpy(a->qs + 256 * k, b[k].qs, 256);
            for (int c = 0; c < 8; c++) {
                a->d[8 * k + c] = b[k].d;
            }
            for (int g = 0; g < 16; g++) {
                a->sum[16 * k + g] = b[k].bsums[g];
            }
        }
        return;
    }
    for (int k = 0; k < n / 32; k++) {
        const int8_t * qs = vdt == TRI_TYPE_Q8_1 ? ((const tri_block_q8_1 *) y)[k].qs : ((const tri_block_q8_0 *) y)[k].qs;
        const tri_fp16 d = vdt == TRI_TYPE_Q8_1 ? ((const tri_block_q8_1 *) y)[k].d : ((const tri_block_q8_0 *) y)[k].d;
        memcpy(a->qs + 32 * k, qs, 32);
        a->d[k] = tri_fp16_to_fp32(d);
        a->s[k] = vdt == TRI_TYPE_Q8_1 ? tri_fp16_to_fp32(((const tri_block_q8_1 *) y)[k].s) : 0.0f;
    }
}

static void test_type(enum tri_type t) {
    static const int sizes32[] = { 32, 64, 96, 576, 1536, 4096 };
    static const int sizesK[]  = { 256, 512, 1536, 4096 };
    const tri_type_traits * tt = tri_type_traits_get(t);
    const tri_type_traits * vt = tri_type_traits_get(tt->vec_dot_type);
    const int type = (int) t, kind = tri_qc_kind(type);
    const bool k_quant = tt->blck_size == 256;
    CHECK(tri_qc_block_bytes(type) == (int) tt->type_size && tri_qc_block_values(type) == (int) tt->blck_size &&
          tri_qc_act_type(type) == (int) tt->vec_dot_type, "%s: layout facts differ from ggml_ops", tt->name);
    float * tmp = malloc(4096 * sizeof(float)), * ref_vals = malloc(4096 * sizeof(float));
    uint8_t * w = malloc(4096 * 4), * y = malloc(4096 * 4);
    act_row * mine = malloc(sizeof *mine), * want = malloc(sizeof *want);
    double worst = 0.0;
    int value_bad = 0, act_bad = 0;
    for (int si = 0; si < (k_quant ? 4 : 6); si++) {
        const int n = k_quant ? sizesK[si] : sizes32[si];
        for (int rep = 0; rep < 6; rep++) {
            make_row(t, n, w, tmp, rep % 2 == 1);
            /* values */
            tt->to_float(w, ref_vals, n);
            for (int c = 0; c < n / 32; c++) {
                tri_qc_chunk ch;
                tri_qc_prep(type, w, c, &ch);
                for (int i = 0; i < 32; i++) {
                    const float v = tri_qc_value(kind, &ch, i);
                    value_bad += memcmp(&v, &ref_vals[32 * c + i], sizeof v) != 0;
                }
            }
            /* activations: same codes and scales as the reference quantizer */
            rnd_floats(tmp, n, 0.5f + 2.0f * (float) tu_uniform_open());
            if (rep == 2) {
                memset(tmp, 0, 32 * sizeof(float)); /* an all-zero block: scale 0, codes 0 */
            }
            vt->from_float(tmp, y, n);
            quantize_act(tri_qc_act_type(type), tmp, n, mine);
            reference_act(tt->vec_dot_type, y, n, want);
            act_bad += memcmp(mine->qs, want->qs, (size_t) n) != 0 || memcmp(mine->d, want->d, sizeof(float) * (n / 32)) != 0;
            if (tt->vec_dot_type == TRI_TYPE_Q8_1) {
                act_bad += memcmp(mine->s, want->s, sizeof(float) * (n / 32)) != 0;
            }
            if (tt->vec_dot_type == TRI_TYPE_Q8_K) {
                act_bad += memcmp(mine->sum, want->sum, sizeof(int32_t) * (n / 16)) != 0;
            }
            /* dot: chunk by chunk against the reference vec_dot */
            float ref = NAN;
            tt->vec_dot_ref(n, &ref, w, y);
            double acc = 0.0, mag = 1e-30;
            for (int c = 0; c < n / 32; c++) {
                tri_qc_chunk ch;
                tri_qc_prep(type, w, c, &ch);
                int32_t words[8];
                memcpy(words, mine->qs + 32 * c, sizeof words);
                tri_qc_act a = { words, mine->d[c], mine->s[c], { mine->sum[2 * c], mine->sum[2 * c + 1] } };
                acc += tri_qc_dot(kind, &ch, &a);
                for (int i = 0; i < 32; i++) {
                    mag += fabs((double) tri_qc_value(kind, &ch, i) * mine->d[c] * mine->qs[32 * c + i]);
                }
            }
            worst = tu_max(worst, fabs(acc - ref) / mag);
        }
    }
    CHECK(value_bad == 0, "%s: %d chunk values differ from the CPU dequantizer", tt->name, value_bad);
    CHECK(act_bad == 0, "%s: %d activation rows differ from the %s reference quantizer", tt->name, act_bad, vt->name);
    /* Integer sums are exact; only float rounding of the per-chunk terms (<= 128 of them) differs. */
    CHECK(worst < 2e-5, "%s: chunk dots vs vec_dot_ref: relative error %.3g", tt->name, worst);
    printf("  %-5s values exact, activations exact, dot error %.2g\n", tt->name, worst);
    free(tmp);
    free(ref_vals);
    free(w);
    free(y);
    free(mine);
    free(want);
}

/* mma.m16n8k32 (k = 32) or m16n8k16 (k = 16) over the 32 lanes' fragments: a[l][0..k/8), b[l][0..k/16). */
static void emulate_mma(int k, uint32_t a[32][4], uint32_t b[32][2], int32_t c[32][4]) {
    const uint32_t * fa[32], * fb[32];
    for (int l = 0; l < 32; l++) {
        fa[l] = a[l];
        fb[l] = b[l];
    }
    for (int l = 0; l < 32; l++) {
        tri_ptx_imma_lane(k, fa, fb, l, c[l]);
    }
}

/* 16 rows x n_tok tokens as one warp of the tensor-core kernel computes them (all scale groups in order). */
static void warp_product(int type, const uint8_t * W, size_t rb, int64_t n, const tri_cuda_q8 * q8, int n_tok,
                         float out[16][32]) {
    const int kind = tri_qc_kind(type), G = tri_qc_block_values(type) / 32, ntile = (n_tok + 7) / 8;
    static float acc[32][4][4];
    static int32_t isum[32][4][4], msum[32][4][4];
    memset(acc, 0, sizeof acc);
    memset(isum, 0, sizeof isum);
    memset(msum, 0, sizeof msum);
    tri_qc_chunk ch[32][2];
    tri_cuda_q8_meta m[32][4][2];
    for (int64_t gi = 0; gi < n / 32 / G; gi++) {
        for (int j = 0; j < G; j++) {
            const int64_t c = gi * G + j;
            uint32_t w[32][4];
            for (int l = 0; l < 32; l++) {
                tri_qt_load_w(type, W + (size_t) (l / 4) * rb, W + (size_t) (l / 4 + 8) * rb, c, l, ch[l], w[l]);
            }
            for (int nt = 0; nt < ntile; nt++) {
                uint32_t x[32][2], a16[32][4], b16[32][2];
                int32_t c0[32][4], c1[32][4];
                for (int l = 0; l < 32; l++) {
                    const tri_qt_xlane xl = tri_qt_xlane_make(q8, 8 * nt, n_tok, l);
                    tri_qt_load_x(&xl, c, x[l], m[l][nt]);
                }
                if (tri_qt_split(type)) {
                    for (int h = 0; h < 2; h++) {
                        for (int l = 0; l < 32; l++) {
                            a16[l][0] = w[l][2 * h];
                            a16[l][1] = w[l][2 * h + 1];
                            b16[l][0] = x[l][h];
                        }
                        emulate_mma(16, a16, b16, h == 0 ? c0 : c1);
                    }
                } else {
                    emulate_mma(32, w, x, c0);
                    memset(c1, 0, sizeof c1);
                }
                for (int l = 0; l < 32; l++) {
                    tri_qt_acc(ch[l], c0[l], c1[l], m[l][nt], isum[l][nt], msum[l][nt]);
                }
            }
        }
        for (int l = 0; l < 32; l++) {
            for (int nt = 0; nt < ntile; nt++) {
                tri_qt_finish(kind, ch[l], m[l][nt], isum[l][nt], msum[l][nt], acc[l][nt]);
            }
        }
    }
    for (int l = 0; l < 32; l++) {
        for (int nt = 0; nt < ntile; nt++) {
            for (int i = 0; i < 4; i++) {
                out[l / 4 + 8 * (i / 2)][8 * nt + 2 * (l % 4) + i % 2] = acc[l][nt][i];
            }
        }
    }
}

/* The tensor-core warp against the reference vec_dot for every row and token. */
static void test_tile(enum tri_type t) {
    const tri_type_traits * tt = tri_type_traits_get(t);
    const tri_type_traits * vt = tri_type_traits_get(tt->vec_dot_type);
    const int type = (int) t, at = tri_qc_act_type(type);
    const bool k_quant = tt->blck_size == 256;
    const int64_t n = k_quant ? 256 * tu_int(1, 6) : 32 * tu_int(1, 40);
    const int n_tok = (int) tu_int(1, TRI_QT_TEST_TOK);
    const size_t rb = tri_row_size(t, n), yb = tri_row_size(tt->vec_dot_type, n);
    uint8_t * W = malloc(16 * rb), * Y = malloc((size_t) n_tok * yb);
    float * tmp = malloc(sizeof(float) * (size_t) n);
    act_row * ar = malloc(sizeof *ar);
    tri_cuda_q8 q8 = { malloc((size_t) n_tok * (size_t) n), malloc(sizeof(tri_cuda_q8_meta) * (size_t) n_tok * (n / 32)),
                       n, at };
    for (int r = 0; r < 16; r++) {
        make_row(t, (int) n, W + r * rb, tmp, r % 2 == 1);
    }
    for (int k = 0; k < n_tok; k++) {
        rnd_floats(tmp, n, 0.5f + 2.0f * (float) tu_uniform_open());
        vt->from_float(tmp, Y + k * yb, n);
        quantize_act(at, tmp, (int) n, ar);
        memcpy(q8.qs + (size_t) k * n, ar->qs, (size_t) n);
        for (int c = 0; c < n / 32; c++) {
            q8.meta[(size_t) k * (n / 32) + c] = (tri_cuda_q8_meta) {
                ar->d[c], at == TRI_QC_ACT_Q8_1 ? ar->s[c] : 0.0f, { ar->sum[2 * c], ar->sum[2 * c + 1] } };
        }
    }
    static float out[16][32];
    warp_product(type, W, rb, n, &q8, n_tok, out);
    double worst = 0.0;
    for (int r = 0; r < 16; r++) {
        tt->to_float(W + r * rb, tmp, n);
        for (int k = 0; k < n_tok; k++) {
            float ref = NAN;
            tt->vec_dot_ref((int) n, &ref, W + r * rb, Y + k * yb);
            double mag = 1e-30;
            for (int64_t i = 0; i < n; i++) {
                mag += fabs((double) tmp[i] * q8.meta[(size_t) k * (n / 32) + i / 32].d * q8.qs[(size_t) k * n + i]);
            }
            worst = tu_max(worst, fabs((double) out[r][k] - ref) / mag);
        }
    }
    CHECK(worst < 2e-5, "%s: tensor-core warp (%lld values, %d tokens) vs vec_dot_ref: relative error %.3g", tt->name,
          (long long) n, n_tok, worst);
    printf("  %-5s tensor-core warp, %lld values x %d tokens: error %.2g\n", tt->name, (long long) n, n_tok, worst);
    free(W);
    free(Y);
    free(tmp);
    free(ar);
    free(q8.qs);
    free(q8.meta);
}

int main(void) {
    tu_seed_init("TRI_TEST_SEED");
    tri_ops_init();
    for (int i = 0; i < N_TYPES; i++) {
        test_type(k_types[i]);
    }
    for (int rep = 0; rep < 3; rep++) {
        for (int i = 0; i < N_TYPES; i++) {
            test_tile(k_types[i]);
        }
    }
    /* The host dp4a: signed bytes, all four lanes. */
    for (int i = 0; i < 1000; i++) {
        const int32_t a = (int32_t) tu_u32(), b = (int32_t) tu_u32(), c = (int32_t) tu_int(-1000, 1000);
        int32_t want = c;
        for (int k = 0; k < 4; k++) {
            want += (int8_t) (a >> (8 * k)) * (int8_t) (b >> (8 * k));
        }
        CHECK(tri_qc_dp4a(a, b, c) == want, "dp4a(%08x, %08x, %d)", (unsigned) a, (unsigned) b, c);
    }
    return tu_finish();
}
