/* In-place compaction: one block per (layer, KV head), rows moved in order through shared memory. Since
 * keep[i] >= i, staging rows [r0, r0 + R) before writing them means no chunk overwrites a slot that a later
 * chunk still has to read (their sources are all >= r0 + R > the slots written so far). */
#include "common.cuh"
#include "gather.cuh"

#define TRI_GATHER_THREADS 256
#define TRI_GATHER_SMEM    (32 * 1024) /* bytes of staged K + V rows */

__global__ void __launch_bounds__(TRI_GATHER_THREADS)
tri_cu_gather_kernel(__half * K, __half * V, int32_t * pos, int32_t * n_live, const int32_t * keep,
                     const int32_t * n_keep, int cap, int D, int R) {
    extern __shared__ __half sm[];
    __half * sk = sm;
    __half * sv = sm + (size_t) R * D;
    __shared__ int32_t sp[256];
    const int lh = blockIdx.x;
    const int nk = n_keep[lh];
    if (nk < 0) {
        return;
    }
    const int32_t * kp = keep + (size_t) lh * cap;
    __half * Kb = K + (size_t) lh * cap * D;
    __half * Vb = V + (size_t) lh * cap * D;
    int32_t * pb = pos + (size_t) lh * cap;
    for (int r0 = 0; r0 < nk; r0 += R) {
        const int nr = min(R, nk - r0);
        for (int e = threadIdx.x; e < nr * D; e += blockDim.x) {
            const int r = e / D, d = e % D;
            const int src = kp[r0 + r];
            sk[e] = Kb[(size_t) src * D + d];
            sv[e] = Vb[(size_t) src * D + d];
        }
        for (int r = threadIdx.x; r < nr; r += blockDim.x) {
            sp[r] = pb[kp[r0 + r]];
        }
        __syncthreads();
        for (int e = threadIdx.x; e < nr * D; e += blockDim.x) {
            const int r = e / D, d = e % D;
            Kb[(size_t) (r0 + r) * D + d] = sk[e];
            Vb[(size_t) (r0 + r) * D + d] = sv[e];
        }
        for (int r = threadIdx.x; r < nr; r += blockDim.x) {
            pb[r0 + r] = sp[r];
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        n_live[lh] = nk;
    }
}

extern "C" enum triattn_status tri_cuda_kv_gather(void * K, void * V, int32_t * pos, int32_t * n_live, const int32_t * keep,
                                                  const int32_t * n_keep, int n_lh, int cap, int D, void * stream) {
    TRI_CUDA_REQUIRE(n_lh > 0 && cap > 0 && D > 0 && (size_t) D * 2 * sizeof(__half) <= TRI_GATHER_SMEM);
    int R = (int) (TRI_GATHER_SMEM / ((size_t) D * 2 * sizeof(__half)));
    R = R > 256 ? 256 : R; /* sp[] holds 256 positions */
    const size_t smem = (size_t) R * D * 2 * sizeof(__half);
    tri_cu_gather_kernel<<<n_lh, TRI_GATHER_THREADS, smem, TRI_CU_STREAM(stream)>>>(
        (__half *) K, (__half *) V, pos, n_live, keep, n_keep, cap, D, R);
    TRI_CUDA_LAUNCHED();
    return TRIATTN_OK;
}
