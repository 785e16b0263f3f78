/* Embedding lookup and row dequantization: one thread per 32-value chunk (float types: per value). */
#include "common.cuh"
#include "dequant.cuh"
#include "matmul.cuh"
#include "qchunk.h"

enum { TRI_DQ_F32 = 0, TRI_DQ_F16 = 1, TRI_DQ_BF16 = 30 };

/* Row r of W as floats into out (ne0 values), by the block's threads. */
__device__ static void tri_cu_row_to_float(int type, const uint8_t * W, int64_t ne0, int64_t r, float * out) {
    if (type == TRI_DQ_F32 || type == TRI_DQ_F16 || type == TRI_DQ_BF16) {
        const size_t es = type == TRI_DQ_F32 ? 4 : 2;
        const uint8_t * row = W + (size_t) r * ne0 * es;
        for (int64_t i = threadIdx.x; i < ne0; i += blockDim.x) {
            out[i] = type == TRI_DQ_F32 ? ((const float *) row)[i]
                   : type == TRI_DQ_F16 ? __half2float(((const __half *) row)[i])
                                        : __uint_as_float((uint32_t) ((const uint16_t *) row)[i] << 16);
        }
        return;
    }
    const uint8_t * row = W + (size_t) r * (size_t) (ne0 / tri_qc_block_values(type)) * tri_qc_block_bytes(type);
    const int kind = tri_qc_kind(type);
    for (int64_t c = threadIdx.x; c < ne0 / 32; c += blockDim.x) {
        tri_qc_chunk ch;
        tri_qc_prep(type, row, c, &ch);
        for (int i = 0; i < 32; i++) {
            out[32 * c + i] = tri_qc_value(kind, &ch, i);
        }
    }
}

__global__ void tri_cu_get_rows_kernel(int type, const uint8_t * W, int64_t ne0, const int32_t * ids, float * out) {
    tri_cu_pdl_enter();
    tri_cu_row_to_float(type, W, ne0, ids[blockIdx.x], out + (size_t) blockIdx.x * ne0);
}

__global__ void tri_cu_dequantize_kernel(int type, const uint8_t * W, int64_t ne0, float * out) {
    tri_cu_row_to_float(type, W, ne0, blockIdx.x, out + (size_t) blockIdx.x * ne0);
}

static bool tri_cu_rows_ok(int type, int64_t ne0) {
    const int qk = tri_qc_block_bytes(type) > 0 ? tri_qc_block_values(type) : 1;
    return tri_cuda_type_supported(type) && ne0 > 0 && ne0 % qk == 0 && (qk == 1 || ne0 % 32 == 0);
}

extern "C" enum triattn_status tri_cuda_get_rows(int type, const void * W, int64_t ne0, const int32_t * ids, int n_tok,
                                                 float * out, void * stream) {
    TRI_CUDA_REQUIRE(tri_cu_rows_ok(type, ne0) && n_tok > 0);
    (void) tri_cu_launch(tri_cu_get_rows_kernel, n_tok, 128, TRI_CU_STREAM(stream), type, (const uint8_t *) W, ne0, ids,
                          out);
    TRI_CUDA_LAUNCHED();
    return TRIATTN_OK;
}

extern "C" enum triattn_status tri_cuda_dequantize(int type, const void * W, int64_t ne0, int64_t n_rows, float * out,
                                                   void * stream) {
    TRI_CUDA_REQUIRE(tri_cu_rows_ok(type, ne0) && n_rows > 0 && n_rows <= 0x7fffffff);
    tri_cu_dequantize_kernel<<<(unsigned) n_rows, 128, 0, TRI_CU_STREAM(stream)>>>(type, (const uint8_t *) W, ne0, out);
    TRI_CUDA_LAUNCHED();
    return TRIATTN_OK;
}
