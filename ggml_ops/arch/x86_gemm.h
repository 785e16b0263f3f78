/* Integer matrix kernels over 256-bit vectors, shared by the AVX2 and AVX-512 files (each compiles them
 * for its own ISA). Two shapes, one arithmetic:
 *
 * - gemv (decode): 8 weight rows against one activation row, straight from the GGUF blocks;
 * - gemm (prefill): 8 or 16 rows repacked once into panels, then met by every token, T at a time.
 *
 * Both compute, for every (row, token) and every block (32 values) or super-block (256 values), the
 * exact integer dot product of the codes, then the same float operations in the same order:
 *     32-value types: s[b % 8] = fma(float(isum_b), d_w * d_x, s[b % 8]) over blocks b in order, and
 *       for Q4_1, Q5_1 t[b % 8] = fma(m_w, s_x, t[b % 8]) (s_x: the Q8_1 block's s); the result is
 *       tree(s) + tree(t), tree(v) = ((v0 + v4) + (v2 + v6)) + ((v1 + v5) + (v3 + v7))
 *     K types: per super-block b, s[b % 8] = fma(float(isum_b), d_w * d_x, s[b % 8]), then for Q2_K,
 *       Q4_K, Q5_K s[b % 8] = s[b % 8] - float(msum_b) * (dmin_w * d_x) (msum: mins x sums of codes);
 *       the result is tree(s)
 * So a token's result does not depend on how tokens were batched, which rows a thread got, or which shape
 * ran. Decode streams one row at a time and reduces eight blocks at once (lanes = blocks) into s; the
 * prefill tiles (lanes = rows) walk the blocks of one residue class mod 8 after the other.
 *
 * The including file defines, for its ISA (all exact integer arithmetic):
 *     tri_dp_us(acc, u, s)   acc + sums of 4 products u8 x s8 per 32-bit lane (callers keep each product
 *                            pair below 2^15: u <= 255 with |s| <= 64, or u <= 128)
 *     tri_dp_ss(acc, a, b)   acc + sums of 4 products s8 x s8 (a, b != -128)
 *     tri_dp_xw(acc, xu, w)  acc + sums of 4 products of bytes xu and int8 weights w of any size, either
 *                            reading xu as unsigned or as xu - 128: a panel's correction is computed with
 *                            the same function, so both give the true dot product
 *     tri_dp_i16(acc, a, b)  acc + sums of 2 products s16 x s16 per lane
 *     tri_kscale_prep(v), tri_kpart_acc(&part, &isum, xu, w, sc), tri_kpart_end(&isum, part, sc):
 *                            isum += scale x (dot of a sub-block), with v the panel's int16 scale pairs
 *     tri_qh16(qh)           32 bits -> 32 bytes, 16 where the bit is set
 *     TRI_GEMM_T32, TRI_GEMM_NP32, TRI_GEMM_TK, TRI_GEMM_NPK: tokens x panels of the prefill tiles. */
#ifndef TRI_X86_GEMM_H
#define TRI_X86_GEMM_H

#include "../quants.h"
#include "avx2/simd_avx2.h"
#include "kernels.h"
#include "../repack.h"
#include "x86_kquants.h"

#include <math.h>
#include <stddef.h>

#define TRI_INLINE static inline __attribute__((always_inline))

/* tree(v) of eight partial sums v(0) .. v(7) with the vector add ADD: the summation order every kernel keeps, so
 * results do not depend on the register width. */
#define TRI_TREE8(ADD, v) ADD(ADD(ADD(v(0), v(4)), ADD(v(2), v(6))), ADD(ADD(v(1), v(5)), ADD(v(3), v(7))))

/* ---- panels ----
 * A panel holds 8 weight rows as int8 values, four consecutive values of one row per 32-bit lane:
 * vector g of a 32-value chunk holds values 4g..4g+3 of rows 0..7. Per block (32-value types):
 *     [0, 256)     8 vectors of values
 *     [256, 288)   int32 x 8: minus each row's dot with activation bytes all 0x80 (see tri_dp_xw)
 *     [288, 320)   float x 8: d          [320, 352) float x 8: m (Q4_1, Q5_1)
 * Per super-block (K types; S = 8 or 16 sub-blocks of 256 / S values):
 *     [0, 2048)    64 vectors of values (chunk c of 32 values at 256 c)
 *     [2048, 2560) per sub-block j: each row's int16 scale, twice per lane
 *     [2560, 2592) int32 x 8: the negated correction, as above, scales applied
 *     [2592, 2624) float x 8: d          [2624, 2656) float x 8: dmin
 *     [2656, 2912) per pair of sub-blocks k: int16 (min 2k, min 2k+1) of each row */
#define TRI_PAN32_BLOCK 352
#define TRI_PANK_BLOCK  2912
#define TRI_PANK_SC     2048
#define TRI_PANK_CORR   2560
#define TRI_PANK_D      2592
#define TRI_PANK_DMIN   2624
#define TRI_PANK_MINS   2656

/* 8 x 8 int32 transpose: lane g of v[r] -> lane r of v[g]. */
TRI_INLINE void tri_transpose8(__m256i v[8]) {
    __m256i a[8], b[8];
    for (int i = 0; i < 8; i += 2) {
        a[i]     = _mm256_unpacklo_epi32(v[i], v[i + 1]);
        a[i + 1] = _mm256_unpackhi_epi32(v[i], v[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) {
        b[i]     = _mm256_unpacklo_epi64(a[i], a[i + 2]);
        b[i + 1] = _mm256_unpackhi_epi64(a[i], a[i + 2]);
        b[i + 2] = _mm256_unpacklo_epi64(a[i + 1], a[i + 3]);
        b[i + 3] = _mm256_unpackhi_epi64(a[i + 1], a[i + 3]);
    }
    for (int i = 0; i < 4; i++) {
        v[i]     = _mm256_permute2x128_si256(b[i], b[i + 4], 0x20);
        v[i + 4] = _mm256_permute2x128_si256(b[i], b[i + 4], 0x31);
    }
}

/* Lane r = sum of the 8 lanes of p[r]. */
TRI_INLINE __m256i tri_reduce8(const __m256i p[8]) {
    const __m256i h01 = _mm256_hadd_epi32(p[0], p[1]), h23 = _mm256_hadd_epi32(p[2], p[3]);
    const __m256i h45 = _mm256_hadd_epi32(p[4], p[5]), h67 = _mm256_hadd_epi32(p[6], p[7]);
    const __m256i a = _mm256_hadd_epi32(h01, h23), b = _mm256_hadd_epi32(h45, h67);
    return _mm256_add_epi32(_mm256_permute2x128_si256(a, b, 0x20), _mm256_permute2x128_si256(a, b, 0x31));
}

/* Stores lanes [0, n) of v at y (n <= 8). */
TRI_INLINE void tri_store_rows(float * y, __m256 v, int n) {
    if (n >= 8) {
        _mm256_storeu_ps(y, v);
        return;
    }
    float t[8];
    _mm256_storeu_ps(t, v);
    for (int i = 0; i < n; i++) {
        y[i] = t[i];
    }
}

TRI_INLINE __m256i tri_bcast32(const uint8_t * p) {
    int32_t v;
    memcpy(&v, p, 4);
    return _mm256_set1_epi32(v);
}

/* ---- weight codes per type ----
 * tri_codes_*: the unsigned codes of a 32-value block (decode); tri_vals_*: int8 values of chunk c
 * (32 values) of a block, before any sub-block scale (prefill panels). */

TRI_INLINE __m256i tri_codes_q4(const uint8_t * b, size_t qs) {
    return tri_unpack_nibbles(b + qs);
}
TRI_INLINE __m256i tri_codes_q5(const uint8_t * b, size_t qs, size_t qh) {
    return _mm256_or_si256(tri_unpack_nibbles(b + qs), tri_qh16(b + qh));
}
TRI_INLINE __m256i tri_vals_q4_0(const uint8_t * b, int c) {
    return _mm256_sub_epi8(tri_codes_q4(b, offsetof(tri_block_q4_0, qs)), _mm256_set1_epi8(8));
}
TRI_INLINE __m256i tri_vals_q4_1(const uint8_t * b, int c) {
    return tri_codes_q4(b, offsetof(tri_block_q4_1, qs));
}
TRI_INLINE __m256i tri_vals_q5_0(const uint8_t * b, int c) {
    return _mm256_sub_epi8(tri_codes_q5(b, offsetof(tri_block_q5_0, qs), offsetof(tri_block_q5_0, qh)),
                           _mm256_set1_epi8(16));
}
TRI_INLINE __m256i tri_vals_q5_1(const uint8_t * b, int c) {
    return tri_codes_q5(b, offsetof(tri_block_q5_1, qs), offsetof(tri_block_q5_1, qh));
}
TRI_INLINE __m256i tri_vals_q8_0(const uint8_t * b, int c) {
    return _mm256_loadu_si256((const __m256i *) (b + offsetof(tri_block_q8_0, qs)));
}

/* Bytes whose bit `bit` is set -> v, others 0. */
TRI_INLINE __m256i tri_bit_bytes(const uint8_t * p, int bit, int v) {
    const __m256i m = _mm256_set1_epi8((char) (1 << bit));
    const __m256i x = _mm256_loadu_si256((const __m256i *) p);
    return _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(x, m), m), _mm256_set1_epi8((char) v));
}
TRI_INLINE __m256i tri_crumbs(const uint8_t * p, int k) { /* (p[l] >> 2k) & 3 */
    return _mm256_and_si256(_mm256_srli_epi16(_mm256_loadu_si256((const __m256i *) p), 2 * k), _mm256_set1_epi8(3));
}
TRI_INLINE __m256i tri_nibbles(const uint8_t * p, int hi) { /* (p[l] >> 4 hi) & 15 */
    return _mm256_and_si256(_mm256_srli_epi16(_mm256_loadu_si256((const __m256i *) p), 4 * hi), _mm256_set1_epi8(15));
}
TRI_INLINE __m256i tri_vals_q2_K(const uint8_t * b, int c) {
    return tri_crumbs(((const tri_block_q2_K *) b)->qs + 32 * (c / 4), c % 4);
}
TRI_INLINE __m256i tri_vals_q3_K(const uint8_t * b, int c) {
    const tri_block_q3_K * x = (const tri_block_q3_K *) b;
    const __m256i q = _mm256_or_si256(tri_crumbs(x->qs + 32 * (c / 4), c % 4), tri_bit_bytes(x->hmask, c, 4));
    return _mm256_sub_epi8(q, _mm256_set1_epi8(4));
}
TRI_INLINE __m256i tri_vals_q4_K(const uint8_t * b, int c) {
    return tri_nibbles(((const tri_block_q4_K *) b)->qs + 32 * (c / 2), c % 2);
}
TRI_INLINE __m256i tri_vals_q5_K(const uint8_t * b, int c) {
    const tri_block_q5_K * x = (const tri_block_q5_K *) b;
    return _mm256_or_si256(tri_nibbles(x->qs + 32 * (c / 2), c % 2), tri_bit_bytes(x->qh, c, 16));
}
TRI_INLINE __m256i tri_vals_q6_K(const uint8_t * b, int c) {
    const tri_block_q6_K * x = (const tri_block_q6_K *) b;
    const int h = c / 4, k = c % 4;
    const __m256i lo = tri_nibbles(x->ql + 64 * h + 32 * (k % 2), k / 2);
    const __m256i hi = _mm256_slli_epi16(tri_crumbs(x->qh + 32 * h, k), 4);
    return _mm256_sub_epi8(_mm256_or_si256(lo, hi), _mm256_set1_epi8(32));
}

/* Sub-block scales and mins of one K block. */
TRI_INLINE void tri_kscales_q2_K(const uint8_t * b, int sc[16], int mn[16]) {
    const tri_block_q2_K * x = (const tri_block_q2_K *) b;
    for (int j = 0; j < 16; j++) {
        sc[j] = x->scales[j] & 15;
        mn[j] = x->scales[j] >> 4;
    }
}
TRI_INLINE void tri_kscales_q3_K(const uint8_t * b, int sc[16], int mn[16]) {
    int8_t s[16];
    tri_q3_K_scales(((const tri_block_q3_K *) b)->scales, s);
    for (int j = 0; j < 16; j++) {
        sc[j] = s[j];
        mn[j] = 0;
    }
}
TRI_INLINE void tri_kscales_k4(const uint8_t * scales, int sc[16], int mn[16]) {
    for (int j = 0; j < 8; j++) {
        uint8_t s, m;
        tri_get_scale_min_k4(j, scales, &s, &m);
        sc[j] = s;
        mn[j] = m;
    }
}
TRI_INLINE void tri_kscales_q4_K(const uint8_t * b, int sc[16], int mn[16]) {
    tri_kscales_k4(((const tri_block_q4_K *) b)->scales, sc, mn);
}
TRI_INLINE void tri_kscales_q5_K(const uint8_t * b, int sc[16], int mn[16]) {
    tri_kscales_k4(((const tri_block_q5_K *) b)->scales, sc, mn);
}
TRI_INLINE void tri_kscales_q6_K(const uint8_t * b, int sc[16], int mn[16]) {
    for (int j = 0; j < 16; j++) {
        sc[j] = ((const tri_block_q6_K *) b)->scales[j];
        mn[j] = 0;
    }
}

typedef __m256i (*tri_vals_fn)(const uint8_t * block, int chunk);
typedef void (*tri_kscales_fn)(const uint8_t * block, int sc[16], int mn[16]);

/* ---- panels: repacking ---- */

/* Values of chunk c of 8 rows (rows >= nrows read as 0), transposed and stored at dst. */
TRI_INLINE void tri_pack_chunk(const uint8_t * const rp[8], int nrows, tri_vals_fn vals, int c, uint8_t * dst) {
    __m256i v[8];
    for (int r = 0; r < 8; r++) {
        v[r] = r < nrows ? vals(rp[r], c) : _mm256_setzero_si256();
    }
    tri_transpose8(v);
    for (int g = 0; g < 8; g++) {
        _mm256_storeu_si256((__m256i *) (dst + 32 * g), v[g]);
    }
}

/* The negated correction of a 32-value panel block whose values are in place. */
TRI_INLINE void tri_pack32_corr(uint8_t * pb, bool wide) {
    const __m256i x80 = _mm256_set1_epi8((char) 0x80);
    __m256i corr = _mm256_setzero_si256();
    for (int g = 0; g < 8; g++) {
        const __m256i w = _mm256_loadu_si256((const __m256i *) (pb + 32 * g));
        corr = wide ? tri_dp_xw(corr, x80, w) : tri_dp_us(corr, x80, w);
    }
    _mm256_storeu_si256((__m256i *) (pb + 256), _mm256_sub_epi32(_mm256_setzero_si256(), corr));
}

/* Panel of rows [0, nrows) (nrows <= 8, stride rs) of a 32-value type with block size bsz. */
TRI_INLINE void tri_pack32(const uint8_t * W, size_t rs, int nrows, int nb, size_t bsz, tri_vals_fn vals,
                           bool wide, int off_m, uint8_t * pan) {
    for (int b = 0; b < nb; b++) {
        uint8_t * pb = pan + (size_t) b * TRI_PAN32_BLOCK;
        const uint8_t * rp[8];
        for (int r = 0; r < 8; r++) {
            rp[r] = W + (size_t) (r < nrows ? r : 0) * rs + (size_t) b * bsz;
        }
        tri_pack_chunk(rp, nrows, vals, 0, pb);
        tri_pack32_corr(pb, wide);
        float d[8], m[8];
        for (int r = 0; r < 8; r++) {
            tri_fp16 h;
            memcpy(&h, rp[r], 2);
            d[r] = r < nrows ? tri_h2f(h) : 0.0f;
            if (off_m >= 0) {
                memcpy(&h, rp[r] + off_m, 2);
                m[r] = r < nrows ? tri_h2f(h) : 0.0f;
            }
        }
        _mm256_storeu_ps((float *) (pb + 288), _mm256_loadu_ps(d));
        if (off_m >= 0) {
            _mm256_storeu_ps((float *) (pb + 320), _mm256_loadu_ps(m));
        }
    }
}

/* Panel of a K type: S sub-blocks, d at byte off_d of a block, dmin at off_dmin (< 0: none). */
/* The negated correction of a K panel block whose values and scales are in place. */
TRI_INLINE void tri_packK_corr(uint8_t * pb, int S) {
    const int G = 64 / S;
    const __m256i x80 = _mm256_set1_epi8((char) 0x80);
    __m256i isum = _mm256_setzero_si256();
    for (int j = 0; j < S; j++) {
        const __m256i sc = tri_kscale_prep(_mm256_loadu_si256((const __m256i *) (pb + TRI_PANK_SC + 32 * j)));
        __m256i part = _mm256_setzero_si256();
        for (int g = 0; g < G; g++) {
            tri_kpart_acc(&part, &isum, x80, _mm256_loadu_si256((const __m256i *) (pb + 32 * (j * G + g))), sc);
        }
        tri_kpart_end(&isum, part, sc);
    }
    _mm256_storeu_si256((__m256i *) (pb + TRI_PANK_CORR), _mm256_sub_epi32(_mm256_setzero_si256(), isum));
}

TRI_INLINE void tri_packK(const uint8_t * W, size_t rs, int nrows, int nsb, size_t bsz, tri_vals_fn vals,
                          tri_kscales_fn kscales, int S, size_t off_d, int off_dmin, uint8_t * pan) {
    for (int sb = 0; sb < nsb; sb++) {
        uint8_t * pb = pan + (size_t) sb * TRI_PANK_BLOCK;
        const uint8_t * rp[8];
        for (int r = 0; r < 8; r++) {
            rp[r] = W + (size_t) (r < nrows ? r : 0) * rs + (size_t) sb * bsz;
        }
        for (int c = 0; c < 8; c++) {
            tri_pack_chunk(rp, nrows, vals, c, pb + 256 * c);
        }
        uint32_t sc16[16][8], mn16[8][8];
        float d[8], dmin[8];
        for (int r = 0; r < 8; r++) {
            int sc[16] = { 0 }, mn[16] = { 0 };
            tri_fp16 h = 0, hm = 0;
            if (r < nrows) {
                kscales(rp[r], sc, mn);
                memcpy(&h, rp[r] + off_d, 2);
                if (off_dmin >= 0) {
                    memcpy(&hm, rp[r] + off_dmin, 2);
                }
            }
            for (int j = 0; j < S; j++) {
                sc16[j][r] = ((uint32_t) sc[j] & 0xFFFF) | ((uint32_t) sc[j] << 16);
            }
            for (int k = 0; k < S / 2; k++) {
                mn16[k][r] = ((uint32_t) mn[2 * k] & 0xFFFF) | ((uint32_t) mn[2 * k + 1] << 16);
            }
            d[r]    = tri_h2f(h);
            dmin[r] = tri_h2f(hm);
        }
        memcpy(pb + TRI_PANK_SC, sc16, (size_t) S * 32);
        memcpy(pb + TRI_PANK_MINS, mn16, (size_t) S / 2 * 32);
        memcpy(pb + TRI_PANK_D, d, 32);
        memcpy(pb + TRI_PANK_DMIN, dmin, 32);
        tri_packK_corr(pb, S);
    }
}

/* The 128 six-bit values stored as low nibbles at lo and high bits at lo + 64 (repack.c): Q4_K / Q5_K x8
 * groups' scales and mins (v: 8j + r scales, 64 + 16p + 2r + e mins), Q3_K's scales + 32 (v: 16p + 2r + e). */
TRI_INLINE void tri_x8_values6(const uint8_t * lo, uint8_t v[128]) {
    const __m256i m4 = _mm256_set1_epi8(15), m3 = _mm256_set1_epi8(3);
    const __m256i n0 = _mm256_loadu_si256((const __m256i *) lo);
    const __m256i n1 = _mm256_loadu_si256((const __m256i *) (lo + 32));
    const __m256i h  = _mm256_loadu_si256((const __m256i *) (lo + 64));
    const __m256i l4[4] = { _mm256_and_si256(n0, m4), _mm256_and_si256(n1, m4),
                            _mm256_and_si256(_mm256_srli_epi16(n0, 4), m4), _mm256_and_si256(_mm256_srli_epi16(n1, 4), m4) };
    for (int q = 0; q < 4; q++) {
        const __m256i hq = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 2 * q), m3), 4);
        _mm256_storeu_si256((__m256i *) (v + 32 * q), _mm256_or_si256(l4[q], hq));
    }
}

/* ---- x8 groups of the types with 16 sub-blocks (Q2_K, Q3_K, Q6_K) ---- */

/* Codes of word k of half h of a group for the 8 rows: q[u] holds values 128h + 32u + 4k .. + 3 of each row
 * (sub-block 8h + 2u + k / 4), unsigned (Q3_K: q + 4, Q6_K: q + 32). */
TRI_INLINE void tri_x8_k16_codes(const uint8_t * g, enum tri_type type, int h, int k, __m256i q[4]) {
    const __m256i m4 = _mm256_set1_epi8(15), m3 = _mm256_set1_epi8(3);
    if (type == TRI_TYPE_Q6_K) {
        const __m256i l0 = _mm256_loadu_si256((const __m256i *) (g + TRI_X8_Q6K_QL + 512 * h + 32 * k));
        const __m256i l1 = _mm256_loadu_si256((const __m256i *) (g + TRI_X8_Q6K_QL + 512 * h + 256 + 32 * k));
        const __m256i hb = _mm256_loadu_si256((const __m256i *) (g + TRI_X8_Q6K_QH + 256 * h + 32 * k));
        const __m256i lo[4] = { _mm256_and_si256(l0, m4), _mm256_and_si256(l1, m4),
                                _mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
                                _mm256_and_si256(_mm256_srli_epi16(l1, 4), m4) };
        for (int u = 0; u < 4; u++) {
            q[u] = _mm256_or_si256(lo[u], _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 2 * u), m3), 4));
        }
        return;
    }
    const int     qs = type == TRI_TYPE_Q3_K ? TRI_X8_Q3K_QS : TRI_X8_Q2K_QS;
    const __m256i qq = _mm256_loadu_si256((const __m256i *) (g + qs + 256 * h + 32 * k));
    for (int u = 0; u < 4; u++) {
        q[u] = _mm256_and_si256(_mm256_srli_epi16(qq, 2 * u), m3);
    }
    if (type == TRI_TYPE_Q3_K) {
        const __m256i m1 = _mm256_set1_epi8(1);
        const __m256i hm = _mm256_loadu_si256((const __m256i *) (g + TRI_X8_Q3K_HM + 32 * k));
        for (int u = 0; u < 4; u++) {
            const __m256i hb = _mm256_and_si256(_mm256_srli_epi16(hm, 4 * h + u), m1);
            q[u] = _mm256_or_si256(q[u], _mm256_slli_epi16(hb, 2));
        }
    }
}

/* A group's sub-block scales and the factors of the activation sums: mf[p] holds, per row lane, the int16
 * pair (sub-block 2p, 2p + 1) of mins (Q2_K) or scales (Q3_K, Q6_K); sc16[j] each row's scale of sub-block
 * j twice per lane (the panels' form). */
TRI_INLINE void tri_x8_k16_scales(const uint8_t * g, enum tri_type type, __m256i mf[8], __m256i sc16[16]) {
    const __m256i lo16 = _mm256_set1_epi32(0xFFFF);
    uint8_t v[128];
    if (type == TRI_TYPE_Q3_K) {
        tri_x8_values6(g + TRI_X8_Q3K_SLO, v);
    }
    for (int p = 0; p < 8; p++) {
        __m256i sp;
        if (type == TRI_TYPE_Q2_K) {
            const __m128i b = _mm_loadu_si128((const __m128i *) (g + TRI_X8_Q2K_SC + 16 * p));
            sp    = _mm256_cvtepu8_epi16(_mm_and_si128(b, _mm_set1_epi8(15)));
            mf[p] = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(b, 4), _mm_set1_epi8(15)));
        } else if (type == TRI_TYPE_Q3_K) {
            const __m128i b = _mm_sub_epi8(_mm_loadu_si128((const __m128i *) (v + 16 * p)), _mm_set1_epi8(32));
            sp = mf[p] = _mm256_cvtepi8_epi16(b);
        } else {
            sp = mf[p] = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *) (g + TRI_X8_Q6K_SC + 16 * p)));
        }
        sc16[2 * p]     = _mm256_or_si256(_mm256_and_si256(sp, lo16), _mm256_slli_epi32(sp, 16));
        sc16[2 * p + 1] = _mm256_or_si256(_mm256_srli_epi32(sp, 16), _mm256_andnot_si256(lo16, sp));
    }
}

/* The code offset of a type with 16 sub-blocks (Q3_K 4, Q6_K 32) and its group size. */
TRI_INLINE int tri_x8_k16_off(enum tri_type type) {
    return type == TRI_TYPE_Q6_K ? 32 : type == TRI_TYPE_Q3_K ? 4 : 0;
}
TRI_INLINE size_t tri_x8_k16_group(enum tri_type type) {
    return type == TRI_TYPE_Q6_K ? TRI_X8_Q6K_GROUP : type == TRI_TYPE_Q3_K ? TRI_X8_Q3K_GROUP : TRI_X8_Q2K_GROUP;
}

/* Panel of one Q2_K, Q3_K or Q6_K x8 group: codes minus the offset as the values, 4 per row per lane already. */
TRI_INLINE void tri_packX8_k16(const uint8_t * W, int nsb, enum tri_type type, uint8_t * pan) {
    const __m256i off = _mm256_set1_epi8((char) tri_x8_k16_off(type));
    for (int sb = 0; sb < nsb; sb++) {
        const uint8_t * gb = W + (size_t) sb * tri_x8_k16_group(type);
        uint8_t *       pb = pan + (size_t) sb * TRI_PANK_BLOCK;
        for (int h = 0; h < 2; h++) {
            for (int k = 0; k < 8; k++) {
                __m256i q[4];
                tri_x8_k16_codes(gb, type, h, k, q);
                for (int u = 0; u < 4; u++) {
                    _mm256_storeu_si256((__m256i *) (pb + 256 * (4 * h + u) + 32 * k), _mm256_sub_epi8(q[u], off));
                }
            }
        }
        __m256i mf[8], sc16[16];
        tri_x8_k16_scales(gb, type, mf, sc16);
        for (int j = 0; j < 16; j++) {
            _mm256_storeu_si256((__m256i *) (pb + TRI_PANK_SC + 32 * j), sc16[j]);
        }
        const bool q2 = type == TRI_TYPE_Q2_K;
        for (int p = 0; p < 8; p++) {
            _mm256_storeu_si256((__m256i *) (pb + TRI_PANK_MINS + 32 * p), q2 ? mf[p] : _mm256_setzero_si256());
        }
        _mm256_storeu_ps((float *) (pb + TRI_PANK_D), _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) gb)));
        _mm256_storeu_ps((float *) (pb + TRI_PANK_DMIN),
                         q2 ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) (gb + TRI_X8_Q2K_DMIN)))
                            : _mm256_setzero_ps());
        tri_packK_corr(pb, 16);
    }
}

/* Codes of word k of chunk c of a Q4_K (q5 false) or Q5_K x8 group for the 8 rows: lo holds values
 * 64c + 4k .. + 3 of each row (sub-block 2c), hi values 64c + 32 + 4k .. + 3 (sub-block 2c + 1). */
TRI_INLINE void tri_x8_k4_codes(const uint8_t * g, int c, int k, bool q5, __m256i * lo, __m256i * hi) {
    const __m256i m4 = _mm256_set1_epi8(15);
    const __m256i q  = _mm256_loadu_si256((const __m256i *) (g + (q5 ? TRI_X8_Q5K_QS : TRI_X8_Q4K_QS) + 32 * (8 * c + k)));
    *lo = _mm256_and_si256(q, m4);
    *hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
    if (q5) {
        const __m256i m1 = _mm256_set1_epi8(1);
        const __m256i h  = _mm256_loadu_si256((const __m256i *) (g + TRI_X8_Q5K_QH + 32 * k));
        *lo = _mm256_or_si256(*lo, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 2 * c), m1), 4));
        *hi = _mm256_or_si256(*hi, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 2 * c + 1), m1), 4));
    }
}

/* Panel of one Q4_K or Q5_K x8 group (W at its first row): the codes are already 4 per row per lane. */
TRI_INLINE void tri_packX8_k4(const uint8_t * W, int nsb, bool q5, uint8_t * pan) {
    for (int sb = 0; sb < nsb; sb++) {
        const uint8_t * gb = W + (size_t) sb * (q5 ? TRI_X8_Q5K_GROUP : TRI_X8_Q4K_GROUP);
        uint8_t *       pb = pan + (size_t) sb * TRI_PANK_BLOCK;
        for (int c = 0; c < 4; c++) {
            for (int k = 0; k < 8; k++) {
                __m256i lo, hi;
                tri_x8_k4_codes(gb, c, k, q5, &lo, &hi);
                _mm256_storeu_si256((__m256i *) (pb + 256 * (2 * c) + 32 * k), lo);
                _mm256_storeu_si256((__m256i *) (pb + 256 * (2 * c + 1) + 32 * k), hi);
            }
        }
        uint8_t v[128];
        tri_x8_values6(gb + TRI_X8_Q4K_SLO, v);
        for (int j = 0; j < 8; j++) {
            const __m256i s32 = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *) (v + 8 * j)));
            _mm256_storeu_si256((__m256i *) (pb + TRI_PANK_SC + 32 * j), _mm256_or_si256(s32, _mm256_slli_epi32(s32, 16)));
        }
        for (int p = 0; p < 4; p++) {
            _mm256_storeu_si256((__m256i *) (pb + TRI_PANK_MINS + 32 * p),
                                _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *) (v + 64 + 16 * p))));
        }
        _mm256_storeu_ps((float *) (pb + TRI_PANK_D), _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) gb)));
        _mm256_storeu_ps((float *) (pb + TRI_PANK_DMIN),
                         _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) (gb + TRI_X8_Q4K_DMIN))));
        tri_packK_corr(pb, 8);
    }
}

/* Codes of word k of a 32-value x8 unit u for the 8 rows: lo holds values 4k .. 4k + 3 of each row, hi
 * values 16 + 4k .. 16 + 4k + 3; with qh, the fifth bit (bit i of the row's 32-bit qh for value i) as 16. */
TRI_INLINE void tri_x8_32_codes(const uint8_t * u, const tri_x8_parts32 * P, int k, __m256i * lo, __m256i * hi) {
    const __m256i m4 = _mm256_set1_epi8(15);
    const __m256i q  = _mm256_loadu_si256((const __m256i *) (u + P->qs + 32 * k));
    *lo = _mm256_and_si256(q, m4);
    *hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
    if (P->qh >= 0) {
        /* every byte of a row's lane takes qh byte k / 2 (lo) or 2 + k / 2 (hi), then tests its own bit */
        const __m256i h    = _mm256_loadu_si256((const __m256i *) (u + P->qh));
        const __m256i base = _mm256_setr_epi32(0, 0x04040404, 0x08080808, 0x0C0C0C0C, 0, 0x04040404, 0x08080808,
                                               0x0C0C0C0C);
        const __m256i bits = _mm256_set1_epi32((int) (0x08040201u << (4 * (k % 2))));
        const __m256i c16  = _mm256_set1_epi8(16);
        const __m256i blo  = _mm256_shuffle_epi8(h, _mm256_add_epi8(base, _mm256_set1_epi8((char) (k / 2))));
        const __m256i bhi  = _mm256_shuffle_epi8(h, _mm256_add_epi8(base, _mm256_set1_epi8((char) (2 + k / 2))));
        *lo = _mm256_or_si256(*lo, _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(blo, bits), bits), c16));
        *hi = _mm256_or_si256(*hi, _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(bhi, bits), bits), c16));
    }
}

/* Panels of one 32-value x8 group (W at its first row), nb blocks; off: the code offset the panel values drop. */
TRI_INLINE void tri_packX8_32(const uint8_t * W, int nb, enum tri_type type, int off, uint8_t * pan) {
    const tri_x8_parts32 P  = tri_x8_parts32_of(type);
    const __m256i        vo = _mm256_set1_epi8((char) off);
    for (int b = 0; b < nb; b++) {
        const uint8_t * u  = W + (size_t) b * P.unit;
        uint8_t *       pb = pan + (size_t) b * TRI_PAN32_BLOCK;
        if (P.words == 8) { /* Q8_0: the values themselves */
            memcpy(pb, u + P.qs, 256);
        } else {
            for (int k = 0; k < 4; k++) {
                __m256i lo, hi;
                tri_x8_32_codes(u, &P, k, &lo, &hi);
                _mm256_storeu_si256((__m256i *) (pb + 32 * k), _mm256_sub_epi8(lo, vo));
                _mm256_storeu_si256((__m256i *) (pb + 32 * (4 + k)), _mm256_sub_epi8(hi, vo));
            }
        }
        tri_pack32_corr(pb, P.words == 8);
        _mm256_storeu_ps((float *) (pb + 288), _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) u)));
        if (P.m >= 0) {
            _mm256_storeu_ps((float *) (pb + 320), _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) (u + P.m))));
        }
    }
}

/* ---- activation rows (tri_xrow_layout): per token the Q8 blocks, then xu, d, s / bs16 / bs32 ---- */

typedef struct {
    const uint8_t * xu[16];  /* codes + 128 */
    const float *   d[16];   /* block scales */
    const float *   s[16];   /* Q8_1: the blocks' s */
    const int16_t * bs16[16];/* Q8_K: sums of 16 codes */
    const int16_t * bs32[16];/* Q8_K: sums of 32 codes */
} tri_xtile;

/* ---- prefill tiles ---- */

#define TRI_GEMM_TMAX (TRI_GEMM_T32 > TRI_GEMM_TK ? TRI_GEMM_T32 : TRI_GEMM_TK)

TRI_INLINE void tri_acc_zero(__m256 acc[2][TRI_GEMM_TMAX], int NP, int T) {
    for (int p = 0; p < NP; p++) {
        for (int t = 0; t < T; t++) {
            acc[p][t] = _mm256_setzero_ps();
        }
    }
}

TRI_INLINE void tri_acc_copy(__m256 dst[2][TRI_GEMM_TMAX], __m256 src[2][TRI_GEMM_TMAX], int NP, int T) {
    for (int p = 0; p < NP; p++) {
        for (int t = 0; t < T; t++) {
            dst[p][t] = src[p][t];
        }
    }
}

/* Token t's results (the first nrows of 8 NP rows) to yt[t]. */
TRI_INLINE void tri_acc_store(__m256 acc[2][TRI_GEMM_TMAX], int NP, int T, float * const * yt, int nrows) {
    for (int p = 0; p < NP; p++) {
        for (int t = 0; t < T; t++) {
            tri_store_rows(yt[t] + 8 * p, acc[p][t], nrows - 8 * p);
        }
    }
}

/* One block b of 32-value types into acc (NP panels x T tokens). */
TRI_INLINE void tri_tile32_block(const uint8_t * pan, size_t pstride, int NP, int T, int b, bool wide,
                                 const tri_xtile * xt, __m256 acc[2][TRI_GEMM_TMAX]) {
    const uint8_t * pb = pan + (size_t) b * TRI_PAN32_BLOCK;
    __m256i s[2][TRI_GEMM_T32];
    for (int p = 0; p < NP; p++) {
        const __m256i nc = _mm256_loadu_si256((const __m256i *) (pb + p * pstride + 256));
        for (int t = 0; t < T; t++) {
            s[p][t] = nc;
        }
    }
    for (int g = 0; g < 8; g++) {
        __m256i w[2];
        for (int p = 0; p < NP; p++) {
            w[p] = _mm256_loadu_si256((const __m256i *) (pb + p * pstride + 32 * g));
        }
        for (int t = 0; t < T; t++) {
            const __m256i xb = tri_bcast32(xt->xu[t] + 32 * b + 4 * g);
            for (int p = 0; p < NP; p++) {
                s[p][t] = wide ? tri_dp_xw(s[p][t], xb, w[p]) : tri_dp_us(s[p][t], xb, w[p]);
            }
        }
    }
    for (int p = 0; p < NP; p++) {
        const __m256 dw = _mm256_loadu_ps((const float *) (pb + p * pstride + 288));
        for (int t = 0; t < T; t++) {
            const __m256 dd = _mm256_mul_ps(dw, _mm256_set1_ps(xt->d[t][b]));
            acc[p][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s[p][t]), dd, acc[p][t]);
        }
    }
}

/* tree(v) of eight partial sums, for NP x T vectors at once (v[j] = partial sum j). */
TRI_INLINE void tri_acc_tree(__m256 v[8][2][TRI_GEMM_TMAX], int NP, int T, __m256 out[2][TRI_GEMM_TMAX]) {
    for (int p = 0; p < NP; p++) {
        for (int t = 0; t < T; t++) {
#define TRI_V(j) v[j][p][t]
            out[p][t] = TRI_TREE8(_mm256_add_ps, TRI_V);
#undef TRI_V
        }
    }
}

/* 32-value types: NP panels (8 rows each, pstride bytes apart) x T tokens over nb blocks; token t's 8 NP
 * results go to yt[t] (the first nrows of them). */
TRI_INLINE void tri_tile32(const uint8_t * pan, size_t pstride, int NP, int T, int nb, bool wide, bool has_m,
                           const tri_xtile * xt, float * const * yt, int nrows) {
    __m256 part[8][2][TRI_GEMM_TMAX], res[2][TRI_GEMM_TMAX];
    for (int j = 0; j < 8; j++) {
        __m256 acc[2][TRI_GEMM_TMAX]; /* in registers while the residue class runs */
        tri_acc_zero(acc, NP, T);
        for (int b = j; b < nb; b += 8) {
            tri_tile32_block(pan, pstride, NP, T, b, wide, xt, acc);
        }
        tri_acc_copy(part[j], acc, NP, T);
    }
    tri_acc_tree(part, NP, T, res);
    if (has_m) {
        __m256 mres[2][TRI_GEMM_TMAX];
        for (int j = 0; j < 8; j++) {
            __m256 acc[2][TRI_GEMM_TMAX];
            tri_acc_zero(acc, NP, T);
            for (int b = j; b < nb; b += 8) {
                const uint8_t * pb = pan + (size_t) b * TRI_PAN32_BLOCK;
                for (int p = 0; p < NP; p++) {
                    const __m256 mw = _mm256_loadu_ps((const float *) (pb + p * pstride + 320));
                    for (int t = 0; t < T; t++) {
                        acc[p][t] = _mm256_fmadd_ps(mw, _mm256_set1_ps(xt->s[t][b]), acc[p][t]);
                    }
                }
            }
            tri_acc_copy(part[j], acc, NP, T);
        }
        tri_acc_tree(part, NP, T, mres);
        for (int p = 0; p < NP; p++) {
            for (int t = 0; t < T; t++) {
                res[p][t] = _mm256_add_ps(res[p][t], mres[p][t]);
            }
        }
    }
    tri_acc_store(res, NP, T, yt, nrows);
}

/* One super-block sb of a K type into acc (NP panels x T tokens); S sub-blocks of 256 / S values. */
TRI_INLINE void tri_tileK_sb(const uint8_t * pan, size_t pstride, int NP, int T, int sb, int S, bool has_min,
                             const tri_xtile * xt, __m256 acc[2][TRI_GEMM_TMAX]) {
    const int G = 64 / S; /* 4-value groups per sub-block */
    const uint8_t * pb = pan + (size_t) sb * TRI_PANK_BLOCK;
    __m256i isum[2][TRI_GEMM_TK];
    for (int p = 0; p < NP; p++) {
        const __m256i nc = _mm256_loadu_si256((const __m256i *) (pb + p * pstride + TRI_PANK_CORR));
        for (int t = 0; t < T; t++) {
            isum[p][t] = nc;
        }
    }
    for (int j = 0; j < S; j++) {
        __m256i sc[2];
        __m256i part[2][TRI_GEMM_TK];
        for (int p = 0; p < NP; p++) {
            sc[p] = tri_kscale_prep(_mm256_loadu_si256((const __m256i *) (pb + p * pstride + TRI_PANK_SC + 32 * j)));
            for (int t = 0; t < T; t++) {
                part[p][t] = _mm256_setzero_si256();
            }
        }
        for (int g = 0; g < G; g++) {
            const int v = j * G + g; /* vector index in the super-block */
            __m256i w[2];
            for (int p = 0; p < NP; p++) {
                w[p] = _mm256_loadu_si256((const __m256i *) (pb + p * pstride + 32 * v));
            }
            for (int t = 0; t < T; t++) {
                const __m256i xb = tri_bcast32(xt->xu[t] + 256 * sb + 4 * v);
                for (int p = 0; p < NP; p++) {
                    tri_kpart_acc(&part[p][t], &isum[p][t], xb, w[p], sc[p]);
                }
            }
        }
        for (int p = 0; p < NP; p++) {
            for (int t = 0; t < T; t++) {
                tri_kpart_end(&isum[p][t], part[p][t], sc[p]);
            }
        }
    }
    for (int p = 0; p < NP; p++) {
        const __m256 dw = _mm256_loadu_ps((const float *) (pb + p * pstride + TRI_PANK_D));
        for (int t = 0; t < T; t++) {
            const __m256 dd = _mm256_mul_ps(dw, _mm256_set1_ps(xt->d[t][sb]));
            acc[p][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[p][t]), dd, acc[p][t]);
        }
        if (!has_min) {
            continue;
        }
        const __m256 dm = _mm256_loadu_ps((const float *) (pb + p * pstride + TRI_PANK_DMIN));
        for (int t = 0; t < T; t++) {
            /* pairs of code sums matching the panel's pairs of mins */
            const uint8_t * bp = S == 8 ? (const uint8_t *) (xt->bs32[t] + 8 * sb)
                                        : (const uint8_t *) (xt->bs16[t] + 16 * sb);
            __m256i ms = _mm256_setzero_si256();
            for (int k = 0; k < S / 2; k++) {
                const __m256i mn = _mm256_loadu_si256((const __m256i *) (pb + p * pstride + TRI_PANK_MINS + 32 * k));
                ms = tri_dp_i16(ms, mn, tri_bcast32(bp + 4 * k));
            }
            const __m256 dd = _mm256_mul_ps(dm, _mm256_set1_ps(xt->d[t][sb]));
            acc[p][t] = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(ms), dd, acc[p][t]);
        }
    }
}

/* K types: S sub-blocks per super-block, nsb super-blocks, one residue class mod 8 after the other. */
TRI_INLINE void tri_tileK(const uint8_t * pan, size_t pstride, int NP, int T, int nsb, int S, bool has_min,
                          const tri_xtile * xt, float * const * yt, int nrows) {
    __m256 part[8][2][TRI_GEMM_TMAX], res[2][TRI_GEMM_TMAX];
    for (int j = 0; j < 8; j++) {
        __m256 acc[2][TRI_GEMM_TMAX];
        tri_acc_zero(acc, NP, T);
        for (int sb = j; sb < nsb; sb += 8) {
            tri_tileK_sb(pan, pstride, NP, T, sb, S, has_min, xt, acc);
        }
        tri_acc_copy(part[j], acc, NP, T);
    }
    tri_acc_tree(part, NP, T, res);
    tri_acc_store(res, NP, T, yt, nrows);
}

/* ---- prefill drivers: panels of up to 8 NP rows, then all tokens T at a time ---- */

/* Token tile starting at t0 (T slots; slots past n_tok repeat the last token and write to `spare`). */
TRI_INLINE void tri_xtile_at(tri_xtile * xt, float ** yt, const uint8_t * x, size_t xs, const tri_xrow_layout * L,
                             int64_t t0, int64_t n_tok, int T, float * y, int64_t ldy, float * spare) {
    for (int t = 0; t < T; t++) {
        const int64_t tk = t0 + t < n_tok ? t0 + t : n_tok - 1;
        const uint8_t * row = x + (size_t) tk * xs;
        xt->xu[t]   = row + L->xu;
        xt->d[t]    = (const float *) (row + L->d);
        xt->s[t]    = (const float *) (row + L->s);
        xt->bs16[t] = (const int16_t *) (row + L->bs16);
        xt->bs32[t] = (const int16_t *) (row + L->bs32);
        yt[t] = t0 + t < n_tok ? y + tk * ldy : spare;
    }
}

/* The including file may set TRI_TILE_ZMM for 512-bit tiles (avx512/tile_zmm.h). */
#ifdef TRI_TILE_ZMM
#  include "avx512/tile_zmm.h"
#  define TRI_TILEK  tri_tileK_wide
#  define TRI_TILE32 tri_tile32_wide
#else
#  define TRI_TILEK  tri_tileK
#  define TRI_TILE32 tri_tile32
#endif

/* A weight type as the prefill driver sees it. */
typedef struct {
    enum tri_type  vdt;      /* activation type */
    size_t         bsz;      /* bytes per block */
    int            S;        /* K types: sub-blocks per super-block; 0: 32-value types */
    tri_vals_fn    vals;
    tri_kscales_fn kscales;  /* K types */
    bool           wide;     /* 32-value types: int8 weights of any size (Q8_0) */
    int            off_m;    /* 32-value types: byte offset of m in a block, -1: none */
    size_t         off_d;    /* K types: byte offsets of d and dmin (-1: none) */
    int            off_dmin;
    enum tri_type  x8;       /* the weight type when W is in the x8 layout (repack.h), else TRI_TYPE_COUNT */
    int            off32;    /* 32-value x8 types: the code offset (8, 16, 0) */
} tri_wtype;

TRI_INLINE void tri_tile(const tri_wtype * D, const uint8_t * pan, size_t ps, int NP, int n, const tri_xtile * xt,
                         float * const * yt, int nrows) {
    if (D->S) {
        TRI_TILEK(pan, ps, NP, TRI_GEMM_TK, n / 256, D->S, D->off_dmin >= 0, xt, yt, nrows);
    } else {
        TRI_TILE32(pan, ps, NP, TRI_GEMM_T32, n / 32, D->wide, D->off_m >= 0, xt, yt, nrows);
    }
}

/* Rows in groups of 8 NP: repacked into NP panels, then met by all tokens, T at a time. */
TRI_INLINE void tri_gemm_panels(int n, const uint8_t * W, size_t rs, int64_t nrows, const uint8_t * x, size_t xs,
                                int64_t n_tok, float * y, int64_t ldy, uint8_t * scratch, tri_wtype D) {
    const int    NP = D.S ? TRI_GEMM_NPK : TRI_GEMM_NP32;
    const int    T  = D.S ? TRI_GEMM_TK : TRI_GEMM_T32;
    const size_t ps = D.S ? (size_t) (n / 256) * TRI_PANK_BLOCK : (size_t) (n / 32) * TRI_PAN32_BLOCK;
    const tri_xrow_layout L = tri_xrow_layout_of(D.vdt, n);
    float spare[16];
    for (int64_t r0 = 0; r0 < nrows; r0 += 8 * NP) {
        const int nr = (int) (nrows - r0 < 8 * NP ? nrows - r0 : 8 * NP);
        const int np = (nr + 7) / 8;
        for (int p = 0; p < np; p++) {
            const uint8_t * Wp = W + (size_t) (r0 + 8 * p) * rs;
            const int       k  = nr - 8 * p < 8 ? nr - 8 * p : 8;
            if (D.x8 == TRI_TYPE_Q4_K || D.x8 == TRI_TYPE_Q5_K) {
                tri_packX8_k4(Wp, n / 256, D.x8 == TRI_TYPE_Q5_K, scratch + p * ps);
            } else if (D.x8 == TRI_TYPE_Q2_K || D.x8 == TRI_TYPE_Q3_K || D.x8 == TRI_TYPE_Q6_K) {
                tri_packX8_k16(Wp, n / 256, D.x8, scratch + p * ps);
            } else if (D.x8 != TRI_TYPE_COUNT && !D.S) {
                tri_packX8_32(Wp, n / 32, D.x8, D.off32, scratch + p * ps);
            } else if (D.S) {
                tri_packK(Wp, rs, k, n / 256, D.bsz, D.vals, D.kscales, D.S, D.off_d, D.off_dmin, scratch + p * ps);
            } else {
                tri_pack32(Wp, rs, k, n / 32, D.bsz, D.vals, D.wide, D.off_m, scratch + p * ps);
            }
        }
        for (int64_t t0 = 0; t0 < n_tok; t0 += T) {
            tri_xtile xt;
            float *   yt[TRI_GEMM_TMAX];
            tri_xtile_at(&xt, yt, x, xs, &L, t0, n_tok, T, y + r0, ldy, spare);
            if (np == NP) {
                tri_tile(&D, scratch, ps, NP, n, &xt, yt, nr);
            } else {
                tri_tile(&D, scratch, ps, 1, n, &xt, yt, nr);
            }
        }
    }
}

/* ---- decode: one row at a time, its blocks read in order, eight of them in the vector lanes ---- */

/* The 32-bit values at the start of 4 blocks bsz apart from p (lanes >= k: 0), built with register inserts:
 * small stores then a wide reload would stall on store forwarding. */
TRI_INLINE uint32_t tri_ld_u32(const uint8_t * p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}
TRI_INLINE __m128i tri_u32x4(const uint8_t * p, size_t bsz, int k) {
    __m128i v = _mm_cvtsi32_si128(k > 0 ? (int) tri_ld_u32(p) : 0);
    v = _mm_insert_epi32(v, k > 1 ? (int) tri_ld_u32(p + 1 * bsz) : 0, 1);
    v = _mm_insert_epi32(v, k > 2 ? (int) tri_ld_u32(p + 2 * bsz) : 0, 2);
    return _mm_insert_epi32(v, k > 3 ? (int) tri_ld_u32(p + 3 * bsz) : 0, 3);
}

/* fp16 at byte off of 8 blocks bsz apart from p, as floats (lanes >= k: 0). */
TRI_INLINE __m256 tri_block_h8(const uint8_t * p, size_t bsz, size_t off, int k) {
    uint16_t h[8];
    for (int i = 0; i < 8; i++) {
        h[i] = 0;
        if (i < k) {
            memcpy(&h[i], p + (size_t) i * bsz + off, 2);
        }
    }
    return _mm256_cvtph_ps(_mm_setr_epi16((short) h[0], (short) h[1], (short) h[2], (short) h[3], (short) h[4],
                                          (short) h[5], (short) h[6], (short) h[7]));
}

/* The fp16 pair (d, m) at the start of 8 blocks bsz apart from p, as floats (lanes >= k: 0). */
TRI_INLINE void tri_block_2h8(const uint8_t * p, size_t bsz, int k, __m256 * d, __m256 * m) {
    const __m256i v = _mm256_set_m128i(tri_u32x4(p + 4 * bsz, bsz, k - 4), tri_u32x4(p, bsz, k));
    /* per 128-bit lane: its four d halves, then its four m halves; then both lanes' d, both lanes' m */
    const __m256i sh = _mm256_shuffle_epi8(v, _mm256_setr_epi8(0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15,
                                                                0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15));
    const __m256i dm = _mm256_permute4x64_epi64(sh, 0xD8);
    *d = _mm256_cvtph_ps(_mm256_castsi256_si128(dm));
    *m = _mm256_cvtph_ps(_mm256_extracti128_si256(dm, 1));
}

/* 8 floats from p, lanes >= k: 0 (the floats past an x row's array are other data). */
TRI_INLINE __m256 tri_load8_k(const float * p, int k) {
    if (k >= 8) {
        return _mm256_loadu_ps(p);
    }
    const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_maskload_ps(p, _mm256_cmpgt_epi32(_mm256_set1_epi32(k), idx));
}

/* Tokens met at once by the decode kernels; CALL(T) with T constant for a count of 1 to TRI_GEMV_TK. */
#define TRI_GEMV_TK 8
#define TRI_GEMV_BY_T(count, CALL)                                                                                   \
    switch (count) {                                                                                                 \
    case 1: CALL(1); break;                                                                                          \
    case 2: CALL(2); break;                                                                                          \
    case 3: CALL(3); break;                                                                                          \
    case 4: CALL(4); break;                                                                                          \
    case 5: CALL(5); break;                                                                                          \
    case 6: CALL(6); break;                                                                                          \
    case 7: CALL(7); break;                                                                                          \
    default: CALL(8); break;                                                                                         \
    }

/* The decode passes over n_tok tokens, TRI_GEMV_TK at a time: CALL(T) with xt, yt the pass's first x row and
 * output (x, xs, y, ldy, n_tok from the caller). */
#define TRI_GEMV_PASSES(CALL)                                                                                        \
    for (int64_t t0 = 0; t0 < n_tok; t0 += TRI_GEMV_TK) {                                                            \
        const uint8_t * xt = (const uint8_t *) x + (size_t) t0 * xs;                                                 \
        float *         yt = y + t0 * ldy;                                                                           \
        TRI_GEMV_BY_T(n_tok - t0 < TRI_GEMV_TK ? (int) (n_tok - t0) : TRI_GEMV_TK, CALL);                          \
    }

/* The weights of a 32-value block as the dot products take them: unsigned codes, or Q8_0's int8 values. */
TRI_INLINE __m256i tri_gemv32_w(const uint8_t * blk, size_t qs, int qh, bool q8) {
    if (q8) {
        return _mm256_loadu_si256((const __m256i *) (blk + qs));
    }
    return qh >= 0 ? tri_codes_q5(blk, qs, (size_t) qh) : tri_codes_q4(blk, qs);
}

/* One token's x row as the 32-value kernels read it. */
typedef struct {
    const uint8_t * q;     /* the Q8_0 / Q8_1 blocks */
    const float *   d;
    const float *   s;
    const int32_t * sum;
} tri_x32;

/* The exact integer dot of block weights w with block b of a token's x row (0 for a lane past the row). */
TRI_INLINE __m256i tri_gemv32_dot(__m256i w, const tri_x32 * X, int b, size_t xbs, bool q8, bool live) {
    if (!live) {
        return _mm256_setzero_si256();
    }
    const __m256i yv = _mm256_loadu_si256((const __m256i *) (X->q + (size_t) b * xbs));
    return q8 ? tri_dp_ss(_mm256_setzero_si256(), w, yv) : tri_dp_us(_mm256_setzero_si256(), w, yv);
}

/* Exact integer dots p of blocks b0 .. b0 + k - 1 of a row (unpacked into w) into the partial sums sp
 * (and tp for the m terms): lanes 0..7 when k > 4, lanes 0..3 when k <= 4. dw, mw: the blocks' d and m. */
TRI_INLINE void tri_gemv32_fin(const __m256i * p, int b0, int k, int off, int off_m, __m256 dw, __m256 mw,
                               const tri_x32 * X, __m256 * sp, __m256 * tp) {
    if (k > 4) {
        __m256i is = tri_reduce8(p);
        if (off) {
            const __m256i sums = _mm256_castps_si256(tri_load8_k((const float *) (X->sum + b0), k));
            is = _mm256_sub_epi32(is, _mm256_mullo_epi32(sums, _mm256_set1_epi32(off)));
        }
        *sp = _mm256_fmadd_ps(_mm256_cvtepi32_ps(is), _mm256_mul_ps(dw, tri_load8_k(X->d + b0, k)), *sp);
        if (off_m >= 0) {
            *tp = _mm256_fmadd_ps(mw, tri_load8_k(X->s + b0, k), *tp);
        }
        return;
    }
    const __m256i h = _mm256_hadd_epi32(_mm256_hadd_epi32(p[0], p[1]), _mm256_hadd_epi32(p[2], p[3]));
    __m128i is = _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
    const __m128i lanes = _mm_cmpgt_epi32(_mm_set1_epi32(k), _mm_setr_epi32(0, 1, 2, 3));
    if (off) {
        const __m128i sums = _mm_castps_si128(_mm_maskload_ps((const float *) (X->sum + b0), lanes));
        is = _mm_sub_epi32(is, _mm_mullo_epi32(sums, _mm_set1_epi32(off)));
    }
    const __m128 dd = _mm_mul_ps(_mm256_castps256_ps128(dw), _mm_maskload_ps(X->d + b0, lanes));
    const __m128 s4 = _mm_fmadd_ps(_mm_cvtepi32_ps(is), dd, _mm256_castps256_ps128(*sp));
    *sp = _mm256_insertf128_ps(*sp, s4, 0);
    if (off_m >= 0) {
        const __m128 t4 = _mm_fmadd_ps(_mm256_castps256_ps128(mw), _mm_maskload_ps(X->s + b0, lanes),
                                       _mm256_castps256_ps128(*tp));
        *tp = _mm256_insertf128_ps(*tp, t4, 0);
    }
}

/* Blocks b0 .. b0 + k - 1 of a row (G = 8 lanes, or 4 when k <= 4), unpacked once, against T tokens. */
TRI_INLINE void tri_gemv32_grp(const uint8_t * row, int b0, int k, int G, int T, const tri_x32 * X, __m256 * sp,
                               __m256 * tp, size_t bsz, size_t xbs, size_t qs, int qh, int off, bool q8, int off_m) {
    const uint8_t * blk0 = row + (size_t) b0 * bsz;
    __m256i w[8], p[8];
    for (int i = 0; i < G; i++) {
        w[i] = i < k ? tri_gemv32_w(blk0 + (size_t) i * bsz, qs, qh, q8) : _mm256_setzero_si256();
        if (T == 1) { /* each block consumed as it is unpacked */
            p[i] = tri_gemv32_dot(w[i], &X[0], b0 + i, xbs, q8, i < k);
        }
    }
    __m256 dw, mw = _mm256_setzero_ps();
    if (off_m >= 0) {
        tri_block_2h8(blk0, bsz, k, &dw, &mw); /* m follows d in Q4_1 and Q5_1 */
    } else {
        dw = tri_block_h8(blk0, bsz, 0, k);
    }
    for (int t = 0; t < T; t++) {
        if (T > 1) {
            for (int i = 0; i < G; i++) {
                p[i] = tri_gemv32_dot(w[i], &X[t], b0 + i, xbs, q8, i < k);
            }
        }
        tri_gemv32_fin(p, b0, k, off, off_m, dw, mw, &X[t], &sp[t], &tp[t]);
    }
}

/* 32-value types against x rows of Q8_0 (or Q8_1 when off_m >= 0) blocks, T tokens (constant: the loops
 * unroll) at once: each group of blocks is unpacked once and met by every token. off: the code offset (8,
 * 16, 0), applied through the x rows' block sums; q8: Q8_0 weights (signed values, no codes). Groups of 8
 * blocks, then a group of 5 to 7, then one of at most 4 (the low half of the partial sums). */
TRI_INLINE void tri_gemv32_T(int n, const uint8_t * W, size_t rs, int64_t nrows, const uint8_t * x, size_t xs, int T,
                             float * y, int64_t ldy, size_t bsz, size_t qs, int qh, int off, bool q8, int off_m) {
    const int    nb  = n / 32;
    const size_t xbs = off_m >= 0 ? sizeof(tri_block_q8_1) : sizeof(tri_block_q8_0);
    const size_t xq  = off_m >= 0 ? offsetof(tri_block_q8_1, qs) : offsetof(tri_block_q8_0, qs);
    const tri_xrow_layout L = tri_xrow_layout_of(off_m >= 0 ? TRI_TYPE_Q8_1 : TRI_TYPE_Q8_0, n);
    tri_x32 X[TRI_GEMV_TK];
    for (int t = 0; t < T; t++) {
        const uint8_t * xt = x + (size_t) t * xs;
        X[t] = (tri_x32){ xt + xq, (const float *) (xt + L.d), (const float *) (xt + L.s),
                          (const int32_t *) (xt + L.sum) };
    }
    for (int64_t r = 0; r < nrows; r++) {
        const uint8_t * row = W + (size_t) r * rs;
        __m256 sp[TRI_GEMV_TK], tp[TRI_GEMV_TK];
        for (int t = 0; t < T; t++) {
            sp[t] = tp[t] = _mm256_setzero_ps();
        }
        int b0 = 0;
        for (; b0 + 8 <= nb; b0 += 8) {
            tri_gemv32_grp(row, b0, 8, 8, T, X, sp, tp, bsz, xbs, qs, qh, off, q8, off_m);
        }
        if (nb - b0 > 4) {
            tri_gemv32_grp(row, b0, nb - b0, 8, T, X, sp, tp, bsz, xbs, qs, qh, off, q8, off_m);
        } else if (nb > b0) {
            tri_gemv32_grp(row, b0, nb - b0, 4, T, X, sp, tp, bsz, xbs, qs, qh, off, q8, off_m);
        }
        for (int t = 0; t < T; t++) {
            y[t * ldy + r] = off_m >= 0 ? tri_hsum_ps(sp[t]) + tri_hsum_ps(tp[t]) : tri_hsum_ps(sp[t]);
        }
    }
}

/* Tokens TRI_GEMV_TK at a time; below that many tokens each row is read once. */
TRI_INLINE void tri_gemv32(int n, const uint8_t * W, size_t rs, int64_t nrows, const uint8_t * x, size_t xs,
                           int64_t n_tok, float * y, int64_t ldy, size_t bsz, size_t qs, int qh, int off, bool q8,
                           int off_m) {
#define TRI_GEMV32_T(T) tri_gemv32_T(n, W, rs, nrows, xt, xs, T, yt, ldy, bsz, qs, qh, off, q8, off_m)
    TRI_GEMV_PASSES(TRI_GEMV32_T)
#undef TRI_GEMV32_T
}

/* K types against Q8_K x rows: unpack(block, &u) unpacks a super-block once for all tokens (tri_ksb_dot
 * gives each token's scaled code dot and msum, the sum of mins (Q2_K, Q4_K, Q5_K) or of scales (Q3_K, Q6_K)
 * times bsums); isum = dot - moff * msum (moff: the code offset of Q3_K and Q6_K); types with mins
 * subtract msum * dmin * d_x. Super-blocks go 8 at a time into the lanes, for T tokens (1 to 8) at once. */
typedef void (*tri_kunpack_fn)(const uint8_t * xb, tri_ksb * u);
typedef __m256i (*tri_ksb_fn)(const uint8_t * xb, const tri_block_q8_K * y, __m256i * msum);

/* Rows [0, nrows) against T tokens (constant T: the loops unroll). */
TRI_INLINE void tri_gemvK_T(int nsb, const uint8_t * W, size_t rs, int64_t nrows, size_t bsz, const uint8_t * x,
                            size_t xs, int T, size_t xd_off, float * y, int64_t ldy, tri_kunpack_fn unpack,
                            tri_ksb_fn sbdot, int moff, size_t off_d, int off_dmin) {
    for (int64_t r = 0; r < nrows; r++) {
        const uint8_t * row = W + (size_t) r * rs;
        __m256 acc[TRI_GEMV_TK];
        for (int t = 0; t < T; t++) {
            acc[t] = _mm256_setzero_ps();
        }
        for (int s0 = 0; s0 < nsb; s0 += 8) {
            const int k = nsb - s0 < 8 ? nsb - s0 : 8;
            const uint8_t * blk0 = row + (size_t) s0 * bsz;
            __m256i p[TRI_GEMV_TK][8], m[TRI_GEMV_TK][8];
            for (int i = 0; i < 8; i++) {
                if (i < k && T == 1) { /* each chunk consumed as it is made */
                    p[0][i] = sbdot(blk0 + (size_t) i * bsz, (const tri_block_q8_K *) x + s0 + i, &m[0][i]);
                } else if (i < k) {
                    tri_ksb u;
                    unpack(blk0 + (size_t) i * bsz, &u);
                    for (int t = 0; t < T; t++) {
                        const tri_block_q8_K * xk = (const tri_block_q8_K *) (x + (size_t) t * xs);
                        p[t][i] = tri_ksb_dot(&u, &xk[s0 + i], &m[t][i]);
                    }
                } else {
                    for (int t = 0; t < T; t++) {
                        p[t][i] = m[t][i] = _mm256_setzero_si256();
                    }
                }
            }
            const __m256 hd = tri_block_h8(blk0, bsz, off_d, k);
            const __m256 hm = off_dmin >= 0 ? tri_block_h8(blk0, bsz, (size_t) off_dmin, k) : _mm256_setzero_ps();
            for (int t = 0; t < T; t++) {
                const __m256i ms = tri_reduce8(m[t]);
                __m256i is = tri_reduce8(p[t]);
                if (moff) {
                    is = _mm256_sub_epi32(is, _mm256_mullo_epi32(ms, _mm256_set1_epi32(moff)));
                }
                const __m256 dy = tri_load8_k((const float *) (x + (size_t) t * xs + xd_off) + s0, k);
                acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(is), _mm256_mul_ps(hd, dy), acc[t]);
                if (off_dmin >= 0) {
                    acc[t] = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(ms), _mm256_mul_ps(hm, dy), acc[t]);
                }
            }
        }
        for (int t = 0; t < T; t++) {
            y[t * ldy + r] = tri_hsum_ps(acc[t]);
        }
    }
}

/* Tokens TRI_GEMV_TK at a time; below that many tokens each row is read once. */
TRI_INLINE void tri_gemvK(int n, const uint8_t * W, size_t rs, int64_t nrows, const uint8_t * x, size_t xs,
                          int64_t n_tok, float * y, int64_t ldy, size_t bsz, tri_kunpack_fn unpack, tri_ksb_fn sbdot,
                          int moff, size_t off_d, int off_dmin) {
    const int    nsb = n / 256;
    const size_t xd  = tri_xrow_layout_of(TRI_TYPE_Q8_K, n).d;
#define TRI_GEMVK_T(T) tri_gemvK_T(nsb, W, rs, nrows, bsz, xt, xs, T, xd, yt, ldy, unpack, sbdot, moff, off_d, off_dmin)
    TRI_GEMV_PASSES(TRI_GEMVK_T)
#undef TRI_GEMVK_T
}

#include "x86_gemv_x8.h"

/* ---- the kernels of each type ---- */

#define TRI_GEMV_ARGS int n, const void * W, size_t rs, int64_t nrows, const void * x, size_t xs, int64_t n_tok, \
                      float * y, int64_t ldy
#define TRI_GEMM_ARGS int n, const void * W, size_t rs, int64_t nrows, const void * x, size_t xs, int64_t n_tok, \
                      float * y, int64_t ldy, void * scratch

/* tri_gemv_<t> and tri_gemm_<t> of a 32-value type: its activation type, the byte offset of qh (-1: none),
 * the code offset, whether the weights are Q8_0's int8 values, the byte offset of m (-1: none). */
#define TRI_MM32(t, vdt, qh, off, q8, off_m)                                                                         \
    static void tri_gemv_##t(TRI_GEMV_ARGS) {                                                                        \
        tri_gemv32(n, W, rs, nrows, x, xs, n_tok, y, ldy, sizeof(tri_block_##t), offsetof(tri_block_##t, qs), qh,    \
                   off, q8, off_m);                                                                                  \
    }                                                                                                                \
    static void tri_gemm_##t(TRI_GEMM_ARGS) {                                                                        \
        tri_gemm_panels(n, W, rs, nrows, x, xs, n_tok, y, ldy, scratch,                                            \
                        (tri_wtype){ vdt, sizeof(tri_block_##t), 0, tri_vals_##t, NULL, q8, off_m, 0, -1,           \
                                     TRI_TYPE_COUNT, 0 });                                                           \
    }

/* The same for a K type: S sub-blocks, the code offset, the byte offset of dmin (-1: none). */
#define TRI_MMK(t, S, moff, off_dmin)                                                                                \
    static void tri_gemv_##t(TRI_GEMV_ARGS) {                                                                        \
        tri_gemvK(n, W, rs, nrows, x, xs, n_tok, y, ldy, sizeof(tri_block_##t), tri_##t##_unpack, tri_##t##_sb, moff,\
                  offsetof(tri_block_##t, d), off_dmin);                                                             \
    }                                                                                                                \
    static void tri_gemm_##t(TRI_GEMM_ARGS) {                                                                        \
        tri_gemm_panels(n, W, rs, nrows, x, xs, n_tok, y, ldy, scratch,                                            \
                        (tri_wtype){ TRI_TYPE_Q8_K, sizeof(tri_block_##t), S, tri_vals_##t, tri_kscales_##t, false, -1, \
                                     offsetof(tri_block_##t, d), off_dmin, TRI_TYPE_COUNT, 0 });                     \
    }

/* tri_gemvX8_<t> and tri_gemmX8_<t>: the type id, S sub-blocks, the byte offset of dmin (-1: none). */
#define TRI_GEMVX8_T(T) tri_gemvX8_T(n / 256, W, rs, nrows, xt, xs, T, &L, yt, ldy, x8sb)
#define TRI_MMX8(t, T_ID, S, off_dmin)                                                                       \
    static void tri_gemvX8_##t(TRI_GEMV_ARGS) {                                                                      \
        const tri_xrow_layout L    = tri_xrow_layout_of(TRI_TYPE_Q8_K, n);                                          \
        const tri_x8sb_fn     x8sb = tri_x8sb_##t;                                                                   \
        TRI_GEMV_PASSES(TRI_GEMVX8_T)                                                                                \
    }                                                                                                                \
    static void tri_gemmX8_##t(TRI_GEMM_ARGS) {                                                                      \
        tri_gemm_panels(n, W, rs, nrows, x, xs, n_tok, y, ldy, scratch,                                            \
                        (tri_wtype){ TRI_TYPE_Q8_K, sizeof(tri_block_##t), S, tri_vals_##t, tri_kscales_##t, false, -1, \
                                     offsetof(tri_block_##t, d), off_dmin, T_ID, 0 });                               \
    }

/* tri_gemvX8_<t> and tri_gemmX8_<t> of a 32-value type: its id, activation type, code offset, byte offset of m. */
#define TRI_MMX8_32(t, T_ID, vdt, off, off_m)                                                                        \
    static void tri_gemvX8_##t(TRI_GEMV_ARGS) {                                                                      \
        const enum tri_type x8t = T_ID;                                                                              \
        const int           x8o = off;                                                                               \
        TRI_GEMV_PASSES(TRI_GEMVX8_32_T)                                                                             \
    }                                                                                                                \
    static void tri_gemmX8_##t(TRI_GEMM_ARGS) {                                                                      \
        tri_gemm_panels(n, W, rs, nrows, x, xs, n_tok, y, ldy, scratch,                                            \
                        (tri_wtype){ vdt, sizeof(tri_block_##t), 0, tri_vals_##t, NULL, T_ID == TRI_TYPE_Q8_0, off_m, 0,\
                                     -1, T_ID, off });                                                               \
    }
#define TRI_GEMVX8_32_T(T) tri_gemvX8_32_T(n, W, rs, nrows, xt, xs, T, yt, ldy, x8t, x8o)

TRI_MM32(q4_0, TRI_TYPE_Q8_0, -1, 8, false, -1)
TRI_MM32(q4_1, TRI_TYPE_Q8_1, -1, 0, false, offsetof(tri_block_q4_1, m))
TRI_MM32(q5_0, TRI_TYPE_Q8_0, offsetof(tri_block_q5_0, qh), 16, false, -1)
TRI_MM32(q5_1, TRI_TYPE_Q8_1, offsetof(tri_block_q5_1, qh), 0, false, offsetof(tri_block_q5_1, m))
TRI_MM32(q8_0, TRI_TYPE_Q8_0, -1, 0, true, -1)
TRI_MMK(q2_K, 16, 0, offsetof(tri_block_q2_K, dmin))
TRI_MMK(q3_K, 16, 4, -1)
TRI_MMK(q4_K, 8, 0, offsetof(tri_block_q4_K, dmin))
TRI_MMK(q5_K, 8, 0, offsetof(tri_block_q5_K, dmin))
TRI_MMK(q6_K, 16, 32, -1)
TRI_MMX8(q2_K, TRI_TYPE_Q2_K, 16, offsetof(tri_block_q2_K, dmin))
TRI_MMX8(q3_K, TRI_TYPE_Q3_K, 16, -1)
TRI_MMX8(q4_K, TRI_TYPE_Q4_K, 8, offsetof(tri_block_q4_K, dmin))
TRI_MMX8(q5_K, TRI_TYPE_Q5_K, 8, offsetof(tri_block_q5_K, dmin))
TRI_MMX8(q6_K, TRI_TYPE_Q6_K, 16, -1)
TRI_MMX8_32(q4_0, TRI_TYPE_Q4_0, TRI_TYPE_Q8_0, 8, -1)
TRI_MMX8_32(q4_1, TRI_TYPE_Q4_1, TRI_TYPE_Q8_1, 0, offsetof(tri_block_q4_1, m))
TRI_MMX8_32(q5_0, TRI_TYPE_Q5_0, TRI_TYPE_Q8_0, 16, -1)
TRI_MMX8_32(q5_1, TRI_TYPE_Q5_1, TRI_TYPE_Q8_1, 0, offsetof(tri_block_q5_1, m))
TRI_MMX8_32(q8_0, TRI_TYPE_Q8_0, TRI_TYPE_Q8_0, 0, -1)

/* Fills the matrix kernels of every quantized weight type into an ISA's table. */
static void tri_gemm_register(tri_isa_kernels * k) {
    static const struct { enum tri_type t; tri_gemv_fn v; tri_gemm_fn m; } list[] = {
        { TRI_TYPE_Q4_0, tri_gemv_q4_0, tri_gemm_q4_0 }, { TRI_TYPE_Q4_1, tri_gemv_q4_1, tri_gemm_q4_1 },
        { TRI_TYPE_Q5_0, tri_gemv_q5_0, tri_gemm_q5_0 }, { TRI_TYPE_Q5_1, tri_gemv_q5_1, tri_gemm_q5_1 },
        { TRI_TYPE_Q8_0, tri_gemv_q8_0, tri_gemm_q8_0 }, { TRI_TYPE_Q2_K, tri_gemv_q2_K, tri_gemm_q2_K },
        { TRI_TYPE_Q3_K, tri_gemv_q3_K, tri_gemm_q3_K }, { TRI_TYPE_Q4_K, tri_gemv_q4_K, tri_gemm_q4_K },
        { TRI_TYPE_Q5_K, tri_gemv_q5_K, tri_gemm_q5_K }, { TRI_TYPE_Q6_K, tri_gemv_q6_K, tri_gemm_q6_K },
    };
    for (size_t i = 0; i < sizeof list / sizeof list[0]; i++) {
        k->gemv[list[i].t] = list[i].v;
        k->gemm[list[i].t] = list[i].m;
    }
    k->gemv_x8[TRI_TYPE_Q2_K] = tri_gemvX8_q2_K;
    k->gemm_x8[TRI_TYPE_Q2_K] = tri_gemmX8_q2_K;
    k->gemv_x8[TRI_TYPE_Q3_K] = tri_gemvX8_q3_K;
    k->gemm_x8[TRI_TYPE_Q3_K] = tri_gemmX8_q3_K;
    k->gemv_x8[TRI_TYPE_Q4_K] = tri_gemvX8_q4_K;
    k->gemm_x8[TRI_TYPE_Q4_K] = tri_gemmX8_q4_K;
    k->gemv_x8[TRI_TYPE_Q5_K] = tri_gemvX8_q5_K;
    k->gemm_x8[TRI_TYPE_Q5_K] = tri_gemmX8_q5_K;
    k->gemv_x8[TRI_TYPE_Q4_0] = tri_gemvX8_q4_0;
    k->gemm_x8[TRI_TYPE_Q4_0] = tri_gemmX8_q4_0;
    k->gemv_x8[TRI_TYPE_Q4_1] = tri_gemvX8_q4_1;
    k->gemm_x8[TRI_TYPE_Q4_1] = tri_gemmX8_q4_1;
    k->gemv_x8[TRI_TYPE_Q5_0] = tri_gemvX8_q5_0;
    k->gemm_x8[TRI_TYPE_Q5_0] = tri_gemmX8_q5_0;
    k->gemv_x8[TRI_TYPE_Q5_1] = tri_gemvX8_q5_1;
    k->gemm_x8[TRI_TYPE_Q5_1] = tri_gemmX8_q5_1;
    k->gemv_x8[TRI_TYPE_Q8_0] = tri_gemvX8_q8_0;
    k->gemm_x8[TRI_TYPE_Q8_0] = tri_gemmX8_q8_0;
    k->gemv_x8[TRI_TYPE_Q6_K] = tri_gemvX8_q6_K;
    k->gemm_x8[TRI_TYPE_Q6_K] = tri_gemmX8_q6_K;
}

#endif
