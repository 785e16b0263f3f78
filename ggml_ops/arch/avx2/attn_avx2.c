/* AVX2 + F16C attention kernels over F16 K/V rows. */
#include "../ops_kernels.h"

#include <immintrin.h>
#include <math.h>

static inline float tri_hsum256(__m256 v) {
    __m128 lo = _mm256_castps256_ps128(v);
    __m128 hi = _mm256_extractf128_ps(v, 1);
    lo = _mm_add_ps(lo, hi);
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
    return _mm_cvtss_f32(lo);
}

/* Four dot products of q with K rows j..j+3, reduced together: [s0, s1, s2, s3]. */
static inline __m128 tri_dot4_f16(const float * q, const tri_fp16 * k, int D, int D8) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
    for (int d = 0; d < D8; d += 8) {
        const __m256 qv = _mm256_loadu_ps(q + d);
        a0 = _mm256_fmadd_ps(qv, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) (k + d))), a0);
        a1 = _mm256_fmadd_ps(qv, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) (k + D + d))), a1);
        a2 = _mm256_fmadd_ps(qv, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) (k + 2 * D + d))), a2);
        a3 = _mm256_fmadd_ps(qv, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) (k + 3 * D + d))), a3);
    }
    const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
    return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}

void tri_attn_scores_avx2(int D, int G, const float * q, const tri_fp16 * K, int n, float scale, float * s, int ls) {
    const int D8 = D & ~7;
    const __m128 sc = _mm_set1_ps(scale);
    for (int g = 0; g < G; g++) {
        const float * qg = q + (int64_t) g * D;
        float * sg = s + (int64_t) g * ls;
        int j = 0;
        for (; j + 4 <= n; j += 4) {
            __m128 r = tri_dot4_f16(qg, K + (int64_t) j * D, D, D8);
            if (D8 < D) {
                float tail[4];
                for (int t = 0; t < 4; t++) {
                    tail[t] = 0.0f;
                    for (int d = D8; d < D; d++) {
                        tail[t] += qg[d] * tri_fp16_to_fp32(K[(int64_t) (j + t) * D + d]);
                    }
                }
                r = _mm_add_ps(r, _mm_loadu_ps(tail));
            }
            _mm_storeu_ps(sg + j, _mm_mul_ps(r, sc));
        }
        for (; j < n; j++) {
            const tri_fp16 * k = K + (int64_t) j * D;
            __m256 a = _mm256_setzero_ps();
            int d = 0;
            for (; d < D8; d += 8) {
                a = _mm256_fmadd_ps(_mm256_loadu_ps(qg + d), _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) (k + d))), a);
            }
            float acc = tri_hsum256(a);
            for (; d < D; d++) {
                acc += qg[d] * tri_fp16_to_fp32(k[d]);
            }
            sg[j] = acc * scale;
        }
    }
}

/* acc[g] += sum_j p[g][j] V[j]: per head, 64 columns at a time stay in eight registers over all rows. */
void tri_attn_accum_avx2(int D, int G, const float * p, int lp, const tri_fp16 * V, int n, float * acc) {
    const int D8 = D & ~7;
    for (int g = 0; g < G; g++) {
        const float * pg = p + (int64_t) g * lp;
        float * a = acc + (int64_t) g * D;
        int d0 = 0;
        for (; d0 + 64 <= D8; d0 += 64) {
            __m256 r0 = _mm256_loadu_ps(a + d0), r1 = _mm256_loadu_ps(a + d0 + 8);
            __m256 r2 = _mm256_loadu_ps(a + d0 + 16), r3 = _mm256_loadu_ps(a + d0 + 24);
            __m256 r4 = _mm256_loadu_ps(a + d0 + 32), r5 = _mm256_loadu_ps(a + d0 + 40);
            __m256 r6 = _mm256_loadu_ps(a + d0 + 48), r7 = _mm256_loadu_ps(a + d0 + 56);
            for (int j = 0; j < n; j++) {
                const float w = pg[j];
                if (w == 0.0f) {
                    continue;
                }
                const __m256 wv = _mm256_set1_ps(w);
                const tri_fp16 * v = V + (int64_t) j * D + d0;
                r0 = _mm256_fmadd_ps(wv, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) (v + 0))), r0);
                r1 = _mm256_fmadd_ps(wv, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) (v + 8))), r1);
                r2 = _mm256_fmadd_ps(wv, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) (v + 16))), r2);
                r3 = _mm256_fmadd_ps(wv, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) (v + 24))), r3);
                r4 = _mm256_fmadd_ps(wv, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) (v + 32))), r4);
                r5 = _mm256_fmadd_ps(wv, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) (v + 40))), r5);
                r6 = _mm256_fmadd_ps(wv, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) (v + 48))), r6);
                r7 = _mm256_fmadd_ps(wv, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) (v + 56))), r7);
            }
            _mm256_storeu_ps(a + d0, r0);
            _mm256_storeu_ps(a + d0 + 8, r1);
            _mm256_storeu_ps(a + d0 + 16, r2);
            _mm256_storeu_ps(a + d0 + 24, r3);
            _mm256_storeu_ps(a + d0 + 32, r4);
            _mm256_storeu_ps(a + d0 + 40, r5);
            _mm256_storeu_ps(a + d0 + 48, r6);
            _mm256_storeu_ps(a + d0 + 56, r7);
        }
        for (; d0 < D8; d0 += 8) {
            __m256 r = _mm256_loadu_ps(a + d0);
            for (int j = 0; j < n; j++) {
                r = _mm256_fmadd_ps(_mm256_set1_ps(pg[j]),
                                    _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) (V + (int64_t) j * D + d0))), r);
            }
            _mm256_storeu_ps(a + d0, r);
        }
        for (int d = D8; d < D; d++) {
            float r = a[d];
            for (int j = 0; j < n; j++) {
                r += pg[j] * tri_fp16_to_fp32(V[(int64_t) j * D + d]);
            }
            a[d] = r;
        }
    }
}

/* exp(x) for x <= 0 (softmax inputs after subtracting the max): 2^n * p(r), r = x - n ln2, with a
 * degree-6 polynomial (Cephes coefficients); relative error ~2 ulp, values below -87 flush to ~0. */
static inline __m256 tri_exp256(__m256 x) {
    x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    const __m256 r2 = _mm256_mul_ps(r, r);
    p = _mm256_fmadd_ps(p, r2, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

float tri_exp_sum_avx2(float * s, int n, float max) {
    const __m256 mx = _mm256_set1_ps(max);
    __m256 acc = _mm256_setzero_ps();
    int j = 0;
    for (; j + 8 <= n; j += 8) {
        const __m256 e = tri_exp256(_mm256_sub_ps(_mm256_loadu_ps(s + j), mx));
        _mm256_storeu_ps(s + j, e);
        acc = _mm256_add_ps(acc, e);
    }
    float sum = tri_hsum256(acc);
    for (; j < n; j++) {
        s[j] = expf(s[j] - max);
        sum += s[j];
    }
    return sum;
}
