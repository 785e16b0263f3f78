/* AArch64 Advanced SIMD TriAttention scoring: four RoPE pairs a step, read in the engine's pairing (adjacent
 * dims de-interleaved by LD2, half-split dims as two runs); pairs past the last multiple of 4 as the reference
 * does them. */
#include <arm_neon.h>
#include <math.h>

#include "../../triattn_score.h"

static inline float32x4_t tri_ts_h4(uint16x4_t h) {
    return vcvt_f32_f16(vreinterpret_f16_u16(h));
}

/* pairs [f, f + 4): the a and b dims of k, w and cw */
static inline void tri_ts_pairs4(enum tri_rope_pairing pairing, int F, int f, const tri_fp16 * k, const float * w,
                                 const float * cw, float32x4_t * ka, float32x4_t * kb, float32x4_t * wa,
                                 float32x4_t * wb, float32x4_t * cab) {
    if (pairing == TRI_ROPE_ADJACENT) {
        const uint16x4x2_t  h = vld2_u16(k + 2 * f);
        const float32x4x2_t x = vld2q_f32(w + 2 * f);
        const float32x4x2_t c = vld2q_f32(cw + 2 * f);
        *ka  = tri_ts_h4(h.val[0]);
        *kb  = tri_ts_h4(h.val[1]);
        *wa  = x.val[0];
        *wb  = x.val[1];
        *cab = vaddq_f32(c.val[0], c.val[1]);
    } else {
        *ka  = tri_ts_h4(vld1_u16(k + f));
        *kb  = tri_ts_h4(vld1_u16(k + F + f));
        *wa  = vld1q_f32(w + f);
        *wb  = vld1q_f32(w + F + f);
        *cab = vaddq_f32(vld1q_f32(cw + f), vld1q_f32(cw + F + f));
    }
}

void tri_triattn_score_neon(int D, int rope_dim, enum tri_rope_pairing pairing, int G, const float * w,
                            const float * cw, const tri_fp16 * K, int n, float * s, int ls) {
    const int F  = rope_dim / 2;
    const int F4 = F & ~3;
    for (int j = 0; j < n; j++) {
        const tri_fp16 * k = K + (int64_t)j * D;
        for (int g = 0; g < G; g++) {
            const float * wg  = w + (int64_t)g * D;
            const float * cg  = cw + (int64_t)g * D;
            float32x4_t   acc = vdupq_n_f32(0.0f);
            for (int f = 0; f < F4; f += 4) {
                float32x4_t ka, kb, wa, wb, cab;
                tri_ts_pairs4(pairing, F, f, k, wg, cg, &ka, &kb, &wa, &wb, &cab);
                const float32x4_t nrm = vsqrtq_f32(vfmaq_f32(vmulq_f32(ka, ka), kb, kb));
                acc = vfmaq_f32(acc, wa, ka);
                acc = vfmaq_f32(acc, wb, kb);
                acc = vfmaq_f32(acc, cab, nrm);
            }
            float sum = vaddvq_f32(acc);
            for (int f = F4; f < F; f++) {
                const int   a  = pairing == TRI_ROPE_ADJACENT ? 2 * f : f;
                const int   b  = pairing == TRI_ROPE_ADJACENT ? 2 * f + 1 : f + F;
                const float xa = tri_fp16_to_fp32(k[a]), xb = tri_fp16_to_fp32(k[b]);
                sum += wg[a] * xa + wg[b] * xb + (cg[a] + cg[b]) * sqrtf(xa * xa + xb * xb);
            }
            s[(int64_t)g * ls + j] = sum;
        }
    }
}
