/* Activations ready for a matrix product: one launch turns rows of the residual stream (or an FFN's gate and up)
 * into what the weights' kernels read: the RMSNorm or SwiGLU of the rows as floats (tensor-core and float-weight
 * products) and/or 8-bit codes in the layout of tri_cuda_q8 (quantized matrix-vector products), quantized exactly
 * as ggml_ops' reference quantizers do (cuda/qchunk.h), so the device multiplies the same integers as the CPU. */
#ifndef TRI_CUDA_ACT_CUH
#define TRI_CUDA_ACT_CUH

#include "triattn.h"

#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* What a product needs of 32 activation codes besides the codes, in one 16-byte load. */
typedef struct tri_cuda_q8_meta {
    float   d;       /* scale of the 32 values (Q8_K: that of their 256-value block) */
    float   s;       /* Q8_1: fp16(d * sum of the 32 codes); 0 otherwise */
    int32_t sum[2];  /* sums of codes 0..15 and 16..31 */
} tri_cuda_q8_meta;

/* 8-bit activations of n_rows rows of `ld` values (ld a multiple of 32; of 256 for Q8_K). */
typedef struct tri_cuda_q8 {
    int8_t *           qs;    /* [rows][ld] codes */
    tri_cuda_q8_meta * meta;  /* [rows][ld / 32] */
    int64_t            ld;
    int                type;  /* TRI_QC_ACT_Q8_0, _Q8_1 or _Q8_K (qchunk.h) */
} tri_cuda_q8;

/* Row values v of x (n per row, row stride ldx): rmsnorm(x) * norm_w when `norm` (norm_w may be NULL: no weight),
 * silu(x) * u when u is set (same stride), else x. Writes v to f (stride ldf) when f is set and quantizes it into
 * q8[0..n_q8) (each with its own type; n a multiple of the block). At most 2 quantized outputs. */
enum triattn_status tri_cuda_act_prep(const float * x, int64_t ldx, const float * u, bool norm, const float * norm_w,
                                      float eps, int n_rows, int n, float * f, int64_t ldf, const tri_cuda_q8 * q8,
                                      int n_q8, void * stream);

#ifdef __cplusplus
}
#endif

#endif
