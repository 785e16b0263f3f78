/* Dequantization on the device: the value of element i of a weight row, for every ggml type the engine
 * loads (byte layouts of ggml_ops/quants.h, read from raw bytes so rows need no alignment beyond their
 * element type). Launchers: embedding rows (get_rows) and whole-row dequantization (for tests). */
#ifndef TRI_CUDA_DEQUANT_CUH
#define TRI_CUDA_DEQUANT_CUH

#include "triattn.h"

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* True when the device kernels decode ggml type `type`. */
bool tri_cuda_type_supported(int type);
/* out[t][0..ne0) = row ids[t] of W (type, ne0 values per row); ids on the device, n_tok rows. */
enum triattn_status tri_cuda_get_rows(int type, const void * W, int64_t ne0, const int32_t * ids, int n_tok, float * out,
                                      void * stream);
/* out[r][0..ne0) = row r of W for r < n_rows. */
enum triattn_status tri_cuda_dequantize(int type, const void * W, int64_t ne0, int64_t n_rows, float * out,
                                        void * stream);

#ifdef __cplusplus
}
#endif

#ifdef __CUDACC__
#include "common.cuh"

/* ggml type ids (ggml_ops/types.h). */
enum {
    TRI_CU_F32 = 0, TRI_CU_F16 = 1, TRI_CU_Q4_0 = 2, TRI_CU_Q4_1 = 3, TRI_CU_Q5_0 = 6, TRI_CU_Q5_1 = 7,
    TRI_CU_Q8_0 = 8, TRI_CU_Q2_K = 10, TRI_CU_Q3_K = 11, TRI_CU_Q4_K = 12, TRI_CU_Q5_K = 13, TRI_CU_Q6_K = 14,
    TRI_CU_BF16 = 30,
};

/* Values per block and bytes per block. */
template <int T> struct tri_cu_blk;
template <> struct tri_cu_blk<TRI_CU_F32>  { static constexpr int qk = 1;   static constexpr int bytes = 4; };
template <> struct tri_cu_blk<TRI_CU_F16>  { static constexpr int qk = 1;   static constexpr int bytes = 2; };
template <> struct tri_cu_blk<TRI_CU_BF16> { static constexpr int qk = 1;   static constexpr int bytes = 2; };
template <> struct tri_cu_blk<TRI_CU_Q4_0> { static constexpr int qk = 32;  static constexpr int bytes = 18; };
template <> struct tri_cu_blk<TRI_CU_Q4_1> { static constexpr int qk = 32;  static constexpr int bytes = 20; };
template <> struct tri_cu_blk<TRI_CU_Q5_0> { static constexpr int qk = 32;  static constexpr int bytes = 22; };
template <> struct tri_cu_blk<TRI_CU_Q5_1> { static constexpr int qk = 32;  static constexpr int bytes = 24; };
template <> struct tri_cu_blk<TRI_CU_Q8_0> { static constexpr int qk = 32;  static constexpr int bytes = 34; };
template <> struct tri_cu_blk<TRI_CU_Q2_K> { static constexpr int qk = 256; static constexpr int bytes = 84; };
template <> struct tri_cu_blk<TRI_CU_Q3_K> { static constexpr int qk = 256; static constexpr int bytes = 110; };
template <> struct tri_cu_blk<TRI_CU_Q4_K> { static constexpr int qk = 256; static constexpr int bytes = 144; };
template <> struct tri_cu_blk<TRI_CU_Q5_K> { static constexpr int qk = 256; static constexpr int bytes = 176; };
template <> struct tri_cu_blk<TRI_CU_Q6_K> { static constexpr int qk = 256; static constexpr int bytes = 210; };

/* Element i of a row starting at `row`; b = its block, l = index inside the block. The float expressions
 * follow the CPU dequantizers (quants.c, quants_k.c) operation by operation. */
template <int T> __device__ __forceinline__ float tri_cu_deq(const uint8_t * row, int64_t i);

template <> __device__ __forceinline__ float tri_cu_deq<TRI_CU_F32>(const uint8_t * row, int64_t i) {
    return ((const float *) row)[i];
}
template <> __device__ __forceinline__ float tri_cu_deq<TRI_CU_F16>(const uint8_t * row, int64_t i) {
    return __half2float(((const __half *) row)[i]);
}
template <> __device__ __forceinline__ float tri_cu_deq<TRI_CU_BF16>(const uint8_t * row, int64_t i) {
    return __uint_as_float((uint32_t) ((const uint16_t *) row)[i] << 16);
}
/* x = d * (q - 8) */
template <> __device__ __forceinline__ float tri_cu_deq<TRI_CU_Q4_0>(const uint8_t * row, int64_t i) {
    const uint8_t * b = row + (i / 32) * 18;
    const int l = (int) (i % 32);
    const int q = l < 16 ? (b[2 + l] & 15) : (b[2 + l - 16] >> 4);
    return tri_cu_f16(b) * (float) (q - 8);
}
/* x = d * q + m */
template <> __device__ __forceinline__ float tri_cu_deq<TRI_CU_Q4_1>(const uint8_t * row, int64_t i) {
    const uint8_t * b = row + (i / 32) * 20;
    const int l = (int) (i % 32);
    const int q = l < 16 ? (b[4 + l] & 15) : (b[4 + l - 16] >> 4);
    return tri_cu_f16(b) * (float) q + tri_cu_f16(b + 2);
}
/* x = d * ((nibble | bit_l << 4) - 16) */
template <> __device__ __forceinline__ float tri_cu_deq<TRI_CU_Q5_0>(const uint8_t * row, int64_t i) {
    const uint8_t * b = row + (i / 32) * 22;
    const int l = (int) (i % 32);
    const uint32_t qh = tri_cu_u32(b + 2);
    const int nib = l < 16 ? (b[6 + l] & 15) : (b[6 + l - 16] >> 4);
    const int q = nib | (int) (((qh >> l) & 1u) << 4);
    return tri_cu_f16(b) * (float) (q - 16);
}
/* x = d * (nibble | bit_l << 4) + m */
template <> __device__ __forceinline__ float tri_cu_deq<TRI_CU_Q5_1>(const uint8_t * row, int64_t i) {
    const uint8_t * b = row + (i / 32) * 24;
    const int l = (int) (i % 32);
    const uint32_t qh = tri_cu_u32(b + 4);
    const int nib = l < 16 ? (b[8 + l] & 15) : (b[8 + l - 16] >> 4);
    const int q = nib | (int) (((qh >> l) & 1u) << 4);
    return tri_cu_f16(b) * (float) q + tri_cu_f16(b + 2);
}
/* x = q * d */
template <> __device__ __forceinline__ float tri_cu_deq<TRI_CU_Q8_0>(const uint8_t * row, int64_t i) {
    const uint8_t * b = row + (i / 32) * 34;
    return (float) (int8_t) b[2 + i % 32] * tri_cu_f16(b);
}
/* scales[16] @0, qs[64] @16, d @80, dmin @82: x = d*(sc & 15) * q - dmin*(sc >> 4) */
template <> __device__ __forceinline__ float tri_cu_deq<TRI_CU_Q2_K>(const uint8_t * row, int64_t i) {
    const uint8_t * b = row + (i / 256) * 84;
    const int e = (int) (i % 256), h = e / 128, sh = (e % 128) / 32, l = e % 32;
    const int q = (b[16 + 32 * h + l] >> (2 * sh)) & 3;
    const uint8_t sc = b[e / 16];
    const float dl = tri_cu_f16(b + 80) * (float) (sc & 15);
    const float ml = tri_cu_f16(b + 82) * (float) (sc >> 4);
    return dl * (float) q - ml;
}
/* hmask[32] @0, qs[64] @32, scales[12] @96, d @108: x = d * sc * (q2 - 4 * !hbit) */
template <> __device__ __forceinline__ float tri_cu_deq<TRI_CU_Q3_K>(const uint8_t * row, int64_t i) {
    const uint8_t * b = row + (i / 256) * 110;
    const int e = (int) (i % 256), h = e / 128, sh = (e % 128) / 32, l = e % 32, j = e / 16;
    const int q2 = (b[32 + 32 * h + l] >> (2 * sh)) & 3;
    const int hb = (b[l] >> (e / 32)) & 1;
    const int lo = (b[96 + j % 8] >> (4 * (j / 8))) & 15;
    const int hi = (b[96 + 8 + j % 4] >> (2 * (j / 4))) & 3;
    const int sc = (lo | (hi << 4)) - 32;
    const float dl = tri_cu_f16(b + 108) * (float) sc;
    return dl * (float) (q2 - (hb ? 0 : 4));
}
/* 6-bit scale and min of sub-block j of a Q4_K/Q5_K scales[12] array. */
__device__ __forceinline__ void tri_cu_scale_min_k4(int j, const uint8_t * q, int * sc, int * mn) {
    if (j < 4) {
        *sc = q[j] & 63;
        *mn = q[j + 4] & 63;
    } else {
        *sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        *mn = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}
/* d @0, dmin @2, scales[12] @4, qs[128] @16: x = d*sc*q - dmin*mn */
template <> __device__ __forceinline__ float tri_cu_deq<TRI_CU_Q4_K>(const uint8_t * row, int64_t i) {
    const uint8_t * b = row + (i / 256) * 144;
    const int e = (int) (i % 256), j = e / 32, l = e % 32;
    int sc, mn;
    tri_cu_scale_min_k4(j, b + 4, &sc, &mn);
    const int q = (b[16 + 32 * (j / 2) + l] >> (4 * (j % 2))) & 15;
    const float dl = tri_cu_f16(b) * (float) sc;
    const float ml = tri_cu_f16(b + 2) * (float) mn;
    return dl * (float) q - ml;
}
/* d @0, dmin @2, scales[12] @4, qh[32] @16, qs[128] @48 */
template <> __device__ __forceinline__ float tri_cu_deq<TRI_CU_Q5_K>(const uint8_t * row, int64_t i) {
    const uint8_t * b = row + (i / 256) * 176;
    const int e = (int) (i % 256), j = e / 32, l = e % 32;
    int sc, mn;
    tri_cu_scale_min_k4(j, b + 4, &sc, &mn);
    const int q = ((b[48 + 32 * (j / 2) + l] >> (4 * (j % 2))) & 15) | (((b[16 + l] >> j) & 1) << 4);
    const float dl = tri_cu_f16(b) * (float) sc;
    const float ml = tri_cu_f16(b + 2) * (float) mn;
    return dl * (float) q - ml;
}
/* ql[128] @0, qh[64] @128, scales[16] (int8) @192, d @208: x = d * sc * (q - 32) */
template <> __device__ __forceinline__ float tri_cu_deq<TRI_CU_Q6_K>(const uint8_t * row, int64_t i) {
    const uint8_t * b = row + (i / 256) * 210;
    const int e = (int) (i % 256), h = e / 128, r = e % 128;
    const int lo = (b[64 * h + r % 64] >> (4 * (r / 64))) & 15;
    const int hi = (b[128 + 32 * h + r % 32] >> (2 * (r / 32))) & 3;
    const float dl = tri_cu_f16(b + 208) * (float) (int8_t) b[192 + e / 16];
    return dl * (float) ((lo | (hi << 4)) - 32);
}

/* Bytes of a row of ne0 values. */
template <int T> __host__ __device__ __forceinline__ size_t tri_cu_row_bytes(int64_t ne0) {
    return (size_t) (ne0 / tri_cu_blk<T>::qk) * tri_cu_blk<T>::bytes;
}

/* Calls F::template run<T>(args...) for the runtime type id; false when the type is not supported. */
#define TRI_CU_TYPE_LIST(X) X(TRI_CU_F32) X(TRI_CU_F16) X(TRI_CU_BF16) X(TRI_CU_Q4_0) X(TRI_CU_Q4_1) X(TRI_CU_Q5_0) \
    X(TRI_CU_Q5_1) X(TRI_CU_Q8_0) X(TRI_CU_Q2_K) X(TRI_CU_Q3_K) X(TRI_CU_Q4_K) X(TRI_CU_Q5_K) X(TRI_CU_Q6_K)

#endif /* __CUDACC__ */

#endif
