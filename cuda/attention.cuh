/* Attention over the device KV cache for the rows of a forward step, each row over its own session's cache
 * (kv.cuh): for query head g (KV head h = g / G), softmax(q k^T * scale) v over the slots of (layer, h) whose
 * position is <= the row's: the slots live before the step (all at earlier positions) and the step's rows of its
 * session up to this one (appended in rank order), a prefix of n_live + rank + 1 slots known without reading the
 * positions. A block takes the G query heads of one KV head (up to 8 at a time), so K and V are read once
 * for the group, and one of `parts` slot ranges (split-K, flash-decoding): one decode token still fills the
 * GPU; the block that finishes a row's last part merges the parts in range order. A chunk of one session's rows
 * (prefill) goes to tensor cores instead: a block takes 64 of its (token, query head) pairs of one KV head and reads
 * each K/V tile once for all of them; a second kernel merges its parts. */
#ifndef TRI_CUDA_ATTENTION_CUH
#define TRI_CUDA_ATTENTION_CUH

#include "kv.cuh"
#include "triattn.h"

#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TRI_CUDA_ATT_MAX_D 256 /* largest head_dim the kernels take */
#define TRI_CUDA_ATT_MAX_PARTS 128 /* most slot ranges (split-K parts) per row and head */
#define TRI_CUDA_ATT_CHUNK_ROWS 64 /* (token, query head) pairs a block of the tensor-core kernel takes */
#define TRI_CUDA_ATT_MMA_D(D) ((D) == 64 || (D) == 128) /* head dims of the tensor-core kernel */
/* Part counters per row: one per KV head and group of up to 8 of its query heads. */
#define TRI_CUDA_ATT_TICKETS(n_head, n_head_kv) ((n_head_kv) * (((n_head) / (n_head_kv) + 7) / 8))

/* q: [n_rows][n_head][D] post-RoPE; rows: the step's rows (their K/V already appended); out: [n_rows][n_head][D].
 * part: scratch of n_rows * n_head * parts * (D + 2) floats. tickets: n_rows * TRI_CUDA_ATT_TICKETS(n_head,
 * n_head_kv) ints, zero before and after (the fp32 kernel counts finished parts there and merges in the same
 * launch), or NULL (a second kernel merges). chunk: the rows are one
 * session's consecutive rows in rank order; then for head_dim 64 and 128 a tensor-core kernel (atile.h) takes them,
 * with Q and the softmax weights rounded to fp16 (the other kernel keeps both in fp32). */
enum triattn_status tri_cuda_attention(const float * q, const tri_cuda_row * rows, int n_rows, int il, int n_head,
                                       int n_head_kv, int D, float scale, int parts, bool chunk, float * part,
                                       int * tickets, float * out, void * stream);

#ifdef __cplusplus
}
#endif

#endif
