/* The `triattention` KV policy (docs/triattention.md §3-§5, docs/triattention-engine.md): when live slots
 * reach budget + interval, score every candidate key with the query centres' trigonometric series,
 * z-score per (layer, query head), take the GQA max and the layer mean, keep the top (budget - protected)
 * per KV head, and compact. Options of kv_mode (kv_select.h) weight the two terms, aggregate layers by max, or
 * add the attention of the prompt's last queries learnt by a first pass (look=). The last round's scores are
 * kept for triattn_session_kv_scores. All scratch is allocated once in init. */
#include "calibration.h"
#include "common.h"
#include "platform.h"
#include "kv_cache.h"
#include "kv_select.h"
#include "model.h"
#include "triattn_score.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct tri_ta_state {
    int32_t L, H, Hkv, G, D, R, F, cap;
    enum tri_rope_pairing pairing;
    enum tri_ta_mode mode;
    tri_ta_opts   opts;
    int32_t window, sink;            /* as configured (window default resolved) */
    tri_triattn_score_fn score;
    double *      omega;             /* [F] angle per position of each pair */
    double *      a_re, * a_im;      /* [F] mean phase of the round */
    float *       w, * cw;           /* [L][H][D] synthetic queries and norm weights of the round */
    float *       scores;            /* [L][H][cap] z-scores of the candidates */
    float *       agg;               /* [L][Hkv][cap] GQA max of the z-scores */
    float *       mean;              /* [Hkv][cap] layer mean (per_head) or [1][cap] (global) */
    tri_triattn_cand * sel;               /* [L * Hkv][cap] ranking scratch */
    uint8_t *     mark;              /* [L * Hkv][cap] chosen candidates */
    int32_t *     keep;              /* [L * Hkv][cap] slots kept */
    int32_t *     lo, * hi;          /* [L * Hkv] candidate slot range [lo, hi) of the round */
    int32_t *     k;                 /* [L * Hkv] candidates to keep */
    int32_t *     rec_pos;           /* [L * Hkv][cap] last round: positions of the live slots before eviction */
    float *       rec_raw, * rec_agg;/* [L * Hkv][cap] last round: GQA max of the raw scores, ranking value */
    uint8_t *     rec_kept;          /* [L * Hkv][cap] last round: slot kept */
    int32_t *     rec_n;             /* [L * Hkv] last round: live slots (0 = no round yet) */
    /* look=: the post-RoPE queries of the prompt's last tokens from the first pass */
    tri_attn_kernels kr;
    float *       qa;                /* [L][TRI_SNAPKV_WINDOW][H * D] */
    int32_t       qa_n;              /* queries held per layer (0 = none) */
    uint64_t      qa_epoch;          /* cache epoch they apply to */
    size_t        look_per_thread;   /* floats of one thread's scratch */
    float *       look_tmp;          /* [n_threads][look_per_thread] */
    void *        mem;
} tri_ta_state;

/* ---- selection steps (declared in calibration.h for the tests) ----------------------------------- */

/* Ranking order: higher score first; ties prefer the more recent candidate (larger index). Keys are
 * unique (j differs), so the selection is deterministic. */
static inline bool tri_ta_before(tri_triattn_cand x, tri_triattn_cand y) {
    return x.s > y.s || (x.s == y.s && x.j > y.j);
}

/* Reorders sel[0..n) so that its first k entries are the k best (quickselect, median of three). */
static void tri_ta_select(tri_triattn_cand * sel, int32_t n, int32_t k) {
    int32_t lo = 0, hi = n - 1;
    while (lo < hi) {
        const int32_t mid = lo + (hi - lo) / 2;
        tri_triattn_cand a = sel[lo], b = sel[mid], c = sel[hi], piv;
        if (tri_ta_before(a, b)) {
            piv = tri_ta_before(b, c) ? b : tri_ta_before(a, c) ? c : a;
        } else {
            piv = tri_ta_before(a, c) ? a : tri_ta_before(b, c) ? c : b;
        }
        int32_t i = lo, j = hi;
        while (i <= j) {
            while (tri_ta_before(sel[i], piv)) i++;
            while (tri_ta_before(piv, sel[j])) j--;
            if (i <= j) {
                const tri_triattn_cand t = sel[i];
                sel[i++] = sel[j];
                sel[j--] = t;
            }
        }
        if (k - 1 <= j) {
            hi = j;
        } else if (k - 1 >= i) {
            lo = i;
        } else {
            return;
        }
    }
}

/* mark[j] = 1 for the k best of s[0..n) (ties: larger j), 0 for the rest. */
void tri_triattn_topk(const float * s, int32_t n, int32_t k, tri_triattn_cand * sel, uint8_t * mark) {
    if (k >= n) {
        memset(mark, 1, (size_t) n);
        return;
    }
    memset(mark, 0, (size_t) n);
    if (k <= 0) {
        return;
    }
    for (int32_t j = 0; j < n; j++) {
        sel[j].s = isnan(s[j]) ? -INFINITY : s[j];
        sel[j].j = j;
    }
    tri_ta_select(sel, n, k);
    for (int32_t i = 0; i < k; i++) {
        mark[sel[i].j] = 1;
    }
}

/* In place: x = (x - mean) / max(std_population, 1e-6). */
void tri_triattn_zscore(float * x, int32_t n) {
    if (n <= 0) {
        return;
    }
    double sum = 0.0, sq = 0.0;
    for (int32_t j = 0; j < n; j++) {
        sum += x[j];
    }
    const double mean = sum / n;
    for (int32_t j = 0; j < n; j++) {
        const double d = x[j] - mean;
        sq += d * d;
    }
    const double sd = sqrt(sq / n);
    const float inv = (float) (1.0 / (sd > 1e-6 ? sd : 1e-6));
    const float mf = (float) mean;
    for (int32_t j = 0; j < n; j++) {
        x[j] = (x[j] - mf) * inv;
    }
}

/* ---- policy ------------------------------------------------------------------------------------- */

static void tri_ta_free(tri_kv_policy * p) {
    tri_ta_state * st = p->state;
    if (st) {
        tri_aligned_free(st->mem);
        free(st);
    }
    p->state = NULL;
}

static size_t tri_ta_al(size_t n) {
    return (n + 63) & ~(size_t) 63;
}

static enum triattn_status tri_ta_init(tri_kv_policy * p, tri_kv_cache * c, char * err, size_t n) {
    const struct triattn_model * m = p->model;
    if (!m || !m->centres) {
        return tri_fail(err, n, TRIATTN_ERR_INVALID_ARG,
                        "kv_policy 'triattention' needs query centres: run `pytriattn calibrate model.gguf "
                        "--self-generate -o model.tri.gguf` and load model.tri.gguf (or a sidecar as "
                        "triattn_model_params.calibration_path)");
    }
    tri_ta_state * st = calloc(1, sizeof *st);
    if (!st) {
        return tri_fail(err, n, TRIATTN_ERR_OOM, "out of memory");
    }
    p->state = st;
    const tri_hparams * hp = &m->hp;
    st->L = hp->n_layer;
    st->H = hp->n_head;
    st->Hkv = hp->n_head_kv;
    st->G = hp->n_head / hp->n_head_kv;
    st->D = hp->head_dim;
    st->R = hp->rope_dim;
    st->F = hp->rope_dim / 2;
    st->cap = c->capacity;
    st->pairing = hp->rope_pairing;
    st->window = p->cfg.window < 0 ? TRI_KV_DEFAULT_WINDOW : p->cfg.window;
    st->sink = p->cfg.sink;
    enum triattn_status os = tri_ta_parse_mode(p->cfg.mode, &st->opts, err, n);
    if (os != TRIATTN_OK) {
        return os;
    }
    if (!st->opts.offmax_set) {
        st->opts.n_offsets = m->centres->n_offsets; /* the calibration's horizon, or the default */
    }
    st->mode = st->opts.mode;
    p->share = st->mode == TRI_TA_PER_HEAD ? TRI_KV_SHARE_LAYERS : st->mode == TRI_TA_GLOBAL ? TRI_KV_SHARE_ALL
                                                                                            : TRI_KV_SHARE_NONE;
    st->score = tri_triattn_score_get(TRI_ISA_COUNT);

    const size_t LH = (size_t) st->L * st->H, LK = (size_t) st->L * st->Hkv, cap = (size_t) st->cap;
    const bool look = st->opts.look > 0;
    const size_t W = TRI_SNAPKV_WINDOW, n_threads = p->tp ? (size_t) tri_threadpool_size(p->tp) : 1;
    /* per thread: window queries of one KV head, the term's values, the SnapKV kernel's scratch */
    st->look_per_thread = look ? W * st->G * st->D + cap + tri_snapkv_scratch(st->cap + (int32_t) W, st->G) : 0;
    if (look) {
        enum triattn_status qs = tri_kv_cache_enable_queries(c, (int32_t) W, st->H * st->D, err, n);
        if (qs != TRIATTN_OK) {
            return qs;
        }
        st->kr = tri_attn_kernels_get(TRI_ISA_COUNT);
    }
    struct { void ** p; size_t bytes; } parts[] = {
        { (void **) &st->omega,  sizeof(double) * st->F },
        { (void **) &st->a_re,   sizeof(double) * st->F },
        { (void **) &st->a_im,   sizeof(double) * st->F },
        { (void **) &st->w,      sizeof(float) * LH * st->D },
        { (void **) &st->cw,     sizeof(float) * LH * st->D },
        { (void **) &st->scores, sizeof(float) * LH * cap },
        { (void **) &st->agg,    sizeof(float) * LK * cap },
        { (void **) &st->mean,   sizeof(float) * st->Hkv * cap },
        { (void **) &st->sel,    sizeof(tri_triattn_cand) * LK * cap },
        { (void **) &st->mark,   LK * cap },
        { (void **) &st->keep,   sizeof(int32_t) * LK * cap },
        { (void **) &st->lo,     sizeof(int32_t) * LK },
        { (void **) &st->hi,     sizeof(int32_t) * LK },
        { (void **) &st->k,      sizeof(int32_t) * LK },
        { (void **) &st->rec_pos, sizeof(int32_t) * LK * cap },
        { (void **) &st->rec_raw, sizeof(float) * LK * cap },
        { (void **) &st->rec_agg, sizeof(float) * LK * cap },
        { (void **) &st->rec_kept, LK * cap },
        { (void **) &st->rec_n,   sizeof(int32_t) * LK },
        { (void **) &st->qa,      look ? sizeof(float) * st->L * W * st->H * st->D : 0 },
        { (void **) &st->look_tmp, sizeof(float) * n_threads * st->look_per_thread },
    };
    size_t total = 0;
    for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++) {
        total += tri_ta_al(parts[i].bytes);
    }
    st->mem = tri_aligned_alloc(64, total);
    if (!st->mem) {
        return tri_fail(err, n, TRIATTN_ERR_OOM, "cannot allocate %.1f MiB of TriAttention scratch",
                        total / 1048576.0);
    }
    char * q = st->mem;
    for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++) {
        *parts[i].p = parts[i].bytes ? q : NULL;
        q += tri_ta_al(parts[i].bytes);
    }
    st->qa_n = 0;
    memset(st->w, 0, sizeof(float) * LH * st->D);
    memset(st->cw, 0, sizeof(float) * LH * st->D);
    memset(st->rec_n, 0, sizeof(int32_t) * LK);
    for (int f = 0; f < st->F; f++) {
        st->omega[f] = (double) m->rope_inv_freq[f] * (double) hp->rope_freq_scale;
    }
    return TRIATTN_OK;
}

typedef struct tri_ta_task {
    tri_kv_policy * p;
    tri_kv_cache *  c;
    tri_ta_state *  st;
} tri_ta_task;

/* Keeps [0, lo) + chosen candidates + [hi, live) of (il, h) and compacts; first records the round (positions,
 * ranking values `val` of the candidates, kept flags) for triattn_session_kv_scores. */
static void tri_ta_compact_one(tri_ta_state * st, tri_kv_cache * c, int il, int h, const uint8_t * mark,
                               const float * val) {
    const size_t i = (size_t) il * st->Hkv + h;
    const int32_t live = c->n_live[tri_kv_index(c, il, h)], lo = st->lo[i], hi = st->hi[i];
    const size_t r = i * st->cap;
    memcpy(st->rec_pos + r, tri_kv_pos(c, il, h), sizeof(int32_t) * live);
    for (int32_t j = 0; j < live; j++) {
        const bool cand = j >= lo && j < hi;
        st->rec_agg[r + j] = cand ? val[j - lo] : NAN;
        st->rec_kept[r + j] = cand ? mark[j - lo] : 1;
        if (!cand) {
            st->rec_raw[r + j] = NAN;
        }
    }
    st->rec_n[i] = live;
    int32_t * keep = st->keep + i * st->cap;
    const int32_t n = tri_kv_keep_list(st->lo[i], st->hi[i], c->n_live[tri_kv_index(c, il, h)], mark, keep);
    tri_kv_compact(c, il, h, keep, n);
}

/* agg[0..n) += lookw x z-score of the SnapKV signal that the first pass's last queries of layer il (the G heads
 * of KV head h) give the candidates [lo, lo + n) of (il, h). */
static void tri_ta_add_look(const tri_ta_state * st, const tri_kv_cache * c, int il, int h, int32_t lo, int32_t n,
                            float * agg, float * tmp) {
    const int W = TRI_SNAPKV_WINDOW, G = st->G, D = st->D;
    float * q = tmp, * term = q + (size_t) W * G * D, * work = term + st->cap;
    const size_t row = (size_t) st->H * D;
    for (int t = 0; t < st->qa_n; t++) {
        memcpy(q + (size_t) t * G * D, st->qa + ((size_t) il * W + t) * row + (size_t) h * G * D,
               sizeof(float) * G * D);
    }
    /* the kernel scores keys [0, n_keys - nq): pass the candidates followed by nq keys it does not read */
    tri_snapkv_scores(&st->kr, D, G, q, st->qa_n, tri_kv_k(c, il, h) + (size_t) lo * D, n + st->qa_n, term, work);
    tri_triattn_zscore(term, n);
    for (int32_t j = 0; j < n; j++) {
        agg[j] += st->opts.lookw * term[j];
    }
}

/* Phase A, per (layer, KV head): scores of its G query heads, z-score per head, GQA max. In
 * per_layer_per_head mode also the top-k and the compaction. */
static void tri_ta_score_worker(void * arg, int ith, int nth) {
    tri_ta_task * t = arg;
    tri_ta_state * st = t->st;
    tri_kv_cache * c = t->c;
    long i0, i1;
    tri_split((long) st->L * st->Hkv, ith, nth, &i0, &i1);
    for (long i = i0; i < i1; i++) {
        const int il = (int) (i / st->Hkv), h = (int) (i % st->Hkv);
        const int32_t lo = st->lo[i], n = st->hi[i] - lo;
        float * agg = st->agg + (size_t) i * st->cap;
        if (n <= 0) {
            continue;
        }
        const size_t row0 = (size_t) il * st->H + (size_t) h * st->G;
        float * s = st->scores + row0 * st->cap;
        st->score(st->D, st->R, st->pairing, st->G, st->w + row0 * st->D, st->cw + row0 * st->D,
                  tri_kv_k(c, il, h) + (size_t) lo * st->D, n, s, st->cap);
        float * raw = st->rec_raw + (size_t) i * st->cap + lo;
        memcpy(raw, s, sizeof(float) * n);
        for (int g = 1; g < st->G; g++) {
            for (int32_t j = 0; j < n; j++) {
                raw[j] = s[(size_t) g * st->cap + j] > raw[j] ? s[(size_t) g * st->cap + j] : raw[j];
            }
        }
        for (int g = 0; g < st->G; g++) {
            tri_triattn_zscore(s + (size_t) g * st->cap, n);
        }
        memcpy(agg, s, sizeof(float) * n);
        for (int g = 1; g < st->G; g++) {
            const float * sg = s + (size_t) g * st->cap;
            for (int32_t j = 0; j < n; j++) {
                agg[j] = sg[j] > agg[j] ? sg[j] : agg[j];
            }
        }
        if (st->qa_n > 0 && st->qa_epoch == c->epoch) {
            tri_ta_add_look(st, c, il, h, lo, n, agg, st->look_tmp + (size_t) ith * st->look_per_thread);
        }
        if (st->mode == TRI_TA_PER_LAYER_PER_HEAD) {
            uint8_t * mark = st->mark + (size_t) i * st->cap;
            tri_triattn_topk(agg, n, st->k[i], st->sel + (size_t) i * st->cap, mark);
            tri_ta_compact_one(st, c, il, h, mark, agg);
        }
    }
}

/* Phase C: compaction of every (layer, KV head) with the marks of its KV head (or the global marks). */
static void tri_ta_compact_worker(void * arg, int ith, int nth) {
    tri_ta_task * t = arg;
    tri_ta_state * st = t->st;
    long i0, i1;
    tri_split((long) st->L * st->Hkv, ith, nth, &i0, &i1);
    for (long i = i0; i < i1; i++) {
        const int il = (int) (i / st->Hkv), h = (int) (i % st->Hkv);
        if (st->hi[i] - st->lo[i] <= 0) {
            continue;
        }
        const int group = st->mode == TRI_TA_GLOBAL ? 0 : h;
        tri_ta_compact_one(st, t->c, il, h, st->mark + (size_t) group * st->cap, st->mean + (size_t) group * st->cap);
    }
}

static enum triattn_status tri_ta_compress(tri_kv_policy * p, tri_kv_cache * c, int32_t next_pos, char * err,
                                           size_t en) {
    tri_ta_state * st = p->state;
    if (!st) {
        return tri_fail(err, en, TRIATTN_ERR_INTERNAL, "triattention policy used before init");
    }
    const int LK = st->L * st->Hkv;
    int64_t evicted = 0;
    const bool any = tri_kv_plan(p, c, st->window, st->lo, st->hi, st->k, &evicted);
    if (!any) {
        return TRIATTN_OK;
    }
    /* Sliding-window layers are bounded by their window and have no candidates; the first layer without a
     * window is the reference of the shared keep sets. */
    int l0 = 0, n_managed = 0;
    while (l0 < st->L && tri_kv_windowed(c, l0)) {
        l0++;
    }
    for (int il = 0; il < st->L; il++) {
        n_managed += tri_kv_windowed(c, il) ? 0 : st->Hkv;
    }
    if (st->mode != TRI_TA_PER_LAYER_PER_HEAD) {
        /* Shared keep sets need the same candidate range in every member (true by construction). */
        for (int i = 0; i < LK; i++) {
            const int ref = l0 * st->Hkv + (st->mode == TRI_TA_GLOBAL ? 0 : i % st->Hkv);
            if (tri_kv_windowed(c, i / st->Hkv)) {
                continue;
            }
            if (st->lo[i] != st->lo[ref] || st->hi[i] != st->hi[ref]) {
                return tri_fail(err, en, TRIATTN_ERR_INTERNAL,
                                "triattention: (layer %d, KV head %d) holds other tokens than its group", i / st->Hkv,
                                i % st->Hkv);
            }
        }
    }

    memset(st->rec_n, 0, sizeof(int32_t) * LK);

    /* Synthetic queries of the round at the absolute position of the next token. */
    const tri_centres * ce = p->model->centres;
    tri_triattn_phase_n(st->F, st->omega, (double) next_pos, st->opts.n_offsets, st->a_re, st->a_im);
    for (size_t r = 0; r < (size_t) st->L * st->H; r++) {
        const size_t o = r * st->F;
        float * w = st->w + r * st->D, * cw = st->cw + r * st->D;
        tri_triattn_query(st->R, st->pairing, ce->q_re + o, ce->q_im + o, ce->q_abs + o, st->a_re, st->a_im, 1.0, w,
                          cw);
        for (int d = 0; d < st->R; d++) {
            w[d] *= st->opts.trig;
            cw[d] *= st->opts.norm;
        }
    }

    tri_ta_task task = { p, c, st };
    tri_threadpool_run(p->tp, tri_ta_score_worker, &task);

    if (st->mode != TRI_TA_PER_LAYER_PER_HEAD) {
        const int n_groups = st->mode == TRI_TA_GLOBAL ? 1 : st->Hkv;
        const int per_group = n_managed / n_groups;
        for (int gi = 0; gi < n_groups; gi++) {
            const int32_t n = st->hi[l0 * st->Hkv + gi] - st->lo[l0 * st->Hkv + gi];
            float * mean = st->mean + (size_t) gi * st->cap;
            const bool mx = st->opts.layer_max;
            for (int32_t j = 0; j < n; j++) {
                mean[j] = mx ? -INFINITY : 0.0f;
            }
            for (int i = 0; i < LK; i++) {
                if (tri_kv_windowed(c, i / st->Hkv)) {
                    continue;
                }
                if (st->mode == TRI_TA_GLOBAL || i % st->Hkv == gi) {
                    const float * a = st->agg + (size_t) i * st->cap;
                    for (int32_t j = 0; j < n; j++) {
                        mean[j] = mx ? (a[j] > mean[j] ? a[j] : mean[j]) : mean[j] + a[j];
                    }
                }
            }
            const float inv = mx ? 1.0f : 1.0f / (float) per_group;
            for (int32_t j = 0; j < n; j++) {
                mean[j] *= inv;
            }
            tri_triattn_topk(mean, n, st->k[l0 * st->Hkv + gi], st->sel + (size_t) gi * st->cap,
                             st->mark + (size_t) gi * st->cap);
        }
        tri_threadpool_run(p->tp, tri_ta_compact_worker, &task);
    }
    p->n_compressions++;
    p->n_evicted += evicted / TRI_MAX(n_managed, 1);
    return TRIATTN_OK;
}

static int32_t tri_ta_lookahead_tokens(const tri_kv_policy * p, int32_t n) {
    const tri_ta_state * st = p->state;
    if (!st || st->opts.look <= 0 || n < (int64_t) p->cfg.budget + p->cfg.interval) {
        return 0; /* off, or a prompt that is not compressed */
    }
    return TRI_MIN(n, st->opts.look);
}

static void tri_ta_lookahead_capture(tri_kv_policy * p, const tri_kv_cache * c) {
    tri_ta_state * st = p->state;
    const int W = TRI_SNAPKV_WINDOW;
    const size_t row = (size_t) st->H * st->D;
    st->qa_n = 0;
    if (!st->qa || c->q_cap < W) {
        return;
    }
    int nq = W;
    for (int il = 0; il < st->L; il++) {
        nq = (int) TRI_MIN((int64_t) nq, c->q_count[il]);
    }
    for (int il = 0; il < st->L && nq > 0; il++) {
        for (int t = 0; t < nq; t++) {
            const int64_t idx = c->q_count[il] - nq + t;
            memcpy(st->qa + ((size_t) il * W + t) * row, c->q + ((size_t) il * c->q_cap + (size_t) (idx % c->q_cap)) * c->q_dim,
                   sizeof(float) * row);
        }
    }
    st->qa_n = nq;
    st->qa_epoch = c->epoch + 1; /* the session clears the cache once before the second pass */
}

/* Saved state: i32 n (queries per layer, 0..W), then f32 [L][n][H * D]; only queries of the current epoch. */
static size_t tri_ta_state_save(const tri_kv_policy * p, const tri_kv_cache * c, void * dst) {
    const tri_ta_state * st = p->state;
    if (!st || !st->qa) {
        return 0;
    }
    const int32_t nq = st->qa_epoch == c->epoch ? st->qa_n : 0;
    const size_t row = (size_t) st->H * st->D, layer = sizeof(float) * (size_t) nq * row;
    if (dst) {
        memcpy(dst, &nq, sizeof nq);
        for (int il = 0; il < st->L; il++) {
            memcpy((char *) dst + sizeof nq + il * layer, st->qa + (size_t) il * TRI_SNAPKV_WINDOW * row, layer);
        }
    }
    return sizeof nq + st->L * layer;
}

static size_t tri_ta_state_max(const tri_kv_policy * p) {
    const tri_ta_state * st = p->state;
    return st && st->qa ? sizeof(int32_t) + sizeof(float) * (size_t) st->L * TRI_SNAPKV_WINDOW * st->H * st->D : 0;
}

static bool tri_ta_state_load(tri_kv_policy * p, const tri_kv_cache * c, const void * src, size_t n, bool check_only) {
    tri_ta_state * st = p->state;
    int32_t nq = 0;
    if (n > 0) {
        if (!st || !st->qa || n < sizeof nq) {
            return false;
        }
        memcpy(&nq, src, sizeof nq);
    }
    const size_t row = n > 0 ? (size_t) st->H * st->D : 0;
    if (nq < 0 || nq > TRI_SNAPKV_WINDOW || (n > 0 && n != sizeof nq + sizeof(float) * (size_t) st->L * nq * row)) {
        return false;
    }
    const float * q = (const float *) ((const char *) src + sizeof nq);
    for (size_t i = 0; n > 0 && i < (size_t) st->L * nq * row; i++) {
        float v;
        memcpy(&v, q + i, sizeof v);
        if (!isfinite(v)) {
            return false;
        }
    }
    if (check_only || !st) {
        return true;
    }
    for (int il = 0; il < st->L && nq > 0; il++) {
        memcpy(st->qa + (size_t) il * TRI_SNAPKV_WINDOW * row, q + (size_t) il * nq * row, sizeof(float) * nq * row);
    }
    st->qa_n = nq;
    st->qa_epoch = c->epoch;
    return true;
}

const tri_kv_policy_ops tri_kv_policy_triattention = {
    .name              = "triattention",
    .capacity          = tri_kv_slack_capacity,
    .should_compress   = tri_kv_slack_should_compress,
    .compress          = tri_ta_compress,
    .init              = tri_ta_init,
    .free              = tri_ta_free,
    .lookahead_tokens  = tri_ta_lookahead_tokens,
    .lookahead_capture = tri_ta_lookahead_capture,
    .state_save        = tri_ta_state_save,
    .state_max         = tri_ta_state_max,
    .state_load        = tri_ta_state_load,
};

enum triattn_status tri_triattn_last_scores(const tri_kv_policy * p, int il, int h, int32_t * pos, float * raw,
                                            float * agg, uint8_t * kept, int32_t capacity, int32_t * n_out) {
    const tri_ta_state * st = p->state;
    if (!st || p->ops != &tri_kv_policy_triattention) {
        return TRIATTN_ERR_UNSUPPORTED;
    }
    const size_t i = (size_t) il * st->Hkv + h, r = i * st->cap;
    const int32_t n = st->rec_n[i], m = TRI_MIN(n, capacity);
    const size_t mm = (size_t) TRI_MAX(m, 0);
    if (pos) {
        memcpy(pos, st->rec_pos + r, sizeof(int32_t) * mm);
    }
    if (raw) {
        memcpy(raw, st->rec_raw + r, sizeof(float) * mm);
    }
    if (agg) {
        memcpy(agg, st->rec_agg + r, sizeof(float) * mm);
    }
    if (kept) {
        memcpy(kept, st->rec_kept + r, mm);
    }
    *n_out = n;
    return TRIATTN_OK;
}
