/* The device KV cache: per (layer, KV head) `cap` slots of F16 K and V rows (head_dim each), an int32 absolute
 * position per slot and a live count, the same layout as src/kv_cache.h. A forward step's rows may belong to
 * different sessions (batched decode): each row carries its session's cache in a tri_cuda_row, so one launch
 * serves them all. This file: the step's per-row descriptor, the post-projection work of a layer (q/k norms,
 * RoPE, K/V appended to the row's cache) and the live-count bump at the end of a step. Compaction: gather.cuh. */
#ifndef TRI_CUDA_KV_CUH
#define TRI_CUDA_KV_CUH

#include "triattn.h"

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* One row (token) of a forward step, in device memory. The rows of a session are consecutive, in position order. */
typedef struct tri_cuda_row {
    void *    K, * V;    /* the session's cache: [n_layer][n_head_kv][cap][head_dim] halves */
    int32_t * pos;       /* [n_layer][n_head_kv][cap] */
    int32_t * n_live;    /* [n_layer][n_head_kv]: live slots before this step */
    int32_t   cap;
    int32_t   position;  /* absolute position of the row's token */
    int32_t   rank;      /* index of the row among its session's rows in the step */
    int32_t   n_new;     /* rows of its session in the step (slots it appends) */
} tri_cuda_row;

/* The shape of a layer's heads. pairing: 0 adjacent (x[2f], x[2f+1]), 1 half (x[f], x[f + rope_dim/2]). */
typedef struct tri_cuda_heads {
    int   n_head, n_head_kv, head_dim, rope_dim, pairing;
    float eps;           /* of the q/k RMSNorms */
} tri_cuda_heads;

/* For layer il and every row r: q[r] (n_head heads) and k[r] (n_head_kv heads) normalised by q_norm / k_norm
 * (per head, when not NULL) and rotated with cs[r] (rope_dim floats: cos, sin per pair); q is written back,
 * k and v[r] go as F16 (round to nearest even) to slot n_live[il][h] + rank of the row's cache, with its
 * position. The caller guarantees room. */
enum triattn_status tri_cuda_qkv_post(float * q, const float * k, const float * v, const float * q_norm,
                                      const float * k_norm, const float * cs, const tri_cuda_row * rows, int n_rows,
                                      int il, const tri_cuda_heads * hd, int n_layer, void * stream);
/* End of a step: every (layer, KV head) live count of each session grows by its rows (n_new). */
enum triattn_status tri_cuda_kv_bump(const tri_cuda_row * rows, int n_rows, int n_lk, void * stream);

#ifdef __cplusplus
}
#endif

#endif
