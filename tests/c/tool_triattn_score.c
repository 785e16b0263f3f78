/* tool_triattn_score IN OUT: runs the engine's TriAttention scoring (tri_triattn_phase / tri_triattn_query +
 * the fused kernel) on the keys of IN and writes the scores to OUT, for the numpy oracle in
 * tests/test_triattention.py.
 *
 * IN, little-endian:
 *   char[4] "TRSC"; int32 D, pairing (0 adjacent, 1 half), F (rope_dim = 2F <= D), G (query heads), n (keys),
 *   M (0: the engine's offsets 2^0..2^16 through tri_triattn_phase; > 0: M custom offsets follow);
 *   float64 t0, s2; float64 omega[F]; float64 offsets[M];
 *   per head g: float32 re[F], im[F], abs_mean[F];
 *   F16 K[n][D] (post-RoPE rows).
 * OUT: float32 scores of the scalar kernel [G][n], then of the best kernel for this CPU [G][n].
 * Exit status 0 on success, 1 with a message on stderr otherwise. */
#include "triattn_score.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int fail(const char * msg) {
    fprintf(stderr, "tool_triattn_score: %s\n", msg);
    return 1;
}

static int rd(FILE * f, void * p, size_t size, size_t count) {
    return fread(p, size, count, f) == count;
}

int main(int argc, char ** argv) {
    if (argc != 3) {
        return fail("usage: tool_triattn_score IN OUT");
    }
    FILE * f = fopen(argv[1], "rb");
    if (!f) {
        return fail("cannot open input");
    }
    char magic[4];
    int32_t hdr[6];
    double t0s2[2];
    if (!rd(f, magic, 1, 4) || memcmp(magic, "TRSC", 4) != 0 || !rd(f, hdr, sizeof(int32_t), 6) ||
        !rd(f, t0s2, sizeof(double), 2)) {
        fclose(f);
        return fail("bad header");
    }
    const int D = hdr[0], pairing = hdr[1], F = hdr[2], G = hdr[3], n = hdr[4], M = hdr[5];
    if (D <= 0 || D > 4096 || (pairing != 0 && pairing != 1) || F <= 0 || 2 * F > D || G <= 0 || G > 256 || n <= 0 ||
        n > (1 << 22) || M < 0 || M > 64) {
        fclose(f);
        return fail("header out of range");
    }
    const int R = 2 * F;
    double * omega = malloc(sizeof(double) * F), * offs = malloc(sizeof(double) * (M + 1));
    double * a_re = malloc(sizeof(double) * F), * a_im = malloc(sizeof(double) * F);
    float * cen = malloc(sizeof(float) * 3 * F * G);
    float * w = calloc((size_t) G * D, sizeof(float)), * cw = calloc((size_t) G * D, sizeof(float));
    tri_fp16 * K = malloc(sizeof(tri_fp16) * (size_t) n * D);
    float * s = malloc(sizeof(float) * (size_t) G * n);
    int rc = 1;
    if (!omega || !offs || !a_re || !a_im || !cen || !w || !cw || !K || !s) {
        fail("out of memory");
        goto done;
    }
    if (!rd(f, omega, sizeof(double), F) || (M > 0 && !rd(f, offs, sizeof(double), M)) ||
        !rd(f, cen, sizeof(float), (size_t) 3 * F * G) || !rd(f, K, sizeof(tri_fp16), (size_t) n * D)) {
        fail("truncated input");
        goto done;
    }
    const double t0 = t0s2[0], s2 = t0s2[1];
    if (M == 0) {
        tri_triattn_phase(F, omega, t0, a_re, a_im);
    } else {
        /* Same mean phase as tri_triattn_phase, over the custom offsets. */
        for (int i = 0; i < F; i++) {
            double re = 0.0, im = 0.0;
            for (int m = 0; m < M; m++) {
                re += cos(omega[i] * (t0 + offs[m]));
                im += sin(omega[i] * (t0 + offs[m]));
            }
            a_re[i] = re / M;
            a_im[i] = im / M;
        }
    }
    const enum tri_rope_pairing pr = pairing == 0 ? TRI_ROPE_ADJACENT : TRI_ROPE_HALF;
    for (int g = 0; g < G; g++) {
        const float * c = cen + (size_t) 3 * F * g;
        tri_triattn_query(R, pr, c, c + F, c + 2 * F, a_re, a_im, s2, w + (size_t) g * D, cw + (size_t) g * D);
    }
    FILE * o = fopen(argv[2], "wb");
    if (!o) {
        fail("cannot open output");
        goto done;
    }
    const enum tri_isa isas[2] = { TRI_ISA_SCALAR, TRI_ISA_COUNT };
    int ok = 1;
    for (int i = 0; i < 2 && ok; i++) {
        tri_triattn_score_fn fn = tri_triattn_score_get(isas[i]);
        if (!fn) {
            fn = tri_triattn_score_ref;
        }
        fn(D, R, pr, G, w, cw, K, n, s, n);
        ok = fwrite(s, sizeof(float), (size_t) G * n, o) == (size_t) G * n;
    }
    if (fclose(o) != 0 || !ok) {
        fail("cannot write output");
        goto done;
    }
    rc = 0;
done:
    fclose(f);
    free(omega);
    free(offs);
    free(a_re);
    free(a_im);
    free(cen);
    free(w);
    free(cw);
    free(K);
    free(s);
    return rc;
}
