/* The TriAttention round's scoring steps on the device (docs/triattention.md §3-§4, fused form): score every
 * candidate key with each query head's synthetic query, z-score each (layer, query head) row, take the GQA
 * max per (layer, KV head), and average over layers (per_head) or over everything (global).
 *
 * Candidates of (layer l, KV head h) are its slots [lo[l][h], hi[l][h]); score arrays are indexed by
 * candidate (slot - lo) with a row stride of `cap` floats. */
#ifndef TRI_CUDA_TRIATTN_SCORE_CUH
#define TRI_CUDA_TRIATTN_SCORE_CUH

#include "triattn.h"

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* scores[l][hq][j] = sum_d w[l][hq][d] k[d] + sum_d cw[l][hq][d] |pair of d in k| over the first rope_dim dims,
 * k = F16 K row lo + j of (l, hq / G). K: [L][Hkv][cap][D]; w, cw: [L][H][D]; lo, hi: [L][Hkv];
 * pairing 0 adjacent, 1 half. max_n = the largest hi - lo (sizes the grid). */
enum triattn_status tri_cuda_triattn_score(const void * K, const float * w, const float * cw, const int32_t * lo,
                                           const int32_t * hi, int L, int H, int Hkv, int D, int rope_dim, int pairing,
                                           int cap, int max_n, float * scores, void * stream);
/* In place, per (l, hq) row over its hi - lo candidates: x = (x - mean) / max(std_population, 1e-6). */
enum triattn_status tri_cuda_triattn_zscore(float * scores, const int32_t * lo, const int32_t * hi, int L, int H,
                                            int Hkv, int cap, void * stream);
/* agg[l][h][j] = max over the G query heads of h of scores[l][hq][j]. */
enum triattn_status tri_cuda_triattn_gqa_max(const float * scores, const int32_t * lo, const int32_t * hi, int L, int H,
                                             int Hkv, int cap, int max_n, float * agg, void * stream);
/* global = 0: mean[h][j] = mean over layers of agg[l][h][j] (per_head); global = 1: mean[0][j] = mean over every
 * (l, h). Sums in (l, h) order, then times 1/count, as the CPU. Candidate counts from (0, h) (or (0, 0)). */
enum triattn_status tri_cuda_triattn_layer_mean(const float * agg, const int32_t * lo, const int32_t * hi, int L, int Hkv,
                                                int cap, int max_n, int global, float * mean, void * stream);

#ifdef __cplusplus
}
#endif

#endif
