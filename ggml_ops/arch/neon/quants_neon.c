/* AArch64 Advanced SIMD (ARMv8.0) kernels: vec_dot for the weight types and the activation quantizers (the
 * same bytes as the scalar references). Matrix products run the vec_dot row by row, except, on CPUs with the
 * dot product instructions, over matrices repacked to x8 (gemv_x8_dotprod.c).
 * fp-contract off: the quantizers must round x*id as the references do. */
#pragma GCC optimize("fp-contract=off")

#include <arm_neon.h>

#include "../../quants.h"
#include "../kernels.h"

/* acc + the products of 16 int8 pairs: two products per int16 lane (|sum| <= 2 * 128 * 127 < 2^15), then
 * pairwise into the int32 lanes. */
static inline int32x4_t tri_dot_i8(int32x4_t acc, int8x16_t a, int8x16_t b) {
    int16x8_t p = vmull_s8(vget_low_s8(a), vget_low_s8(b));
    p = vmlal_high_s8(p, a, b);
    return vpadalq_s16(acc, p);
}

#define TRI_NEON_FN(name) name##_neon
#include "neon_int_dots.h"

/* ---- float dots (F32, F16, BF16 against F32): 16 products per step in four accumulators ---- */

/* Four values from element i on, and one value, as floats (exact) */
static inline float32x4_t tri_f32x4(const void * p, int i) {
    return vld1q_f32((const float *)p + i);
}
static inline float32x4_t tri_f16x4(const void * p, int i) {
    return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16((const tri_fp16 *)p + i)));
}
static inline float32x4_t tri_bf16x4(const void * p, int i) {
    return vreinterpretq_f32_u32(vshll_n_u16(vld1_u16((const tri_bf16 *)p + i), 16));
}
static inline float tri_f32x1(const void * p, int i) {
    return ((const float *)p)[i];
}
static inline float tri_f16x1(const void * p, int i) {
    return tri_fp16_to_fp32(((const tri_fp16 *)p)[i]);
}
static inline float tri_bf16x1(const void * p, int i) {
    return tri_bf16_to_fp32(((const tri_bf16 *)p)[i]);
}

/* dot(x, y) with x read by lx / sx and y by ly / sy (four values / one value at element i) */
static inline __attribute__((always_inline)) float tri_fdot_neon(int n, const void * x, const void * y,
                                                                   float32x4_t (*lx)(const void *, int),
                                                                   float32x4_t (*ly)(const void *, int),
                                                                   float (*sx)(const void *, int),
                                                                   float (*sy)(const void *, int)) {
    float32x4_t a0 = vdupq_n_f32(0.0f), a1 = a0, a2 = a0, a3 = a0;
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        a0 = vfmaq_f32(a0, lx(x, i), ly(y, i));
        a1 = vfmaq_f32(a1, lx(x, i + 4), ly(y, i + 4));
        a2 = vfmaq_f32(a2, lx(x, i + 8), ly(y, i + 8));
        a3 = vfmaq_f32(a3, lx(x, i + 12), ly(y, i + 12));
    }
    for (; i + 4 <= n; i += 4) {
        a0 = vfmaq_f32(a0, lx(x, i), ly(y, i));
    }
    float sum = vaddvq_f32(vaddq_f32(vaddq_f32(a0, a1), vaddq_f32(a2, a3)));
    for (; i < n; i++) {
        sum += sx(x, i) * sy(y, i);
    }
    return sum;
}

static void tri_vec_dot_f32_neon(int n, float * restrict s, const void * restrict vx, const void * restrict vy) {
    *s = tri_fdot_neon(n, vx, vy, tri_f32x4, tri_f32x4, tri_f32x1, tri_f32x1);
}

static void tri_vec_dot_f16_neon(int n, float * restrict s, const void * restrict vx, const void * restrict vy) {
    *s = tri_fdot_neon(n, vx, vy, tri_f16x4, tri_f16x4, tri_f16x1, tri_f16x1);
}

static void tri_vec_dot_bf16_neon(int n, float * restrict s, const void * restrict vx, const void * restrict vy) {
    *s = tri_fdot_neon(n, vx, vy, tri_bf16x4, tri_f32x4, tri_bf16x1, tri_f32x1);
}

/* ---- activation quantizers: the references' arithmetic, lane by lane ---- */

/* max |x_i| over n (a multiple of 16) values; NaN ignored, as the reference's comparisons do */
static inline float tri_absmax_neon(const float * x, int n) {
    float32x4_t m0 = vdupq_n_f32(0.0f), m1 = m0, m2 = m0, m3 = m0;
    for (int i = 0; i < n; i += 16) {
        m0 = vmaxnmq_f32(m0, vabsq_f32(vld1q_f32(x + i)));
        m1 = vmaxnmq_f32(m1, vabsq_f32(vld1q_f32(x + i + 4)));
        m2 = vmaxnmq_f32(m2, vabsq_f32(vld1q_f32(x + i + 8)));
        m3 = vmaxnmq_f32(m3, vabsq_f32(vld1q_f32(x + i + 12)));
    }
    return vmaxnmvq_f32(vmaxnmq_f32(vmaxnmq_f32(m0, m1), vmaxnmq_f32(m2, m3)));
}

/* 16 codes roundf(x_i * id) clamped to [-127, 127] (FCVTAS rounds halves away from zero, as roundf) */
static inline int8x16_t tri_round16_neon(const float * x, float id) {
    const int32x4_t a = vcvtaq_s32_f32(vmulq_n_f32(vld1q_f32(x), id));
    const int32x4_t b = vcvtaq_s32_f32(vmulq_n_f32(vld1q_f32(x + 4), id));
    const int32x4_t c = vcvtaq_s32_f32(vmulq_n_f32(vld1q_f32(x + 8), id));
    const int32x4_t d = vcvtaq_s32_f32(vmulq_n_f32(vld1q_f32(x + 12), id));
    const int8x16_t q = vcombine_s8(vqmovn_s16(vcombine_s16(vqmovn_s32(a), vqmovn_s32(b))),
                                    vqmovn_s16(vcombine_s16(vqmovn_s32(c), vqmovn_s32(d))));
    return vmaxq_s8(q, vdupq_n_s8(-127));
}

/* d = amax / 127 and its inverse (0 for an all-zero block), as the references compute them */
static inline float tri_q8_scale_neon(const float * x, int n, float * id) {
    const float d = tri_absmax_neon(x, n) / 127.0f;
    *id = d != 0.0f ? 1.0f / d : 0.0f;
    return d;
}

static void tri_quantize_q8_0_neon(const float * restrict x, void * restrict vy, int64_t k) {
    tri_block_q8_0 * y = vy;
    for (int64_t b = 0; b < k / TRI_QK8_0; b++, x += TRI_QK8_0) {
        float id;
        y[b].d = tri_fp32_to_fp16(tri_q8_scale_neon(x, TRI_QK8_0, &id));
        vst1q_s8(y[b].qs, tri_round16_neon(x, id));
        vst1q_s8(y[b].qs + 16, tri_round16_neon(x + 16, id));
    }
}

static void tri_quantize_q8_1_neon(const float * restrict x, void * restrict vy, int64_t k) {
    tri_block_q8_1 * y = vy;
    for (int64_t b = 0; b < k / TRI_QK8_1; b++, x += TRI_QK8_1) {
        float id;
        const float    d  = tri_q8_scale_neon(x, TRI_QK8_1, &id);
        const int8x16_t q0 = tri_round16_neon(x, id), q1 = tri_round16_neon(x + 16, id);
        vst1q_s8(y[b].qs, q0);
        vst1q_s8(y[b].qs + 16, q1);
        const int sum = vaddlvq_s8(q0) + vaddlvq_s8(q1);
        y[b].d = tri_fp32_to_fp16(d);
        y[b].s = tri_fp32_to_fp16(d * (float)sum);
    }
}

static void tri_quantize_q8_K_neon(const float * restrict x, void * restrict vy, int64_t k) {
    tri_block_q8_K * y = vy;
    for (int64_t b = 0; b < k / TRI_QK_K; b++, x += TRI_QK_K) {
        float id;
        y[b].d = tri_q8_scale_neon(x, TRI_QK_K, &id);
        for (int g = 0; g < TRI_QK_K / 16; g++) {
            const int8x16_t q = tri_round16_neon(x + 16 * g, id);
            vst1q_s8(y[b].qs + 16 * g, q);
            y[b].bsums[g] = vaddlvq_s8(q);
        }
    }
}

/* FCVTN rounds to nearest even with IEEE overflow and subnormals, as tri_fp32_to_fp16 */
static void tri_quantize_f16_neon(const float * restrict x, void * restrict vy, int64_t k) {
    tri_fp16 * y = vy;
    int64_t    i = 0;
    for (; i + 8 <= k; i += 8) {
        const float16x8_t h = vcvt_high_f16_f32(vcvt_f16_f32(vld1q_f32(x + i)), vld1q_f32(x + i + 4));
        vst1q_u16(y + i, vreinterpretq_u16_f16(h));
    }
    for (; i < k; i++) {
        y[i] = tri_fp32_to_fp16(x[i]);
    }
}

void tri_register_neon(tri_isa_kernels * k) {
    k->vec_dot[TRI_TYPE_F32]  = tri_vec_dot_f32_neon;
    k->vec_dot[TRI_TYPE_F16]  = tri_vec_dot_f16_neon;
    k->vec_dot[TRI_TYPE_BF16] = tri_vec_dot_bf16_neon;
    k->vec_dot[TRI_TYPE_Q4_0] = tri_vec_dot_q4_0_neon;
    k->vec_dot[TRI_TYPE_Q4_1] = tri_vec_dot_q4_1_neon;
    k->vec_dot[TRI_TYPE_Q5_0] = tri_vec_dot_q5_0_neon;
    k->vec_dot[TRI_TYPE_Q5_1] = tri_vec_dot_q5_1_neon;
    k->vec_dot[TRI_TYPE_Q8_0] = tri_vec_dot_q8_0_neon;
    k->vec_dot[TRI_TYPE_Q2_K] = tri_vec_dot_q2_K_neon;
    k->vec_dot[TRI_TYPE_Q3_K] = tri_vec_dot_q3_K_neon;
    k->vec_dot[TRI_TYPE_Q4_K] = tri_vec_dot_q4_K_neon;
    k->vec_dot[TRI_TYPE_Q5_K] = tri_vec_dot_q5_K_neon;
    k->vec_dot[TRI_TYPE_Q6_K] = tri_vec_dot_q6_K_neon;

    k->quantize[TRI_TYPE_Q8_0] = tri_quantize_q8_0_neon;
    k->quantize[TRI_TYPE_Q8_1] = tri_quantize_q8_1_neon;
    k->quantize[TRI_TYPE_Q8_K] = tri_quantize_q8_K_neon;
    k->quantize[TRI_TYPE_F16]  = tri_quantize_f16_neon;
}
