/* Baseline KV policies of docs/triattention.md §6: `streaming`, `random`, `h2o`, `snapkv`, `rkv`, and
 * `snapkv_prompt` (SnapKV as its paper runs it: the whole prompt prefilled, then one selection with the
 * prompt's own last w queries; it needs n_ctx slots, not budget + interval).
 *
 * They share the TriAttention schedule (capacity budget + interval, compress back to budget when live slots
 * reach budget + interval) and its protections (sink, recent window, a short prompt kept whole: tri_kv_plan).
 * Each (layer, KV head) keeps its own token set; kept slots stay in increasing position order. The
 * attention-based ones read the post-RoPE queries the forward pass pushes into the cache's query ring.
 * All scratch is allocated once in init; rounds run over (layer, KV head) on the session's threads. */
#include "calibration.h"
#include "common.h"
#include "platform.h"
#include "kv_cache.h"
#include "kv_select.h"
#include "model.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

enum tri_bl_kind { TRI_BL_STREAMING, TRI_BL_RANDOM, TRI_BL_H2O, TRI_BL_SNAPKV, TRI_BL_RKV, TRI_BL_SNAPKV_PROMPT };

#define TRI_RKV_LAMBDA   0.1f  /* score = lambda * A - (1 - lambda) * redundancy */
#define TRI_RKV_DUP_COS  0.5f  /* near-duplicate threshold of the redundancy rows */
#define TRI_RKV_BLOCK    64    /* keys per kernel call in the near-duplicate scan */

typedef struct tri_bl_state {
    enum tri_bl_kind kind;
    int32_t L, H, Hkv, G, D, cap, LK;
    int32_t window;             /* protected recent tokens (resolved; >= w for snapkv / rkv) */
    int     n_threads;
    tri_attn_kernels kr;
    uint64_t seed;              /* random: resolved seed */
    uint64_t round;             /* random: rounds since the cache was last cleared */
    uint64_t epoch;             /* cache epoch the per-slot state belongs to */
    uint64_t moved;             /* the cache's rearrangement count the per-slot state belongs to */
    int32_t * lo, * hi, * k;    /* [LK] candidate range and slots to keep of the round */
    float *   acc;              /* h2o: [LK][cap] attention received by each slot so far */
    int32_t * acc_n;            /* h2o: [LK] leading slots whose accumulator is valid */
    int64_t * q_done;           /* h2o: [L] queries of the ring already accumulated */
    size_t    per_thread;       /* bytes of one thread's scratch */
    char *    scratch;          /* [n_threads][per_thread] */
    void *    mem;
} tri_bl_state;

/* One thread's scratch, carved from st->scratch by tri_bl_carve. */
typedef struct tri_bl_tmp {
    float * score;              /* cap: candidate scores */
    float * a;                  /* cap: SnapKV signal of the keys before the observation window */
    float * red;                /* cap: R-KV redundancy */
    float * work;               /* the scoring kernels' scratch */
    float * q;                  /* w * G * D: window queries of one KV head */
    tri_triattn_cand * sel;     /* cap */
    uint8_t * mark;             /* cap */
    int32_t * keep;             /* cap */
} tri_bl_tmp;

static size_t tri_bl_al(size_t n) {
    return (n + 63) & ~(size_t) 63;
}

/* ---- scoring kernels (declared in kv_select.h for the tests) -------------------------------------- */

size_t tri_snapkv_scratch(int32_t n, int G) {
    return (size_t) (G + 1) * (size_t) TRI_MAX(n, 1);
}

void tri_snapkv_scores(const tri_attn_kernels * kr, int D, int G, const float * q, int nq, const tri_fp16 * K,
                       int32_t n, float * out, float * scratch) {
    const int32_t m = n - nq;   /* keys before the observation window */
    if (m <= 0) {
        return;
    }
    float * mean = scratch;     /* m */
    float * s = scratch + m;    /* G x m logits, row 0 then holds the GQA max */
    memset(mean, 0, sizeof(float) * m);
    if (nq <= 0) {
        memset(out, 0, sizeof(float) * m);
        return;
    }
    const float scale = 1.0f / sqrtf((float) D), inv_q = 1.0f / (float) nq;
    for (int t = 0; t < nq; t++) {
        kr->scores(D, G, q + (size_t) t * G * D, K, m, scale, s, m);
        float mx = -INFINITY;
        for (int32_t j = 0; j < m; j++) {
            float v = s[j];
            for (int g = 1; g < G; g++) {
                v = s[(size_t) g * m + j] > v ? s[(size_t) g * m + j] : v;
            }
            s[j] = v;
            mx = v > mx ? v : mx;
        }
        const float sum = kr->exp_sum(s, m, mx);
        const float w = sum > 0.0f ? inv_q / sum : 0.0f;
        for (int32_t j = 0; j < m; j++) {
            mean[j] += s[j] * w;
        }
    }
    const int r = TRI_SNAPKV_POOL / 2;
    for (int32_t j = 0; j < m; j++) {
        const int32_t a = TRI_MAX(0, j - r), b = TRI_MIN(m - 1, j + r);
        float v = mean[a];
        for (int32_t i = a + 1; i <= b; i++) {
            v = mean[i] > v ? mean[i] : v;
        }
        out[j] = v;
    }
}

size_t tri_rkv_scratch(int32_t n, int D) {
    return (size_t) TRI_MAX(n, 1) * (D + 1) + TRI_RKV_BLOCK + (size_t) D;
}

void tri_rkv_redundancy(const tri_attn_kernels * kr, int D, const tri_fp16 * K, int32_t n, float * out,
                        float * scratch) {
    if (n <= 0) {
        return;
    }
    float * kf = scratch;                           /* n x D: the keys in F32 */
    float * inv = kf + (size_t) n * D;              /* n: 1 / (|k_j| + 1e-8) */
    float * s = inv + n;                            /* TRI_RKV_BLOCK dot products */
    float * sum = s + TRI_RKV_BLOCK;                /* D: sum of the normalised keys */
    tri_type_traits_get(TRI_TYPE_F16)->to_float(K, kf, (int64_t) n * D);
    memset(sum, 0, sizeof(float) * D);
    for (int32_t j = 0; j < n; j++) {
        const float * k = kf + (size_t) j * D;
        float sq = 0.0f;
        for (int d = 0; d < D; d++) {
            sq += k[d] * k[d];
        }
        inv[j] = 1.0f / (sqrtf(sq) + 1e-8f);
        for (int d = 0; d < D; d++) {
            sum[d] += k[d] * inv[j];
        }
    }
    /* Column sums without the diagonal: sum_{i != j} cos_ij = khat_j · sum_i khat_i - |khat_j|^2, O(n D). */
    for (int32_t j = 0; j < n; j++) {
        const float * k = kf + (size_t) j * D;
        float dot = 0.0f, sq = 0.0f;
        for (int d = 0; d < D; d++) {
            dot += k[d] * sum[d];
            sq += k[d] * k[d];
        }
        out[j] = inv[j] * dot - sq * inv[j] * inv[j];
    }
    /* Each row drops its most recent near-duplicate: scan from the newest key down, stop at the first hit
     * (on real keys a hit comes within ~100 keys, so this is far below n^2). */
    for (int32_t i = 0; i < n; i++) {
        const float * ki = kf + (size_t) i * D;
        bool found = false;
        for (int32_t j1 = n; j1 > 0 && !found; j1 -= TRI_RKV_BLOCK) {
            const int32_t j0 = TRI_MAX(0, j1 - TRI_RKV_BLOCK);
            kr->scores(D, 1, ki, K + (size_t) j0 * D, j1 - j0, 1.0f, s, j1 - j0);
            for (int32_t j = j1 - 1; j >= j0; j--) {
                const float c = s[j - j0] * inv[i] * inv[j];
                if (j != i && c > TRI_RKV_DUP_COS) {
                    out[j] -= c;
                    found = true;
                    break;
                }
            }
        }
    }
    /* softmax over keys of the row mean */
    const float inv_n = 1.0f / (float) n;
    float mx = -INFINITY;
    for (int32_t j = 0; j < n; j++) {
        out[j] *= inv_n;
        mx = out[j] > mx ? out[j] : mx;
    }
    const float total = kr->exp_sum(out, n, mx);
    const float r = 1.0f / total;
    for (int32_t j = 0; j < n; j++) {
        out[j] *= r;
    }
}

/* ---- policy ------------------------------------------------------------------------------------- */

static void tri_bl_free(tri_kv_policy * p) {
    tri_bl_state * st = p->state;
    if (st) {
        tri_aligned_free(st->mem);
        free(st);
    }
    p->state = NULL;
}

static uint64_t tri_bl_mix(uint64_t * x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Lays out one thread's scratch at base (NULL: only measures); returns its size in bytes. */
static size_t tri_bl_carve(const tri_bl_state * st, char * base, tri_bl_tmp * t) {
    const size_t cap = (size_t) st->cap;
    const bool attn = st->kind == TRI_BL_SNAPKV || st->kind == TRI_BL_RKV || st->kind == TRI_BL_SNAPKV_PROMPT;
    size_t work = 0;
    if (st->kind == TRI_BL_H2O) {
        work = (size_t) st->G * cap;
    } else if (attn) {
        work = TRI_MAX(tri_snapkv_scratch(st->cap, st->G), tri_rkv_scratch(st->cap, st->D));
    }
    struct { void ** p; size_t bytes; } parts[] = {
        { t ? (void **) &t->score : NULL, sizeof(float) * cap },
        { t ? (void **) &t->a : NULL,     attn ? sizeof(float) * cap : 0 },
        { t ? (void **) &t->red : NULL,   st->kind == TRI_BL_RKV ? sizeof(float) * cap : 0 },
        { t ? (void **) &t->work : NULL,  sizeof(float) * work },
        { t ? (void **) &t->q : NULL,     attn ? sizeof(float) * TRI_SNAPKV_WINDOW * st->G * st->D : 0 },
        { t ? (void **) &t->sel : NULL,   sizeof(tri_triattn_cand) * cap },
        { t ? (void **) &t->mark : NULL,  cap },
        { t ? (void **) &t->keep : NULL,  sizeof(int32_t) * cap },
    };
    size_t off = 0;
    for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++) {
        if (t) {
            *parts[i].p = parts[i].bytes ? base + off : NULL;
        }
        off += tri_bl_al(parts[i].bytes);
    }
    return off;
}

static enum triattn_status tri_bl_init(tri_kv_policy * p, tri_kv_cache * c, enum tri_bl_kind kind, char * err,
                                       size_t n) {
    const struct triattn_model * m = p->model;
    if (!m) {
        return tri_fail(err, n, TRIATTN_ERR_INTERNAL, "kv policy '%s': no model", p->ops->name);
    }
    tri_bl_state * st = calloc(1, sizeof *st);
    if (!st) {
        return tri_fail(err, n, TRIATTN_ERR_OOM, "out of memory");
    }
    p->state = st;
    const tri_hparams * hp = &m->hp;
    st->kind = kind;
    st->L = hp->n_layer;
    st->H = hp->n_head;
    st->Hkv = hp->n_head_kv;
    st->G = hp->n_head / hp->n_head_kv;
    st->D = hp->head_dim;
    st->cap = c->capacity;
    st->LK = st->L * st->Hkv;
    st->window = p->cfg.window < 0 ? TRI_KV_DEFAULT_WINDOW : p->cfg.window;
    const bool attn = kind == TRI_BL_SNAPKV || kind == TRI_BL_RKV || kind == TRI_BL_SNAPKV_PROMPT;
    if (attn) {
        /* As in the SnapKV and R-KV papers: only the observation window is protected, unless configured. */
        st->window = p->cfg.window < 0 ? TRI_SNAPKV_WINDOW : TRI_MAX(p->cfg.window, TRI_SNAPKV_WINDOW);
    }
    st->n_threads = p->tp ? tri_threadpool_size(p->tp) : 1;
    st->kr = tri_attn_kernels_get(TRI_ISA_COUNT);
    st->epoch = c->epoch;
    if (kind == TRI_BL_RANDOM) {
        uint64_t x = p->cfg.seed;
        if (x == UINT64_MAX) {
            x = (uint64_t) (tri_time_ms() * 1e6) ^ ((uint64_t) (uintptr_t) st << 16);
        }
        st->seed = tri_bl_mix(&x);
    }

    /* Query ring: h2o needs every query since the previous round (at most `interval` of them), snapkv and
     * rkv the last w. */
    if (kind == TRI_BL_H2O || attn) {
        const int32_t q_cap = kind == TRI_BL_H2O ? TRI_MAX(p->cfg.interval, TRI_SNAPKV_WINDOW) : TRI_SNAPKV_WINDOW;
        enum triattn_status s = tri_kv_cache_enable_queries(c, q_cap, st->H * st->D, err, n);
        if (s != TRIATTN_OK) {
            return s;
        }
    }

    const size_t LK = (size_t) st->LK, cap = (size_t) st->cap;
    st->per_thread = tri_bl_carve(st, NULL, NULL);
    const bool h2o = kind == TRI_BL_H2O;
    struct { void ** p; size_t bytes; } parts[] = {
        { (void **) &st->lo,      sizeof(int32_t) * LK },
        { (void **) &st->hi,      sizeof(int32_t) * LK },
        { (void **) &st->k,       sizeof(int32_t) * LK },
        { (void **) &st->acc,     h2o ? sizeof(float) * LK * cap : 0 },
        { (void **) &st->acc_n,   h2o ? sizeof(int32_t) * LK : 0 },
        { (void **) &st->q_done,  h2o ? sizeof(int64_t) * st->L : 0 },
        { (void **) &st->scratch, st->per_thread * st->n_threads },
    };
    size_t total = 0;
    for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++) {
        total += tri_bl_al(parts[i].bytes);
    }
    st->mem = tri_aligned_alloc(64, total);
    if (!st->mem) {
        return tri_fail(err, n, TRIATTN_ERR_OOM, "cannot allocate %.1f MiB of '%s' scratch", total / 1048576.0,
                        p->ops->name);
    }
    memset(st->mem, 0, total);
    char * q = st->mem;
    for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++) {
        *parts[i].p = parts[i].bytes ? q : NULL;
        q += tri_bl_al(parts[i].bytes);
    }
    return TRIATTN_OK;
}


typedef struct tri_bl_task {
    tri_kv_policy * p;
    tri_kv_cache *  c;
    tri_bl_state *  st;
} tri_bl_task;

/* h2o: adds the attention of the queries pushed since the previous round to the slots of (il, h). Query t at
 * position q_pos sees the live keys at positions <= q_pos (exactly the keys it attended to: nothing was evicted
 * since it ran), softmax per query head with scale 1/sqrt(D), summed over the group's G heads. */
static void tri_h2o_accumulate(tri_bl_state * st, const tri_kv_cache * c, int il, int h, float * s) {
    const size_t i = (size_t) il * st->Hkv + h;
    const int32_t live = c->n_live[tri_kv_index(c, il, h)];
    float * acc = st->acc + i * st->cap;
    for (int32_t j = st->acc_n[i]; j < live; j++) {
        acc[j] = 0.0f; /* slots appended since the previous round */
    }
    st->acc_n[i] = live;
    const int64_t count = c->q_count[il];
    /* The ring holds the last q_cap queries only: when more tokens arrived since the previous round (the
     * first round after a prompt longer than the ring), only the most recent ones are counted. */
    const int64_t first = TRI_MAX(st->q_done[il], count - c->q_cap);
    const int32_t * pos = tri_kv_pos(c, il, h);
    const tri_fp16 * K = tri_kv_k(c, il, h);
    const int D = st->D, G = st->G;
    const float scale = 1.0f / sqrtf((float) D);
    for (int64_t t = first; t < count; t++) {
        const size_t e = (size_t) il * c->q_cap + (size_t) (t % c->q_cap);
        const int32_t nv = tri_kv_count_upto(pos, live, c->q_pos[e]);
        if (nv <= 0) {
            continue;
        }
        const float * q = c->q + e * c->q_dim + (size_t) h * G * D;
        st->kr.scores(D, G, q, K, nv, scale, s, nv);
        for (int g = 0; g < G; g++) {
            float * sg = s + (size_t) g * nv;
            float mx = -INFINITY;
            for (int32_t j = 0; j < nv; j++) {
                mx = sg[j] > mx ? sg[j] : mx;
            }
            const float sum = st->kr.exp_sum(sg, nv, mx);
            const float r = sum > 0.0f ? 1.0f / sum : 0.0f;
            for (int32_t j = 0; j < nv; j++) {
                acc[j] += sg[j] * r;
            }
        }
    }
}

/* Scores of the candidates [lo, hi) of (il, h) into t->score[0 .. hi - lo): higher = keep. */
static void tri_bl_score(tri_bl_state * st, const tri_kv_cache * c, int il, int h, int32_t lo, int32_t hi,
                         const tri_bl_tmp * t) {
    const int32_t live = c->n_live[tri_kv_index(c, il, h)];
    const size_t i = (size_t) il * st->Hkv + h;
    if (st->kind == TRI_BL_H2O) {
        memcpy(t->score, st->acc + i * st->cap + lo, sizeof(float) * (hi - lo));
        return;
    }
    /* snapkv / rkv: the last nq live slots are the observation window's own keys */
    const tri_fp16 * K = tri_kv_k(c, il, h);
    const int nq = TRI_MIN(tri_kv_window_queries(c, il, h, st->G, st->D, t->q), live);
    const int32_t m = live - nq;
    tri_snapkv_scores(&st->kr, st->D, st->G, t->q, nq, K, live, t->a, t->work);
    if (st->kind == TRI_BL_RKV) {
        tri_rkv_redundancy(&st->kr, st->D, K, live, t->red, t->work);
    }
    for (int32_t j = lo; j < hi; j++) {
        float v = INFINITY; /* window keys (only when the window is clamped below w) are kept first */
        if (j < m) {
            v = st->kind == TRI_BL_RKV ? TRI_RKV_LAMBDA * t->a[j] - (1.0f - TRI_RKV_LAMBDA) * t->red[j] : t->a[j];
        }
        t->score[j - lo] = v;
    }
}

/* random: k of the n candidates, uniformly, from a stream fixed by (seed, round, layer and KV head). */
static void tri_bl_random_marks(const tri_bl_state * st, size_t i, int32_t n, int32_t k, const tri_bl_tmp * t) {
    uint64_t x = st->seed + st->round * 0xd1b54a32d192ed03ull + (uint64_t) i * 0x8cb92ba72f3d8dd7ull;
    int32_t * idx = t->keep; /* free until the keep list is built */
    for (int32_t j = 0; j < n; j++) {
        idx[j] = j;
    }
    memset(t->mark, 0, (size_t) n);
    for (int32_t r = 0; r < k; r++) {
        const uint64_t span = (uint64_t) (n - r);
        const int32_t u = r + (int32_t) (((unsigned __int128) tri_bl_mix(&x) * span) >> 64);
        const int32_t tmp = idx[r];
        idx[r] = idx[u];
        idx[u] = tmp;
        t->mark[idx[r]] = 1;
    }
}

static void tri_bl_worker(void * arg, int ith, int nth) {
    tri_bl_task * task = arg;
    tri_bl_state * st = task->st;
    tri_kv_cache * c = task->c;
    tri_bl_tmp t;
    tri_bl_carve(st, st->scratch + (size_t) ith * st->per_thread, &t);
    long i0, i1;
    tri_split(st->LK, ith, nth, &i0, &i1);
    for (long i = i0; i < i1; i++) {
        const int il = (int) (i / st->Hkv), h = (int) (i % st->Hkv);
        if (tri_kv_windowed(c, il)) {
            continue; /* bounded by its window, never compressed */
        }
        if (st->kind == TRI_BL_H2O) {
            tri_h2o_accumulate(st, c, il, h, t.work);
        }
        const int32_t lo = st->lo[i], hi = st->hi[i], k = st->k[i], n = hi - lo;
        if (n <= k) {
            continue;
        }
        switch (st->kind) {
            case TRI_BL_STREAMING: /* the most recent candidates */
                memset(t.mark, 0, (size_t) (n - k));
                memset(t.mark + (n - k), 1, (size_t) k);
                break;
            case TRI_BL_RANDOM:
                tri_bl_random_marks(st, (size_t) i, n, k, &t);
                break;
            default:
                tri_bl_score(st, c, il, h, lo, hi, &t);
                tri_triattn_topk(t.score, n, k, t.sel, t.mark);
                break;
        }
        const int32_t n_keep = tri_kv_keep_list(lo, hi, c->n_live[i], t.mark, t.keep);
        if (st->kind == TRI_BL_H2O) {
            float * acc = st->acc + (size_t) i * st->cap;
            for (int32_t x = 0; x < n_keep; x++) {
                acc[x] = acc[t.keep[x]];
            }
            st->acc_n[i] = n_keep;
        }
        tri_kv_compact(c, il, h, t.keep, n_keep);
    }
}

static enum triattn_status tri_bl_compress(tri_kv_policy * p, tri_kv_cache * c, int32_t next_pos, char * err,
                                           size_t en) {
    tri_bl_state * st = p->state;
    if (!st) {
        return tri_fail(err, en, TRIATTN_ERR_INTERNAL, "kv policy '%s' used before init", p->ops->name);
    }
    if (c->epoch != st->epoch) { /* the cache was cleared: per-slot state starts over */
        st->epoch = c->epoch;
        st->round = 0;
        if (st->kind == TRI_BL_H2O) {
            memset(st->acc_n, 0, sizeof(int32_t) * st->LK);
            memset(st->q_done, 0, sizeof(int64_t) * st->L);
        }
    }
    if (c->moved != st->moved) { /* slots were rearranged (a recall): the accumulators no longer match them */
        st->moved = c->moved;
        if (st->kind == TRI_BL_H2O) {
            memset(st->acc_n, 0, sizeof(int32_t) * st->LK);
        }
    }
    int64_t evicted = 0;
    const bool any = tri_kv_plan(p, c, st->window, st->lo, st->hi, st->k, &evicted);
    if (!any && st->kind != TRI_BL_H2O) {
        return TRIATTN_OK;
    }
    tri_bl_task task = { p, c, st };
    if (p->tp) {
        tri_threadpool_run(p->tp, tri_bl_worker, &task);
    } else {
        tri_bl_worker(&task, 0, 1);
    }
    if (st->kind == TRI_BL_H2O) {
        for (int il = 0; il < st->L; il++) {
            st->q_done[il] = c->q_count[il];
        }
    }
    if (any) {
        p->n_compressions++;
        int32_t managed = 0; /* (layer, KV head) pairs without a sliding window */
        for (int il = 0; il < st->L; il++) {
            managed += tri_kv_windowed(c, il) ? 0 : st->Hkv;
        }
        p->n_evicted += evicted / TRI_MAX(managed, 1);
        st->round++;
    }
    return TRIATTN_OK;
}

static enum triattn_status tri_bl_init_streaming(tri_kv_policy * p, tri_kv_cache * c, char * err, size_t n) {
    return tri_bl_init(p, c, TRI_BL_STREAMING, err, n);
}
static enum triattn_status tri_bl_init_random(tri_kv_policy * p, tri_kv_cache * c, char * err, size_t n) {
    return tri_bl_init(p, c, TRI_BL_RANDOM, err, n);
}
static enum triattn_status tri_bl_init_h2o(tri_kv_policy * p, tri_kv_cache * c, char * err, size_t n) {
    return tri_bl_init(p, c, TRI_BL_H2O, err, n);
}
static enum triattn_status tri_bl_init_snapkv(tri_kv_policy * p, tri_kv_cache * c, char * err, size_t n) {
    return tri_bl_init(p, c, TRI_BL_SNAPKV, err, n);
}
static enum triattn_status tri_bl_init_rkv(tri_kv_policy * p, tri_kv_cache * c, char * err, size_t n) {
    return tri_bl_init(p, c, TRI_BL_RKV, err, n);
}
static enum triattn_status tri_bl_init_snapkv_prompt(tri_kv_policy * p, tri_kv_cache * c, char * err, size_t n) {
    return tri_bl_init(p, c, TRI_BL_SNAPKV_PROMPT, err, n);
}

/* snapkv_prompt: room for the whole context, so the prompt is prefilled in one piece. */
static int32_t tri_bl_prompt_capacity(const tri_kv_policy_cfg * cfg) {
    return TRI_MAX(cfg->n_ctx, tri_kv_slack_capacity(cfg));
}

/* snapkv_prompt: no round before the prompt's last token is in the cache; then the slack trigger. */
static bool tri_bl_prompt_should_compress(const tri_kv_policy * p, const tri_kv_cache * c) {
    const int32_t live = c->n_live[0];
    if (p->n_prompt > 0 && (live == 0 || tri_kv_pos(c, 0, 0)[live - 1] + 1 < p->n_prompt)) {
        return false;
    }
    return tri_kv_slack_should_compress(p, c);
}

#define TRI_BL_OPS(var, str, init_fn)                                                                            \
    const tri_kv_policy_ops var = { .name = str, .capacity = tri_kv_slack_capacity,                              \
                                    .should_compress = tri_kv_slack_should_compress, .compress = tri_bl_compress, \
                                    .init = init_fn, .free = tri_bl_free }

TRI_BL_OPS(tri_kv_policy_streaming, "streaming", tri_bl_init_streaming);
TRI_BL_OPS(tri_kv_policy_random, "random", tri_bl_init_random);
TRI_BL_OPS(tri_kv_policy_h2o, "h2o", tri_bl_init_h2o);
TRI_BL_OPS(tri_kv_policy_snapkv, "snapkv", tri_bl_init_snapkv);
TRI_BL_OPS(tri_kv_policy_rkv, "rkv", tri_bl_init_rkv);

const tri_kv_policy_ops tri_kv_policy_snapkv_prompt = {
    .name = "snapkv_prompt", .capacity = tri_bl_prompt_capacity, .should_compress = tri_bl_prompt_should_compress,
    .compress = tri_bl_compress, .init = tri_bl_init_snapkv_prompt, .free = tri_bl_free
};
