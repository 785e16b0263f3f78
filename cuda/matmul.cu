/* Matrix-vector products (see matmul.cuh): one warp per output row, each lane a 32-value chunk at a time; and
 * integer tensor-core products for small batches (qtile.h): a block per 16 rows, its warps splitting the input. */
#include "common.cuh"
#include "ptx.cuh"
#include "matmul.cuh"
#include "qchunk.h"
#include "qtile.h"

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#error "the integer tensor-core products need sm_80 or newer (TRIATTN_CUDA_ARCHS)"
#endif

#define TRI_MV_WARPS 4 /* rows per block */
#define TRI_MQ_WARPS 8 /* warps per 16 rows of the tensor-core kernel */

enum { TRI_CU_F32 = 0, TRI_CU_F16 = 1, TRI_CU_BF16 = 30 };

struct tri_cu_mm_args {
    tri_cuda_mm_job jobs[TRI_CUDA_MM_JOBS];
    int             n_jobs;
    int64_t         ne0, total_rows;
    const float *   xf;
    int64_t         ldx;
    tri_cuda_q8     q8;
    bool            accumulate;
};

/* The job and local row of global row r (whole warp: r is the warp's). */
__device__ __forceinline__ tri_cuda_mm_job tri_cu_job_of(const tri_cu_mm_args & a, int64_t * r) {
    if (a.n_jobs > 1 && *r >= a.jobs[0].ne1) {
        *r -= a.jobs[0].ne1;
        if (a.n_jobs > 2 && *r >= a.jobs[1].ne1) {
            *r -= a.jobs[1].ne1;
            return a.jobs[2];
        }
        return a.jobs[1];
    }
    return a.jobs[0];
}

template <int NT>
__device__ __forceinline__ void tri_cu_mv_store(const tri_cu_mm_args & a, const tri_cuda_mm_job & job, int64_t r,
                                                float (&acc)[NT]) {
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int t = 0; t < NT; t++) {
        const float s = tri_cu_warp_sum(acc[t]);
        if (lane == 0) {
            float * y = job.y + (size_t) t * job.ldy + r;
            const float v = job.bias ? s + job.bias[r] : s;
            *y = a.accumulate ? *y + v : v;
        }
    }
}

/* Quantized weights x 8-bit activations: integer dot products per chunk (qchunk.h). A warp takes R rows, so each
 * activation load serves R rows (R = 2 from 4 tokens on, where the loads of activations dominate). */
template <int T, int NT, int R>
__global__ void __launch_bounds__(32 * TRI_MV_WARPS) tri_cu_mmvq_kernel(const tri_cu_mm_args a) {
    tri_cu_pdl_enter();
    const int64_t r0 = ((int64_t) blockIdx.x * TRI_MV_WARPS + (threadIdx.x >> 5)) * R;
    if (r0 >= a.total_rows) {
        return;
    }
    const int lane = threadIdx.x & 31;
    const int kind = tri_qc_kind(T);
    const int64_t nch = a.ne0 / 32, ld = a.q8.ld;
    const size_t rb = (size_t) (a.ne0 / tri_qc_block_values(T)) * tri_qc_block_bytes(T);
    tri_cuda_mm_job job[R];
    int64_t lr[R];
    const uint8_t * row[R];
#pragma unroll
    for (int rr = 0; rr < R; rr++) {
        lr[rr] = r0 + rr < a.total_rows ? r0 + rr : r0; /* a missing last row repeats the first, unwritten */
        job[rr] = tri_cu_job_of(a, &lr[rr]);
        row[rr] = (const uint8_t *) job[rr].W + (size_t) lr[rr] * rb;
    }
    float acc[R][NT];
#pragma unroll
    for (int rr = 0; rr < R; rr++) {
#pragma unroll
        for (int t = 0; t < NT; t++) {
            acc[rr][t] = 0.0f;
        }
    }
#pragma unroll 2
    for (int64_t c = lane; c < nch; c += 32) {
        tri_qc_chunk ch[R];
#pragma unroll
        for (int rr = 0; rr < R; rr++) {
            tri_qc_prep(T, row[rr], c, &ch[rr]);
        }
#pragma unroll
        for (int t = 0; t < NT; t++) {
            const int4 * xq = (const int4 *) (a.q8.qs + (size_t) t * ld + 32 * c);
            const int4 v0 = xq[0], v1 = xq[1];
            const int4 m = *(const int4 *) (a.q8.meta + (size_t) t * (ld / 32) + c);
            const int32_t w[8] = { v0.x, v0.y, v0.z, v0.w, v1.x, v1.y, v1.z, v1.w };
            tri_qc_act act;
            act.q = w;
            act.d = __int_as_float(m.x);
            act.s = __int_as_float(m.y);
            act.sum[0] = m.z;
            act.sum[1] = m.w;
#pragma unroll
            for (int rr = 0; rr < R; rr++) {
                acc[rr][t] += tri_qc_dot(kind, &ch[rr], &act);
            }
        }
    }
#pragma unroll
    for (int rr = 0; rr < R; rr++) {
        if (r0 + rr < a.total_rows) {
            tri_cu_mv_store<NT>(a, job[rr], lr[rr], acc[rr]);
        }
    }
}

/* Quantized weights x 8-bit activations for up to 8 NTILE tokens on integer tensor cores (qtile.h). Block (x, y):
 * rows 16 x .. 16 x + 15, tokens 8 NTILE y ..; warp w takes the scale groups (K-quant super-blocks, else blocks) w,
 * w + 8, ... of the input, and the warps' partial results are summed in shared memory. Each weight byte is read
 * once for the block's tokens. */
template <int T, int NTILE>
__global__ void __launch_bounds__(32 * TRI_MQ_WARPS) tri_cu_mmq_kernel(const tri_cu_mm_args a, int n_tok) {
    tri_cu_pdl_enter();
    __shared__ float red[TRI_MQ_WARPS][16][8 * NTILE + 1];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int64_t r0 = (int64_t) blockIdx.x * 16;
    const int tb = blockIdx.y * 8 * NTILE; /* the block's first token */
    const int kind = tri_qc_kind(T), G = tri_qc_block_values(T) / 32; /* chunks per scale group */
    const tri_cuda_q8 q8 = a.q8;
    const int64_t ngrp = a.ne0 / 32 / G;
    const size_t rb = (size_t) (a.ne0 / tri_qc_block_values(T)) * tri_qc_block_bytes(T);
    const uint8_t * row[2];
#pragma unroll
    for (int h = 0; h < 2; h++) {
        int64_t r = r0 + g + 8 * h;
        r = r < a.total_rows ? r : r0; /* a missing row repeats the tile's first, unwritten */
        const tri_cuda_mm_job job = tri_cu_job_of(a, &r);
        row[h] = (const uint8_t *) job.W + (size_t) r * rb;
    }
    tri_qt_xlane xl[NTILE];
#pragma unroll
    for (int nt = 0; nt < NTILE; nt++) {
        xl[nt] = tri_qt_xlane_make(&q8, tb + 8 * nt, n_tok, lane);
    }
    float acc[NTILE][4] = {};
    for (int64_t gi = warp; gi < ngrp; gi += TRI_MQ_WARPS) {
        int32_t isum[NTILE][4] = {}, msum[NTILE][4] = {};
        tri_qc_chunk ch[2];
        tri_cuda_q8_meta m[NTILE][2];
#pragma unroll 2
        for (int j = 0; j < G; j++) {
            const int64_t c = gi * G + j;
            uint32_t w[4];
            tri_qt_load_w(T, row[0], row[1], c, lane, ch, w);
#pragma unroll
            for (int nt = 0; nt < NTILE; nt++) {
                uint32_t x[2];
                tri_qt_load_x(&xl[nt], c, x, m[nt]);
                int32_t c0[4], c1[4] = { 0, 0, 0, 0 };
                if (tri_qt_split(T)) {
                    tri_cu_imma16(w[0], w[1], x[0], c0);
                    tri_cu_imma16(w[2], w[3], x[1], c1);
                } else {
                    tri_cu_imma32(w, x, c0);
                }
                tri_qt_acc(ch, c0, c1, m[nt], isum[nt], msum[nt]);
            }
        }
#pragma unroll
        for (int nt = 0; nt < NTILE; nt++) {
            tri_qt_finish(kind, ch, m[nt], isum[nt], msum[nt], acc[nt]);
        }
    }
#pragma unroll
    for (int nt = 0; nt < NTILE; nt++) {
#pragma unroll
        for (int i = 0; i < 4; i++) {
            red[warp][g + 8 * (i / 2)][8 * nt + 2 * t + i % 2] = acc[nt][i];
        }
    }
    __syncthreads();
    for (int e = threadIdx.x; e < 16 * 8 * NTILE; e += 32 * TRI_MQ_WARPS) {
        const int rr = e / (8 * NTILE), col = e % (8 * NTILE), tk = tb + col; /* the block's column, the token */
        int64_t r = r0 + rr;
        if (r >= a.total_rows || tk >= n_tok) {
            continue;
        }
        float s = 0.0f;
#pragma unroll
        for (int ww = 0; ww < TRI_MQ_WARPS; ww++) {
            s += red[ww][rr][col];
        }
        const tri_cuda_mm_job job = tri_cu_job_of(a, &r);
        float * y = job.y + (size_t) tk * job.ldy + r;
        const float v = job.bias ? s + job.bias[r] : s;
        *y = a.accumulate ? *y + v : v;
    }
}

/* Weight i of a float-typed row; F16 weights meet activations rounded to fp16, as on the CPU. */
template <int T> __device__ __forceinline__ float tri_cu_wf(const void * row, int64_t i);
template <> __device__ __forceinline__ float tri_cu_wf<TRI_CU_F32>(const void * row, int64_t i) {
    return ((const float *) row)[i];
}
template <> __device__ __forceinline__ float tri_cu_wf<TRI_CU_F16>(const void * row, int64_t i) {
    return __half2float(((const __half *) row)[i]);
}
template <> __device__ __forceinline__ float tri_cu_wf<TRI_CU_BF16>(const void * row, int64_t i) {
    return __uint_as_float((uint32_t) ((const uint16_t *) row)[i] << 16);
}

template <int T, int NT>
__global__ void __launch_bounds__(32 * TRI_MV_WARPS) tri_cu_mmvf_kernel(const tri_cu_mm_args a) {
    tri_cu_pdl_enter();
    int64_t r = (int64_t) blockIdx.x * TRI_MV_WARPS + (threadIdx.x >> 5);
    if (r >= a.total_rows) {
        return;
    }
    const tri_cuda_mm_job job = tri_cu_job_of(a, &r);
    const int lane = threadIdx.x & 31;
    const size_t es = T == TRI_CU_F32 ? 4 : 2;
    const void * row = (const uint8_t *) job.W + (size_t) r * (size_t) a.ne0 * es;
    float acc[NT];
#pragma unroll
    for (int t = 0; t < NT; t++) {
        acc[t] = 0.0f;
    }
    for (int64_t i = lane; i < a.ne0; i += 32) {
        const float w = tri_cu_wf<T>(row, i);
#pragma unroll
        for (int t = 0; t < NT; t++) {
            float x = a.xf[(size_t) t * a.ldx + i];
            if (T == TRI_CU_F16) {
                x = __half2float(__float2half_rn(x));
            }
            acc[t] += w * x;
        }
    }
    tri_cu_mv_store<NT>(a, job, r, acc);
}

#define TRI_CU_QTYPES(X) X(TRI_QC_Q4_0) X(TRI_QC_Q4_1) X(TRI_QC_Q5_0) X(TRI_QC_Q5_1) X(TRI_QC_Q8_0) \
    X(TRI_QC_Q2_K) X(TRI_QC_Q3_K) X(TRI_QC_Q4_K) X(TRI_QC_Q5_K) X(TRI_QC_Q6_K)
#define TRI_CU_FTYPES(X) X(TRI_CU_F32) X(TRI_CU_F16) X(TRI_CU_BF16)

extern "C" bool tri_cuda_type_supported(int type) {
    switch (type) {
#define TRI_CU_CASE(T) case T:
        TRI_CU_QTYPES(TRI_CU_CASE)
        TRI_CU_FTYPES(TRI_CU_CASE)
#undef TRI_CU_CASE
            return true;
        default:
            return false;
    }
}

extern "C" int tri_cuda_mm_act_type(int type) {
    return tri_qc_block_bytes(type) > 0 ? tri_qc_act_type(type) : 0;
}

/* Values per block of a supported type (1 for float types). */
static int tri_cu_qk(int type) {
    return tri_qc_block_bytes(type) > 0 ? tri_qc_block_values(type) : 1;
}

/* Fills the launch arguments; false when they are out of range. */
static bool tri_cu_mm_args_make(int type, int64_t ne0, const tri_cuda_mm_job * jobs, int n_jobs, const float * xf,
                                int64_t ldx, int n_tok, bool accumulate, tri_cu_mm_args * a) {
    if (!tri_cuda_type_supported(type) || ne0 <= 0 || ne0 % tri_cu_qk(type) != 0 || ne0 % 32 != 0 || n_jobs < 1 ||
        n_jobs > TRI_CUDA_MM_JOBS || n_tok <= 0) {
        return false;
    }
    *a = tri_cu_mm_args{};
    a->n_jobs = n_jobs;
    a->ne0 = ne0;
    a->xf = xf;
    a->ldx = ldx;
    a->accumulate = accumulate;
    for (int j = 0; j < n_jobs; j++) {
        if (!jobs[j].W || !jobs[j].y || jobs[j].ne1 <= 0 || jobs[j].ldy < jobs[j].ne1) {
            return false;
        }
        a->jobs[j] = jobs[j];
        a->total_rows += jobs[j].ne1;
    }
    return true;
}

template <int NT>
static void tri_cu_mm_vec_launch(int type, const tri_cu_mm_args & a, cudaStream_t s) {
    constexpr int R = NT >= 4 ? 2 : 1;
    const unsigned grid = tri_cu_blocks(a.total_rows, TRI_MV_WARPS * (type == 0 || type == 1 || type == 30 ? 1 : R));
    switch (type) {
#define TRI_CU_CASE(T) case T: (void) tri_cu_launch(tri_cu_mmvq_kernel<T, NT, R>, grid, 32 * TRI_MV_WARPS, s, a); break;
        TRI_CU_QTYPES(TRI_CU_CASE)
#undef TRI_CU_CASE
#define TRI_CU_CASE(T) case T: (void) tri_cu_launch(tri_cu_mmvf_kernel<T, NT>, grid, 32 * TRI_MV_WARPS, s, a); break;
        TRI_CU_FTYPES(TRI_CU_CASE)
#undef TRI_CU_CASE
        default: break;
    }
}

extern "C" enum triattn_status tri_cuda_mm_q(int type, int64_t ne0, const tri_cuda_mm_job * jobs, int n_jobs,
                                             const tri_cuda_q8 * q8, int n_tok, bool accumulate, void * stream) {
    tri_cu_mm_args a;
    TRI_CUDA_REQUIRE(tri_cu_mm_args_make(type, ne0, jobs, n_jobs, NULL, 0, n_tok, accumulate, &a));
    const int act = tri_cuda_mm_act_type(type);
    TRI_CUDA_REQUIRE(act && n_tok <= 65535 * TRI_CUDA_MQ_TOK && (a.total_rows + 15) / 16 <= 0x7fffffff);
    TRI_CUDA_REQUIRE(q8 && q8->type == act && q8->ld >= ne0 && q8->ld % 32 == 0);
    a.q8 = *q8;
    /* blocks of 16 rows by up to TRI_CUDA_MQ_TOK tokens */
    const dim3 grid(tri_cu_blocks(a.total_rows, 16), tri_cu_blocks(n_tok, TRI_CUDA_MQ_TOK));
    cudaStream_t s = TRI_CU_STREAM(stream);
    const int ntile = (n_tok + 7) / 8;
    switch (type) {
#define TRI_CU_CASE(T)                                                                                  \
    case T:                                                                                             \
        switch (ntile) {                                                                                \
            case 1: (void) tri_cu_launch(tri_cu_mmq_kernel<T, 1>, grid, 32 * TRI_MQ_WARPS, s, a, n_tok); break; \
            case 2: (void) tri_cu_launch(tri_cu_mmq_kernel<T, 2>, grid, 32 * TRI_MQ_WARPS, s, a, n_tok); break; \
            case 3: (void) tri_cu_launch(tri_cu_mmq_kernel<T, 3>, grid, 32 * TRI_MQ_WARPS, s, a, n_tok); break; \
            default: (void) tri_cu_launch(tri_cu_mmq_kernel<T, 4>, grid, 32 * TRI_MQ_WARPS, s, a, n_tok); break; \
        }                                                                                               \
        break;
        TRI_CU_QTYPES(TRI_CU_CASE)
#undef TRI_CU_CASE
        default: break;
    }
    TRI_CUDA_LAUNCHED();
    return TRIATTN_OK;
}

extern "C" enum triattn_status tri_cuda_mm_vec(int type, int64_t ne0, const tri_cuda_mm_job * jobs, int n_jobs,
                                               const float * xf, int64_t ldx, const tri_cuda_q8 * q8, int n_tok,
                                               bool accumulate, void * stream) {
    tri_cu_mm_args a;
    TRI_CUDA_REQUIRE(tri_cu_mm_args_make(type, ne0, jobs, n_jobs, xf, ldx, n_tok, accumulate, &a));
    TRI_CUDA_REQUIRE(n_tok <= TRI_CUDA_MV_TOK && (a.total_rows + TRI_MV_WARPS - 1) / TRI_MV_WARPS <= 0x7fffffff);
    const int act = tri_cuda_mm_act_type(type);
    if (act) {
        TRI_CUDA_REQUIRE(q8 && q8->type == act && q8->ld >= ne0 && q8->ld % 32 == 0);
        a.q8 = *q8;
    } else {
        TRI_CUDA_REQUIRE(xf && ldx >= ne0);
    }
    cudaStream_t s = TRI_CU_STREAM(stream);
    switch (n_tok) {
        case 1: tri_cu_mm_vec_launch<1>(type, a, s); break;
        case 2: tri_cu_mm_vec_launch<2>(type, a, s); break;
        case 3: tri_cu_mm_vec_launch<3>(type, a, s); break;
        case 4: tri_cu_mm_vec_launch<4>(type, a, s); break;
        case 5: tri_cu_mm_vec_launch<5>(type, a, s); break;
        case 6: tri_cu_mm_vec_launch<6>(type, a, s); break;
        case 7: tri_cu_mm_vec_launch<7>(type, a, s); break;
        default: tri_cu_mm_vec_launch<8>(type, a, s); break;
    }
    TRI_CUDA_LAUNCHED();
    return TRIATTN_OK;
}
