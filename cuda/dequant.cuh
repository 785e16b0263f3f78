/* Weight rows to floats on the device (the CPU dequantizers' values, cuda/qchunk.h): the embedding lookup of a
 * step's tokens, and whole matrices for tests. */
#ifndef TRI_CUDA_DEQUANT_CUH
#define TRI_CUDA_DEQUANT_CUH

#include "triattn.h"

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* out[t][0..ne0) = row ids[t] of W (type, ne0 values per row); ids on the device, n_tok rows. */
enum triattn_status tri_cuda_get_rows(int type, const void * W, int64_t ne0, const int32_t * ids, int n_tok, float * out,
                                      void * stream);
/* out[r][0..ne0) = row r of W for r < n_rows. */
enum triattn_status tri_cuda_dequantize(int type, const void * W, int64_t ne0, int64_t n_rows, float * out,
                                        void * stream);

#ifdef __cplusplus
}
#endif

#endif
