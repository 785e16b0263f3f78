/* Embedding lookup and row dequantization on the device. */
#include "dequant.cuh"

template <int T>
__global__ void tri_cu_get_rows_kernel(const uint8_t * W, int64_t ne0, const int32_t * ids, float * out) {
    const int t = blockIdx.y;
    const uint8_t * row = W + (size_t) ids[t] * tri_cu_row_bytes<T>(ne0);
    for (int64_t i = (int64_t) blockIdx.x * blockDim.x + threadIdx.x; i < ne0; i += (int64_t) gridDim.x * blockDim.x) {
        out[(size_t) t * ne0 + i] = tri_cu_deq<T>(row, i);
    }
}

template <int T>
__global__ void tri_cu_dequantize_kernel(const uint8_t * W, int64_t ne0, float * out) {
    const int64_t r = blockIdx.y;
    const uint8_t * row = W + (size_t) r * tri_cu_row_bytes<T>(ne0);
    for (int64_t i = (int64_t) blockIdx.x * blockDim.x + threadIdx.x; i < ne0; i += (int64_t) gridDim.x * blockDim.x) {
        out[(size_t) r * ne0 + i] = tri_cu_deq<T>(row, i);
    }
}

extern "C" bool tri_cuda_type_supported(int type) {
    switch (type) {
#define TRI_CU_CASE(T) case T: return true;
        TRI_CU_TYPE_LIST(TRI_CU_CASE)
#undef TRI_CU_CASE
        default: return false;
    }
}

static int tri_cu_qk(int type) {
    switch (type) {
#define TRI_CU_CASE(T) case T: return tri_cu_blk<T>::qk;
        TRI_CU_TYPE_LIST(TRI_CU_CASE)
#undef TRI_CU_CASE
        default: return 0;
    }
}

extern "C" enum triattn_status tri_cuda_get_rows(int type, const void * W, int64_t ne0, const int32_t * ids, int n_tok,
                                                 float * out, void * stream) {
    const int qk = tri_cu_qk(type);
    TRI_CUDA_REQUIRE(qk > 0 && ne0 > 0 && ne0 % qk == 0 && n_tok > 0 && n_tok <= 65535);
    const dim3 grid(tri_cu_blocks(ne0, 256) < 64 ? tri_cu_blocks(ne0, 256) : 64, n_tok);
    switch (type) {
#define TRI_CU_CASE(T) case T: tri_cu_get_rows_kernel<T><<<grid, 256, 0, TRI_CU_STREAM(stream)>>>((const uint8_t *) W, ne0, ids, out); break;
        TRI_CU_TYPE_LIST(TRI_CU_CASE)
#undef TRI_CU_CASE
        default: break;
    }
    TRI_CUDA_LAUNCHED();
    return TRIATTN_OK;
}

extern "C" enum triattn_status tri_cuda_dequantize(int type, const void * W, int64_t ne0, int64_t n_rows, float * out,
                                                   void * stream) {
    const int qk = tri_cu_qk(type);
    TRI_CUDA_REQUIRE(qk > 0 && ne0 > 0 && ne0 % qk == 0 && n_rows > 0 && n_rows <= 65535);
    const dim3 grid(tri_cu_blocks(ne0, 256) < 64 ? tri_cu_blocks(ne0, 256) : 64, (unsigned) n_rows);
    switch (type) {
#define TRI_CU_CASE(T) case T: tri_cu_dequantize_kernel<T><<<grid, 256, 0, TRI_CU_STREAM(stream)>>>((const uint8_t *) W, ne0, out); break;
        TRI_CU_TYPE_LIST(TRI_CU_CASE)
#undef TRI_CU_CASE
        default: break;
    }
    TRI_CUDA_LAUNCHED();
    return TRIATTN_OK;
}
