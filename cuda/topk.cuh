/* Top-k selection on the device: marks the k best of each group's n scores. Order: higher score first, ties to
 * the larger index (the more recent token), NaN last — the CPU's tri_triattn_topk order. Each score becomes
 * a unique 64-bit key (order-preserving float bits << 32 | index) and one block finds the k-th largest key
 * by a bitwise radix search, so any n works with O(1) shared memory. */
#ifndef TRI_CUDA_TOPK_CUH
#define TRI_CUDA_TOPK_CUH

#include "triattn.h"

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* For each group g < n_groups: s = scores + g * stride, n = n_of[g], k = k_of[g] (device arrays);
 * marks[g * stride + j] = 1 for the k best of s[0..n), else 0 (k <= 0: none; k >= n: all). */
enum triattn_status tri_cuda_topk(const float * scores, const int32_t * n_of, const int32_t * k_of, int n_groups,
                                  int stride, uint8_t * marks, void * stream);

#ifdef __cplusplus
}
#endif

#endif
