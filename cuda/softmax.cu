/* Softmax: one block of 256 threads per row. */
#include "common.cuh"
#include "softmax.cuh"

__global__ void __launch_bounds__(256) tri_cu_softmax_kernel(float * x, int n, int64_t ld) {
    __shared__ float shm[32];
    __shared__ double shs[33];
    float * xr = x + (size_t) blockIdx.x * ld;
    float m = -INFINITY;
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        m = fmaxf(m, xr[j]);
    }
    for (int o = 16; o > 0; o >>= 1) {
        m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    }
    if ((threadIdx.x & 31) == 0) {
        shm[threadIdx.x >> 5] = m;
    }
    __syncthreads();
    m = -INFINITY;
    for (int w = 0; w < (int) (blockDim.x >> 5); w++) {
        m = fmaxf(m, shm[w]);
    }
    double sum = 0.0;
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        const float e = expf(xr[j] - m);
        xr[j] = e;
        sum += e;
    }
    sum = tri_cu_block_sum_d(sum, shs);
    const float inv = sum > 0.0 ? (float) (1.0 / sum) : 0.0f;
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        xr[j] *= inv;
    }
}

extern "C" enum triattn_status tri_cuda_softmax(float * x, int n_rows, int n, int64_t ld, void * stream) {
    TRI_CUDA_REQUIRE(n_rows > 0 && n > 0 && ld >= n);
    tri_cu_softmax_kernel<<<n_rows, 256, 0, TRI_CU_STREAM(stream)>>>(x, n, ld);
    TRI_CUDA_LAUNCHED();
    return TRIATTN_OK;
}
