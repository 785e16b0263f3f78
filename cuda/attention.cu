/* Split attention: partial (max, sum, weighted V) per slot range, then an in-order merge. */
#include "attention.cuh"
#include "common.cuh"

#define TRI_ATT_THREADS 128
#define TRI_ATT_TILE    64
#define TRI_ATT_DPT     (TRI_CUDA_ATT_MAX_D / TRI_ATT_THREADS) /* head dims per thread */

/* Number of slots in pos[0..n) with position <= p. */
__device__ static int tri_cu_upper_bound(const int32_t * pos, int n, int32_t p) {
    int lo = 0, hi = n;
    while (lo < hi) {
        const int mid = lo + (hi - lo) / 2;
        if (pos[mid] <= p) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return lo;
}

/* grid.x = n_tok * parts (part = x % parts), grid.y = n_head. Partial = acc[D], m, l. */
__global__ void __launch_bounds__(TRI_ATT_THREADS)
tri_cu_att_partial_kernel(const float * q, const __half * K, const __half * V, const int32_t * pos,
                          const int32_t * n_live, int n_new, int cap, int n_head, int n_head_kv, int D, int32_t pos0,
                          int parts, float * part) {
    __shared__ float qs[TRI_CUDA_ATT_MAX_D];
    __shared__ float s[TRI_ATT_TILE];
    __shared__ int range[2];
    const int p = blockIdx.x % parts, t = blockIdx.x / parts, hq = blockIdx.y;
    const int G = n_head / n_head_kv, h = hq / G;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, nw = TRI_ATT_THREADS / 32;
    const float scale = 1.0f / sqrtf((float) D);
    const size_t base = (size_t) h * cap;
    if (tid == 0) {
        const int live = min(n_live[h] + n_new, cap);
        const int n_valid = tri_cu_upper_bound(pos + base, live, pos0 + t);
        const int chunk = (n_valid + parts - 1) / parts;
        range[0] = min(p * chunk, n_valid);
        range[1] = min((p + 1) * chunk, n_valid);
    }
    for (int d = tid; d < D; d += TRI_ATT_THREADS) {
        qs[d] = q[((size_t) t * n_head + hq) * D + d];
    }
    __syncthreads();
    const int j0 = range[0], j1 = range[1];
    float acc[TRI_ATT_DPT];
#pragma unroll
    for (int k = 0; k < TRI_ATT_DPT; k++) {
        acc[k] = 0.0f;
    }
    float m_run = -INFINITY, l_run = 0.0f;
    for (int jt = j0; jt < j1; jt += TRI_ATT_TILE) {
        const int nt = min(TRI_ATT_TILE, j1 - jt);
        /* scores: one warp per slot, lanes across the head dim */
        for (int j = warp; j < nt; j += nw) {
            const __half * kr = K + (base + jt + j) * D;
            float dot = 0.0f;
            for (int d = lane; d < D; d += 32) {
                dot += qs[d] * __half2float(kr[d]);
            }
            dot = tri_cu_warp_sum(dot);
            if (lane == 0) {
                s[j] = dot * scale;
            }
        }
        __syncthreads();
        float tmax = -INFINITY;
        for (int j = 0; j < nt; j++) {
            tmax = fmaxf(tmax, s[j]);
        }
        const float m_new = fmaxf(m_run, tmax);
        const float corr = expf(m_run - m_new); /* 0 on the first tile (m_run = -inf) */
        __syncthreads();                        /* every thread has read s before it becomes p */
        if (tid < nt) {
            s[tid] = expf(s[tid] - m_new);
        }
        __syncthreads();
        float psum = 0.0f;
        for (int j = 0; j < nt; j++) {
            psum += s[j];
        }
        l_run = l_run * corr + psum;
        m_run = m_new;
#pragma unroll
        for (int k = 0; k < TRI_ATT_DPT; k++) {
            const int d = tid + k * TRI_ATT_THREADS;
            if (d < D) {
                float a = acc[k] * corr;
                for (int j = 0; j < nt; j++) {
                    a += s[j] * __half2float(V[(base + jt + j) * D + d]);
                }
                acc[k] = a;
            }
        }
        __syncthreads(); /* s is rewritten by the next tile */
    }
    float * out = part + (((size_t) t * n_head + hq) * parts + p) * (D + 2);
#pragma unroll
    for (int k = 0; k < TRI_ATT_DPT; k++) {
        const int d = tid + k * TRI_ATT_THREADS;
        if (d < D) {
            out[d] = acc[k];
        }
    }
    if (tid == 0) {
        out[D] = m_run;
        out[D + 1] = l_run;
    }
}

/* grid.x = n_tok * n_head: merges the parts in order; empty parts (l = 0) are skipped. */
__global__ void tri_cu_att_merge_kernel(const float * part, int parts, int D, float * out) {
    const size_t row = blockIdx.x;
    const float * pr = part + row * parts * (D + 2);
    float mx = -INFINITY;
    for (int p = 0; p < parts; p++) {
        const float * pp = pr + (size_t) p * (D + 2);
        if (pp[D + 1] > 0.0f) {
            mx = fmaxf(mx, pp[D]);
        }
    }
    float total = 0.0f;
    for (int p = 0; p < parts; p++) {
        const float * pp = pr + (size_t) p * (D + 2);
        if (pp[D + 1] > 0.0f) {
            total += expf(pp[D] - mx) * pp[D + 1];
        }
    }
    const float inv = total > 0.0f ? 1.0f / total : 0.0f;
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        float o = 0.0f;
        for (int p = 0; p < parts; p++) {
            const float * pp = pr + (size_t) p * (D + 2);
            if (pp[D + 1] > 0.0f) {
                o += expf(pp[D] - mx) * pp[d];
            }
        }
        out[row * D + d] = o * inv;
    }
}

extern "C" enum triattn_status tri_cuda_attention(const float * q, const void * K, const void * V, const int32_t * pos,
                                                  const int32_t * n_live, int n_new, int cap, int n_head, int n_head_kv,
                                                  int D, int n_tok, int32_t pos0, int parts, float * part, float * out,
                                                  void * stream) {
    TRI_CUDA_REQUIRE(n_tok > 0 && n_head > 0 && n_head_kv > 0 && n_head % n_head_kv == 0 && n_head <= 65535 &&
                     D > 0 && D <= TRI_CUDA_ATT_MAX_D && cap > 0 && parts > 0 && n_new >= 0);
    TRI_CUDA_REQUIRE((int64_t) n_tok * parts <= 0x7fffffff);
    const dim3 grid((unsigned) (n_tok * parts), n_head);
    tri_cu_att_partial_kernel<<<grid, TRI_ATT_THREADS, 0, TRI_CU_STREAM(stream)>>>(
        q, (const __half *) K, (const __half *) V, pos, n_live, n_new, cap, n_head, n_head_kv, D, pos0, parts, part);
    TRI_CUDA_LAUNCHED();
    tri_cu_att_merge_kernel<<<(unsigned) n_tok * n_head, 64, 0, TRI_CU_STREAM(stream)>>>(part, parts, D, out);
    TRI_CUDA_LAUNCHED();
    return TRIATTN_OK;
}
