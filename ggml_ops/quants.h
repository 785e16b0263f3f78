/* ggml quantization block layouts (byte-compatible with GGUF files) and the scalar reference kernels.
 *
 * Every block holds a fixed number of values; d/m/dmin are fp16 unless noted. Elements are numbered
 * 0..QK-1 inside a block; "q[i]" below is the integer code of element i.
 * The SIMD kernels in arch/ assume activation codes (Q8_*) lie in [-127, 127]: every quantizer here
 * produces that range. */
#ifndef TRI_QUANTS_H
#define TRI_QUANTS_H

#include "fp16.h"
#include "types.h"

#include <stdint.h>

#define TRI_QK4_0 32
#define TRI_QK4_1 32
#define TRI_QK5_0 32
#define TRI_QK5_1 32
#define TRI_QK8_0 32
#define TRI_QK8_1 32
#define TRI_QK_K  256
#define TRI_K_SCALE_SIZE 12

#define TRI_CLAMP(v, lo, hi) ((v) < (lo) ? (lo) : (v) > (hi) ? (hi) : (v))

/* x[i] = d * (q[i] - 8); q[i] = low nibble of qs[i] (i < 16), high nibble of qs[i-16]. 4.5 bpw */
typedef struct {
    tri_fp16 d;
    uint8_t  qs[TRI_QK4_0 / 2];
} tri_block_q4_0;
_Static_assert(sizeof(tri_block_q4_0) == 18, "q4_0 size");

/* x[i] = d * q[i] + m; nibbles as Q4_0. 5 bpw */
typedef struct {
    tri_fp16 d;
    tri_fp16 m;
    uint8_t  qs[TRI_QK4_1 / 2];
} tri_block_q4_1;
_Static_assert(sizeof(tri_block_q4_1) == 20, "q4_1 size");

/* x[i] = d * ((nibble_i | bit_i << 4) - 16); bit_i = bit i of qh read as a little-endian uint32. 5.5 bpw */
typedef struct {
    tri_fp16 d;
    uint8_t  qh[4];
    uint8_t  qs[TRI_QK5_0 / 2];
} tri_block_q5_0;
_Static_assert(sizeof(tri_block_q5_0) == 22, "q5_0 size");

/* x[i] = d * (nibble_i | bit_i << 4) + m. 6 bpw */
typedef struct {
    tri_fp16 d;
    tri_fp16 m;
    uint8_t  qh[4];
    uint8_t  qs[TRI_QK5_1 / 2];
} tri_block_q5_1;
_Static_assert(sizeof(tri_block_q5_1) == 24, "q5_1 size");

/* x[i] = d * qs[i]. 8.5 bpw */
typedef struct {
    tri_fp16 d;
    int8_t   qs[TRI_QK8_0];
} tri_block_q8_0;
_Static_assert(sizeof(tri_block_q8_0) == 34, "q8_0 size");

/* Activations for Q4_1/Q5_1: x[i] = d * qs[i]; s = d * sum(qs) (lets the dot add m * s). */
typedef struct {
    tri_fp16 d;
    tri_fp16 s;
    int8_t   qs[TRI_QK8_1];
} tri_block_q8_1;
_Static_assert(sizeof(tri_block_q8_1) == 36, "q8_1 size");

/* K-quants: super-blocks of 256 values split in sub-blocks of 16 or 32, each with its own scale. */

/* Sub-blocks of 16 (j = i/16): x[i] = d * (scales[j] & 15) * q[i] - dmin * (scales[j] >> 4).
 * q[i] (2 bits): i = 128*h + 32*s + l -> (qs[32*h + l] >> 2*s) & 3. 2.625 bpw */
typedef struct {
    uint8_t  scales[TRI_QK_K / 16];
    uint8_t  qs[TRI_QK_K / 4];
    tri_fp16 d;
    tri_fp16 dmin;
} tri_block_q2_K;
_Static_assert(sizeof(tri_block_q2_K) == 84, "q2_K size");

/* Sub-blocks of 16: x[i] = d * (sc[j] - 32) * (q2[i] - 4 * !hbit[i]).
 * q2 as Q2_K; hbit[i] = (hmask[i % 32] >> (i / 32)) & 1.
 * 6-bit sc[j]: low 4 bits = (scales[j % 8] >> 4*(j / 8)) & 15, high 2 bits = (scales[8 + j % 4] >> 2*(j / 4)) & 3.
 * 3.4375 bpw */
typedef struct {
    uint8_t  hmask[TRI_QK_K / 8];
    uint8_t  qs[TRI_QK_K / 4];
    uint8_t  scales[12];
    tri_fp16 d;
} tri_block_q3_K;
_Static_assert(sizeof(tri_block_q3_K) == 110, "q3_K size");

/* Sub-blocks of 32 (j = i/32): x[i] = d * sc[j] * q[i] - dmin * mn[j]; 6-bit sc/mn from scales
 * (tri_get_scale_min_k4). q[i] (4 bits): i = 64*c + 32*h + l -> (qs[32*c + l] >> 4*h) & 15. 4.5 bpw */
typedef struct {
    tri_fp16 d;
    tri_fp16 dmin;
    uint8_t  scales[TRI_K_SCALE_SIZE];
    uint8_t  qs[TRI_QK_K / 2];
} tri_block_q4_K;
_Static_assert(sizeof(tri_block_q4_K) == 144, "q4_K size");

/* As Q4_K with a fifth bit: q[i] |= ((qh[i % 32] >> (i / 32)) & 1) << 4. 5.5 bpw */
typedef struct {
    tri_fp16 d;
    tri_fp16 dmin;
    uint8_t  scales[TRI_K_SCALE_SIZE];
    uint8_t  qh[TRI_QK_K / 8];
    uint8_t  qs[TRI_QK_K / 2];
} tri_block_q5_K;
_Static_assert(sizeof(tri_block_q5_K) == 176, "q5_K size");

/* Sub-blocks of 16: x[i] = d * scales[i/16] * (q[i] - 32), q 6 bits. With i = 128*h + r (r < 128):
 * low 4 bits = (ql[64*h + r % 64] >> 4*(r / 64)) & 15, high 2 bits = (qh[32*h + r % 32] >> 2*(r / 32)) & 3.
 * 6.5625 bpw */
typedef struct {
    uint8_t  ql[TRI_QK_K / 2];
    uint8_t  qh[TRI_QK_K / 4];
    int8_t   scales[TRI_QK_K / 16];
    tri_fp16 d;
} tri_block_q6_K;
_Static_assert(sizeof(tri_block_q6_K) == 210, "q6_K size");

/* Activations for K-quants: x[i] = d * qs[i] (d is a float); bsums[j] = sum of qs[16j .. 16j+15]. */
typedef struct {
    float   d;
    int8_t  qs[TRI_QK_K];
    int16_t bsums[TRI_QK_K / 16];
} tri_block_q8_K;
_Static_assert(sizeof(tri_block_q8_K) == 292, "q8_K size");

/* 6-bit scale and min of sub-block j (0..7) of a Q4_K/Q5_K scales[12] array. */
static inline void tri_get_scale_min_k4(int j, const uint8_t * q, uint8_t * sc, uint8_t * mn) {
    if (j < 4) {
        *sc = q[j] & 63;
        *mn = q[j + 4] & 63;
    } else {
        *sc = (uint8_t)((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
        *mn = (uint8_t)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
}

/* Packs eight 6-bit scales and mins into the 12-byte layout tri_get_scale_min_k4 reads (its inverse). */
void tri_pack_scale_min_k4(const uint8_t * sc, const uint8_t * mn, uint8_t * out);

/* 16 signed 6-bit scales (-32..31) of a Q3_K block. */
static inline void tri_q3_K_scales(const uint8_t * s, int8_t out[16]) {
    for (int j = 0; j < 16; j++) {
        int lo = (s[j % 8] >> (4 * (j / 8))) & 15;
        int hi = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
        out[j] = (int8_t)((lo | (hi << 4)) - 32);
    }
}

/* ---- scalar reference kernels (quants.c, quants_k.c) ---- */

/* Dequantizers: k values (a multiple of the block size). */
void tri_dequantize_row_f16 (const void * restrict x, float * restrict y, int64_t k);
void tri_dequantize_row_bf16(const void * restrict x, float * restrict y, int64_t k);
void tri_dequantize_row_f32 (const void * restrict x, float * restrict y, int64_t k);
void tri_dequantize_row_q4_0(const void * restrict x, float * restrict y, int64_t k);
void tri_dequantize_row_q4_1(const void * restrict x, float * restrict y, int64_t k);
void tri_dequantize_row_q5_0(const void * restrict x, float * restrict y, int64_t k);
void tri_dequantize_row_q5_1(const void * restrict x, float * restrict y, int64_t k);
void tri_dequantize_row_q8_0(const void * restrict x, float * restrict y, int64_t k);
void tri_dequantize_row_q8_1(const void * restrict x, float * restrict y, int64_t k);
void tri_dequantize_row_q2_K(const void * restrict x, float * restrict y, int64_t k);
void tri_dequantize_row_q3_K(const void * restrict x, float * restrict y, int64_t k);
void tri_dequantize_row_q4_K(const void * restrict x, float * restrict y, int64_t k);
void tri_dequantize_row_q5_K(const void * restrict x, float * restrict y, int64_t k);
void tri_dequantize_row_q6_K(const void * restrict x, float * restrict y, int64_t k);
void tri_dequantize_row_q8_K(const void * restrict x, float * restrict y, int64_t k);

/* Reference quantizers (round-to-nearest, as ggml's quantize_row_*_ref). */
void tri_quantize_row_f16_ref (const float * restrict x, void * restrict y, int64_t k);
void tri_quantize_row_bf16_ref(const float * restrict x, void * restrict y, int64_t k);
void tri_quantize_row_f32_ref (const float * restrict x, void * restrict y, int64_t k);
void tri_quantize_row_q4_0_ref(const float * restrict x, void * restrict y, int64_t k);
void tri_quantize_row_q4_1_ref(const float * restrict x, void * restrict y, int64_t k);
void tri_quantize_row_q5_0_ref(const float * restrict x, void * restrict y, int64_t k);
void tri_quantize_row_q5_1_ref(const float * restrict x, void * restrict y, int64_t k);
void tri_quantize_row_q8_0_ref(const float * restrict x, void * restrict y, int64_t k);
void tri_quantize_row_q8_1_ref(const float * restrict x, void * restrict y, int64_t k);
void tri_quantize_row_q8_K_ref(const float * restrict x, void * restrict y, int64_t k);
/* Simple K-quant quantizers (min/max per sub-block, no search): good enough for tests. */
void tri_quantize_row_q2_K_ref(const float * restrict x, void * restrict y, int64_t k);
void tri_quantize_row_q3_K_ref(const float * restrict x, void * restrict y, int64_t k);
void tri_quantize_row_q4_K_ref(const float * restrict x, void * restrict y, int64_t k);
void tri_quantize_row_q5_K_ref(const float * restrict x, void * restrict y, int64_t k);
void tri_quantize_row_q6_K_ref(const float * restrict x, void * restrict y, int64_t k);

/* Scalar dot products: weight row x against an activation row y of the weight's vec_dot_type. */
void tri_vec_dot_f32_ref (int n, float * restrict s, const void * restrict x, const void * restrict y);
void tri_vec_dot_f16_ref (int n, float * restrict s, const void * restrict x, const void * restrict y);
void tri_vec_dot_bf16_ref(int n, float * restrict s, const void * restrict x, const void * restrict y);
void tri_vec_dot_q4_0_ref(int n, float * restrict s, const void * restrict x, const void * restrict y);
void tri_vec_dot_q4_1_ref(int n, float * restrict s, const void * restrict x, const void * restrict y);
void tri_vec_dot_q5_0_ref(int n, float * restrict s, const void * restrict x, const void * restrict y);
void tri_vec_dot_q5_1_ref(int n, float * restrict s, const void * restrict x, const void * restrict y);
void tri_vec_dot_q8_0_ref(int n, float * restrict s, const void * restrict x, const void * restrict y);
void tri_vec_dot_q2_K_ref(int n, float * restrict s, const void * restrict x, const void * restrict y);
void tri_vec_dot_q3_K_ref(int n, float * restrict s, const void * restrict x, const void * restrict y);
void tri_vec_dot_q4_K_ref(int n, float * restrict s, const void * restrict x, const void * restrict y);
void tri_vec_dot_q5_K_ref(int n, float * restrict s, const void * restrict x, const void * restrict y);
void tri_vec_dot_q6_K_ref(int n, float * restrict s, const void * restrict x, const void * restrict y);

#endif
