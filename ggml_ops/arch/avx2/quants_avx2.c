/* AVX2 + FMA + F16C kernels: vec_dot for every weight type, 1x4 micro-kernels for the hot types,
 * and fast activation quantizers (same rounding as the scalar references, so results are identical).
 * fp-contract off: the quantizers must round x*id before adding, as the references do. */
#pragma GCC optimize("fp-contract=off")

#include "../../quants.h"
#include "../kernels.h"
#include "simd_avx2.h"

static inline __m256i tri_kq_dot(__m256i acc, __m256i q, __m256i y, __m256i sc16) {
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(q, y), sc16));
}

/* Sum of u8 x s8 products in 8 int32 lanes (pairs of maddubs never saturate for our code ranges). */
static inline __m256i tri_dot_u8s8(__m256i u, __m256i s) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
}

/* Signed x signed via |x| and sign(y, x) (needs y != -128, which our quantizers guarantee; x = -128
 * works: |x| reads as 128 unsigned). */
static inline __m256i tri_dot_s8s8(__m256i x, __m256i y) {
    return tri_dot_u8s8(_mm256_abs_epi8(x), _mm256_sign_epi8(y, x));
}

/* Primitives of the matrix kernels (x86_gemm.h). maddubs saturates int16 pairs, so activation bytes
 * (up to 255) meet only weights up to 64 in size; Q8_0 weights go through the signed form. */
static inline __m256i tri_dp_us(__m256i acc, __m256i u, __m256i s) {
    return _mm256_add_epi32(acc, tri_dot_u8s8(u, s));
}
static inline __m256i tri_dp_ss(__m256i acc, __m256i a, __m256i b) {
    return _mm256_add_epi32(acc, tri_dot_s8s8(a, b));
}
static inline __m256i tri_dp_xw(__m256i acc, __m256i xu, __m256i w) {
    return tri_dp_ss(acc, w, _mm256_xor_si256(xu, _mm256_set1_epi8((char) 0x80)));
}
static inline __m256i tri_dp_i16(__m256i acc, __m256i a, __m256i b) {
    return _mm256_add_epi32(acc, _mm256_madd_epi16(a, b));
}
/* Sub-block scales: pairs of int16 products times the int16 scale in one madd. */
static inline __m256i tri_kscale_prep(__m256i sc16) {
    return sc16;
}
static inline void tri_kpart_acc(__m256i * part, __m256i * isum, __m256i xu, __m256i w, __m256i sc16) {
    *isum = _mm256_add_epi32(*isum, _mm256_madd_epi16(_mm256_maddubs_epi16(xu, w), sc16));
}
static inline void tri_kpart_end(__m256i * isum, __m256i part, __m256i sc) {
}
static inline __m256i tri_qh16(const uint8_t * qh) {
    return _mm256_and_si256(tri_bits_to_bytes(qh), _mm256_set1_epi8(16));
}
#define TRI_GEMM_T32  4
#define TRI_GEMM_NP32 1
#define TRI_GEMM_TK   4
#define TRI_GEMM_NPK  1
#include "../x86_gemm.h"

/* ---- 32-value blocks ---- */

static void tri_vec_dot_q4_0_avx2(int n, float * restrict s, const void * restrict vx, const void * restrict vy) {
    const tri_block_q4_0 * x = vx;
    const tri_block_q8_0 * y = vy;
    const __m256i c8 = _mm256_set1_epi8(8);
    __m256 acc = _mm256_setzero_ps();
    for (int b = 0; b < n / TRI_QK8_0; b++) {
        const __m256 d = _mm256_set1_ps(tri_h2f(x[b].d) * tri_h2f(y[b].d));
        const __m256i q = _mm256_sub_epi8(tri_unpack_nibbles(x[b].qs), c8);
        const __m256i p = tri_dot_s8s8(q, _mm256_loadu_si256((const __m256i *)y[b].qs));
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(p), acc);
    }
    *s = tri_hsum_ps(acc);
}

/* One Q4_1 block against one Q8_1 block: acc += dx*dy*sum(q*y); accm lane 1 += m*s. */
static inline void tri_q4_1_block(const tri_block_q4_1 * x, const tri_block_q8_1 * y, __m256i q,
                                  __m256 * acc, __m128 * accm) {
    const __m128 dd = _mm_mul_ps(tri_load_2h(&x->d), tri_load_2h(&y->d)); /* [dx*dy, m*s, 0, 0] */
    const __m256i p = tri_dot_u8s8(q, _mm256_loadu_si256((const __m256i *)y->qs));
    *acc  = _mm256_fmadd_ps(_mm256_broadcastss_ps(dd), _mm256_cvtepi32_ps(p), *acc);
    *accm = _mm_add_ps(*accm, dd);
}

static inline float tri_lane1(__m128 v) {
    return _mm_cvtss_f32(_mm_shuffle_ps(v, v, 1));
}

static void tri_vec_dot_q4_1_avx2(int n, float * restrict s, const void * restrict vx, const void * restrict vy) {
    const tri_block_q4_1 * x = vx;
    const tri_block_q8_1 * y = vy;
    const int nb = n / TRI_QK4_1;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    __m128 accm = _mm_setzero_ps();
    int b = 0;
    for (; b + 2 <= nb; b += 2) {
        tri_q4_1_block(&x[b], &y[b], tri_unpack_nibbles(x[b].qs), &acc0, &accm);
        tri_q4_1_block(&x[b + 1], &y[b + 1], tri_unpack_nibbles(x[b + 1].qs), &acc1, &accm);
    }
    for (; b < nb; b++) {
        tri_q4_1_block(&x[b], &y[b], tri_unpack_nibbles(x[b].qs), &acc0, &accm);
    }
    *s = tri_hsum_ps(_mm256_add_ps(acc0, acc1)) + tri_lane1(accm);
}

static void tri_vec_dot_q5_0_avx2(int n, float * restrict s, const void * restrict vx, const void * restrict vy) {
    const tri_block_q5_0 * x = vx;
    const tri_block_q8_0 * y = vy;
    const __m256i c16 = _mm256_set1_epi8(16);
    __m256 acc = _mm256_setzero_ps();
    for (int b = 0; b < n / TRI_QK5_0; b++) {
        const __m256 d = _mm256_set1_ps(tri_h2f(x[b].d) * tri_h2f(y[b].d));
        const __m256i hb = _mm256_and_si256(tri_bits_to_bytes(x[b].qh), c16);
        const __m256i q  = _mm256_sub_epi8(_mm256_or_si256(tri_unpack_nibbles(x[b].qs), hb), c16);
        const __m256i p  = tri_dot_s8s8(q, _mm256_loadu_si256((const __m256i *)y[b].qs));
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(p), acc);
    }
    *s = tri_hsum_ps(acc);
}

static void tri_vec_dot_q5_1_avx2(int n, float * restrict s, const void * restrict vx, const void * restrict vy) {
    const tri_block_q5_1 * x = vx;
    const tri_block_q8_1 * y = vy;
    const __m256i c16 = _mm256_set1_epi8(16);
    __m256 acc  = _mm256_setzero_ps();
    __m128 accm = _mm_setzero_ps();
    for (int b = 0; b < n / TRI_QK5_1; b++) {
        const __m128  dd = _mm_mul_ps(tri_load_2h(&x[b].d), tri_load_2h(&y[b].d));
        const __m256i hb = _mm256_and_si256(tri_bits_to_bytes(x[b].qh), c16);
        const __m256i q  = _mm256_or_si256(tri_unpack_nibbles(x[b].qs), hb);
        const __m256i p  = tri_dot_u8s8(q, _mm256_loadu_si256((const __m256i *)y[b].qs));
        acc  = _mm256_fmadd_ps(_mm256_broadcastss_ps(dd), _mm256_cvtepi32_ps(p), acc);
        accm = _mm_add_ps(accm, dd);
    }
    *s = tri_hsum_ps(acc) + tri_lane1(accm);
}

static inline void tri_q8_0_block(const tri_block_q8_0 * x, const tri_block_q8_0 * y, __m256 * acc) {
    const __m256 d = _mm256_set1_ps(tri_h2f(x->d) * tri_h2f(y->d));
    const __m256i p = tri_dot_s8s8(_mm256_loadu_si256((const __m256i *)x->qs),
                                   _mm256_loadu_si256((const __m256i *)y->qs));
    *acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(p), *acc);
}

static void tri_vec_dot_q8_0_avx2(int n, float * restrict s, const void * restrict vx, const void * restrict vy) {
    const tri_block_q8_0 * x = vx;
    const tri_block_q8_0 * y = vy;
    const int nb = n / TRI_QK8_0;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int b = 0;
    for (; b + 2 <= nb; b += 2) {
        tri_q8_0_block(&x[b], &y[b], &acc0);
        tri_q8_0_block(&x[b + 1], &y[b + 1], &acc1);
    }
    for (; b < nb; b++) {
        tri_q8_0_block(&x[b], &y[b], &acc0);
    }
    *s = tri_hsum_ps(_mm256_add_ps(acc0, acc1));
}

/* ---- float types (n need not be a multiple of the vector width) ---- */

static void tri_vec_dot_f32_avx2(int n, float * restrict s, const void * restrict vx, const void * restrict vy) {
    const float * x = vx;
    const float * y = vy;
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
    int i = 0;
    for (; i + 32 <= n; i += 32) {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 8), _mm256_loadu_ps(y + i + 8), a1);
        a2 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 16), _mm256_loadu_ps(y + i + 16), a2);
        a3 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 24), _mm256_loadu_ps(y + i + 24), a3);
    }
    for (; i + 8 <= n; i += 8) {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i), a0);
    }
    float r = tri_hsum_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    for (; i < n; i++) {
        r += x[i] * y[i];
    }
    *s = r;
}

static inline __m256 tri_load_8h(const tri_fp16 * p) {
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}

static void tri_vec_dot_f16_avx2(int n, float * restrict s, const void * restrict vx, const void * restrict vy) {
    const tri_fp16 * x = vx;
    const tri_fp16 * y = vy;
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
    int i = 0;
    for (; i + 32 <= n; i += 32) {
        a0 = _mm256_fmadd_ps(tri_load_8h(x + i), tri_load_8h(y + i), a0);
        a1 = _mm256_fmadd_ps(tri_load_8h(x + i + 8), tri_load_8h(y + i + 8), a1);
        a2 = _mm256_fmadd_ps(tri_load_8h(x + i + 16), tri_load_8h(y + i + 16), a2);
        a3 = _mm256_fmadd_ps(tri_load_8h(x + i + 24), tri_load_8h(y + i + 24), a3);
    }
    for (; i + 8 <= n; i += 8) {
        a0 = _mm256_fmadd_ps(tri_load_8h(x + i), tri_load_8h(y + i), a0);
    }
    float r = tri_hsum_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    for (; i < n; i++) {
        r += tri_h2f(x[i]) * tri_h2f(y[i]);
    }
    *s = r;
}

static inline __m256 tri_load_8bf(const tri_bf16 * p) {
    const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
}

static void tri_vec_dot_bf16_avx2(int n, float * restrict s, const void * restrict vx, const void * restrict vy) {
    const tri_bf16 * x = vx;
    const float *    y = vy;
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        a0 = _mm256_fmadd_ps(tri_load_8bf(x + i), _mm256_loadu_ps(y + i), a0);
        a1 = _mm256_fmadd_ps(tri_load_8bf(x + i + 8), _mm256_loadu_ps(y + i + 8), a1);
    }
    float r = tri_hsum_ps(_mm256_add_ps(a0, a1));
    for (; i < n; i++) {
        r += tri_bf16_to_fp32(x[i]) * y[i];
    }
    *s = r;
}

/* ---- activation quantizers (bit-identical to the _ref versions) ---- */

static void tri_quantize_q8_0_avx2(const float * restrict x, void * restrict vy, int64_t k) {
    tri_block_q8_0 * y = vy;
    for (int64_t b = 0; b < k / TRI_QK8_0; b++, x += TRI_QK8_0) {
        const float d  = tri_amax(x, TRI_QK8_0) / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        int lo, hi;
        _mm256_storeu_si256((__m256i *)y[b].qs, tri_quant32(x, _mm256_set1_ps(id), &lo, &hi));
        y[b].d = tri_fp32_to_fp16(d);
    }
}

static void tri_quantize_q8_1_avx2(const float * restrict x, void * restrict vy, int64_t k) {
    tri_block_q8_1 * y = vy;
    for (int64_t b = 0; b < k / TRI_QK8_1; b++, x += TRI_QK8_1) {
        const float d  = tri_amax(x, TRI_QK8_1) / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        int lo, hi;
        _mm256_storeu_si256((__m256i *)y[b].qs, tri_quant32(x, _mm256_set1_ps(id), &lo, &hi));
        y[b].d = tri_fp32_to_fp16(d);
        y[b].s = tri_fp32_to_fp16(d * (float)(lo + hi));
    }
}

static void tri_quantize_q8_K_avx2(const float * restrict x, void * restrict vy, int64_t k) {
    tri_block_q8_K * y = vy;
    for (int64_t b = 0; b < k / TRI_QK_K; b++, x += TRI_QK_K) {
        const float d  = tri_amax(x, TRI_QK_K) / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        const __m256 vid = _mm256_set1_ps(id);
        y[b].d = d;
        for (int c = 0; c < TRI_QK_K / 32; c++) {
            int lo, hi;
            _mm256_storeu_si256((__m256i *)(y[b].qs + 32 * c), tri_quant32(x + 32 * c, vid, &lo, &hi));
            y[b].bsums[2 * c]     = (int16_t)lo;
            y[b].bsums[2 * c + 1] = (int16_t)hi;
        }
    }
}

static void tri_quantize_f16_avx2(const float * restrict x, void * restrict vy, int64_t k) {
    tri_fp16 * y = vy;
    int64_t i = 0;
    for (; i + 8 <= k; i += 8) {
        _mm_storeu_si128((__m128i *)(y + i), _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
    }
    for (; i < k; i++) {
        y[i] = tri_fp32_to_fp16(x[i]);
    }
}

void tri_register_avx2(tri_isa_kernels * k) {
    k->vec_dot[TRI_TYPE_F32]  = tri_vec_dot_f32_avx2;
    k->vec_dot[TRI_TYPE_F16]  = tri_vec_dot_f16_avx2;
    k->vec_dot[TRI_TYPE_BF16] = tri_vec_dot_bf16_avx2;
    k->vec_dot[TRI_TYPE_Q4_0] = tri_vec_dot_q4_0_avx2;
    k->vec_dot[TRI_TYPE_Q4_1] = tri_vec_dot_q4_1_avx2;
    k->vec_dot[TRI_TYPE_Q5_0] = tri_vec_dot_q5_0_avx2;
    k->vec_dot[TRI_TYPE_Q5_1] = tri_vec_dot_q5_1_avx2;
    k->vec_dot[TRI_TYPE_Q8_0] = tri_vec_dot_q8_0_avx2;
    k->vec_dot[TRI_TYPE_Q2_K] = tri_vec_dot_q2_K_x86;
    k->vec_dot[TRI_TYPE_Q3_K] = tri_vec_dot_q3_K_x86;
    k->vec_dot[TRI_TYPE_Q4_K] = tri_vec_dot_q4_K_x86;
    k->vec_dot[TRI_TYPE_Q5_K] = tri_vec_dot_q5_K_x86;
    k->vec_dot[TRI_TYPE_Q6_K] = tri_vec_dot_q6_K_x86;

    tri_gemm_register(k);

    k->quantize[TRI_TYPE_Q8_0] = tri_quantize_q8_0_avx2;
    k->quantize[TRI_TYPE_Q8_1] = tri_quantize_q8_1_avx2;
    k->quantize[TRI_TYPE_Q8_K] = tri_quantize_q8_K_avx2;
    k->quantize[TRI_TYPE_F16]  = tri_quantize_f16_avx2;
}
