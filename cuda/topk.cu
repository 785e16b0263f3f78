/* Radix top-k: 64 counting passes over the group's keys, one block per group. */
#include "common.cuh"
#include "topk.cuh"

#define TRI_TOPK_THREADS 1024

/* Unique key whose unsigned order is (score, index) order; NaN ranks as -inf and -0 as +0. */
__device__ __forceinline__ uint64_t tri_cu_topk_key(float s, int j) {
    if (isnan(s)) {
        s = -INFINITY;
    }
    if (s == 0.0f) {
        s = 0.0f;
    }
    uint32_t u = __float_as_uint(s);
    u = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
    return ((uint64_t) u << 32) | (uint32_t) j;
}

__global__ void __launch_bounds__(TRI_TOPK_THREADS)
tri_cu_topk_kernel(const float * scores, const int32_t * n_of, const int32_t * k_of, int stride, uint8_t * marks) {
    __shared__ unsigned int count;
    const int g = blockIdx.x;
    const float * s = scores + (size_t) g * stride;
    uint8_t * mk = marks + (size_t) g * stride;
    const int n = min(n_of[g], stride), k = k_of[g];
    if (n <= 0) {
        return;
    }
    if (k >= n || k <= 0) {
        for (int j = threadIdx.x; j < n; j += blockDim.x) {
            mk[j] = k > 0 ? 1 : 0;
        }
        return;
    }
    /* Largest T with #(key >= T) >= k: the k-th largest key, as keys are unique. */
    uint64_t T = 0;
    for (int bit = 63; bit >= 0; bit--) {
        const uint64_t cand = T | (1ull << bit);
        unsigned int local = 0;
        for (int j = threadIdx.x; j < n; j += blockDim.x) {
            local += tri_cu_topk_key(s[j], j) >= cand;
        }
        if (threadIdx.x == 0) {
            count = 0;
        }
        __syncthreads();
        if (local) {
            atomicAdd(&count, local);
        }
        __syncthreads();
        if (count >= (unsigned int) k) {
            T = cand;
        }
        __syncthreads(); /* everyone has read count before thread 0 resets it */
    }
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        mk[j] = tri_cu_topk_key(s[j], j) >= T;
    }
}

extern "C" enum triattn_status tri_cuda_topk(const float * scores, const int32_t * n_of, const int32_t * k_of,
                                             int n_groups, int stride, uint8_t * marks, void * stream) {
    TRI_CUDA_REQUIRE(n_groups > 0 && stride > 0);
    tri_cu_topk_kernel<<<n_groups, TRI_TOPK_THREADS, 0, TRI_CU_STREAM(stream)>>>(scores, n_of, k_of, stride, marks);
    TRI_CUDA_LAUNCHED();
    return TRIATTN_OK;
}
