/* Non-matmul CPU ops of the forward pass: normalisation, RoPE, activations, attention kernels over F16 K/V. */
#ifndef TRI_OPS_H
#define TRI_OPS_H

#include "fp16.h"
#include "types.h"

#include <stdint.h>

enum tri_rope_pairing {
    TRI_ROPE_ADJACENT = 0, /* pairs (x[2f], x[2f+1]): llama GGUFs (the converter permuted Q/K rows) */
    TRI_ROPE_HALF     = 1, /* pairs (x[f], x[f + F]): qwen2, qwen3, gemma3 */
};

/* y = x / sqrt(mean(x^2) + eps) * w; y may alias x; w may be NULL (no scale). */
void tri_rmsnorm(const float * x, const float * w, float * y, int n, float eps);

/* Rotates the first rope_dim dims of each of n_heads heads (stride head_dim) in place.
 * cs holds cos, sin of each frequency pair: cs[2f], cs[2f+1], f < rope_dim / 2. */
void tri_rope(float * x, int n_heads, int head_dim, int rope_dim, const float * cs, enum tri_rope_pairing pairing);

/* g[i] = silu(g[i]) * u[i]. */
void tri_silu_mul(float * g, const float * u, int n);
/* g[i] = gelu(g[i]) * u[i], GELU in its tanh approximation (GeGLU of Gemma). */
void tri_gelu_mul(float * g, const float * u, int n);

/* Attention kernels over F16 K and V rows (D = head dim).
 * scores: s[g * ls + j] = dot(q[g * D ..], K[j * D ..]) * scale, for G queries and j < n.
 * accum:  acc[g * D + d] += sum_j p[g * lp + j] * V[j * D + d].
 * scores_q, accum_q: the same for nq queries given by pointers (query q[i], score row s[i], weight row
 * p[i], accumulator acc[i]), so several tokens share each converted K or V row.
 * A result never depends on which other queries or keys were in the call (fixed arithmetic per pair):
 * decode and prefill agree bit for bit. */
typedef void (*tri_attn_scores_fn)(int D, int G, const float * q, const tri_fp16 * K, int n, float scale,
                                   float * s, int ls);
typedef void (*tri_attn_accum_fn)(int D, int G, const float * p, int lp, const tri_fp16 * V, int n, float * acc);
typedef void (*tri_attn_scores_q_fn)(int D, int nq, const float * const * q, const tri_fp16 * K, int n, float scale,
                                     float * const * s);
typedef void (*tri_attn_accum_q_fn)(int D, int nq, const float * const * p, const tri_fp16 * V, int n,
                                    float * const * acc);

/* s[j] = exp(s[j] - max) for j < n; returns the sum. */
typedef float (*tri_exp_sum_fn)(float * s, int n, float max);
/* max of s[0..n) (-INFINITY for n = 0). */
typedef float (*tri_max_fn)(const float * s, int n);

typedef struct tri_attn_kernels {
    tri_attn_scores_fn   scores;
    tri_attn_accum_fn    accum;
    tri_exp_sum_fn       exp_sum;
    tri_attn_scores_q_fn scores_q;
    tri_attn_accum_q_fn  accum_q;
    tri_max_fn           max;
} tri_attn_kernels;

/* Queries one contiguous scores/accum call hands to the pointer kernels at a time. */
#define TRI_ATT_MAXQ 64

/* Kernels for an ISA (NULL members when the CPU lacks it, the scalar ones where the ISA has none);
 * TRI_ISA_COUNT selects the best for this CPU. */
tri_attn_kernels tri_attn_kernels_get(enum tri_isa isa);

/* Scalar references. */
void tri_attn_scores_ref(int D, int G, const float * q, const tri_fp16 * K, int n, float scale, float * s, int ls);
void tri_attn_accum_ref(int D, int G, const float * p, int lp, const tri_fp16 * V, int n, float * acc);
void tri_attn_scores_q_ref(int D, int nq, const float * const * q, const tri_fp16 * K, int n, float scale,
                           float * const * s);
void tri_attn_accum_q_ref(int D, int nq, const float * const * p, const tri_fp16 * V, int n, float * const * acc);
float tri_exp_sum_ref(float * s, int n, float max);
float tri_max_ref(const float * s, int n);

/* g[i] = act(g[i]) * u[i] for i < n (silu or GELU-tanh): element i's result does not depend on n or i. */
typedef void (*tri_act_mul_fn)(float * g, const float * u, int n);
typedef struct tri_act_kernels {
    tri_act_mul_fn silu_mul;
    tri_act_mul_fn gelu_mul;
} tri_act_kernels;
/* Kernels for an ISA (the scalar ones where the ISA has none); TRI_ISA_COUNT: the best for this CPU. */
tri_act_kernels tri_act_kernels_get(enum tri_isa isa);

/* Converts n floats to F16 (round to nearest even). */
void tri_f32_to_f16_row(const float * x, tri_fp16 * y, int n);

#endif
