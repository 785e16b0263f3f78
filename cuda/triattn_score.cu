/* TriAttention scoring kernels (see triattn_score.cuh). */
#include "common.cuh"
#include "triattn_score.cuh"

#define TRI_TS_WARPS 8

/* grid.x = candidate groups of TRI_TS_WARPS, grid.y = L * H rows; one warp per candidate, lanes over pairs. */
__global__ void __launch_bounds__(32 * TRI_TS_WARPS)
tri_cu_ta_score_kernel(const __half * K, const float * w, const float * cw, const int32_t * lo, const int32_t * hi,
                       int H, int Hkv, int D, int rope_dim, int pairing, int cap, float * scores) {
    const int row = blockIdx.y, l = row / H, hq = row % H, h = hq / (H / Hkv);
    const int lh = l * Hkv + h;
    const int j = blockIdx.x * TRI_TS_WARPS + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    const int c0 = lo[lh], n = hi[lh] - c0;
    if (j >= n) {
        return; /* whole warp */
    }
    const __half * k = K + ((size_t) lh * cap + c0 + j) * D;
    const float * wr = w + (size_t) row * D;
    const float * cr = cw + (size_t) row * D;
    const int F = rope_dim / 2;
    float acc = 0.0f;
    for (int f = lane; f < F; f += 32) {
        const int a = pairing == 0 ? 2 * f : f;
        const int b = pairing == 0 ? 2 * f + 1 : f + F;
        const float ka = __half2float(k[a]), kb = __half2float(k[b]);
        const float nrm = sqrtf(ka * ka + kb * kb);
        acc += wr[a] * ka + wr[b] * kb + (cr[a] + cr[b]) * nrm;
    }
    acc = tri_cu_warp_sum(acc);
    if (lane == 0) {
        scores[(size_t) row * cap + j] = acc;
    }
}

/* One block per (l, hq) row: population mean and std in double, then x = (x - mean) * (1 / max(std, 1e-6)). */
__global__ void __launch_bounds__(256)
tri_cu_ta_zscore_kernel(float * scores, const int32_t * lo, const int32_t * hi, int H, int Hkv, int cap) {
    __shared__ double sh[33];
    const int row = blockIdx.x, l = row / H, hq = row % H, h = hq / (H / Hkv);
    const int n = hi[l * Hkv + h] - lo[l * Hkv + h];
    if (n <= 0) {
        return; /* whole block */
    }
    float * x = scores + (size_t) row * cap;
    double sum = 0.0;
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        sum += x[j];
    }
    const double mean = tri_cu_block_sum_d(sum, sh) / n;
    double sq = 0.0;
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        const double d = x[j] - mean;
        sq += d * d;
    }
    const double sd = sqrt(tri_cu_block_sum_d(sq, sh) / n);
    const float inv = (float) (1.0 / (sd > 1e-6 ? sd : 1e-6));
    const float mf = (float) mean;
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        x[j] = (x[j] - mf) * inv;
    }
}

/* grid.x = candidate blocks, grid.y = L * Hkv. Same comparison order as the CPU (NaN never replaces). */
__global__ void tri_cu_ta_gqa_max_kernel(const float * scores, const int32_t * lo, const int32_t * hi, int H, int Hkv,
                                         int cap, float * agg) {
    const int lh = blockIdx.y, l = lh / Hkv, h = lh % Hkv, G = H / Hkv;
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= hi[lh] - lo[lh]) {
        return;
    }
    const float * s = scores + ((size_t) l * H + (size_t) h * G) * cap;
    float a = s[j];
    for (int g = 1; g < G; g++) {
        const float v = s[(size_t) g * cap + j];
        a = v > a ? v : a;
    }
    agg[(size_t) lh * cap + j] = a;
}

/* grid.x = candidate blocks, grid.y = groups (Hkv, or 1 when global). */
__global__ void tri_cu_ta_mean_kernel(const float * agg, const int32_t * lo, const int32_t * hi, int L, int Hkv, int cap,
                                      int global, float * mean) {
    const int gi = blockIdx.y;
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= hi[gi] - lo[gi]) {
        return;
    }
    float acc = 0.0f;
    int count = 0;
    for (int i = 0; i < L * Hkv; i++) {
        if (global || i % Hkv == gi) {
            acc += agg[(size_t) i * cap + j];
            count++;
        }
    }
    mean[(size_t) gi * cap + j] = acc * (1.0f / (float) count);
}

extern "C" enum triattn_status tri_cuda_triattn_score(const void * K, const float * w, const float * cw,
                                                      const int32_t * lo, const int32_t * hi, int L, int H, int Hkv, int D,
                                                      int rope_dim, int pairing, int cap, int max_n, float * scores,
                                                      void * stream) {
    TRI_CUDA_REQUIRE(L > 0 && H > 0 && Hkv > 0 && H % Hkv == 0 && (int64_t) L * H <= 65535 && rope_dim > 0 &&
                     rope_dim % 2 == 0 && rope_dim <= D && cap > 0 && max_n >= 0 && max_n <= cap);
    if (max_n == 0) {
        return TRIATTN_OK;
    }
    const dim3 grid(tri_cu_blocks(max_n, TRI_TS_WARPS), L * H);
    tri_cu_ta_score_kernel<<<grid, 32 * TRI_TS_WARPS, 0, TRI_CU_STREAM(stream)>>>(
        (const __half *) K, w, cw, lo, hi, H, Hkv, D, rope_dim, pairing, cap, scores);
    TRI_CUDA_LAUNCHED();
    return TRIATTN_OK;
}

extern "C" enum triattn_status tri_cuda_triattn_zscore(float * scores, const int32_t * lo, const int32_t * hi, int L,
                                                       int H, int Hkv, int cap, void * stream) {
    TRI_CUDA_REQUIRE(L > 0 && H > 0 && Hkv > 0 && H % Hkv == 0 && cap > 0);
    tri_cu_ta_zscore_kernel<<<L * H, 256, 0, TRI_CU_STREAM(stream)>>>(scores, lo, hi, H, Hkv, cap);
    TRI_CUDA_LAUNCHED();
    return TRIATTN_OK;
}

extern "C" enum triattn_status tri_cuda_triattn_gqa_max(const float * scores, const int32_t * lo, const int32_t * hi,
                                                        int L, int H, int Hkv, int cap, int max_n, float * agg,
                                                        void * stream) {
    TRI_CUDA_REQUIRE(L > 0 && H > 0 && Hkv > 0 && H % Hkv == 0 && (int64_t) L * Hkv <= 65535 && cap > 0 &&
                     max_n >= 0 && max_n <= cap);
    if (max_n == 0) {
        return TRIATTN_OK;
    }
    const dim3 grid(tri_cu_blocks(max_n, 256), L * Hkv);
    tri_cu_ta_gqa_max_kernel<<<grid, 256, 0, TRI_CU_STREAM(stream)>>>(scores, lo, hi, H, Hkv, cap, agg);
    TRI_CUDA_LAUNCHED();
    return TRIATTN_OK;
}

extern "C" enum triattn_status tri_cuda_triattn_layer_mean(const float * agg, const int32_t * lo, const int32_t * hi,
                                                           int L, int Hkv, int cap, int max_n, int global, float * mean,
                                                           void * stream) {
    TRI_CUDA_REQUIRE(L > 0 && Hkv > 0 && cap > 0 && max_n >= 0 && max_n <= cap);
    if (max_n == 0) {
        return TRIATTN_OK;
    }
    const dim3 grid(tri_cu_blocks(max_n, 256), global ? 1 : Hkv);
    tri_cu_ta_mean_kernel<<<grid, 256, 0, TRI_CU_STREAM(stream)>>>(agg, lo, hi, L, Hkv, cap, global, mean);
    TRI_CUDA_LAUNCHED();
    return TRIATTN_OK;
}
