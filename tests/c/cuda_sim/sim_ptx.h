/* cuda/ptx.cuh's instructions for the host simulator (sim.h): each warp-wide mma publishes every lane's fragment
 * registers, then each lane computes its own result registers from PTX's fragment layouts. */
#ifndef TRI_CUDA_SIM_PTX_H
#define TRI_CUDA_SIM_PTX_H

#include "sim.h"

/* Register reg of lane l in exchange buffer buf. */
static inline uint32_t tri_sim_reg(int buf, int l, int reg) {
    return tri_sim_lane(l)->regs[buf][reg];
}

/* s8 x s8 -> s32 over k = 16 or 32 codes; the lane's a (k / 8 words) and b (k / 16 words) in PTX's layout: word j
 * (codes 4 j .. 4 j + 3) of A's row r is register (r >= 8) + 2 (j >= 4) of lane 4 (r % 8) + j % 4, of B's column n
 * register j >= 4 of lane 4 n + j % 4. The lane's results: rows g, g + 8 by columns 2 t, 2 t + 1 (g = lane / 4,
 * t = lane % 4). */
static inline void tri_sim_imma(int k, const uint32_t * a, const uint32_t * b, int32_t * c) {
    tri_sim_thread * t = tri_sim_cur;
    const int buf = tri_sim_buf();
    for (int i = 0; i < k / 8; i++) {
        t->regs[buf][i] = a[i];
    }
    for (int i = 0; i < k / 16; i++) {
        t->regs[buf][4 + i] = b[i];
    }
    tri_sim_barrier_warp();
    const int g = t->lane / 4, tq = t->lane % 4;
    for (int i = 0; i < 4; i++) {
        const int r = g + 8 * (i / 2), n = 2 * tq + i % 2;
        int32_t sum = 0;
        for (int j = 0; j < k / 4; j++) {
            const uint32_t wa = tri_sim_reg(buf, (r % 8) * 4 + j % 4, (r >= 8) + 2 * (j >= 4));
            const uint32_t wb = tri_sim_reg(buf, n * 4 + j % 4, 4 + (j >= 4));
            sum = __dp4a((int) wa, (int) wb, sum);
        }
        c[i] = sum;
    }
}

static inline void tri_cu_imma16(uint32_t a0, uint32_t a1, uint32_t b0, int32_t * c) {
    const uint32_t a[2] = { a0, a1 };
    tri_sim_imma(16, a, &b0, c);
}
static inline void tri_cu_imma32(const uint32_t * a, const uint32_t * b, int32_t * c) {
    tri_sim_imma(32, a, b, c);
}

/* c (16 x 8, fp32) += a (16 x 16) b (16 x 8), fp16 inputs: pair p (k = 2 p, 2 p + 1) of A's row r is register
 * (r >= 8) + 2 (p >= 4) of lane 4 (r % 8) + p % 4, of B's column n register p >= 4 of lane 4 n + p % 4. */
static inline void tri_cu_hmma16(float * c, const uint32_t * a, const uint32_t * b) {
    tri_sim_thread * t = tri_sim_cur;
    const int buf = tri_sim_buf();
    for (int i = 0; i < 4; i++) {
        t->regs[buf][i] = a[i];
    }
    t->regs[buf][4] = b[0];
    t->regs[buf][5] = b[1];
    tri_sim_barrier_warp();
    const int g = t->lane / 4, tq = t->lane % 4;
    for (int i = 0; i < 4; i++) {
        const int r = g + 8 * (i / 2), n = 2 * tq + i % 2;
        double sum = c[i];
        for (int p = 0; p < 8; p++) {
            const uint32_t wa = tri_sim_reg(buf, (r % 8) * 4 + p % 4, (r >= 8) + 2 * (p >= 4));
            const uint32_t wb = tri_sim_reg(buf, n * 4 + p % 4, 4 + (p >= 4));
            sum += (double) tri_fp16_to_fp32((tri_fp16) wa) * tri_fp16_to_fp32((tri_fp16) wb) +
                   (double) tri_fp16_to_fp32((tri_fp16) (wa >> 16)) * tri_fp16_to_fp32((tri_fp16) (wb >> 16));
        }
        c[i] = (float) sum;
    }
}

static inline void tri_cu_prefetch_l1(const void * p) {
    (void) p;
}

#endif
