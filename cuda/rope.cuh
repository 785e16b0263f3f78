/* RoPE on the device, in both pairings: adjacent (x[2f], x[2f+1]) for llama GGUFs and half-split
 * (x[f], x[f + F]) for qwen2/qwen3. The cos/sin table comes from the host (computed in double, as the CPU). */
#ifndef TRI_CUDA_ROPE_CUH
#define TRI_CUDA_ROPE_CUH

#include "triattn.h"

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* x: n_tok rows of n_heads heads of head_dim floats; rotates each head's first rope_dim dims in place with
 * cs[t][2f] = cos, cs[t][2f + 1] = sin (rope_dim floats per token). pairing: 0 adjacent, 1 half. */
enum triattn_status tri_cuda_rope(float * x, int n_tok, int n_heads, int head_dim, int rope_dim, const float * cs,
                                  int pairing, void * stream);

#ifdef __cplusplus
}
#endif

#endif
