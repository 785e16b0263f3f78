/* TriAttention in the C engine: the §3 test vector, the fused scoring op (scalar and AVX2) against the
 * per-offset formula in double, the selection steps, centres in GGUF metadata (load + validate), the
 * policy on a synthetic cache against a double reference, and (with TRI_DEFAULT_MODEL) a real session.
 * Random inputs, fresh seed each run (TRI_TEST_SEED reproduces one). */
#include "calibration.h"
#include "kv_cache.h"
#include "kv_select.h"
#include "model.h"
#include "session.h"
#include "triattn_score.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "test_util.h"

/* ---- double reference of §3 (per-offset form, pre-RoPE keys) -------------------------------------- */

/* Weights of the trigonometric and norm terms (kv_mode trig= / norm=) used by ref_score. */
static double g_w_trig = 1.0, g_w_norm = 1.0;

/* score of one key (pre-RoPE pairs kre/kim, position p) for one head; max_mode replaces the mean. */
static double ref_score(int F, const double * omega, const double * qre, const double * qim, const double * qabs,
                        const double * kre, const double * kim, double p, double t0, const double * offs, int M,
                        int max_mode) {
    double acc = max_mode ? -INFINITY : 0.0;
    for (int m = 0; m < M; m++) {
        double trig = 0.0;
        for (int f = 0; f < F; f++) {
            const double qa = hypot(qre[f], qim[f]), ka = hypot(kre[f], kim[f]);
            /* arg(q conj k) */
            const double ph = atan2(qim[f] * kre[f] - qre[f] * kim[f], qre[f] * kre[f] + qim[f] * kim[f]);
            trig += qa * ka * cos(omega[f] * (t0 - p + offs[m]) + ph);
        }
        acc = max_mode ? tu_max(acc, trig) : acc + trig / M;
    }
    acc *= g_w_trig;
    for (int f = 0; f < F; f++) {
        acc += g_w_norm * (qabs[f] - hypot(qre[f], qim[f])) * hypot(kre[f], kim[f]);
    }
    return acc;
}

static void pair_idx(enum tri_rope_pairing pr, int F, int f, int * a, int * b) {
    *a = pr == TRI_ROPE_ADJACENT ? 2 * f : f;
    *b = pr == TRI_ROPE_ADJACENT ? 2 * f + 1 : f + F;
}

/* Un-rotates an F16 post-RoPE key at position p into pre-RoPE pairs (double). */
static void unrotate(const tri_fp16 * k, int R, enum tri_rope_pairing pr, const double * omega, double p, double * re,
                     double * im) {
    const int F = R / 2;
    for (int f = 0; f < F; f++) {
        int a, b;
        pair_idx(pr, F, f, &a, &b);
        const double xr = tri_fp16_to_fp32(k[a]), xi = tri_fp16_to_fp32(k[b]);
        const double c = cos(omega[f] * p), s = sin(omega[f] * p);
        re[f] = xr * c + xi * s; /* (xr + i xi) e^{-i w p} */
        im[f] = xi * c - xr * s;
    }
}

static void rotate_store(const double * re, const double * im, int R, int D, enum tri_rope_pairing pr,
                         const double * omega, double p, tri_fp16 * k) {
    const int F = R / 2;
    for (int d = 0; d < D; d++) {
        k[d] = tri_fp32_to_fp16((float) tu_symmetric()); /* dims past rope_dim: ignored by the score */
    }
    for (int f = 0; f < F; f++) {
        int a, b;
        pair_idx(pr, F, f, &a, &b);
        const double c = cos(omega[f] * p), s = sin(omega[f] * p);
        k[a] = tri_fp32_to_fp16((float) (re[f] * c - im[f] * s));
        k[b] = tri_fp32_to_fp16((float) (re[f] * s + im[f] * c));
    }
}

/* ---- (a) the test vector of docs/triattention.md §3 ---------------------------------------------- */

static void test_vector(void) {
    const double omega[2] = { 1.0, 0.01 }, offs[3] = { 1, 2, 4 };
    const double qre[2] = { 1, 0 }, qim[2] = { 0, 1 }, qabs[2] = { 1.5, 2.0 };
    const double kre[2][2] = { { 1, 0 }, { 0, 2 } }, kim[2][2] = { { 0, 1 }, { 1, 0 } };
    const double pos[2] = { 5, 9 }, t0 = 10;
    const double want_mean[2] = { 2.764882, 2.463849 }, want_max[2] = { 3.458371, 3.369300 };
    for (int j = 0; j < 2; j++) {
        const double mean = ref_score(2, omega, qre, qim, qabs, kre[j], kim[j], pos[j], t0, offs, 3, 0);
        const double mx = ref_score(2, omega, qre, qim, qabs, kre[j], kim[j], pos[j], t0, offs, 3, 1);
        CHECK(fabs(mean - want_mean[j]) < 1e-6, "test vector mean-score[%d] = %.7f, want %.6f", j, mean, want_mean[j]);
        CHECK(fabs(mx - want_max[j]) < 1e-6, "test vector max-score[%d] = %.7f, want %.6f", j, mx, want_max[j]);
    }
    /* Fused form: phase of the 3 offsets, synthetic query, F16 post-RoPE keys, both pairings, every ISA. */
    for (int pr = 0; pr < 2; pr++) {
        double a_re[2], a_im[2];
        for (int f = 0; f < 2; f++) {
            a_re[f] = a_im[f] = 0.0;
            for (int m = 0; m < 3; m++) {
                a_re[f] += cos(omega[f] * (t0 + offs[m])) / 3;
                a_im[f] += sin(omega[f] * (t0 + offs[m])) / 3;
            }
        }
        const float fre[2] = { 1, 0 }, fim[2] = { 0, 1 }, fabsm[2] = { 1.5f, 2.0f };
        float w[4], cw[4];
        tri_triattn_query(4, (enum tri_rope_pairing) pr, fre, fim, fabsm, a_re, a_im, 1.0, w, cw);
        tri_fp16 K[8];
        for (int j = 0; j < 2; j++) {
            const double p = pos[j];
            for (int f = 0; f < 2; f++) {
                int a, b;
                pair_idx((enum tri_rope_pairing) pr, 2, f, &a, &b);
                const double c = cos(omega[f] * p), s = sin(omega[f] * p);
                K[j * 4 + a] = tri_fp32_to_fp16((float) (kre[j][f] * c - kim[j][f] * s));
                K[j * 4 + b] = tri_fp32_to_fp16((float) (kre[j][f] * s + kim[j][f] * c));
            }
        }
        for (int isa = 0; isa < TRI_ISA_COUNT; isa++) {
            tri_triattn_score_fn fn = tri_triattn_score_get((enum tri_isa) isa);
            if (!fn) {
                continue;
            }
            float s[2];
            fn(4, 4, (enum tri_rope_pairing) pr, 1, w, cw, K, 2, s, 2);
            for (int j = 0; j < 2; j++) {
                /* F16 keys: ~1e-3 relative error per component */
                CHECK(fabs(s[j] - want_mean[j]) < 1e-2, "fused test vector (pairing %d, isa %d)[%d] = %.6f, want %.6f", pr,
                      isa, j, s[j], want_mean[j]);
            }
        }
    }
}

/* ---- (b) fused op vs per-offset formula on random data ------------------------------------------ */

static void test_fused_random(void) {
    double offs[TRI_TRIATTN_N_OFFSETS];
    for (int m = 0; m < TRI_TRIATTN_N_OFFSETS; m++) {
        offs[m] = (double) (1 << m);
    }
    double worst[TRI_ISA_COUNT] = { 0 };
    for (int iter = 0; iter < 24; iter++) {
        const enum tri_rope_pairing pr = (enum tri_rope_pairing) (iter & 1);
        const int D = (iter % 3 == 0) ? 128 : 64;
        const int R = (iter % 4 == 3) ? D / 2 : D;  /* partial rotary dims too */
        const int F = R / 2, G = 1 + (int) (tu_uniform() * 4), n = 1 + (int) (tu_uniform() * 300);
        double * omega = malloc(sizeof(double) * F);
        for (int f = 0; f < F; f++) {
            omega[f] = (double) (float) pow(10000.0 + tu_uniform() * 1e6, -2.0 * f / R);
        }
        float * qre = malloc(sizeof(float) * G * F), * qim = malloc(sizeof(float) * G * F), * qab = malloc(sizeof(float) * G * F);
        for (int i = 0; i < G * F; i++) {
            qre[i] = (float) (3 * tu_symmetric());
            qim[i] = (float) (3 * tu_symmetric());
            qab[i] = (float) (hypot(qre[i], qim[i]) + 2 * tu_uniform());
        }
        tri_fp16 * K = malloc(sizeof(tri_fp16) * n * D);
        double * pos = malloc(sizeof(double) * n);
        const double t0 = 1000 + (int) (tu_uniform() * 200000);
        for (int j = 0; j < n; j++) {
            double re[128], im[128];
            for (int f = 0; f < F; f++) {
                re[f] = 4 * tu_symmetric();
                im[f] = 4 * tu_symmetric();
            }
            pos[j] = (int) (tu_uniform() * t0);
            rotate_store(re, im, R, D, pr, omega, pos[j], K + (size_t) j * D);
        }
        double a_re[64], a_im[64];
        tri_triattn_phase(F, omega, t0, a_re, a_im);
        float * w = calloc((size_t) G * D, sizeof(float)), * cw = calloc((size_t) G * D, sizeof(float));
        for (int g = 0; g < G; g++) {
            tri_triattn_query(R, pr, qre + g * F, qim + g * F, qab + g * F, a_re, a_im, 1.0, w + g * D, cw + g * D);
        }
        double * ref = malloc(sizeof(double) * G * n), * scale = malloc(sizeof(double) * G * n);
        for (int j = 0; j < n; j++) {
            double kre[64], kim[64];
            unrotate(K + (size_t) j * D, R, pr, omega, pos[j], kre, kim);
            for (int g = 0; g < G; g++) {
                double qr[64], qi[64], qa[64];
                double sc = 0;
                for (int f = 0; f < F; f++) {
                    qr[f] = qre[g * F + f];
                    qi[f] = qim[g * F + f];
                    qa[f] = qab[g * F + f];
                    sc += qa[f] * hypot(kre[f], kim[f]);
                }
                ref[g * n + j] = ref_score(F, omega, qr, qi, qa, kre, kim, pos[j], t0, offs, TRI_TRIATTN_N_OFFSETS, 0);
                scale[g * n + j] = sc;
            }
        }
        float * s = malloc(sizeof(float) * G * n);
        for (int isa = 0; isa < TRI_ISA_COUNT; isa++) {
            tri_triattn_score_fn fn = tri_triattn_score_get((enum tri_isa) isa);
            if (!fn) {
                continue;
            }
            for (int i = 0; i < G * n; i++) {
                s[i] = NAN;
            }
            fn(D, R, pr, G, w, cw, K, n, s, n);
            double err = 0;
            for (int i = 0; i < G * n; i++) {
                const double e = fabs(s[i] - ref[i]) / (scale[i] + 1e-3);
                err = isnan(s[i]) ? INFINITY : tu_max(err, e);
            }
            worst[isa] = tu_max(worst[isa], err);
            /* relative to sum_f E|q| |k|: float products and sums of ~64 terms */
            CHECK(err < 2e-5, "fused score isa %d pairing %d D %d R %d G %d n %d: rel err %.3g", isa, pr, D, R, G, n, err);
        }
        free(omega); free(qre); free(qim); free(qab); free(K); free(pos); free(w); free(cw); free(ref); free(scale); free(s);
    }
    static const char * const names[TRI_ISA_COUNT] = { "scalar", "avx2", "avx512", "neon" };
    printf("fused score vs per-offset double formula: worst rel err scalar %.2g, %s %.2g\n", worst[0],
           names[tri_cpu_isa()], worst[tri_cpu_isa()]);
}

/* ---- (c) selection steps ------------------------------------------------------------------------- */

static void test_selection_steps(void) {
    /* z-score: mean 0, population std 1; constant rows hit the guard (all zero, no NaN). */
    float x[257];
    for (int i = 0; i < 257; i++) {
        x[i] = (float) (5 + 3 * tu_symmetric());
    }
    tri_triattn_zscore(x, 257);
    double m = 0, v = 0;
    for (int i = 0; i < 257; i++) m += x[i];
    m /= 257;
    for (int i = 0; i < 257; i++) v += (x[i] - m) * (x[i] - m);
    v /= 257;
    CHECK(fabs(m) < 1e-5 && fabs(v - 1) < 1e-4, "z-score: mean %g var %g", m, v);
    const float cst = (float) tu_symmetric();
    for (int i = 0; i < 10; i++) x[i] = cst;
    tri_triattn_zscore(x, 10);
    bool zero = true;
    for (int i = 0; i < 10; i++) zero = zero && x[i] == 0.0f;
    CHECK(zero, "z-score of a constant row must be 0 (std guard)");

    /* top-k: ties prefer the more recent (larger index); NaN last; k >= n keeps all; k = 0 none. */
    tri_triattn_cand sel[512];
    uint8_t mark[512];
    const float r = (float) (1 + tu_uniform());
    const float s1[6] = { r, 2 * r, 2 * r, 2 * r, 0, NAN };
    tri_triattn_topk(s1, 6, 2, sel, mark);
    CHECK(!mark[0] && !mark[1] && mark[2] && mark[3] && !mark[4] && !mark[5], "top-k ties must prefer recent");
    tri_triattn_topk(s1, 6, 5, sel, mark);
    CHECK(mark[0] && mark[4] && !mark[5], "top-k: NaN must rank last");
    tri_triattn_topk(s1, 6, 0, sel, mark);
    CHECK(memchr(mark, 1, 6) == NULL, "top-k with k = 0 keeps nothing");
    tri_triattn_topk(s1, 6, 9, sel, mark);
    CHECK(memchr(mark, 0, 6) == NULL, "top-k with k >= n keeps all");
    /* random rows against brute force: mark[j] iff fewer than k items rank above j */
    for (int it = 0; it < 20; it++) {
        const int n = 1 + (int) (tu_uniform() * 500), k = (int) (tu_uniform() * (n + 1));
        float s[512];
        for (int j = 0; j < n; j++) s[j] = (float) (int) (tu_uniform() * 20); /* many ties */
        tri_triattn_topk(s, n, k, sel, mark);
        int bad = 0, kept = 0;
        for (int j = 0; j < n; j++) {
            int above = 0;
            for (int i = 0; i < n; i++) above += s[i] > s[j] || (s[i] == s[j] && i > j);
            bad += (above < k) != (mark[j] != 0);
            kept += mark[j];
        }
        CHECK(bad == 0 && kept == (k < n ? k : n), "top-k n %d k %d: %d wrong, %d kept", n, k, bad, kept);
    }
}

/* ---- centres in GGUF metadata ---------------------------------------------------------------------- */

/* Minimal metadata-only GGUF v3 writer for the tests. */
typedef tu_buf buf;
static void put_cstr(buf * b, const char * s) { tu_put_str(b, s, strlen(s)); }
static void kv_u32(buf * b, const char * k, uint32_t v) { put_cstr(b, k); tu_put_u32(b, TRI_GGUF_UINT32); tu_put_u32(b, v); }
static void kv_f32(buf * b, const char * k, float v) { put_cstr(b, k); tu_put_u32(b, TRI_GGUF_FLOAT32); tu_put(b, &v, 4); }
static void kv_s(buf * b, const char * k, const char * v) { put_cstr(b, k); tu_put_u32(b, TRI_GGUF_STRING); put_cstr(b, v); }
static void kv_arr(buf * b, const char * k, const float * v, size_t n) {
    put_cstr(b, k); tu_put_u32(b, TRI_GGUF_ARRAY); tu_put_u32(b, TRI_GGUF_FLOAT32); tu_put_u64(b, n); tu_put(b, v, n * 4);
}

typedef struct centres_file {
    uint32_t version, L, H, Hkv, R, F;
    const char * arch, * pairing, * fingerprint;
    float base;
    size_t n_arr;
    const float * re, * im, * ab;
} centres_file;

static buf write_centres(const centres_file * c) {
    buf b = { 0 };
    tu_put(&b, "GGUF", 4);
    tu_put_u32(&b, 3);
    tu_put_u64(&b, 0);   /* tensors */
    tu_put_u64(&b, 13);  /* kv count */
    kv_u32(&b, "triattention.format_version", c->version);
    kv_s(&b, "triattention.architecture", c->arch);
    kv_u32(&b, "triattention.n_layer", c->L);
    kv_u32(&b, "triattention.n_head", c->H);
    kv_u32(&b, "triattention.n_head_kv", c->Hkv);
    kv_u32(&b, "triattention.rope_dim", c->R);
    kv_u32(&b, "triattention.freq_count", c->F);
    kv_s(&b, "triattention.rope_pairing", c->pairing);
    kv_f32(&b, "triattention.rope_freq_base", c->base);
    kv_arr(&b, "triattention.q_center_re", c->re, c->n_arr);
    kv_arr(&b, "triattention.q_center_im", c->im, c->n_arr);
    kv_arr(&b, "triattention.q_abs_mean", c->ab, c->n_arr);
    kv_s(&b, "triattention.model_fingerprint", c->fingerprint);
    return b;
}

/* A synthetic model: geometry, frequencies and centres only (no weights, no vocabulary). */
static struct triattn_model * fake_model(int L, int H, int Hkv, int D, int R, enum tri_rope_pairing pr) {
    struct triattn_model * m = calloc(1, sizeof *m);
    m->arch = pr == TRI_ROPE_ADJACENT ? &tri_arch_llama : &tri_arch_qwen2;
    m->hp.n_layer = L;
    m->hp.n_head = H;
    m->hp.n_head_kv = Hkv;
    m->hp.head_dim = D;
    m->hp.rope_dim = R;
    m->hp.rope_freq_base = 10000.0f;
    m->hp.rope_freq_scale = 1.0f;
    m->hp.rope_pairing = pr;
    m->rope_inv_freq = malloc(sizeof(float) * R / 2);
    for (int f = 0; f < R / 2; f++) {
        m->rope_inv_freq[f] = (float) pow(10000.0, -2.0 * f / R);
    }
    snprintf(m->fingerprint, sizeof m->fingerprint, "fnv1a64:0123456789abcdef");
    const size_t n = (size_t) L * H * (R / 2);
    float * re = malloc(n * 4), * im = malloc(n * 4), * ab = malloc(n * 4);
    for (size_t i = 0; i < n; i++) {
        re[i] = (float) (2 * tu_symmetric());
        im[i] = (float) (2 * tu_symmetric());
        ab[i] = (float) (hypot(re[i], im[i]) + tu_uniform());
    }
    char err[256];
    if (tri_model_set_centres(m, re, im, ab, n, 1000, err, sizeof err) != TRIATTN_OK) {
        printf("set_centres: %s\n", err);
    }
    free(re); free(im); free(ab);
    return m;
}

static void fake_model_free(struct triattn_model * m) {
    tri_centres_free(m->centres);
    free(m->rope_inv_freq);
    free(m);
}

static enum triattn_status load_buf(const struct triattn_model * m, buf * b, char * err, size_t n, tri_centres ** out) {
    tri_gguf * g = NULL;
    enum triattn_status st = tri_gguf_open_buffer(b->p, b->n, &g, err, n);
    if (st == TRIATTN_OK) {
        st = tri_centres_load(m, g, "test", out, err, n);
        tri_gguf_close(g);
    }
    free(b->p);
    return st;
}

static void test_centres_metadata(void) {
    const int L = 3, H = 4, Hkv = 2, R = 16, F = 8;
    struct triattn_model * m = fake_model(L, H, Hkv, 16, R, TRI_ROPE_ADJACENT);
    const size_t n = (size_t) L * H * F;
    float re[96], im[96], ab[96];
    for (size_t i = 0; i < n; i++) {
        re[i] = (float) tu_symmetric();
        im[i] = (float) tu_symmetric();
        ab[i] = (float) (hypot(re[i], im[i]) + tu_uniform());
    }
    const centres_file good = { 1, L, H, Hkv, R, F, "llama", "adjacent", "fnv1a64:0123456789abcdef", 10000.0f, n, re, im, ab };
    char err[512];
    tri_centres * c = NULL;
    buf b = write_centres(&good);
    enum triattn_status st = load_buf(m, &b, err, sizeof err, &c);
    CHECK(st == TRIATTN_OK && c, "valid centres refused: %s", err);
    if (c) {
        CHECK(memcmp(c->q_re, re, n * 4) == 0 && memcmp(c->q_im, im, n * 4) == 0 && memcmp(c->q_abs, ab, n * 4) == 0,
              "centres values differ after load");
        tri_centres_free(c);
    }
    struct { centres_file f; const char * key; } bad[8];
    for (int i = 0; i < 8; i++) bad[i].f = good;
    bad[0].f.L = L + 1;             bad[0].key = "triattention.n_layer";
    bad[1].f.Hkv = 1;               bad[1].key = "triattention.n_head_kv";
    bad[2].f.pairing = "half";      bad[2].key = "triattention.rope_pairing";
    bad[3].f.base = 500000.0f;      bad[3].key = "triattention.rope_freq_base";
    bad[4].f.n_arr = n - 1;         bad[4].key = "triattention.q_center_re";
    bad[5].f.arch = "qwen2";        bad[5].key = "triattention.architecture";
    bad[6].f.version = 2;           bad[6].key = "triattention.format_version";
    float ab2[96];
    memcpy(ab2, ab, sizeof ab2);
    const int victim = (int) (tu_uniform() * n);
    ab2[victim] = (float) (hypot(re[victim], im[victim]) * 0.5);
    bad[7].f.ab = ab2;              bad[7].key = "triattention.q_abs_mean";
    for (int i = 0; i < 8; i++) {
        c = NULL;
        err[0] = '\0';
        b = write_centres(&bad[i].f);
        st = load_buf(m, &b, err, sizeof err, &c);
        CHECK(st == TRIATTN_ERR_FORMAT && !c && strstr(err, bad[i].key), "bad centres %d: status %d, message '%s' should name %s",
              i, st, err, bad[i].key);
        tri_centres_free(c);
    }
    float re2[96];
    memcpy(re2, re, sizeof re2);
    re2[(int) (tu_uniform() * n)] = NAN;
    centres_file nanf = good;
    nanf.re = re2;
    b = write_centres(&nanf);
    c = NULL;
    st = load_buf(m, &b, err, sizeof err, &c);
    CHECK(st == TRIATTN_ERR_FORMAT && !c, "NaN centres must be refused (status %d)", st);
    /* A file without the keys is simply "no centres". */
    buf e = { 0 };
    tu_put(&e, "GGUF", 4); tu_put_u32(&e, 3); tu_put_u64(&e, 0); tu_put_u64(&e, 0);
    c = (tri_centres *) 1;
    st = load_buf(m, &e, err, sizeof err, &c);
    CHECK(st == TRIATTN_OK && c == NULL, "a GGUF without triattention keys: status %d", st);
    fake_model_free(m);
}

/* ---- policy on a synthetic cache vs a double reference -------------------------------------------- */

static double g_cut_margin; /* distance of the reference's cut to its nearest rival, for tie tolerance */

static void test_policy_synthetic(const char * mode, enum tri_rope_pairing pr, int n_prompt, int budget, int sink,
                                  int window) {
    const int L = 3, H = 6, Hkv = 2, G = 3, D = 16, R = 16, F = 8, interval = 32;
    tri_ta_opts opts;
    char perr[256];
    CHECK(tri_ta_parse_mode(mode, &opts, perr, sizeof perr) == TRIATTN_OK, "kv_mode %s: %s", mode, perr);
    g_w_trig = opts.trig;
    g_w_norm = opts.norm;
    struct triattn_model * m = fake_model(L, H, Hkv, D, R, pr);
    tri_kv_policy p = { 0 };
    p.ops = &tri_kv_policy_triattention;
    p.cfg = (tri_kv_policy_cfg) { .n_ctx = 1 << 20, .budget = budget, .interval = interval, .window = window,
                                  .sink = sink, .mode = mode };
    p.model = m;
    p.tp = tri_threadpool_create(2);
    p.n_prompt = n_prompt;
    tri_kv_cache c;
    char err[512];
    const int cap = p.ops->capacity(&p.cfg);
    CHECK(cap == budget + interval, "capacity %d != budget + interval", cap);
    tri_kv_cache_init(&c, L, Hkv, D, cap, err, sizeof err);
    enum triattn_status st = p.ops->init(&p, &c, err, sizeof err);
    CHECK(st == TRIATTN_OK, "init: %s", err);
    /* positions: increasing with gaps (an earlier compaction), the same in every (layer, KV head) */
    const int live = cap;
    int32_t * pos = malloc(sizeof(int32_t) * live);
    int32_t pp = 0;
    for (int j = 0; j < live; j++) {
        pos[j] = pp;
        pp += (j < sink || j < n_prompt) ? 1 : 1 + (int) (tu_uniform() * 3);
    }
    double omega[8];
    for (int f = 0; f < F; f++) omega[f] = (double) m->rope_inv_freq[f];
    for (int il = 0; il < L; il++) {
        for (int h = 0; h < Hkv; h++) {
            for (int j = 0; j < live; j++) {
                double re[8], im[8];
                for (int f = 0; f < F; f++) { re[f] = 2 * tu_symmetric(); im[f] = 2 * tu_symmetric(); }
                rotate_store(re, im, R, D, pr, omega, pos[j], tri_kv_k(&c, il, h) + (size_t) j * D);
                for (int d = 0; d < D; d++) tri_kv_v(&c, il, h)[(size_t) j * D + d] = tri_fp32_to_fp16((float) tu_symmetric());
            }
            memcpy(tri_kv_pos(&c, il, h), pos, sizeof(int32_t) * live);
            c.n_live[tri_kv_index(&c, il, h)] = live;
        }
    }
    CHECK(p.ops->should_compress(&p, &c), "should_compress must fire at budget + interval");
    const int32_t t0 = pp;

    /* look=: a first pass leaves W random post-RoPE queries per layer in the ring; the policy keeps them, and the
     * session clears the cache once (here: its epoch moves on, the synthetic keys stay). */
    const int W = TRI_SNAPKV_WINDOW;
    float * qlook = NULL;
    if (opts.look > 0) {
        CHECK(c.q_cap == W && c.q_dim == H * D, "look=: init must enable a ring of %d queries (got %d)", W, c.q_cap);
        qlook = malloc(sizeof(float) * (size_t) L * W * H * D);
        for (size_t i = 0; i < (size_t) L * W * H * D; i++) qlook[i] = (float) (3.0 * tu_symmetric());
        for (int il = 0; il < L; il++) {
            for (int t = 0; t < W + 3; t++) {  /* more than W pushed: the last W count */
                tri_kv_push_query(&c, il, qlook + ((size_t) il * W + (t + W - 3) % W) * H * D, t0 - W - 3 + t);
            }
        }
        CHECK(p.ops->lookahead_tokens(&p, budget + interval - 1) == 0, "look=: a prompt that is not compressed");
        CHECK(p.ops->lookahead_tokens(&p, 100000) == (opts.look < 100000 ? opts.look : 100000), "look=: tail tokens");
        p.ops->lookahead_capture(&p, &c);
        c.epoch++;
    }

    /* Reference: protected range, double scores, z-score, GQA max, layer mean, top-k with tie-tolerance. */
    const int w_def = window < 0 ? 128 : window;
    const int sink_e = sink < budget ? sink : budget;
    const int win_e = w_def < budget - sink_e ? w_def : budget - sink_e;
    int lo = sink_e;
    if (n_prompt > 0 && n_prompt < budget - w_def && n_prompt > lo) lo = n_prompt;
    int hi = live - win_e;
    if (hi < lo) hi = lo;
    const int nc = hi - lo, k = budget - (lo + live - hi) > 0 ? budget - (lo + live - hi) : 0;
    double offs[TRI_TRIATTN_N_OFFSETS];
    for (int mm = 0; mm < TRI_TRIATTN_N_OFFSETS; mm++) offs[mm] = (double) (1 << mm);
    double * agg = calloc((size_t) L * Hkv * (nc + 1), sizeof(double));
    for (int il = 0; il < L; il++) {
        for (int h = 0; h < Hkv; h++) {
            double * a = agg + ((size_t) il * Hkv + h) * (nc + 1);
            for (int j = 0; j < nc; j++) a[j] = -INFINITY;
            for (int g = 0; g < G; g++) {
                const int qh = h * G + g;
                const size_t o = ((size_t) il * H + qh) * F;
                double qr[8], qi[8], qa[8], * sc = malloc(sizeof(double) * (nc + 1));
                for (int f = 0; f < F; f++) { qr[f] = m->centres->q_re[o + f]; qi[f] = m->centres->q_im[o + f]; qa[f] = m->centres->q_abs[o + f]; }
                double mean = 0, var = 0;
                for (int j = 0; j < nc; j++) {
                    double kr[8], ki[8];
                    unrotate(tri_kv_k(&c, il, h) + (size_t) (lo + j) * D, R, pr, omega, pos[lo + j], kr, ki);
                    sc[j] = ref_score(F, omega, qr, qi, qa, kr, ki, pos[lo + j], t0, offs, TRI_TRIATTN_N_OFFSETS, 0);
                    mean += sc[j] / nc;
                }
                for (int j = 0; j < nc; j++) var += (sc[j] - mean) * (sc[j] - mean) / nc;
                const double sd = tu_max(sqrt(var), 1e-6);
                for (int j = 0; j < nc; j++) a[j] = tu_max(a[j], (sc[j] - mean) / sd);
                free(sc);
            }
            if (qlook && nc > 0) {
                /* SnapKV signal of the W queries: GQA max of q·k/sqrt(D), softmax over the candidates, mean over
                 * the queries, max-pool of 7; z-scored and weighted into the aggregate */
                double * sig = calloc((size_t) nc, sizeof(double)), * lg = malloc(sizeof(double) * nc);
                double * pool = malloc(sizeof(double) * nc);
                for (int t = 0; t < W; t++) {
                    double mx = -INFINITY, sum = 0;
                    for (int j = 0; j < nc; j++) {
                        lg[j] = -INFINITY;
                        for (int g = 0; g < G; g++) {
                            const float * q = qlook + ((size_t) il * W + t) * H * D + (size_t) (h * G + g) * D;
                            double dot = 0;
                            for (int d = 0; d < D; d++) dot += (double) q[d] * tri_fp16_to_fp32(tri_kv_k(&c, il, h)[(size_t) (lo + j) * D + d]);
                            lg[j] = tu_max(lg[j], dot / sqrt((double) D));
                        }
                        mx = tu_max(mx, lg[j]);
                    }
                    for (int j = 0; j < nc; j++) sum += exp(lg[j] - mx);
                    for (int j = 0; j < nc; j++) sig[j] += exp(lg[j] - mx) / sum / W;
                }
                double mean = 0, var = 0;
                for (int j = 0; j < nc; j++) {
                    pool[j] = -INFINITY;
                    for (int i = j - 3; i <= j + 3; i++) if (i >= 0 && i < nc) pool[j] = tu_max(pool[j], sig[i]);
                    mean += pool[j] / nc;
                }
                for (int j = 0; j < nc; j++) var += (pool[j] - mean) * (pool[j] - mean) / nc;
                const double sd = tu_max(sqrt(var), 1e-6);
                for (int j = 0; j < nc; j++) a[j] += opts.lookw * (pool[j] - mean) / sd;
                free(sig); free(lg); free(pool);
            }
        }
    }
    const bool per_lh = opts.mode == TRI_TA_PER_LAYER_PER_HEAD, global = opts.mode == TRI_TA_GLOBAL;
    /* expected keep marks per (layer, KV head) */
    uint8_t * want = calloc((size_t) L * Hkv * (nc + 1), 1);
    double * tol = calloc((size_t) L * Hkv * (nc + 1), sizeof(double));
    double * red = malloc(sizeof(double) * (nc + 1));
    for (int grp = 0; grp < (per_lh ? L * Hkv : global ? 1 : Hkv); grp++) {
        for (int j = 0; j < nc; j++) {
            if (per_lh) {
                red[j] = agg[(size_t) grp * (nc + 1) + j];
            } else {
                double s = opts.layer_max ? -INFINITY : 0; int cnt = 0;
                for (int i = 0; i < L * Hkv; i++) {
                    if (global || i % Hkv == grp) {
                        const double v = agg[(size_t) i * (nc + 1) + j];
                        s = opts.layer_max ? tu_max(s, v) : s + v;
                        cnt++;
                    }
                }
                red[j] = opts.layer_max ? s : s / cnt;
            }
        }
        for (int j = 0; j < nc; j++) {
            int above = 0;
            for (int i = 0; i < nc; i++) above += red[i] > red[j] || (red[i] == red[j] && i > j);
            /* the k-th and (k+1)-th best decide the cut */
            for (int i = 0; i < L * Hkv; i++) {
                const bool member = per_lh ? i == grp : (global || i % Hkv == grp);
                if (member) want[(size_t) i * (nc + 1) + j] = above < k;
            }
        }
        /* scores within 1e-4 of the cut may rank either way in float */
        double cut_in = INFINITY, cut_out = -INFINITY;
        for (int j = 0; j < nc; j++) {
            int above = 0;
            for (int i = 0; i < nc; i++) above += red[i] > red[j] || (red[i] == red[j] && i > j);
            if (above < k) cut_in = fmin(cut_in, red[j]); else cut_out = tu_max(cut_out, red[j]);
        }
        for (int j = 0; j < nc; j++) {
            const bool near = fabs(red[j] - cut_in) < 1e-4 || fabs(red[j] - cut_out) < 1e-4;
            for (int i = 0; i < L * Hkv; i++) {
                const bool member = per_lh ? i == grp : (global || i % Hkv == grp);
                if (member) tol[(size_t) i * (nc + 1) + j] = near;
            }
        }
        g_cut_margin = fmin(g_cut_margin, cut_in - cut_out);
    }

    st = p.ops->compress(&p, &c, t0, err, sizeof err);
    CHECK(st == TRIATTN_OK, "compress (%s): %s", mode, err);
    int bad = 0, order_bad = 0, prot_bad = 0, count_bad = 0;
    for (int il = 0; il < L; il++) {
        for (int h = 0; h < Hkv; h++) {
            const int32_t n = c.n_live[tri_kv_index(&c, il, h)];
            const int32_t * kp = tri_kv_pos(&c, il, h);
            const int32_t expect_n = lo + (live - hi) + (nc < k ? nc : k);
            count_bad += n != expect_n;
            for (int j = 1; j < n; j++) order_bad += kp[j] <= kp[j - 1];
            /* protected: the first lo positions and the last live-hi positions */
            for (int j = 0; j < lo && j < n; j++) prot_bad += kp[j] != pos[j];
            for (int j = 0; j < live - hi && j < n; j++) prot_bad += kp[n - 1 - j] != pos[live - 1 - j];
            for (int j = 0; j < nc; j++) {
                bool kept = false;
                for (int i = 0; i < n; i++) kept = kept || kp[i] == pos[lo + j];
                const size_t x = ((size_t) il * Hkv + h) * (nc + 1) + j;
                if (kept != (want[x] != 0) && !tol[x]) bad++;
            }
            /* the kept K rows must be the original rows of those positions (compaction moved them intact) */
        }
    }
    CHECK(count_bad == 0, "%s: live slots after compress != budget", mode);
    CHECK(order_bad == 0, "%s: positions not strictly increasing after compress", mode);
    CHECK(prot_bad == 0, "%s: protected sink/window/prompt tokens were evicted", mode);
    CHECK(bad == 0, "%s pairing %d prompt %d budget %d: %d candidates differ from the double reference", mode, pr,
          n_prompt, budget, bad);
    CHECK(p.n_compressions == 1 && p.n_evicted == (nc > k ? nc - k : 0), "%s: counters %lld rounds, %lld evicted (want %d)",
          mode, (long long) p.n_compressions, (long long) p.n_evicted, nc > k ? nc - k : 0);
    if (!per_lh) {
        int same = 1;
        for (int il = 1; il < L; il++) {
            for (int h = 0; h < Hkv; h++) {
                const int ref_h = global ? 0 : h;
                same &= memcmp(tri_kv_pos(&c, il, h), tri_kv_pos(&c, 0, ref_h), sizeof(int32_t) * c.n_live[0]) == 0;
            }
        }
        CHECK(same, "%s: the layers of a KV head must keep the same tokens", mode);
    }
    /* Below budget + interval nothing fires; with live <= budget compress keeps everything. */
    CHECK(!p.ops->should_compress(&p, &c), "should_compress after compress");
    const int32_t before = c.n_live[0];
    st = p.ops->compress(&p, &c, t0, err, sizeof err);
    CHECK(st == TRIATTN_OK && c.n_live[0] == before && p.n_compressions == 1, "compress under budget must be a no-op");

    /* The recorded round (triattn_session_kv_scores): positions, ranking values and kept flags of every slot. */
    int rec_bad = 0;
    int32_t * rpos = malloc(sizeof(int32_t) * live);
    float * rraw = malloc(sizeof(float) * live), * ragg = malloc(sizeof(float) * live);
    uint8_t * rkept = malloc((size_t) live);
    for (int il = 0; il < L; il++) {
        for (int h = 0; h < Hkv; h++) {
            int32_t nr = -1;
            st = tri_triattn_last_scores(&p, il, h, rpos, rraw, ragg, rkept, live, &nr);
            rec_bad += st != TRIATTN_OK || nr != live;
            const int32_t n = c.n_live[tri_kv_index(&c, il, h)];
            const int32_t * kp = tri_kv_pos(&c, il, h);
            int nk = 0;
            for (int j = 0; j < live && nr == live; j++) {
                const bool cand = j >= lo && j < hi;
                rec_bad += rpos[j] != pos[j] || cand == (isnan(ragg[j]) != 0) || cand == (isnan(rraw[j]) != 0);
                if (rkept[j]) {
                    rec_bad += nk >= n || kp[nk] != pos[j];
                    nk++;
                }
            }
            rec_bad += nk != n;
        }
    }
    CHECK(rec_bad == 0, "%s: the recorded round disagrees with the cache (%d problems)", mode, rec_bad);
    free(rpos); free(rraw); free(ragg); free(rkept);
    g_w_trig = g_w_norm = 1.0;

    free(pos); free(agg); free(want); free(tol); free(red); free(qlook);
    p.ops->free(&p);
    tri_threadpool_free(p.tp);
    tri_kv_cache_free(&c);
    fake_model_free(m);
}

/* kv_mode strings: defaults, each option, and malformed ones refused with a message. */
/* The mean phase over the first M offsets against the sum written out. */
static void test_phase_offsets(void) {
    const int F = 5;
    double omega[5], re[5], im[5];
    for (int f = 0; f < F; f++) omega[f] = pow(10.0, -4.0 * tu_uniform());
    const double t0 = (double) tu_int(0, 100000);
    for (int M = 1; M <= TRI_TRIATTN_N_OFFSETS; M++) {
        tri_triattn_phase_n(F, omega, t0, M, re, im);
        for (int f = 0; f < F; f++) {
            double sr = 0, si = 0;
            for (int m = 0; m < M; m++) {
                sr += cos(omega[f] * (t0 + ldexp(1.0, m)));
                si += sin(omega[f] * (t0 + ldexp(1.0, m)));
            }
            CHECK(fabs(re[f] - sr / M) < 1e-12 && fabs(im[f] - si / M) < 1e-12, "phase over %d offsets, pair %d", M, f);
        }
    }
    double re17[5], im17[5];
    tri_triattn_phase(F, omega, t0, re17, im17);
    tri_triattn_phase_n(F, omega, t0, TRI_TRIATTN_N_OFFSETS, re, im);
    for (int f = 0; f < F; f++) CHECK(re[f] == re17[f] && im[f] == im17[f], "phase = phase_n over 17 offsets");
}

static void test_parse_mode(void) {
    tri_ta_opts o;
    char err[256];
    CHECK(tri_ta_parse_mode(NULL, &o, err, sizeof err) == TRIATTN_OK && o.mode == TRI_TA_PER_HEAD && o.trig == 1.0f &&
              o.norm == 1.0f && !o.layer_max && o.look == 0 && o.lookw == 1.0f, "NULL kv_mode: defaults");
    CHECK(tri_ta_parse_mode("per_head,look=all,lookw=2.5", &o, err, sizeof err) == TRIATTN_OK && o.look == INT32_MAX &&
              o.lookw == 2.5f, "look=all,lookw=2.5: %s", err);
    CHECK(tri_ta_parse_mode("per_head,look=300", &o, err, sizeof err) == TRIATTN_OK && o.look == 300, "look=300: %s", err);
    const double wt = (double) tu_int(0, 400) / 100.0, wn = (double) tu_int(1, 400) / 100.0;
    char buf[128];
    snprintf(buf, sizeof buf, "global,trig=%g,norm=%g,agg=max", wt, wn);
    CHECK(tri_ta_parse_mode(buf, &o, err, sizeof err) == TRIATTN_OK && o.mode == TRI_TA_GLOBAL &&
              fabs(o.trig - wt) < 1e-6 && fabs(o.norm - wn) < 1e-6 && o.layer_max,
          "%s: %s", buf, err);
    CHECK(tri_ta_parse_mode("per_layer_per_head,agg=mean", &o, err, sizeof err) == TRIATTN_OK &&
              o.mode == TRI_TA_PER_LAYER_PER_HEAD && !o.layer_max, "per_layer_per_head,agg=mean");
    CHECK(tri_ta_parse_mode(NULL, &o, err, sizeof err) == TRIATTN_OK && o.n_offsets == TRI_TRIATTN_N_OFFSETS,
          "default offsets");
    const int lg = tu_int(0, 16);
    snprintf(buf, sizeof buf, "per_head,offmax=%d", 1 << lg);
    CHECK(tri_ta_parse_mode(buf, &o, err, sizeof err) == TRIATTN_OK && o.n_offsets == lg + 1, "%s: %s", buf, err);
    const char * bad[] = { "", "per_heads", "per_head,", "per_head,trig", "per_head,trig=", "per_head,trig=x",
                           "per_head,trig=-1", "per_head,trig=nan", "per_head,agg=min", "per_head,foo=1",
                           "per_head,trig=0,norm=0", "per_head,,agg=max", "per_head,obs=1", "per_head,norm=1e9",
                           "per_head,look=4", "per_head,look=-8", "per_head,look=12.5", "per_head,look=any",
                           "per_head,lookw=-1", "per_head,look", "per_head,offmax=0", "per_head,offmax=3",
                           "per_head,offmax=131072", "per_head,offmax=12.5", "per_head,offmax=" };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = '\0';
        CHECK(tri_ta_parse_mode(bad[i], &o, err, sizeof err) == TRIATTN_ERR_UNSUPPORTED && strstr(err, "kv_mode"),
              "kv_mode '%s' must be refused with a message (got '%s')", bad[i], err);
    }
}

/* ---- calibration accumulator --------------------------------------------------------------------- */

static void test_calib_accumulate(void) {
    for (int pr = 0; pr < 2; pr++) {
        struct triattn_model * m = fake_model(2, 3, 1, 8, 8, (enum tri_rope_pairing) pr);
        tri_calib * c = tri_calib_create(m);
        const int T = 37, H = 3, D = 8, F = 4;
        float q[37 * 3 * 8];
        for (int i = 0; i < T * H * D; i++) q[i] = (float) (1 + tu_symmetric());
        tri_calib_accumulate(c, 0, q, 20);
        tri_calib_accumulate(c, 0, q + 20 * H * D, T - 20);
        tri_calib_accumulate(c, 1, q, T);
        double err = 0;
        for (int h = 0; h < H; h++) {
            for (int f = 0; f < F; f++) {
                double sr = 0, si = 0, sa = 0;
                for (int t = 0; t < T; t++) {
                    const float * x = q + ((size_t) t * H + h) * D;
                    const double a = pr == 0 ? x[2 * f] : x[f], b = pr == 0 ? x[2 * f + 1] : x[f + F];
                    sr += a; si += b; sa += hypot(a, b);
                }
                for (int l = 0; l < 2; l++) {
                    const size_t i = ((size_t) l * H + h) * F + f;
                    err = tu_max(err, fabs(c->sum_re[i] - sr) + fabs(c->sum_im[i] - si) + fabs(c->sum_abs[i] - sa));
                }
            }
        }
        CHECK(c->n_tokens == (uint64_t) T && err < 1e-9, "calib sums (pairing %d): err %g, tokens %llu", pr, err,
              (unsigned long long) c->n_tokens);
        tri_calib_free(c);
        fake_model_free(m);
    }
}

/* ---- (d) real model ------------------------------------------------------------------------------ */

static const char * k_text =
    "In the beginning God created the heaven and the earth. And the earth was without form, and void; and darkness "
    "was upon the face of the deep. And the Spirit of God moved upon the face of the waters. And God said, Let there "
    "be light: and there was light. And God saw the light, that it was good: and God divided the light from the "
    "darkness. And God called the light Day, and the darkness he called Night. And the evening and the morning were "
    "the first day. And God said, Let there be a firmament in the midst of the waters, and let it divide the waters "
    "from the waters. And God made the firmament, and divided the waters which were under the firmament from the "
    "waters which were above the firmament: and it was so. And God called the firmament Heaven.";

static bool positions_ok(const triattn_session * s, int * n_bad_order) {
    const tri_kv_cache * c = &s->kv;
    bool ok = true;
    for (int il = 0; il < c->n_layer; il++) {
        for (int h = 0; h < c->n_head_kv; h++) {
            const int32_t * p = tri_kv_pos(c, il, h);
            const int32_t n = c->n_live[tri_kv_index(c, il, h)];
            for (int j = 1; j < n; j++) {
                if (p[j] <= p[j - 1]) { ok = false; (*n_bad_order)++; }
            }
            if (n != c->n_live[0] || memcmp(p, tri_kv_pos(c, 0, h), sizeof(int32_t) * n) != 0) ok = false;
        }
    }
    return ok;
}

static void test_real_model(void) {
    triattn_model * m = tu_load_default_model("real-model TriAttention test");
    if (!m) {
        return;
    }
    char err[1024];
    struct triattn_model_info info;
    triattn_model_get_info(m, &info);
    CHECK(strncmp(info.fingerprint, "fnv1a64:", 8) == 0 && strlen(info.fingerprint) == 24, "fingerprint '%s'", info.fingerprint);
    CHECK(info.freq_count == info.rope_dim / 2 && strcmp(info.rope_pairing, "adjacent") == 0, "info pairing %s F %d",
          info.rope_pairing, info.freq_count);

    /* Without centres: explicit triattention is refused with the hint; auto is full. */
    struct triattn_session_params sp;
    triattn_session_params_init(&sp);
    sp.n_threads = 2;
    sp.kv_policy = "triattention";
    triattn_session * s = NULL;
    enum triattn_status st = triattn_session_create(m, &sp, &s, err, sizeof err);
    CHECK(st == TRIATTN_ERR_INVALID_ARG && strstr(err, "pytriattn calibrate"), "triattention without centres: %d '%s'", st, err);
    triattn_session_free(s);
    s = NULL;

    triattn_token toks[400];
    int32_t nt = 0;
    triattn_tokenize(m, k_text, -1, true, false, toks, 400, &nt);
    sp.kv_policy = NULL;
    sp.n_ctx = 4096;
    st = triattn_session_create(m, &sp, &s, err, sizeof err);
    CHECK(st == TRIATTN_OK, "session: %s", err);
    if (st != TRIATTN_OK) { triattn_model_free(m); return; }
    struct triattn_kv_stats ks;
    triattn_session_kv_stats(s, &ks);
    CHECK(strcmp(ks.policy, "full") == 0, "auto without centres -> '%s'", ks.policy);

    /* Calibrate on the text, inject the centres. */
    const size_t n = (size_t) info.n_layer * info.n_head * info.freq_count;
    float * re = malloc(n * 4), * im = malloc(n * 4), * ab = malloc(n * 4);
    uint64_t ntok = 0;
    CHECK(triattn_session_calib_get(s, re, im, ab, n, &ntok) == TRIATTN_ERR_INVALID_ARG, "calib_get before begin");
    triattn_session_calib_begin(s);
    triattn_session_decode(s, toks, nt, false);
    triattn_session_calib_end(s);
    triattn_session_decode(s, toks, 5, false); /* not counted */
    st = triattn_session_calib_get(s, re, im, ab, n, &ntok);
    CHECK(st == TRIATTN_OK && ntok == (uint64_t) nt, "calib_get: %d, %llu tokens (want %d)", st, (unsigned long long) ntok, nt);
    CHECK(triattn_session_calib_get(s, re, im, ab, n - 1, &ntok) == TRIATTN_ERR_INVALID_ARG, "calib_get with wrong n");
    double conc = 0;
    for (size_t i = 0; i < n; i++) conc += hypot(re[i], im[i]) / (ab[i] + 1e-12) / n;
    printf("calibration on %d tokens: mean concentration R_f = %.3f\n", nt, conc);
    triattn_session_free(s);
    s = NULL;
    st = tri_model_set_centres(m, re, im, ab, n, ntok, err, sizeof err);
    CHECK(st == TRIATTN_OK, "set_centres: %s", err);
    triattn_model_get_info(m, &info);
    CHECK(info.has_calibration, "has_calibration after injecting centres");

    /* (1) budget >= context: never compresses, logits identical to full attention. */
    triattn_session * sf = NULL, * stri = NULL;
    sp.kv_policy = "full";
    triattn_session_create(m, &sp, &sf, err, sizeof err);
    sp.kv_policy = NULL; /* auto -> triattention now */
    sp.kv_budget = 2048;
    triattn_session_create(m, &sp, &stri, err, sizeof err);
    triattn_session_kv_stats(stri, &ks);
    CHECK(strcmp(ks.policy, "triattention") == 0 && ks.capacity == 2048 + 128, "auto with centres: %s cap %d", ks.policy,
          ks.capacity);
    bool same = true;
    triattn_token cur = toks[0];
    triattn_session_decode(sf, toks, 100, false);
    triattn_session_decode(stri, toks, 100, false);
    for (int i = 0; i < 150 && same; i++) {
        const float * a = triattn_session_logits(sf, -1), * b = triattn_session_logits(stri, -1);
        same = memcmp(a, b, sizeof(float) * info.n_vocab) == 0;
        int best = 0;
        for (int v = 1; v < info.n_vocab; v++) if (a[v] > a[best]) best = v;
        cur = best;
        triattn_session_decode(sf, &cur, 1, false);
        triattn_session_decode(stri, &cur, 1, false);
    }
    CHECK(same, "budget >= context: logits must equal full attention exactly");
    triattn_session_free(sf);
    triattn_session_free(stri);

    /* (2) bounded memory over 1,100 decoded tokens, mid-prefill compression, n_ctx beyond training. */
    sp.kv_budget = 192;
    sp.kv_interval = 64;
    sp.n_ctx = 1 << 30;
    st = triattn_session_create(m, &sp, &s, err, sizeof err);
    CHECK(st == TRIATTN_OK, "session n_ctx 2^30: %s", err);
    if (st == TRIATTN_OK) {
        st = triattn_session_decode(s, toks, nt, false); /* prompt > budget: chunked, compressed between chunks */
        CHECK(st == TRIATTN_OK, "long prompt: %s", triattn_session_last_error(s));
        int max_live = 0, bad_order = 0;
        bool consistent = true;
        for (int i = 0; i < 1100 && st == TRIATTN_OK; i++) {
            const float * a = triattn_session_logits(s, -1);
            int best = 0;
            for (int v = 1; v < info.n_vocab; v++) if (a[v] > a[best]) best = v;
            cur = best;
            st = triattn_session_decode(s, &cur, 1, false);
            triattn_session_kv_stats(s, &ks);
            max_live = ks.live_max > max_live ? ks.live_max : max_live;
            if (i % 50 == 0) consistent = consistent && positions_ok(s, &bad_order);
        }
        CHECK(st == TRIATTN_OK, "decode: %s", triattn_session_last_error(s));
        triattn_session_kv_stats(s, &ks);
        CHECK(ks.capacity == 192 + 64 && max_live <= ks.capacity, "capacity %d, max live %d", ks.capacity, max_live);
        CHECK(consistent && bad_order == 0, "positions must increase and agree across layers (%d bad)", bad_order);
        CHECK(ks.n_compressions >= (nt + 1100 - 256) / 64 && ks.n_evicted >= nt + 1100 - 256, "stats: %lld rounds, %lld evicted",
              (long long) ks.n_compressions, (long long) ks.n_evicted);
        int32_t buf[256], np = 0;
        st = triattn_session_kv_positions(s, info.n_layer - 1, info.n_head_kv - 1, buf, 256, &np);
        CHECK(st == TRIATTN_OK && np == ks.live_max && buf[0] == 0 && buf[np - 1] == ks.n_past - 1,
              "kv_positions: %d slots, first %d last %d (n_past %lld)", np, buf[0], buf[np - 1], (long long) ks.n_past);
        CHECK(triattn_session_kv_positions(s, info.n_layer, 0, buf, 256, &np) == TRIATTN_ERR_INVALID_ARG,
              "kv_positions out of range");
        printf("real model: %lld rounds at budget 192, %.2f ms per round\n", (long long) ks.n_compressions,
               ks.score_ms / (double) (ks.n_compressions ? ks.n_compressions : 1));
        triattn_session_free(s);
    }

    /* (3) cost of one round at budget 2048 on 2 threads (cache filled with random keys). */
    sp.kv_budget = 2048;
    sp.kv_interval = 128;
    sp.kv_mode = NULL;
    const char * modes[3] = { "per_head", "per_layer_per_head", "global" };
    for (int mi = 0; mi < 3; mi++) {
        sp.kv_mode = modes[mi];
        s = NULL;
        if (triattn_session_create(m, &sp, &s, err, sizeof err) != TRIATTN_OK) { CHECK(0, "%s", err); break; }
        tri_kv_cache * c = &s->kv;
        double best = INFINITY;
        for (int rep = 0; rep < 5; rep++) {
            for (int il = 0; il < c->n_layer; il++) {
                for (int h = 0; h < c->n_head_kv; h++) {
                    tri_fp16 * K = tri_kv_k(c, il, h);
                    for (size_t i = 0; i < (size_t) c->capacity * c->head_dim; i++) K[i] = tri_fp32_to_fp16((float) tu_symmetric());
                    for (int j = 0; j < c->capacity; j++) tri_kv_pos(c, il, h)[j] = j;
                    c->n_live[tri_kv_index(c, il, h)] = c->capacity;
                }
            }
            s->n_past = c->capacity;
            s->policy.n_prompt = 10;
            const double t = tri_time_ms();
            st = s->policy.ops->compress(&s->policy, c, s->n_past, err, sizeof err);
            best = fmin(best, tri_time_ms() - t);
            CHECK(st == TRIATTN_OK && c->n_live[0] == 2048, "round at budget 2048 (%s): %s", modes[mi], err);
        }
        printf("round at budget 2048 (%s, 2 threads, %s): %.2f ms\n", modes[mi], tri_cpu_features(), best);
        triattn_session_free(s);
    }
    free(re); free(im); free(ab);
    triattn_model_free(m);
}

int main(void) {
    tu_seed_init("TRI_TEST_SEED");
    tri_ops_init();
    test_vector();
    test_fused_random();
    test_selection_steps();
    test_centres_metadata();
    test_calib_accumulate();
    g_cut_margin = INFINITY;
    const char * modes[3] = { "per_head", "per_layer_per_head", "global" };
    for (int i = 0; i < 3; i++) {
        test_policy_synthetic(modes[i], (enum tri_rope_pairing) (i & 1), 0, 64 + (int) (tu_uniform() * 64), 4, 16);
    }
    test_policy_synthetic("per_head", TRI_ROPE_HALF, 20, 96, 4, 16);        /* short prompt kept whole */
    test_policy_synthetic("per_head", TRI_ROPE_ADJACENT, 0, 40, 4, -1);     /* default window 128 > budget: clamped */
    test_policy_synthetic("global", TRI_ROPE_ADJACENT, 0, 3, 4, 16);        /* budget <= sink: guard */
    test_parse_mode();
    test_phase_offsets();
    {   /* score variants of kv_mode: weights of the two terms, layer max */
        char v[96];
        snprintf(v, sizeof v, "per_head,trig=%g,norm=%g", (double) tu_int(0, 300) / 100.0, (double) tu_int(1, 300) / 100.0);
        test_policy_synthetic(v, TRI_ROPE_HALF, 0, 64 + (int) (tu_uniform() * 64), 4, 16);
        test_policy_synthetic("per_head,agg=max", TRI_ROPE_ADJACENT, 0, 64 + (int) (tu_uniform() * 64), 4, 16);
        test_policy_synthetic("global,agg=max,trig=0", TRI_ROPE_HALF, 0, 80, 4, 16);
        test_policy_synthetic("per_layer_per_head,norm=0", TRI_ROPE_ADJACENT, 0, 80, 4, 16);
        /* look=: the first pass's queries weighted into every (layer, KV head) */
        snprintf(v, sizeof v, "per_head,look=all,lookw=%g", (double) tu_int(25, 400) / 100.0);
        test_policy_synthetic(v, TRI_ROPE_HALF, 0, 64 + (int) (tu_uniform() * 64), 4, 16);
        test_policy_synthetic("per_layer_per_head,look=64", TRI_ROPE_ADJACENT, 0, 80, 4, 16);
        test_policy_synthetic("global,look=all,agg=max", TRI_ROPE_ADJACENT, 0, 80, 4, 16);
    }
    test_real_model();
    return tu_finish();
}
