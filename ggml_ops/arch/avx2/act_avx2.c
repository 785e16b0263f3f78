/* AVX2 gated activations: act(g) * u with act(v) = v / (1 + exp(-z)), z = v (SiLU) or
 * z = 2 sqrt(2/pi) (v + 0.044715 v^3) (GELU in its tanh form: 0.5 v (1 + tanh(z/2)) = v / (1 + exp(-z))).
 * Every element goes through the same vector code (the tail through a padded vector), so a value's
 * result does not depend on its position or on n. */
#include "../ops_kernels.h"
#include "simd_avx2.h"

/* v / (1 + exp(-z)); exp's argument clamped to [-87, 88], where the quotient is v or 0 to float precision. */
static inline __m256 tri_sigmoid_mul(__m256 v, __m256 z) {
    const __m256 e = tri_exp256(_mm256_min_ps(_mm256_sub_ps(_mm256_setzero_ps(), z), _mm256_set1_ps(88.0f)));
    return _mm256_div_ps(v, _mm256_add_ps(_mm256_set1_ps(1.0f), e));
}

static inline __m256 tri_silu8(__m256 v) {
    return tri_sigmoid_mul(v, v);
}

static inline __m256 tri_gelu8(__m256 v) {
    const __m256 c = _mm256_set1_ps(2.0f * 0.7978845608028654f); /* 2 sqrt(2 / pi) */
    const __m256 v3 = _mm256_mul_ps(_mm256_mul_ps(v, v), v);
    const __m256 z = _mm256_mul_ps(c, _mm256_add_ps(v, _mm256_mul_ps(_mm256_set1_ps(0.044715f), v3)));
    return tri_sigmoid_mul(v, z);
}

static inline void tri_act_mul(float * g, const float * u, int n, __m256 (*act)(__m256)) {
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        _mm256_storeu_ps(g + i, _mm256_mul_ps(act(_mm256_loadu_ps(g + i)), _mm256_loadu_ps(u + i)));
    }
    if (i < n) {
        float tg[8] = { 0 }, tu[8] = { 0 };
        for (int k = 0; k < n - i; k++) {
            tg[k] = g[i + k];
            tu[k] = u[i + k];
        }
        _mm256_storeu_ps(tg, _mm256_mul_ps(act(_mm256_loadu_ps(tg)), _mm256_loadu_ps(tu)));
        for (int k = 0; k < n - i; k++) {
            g[i + k] = tg[k];
        }
    }
}

void tri_silu_mul_avx2(float * g, const float * u, int n) {
    tri_act_mul(g, u, n, tri_silu8);
}

void tri_gelu_mul_avx2(float * g, const float * u, int n) {
    tri_act_mul(g, u, n, tri_gelu8);
}
