/* Element-wise kernels: grid-stride loops. */
#include "common.cuh"
#include "swiglu.cuh"

__global__ void tri_cu_swiglu_kernel(float * g, const float * u, int64_t n) {
    for (int64_t i = (int64_t) blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t) gridDim.x * blockDim.x) {
        const float v = g[i];
        g[i] = v / (1.0f + expf(-v)) * u[i];
    }
}

__global__ void tri_cu_add_kernel(float * x, const float * y, int64_t n) {
    for (int64_t i = (int64_t) blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t) gridDim.x * blockDim.x) {
        x[i] += y[i];
    }
}

__global__ void tri_cu_add_bias_kernel(float * y, const float * b, int64_t n, int64_t total) {
    for (int64_t i = (int64_t) blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (int64_t) gridDim.x * blockDim.x) {
        y[i] += b[i % n];
    }
}

static unsigned tri_cu_ew_blocks(int64_t n) {
    const unsigned b = tri_cu_blocks(n, 256);
    return b < 4096 ? b : 4096;
}

extern "C" enum triattn_status tri_cuda_swiglu(float * g, const float * u, int64_t n, void * stream) {
    TRI_CUDA_REQUIRE(n > 0);
    tri_cu_swiglu_kernel<<<tri_cu_ew_blocks(n), 256, 0, TRI_CU_STREAM(stream)>>>(g, u, n);
    TRI_CUDA_LAUNCHED();
    return TRIATTN_OK;
}

extern "C" enum triattn_status tri_cuda_add(float * x, const float * y, int64_t n, void * stream) {
    TRI_CUDA_REQUIRE(n > 0);
    tri_cu_add_kernel<<<tri_cu_ew_blocks(n), 256, 0, TRI_CU_STREAM(stream)>>>(x, y, n);
    TRI_CUDA_LAUNCHED();
    return TRIATTN_OK;
}

extern "C" enum triattn_status tri_cuda_add_bias(float * y, const float * b, int n_tok, int64_t n, void * stream) {
    TRI_CUDA_REQUIRE(n_tok > 0 && n > 0);
    const int64_t total = (int64_t) n_tok * n;
    tri_cu_add_bias_kernel<<<tri_cu_ew_blocks(total), 256, 0, TRI_CU_STREAM(stream)>>>(y, b, n, total);
    TRI_CUDA_LAUNCHED();
    return TRIATTN_OK;
}
