/* AVX2 + FMA + F16C TriAttention scoring: each K row is converted and its pair norms computed once,
 * then dotted with the synthetic queries of all G query heads of its KV head. */
#include "../../triattn_score.h"

#include <immintrin.h>

#define TRI_TS_MAX_DIM 512

static inline float tri_ts_hsum(__m256 v) {
    __m128 lo = _mm256_castps256_ps128(v);
    lo = _mm_add_ps(lo, _mm256_extractf128_ps(v, 1));
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
    return _mm_cvtss_f32(lo);
}

void tri_triattn_score_avx2(int D, int rope_dim, enum tri_rope_pairing pairing, int G, const float * w,
                            const float * cw, const tri_fp16 * K, int n, float * s, int ls) {
    const int F = rope_dim / 2;
    const bool tiled = rope_dim <= TRI_TS_MAX_DIM &&
                       (pairing == TRI_ROPE_ADJACENT ? rope_dim % 8 == 0 : F % 8 == 0);
    if (!tiled) {
        tri_triattn_score_ref(D, rope_dim, pairing, G, w, cw, K, n, s, ls);
        return;
    }
    /* kb = the row as floats, nb[d] = norm of the pair that dim d belongs to. */
    float kb[TRI_TS_MAX_DIM] __attribute__((aligned(32)));
    float nb[TRI_TS_MAX_DIM] __attribute__((aligned(32)));
    for (int j = 0; j < n; j++) {
        const tri_fp16 * k = K + (int64_t) j * D;
        if (pairing == TRI_ROPE_ADJACENT) {
            for (int d = 0; d < rope_dim; d += 8) {
                const __m256 x  = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) (k + d)));
                const __m256 sq = _mm256_mul_ps(x, x);
                _mm256_store_ps(kb + d, x);
                _mm256_store_ps(nb + d, _mm256_sqrt_ps(_mm256_add_ps(sq, _mm256_permute_ps(sq, 0xB1))));
            }
        } else {
            for (int f = 0; f < F; f += 8) {
                const __m256 xa = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) (k + f)));
                const __m256 xb = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) (k + F + f)));
                const __m256 nr = _mm256_sqrt_ps(_mm256_fmadd_ps(xa, xa, _mm256_mul_ps(xb, xb)));
                _mm256_store_ps(kb + f, xa);
                _mm256_store_ps(kb + F + f, xb);
                _mm256_store_ps(nb + f, nr);
                _mm256_store_ps(nb + F + f, nr);
            }
        }
        for (int g = 0; g < G; g++) {
            const float * wg = w + (int64_t) g * D;
            const float * cg = cw + (int64_t) g * D;
            __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
            for (int d = 0; d < rope_dim; d += 8) {
                a0 = _mm256_fmadd_ps(_mm256_loadu_ps(wg + d), _mm256_load_ps(kb + d), a0);
                a1 = _mm256_fmadd_ps(_mm256_loadu_ps(cg + d), _mm256_load_ps(nb + d), a1);
            }
            s[(int64_t) g * ls + j] = tri_ts_hsum(_mm256_add_ps(a0, a1));
        }
    }
}
