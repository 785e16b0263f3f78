/* Quantized weights in chunks of 32 values, written once for the device kernels and the host tests.
 *
 * A chunk is 32 consecutive values of a weight row: one block of the 32-value types (Q4_0 … Q8_0), one
 * eighth of a 256-value super-block of the K-quants. tri_qc_prep_* unpacks a chunk into 32 signed 8-bit
 * codes (8 words of 4 bytes: values 0..15 in q[0..3], 16..31 in q[4..7]) plus the scales that map them to
 * values: value = dl[h] * (code - off) - ml[h] for half h. tri_qc_dot multiplies a chunk by 32 activations
 * quantized to 8 bits the way the CPU does (ggml_ops: Q8_0 / Q8_1 for the 32-value types, Q8_K for the
 * K-quants) with integer dot products, then scales in float with the CPU reference's own formula, so the
 * device and the CPU sum the same integers.
 *
 * Plain C: nvcc compiles it as __host__ __device__ code (the cuda/ kernels), the C compiler for the host tests
 * (tests/c/test_cuda_qchunk.c), which check it against the ggml_ops reference without a GPU. */
#ifndef TRI_QCHUNK_H
#define TRI_QCHUNK_H

#include <stdbool.h>
#include <stdint.h>

#ifdef __CUDACC__
#include <cuda_fp16.h>
#define TRI_QC_FN static __host__ __device__ __forceinline__
#else
#include "fp16.h"
#include <math.h>
#include <string.h>
#define TRI_QC_FN static inline
#endif

/* ggml type ids (ggml_ops/types.h) of the weights the chunk code reads. */
enum {
    TRI_QC_Q4_0 = 2, TRI_QC_Q4_1 = 3, TRI_QC_Q5_0 = 6, TRI_QC_Q5_1 = 7, TRI_QC_Q8_0 = 8,
    TRI_QC_Q2_K = 10, TRI_QC_Q3_K = 11, TRI_QC_Q4_K = 12, TRI_QC_Q5_K = 13, TRI_QC_Q6_K = 14,
};
/* Activation types (their ggml ids): Q8_0 and Q8_1 per 32 values, Q8_K per 256. */
enum { TRI_QC_ACT_Q8_0 = 8, TRI_QC_ACT_Q8_1 = 9, TRI_QC_ACT_Q8_K = 15 };

/* How a chunk's integer sums become a float (the CPU reference's formula for the type). */
enum {
    TRI_QC_SYM   = 0, /* d_w * d_x * sumi                                  (Q4_0, Q5_0, Q8_0) */
    TRI_QC_MIN   = 1, /* d_w * d_x * sumi + m_w * s_x                      (Q4_1, Q5_1)       */
    TRI_QC_K     = 2, /* d_x * d_w * isum - d_x * dmin_w * msum            (Q2_K, Q4_K, Q5_K) */
    TRI_QC_K_SYM = 3, /* d_x * d_w * isum                                  (Q3_K, Q6_K)       */
};

typedef struct tri_qc_chunk {
    int32_t q[8];   /* 32 codes, 4 per word, little-endian bytes */
    int32_t off;    /* code offset: value code - off */
    int32_t sc[2];  /* K-quants: scale of each half (both the same for Q4_K / Q5_K) */
    int32_t mn[2];  /* K-quants with mins: min of each half */
    float   d, m;   /* block scale; min (Q4_1 / Q5_1) or dmin (K) */
} tri_qc_chunk;

/* ---- loads (rows are only 2-byte aligned for several block sizes) ---- */

TRI_QC_FN uint32_t tri_qc_u16(const uint8_t * p) {
#ifdef __CUDA_ARCH__
    return *(const uint16_t *) p;
#else
    return (uint32_t) p[0] | ((uint32_t) p[1] << 8);
#endif
}
/* 4 bytes at a 2-byte aligned address. */
TRI_QC_FN uint32_t tri_qc_u32(const uint8_t * p) {
    return tri_qc_u16(p) | (tri_qc_u16(p + 2) << 16);
}
/* 4 bytes at p; a4: p is 4-byte aligned (one load on the device). */
TRI_QC_FN uint32_t tri_qc_word(const uint8_t * p, bool a4) {
#ifdef __CUDA_ARCH__
    if (a4) {
        return *(const uint32_t *) p;
    }
#endif
    return tri_qc_u32(p);
}
/* 32 bytes at a 16-byte aligned p as 8 words (two 16-byte loads on the device). */
TRI_QC_FN void tri_qc_words32(const uint8_t * p, uint32_t * w) {
#ifdef __CUDA_ARCH__
    const uint4 a = ((const uint4 *) p)[0], b = ((const uint4 *) p)[1];
    w[0] = a.x, w[1] = a.y, w[2] = a.z, w[3] = a.w, w[4] = b.x, w[5] = b.y, w[6] = b.z, w[7] = b.w;
#else
    for (int k = 0; k < 8; k++) {
        w[k] = tri_qc_u32(p + 4 * k);
    }
#endif
}
TRI_QC_FN float tri_qc_f16(const uint8_t * p) {
#ifdef __CUDACC__
    return __half2float(__ushort_as_half((unsigned short) tri_qc_u16(p)));
#else
    return tri_fp16_to_fp32((tri_fp16) tri_qc_u16(p));
#endif
}
TRI_QC_FN float tri_qc_round_f16(float x) {
#ifdef __CUDACC__
    return __half2float(__float2half_rn(x));
#else
    return tri_fp16_to_fp32(tri_fp32_to_fp16(x));
#endif
}
/* c + sum of the 4 signed byte products of a and b. */
TRI_QC_FN int32_t tri_qc_dp4a(int32_t a, int32_t b, int32_t c) {
#ifdef __CUDA_ARCH__
    return __dp4a(a, b, c);
#else
    for (int i = 0; i < 4; i++) {
        c += (int32_t) (int8_t) (uint8_t) ((uint32_t) a >> (8 * i)) * (int32_t) (int8_t) (uint8_t) ((uint32_t) b >> (8 * i));
    }
    return c;
#endif
}
/* Bits 0..3 of b moved to bit 4 of bytes 0..3. */
TRI_QC_FN int32_t tri_qc_bit4(uint32_t b) {
    return (int32_t) (((b & 1u) << 4) | ((b & 2u) << 11) | ((b & 4u) << 18) | ((b & 8u) << 25));
}

/* ---- bytes per block and values per block ---- */

TRI_QC_FN int tri_qc_block_bytes(int type) {
    switch (type) {
        case TRI_QC_Q4_0: return 18;
        case TRI_QC_Q4_1: return 20;
        case TRI_QC_Q5_0: return 22;
        case TRI_QC_Q5_1: return 24;
        case TRI_QC_Q8_0: return 34;
        case TRI_QC_Q2_K: return 84;
        case TRI_QC_Q3_K: return 110;
        case TRI_QC_Q4_K: return 144;
        case TRI_QC_Q5_K: return 176;
        case TRI_QC_Q6_K: return 210;
        default: return 0;
    }
}
TRI_QC_FN int tri_qc_block_values(int type) {
    return type >= TRI_QC_Q2_K ? 256 : 32;
}
TRI_QC_FN int tri_qc_kind(int type) {
    switch (type) {
        case TRI_QC_Q4_1: case TRI_QC_Q5_1: return TRI_QC_MIN;
        case TRI_QC_Q2_K: case TRI_QC_Q4_K: case TRI_QC_Q5_K: return TRI_QC_K;
        case TRI_QC_Q3_K: case TRI_QC_Q6_K: return TRI_QC_K_SYM;
        default: return TRI_QC_SYM;
    }
}
/* The activation type a weight type's dot products take (ggml_ops' vec_dot_type). */
TRI_QC_FN int tri_qc_act_type(int type) {
    const int kind = tri_qc_kind(type);
    return kind == TRI_QC_MIN ? TRI_QC_ACT_Q8_1 : kind == TRI_QC_SYM ? TRI_QC_ACT_Q8_0 : TRI_QC_ACT_Q8_K;
}

/* ---- chunk unpacking: chunk c of a row starting at `row` ----
 * All 8 code words (k0 = 0, ks = 1), or only words k0, k0 + ks, ... (ks = 2 or 4, a constant): word k0 + i ks goes
 * to q[i], so a tensor-core lane that holds words t and t + 4 of a chunk unpacks just those two into q[0], q[1]. */

/* Nibbles of qs[0..16): values 0..15 low, 16..31 high (Q4_0, Q4_1, Q5_0, Q5_1); a4: qs is 4-byte aligned. */
TRI_QC_FN void tri_qc_nibbles32(const uint8_t * qs, bool a4, int k0, int ks, tri_qc_chunk * ch) {
    for (int i = 0; i < 4 / ks; i++) {
        const uint32_t w = tri_qc_word(qs + 4 * (k0 + i * ks), a4);
        ch->q[i]          = (int32_t) (w & 0x0F0F0F0Fu);
        ch->q[4 / ks + i] = (int32_t) ((w >> 4) & 0x0F0F0F0Fu);
    }
}
/* The fifth bit of Q5_0 / Q5_1: bit l of qh (little-endian) is value l's. */
TRI_QC_FN void tri_qc_fifth_bit(uint32_t qh, int k0, int ks, tri_qc_chunk * ch) {
    for (int i = 0; i < 4 / ks; i++) {
        const int k = k0 + i * ks;
        ch->q[i]          |= tri_qc_bit4(qh >> (4 * k));
        ch->q[4 / ks + i] |= tri_qc_bit4(qh >> (16 + 4 * k));
    }
}
/* 6-bit scale and min of sub-block j of a Q4_K / Q5_K scales[12] array. */
TRI_QC_FN void tri_qc_scale_min_k4(int j, const uint8_t * q, int32_t * sc, int32_t * mn) {
    if (j < 4) {
        *sc = q[j] & 63;
        *mn = q[j + 4] & 63;
    } else {
        *sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        *mn = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

TRI_QC_FN void tri_qc_prep_words(int type, const uint8_t * row, int64_t c, int k0, int ks, tri_qc_chunk * ch) {
    ch->off = 0;
    ch->m = 0.0f;
    ch->sc[0] = ch->sc[1] = 1;
    ch->mn[0] = ch->mn[1] = 0;
    if (type < TRI_QC_Q2_K) {
        const uint8_t * b = row + c * tri_qc_block_bytes(type);
        ch->d = tri_qc_f16(b);
        switch (type) {
            case TRI_QC_Q4_0: /* d @0, qs[16] @2: d * (q - 8) */
                tri_qc_nibbles32(b + 2, false, k0, ks, ch);
                ch->off = 8;
                break;
            case TRI_QC_Q4_1: /* d @0, m @2, qs[16] @4: d * q + m */
                tri_qc_nibbles32(b + 4, true, k0, ks, ch);
                ch->m = tri_qc_f16(b + 2);
                break;
            case TRI_QC_Q5_0: /* d @0, qh[4] @2, qs[16] @6: d * (q - 16) */
                tri_qc_nibbles32(b + 6, false, k0, ks, ch);
                tri_qc_fifth_bit(tri_qc_u32(b + 2), k0, ks, ch);
                ch->off = 16;
                break;
            case TRI_QC_Q5_1: /* d @0, m @2, qh[4] @4, qs[16] @8: d * q + m */
                tri_qc_nibbles32(b + 8, true, k0, ks, ch);
                tri_qc_fifth_bit(tri_qc_word(b + 4, true), k0, ks, ch);
                ch->m = tri_qc_f16(b + 2);
                break;
            default: /* Q8_0: d @0, qs[32] @2 */
                for (int i = 0; i < 8 / ks; i++) {
                    ch->q[i] = (int32_t) tri_qc_u32(b + 2 + 4 * (k0 + i * ks));
                }
                break;
        }
        return;
    }
    const int j = (int) (c & 7); /* sub-chunk of the super-block */
    const uint8_t * b = row + (c >> 3) * tri_qc_block_bytes(type);
    switch (type) {
        case TRI_QC_Q2_K: { /* scales[16] @0, qs[64] @16, d @80, dmin @82 */
            const int h = j / 4, sh = 2 * (j % 4);
            for (int i = 0; i < 8 / ks; i++) {
                const int k = k0 + i * ks;
                ch->q[i] = (int32_t) ((tri_qc_word(b + 16 + 32 * h + 4 * k, true) >> sh) & 0x03030303u);
            }
            for (int g = 0; g < 2; g++) {
                ch->sc[g] = b[2 * j + g] & 15;
                ch->mn[g] = b[2 * j + g] >> 4;
            }
            ch->d = tri_qc_f16(b + 80);
            ch->m = tri_qc_f16(b + 82);
            break;
        }
        case TRI_QC_Q3_K: { /* hmask[32] @0, qs[64] @32, scales[12] @96, d @108: d * sc * (q2 - 4 * !hbit) */
            const int h = j / 4, sh = 2 * (j % 4);
            for (int i = 0; i < 8 / ks; i++) {
                const int k = k0 + i * ks;
                const uint32_t q2 = (tri_qc_u32(b + 32 + 32 * h + 4 * k) >> sh) & 0x03030303u;
                const uint32_t hb = (tri_qc_u32(b + 4 * k) >> j) & 0x01010101u;
                ch->q[i] = (int32_t) (q2 | (hb << 2));
            }
            for (int g = 0; g < 2; g++) {
                const int s = 2 * j + g;
                const int lo = (b[96 + s % 8] >> (4 * (s / 8))) & 15;
                const int hi = (b[96 + 8 + s % 4] >> (2 * (s / 4))) & 3;
                ch->sc[g] = (lo | (hi << 4)) - 32;
            }
            ch->off = 4;
            ch->d = tri_qc_f16(b + 108);
            break;
        }
        case TRI_QC_Q4_K:   /* d @0, dmin @2, scales[12] @4, qs[128] @16 */
        case TRI_QC_Q5_K: { /* d @0, dmin @2, scales[12] @4, qh[32] @16, qs[128] @48 */
            /* super-blocks of 144 / 176 bytes keep qs (and qh) 16-byte aligned */
            uint32_t w[8], hw[8];
            const uint8_t * qs = b + (type == TRI_QC_Q4_K ? 16 : 48) + 32 * (j / 2);
            if (ks == 1) {
                tri_qc_words32(qs, w);
                if (type == TRI_QC_Q5_K) {
                    tri_qc_words32(b + 16, hw);
                }
            } else {
                for (int i = 0; i < 8 / ks; i++) {
                    w[i] = tri_qc_word(qs + 4 * (k0 + i * ks), true);
                    hw[i] = type == TRI_QC_Q5_K ? tri_qc_word(b + 16 + 4 * (k0 + i * ks), true) : 0;
                }
            }
            const int sh = 4 * (j % 2);
            for (int i = 0; i < 8 / ks; i++) {
                ch->q[i] = (int32_t) ((w[i] >> sh) & 0x0F0F0F0Fu);
                if (type == TRI_QC_Q5_K) {
                    ch->q[i] |= (int32_t) (((hw[i] >> j) & 0x01010101u) << 4);
                }
            }
            tri_qc_scale_min_k4(j, b + 4, &ch->sc[0], &ch->mn[0]);
            ch->sc[1] = ch->sc[0];
            ch->mn[1] = ch->mn[0];
            ch->d = tri_qc_f16(b);
            ch->m = tri_qc_f16(b + 2);
            break;
        }
        default: { /* Q6_K: ql[128] @0, qh[64] @128, scales[16] (int8) @192, d @208: d * sc * (q - 32) */
            const int h = j / 4, r = j % 4;
            const uint8_t * ql = b + 64 * h + 32 * (r % 2);
            const uint8_t * qh = b + 128 + 32 * h;
            for (int i = 0; i < 8 / ks; i++) {
                const int k = k0 + i * ks;
                const uint32_t lo = (tri_qc_u32(ql + 4 * k) >> (4 * (r / 2))) & 0x0F0F0F0Fu;
                const uint32_t hi = (tri_qc_u32(qh + 4 * k) >> (2 * r)) & 0x03030303u;
                ch->q[i] = (int32_t) (lo | (hi << 4));
            }
            ch->sc[0] = (int8_t) b[192 + 2 * j];
            ch->sc[1] = (int8_t) b[192 + 2 * j + 1];
            ch->off = 32;
            ch->d = tri_qc_f16(b + 208);
            break;
        }
    }
}

/* All 32 codes of chunk c. */
TRI_QC_FN void tri_qc_prep(int type, const uint8_t * row, int64_t c, tri_qc_chunk * ch) {
    tri_qc_prep_words(type, row, c, 0, 1, ch);
}

/* ---- products ---- */

/* Activations of one chunk: 32 codes (8 words), the scale of their 32-value block (Q8_K: of the 256-value
 * block), Q8_1's s = fp16(d * sum of codes), and the sums of codes 0..15 and 16..31. */
typedef struct tri_qc_act {
    const int32_t * q;
    float           d, s;
    int32_t         sum[2];
} tri_qc_act;

/* The integer part of a chunk's product from its code sums s0 (values 0..15) and s1 (16..31) against activation
 * codes whose sums are sum[0], sum[1]: isum += sc0 (s0 - off sum0) + sc1 (s1 - off sum1) (sc = 1 for the 32-value
 * types), msum += mn0 sum0 + mn1 sum1. Where sc0 = sc1 (all but Q2_K, Q3_K, Q6_K), s0 may carry the whole sum and
 * s1 = 0. A K-quant super-block's chunks add into one isum and msum, as the CPU's reference does. */
TRI_QC_FN void tri_qc_isum(const tri_qc_chunk * ch, int32_t s0, int32_t s1, const int32_t * sum, int32_t * isum,
                           int32_t * msum) {
    *isum += ch->sc[0] * (s0 - ch->off * sum[0]) + ch->sc[1] * (s1 - ch->off * sum[1]);
    *msum += ch->mn[0] * sum[0] + ch->mn[1] * sum[1];
}
/* The float of one block's (or super-block's) sums: the CPU reference's formula of `kind`; d, m: the weights' scale
 * and min (dmin), dx, sx: the activations' scale and Q8_1 sum term. */
TRI_QC_FN float tri_qc_finish(int kind, float d, float m, float dx, float sx, int32_t isum, int32_t msum) {
    const float r = d * dx * (float) isum;
    if (kind == TRI_QC_MIN) {
        return r + m * sx;
    }
    return kind == TRI_QC_K ? r - dx * m * (float) msum : r;
}

/* Chunk x activations, the CPU reference's formula of `kind` for this chunk's share. */
TRI_QC_FN float tri_qc_dot(int kind, const tri_qc_chunk * ch, const tri_qc_act * a) {
    int32_t s0 = 0, s1 = 0, isum = 0, msum = 0;
    for (int k = 0; k < 4; k++) {
        s0 = tri_qc_dp4a(ch->q[k], a->q[k], s0);
        s1 = tri_qc_dp4a(ch->q[4 + k], a->q[4 + k], s1);
    }
    tri_qc_isum(ch, s0, s1, a->sum, &isum, &msum);
    return tri_qc_finish(kind, ch->d, ch->m, a->d, a->s, isum, msum);
}

/* Value i (0..31) of a chunk, as the CPU's dequantizer computes it. */
TRI_QC_FN float tri_qc_value(int kind, const tri_qc_chunk * ch, int i) {
    const int code = (int8_t) (uint8_t) ((uint32_t) ch->q[i / 4] >> (8 * (i % 4))) - ch->off;
    if (kind == TRI_QC_SYM) {
        return ch->d * (float) code;
    }
    if (kind == TRI_QC_MIN) {
        return ch->d * (float) code + ch->m;
    }
    const float dl = ch->d * (float) ch->sc[i / 16];
    if (kind == TRI_QC_K_SYM) {
        return dl * (float) code;
    }
    return dl * (float) code - ch->m * (float) ch->mn[i / 16];
}

/* ---- activation quantization (ggml_ops' reference quantizers, operation by operation) ---- */

/* Symmetric 8-bit codes of n values with scale amax / 127; returns that scale (before any fp16 rounding). */
TRI_QC_FN float tri_qc_quant8(const float * x, int n, float amax, int8_t * q) {
    const float d  = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    for (int i = 0; i < n; i++) {
        int v = (int) roundf(x[i] * id);
        v = v < -127 ? -127 : v > 127 ? 127 : v;
        q[i] = (int8_t) v;
    }
    return d;
}

#endif
