/* Scalar reference kernels for the float types and the 32-value block formats: dequantize, quantize,
 * dot product. They define the results every SIMD kernel is tested against; the dequantizers match
 * gguf.quants.dequantize bit for bit (same operation order, no fused multiply-add). */
#pragma GCC optimize("fp-contract=off")

#include "quants.h"

#include <math.h>
#include <string.h>

/* ---- float types ---- */

void tri_dequantize_row_f32(const void * restrict x, float * restrict y, int64_t k) {
    memcpy(y, x, (size_t)k * sizeof(float));
}

void tri_dequantize_row_f16(const void * restrict x, float * restrict y, int64_t k) {
    const tri_fp16 * h = x;
    for (int64_t i = 0; i < k; i++) {
        y[i] = tri_fp16_to_fp32(h[i]);
    }
}

void tri_dequantize_row_bf16(const void * restrict x, float * restrict y, int64_t k) {
    const tri_bf16 * h = x;
    for (int64_t i = 0; i < k; i++) {
        y[i] = tri_bf16_to_fp32(h[i]);
    }
}

void tri_quantize_row_f32_ref(const float * restrict x, void * restrict y, int64_t k) {
    memcpy(y, x, (size_t)k * sizeof(float));
}

void tri_quantize_row_f16_ref(const float * restrict x, void * restrict y, int64_t k) {
    tri_fp16 * h = y;
    for (int64_t i = 0; i < k; i++) {
        h[i] = tri_fp32_to_fp16(x[i]);
    }
}

void tri_quantize_row_bf16_ref(const float * restrict x, void * restrict y, int64_t k) {
    tri_bf16 * h = y;
    for (int64_t i = 0; i < k; i++) {
        h[i] = tri_fp32_to_bf16(x[i]);
    }
}

/* Float dots accumulate in double: the reference should be more accurate than the kernels it judges. */
void tri_vec_dot_f32_ref(int n, float * restrict s, const void * restrict x, const void * restrict y) {
    const float * a = x;
    const float * b = y;
    double acc = 0.0;
    for (int i = 0; i < n; i++) {
        acc += (double)a[i] * (double)b[i];
    }
    *s = (float)acc;
}

void tri_vec_dot_f16_ref(int n, float * restrict s, const void * restrict x, const void * restrict y) {
    const tri_fp16 * a = x;
    const tri_fp16 * b = y;
    double acc = 0.0;
    for (int i = 0; i < n; i++) {
        acc += (double)tri_fp16_to_fp32(a[i]) * (double)tri_fp16_to_fp32(b[i]);
    }
    *s = (float)acc;
}

/* BF16 weights meet F32 activations (vec_dot_type F32): no rounding of the activations. */
void tri_vec_dot_bf16_ref(int n, float * restrict s, const void * restrict x, const void * restrict y) {
    const tri_bf16 * a = x;
    const float *    b = y;
    double acc = 0.0;
    for (int i = 0; i < n; i++) {
        acc += (double)tri_bf16_to_fp32(a[i]) * (double)b[i];
    }
    *s = (float)acc;
}

/* ---- 32-value blocks: dequantize ---- */

void tri_dequantize_row_q4_0(const void * restrict vx, float * restrict y, int64_t k) {
    const tri_block_q4_0 * x = vx;
    for (int64_t b = 0; b < k / TRI_QK4_0; b++, y += TRI_QK4_0) {
        const float d = tri_fp16_to_fp32(x[b].d);
        for (int l = 0; l < 16; l++) {
            y[l]      = d * (float)((x[b].qs[l] & 15) - 8);
            y[l + 16] = d * (float)((x[b].qs[l] >> 4) - 8);
        }
    }
}

void tri_dequantize_row_q4_1(const void * restrict vx, float * restrict y, int64_t k) {
    const tri_block_q4_1 * x = vx;
    for (int64_t b = 0; b < k / TRI_QK4_1; b++, y += TRI_QK4_1) {
        const float d = tri_fp16_to_fp32(x[b].d);
        const float m = tri_fp16_to_fp32(x[b].m);
        for (int l = 0; l < 16; l++) {
            y[l]      = d * (float)(x[b].qs[l] & 15) + m;
            y[l + 16] = d * (float)(x[b].qs[l] >> 4) + m;
        }
    }
}

static inline uint32_t tri_load_u32(const uint8_t * p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

void tri_dequantize_row_q5_0(const void * restrict vx, float * restrict y, int64_t k) {
    const tri_block_q5_0 * x = vx;
    for (int64_t b = 0; b < k / TRI_QK5_0; b++, y += TRI_QK5_0) {
        const float    d  = tri_fp16_to_fp32(x[b].d);
        const uint32_t qh = tri_load_u32(x[b].qh);
        for (int l = 0; l < 16; l++) {
            int q0 = (x[b].qs[l] & 15) | (int)(((qh >> l) & 1) << 4);
            int q1 = (x[b].qs[l] >> 4) | (int)(((qh >> (l + 16)) & 1) << 4);
            y[l]      = d * (float)(q0 - 16);
            y[l + 16] = d * (float)(q1 - 16);
        }
    }
}

void tri_dequantize_row_q5_1(const void * restrict vx, float * restrict y, int64_t k) {
    const tri_block_q5_1 * x = vx;
    for (int64_t b = 0; b < k / TRI_QK5_1; b++, y += TRI_QK5_1) {
        const float    d  = tri_fp16_to_fp32(x[b].d);
        const float    m  = tri_fp16_to_fp32(x[b].m);
        const uint32_t qh = tri_load_u32(x[b].qh);
        for (int l = 0; l < 16; l++) {
            int q0 = (x[b].qs[l] & 15) | (int)(((qh >> l) & 1) << 4);
            int q1 = (x[b].qs[l] >> 4) | (int)(((qh >> (l + 16)) & 1) << 4);
            y[l]      = d * (float)q0 + m;
            y[l + 16] = d * (float)q1 + m;
        }
    }
}

void tri_dequantize_row_q8_0(const void * restrict vx, float * restrict y, int64_t k) {
    const tri_block_q8_0 * x = vx;
    for (int64_t b = 0; b < k / TRI_QK8_0; b++, y += TRI_QK8_0) {
        const float d = tri_fp16_to_fp32(x[b].d);
        for (int l = 0; l < TRI_QK8_0; l++) {
            y[l] = (float)x[b].qs[l] * d;
        }
    }
}

void tri_dequantize_row_q8_1(const void * restrict vx, float * restrict y, int64_t k) {
    const tri_block_q8_1 * x = vx;
    for (int64_t b = 0; b < k / TRI_QK8_1; b++, y += TRI_QK8_1) {
        const float d = tri_fp16_to_fp32(x[b].d);
        for (int l = 0; l < TRI_QK8_1; l++) {
            y[l] = (float)x[b].qs[l] * d;
        }
    }
}

/* ---- 32-value blocks: reference quantizers ---- */

/* Index of the value with the largest magnitude (first one on ties). */
static int tri_argmax_abs(const float * x, int n) {
    int   im   = 0;
    float amax = 0.0f;
    for (int i = 0; i < n; i++) {
        if (fabsf(x[i]) > amax) {
            amax = fabsf(x[i]);
            im   = i;
        }
    }
    return im;
}

void tri_quantize_row_q4_0_ref(const float * restrict x, void * restrict vy, int64_t k) {
    tri_block_q4_0 * y = vy;
    for (int64_t b = 0; b < k / TRI_QK4_0; b++, x += TRI_QK4_0) {
        const float max = x[tri_argmax_abs(x, TRI_QK4_0)];
        const float d   = max / -8.0f;
        const float id  = d != 0.0f ? 1.0f / d : 0.0f;
        y[b].d = tri_fp32_to_fp16(d);
        for (int l = 0; l < 16; l++) {
            int q0 = (int)(x[l] * id + 8.5f);
            int q1 = (int)(x[l + 16] * id + 8.5f);
            q0 = TRI_CLAMP(q0, 0, 15);
            q1 = TRI_CLAMP(q1, 0, 15);
            y[b].qs[l] = (uint8_t)(q0 | (q1 << 4));
        }
    }
}

static void tri_min_max(const float * x, int n, float * mn, float * mx) {
    float lo = x[0], hi = x[0];
    for (int i = 1; i < n; i++) {
        lo = x[i] < lo ? x[i] : lo;
        hi = x[i] > hi ? x[i] : hi;
    }
    *mn = lo;
    *mx = hi;
}

void tri_quantize_row_q4_1_ref(const float * restrict x, void * restrict vy, int64_t k) {
    tri_block_q4_1 * y = vy;
    for (int64_t b = 0; b < k / TRI_QK4_1; b++, x += TRI_QK4_1) {
        float mn, mx;
        tri_min_max(x, TRI_QK4_1, &mn, &mx);
        const float d  = (mx - mn) / 15.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[b].d = tri_fp32_to_fp16(d);
        y[b].m = tri_fp32_to_fp16(mn);
        for (int l = 0; l < 16; l++) {
            int q0 = (int)((x[l] - mn) * id + 0.5f);
            int q1 = (int)((x[l + 16] - mn) * id + 0.5f);
            q0 = TRI_CLAMP(q0, 0, 15);
            q1 = TRI_CLAMP(q1, 0, 15);
            y[b].qs[l] = (uint8_t)(q0 | (q1 << 4));
        }
    }
}

void tri_quantize_row_q5_0_ref(const float * restrict x, void * restrict vy, int64_t k) {
    tri_block_q5_0 * y = vy;
    for (int64_t b = 0; b < k / TRI_QK5_0; b++, x += TRI_QK5_0) {
        const float max = x[tri_argmax_abs(x, TRI_QK5_0)];
        const float d   = max / -16.0f;
        const float id  = d != 0.0f ? 1.0f / d : 0.0f;
        uint32_t    qh  = 0;
        y[b].d = tri_fp32_to_fp16(d);
        for (int l = 0; l < 16; l++) {
            int q0 = (int)(x[l] * id + 16.5f);
            int q1 = (int)(x[l + 16] * id + 16.5f);
            q0 = TRI_CLAMP(q0, 0, 31);
            q1 = TRI_CLAMP(q1, 0, 31);
            y[b].qs[l] = (uint8_t)((q0 & 15) | ((q1 & 15) << 4));
            qh |= (uint32_t)(q0 >> 4) << l | (uint32_t)(q1 >> 4) << (l + 16);
        }
        for (int i = 0; i < 4; i++) {
            y[b].qh[i] = (uint8_t)(qh >> (8 * i));
        }
    }
}

void tri_quantize_row_q5_1_ref(const float * restrict x, void * restrict vy, int64_t k) {
    tri_block_q5_1 * y = vy;
    for (int64_t b = 0; b < k / TRI_QK5_1; b++, x += TRI_QK5_1) {
        float mn, mx;
        tri_min_max(x, TRI_QK5_1, &mn, &mx);
        const float d  = (mx - mn) / 31.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        uint32_t    qh = 0;
        y[b].d = tri_fp32_to_fp16(d);
        y[b].m = tri_fp32_to_fp16(mn);
        for (int l = 0; l < 16; l++) {
            int q0 = (int)((x[l] - mn) * id + 0.5f);
            int q1 = (int)((x[l + 16] - mn) * id + 0.5f);
            q0 = TRI_CLAMP(q0, 0, 31);
            q1 = TRI_CLAMP(q1, 0, 31);
            y[b].qs[l] = (uint8_t)((q0 & 15) | ((q1 & 15) << 4));
            qh |= (uint32_t)(q0 >> 4) << l | (uint32_t)(q1 >> 4) << (l + 16);
        }
        for (int i = 0; i < 4; i++) {
            y[b].qh[i] = (uint8_t)(qh >> (8 * i));
        }
    }
}

/* Symmetric 8-bit: d = amax / 127, q = round(x / d) in [-127, 127]. Returns d, writes sum(q). */
static float tri_quant8_block(const float * x, int8_t * q, int n, int * sum) {
    float amax = 0.0f;
    for (int i = 0; i < n; i++) {
        amax = fabsf(x[i]) > amax ? fabsf(x[i]) : amax;
    }
    const float d  = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    int s = 0;
    for (int i = 0; i < n; i++) {
        int v = (int)roundf(x[i] * id);
        v = TRI_CLAMP(v, -127, 127);
        q[i] = (int8_t)v;
        s += v;
    }
    *sum = s;
    return d;
}

void tri_quantize_row_q8_0_ref(const float * restrict x, void * restrict vy, int64_t k) {
    tri_block_q8_0 * y = vy;
    for (int64_t b = 0; b < k / TRI_QK8_0; b++, x += TRI_QK8_0) {
        int sum;
        y[b].d = tri_fp32_to_fp16(tri_quant8_block(x, y[b].qs, TRI_QK8_0, &sum));
    }
}

void tri_quantize_row_q8_1_ref(const float * restrict x, void * restrict vy, int64_t k) {
    tri_block_q8_1 * y = vy;
    for (int64_t b = 0; b < k / TRI_QK8_1; b++, x += TRI_QK8_1) {
        int sum;
        const float d = tri_quant8_block(x, y[b].qs, TRI_QK8_1, &sum);
        y[b].d = tri_fp32_to_fp16(d);
        y[b].s = tri_fp32_to_fp16(d * (float)sum);
    }
}

/* ---- 32-value blocks: dot products (integer sums per block, scaled in float) ---- */

void tri_vec_dot_q4_0_ref(int n, float * restrict s, const void * restrict vx, const void * restrict vy) {
    const tri_block_q4_0 * x = vx;
    const tri_block_q8_0 * y = vy;
    float acc = 0.0f;
    for (int b = 0; b < n / TRI_QK8_0; b++) {
        int sumi = 0;
        for (int l = 0; l < 16; l++) {
            sumi += ((x[b].qs[l] & 15) - 8) * y[b].qs[l] + ((x[b].qs[l] >> 4) - 8) * y[b].qs[l + 16];
        }
        acc += tri_fp16_to_fp32(x[b].d) * tri_fp16_to_fp32(y[b].d) * (float)sumi;
    }
    *s = acc;
}

void tri_vec_dot_q4_1_ref(int n, float * restrict s, const void * restrict vx, const void * restrict vy) {
    const tri_block_q4_1 * x = vx;
    const tri_block_q8_1 * y = vy;
    float acc = 0.0f;
    for (int b = 0; b < n / TRI_QK8_1; b++) {
        int sumi = 0;
        for (int l = 0; l < 16; l++) {
            sumi += (x[b].qs[l] & 15) * y[b].qs[l] + (x[b].qs[l] >> 4) * y[b].qs[l + 16];
        }
        acc += tri_fp16_to_fp32(x[b].d) * tri_fp16_to_fp32(y[b].d) * (float)sumi
             + tri_fp16_to_fp32(x[b].m) * tri_fp16_to_fp32(y[b].s);
    }
    *s = acc;
}

void tri_vec_dot_q5_0_ref(int n, float * restrict s, const void * restrict vx, const void * restrict vy) {
    const tri_block_q5_0 * x = vx;
    const tri_block_q8_0 * y = vy;
    float acc = 0.0f;
    for (int b = 0; b < n / TRI_QK8_0; b++) {
        const uint32_t qh = tri_load_u32(x[b].qh);
        int sumi = 0;
        for (int l = 0; l < 16; l++) {
            int q0 = (x[b].qs[l] & 15) | (int)(((qh >> l) & 1) << 4);
            int q1 = (x[b].qs[l] >> 4) | (int)(((qh >> (l + 16)) & 1) << 4);
            sumi += (q0 - 16) * y[b].qs[l] + (q1 - 16) * y[b].qs[l + 16];
        }
        acc += tri_fp16_to_fp32(x[b].d) * tri_fp16_to_fp32(y[b].d) * (float)sumi;
    }
    *s = acc;
}

void tri_vec_dot_q5_1_ref(int n, float * restrict s, const void * restrict vx, const void * restrict vy) {
    const tri_block_q5_1 * x = vx;
    const tri_block_q8_1 * y = vy;
    float acc = 0.0f;
    for (int b = 0; b < n / TRI_QK8_1; b++) {
        const uint32_t qh = tri_load_u32(x[b].qh);
        int sumi = 0;
        for (int l = 0; l < 16; l++) {
            int q0 = (x[b].qs[l] & 15) | (int)(((qh >> l) & 1) << 4);
            int q1 = (x[b].qs[l] >> 4) | (int)(((qh >> (l + 16)) & 1) << 4);
            sumi += q0 * y[b].qs[l] + q1 * y[b].qs[l + 16];
        }
        acc += tri_fp16_to_fp32(x[b].d) * tri_fp16_to_fp32(y[b].d) * (float)sumi
             + tri_fp16_to_fp32(x[b].m) * tri_fp16_to_fp32(y[b].s);
    }
    *s = acc;
}

void tri_vec_dot_q8_0_ref(int n, float * restrict s, const void * restrict vx, const void * restrict vy) {
    const tri_block_q8_0 * x = vx;
    const tri_block_q8_0 * y = vy;
    float acc = 0.0f;
    for (int b = 0; b < n / TRI_QK8_0; b++) {
        int sumi = 0;
        for (int l = 0; l < TRI_QK8_0; l++) {
            sumi += x[b].qs[l] * y[b].qs[l];
        }
        acc += tri_fp16_to_fp32(x[b].d) * tri_fp16_to_fp32(y[b].d) * (float)sumi;
    }
    *s = acc;
}
