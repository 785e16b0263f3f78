/* Integer vec_dot kernels over Advanced SIMD, written once and compiled twice: by quants_neon.c on the
 * ARMv8.0 baseline and by quants_neon_dotprod.c with the dot product instructions. The includer defines
 *
 *   tri_dot_i8(acc, a, b)  int32x4_t: acc plus the 16 products a[i] * b[i] of int8 lanes, spread over the
 *                          four lanes in any way (only lane totals are read); |a[i] * b[i]| <= 128 * 127;
 *   TRI_NEON_FN(name)      the name a kernel gets in that file.
 *
 * Every kernel sums the integer products of a block or sub-block exactly and reduces lanes before any
 * float arithmetic, so both builds give the same bits. Blocks of 32 go four at a time: the four block
 * totals become the lanes of one vector, scaled by the four block scales. */
#ifndef TRI_NEON_FN
#  error "define TRI_NEON_FN and tri_dot_i8 before including neon_int_dots.h"
#endif

#include <arm_neon.h>
#include <stdbool.h>
#include <stddef.h>
#include <string.h>

#include "../../quants.h"

/* The fifth bits of a Q5 block as 0x10 bytes: lanes 0-15 from qh bits 0-15, lanes 16-31 (hi) from 16-31. */
static inline void TRI_NEON_FN(tri_q5_hbits)(const uint8_t * qh, uint8x16_t * lo, uint8x16_t * hi) {
    static const uint8_t bit[16] = { 1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128 };
    const uint8x16_t b   = vld1q_u8(bit);
    const uint8x16_t x10 = vdupq_n_u8(0x10);
    *lo = vandq_u8(vtstq_u8(vcombine_u8(vdup_n_u8(qh[0]), vdup_n_u8(qh[1])), b), x10);
    *hi = vandq_u8(vtstq_u8(vcombine_u8(vdup_n_u8(qh[2]), vdup_n_u8(qh[3])), b), x10);
}

/* ---- 32-value blocks ---- */

/* The blocks' halves read by byte offset: d first in every block, then m (Q4_1, Q5_1) or s (Q8_1). */
_Static_assert(offsetof(tri_block_q4_0, d) == 0 && offsetof(tri_block_q4_1, d) == 0 &&
               offsetof(tri_block_q5_0, d) == 0 && offsetof(tri_block_q5_1, d) == 0 &&
               offsetof(tri_block_q8_0, d) == 0 && offsetof(tri_block_q8_1, d) == 0, "d first");
_Static_assert(offsetof(tri_block_q4_1, m) == 2 && offsetof(tri_block_q5_1, m) == 2 &&
               offsetof(tri_block_q8_1, s) == 2, "m and s second");

static inline float TRI_NEON_FN(tri_half_at)(const uint8_t * p) {
    tri_fp16 h;
    memcpy(&h, p, sizeof h);
    return tri_fp16_to_fp32(h);
}

/* The halves at byte p, p + stride, p + 2 stride, p + 3 stride as floats (exact). */
static inline float32x4_t TRI_NEON_FN(tri_h4)(const uint8_t * p, size_t stride) {
    uint16_t h[4];
    for (int i = 0; i < 4; i++) {
        memcpy(&h[i], p + i * stride, sizeof h[i]);
    }
    return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(h)));
}

/* sum over nb blocks of d_x d_y t (t: a block's integer dot, the lane total of blk), plus m_x s_y when mins:
 * four blocks a step, their four totals the lanes of one vector against their four scales. bx, by: block
 * sizes in bytes. */
static inline __attribute__((always_inline)) float TRI_NEON_FN(tri_dot_blocks)(
    int nb, const uint8_t * x, size_t bx, const uint8_t * y, size_t by, bool mins,
    int32x4_t (*blk)(const void *, const void *)) {
    float32x4_t acc = vdupq_n_f32(0.0f), accm = vdupq_n_f32(0.0f);
    int         b   = 0;
    for (; b + 4 <= nb; b += 4) {
        const uint8_t * xb = x + b * bx;
        const uint8_t * yb = y + b * by;
        const int32x4_t t  = vpaddq_s32(vpaddq_s32(blk(xb, yb), blk(xb + bx, yb + by)),
                                        vpaddq_s32(blk(xb + 2 * bx, yb + 2 * by), blk(xb + 3 * bx, yb + 3 * by)));
        acc = vfmaq_f32(acc, vcvtq_f32_s32(t), vmulq_f32(TRI_NEON_FN(tri_h4)(xb, bx), TRI_NEON_FN(tri_h4)(yb, by)));
        if (mins) {
            accm = vfmaq_f32(accm, TRI_NEON_FN(tri_h4)(xb + 2, bx), TRI_NEON_FN(tri_h4)(yb + 2, by));
        }
    }
    float sum = mins ? vaddvq_f32(vaddq_f32(acc, accm)) : vaddvq_f32(acc);
    for (; b < nb; b++) {
        const uint8_t * xb = x + b * bx;
        const uint8_t * yb = y + b * by;
        const float     v  = TRI_NEON_FN(tri_half_at)(xb) * TRI_NEON_FN(tri_half_at)(yb) *
                             (float)vaddvq_s32(blk(xb, yb));
        sum += mins ? v + TRI_NEON_FN(tri_half_at)(xb + 2) * TRI_NEON_FN(tri_half_at)(yb + 2) : v;
    }
    return sum;
}

/* One block's 32 codes (two vectors of 16) against the activations' 32 */
static inline int32x4_t TRI_NEON_FN(tri_blk32)(int8x16_t l, int8x16_t h, const int8_t * y) {
    return tri_dot_i8(tri_dot_i8(vdupq_n_s32(0), l, vld1q_s8(y)), h, vld1q_s8(y + 16));
}

static inline int32x4_t TRI_NEON_FN(tri_q4_0_blk)(const void * vx, const void * vy) {
    const tri_block_q4_0 * x = vx;
    const uint8x16_t       q = vld1q_u8(x->qs);
    const int8x16_t        e = vdupq_n_s8(8);
    const int8x16_t        l = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(q, vdupq_n_u8(15))), e);
    const int8x16_t        h = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(q, 4)), e);
    return TRI_NEON_FN(tri_blk32)(l, h, ((const tri_block_q8_0 *)vy)->qs);
}

static inline int32x4_t TRI_NEON_FN(tri_q4_1_blk)(const void * vx, const void * vy) {
    const tri_block_q4_1 * x = vx;
    const uint8x16_t       q = vld1q_u8(x->qs);
    const int8x16_t        l = vreinterpretq_s8_u8(vandq_u8(q, vdupq_n_u8(15)));
    const int8x16_t        h = vreinterpretq_s8_u8(vshrq_n_u8(q, 4));
    return TRI_NEON_FN(tri_blk32)(l, h, ((const tri_block_q8_1 *)vy)->qs);
}

static inline int32x4_t TRI_NEON_FN(tri_q5_0_blk)(const void * vx, const void * vy) {
    const tri_block_q5_0 * x = vx;
    uint8x16_t             hl, hh;
    TRI_NEON_FN(tri_q5_hbits)(x->qh, &hl, &hh);
    const uint8x16_t q = vld1q_u8(x->qs);
    const int8x16_t  e = vdupq_n_s8(16);
    const int8x16_t  l = vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(vandq_u8(q, vdupq_n_u8(15)), hl)), e);
    const int8x16_t  h = vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(vshrq_n_u8(q, 4), hh)), e);
    return TRI_NEON_FN(tri_blk32)(l, h, ((const tri_block_q8_0 *)vy)->qs);
}

static inline int32x4_t TRI_NEON_FN(tri_q5_1_blk)(const void * vx, const void * vy) {
    const tri_block_q5_1 * x = vx;
    uint8x16_t             hl, hh;
    TRI_NEON_FN(tri_q5_hbits)(x->qh, &hl, &hh);
    const uint8x16_t q = vld1q_u8(x->qs);
    const int8x16_t  l = vreinterpretq_s8_u8(vorrq_u8(vandq_u8(q, vdupq_n_u8(15)), hl));
    const int8x16_t  h = vreinterpretq_s8_u8(vorrq_u8(vshrq_n_u8(q, 4), hh));
    return TRI_NEON_FN(tri_blk32)(l, h, ((const tri_block_q8_1 *)vy)->qs);
}

static inline int32x4_t TRI_NEON_FN(tri_q8_0_blk)(const void * vx, const void * vy) {
    const tri_block_q8_0 * x = vx;
    return TRI_NEON_FN(tri_blk32)(vld1q_s8(x->qs), vld1q_s8(x->qs + 16), ((const tri_block_q8_0 *)vy)->qs);
}

/* Each type's vec_dot: its block kernel over the blocks, with the minimum term for the Q_1 pairs. */
#define TRI_NEON_DOT_BLOCKS(type, xb, yb, mins)                                                                  \
    static void TRI_NEON_FN(tri_vec_dot_##type)(int n, float * restrict s, const void * restrict vx,            \
                                                const void * restrict vy) {                                      \
        *s = TRI_NEON_FN(tri_dot_blocks)(n / TRI_QK8_0, vx, sizeof(xb), vy, sizeof(yb), mins,                           \
                                         TRI_NEON_FN(tri_##type##_blk));                                         \
    }
TRI_NEON_DOT_BLOCKS(q4_0, tri_block_q4_0, tri_block_q8_0, false)
TRI_NEON_DOT_BLOCKS(q4_1, tri_block_q4_1, tri_block_q8_1, true)
TRI_NEON_DOT_BLOCKS(q5_0, tri_block_q5_0, tri_block_q8_0, false)
TRI_NEON_DOT_BLOCKS(q5_1, tri_block_q5_1, tri_block_q8_1, true)
TRI_NEON_DOT_BLOCKS(q8_0, tri_block_q8_0, tri_block_q8_0, false)
#undef TRI_NEON_DOT_BLOCKS

/* ---- K-quants against Q8_K: per super-block an exact integer sum (sub-block dots times their scales),
 * then the reference's float expression ---- */

/* sum_j mn[j] * (bsums[2j] + bsums[2j + 1]): the 6-bit mins of 8 sub-blocks of 32 against y's sums */
static inline int TRI_NEON_FN(tri_k_mins32)(const int16_t * bsums, const uint8_t * mn) {
    const int16x8_t bs = vpaddq_s16(vld1q_s16(bsums), vld1q_s16(bsums + 8));
    const int16x8_t m  = vreinterpretq_s16_u16(vmovl_u8(vld1_u8(mn)));
    return vaddvq_s32(vmlal_high_s16(vmull_s16(vget_low_s16(bs), vget_low_s16(m)), bs, m));
}

/* 32 codes (two vectors) against 32 activations */
static inline int32x4_t TRI_NEON_FN(tri_dot32)(uint8x16_t a, uint8x16_t b, const int8_t * y) {
    return tri_dot_i8(tri_dot_i8(vdupq_n_s32(0), vreinterpretq_s8_u8(a), vld1q_s8(y)), vreinterpretq_s8_u8(b),
                      vld1q_s8(y + 16));
}

/* 16 codes against 16 activations */
static inline int32x4_t TRI_NEON_FN(tri_dot16)(int8x16_t a, const int8_t * y) {
    return tri_dot_i8(vdupq_n_s32(0), a, vld1q_s8(y));
}

static void TRI_NEON_FN(tri_vec_dot_q4_K)(int n, float * restrict s, const void * restrict vx,
                                          const void * restrict vy) {
    const tri_block_q4_K * x  = vx;
    const tri_block_q8_K * y  = vy;
    const uint8x16_t       m4 = vdupq_n_u8(15);
    float                  sum = 0.0f;
    for (int b = 0; b < n / TRI_QK_K; b++) {
        uint8_t sc[8], mn[8];
        for (int j = 0; j < 8; j++) {
            tri_get_scale_min_k4(j, x[b].scales, &sc[j], &mn[j]);
        }
        int32x4_t       acc = vdupq_n_s32(0);
        const uint8_t * q   = x[b].qs;
        const int8_t *  yq  = y[b].qs;
        for (int c = 0; c < 4; c++, q += 32, yq += 64) { /* sub-blocks 2c (low nibbles) and 2c + 1 (high) */
            const uint8x16_t q0 = vld1q_u8(q), q1 = vld1q_u8(q + 16);
            acc = vmlaq_n_s32(acc, TRI_NEON_FN(tri_dot32)(vandq_u8(q0, m4), vandq_u8(q1, m4), yq), sc[2 * c]);
            acc = vmlaq_n_s32(acc, TRI_NEON_FN(tri_dot32)(vshrq_n_u8(q0, 4), vshrq_n_u8(q1, 4), yq + 32),
                              sc[2 * c + 1]);
        }
        const int isum = vaddvq_s32(acc);
        const int msum = TRI_NEON_FN(tri_k_mins32)(y[b].bsums, mn);
        sum += y[b].d * tri_fp16_to_fp32(x[b].d) * (float)isum - y[b].d * tri_fp16_to_fp32(x[b].dmin) * (float)msum;
    }
    *s = sum;
}

static void TRI_NEON_FN(tri_vec_dot_q5_K)(int n, float * restrict s, const void * restrict vx,
                                          const void * restrict vy) {
    const tri_block_q5_K * x   = vx;
    const tri_block_q8_K * y   = vy;
    const uint8x16_t       m4  = vdupq_n_u8(15);
    const uint8x16_t       x10 = vdupq_n_u8(0x10);
    float                  sum = 0.0f;
    for (int b = 0; b < n / TRI_QK_K; b++) {
        uint8_t sc[8], mn[8];
        for (int j = 0; j < 8; j++) {
            tri_get_scale_min_k4(j, x[b].scales, &sc[j], &mn[j]);
        }
        const uint8x16_t h0  = vld1q_u8(x[b].qh), h1 = vld1q_u8(x[b].qh + 16);
        int32x4_t        acc = vdupq_n_s32(0);
        const uint8_t *  q   = x[b].qs;
        const int8_t *   yq  = y[b].qs;
        for (int c = 0; c < 4; c++, q += 32, yq += 64) { /* sub-block j takes bit j of qh as its fifth bit */
            const uint8x16_t q0 = vld1q_u8(q), q1 = vld1q_u8(q + 16);
            const uint8x16_t bl = vdupq_n_u8((uint8_t)(1u << (2 * c))), bh = vdupq_n_u8((uint8_t)(2u << (2 * c)));
            const uint8x16_t l0 = vorrq_u8(vandq_u8(q0, m4), vandq_u8(vtstq_u8(h0, bl), x10));
            const uint8x16_t l1 = vorrq_u8(vandq_u8(q1, m4), vandq_u8(vtstq_u8(h1, bl), x10));
            const uint8x16_t u0 = vorrq_u8(vshrq_n_u8(q0, 4), vandq_u8(vtstq_u8(h0, bh), x10));
            const uint8x16_t u1 = vorrq_u8(vshrq_n_u8(q1, 4), vandq_u8(vtstq_u8(h1, bh), x10));
            acc = vmlaq_n_s32(acc, TRI_NEON_FN(tri_dot32)(l0, l1, yq), sc[2 * c]);
            acc = vmlaq_n_s32(acc, TRI_NEON_FN(tri_dot32)(u0, u1, yq + 32), sc[2 * c + 1]);
        }
        const int isum = vaddvq_s32(acc);
        const int msum = TRI_NEON_FN(tri_k_mins32)(y[b].bsums, mn);
        sum += y[b].d * tri_fp16_to_fp32(x[b].d) * (float)isum - y[b].d * tri_fp16_to_fp32(x[b].dmin) * (float)msum;
    }
    *s = sum;
}

/* Q6_K: codes of 6 bits minus 32, 16 sub-blocks of 16 with signed 8-bit scales */
static void TRI_NEON_FN(tri_vec_dot_q6_K)(int n, float * restrict s, const void * restrict vx,
                                          const void * restrict vy) {
    const tri_block_q6_K * x   = vx;
    const tri_block_q8_K * y   = vy;
    const uint8x16_t       m4  = vdupq_n_u8(15);
    const uint8x16_t       m30 = vdupq_n_u8(0x30);
    const int8x16_t        o32 = vdupq_n_s8(32);
    float                  sum = 0.0f;
    for (int b = 0; b < n / TRI_QK_K; b++) {
        int32x4_t acc = vdupq_n_s32(0);
        for (int h = 0; h < 2; h++) {
            const uint8_t * ql = x[b].ql + 64 * h;
            const uint8_t * qh = x[b].qh + 32 * h;
            const int8_t *  sc = x[b].scales + 8 * h;
            const int8_t *  yq = y[b].qs + 128 * h;
            const uint8x16_t l0 = vld1q_u8(ql), l1 = vld1q_u8(ql + 16), l2 = vld1q_u8(ql + 32), l3 = vld1q_u8(ql + 48);
            const uint8x16_t h0 = vld1q_u8(qh), h1 = vld1q_u8(qh + 16);
            /* value r: low 4 bits from ql[r % 64] (nibble r / 64), high 2 bits from qh[r % 32] (pair r / 32) */
            const uint8x16_t v[8] = {
                vorrq_u8(vandq_u8(l0, m4), vandq_u8(vshlq_n_u8(h0, 4), m30)),
                vorrq_u8(vandq_u8(l1, m4), vandq_u8(vshlq_n_u8(h1, 4), m30)),
                vorrq_u8(vandq_u8(l2, m4), vandq_u8(vshlq_n_u8(h0, 2), m30)),
                vorrq_u8(vandq_u8(l3, m4), vandq_u8(vshlq_n_u8(h1, 2), m30)),
                vorrq_u8(vshrq_n_u8(l0, 4), vandq_u8(h0, m30)),
                vorrq_u8(vshrq_n_u8(l1, 4), vandq_u8(h1, m30)),
                vorrq_u8(vshrq_n_u8(l2, 4), vandq_u8(vshrq_n_u8(h0, 2), m30)),
                vorrq_u8(vshrq_n_u8(l3, 4), vandq_u8(vshrq_n_u8(h1, 2), m30)),
            };
            for (int g = 0; g < 8; g++) {
                const int8x16_t c = vsubq_s8(vreinterpretq_s8_u8(v[g]), o32);
                acc = vmlaq_n_s32(acc, TRI_NEON_FN(tri_dot16)(c, yq + 16 * g), sc[g]);
            }
        }
        sum += y[b].d * tri_fp16_to_fp32(x[b].d) * (float)vaddvq_s32(acc);
    }
    *s = sum;
}

/* The 2-bit codes of Q2_K/Q3_K: for value i = 128h + 32k + l, bits 2k of qs[32h + l]. */
static inline uint8x16_t TRI_NEON_FN(tri_crumbs)(uint8x16_t q, int k) {
    return vandq_u8(vshlq_u8(q, vdupq_n_s8((int8_t)(-2 * k))), vdupq_n_u8(3));
}

static void TRI_NEON_FN(tri_vec_dot_q2_K)(int n, float * restrict s, const void * restrict vx,
                                          const void * restrict vy) {
    const tri_block_q2_K * x   = vx;
    const tri_block_q8_K * y   = vy;
    float                  sum = 0.0f;
    for (int b = 0; b < n / TRI_QK_K; b++) {
        /* mins: the high nibbles of the 16 scales against y's sums of 16 */
        const uint8x16_t sc = vld1q_u8(x[b].scales);
        const int16x8_t  m0 = vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(vshrq_n_u8(sc, 4))));
        const int16x8_t  m1 = vreinterpretq_s16_u16(vmovl_high_u8(vshrq_n_u8(sc, 4)));
        const int16x8_t  b0 = vld1q_s16(y[b].bsums), b1 = vld1q_s16(y[b].bsums + 8);
        int32x4_t        mm = vmull_s16(vget_low_s16(b0), vget_low_s16(m0));
        mm = vmlal_high_s16(mm, b0, m0);
        mm = vmlal_s16(mm, vget_low_s16(b1), vget_low_s16(m1));
        mm = vmlal_high_s16(mm, b1, m1);
        int32x4_t acc = vdupq_n_s32(0);
        for (int h = 0; h < 2; h++) {
            const uint8x16_t q0 = vld1q_u8(x[b].qs + 32 * h), q1 = vld1q_u8(x[b].qs + 32 * h + 16);
            const int8_t *   yq = y[b].qs + 128 * h;
            for (int k = 0; k < 4; k++) { /* sub-blocks g, g + 1 of 16 values */
                const int g = 8 * h + 2 * k;
                const int8x16_t a = vreinterpretq_s8_u8(TRI_NEON_FN(tri_crumbs)(q0, k));
                const int8x16_t c = vreinterpretq_s8_u8(TRI_NEON_FN(tri_crumbs)(q1, k));
                acc = vmlaq_n_s32(acc, TRI_NEON_FN(tri_dot16)(a, yq + 32 * k), x[b].scales[g] & 15);
                acc = vmlaq_n_s32(acc, TRI_NEON_FN(tri_dot16)(c, yq + 32 * k + 16), x[b].scales[g + 1] & 15);
            }
        }
        const int isum = vaddvq_s32(acc), msum = vaddvq_s32(mm);
        sum += y[b].d * tri_fp16_to_fp32(x[b].d) * (float)isum - y[b].d * tri_fp16_to_fp32(x[b].dmin) * (float)msum;
    }
    *s = sum;
}

static void TRI_NEON_FN(tri_vec_dot_q3_K)(int n, float * restrict s, const void * restrict vx,
                                          const void * restrict vy) {
    const tri_block_q3_K * x   = vx;
    const tri_block_q8_K * y   = vy;
    const int8x16_t        o4  = vdupq_n_s8(4);
    const uint8x16_t       x04 = vdupq_n_u8(4);
    float                  sum = 0.0f;
    for (int b = 0; b < n / TRI_QK_K; b++) {
        int8_t sc[16];
        tri_q3_K_scales(x[b].scales, sc);
        const uint8x16_t m0  = vld1q_u8(x[b].hmask), m1 = vld1q_u8(x[b].hmask + 16);
        int32x4_t        acc = vdupq_n_s32(0);
        for (int h = 0; h < 2; h++) {
            const uint8x16_t q0 = vld1q_u8(x[b].qs + 32 * h), q1 = vld1q_u8(x[b].qs + 32 * h + 16);
            const int8_t *   yq = y[b].qs + 128 * h;
            for (int k = 0; k < 4; k++) { /* value q2 + 4 * hbit - 4, hbit = bit 4h + k of hmask[l] */
                const int        g   = 8 * h + 2 * k;
                const uint8x16_t bit = vdupq_n_u8((uint8_t)(1u << (4 * h + k)));
                const uint8x16_t a   = vorrq_u8(TRI_NEON_FN(tri_crumbs)(q0, k), vandq_u8(vtstq_u8(m0, bit), x04));
                const uint8x16_t c   = vorrq_u8(TRI_NEON_FN(tri_crumbs)(q1, k), vandq_u8(vtstq_u8(m1, bit), x04));
                acc = vmlaq_n_s32(acc, TRI_NEON_FN(tri_dot16)(vsubq_s8(vreinterpretq_s8_u8(a), o4), yq + 32 * k), sc[g]);
                acc = vmlaq_n_s32(acc, TRI_NEON_FN(tri_dot16)(vsubq_s8(vreinterpretq_s8_u8(c), o4), yq + 32 * k + 16),
                                  sc[g + 1]);
            }
        }
        sum += y[b].d * tri_fp16_to_fp32(x[b].d) * (float)vaddvq_s32(acc);
    }
    *s = sum;
}
