/* The kernels' inline PTX, in one place: integer and fp16 mma.sync, the L1 prefetch hint. The host simulator of the
 * tests (tests/c/cuda_sim, TRI_CUDA_SIM) gives the same functions from PTX's fragment layouts. */
#ifndef TRI_CUDA_PTX_CUH
#define TRI_CUDA_PTX_CUH

#include <stdint.h>

#ifdef TRI_CUDA_SIM
#include "sim_ptx.h"
#else

/* c (16 x 8 sums) = a (16 x 16 codes) x b (16 x 8 codes), qtile.h's fragments. */
__device__ __forceinline__ void tri_cu_imma16(uint32_t a0, uint32_t a1, uint32_t b0, int32_t * c) {
    asm("mma.sync.aligned.m16n8k16.row.col.s32.s8.s8.s32 {%0, %1, %2, %3}, {%4, %5}, {%6}, {%7, %7, %7, %7};"
        : "=r"(c[0]), "=r"(c[1]), "=r"(c[2]), "=r"(c[3])
        : "r"(a0), "r"(a1), "r"(b0), "r"(0));
}
/* The same over 32 codes. */
__device__ __forceinline__ void tri_cu_imma32(const uint32_t * a, const uint32_t * b, int32_t * c) {
    asm("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%10, %10, %10, %10};"
        : "=r"(c[0]), "=r"(c[1]), "=r"(c[2]), "=r"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "r"(0));
}

/* c (16 x 8, fp32) += a (16 x 16) b (16 x 8), fp16 inputs in atile.h's fragments. */
__device__ __forceinline__ void tri_cu_hmma16(float * c, const uint32_t * a, const uint32_t * b) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

/* Asks L1 for the 128-byte line holding p (a hint: nothing waits for it). */
__device__ __forceinline__ void tri_cu_prefetch_l1(const void * p) {
    asm volatile("prefetch.global.L1 [%0];" ::"l"(p));
}

#endif
#endif
