/* Decode of matrices in the x8 layout (repack.h), part of x86_gemm.h (which defines the integer helpers,
 * TRI_GEMV_TK, the activation row layout and the x8 code unpackers first): one group of 8 rows at a time, the
 * rows in the vector lanes, so there are no horizontal sums and the scales are vectors. Per super-block (or
 * block) the same exact integer sums as the other shapes, then s[b % 8] as in the panels (lanes = rows), so
 * results equal the GGUF layout's bit for bit. */
#ifndef TRI_X86_GEMV_X8_H
#define TRI_X86_GEMV_X8_H

/* tree(v) of eight partial sums, lane by lane. */
TRI_INLINE __m256 tri_x8_tree(const __m256 v[8]) {
#define TRI_V(j) v[j]
    return TRI_TREE8(_mm256_add_ps, TRI_V);
#undef TRI_V
}

/* Rows r0 .. r0 + 7 of T tokens: tree(v) of each token's eight partial sums (lanes = rows). */
TRI_INLINE void tri_x8_store(__m256 acc[TRI_GEMV_TK][8], int T, float * y, int64_t ldy, int64_t r0) {
    for (int t = 0; t < T; t++) {
        _mm256_storeu_ps(y + t * ldy + r0, tri_x8_tree(acc[t]));
    }
}

/* The end of super-block s for T tokens: msum = the factors mf (int16 pairs per row lane: mins, or scales
 * for the offset types) against the activations' code sums (k16: 16 sums of 16 codes, else 8 sums of 32);
 * acc[t][s % 8] += float(isum - off * msum) * (d_w * d_x), then with mins -= float(msum) * (dmin_w * d_x). */
TRI_INLINE void tri_x8sb_end(const uint8_t * x, size_t xs, int T, const tri_xrow_layout * L, int s, bool k16,
                             const __m256i isum[TRI_GEMV_TK], const __m256i * mf, int off, __m256 dw, __m256 dm,
                             bool has_min, __m256 acc[TRI_GEMV_TK][8]) {
    for (int t = 0; t < T; t++) {
        const uint8_t * xt = x + (size_t) t * xs;
        const uint8_t * bs = xt + (k16 ? L->bs16 + 32 * (size_t) s : L->bs32 + 16 * (size_t) s);
        __m256i ms = _mm256_setzero_si256();
        for (int p = 0; p < (k16 ? 8 : 4); p++) {
            ms = tri_dp_i16(ms, mf[p], tri_bcast32(bs + 4 * p));
        }
        const __m256  dx = _mm256_set1_ps(((const float *) (xt + L->d))[s]);
        const __m256i is = off ? _mm256_sub_epi32(isum[t], _mm256_mullo_epi32(ms, _mm256_set1_epi32(off))) : isum[t];
        acc[t][s % 8] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(is), _mm256_mul_ps(dw, dx), acc[t][s % 8]);
        if (has_min) {
            acc[t][s % 8] = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(ms), _mm256_mul_ps(dm, dx), acc[t][s % 8]);
        }
    }
}

/* One super-block s of a group (grp: its first row) against T tokens: acc[t][s % 8] += the rows' results. */
TRI_INLINE void tri_x8sb_k4(const uint8_t * grp, int s, const uint8_t * x, size_t xs, int T, const tri_xrow_layout * L,
                            __m256 acc[TRI_GEMV_TK][8], bool q5) {
    const uint8_t * gb = grp + (size_t) s * (q5 ? TRI_X8_Q5K_GROUP : TRI_X8_Q4K_GROUP);
    uint8_t v[128];
    tri_x8_values6(gb + TRI_X8_Q4K_SLO, v);
    __m256i sc[8];
    for (int j = 0; j < 8; j++) {
        const __m256i s32 = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *) (v + 8 * j)));
        sc[j] = tri_kscale_prep(_mm256_or_si256(s32, _mm256_slli_epi32(s32, 16)));
    }
    __m256i isum[TRI_GEMV_TK];
    for (int t = 0; t < T; t++) {
        isum[t] = _mm256_setzero_si256();
    }
    for (int c = 0; c < 4; c++) {
        __m256i plo[TRI_GEMV_TK], phi[TRI_GEMV_TK];
        for (int t = 0; t < T; t++) {
            plo[t] = phi[t] = _mm256_setzero_si256();
        }
        for (int k = 0; k < 8; k++) {
            __m256i qlo, qhi;
            tri_x8_k4_codes(gb, c, k, q5, &qlo, &qhi);
            for (int t = 0; t < T; t++) {
                const uint8_t * yq = (const uint8_t *) ((const tri_block_q8_K *) (x + (size_t) t * xs))[s].qs;
                tri_kpart_acc(&plo[t], &isum[t], qlo, tri_bcast32(yq + 64 * c + 4 * k), sc[2 * c]);
                tri_kpart_acc(&phi[t], &isum[t], qhi, tri_bcast32(yq + 64 * c + 32 + 4 * k), sc[2 * c + 1]);
            }
        }
        for (int t = 0; t < T; t++) {
            tri_kpart_end(&isum[t], plo[t], sc[2 * c]);
            tri_kpart_end(&isum[t], phi[t], sc[2 * c + 1]);
        }
    }
    __m256i mn[4];
    for (int p = 0; p < 4; p++) {
        mn[p] = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *) (v + 64 + 16 * p)));
    }
    const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) gb));
    const __m256 dm = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) (gb + TRI_X8_Q4K_DMIN)));
    tri_x8sb_end(x, xs, T, L, s, false, isum, mn, 0, dw, dm, true, acc);
}

/* One super-block s of a Q2_K, Q3_K or Q6_K group against T tokens, as tri_x8sb_k4: the codes' offset (Q3_K,
 * Q6_K) and the mins (Q2_K) go through the activations' sums of 16 codes. */
TRI_INLINE void tri_x8sb_k16(const uint8_t * grp, int s, const uint8_t * x, size_t xs, int T, const tri_xrow_layout * L,
                             __m256 acc[TRI_GEMV_TK][8], enum tri_type type) {
    const uint8_t * gb = grp + (size_t) s * tri_x8_k16_group(type);
    __m256i mf[8], sc[16];
    tri_x8_k16_scales(gb, type, mf, sc);
    for (int j = 0; j < 16; j++) {
        sc[j] = tri_kscale_prep(sc[j]);
    }
    __m256i isum[TRI_GEMV_TK];
    for (int t = 0; t < T; t++) {
        isum[t] = _mm256_setzero_si256();
    }
    for (int h = 0; h < 2; h++) {
        for (int kk = 0; kk < 2; kk++) { /* words 4kk .. 4kk + 3: sub-blocks 8h + 2u + kk */
            __m256i part[4][TRI_GEMV_TK];
            for (int u = 0; u < 4; u++) {
                for (int t = 0; t < T; t++) {
                    part[u][t] = _mm256_setzero_si256();
                }
            }
            for (int k = 4 * kk; k < 4 * kk + 4; k++) {
                __m256i q[4];
                tri_x8_k16_codes(gb, type, h, k, q);
                for (int t = 0; t < T; t++) {
                    const uint8_t * yq =
                        (const uint8_t *) ((const tri_block_q8_K *) (x + (size_t) t * xs))[s].qs + 128 * h + 4 * k;
                    for (int u = 0; u < 4; u++) {
                        tri_kpart_acc(&part[u][t], &isum[t], q[u], tri_bcast32(yq + 32 * u), sc[8 * h + 2 * u + kk]);
                    }
                }
            }
            for (int u = 0; u < 4; u++) {
                for (int t = 0; t < T; t++) {
                    tri_kpart_end(&isum[t], part[u][t], sc[8 * h + 2 * u + kk]);
                }
            }
        }
    }
    const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) gb));
    const bool   q2 = type == TRI_TYPE_Q2_K;
    const __m256 dm = q2 ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) (gb + TRI_X8_Q2K_DMIN))) : dw;
    tri_x8sb_end(x, xs, T, L, s, true, isum, mf, tri_x8_k16_off(type), dw, dm, q2, acc);
}

/* tri_x8sb_<t>: one super-block of a type's group, the form tri_gemvX8_T takes. */
#define TRI_X8SB(t, ...)                                                                                            \
    TRI_INLINE void tri_x8sb_##t(const uint8_t * grp, int s, const uint8_t * x, size_t xs, int T,                  \
                                 const tri_xrow_layout * L, __m256 acc[TRI_GEMV_TK][8]) {                          \
        __VA_ARGS__;                                                                                                \
    }
TRI_X8SB(q2_K, tri_x8sb_k16(grp, s, x, xs, T, L, acc, TRI_TYPE_Q2_K))
TRI_X8SB(q3_K, tri_x8sb_k16(grp, s, x, xs, T, L, acc, TRI_TYPE_Q3_K))
TRI_X8SB(q4_K, tri_x8sb_k4(grp, s, x, xs, T, L, acc, false))
TRI_X8SB(q5_K, tri_x8sb_k4(grp, s, x, xs, T, L, acc, true))
TRI_X8SB(q6_K, tri_x8sb_k16(grp, s, x, xs, T, L, acc, TRI_TYPE_Q6_K))

typedef void (*tri_x8sb_fn)(const uint8_t * grp, int s, const uint8_t * x, size_t xs, int T, const tri_xrow_layout * L,
                            __m256 acc[TRI_GEMV_TK][8]);

/* Groups [0, nrows / 8) against T tokens (constant T), super-block by super-block. */
TRI_INLINE void tri_gemvX8_T(int nsb, const uint8_t * W, size_t rs, int64_t nrows, const uint8_t * x, size_t xs, int T,
                             const tri_xrow_layout * L, float * y, int64_t ldy, tri_x8sb_fn sb) {
    for (int64_t r0 = 0; r0 < nrows; r0 += 8) {
        __m256 acc[TRI_GEMV_TK][8];
        for (int t = 0; t < T; t++) {
            for (int j = 0; j < 8; j++) {
                acc[t][j] = _mm256_setzero_ps();
            }
        }
        for (int s = 0; s < nsb; s++) {
            sb(W + (size_t) r0 * rs, s, x, xs, T, L, acc);
        }
        tri_x8_store(acc, T, y, ldy, r0);
    }
}


/* 32-value types in x8 against T tokens (constant T): per block b, each row's exact integer dot, then
 * s[b % 8] and (Q4_1, Q5_1) t[b % 8] as in the other shapes; off: the code offset, applied through the x
 * rows' block sums. */
TRI_INLINE void tri_gemvX8_32_T(int n, const uint8_t * W, size_t rs, int64_t nrows, const uint8_t * x, size_t xs, int T,
                                float * y, int64_t ldy, enum tri_type type, int off) {
    const tri_x8_parts32  P    = tri_x8_parts32_of(type);
    const bool            q81  = P.m >= 0;
    const int             nb   = n / 32;
    const size_t          xbs  = q81 ? sizeof(tri_block_q8_1) : sizeof(tri_block_q8_0);
    const size_t          xq   = q81 ? offsetof(tri_block_q8_1, qs) : offsetof(tri_block_q8_0, qs);
    const tri_xrow_layout L    = tri_xrow_layout_of(q81 ? TRI_TYPE_Q8_1 : TRI_TYPE_Q8_0, n);
    const __m256i         voff = _mm256_set1_epi32(off);
    tri_x32 X[TRI_GEMV_TK];
    for (int t = 0; t < T; t++) {
        const uint8_t * xt = x + (size_t) t * xs;
        X[t] = (tri_x32){ xt + xq, (const float *) (xt + L.d), (const float *) (xt + L.s),
                          (const int32_t *) (xt + L.sum) };
    }
    for (int64_t r0 = 0; r0 < nrows; r0 += 8) {
        const uint8_t * grp = W + (size_t) r0 * rs;
        __m256 sp[TRI_GEMV_TK][8], tp[TRI_GEMV_TK][8];
        for (int t = 0; t < T; t++) {
            for (int j = 0; j < 8; j++) {
                sp[t][j] = tp[t][j] = _mm256_setzero_ps();
            }
        }
        for (int b = 0; b < nb; b++) {
            const uint8_t * u = grp + (size_t) b * P.unit;
            __m256i isum[TRI_GEMV_TK];
            for (int t = 0; t < T; t++) {
                isum[t] = _mm256_setzero_si256();
            }
            for (int k = 0; k < 4 && P.words == 4; k++) {
                __m256i lo, hi;
                tri_x8_32_codes(u, &P, k, &lo, &hi);
                for (int t = 0; t < T; t++) {
                    const uint8_t * yq = X[t].q + (size_t) b * xbs;
                    isum[t] = tri_dp_us(isum[t], lo, tri_bcast32(yq + 4 * k));
                    isum[t] = tri_dp_us(isum[t], hi, tri_bcast32(yq + 16 + 4 * k));
                }
            }
            for (int k = 0; k < 8 && P.words == 8; k++) { /* Q8_0: signed values */
                const __m256i w = _mm256_loadu_si256((const __m256i *) (u + P.qs + 32 * k));
                for (int t = 0; t < T; t++) {
                    isum[t] = tri_dp_ss(isum[t], w, tri_bcast32(X[t].q + (size_t) b * xbs + 4 * k));
                }
            }
            const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) u));
            const __m256 mw = q81 ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) (u + P.m))) : _mm256_setzero_ps();
            for (int t = 0; t < T; t++) {
                __m256i is = isum[t];
                if (off) {
                    is = _mm256_sub_epi32(is, _mm256_mullo_epi32(_mm256_set1_epi32(X[t].sum[b]), voff));
                }
                sp[t][b % 8] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(is), _mm256_mul_ps(dw, _mm256_set1_ps(X[t].d[b])),
                                               sp[t][b % 8]);
                if (q81) {
                    tp[t][b % 8] = _mm256_fmadd_ps(mw, _mm256_set1_ps(X[t].s[b]), tp[t][b % 8]);
                }
            }
        }
        for (int t = 0; t < T; t++) {
            const __m256 v = tri_x8_tree(sp[t]);
            _mm256_storeu_ps(y + t * ldy + r0, q81 ? _mm256_add_ps(v, tri_x8_tree(tp[t])) : v);
        }
    }
}

#endif
