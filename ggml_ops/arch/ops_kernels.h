/* ISA-specific attention and activation kernels (ggml_ops/arch/<isa>/), declared for the dispatcher in ops.c. */
#ifndef TRI_OPS_KERNELS_H
#define TRI_OPS_KERNELS_H

#include "../ops.h"

#if defined(__x86_64__) || defined(_M_X64)
void tri_attn_scores_avx2(int D, int G, const float * q, const tri_fp16 * K, int n, float scale, float * s, int ls);
void tri_attn_accum_avx2(int D, int G, const float * p, int lp, const tri_fp16 * V, int n, float * acc);
void tri_attn_scores_q_avx2(int D, int nq, const float * const * q, const tri_fp16 * K, int n, float scale,
                            float * const * s);
void tri_attn_accum_q_avx2(int D, int nq, const float * const * p, const tri_fp16 * V, int n, float * const * acc);
void tri_attn_scores_avx512(int D, int G, const float * q, const tri_fp16 * K, int n, float scale, float * s, int ls);
void tri_attn_accum_avx512(int D, int G, const float * p, int lp, const tri_fp16 * V, int n, float * acc);
void tri_attn_scores_q_avx512(int D, int nq, const float * const * q, const tri_fp16 * K, int n, float scale,
                              float * const * s);
void tri_attn_accum_q_avx512(int D, int nq, const float * const * p, const tri_fp16 * V, int n, float * const * acc);
float tri_exp_sum_avx2(float * s, int n, float max);
float tri_max_avx2(const float * s, int n);
void tri_silu_mul_avx2(float * g, const float * u, int n);
void tri_gelu_mul_avx2(float * g, const float * u, int n);
#else
static const tri_attn_scores_fn   tri_attn_scores_avx2     = 0;
static const tri_attn_accum_fn    tri_attn_accum_avx2      = 0;
static const tri_attn_scores_q_fn tri_attn_scores_q_avx2   = 0;
static const tri_attn_accum_q_fn  tri_attn_accum_q_avx2    = 0;
static const tri_attn_scores_fn   tri_attn_scores_avx512   = 0;
static const tri_attn_accum_fn    tri_attn_accum_avx512    = 0;
static const tri_attn_scores_q_fn tri_attn_scores_q_avx512 = 0;
static const tri_attn_accum_q_fn  tri_attn_accum_q_avx512  = 0;
static const tri_exp_sum_fn       tri_exp_sum_avx2         = 0;
static const tri_max_fn           tri_max_avx2             = 0;
static const tri_act_mul_fn       tri_silu_mul_avx2        = 0;
static const tri_act_mul_fn       tri_gelu_mul_avx2        = 0;
#endif

#if defined(__aarch64__)
void tri_attn_scores_neon(int D, int G, const float * q, const tri_fp16 * K, int n, float scale, float * s, int ls);
void tri_attn_accum_neon(int D, int G, const float * p, int lp, const tri_fp16 * V, int n, float * acc);
void tri_attn_scores_q_neon(int D, int nq, const float * const * q, const tri_fp16 * K, int n, float scale,
                            float * const * s);
void tri_attn_accum_q_neon(int D, int nq, const float * const * p, const tri_fp16 * V, int n, float * const * acc);
float tri_max_neon(const float * s, int n);
float tri_exp_sum_neon(float * s, int n, float max);
void tri_silu_mul_neon(float * g, const float * u, int n);
void tri_gelu_mul_neon(float * g, const float * u, int n);
#else
static const tri_attn_scores_fn   tri_attn_scores_neon   = 0;
static const tri_attn_accum_fn    tri_attn_accum_neon    = 0;
static const tri_attn_scores_q_fn tri_attn_scores_q_neon = 0;
static const tri_attn_accum_q_fn  tri_attn_accum_q_neon  = 0;
static const tri_max_fn           tri_max_neon           = 0;
static const tri_exp_sum_fn       tri_exp_sum_neon       = 0;
static const tri_act_mul_fn       tri_silu_mul_neon      = 0;
static const tri_act_mul_fn       tri_gelu_mul_neon      = 0;
#endif

#endif
