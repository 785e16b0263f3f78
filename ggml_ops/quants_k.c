/* Scalar reference kernels for the K-quants (256-value super-blocks) and their Q8_K activations.
 * Dequantizers follow gguf.quants.dequantize's operation order so results match it bit for bit. */
#pragma GCC optimize("fp-contract=off")

#include "quants.h"

#include <math.h>
#include <string.h>

/* ---- dequantize ---- */

void tri_dequantize_row_q2_K(const void * restrict vx, float * restrict y, int64_t k) {
    const tri_block_q2_K * x = vx;
    for (int64_t b = 0; b < k / TRI_QK_K; b++, y += TRI_QK_K) {
        const float d    = tri_fp16_to_fp32(x[b].d);
        const float dmin = tri_fp16_to_fp32(x[b].dmin);
        for (int i = 0; i < TRI_QK_K; i++) {
            const int   h = i / 128, sh = (i % 128) / 32, l = i % 32;
            const int   q = (x[b].qs[32 * h + l] >> (2 * sh)) & 3;
            const float dl = d * (float)(x[b].scales[i / 16] & 15);
            const float ml = dmin * (float)(x[b].scales[i / 16] >> 4);
            y[i] = dl * (float)q - ml;
        }
    }
}

void tri_dequantize_row_q3_K(const void * restrict vx, float * restrict y, int64_t k) {
    const tri_block_q3_K * x = vx;
    for (int64_t b = 0; b < k / TRI_QK_K; b++, y += TRI_QK_K) {
        const float d = tri_fp16_to_fp32(x[b].d);
        int8_t sc[16];
        tri_q3_K_scales(x[b].scales, sc);
        for (int i = 0; i < TRI_QK_K; i++) {
            const int h = i / 128, sh = (i % 128) / 32, l = i % 32;
            const int q2 = (x[b].qs[32 * h + l] >> (2 * sh)) & 3;
            const int hb = (x[b].hmask[l] >> (i / 32)) & 1;
            const float dl = d * (float)sc[i / 16];
            y[i] = dl * (float)(q2 - (hb ? 0 : 4));
        }
    }
}

void tri_dequantize_row_q4_K(const void * restrict vx, float * restrict y, int64_t k) {
    const tri_block_q4_K * x = vx;
    for (int64_t b = 0; b < k / TRI_QK_K; b++, y += TRI_QK_K) {
        const float d    = tri_fp16_to_fp32(x[b].d);
        const float dmin = tri_fp16_to_fp32(x[b].dmin);
        for (int j = 0; j < 8; j++) {
            uint8_t sc, mn;
            tri_get_scale_min_k4(j, x[b].scales, &sc, &mn);
            const float dl = d * (float)sc;
            const float ml = dmin * (float)mn;
            const uint8_t * q = x[b].qs + 32 * (j / 2);
            const int shift = 4 * (j % 2);
            for (int l = 0; l < 32; l++) {
                y[32 * j + l] = dl * (float)((q[l] >> shift) & 15) - ml;
            }
        }
    }
}

void tri_dequantize_row_q5_K(const void * restrict vx, float * restrict y, int64_t k) {
    const tri_block_q5_K * x = vx;
    for (int64_t b = 0; b < k / TRI_QK_K; b++, y += TRI_QK_K) {
        const float d    = tri_fp16_to_fp32(x[b].d);
        const float dmin = tri_fp16_to_fp32(x[b].dmin);
        for (int j = 0; j < 8; j++) {
            uint8_t sc, mn;
            tri_get_scale_min_k4(j, x[b].scales, &sc, &mn);
            const float dl = d * (float)sc;
            const float ml = dmin * (float)mn;
            const uint8_t * q = x[b].qs + 32 * (j / 2);
            const int shift = 4 * (j % 2);
            for (int l = 0; l < 32; l++) {
                const int v = ((q[l] >> shift) & 15) | (((x[b].qh[l] >> j) & 1) << 4);
                y[32 * j + l] = dl * (float)v - ml;
            }
        }
    }
}

/* 6-bit code of element i of a Q6_K block, before the -32 offset. */
static inline int tri_q6_K_code(const tri_block_q6_K * x, int i) {
    const int h = i / 128, r = i % 128;
    const int lo = (x->ql[64 * h + r % 64] >> (4 * (r / 64))) & 15;
    const int hi = (x->qh[32 * h + r % 32] >> (2 * (r / 32))) & 3;
    return lo | (hi << 4);
}

void tri_dequantize_row_q6_K(const void * restrict vx, float * restrict y, int64_t k) {
    const tri_block_q6_K * x = vx;
    for (int64_t b = 0; b < k / TRI_QK_K; b++, y += TRI_QK_K) {
        const float d = tri_fp16_to_fp32(x[b].d);
        for (int i = 0; i < TRI_QK_K; i++) {
            const float dl = d * (float)x[b].scales[i / 16];
            y[i] = dl * (float)(tri_q6_K_code(&x[b], i) - 32);
        }
    }
}

void tri_dequantize_row_q8_K(const void * restrict vx, float * restrict y, int64_t k) {
    const tri_block_q8_K * x = vx;
    for (int64_t b = 0; b < k / TRI_QK_K; b++, y += TRI_QK_K) {
        for (int i = 0; i < TRI_QK_K; i++) {
            y[i] = x[b].d * (float)x[b].qs[i];
        }
    }
}

/* ---- quantize ---- */

void tri_quantize_row_q8_K_ref(const float * restrict x, void * restrict vy, int64_t k) {
    tri_block_q8_K * y = vy;
    for (int64_t b = 0; b < k / TRI_QK_K; b++, x += TRI_QK_K) {
        float amax = 0.0f;
        for (int i = 0; i < TRI_QK_K; i++) {
            amax = fabsf(x[i]) > amax ? fabsf(x[i]) : amax;
        }
        const float d  = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[b].d = d;
        for (int g = 0; g < TRI_QK_K / 16; g++) {
            int sum = 0;
            for (int l = 0; l < 16; l++) {
                int v = (int)roundf(x[16 * g + l] * id);
                v = TRI_CLAMP(v, -127, 127);
                y[b].qs[16 * g + l] = (int8_t)v;
                sum += v;
            }
            y[b].bsums[g] = (int16_t)sum;
        }
    }
}

static int tri_nearest(float v) { return (int)roundf(v); }

/* Asymmetric sub-blocks (x ~ d*sc*q - dmin*m) for Q2_K/Q4_K/Q5_K: per sub-block scale and
 * non-negative min, both quantized to `sbits` bits against a super-block d / dmin. */
static void tri_k_asym(const float * x, int nsub, int sublen, int qmax, int smax,
                       float * d_out, float * dmin_out, uint8_t * sc, uint8_t * mn, uint8_t * q) {
    float scale[16], mins[16], max_scale = 0.0f, max_min = 0.0f;
    for (int j = 0; j < nsub; j++) {
        const float * v = x + j * sublen;
        float lo = v[0], hi = v[0];
        for (int l = 1; l < sublen; l++) {
            lo = v[l] < lo ? v[l] : lo;
            hi = v[l] > hi ? v[l] : hi;
        }
        lo = lo > 0.0f ? 0.0f : lo;
        scale[j] = (hi - lo) / (float)qmax;
        mins[j]  = -lo;
        max_scale = scale[j] > max_scale ? scale[j] : max_scale;
        max_min   = mins[j] > max_min ? mins[j] : max_min;
    }
    const float d    = max_scale / (float)smax;
    const float dmin = max_min / (float)smax;
    /* Round the fp16 super-scales first so codes are chosen against the values the decoder uses. */
    const float dq    = tri_fp16_to_fp32(tri_fp32_to_fp16(d));
    const float dminq = tri_fp16_to_fp32(tri_fp32_to_fp16(dmin));
    for (int j = 0; j < nsub; j++) {
        int s = dq > 0.0f ? tri_nearest(scale[j] / dq) : 0;
        int m = dminq > 0.0f ? tri_nearest(mins[j] / dminq) : 0;
        sc[j] = (uint8_t)TRI_CLAMP(s, 0, smax);
        mn[j] = (uint8_t)TRI_CLAMP(m, 0, smax);
        const float dl = dq * (float)sc[j];
        const float ml = dminq * (float)mn[j];
        for (int l = 0; l < sublen; l++) {
            int v = dl > 0.0f ? tri_nearest((x[j * sublen + l] + ml) / dl) : 0;
            q[j * sublen + l] = (uint8_t)TRI_CLAMP(v, 0, qmax);
        }
    }
    *d_out    = d;
    *dmin_out = dmin;
}

void tri_pack_scale_min_k4(const uint8_t * sc, const uint8_t * mn, uint8_t * out) {
    memset(out, 0, TRI_K_SCALE_SIZE);
    for (int j = 0; j < 4; j++) {
        out[j]     = (uint8_t)(sc[j] & 63);
        out[j + 4] = (uint8_t)(mn[j] & 63);
    }
    for (int j = 4; j < 8; j++) {
        out[j + 4] = (uint8_t)((sc[j] & 15) | ((mn[j] & 15) << 4));
        out[j - 4] |= (uint8_t)((sc[j] >> 4) << 6);
        out[j]     |= (uint8_t)((mn[j] >> 4) << 6);
    }
}

void tri_quantize_row_q2_K_ref(const float * restrict x, void * restrict vy, int64_t k) {
    tri_block_q2_K * y = vy;
    for (int64_t b = 0; b < k / TRI_QK_K; b++, x += TRI_QK_K) {
        float d, dmin;
        uint8_t sc[16], mn[16], q[TRI_QK_K];
        tri_k_asym(x, 16, 16, 3, 15, &d, &dmin, sc, mn, q);
        y[b].d    = tri_fp32_to_fp16(d);
        y[b].dmin = tri_fp32_to_fp16(dmin);
        for (int j = 0; j < 16; j++) {
            y[b].scales[j] = (uint8_t)(sc[j] | (mn[j] << 4));
        }
        memset(y[b].qs, 0, sizeof y[b].qs);
        for (int i = 0; i < TRI_QK_K; i++) {
            const int h = i / 128, sh = (i % 128) / 32, l = i % 32;
            y[b].qs[32 * h + l] |= (uint8_t)(q[i] << (2 * sh));
        }
    }
}

void tri_quantize_row_q4_K_ref(const float * restrict x, void * restrict vy, int64_t k) {
    tri_block_q4_K * y = vy;
    for (int64_t b = 0; b < k / TRI_QK_K; b++, x += TRI_QK_K) {
        float d, dmin;
        uint8_t sc[8], mn[8], q[TRI_QK_K];
        tri_k_asym(x, 8, 32, 15, 63, &d, &dmin, sc, mn, q);
        y[b].d    = tri_fp32_to_fp16(d);
        y[b].dmin = tri_fp32_to_fp16(dmin);
        tri_pack_scale_min_k4(sc, mn, y[b].scales);
        for (int c = 0; c < 4; c++) {
            for (int l = 0; l < 32; l++) {
                y[b].qs[32 * c + l] = (uint8_t)(q[64 * c + l] | (q[64 * c + 32 + l] << 4));
            }
        }
    }
}

void tri_quantize_row_q5_K_ref(const float * restrict x, void * restrict vy, int64_t k) {
    tri_block_q5_K * y = vy;
    for (int64_t b = 0; b < k / TRI_QK_K; b++, x += TRI_QK_K) {
        float d, dmin;
        uint8_t sc[8], mn[8], q[TRI_QK_K];
        tri_k_asym(x, 8, 32, 31, 63, &d, &dmin, sc, mn, q);
        y[b].d    = tri_fp32_to_fp16(d);
        y[b].dmin = tri_fp32_to_fp16(dmin);
        tri_pack_scale_min_k4(sc, mn, y[b].scales);
        memset(y[b].qh, 0, sizeof y[b].qh);
        for (int c = 0; c < 4; c++) {
            for (int l = 0; l < 32; l++) {
                y[b].qs[32 * c + l] = (uint8_t)((q[64 * c + l] & 15) | ((q[64 * c + 32 + l] & 15) << 4));
            }
        }
        for (int i = 0; i < TRI_QK_K; i++) {
            y[b].qh[i % 32] |= (uint8_t)((q[i] >> 4) << (i / 32));
        }
    }
}

/* Symmetric sub-blocks of 16 for Q3_K / Q6_K: codes in [-qneg, qneg - 1], scales signed 6/8 bits. */
static void tri_k_sym(const float * x, int qneg, int smax, float * d_out, int8_t * sc, int8_t * q) {
    float scale[16], max_scale = 0.0f;
    for (int j = 0; j < 16; j++) {
        float amax = 0.0f;
        for (int l = 0; l < 16; l++) {
            amax = fabsf(x[16 * j + l]) > amax ? fabsf(x[16 * j + l]) : amax;
        }
        scale[j]  = amax / (float)(qneg - 1);
        max_scale = scale[j] > max_scale ? scale[j] : max_scale;
    }
    const float d  = max_scale / (float)smax;
    const float dq = tri_fp16_to_fp32(tri_fp32_to_fp16(d));
    for (int j = 0; j < 16; j++) {
        int s = dq > 0.0f ? tri_nearest(scale[j] / dq) : 0;
        sc[j] = (int8_t)TRI_CLAMP(s, 0, smax);
        const float dl = dq * (float)sc[j];
        for (int l = 0; l < 16; l++) {
            int v = dl > 0.0f ? tri_nearest(x[16 * j + l] / dl) : 0;
            q[16 * j + l] = (int8_t)TRI_CLAMP(v, -qneg, qneg - 1);
        }
    }
    *d_out = d;
}

void tri_quantize_row_q3_K_ref(const float * restrict x, void * restrict vy, int64_t k) {
    tri_block_q3_K * y = vy;
    for (int64_t b = 0; b < k / TRI_QK_K; b++, x += TRI_QK_K) {
        float d;
        int8_t sc[16], q[TRI_QK_K];
        tri_k_sym(x, 4, 31, &d, sc, q);
        y[b].d = tri_fp32_to_fp16(d);
        memset(y[b].scales, 0, sizeof y[b].scales);
        for (int j = 0; j < 16; j++) {
            const int s6 = sc[j] + 32; /* stored with a +32 bias */
            y[b].scales[j % 8]     |= (uint8_t)((s6 & 15) << (4 * (j / 8)));
            y[b].scales[8 + j % 4] |= (uint8_t)((s6 >> 4) << (2 * (j / 4)));
        }
        memset(y[b].qs, 0, sizeof y[b].qs);
        memset(y[b].hmask, 0, sizeof y[b].hmask);
        for (int i = 0; i < TRI_QK_K; i++) {
            const int u = q[i] + 4; /* 0..7: low 2 bits in qs, bit 2 in hmask */
            const int h = i / 128, sh = (i % 128) / 32, l = i % 32;
            y[b].qs[32 * h + l] |= (uint8_t)((u & 3) << (2 * sh));
            y[b].hmask[l]       |= (uint8_t)((u >> 2) << (i / 32));
        }
    }
}

void tri_quantize_row_q6_K_ref(const float * restrict x, void * restrict vy, int64_t k) {
    tri_block_q6_K * y = vy;
    for (int64_t b = 0; b < k / TRI_QK_K; b++, x += TRI_QK_K) {
        float d;
        int8_t sc[16], q[TRI_QK_K];
        tri_k_sym(x, 32, 127, &d, sc, q);
        y[b].d = tri_fp32_to_fp16(d);
        memcpy(y[b].scales, sc, 16);
        memset(y[b].ql, 0, sizeof y[b].ql);
        memset(y[b].qh, 0, sizeof y[b].qh);
        for (int i = 0; i < TRI_QK_K; i++) {
            const int u = q[i] + 32;
            const int h = i / 128, r = i % 128;
            y[b].ql[64 * h + r % 64] |= (uint8_t)((u & 15) << (4 * (r / 64)));
            y[b].qh[32 * h + r % 32] |= (uint8_t)((u >> 4) << (2 * (r / 32)));
        }
    }
}

/* ---- dot products against Q8_K ---- */

void tri_vec_dot_q2_K_ref(int n, float * restrict s, const void * restrict vx, const void * restrict vy) {
    const tri_block_q2_K * x = vx;
    const tri_block_q8_K * y = vy;
    float acc = 0.0f;
    for (int b = 0; b < n / TRI_QK_K; b++) {
        int isum = 0, msum = 0;
        for (int g = 0; g < 16; g++) {
            int gs = 0;
            for (int i = 16 * g; i < 16 * g + 16; i++) {
                const int h = i / 128, sh = (i % 128) / 32, l = i % 32;
                gs += ((x[b].qs[32 * h + l] >> (2 * sh)) & 3) * y[b].qs[i];
            }
            isum += (x[b].scales[g] & 15) * gs;
            msum += (x[b].scales[g] >> 4) * y[b].bsums[g];
        }
        acc += y[b].d * tri_fp16_to_fp32(x[b].d) * (float)isum
             - y[b].d * tri_fp16_to_fp32(x[b].dmin) * (float)msum;
    }
    *s = acc;
}

void tri_vec_dot_q3_K_ref(int n, float * restrict s, const void * restrict vx, const void * restrict vy) {
    const tri_block_q3_K * x = vx;
    const tri_block_q8_K * y = vy;
    float acc = 0.0f;
    for (int b = 0; b < n / TRI_QK_K; b++) {
        int8_t sc[16];
        tri_q3_K_scales(x[b].scales, sc);
        int isum = 0;
        for (int g = 0; g < 16; g++) {
            int gs = 0;
            for (int i = 16 * g; i < 16 * g + 16; i++) {
                const int h = i / 128, sh = (i % 128) / 32, l = i % 32;
                const int q2 = (x[b].qs[32 * h + l] >> (2 * sh)) & 3;
                const int hb = (x[b].hmask[l] >> (i / 32)) & 1;
                gs += (q2 - (hb ? 0 : 4)) * y[b].qs[i];
            }
            isum += sc[g] * gs;
        }
        acc += y[b].d * tri_fp16_to_fp32(x[b].d) * (float)isum;
    }
    *s = acc;
}

void tri_vec_dot_q4_K_ref(int n, float * restrict s, const void * restrict vx, const void * restrict vy) {
    const tri_block_q4_K * x = vx;
    const tri_block_q8_K * y = vy;
    float acc = 0.0f;
    for (int b = 0; b < n / TRI_QK_K; b++) {
        int isum = 0, msum = 0;
        for (int j = 0; j < 8; j++) {
            uint8_t sc, mn;
            tri_get_scale_min_k4(j, x[b].scales, &sc, &mn);
            const uint8_t * q = x[b].qs + 32 * (j / 2);
            const int shift = 4 * (j % 2);
            int gs = 0;
            for (int l = 0; l < 32; l++) {
                gs += ((q[l] >> shift) & 15) * y[b].qs[32 * j + l];
            }
            isum += sc * gs;
            msum += mn * (y[b].bsums[2 * j] + y[b].bsums[2 * j + 1]);
        }
        acc += y[b].d * tri_fp16_to_fp32(x[b].d) * (float)isum
             - y[b].d * tri_fp16_to_fp32(x[b].dmin) * (float)msum;
    }
    *s = acc;
}

void tri_vec_dot_q5_K_ref(int n, float * restrict s, const void * restrict vx, const void * restrict vy) {
    const tri_block_q5_K * x = vx;
    const tri_block_q8_K * y = vy;
    float acc = 0.0f;
    for (int b = 0; b < n / TRI_QK_K; b++) {
        int isum = 0, msum = 0;
        for (int j = 0; j < 8; j++) {
            uint8_t sc, mn;
            tri_get_scale_min_k4(j, x[b].scales, &sc, &mn);
            const uint8_t * q = x[b].qs + 32 * (j / 2);
            const int shift = 4 * (j % 2);
            int gs = 0;
            for (int l = 0; l < 32; l++) {
                const int v = ((q[l] >> shift) & 15) | (((x[b].qh[l] >> j) & 1) << 4);
                gs += v * y[b].qs[32 * j + l];
            }
            isum += sc * gs;
            msum += mn * (y[b].bsums[2 * j] + y[b].bsums[2 * j + 1]);
        }
        acc += y[b].d * tri_fp16_to_fp32(x[b].d) * (float)isum
             - y[b].d * tri_fp16_to_fp32(x[b].dmin) * (float)msum;
    }
    *s = acc;
}

void tri_vec_dot_q6_K_ref(int n, float * restrict s, const void * restrict vx, const void * restrict vy) {
    const tri_block_q6_K * x = vx;
    const tri_block_q8_K * y = vy;
    float acc = 0.0f;
    for (int b = 0; b < n / TRI_QK_K; b++) {
        int isum = 0;
        for (int g = 0; g < 16; g++) {
            int gs = 0;
            for (int i = 16 * g; i < 16 * g + 16; i++) {
                gs += (tri_q6_K_code(&x[b], i) - 32) * y[b].qs[i];
            }
            isum += x[b].scales[g] * gs;
        }
        acc += y[b].d * tri_fp16_to_fp32(x[b].d) * (float)isum;
    }
    *s = acc;
}
