/* TriAttention key scoring (docs/triattention.md §3, fused form): one synthetic query per query head,
 * dotted with every cached post-RoPE K row, plus a per-pair norm term.
 *
 *   score(j) = sum_d w[d] * k_j[d]  +  sum_d cw[d] * |k_j pair of d|
 *
 * w holds W_f = s^2 q̄_f (1/M) sum_m e^{i w_f (t0 + o_m)} laid out in the engine's RoPE pairing
 * (w[a_f] = Re W_f, w[b_f] = Im W_f); cw[a_f] = cw[b_f] = c_f / 2 with c_f = s^2 (E|q|_f - |q̄_f|), so the
 * norm of pair f is credited once. Only the first rope_dim dims of a head take part. */
#ifndef TRI_TRIATTN_SCORE_H
#define TRI_TRIATTN_SCORE_H

#include "fp16.h"
#include "ops.h"
#include "types.h"

#include <stdint.h>

/* Offsets o_m = 2^0 .. 2^16 of the future queries averaged over. */
#define TRI_TRIATTN_N_OFFSETS 17

/* Scores n K rows (stride D, F16) against G query heads: s[g * ls + j] = score of row j for head g.
 * w and cw are [G][D] (only the first rope_dim entries of each head are read). */
typedef void (*tri_triattn_score_fn)(int D, int rope_dim, enum tri_rope_pairing pairing, int G, const float * w,
                                     const float * cw, const tri_fp16 * K, int n, float * s, int ls);

void tri_triattn_score_ref(int D, int rope_dim, enum tri_rope_pairing pairing, int G, const float * w,
                           const float * cw, const tri_fp16 * K, int n, float * s, int ls);

#if defined(__x86_64__) || defined(_M_X64)
/* AVX2 + FMA + F16C (arch/avx2/triattn_score_avx2.c); falls back to the reference for shapes it does not tile. */
void tri_triattn_score_avx2(int D, int rope_dim, enum tri_rope_pairing pairing, int G, const float * w,
                            const float * cw, const tri_fp16 * K, int n, float * s, int ls);
#endif
#if defined(__aarch64__)
/* Advanced SIMD (arch/neon/triattn_score_neon.c): any shape. */
void tri_triattn_score_neon(int D, int rope_dim, enum tri_rope_pairing pairing, int G, const float * w,
                            const float * cw, const tri_fp16 * K, int n, float * s, int ls);
#endif

/* The kernel of an ISA (NULL when the CPU lacks it); TRI_ISA_COUNT selects the best for this CPU. */
tri_triattn_score_fn tri_triattn_score_get(enum tri_isa isa);

/* Mean phase of the future queries, per pair: a_f = (1/M) sum_m e^{i omega_f (t0 + o_m)}, in double
 * (the angles reach ~1e5 rad). omega = angle per position of each pair (freq factors and scaling applied). */
void tri_triattn_phase(int F, const double * omega, double t0, double * a_re, double * a_im);
/* The same over the first n_offsets offsets 2^0 .. 2^(n_offsets - 1) (1..TRI_TRIATTN_N_OFFSETS). */
void tri_triattn_phase_n(int F, const double * omega, double t0, int n_offsets, double * a_re, double * a_im);

/* Builds one head's synthetic query w[rope_dim] and norm weights cw[rope_dim] from its centre
 * (q̄ = re + i im, E|q| = abs_mean, each F values), the phase of the round and s^2. */
void tri_triattn_query(int rope_dim, enum tri_rope_pairing pairing, const float * re, const float * im,
                       const float * abs_mean, const double * a_re, const double * a_im, double s2, float * w,
                       float * cw);

#endif
