/* The merge of split attention's parts, lane by lane.
 *
 * A part (one slot range) of a (row, query head) leaves [D + 2] floats: acc[D], its values weighted by
 * exp(score - m), then m, its largest score, and l, the sum of its weights (0 for a part with no slots). The merge
 * weighs part p by exp(m_p - max m) and divides by the weighted sum of l. A warp takes one head: lane L holds parts
 * L, L + 32, ... (up to TRI_AM_PARTS_LANE), the warp reduces their largest m and last non-empty part (shuffles in
 * the kernel), and each lane writes its parts' weights; then a thread per (head, column) sums the weighted values in
 * part order.
 *
 * Plain C like qchunk.h: the kernels (cuda/attention.cu) and the host test (tests/c/test_cuda_atile.c) call the
 * same functions. TRI_AM_LD reads the parts, from L2 on the device (other blocks of the same kernel wrote them). */
#ifndef TRI_AMERGE_H
#define TRI_AMERGE_H

#include "qchunk.h"

#define TRI_AM_PARTS_LANE 4 /* parts a lane holds: up to 128 parts a head */

#ifdef __CUDA_ARCH__ /* the device pass of nvcc */
#define TRI_AM_LD(p) __ldcg(p)
#else
#define TRI_AM_LD(p) (*(p))
#endif

/* Lane `lane`'s parts of one head (pg: [parts][D + 2]): their m and l (-inf and 0 past the last part), the largest m
 * among its non-empty ones and 1 + its last non-empty one (-inf and 0 when it has none). The loads go out together. */
TRI_QC_FN void tri_am_lane_parts(const float * pg, int parts, int D, int lane, float m[TRI_AM_PARTS_LANE],
                                 float l[TRI_AM_PARTS_LANE], float * mx, int * last) {
    for (int i = 0; i < TRI_AM_PARTS_LANE; i++) {
        const int p = lane + 32 * i;
        m[i] = p < parts ? TRI_AM_LD(pg + (size_t) p * (D + 2) + D) : -INFINITY;
        l[i] = p < parts ? TRI_AM_LD(pg + (size_t) p * (D + 2) + D + 1) : 0.0f;
    }
    *mx = -INFINITY;
    *last = 0;
    for (int i = 0; i < TRI_AM_PARTS_LANE; i++) {
        if (l[i] > 0.0f) {
            *mx = fmaxf(*mx, m[i]);
            *last = lane + 32 * i + 1;
        }
    }
}

/* With the head's largest m (mx) and 1 + last non-empty part (used), over the warp: the lane's parts' weights into
 * w[p] (exp(m_p - mx); -1 marks an empty part), and the lane's share of the weighted sum of l. */
TRI_QC_FN float tri_am_lane_weights(const float m[TRI_AM_PARTS_LANE], const float l[TRI_AM_PARTS_LANE], float mx,
                                    int used, int lane, float * w) {
    float t = 0.0f;
    for (int i = 0; i < TRI_AM_PARTS_LANE; i++) {
        const int p = lane + 32 * i;
        if (p < used) {
            const float e = l[i] > 0.0f ? expf(m[i] - mx) : -1.0f;
            w[p] = e;
            t += e > 0.0f ? e * l[i] : 0.0f;
        }
    }
    return t;
}

/* One output value: column pd[0] of the head's parts 0 .. used - 1 ([D + 2] floats apart) weighed by w in part order,
 * empty parts skipped, times inv (1 / the weighted sum of l). */
TRI_QC_FN float tri_am_column(const float * pd, const float * w, int used, int D, float inv) {
    float o = 0.0f;
    for (int p = 0; p < used; p++) {
        if (w[p] >= 0.0f) {
            o += w[p] * TRI_AM_LD(pd + (size_t) p * (D + 2));
        }
    }
    return o * inv;
}

#endif
