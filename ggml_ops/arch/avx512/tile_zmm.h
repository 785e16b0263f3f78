/* Prefill tiles on 512-bit vectors (AVX-512 VNNI), part of x86_gemm.h: the two panels of a 16-row tile side
 * by side in one register (lanes 0-7: panel 0's rows, 8-15: panel 1's), so one vpdpbusd multiplies 16 rows by
 * a token's 4 values and each broadcast of activations serves both panels. The panels keep their layout
 * (x86_gemm.h); every lane runs the integer sums and then the float operations of the 256-bit tiles
 * (tri_tile32_block, tri_tileK_sb) in the same order, so the results are theirs bit for bit. */
#ifndef TRI_TILE_ZMM_H
#define TRI_TILE_ZMM_H

/* The 32 bytes at p (panel 0) and p + pstride (panel 1) as one register. */
TRI_INLINE __m512i tri_zmm_pair(const uint8_t * p, size_t pstride) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *) p)),
                              _mm256_loadu_si256((const __m256i *) (p + pstride)), 1);
}

TRI_INLINE __m512 tri_zmm_pair_ps(const uint8_t * p, size_t pstride) {
    return _mm512_castsi512_ps(tri_zmm_pair(p, pstride));
}

TRI_INLINE __m512i tri_zmm_bcast32(const uint8_t * p) {
    int32_t v;
    memcpy(&v, p, 4);
    return _mm512_set1_epi32(v);
}

/* tree(v) of eight partial sums per lane, for T tokens. */
TRI_INLINE void tri_zmm_tree(__m512 v[8][TRI_GEMM_TMAX], int T, __m512 out[TRI_GEMM_TMAX]) {
    for (int t = 0; t < T; t++) {
#define TRI_V(j) v[j][t]
        out[t] = TRI_TREE8(_mm512_add_ps, TRI_V);
#undef TRI_V
    }
}

/* Token t's 16 results (the first nrows of them) to yt[t]. */
TRI_INLINE void tri_zmm_store(const __m512 r[TRI_GEMM_TMAX], int T, float * const * yt, int nrows) {
    for (int t = 0; t < T; t++) {
        tri_store_rows(yt[t], _mm512_castps512_ps256(r[t]), nrows);
        tri_store_rows(yt[t] + 8, _mm512_extractf32x8_ps(r[t], 1), nrows - 8);
    }
}

/* One block b of two 32-value panels against T tokens into acc (as tri_tile32_block with NP = 2). */
TRI_INLINE void tri_tile32x2_block(const uint8_t * pan, size_t pstride, int T, int b, const tri_xtile * xt,
                                   __m512 acc[TRI_GEMM_TMAX]) {
    const uint8_t * pb = pan + (size_t) b * TRI_PAN32_BLOCK;
    __m512i s[TRI_GEMM_TMAX];
    const __m512i nc = tri_zmm_pair(pb + 256, pstride);
    for (int t = 0; t < T; t++) {
        s[t] = nc;
    }
    for (int g = 0; g < 8; g++) {
        const __m512i w = tri_zmm_pair(pb + 32 * g, pstride);
        for (int t = 0; t < T; t++) {
            s[t] = _mm512_dpbusd_epi32(s[t], tri_zmm_bcast32(xt->xu[t] + 32 * b + 4 * g), w);
        }
    }
    const __m512 dw = tri_zmm_pair_ps(pb + 288, pstride);
    for (int t = 0; t < T; t++) {
        acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s[t]), _mm512_mul_ps(dw, _mm512_set1_ps(xt->d[t][b])), acc[t]);
    }
}

/* Two 32-value panels against T tokens over nb blocks (as tri_tile32 with NP = 2). */
TRI_INLINE void tri_tile32x2(const uint8_t * pan, size_t pstride, int T, int nb, bool has_m, const tri_xtile * xt,
                             float * const * yt, int nrows) {
    __m512 part[8][TRI_GEMM_TMAX], res[TRI_GEMM_TMAX];
    for (int j = 0; j < 8; j++) {
        __m512 acc[TRI_GEMM_TMAX];
        for (int t = 0; t < T; t++) {
            acc[t] = _mm512_setzero_ps();
        }
        for (int b = j; b < nb; b += 8) {
            tri_tile32x2_block(pan, pstride, T, b, xt, acc);
        }
        for (int t = 0; t < T; t++) {
            part[j][t] = acc[t];
        }
    }
    tri_zmm_tree(part, T, res);
    if (has_m) {
        __m512 mres[TRI_GEMM_TMAX];
        for (int j = 0; j < 8; j++) {
            __m512 acc[TRI_GEMM_TMAX];
            for (int t = 0; t < T; t++) {
                acc[t] = _mm512_setzero_ps();
            }
            for (int b = j; b < nb; b += 8) {
                const __m512 mw = tri_zmm_pair_ps(pan + (size_t) b * TRI_PAN32_BLOCK + 320, pstride);
                for (int t = 0; t < T; t++) {
                    acc[t] = _mm512_fmadd_ps(mw, _mm512_set1_ps(xt->s[t][b]), acc[t]);
                }
            }
            for (int t = 0; t < T; t++) {
                part[j][t] = acc[t];
            }
        }
        tri_zmm_tree(part, T, mres);
        for (int t = 0; t < T; t++) {
            res[t] = _mm512_add_ps(res[t], mres[t]);
        }
    }
    tri_zmm_store(res, T, yt, nrows);
}

/* One super-block sb of two panels against T tokens into acc (as tri_tileK_sb with NP = 2). */
TRI_INLINE void tri_tileK2_sb(const uint8_t * pan, size_t pstride, int T, int sb, int S, bool has_min,
                              const tri_xtile * xt, __m512 acc[TRI_GEMM_TMAX]) {
    const int       G  = 64 / S;
    const uint8_t * pb = pan + (size_t) sb * TRI_PANK_BLOCK;
    __m512i isum[TRI_GEMM_TMAX];
    const __m512i nc = tri_zmm_pair(pb + TRI_PANK_CORR, pstride);
    for (int t = 0; t < T; t++) {
        isum[t] = nc;
    }
    for (int j = 0; j < S; j++) {
        const __m512i sc = _mm512_srai_epi32(tri_zmm_pair(pb + TRI_PANK_SC + 32 * j, pstride), 16);
        __m512i part[TRI_GEMM_TMAX];
        for (int t = 0; t < T; t++) {
            part[t] = _mm512_setzero_si512();
        }
        for (int g = 0; g < G; g++) {
            const int     v = j * G + g;
            const __m512i w = tri_zmm_pair(pb + 32 * v, pstride);
            for (int t = 0; t < T; t++) {
                part[t] = _mm512_dpbusd_epi32(part[t], tri_zmm_bcast32(xt->xu[t] + 256 * sb + 4 * v), w);
            }
        }
        for (int t = 0; t < T; t++) {
            isum[t] = _mm512_add_epi32(isum[t], _mm512_mullo_epi32(part[t], sc));
        }
    }
    const __m512 dw = tri_zmm_pair_ps(pb + TRI_PANK_D, pstride);
    for (int t = 0; t < T; t++) {
        const __m512 dd = _mm512_mul_ps(dw, _mm512_set1_ps(xt->d[t][sb]));
        acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[t]), dd, acc[t]);
    }
    if (!has_min) {
        return;
    }
    const __m512 dm = tri_zmm_pair_ps(pb + TRI_PANK_DMIN, pstride);
    for (int t = 0; t < T; t++) {
        const uint8_t * bp = S == 8 ? (const uint8_t *) (xt->bs32[t] + 8 * sb) : (const uint8_t *) (xt->bs16[t] + 16 * sb);
        __m512i ms = _mm512_setzero_si512();
        for (int k = 0; k < S / 2; k++) {
            ms = _mm512_dpwssd_epi32(ms, tri_zmm_pair(pb + TRI_PANK_MINS + 32 * k, pstride), tri_zmm_bcast32(bp + 4 * k));
        }
        const __m512 dd = _mm512_mul_ps(dm, _mm512_set1_ps(xt->d[t][sb]));
        acc[t] = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(ms), dd, acc[t]);
    }
}

/* Two panels against T tokens (T <= TRI_GEMM_TK) over nsb super-blocks, one residue class mod 8 after the
 * other, then tree(v) per lane; token t's 16 results go to yt[t] (the first nrows of them). */
TRI_INLINE void tri_tileK2(const uint8_t * pan, size_t pstride, int T, int nsb, int S, bool has_min,
                           const tri_xtile * xt, float * const * yt, int nrows) {
    __m512 part[8][TRI_GEMM_TMAX];
    for (int j = 0; j < 8; j++) {
        __m512 acc[TRI_GEMM_TMAX];
        for (int t = 0; t < T; t++) {
            acc[t] = _mm512_setzero_ps();
        }
        for (int sb = j; sb < nsb; sb += 8) {
            tri_tileK2_sb(pan, pstride, T, sb, S, has_min, xt, acc);
        }
        for (int t = 0; t < T; t++) {
            part[j][t] = acc[t];
        }
    }
    __m512 res[TRI_GEMM_TMAX];
    tri_zmm_tree(part, T, res);
    tri_zmm_store(res, T, yt, nrows);
}

/* The tiles the prefill driver runs: two panels on 512-bit vectors, a lone panel on 256-bit ones. The 512-bit
 * tile ignores `wide`: here tri_dp_us and tri_dp_xw are both vpdpbusd, whose four products per lane are summed in
 * 32 bits whatever the weights' size. */
TRI_INLINE void tri_tile32_wide(const uint8_t * pan, size_t pstride, int NP, int T, int nb, bool wide, bool has_m,
                                const tri_xtile * xt, float * const * yt, int nrows) {
    if (NP == 2) {
        tri_tile32x2(pan, pstride, T, nb, has_m, xt, yt, nrows);
    } else {
        tri_tile32(pan, pstride, NP, T, nb, wide, has_m, xt, yt, nrows);
    }
}

TRI_INLINE void tri_tileK_wide(const uint8_t * pan, size_t pstride, int NP, int T, int nsb, int S, bool has_min,
                               const tri_xtile * xt, float * const * yt, int nrows) {
    if (NP == 2) {
        tri_tileK2(pan, pstride, T, nsb, S, has_min, xt, yt, nrows);
    } else {
        tri_tileK(pan, pstride, NP, T, nsb, S, has_min, xt, yt, nrows);
    }
}

#endif
