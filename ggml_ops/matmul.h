/* Quantized matrix × activations. The forward pass splits rows across threads; each call is one thread's share. */
#ifndef TRI_MATMUL_H
#define TRI_MATMUL_H

#include "repack.h"
#include "types.h"

/* y[t * ldy + r] = dot(row r of W, row t of xq) for r in [r0, r1), t in [0, n_tok).
 * W: rows of n_in values of type wtype, row stride tri_row_size(wtype, n_in), in the given layout (repack.h;
 *    x8 only where tri_matmul_x8_ok says so).
 * xq: n_tok activation rows written by tri_quantize_rows for tri_type_traits_get(wtype)->vec_dot_type,
 *     row stride tri_matmul_xrow_size(vec_dot_type, n_in).
 * scratch: tri_matmul_scratch_size(n_in) bytes private to the caller's thread, or NULL (then every token
 * runs the one-token kernel). Results do not depend on n_tok, [r0, r1) or scratch: a token gets the same
 * bits alone or in a batch. */
void tri_matmul_rows(const void * W, enum tri_type wtype, enum tri_wlayout layout, int64_t n_in, int64_t r0, int64_t r1,
                     const void * xq, int64_t n_tok, float * y, int64_t ldy, void * scratch);

/* Whether the active kernels read matrices of this type and shape in the x8 layout (then repacking them
 * with tri_x8_repack makes decode faster). */
bool tri_matmul_x8_ok(enum tri_type wtype, int64_t n_in, int64_t n_rows);

/* Bytes of the per-thread scratch of tri_matmul_rows for rows of n_in values. */
size_t tri_matmul_scratch_size(int64_t n_in);

/* Stride of the activation rows tri_quantize_rows writes for type vdt (the blocks of vdt, followed on
 * SIMD CPUs by the unpacked codes and scales the matrix kernels read). 0 for an unknown type. */
size_t tri_matmul_xrow_size(enum tri_type vdt, int64_t n_in);

/* Converts rows [t0, t1) of x (n_in floats each, stride ldx floats) into rows of type vdt in xq
 * (stride tri_matmul_xrow_size(vdt, n_in)). vdt may be F32 (copy), F16, BF16, Q8_0, Q8_1 or Q8_K; the
 * blocks are the bytes the reference quantizer writes. */
void tri_quantize_rows(const float * x, int64_t ldx, void * xq, enum tri_type vdt, int64_t n_in,
                       int64_t t0, int64_t t1);

#endif
