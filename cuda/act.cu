/* Activation preparation (see act.cuh): blocks of two warps over slices of each row. */
#include "act.cuh"
#include "common.cuh"
#include "qchunk.h"

#define TRI_ACT_THREADS 64   /* two warps */
#define TRI_ACT_SLICE   512  /* values a block writes and quantizes */

struct tri_cu_act_args {
    const float * x, * u, * w;
    int64_t       ldx, ldf;
    float *       f;
    float         eps;
    int           n;
    bool          norm;
    tri_cuda_q8   q8[2];
    int           n_q8;
};

__device__ __forceinline__ float tri_cu_act_value(const tri_cu_act_args & a, const float * xr, const float * ur, float r,
                                                  int i) {
    if (a.norm) {
        return a.w ? xr[i] * r * a.w[i] : xr[i] * r;
    }
    if (ur) {
        const float v = xr[i];
        return v / (1.0f + expf(-v)) * ur[i];
    }
    return xr[i];
}

/* grid: x = slice of TRI_ACT_SLICE values, y = row. Each block sums the row's squares itself (RMSNorm), then writes
 * and quantizes its slice: a warp takes 256 values at a time, 8 per lane; blocks of 32 are 4 lanes, of 256 the warp. */
__global__ void __launch_bounds__(TRI_ACT_THREADS) tri_cu_act_kernel(tri_cu_act_args a) {
    tri_cu_pdl_enter();
    __shared__ double sh[33];
    const int row = blockIdx.y, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int i0 = blockIdx.x * TRI_ACT_SLICE, i1 = min(a.n, i0 + TRI_ACT_SLICE);
    const float * xr = a.x + (size_t) row * a.ldx;
    const float * ur = a.u ? a.u + (size_t) row * a.ldx : nullptr;
    float r = 1.0f;
    if (a.norm) { /* as ggml_ops' tri_rmsnorm: squares summed in double */
        double ss = 0.0;
        for (int i = tid; i < a.n; i += TRI_ACT_THREADS) {
            ss += (double) xr[i] * xr[i];
        }
        ss = tri_cu_block_sum_d(ss, sh);
        r = (float) (1.0 / sqrt(ss / a.n + a.eps));
    }
    if (a.f) {
        float * fr = a.f + (size_t) row * a.ldf;
        for (int i = i0 + tid; i < i1; i += TRI_ACT_THREADS) {
            fr[i] = tri_cu_act_value(a, xr, ur, r, i);
        }
    }
    for (int o = 0; o < a.n_q8; o++) {
        const tri_cuda_q8 & q = a.q8[o];
        const bool k256 = q.type == TRI_QC_ACT_Q8_K;
        for (int base = i0 + warp * 256; base < i1; base += 256 * (TRI_ACT_THREADS / 32)) {
            const int e0 = base + 8 * lane;
            const bool live = e0 < i1;
            float v[8];
            float amax = 0.0f;
#pragma unroll
            for (int k = 0; k < 8; k++) {
                v[k] = live ? tri_cu_act_value(a, xr, ur, r, e0 + k) : 0.0f;
                amax = fmaxf(amax, fabsf(v[k]));
            }
            amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 1));
            amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 2));
            if (k256) {
                amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 4));
                amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 8));
                amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 16));
            }
            int8_t c[8];
            const float d = tri_qc_quant8(v, 8, amax, c);
            int sum = 0;
#pragma unroll
            for (int k = 0; k < 8; k++) {
                sum += c[k];
            }
            const int sum16 = sum + __shfl_xor_sync(0xffffffffu, sum, 1);
            const int sum16b = __shfl_xor_sync(0xffffffffu, sum16, 2); /* the other half of the 32 */
            if (live) {
                int2 packed;
                memcpy(&packed, c, 8);
                *(int2 *) (q.qs + (size_t) row * q.ld + e0) = packed;
                if ((lane & 3) == 0) {
                    tri_cuda_q8_meta m;
                    m.d = k256 ? d : tri_qc_round_f16(d);
                    m.s = q.type == TRI_QC_ACT_Q8_1 ? tri_qc_round_f16(d * (float) (sum16 + sum16b)) : 0.0f;
                    m.sum[0] = sum16;
                    m.sum[1] = sum16b;
                    q.meta[(size_t) row * (q.ld / 32) + e0 / 32] = m;
                }
            }
        }
    }
}

extern "C" enum triattn_status tri_cuda_act_prep(const float * x, int64_t ldx, const float * u, bool norm,
                                                 const float * norm_w, float eps, int n_rows, int n, float * f,
                                                 int64_t ldf, const tri_cuda_q8 * q8, int n_q8, void * stream) {
    TRI_CUDA_REQUIRE(n_rows > 0 && n > 0 && ldx >= n && n_q8 >= 0 && n_q8 <= 2 && (!f || ldf >= n) && !(norm && u));
    tri_cu_act_args a = {};
    a.x = x;
    a.u = u;
    a.w = norm_w;
    a.ldx = ldx;
    a.ldf = ldf;
    a.f = f;
    a.eps = eps;
    a.n = n;
    a.norm = norm;
    a.n_q8 = n_q8;
    for (int i = 0; i < n_q8; i++) {
        const int blk = q8[i].type == TRI_QC_ACT_Q8_K ? 256 : 32;
        TRI_CUDA_REQUIRE(n % blk == 0 && q8[i].ld >= n && q8[i].ld % 32 == 0 &&
                         (q8[i].type == TRI_QC_ACT_Q8_0 || q8[i].type == TRI_QC_ACT_Q8_1 || q8[i].type == TRI_QC_ACT_Q8_K));
        a.q8[i] = q8[i];
    }
    TRI_CUDA_REQUIRE(n_rows <= 65535);
    const dim3 grid(tri_cu_blocks(n, TRI_ACT_SLICE), (unsigned) n_rows);
    (void) tri_cu_launch(tri_cu_act_kernel, grid, TRI_ACT_THREADS, TRI_CU_STREAM(stream), a);
    TRI_CUDA_LAUNCHED();
    return TRIATTN_OK;
}
