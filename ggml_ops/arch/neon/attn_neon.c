/* AArch64 Advanced SIMD attention kernels over F16 K/V rows: each converted K or V vector serves TRI_ATT_R
 * queries. The arithmetic of one (query, key) pair never depends on how queries or keys were grouped: a
 * score is two 4-lane FMA chains over the head dims (8 dims a step), added and reduced in a fixed order,
 * then a scalar FMA chain over the last D % 8 dims; an accumulator column is one FMA chain over the keys.
 * So decode (one token's G heads) and prefill (several tokens) give the same bits. The softmax's exp_sum
 * stays scalar. */
#include <arm_neon.h>
#include <math.h>

#include "../ops_kernels.h"

#define TRI_ATT_R   4
#define TRI_AINLINE static inline __attribute__((always_inline))

/* 8 halves as floats: the low and the high 4 */
TRI_AINLINE void tri_att_h8(const tri_fp16 * p, float32x4_t * lo, float32x4_t * hi) {
    const float16x8_t h = vreinterpretq_f16_u16(vld1q_u16(p));
    *lo = vcvt_f32_f16(vget_low_f16(h));
    *hi = vcvt_high_f32_f16(h);
}

/* s[r][j] = dot(q[r], k) * scale for R queries against one key */
TRI_AINLINE void tri_att_key(int D, int R, const float * const * q, const tri_fp16 * k, float scale, float * const * s,
                             int j) {
    const int   D8 = D & ~7;
    float32x4_t a[TRI_ATT_R][2];
    for (int r = 0; r < R; r++) {
        a[r][0] = a[r][1] = vdupq_n_f32(0.0f);
    }
    for (int d = 0; d < D8; d += 8) {
        float32x4_t k0, k1;
        tri_att_h8(k + d, &k0, &k1);
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            a[r][0] = vfmaq_f32(a[r][0], vld1q_f32(q[r] + d), k0);
            a[r][1] = vfmaq_f32(a[r][1], vld1q_f32(q[r] + d + 4), k1);
        }
    }
    for (int r = 0; r < R; r++) {
        float v = vaddvq_f32(vaddq_f32(a[r][0], a[r][1]));
        for (int d = D8; d < D; d++) {
            v = fmaf(q[r][d], tri_fp16_to_fp32(k[d]), v);
        }
        s[r][j] = v * scale;
    }
}

TRI_AINLINE void tri_att_scores_r(int D, int R, const float * const * q, const tri_fp16 * K, int n, float scale,
                                  float * const * s) {
    for (int j = 0; j < n; j++) {
        tri_att_key(D, R, q, K + (size_t)j * D, scale, s, j);
    }
}

/* acc[r][d] += sum_j p[r][j] V[j][d] for R queries: 16 columns at a time, then 4, then single ones */
TRI_AINLINE void tri_att_accum_r(int D, int R, const float * const * p, const tri_fp16 * V, int n,
                                 float * const * acc) {
    const int D4 = D & ~3;
    int       d0 = 0;
    for (; d0 + 16 <= D4; d0 += 16) {
        float32x4_t a[TRI_ATT_R][4];
        for (int r = 0; r < R; r++) {
            for (int i = 0; i < 4; i++) {
                a[r][i] = vld1q_f32(acc[r] + d0 + 4 * i);
            }
        }
        for (int j = 0; j < n; j++) {
            const tri_fp16 * v = V + (size_t)j * D + d0;
            float32x4_t      vv[4];
            tri_att_h8(v, &vv[0], &vv[1]);
            tri_att_h8(v + 8, &vv[2], &vv[3]);
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) {
                const float32x4_t w = vdupq_n_f32(p[r][j]);
                for (int i = 0; i < 4; i++) {
                    a[r][i] = vfmaq_f32(a[r][i], w, vv[i]);
                }
            }
        }
        for (int r = 0; r < R; r++) {
            for (int i = 0; i < 4; i++) {
                vst1q_f32(acc[r] + d0 + 4 * i, a[r][i]);
            }
        }
    }
    for (; d0 < D4; d0 += 4) {
        for (int r = 0; r < R; r++) {
            float32x4_t a = vld1q_f32(acc[r] + d0);
            for (int j = 0; j < n; j++) {
                const float32x4_t v = vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(V + (size_t)j * D + d0)));
                a = vfmaq_f32(a, vdupq_n_f32(p[r][j]), v);
            }
            vst1q_f32(acc[r] + d0, a);
        }
    }
    for (int d = D4; d < D; d++) {
        for (int r = 0; r < R; r++) {
            float a = acc[r][d];
            for (int j = 0; j < n; j++) {
                a = fmaf(p[r][j], tri_fp16_to_fp32(V[(size_t)j * D + d]), a);
            }
            acc[r][d] = a;
        }
    }
}

/* The pointer-array kernels: queries in groups of TRI_ATT_R, the rest one at a time. */
void tri_attn_scores_q_neon(int D, int nq, const float * const * q, const tri_fp16 * K, int n, float scale,
                            float * const * s) {
    int r = 0;
    for (; r + TRI_ATT_R <= nq; r += TRI_ATT_R) {
        tri_att_scores_r(D, TRI_ATT_R, q + r, K, n, scale, s + r);
    }
    for (; r < nq; r++) {
        tri_att_scores_r(D, 1, q + r, K, n, scale, s + r);
    }
}

void tri_attn_accum_q_neon(int D, int nq, const float * const * p, const tri_fp16 * V, int n, float * const * acc) {
    int r = 0;
    for (; r + TRI_ATT_R <= nq; r += TRI_ATT_R) {
        tri_att_accum_r(D, TRI_ATT_R, p + r, V, n, acc + r);
    }
    for (; r < nq; r++) {
        tri_att_accum_r(D, 1, p + r, V, n, acc + r);
    }
}

/* The contiguous forms (G queries at q + g D, rows at stride ls / lp), for callers with one token. */
void tri_attn_scores_neon(int D, int G, const float * q, const tri_fp16 * K, int n, float scale, float * s, int ls) {
    for (int g0 = 0; g0 < G; g0 += TRI_ATT_MAXQ) {
        const int     m = G - g0 < TRI_ATT_MAXQ ? G - g0 : TRI_ATT_MAXQ;
        const float * qp[TRI_ATT_MAXQ];
        float *       sp[TRI_ATT_MAXQ];
        for (int g = 0; g < m; g++) {
            qp[g] = q + (size_t)(g0 + g) * D;
            sp[g] = s + (size_t)(g0 + g) * ls;
        }
        tri_attn_scores_q_neon(D, m, qp, K, n, scale, sp);
    }
}

void tri_attn_accum_neon(int D, int G, const float * p, int lp, const tri_fp16 * V, int n, float * acc) {
    for (int g0 = 0; g0 < G; g0 += TRI_ATT_MAXQ) {
        const int     m = G - g0 < TRI_ATT_MAXQ ? G - g0 : TRI_ATT_MAXQ;
        const float * pp[TRI_ATT_MAXQ];
        float *       ap[TRI_ATT_MAXQ];
        for (int g = 0; g < m; g++) {
            pp[g] = p + (size_t)(g0 + g) * lp;
            ap[g] = acc + (size_t)(g0 + g) * D;
        }
        tri_attn_accum_q_neon(D, m, pp, V, n, ap);
    }
}

/* max of s[0..n): NaN ignored, as the reference's comparisons do */
float tri_max_neon(const float * s, int n) {
    float32x4_t m = vdupq_n_f32(-INFINITY);
    int         j = 0;
    for (; j + 4 <= n; j += 4) {
        m = vmaxnmq_f32(m, vld1q_f32(s + j));
    }
    float mx = vmaxnmvq_f32(m);
    for (; j < n; j++) {
        mx = s[j] > mx ? s[j] : mx;
    }
    return mx;
}
