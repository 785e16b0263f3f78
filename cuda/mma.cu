/* Tensor-core products (see matmul.cuh): a block computes 128 weight rows x 128 tokens (64 for short inputs) with 8
 * warps of 32 x 64 (32 x 32),
 * stepping 64 input values at a time; each step dequantizes the weight tile (two 32-value chunks per row, one per
 * thread, qchunk.h) and the token tile into fp16 in shared memory, and the warps multiply with WMMA (fp32
 * accumulators). The tile of outputs goes through shared memory so rows are written coalesced, with bias and
 * accumulation. A tile never straddles two jobs: blocks are numbered job by job. */
#include "common.cuh"
#include "ptx.cuh"
#include "matmul.cuh"
#include "qchunk.h"
#include "tri_cuda.h"

#include <mma.h>
#include <stdlib.h>

#define TRI_TC_BM      128
#define TRI_TC_BK      64
#define TRI_TC_THREADS 256
#define TRI_TC_WLD     (TRI_TC_BK + 8)  /* halves per shared row (padding against bank conflicts) */
#define TRI_TC_CLD     (TRI_TC_BM + 4)  /* floats per staged output column */

enum { TRI_TC_F32 = 0, TRI_TC_F16 = 1, TRI_TC_BF16 = 30 };

struct tri_cu_tc_args {
    tri_cuda_mm_job jobs[TRI_CUDA_MM_JOBS];
    int             tiles[TRI_CUDA_MM_JOBS]; /* row tiles of each job */
    int             n_jobs;
    int64_t         ne0;
    const float *   xf;
    int64_t         ldx;
    int             n_tok;
    bool            accumulate;
    bool            prefetch; /* ask L1 for the next step's bytes before the current step's products */
};

/* Two activations as fp16, saturated to fp16's largest finite value (a SwiGLU output past 65504 would be inf and
 * make the sums NaN); NaN stays NaN. */
__device__ __forceinline__ __half2 tri_cu_h2_sat(float a, float b) {
    const float m = 65504.0f;
    a = a != a ? a : fminf(fmaxf(a, -m), m);
    b = b != b ? b : fminf(fmaxf(b, -m), m);
    return __floats2half2_rn(a, b);
}

/* 32 weights of chunk c of a row as floats (the CPU dequantizer's values). */
template <int T>
__device__ __forceinline__ void tri_cu_tc_chunk(const uint8_t * row, int64_t c, float (&v)[32]) {
    if constexpr (T == TRI_TC_F32 || T == TRI_TC_F16 || T == TRI_TC_BF16) {
#pragma unroll
        for (int i = 0; i < 32; i++) {
            const int64_t e = 32 * c + i;
            v[i] = T == TRI_TC_F32 ? ((const float *) row)[e]
                 : T == TRI_TC_F16 ? __half2float(((const __half *) row)[e])
                                   : __uint_as_float((uint32_t) ((const uint16_t *) row)[e] << 16);
        }
    } else {
        tri_qc_chunk ch;
        tri_qc_prep(T, row, c, &ch);
        const int kind = tri_qc_kind(T);
#pragma unroll
        for (int i = 0; i < 32; i++) {
            v[i] = tri_qc_value(kind, &ch, i);
        }
    }
}

template <int T>
__host__ __device__ __forceinline__ size_t tri_cu_tc_row_bytes(int64_t ne0) {
    return T == TRI_TC_F32 ? (size_t) ne0 * 4
         : (T == TRI_TC_F16 || T == TRI_TC_BF16) ? (size_t) ne0 * 2
         : (size_t) (ne0 / tri_qc_block_values(T)) * tri_qc_block_bytes(T);
}

/* BN tokens per tile (32, 64 or 128): 8 warps as 4 (rows) x 2 (tokens), each 32 rows x BN/2 tokens. */
template <int T, int BN>
__global__ void __launch_bounds__(TRI_TC_THREADS) tri_cu_tc_kernel(const tri_cu_tc_args a) {
    using namespace nvcuda;
    constexpr int NF = BN / 32;                     /* 16-token fragments per warp */
    constexpr int XV = TRI_TC_BK * BN / TRI_TC_THREADS; /* token-tile values each thread loads per step */
    constexpr size_t TILES = (size_t) (TRI_TC_BM + BN) * TRI_TC_WLD * sizeof(__half);
    constexpr size_t STAGE = (size_t) (BN / 2) * TRI_TC_CLD * sizeof(float);
    __shared__ __align__(128) unsigned char smem[TILES > STAGE ? TILES : STAGE];
    __half * ws = (__half *) smem;                  /* [BM][WLD] */
    __half * xs = ws + TRI_TC_BM * TRI_TC_WLD;      /* [BN][WLD] */
    float *  cs = (float *) smem;                   /* [BN / 2][CLD]: one half of the token tile, after the main loop */

    /* job and row tile of this block */
    int tile = blockIdx.x, j = 0;
    while (j + 1 < a.n_jobs && tile >= a.tiles[j]) {
        tile -= a.tiles[j];
        j++;
    }
    const tri_cuda_mm_job job = j == 0 ? a.jobs[0] : j == 1 ? a.jobs[1] : a.jobs[2];
    const int64_t r0 = (int64_t) tile * TRI_TC_BM;
    const int t0 = blockIdx.y * BN;
    const int tid = threadIdx.x, warp = tid >> 5;
    const int wm = warp % 4, wn = warp / 4; /* warp tile: rows 32 * wm, tokens (BN / 2) * wn */
    const size_t rb = tri_cu_tc_row_bytes<T>(a.ne0);
    const int64_t nch = a.ne0 / 32;

    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][NF];
#pragma unroll
    for (int i = 0; i < 2; i++) {
#pragma unroll
        for (int k = 0; k < NF; k++) {
            wmma::fill_fragment(acc[i][k], 0.0f);
        }
    }
    /* loaders: weight row wr, chunk wc of the step; token xt, values XV * xp .. + XV of the step */
    const int wr = tid / 2, wc = tid % 2;
    const int xt = tid / (TRI_TC_BK / XV), xp = tid % (TRI_TC_BK / XV);
    const int64_t r = r0 + wr;
    const int t = t0 + xt;
    const uint8_t * wrow = (const uint8_t *) job.W + (size_t) (r < job.ne1 ? r : 0) * rb;
    const float * xrow = a.xf + (size_t) (t < a.n_tok ? t : 0) * a.ldx;

    for (int64_t k0 = 0; k0 < a.ne0; k0 += TRI_TC_BK) {
        {
            const int64_t c = k0 / 32 + wc;
            float v[32];
            if (r < job.ne1 && c < nch) {
                tri_cu_tc_chunk<T>(wrow, c, v);
            } else {
#pragma unroll
                for (int i = 0; i < 32; i++) {
                    v[i] = 0.0f;
                }
            }
            __half2 * dst = (__half2 *) (ws + wr * TRI_TC_WLD + 32 * wc);
#pragma unroll
            for (int i = 0; i < 16; i++) {
                dst[i] = __floats2half2_rn(v[2 * i], v[2 * i + 1]);
            }
        }
#pragma unroll
        for (int part = 0; part < XV / 8; part++) { /* 8 values (ne0 is a multiple of 32) at a time */
            const int64_t e = k0 + XV * xp + 8 * part;
            __half2 * dst = (__half2 *) (xs + xt * TRI_TC_WLD + XV * xp + 8 * part);
            const bool live = t < a.n_tok && e < a.ne0;
#pragma unroll
            for (int i = 0; i < 2; i++) {
                const float4 f = live ? *(const float4 *) (xrow + e + 4 * i) : make_float4(0.f, 0.f, 0.f, 0.f);
                dst[2 * i] = tri_cu_h2_sat(f.x, f.y);
                dst[2 * i + 1] = tri_cu_h2_sat(f.z, f.w);
            }
        }
        __syncthreads();
        if (a.prefetch && k0 + TRI_TC_BK < a.ne0) { /* the next step's weight block and activations */
            const int64_t cn = (k0 + TRI_TC_BK) / 32 + wc;
            if (r < job.ne1 && cn < nch) { /* the chunk's block (a K-quant super-block spans 2 lines) */
                const bool flt = T == TRI_TC_F32 || T == TRI_TC_F16 || T == TRI_TC_BF16;
                const size_t span = T == TRI_TC_F32 ? 128 : flt ? 64 : (size_t) tri_qc_block_bytes(T);
                const size_t off = flt ? (size_t) cn * span : (size_t) (cn * 32 / tri_qc_block_values(T)) * span;
                tri_cu_prefetch_l1(wrow + off);
                tri_cu_prefetch_l1(wrow + off + span - 1);
            }
            if (t < a.n_tok && k0 + TRI_TC_BK + XV * (xp + 1) <= a.ne0) { /* within the row */
                const float * x = xrow + k0 + TRI_TC_BK + XV * xp;
                tri_cu_prefetch_l1(x);
                tri_cu_prefetch_l1(x + XV - 1);
            }
        }
#pragma unroll
        for (int kk = 0; kk < TRI_TC_BK; kk += 16) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> fa[2];
            wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::col_major> fb[NF];
#pragma unroll
            for (int i = 0; i < 2; i++) {
                wmma::load_matrix_sync(fa[i], ws + (32 * wm + 16 * i) * TRI_TC_WLD + kk, TRI_TC_WLD);
            }
#pragma unroll
            for (int k = 0; k < NF; k++) {
                wmma::load_matrix_sync(fb[k], xs + ((BN / 2) * wn + 16 * k) * TRI_TC_WLD + kk, TRI_TC_WLD);
            }
#pragma unroll
            for (int i = 0; i < 2; i++) {
#pragma unroll
                for (int k = 0; k < NF; k++) {
                    wmma::mma_sync(acc[i][k], fa[i], fb[k], acc[i][k]);
                }
            }
        }
        __syncthreads();
    }
    /* epilogue in halves of the token tile: the warps of half h stage their outputs (column n = a token of the
     * half, BM rows), then every thread writes rows out coalesced, with bias and accumulation */
#pragma unroll
    for (int h = 0; h < 2; h++) {
        if (wn == h) {
#pragma unroll
            for (int i = 0; i < 2; i++) {
#pragma unroll
                for (int k = 0; k < NF; k++) {
                    wmma::store_matrix_sync(cs + (16 * k) * TRI_TC_CLD + 32 * wm + 16 * i, acc[i][k], TRI_TC_CLD,
                                            wmma::mem_col_major);
                }
            }
        }
        __syncthreads();
        for (int e = tid; e < TRI_TC_BM * (BN / 2); e += TRI_TC_THREADS) {
            const int m = e % TRI_TC_BM, n = e / TRI_TC_BM;
            const int64_t rr = r0 + m;
            const int tt = t0 + h * (BN / 2) + n;
            if (rr < job.ne1 && tt < a.n_tok) {
                float v = cs[n * TRI_TC_CLD + m];
                if (job.bias) {
                    v += job.bias[rr];
                }
                float * y = job.y + (size_t) tt * job.ldy + rr;
                *y = a.accumulate ? *y + v : v;
            }
        }
        __syncthreads();
    }
}

#define TRI_TC_TYPES(X) X(TRI_QC_Q4_0) X(TRI_QC_Q4_1) X(TRI_QC_Q5_0) X(TRI_QC_Q5_1) X(TRI_QC_Q8_0) \
    X(TRI_QC_Q2_K) X(TRI_QC_Q3_K) X(TRI_QC_Q4_K) X(TRI_QC_Q5_K) X(TRI_QC_Q6_K) X(TRI_TC_F32) X(TRI_TC_F16)    \
    X(TRI_TC_BF16)

/* $TRIATTN_CUDA_TC_PREFETCH=1: each step of the tensor-core products asks L1 for the next step's bytes before it
 * multiplies (off by default until measured on a device; bench/gpu.py times both). */
static bool tri_cu_tc_prefetch(void) {
    static const bool on = tri_cuda_env_flag("TRIATTN_CUDA_TC_PREFETCH", false); /* read once, thread-safe */
    return on;
}

extern "C" enum triattn_status tri_cuda_mm_tc_bn(int type, int64_t ne0, const tri_cuda_mm_job * jobs, int n_jobs,
                                                 const float * xf, int64_t ldx, int n_tok, bool accumulate, int bn,
                                                 void * stream) {
    TRI_CUDA_REQUIRE(tri_cuda_type_supported(type) && ne0 > 0 && ne0 % 32 == 0 && n_jobs >= 1 &&
                     n_jobs <= TRI_CUDA_MM_JOBS && n_tok > 0 && xf && ldx >= ne0 && ldx % 4 == 0 &&
                     (type == TRI_TC_F32 || type == TRI_TC_F16 || type == TRI_TC_BF16 ||
                      ne0 % tri_qc_block_values(type) == 0));
    TRI_CUDA_REQUIRE(((uintptr_t) xf & 15) == 0 && (bn == 32 || bn == 64 || bn == 128) &&
                     (n_tok + bn - 1) / bn <= 65535);
    tri_cu_tc_args a = {};
    a.n_jobs = n_jobs;
    a.ne0 = ne0;
    a.xf = xf;
    a.ldx = ldx;
    a.n_tok = n_tok;
    a.accumulate = accumulate;
    a.prefetch = tri_cu_tc_prefetch();
    int64_t tiles = 0;
    for (int j = 0; j < n_jobs; j++) {
        TRI_CUDA_REQUIRE(jobs[j].W && jobs[j].y && jobs[j].ne1 > 0 && jobs[j].ldy >= jobs[j].ne1);
        a.jobs[j] = jobs[j];
        a.tiles[j] = (int) ((jobs[j].ne1 + TRI_TC_BM - 1) / TRI_TC_BM);
        tiles += a.tiles[j];
    }
    TRI_CUDA_REQUIRE(tiles <= 0x7fffffff);
    const dim3 grid((unsigned) tiles, tri_cu_blocks(n_tok, bn));
    cudaStream_t s = TRI_CU_STREAM(stream);
    switch (type) {
#define TRI_CU_CASE(T) case T: \
        if (bn == 128) tri_cu_tc_kernel<T, 128><<<grid, TRI_TC_THREADS, 0, s>>>(a); \
        else if (bn == 64) tri_cu_tc_kernel<T, 64><<<grid, TRI_TC_THREADS, 0, s>>>(a); \
        else tri_cu_tc_kernel<T, 32><<<grid, TRI_TC_THREADS, 0, s>>>(a); \
        break;
        TRI_TC_TYPES(TRI_CU_CASE)
#undef TRI_CU_CASE
        default: break;
    }
    TRI_CUDA_LAUNCHED();
    return TRIATTN_OK;
}

/* Token tile of the product for inputs of 128 tokens and more. On the H200 (tool_cuda bench, 512 tokens,
 * bench/results/gpu_h200_ops.jsonl) 64-token tiles ran faster for the 4- and 5-bit types (Q4_K 8192x8192: 103
 * against 81 TFLOP/s; Q4_1 113 / 86; Q5_0 81 / 73), 128-token tiles for Q6_K (64 / 55), F16 (55 / 44) and
 * Q8_0 (65 / 64). Types not measured follow the 4-bit ones. */
static int tri_cu_tc_bn_long(int type) {
    switch (type) {
        case TRI_TC_F32: case TRI_TC_F16: case TRI_TC_BF16: case TRI_QC_Q8_0: case TRI_QC_Q6_K: return 128;
        default: return 64;
    }
}

/* Token tile: 64 below 128 tokens, else by type (above); $TRIATTN_CUDA_TC_BN = 32, 64 or 128 forces one
 * (benchmarks). $TRIATTN_CUDA_TC_FILL=1 (off until measured on a device): halves the tile, down to 32 tokens,
 * while the launch has fewer than two blocks per multiprocessor (a 2048-row product of 512 tokens has 128 blocks
 * of 64 tokens). */
static int tri_cu_tc_bn(int type, int n_tok, int64_t row_tiles) {
    static const int forced = [] { /* read once, thread-safe */
        const char * e = getenv("TRIATTN_CUDA_TC_BN");
        return e && (atoi(e) == 32 || atoi(e) == 64 || atoi(e) == 128) ? atoi(e) : 0;
    }();
    static const bool fill = tri_cuda_env_flag("TRIATTN_CUDA_TC_FILL", false);
    if (forced) {
        return forced;
    }
    int bn = n_tok >= 128 ? tri_cu_tc_bn_long(type) : 64;
    const int64_t want = fill ? 2 * (int64_t) tri_cuda_sm_count() : 0; /* device query only when asked */
    while (bn > 32 && row_tiles * ((n_tok + bn - 1) / bn) < want) {
        bn /= 2;
    }
    return bn;
}

extern "C" enum triattn_status tri_cuda_mm_tc(int type, int64_t ne0, const tri_cuda_mm_job * jobs, int n_jobs,
                                              const float * xf, int64_t ldx, int n_tok, bool accumulate, void * stream) {
    int64_t row_tiles = 0;
    for (int j = 0; j < n_jobs && j < TRI_CUDA_MM_JOBS; j++) {
        row_tiles += (jobs[j].ne1 + TRI_TC_BM - 1) / TRI_TC_BM;
    }
    return tri_cuda_mm_tc_bn(type, ne0, jobs, n_jobs, xf, ldx, n_tok, accumulate,
                             tri_cu_tc_bn(type, n_tok, row_tiles), stream);
}
