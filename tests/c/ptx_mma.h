/* PTX's warp-wide mma.sync computed on the host from its fragment layouts: one lane's four accumulator registers
 * from the registers of the warp's 32 lanes (a[l], b[l]: lane l's A and B registers). Shared by the host tests of
 * the tensor-core tiles and the CUDA simulator (tests/c/cuda_sim/sim_ptx.h). C and C++.
 *
 * Layouts (g = lane / 4, t = lane % 4): word j (codes 4 j .. 4 j + 3, or fp16 pair j) of A's row r is register
 * (r >= 8) + 2 (j >= 4) of lane 4 (r % 8) + j % 4; of B's column n, register (j >= 4) of lane 4 n + j % 4. Result
 * register i of lane l is row g + 8 (i / 2), column 2 t + i % 2. */
#ifndef TRI_TEST_PTX_MMA_H
#define TRI_TEST_PTX_MMA_H

#include <stdint.h>

#include "fp16.h"

/* Four signed bytes of a times those of b, added to c. */
static inline int32_t tri_ptx_dp4a(uint32_t a, uint32_t b, int32_t c) {
    for (int i = 0; i < 4; i++) {
        c += (int32_t) (int8_t) (uint8_t) (a >> (8 * i)) * (int32_t) (int8_t) (uint8_t) (b >> (8 * i));
    }
    return c;
}

/* mma.m16n8k32 (k = 32: a[l][0..4), b[l][0..2)) or m16n8k16 (k = 16: a[l][0..2), b[l][0]), s8 x s8 -> s32:
 * c[0..4) = lane's results. */
static inline void tri_ptx_imma_lane(int k, const uint32_t * const * a, const uint32_t * const * b, int lane,
                                     int32_t * c) {
    const int g = lane / 4, t = lane % 4;
    for (int i = 0; i < 4; i++) {
        const int r = g + 8 * (i / 2), n = 2 * t + i % 2;
        int32_t sum = 0;
        for (int j = 0; j < k / 4; j++) {
            sum = tri_ptx_dp4a(a[(r % 8) * 4 + j % 4][(r >= 8) + 2 * (j >= 4)], b[n * 4 + j % 4][j >= 4], sum);
        }
        c[i] = sum;
    }
}

/* mma.m16n8k16, fp16 inputs (a[l][0..4), b[l][0..2)), fp32 accumulators: c[0..4) += lane's results (summed in
 * double). */
static inline void tri_ptx_hmma_lane(const uint32_t * const * a, const uint32_t * const * b, int lane, float * c) {
    const int g = lane / 4, t = lane % 4;
    for (int i = 0; i < 4; i++) {
        const int r = g + 8 * (i / 2), n = 2 * t + i % 2;
        double sum = c[i];
        for (int j = 0; j < 8; j++) {
            const uint32_t wa = a[(r % 8) * 4 + j % 4][(r >= 8) + 2 * (j >= 4)], wb = b[n * 4 + j % 4][j >= 4];
            sum += (double) tri_fp16_to_fp32((tri_fp16) (wa & 0xffffu)) * tri_fp16_to_fp32((tri_fp16) (wb & 0xffffu)) +
                   (double) tri_fp16_to_fp32((tri_fp16) (wa >> 16)) * tri_fp16_to_fp32((tri_fp16) (wb >> 16));
        }
        c[i] = (float) sum;
    }
}

#endif
