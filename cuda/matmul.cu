/* Dequantize-on-the-fly matrix-vector and tiled matrix-matrix kernels (see matmul.cuh). */
#include "dequant.cuh"
#include "matmul.cuh"

#define TRI_MV_TOK   8   /* tokens per matrix-vector pass */
#define TRI_MV_WARPS 8   /* rows (warps) per block */
#define TRI_MM_R     64  /* weight rows per tile */
#define TRI_MM_T     64  /* tokens per tile */
#define TRI_MM_K     32  /* inner values per step */

/* One warp per weight row; each lane decodes every 32nd value of the row once and uses it for all tokens. */
template <int T>
__global__ void __launch_bounds__(32 * TRI_MV_WARPS)
tri_cu_matvec_kernel(const uint8_t * W, int64_t ne0, int64_t ne1, const float * x, int64_t ldx, int n_tok, float * y,
                     int64_t ldy) {
    const int64_t r = (int64_t) blockIdx.x * TRI_MV_WARPS + (threadIdx.x >> 5);
    if (r >= ne1) {
        return; /* whole warp: r is the same for its 32 lanes */
    }
    const int lane = threadIdx.x & 31;
    const uint8_t * row = W + (size_t) r * tri_cu_row_bytes<T>(ne0);
    float acc[TRI_MV_TOK];
#pragma unroll
    for (int t = 0; t < TRI_MV_TOK; t++) {
        acc[t] = 0.0f;
    }
    for (int64_t i = lane; i < ne0; i += 32) {
        const float w = tri_cu_deq<T>(row, i);
#pragma unroll
        for (int t = 0; t < TRI_MV_TOK; t++) {
            if (t < n_tok) {
                acc[t] += w * x[(size_t) t * ldx + i];
            }
        }
    }
#pragma unroll
    for (int t = 0; t < TRI_MV_TOK; t++) {
        const float s = tri_cu_warp_sum(acc[t]);
        if (lane == 0 && t < n_tok) {
            y[(size_t) t * ldy + r] = s;
        }
    }
}

/* 256 threads compute a 64 x 64 (rows x tokens) tile, 4 x 4 outputs each, stepping 32 inner values at a time
 * through shared memory; the weight tile is dequantized once per step. */
template <int T>
__global__ void __launch_bounds__(256)
tri_cu_matmul_kernel(const uint8_t * W, int64_t ne0, int64_t ne1, const float * x, int64_t ldx, int n_tok, float * y,
                     int64_t ldy) {
    __shared__ float ws[TRI_MM_K][TRI_MM_R + 1];
    __shared__ float xs[TRI_MM_K][TRI_MM_T + 1];
    const int64_t r0 = (int64_t) blockIdx.x * TRI_MM_R;
    const int t0 = blockIdx.y * TRI_MM_T;
    const int tid = threadIdx.x, tr = tid % 16, tt = tid / 16;
    const size_t rb = tri_cu_row_bytes<T>(ne0);
    float acc[4][4];
#pragma unroll
    for (int a = 0; a < 4; a++) {
#pragma unroll
        for (int b = 0; b < 4; b++) {
            acc[a][b] = 0.0f;
        }
    }
    for (int64_t k0 = 0; k0 < ne0; k0 += TRI_MM_K) {
        for (int e = tid; e < TRI_MM_R * TRI_MM_K; e += 256) {
            const int rr = e / TRI_MM_K, kk = e % TRI_MM_K;
            const int64_t r = r0 + rr, i = k0 + kk;
            ws[kk][rr] = (r < ne1 && i < ne0) ? tri_cu_deq<T>(W + (size_t) r * rb, i) : 0.0f;
        }
        for (int e = tid; e < TRI_MM_T * TRI_MM_K; e += 256) {
            const int ti = e / TRI_MM_K, kk = e % TRI_MM_K;
            const int t = t0 + ti;
            const int64_t i = k0 + kk;
            xs[kk][ti] = (t < n_tok && i < ne0) ? x[(size_t) t * ldx + i] : 0.0f;
        }
        __syncthreads();
#pragma unroll 8
        for (int kk = 0; kk < TRI_MM_K; kk++) {
            float wv[4], xv[4];
#pragma unroll
            for (int a = 0; a < 4; a++) {
                wv[a] = ws[kk][tr + 16 * a];
                xv[a] = xs[kk][tt + 16 * a];
            }
#pragma unroll
            for (int a = 0; a < 4; a++) {
#pragma unroll
                for (int b = 0; b < 4; b++) {
                    acc[a][b] += wv[a] * xv[b];
                }
            }
        }
        __syncthreads();
    }
#pragma unroll
    for (int a = 0; a < 4; a++) {
        const int64_t r = r0 + tr + 16 * a;
#pragma unroll
        for (int b = 0; b < 4; b++) {
            const int t = t0 + tt + 16 * b;
            if (r < ne1 && t < n_tok) {
                y[(size_t) t * ldy + r] = acc[a][b];
            }
        }
    }
}

static bool tri_cu_mm_args_ok(int type, int64_t ne0, int64_t ne1, int64_t ldx, int n_tok, int64_t ldy) {
    int qk = 0;
    switch (type) {
#define TRI_CU_CASE(T) case T: qk = tri_cu_blk<T>::qk; break;
        TRI_CU_TYPE_LIST(TRI_CU_CASE)
#undef TRI_CU_CASE
        default: break;
    }
    return qk > 0 && ne0 > 0 && ne0 % qk == 0 && ne1 > 0 && n_tok > 0 && ldx >= ne0 && ldy >= ne1;
}

extern "C" enum triattn_status tri_cuda_matmul_vec(int type, const void * W, int64_t ne0, int64_t ne1, const float * x,
                                                   int64_t ldx, int n_tok, float * y, int64_t ldy, void * stream) {
    TRI_CUDA_REQUIRE(tri_cu_mm_args_ok(type, ne0, ne1, ldx, n_tok, ldy) && n_tok <= TRI_MV_TOK);
    TRI_CUDA_REQUIRE((ne1 + TRI_MV_WARPS - 1) / TRI_MV_WARPS <= 0x7fffffff);
    const unsigned grid = tri_cu_blocks(ne1, TRI_MV_WARPS);
    const uint8_t * w = (const uint8_t *) W;
    switch (type) {
#define TRI_CU_CASE(T) case T: tri_cu_matvec_kernel<T><<<grid, 32 * TRI_MV_WARPS, 0, TRI_CU_STREAM(stream)>>>(w, ne0, ne1, x, ldx, n_tok, y, ldy); break;
        TRI_CU_TYPE_LIST(TRI_CU_CASE)
#undef TRI_CU_CASE
        default: break;
    }
    TRI_CUDA_LAUNCHED();
    return TRIATTN_OK;
}

extern "C" enum triattn_status tri_cuda_matmul_tiled(int type, const void * W, int64_t ne0, int64_t ne1, const float * x,
                                                     int64_t ldx, int n_tok, float * y, int64_t ldy, void * stream) {
    TRI_CUDA_REQUIRE(tri_cu_mm_args_ok(type, ne0, ne1, ldx, n_tok, ldy));
    TRI_CUDA_REQUIRE((n_tok + TRI_MM_T - 1) / TRI_MM_T <= 65535);
    const dim3 grid(tri_cu_blocks(ne1, TRI_MM_R), tri_cu_blocks(n_tok, TRI_MM_T));
    const uint8_t * w = (const uint8_t *) W;
    switch (type) {
#define TRI_CU_CASE(T) case T: tri_cu_matmul_kernel<T><<<grid, 256, 0, TRI_CU_STREAM(stream)>>>(w, ne0, ne1, x, ldx, n_tok, y, ldy); break;
        TRI_CU_TYPE_LIST(TRI_CU_CASE)
#undef TRI_CU_CASE
        default: break;
    }
    TRI_CUDA_LAUNCHED();
    return TRIATTN_OK;
}

extern "C" enum triattn_status tri_cuda_matmul(int type, const void * W, int64_t ne0, int64_t ne1, const float * x,
                                               int64_t ldx, int n_tok, float * y, int64_t ldy, void * stream) {
    return n_tok <= TRI_MV_TOK ? tri_cuda_matmul_vec(type, W, ne0, ne1, x, ldx, n_tok, y, ldy, stream)
                               : tri_cuda_matmul_tiled(type, W, ne0, ne1, x, ldx, n_tok, y, ldy, stream);
}
