/* The device KV cache: per (layer, KV head) `cap` slots of F16 K and V rows (head_dim each), an int32
 * absolute position per slot and a live count, the same layout as src/kv_cache.h. These launchers append a
 * chunk's K/V and bump the live counts; compaction is gather.cuh. */
#ifndef TRI_CUDA_KV_CUH
#define TRI_CUDA_KV_CUH

#include "triattn.h"

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* For layer il: k, v are [n_tok][n_head_kv][D] floats; token t goes to slot n_live[il][h] + t of every KV head h
 * (the caller guarantees n_live + n_tok <= cap) as F16 (round to nearest even), position pos0 + t.
 * K, V: [n_layer][n_head_kv][cap][D] halves; pos: [n_layer][n_head_kv][cap]; n_live: [n_layer][n_head_kv]. */
enum triattn_status tri_cuda_kv_append(void * K, void * V, int32_t * pos, const int32_t * n_live, int il, int n_head_kv,
                                       int cap, int D, const float * k, const float * v, int n_tok, int32_t pos0,
                                       void * stream);
/* n_live[i] += n for i < count (after every layer of a chunk has appended). */
enum triattn_status tri_cuda_kv_bump(int32_t * n_live, int count, int n, void * stream);

#ifdef __cplusplus
}
#endif

#endif
