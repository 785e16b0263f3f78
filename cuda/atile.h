/* Attention of many query rows on fp16 tensor cores, lane by lane (a flash-attention tile).
 *
 * A warp holds 16 query rows of one KV head (a chunk's (token, query head) pairs) and walks the slots 64 at a time:
 * S = Q K^T (16 x 64: D/16 k-steps by 8 n-tiles of mma.m16n8k16, fp16 in, fp32 sums), the online softmax on S's
 * fragments in registers, then O += P V (4 k-steps by D/8 n-tiles) with P, in fp16, taken straight from S's
 * accumulator layout. Q is scaled before its rounding to fp16; K and V are the cache's fp16.
 *
 * Lane l = 4 g + t (PTX fragment layout of m16n8k16 with f16 inputs; a 32-bit word holds two halves, the lower
 * column or row in the low 16 bits):
 *   A, 16 x 16: a[0] = row g, cols 2t, 2t + 1;  a[1] = row g + 8, same cols;  a[2], a[3]: the same at cols + 8
 *   B, 16 x 8:  b[0] = rows 2t, 2t + 1 of col g; b[1] = rows 2t + 8, 2t + 9
 *   C, 16 x 8:  c[0], c[1] = row g, cols 2t, 2t + 1;  c[2], c[3] = row g + 8
 * So S's n-tiles 2k and 2k + 1 are, as they stand, the A fragment of P's k-step k.
 *
 * Shared tiles: K as [64 slots][D + 8] halves (a B word of Q K^T is two adjacent values of one slot), V transposed
 * as [D][64 + 8] (a B word of P V is one value of two adjacent slots). The 8 halves of padding put the 32 lanes'
 * word loads on 32 distinct banks.
 *
 * Plain C like qchunk.h: the kernel (cuda/attention.cu) and the host test (tests/c/test_cuda_atile.c, which runs
 * a block's warps around an emulated mma) call the same functions. */
#ifndef TRI_ATILE_H
#define TRI_ATILE_H

#include "qchunk.h"

#define TRI_AT_SLOTS 64                  /* slots per tile */
#define TRI_AT_ROWS  16                  /* query rows per warp */
#define TRI_AT_KLD(D) ((D) + 8)          /* halves per K row in shared memory */
#define TRI_AT_VLD (TRI_AT_SLOTS + 8)    /* halves per transposed V row */

/* A lane's running softmax of its rows g and g + 8: maximum, and the sum of its own columns' weights (the four
 * lanes of a row are summed at the end). */
typedef struct tri_at_run {
    float m[2], l[2];
} tri_at_run;

/* Two floats as fp16 (round to nearest even), lo in the low half. */
TRI_QC_FN uint32_t tri_at_pack(float lo, float hi) {
#ifdef __CUDACC__
    const __half2 h = __floats2half2_rn(lo, hi);
    return *(const uint32_t *) &h;
#else
    return (uint32_t) tri_fp32_to_fp16(lo) | ((uint32_t) tri_fp32_to_fp16(hi) << 16);
#endif
}

TRI_QC_FN uint32_t tri_at_ld32(const uint16_t * p) {
#ifdef __CUDACC__
    return *(const uint32_t *) p;
#else
    uint32_t w;
    memcpy(&w, p, 4);
    return w;
#endif
}

TRI_QC_FN void tri_at_st32(uint16_t * p, uint32_t w) {
#ifdef __CUDACC__
    *(uint32_t *) p = w;
#else
    memcpy(p, &w, 4);
#endif
}

/* 8 halves from a 16-byte aligned address, as 4 words. */
TRI_QC_FN void tri_at_ld128(const uint16_t * p, uint32_t w[4]) {
#ifdef __CUDACC__
    const uint4 v = *(const uint4 *) p;
    w[0] = v.x;
    w[1] = v.y;
    w[2] = v.z;
    w[3] = v.w;
#else
    memcpy(w, p, 16);
#endif
}

TRI_QC_FN void tri_at_st128(uint16_t * p, const uint32_t w[4]) {
#ifdef __CUDACC__
    *(uint4 *) p = make_uint4(w[0], w[1], w[2], w[3]);
#else
    memcpy(p, w, 16);
#endif
}

#define TRI_AT_LOADS 8 /* 16-byte global loads a thread issues before it stores the first */

/* Thread tid of nth fills the shared tiles with slots j0 .. j0 + n - 1 (n <= 64) of K and V ([slot][D] halves);
 * past n both tiles hold zeros (a slot never written may hold any bits: 0 * inf would poison the sums). */
TRI_QC_FN void tri_at_load(const uint16_t * K, const uint16_t * V, int j0, int n, int D, int tid, int nth,
                           uint16_t * Ks, uint16_t * Vt) {
    const int pieces = D / 8;
    /* K: a thread per 8 values of a slot, neighbours along the row */
    for (int e0 = tid; e0 < TRI_AT_SLOTS * pieces; e0 += TRI_AT_LOADS * nth) {
        uint32_t w[TRI_AT_LOADS][4];
        for (int u = 0; u < TRI_AT_LOADS; u++) {
            const int e = e0 + u * nth, j = e / pieces;
            w[u][0] = w[u][1] = w[u][2] = w[u][3] = 0;
            if (e < TRI_AT_SLOTS * pieces && j < n) {
                tri_at_ld128(K + (size_t) (j0 + j) * D + 8 * (e % pieces), w[u]);
            }
        }
        for (int u = 0; u < TRI_AT_LOADS; u++) {
            const int e = e0 + u * nth;
            if (e < TRI_AT_SLOTS * pieces) {
                tri_at_st128(Ks + e / pieces * TRI_AT_KLD(D) + 8 * (e % pieces), w[u]);
            }
        }
    }
    /* V: a thread per 8 values of two adjacent slots, neighbours along the slots (one word per value written) */
    for (int e0 = tid; e0 < TRI_AT_SLOTS / 2 * pieces; e0 += TRI_AT_LOADS / 2 * nth) {
        uint32_t w[TRI_AT_LOADS][4];
        for (int u = 0; u < TRI_AT_LOADS; u++) {
            const int e = e0 + u / 2 * nth, j = 2 * (e % (TRI_AT_SLOTS / 2)) + u % 2;
            w[u][0] = w[u][1] = w[u][2] = w[u][3] = 0;
            if (e < TRI_AT_SLOTS / 2 * pieces && j < n) {
                tri_at_ld128(V + (size_t) (j0 + j) * D + 8 * (e / (TRI_AT_SLOTS / 2)), w[u]);
            }
        }
        for (int u = 0; u < TRI_AT_LOADS / 2; u++) {
            const int e = e0 + u * nth, j = 2 * (e % (TRI_AT_SLOTS / 2)), c = e / (TRI_AT_SLOTS / 2);
            if (e >= TRI_AT_SLOTS / 2 * pieces) {
                continue;
            }
            for (int i = 0; i < 8; i++) {
                const uint32_t lo = (w[2 * u][i / 2] >> (16 * (i % 2))) & 0xffffu;
                const uint32_t hi = (w[2 * u + 1][i / 2] >> (16 * (i % 2))) & 0xffffu;
                tri_at_st32(Vt + (8 * c + i) * TRI_AT_VLD + j, lo | (hi << 16));
            }
        }
    }
}

/* Block p's share of the nv slots its last row sees: whole tiles, [*j0, *j1) (empty for the parts past the end). */
TRI_QC_FN void tri_at_range(int nv, int parts, int p, int * j0, int * j1) {
    const int per = (nv + parts - 1) / parts;
    const int chunk = (per + TRI_AT_SLOTS - 1) / TRI_AT_SLOTS * TRI_AT_SLOTS;
    *j0 = p * chunk < nv ? p * chunk : nv;
    *j1 = (p + 1) * chunk < nv ? (p + 1) * chunk : nv;
}

/* The lane's A fragment of Q for k-step ks: rows q0 (g) and q8 (g + 8), D floats each, times scale; NULL: a row
 * past the chunk, zeros. */
TRI_QC_FN void tri_at_q_frag(const float * q0, const float * q8, int ks, int lane, float scale, uint32_t a[4]) {
    const int c = 16 * ks + 2 * (lane & 3);
    a[0] = q0 ? tri_at_pack(q0[c] * scale, q0[c + 1] * scale) : 0u;
    a[1] = q8 ? tri_at_pack(q8[c] * scale, q8[c + 1] * scale) : 0u;
    a[2] = q0 ? tri_at_pack(q0[c + 8] * scale, q0[c + 9] * scale) : 0u;
    a[3] = q8 ? tri_at_pack(q8[c + 8] * scale, q8[c + 9] * scale) : 0u;
}

/* The lane's B fragment of K^T for n-tile nt (slots 8 nt ..) and k-step ks (values 16 ks ..). */
TRI_QC_FN void tri_at_k_frag(const uint16_t * Ks, int D, int nt, int ks, int lane, uint32_t b[2]) {
    const uint16_t * p = Ks + (8 * nt + (lane >> 2)) * TRI_AT_KLD(D) + 16 * ks + 2 * (lane & 3);
    b[0] = tri_at_ld32(p);
    b[1] = tri_at_ld32(p + 8);
}

/* The lane's B fragment of V for n-tile dt (values 8 dt ..) and k-step kk (slots 16 kk ..). */
TRI_QC_FN void tri_at_v_frag(const uint16_t * Vt, int dt, int kk, int lane, uint32_t b[2]) {
    const uint16_t * p = Vt + (8 * dt + (lane >> 2)) * TRI_AT_VLD + 16 * kk + 2 * (lane & 3);
    b[0] = tri_at_ld32(p);
    b[1] = tri_at_ld32(p + 8);
}

/* The tile's scores s[n-tile][c] for slots j0 + 8 nt + 2t + (c & 1): slots at or past lim[0] (row g) and lim[1]
 * (row g + 8) become -inf; mx gets the lane's maximum of each row (the four lanes of a row then take theirs). */
TRI_QC_FN void tri_at_mask_max(float s[TRI_AT_SLOTS / 8][4], int j0, const int lim[2], int lane, float mx[2]) {
    mx[0] = mx[1] = -INFINITY;
    for (int nt = 0; nt < TRI_AT_SLOTS / 8; nt++) {
        for (int c = 0; c < 4; c++) {
            const int j = j0 + 8 * nt + 2 * (lane & 3) + (c & 1), r = c >> 1;
            if (j >= lim[r]) {
                s[nt][c] = -INFINITY;
            }
            mx[r] = fmaxf(mx[r], s[nt][c]);
        }
    }
}

/* With mx the rows' maxima over the tile: the new running maxima, the factor corr[r] the rows' earlier sums shrink
 * by, the weights exp(s - m) as P's A fragments p[k-step][4], and the lane's running sums. A row that has seen only
 * masked slots keeps m = -inf, weights and sums 0. */
TRI_QC_FN void tri_at_softmax(const float s[TRI_AT_SLOTS / 8][4], const float mx[2], tri_at_run * run, float corr[2],
                              uint32_t p[TRI_AT_SLOTS / 16][4]) {
    float base[2];
    for (int r = 0; r < 2; r++) {
        const float m_new = fmaxf(run->m[r], mx[r]);
        base[r] = m_new == -INFINITY ? 0.0f : m_new;
        corr[r] = expf(run->m[r] - base[r]);
        run->m[r] = m_new;
        run->l[r] *= corr[r];
    }
    for (int kk = 0; kk < TRI_AT_SLOTS / 16; kk++) {
        for (int half = 0; half < 2; half++) { /* n-tile 2 kk + half: A words 2 half (row g), 2 half + 1 (g + 8) */
            const float * c = s[2 * kk + half];
            const float e0 = expf(c[0] - base[0]), e1 = expf(c[1] - base[0]);
            const float e2 = expf(c[2] - base[1]), e3 = expf(c[3] - base[1]);
            run->l[0] += e0 + e1;
            run->l[1] += e2 + e3;
            p[kk][2 * half] = tri_at_pack(e0, e1);
            p[kk][2 * half + 1] = tri_at_pack(e2, e3);
        }
    }
}

/* O's accumulators (nd n-tiles) of rows g, g + 8 times corr. */
TRI_QC_FN void tri_at_rescale(float (*o)[4], int nd, const float corr[2]) {
    for (int dt = 0; dt < nd; dt++) {
        o[dt][0] *= corr[0];
        o[dt][1] *= corr[0];
        o[dt][2] *= corr[1];
        o[dt][3] *= corr[1];
    }
}

/* The lane's values of row g (r = 0) or g + 8 (r = 1) into out[D] of the row's part; lane t = 0 adds (m, l) at
 * out[D], out[D + 1] (l already summed over the row's lanes). */
TRI_QC_FN void tri_at_store(float * out, const float (*o)[4], int D, int r, const tri_at_run * run, int lane) {
    const int t = lane & 3;
    for (int dt = 0; dt < D / 8; dt++) {
        out[8 * dt + 2 * t] = o[dt][2 * r];
        out[8 * dt + 2 * t + 1] = o[dt][2 * r + 1];
    }
    if (t == 0) {
        out[D] = run->m[r];
        out[D + 1] = run->l[r];
    }
}

#endif
