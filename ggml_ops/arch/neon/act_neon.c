/* AArch64 Advanced SIMD exponentials: the softmax's exp_sum and the gated activations act(g) * u, with
 * act(v) = v / (1 + exp(-z)), z = v (SiLU) or z = 2 sqrt(2/pi) (v + 0.044715 v^3) (GELU in its tanh form:
 * 0.5 v (1 + tanh(z/2)) = v / (1 + exp(-z))). Every element goes through the same vector code (a tail
 * through a zero-padded vector), so a value's result does not depend on its position or on n. */
#include <arm_neon.h>

#include "../ops_kernels.h"

/* exp(x) for x in [-87, 88] (arguments are clamped there; below -87 the result is 0): x = n ln2 + r with
 * |r| <= ln2 / 2 (ln2 in two parts, so r is exact to float precision), exp(r) by its Taylor series to r^7
 * (truncation < 1e-8 relative), times 2^n built in the exponent field. Relative error ~2e-7. */
static inline float32x4_t tri_exp4(float32x4_t x) {
    const uint32x4_t  under = vcltq_f32(x, vdupq_n_f32(-87.0f));
    x = vminq_f32(vmaxq_f32(x, vdupq_n_f32(-87.0f)), vdupq_n_f32(88.0f));
    const float32x4_t n = vrndnq_f32(vmulq_n_f32(x, 1.44269504088896341f)); /* round(x / ln2) */
    float32x4_t       r = vfmsq_f32(x, n, vdupq_n_f32(0.693145751953125f)); /* ln2, high bits (exact n * hi) */
    r = vfmsq_f32(r, n, vdupq_n_f32(1.428606765330187e-6f));                /* ln2, the rest */
    float32x4_t p = vdupq_n_f32(1.0f / 5040.0f);
    p = vfmaq_f32(vdupq_n_f32(1.0f / 720.0f), p, r);
    p = vfmaq_f32(vdupq_n_f32(1.0f / 120.0f), p, r);
    p = vfmaq_f32(vdupq_n_f32(1.0f / 24.0f), p, r);
    p = vfmaq_f32(vdupq_n_f32(1.0f / 6.0f), p, r);
    p = vfmaq_f32(vdupq_n_f32(0.5f), p, r);
    p = vfmaq_f32(vdupq_n_f32(1.0f), p, r);
    p = vfmaq_f32(vdupq_n_f32(1.0f), p, r);
    const int32x4_t e = vshlq_n_s32(vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127)), 23);
    const float32x4_t y = vmulq_f32(p, vreinterpretq_f32_s32(e));
    return vbslq_f32(under, vdupq_n_f32(0.0f), y);
}

float tri_exp_sum_neon(float * s, int n, float max) {
    const float32x4_t mx  = vdupq_n_f32(max);
    float32x4_t       acc = vdupq_n_f32(0.0f);
    int               j   = 0;
    for (; j + 4 <= n; j += 4) {
        const float32x4_t e = tri_exp4(vsubq_f32(vld1q_f32(s + j), mx));
        vst1q_f32(s + j, e);
        acc = vaddq_f32(acc, e);
    }
    float sum = vaddvq_f32(acc);
    if (j < n) {
        float t[4] = { max, max, max, max };
        for (int i = 0; j + i < n; i++) {
            t[i] = s[j + i];
        }
        vst1q_f32(t, tri_exp4(vsubq_f32(vld1q_f32(t), mx)));
        for (int i = 0; j + i < n; i++) {
            s[j + i] = t[i];
            sum += t[i];
        }
    }
    return sum;
}

/* v / (1 + exp(-z)); exp's argument clamped to at most 88, where the quotient is 0 to float precision */
static inline float32x4_t tri_sigmoid_mul4(float32x4_t v, float32x4_t z) {
    return vdivq_f32(v, vaddq_f32(vdupq_n_f32(1.0f), tri_exp4(vnegq_f32(z))));
}

static inline float32x4_t tri_silu4(float32x4_t v) {
    return tri_sigmoid_mul4(v, v);
}

static inline float32x4_t tri_gelu4(float32x4_t v) {
    const float32x4_t v3 = vmulq_f32(vmulq_f32(v, v), v);
    const float32x4_t z  = vmulq_n_f32(vaddq_f32(v, vmulq_n_f32(v3, 0.044715f)), 2.0f * 0.7978845608028654f);
    return tri_sigmoid_mul4(v, z);
}

static inline void tri_act_mul4(float * g, const float * u, int n, float32x4_t (*act)(float32x4_t)) {
    int i = 0;
    for (; i + 4 <= n; i += 4) {
        vst1q_f32(g + i, vmulq_f32(act(vld1q_f32(g + i)), vld1q_f32(u + i)));
    }
    if (i < n) {
        float tg[4] = { 0 }, tu[4] = { 0 };
        for (int k = 0; k < n - i; k++) {
            tg[k] = g[i + k];
            tu[k] = u[i + k];
        }
        vst1q_f32(tg, vmulq_f32(act(vld1q_f32(tg)), vld1q_f32(tu)));
        for (int k = 0; k < n - i; k++) {
            g[i + k] = tg[k];
        }
    }
}

void tri_silu_mul_neon(float * g, const float * u, int n) {
    tri_act_mul4(g, u, n, tri_silu4);
}

void tri_gelu_mul_neon(float * g, const float * u, int n) {
    tri_act_mul4(g, u, n, tri_gelu4);
}
