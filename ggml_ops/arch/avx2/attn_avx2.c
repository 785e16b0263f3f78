/* AVX2 + F16C attention kernels over F16 K/V rows (attn_x86.h, two queries per converted K/V vector) and
 * the softmax pieces. */
#include "../ops_kernels.h"
#include "simd_avx2.h"

#include <math.h>

#define TRI_ATT_R 2
#define TRI_ATT_NAME(f) f##_avx2
#include "../attn_x86.h"

float tri_exp_sum_avx2(float * s, int n, float max) {
    const __m256 mx = _mm256_set1_ps(max);
    __m256 acc = _mm256_setzero_ps();
    int j = 0;
    for (; j + 8 <= n; j += 8) {
        const __m256 e = tri_exp256(_mm256_sub_ps(_mm256_loadu_ps(s + j), mx));
        _mm256_storeu_ps(s + j, e);
        acc = _mm256_add_ps(acc, e);
    }
    float sum = tri_hsum_ps(acc);
    for (; j < n; j++) {
        s[j] = expf(s[j] - max);
        sum += s[j];
    }
    return sum;
}

float tri_max_avx2(const float * s, int n) {
    __m256 m = _mm256_set1_ps(-INFINITY);
    int j = 0;
    for (; j + 8 <= n; j += 8) {
        m = _mm256_max_ps(m, _mm256_loadu_ps(s + j));
    }
    float mx = tri_hmax_ps(m);
    for (; j < n; j++) {
        mx = s[j] > mx ? s[j] : mx;
    }
    return mx;
}
