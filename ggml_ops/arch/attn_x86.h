/* Attention kernels over F16 K/V rows for several queries at once, shared by the AVX2 and AVX-512 files:
 * each converted K or V vector serves TRI_ATT_R queries (the including file sets R for its register
 * count). The arithmetic of one (query, key) pair never depends on how queries or keys were grouped:
 * a score is one 8-lane FMA chain over the head dims reduced by the same hadd tree (tail keys are
 * padded into a full group of 4), and an accumulator column is one FMA chain over the keys. So decode
 * (one token's G heads) and prefill (several tokens) give the same bits.
 * The including file defines TRI_ATT_R and TRI_ATT_NAME(f) (the exported name of kernel f for its ISA). */
#ifndef TRI_ATTN_X86_H
#define TRI_ATTN_X86_H

#include "../ops.h"

#include <immintrin.h>

#define TRI_AINLINE static inline __attribute__((always_inline))

/* Dims [D8, D) of q against keys k[0..3] (head dims not a multiple of 8). */
static __attribute__((noinline)) __m128 tri_att_tail4(int D8, int D, const float * q, const tri_fp16 * const * k) {
    float tail[4];
    for (int i = 0; i < 4; i++) {
        tail[i] = 0.0f;
        for (int d = D8; d < D; d++) {
            tail[i] += q[d] * tri_fp16_to_fp32(k[i][d]);
        }
    }
    return _mm_loadu_ps(tail);
}

/* Scores of R queries against keys k[0..3]: s[r][j + i] for the first nk keys. */
TRI_AINLINE void tri_att_scores4(int D, int R, const float * const * q, const tri_fp16 * const * k, float scale,
                                 float * const * s, int j, int nk) {
    const int D8 = D & ~7;
    __m256 a[TRI_ATT_R][4];
#pragma GCC unroll 8
    for (int r = 0; r < R; r++) {
        for (int i = 0; i < 4; i++) {
            a[r][i] = _mm256_setzero_ps();
        }
    }
    for (int d = 0; d < D8; d += 8) {
        __m256 kv[4];
        for (int i = 0; i < 4; i++) {
            kv[i] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) (k[i] + d)));
        }
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) {
            const __m256 qv = _mm256_loadu_ps(q[r] + d);
            for (int i = 0; i < 4; i++) {
                a[r][i] = _mm256_fmadd_ps(qv, kv[i], a[r][i]);
            }
        }
    }
    const __m128 sc = _mm_set1_ps(scale);
#pragma GCC unroll 8
    for (int r = 0; r < R; r++) {
        const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(a[r][0], a[r][1]), _mm256_hadd_ps(a[r][2], a[r][3]));
        __m128 v = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
        if (D8 < D) {
            v = _mm_add_ps(v, tri_att_tail4(D8, D, q[r], k));
        }
        v = _mm_mul_ps(v, sc);
        if (nk == 4) {
            _mm_storeu_ps(s[r] + j, v);
        } else {
            float out[4];
            _mm_storeu_ps(out, v);
            for (int i = 0; i < nk; i++) {
                s[r][j + i] = out[i];
            }
        }
    }
}

/* R queries (q[r], score rows s[r]) against keys [0, n). */
TRI_AINLINE void tri_att_scores_r(int D, int R, const float * const * q, const tri_fp16 * K, int n, float scale,
                                  float * const * s) {
    for (int j = 0; j < n; j += 4) {
        const tri_fp16 * k[4];
        for (int i = 0; i < 4; i++) {
            k[i] = K + (size_t) (j + i < n ? j + i : n - 1) * D; /* pad with the last key */
        }
        tri_att_scores4(D, R, q, k, scale, s, j, n - j < 4 ? n - j : 4);
    }
}

/* acc[r][d] += sum_j p[r][j] V[j][d] for R queries, 32 columns at a time, then 8, then single ones. */
TRI_AINLINE void tri_att_accum_r(int D, int R, const float * const * p, const tri_fp16 * V, int n, float * const * acc) {
    const int D8 = D & ~7;
    int d0 = 0;
    for (; d0 + 32 <= D8; d0 += 32) {
        __m256 a[TRI_ATT_R][4];
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) {
            for (int i = 0; i < 4; i++) {
                a[r][i] = _mm256_loadu_ps(acc[r] + d0 + 8 * i);
            }
        }
        for (int j = 0; j < n; j++) {
            const tri_fp16 * v = V + (size_t) j * D + d0;
            __m256 vv[4];
            for (int i = 0; i < 4; i++) {
                vv[i] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) (v + 8 * i)));
            }
#pragma GCC unroll 8
            for (int r = 0; r < R; r++) {
                const __m256 w = _mm256_set1_ps(p[r][j]);
                for (int i = 0; i < 4; i++) {
                    a[r][i] = _mm256_fmadd_ps(w, vv[i], a[r][i]);
                }
            }
        }
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) {
            for (int i = 0; i < 4; i++) {
                _mm256_storeu_ps(acc[r] + d0 + 8 * i, a[r][i]);
            }
        }
    }
    for (; d0 < D8; d0 += 8) {
        for (int r = 0; r < R; r++) {
            __m256 a = _mm256_loadu_ps(acc[r] + d0);
            for (int j = 0; j < n; j++) {
                const __m256 v = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) (V + (size_t) j * D + d0)));
                a = _mm256_fmadd_ps(_mm256_set1_ps(p[r][j]), v, a);
            }
            _mm256_storeu_ps(acc[r] + d0, a);
        }
    }
    for (int d = D8; d < D; d++) {
        for (int r = 0; r < R; r++) {
            float a = acc[r][d];
            for (int j = 0; j < n; j++) {
                a = fmaf(p[r][j], tri_fp16_to_fp32(V[(size_t) j * D + d]), a);
            }
            acc[r][d] = a;
        }
    }
}

/* The pointer-array kernels: queries in groups of TRI_ATT_R, the rest one at a time. */
static void tri_att_scores_q(int D, int nq, const float * const * q, const tri_fp16 * K, int n, float scale,
                             float * const * s) {
    int r = 0;
    for (; r + TRI_ATT_R <= nq; r += TRI_ATT_R) {
        tri_att_scores_r(D, TRI_ATT_R, q + r, K, n, scale, s + r);
    }
    for (; r < nq; r++) {
        tri_att_scores_r(D, 1, q + r, K, n, scale, s + r);
    }
}

static void tri_att_accum_q(int D, int nq, const float * const * p, const tri_fp16 * V, int n, float * const * acc) {
    int r = 0;
    for (; r + TRI_ATT_R <= nq; r += TRI_ATT_R) {
        tri_att_accum_r(D, TRI_ATT_R, p + r, V, n, acc + r);
    }
    for (; r < nq; r++) {
        tri_att_accum_r(D, 1, p + r, V, n, acc + r);
    }
}

/* The contiguous forms (G queries at q + g D, rows at stride ls / lp), for callers with one token. */
static void tri_att_scores_g(int D, int G, const float * q, const tri_fp16 * K, int n, float scale, float * s, int ls) {
    for (int g0 = 0; g0 < G; g0 += TRI_ATT_MAXQ) {
        const int     m = G - g0 < TRI_ATT_MAXQ ? G - g0 : TRI_ATT_MAXQ;
        const float * qp[TRI_ATT_MAXQ];
        float *       sp[TRI_ATT_MAXQ];
        for (int g = 0; g < m; g++) {
            qp[g] = q + (size_t) (g0 + g) * D;
            sp[g] = s + (size_t) (g0 + g) * ls;
        }
        tri_att_scores_q(D, m, qp, K, n, scale, sp);
    }
}

static void tri_att_accum_g(int D, int G, const float * p, int lp, const tri_fp16 * V, int n, float * acc) {
    for (int g0 = 0; g0 < G; g0 += TRI_ATT_MAXQ) {
        const int     m = G - g0 < TRI_ATT_MAXQ ? G - g0 : TRI_ATT_MAXQ;
        const float * pp[TRI_ATT_MAXQ];
        float *       ap[TRI_ATT_MAXQ];
        for (int g = 0; g < m; g++) {
            pp[g] = p + (size_t) (g0 + g) * lp;
            ap[g] = acc + (size_t) (g0 + g) * D;
        }
        tri_att_accum_q(D, m, pp, V, n, ap);
    }
}

/* The exported kernels of the including ISA (ops_kernels.h). */
void TRI_ATT_NAME(tri_attn_scores)(int D, int G, const float * q, const tri_fp16 * K, int n, float scale, float * s,
                                   int ls) {
    tri_att_scores_g(D, G, q, K, n, scale, s, ls);
}

void TRI_ATT_NAME(tri_attn_accum)(int D, int G, const float * p, int lp, const tri_fp16 * V, int n, float * acc) {
    tri_att_accum_g(D, G, p, lp, V, n, acc);
}

void TRI_ATT_NAME(tri_attn_scores_q)(int D, int nq, const float * const * q, const tri_fp16 * K, int n, float scale,
                                     float * const * s) {
    tri_att_scores_q(D, nq, q, K, n, scale, s);
}

void TRI_ATT_NAME(tri_attn_accum_q)(int D, int nq, const float * const * p, const tri_fp16 * V, int n,
                                    float * const * acc) {
    tri_att_accum_q(D, nq, p, V, n, acc);
}

#endif
