/* Quant formats and matmul kernels: every SIMD vec_dot against the scalar reference, quantize round
 * trips against an error budget per bit width, fast activation quantizers against the references,
 * the matrix kernels of every ISA against the reference and each other, fp16 conversions against the hardware, row sizes.
 * Random inputs, fresh seed each run (TRI_SEED=<n> to replay). `test_quants --bench [n_tok [n_in n_out]]` times
 * vec_dot and the matrix kernels. */
#include "arch/kernels.h"
#include "matmul.h"
#include "quants.h"
#include "repack.h"
#include "types.h"

#if defined(__x86_64__) || defined(_M_X64)
#  include <immintrin.h>
#endif
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "test_util.h"

static void rnd_floats(float * x, int64_t n, float scale) {
    for (int64_t i = 0; i < n; i++) {
        x[i] = scale * (float) tu_normal();
    }
}

static const enum tri_type k_weight_types[] = {
    TRI_TYPE_F32, TRI_TYPE_F16, TRI_TYPE_BF16, TRI_TYPE_Q4_0, TRI_TYPE_Q4_1, TRI_TYPE_Q5_0, TRI_TYPE_Q5_1,
    TRI_TYPE_Q8_0, TRI_TYPE_Q2_K, TRI_TYPE_Q3_K, TRI_TYPE_Q4_K, TRI_TYPE_Q5_K, TRI_TYPE_Q6_K,
};
#define N_WEIGHT_TYPES (int)(sizeof k_weight_types / sizeof k_weight_types[0])

static const char * k_isa_names[TRI_ISA_COUNT] = { "scalar", "avx2", "avx512", "neon" };

/* A SIMD ISA this CPU may run (ISAs of other architectures never are). */
static bool simd_isa(int isa) {
    return isa != TRI_ISA_SCALAR && tri_cpu_has_isa((enum tri_isa)isa);
}

/* The SIMD kernel tables under test: every ISA this CPU may run; on AArch64 with the dot product
 * instructions also the ARMv8.0 NEON kernels they replace, which must give the same bits. */
typedef struct {
    const char *            name;
    const tri_isa_kernels * k;
    int                     twin;  /* index of the table that must agree bit for bit on integer types; -1: none */
} simd_table;

static int simd_tables(simd_table * out) {
    int n = 0;
    for (int isa = 0; isa < TRI_ISA_COUNT; isa++) {
        if (simd_isa(isa)) {
            out[n++] = (simd_table){ k_isa_names[isa], tri_kernels_for_isa((enum tri_isa)isa), -1 };
        }
    }
#if defined(__aarch64__)
    static tri_isa_kernels v80;
    if (simd_isa(TRI_ISA_NEON) && strstr(tri_cpu_features(), "+dotprod")) {
        memset(&v80, 0, sizeof v80);
        tri_register_neon(&v80);
        out[n - 1].name = "neon+dotprod";
        out[n] = (simd_table){ "neon-armv8.0", &v80, n - 1 };
        n++;
    }
#endif
    return n;
}

/* Byte offsets of the fp16 scale fields inside one block (-1: none), to make random blocks sane. */
static void scale_offsets(enum tri_type t, int * o0, int * o1) {
    *o0 = -1;
    *o1 = -1;
    switch (t) {
    case TRI_TYPE_Q4_0: case TRI_TYPE_Q5_0: case TRI_TYPE_Q8_0: *o0 = 0; break;
    case TRI_TYPE_Q4_1: case TRI_TYPE_Q5_1: case TRI_TYPE_Q4_K: case TRI_TYPE_Q5_K: *o0 = 0; *o1 = 2; break;
    case TRI_TYPE_Q2_K: *o0 = 80; *o1 = 82; break;
    case TRI_TYPE_Q3_K: *o0 = 108; break;
    case TRI_TYPE_Q6_K: *o0 = 208; break;
    default: break;
    }
}

/* A weight row: either quantized from random floats, or random bytes with finite random scales. */
static void make_weight_row(enum tri_type t, int n, void * row, float * tmp, bool random_bytes) {
    const tri_type_traits * tt = tri_type_traits_get(t);
    const size_t rs = tri_row_size(t, n);
    if (!random_bytes || !tt->is_quantized) {
        rnd_floats(tmp, n, 0.5f + (float) tu_uniform_open());
        tt->from_float(tmp, row, n);
        return;
    }
    uint8_t * p = row;
    for (size_t i = 0; i < rs; i++) {
        p[i] = (uint8_t)tu_u64();
    }
    int o0, o1;
    scale_offsets(t, &o0, &o1);
    for (size_t b = 0; b < rs / tt->type_size; b++) {
        uint8_t * blk = p + b * tt->type_size;
        const tri_fp16 d = tri_fp32_to_fp16(((float) tu_uniform_open() - 0.5f) * 0.1f);
        const tri_fp16 m = tri_fp32_to_fp16(((float) tu_uniform_open() - 0.5f) * 0.1f);
        if (o0 >= 0) memcpy(blk + o0, &d, 2);
        if (o1 >= 0) memcpy(blk + o1, &m, 2);
    }
}

/* sum |x_i * y_i| over the dequantized rows: the scale a summation error is measured against. */
static double abs_dot_scale(enum tri_type wt, enum tri_type yt, int n, const void * w, const void * y,
                            float * bx, float * by) {
    tri_type_traits_get(wt)->to_float(w, bx, n);
    tri_type_traits_get(yt)->to_float(y, by, n);
    double s = 0.0;
    for (int i = 0; i < n; i++) {
        s += fabs((double)bx[i] * (double)by[i]);
    }
    return s;
}

/* Tolerance of a kernel vs the reference, relative to sum|x*y|. Quantized dots sum exact integer block
 * sums, so only the float accumulation of <= n/32 block terms differs (<= 128 adds at n = 4096:
 * 128 * 6e-8 < 2e-5). Float dots accumulate n products in 8-16 partial sums against a double
 * reference: <= 512 adds per partial sum at n = 4096, 512 * 6e-8 = 3e-5 < 1e-4. */
static double tolerance(enum tri_type t) {
    return tri_type_traits_get(t)->is_quantized ? 2e-5 : 1e-4;
}

static void test_vec_dot(void) {
    static const int sizes32[] = { 32, 64, 96, 576, 1536, 4096 };
    static const int sizesK[]  = { 256, 512, 1536, 4096 };
    static const int sizesF[]  = { 1, 7, 33, 100, 576, 1537 };
    float * tmp = malloc(4096 * sizeof(float));
    float * bx  = malloc(4096 * sizeof(float));
    float * by  = malloc(4096 * sizeof(float));
    void *  w   = malloc(4096 * 4 + 64);
    void *  y   = malloc(4096 * 4 + 64);
    simd_table tabs[TRI_ISA_COUNT + 1];
    const int  ntabs = simd_tables(tabs);
    printf("vec_dot: SIMD kernel tables");
    for (int i = 0; i < ntabs; i++) {
        printf(" %s", tabs[i].name);
    }
    printf("%s\n", ntabs ? "" : " (none)");
    for (int ti = 0; ti < N_WEIGHT_TYPES; ti++) {
        const enum tri_type t = k_weight_types[ti];
        const tri_type_traits * tt = tri_type_traits_get(t);
        const tri_type_traits * vt = tri_type_traits_get(tt->vec_dot_type);
        const int * sizes = tt->blck_size == 256 ? sizesK : tt->blck_size == 32 ? sizes32 : sizesF;
        const int nsizes  = tt->blck_size == 256 ? 4 : 6;
        int checked = 0, bad_twin = 0;
        double worst = 0.0;
        for (int si = 0; si < nsizes; si++) {
            const int n = sizes[si];
            for (int rep = 0; rep < 8; rep++) {
                make_weight_row(t, n, w, tmp, rep % 2 == 1);
                rnd_floats(tmp, n, 0.5f + (float) tu_uniform_open());
                vt->from_float(tmp, y, n);
                float ref = NAN;
                tt->vec_dot_ref(n, &ref, w, y);
                const double S = abs_dot_scale(t, tt->vec_dot_type, n, w, y, bx, by);
                CHECK(S > 0.0 && isfinite(ref), "%s n=%d: degenerate data (S=%g ref=%g)", tt->name, n, S, ref);
                float got[TRI_ISA_COUNT + 1];
                for (int i = 0; i < ntabs; i++) {
                    tri_vec_dot_fn f = tabs[i].k->vec_dot[t];
                    got[i] = NAN;
                    if (!f) {
                        continue;
                    }
                    f(n, &got[i], w, y);
                    const double err = fabs((double)got[i] - (double)ref) / S;
                    worst = err > worst ? err : worst;
                    CHECK(err <= tolerance(t), "%s %s n=%d rep=%d: got %.9g ref %.9g (err %.3g of sum|xy|=%g)",
                          tt->name, tabs[i].name, n, rep, got[i], ref, err, S);
                    checked++;
                    if (tabs[i].twin >= 0 && tt->is_quantized) {
                        bad_twin += memcmp(&got[i], &got[tabs[i].twin], sizeof(float)) != 0;
                    }
                }
            }
        }
        printf("vec_dot %-5s: %3d SIMD checks, worst error %.2e of sum|xy|\n", tt->name, checked, worst);
        CHECK(bad_twin == 0, "%s: %d results of the ARMv8.0 and dot product NEON kernels differ", tt->name, bad_twin);
    }
    /* every SIMD table must provide every weight type */
    for (int i = 0; i < ntabs; i++) {
        for (int ti = 0; ti < N_WEIGHT_TYPES; ti++) {
            CHECK(tabs[i].k->vec_dot[k_weight_types[ti]] != NULL, "%s has no %s kernel", tabs[i].name,
                  tri_type_traits_get(k_weight_types[ti])->name);
        }
    }
    /* ISAs the CPU lacks (those of other architectures included) offer no kernels */
    for (int isa = 0; isa < TRI_ISA_COUNT; isa++) {
        if (!tri_cpu_has_isa((enum tri_isa)isa)) {
            CHECK(tri_vec_dot_for_isa(TRI_TYPE_Q4_1, (enum tri_isa)isa) == NULL &&
                  tri_kernels_for_isa((enum tri_isa)isa) == NULL, "kernels offered for the missing ISA %s",
                  k_isa_names[isa]);
        }
    }
    CHECK(tri_cpu_has_isa(TRI_ISA_SCALAR) && tri_cpu_has_isa(tri_cpu_isa()), "the best ISA is not usable");
#if defined(__x86_64__) || defined(_M_X64)
    CHECK(!tri_cpu_has_isa(TRI_ISA_NEON), "NEON offered on x86");
#elif defined(__aarch64__)
    CHECK(!tri_cpu_has_isa(TRI_ISA_AVX2) && !tri_cpu_has_isa(TRI_ISA_AVX512), "x86 ISAs offered on AArch64");
#endif
    free(tmp); free(bx); free(by); free(w); free(y);
}

/* Relative RMS error of dequantize(quantize(x)) on Gaussian data, per type. Budgets sit ~1.15-1.25x above
 * the values the reference quantizers reach (a quantizer bug or a layout mix-up blows far past them). */
static void test_round_trip(void) {
    static const struct { enum tri_type t; double budget; } cases[] = {
        { TRI_TYPE_F16, 3e-4 }, { TRI_TYPE_BF16, 2.2e-3 }, { TRI_TYPE_Q8_0, 6.5e-3 }, { TRI_TYPE_Q8_1, 6.5e-3 },
        { TRI_TYPE_Q8_K, 8.5e-3 }, { TRI_TYPE_Q6_K, 2.3e-2 }, { TRI_TYPE_Q5_0, 5e-2 }, { TRI_TYPE_Q5_1, 4.5e-2 },
        { TRI_TYPE_Q5_K, 4.6e-2 }, { TRI_TYPE_Q4_0, 1.0e-1 }, { TRI_TYPE_Q4_1, 9.2e-2 }, { TRI_TYPE_Q4_K, 9.2e-2 },
        { TRI_TYPE_Q3_K, 2.35e-1 }, { TRI_TYPE_Q2_K, 3.8e-1 },
    };
    const int n = 8192;
    float * x = malloc(n * sizeof(float));
    float * r = malloc(n * sizeof(float));
    void *  q = malloc(n * 4);
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const tri_type_traits * tt = tri_type_traits_get(cases[c].t);
        rnd_floats(x, n, 0.1f + 3.0f * (float) tu_uniform_open());
        tt->from_float(x, q, n);
        tt->to_float(q, r, n);
        double se = 0.0, sx = 0.0;
        for (int i = 0; i < n; i++) {
            se += (double)(x[i] - r[i]) * (double)(x[i] - r[i]);
            sx += (double)x[i] * (double)x[i];
        }
        const double rel = sqrt(se / sx);
        printf("round trip %-5s: rel rms error %.4f (budget %.4f)\n", tt->name, rel, cases[c].budget);
        CHECK(rel <= cases[c].budget && rel > 0.0, "%s round trip error %.4g > %.4g", tt->name, rel, cases[c].budget);
    }
    free(x); free(r); free(q);
}

/* tri_quantize_rows (fast kernels) must write exactly what the reference quantizers write, including
 * exact rounding ties (x*id = k + 0.5), at the start of each row; the rest of an x row is the codes + 128
 * and the block scales (and sums) the prefill kernels read, checked here against the blocks. */
static void test_quantize_rows(void) {
    static const enum tri_type vdts[] = { TRI_TYPE_Q8_0, TRI_TYPE_Q8_1, TRI_TYPE_Q8_K, TRI_TYPE_F16, TRI_TYPE_BF16, TRI_TYPE_F32 };
    const int n = 1536, rows = 5;
    float * x = malloc((size_t)rows * n * sizeof(float));
    char *  a = malloc((size_t)rows * n * 4);
    char *  b = malloc((size_t)rows * n * 4);
    float * fa = malloc(n * sizeof(float));
    float * fb = malloc(n * sizeof(float));
    for (size_t v = 0; v < sizeof vdts / sizeof vdts[0]; v++) {
        const tri_type_traits * tt = tri_type_traits_get(vdts[v]);
        const size_t bs = tri_row_size(vdts[v], n), xs = tri_matmul_xrow_size(vdts[v], n);
        const tri_xrow_layout L = tri_xrow_layout_of(vdts[v], n);
        CHECK(xs >= bs && (xs == bs || xs == L.size), "%s: x row stride %zu", tt->name, xs);
        rnd_floats(x, (int64_t)rows * n, 2.0f);
        /* row 1: amax = 127 in each 256 values, so d = 1 and halves are exact ties */
        for (int i = 0; i < n; i++) {
            x[n + i] = (i % 32 == 0) ? 127.0f : (float)((int)(tu_u64() % 200) - 100) + 0.5f;
        }
        memset(a, 0x5a, (size_t)rows * xs);
        memset(b, 0x5a, (size_t)rows * xs);
        tri_quantize_rows(x, n, a, vdts[v], n, 1, rows);
        int bad = 0, bad_x = 0;
        for (int t = 1; t < rows; t++) {
            const char * ra = a + (size_t)t * xs;
            tt->from_float(x + (size_t)t * n, b + (size_t)t * xs, n);
            bad += memcmp(ra, b + (size_t)t * xs, bs) != 0;
            if (xs == bs) {
                continue;
            }
            /* extras: codes + 128 and scales rebuild the dequantized row; sums match the codes */
            tt->to_float(ra, fa, n);
            const int bl = vdts[v] == TRI_TYPE_Q8_K ? 256 : 32;
            for (int i = 0; i < n; i++) {
                const float d = ((const float *)(ra + L.d))[i / bl];
                fb[i] = d * (float)((int)(uint8_t)ra[L.xu + i] - 128);
                bad_x += fa[i] != fb[i];
            }
            for (int j = 0; j < n / 32; j++) {
                int sum = 0;
                for (int i = 0; i < 32; i++) {
                    sum += (int)(uint8_t)ra[L.xu + 32 * j + i] - 128;
                }
                if (vdts[v] == TRI_TYPE_Q8_1) {
                    tri_fp16 hs;
                    memcpy(&hs, ra + (size_t)j * sizeof(tri_block_q8_1) + 2, 2);
                    bad_x += ((const float *)(ra + L.s))[j] != tri_fp16_to_fp32(hs);
                } else if (vdts[v] == TRI_TYPE_Q8_K) {
                    const int16_t * b16 = (const int16_t *)(ra + L.bs16);
                    bad_x += ((const int16_t *)(ra + L.bs32))[j] != sum || b16[2 * j] + b16[2 * j + 1] != sum;
                }
            }
        }
        CHECK(bad == 0, "tri_quantize_rows %s differs from the reference in %d rows", tt->name, bad);
        CHECK(bad_x == 0, "tri_quantize_rows %s: %d x row extras disagree with the blocks", tt->name, bad_x);
    }
    free(x); free(a); free(b); free(fa); free(fb);
}

/* rows weight rows of n values (alternately random bytes and quantized floats) into W, and max_tok x rows of
 * random activations into xq; tmp holds max_tok * n floats. */
static void make_mm_inputs(enum tri_type t, int n, int rows, int max_tok, char * W, char * xq, float * tmp) {
    const tri_type_traits * tt = tri_type_traits_get(t);
    const size_t rs = tri_row_size(t, n);
    for (int r = 0; r < rows; r++) {
        make_weight_row(t, n, W + r * rs, tmp, r % 2);
    }
    rnd_floats(tmp, (int64_t)max_tok * n, 1.0f);
    tri_quantize_rows(tmp, n, xq, tt->vec_dot_type, n, 0, max_tok);
}

/* The integer matrix kernels of every ISA: the decode kernel (gemv) against the scalar reference; the
 * prefill kernel (gemm, repacked panels) and the decode kernel over several tokens at once bit for bit
 * against the decode kernel one token at a time, over row counts that end
 * mid-panel and token counts that end mid-tile; tri_matmul_rows (threads' row ranges, any n_tok) bit for
 * bit against both, leaving rows outside its range untouched. */
static void test_matmul(void) {
    static const enum tri_type types[] = { TRI_TYPE_Q4_0, TRI_TYPE_Q4_1, TRI_TYPE_Q5_0, TRI_TYPE_Q5_1, TRI_TYPE_Q8_0,
                                           TRI_TYPE_Q2_K, TRI_TYPE_Q3_K, TRI_TYPE_Q4_K, TRI_TYPE_Q5_K, TRI_TYPE_Q6_K,
                                           TRI_TYPE_F16, TRI_TYPE_F32 };
    static const int toks[] = { 1, 3, 4, 9, 70 };
    const int rows = 45, r0 = 3, r1 = 43, ldy = 50, max_tok = 70;
    for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
        const enum tri_type t = types[ti];
        const tri_type_traits * tt = tri_type_traits_get(t);
        /* every count of blocks mod 8 over the runs (the decode kernels group 8 blocks or super-blocks) */
        const int n = tt->blck_size == 256 ? 256 * (1 + (int)(tu_u64() % 12)) : 32 * (1 + (int)(tu_u64() % 64));
        const size_t rs = tri_row_size(t, n), xs = tri_matmul_xrow_size(tt->vec_dot_type, n);
        char *  W       = malloc(rows * rs);
        float * tmp     = malloc((size_t)max_tok * n * sizeof(float));
        float * bx      = malloc(n * sizeof(float));
        float * by      = malloc(n * sizeof(float));
        char *  xq      = malloc((size_t)max_tok * xs);
        float * ref     = malloc((size_t)max_tok * ldy * sizeof(float));
        float * yv      = malloc((size_t)max_tok * ldy * sizeof(float));
        void *  scratch = malloc(tri_matmul_scratch_size(n));
        make_mm_inputs(t, n, rows, max_tok, W, xq, tmp);
        float * first   = malloc((size_t)max_tok * ldy * sizeof(float));
        int bad_ref = 0, bad_gemm = 0, bad_gemvn = 0, bad_mm = 0, bad_isa = 0, isas = 0;
        double worst = 0.0;
        for (int isa = 0; isa < TRI_ISA_COUNT; isa++) {
            const tri_isa_kernels * k = simd_isa(isa) ? tri_kernels_for_isa((enum tri_isa)isa) : NULL;
            if (!k || !k->gemv[t]) {
                continue;
            }
            isas++;
            CHECK(k->gemm[t] != NULL, "%s %s: gemv without gemm", tt->name, k_isa_names[isa]);
            /* decode kernel, one token at a time, rows [r0, r1) */
            for (int tk = 0; tk < max_tok; tk++) {
                k->gemv[t](n, W + r0 * rs, rs, r1 - r0, xq + (size_t)tk * xs, xs, 1, ref + tk * ldy + r0, ldy);
                for (int r = r0; r < r1; r++) {
                    float want;
                    tt->vec_dot_ref(n, &want, W + r * rs, xq + (size_t)tk * xs);
                    const double S = abs_dot_scale(t, tt->vec_dot_type, n, W + r * rs, xq + (size_t)tk * xs, bx, by);
                    const double err = fabs((double)ref[tk * ldy + r] - (double)want) / S;
                    worst = err > worst ? err : worst;
                    bad_ref += !(err <= tolerance(t));
                }
            }
            /* every ISA gives the same bits (exact integer sums, the same float operations) */
            for (int tk = 0; tk < max_tok && isas > 1; tk++) {
                bad_isa += memcmp(first + tk * ldy + r0, ref + tk * ldy + r0, sizeof(float) * (r1 - r0)) != 0;
            }
            memcpy(first, ref, (size_t)max_tok * ldy * sizeof(float));
            /* prefill kernel: every token count, bit-identical */
            for (size_t k2 = 0; k2 < sizeof toks / sizeof toks[0]; k2++) {
                const int nt = toks[k2];
                for (int i = 0; i < nt * ldy; i++) {
                    yv[i] = NAN;
                }
                k->gemm[t](n, W + r0 * rs, rs, r1 - r0, xq, xs, nt, yv + r0, ldy, scratch);
                for (int tk = 0; tk < nt; tk++) {
                    for (int r = 0; r < ldy; r++) {
                        const float got = yv[tk * ldy + r];
                        bad_gemm += r < r0 || r >= r1 ? !isnan(got) : memcmp(&got, &ref[tk * ldy + r], 4) != 0;
                    }
                }
                /* the decode kernel with all nt tokens at once */
                for (int i = 0; i < nt * ldy; i++) {
                    yv[i] = NAN;
                }
                k->gemv[t](n, W + r0 * rs, rs, r1 - r0, xq, xs, nt, yv + r0, ldy);
                for (int tk = 0; tk < nt; tk++) {
                    for (int r = 0; r < ldy; r++) {
                        const float got = yv[tk * ldy + r];
                        bad_gemvn += r < r0 || r >= r1 ? !isnan(got) : memcmp(&got, &ref[tk * ldy + r], 4) != 0;
                    }
                }
            }
        }
        /* tri_matmul_rows with the active kernels: split rows as threads do, with and without scratch */
        for (size_t k2 = 0; k2 < sizeof toks / sizeof toks[0]; k2++) {
            const int nt = toks[k2];
            for (int i = 0; i < nt * ldy; i++) {
                yv[i] = NAN;
            }
            const int mid = r0 + 1 + (int)(tu_u64() % (uint64_t)(r1 - r0 - 1));
            tri_matmul_rows(W, t, TRI_WLAYOUT_ROWS, n, r0, mid, xq, nt, yv, ldy, scratch);
            tri_matmul_rows(W, t, TRI_WLAYOUT_ROWS, n, mid, r1, xq, nt, yv, ldy, k2 % 2 ? NULL : scratch);
            for (int tk = 0; tk < nt; tk++) {
                for (int r = 0; r < ldy; r++) {
                    const float got = yv[tk * ldy + r];
                    if (r < r0 || r >= r1) {
                        bad_mm += !isnan(got);
                    } else if (isas > 0) {
                        bad_mm += memcmp(&got, &ref[tk * ldy + r], 4) != 0; /* best ISA's gemv ran last */
                    } else {
                        float want;
                        tt->vec_dot_ref(n, &want, W + r * rs, xq + (size_t)tk * xs);
                        const double S = abs_dot_scale(t, tt->vec_dot_type, n, W + r * rs, xq + (size_t)tk * xs, bx, by);
                        bad_mm += !(fabs((double)got - (double)want) <= tolerance(t) * S);
                    }
                }
            }
        }
        printf("matmul %-5s n=%-4d: %d ISA(s), worst gemv error %.2e of sum|xy|\n", tt->name, n, isas, worst);
        CHECK(bad_ref == 0, "%s n=%d: %d gemv results off the reference", tt->name, n, bad_ref);
        CHECK(bad_gemm == 0, "%s n=%d: %d gemm results differ from the gemv (or wrote outside their rows)", tt->name, n,
              bad_gemm);
        CHECK(bad_gemvn == 0, "%s n=%d: %d results of the gemv over several tokens differ from one token at a time",
              tt->name, n, bad_gemvn);
        CHECK(bad_mm == 0, "tri_matmul_rows %s n=%d: %d wrong entries", tt->name, n, bad_mm);
        CHECK(bad_isa == 0, "%s n=%d: %d tokens differ between ISAs", tt->name, n, bad_isa);
        CHECK(tt->is_quantized == (isas > 0) || !tri_cpu_has_isa(TRI_ISA_AVX2),
              "%s: quantized types have matrix kernels on x86 SIMD CPUs", tt->name);
        free(W); free(tmp); free(bx); free(by); free(xq); free(ref); free(yv); free(scratch); free(first);
    }
}

/* Matrices repacked into groups of 8 rows (repack.h): the repacking is undone exactly, and every ISA's x8
 * kernels (decode over 1..70 tokens, prefill panels) and tri_matmul_rows over cut groups give the GGUF
 * layout's decode results bit for bit, leaving rows outside their range untouched. */
static void test_matmul_x8(void) {
    static const enum tri_type types[] = { TRI_TYPE_Q4_0, TRI_TYPE_Q4_1, TRI_TYPE_Q5_0, TRI_TYPE_Q5_1,
                                           TRI_TYPE_Q8_0, TRI_TYPE_Q2_K, TRI_TYPE_Q3_K, TRI_TYPE_Q4_K,
                                           TRI_TYPE_Q5_K, TRI_TYPE_Q6_K };
    static const int toks[] = { 1, 2, 3, 4, 5, 7, 8, 9, 70 };
    const int rows = 48, ldy = 50, max_tok = 70;
    for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
        const enum tri_type t = types[ti];
        const tri_type_traits * tt = tri_type_traits_get(t);
        const int n = tt->blck_size == 256 ? 256 * (1 + (int)(tu_u64() % 12)) : 32 * (1 + (int)(tu_u64() % 64));
        const size_t rs = tri_row_size(t, n), xs = tri_matmul_xrow_size(tt->vec_dot_type, n);
        char *  W   = malloc(rows * rs);
        char *  Wx  = malloc(rows * rs);
        char *  ub  = malloc(8 * tt->type_size);
        float * tmp = malloc((size_t)max_tok * n * sizeof(float));
        char *  xq  = malloc((size_t)max_tok * xs);
        float * ref = malloc((size_t)max_tok * ldy * sizeof(float));
        float * yv  = malloc((size_t)max_tok * ldy * sizeof(float));
        void *  scratch = malloc(tri_matmul_scratch_size(n));
        make_mm_inputs(t, n, rows, max_tok, W, xq, tmp);
        memcpy(Wx, W, rows * rs);
        CHECK(!tri_x8_repack(t, Wx, n, rows - 3) && memcmp(Wx, W, rows * rs) == 0,
              "x8 %s: rows not a multiple of 8 were repacked", tt->name);
        CHECK(!tri_x8_repack(TRI_TYPE_F16, Wx, n, rows) && memcmp(Wx, W, rows * rs) == 0,
              "x8: a type without the layout was repacked");
        CHECK(tri_x8_repack(t, Wx, n, rows), "x8 %s n=%d: repack failed", tt->name, n);
        CHECK(memcmp(Wx, W, rows * rs) != 0, "x8 %s: repacking changed nothing", tt->name);
        int bad_unpack = 0;
        for (int g = 0; g < rows; g += 8) {
            for (int s = 0; s < n / tt->blck_size; s++) {
                tri_x8_unpack_sb(t, Wx + g * rs, s, ub);
                for (int r = 0; r < 8; r++) {
                    bad_unpack += memcmp(ub + r * tt->type_size, W + (g + r) * rs + s * tt->type_size, tt->type_size) != 0;
                }
            }
        }
        CHECK(bad_unpack == 0, "x8 %s n=%d: %d blocks not restored by the unpacking", tt->name, n, bad_unpack);
        /* rows read back as floats (the embedding lookup of a tied output matrix) */
        int bad_rows = 0;
        for (int r = 0; r < rows; r++) {
            tt->to_float(W + r * rs, tmp, n);
            tri_x8_row_to_float(t, Wx, n, r, tmp + n);
            bad_rows += memcmp(tmp, tmp + n, sizeof(float) * n) != 0;
        }
        CHECK(bad_rows == 0, "x8 %s n=%d: %d rows read back wrong", tt->name, n, bad_rows);
        int bad = 0, isas = 0;
        for (int isa = 0; isa < TRI_ISA_COUNT; isa++) {
            const tri_isa_kernels * k = simd_isa(isa) ? tri_kernels_for_isa((enum tri_isa)isa) : NULL;
            if (!k || !k->gemv_x8[t]) {
                continue;
            }
            isas++;
            CHECK(k->gemm_x8[t] != NULL, "%s %s: x8 gemv without gemm", tt->name, k_isa_names[isa]);
            for (int tk = 0; tk < max_tok; tk++) { /* the GGUF layout's decode: the ISA's gemv, else its vec_dot */
                if (k->gemv[t]) {
                    k->gemv[t](n, W, rs, rows, xq + (size_t)tk * xs, xs, 1, ref + tk * ldy, ldy);
                    continue;
                }
                for (int r = 0; r < rows; r++) {
                    k->vec_dot[t](n, &ref[tk * ldy + r], W + r * rs, xq + (size_t)tk * xs);
                }
            }
            for (size_t k2 = 0; k2 < sizeof toks / sizeof toks[0]; k2++) {
                const int nt = toks[k2];
                for (int pass = 0; pass < 2; pass++) {
                    for (int i = 0; i < nt * ldy; i++) {
                        yv[i] = NAN;
                    }
                    if (pass == 0) {
                        k->gemv_x8[t](n, Wx + 8 * rs, rs, rows - 16, xq, xs, nt, yv + 8, ldy);
                    } else {
                        k->gemm_x8[t](n, Wx + 8 * rs, rs, rows - 16, xq, xs, nt, yv + 8, ldy, scratch);
                    }
                    for (int tk = 0; tk < nt; tk++) {
                        for (int r = 0; r < ldy; r++) {
                            const float got = yv[tk * ldy + r];
                            bad += r < 8 || r >= rows - 8 ? !isnan(got) : memcmp(&got, &ref[tk * ldy + r], 4) != 0;
                        }
                    }
                }
            }
        }
        CHECK(bad == 0, "x8 %s n=%d: %d results of the x8 kernels differ from the GGUF layout's", tt->name, n, bad);
        int bad_mm = 0;
        if (tri_matmul_x8_ok(t, n, rows)) {
            for (size_t k2 = 0; k2 < sizeof toks / sizeof toks[0]; k2++) {
                const int nt = toks[k2];
                const int r0 = (int)(tu_u64() % 12), r1 = rows - (int)(tu_u64() % 12);
                const int mid = r0 + 1 + (int)(tu_u64() % (uint64_t)(r1 - r0 - 1));
                for (int i = 0; i < nt * ldy; i++) {
                    yv[i] = NAN;
                }
                tri_matmul_rows(Wx, t, TRI_WLAYOUT_X8, n, r0, mid, xq, nt, yv, ldy, k2 % 2 ? NULL : scratch);
                tri_matmul_rows(Wx, t, TRI_WLAYOUT_X8, n, mid, r1, xq, nt, yv, ldy, scratch);
                for (int tk = 0; tk < nt; tk++) {
                    for (int r = 0; r < ldy; r++) {
                        const float got = yv[tk * ldy + r];
                        bad_mm += r < r0 || r >= r1 ? !isnan(got) : memcmp(&got, &ref[tk * ldy + r], 4) != 0;
                    }
                }
            }
        }
        printf("matmul x8 %-5s n=%-4d: %d ISA(s)%s\n", tt->name, n, isas,
               tri_matmul_x8_ok(t, n, rows) ? "" : ", not used by the active kernels");
        CHECK(bad_mm == 0, "tri_matmul_rows x8 %s n=%d: %d wrong entries", tt->name, n, bad_mm);
        CHECK(tri_matmul_x8_ok(t, n, rows) == (isas > 0), "x8 %s: tri_matmul_x8_ok disagrees with the kernels", tt->name);
        free(W); free(Wx); free(ub); free(tmp); free(xq); free(ref); free(yv); free(scratch);
    }
}

static void test_row_sizes(void) {
    static const struct { enum tri_type t; const char * name; int64_t blck; size_t size; } k[] = {
        { TRI_TYPE_F32, "F32", 1, 4 },       { TRI_TYPE_F16, "F16", 1, 2 },       { TRI_TYPE_BF16, "BF16", 1, 2 },
        { TRI_TYPE_Q4_0, "Q4_0", 32, 18 },   { TRI_TYPE_Q4_1, "Q4_1", 32, 20 },   { TRI_TYPE_Q5_0, "Q5_0", 32, 22 },
        { TRI_TYPE_Q5_1, "Q5_1", 32, 24 },   { TRI_TYPE_Q8_0, "Q8_0", 32, 34 },   { TRI_TYPE_Q8_1, "Q8_1", 32, 36 },
        { TRI_TYPE_Q2_K, "Q2_K", 256, 84 },  { TRI_TYPE_Q3_K, "Q3_K", 256, 110 }, { TRI_TYPE_Q4_K, "Q4_K", 256, 144 },
        { TRI_TYPE_Q5_K, "Q5_K", 256, 176 }, { TRI_TYPE_Q6_K, "Q6_K", 256, 210 }, { TRI_TYPE_Q8_K, "Q8_K", 256, 292 },
    };
    for (size_t i = 0; i < sizeof k / sizeof k[0]; i++) {
        const tri_type_traits * tt = tri_type_traits_get(k[i].t);
        CHECK(tt && strcmp(tt->name, k[i].name) == 0 && tt->blck_size == k[i].blck && tt->type_size == k[i].size,
              "traits of %s", k[i].name);
        const int64_t nb = 1 + (int64_t)(tu_u64() % 64);
        CHECK(tri_row_size(k[i].t, nb * k[i].blck) == (size_t)nb * k[i].size, "row size of %s", k[i].name);
        if (k[i].blck > 1) {
            CHECK(tri_row_size(k[i].t, nb * k[i].blck + 1) == 0, "row size of %s accepts a partial block", k[i].name);
        }
    }
    CHECK(tri_row_size(TRI_TYPE_Q4_1, 576) == 360, "Q4_1 x 576");
    CHECK(tri_type_traits_get((enum tri_type)4) == NULL && tri_type_traits_get((enum tri_type)99) == NULL &&
          tri_type_traits_get((enum tri_type)-1) == NULL, "unknown types must have no traits");
    CHECK(tri_row_size((enum tri_type)5, 32) == 0, "row size of an unknown type");
}

/* The hardware's half conversions, the oracle for the portable ones: F16C on x86-64, the FCVT of __fp16 on
 * AArch64; none elsewhere. */
#if defined(__x86_64__) || defined(_M_X64)
static bool hw_fp16(void) {
    return tri_cpu_has_isa(TRI_ISA_AVX2);
}
__attribute__((target("f16c"))) static uint16_t hw_f32_to_f16(float f) {
    return (uint16_t)_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT);
}
__attribute__((target("f16c"))) static float hw_f16_to_f32(uint16_t h) {
    return _cvtsh_ss(h);
}
#elif defined(__aarch64__)
static bool hw_fp16(void) {
    return true;
}
static uint16_t hw_f32_to_f16(float f) {
    const __fp16 h = (__fp16)f;
    uint16_t     u;
    memcpy(&u, &h, 2);
    return u;
}
static float hw_f16_to_f32(uint16_t u) {
    __fp16 h;
    memcpy(&h, &u, 2);
    return (float)h;
}
#else
static bool hw_fp16(void) {
    return false;
}
static uint16_t hw_f32_to_f16(float f) {
    return tri_fp32_to_fp16(f);
}
static float hw_f16_to_f32(uint16_t h) {
    return tri_fp16_to_fp32((tri_fp16)h);
}
#endif

static void test_fp16(void) {
    int bad = 0;
    const bool hw = hw_fp16();
    for (uint32_t h = 0; h < 65536; h++) {
        const float f = tri_fp16_to_fp32((tri_fp16)h);
        const bool nan = ((h >> 10) & 0x1f) == 0x1f && (h & 0x3ff);
        if (!nan) {
            bad += tri_fp32_to_fp16(f) != h;
            if (hw) bad += tri_f32_bits(hw_f16_to_f32((uint16_t)h)) != tri_f32_bits(f);
        }
    }
    CHECK(bad == 0, "fp16 -> fp32 -> fp16 not exact for %d halves", bad);
    if (hw) {
        bad = 0;
        for (int i = 0; i < 1000000; i++) {
            /* random bit patterns around the half range, including subnormals and overflow */
            const uint32_t u = (uint32_t)tu_u64();
            const float    f = tri_bits_f32((u & 0x80000000u) | (0x30000000u + (u % 0x18000000u)));
            bad += hw_f32_to_f16(f) != tri_fp32_to_fp16(f);
        }
        CHECK(bad == 0, "fp32 -> fp16 differs from F16C for %d of 1e6 values", bad);
    }
    bad = 0;
    for (int i = 0; i < 100000; i++) {
        const float f = (float) tu_normal() * 100.0f;
        const float r = tri_bf16_to_fp32(tri_fp32_to_bf16(f));
        bad += !(fabsf(r - f) <= fabsf(f) * (1.0f / 256.0f));
    }
    CHECK(bad == 0, "bf16 round trip error > 2^-8 for %d values", bad);
}

/* ---- benchmark ---- */

/* Thread CPU time: the machine is shared, and CPU time ignores the time other processes hold the core. */
static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void bench_one(enum tri_type t, int n) {
    const tri_type_traits * tt = tri_type_traits_get(t);
    const size_t rs = tri_row_size(t, n), xs = tri_row_size(tt->vec_dot_type, n);
    const int big = (int)((64u << 20) / rs); /* 64 MiB of rows: streams from memory like decode */
    char *  W   = malloc((size_t)big * rs);
    float * tmp = malloc(n * sizeof(float));
    char *  xq  = malloc(xs);
    for (int r = 0; r < 64; r++) {
        make_weight_row(t, n, W + (size_t)r * rs, tmp, false);
    }
    for (int r = 64; r < big; r++) {
        memcpy(W + (size_t)r * rs, W + (size_t)(r % 64) * rs, rs);
    }
    rnd_floats(tmp, n, 1.0f);
    tt->from_float(tmp, xq, n);
    for (int isa = 0; isa < TRI_ISA_COUNT; isa++) {
        tri_vec_dot_fn f = tri_vec_dot_for_isa(t, (enum tri_isa)isa);
        if (!f) continue;
        float  sink = 0.0f, s;
        double hot = 1e30, cold = 1e30;
        const int reps  = isa == 0 ? 200 : 2000;
        const int nrows = isa == 0 ? big / 8 : big;
        for (int trial = 0; trial < 5; trial++) { /* best of 5: the machine is shared */
            /* hot: 16 rows that sit in L1 */
            double t0 = now_s();
            for (int i = 0; i < reps; i++) {
                for (int r = 0; r < 16; r++) {
                    f(n, &s, W + (size_t)r * rs, xq);
                    sink += s;
                }
            }
            const double th = (now_s() - t0) / (reps * 16.0);
            hot = th < hot ? th : hot;
            /* cold: every row once from memory */
            t0 = now_s();
            for (int r = 0; r < nrows; r++) {
                f(n, &s, W + (size_t)r * rs, xq);
                sink += s;
            }
            const double tc = (now_s() - t0) / nrows;
            cold = tc < cold ? tc : cold;
        }
        printf("bench %-5s n=%-5d %-6s: in-cache %7.1f ns/row (%5.2f GB/s)  from-memory %7.1f ns/row (%5.2f GB/s)%s\n",
               tt->name, n, k_isa_names[isa], hot * 1e9, rs / hot * 1e-9, cold * 1e9, rs / cold * 1e-9,
               sink == 12345.0f ? "!" : "");
    }
    free(W); free(tmp); free(xq);
}

static void bench_matmul(enum tri_type t, int n_in, int n_out, int n_tok) {
    const tri_type_traits * tt = tri_type_traits_get(t);
    const size_t rs = tri_row_size(t, n_in), xs = tri_matmul_xrow_size(tt->vec_dot_type, n_in);
    char *  W  = malloc((size_t)n_out * rs);
    float * x  = malloc((size_t)n_tok * n_in * sizeof(float));
    char *  xq = malloc((size_t)n_tok * xs);
    float * y  = malloc((size_t)n_tok * n_out * sizeof(float));
    void *  sc = malloc(tri_matmul_scratch_size(n_in));
    for (int r = 0; r < n_out; r++) {
        make_weight_row(t, n_in, W + (size_t)r * rs, x, false);
    }
    rnd_floats(x, (int64_t)n_tok * n_in, 1.0f);
    tri_quantize_rows(x, n_in, xq, tt->vec_dot_type, n_in, 0, n_tok);
    /* prefill kernel vs the decode kernel once per token vs a plain loop of the best vec_dot */
    const tri_vec_dot_fn dot = tri_kernels_active()->vec_dot[t];
    double best = 1e30, dec = 1e30, plain = 1e30;
    const int inner = n_tok < 16 ? 200 : 1; /* one-token calls are short: time many */
    for (int rep = 0; rep < 5; rep++) {
        double t0 = now_s();
        for (int i = 0; i < inner; i++) {
            tri_matmul_rows(W, t, TRI_WLAYOUT_ROWS, n_in, 0, n_out, xq, n_tok, y, n_out, sc);
        }
        double dt = (now_s() - t0) / inner;
        best = dt < best ? dt : best;
        t0 = now_s();
        for (int i = 0; i < inner; i++) {
            tri_matmul_rows(W, t, TRI_WLAYOUT_ROWS, n_in, 0, n_out, xq, n_tok, y, n_out, NULL);
        }
        dt = (now_s() - t0) / inner;
        dec = dt < dec ? dt : dec;
        t0 = now_s();
        for (int i = 0; i < inner; i++) {
            for (int tk = 0; tk < n_tok; tk++) {
                for (int r = 0; r < n_out; r++) {
                    dot(n_in, &y[(size_t)tk * n_out + r], W + (size_t)r * rs, xq + (size_t)tk * xs);
                }
            }
        }
        dt = (now_s() - t0) / inner;
        plain = dt < plain ? dt : plain;
    }
    printf("bench matmul %-5s %5dx%-5d x %3d tok: %8.3f ms (%5.1f GMAC/s, 1 thread); one-token kernel %8.3f ms; "
           "vec_dot loop %8.3f ms\n", tt->name, n_out, n_in, n_tok, best * 1e3, (double)n_out * n_in * n_tok / best * 1e-9,
           dec * 1e3, plain * 1e3);
    free(W); free(x); free(xq); free(y); free(sc);
}

int main(int argc, char ** argv) {
    const uint64_t seed = tu_seed_init("TRI_SEED");
    printf("test_quants: seed %llu, cpu: %s\n", (unsigned long long)seed, tri_cpu_features());

    if (argc > 1 && strcmp(argv[1], "--bench") == 0) {
        bench_one(TRI_TYPE_Q4_1, 576);
        bench_one(TRI_TYPE_Q4_1, 1536);
        bench_one(TRI_TYPE_Q8_0, 576);
        bench_one(TRI_TYPE_Q8_0, 1536);
        bench_one(TRI_TYPE_Q4_K, 512);
        bench_one(TRI_TYPE_Q4_K, 1536);
        bench_one(TRI_TYPE_Q6_K, 1536);
        static const enum tri_type mm[] = { TRI_TYPE_Q4_0, TRI_TYPE_Q4_1, TRI_TYPE_Q5_0, TRI_TYPE_Q5_1, TRI_TYPE_Q8_0,
                                            TRI_TYPE_Q2_K, TRI_TYPE_Q3_K, TRI_TYPE_Q4_K, TRI_TYPE_Q5_K, TRI_TYPE_Q6_K };
        const int n_tok = argc > 2 ? atoi(argv[2]) : 128;
        const int n_in  = argc > 3 ? atoi(argv[3]) : 1536; /* a multiple of 32; K types need 256 */
        const int n_out = argc > 4 ? atoi(argv[4]) : 1536;
        for (size_t i = 0; i < sizeof mm / sizeof mm[0]; i++) {
            if (n_in <= 0 || n_out <= 0 || n_in % tri_type_traits_get(mm[i])->blck_size != 0) {
                continue;
            }
            bench_matmul(mm[i], n_in, n_out, 1);
            bench_matmul(mm[i], n_in, n_out, n_tok);
        }
        return 0;
    }

    test_row_sizes();
    test_fp16();
    test_vec_dot();
    test_round_trip();
    test_quantize_rows();
    test_matmul();
    test_matmul_x8();
    return tu_finish();
}
