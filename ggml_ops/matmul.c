/* Quantized weight rows x activation rows: the ISA's integer matrix kernels (decode and prefill shapes,
 * same results), or tiled vec_dot loops for the float types and the scalar ISA; activation conversion. */
#include "matmul.h"

#include "arch/kernels.h"
#include "quants.h"

#include <string.h>

/* From this many tokens on, rows are repacked into panels (the prefill kernel); below, the decode kernel
 * unpacks each group of blocks once and meets it with every token, up to 8 per pass. Unpacking
 * costs least for Q4_0 / Q4_1 and most for K super-blocks; the crossovers were measured on Zen 4 in batched
 * decode steps of SmolLM2-135M Q4_1, Gemma 3 270M (Q5_0), Qwen2.5-1.5B Q4_K_M and its Q5_0/Q8_0 mix. */
#ifndef TRI_GEMM_MIN_TOK_Q4
#define TRI_GEMM_MIN_TOK_Q4 9
#endif
#ifndef TRI_GEMM_MIN_TOK_32
#define TRI_GEMM_MIN_TOK_32 7
#endif
#ifndef TRI_GEMM_MIN_TOK_K
#define TRI_GEMM_MIN_TOK_K 10
#endif

static int64_t tri_gemm_min_tok(enum tri_type t, const tri_type_traits * tt) {
    if (tt->blck_size == TRI_QK_K) {
        return TRI_GEMM_MIN_TOK_K;
    }
    return t == TRI_TYPE_Q4_0 || t == TRI_TYPE_Q4_1 ? TRI_GEMM_MIN_TOK_Q4 : TRI_GEMM_MIN_TOK_32;
}

/* Tile of the vec_dot fallback: TRI_MM_ROWS weight rows stay in cache while they meet TRI_MM_TOKS tokens. */
#define TRI_MM_ROWS 16
#define TRI_MM_TOKS 64

static inline int64_t tri_min_i64(int64_t a, int64_t b) { return a < b ? a : b; }
static inline int64_t tri_max_i64(int64_t a, int64_t b) { return a > b ? a : b; }

static size_t tri_align(size_t n, size_t a) {
    return (n + a - 1) / a * a;
}

tri_xrow_layout tri_xrow_layout_of(enum tri_type vdt, int64_t n) {
    tri_xrow_layout L;
    memset(&L, 0, sizeof L);
    if ((vdt != TRI_TYPE_Q8_0 && vdt != TRI_TYPE_Q8_1 && vdt != TRI_TYPE_Q8_K) || tri_row_size(vdt, n) == 0) {
        return L;
    }
    const int64_t bl = vdt == TRI_TYPE_Q8_K ? TRI_QK_K : 32;
    L.xu = tri_align(tri_row_size(vdt, n), 32);
    L.d  = L.xu + (size_t) n;
    size_t end = L.d + sizeof(float) * (size_t) (n / bl);
    if (vdt == TRI_TYPE_Q8_1) {
        L.s = end;
        end += sizeof(float) * (size_t) (n / 32);
    }
    if (vdt != TRI_TYPE_Q8_K) {
        L.sum = end;
        end += sizeof(int32_t) * (size_t) (n / 32);
    }
    if (vdt == TRI_TYPE_Q8_K) {
        L.bs16 = end;
        L.bs32 = L.bs16 + sizeof(int16_t) * (size_t) (n / 16);
        end = L.bs32 + sizeof(int16_t) * (size_t) (n / 32);
    }
    L.size = tri_align(end, 64);
    return L;
}

size_t tri_matmul_scratch_size(int64_t n) {
    /* two panels of 8 rows: 352 bytes per 32 values (32-value types), 2912 per 256 (K types) */
    return n <= 0 ? 0 : 2 * ((size_t) n / 32 + 8) * 368 + 64;
}

/* Whether rows of this vec_dot type are x rows (blocks plus extras): when the active ISA has integer
 * matrix kernels for some weight type that reads it. */
static bool tri_uses_xrows(const tri_isa_kernels * k, enum tri_type vdt) {
    for (int t = 0; t < TRI_TYPE_COUNT; t++) {
        const tri_type_traits * tt = k->gemv[t] ? tri_type_traits_get((enum tri_type) t) : NULL;
        if (tt && tt->vec_dot_type == vdt) {
            return true;
        }
    }
    return false;
}

size_t tri_matmul_xrow_size(enum tri_type vdt, int64_t n_in) {
    if ((int) vdt < 0 || (int) vdt >= TRI_TYPE_COUNT) {
        return 0;
    }
    return tri_uses_xrows(tri_kernels_active(), vdt) ? tri_xrow_layout_of(vdt, n_in).size : tri_row_size(vdt, n_in);
}

/* The extras of an x row, from its blocks. */
static void tri_fill_xrow(enum tri_type vdt, int64_t n, uint8_t * row, const tri_xrow_layout * L) {
    uint8_t * xu = row + L->xu;
    float *   d  = (float *) (row + L->d);
    if (vdt == TRI_TYPE_Q8_K) {
        const tri_block_q8_K * b = (const tri_block_q8_K *) row;
        int16_t * bs16 = (int16_t *) (row + L->bs16);
        int16_t * bs32 = (int16_t *) (row + L->bs32);
        for (int64_t i = 0; i < n / TRI_QK_K; i++) {
            for (int j = 0; j < TRI_QK_K; j++) {
                xu[TRI_QK_K * i + j] = (uint8_t) b[i].qs[j] ^ 0x80;
            }
            d[i] = b[i].d;
            for (int j = 0; j < 16; j++) {
                bs16[16 * i + j] = b[i].bsums[j];
            }
            for (int j = 0; j < 8; j++) {
                bs32[8 * i + j] = (int16_t) (b[i].bsums[2 * j] + b[i].bsums[2 * j + 1]);
            }
        }
        return;
    }
    const size_t  bsz = vdt == TRI_TYPE_Q8_1 ? sizeof(tri_block_q8_1) : sizeof(tri_block_q8_0);
    const size_t  qs  = vdt == TRI_TYPE_Q8_1 ? offsetof(tri_block_q8_1, qs) : offsetof(tri_block_q8_0, qs);
    for (int64_t i = 0; i < n / 32; i++) {
        const uint8_t * b = row + (size_t) i * bsz;
        int32_t sum = 0;
        for (int j = 0; j < 32; j++) {
            xu[32 * i + j] = b[qs + j] ^ 0x80;
            sum += (int8_t) b[qs + j];
        }
        ((int32_t *) (row + L->sum))[i] = sum;
        tri_fp16 h;
        memcpy(&h, b, 2);
        d[i] = tri_fp16_to_fp32(h);
        if (vdt == TRI_TYPE_Q8_1) {
            memcpy(&h, b + offsetof(tri_block_q8_1, s), 2);
            ((float *) (row + L->s))[i] = tri_fp16_to_fp32(h);
        }
    }
}

bool tri_matmul_x8_ok(enum tri_type wtype, int64_t n_in, int64_t n_rows) {
    return (int) wtype >= 0 && (int) wtype < TRI_TYPE_COUNT && tri_kernels_active()->gemv_x8[wtype] &&
           tri_x8_supported(wtype, n_in, n_rows) && n_in <= INT32_MAX;
}

/* Rows [r0, r1) with a matrix kernel pair: the prefill kernel from gemm_tok tokens on (when there is
 * scratch), the decode kernel below. */
static void tri_matmul_pair(tri_gemv_fn gemv, tri_gemm_fn gemm, int64_t gemm_tok, int n, const char * w, size_t rs,
                            int64_t r0, int64_t r1, const char * x, size_t xs, int64_t n_tok, float * y, int64_t ldy,
                            void * scratch) {
    if (n_tok >= gemm_tok && scratch) {
        gemm(n, w + r0 * rs, rs, r1 - r0, x, xs, n_tok, y + r0, ldy, scratch);
    } else {
        gemv(n, w + r0 * rs, rs, r1 - r0, x, xs, n_tok, y + r0, ldy);
    }
}

/* Rows [r0, r1) of an x8 matrix: whole groups straight into y; a group cut by r0 or r1 (a thread's share
 * that starts or ends inside it) into a small buffer, 8 tokens at a time, then its wanted rows copied. */
static void tri_matmul_x8(const tri_isa_kernels * k, const char * w, enum tri_type wtype, int64_t gemm_tok, int n,
                          size_t rs, int64_t r0, int64_t r1, const char * x, size_t xs, int64_t n_tok, float * y,
                          int64_t ldy, void * scratch) {
    const int64_t a0 = (r0 + 7) / 8 * 8, a1 = r1 / 8 * 8;
    if (a0 < a1) {
        tri_matmul_pair(k->gemv_x8[wtype], k->gemm_x8[wtype], gemm_tok, n, w, rs, a0, a1, x, xs, n_tok, y, ldy, scratch);
    }
    for (int64_t g = r0 / 8 * 8; g < r1; g += 8) {
        const int64_t lo = tri_max_i64(g, r0), hi = tri_min_i64(g + 8, r1);
        if (lo == g && hi == g + 8) {
            continue; /* a whole group, done above */
        }
        float tmp[8 * 8];
        for (int64_t t0 = 0; t0 < n_tok; t0 += 8) {
            const int64_t nt = tri_min_i64(8, n_tok - t0);
            k->gemv_x8[wtype](n, w + g * rs, rs, 8, x + t0 * xs, xs, nt, tmp, 8);
            for (int64_t t = 0; t < nt; t++) {
                memcpy(&y[(t0 + t) * ldy + lo], &tmp[t * 8 + (lo - g)], sizeof(float) * (size_t) (hi - lo));
            }
        }
    }
}

void tri_matmul_rows(const void * W, enum tri_type wtype, enum tri_wlayout layout, int64_t n_in, int64_t r0, int64_t r1,
                     const void * xq, int64_t n_tok, float * y, int64_t ldy, void * scratch) {
    const tri_type_traits * tt = tri_type_traits_get(wtype);
    if (!tt || !tt->vec_dot || r1 <= r0 || n_tok <= 0 || tri_row_size(wtype, n_in) == 0) {
        return;
    }
    const tri_isa_kernels * k  = tri_kernels_active();
    const size_t            rs = tri_row_size(wtype, n_in);
    const size_t            xs = tri_matmul_xrow_size(tt->vec_dot_type, n_in);
    const char *            w  = W;
    const char *            x  = xq;
    const int               n  = (int) n_in;

    if (layout == TRI_WLAYOUT_X8) {
        if (k->gemv_x8[wtype]) {
            tri_matmul_x8(k, w, wtype, tri_gemm_min_tok(wtype, tt), n, rs, r0, r1, x, xs, n_tok, y, ldy, scratch);
        }
        return;
    }
    if (k->gemv[wtype]) {
        tri_matmul_pair(k->gemv[wtype], k->gemm[wtype], tri_gemm_min_tok(wtype, tt), n, w, rs, r0, r1, x, xs, n_tok, y,
                        ldy, scratch);
        return;
    }
    const tri_vec_dot_fn dot = k->vec_dot[wtype];
    for (int64_t rb = r0; rb < r1; rb += TRI_MM_ROWS) {
        const int64_t re = tri_min_i64(rb + TRI_MM_ROWS, r1);
        for (int64_t tb = 0; tb < n_tok; tb += TRI_MM_TOKS) {
            const int64_t te = tri_min_i64(tb + TRI_MM_TOKS, n_tok);
            for (int64_t t = tb; t < te; t++) {
                for (int64_t r = rb; r < re; r++) {
                    dot(n, &y[t * ldy + r], w + r * rs, x + t * xs);
                }
            }
        }
    }
}

void tri_quantize_rows(const float * x, int64_t ldx, void * xq, enum tri_type vdt, int64_t n_in,
                       int64_t t0, int64_t t1) {
    if ((int)vdt < 0 || (int)vdt >= TRI_TYPE_COUNT) {
        return;
    }
    const tri_isa_kernels * k  = tri_kernels_active();
    const tri_from_float_fn q  = k->quantize[vdt];
    const size_t            rs = tri_matmul_xrow_size(vdt, n_in);
    if (!q || rs == 0) {
        return;
    }
    const bool xrows = tri_uses_xrows(k, vdt);
    const tri_xrow_layout L = tri_xrow_layout_of(vdt, n_in);
    char * out = xq;
    for (int64_t t = t0; t < t1; t++) {
        q(x + t * ldx, out + t * rs, n_in);
        if (xrows) {
            tri_fill_xrow(vdt, n_in, (uint8_t *) out + t * rs, &L);
        }
    }
}
