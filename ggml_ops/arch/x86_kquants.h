/* K-quant x Q8_K dot products over 256-bit vectors, shared by the AVX2 and AVX-512 kernel files.
 * The including file first defines
 *     static inline __m256i tri_kq_dot(__m256i acc, __m256i q, __m256i y, __m256i sc16);
 * returning acc + sum over pairs of (q * y) * sc16 (q: unsigned codes, y: int8, sc16: int16 scales
 * per 8-lane half), so each ISA uses its best multiply-accumulate.
 * All weight codes are kept unsigned; offsets (Q3_K's -4, Q6_K's -32) and mins go through Q8_K's bsums. */
#ifndef TRI_X86_KQUANTS_H
#define TRI_X86_KQUANTS_H

#include "../quants.h"
#include "avx2/simd_avx2.h"

/* int16 scale a for the first 16 values of a 32-value chunk, b for the second 16. */
static inline __m256i tri_sc2(int a, int b) {
    return _mm256_set_m128i(_mm_set1_epi16((short)b), _mm_set1_epi16((short)a));
}

static void tri_vec_dot_q2_K_x86(int n, float * restrict s, const void * restrict vx, const void * restrict vy) {
    const tri_block_q2_K * x = vx;
    const tri_block_q8_K * y = vy;
    const __m256i m3 = _mm256_set1_epi8(3);
    __m256 acc  = _mm256_setzero_ps();
    float  accm = 0.0f;
    for (int b = 0; b < n / TRI_QK_K; b++) {
        const float d    = y[b].d * tri_h2f(x[b].d);
        const float dmin = y[b].d * tri_h2f(x[b].dmin);
        const uint8_t * sc = x[b].scales;
        int msum = 0;
        for (int g = 0; g < 16; g++) {
            msum += (sc[g] >> 4) * y[b].bsums[g];
        }
        __m256i sumi = _mm256_setzero_si256();
        for (int h = 0; h < 2; h++) {
            const __m256i qq = _mm256_loadu_si256((const __m256i *)(x[b].qs + 32 * h));
            for (int k = 0; k < 4; k++) {
                const __m256i q  = _mm256_and_si256(_mm256_srli_epi16(qq, 2 * k), m3);
                const __m256i yy = _mm256_loadu_si256((const __m256i *)(y[b].qs + 128 * h + 32 * k));
                const int     g  = 8 * h + 2 * k;
                sumi = tri_kq_dot(sumi, q, yy, tri_sc2(sc[g] & 15, sc[g + 1] & 15));
            }
        }
        acc   = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
        accm += dmin * (float)msum;
    }
    *s = tri_hsum_ps(acc) - accm;
}

static void tri_vec_dot_q3_K_x86(int n, float * restrict s, const void * restrict vx, const void * restrict vy) {
    const tri_block_q3_K * x = vx;
    const tri_block_q8_K * y = vy;
    const __m256i m3 = _mm256_set1_epi8(3);
    const __m256i c4 = _mm256_set1_epi8(4);
    __m256 acc  = _mm256_setzero_ps();
    float  accm = 0.0f;
    for (int b = 0; b < n / TRI_QK_K; b++) {
        const float d = y[b].d * tri_h2f(x[b].d);
        int8_t sc[16];
        tri_q3_K_scales(x[b].scales, sc);
        int msum = 0;
        for (int g = 0; g < 16; g++) {
            msum += sc[g] * y[b].bsums[g];
        }
        const __m256i hm = _mm256_loadu_si256((const __m256i *)x[b].hmask);
        __m256i sumi = _mm256_setzero_si256();
        for (int h = 0; h < 2; h++) {
            const __m256i qq = _mm256_loadu_si256((const __m256i *)(x[b].qs + 32 * h));
            for (int k = 0; k < 4; k++) {
                const __m256i bm = _mm256_set1_epi8((char)(1 << (4 * h + k)));
                const __m256i hb = _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(hm, bm), bm), c4);
                const __m256i q  = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(qq, 2 * k), m3), hb);
                const __m256i yy = _mm256_loadu_si256((const __m256i *)(y[b].qs + 128 * h + 32 * k));
                const int     g  = 8 * h + 2 * k;
                sumi = tri_kq_dot(sumi, q, yy, tri_sc2(sc[g], sc[g + 1]));
            }
        }
        acc   = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
        accm += d * (float)(4 * msum); /* codes were q + 4 */
    }
    *s = tri_hsum_ps(acc) - accm;
}

static void tri_vec_dot_q4_K_x86(int n, float * restrict s, const void * restrict vx, const void * restrict vy) {
    const tri_block_q4_K * x = vx;
    const tri_block_q8_K * y = vy;
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    __m256 acc  = _mm256_setzero_ps();
    float  accm = 0.0f;
    for (int b = 0; b < n / TRI_QK_K; b++) {
        const float d    = y[b].d * tri_h2f(x[b].d);
        const float dmin = y[b].d * tri_h2f(x[b].dmin);
        uint8_t sc[8], mn[8];
        int msum = 0;
        for (int j = 0; j < 8; j++) {
            tri_get_scale_min_k4(j, x[b].scales, &sc[j], &mn[j]);
            msum += mn[j] * (y[b].bsums[2 * j] + y[b].bsums[2 * j + 1]);
        }
        __m256i sumi = _mm256_setzero_si256();
        for (int c = 0; c < 4; c++) {
            const __m256i qq = _mm256_loadu_si256((const __m256i *)(x[b].qs + 32 * c));
            const __m256i lo = _mm256_and_si256(qq, m4);
            const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(qq, 4), m4);
            const __m256i y0 = _mm256_loadu_si256((const __m256i *)(y[b].qs + 64 * c));
            const __m256i y1 = _mm256_loadu_si256((const __m256i *)(y[b].qs + 64 * c + 32));
            sumi = tri_kq_dot(sumi, lo, y0, _mm256_set1_epi16(sc[2 * c]));
            sumi = tri_kq_dot(sumi, hi, y1, _mm256_set1_epi16(sc[2 * c + 1]));
        }
        acc   = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
        accm += dmin * (float)msum;
    }
    *s = tri_hsum_ps(acc) - accm;
}

static void tri_vec_dot_q5_K_x86(int n, float * restrict s, const void * restrict vx, const void * restrict vy) {
    const tri_block_q5_K * x = vx;
    const tri_block_q8_K * y = vy;
    const __m256i m4  = _mm256_set1_epi8(0x0F);
    const __m256i c16 = _mm256_set1_epi8(16);
    __m256 acc  = _mm256_setzero_ps();
    float  accm = 0.0f;
    for (int b = 0; b < n / TRI_QK_K; b++) {
        const float d    = y[b].d * tri_h2f(x[b].d);
        const float dmin = y[b].d * tri_h2f(x[b].dmin);
        uint8_t sc[8], mn[8];
        int msum = 0;
        for (int j = 0; j < 8; j++) {
            tri_get_scale_min_k4(j, x[b].scales, &sc[j], &mn[j]);
            msum += mn[j] * (y[b].bsums[2 * j] + y[b].bsums[2 * j + 1]);
        }
        const __m256i qh = _mm256_loadu_si256((const __m256i *)x[b].qh);
        __m256i sumi = _mm256_setzero_si256();
        for (int c = 0; c < 4; c++) {
            const __m256i qq  = _mm256_loadu_si256((const __m256i *)(x[b].qs + 32 * c));
            const __m256i bm0 = _mm256_set1_epi8((char)(1 << (2 * c)));
            const __m256i bm1 = _mm256_set1_epi8((char)(1 << (2 * c + 1)));
            const __m256i h0  = _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(qh, bm0), bm0), c16);
            const __m256i h1  = _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(qh, bm1), bm1), c16);
            const __m256i lo  = _mm256_or_si256(_mm256_and_si256(qq, m4), h0);
            const __m256i hi  = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(qq, 4), m4), h1);
            const __m256i y0  = _mm256_loadu_si256((const __m256i *)(y[b].qs + 64 * c));
            const __m256i y1  = _mm256_loadu_si256((const __m256i *)(y[b].qs + 64 * c + 32));
            sumi = tri_kq_dot(sumi, lo, y0, _mm256_set1_epi16(sc[2 * c]));
            sumi = tri_kq_dot(sumi, hi, y1, _mm256_set1_epi16(sc[2 * c + 1]));
        }
        acc   = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
        accm += dmin * (float)msum;
    }
    *s = tri_hsum_ps(acc) - accm;
}

static void tri_vec_dot_q6_K_x86(int n, float * restrict s, const void * restrict vx, const void * restrict vy) {
    const tri_block_q6_K * x = vx;
    const tri_block_q8_K * y = vy;
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    const __m256i m3 = _mm256_set1_epi8(3);
    __m256 acc  = _mm256_setzero_ps();
    float  accm = 0.0f;
    for (int b = 0; b < n / TRI_QK_K; b++) {
        const float    d  = y[b].d * tri_h2f(x[b].d);
        const int8_t * sc = x[b].scales;
        int msum = 0;
        for (int g = 0; g < 16; g++) {
            msum += sc[g] * y[b].bsums[g];
        }
        __m256i sumi = _mm256_setzero_si256();
        for (int h = 0; h < 2; h++) {
            const __m256i l0 = _mm256_loadu_si256((const __m256i *)(x[b].ql + 64 * h));
            const __m256i l1 = _mm256_loadu_si256((const __m256i *)(x[b].ql + 64 * h + 32));
            const __m256i hh = _mm256_loadu_si256((const __m256i *)(x[b].qh + 32 * h));
            const int8_t * s8 = sc + 8 * h;
            const int8_t * yq = y[b].qs + 128 * h;
            const __m256i q0 = _mm256_or_si256(_mm256_and_si256(l0, m4),
                                               _mm256_slli_epi16(_mm256_and_si256(hh, m3), 4));
            const __m256i q1 = _mm256_or_si256(_mm256_and_si256(l1, m4),
                                               _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hh, 2), m3), 4));
            const __m256i q2 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
                                               _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hh, 4), m3), 4));
            const __m256i q3 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                                               _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hh, 6), m3), 4));
            sumi = tri_kq_dot(sumi, q0, _mm256_loadu_si256((const __m256i *)(yq)), tri_sc2(s8[0], s8[1]));
            sumi = tri_kq_dot(sumi, q1, _mm256_loadu_si256((const __m256i *)(yq + 32)), tri_sc2(s8[2], s8[3]));
            sumi = tri_kq_dot(sumi, q2, _mm256_loadu_si256((const __m256i *)(yq + 64)), tri_sc2(s8[4], s8[5]));
            sumi = tri_kq_dot(sumi, q3, _mm256_loadu_si256((const __m256i *)(yq + 96)), tri_sc2(s8[6], s8[7]));
        }
        acc   = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
        accm += d * (float)(32 * msum); /* codes were q + 32 */
    }
    *s = tri_hsum_ps(acc) - accm;
}

#endif
