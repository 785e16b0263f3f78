/* TriAttention scoring: scalar reference, synthetic-query builder, kernel dispatch. */
#include "triattn_score.h"

#include <math.h>

static inline void tri_pair_index(enum tri_rope_pairing pairing, int F, int f, int * a, int * b) {
    *a = pairing == TRI_ROPE_ADJACENT ? 2 * f : f;
    *b = pairing == TRI_ROPE_ADJACENT ? 2 * f + 1 : f + F;
}

void tri_triattn_score_ref(int D, int rope_dim, enum tri_rope_pairing pairing, int G, const float * w,
                           const float * cw, const tri_fp16 * K, int n, float * s, int ls) {
    const int F = rope_dim / 2;
    for (int j = 0; j < n; j++) {
        const tri_fp16 * k = K + (int64_t) j * D;
        for (int g = 0; g < G; g++) {
            const float * wg = w + (int64_t) g * D;
            const float * cg = cw + (int64_t) g * D;
            float acc = 0.0f;
            for (int f = 0; f < F; f++) {
                int a, b;
                tri_pair_index(pairing, F, f, &a, &b);
                const float ka = tri_fp16_to_fp32(k[a]), kb = tri_fp16_to_fp32(k[b]);
                const float nrm = sqrtf(ka * ka + kb * kb);
                acc += wg[a] * ka + wg[b] * kb + (cg[a] + cg[b]) * nrm;
            }
            s[(int64_t) g * ls + j] = acc;
        }
    }
}

tri_triattn_score_fn tri_triattn_score_get(enum tri_isa isa) {
    if (isa == TRI_ISA_COUNT) {
        isa = tri_cpu_isa();
    }
    switch (isa) {
        case TRI_ISA_SCALAR:
            return tri_triattn_score_ref;
#if defined(__x86_64__) || defined(_M_X64)
        case TRI_ISA_AVX512: /* the AVX2 kernel serves this shape well; no separate AVX-512 version */
        case TRI_ISA_AVX2:
            return tri_cpu_has_isa(isa) ? tri_triattn_score_avx2 : NULL;
#endif
#if defined(__aarch64__)
        case TRI_ISA_NEON:
            return tri_cpu_has_isa(isa) ? tri_triattn_score_neon : NULL;
#endif
        default:
            return NULL;
    }
}

void tri_triattn_phase_n(int F, const double * omega, double t0, int n_offsets, double * a_re, double * a_im) {
    const int M = n_offsets < 1 ? 1 : n_offsets > TRI_TRIATTN_N_OFFSETS ? TRI_TRIATTN_N_OFFSETS : n_offsets;
    for (int f = 0; f < F; f++) {
        double re = 0.0, im = 0.0;
        for (int m = 0; m < M; m++) {
            const double ang = omega[f] * (t0 + (double) (1 << m));
            re += cos(ang);
            im += sin(ang);
        }
        a_re[f] = re / M;
        a_im[f] = im / M;
    }
}

void tri_triattn_phase(int F, const double * omega, double t0, double * a_re, double * a_im) {
    tri_triattn_phase_n(F, omega, t0, TRI_TRIATTN_N_OFFSETS, a_re, a_im);
}

void tri_triattn_query(int rope_dim, enum tri_rope_pairing pairing, const float * re, const float * im,
                       const float * abs_mean, const double * a_re, const double * a_im, double s2, float * w,
                       float * cw) {
    const int F = rope_dim / 2;
    for (int f = 0; f < F; f++) {
        int a, b;
        tri_pair_index(pairing, F, f, &a, &b);
        /* W = s^2 q̄ a: Re(W conj k) = W_re k_re + W_im k_im. */
        w[a] = (float) (s2 * (re[f] * a_re[f] - im[f] * a_im[f]));
        w[b] = (float) (s2 * (re[f] * a_im[f] + im[f] * a_re[f]));
        const double c = s2 * ((double) abs_mean[f] - hypot(re[f], im[f]));
        cw[a] = cw[b] = (float) (0.5 * c);
    }
}
