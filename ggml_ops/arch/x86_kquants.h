/* K-quant x Q8_K dot products over 256-bit vectors, shared by the AVX2 and AVX-512 kernel files.
 * The including file first defines
 *     static inline __m256i tri_kq_dot(__m256i acc, __m256i q, __m256i y, __m256i sc16);
 * returning acc + sum over pairs of (q * y) * sc16 (q: unsigned codes, y: int8, sc16: int16 scales
 * per 8-lane half), so each ISA uses its best multiply-accumulate.
 * All weight codes are kept unsigned; offsets (Q3_K's -4, Q6_K's -32) and mins go through Q8_K's bsums.
 * Per super-block, tri_<type>_unpack spreads the codes and scales into a tri_ksb once; tri_ksb_dot then
 * gives, per Q8_K block, the scaled dot of the codes and, in *msum, the sum of mins (Q2_K, Q4_K, Q5_K) or
 * of scales (Q3_K, Q6_K) times the bsums, both as 8 int32 partial sums. The vec_dots (tri_<type>_sb: one
 * unpack, one dot) and the decode matrix kernels (x86_gemm.h: one unpack, a dot per token) use them. */
#ifndef TRI_X86_KQUANTS_H
#define TRI_X86_KQUANTS_H

#include "../quants.h"
#include "avx2/simd_avx2.h"

/* int16 scale a for the first 16 values of a 32-value chunk, b for the second 16. */
static inline __m256i tri_sc2(int a, int b) {
    return _mm256_set_m128i(_mm_set1_epi16((short)b), _mm_set1_epi16((short)a));
}

/* 16 int16 bsums of a Q8_K block times 16 int16 factors, as 8 partial sums. */
static inline __m256i tri_bsums_dot(const tri_block_q8_K * y, __m256i f16) {
    return _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)y->bsums), f16);
}

/* Each type's tri_<type>_chunks(block, &mf, emit, ctx) decodes one super-block and calls emit(ctx, c, q, sc)
 * for its 8 chunks in order: chunk c holds the unsigned codes of values 32c .. 32c + 31 (met by Q8_K codes
 * 32c .. 32c + 31) and sc their int16 scales; mf gets the 16 int16 factors of the Q8_K bsums (mins, or
 * scales for the offset types). Inlined with a constant emit, each chunk is consumed where it is made. */
typedef void (*tri_kemit_fn)(void * ctx, int c, __m256i q, __m256i sc);

/* One token: the scaled code dot, accumulated chunk by chunk. */
typedef struct {
    const tri_block_q8_K * y;
    __m256i                sumi;
} tri_kdot_ctx;

static inline void tri_kemit_dot(void * ctx, int c, __m256i q, __m256i sc) {
    tri_kdot_ctx * k = ctx;
    k->sumi = tri_kq_dot(k->sumi, q, _mm256_loadu_si256((const __m256i *)(k->y->qs + 32 * c)), sc);
}

/* Several tokens: the chunks kept, then met by each token with tri_ksb_dot. */
typedef struct {
    __m256i q[8];
    __m256i sc[8];
    __m256i mf;
} tri_ksb;

static inline void tri_kemit_keep(void * ctx, int c, __m256i q, __m256i sc) {
    tri_ksb * u = ctx;
    u->q[c]  = q;
    u->sc[c] = sc;
}

static inline __m256i tri_ksb_dot(const tri_ksb * u, const tri_block_q8_K * y, __m256i * msum) {
    *msum = tri_bsums_dot(y, u->mf);
    __m256i sumi = _mm256_setzero_si256();
    for (int c = 0; c < 8; c++) {
        sumi = tri_kq_dot(sumi, u->q[c], _mm256_loadu_si256((const __m256i *)(y->qs + 32 * c)), u->sc[c]);
    }
    return sumi;
}

static inline void tri_q2_K_chunks(const uint8_t * xb, __m256i * mf, tri_kemit_fn emit, void * ctx) {
    const tri_block_q2_K * x = (const tri_block_q2_K *)xb;
    const __m256i m3 = _mm256_set1_epi8(3);
    const uint8_t * sc = x->scales;
    const __m128i mins = _mm_and_si128(_mm_srli_epi16(_mm_loadu_si128((const __m128i *)sc), 4), _mm_set1_epi8(15));
    *mf = _mm256_cvtepu8_epi16(mins);
    for (int h = 0; h < 2; h++) {
        const __m256i qq = _mm256_loadu_si256((const __m256i *)(x->qs + 32 * h));
        for (int k = 0; k < 4; k++) {
            const int g = 8 * h + 2 * k;
            emit(ctx, 4 * h + k, _mm256_and_si256(_mm256_srli_epi16(qq, 2 * k), m3), tri_sc2(sc[g] & 15, sc[g + 1] & 15));
        }
    }
}

/* The 16 signed 6-bit scales of a Q3_K block (tri_q3_K_scales) with word operations: scale j has low 4
 * bits from nibble j / 8 of byte j % 8 and high 2 bits from crumb j / 4 of byte 8 + j % 4. */
static inline __m128i tri_q3_K_scales_v(const uint8_t * s) {
    uint64_t a;
    uint32_t h;
    memcpy(&a, s, 8);
    memcpy(&h, s + 8, 4);
    const uint64_t n4 = 0x0f0f0f0f0f0f0f0fULL;
    const uint32_t c2 = 0x03030303u;
    const uint64_t hi0 = (uint64_t)(h & c2) | ((uint64_t)((h >> 2) & c2) << 32);
    const uint64_t hi1 = (uint64_t)((h >> 4) & c2) | ((uint64_t)((h >> 6) & c2) << 32);
    const __m128i v = _mm_set_epi64x((long long)(((a >> 4) & n4) | (hi1 << 4)), (long long)((a & n4) | (hi0 << 4)));
    return _mm_sub_epi8(v, _mm_set1_epi8(32));
}

/* Codes are q + 4: the true dot is sum - 4 * msum. */
static inline void tri_q3_K_chunks(const uint8_t * xb, __m256i * mf, tri_kemit_fn emit, void * ctx) {
    const tri_block_q3_K * x = (const tri_block_q3_K *)xb;
    const __m256i m3 = _mm256_set1_epi8(3);
    const __m256i c4 = _mm256_set1_epi8(4);
    const __m128i scv = tri_q3_K_scales_v(x->scales);
    int8_t sc[16];
    _mm_storeu_si128((__m128i *)sc, scv);
    *mf = _mm256_cvtepi8_epi16(scv);
    const __m256i hm = _mm256_loadu_si256((const __m256i *)x->hmask);
    for (int h = 0; h < 2; h++) {
        const __m256i qq = _mm256_loadu_si256((const __m256i *)(x->qs + 32 * h));
        for (int k = 0; k < 4; k++) {
            const __m256i bm = _mm256_set1_epi8((char)(1 << (4 * h + k)));
            const __m256i hb = _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(hm, bm), bm), c4);
            const __m256i q  = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(qq, 2 * k), m3), hb);
            const int     g  = 8 * h + 2 * k;
            emit(ctx, 4 * h + k, q, tri_sc2(sc[g], sc[g + 1]));
        }
    }
}

/* The 8 6-bit scales (bytes 0..7) and mins (bytes 8..15) of a Q4_K/Q5_K scales[12] array, as
 * tri_get_scale_min_k4 reads them, with word operations: 32-bit word w of scales holds bytes 4w..4w+3. */
static inline __m128i tri_k4_scales(const uint8_t * scales) {
    uint32_t w[3], o[4];
    memcpy(w, scales, 12);
    const uint32_t lo6 = 0x3f3f3f3fu, lo4 = 0x0f0f0f0fu, lo2 = 0x03030303u;
    o[0] = w[0] & lo6;                                          /* scales 0..3: bytes 0..3, low 6 bits */
    o[1] = (w[2] & lo4) | (((w[0] >> 6) & lo2) << 4);           /* scales 4..7 */
    o[2] = w[1] & lo6;                                          /* mins 0..3: bytes 4..7 */
    o[3] = ((w[2] >> 4) & lo4) | (((w[1] >> 6) & lo2) << 4);    /* mins 4..7 */
    return _mm_loadu_si128((const __m128i *)o);
}

/* Q4_K and Q5_K share the scale layout; qh (Q5_K) adds a fifth bit, NULL for Q4_K. */
static inline void tri_k4_chunks(const uint8_t * scales, const uint8_t * qs, const uint8_t * qhp, __m256i * mf,
                                 tri_kemit_fn emit, void * ctx) {
    const __m256i m4  = _mm256_set1_epi8(0x0F);
    const __m256i c16 = _mm256_set1_epi8(16);
    const __m128i sm  = tri_k4_scales(scales);
    uint8_t sc[16];
    _mm_storeu_si128((__m128i *)sc, sm);
    *mf = _mm256_cvtepu8_epi16(_mm_unpackhi_epi8(sm, sm)); /* min j twice, matching bsums 2j and 2j + 1 */
    const __m256i qh = qhp ? _mm256_loadu_si256((const __m256i *)qhp) : _mm256_setzero_si256();
    for (int c = 0; c < 4; c++) {
        const __m256i qq = _mm256_loadu_si256((const __m256i *)(qs + 32 * c));
        __m256i lo = _mm256_and_si256(qq, m4);
        __m256i hi = _mm256_and_si256(_mm256_srli_epi16(qq, 4), m4);
        if (qhp) {
            const __m256i bm0 = _mm256_set1_epi8((char)(1 << (2 * c)));
            const __m256i bm1 = _mm256_set1_epi8((char)(1 << (2 * c + 1)));
            lo = _mm256_or_si256(lo, _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(qh, bm0), bm0), c16));
            hi = _mm256_or_si256(hi, _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(qh, bm1), bm1), c16));
        }
        emit(ctx, 2 * c, lo, _mm256_set1_epi16(sc[2 * c]));
        emit(ctx, 2 * c + 1, hi, _mm256_set1_epi16(sc[2 * c + 1]));
    }
}

static inline void tri_q4_K_chunks(const uint8_t * xb, __m256i * mf, tri_kemit_fn emit, void * ctx) {
    const tri_block_q4_K * x = (const tri_block_q4_K *)xb;
    tri_k4_chunks(x->scales, x->qs, NULL, mf, emit, ctx);
}

static inline void tri_q5_K_chunks(const uint8_t * xb, __m256i * mf, tri_kemit_fn emit, void * ctx) {
    const tri_block_q5_K * x = (const tri_block_q5_K *)xb;
    tri_k4_chunks(x->scales, x->qs, x->qh, mf, emit, ctx);
}

/* Codes are q + 32: the true dot is sum - 32 * msum. */
static inline void tri_q6_K_chunks(const uint8_t * xb, __m256i * mf, tri_kemit_fn emit, void * ctx) {
    const tri_block_q6_K * x = (const tri_block_q6_K *)xb;
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    const __m256i m3 = _mm256_set1_epi8(3);
    const int8_t * sc = x->scales;
    *mf = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)sc));
    for (int h = 0; h < 2; h++) {
        const __m256i l0 = _mm256_loadu_si256((const __m256i *)(x->ql + 64 * h));
        const __m256i l1 = _mm256_loadu_si256((const __m256i *)(x->ql + 64 * h + 32));
        const __m256i hh = _mm256_loadu_si256((const __m256i *)(x->qh + 32 * h));
        const int8_t * s8 = sc + 8 * h;
        const __m256i q0 = _mm256_or_si256(_mm256_and_si256(l0, m4),
                                           _mm256_slli_epi16(_mm256_and_si256(hh, m3), 4));
        const __m256i q1 = _mm256_or_si256(_mm256_and_si256(l1, m4),
                                           _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hh, 2), m3), 4));
        const __m256i q2 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
                                           _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hh, 4), m3), 4));
        const __m256i q3 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                                           _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hh, 6), m3), 4));
        emit(ctx, 4 * h + 0, q0, tri_sc2(s8[0], s8[1]));
        emit(ctx, 4 * h + 1, q1, tri_sc2(s8[2], s8[3]));
        emit(ctx, 4 * h + 2, q2, tri_sc2(s8[4], s8[5]));
        emit(ctx, 4 * h + 3, q3, tri_sc2(s8[6], s8[7]));
    }
}

/* Per type: tri_<type>_sb (one token: the scaled code dot and *msum, each chunk consumed as it is made) and
 * tri_<type>_unpack (the chunks kept in a tri_ksb for several tokens). */
#define TRI_KSB(t)                                                                                              \
    static inline __m256i tri_##t##_sb(const uint8_t * xb, const tri_block_q8_K * y, __m256i * msum) {         \
        tri_kdot_ctx k = { y, _mm256_setzero_si256() };                                                         \
        __m256i      mf;                                                                                        \
        tri_##t##_chunks(xb, &mf, tri_kemit_dot, &k);                                                           \
        *msum = tri_bsums_dot(y, mf);                                                                           \
        return k.sumi;                                                                                          \
    }                                                                                                           \
    static inline void tri_##t##_unpack(const uint8_t * xb, tri_ksb * u) {                                      \
        tri_##t##_chunks(xb, &u->mf, tri_kemit_keep, u);                                                        \
    }
TRI_KSB(q2_K)
TRI_KSB(q3_K)
TRI_KSB(q4_K)
TRI_KSB(q5_K)
TRI_KSB(q6_K)

/* One vec_dot per type from its super-block helper: moff is the code offset (offset types subtract
 * d * moff * msum), has_min says msum holds mins (subtract dmin * msum). */
static inline float tri_kq_vec_dot(int n, const void * vx, const tri_block_q8_K * y, size_t bsz,
                                   __m256i (*sbdot)(const uint8_t *, const tri_block_q8_K *, __m256i *),
                                   int moff, size_t off_d, int off_dmin) {
    const uint8_t * x = vx;
    __m256 acc  = _mm256_setzero_ps();
    float  accm = 0.0f;
    for (int b = 0; b < n / TRI_QK_K; b++) {
        const uint8_t * xb = x + (size_t)b * bsz;
        tri_fp16 hd;
        memcpy(&hd, xb + off_d, 2);
        const float d = y[b].d * tri_h2f(hd);
        __m256i mv;
        const __m256i sumi = sbdot(xb, &y[b], &mv);
        const int msum = tri_hsum_epi32(mv);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
        if (off_dmin >= 0) {
            memcpy(&hd, xb + off_dmin, 2);
            accm += y[b].d * tri_h2f(hd) * (float)msum;
        } else {
            accm += d * (float)(moff * msum);
        }
    }
    return tri_hsum_ps(acc) - accm;
}

static void tri_vec_dot_q2_K_x86(int n, float * restrict s, const void * restrict vx, const void * restrict vy) {
    *s = tri_kq_vec_dot(n, vx, vy, sizeof(tri_block_q2_K), tri_q2_K_sb, 0, offsetof(tri_block_q2_K, d),
                        offsetof(tri_block_q2_K, dmin));
}
static void tri_vec_dot_q3_K_x86(int n, float * restrict s, const void * restrict vx, const void * restrict vy) {
    *s = tri_kq_vec_dot(n, vx, vy, sizeof(tri_block_q3_K), tri_q3_K_sb, 4, offsetof(tri_block_q3_K, d), -1);
}
static void tri_vec_dot_q4_K_x86(int n, float * restrict s, const void * restrict vx, const void * restrict vy) {
    *s = tri_kq_vec_dot(n, vx, vy, sizeof(tri_block_q4_K), tri_q4_K_sb, 0, offsetof(tri_block_q4_K, d),
                        offsetof(tri_block_q4_K, dmin));
}
static void tri_vec_dot_q5_K_x86(int n, float * restrict s, const void * restrict vx, const void * restrict vy) {
    *s = tri_kq_vec_dot(n, vx, vy, sizeof(tri_block_q5_K), tri_q5_K_sb, 0, offsetof(tri_block_q5_K, d),
                        offsetof(tri_block_q5_K, dmin));
}
static void tri_vec_dot_q6_K_x86(int n, float * restrict s, const void * restrict vx, const void * restrict vy) {
    *s = tri_kq_vec_dot(n, vx, vy, sizeof(tri_block_q6_K), tri_q6_K_sb, 32, offsetof(tri_block_q6_K, d), -1);
}

#endif
