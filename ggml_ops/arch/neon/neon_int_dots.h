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

#include "../../quants.h"

/* Lane k: the total of pk. */
static inline int32x4_t TRI_NEON_FN(tri_tot4)(int32x4_t p0, int32x4_t p1, int32x4_t p2, int32x4_t p3) {
    return vpaddq_s32(vpaddq_s32(p0, p1), vpaddq_s32(p2, p3));
}

/* Four halves as floats (exact, as tri_fp16_to_fp32). */
static inline float32x4_t TRI_NEON_FN(tri_h4)(tri_fp16 a, tri_fp16 b, tri_fp16 c, tri_fp16 d) {
    const uint16_t h[4] = { a, b, c, d };
    return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(h)));
}

/* The fifth bits of a Q5 block as 0x10 bytes: lanes 0-15 from qh bits 0-15, lanes 16-31 (hi) from 16-31. */
static inline void TRI_NEON_FN(tri_q5_hbits)(const uint8_t * qh, uint8x16_t * lo, uint8x16_t * hi) {
    static const uint8_t bit[16] = { 1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128 };
    const uint8x16_t b   = vld1q_u8(bit);
    const uint8x16_t x10 = vdupq_n_u8(0x10);
    *lo = vandq_u8(vtstq_u8(vcombine_u8(vdup_n_u8(qh[0]), vdup_n_u8(qh[1])), b), x10);
    *hi = vandq_u8(vtstq_u8(vcombine_u8(vdup_n_u8(qh[2]), vdup_n_u8(qh[3])), b), x10);
}

/* ---- 32-value blocks ---- */

static inline int32x4_t TRI_NEON_FN(tri_q4_0_blk)(const tri_block_q4_0 * x, const tri_block_q8_0 * y) {
    const uint8x16_t q = vld1q_u8(x->qs);
    const int8x16_t  e = vdupq_n_s8(8);
    const int8x16_t  l = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(q, vdupq_n_u8(15))), e);
    const int8x16_t  h = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(q, 4)), e);
    return tri_dot_i8(tri_dot_i8(vdupq_n_s32(0), l, vld1q_s8(y->qs)), h, vld1q_s8(y->qs + 16));
}

static void TRI_NEON_FN(tri_vec_dot_q4_0)(int n, float * restrict s, const void * restrict vx,
                                          const void * restrict vy) {
    const tri_block_q4_0 * x = vx;
    const tri_block_q8_0 * y = vy;
    const int   nb  = n / TRI_QK8_0;
    float32x4_t acc = vdupq_n_f32(0.0f);
    int         b   = 0;
    for (; b + 4 <= nb; b += 4) {
        const int32x4_t   t  = TRI_NEON_FN(tri_tot4)(TRI_NEON_FN(tri_q4_0_blk)(x + b, y + b),
                                                     TRI_NEON_FN(tri_q4_0_blk)(x + b + 1, y + b + 1),
                                                     TRI_NEON_FN(tri_q4_0_blk)(x + b + 2, y + b + 2),
                                                     TRI_NEON_FN(tri_q4_0_blk)(x + b + 3, y + b + 3));
        const float32x4_t dx = TRI_NEON_FN(tri_h4)(x[b].d, x[b + 1].d, x[b + 2].d, x[b + 3].d);
        const float32x4_t dy = TRI_NEON_FN(tri_h4)(y[b].d, y[b + 1].d, y[b + 2].d, y[b + 3].d);
        acc = vfmaq_f32(acc, vcvtq_f32_s32(t), vmulq_f32(dx, dy));
    }
    float sum = vaddvq_f32(acc);
    for (; b < nb; b++) {
        const int t = vaddvq_s32(TRI_NEON_FN(tri_q4_0_blk)(x + b, y + b));
        sum += tri_fp16_to_fp32(x[b].d) * tri_fp16_to_fp32(y[b].d) * (float)t;
    }
    *s = sum;
}

static inline int32x4_t TRI_NEON_FN(tri_q4_1_blk)(const tri_block_q4_1 * x, const tri_block_q8_1 * y) {
    const uint8x16_t q = vld1q_u8(x->qs);
    const int8x16_t  l = vreinterpretq_s8_u8(vandq_u8(q, vdupq_n_u8(15)));
    const int8x16_t  h = vreinterpretq_s8_u8(vshrq_n_u8(q, 4));
    return tri_dot_i8(tri_dot_i8(vdupq_n_s32(0), l, vld1q_s8(y->qs)), h, vld1q_s8(y->qs + 16));
}

/* sum of d_x d_y sum(q_x q_y) + m_x s_y over the blocks */
static void TRI_NEON_FN(tri_vec_dot_q4_1)(int n, float * restrict s, const void * restrict vx,
                                          const void * restrict vy) {
    const tri_block_q4_1 * x = vx;
    const tri_block_q8_1 * y = vy;
    const int   nb  = n / TRI_QK8_1;
    float32x4_t acc = vdupq_n_f32(0.0f), accm = vdupq_n_f32(0.0f);
    int         b   = 0;
    for (; b + 4 <= nb; b += 4) {
        const int32x4_t   t  = TRI_NEON_FN(tri_tot4)(TRI_NEON_FN(tri_q4_1_blk)(x + b, y + b),
                                                     TRI_NEON_FN(tri_q4_1_blk)(x + b + 1, y + b + 1),
                                                     TRI_NEON_FN(tri_q4_1_blk)(x + b + 2, y + b + 2),
                                                     TRI_NEON_FN(tri_q4_1_blk)(x + b + 3, y + b + 3));
        const float32x4_t dx = TRI_NEON_FN(tri_h4)(x[b].d, x[b + 1].d, x[b + 2].d, x[b + 3].d);
        const float32x4_t dy = TRI_NEON_FN(tri_h4)(y[b].d, y[b + 1].d, y[b + 2].d, y[b + 3].d);
        const float32x4_t mx = TRI_NEON_FN(tri_h4)(x[b].m, x[b + 1].m, x[b + 2].m, x[b + 3].m);
        const float32x4_t sy = TRI_NEON_FN(tri_h4)(y[b].s, y[b + 1].s, y[b + 2].s, y[b + 3].s);
        acc  = vfmaq_f32(acc, vcvtq_f32_s32(t), vmulq_f32(dx, dy));
        accm = vfmaq_f32(accm, mx, sy);
    }
    float sum = vaddvq_f32(vaddq_f32(acc, accm));
    for (; b < nb; b++) {
        const int t = vaddvq_s32(TRI_NEON_FN(tri_q4_1_blk)(x + b, y + b));
        sum += tri_fp16_to_fp32(x[b].d) * tri_fp16_to_fp32(y[b].d) * (float)t
             + tri_fp16_to_fp32(x[b].m) * tri_fp16_to_fp32(y[b].s);
    }
    *s = sum;
}

static inline int32x4_t TRI_NEON_FN(tri_q5_0_blk)(const tri_block_q5_0 * x, const tri_block_q8_0 * y) {
    uint8x16_t hl, hh;
    TRI_NEON_FN(tri_q5_hbits)(x->qh, &hl, &hh);
    const uint8x16_t q = vld1q_u8(x->qs);
    const int8x16_t  e = vdupq_n_s8(16);
    const int8x16_t  l = vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(vandq_u8(q, vdupq_n_u8(15)), hl)), e);
    const int8x16_t  h = vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(vshrq_n_u8(q, 4), hh)), e);
    return tri_dot_i8(tri_dot_i8(vdupq_n_s32(0), l, vld1q_s8(y->qs)), h, vld1q_s8(y->qs + 16));
}

static void TRI_NEON_FN(tri_vec_dot_q5_0)(int n, float * restrict s, const void * restrict vx,
                                          const void * restrict vy) {
    const tri_block_q5_0 * x = vx;
    const tri_block_q8_0 * y = vy;
    const int   nb  = n / TRI_QK8_0;
    float32x4_t acc = vdupq_n_f32(0.0f);
    int         b   = 0;
    for (; b + 4 <= nb; b += 4) {
        const int32x4_t   t  = TRI_NEON_FN(tri_tot4)(TRI_NEON_FN(tri_q5_0_blk)(x + b, y + b),
                                                     TRI_NEON_FN(tri_q5_0_blk)(x + b + 1, y + b + 1),
                                                     TRI_NEON_FN(tri_q5_0_blk)(x + b + 2, y + b + 2),
                                                     TRI_NEON_FN(tri_q5_0_blk)(x + b + 3, y + b + 3));
        const float32x4_t dx = TRI_NEON_FN(tri_h4)(x[b].d, x[b + 1].d, x[b + 2].d, x[b + 3].d);
        const float32x4_t dy = TRI_NEON_FN(tri_h4)(y[b].d, y[b + 1].d, y[b + 2].d, y[b + 3].d);
        acc = vfmaq_f32(acc, vcvtq_f32_s32(t), vmulq_f32(dx, dy));
    }
    float sum = vaddvq_f32(acc);
    for (; b < nb; b++) {
        const int t = vaddvq_s32(TRI_NEON_FN(tri_q5_0_blk)(x + b, y + b));
        sum += tri_fp16_to_fp32(x[b].d) * tri_fp16_to_fp32(y[b].d) * (float)t;
    }
    *s = sum;
}

static inline int32x4_t TRI_NEON_FN(tri_q5_1_blk)(const tri_block_q5_1 * x, const tri_block_q8_1 * y) {
    uint8x16_t hl, hh;
    TRI_NEON_FN(tri_q5_hbits)(x->qh, &hl, &hh);
    const uint8x16_t q = vld1q_u8(x->qs);
    const int8x16_t  l = vreinterpretq_s8_u8(vorrq_u8(vandq_u8(q, vdupq_n_u8(15)), hl));
    const int8x16_t  h = vreinterpretq_s8_u8(vorrq_u8(vshrq_n_u8(q, 4), hh));
    return tri_dot_i8(tri_dot_i8(vdupq_n_s32(0), l, vld1q_s8(y->qs)), h, vld1q_s8(y->qs + 16));
}

static void TRI_NEON_FN(tri_vec_dot_q5_1)(int n, float * restrict s, const void * restrict vx,
                                          const void * restrict vy) {
    const tri_block_q5_1 * x = vx;
    const tri_block_q8_1 * y = vy;
    const int   nb  = n / TRI_QK8_1;
    float32x4_t acc = vdupq_n_f32(0.0f), accm = vdupq_n_f32(0.0f);
    int         b   = 0;
    for (; b + 4 <= nb; b += 4) {
        const int32x4_t   t  = TRI_NEON_FN(tri_tot4)(TRI_NEON_FN(tri_q5_1_blk)(x + b, y + b),
                                                     TRI_NEON_FN(tri_q5_1_blk)(x + b + 1, y + b + 1),
                                                     TRI_NEON_FN(tri_q5_1_blk)(x + b + 2, y + b + 2),
                                                     TRI_NEON_FN(tri_q5_1_blk)(x + b + 3, y + b + 3));
        const float32x4_t dx = TRI_NEON_FN(tri_h4)(x[b].d, x[b + 1].d, x[b + 2].d, x[b + 3].d);
        const float32x4_t dy = TRI_NEON_FN(tri_h4)(y[b].d, y[b + 1].d, y[b + 2].d, y[b + 3].d);
        const float32x4_t mx = TRI_NEON_FN(tri_h4)(x[b].m, x[b + 1].m, x[b + 2].m, x[b + 3].m);
        const float32x4_t sy = TRI_NEON_FN(tri_h4)(y[b].s, y[b + 1].s, y[b + 2].s, y[b + 3].s);
        acc  = vfmaq_f32(acc, vcvtq_f32_s32(t), vmulq_f32(dx, dy));
        accm = vfmaq_f32(accm, mx, sy);
    }
    float sum = vaddvq_f32(vaddq_f32(acc, accm));
    for (; b < nb; b++) {
        const int t = vaddvq_s32(TRI_NEON_FN(tri_q5_1_blk)(x + b, y + b));
        sum += tri_fp16_to_fp32(x[b].d) * tri_fp16_to_fp32(y[b].d) * (float)t
             + tri_fp16_to_fp32(x[b].m) * tri_fp16_to_fp32(y[b].s);
    }
    *s = sum;
}

static inline int32x4_t TRI_NEON_FN(tri_q8_0_blk)(const tri_block_q8_0 * x, const tri_block_q8_0 * y) {
    return tri_dot_i8(tri_dot_i8(vdupq_n_s32(0), vld1q_s8(x->qs), vld1q_s8(y->qs)), vld1q_s8(x->qs + 16),
                      vld1q_s8(y->qs + 16));
}

static void TRI_NEON_FN(tri_vec_dot_q8_0)(int n, float * restrict s, const void * restrict vx,
                                          const void * restrict vy) {
    const tri_block_q8_0 * x = vx;
    const tri_block_q8_0 * y = vy;
    const int   nb  = n / TRI_QK8_0;
    float32x4_t acc = vdupq_n_f32(0.0f);
    int         b   = 0;
    for (; b + 4 <= nb; b += 4) {
        const int32x4_t   t  = TRI_NEON_FN(tri_tot4)(TRI_NEON_FN(tri_q8_0_blk)(x + b, y + b),
                                                     TRI_NEON_FN(tri_q8_0_blk)(x + b + 1, y + b + 1),
                                                     TRI_NEON_FN(tri_q8_0_blk)(x + b + 2, y + b + 2),
                                                     TRI_NEON_FN(tri_q8_0_blk)(x + b + 3, y + b + 3));
        const float32x4_t dx = TRI_NEON_FN(tri_h4)(x[b].d, x[b + 1].d, x[b + 2].d, x[b + 3].d);
        const float32x4_t dy = TRI_NEON_FN(tri_h4)(y[b].d, y[b + 1].d, y[b + 2].d, y[b + 3].d);
        acc = vfmaq_f32(acc, vcvtq_f32_s32(t), vmulq_f32(dx, dy));
    }
    float sum = vaddvq_f32(acc);
    for (; b < nb; b++) {
        const int t = vaddvq_s32(TRI_NEON_FN(tri_q8_0_blk)(x + b, y + b));
        sum += tri_fp16_to_fp32(x[b].d) * tri_fp16_to_fp32(y[b].d) * (float)t;
    }
    *s = sum;
}
