/* Sampler tests: greedy = argmax, top_k=1 = greedy, seeding, empirical distributions against a reference
 * computed here in double (chi-square), truncation never picks an excluded token, penalties pinned by
 * greedy probes, the logit bias, parameter validation, and the time per sample on a 49k vocabulary.
 * Random inputs. */
#include "sampler.h"

#include "common.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "test_util.h"

static void rand_logits(float * l, int n, float scale) {
    for (int i = 0; i < n; i++) l[i] = (float) (tu_normal() * scale);
}

static struct triattn_sampler_params params(float temp, int32_t top_k, float top_p, float min_p) {
    struct triattn_sampler_params p;
    triattn_sampler_params_init(&p);
    p.temperature = temp;
    p.top_k = top_k;
    p.top_p = top_p;
    p.min_p = min_p;
    return p;
}

static void set(tri_sampler * s, struct triattn_sampler_params p) {
    char err[256] = "";
    enum triattn_status st = tri_sampler_set_params(s, &p, err, sizeof err);
    CHECK(st == TRIATTN_OK, "set_params: %s", err);
}

static int argmax(const float * l, int n) {
    int b = -1;
    for (int i = 0; i < n; i++)
        if (l[i] == l[i] && (b < 0 || l[i] > l[b])) b = i;
    return b;
}

/* Reference distribution of the chain (no penalties) in double: probabilities per token (0 = excluded). */
static int g_sort_logits_n;
static const float * g_sort_logits;
static int cmp_desc(const void * a, const void * b) {
    int ia = *(const int *) a, ib = *(const int *) b;
    float la = g_sort_logits[ia], lb = g_sort_logits[ib];
    if (la != lb) return la > lb ? -1 : 1;
    return ia - ib;
}
static void reference(const float * l, int n, struct triattn_sampler_params p, double * prob, int * order) {
    g_sort_logits = l;
    g_sort_logits_n = n;
    for (int i = 0; i < n; i++) order[i] = i;
    qsort(order, (size_t) n, sizeof *order, cmp_desc);
    int keep = n;
    if (p.top_k > 0 && p.top_k < keep) keep = p.top_k;
    double mx = l[order[0]];
    if (p.top_p < 1.0f) {
        double z = 0, cum = 0;
        for (int i = 0; i < keep; i++) z += exp(l[order[i]] - mx);
        for (int i = 0; i < keep; i++) {
            cum += exp(l[order[i]] - mx);
            if (cum >= p.top_p * z) { keep = i + 1; break; }
        }
    }
    for (int i = 0; i < n; i++) prob[i] = 0;
    double z = 0;
    for (int i = 0; i < keep; i++) {
        int t = order[i];
        if (p.min_p > 0 && l[t] < mx + log(p.min_p)) continue;
        prob[t] = exp((l[t] - mx) / p.temperature);
        z += prob[t];
    }
    for (int i = 0; i < n; i++) prob[i] /= z;
}

static void test_greedy(void) {
    enum { N = 5000 };
    static float l[N];
    tri_sampler * s = tri_sampler_create(N, 64, tu_u64());
    CHECK(s != NULL, "create");
    if (!s) return;
    set(s, params(0.0f, 40, 0.95f, 0.05f));
    for (int rep = 0; rep < 50; rep++) {
        rand_logits(l, N, 2.0f);
        if (rep % 3 == 0) l[0] = NAN;                                /* NaN must never win */
        if (rep % 5 == 0) { l[tu_u64() % N] = NAN; }
        int want = argmax(l, N);
        CHECK(tri_sampler_sample(s, l) == want, "greedy rep %d", rep);
    }
    rand_logits(l, N, 1.0f); /* ties -> lowest id */
    int a = 100 + (int) (tu_u64() % 1000), b = a + 1 + (int) (tu_u64() % 1000);
    l[a] = l[b] = 50.0f;
    CHECK(tri_sampler_sample(s, l) == a, "tie -> lowest id");
    set(s, params(0.7f, 0, 1.0f, 0.0f));
    for (int i = 0; i < N; i++) l[i] = NAN;
    CHECK(tri_sampler_sample(s, l) == -1, "all NaN -> -1");
    l[1234] = -INFINITY;
    CHECK(tri_sampler_sample(s, l) == 1234, "only -inf left");
    rand_logits(l, N, 1.0f);
    l[777] = INFINITY;
    CHECK(tri_sampler_sample(s, l) == 777, "+inf wins");
    /* top_k = 1 equals greedy at any temperature */
    for (int rep = 0; rep < 50; rep++) {
        set(s, params(tu_uniformf(0.1f, 3.0f), 1, rep % 2 ? 0.5f : 1.0f, 0.0f));
        rand_logits(l, N, 2.0f);
        if (rep % 4 == 0) l[tu_u64() % N] = NAN;
        CHECK(tri_sampler_sample(s, l) == argmax(l, N), "top_k=1 rep %d", rep);
    }
    tri_sampler_free(s);
}

static void test_seeding(void) {
    enum { N = 1000, T = 300 };
    static float l[N];
    rand_logits(l, N, 0.3f);
    uint64_t seed = tu_u64();
    tri_sampler * a = tri_sampler_create(N, 64, seed);
    tri_sampler * b = tri_sampler_create(N, 64, seed);
    tri_sampler * c = tri_sampler_create(N, 64, seed + 1);
    struct triattn_sampler_params p = params(1.0f, 0, 1.0f, 0.0f);
    set(a, p); set(b, p); set(c, p);
    int same_ab = 0, same_ac = 0;
    triattn_token first[T];
    for (int i = 0; i < T; i++) {
        triattn_token ta = tri_sampler_sample(a, l), tb = tri_sampler_sample(b, l), tc = tri_sampler_sample(c, l);
        first[i] = ta;
        same_ab += ta == tb;
        same_ac += ta == tc;
    }
    CHECK(same_ab == T, "same seed: %d of %d equal", same_ab, T);
    CHECK(same_ac < T / 4, "different seed: %d of %d equal", same_ac, T);
    p.seed = seed; /* reseed through set_params replays the stream */
    set(a, p);
    int replay = 0;
    for (int i = 0; i < T; i++) replay += tri_sampler_sample(a, l) == first[i];
    CHECK(replay == T, "reseed replays: %d of %d", replay, T);
    tri_sampler * r1 = tri_sampler_create(N, 64, UINT64_MAX), * r2 = tri_sampler_create(N, 64, UINT64_MAX);
    set(r1, params(1.0f, 0, 1.0f, 0.0f)); set(r2, params(1.0f, 0, 1.0f, 0.0f));
    int same_r = 0;
    for (int i = 0; i < T; i++) same_r += tri_sampler_sample(r1, l) == tri_sampler_sample(r2, l);
    CHECK(same_r < T / 4, "random seeds: %d of %d equal", same_r, T);
    tri_sampler_free(a); tri_sampler_free(b); tri_sampler_free(c); tri_sampler_free(r1); tri_sampler_free(r2);
}

/* Chi-square of D draws of s from logits l against the reference over ref (l itself, or l with the bias the
 * sampler adds): cells expecting fewer than 5 draws are pooled into one (the chi-square law holds only for cells
 * that are not small: one draw where 0.05 were expected alone adds 19). *excluded_hit counts drawn tokens the
 * reference excludes; *df gets the degrees of freedom. */
static double draw_chi2(tri_sampler * s, const float * l, const float * ref, int n, struct triattn_sampler_params p,
                        int draws, int * excluded_hit, int * df) {
    enum { NMAX = 64 };
    double prob[NMAX];
    int order[NMAX];
    long cnt[NMAX] = { 0 };
    reference(ref, n, p, prob, order);
    for (int d = 0; d < draws; d++) {
        triattn_token t = tri_sampler_sample(s, l);
        if (t >= 0 && t < n) cnt[t]++;
    }
    double chi = 0, pool_e = 0;
    long pool_n = 0;
    *df = -1;
    *excluded_hit = 0;
    for (int i = 0; i < n; i++) {
        if (prob[i] == 0) { *excluded_hit += cnt[i] != 0; continue; }
        double e = prob[i] * draws;
        if (e < 5.0) { pool_e += e; pool_n += cnt[i]; continue; }
        chi += (cnt[i] - e) * (cnt[i] - e) / e;
        (*df)++;
    }
    if (pool_e > 0) {
        chi += (pool_n - pool_e) * (pool_n - pool_e) / pool_e;
        (*df)++;
    }
    return chi;
}

/* Chi-square of draws against the reference; df <= 31, bound 80 (p ~ 1e-6 at df 31) fails a wrong sampler. */
static void test_distribution(void) {
    enum { N = 32, D = 200000 };
    float l[N];
    tri_sampler * s = tri_sampler_create(N, 16, tu_u64());
    for (int rep = 0; rep < 6; rep++) {
        rand_logits(l, N, 1.5f);
        struct triattn_sampler_params p = params(rep == 0 ? 1.0f : tu_uniformf(0.4f, 2.0f), 0, 1.0f, 0.0f);
        if (rep == 2) p.top_k = 5 + (int) (tu_u64() % 10);
        if (rep == 3) p.top_p = tu_uniformf(0.5f, 0.9f);
        if (rep == 4) p.min_p = tu_uniformf(0.05f, 0.3f);
        if (rep == 5) { p.top_k = 20; p.top_p = 0.8f; p.min_p = 0.02f; }
        set(s, p);
        int excluded_hit, df;
        const double chi = draw_chi2(s, l, l, N, p, D, &excluded_hit, &df);
        CHECK(excluded_hit == 0, "rep %d: excluded token drawn", rep);
        CHECK(chi < 80.0, "rep %d (T %.2f k %d p %.2f min_p %.2f): chi2 %.1f with df %d", rep, p.temperature,
              p.top_k, p.top_p, p.min_p, chi, df);
    }
    tri_sampler_free(s);
}

/* On a real-size vocabulary the truncations never return a token the reference excludes. */
static void test_truncation_sets(void) {
    enum { N = 49152 };
    static float l[N];
    static double prob[N];
    static int order[N];
    tri_sampler * s = tri_sampler_create(N, 64, tu_u64());
    for (int rep = 0; rep < 12; rep++) {
        rand_logits(l, N, 3.0f);
        struct triattn_sampler_params p = params(tu_uniformf(0.5f, 1.5f), 0, 1.0f, 0.0f);
        switch (rep % 4) {
            case 0: p.top_k = 1 + (int) (tu_u64() % 100); break;
            case 1: p.top_p = tu_uniformf(0.3f, 0.99f); break;          /* full sort path */
            case 2: p.min_p = tu_uniformf(0.01f, 0.5f); break;
            default: p.top_k = 1000; p.top_p = tu_uniformf(0.3f, 0.99f); p.min_p = tu_uniformf(0.001f, 0.1f); break;
        }
        set(s, p);
        reference(l, N, p, prob, order);
        int bad = 0;
        for (int d = 0; d < 200; d++) {
            triattn_token t = tri_sampler_sample(s, l);
            bad += t < 0 || t >= N || prob[t] == 0;
        }
        CHECK(bad == 0, "rep %d (k %d p %.3f min_p %.3f): %d excluded picks", rep, p.top_k, p.top_p, p.min_p, bad);
    }
    tri_sampler_free(s);
}

/* Greedy probe: token t's penalised logit lies within (want - eps, want + eps). Other tokens are far below;
 * competitor c (never in the history) sits at want -/+ eps. */
static bool probe(tri_sampler * s, float * l, int n, int t, int c, float want) {
    const float eps = 1e-3f * (1.0f + fabsf(want));
    float save_c = l[c];
    l[c] = want - eps;
    bool lo = tri_sampler_sample(s, l) == t;
    l[c] = want + eps;
    bool hi = tri_sampler_sample(s, l) == c;
    l[c] = save_c;
    (void) n;
    return lo && hi;
}

static void test_penalties(void) {
    enum { N = 64 };
    float l[N];
    /* hand case: repeat 2, freq 0.5, presence 0.25, window = last 3 of [0, 1, 1, 3] = {1, 1, 3} */
    tri_sampler * s = tri_sampler_create(N, 8, 1);
    struct triattn_sampler_params p = params(0.0f, 0, 1.0f, 0.0f);
    p.repeat_penalty = 2.0f; p.frequency_penalty = 0.5f; p.presence_penalty = 0.25f; p.repeat_last_n = 3;
    set(s, p);
    tri_sampler_accept(s, 0); tri_sampler_accept(s, 1); tri_sampler_accept(s, 1); tri_sampler_accept(s, 3);
    for (int i = 0; i < N; i++) l[i] = -1000.0f;
    l[1] = -1.0f; l[3] = 3.0f; l[0] = 2.0f;
    /* expected: l1 = -1*2 - (2*0.5 + 0.25) = -3.25; l3 = 3/2 - 0.75 = 0.75; l0 untouched = 2 */
    l[0] = -100.0f; l[3] = -100.0f;
    CHECK(probe(s, l, N, 1, 50, -3.25f), "hand case: token 1 -> -3.25");
    l[1] = -100.0f; l[3] = 3.0f;
    CHECK(probe(s, l, N, 3, 50, 0.75f), "hand case: token 3 -> 0.75");
    l[3] = -100.0f; l[0] = 2.0f;
    CHECK(probe(s, l, N, 0, 50, 2.0f), "hand case: token 0 outside the window stays 2");
    tri_sampler_reset(s);
    l[0] = -100.0f; l[3] = 3.0f;
    CHECK(probe(s, l, N, 3, 50, 3.0f), "after reset: no penalty");
    tri_sampler_free(s);

    /* random cases, with ring wrap-around (history_cap 16, 40 accepted tokens) */
    for (int rep = 0; rep < 30; rep++) {
        int cap = 16;
        s = tri_sampler_create(N, cap, tu_u64());
        p = params(0.0f, 0, 1.0f, 0.0f);
        p.repeat_penalty = tu_uniformf(0.5f, 3.0f);
        p.frequency_penalty = tu_uniformf(-1.0f, 1.0f);
        p.presence_penalty = tu_uniformf(-1.0f, 1.0f);
        p.repeat_last_n = rep % 3 == 0 ? -1 : (int) (tu_u64() % 24);
        set(s, p);
        int hist[40];
        for (int i = 0; i < 40; i++) { hist[i] = (int) (tu_u64() % 8); tri_sampler_accept(s, hist[i]); }
        int win = p.repeat_last_n < 0 ? cap : (p.repeat_last_n < cap ? p.repeat_last_n : cap);
        int count[8] = { 0 };
        for (int i = 40 - win; i < 40; i++) count[hist[i]]++;
        for (int t = 0; t < 8; t++) {
            for (int i = 0; i < N; i++) l[i] = -1000.0f;
            l[t] = tu_uniformf(-3.0f, 3.0f);
            float want = l[t];
            if (count[t]) {
                want = want <= 0 ? want * p.repeat_penalty : want / p.repeat_penalty;
                want -= count[t] * p.frequency_penalty + p.presence_penalty;
            }
            CHECK(probe(s, l, N, t, 60, want), "rep %d token %d count %d: want %.4f", rep, t, count[t], want);
        }
        tri_sampler_free(s);
    }
}

/* The logit bias: greedy picks the argmax of the biased logits (duplicates add, -inf bans), the draws follow the
 * reference over the biased logits, penalties apply after the bias, the caller's arrays are copied, and parameters
 * without a bias clear it. */
static void test_logit_bias(void) {
    enum { N = 5000, K = 64, M = 32, D = 200000 };
    static float l[N], lb[N];
    triattn_token ids[K + 1];
    float bias[K + 1];
    tri_sampler * s = tri_sampler_create(N, 16, tu_u64());
    for (int rep = 0; rep < 40; rep++) {
        rand_logits(l, N, 2.0f);
        memcpy(lb, l, sizeof l);
        int k = 1 + (int) (tu_u64() % K);
        for (int i = 0; i < k; i++) {
            ids[i] = i > 0 && tu_u64() % 4 == 0 ? ids[tu_u64() % i] : (triattn_token) (tu_u64() % N); /* repeats */
            bias[i] = tu_uniformf(-5.0f, 8.0f);
            lb[ids[i]] += bias[i];
        }
        if (rep % 5 == 0) { /* one more pair bans the biased argmax */
            ids[k] = (triattn_token) argmax(lb, N);
            bias[k] = -INFINITY;
            lb[ids[k++]] = -INFINITY;
        }
        struct triattn_sampler_params p = params(0.0f, 40, 0.95f, 0.05f);
        p.logit_bias_tokens = ids; p.logit_bias = bias; p.n_logit_bias = k;
        set(s, p);
        for (int i = 0; i < k; i++) { ids[i] = -7; bias[i] = NAN; } /* the sampler holds its own copy */
        CHECK(tri_sampler_sample(s, l) == argmax(lb, N), "rep %d: greedy over the biased logits", rep);
    }
    set(s, params(0.0f, 40, 0.95f, 0.05f)); /* no bias: plain argmax again */
    rand_logits(l, N, 2.0f);
    CHECK(tri_sampler_sample(s, l) == argmax(l, N), "parameters without a bias clear it");
    tri_sampler_free(s);

    /* draws: chi-square against the reference distribution of the biased logits (as in test_distribution) */
    float lm[M], lmb[M];
    s = tri_sampler_create(M, 16, tu_u64());
    rand_logits(lm, M, 1.5f);
    memcpy(lmb, lm, sizeof lm);
    for (int i = 0; i < 8; i++) {
        ids[i] = (triattn_token) (tu_u64() % M);
        bias[i] = i == 0 ? -INFINITY : tu_uniformf(-2.0f, 3.0f);
        lmb[ids[i]] += bias[i];
    }
    struct triattn_sampler_params p = params(tu_uniformf(0.6f, 1.5f), 0, 0.9f, 0.0f);
    p.logit_bias_tokens = ids; p.logit_bias = bias; p.n_logit_bias = 8;
    set(s, p);
    int excluded_hit, df;
    const double chi = draw_chi2(s, lm, lmb, M, p, D, &excluded_hit, &df);
    CHECK(excluded_hit == 0, "a banned or truncated token was drawn");
    CHECK(chi < 80.0, "biased draws: chi2 %.1f with df %d", chi, df);
    tri_sampler_free(s);

    /* the bias comes before the penalties: token 3, logit 3 + bias 1, once in the window, repeat penalty 2 -> 2 */
    float h[64];
    s = tri_sampler_create(64, 8, 1);
    p = params(0.0f, 0, 1.0f, 0.0f);
    p.repeat_penalty = 2.0f;
    ids[0] = 3; bias[0] = 1.0f;
    p.logit_bias_tokens = ids; p.logit_bias = bias; p.n_logit_bias = 1;
    set(s, p);
    tri_sampler_accept(s, 3);
    for (int i = 0; i < 64; i++) h[i] = -1000.0f;
    h[3] = 3.0f;
    CHECK(probe(s, h, 64, 3, 50, 2.0f), "bias then repeat penalty: (3 + 1) / 2");
    tri_sampler_free(s);

    /* a sampler without a history ring takes a bias */
    s = tri_sampler_create(64, 0, 1);
    set(s, p);
    CHECK(probe(s, h, 64, 3, 50, 4.0f), "bias, no history");
    tri_sampler_free(s);
}

static void test_validation(void) {
    tri_sampler * s = tri_sampler_create(100, 8, 1);
    char err[256];
    struct triattn_sampler_params good = params(0.8f, 40, 0.95f, 0.05f), p;
    struct { const char * field; int which; } cases[] = {
        { "temperature", 0 }, { "top_p", 1 }, { "top_p", 2 }, { "min_p", 3 }, { "repeat_penalty", 4 },
        { "repeat_penalty", 5 }, { "repeat_last_n", 6 }, { "frequency_penalty", 7 }, { "presence_penalty", 8 },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        p = good;
        switch (cases[i].which) {
            case 0: p.temperature = NAN; break;
            case 1: p.top_p = 0.0f; break;
            case 2: p.top_p = INFINITY; break;
            case 3: p.min_p = 1.5f; break;
            case 4: p.repeat_penalty = 0.0f; break;
            case 5: p.repeat_penalty = -1.0f; break;
            case 6: p.repeat_last_n = -2; break;
            case 7: p.frequency_penalty = NAN; break;
            default: p.presence_penalty = -INFINITY; break;
        }
        err[0] = '\0';
        enum triattn_status st = tri_sampler_set_params(s, &p, err, sizeof err);
        CHECK(st == TRIATTN_ERR_INVALID_ARG && strstr(err, cases[i].field), "invalid %s: status %d '%s'",
              cases[i].field, st, err);
    }
    triattn_token ids[2] = { 5, 7 };
    float bias[2] = { 1.0f, -2.0f };
    for (int which = 0; which < 6; which++) {
        p = good;
        p.logit_bias_tokens = ids; p.logit_bias = bias; p.n_logit_bias = 2;
        triattn_token bad_ids[2] = { 5, which == 3 ? 100 : -1 };
        float bad_bias[2] = { 1.0f, which == 4 ? NAN : INFINITY };
        switch (which) {
            case 0: p.n_logit_bias = -1; break;
            case 1: p.n_logit_bias = 101; break;
            case 2: p.logit_bias = NULL; break;
            case 3: p.logit_bias_tokens = bad_ids; break;
            case 4: case 5: p.logit_bias = bad_bias; break;
        }
        err[0] = '\0';
        enum triattn_status st = tri_sampler_set_params(s, &p, err, sizeof err);
        CHECK(st == TRIATTN_ERR_INVALID_ARG && strstr(err, "logit bias"), "invalid logit bias %d: status %d '%s'",
              which, st, err);
    }
    p = good;
    p.top_p = 1.5f; /* >= 1 is "off" */
    CHECK(tri_sampler_set_params(s, &p, err, sizeof err) == TRIATTN_OK, "top_p 1.5 is off");
    CHECK(tri_sampler_create(0, 8, 1) == NULL && tri_sampler_create(10, -1, 1) == NULL, "create rejects bad sizes");
    tri_sampler_free(s);
}

static void test_speed(void) {
    enum { N = 49152, R = 300 };
    static float l[N];
    rand_logits(l, N, 3.0f);
    tri_sampler * s = tri_sampler_create(N, 256, tu_u64());
    for (int i = 0; i < 64; i++) tri_sampler_accept(s, (triattn_token) (tu_u64() % N));
    const struct { const char * name; struct triattn_sampler_params p; } cfg[] = {
        { "greedy", params(0.0f, 40, 0.95f, 0.05f) },
        { "default (k40 p0.95 min_p0.05)", params(0.8f, 40, 0.95f, 0.05f) },
        { "top_p 0.95 only (full sort)", params(0.8f, 0, 0.95f, 0.0f) },
        { "no truncation", params(1.0f, 0, 1.0f, 0.0f) },
    };
    for (size_t c = 0; c < sizeof cfg / sizeof cfg[0]; c++) {
        struct triattn_sampler_params p = cfg[c].p;
        p.repeat_penalty = 1.1f;
        set(s, p);
        volatile int sink = 0;
        double t0 = tri_time_ms();
        for (int r = 0; r < R; r++) sink += tri_sampler_sample(s, l);
        double us = (tri_time_ms() - t0) * 1e3 / R;
        printf("sample n_vocab %d, %s + repeat penalty: %.1f us\n", N, cfg[c].name, us);
        CHECK(us < 20000.0, "sampling too slow: %.1f us", us);
    }
    tri_sampler_free(s);
}

int main(void) {
    tu_seed_init("TRI_TEST_SEED");
    test_greedy();
    test_seeding();
    test_distribution();
    test_truncation_sets();
    test_penalties();
    test_logit_bias();
    test_validation();
    test_speed();
    return tu_finish();
}
