/* RMSNorm: one block of 256 threads per row. */
#include "common.cuh"
#include "rmsnorm.cuh"

__global__ void __launch_bounds__(256)
tri_cu_rmsnorm_kernel(const float * x, const float * w, float * y, int n, int64_t ld, float eps) {
    __shared__ double sh[33];
    const float * xr = x + (size_t) blockIdx.x * ld;
    float * yr = y + (size_t) blockIdx.x * ld;
    double ss = 0.0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        ss += (double) xr[i] * xr[i];
    }
    ss = tri_cu_block_sum_d(ss, sh);
    const float r = (float) (1.0 / sqrt(ss / n + eps));
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        yr[i] = w ? xr[i] * r * w[i] : xr[i] * r;
    }
}

extern "C" enum triattn_status tri_cuda_rmsnorm(const float * x, const float * w, float * y, int n_rows, int n,
                                                int64_t ld, float eps, void * stream) {
    TRI_CUDA_REQUIRE(n_rows > 0 && n > 0 && ld >= n);
    tri_cu_rmsnorm_kernel<<<n_rows, 256, 0, TRI_CU_STREAM(stream)>>>(x, w, y, n, ld, eps);
    TRI_CUDA_LAUNCHED();
    return TRIATTN_OK;
}
