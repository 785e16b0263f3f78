/* AVX-512 (F/BW/VL/DQ + VNNI) kernels. The vec_dots and decode kernels use VNNI on 256-bit vectors
 * (vpdpbusd, vpdpwssd): measured on Zen 4, two blocks per 512-bit register were slower than one block per
 * 256-bit step (the extra lane shuffles and scale broadcasts cost more than the wider multiply saves). The
 * prefill tiles need no shuffles for it and hold two panels per 512-bit register (tile_zmm.h). Float types
 * use 512-bit FMAs. Activation quantizers are not repeated here: the AVX2 ones are used. */
#pragma GCC optimize("fp-contract=off")

#include "../../quants.h"
#include "../kernels.h"
#include "../avx2/simd_avx2.h"

static inline __m256i tri_kq_dot(__m256i acc, __m256i q, __m256i y, __m256i sc16) {
    return _mm256_dpwssd_epi32(acc, _mm256_maddubs_epi16(q, y), sc16);
}
#include "../x86_kquants.h"

static inline float tri_hsum512(__m512 v) {
    return _mm512_reduce_add_ps(v);
}

static inline float tri_lane1(__m128 v) {
    return _mm_cvtss_f32(_mm_shuffle_ps(v, v, 1));
}

/* ---- Q4_1 x Q8_1 ---- */

static inline void tri_q4_1_one(const tri_block_q4_1 * x, const tri_block_q8_1 * y, __m256 * acc, __m128 * accm) {
    const __m128 dd = _mm_mul_ps(tri_load_2h(&x->d), tri_load_2h(&y->d));
    const __m256i p = _mm256_dpbusd_epi32(_mm256_setzero_si256(), tri_unpack_nibbles(x->qs),
                                          _mm256_loadu_si256((const __m256i *)y->qs));
    *acc  = _mm256_fmadd_ps(_mm256_broadcastss_ps(dd), _mm256_cvtepi32_ps(p), *acc);
    *accm = _mm_add_ps(*accm, dd);
}

static void tri_vec_dot_q4_1_avx512(int n, float * restrict s, const void * restrict vx, const void * restrict vy) {
    const tri_block_q4_1 * x = vx;
    const tri_block_q8_1 * y = vy;
    const int nb = n / TRI_QK4_1;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    __m128 accm = _mm_setzero_ps();
    int b = 0;
    for (; b + 2 <= nb; b += 2) {
        tri_q4_1_one(&x[b], &y[b], &acc0, &accm);
        tri_q4_1_one(&x[b + 1], &y[b + 1], &acc1, &accm);
    }
    for (; b < nb; b++) {
        tri_q4_1_one(&x[b], &y[b], &acc0, &accm);
    }
    *s = tri_hsum_ps(_mm256_add_ps(acc0, acc1)) + tri_lane1(accm);
}

/* ---- Q8_0 x Q8_0: signed x signed as |x| (u8) x (y with x's sign) ---- */

static inline __m256i tri_dot_s8s8_vnni(__m256i x, __m256i y) {
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_abs_epi8(x), _mm256_sign_epi8(y, x));
}

static void tri_vec_dot_q8_0_avx512(int n, float * restrict s, const void * restrict vx, const void * restrict vy) {
    const tri_block_q8_0 * x = vx;
    const tri_block_q8_0 * y = vy;
    const int nb = n / TRI_QK8_0;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int b = 0;
    for (; b + 2 <= nb; b += 2) {
        const __m256i p0 = tri_dot_s8s8_vnni(_mm256_loadu_si256((const __m256i *)x[b].qs),
                                             _mm256_loadu_si256((const __m256i *)y[b].qs));
        const __m256i p1 = tri_dot_s8s8_vnni(_mm256_loadu_si256((const __m256i *)x[b + 1].qs),
                                             _mm256_loadu_si256((const __m256i *)y[b + 1].qs));
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(tri_h2f(x[b].d) * tri_h2f(y[b].d)), _mm256_cvtepi32_ps(p0), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_set1_ps(tri_h2f(x[b + 1].d) * tri_h2f(y[b + 1].d)), _mm256_cvtepi32_ps(p1), acc1);
    }
    for (; b < nb; b++) {
        const __m256i p = tri_dot_s8s8_vnni(_mm256_loadu_si256((const __m256i *)x[b].qs),
                                            _mm256_loadu_si256((const __m256i *)y[b].qs));
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(tri_h2f(x[b].d) * tri_h2f(y[b].d)), _mm256_cvtepi32_ps(p), acc0);
    }
    *s = tri_hsum_ps(_mm256_add_ps(acc0, acc1));
}

/* ---- Q4_0, Q5_0, Q5_1: one block per 256-bit VNNI step ---- */

static void tri_vec_dot_q4_0_avx512(int n, float * restrict s, const void * restrict vx, const void * restrict vy) {
    const tri_block_q4_0 * x = vx;
    const tri_block_q8_0 * y = vy;
    const __m256i c8 = _mm256_set1_epi8(8);
    __m256 acc = _mm256_setzero_ps();
    for (int b = 0; b < n / TRI_QK4_0; b++) {
        const __m256i q = _mm256_sub_epi8(tri_unpack_nibbles(x[b].qs), c8);
        const __m256i p = tri_dot_s8s8_vnni(q, _mm256_loadu_si256((const __m256i *)y[b].qs));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(tri_h2f(x[b].d) * tri_h2f(y[b].d)), _mm256_cvtepi32_ps(p), acc);
    }
    *s = tri_hsum_ps(acc);
}

/* Bit i of the 32-bit qh -> byte i = 16 (mask register to bytes, one instruction). */
static inline __m256i tri_qh_to_16(const uint8_t * qh) {
    uint32_t v;
    memcpy(&v, qh, 4);
    return _mm256_maskz_mov_epi8((__mmask32)v, _mm256_set1_epi8(16));
}

static void tri_vec_dot_q5_0_avx512(int n, float * restrict s, const void * restrict vx, const void * restrict vy) {
    const tri_block_q5_0 * x = vx;
    const tri_block_q8_0 * y = vy;
    const __m256i c16 = _mm256_set1_epi8(16);
    __m256 acc = _mm256_setzero_ps();
    for (int b = 0; b < n / TRI_QK5_0; b++) {
        const __m256i q = _mm256_sub_epi8(_mm256_or_si256(tri_unpack_nibbles(x[b].qs), tri_qh_to_16(x[b].qh)), c16);
        const __m256i p = tri_dot_s8s8_vnni(q, _mm256_loadu_si256((const __m256i *)y[b].qs));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(tri_h2f(x[b].d) * tri_h2f(y[b].d)), _mm256_cvtepi32_ps(p), acc);
    }
    *s = tri_hsum_ps(acc);
}

static void tri_vec_dot_q5_1_avx512(int n, float * restrict s, const void * restrict vx, const void * restrict vy) {
    const tri_block_q5_1 * x = vx;
    const tri_block_q8_1 * y = vy;
    __m256 acc  = _mm256_setzero_ps();
    __m128 accm = _mm_setzero_ps();
    for (int b = 0; b < n / TRI_QK5_1; b++) {
        const __m128  dd = _mm_mul_ps(tri_load_2h(&x[b].d), tri_load_2h(&y[b].d));
        const __m256i q  = _mm256_or_si256(tri_unpack_nibbles(x[b].qs), tri_qh_to_16(x[b].qh));
        const __m256i p  = _mm256_dpbusd_epi32(_mm256_setzero_si256(), q, _mm256_loadu_si256((const __m256i *)y[b].qs));
        acc  = _mm256_fmadd_ps(_mm256_broadcastss_ps(dd), _mm256_cvtepi32_ps(p), acc);
        accm = _mm_add_ps(accm, dd);
    }
    *s = tri_hsum_ps(acc) + tri_lane1(accm);
}

/* ---- matrix kernels (x86_gemm.h): VNNI dot products ---- */

static inline __m256i tri_dp_us(__m256i acc, __m256i u, __m256i s) {
    return _mm256_dpbusd_epi32(acc, u, s);
}
static inline __m256i tri_dp_ss(__m256i acc, __m256i a, __m256i b) {
    return _mm256_dpbusd_epi32(acc, _mm256_abs_epi8(a), _mm256_sign_epi8(b, a));
}
static inline __m256i tri_dp_xw(__m256i acc, __m256i xu, __m256i w) {
    return _mm256_dpbusd_epi32(acc, xu, w);
}
static inline __m256i tri_dp_i16(__m256i acc, __m256i a, __m256i b) {
    return _mm256_dpwssd_epi32(acc, a, b);
}
/* Sub-block scales: one int32 multiply per sub-block and token, after plain byte dot products. */
static inline __m256i tri_kscale_prep(__m256i sc16) {
    return _mm256_srai_epi32(sc16, 16);
}
static inline void tri_kpart_acc(__m256i * part, __m256i * isum, __m256i xu, __m256i w, __m256i sc) {
    *part = _mm256_dpbusd_epi32(*part, xu, w);
}
static inline void tri_kpart_end(__m256i * isum, __m256i part, __m256i sc) {
    *isum = _mm256_add_epi32(*isum, _mm256_mullo_epi32(part, sc));
}
static inline __m256i tri_qh16(const uint8_t * qh) {
    return tri_qh_to_16(qh);
}
#define TRI_GEMM_T32  6
#define TRI_GEMM_NP32 2
#define TRI_GEMM_TK   4
#define TRI_GEMM_NPK  2
#define TRI_TILE_ZMM  1
#include "../x86_gemm.h"

/* ---- float types ---- */

static void tri_vec_dot_f32_avx512(int n, float * restrict s, const void * restrict vx, const void * restrict vy) {
    const float * x = vx;
    const float * y = vy;
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    int i = 0;
    for (; i + 32 <= n; i += 32) {
        a0 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i), a0);
        a1 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i + 16), _mm512_loadu_ps(y + i + 16), a1);
    }
    if (i < n) { /* masked tail */
        const int r = n - i;
        const __mmask16 k0 = (__mmask16)(r >= 16 ? 0xFFFF : (1u << r) - 1);
        const __mmask16 k1 = (__mmask16)(r > 16 ? (1u << (r - 16)) - 1 : 0);
        a0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(k0, x + i), _mm512_maskz_loadu_ps(k0, y + i), a0);
        a1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(k1, x + i + 16), _mm512_maskz_loadu_ps(k1, y + i + 16), a1);
    }
    *s = tri_hsum512(_mm512_add_ps(a0, a1));
}

static inline __m512 tri_load_16h(const tri_fp16 * p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
}

static void tri_vec_dot_f16_avx512(int n, float * restrict s, const void * restrict vx, const void * restrict vy) {
    const tri_fp16 * x = vx;
    const tri_fp16 * y = vy;
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    int i = 0;
    for (; i + 32 <= n; i += 32) {
        a0 = _mm512_fmadd_ps(tri_load_16h(x + i), tri_load_16h(y + i), a0);
        a1 = _mm512_fmadd_ps(tri_load_16h(x + i + 16), tri_load_16h(y + i + 16), a1);
    }
    for (; i + 16 <= n; i += 16) {
        a0 = _mm512_fmadd_ps(tri_load_16h(x + i), tri_load_16h(y + i), a0);
    }
    if (i < n) {
        const __mmask16 k = (__mmask16)((1u << (n - i)) - 1);
        const __m512 xv = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(k, x + i));
        const __m512 yv = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(k, y + i));
        a1 = _mm512_fmadd_ps(xv, yv, a1);
    }
    *s = tri_hsum512(_mm512_add_ps(a0, a1));
}

static void tri_vec_dot_bf16_avx512(int n, float * restrict s, const void * restrict vx, const void * restrict vy) {
    const tri_bf16 * x = vx;
    const float *    y = vy;
    __m512 a0 = _mm512_setzero_ps();
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(x + i)));
        a0 = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_slli_epi32(w, 16)), _mm512_loadu_ps(y + i), a0);
    }
    if (i < n) {
        const __mmask16 k = (__mmask16)((1u << (n - i)) - 1);
        const __m512i w = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(k, x + i));
        a0 = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_slli_epi32(w, 16)), _mm512_maskz_loadu_ps(k, y + i), a0);
    }
    *s = tri_hsum512(a0);
}

void tri_register_avx512(tri_isa_kernels * k) {
    k->vec_dot[TRI_TYPE_F32]  = tri_vec_dot_f32_avx512;
    k->vec_dot[TRI_TYPE_F16]  = tri_vec_dot_f16_avx512;
    k->vec_dot[TRI_TYPE_BF16] = tri_vec_dot_bf16_avx512;
    k->vec_dot[TRI_TYPE_Q4_0] = tri_vec_dot_q4_0_avx512;
    k->vec_dot[TRI_TYPE_Q4_1] = tri_vec_dot_q4_1_avx512;
    k->vec_dot[TRI_TYPE_Q5_0] = tri_vec_dot_q5_0_avx512;
    k->vec_dot[TRI_TYPE_Q5_1] = tri_vec_dot_q5_1_avx512;
    k->vec_dot[TRI_TYPE_Q8_0] = tri_vec_dot_q8_0_avx512;
    k->vec_dot[TRI_TYPE_Q2_K] = tri_vec_dot_q2_K_x86;
    k->vec_dot[TRI_TYPE_Q3_K] = tri_vec_dot_q3_K_x86;
    k->vec_dot[TRI_TYPE_Q4_K] = tri_vec_dot_q4_K_x86;
    k->vec_dot[TRI_TYPE_Q5_K] = tri_vec_dot_q5_K_x86;
    k->vec_dot[TRI_TYPE_Q6_K] = tri_vec_dot_q6_K_x86;
    tri_gemm_register(k);
}
