/* Attention over the device KV cache: for every token t and query head g (KV head h = g / G),
 * softmax(q k^T / sqrt(D)) v over the slots of (layer, h) whose position is <= the token's position (live
 * positions increase with the slot, so the visible slots are a prefix found by binary search). Each (token,
 * head) is split into up to `parts` slot ranges computed by separate blocks (online softmax over tiles of 64
 * slots) and merged in range order, so a single decode token still fills the GPU. */
#ifndef TRI_CUDA_ATTENTION_CUH
#define TRI_CUDA_ATTENTION_CUH

#include "triattn.h"

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TRI_CUDA_ATT_MAX_D 512 /* largest head_dim the attention kernel takes */

/* q: [n_tok][n_head][D] post-RoPE; K, V, pos: the layer's [n_head_kv][cap] slot arrays (F16 rows, int32);
 * n_live: the layer's [n_head_kv] live counts before this chunk, n_new = slots the chunk appended after them;
 * token t sits at position pos0 + t. out: [n_tok][n_head][D]. part: scratch of
 * n_tok * n_head * parts * (D + 2) floats. */
enum triattn_status tri_cuda_attention(const float * q, const void * K, const void * V, const int32_t * pos,
                                       const int32_t * n_live, int n_new, int cap, int n_head, int n_head_kv, int D,
                                       int n_tok, int32_t pos0, int parts, float * part, float * out, void * stream);

#ifdef __cplusplus
}
#endif

#endif
