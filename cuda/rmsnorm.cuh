/* RMSNorm on the device: y = x / sqrt(mean(x^2) + eps) * w per row (sum of squares in double, as the CPU). */
#ifndef TRI_CUDA_RMSNORM_CUH
#define TRI_CUDA_RMSNORM_CUH

#include "triattn.h"

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* n_rows rows of n floats, stride ld; w (n floats) may be NULL; y may alias x. */
enum triattn_status tri_cuda_rmsnorm(const float * x, const float * w, float * y, int n_rows, int n, int64_t ld,
                                     float eps, void * stream);

#ifdef __cplusplus
}
#endif

#endif
