/* Token sampler, in llama.cpp's usual chain order:
 *   logit bias (the caller's (token, bias) pairs added)
 *   -> penalties (repeat, frequency, presence over the last repeat_last_n accepted tokens)
 *   -> temperature <= 0: argmax (ties -> lowest id)
 *   -> top_k -> top_p -> min_p (these three on temperature-1 probabilities) -> temperature -> softmax -> draw.
 * NaN logits are never chosen; -inf logits only by greedy when nothing else is left. All scratch is
 * allocated in tri_sampler_create; sampling does not allocate. RNG: xoshiro256** seeded by splitmix64.
 * Parameter conventions: top_k <= 0 or >= n_vocab is off; top_p >= 1 is off (top_p must be > 0);
 * min_p <= 0 is off (must be <= 1); repeat_last_n = -1 means the whole history ring, 0 disables penalties. */
#include "sampler.h"

#include "common.h"
#include "platform.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct tri_cand {
    float   logit;
    int32_t id;
} tri_cand;

struct tri_sampler {
    int32_t n_vocab;
    struct triattn_sampler_params p;
    uint64_t rng[4];
    /* penalty history: ring buffer of the last history_cap accepted tokens */
    triattn_token * hist;
    int32_t         hist_cap;
    int32_t         hist_len;   /* valid entries, <= hist_cap */
    int32_t         hist_head;  /* next write position */
    int32_t *       counts;     /* [n_vocab] occurrences in the penalty window; all zero between calls */
    float *         work;       /* [n_vocab] penalised logits */
    tri_cand *      cand;       /* [n_vocab] candidates */
    tri_cand *      tmp;        /* [n_vocab] radix sort scratch */
    float *         probs;      /* [n_vocab] unnormalised probabilities of the kept candidates */
    int32_t *       bias_id;    /* [n_vocab] the logit bias: tokens ... */
    float *         bias;       /* [n_vocab] ... and what is added to their logits (p.n_logit_bias pairs) */
    uint32_t *      hist_radix; /* [3 * 2048] radix sort histograms */
};

/* ---- RNG ---------------------------------------------------------------------------------------- */

static uint64_t splitmix64(uint64_t * x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t rng_next(uint64_t * s) { /* xoshiro256** */
    uint64_t r = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return r;
}

/* Uniform double in [0, 1). */
static double rng_uniform(uint64_t * s) { return (double) (rng_next(s) >> 11) * 0x1.0p-53; }

static uint64_t random_seed(void) {
    uint64_t seed = 0;
    if (!tri_os_random(&seed, sizeof seed)) seed = 0;
    uint64_t t = (uint64_t) time(NULL) * 1000000007ull ^ (uint64_t) (tri_time_ms() * 1e6);
    return seed ^ t ^ (tri_process_id() << 40) ^ (uint64_t) (uintptr_t) &seed;
}

void tri_sampler_seed(tri_sampler * s, uint64_t seed) {
    if (seed == UINT64_MAX) seed = random_seed();
    for (int i = 0; i < 4; i++) s->rng[i] = splitmix64(&seed);
}

/* ---- lifecycle ---------------------------------------------------------------------------------- */

void triattn_sampler_params_init(struct triattn_sampler_params * p) {
    if (!p) return;
    p->temperature = 0.8f;
    p->top_k = 40;
    p->top_p = 0.95f;
    p->min_p = 0.05f;
    p->repeat_penalty = 1.0f;
    p->repeat_last_n = 64;
    p->frequency_penalty = 0.0f;
    p->presence_penalty = 0.0f;
    p->seed = UINT64_MAX; /* keep the RNG stream */
    p->logit_bias_tokens = NULL;
    p->logit_bias = NULL;
    p->n_logit_bias = 0;
}

tri_sampler * tri_sampler_create(int32_t n_vocab, int32_t history_cap, uint64_t seed) {
    if (n_vocab <= 0 || history_cap < 0) return NULL;
    tri_sampler * s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->n_vocab = n_vocab;
    s->hist_cap = history_cap;
    s->hist = malloc((size_t) (history_cap ? history_cap : 1) * sizeof *s->hist);
    s->counts = calloc((size_t) n_vocab, sizeof *s->counts);
    s->work = malloc((size_t) n_vocab * sizeof *s->work);
    s->cand = malloc((size_t) n_vocab * sizeof *s->cand);
    s->tmp = malloc((size_t) n_vocab * sizeof *s->tmp);
    s->probs = malloc((size_t) n_vocab * sizeof *s->probs);
    s->hist_radix = malloc(3 * 2048 * sizeof *s->hist_radix);
    s->bias_id = malloc((size_t) n_vocab * sizeof *s->bias_id);
    s->bias = malloc((size_t) n_vocab * sizeof *s->bias);
    if (!s->hist || !s->counts || !s->work || !s->cand || !s->tmp || !s->probs || !s->hist_radix || !s->bias_id ||
        !s->bias) {
        tri_sampler_free(s);
        return NULL;
    }
    triattn_sampler_params_init(&s->p);
    tri_sampler_seed(s, seed);
    return s;
}

void tri_sampler_free(tri_sampler * s) {
    if (!s) return;
    free(s->hist);
    free(s->counts);
    free(s->work);
    free(s->cand);
    free(s->tmp);
    free(s->probs);
    free(s->hist_radix);
    free(s->bias_id);
    free(s->bias);
    free(s);
}

static enum triattn_status check_bias(const tri_sampler * s, const struct triattn_sampler_params * p, char * err,
                                      size_t err_size) {
    if (p->n_logit_bias < 0 || p->n_logit_bias > s->n_vocab) {
        return tri_fail(err, err_size, TRIATTN_ERR_INVALID_ARG,
                        "sampler: logit bias: n_logit_bias %d must be in [0, %d]", (int) p->n_logit_bias,
                        (int) s->n_vocab);
    }
    if (p->n_logit_bias > 0 && (!p->logit_bias_tokens || !p->logit_bias)) {
        return tri_fail(err, err_size, TRIATTN_ERR_INVALID_ARG, "sampler: logit bias arrays are NULL");
    }
    for (int32_t i = 0; i < p->n_logit_bias; i++) {
        const triattn_token t = p->logit_bias_tokens[i];
        const float b = p->logit_bias[i];
        if (t < 0 || t >= s->n_vocab) {
            return tri_fail(err, err_size, TRIATTN_ERR_INVALID_ARG,
                            "sampler: logit bias token %d (pair %d) is out of range [0, %d)", (int) t, (int) i,
                            (int) s->n_vocab);
        }
        if (isnan(b) || b == INFINITY) {
            return tri_fail(err, err_size, TRIATTN_ERR_INVALID_ARG,
                            "sampler: logit bias %g of token %d must be finite or -inf", (double) b, (int) t);
        }
    }
    return TRIATTN_OK;
}

enum triattn_status tri_sampler_set_params(tri_sampler * s, const struct triattn_sampler_params * p, char * err,
                                           size_t err_size) {
    if (!s || !p) return tri_fail(err, err_size, TRIATTN_ERR_INVALID_ARG, "sampler: NULL sampler or params");
    const struct { const char * name; float v; } fs[] = {
        { "temperature", p->temperature }, { "top_p", p->top_p }, { "min_p", p->min_p },
        { "repeat_penalty", p->repeat_penalty }, { "frequency_penalty", p->frequency_penalty },
        { "presence_penalty", p->presence_penalty },
    };
    for (size_t i = 0; i < sizeof fs / sizeof fs[0]; i++) {
        if (!isfinite(fs[i].v)) {
            return tri_fail(err, err_size, TRIATTN_ERR_INVALID_ARG, "sampler: %s must be finite", fs[i].name);
        }
    }
    if (!(p->top_p > 0.0f)) {
        return tri_fail(err, err_size, TRIATTN_ERR_INVALID_ARG, "sampler: top_p %g must be > 0 (>= 1 turns it off)",
                        (double) p->top_p);
    }
    if (p->min_p > 1.0f) {
        return tri_fail(err, err_size, TRIATTN_ERR_INVALID_ARG, "sampler: min_p %g must be <= 1", (double) p->min_p);
    }
    if (!(p->repeat_penalty > 0.0f)) {
        return tri_fail(err, err_size, TRIATTN_ERR_INVALID_ARG, "sampler: repeat_penalty %g must be > 0",
                        (double) p->repeat_penalty);
    }
    if (p->repeat_last_n < -1) {
        return tri_fail(err, err_size, TRIATTN_ERR_INVALID_ARG, "sampler: repeat_last_n %d must be >= -1",
                        (int) p->repeat_last_n);
    }
    const enum triattn_status st = check_bias(s, p, err, err_size);
    if (st != TRIATTN_OK) return st;
    s->p = *p;
    if (p->n_logit_bias > 0) {
        memcpy(s->bias_id, p->logit_bias_tokens, (size_t) p->n_logit_bias * sizeof *s->bias_id);
        memcpy(s->bias, p->logit_bias, (size_t) p->n_logit_bias * sizeof *s->bias);
    }
    s->p.logit_bias_tokens = NULL; /* the caller's arrays are not kept */
    s->p.logit_bias = NULL;
    if (p->seed != UINT64_MAX) tri_sampler_seed(s, p->seed);
    return TRIATTN_OK;
}

void tri_sampler_accept(tri_sampler * s, triattn_token t) {
    if (!s || s->hist_cap == 0 || t < 0 || t >= s->n_vocab) return;
    s->hist[s->hist_head] = t;
    s->hist_head = (s->hist_head + 1) % s->hist_cap;
    if (s->hist_len < s->hist_cap) s->hist_len++;
}

void tri_sampler_reset(tri_sampler * s) {
    if (!s) return;
    s->hist_len = 0;
    s->hist_head = 0;
}

/* ---- steps -------------------------------------------------------------------------------------- */

/* Copies logits to s->work, adds the logit bias and applies the penalties over the last repeat_last_n tokens.
 * Returns the logits to use (the input when neither applies). */
static const float * adjust_logits(tri_sampler * s, const float * logits) {
    const struct triattn_sampler_params * p = &s->p;
    int32_t n = p->repeat_last_n < 0 ? s->hist_len : TRI_MIN(p->repeat_last_n, s->hist_len);
    if (p->repeat_penalty == 1.0f && p->frequency_penalty == 0.0f && p->presence_penalty == 0.0f) n = 0;
    if (n == 0 && p->n_logit_bias == 0) {
        return logits;
    }
    memcpy(s->work, logits, (size_t) s->n_vocab * sizeof *s->work);
    for (int32_t i = 0; i < p->n_logit_bias; i++) s->work[s->bias_id[i]] += s->bias[i];
    if (n == 0) return s->work;
    /* the window is the n most recent entries of the ring */
    int32_t start = (s->hist_head - n + s->hist_cap) % s->hist_cap;
    for (int32_t i = 0; i < n; i++) s->counts[s->hist[(start + i) % s->hist_cap]]++;
    for (int32_t i = 0; i < n; i++) {
        triattn_token t = s->hist[(start + i) % s->hist_cap];
        int32_t c = s->counts[t];
        if (c == 0) continue; /* already penalised (a repeat within the window) */
        float l = s->work[t];
        if (p->repeat_penalty != 1.0f) l = l <= 0.0f ? l * p->repeat_penalty : l / p->repeat_penalty;
        l -= (float) c * p->frequency_penalty + p->presence_penalty;
        s->work[t] = l;
        s->counts[t] = 0; /* leaves counts all zero for the next call */
    }
    return s->work;
}

/* Strict "better" order: larger logit, then lower id. */
static inline bool cand_better(tri_cand a, tri_cand b) {
    return a.logit > b.logit || (a.logit == b.logit && a.id < b.id);
}

/* Restores the min-heap (worst candidate at the root) of c[0..n) below r. */
static void heap_down(tri_cand * c, int32_t n, int32_t r) {
    for (;;) {
        int32_t ch = 2 * r + 1;
        if (ch >= n) break;
        if (ch + 1 < n && cand_better(c[ch], c[ch + 1])) ch++;
        if (!cand_better(c[r], c[ch])) break;
        tri_cand t = c[r]; c[r] = c[ch]; c[ch] = t;
        r = ch;
    }
}

/* The k best finite logits of L[0..n) into c, sorted best first; returns how many (< k when fewer are
 * finite). A size-k min-heap: almost every logit is rejected by one compare with the root, and since ids
 * only grow a tie never displaces the root (lower id wins). */
static int32_t top_k_select(tri_cand * c, const float * L, int32_t n, int32_t k) {
    int32_t m = 0, i = 0;
    for (; i < n && m < k; i++) {
        if (L[i] > -INFINITY) { /* false for NaN */
            c[m].logit = L[i];
            c[m].id = i;
            m++;
        }
    }
    for (int32_t r = m / 2; r-- > 0;) heap_down(c, m, r);
    if (m == k) {
        for (; i < n; i++) {
            if (L[i] > c[0].logit) {
                c[0].logit = L[i];
                c[0].id = i;
                heap_down(c, k, 0);
            }
        }
    }
    for (int32_t end = m; end-- > 1;) { /* pop the worst to the back: best first */
        tri_cand t = c[0]; c[0] = c[end]; c[end] = t;
        heap_down(c, end, 0);
    }
    return m;
}

/* Radix key whose ascending order is the descending order of the float. */
static inline uint32_t desc_key(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    u = (u & 0x80000000u) ? ~u : (u | 0x80000000u); /* ascending order of floats */
    return ~u;
}

/* Sorts c[0..n) by logit descending (ties: input order, which is ascending id) with a stable LSD radix
 * sort on the float bits: 3 passes of 11 bits. */
static void sort_desc(tri_sampler * s, tri_cand * c, int32_t n) {
    uint32_t * h = s->hist_radix;
    memset(h, 0, 3 * 2048 * sizeof *h);
    for (int32_t i = 0; i < n; i++) {
        uint32_t k = desc_key(c[i].logit);
        h[k & 2047]++;
        h[2048 + ((k >> 11) & 2047)]++;
        h[4096 + (k >> 22)]++;
    }
    tri_cand * src = c, * dst = s->tmp;
    for (int pass = 0; pass < 3; pass++) {
        uint32_t * hp = h + 2048 * pass;
        uint32_t sum = 0;
        for (int b = 0; b < 2048; b++) {
            uint32_t v = hp[b];
            hp[b] = sum;
            sum += v;
        }
        int shift = 11 * pass;
        for (int32_t i = 0; i < n; i++) {
            uint32_t k = desc_key(src[i].logit);
            dst[hp[(k >> shift) & 2047]++] = src[i];
        }
        tri_cand * t = src; src = dst; dst = t;
    }
    if (src != c) memcpy(c, src, (size_t) n * sizeof *c); /* odd number of passes: result is in tmp */
}

/* e^x for x <= 0 (clamped at -87, e^-87 ~ 1.6e-38; NaN is never passed), relative error ~2e-7; branch-free
 * so loops over it vectorise. */
static inline float exp_neg(float x) {
    uint32_t ux; /* x = max(x, -87) on the bits (x <= 0: larger unsigned = more negative); a float compare
                    would keep the loop from vectorising under -ftrapping-math */
    memcpy(&ux, &x, 4);
    ux = ux > 0xC2AE0000u ? 0xC2AE0000u : ux;
    memcpy(&x, &ux, 4);
    float t = x * 1.44269504f + 12582912.0f; /* 1.5 * 2^23: rounds x*log2(e) to an integer in the low bits */
    float nf = t - 12582912.0f;
    int32_t ni;
    memcpy(&ni, &t, 4);
    ni -= 0x4B400000;
    float r = x - nf * 0.693145751953125f - nf * 1.428606765330187e-06f; /* |r| <= ln2/2 */
    float q = 1.0f + r * (1.0f + r * (0.5f + r * (0.16666667f + r * (0.041666668f + r * (0.008333334f +
              r * 0.0013888889f)))));
    int32_t bits = (ni + 127) << 23;
    float scale;
    memcpy(&scale, &bits, 4);
    return q * scale;
}

/* Sum of x[0..n) with 8 float lanes per block of 256, blocks accumulated in double. */
static double sum_f32(const float * x, int32_t n) {
    double z = 0.0;
    for (int32_t i0 = 0; i0 < n; i0 += 256) {
        int32_t m = TRI_MIN(256, n - i0);
        float acc[8] = { 0 };
        int32_t i = 0;
        for (; i + 8 <= m; i += 8) {
            for (int j = 0; j < 8; j++) acc[j] += x[i0 + i + j];
        }
        for (; i < m; i++) acc[0] += x[i0 + i];
        z += (double) ((acc[0] + acc[1]) + (acc[2] + acc[3])) + (double) ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    }
    return z;
}

/* probs[i] = e^((c[i].logit - mx) * k); returns the sum. */
static double softmax_weights(const tri_cand * c, float * restrict probs, int32_t n, float mx, float k) {
    for (int32_t i = 0; i < n; i++) probs[i] = c[i].logit; /* gather, then a contiguous loop that vectorises */
    for (int32_t i = 0; i < n; i++) probs[i] = exp_neg((probs[i] - mx) * k);
    return sum_f32(probs, n);
}

/* Index of the candidate where the running sum of probs first exceeds u (skipping whole blocks first). */
static int32_t draw_index(const float * probs, int32_t n, double u) {
    double cum = 0.0;
    int32_t i0 = 0;
    for (; i0 + 256 <= n; i0 += 256) {
        double b = sum_f32(probs + i0, 256);
        if (u < cum + b) break;
        cum += b;
    }
    for (int32_t i = i0; i < n; i++) {
        cum += probs[i];
        if (u < cum) return i;
    }
    for (int32_t i = n; i-- > 0;) { /* rounding left u at the very top: the last non-zero candidate */
        if (probs[i] > 0.0f) return i;
    }
    return 0;
}

/* top_p over unsorted candidates: keeps (sorted, best first) the smallest prefix of the descending order
 * whose mass reaches top_p. Only the candidates whose coarse bucket (top 11 bits of the key) lies before
 * or at the bucket where the mass crosses top_p are sorted; usually a small fraction of the vocabulary. */
static int32_t top_p_unsorted(tri_sampler * s, tri_cand * c, int32_t n, float mx, float top_p) {
    double z = softmax_weights(c, s->probs, n, mx, 1.0f);
    double * bm = (double *) s->tmp; /* 2048 bucket masses: tmp is unused until sort_desc */
    if ((size_t) n * sizeof *s->tmp >= 2048 * sizeof *bm) {
        memset(bm, 0, 2048 * sizeof *bm);
        for (int32_t i = 0; i < n; i++) bm[desc_key(c[i].logit) >> 21] += s->probs[i];
        double target = (double) top_p * z, cum = 0.0;
        uint32_t cut = 2047;
        for (uint32_t b = 0; b < 2048; b++) {
            cum += bm[b];
            if (cum >= target) { cut = b; break; }
        }
        int32_t m = 0;
        for (int32_t i = 0; i < n; i++) {
            if ((desc_key(c[i].logit) >> 21) <= cut) c[m++] = c[i]; /* keeps id order: the sort stays stable */
        }
        n = m;
    }
    sort_desc(s, c, n);
    double target = (double) top_p * z, cum = 0.0;
    for (int32_t i = 0; i < n; i++) {
        cum += exp_neg(c[i].logit - mx);
        if (cum >= target) return i + 1;
    }
    return n;
}

/* Index of the largest non-NaN logit (ties -> lowest id), -1 when all are NaN. */
static int32_t argmax(const float * L, int32_t nv) {
    int32_t best = -1;
    float bmax = -INFINITY;
    for (int32_t i = 0; i < nv; i++) {
        if (L[i] > bmax || (best < 0 && L[i] == -INFINITY)) {
            bmax = L[i];
            best = i;
        }
    }
    return best;
}

triattn_token tri_sampler_sample(tri_sampler * s, const float * logits) {
    if (!s || !logits) return -1;
    const struct triattn_sampler_params * p = &s->p;
    const float * L = adjust_logits(s, logits);
    const int32_t nv = s->n_vocab;
    if (p->temperature <= 0.0f) return argmax(L, nv);

    /* candidates: finite logits only (NaN never, -inf has probability 0) */
    tri_cand * c = s->cand;
    int32_t n = 0;
    bool sorted = false;
    float bmax = -INFINITY;
    if (p->top_k > 0 && p->top_k < nv) {
        n = top_k_select(c, L, nv, p->top_k);
        sorted = true;
        bmax = n ? c[0].logit : bmax;
    } else {
        for (int32_t i = 0; i < nv; i++) {
            float l = L[i];
            if (l > -INFINITY) {
                c[n].logit = l;
                c[n].id = i;
                n++;
                bmax = l > bmax ? l : bmax;
            }
        }
    }
    /* nothing finite (all NaN or -inf), or a +inf logit: greedy semantics */
    if (n == 0 || bmax == INFINITY) return argmax(L, nv);
    if (p->top_p < 1.0f && n > 1) {
        if (sorted) {
            double z = softmax_weights(c, s->probs, n, bmax, 1.0f);
            double target = (double) p->top_p * z, cum = 0.0;
            for (int32_t i = 0; i < n; i++) {
                cum += s->probs[i];
                if (cum >= target) { n = i + 1; break; }
            }
        } else {
            n = top_p_unsorted(s, c, n, bmax, p->top_p);
        }
    }
    if (p->min_p > 0.0f && n > 1) { /* keep p >= min_p * p_max, i.e. logit >= max + log(min_p) */
        float thr = bmax + logf(p->min_p);
        int32_t m = 0;
        for (int32_t i = 0; i < n; i++) {
            if (c[i].logit >= thr) c[m++] = c[i];
        }
        n = m; /* the max itself always passes, so n >= 1 */
    }

    /* temperature, softmax, draw */
    double z = softmax_weights(c, s->probs, n, bmax, 1.0f / p->temperature);
    return c[draw_index(s->probs, n, rng_uniform(s->rng) * z)].id;
}
