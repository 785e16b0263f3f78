/* cuda/ptx.cuh's instructions for the host simulator (sim.h): each warp-wide mma publishes every lane's fragment
 * registers, then each lane computes its own result registers from PTX's fragment layouts (../ptx_mma.h). */
#ifndef TRI_CUDA_SIM_PTX_H
#define TRI_CUDA_SIM_PTX_H

#include "../ptx_mma.h"
#include "sim.h"

/* Publishes the lane's A (na words) and B (nb words) registers, waits for the warp, and points a[l] / b[l] at lane
 * l's. */
static inline void tri_sim_mma_fragments(const uint32_t * a, int na, const uint32_t * b, int nb,
                                         const uint32_t * fa[32], const uint32_t * fb[32]) {
    tri_sim_thread * t = tri_sim_cur;
    const int buf = tri_sim_buf();
    for (int i = 0; i < na; i++) {
        t->regs[buf][i] = a[i];
    }
    for (int i = 0; i < nb; i++) {
        t->regs[buf][4 + i] = b[i];
    }
    tri_sim_barrier_warp();
    for (int l = 0; l < 32; l++) {
        const tri_sim_thread * o = tri_sim_lane(l);
        fa[l] = o->regs[buf];
        fb[l] = o->regs[buf] + 4;
    }
}

static inline void tri_cu_imma16(uint32_t a0, uint32_t a1, uint32_t b0, int32_t * c) {
    const uint32_t a[2] = { a0, a1 }, * fa[32], * fb[32];
    tri_sim_mma_fragments(a, 2, &b0, 1, fa, fb);
    tri_ptx_imma_lane(16, fa, fb, tri_sim_cur->lane, c);
}
static inline void tri_cu_imma32(const uint32_t * a, const uint32_t * b, int32_t * c) {
    const uint32_t * fa[32], * fb[32];
    tri_sim_mma_fragments(a, 4, b, 2, fa, fb);
    tri_ptx_imma_lane(32, fa, fb, tri_sim_cur->lane, c);
}
/* c (16 x 8, fp32) += a (16 x 16) b (16 x 8), fp16 inputs. */
static inline void tri_cu_hmma16(float * c, const uint32_t * a, const uint32_t * b) {
    const uint32_t * fa[32], * fb[32];
    tri_sim_mma_fragments(a, 4, b, 2, fa, fb);
    tri_ptx_hmma_lane(fa, fb, tri_sim_cur->lane, c);
}

static inline void tri_cu_prefetch_l1(const void * p) {
    (void) p;
}

#endif
