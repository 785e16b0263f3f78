/* KV append: one block per (token, KV head), threads over the head dim. */
#include "common.cuh"
#include "kv.cuh"

__global__ void tri_cu_kv_append_kernel(__half * K, __half * V, int32_t * pos, const int32_t * n_live, int il,
                                        int n_head_kv, int cap, int D, const float * k, const float * v, int32_t pos0) {
    const int t = blockIdx.x, h = blockIdx.y;
    const size_t lh = (size_t) il * n_head_kv + h;
    const int slot = n_live[lh] + t;
    if (slot >= cap) {
        return; /* never happens when the host checked room; keeps a bug from writing out of bounds */
    }
    const size_t dst = (lh * cap + slot) * D;
    const size_t src = ((size_t) t * n_head_kv + h) * D;
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        K[dst + d] = __float2half_rn(k[src + d]);
        V[dst + d] = __float2half_rn(v[src + d]);
    }
    if (threadIdx.x == 0) {
        pos[lh * cap + slot] = pos0 + t;
    }
}

__global__ void tri_cu_kv_bump_kernel(int32_t * n_live, int count, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < count) {
        n_live[i] += n;
    }
}

extern "C" enum triattn_status tri_cuda_kv_append(void * K, void * V, int32_t * pos, const int32_t * n_live, int il,
                                                  int n_head_kv, int cap, int D, const float * k, const float * v,
                                                  int n_tok, int32_t pos0, void * stream) {
    TRI_CUDA_REQUIRE(n_tok > 0 && n_tok <= 0x7fffffff && n_head_kv > 0 && n_head_kv <= 65535 && cap > 0 && D > 0 &&
                     il >= 0);
    const dim3 grid(n_tok, n_head_kv);
    const int threads = D < 128 ? 64 : 128;
    tri_cu_kv_append_kernel<<<grid, threads, 0, TRI_CU_STREAM(stream)>>>((__half *) K, (__half *) V, pos, n_live, il,
                                                                         n_head_kv, cap, D, k, v, pos0);
    TRI_CUDA_LAUNCHED();
    return TRIATTN_OK;
}

extern "C" enum triattn_status tri_cuda_kv_bump(int32_t * n_live, int count, int n, void * stream) {
    TRI_CUDA_REQUIRE(count > 0);
    tri_cu_kv_bump_kernel<<<tri_cu_blocks(count, 256), 256, 0, TRI_CU_STREAM(stream)>>>(n_live, count, n);
    TRI_CUDA_LAUNCHED();
    return TRIATTN_OK;
}
