/* Row softmax on the device (max-subtracted, float). Attention uses the same arithmetic online (attention.cu);
 * this op is kept standalone for the parity tests and for callers that need probabilities. */
#ifndef TRI_CUDA_SOFTMAX_CUH
#define TRI_CUDA_SOFTMAX_CUH

#include "triattn.h"

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* In place: x[r][j] = exp(x[r][j] - max_r) / sum_r for n_rows rows of n floats, stride ld. */
enum triattn_status tri_cuda_softmax(float * x, int n_rows, int n, int64_t ld, void * stream);

#ifdef __cplusplus
}
#endif

#endif
