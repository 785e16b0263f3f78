/* Weight x activation products on the device: y[t][r] (+)= sum_i W[r][i] * x[t][i] (+ bias[r]), weights in their
 * GGUF block layout.
 * - up to 8 tokens (decode, small batches): matrix-vector kernels that read every weight byte once at full width;
 *   quantized weights meet 8-bit activations (act.cuh) in integer dot products (cuda/qchunk.h, the CPU's own
 *   integer sums), F32 / F16 / BF16 weights meet float activations.
 * - more tokens (prefill, large batches): tensor cores (mma.cu): weight tiles dequantized to fp16 in shared memory,
 *   float activations rounded to fp16, fp32 accumulation.
 * Several weights of one type and input width (Q, K and V; gate and up) run as one launch: a job each. */
#ifndef TRI_CUDA_MATMUL_CUH
#define TRI_CUDA_MATMUL_CUH

#include "act.cuh"
#include "triattn.h"

#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TRI_CUDA_MM_JOBS 3  /* weights one launch takes */
#define TRI_CUDA_MV_TOK  8  /* most tokens of the matrix-vector kernels */
#define TRI_CUDA_MQ_TOK  32 /* tokens of a block of the integer tensor-core kernel */

typedef struct tri_cuda_mm_job {
    const void *  W;     /* ne1 rows of ne0 values of the launch's type */
    int64_t       ne1;
    float *       y;     /* [n_tok][ldy] */
    int64_t       ldy;
    const float * bias;  /* [ne1] or NULL */
} tri_cuda_mm_job;

/* True when the device kernels take weights of ggml type `type`. */
bool tri_cuda_type_supported(int type);
/* The activation a matrix-vector product of weights of `type` reads: TRI_QC_ACT_* (qchunk.h) for quantized
 * types, 0 (float rows) for F32 / F16 / BF16. */
int tri_cuda_mm_act_type(int type);

/* Matrix-vector products, n_tok <= TRI_CUDA_MV_TOK: quantized types read q8 (of tri_cuda_mm_act_type), float
 * types xf (stride ldx). accumulate: y += product instead of y = product. */
enum triattn_status tri_cuda_mm_vec(int type, int64_t ne0, const tri_cuda_mm_job * jobs, int n_jobs, const float * xf,
                                    int64_t ldx, const tri_cuda_q8 * q8, int n_tok, bool accumulate, void * stream);
/* Quantized weights x q8 (of tri_cuda_mm_act_type) on integer tensor cores, any n_tok >= 1 in blocks of
 * TRI_CUDA_MQ_TOK tokens: every weight byte read once per block of tokens. */
enum triattn_status tri_cuda_mm_q(int type, int64_t ne0, const tri_cuda_mm_job * jobs, int n_jobs,
                                  const tri_cuda_q8 * q8, int n_tok, bool accumulate, void * stream);
/* Tensor-core products for any n_tok from float activations xf (stride ldx, 16-byte aligned rows). */
enum triattn_status tri_cuda_mm_tc(int type, int64_t ne0, const tri_cuda_mm_job * jobs, int n_jobs, const float * xf,
                                   int64_t ldx, int n_tok, bool accumulate, void * stream);
/* The same with the token tile chosen: bn = 32, 64 or 128 (tests, benchmarks). */
enum triattn_status tri_cuda_mm_tc_bn(int type, int64_t ne0, const tri_cuda_mm_job * jobs, int n_jobs,
                                      const float * xf, int64_t ldx, int n_tok, bool accumulate, int bn, void * stream);

#ifdef __cplusplus
}
#endif

#endif
