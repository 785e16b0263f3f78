/* AArch64 matrix kernels over weights in the x8 layout (repack.h), on the dot product instructions (this file
 * is compiled with -march=armv8.2-a+dotprod and registered only where the CPU has them). The 8 rows of a group
 * are the lanes of two vectors (rows 0-3, rows 4-7): a 16-byte load holds one 4-byte word of 4 rows, and SDOT
 * meets each with the same 4 activation bytes, so there are no horizontal sums. Each group is read once for up
 * to TRI_X8_TK tokens.
 *
 * Results equal the row-by-row vec_dot of neon_int_dots.h bit for bit (the repacking changes nothing a model
 * computes): the same exact integer sums per block or super-block, then, lane by lane, that kernel's float
 * operations in its order. fp-contract off: those multiplies and adds must not fuse. */
#pragma GCC optimize("fp-contract=off")

#include <arm_neon.h>
#include <stdbool.h>
#include <string.h>

#include "../../quants.h"
#include "../../repack.h"
#include "../kernels.h"

#define TRI_X8_TK 4 /* tokens per pass over a group */
#define TRI_X8_INLINE static inline __attribute__((always_inline))

/* Eight int32 or float values, one per row of a group. */
typedef struct {
    int32x4_t lo, hi;
} tri_i8r;
typedef struct {
    float32x4_t lo, hi;
} tri_f8r;

TRI_X8_INLINE tri_i8r tri_i8r_zero(void) {
    return (tri_i8r){ vdupq_n_s32(0), vdupq_n_s32(0) };
}

/* acc + each row's dot of its 4 codes (w.lo rows 0-3, w.hi rows 4-7) with the 4 activation bytes at y */
TRI_X8_INLINE tri_i8r tri_x8_dot(tri_i8r acc, int8x16_t wlo, int8x16_t whi, const int8_t * y) {
    uint32_t word;
    memcpy(&word, y, sizeof word);
    const int8x16_t b = vreinterpretq_s8_u32(vdupq_n_u32(word));
    return (tri_i8r){ vdotq_s32(acc.lo, wlo, b), vdotq_s32(acc.hi, whi, b) };
}

/* acc + a * s, row by row (exact integer sums) */
TRI_X8_INLINE tri_i8r tri_x8_mla(tri_i8r acc, tri_i8r a, tri_i8r s) {
    return (tri_i8r){ vmlaq_s32(acc.lo, a.lo, s.lo), vmlaq_s32(acc.hi, a.hi, s.hi) };
}

/* 8 bytes (one per row) as int32 lanes; sign: the bytes are int8 */
TRI_X8_INLINE tri_i8r tri_x8_widen(uint8x8_t b, bool sign) {
    const int16x8_t w = sign ? vmovl_s8(vreinterpret_s8_u8(b)) : vreinterpretq_s16_u16(vmovl_u8(b));
    return (tri_i8r){ vmovl_s16(vget_low_s16(w)), vmovl_high_s16(w) };
}

/* 8 fp16 values at p (one per row) as floats (exact) */
TRI_X8_INLINE tri_f8r tri_x8_h8(const uint8_t * p) {
    const float16x8_t h = vreinterpretq_f16_u8(vld1q_u8(p));
    return (tri_f8r){ vcvt_f32_f16(vget_low_f16(h)), vcvt_high_f32_f16(h) };
}

TRI_X8_INLINE tri_f8r tri_x8_cvt(tri_i8r v) {
    return (tri_f8r){ vcvtq_f32_s32(v.lo), vcvtq_f32_s32(v.hi) };
}

TRI_X8_INLINE tri_f8r tri_x8_add(tri_f8r a, tri_f8r b) {
    return (tri_f8r){ vaddq_f32(a.lo, b.lo), vaddq_f32(a.hi, b.hi) };
}

TRI_X8_INLINE tri_f8r tri_x8_mul(tri_f8r a, tri_f8r b) {
    return (tri_f8r){ vmulq_f32(a.lo, b.lo), vmulq_f32(a.hi, b.hi) };
}

TRI_X8_INLINE tri_f8r tri_x8_muln(tri_f8r a, float s) {
    return (tri_f8r){ vmulq_n_f32(a.lo, s), vmulq_n_f32(a.hi, s) };
}

/* acc + a * b, fused, as vfmaq */
TRI_X8_INLINE tri_f8r tri_x8_fma(tri_f8r acc, tri_f8r a, tri_f8r b) {
    return (tri_f8r){ vfmaq_f32(acc.lo, a.lo, b.lo), vfmaq_f32(acc.hi, a.hi, b.hi) };
}

TRI_X8_INLINE void tri_x8_store(float * y, tri_f8r v) {
    vst1q_f32(y, v.lo);
    vst1q_f32(y + 4, v.hi);
}

TRI_X8_INLINE float tri_x8_half(const uint8_t * p) {
    tri_fp16 h;
    memcpy(&h, p, sizeof h);
    return tri_fp16_to_fp32(h);
}

/* The fifth bits of 4 codes a row: bits 0-3 of each 32-bit lane of q (a row's qh shifted) as 0x10 in its bytes. */
TRI_X8_INLINE uint8x16_t tri_x8_bit5(uint32x4_t q) {
    static const uint8_t bit[16] = { 1, 2, 4, 8, 1, 2, 4, 8, 1, 2, 4, 8, 1, 2, 4, 8 };
    const uint32x4_t rep = vmulq_n_u32(vandq_u32(q, vdupq_n_u32(15)), 0x01010101u); /* the nibble in each byte */
    return vandq_u8(vtstq_u8(vreinterpretq_u8_u32(rep), vld1q_u8(bit)), vdupq_n_u8(0x10));
}

/* ---- 32-value types ---- */

/* Word k (0..3) of a nibble type's unit u as signed values for the 8 rows: v[0], v[1] the low nibbles (values
 * 4k .. 4k + 3; rows 0-3, 4-7), v[2], v[3] the high ones (values 16 + 4k ..); off: the code offset removed. */
TRI_X8_INLINE void tri_x8_32_word(const uint8_t * u, const tri_x8_parts32 * P, int k, int off, int8x16_t v[4]) {
    const uint8x16_t m4 = vdupq_n_u8(15);
    const uint8x16_t q0 = vld1q_u8(u + P->qs + 32 * k), q1 = vld1q_u8(u + P->qs + 32 * k + 16);
    uint8x16_t       c[4] = { vandq_u8(q0, m4), vandq_u8(q1, m4), vshrq_n_u8(q0, 4), vshrq_n_u8(q1, 4) };
    if (P->qh >= 0) { /* a row's qh: bit j is the fifth bit of value j */
        const uint32x4_t h0 = vreinterpretq_u32_u8(vld1q_u8(u + P->qh));
        const uint32x4_t h1 = vreinterpretq_u32_u8(vld1q_u8(u + P->qh + 16));
        const int32x4_t  sl = vdupq_n_s32(-4 * k), sh = vdupq_n_s32(-16 - 4 * k);
        c[0] = vorrq_u8(c[0], tri_x8_bit5(vshlq_u32(h0, sl)));
        c[1] = vorrq_u8(c[1], tri_x8_bit5(vshlq_u32(h1, sl)));
        c[2] = vorrq_u8(c[2], tri_x8_bit5(vshlq_u32(h0, sh)));
        c[3] = vorrq_u8(c[3], tri_x8_bit5(vshlq_u32(h1, sh)));
    }
    for (int i = 0; i < 4; i++) {
        v[i] = vsubq_s8(vreinterpretq_s8_u8(c[i]), vdupq_n_s8((int8_t) off));
    }
}

/* Block b's exact integer dot of the 8 rows against T tokens' Q8_0 / Q8_1 blocks (yq[t]: the token's codes
 * of that block). */
TRI_X8_INLINE void tri_x8_32_isum(const uint8_t * u, const tri_x8_parts32 * P, int off, const int8_t * const * yq,
                                  int T, tri_i8r isum[TRI_X8_TK]) {
    for (int t = 0; t < T; t++) {
        isum[t] = tri_i8r_zero();
    }
    if (P->words == 8) { /* Q8_0: word k holds values 4k .. 4k + 3 */
        for (int k = 0; k < 8; k++) {
            const int8x16_t w0 = vld1q_s8((const int8_t *) u + P->qs + 32 * k);
            const int8x16_t w1 = vld1q_s8((const int8_t *) u + P->qs + 32 * k + 16);
            for (int t = 0; t < T; t++) {
                isum[t] = tri_x8_dot(isum[t], w0, w1, yq[t] + 4 * k);
            }
        }
        return;
    }
    for (int k = 0; k < 4; k++) {
        int8x16_t v[4];
        tri_x8_32_word(u, P, k, off, v);
        for (int t = 0; t < T; t++) {
            isum[t] = tri_x8_dot(isum[t], v[0], v[1], yq[t] + 4 * k);
            isum[t] = tri_x8_dot(isum[t], v[2], v[3], yq[t] + 16 + 4 * k);
        }
    }
}

/* Block b of a group against T tokens: each row's exact integer dot (isum), the rows' d (and m), the tokens'
 * d (and s). */
typedef struct {
    tri_i8r isum[TRI_X8_TK];
    tri_f8r dw, mw;
    float   dy[TRI_X8_TK], sy[TRI_X8_TK];
} tri_x8_blk32;

TRI_X8_INLINE void tri_x8_32_block(const uint8_t * grp, int b, const tri_x8_parts32 * P, int off, const uint8_t * x,
                                   size_t xs, int T, tri_x8_blk32 * B) {
    const bool      mins = P->m >= 0;
    const size_t    by   = mins ? sizeof(tri_block_q8_1) : sizeof(tri_block_q8_0);
    const size_t    yqo  = mins ? offsetof(tri_block_q8_1, qs) : offsetof(tri_block_q8_0, qs);
    const uint8_t * u    = grp + (size_t) b * P->unit;
    const int8_t *  yq[TRI_X8_TK];
    for (int t = 0; t < T; t++) {
        const uint8_t * yb = x + (size_t) t * xs + (size_t) b * by;
        yq[t]    = (const int8_t *) yb + yqo;
        B->dy[t] = tri_x8_half(yb);
        B->sy[t] = mins ? tri_x8_half(yb + 2) : 0.0f;
    }
    tri_x8_32_isum(u, P, off, yq, T, B->isum);
    B->dw = tri_x8_h8(u);
    B->mw = mins ? tri_x8_h8(u + P->m) : B->dw;
}

/* Groups of a 32-value type against T tokens (constant T). As tri_dot_blocks: blocks in fours, block b's
 * term d_w d_x t fused into partial sum b % 4 (and m_w s_x into its own), the partial sums added pairwise as
 * vaddvq adds lanes, then the last nb % 4 blocks one at a time. */
TRI_X8_INLINE void tri_x8_32_T(int n, const uint8_t * W, size_t rs, int64_t nrows, const uint8_t * x, size_t xs,
                               int T, float * y, int64_t ldy, enum tri_type type, int off) {
    const tri_x8_parts32 P    = tri_x8_parts32_of(type);
    const bool           mins = P.m >= 0;
    const int            nb = n / 32, nb4 = nb / 4 * 4;
    for (int64_t r0 = 0; r0 < nrows; r0 += 8) {
        const uint8_t * grp = W + (size_t) r0 * rs;
        tri_f8r         acc[TRI_X8_TK][4], accm[TRI_X8_TK][4];
        for (int t = 0; t < T; t++) {
            for (int j = 0; j < 4; j++) {
                acc[t][j] = accm[t][j] = (tri_f8r){ vdupq_n_f32(0.0f), vdupq_n_f32(0.0f) };
            }
        }
        tri_x8_blk32 B;
        for (int b = 0; b < nb4; b++) {
            tri_x8_32_block(grp, b, &P, off, x, xs, T, &B);
            for (int t = 0; t < T; t++) {
                acc[t][b % 4] = tri_x8_fma(acc[t][b % 4], tri_x8_cvt(B.isum[t]), tri_x8_muln(B.dw, B.dy[t]));
                if (mins) {
                    const tri_f8r s = { vdupq_n_f32(B.sy[t]), vdupq_n_f32(B.sy[t]) };
                    accm[t][b % 4] = tri_x8_fma(accm[t][b % 4], B.mw, s);
                }
            }
        }
        tri_f8r sum[TRI_X8_TK];
        for (int t = 0; t < T; t++) {
            tri_f8r a[4];
            for (int j = 0; j < 4; j++) {
                a[j] = mins ? tri_x8_add(acc[t][j], accm[t][j]) : acc[t][j];
            }
            sum[t] = tri_x8_add(tri_x8_add(a[0], a[1]), tri_x8_add(a[2], a[3]));
        }
        for (int b = nb4; b < nb; b++) {
            tri_x8_32_block(grp, b, &P, off, x, xs, T, &B);
            for (int t = 0; t < T; t++) {
                const tri_f8r v = tri_x8_mul(tri_x8_muln(B.dw, B.dy[t]), tri_x8_cvt(B.isum[t]));
                sum[t] = tri_x8_add(sum[t], mins ? tri_x8_add(v, tri_x8_muln(B.mw, B.sy[t])) : v);
            }
        }
        for (int t = 0; t < T; t++) {
            tri_x8_store(y + t * ldy + r0, sum[t]);
        }
    }
}

/* ---- K-quants: per super-block the rows' exact integer sums, then the vec_dot's float expression ---- */

/* The 128 six-bit values of a Q4_K / Q5_K / Q3_K group (repack.h): low nibbles at lo, high bits at lo + 64. */
TRI_X8_INLINE void tri_x8_values6(const uint8_t * lo, uint8_t v[128]) {
    const uint8x16_t m4 = vdupq_n_u8(15), m3 = vdupq_n_u8(3);
    const uint8x16_t h[2] = { vld1q_u8(lo + 64), vld1q_u8(lo + 80) };
    for (int i = 0; i < 4; i++) { /* bytes 16i .. 16i + 15 of the low nibbles */
        const uint8x16_t l  = vld1q_u8(lo + 16 * i);
        const uint8x16_t hb = h[i % 2];
        const int        q  = i / 2; /* value 16i + j: bits 2q of hb; value 64 + 16i + j: bits 2q + 4 */
        const uint8x16_t h0 = vandq_u8(vshlq_u8(hb, vdupq_n_s8((int8_t) (-2 * q))), m3);
        const uint8x16_t h1 = vandq_u8(vshlq_u8(hb, vdupq_n_s8((int8_t) (-2 * q - 4))), m3);
        vst1q_u8(v + 16 * i, vorrq_u8(vandq_u8(l, m4), vshlq_n_u8(h0, 4)));
        vst1q_u8(v + 64 + 16 * i, vorrq_u8(vshrq_n_u8(l, 4), vshlq_n_u8(h1, 4)));
    }
}

/* Sub-block scales stored one byte per (sub-block 2p + e, row r) at p + 16p + 2r + e: e = 0 and 1 as int32 rows */
TRI_X8_INLINE void tri_x8_pairs(const uint8_t * p, bool sign, tri_i8r * e0, tri_i8r * e1) {
    const uint8x8x2_t s = vld2_u8(p);
    *e0 = tri_x8_widen(s.val[0], sign);
    *e1 = tri_x8_widen(s.val[1], sign);
}

/* sum[t] + (d_x d_w) isum - (d_x dmin_w) msum (the second term only with mins), row by row */
TRI_X8_INLINE tri_f8r tri_x8_k_end(tri_f8r sum, float dx, tri_f8r dw, tri_i8r isum, bool mins, tri_f8r dm,
                                   tri_i8r msum) {
    const tri_f8r a = tri_x8_mul(tri_x8_muln(dw, dx), tri_x8_cvt(isum));
    if (!mins) {
        return tri_x8_add(sum, a);
    }
    const tri_f8r m = tri_x8_mul(tri_x8_muln(dm, dx), tri_x8_cvt(msum));
    return tri_x8_add(sum, (tri_f8r){ vsubq_f32(a.lo, m.lo), vsubq_f32(a.hi, m.hi) });
}

/* Super-block s of a Q4_K (q5 false) or Q5_K group (gb: its bytes) against T tokens: sum[t] += its results. */
TRI_X8_INLINE void tri_x8sb_k4(const uint8_t * gb, int s, const uint8_t * x, size_t xs, int T, tri_f8r * sum,
                               bool q5) {
    const size_t     qs = q5 ? TRI_X8_Q5K_QS : TRI_X8_Q4K_QS;
    const uint8x16_t m4 = vdupq_n_u8(15), x10 = vdupq_n_u8(0x10);
    uint8_t v[128];
    tri_x8_values6(gb + TRI_X8_Q4K_SLO, v);
    tri_i8r sc[8], mn[8];
    for (int j = 0; j < 8; j++) { /* v[8j + r]: scale of sub-block j of row r */
        sc[j] = tri_x8_widen(vld1_u8(v + 8 * j), false);
    }
    for (int p = 0; p < 4; p++) { /* v[64 + 16p + 2r + e]: min of sub-block 2p + e */
        tri_x8_pairs(v + 64 + 16 * p, false, &mn[2 * p], &mn[2 * p + 1]);
    }
    const tri_block_q8_K * yb[TRI_X8_TK];
    tri_i8r                isum[TRI_X8_TK];
    for (int t = 0; t < T; t++) {
        yb[t]   = (const tri_block_q8_K *) (x + (size_t) t * xs) + s;
        isum[t] = tri_i8r_zero();
    }
    for (int c = 0; c < 4; c++) { /* sub-blocks 2c (low nibbles) and 2c + 1 (high) */
        tri_i8r dlo[TRI_X8_TK], dhi[TRI_X8_TK];
        for (int t = 0; t < T; t++) {
            dlo[t] = dhi[t] = tri_i8r_zero();
        }
        for (int k = 0; k < 8; k++) {
            const uint8x16_t q0 = vld1q_u8(gb + qs + 256 * c + 32 * k);
            const uint8x16_t q1 = vld1q_u8(gb + qs + 256 * c + 32 * k + 16);
            uint8x16_t       l0 = vandq_u8(q0, m4), l1 = vandq_u8(q1, m4);
            uint8x16_t       h0 = vshrq_n_u8(q0, 4), h1 = vshrq_n_u8(q1, 4);
            if (q5) { /* the fifth bit of value 64c + 32e + l: bit 2c + e of qh byte l */
                const uint8x16_t b0 = vld1q_u8(gb + TRI_X8_Q5K_QH + 32 * k);
                const uint8x16_t b1 = vld1q_u8(gb + TRI_X8_Q5K_QH + 32 * k + 16);
                const uint8x16_t bl = vdupq_n_u8((uint8_t) (1u << (2 * c))), bh = vshlq_n_u8(bl, 1);
                l0 = vorrq_u8(l0, vandq_u8(vtstq_u8(b0, bl), x10));
                l1 = vorrq_u8(l1, vandq_u8(vtstq_u8(b1, bl), x10));
                h0 = vorrq_u8(h0, vandq_u8(vtstq_u8(b0, bh), x10));
                h1 = vorrq_u8(h1, vandq_u8(vtstq_u8(b1, bh), x10));
            }
            for (int t = 0; t < T; t++) {
                const int8_t * yq = yb[t]->qs + 64 * c + 4 * k;
                dlo[t] = tri_x8_dot(dlo[t], vreinterpretq_s8_u8(l0), vreinterpretq_s8_u8(l1), yq);
                dhi[t] = tri_x8_dot(dhi[t], vreinterpretq_s8_u8(h0), vreinterpretq_s8_u8(h1), yq + 32);
            }
        }
        for (int t = 0; t < T; t++) {
            isum[t] = tri_x8_mla(tri_x8_mla(isum[t], dlo[t], sc[2 * c]), dhi[t], sc[2 * c + 1]);
        }
    }
    const tri_f8r dw = tri_x8_h8(gb), dm = tri_x8_h8(gb + TRI_X8_Q4K_DMIN);
    for (int t = 0; t < T; t++) {
        tri_i8r msum = tri_i8r_zero();
        for (int j = 0; j < 8; j++) {
            const int32_t b32 = yb[t]->bsums[2 * j] + yb[t]->bsums[2 * j + 1];
            msum = (tri_i8r){ vmlaq_n_s32(msum.lo, mn[j].lo, b32), vmlaq_n_s32(msum.hi, mn[j].hi, b32) };
        }
        sum[t] = tri_x8_k_end(sum[t], yb[t]->d, dw, isum[t], true, dm, msum);
    }
}

/* Codes of word k of half h of a Q2_K / Q3_K / Q6_K group for the 8 rows, values 128h + 32u + 4k .. + 3 (sub-block
 * 8h + 2u + k / 4), as signed values (offset removed) in *lo (rows 0-3) and *hi (rows 4-7). */
TRI_X8_INLINE void tri_x8_k16_word(const uint8_t * gb, enum tri_type type, int h, int u, int k, int8x16_t * lo,
                                   int8x16_t * hi) {
    const uint8x16_t m3 = vdupq_n_u8(3);
    uint8x16_t       c[2];
    int              off;
    if (type == TRI_TYPE_Q6_K) { /* low 4 bits: nibble u / 2 of ql segment u % 2; high 2: bits 2u of qh */
        const uint8_t * ql = gb + TRI_X8_Q6K_QL + 512 * h + 256 * (u % 2) + 32 * k;
        const uint8_t * qh = gb + TRI_X8_Q6K_QH + 256 * h + 32 * k;
        for (int i = 0; i < 2; i++) {
            const uint8x16_t l = vld1q_u8(ql + 16 * i);
            const uint8x16_t n = u / 2 ? vshrq_n_u8(l, 4) : vandq_u8(l, vdupq_n_u8(15));
            const uint8x16_t b = vandq_u8(vshlq_u8(vld1q_u8(qh + 16 * i), vdupq_n_s8((int8_t) (-2 * u))), m3);
            c[i] = vorrq_u8(n, vshlq_n_u8(b, 4));
        }
        off = 32;
    } else { /* the 2-bit crumb u; Q3_K: the third bit from bit 4h + u of hmask byte l, and offset 4 */
        const bool      q3 = type == TRI_TYPE_Q3_K;
        const uint8_t * qs = gb + (q3 ? TRI_X8_Q3K_QS : TRI_X8_Q2K_QS) + 256 * h + 32 * k;
        for (int i = 0; i < 2; i++) {
            c[i] = vandq_u8(vshlq_u8(vld1q_u8(qs + 16 * i), vdupq_n_s8((int8_t) (-2 * u))), m3);
            if (q3) {
                const uint8x16_t hm  = vld1q_u8(gb + TRI_X8_Q3K_HM + 32 * k + 16 * i);
                const uint8x16_t bit = vdupq_n_u8((uint8_t) (1u << (4 * h + u)));
                c[i] = vorrq_u8(c[i], vandq_u8(vtstq_u8(hm, bit), vdupq_n_u8(4)));
            }
        }
        off = q3 ? 4 : 0;
    }
    *lo = vsubq_s8(vreinterpretq_s8_u8(c[0]), vdupq_n_s8((int8_t) off));
    *hi = vsubq_s8(vreinterpretq_s8_u8(c[1]), vdupq_n_s8((int8_t) off));
}

/* Super-block s of a Q2_K, Q3_K or Q6_K group (gb: its bytes) against T tokens: sum[t] += its results. */
TRI_X8_INLINE void tri_x8sb_k16(const uint8_t * gb, int s, const uint8_t * x, size_t xs, int T, tri_f8r * sum,
                                enum tri_type type) {
    const bool q2 = type == TRI_TYPE_Q2_K;
    tri_i8r    sc[16], mn[16];
    for (int p = 0; p < 8; p++) { /* sub-blocks 2p and 2p + 1, a byte per row each */
        if (type == TRI_TYPE_Q6_K) {
            tri_x8_pairs(gb + TRI_X8_Q6K_SC + 16 * p, true, &sc[2 * p], &sc[2 * p + 1]);
        } else if (q2) { /* scale | min << 4 */
            const uint8x8x2_t b = vld2_u8(gb + TRI_X8_Q2K_SC + 16 * p);
            for (int e = 0; e < 2; e++) {
                sc[2 * p + e] = tri_x8_widen(vand_u8(b.val[e], vdup_n_u8(15)), false);
                mn[2 * p + e] = tri_x8_widen(vshr_n_u8(b.val[e], 4), false);
            }
        }
    }
    if (type == TRI_TYPE_Q3_K) { /* six-bit values: scale + 32 */
        uint8_t v[128];
        tri_x8_values6(gb + TRI_X8_Q3K_SLO, v);
        for (int p = 0; p < 8; p++) {
            const uint8x8x2_t b = vld2_u8(v + 16 * p);
            for (int e = 0; e < 2; e++) {
                sc[2 * p + e] = tri_x8_widen(vreinterpret_u8_s8(vsub_s8(vreinterpret_s8_u8(b.val[e]),
                                                                         vdup_n_s8(32))), true);
            }
        }
    }
    const tri_block_q8_K * yb[TRI_X8_TK];
    tri_i8r                isum[TRI_X8_TK];
    for (int t = 0; t < T; t++) {
        yb[t]   = (const tri_block_q8_K *) (x + (size_t) t * xs) + s;
        isum[t] = tri_i8r_zero();
    }
    for (int h = 0; h < 2; h++) {
        for (int u = 0; u < 4; u++) {
            for (int kk = 0; kk < 2; kk++) { /* words 4kk .. 4kk + 3: sub-block 8h + 2u + kk */
                tri_i8r part[TRI_X8_TK];
                for (int t = 0; t < T; t++) {
                    part[t] = tri_i8r_zero();
                }
                for (int k = 4 * kk; k < 4 * kk + 4; k++) {
                    int8x16_t lo, hi;
                    tri_x8_k16_word(gb, type, h, u, k, &lo, &hi);
                    for (int t = 0; t < T; t++) {
                        part[t] = tri_x8_dot(part[t], lo, hi, yb[t]->qs + 128 * h + 32 * u + 4 * k);
                    }
                }
                for (int t = 0; t < T; t++) {
                    isum[t] = tri_x8_mla(isum[t], part[t], sc[8 * h + 2 * u + kk]);
                }
            }
        }
    }
    const tri_f8r dw = tri_x8_h8(gb);
    const tri_f8r dm = q2 ? tri_x8_h8(gb + TRI_X8_Q2K_DMIN) : dw;
    for (int t = 0; t < T; t++) {
        tri_i8r msum = tri_i8r_zero();
        for (int g = 0; q2 && g < 16; g++) {
            const int32_t b16 = yb[t]->bsums[g];
            msum = (tri_i8r){ vmlaq_n_s32(msum.lo, mn[g].lo, b16), vmlaq_n_s32(msum.hi, mn[g].hi, b16) };
        }
        sum[t] = tri_x8_k_end(sum[t], yb[t]->d, dw, isum[t], q2, dm, msum);
    }
}

/* Groups of a K type against T tokens (constant T), super-block by super-block. */
TRI_X8_INLINE void tri_x8_K_T(int n, const uint8_t * W, size_t rs, int64_t nrows, const uint8_t * x, size_t xs,
                              int T, float * y, int64_t ldy, enum tri_type type) {
    const size_t gsize = type == TRI_TYPE_Q2_K ? TRI_X8_Q2K_GROUP : type == TRI_TYPE_Q3_K ? TRI_X8_Q3K_GROUP :
                         type == TRI_TYPE_Q4_K ? TRI_X8_Q4K_GROUP : type == TRI_TYPE_Q5_K ? TRI_X8_Q5K_GROUP :
                                                                                           TRI_X8_Q6K_GROUP;
    for (int64_t r0 = 0; r0 < nrows; r0 += 8) {
        tri_f8r sum[TRI_X8_TK];
        for (int t = 0; t < T; t++) {
            sum[t] = (tri_f8r){ vdupq_n_f32(0.0f), vdupq_n_f32(0.0f) };
        }
        for (int s = 0; s < n / TRI_QK_K; s++) {
            const uint8_t * gb = W + (size_t) r0 * rs + (size_t) s * gsize;
            if (type == TRI_TYPE_Q4_K || type == TRI_TYPE_Q5_K) {
                tri_x8sb_k4(gb, s, x, xs, T, sum, type == TRI_TYPE_Q5_K);
            } else {
                tri_x8sb_k16(gb, s, x, xs, T, sum, type);
            }
        }
        for (int t = 0; t < T; t++) {
            tri_x8_store(y + t * ldy + r0, sum[t]);
        }
    }
}

/* ---- entry points: tokens TRI_X8_TK at a time, each pass with a constant token count ---- */

#define TRI_X8_PASSES(call)                                                                                         \
    for (int64_t t0 = 0; t0 < n_tok; t0 += TRI_X8_TK) {                                                            \
        const uint8_t * xt = (const uint8_t *) x + (size_t) t0 * xs;                                               \
        float *         yt = y + t0 * ldy;                                                                         \
        switch (n_tok - t0 < TRI_X8_TK ? (int) (n_tok - t0) : TRI_X8_TK) {                                         \
        case 1: call(1); break;                                                                                    \
        case 2: call(2); break;                                                                                    \
        case 3: call(3); break;                                                                                    \
        default: call(4); break;                                                                                   \
        }                                                                                                           \
    }

#define TRI_X8_KERNELS(name, call)                                                                                  \
    static void tri_gemv_x8_##name##_dotprod(int n, const void * W, size_t rs, int64_t nrows, const void * x,       \
                                             size_t xs, int64_t n_tok, float * y, int64_t ldy) {                    \
        TRI_X8_PASSES(call)                                                                                         \
    }                                                                                                               \
    /* the prefill shape: the same passes (scratch unused) */                                                       \
    static void tri_gemm_x8_##name##_dotprod(int n, const void * W, size_t rs, int64_t nrows, const void * x,       \
                                             size_t xs, int64_t n_tok, float * y, int64_t ldy, void * scratch) {    \
        (void) scratch;                                                                                             \
        tri_gemv_x8_##name##_dotprod(n, W, rs, nrows, x, xs, n_tok, y, ldy);                                       \
    }

#define TRI_X8_Q4_0(T) tri_x8_32_T(n, W, rs, nrows, xt, xs, T, yt, ldy, TRI_TYPE_Q4_0, 8)
#define TRI_X8_Q4_1(T) tri_x8_32_T(n, W, rs, nrows, xt, xs, T, yt, ldy, TRI_TYPE_Q4_1, 0)
#define TRI_X8_Q5_0(T) tri_x8_32_T(n, W, rs, nrows, xt, xs, T, yt, ldy, TRI_TYPE_Q5_0, 16)
#define TRI_X8_Q5_1(T) tri_x8_32_T(n, W, rs, nrows, xt, xs, T, yt, ldy, TRI_TYPE_Q5_1, 0)
#define TRI_X8_Q8_0(T) tri_x8_32_T(n, W, rs, nrows, xt, xs, T, yt, ldy, TRI_TYPE_Q8_0, 0)
#define TRI_X8_Q4_K(T) tri_x8_K_T(n, W, rs, nrows, xt, xs, T, yt, ldy, TRI_TYPE_Q4_K)
#define TRI_X8_Q5_K(T) tri_x8_K_T(n, W, rs, nrows, xt, xs, T, yt, ldy, TRI_TYPE_Q5_K)
#define TRI_X8_Q2_K(T) tri_x8_K_T(n, W, rs, nrows, xt, xs, T, yt, ldy, TRI_TYPE_Q2_K)
#define TRI_X8_Q3_K(T) tri_x8_K_T(n, W, rs, nrows, xt, xs, T, yt, ldy, TRI_TYPE_Q3_K)
#define TRI_X8_Q6_K(T) tri_x8_K_T(n, W, rs, nrows, xt, xs, T, yt, ldy, TRI_TYPE_Q6_K)

TRI_X8_KERNELS(q4_0, TRI_X8_Q4_0)
TRI_X8_KERNELS(q4_1, TRI_X8_Q4_1)
TRI_X8_KERNELS(q5_0, TRI_X8_Q5_0)
TRI_X8_KERNELS(q5_1, TRI_X8_Q5_1)
TRI_X8_KERNELS(q8_0, TRI_X8_Q8_0)
TRI_X8_KERNELS(q2_K, TRI_X8_Q2_K)
TRI_X8_KERNELS(q3_K, TRI_X8_Q3_K)
TRI_X8_KERNELS(q4_K, TRI_X8_Q4_K)
TRI_X8_KERNELS(q5_K, TRI_X8_Q5_K)
TRI_X8_KERNELS(q6_K, TRI_X8_Q6_K)

void tri_register_neon_x8(tri_isa_kernels * k) {
#define TRI_X8_REG(T, name)                                                                                         \
    k->gemv_x8[T] = tri_gemv_x8_##name##_dotprod;                                                                   \
    k->gemm_x8[T] = tri_gemm_x8_##name##_dotprod;
    TRI_X8_REG(TRI_TYPE_Q4_0, q4_0)
    TRI_X8_REG(TRI_TYPE_Q4_1, q4_1)
    TRI_X8_REG(TRI_TYPE_Q5_0, q5_0)
    TRI_X8_REG(TRI_TYPE_Q5_1, q5_1)
    TRI_X8_REG(TRI_TYPE_Q8_0, q8_0)
    TRI_X8_REG(TRI_TYPE_Q2_K, q2_K)
    TRI_X8_REG(TRI_TYPE_Q3_K, q3_K)
    TRI_X8_REG(TRI_TYPE_Q4_K, q4_K)
    TRI_X8_REG(TRI_TYPE_Q5_K, q5_K)
    TRI_X8_REG(TRI_TYPE_Q6_K, q6_K)
#undef TRI_X8_REG
}
