/* Quantized weight x float activations on the device: y[t][r] = sum_i W[r][i] * x[t][i].
 * Weights stay in their GGUF block layout and are dequantized on the fly: a matrix-vector kernel (one warp
 * per weight row, up to 8 tokens at once) for decode, and a tiled matrix kernel (64 rows x 64 tokens, the
 * weight tile dequantized into shared memory) for prefill. Activations are float (the CPU converts them to
 * 8-bit first, so results differ from the CPU's by that rounding). */
#ifndef TRI_CUDA_MATMUL_CUH
#define TRI_CUDA_MATMUL_CUH

#include "triattn.h"

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* W: ne1 rows of ne0 values of ggml type `type`; x: n_tok rows with stride ldx floats; y: n_tok rows with
 * stride ldy floats (ldy >= ne1). Picks the vector kernel for n_tok <= 8, else the tiled one. */
enum triattn_status tri_cuda_matmul(int type, const void * W, int64_t ne0, int64_t ne1, const float * x, int64_t ldx,
                                    int n_tok, float * y, int64_t ldy, void * stream);
/* The two kernels by name, for tests and benchmarks (vec requires n_tok <= 8). */
enum triattn_status tri_cuda_matmul_vec(int type, const void * W, int64_t ne0, int64_t ne1, const float * x,
                                        int64_t ldx, int n_tok, float * y, int64_t ldy, void * stream);
enum triattn_status tri_cuda_matmul_tiled(int type, const void * W, int64_t ne0, int64_t ne1, const float * x,
                                          int64_t ldx, int n_tok, float * y, int64_t ldy, void * stream);

#ifdef __cplusplus
}
#endif

#endif
