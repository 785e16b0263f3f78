/* SwiGLU and the element-wise adds of the forward pass on the device. */
#ifndef TRI_CUDA_SWIGLU_CUH
#define TRI_CUDA_SWIGLU_CUH

#include "triattn.h"

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* g[i] = silu(g[i]) * u[i] for i < n. */
enum triattn_status tri_cuda_swiglu(float * g, const float * u, int64_t n, void * stream);
/* x[i] += y[i] for i < n (residual adds). */
enum triattn_status tri_cuda_add(float * x, const float * y, int64_t n, void * stream);
/* y[t][i] += b[i] for n_tok rows of n floats (QKV biases). */
enum triattn_status tri_cuda_add_bias(float * y, const float * b, int n_tok, int64_t n, void * stream);

#ifdef __cplusplus
}
#endif

#endif
