/* Device-side helpers shared by the CUDA op files (CUDA only): error checks that return a status,
 * launch geometry, warp/block reductions, unaligned little-endian loads. */
#ifndef TRI_CUDA_COMMON_CUH
#define TRI_CUDA_COMMON_CUH

#include "triattn.h"

#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

/* Records the failure (call text, file, line, CUDA's message) for tri_cuda_last_error and maps it to a status:
 * TRIATTN_ERR_OOM for allocation failures, TRIATTN_ERR_INTERNAL otherwise. */
extern "C" enum triattn_status tri_cuda_fail(cudaError_t e, const char * what, const char * file, int line);

/* Evaluates a CUDA runtime call; on failure returns its status from the enclosing function. Never aborts. */
#define TRI_CUDA_CHECK(call)                                                   \
    do {                                                                       \
        const cudaError_t tri_e_ = (call);                                     \
        if (tri_e_ != cudaSuccess) {                                           \
            return tri_cuda_fail(tri_e_, #call, __FILE__, __LINE__);           \
        }                                                                      \
    } while (0)

/* After a kernel launch: reports a bad configuration or an earlier asynchronous error. */
#define TRI_CUDA_LAUNCHED() TRI_CUDA_CHECK(cudaGetLastError())

/* Refuses a launch whose arguments are out of range (never reaches the device). */
#define TRI_CUDA_REQUIRE(cond)                                                 \
    do {                                                                       \
        if (!(cond)) {                                                         \
            return tri_cuda_fail(cudaErrorInvalidValue, "argument check: " #cond, __FILE__, __LINE__); \
        }                                                                      \
    } while (0)

#define TRI_CU_STREAM(s) ((cudaStream_t) (s))

/* Programmatic dependent launch (compute capability 9.0 and newer): a kernel launched with tri_cu_launch may be
 * scheduled while the kernel before it in the stream still runs, so a decode step's hundreds of small kernels do not
 * each wait out a launch. Such a kernel calls tri_cu_pdl_enter() first: it waits until the kernel before has
 * finished and its writes are visible, then lets the next kernel be scheduled in turn. Elsewhere (an older device,
 * TRIATTN_CUDA_PDL=0) launches are plain and both instructions do nothing. */
__device__ __forceinline__ void tri_cu_pdl_enter(void) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

/* Whether tri_cu_launch asks for programmatic dependent launches (decided once per process). */
extern "C" bool tri_cuda_pdl(void);

/* Launches a kernel that starts with tri_cu_pdl_enter() (no dynamic shared memory); a failure also shows in
 * TRI_CUDA_LAUNCHED(), as with <<<...>>>. */
template <typename... P, typename... A>
static inline cudaError_t tri_cu_launch(void (*kernel)(P...), dim3 grid, dim3 block, cudaStream_t s, A... args) {
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.stream = s;
    cfg.attrs = attr;
    cfg.numAttrs = tri_cuda_pdl() ? 1 : 0;
    return cudaLaunchKernelEx(&cfg, kernel, args...);
}

static inline unsigned tri_cu_blocks(int64_t n, int per_block) {
    return (unsigned) ((n + per_block - 1) / per_block);
}

__device__ __forceinline__ float tri_cu_warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        v += __shfl_xor_sync(0xffffffffu, v, o);
    }
    return v;
}

__device__ __forceinline__ double tri_cu_warp_sum_d(double v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        v += __shfl_xor_sync(0xffffffffu, v, o);
    }
    return v;
}

/* Sum over the block (blockDim.x a multiple of 32, <= 1024); every thread gets the result. Uses 33 doubles
 * of shared memory passed by the caller. */
__device__ __forceinline__ double tri_cu_block_sum_d(double v, double * sh) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = tri_cu_warp_sum_d(v);
    if (lane == 0) {
        sh[warp] = v;
    }
    __syncthreads();
    if (warp == 0) {
        double t = lane < nw ? sh[lane] : 0.0;
        t = tri_cu_warp_sum_d(t);
        if (lane == 0) {
            sh[32] = t;
        }
    }
    __syncthreads();
    const double r = sh[32];
    __syncthreads(); /* sh may be reused right after */
    return r;
}

__device__ __forceinline__ uint16_t tri_cu_u16(const uint8_t * p) {
    return (uint16_t) (p[0] | (p[1] << 8));
}

__device__ __forceinline__ uint32_t tri_cu_u32(const uint8_t * p) {
    return (uint32_t) p[0] | ((uint32_t) p[1] << 8) | ((uint32_t) p[2] << 16) | ((uint32_t) p[3] << 24);
}

/* fp16 stored at any byte address. */
__device__ __forceinline__ float tri_cu_f16(const uint8_t * p) {
    return __half2float(__ushort_as_half(tri_cu_u16(p)));
}

#endif
