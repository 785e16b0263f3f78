/* fp16 for the host simulator (sim.h): the bits of IEEE half, converted with ggml_ops' round-to-nearest-even. */
#ifndef TRI_CUDA_SIM_FP16_H
#define TRI_CUDA_SIM_FP16_H

#include "fp16.h"
#include "sim.h"

struct alignas(2) __half {
    unsigned short x;
};
struct alignas(4) __half2 {
    __half x, y;
};

static inline float __half2float(__half h) { return tri_fp16_to_fp32(h.x); }
static inline __half __float2half_rn(float f) { return __half{ tri_fp32_to_fp16(f) }; }
static inline __half __ushort_as_half(unsigned short u) { return __half{ u }; }
static inline __half2 __floats2half2_rn(float lo, float hi) { return __half2{ __float2half_rn(lo), __float2half_rn(hi) }; }
static inline float2 __half22float2(__half2 h) { return float2{ __half2float(h.x), __half2float(h.y) }; }

#endif
