/* Compaction of the device KV cache after a policy round: each (layer, KV head) keeps the slots of its keep
 * list (strictly increasing slot indices), moved down to slots 0..n_keep with their K, V rows and positions,
 * and its live count becomes n_keep. Slots past n_keep are left as they are (never read: attention stops at
 * the live count). */
#ifndef TRI_CUDA_GATHER_CUH
#define TRI_CUDA_GATHER_CUH

#include "triattn.h"

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* K, V: [n_lh][cap][D] halves; pos: [n_lh][cap]; n_live: [n_lh]; keep: [n_lh][cap] slot indices;
 * n_keep: [n_lh], -1 = leave that (layer, KV head) untouched. */
enum triattn_status tri_cuda_kv_gather(void * K, void * V, int32_t * pos, int32_t * n_live, const int32_t * keep,
                                       const int32_t * n_keep, int n_lh, int cap, int D, void * stream);

#ifdef __cplusplus
}
#endif

#endif
