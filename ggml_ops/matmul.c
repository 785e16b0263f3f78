/* Quantized weight rows x activation rows, cache-blocked for prefill; activation conversion. */
#include "matmul.h"

#include "arch/kernels.h"

/* Tile: TRI_MM_ROWS weight rows stay in L1/L2 while they meet TRI_MM_TOKS tokens. Within a tile the
 * 1x4 micro-kernel (one weight row, four tokens) unpacks each weight block once per four tokens: 1.6x
 * faster than a plain vec_dot loop for Q4_1 at 512 tokens on Zen 4. Tile sizes 8..64 x 16..256 measured
 * within noise of each other there (layers of small models fit L2); 16 x 64 is the middle. */
#ifndef TRI_MM_ROWS
#define TRI_MM_ROWS 16
#endif
#ifndef TRI_MM_TOKS
#define TRI_MM_TOKS 64
#endif

static inline int64_t tri_min_i64(int64_t a, int64_t b) { return a < b ? a : b; }

void tri_matmul_rows(const void * W, enum tri_type wtype, int64_t n_in, int64_t r0, int64_t r1,
                     const void * xq, int64_t n_tok, float * y, int64_t ldy) {
    const tri_type_traits * tt = tri_type_traits_get(wtype);
    if (!tt || !tt->vec_dot || r1 <= r0 || n_tok <= 0 || tri_row_size(wtype, n_in) == 0) {
        return;
    }
    const tri_isa_kernels * k    = tri_kernels_active();
    const tri_vec_dot_fn    dot  = k->vec_dot[wtype];
    const tri_vec_dot4_fn   dot4 = k->vec_dot4[wtype];
    const size_t            rs   = tri_row_size(wtype, n_in);
    const size_t            xs   = tri_row_size(tt->vec_dot_type, n_in);
    const char *            w    = W;
    const char *            x    = xq;
    const int               n    = (int)n_in;

    if (n_tok == 1) {
        for (int64_t r = r0; r < r1; r++) {
            dot(n, &y[r], w + r * rs, x);
        }
        return;
    }
    for (int64_t rb = r0; rb < r1; rb += TRI_MM_ROWS) {
        const int64_t re = tri_min_i64(rb + TRI_MM_ROWS, r1);
        for (int64_t tb = 0; tb < n_tok; tb += TRI_MM_TOKS) {
            const int64_t te = tri_min_i64(tb + TRI_MM_TOKS, n_tok);
            int64_t t = tb;
            if (dot4) {
                for (; t + 4 <= te; t += 4) {
                    for (int64_t r = rb; r < re; r++) {
                        dot4(n, &y[t * ldy + r], ldy, w + r * rs, x + t * xs, xs);
                    }
                }
            }
            for (; t < te; t++) {
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
    const size_t            rs = tri_row_size(vdt, n_in);
    if (!q || rs == 0) {
        return;
    }
    char * out = xq;
    for (int64_t t = t0; t < t1; t++) {
        q(x + t * ldx, out + t * rs, n_in);
    }
}
