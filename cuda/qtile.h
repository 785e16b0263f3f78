/* Quantized weights x 8-bit activations on integer tensor cores, lane by lane.
 *
 * A warp multiplies 16 weight rows by 8 tokens one 32-value chunk at a time: one mma.m16n8k32 (s8 x s8 -> s32)
 * gives each (row, token) the integer sum of the chunk's 32 code products, or two mma.m16n8k16 give the sums of
 * values 0..15 and 16..31 apart where the two halves have their own scales (Q2_K, Q3_K, Q6_K). The integer sums
 * then follow the CPU reference's formula (qchunk.h: tri_qc_isum, tri_qc_finish): integers accumulate over a
 * K-quant super-block, one float term per block or super-block.
 *
 * Lane l = 4 g + t (PTX fragment layout of both shapes):
 *   A, 16 rows x 32 codes:  a[0] = word t of row g, a[1] = word t of row g + 8, a[2], a[3]: word t + 4 of each
 *   B, 32 codes x 8 tokens: b[0] = word t, b[1] = word t + 4 of token g
 *   C, 16 x 8 sums:         c[i] = row g + 8 (i / 2) by token 2 t + i % 2
 * (m16n8k16 takes a[0], a[1], b[0] for values 0..15 and a[2], a[3], b[1] for 16..31.)
 *
 * Plain C like qchunk.h: the kernel (cuda/matmul.cu) and the host test (tests/c/test_cuda_qchunk.c, which runs a
 * warp's 32 lanes around an emulated mma) call the same functions. */
#ifndef TRI_QTILE_H
#define TRI_QTILE_H

#include "act.cuh"
#include "qchunk.h"

/* True when a chunk's halves have scales of their own: two k16 products instead of one k32. */
TRI_QC_FN bool tri_qt_split(int type) {
    return type == TRI_QC_Q2_K || type == TRI_QC_Q3_K || type == TRI_QC_Q6_K;
}

/* Lane's weight words of chunk c of rows g (row0) and g + 8 (row8); ch[h] keeps their scales (q[0], q[1] = words
 * t and t + 4). */
TRI_QC_FN void tri_qt_load_w(int type, const uint8_t * row0, const uint8_t * row8, int64_t c, int lane,
                             tri_qc_chunk * ch, uint32_t * a) {
    const int t = lane & 3;
    tri_qc_prep_words(type, row0, c, t, 4, &ch[0]);
    tri_qc_prep_words(type, row8, c, t, 4, &ch[1]);
    a[0] = (uint32_t) ch[0].q[0];
    a[1] = (uint32_t) ch[1].q[0];
    a[2] = (uint32_t) ch[0].q[1];
    a[3] = (uint32_t) ch[1].q[1];
}

/* One activation chunk's metadata (one 16-byte load on the device). */
TRI_QC_FN tri_cuda_q8_meta tri_qt_meta(const tri_cuda_q8_meta * p) {
#ifdef __CUDA_ARCH__
    const int4 v = __ldg((const int4 *) p);
    tri_cuda_q8_meta m;
    m.d = __int_as_float(v.x);
    m.s = __int_as_float(v.y);
    m.sum[0] = v.z;
    m.sum[1] = v.w;
    return m;
#else
    return *p;
#endif
}

/* A lane's activations for the token tile starting at tok0: its B token's codes (tok0 + g) and its result tokens'
 * metadata (tok0 + 2 t, tok0 + 2 t + 1), NULL for tokens at or past n_tok (they read as zeros). */
typedef struct tri_qt_xlane {
    const uint8_t *          b;
    const tri_cuda_q8_meta * m[2];
} tri_qt_xlane;

TRI_QC_FN tri_qt_xlane tri_qt_xlane_make(const tri_cuda_q8 * q8, int tok0, int n_tok, int lane) {
    const int g = lane >> 2, t = lane & 3;
    tri_qt_xlane x;
    x.b = tok0 + g < n_tok ? (const uint8_t *) q8->qs + (size_t) (tok0 + g) * q8->ld + 4 * t : NULL;
    for (int e = 0; e < 2; e++) {
        const int tok = tok0 + 2 * t + e;
        x.m[e] = tok < n_tok ? q8->meta + (size_t) tok * (q8->ld / 32) : NULL;
    }
    return x;
}

/* The lane's activation words of chunk c (b) and its result tokens' metadata (m). */
TRI_QC_FN void tri_qt_load_x(const tri_qt_xlane * x, int64_t c, uint32_t * b, tri_cuda_q8_meta * m) {
    b[0] = b[1] = 0;
    if (x->b) {
        b[0] = tri_qc_word(x->b + 32 * c, true);
        b[1] = tri_qc_word(x->b + 32 * c + 16, true);
    }
    for (int e = 0; e < 2; e++) {
        const tri_cuda_q8_meta zero = { 0.0f, 0.0f, { 0, 0 } };
        m[e] = x->m[e] ? tri_qt_meta(x->m[e] + c) : zero;
    }
}

/* Adds a chunk's sums (c0: values 0..15 or all 32, c1: values 16..31 or zeros) into the lane's integer sums. */
TRI_QC_FN void tri_qt_acc(const tri_qc_chunk * ch, const int32_t * c0, const int32_t * c1, const tri_cuda_q8_meta * m,
                          int32_t * isum, int32_t * msum) {
    for (int i = 0; i < 4; i++) {
        tri_qc_isum(&ch[i / 2], c0[i], c1[i], m[i % 2].sum, &isum[i], &msum[i]);
    }
}

/* Adds a block's (K-quants: a super-block's) float terms into the lane's results and clears its integer sums. */
TRI_QC_FN void tri_qt_finish(int kind, const tri_qc_chunk * ch, const tri_cuda_q8_meta * m, int32_t * isum,
                             int32_t * msum, float * acc) {
    for (int i = 0; i < 4; i++) {
        acc[i] += tri_qc_finish(kind, ch[i / 2].d, ch[i / 2].m, m[i % 2].d, m[i % 2].s, isum[i], msum[i]);
        isum[i] = msum[i] = 0;
    }
}

#endif
