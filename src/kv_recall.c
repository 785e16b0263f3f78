/* Recall from tier 2 (kv_recall.h). Phase A scores every row of both tiers per (layer, KV head) in parallel;
 * phase B, per sharing group, aggregates, pools, picks the swaps and applies them to every member. */
#include "kv_recall.h"
#include "calibration.h"
#include "common.h"
#include "kv_select.h"
#include "ops.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define TRI_RC_BLOCK 256   /* cache rows per kernel call (tier-2 pages hold fewer) */


/* A row in position order, for the pooling. */
typedef struct tri_rc_ent {
    int32_t pos;
    int32_t idx;   /* < n_live: a cache slot; else n_live + tier-2 slot */
    float   v;
} tri_rc_ent;

/* One swap candidate: a slot (either tier) and its pooled score. */
typedef struct tri_rc_pick {
    int32_t idx;
    float   v;
} tri_rc_pick;

typedef struct tri_rc {
    tri_kv_cache *          c;
    const tri_kv_policy *   p;
    int                     G;
    float                   scale;
    int32_t                 rows;
    int32_t *               lo, * hi, * k;  /* [LK] tri_kv_plan */
    size_t *                off;            /* [LK] first score of each member */
    float *                 scores;
    int *                   member;         /* members of every group, back to back */
    int *                   g0;             /* [n_groups + 1] first member of each group */
    int                     n_groups;
    int64_t *               g_recalled;     /* [n_groups] */
    uint8_t *               g_bad;          /* [n_groups] members disagree */
    size_t                  per_thread;     /* bytes of one thread's scratch */
    char *                  scratch;
    size_t                  floats_a;       /* phase A scratch floats */
    int32_t                 cap, max_t2;    /* largest slot count; largest tier-2 slot count */
} tri_rc;

/* ---- phase A: scores ---------------------------------------------------------------------------- */

size_t tri_kv_recall_scratch(const tri_kv_cache * c, int G, size_t n_rows) {
    const size_t W = TRI_RECALL_QUERIES, D = (size_t) c->head_dim;
    /* q [W][G][D], qpos [W], logits [W][G][n_rows], usable [n_rows] bytes, K block [B][D] halves, positions [B] */
    return W * G * D + W + W * G * n_rows + (n_rows + 3) / 4 + (TRI_RC_BLOCK * D + 1) / 2 + TRI_RC_BLOCK + 16;
}

/* Logits of every (query, head) for n_b rows (F16 K, positions) into lg's columns j0..: rows a query cannot
 * see (after its own position) are -inf. */
static void tri_rc_logits(const tri_attn_kernels * kr, int D, int G, int nq, const float * q, const int32_t * qpos,
                          float scale, const tri_fp16 * K, const int32_t * pos, int n_b, float * lg, size_t n,
                          size_t j0) {
    for (int t = 0; t < nq; t++) {
        float * s = lg + (size_t) t * G * n + j0;
        kr->scores(D, G, q + (size_t) t * G * D, K, n_b, scale, s, (int) n);
        for (int j = 0; j < n_b; j++) {
            for (int g = 0; pos[j] > qpos[t] && g < G; g++) {
                s[(size_t) g * n + j] = -INFINITY;
            }
        }
    }
}

int tri_kv_recall_scores(const tri_kv_cache * c, int il, int h, int G, float scale, float * out, float * scratch) {
    const int D = c->head_dim;
    const size_t W = TRI_RECALL_QUERIES;
    const tri_attn_kernels kr = tri_attn_kernels_get(TRI_ISA_COUNT);
    const int32_t live = c->n_live[tri_kv_index(c, il, h)];
    const tri_t2_head * th = tri_kv_tier2_head(c->t2, il, h);
    const size_t n = (size_t) live + (size_t) th->n_pages * TRI_T2_PAGE_ROWS;   /* slots of both tiers */
    float * q = scratch;                                      /* [nq][G][D] */
    int32_t * qpos = (int32_t *) (q + W * G * D);             /* [nq] */
    float * lg = (float *) (qpos + W);                        /* [nq][G][n] logits */
    uint8_t * use = (uint8_t *) (lg + W * G * n);             /* [n] the row takes part */
    tri_fp16 * kb = (tri_fp16 *) (lg + W * G * n + (n + 3) / 4);
    int32_t * pb = (int32_t *) (lg + W * G * n + (n + 3) / 4 + (TRI_RC_BLOCK * (size_t) D + 1) / 2);
    const int64_t count = c->q_cap > 0 ? c->q_count[il] : 0;
    const int nq = (int) TRI_MIN(TRI_MIN((int64_t) W, count), (int64_t) c->q_cap);
    for (size_t i = 0; i < n; i++) {
        out[i] = -INFINITY;
    }
    if (nq <= 0) {
        return 0;
    }
    const size_t row = (size_t) G * D;
    for (int t = 0; t < nq; t++) {
        const size_t e = (size_t) il * c->q_cap + (size_t) ((count - nq + t) % c->q_cap);
        memcpy(q + t * row, c->q + e * c->q_dim + (size_t) h * row, sizeof(float) * row);
        qpos[t] = c->q_pos[e];
    }
    const int32_t * pos1 = tri_kv_pos(c, il, h);
    for (int32_t j0 = 0; j0 < live; j0 += TRI_RC_BLOCK) {
        const int nb = (int) TRI_MIN(TRI_RC_BLOCK, live - j0);
        tri_rc_logits(&kr, D, G, nq, q, qpos, scale, tri_kv_k(c, il, h) + (size_t) j0 * D, pos1 + j0, nb, lg, n,
                      (size_t) j0);
        memset(use + j0, 1, (size_t) nb);
    }
    for (int32_t pi = 0; pi < th->n_pages; pi++) {
        const tri_t2_page * pg = th->pages[pi];
        const size_t j0 = (size_t) live + (size_t) pi * TRI_T2_PAGE_ROWS;
        tri_kv_tier2_page_f16(pg, D, 0, pg->n, kb, NULL);
        for (int32_t j = 0; j < pg->n; j++) {
            pb[j] = pg->base + pg->off[j];
        }
        tri_rc_logits(&kr, D, G, nq, q, qpos, scale, kb, pb, pg->n, lg, n, j0);
        /* unused slots, and rows the cache holds too (recalled before: they count once), take no part */
        for (int32_t j = 0; j < TRI_T2_PAGE_ROWS; j++) {
            const int32_t at = j < pg->n ? tri_kv_count_below(pos1, live, pb[j]) : live;
            use[j0 + j] = j < pg->n && !(at < live && pos1[at] == pb[j]);
            for (size_t tg = 0; !use[j0 + j] && tg < (size_t) nq * G; tg++) {
                lg[tg * n + j0 + j] = -INFINITY;
            }
        }
    }
    /* softmax of each (query, head) over the rows it sees; a row's score is its largest probability */
    for (size_t tg = 0; tg < (size_t) nq * G; tg++) {
        float * s = lg + tg * n;
        float mx = -INFINITY;
        for (size_t j = 0; j < n; j++) {
            mx = s[j] > mx ? s[j] : mx;
        }
        if (mx == -INFINITY) {
            continue;
        }
        const float inv = 1.0f / kr.exp_sum(s, (int) n, mx);
        for (size_t j = 0; j < n; j++) {
            const float p = s[j] * inv;
            out[j] = p > out[j] ? p : out[j];
        }
    }
    for (size_t i = 0; i < n; i++) {
        out[i] = use[i] ? out[i] : -INFINITY;
    }
    return nq;
}

static void tri_rc_score_worker(void * arg, int ith, int nth) {
    tri_rc * r = arg;
    tri_kv_cache * c = r->c;
    float * scratch = (float *) (r->scratch + (size_t) ith * r->per_thread);
    long i0, i1;
    tri_split((long) c->n_layer * c->n_head_kv, ith, nth, &i0, &i1);
    for (long i = i0; i < i1; i++) {
        const int il = (int) (i / c->n_head_kv), h = (int) (i % c->n_head_kv);
        if (!tri_kv_windowed(c, il)) {
            tri_kv_recall_scores(c, il, h, r->G, r->scale, r->scores + r->off[i], scratch);
        }
    }
}

/* ---- phase B: choose and swap, per sharing group ------------------------------------------------ */

static int tri_rc_ent_cmp(const void * a, const void * b) {
    const int32_t x = ((const tri_rc_ent *) a)->pos, y = ((const tri_rc_ent *) b)->pos;
    return (x > y) - (x < y);
}

/* Best first; ties: the larger index (the more recent row) first. */
static int tri_rc_desc(const void * a, const void * b) {
    const tri_rc_pick * x = a, * y = b;
    if (x->v != y->v) {
        return x->v < y->v ? 1 : -1;
    }
    return (x->idx < y->idx) - (x->idx > y->idx);
}

/* Worst first; ties: the smaller index (the older row) first. */
static int tri_rc_asc(const void * a, const void * b) {
    return tri_rc_desc(b, a);
}

static int32_t tri_rc_pos_of(const tri_kv_cache * c, int il, int h, int32_t live, int32_t idx) {
    if (idx < live) {
        return tri_kv_pos(c, il, h)[idx];
    }
    const int32_t s = idx - live;
    const tri_t2_page * pg = tri_kv_tier2_head(c->t2, il, h)->pages[s / TRI_T2_PAGE_ROWS];
    return pg->base + pg->off[s % TRI_T2_PAGE_ROWS];
}

/* True when member m holds exactly the rows of the reference member ref (both tiers). */
static bool tri_rc_same(const tri_kv_cache * c, int ref, int m) {
    const int rl = ref / c->n_head_kv, rh = ref % c->n_head_kv, ml = m / c->n_head_kv, mh = m % c->n_head_kv;
    const int32_t live = c->n_live[ref];
    if (c->n_live[m] != live || memcmp(tri_kv_pos(c, rl, rh), tri_kv_pos(c, ml, mh), sizeof(int32_t) * live) != 0) {
        return false;
    }
    const tri_t2_head * a = tri_kv_tier2_head(c->t2, rl, rh), * b = tri_kv_tier2_head(c->t2, ml, mh);
    if (a->n_pages != b->n_pages) {
        return false;
    }
    for (int32_t p = 0; p < a->n_pages; p++) {
        const tri_t2_page * x = a->pages[p], * y = b->pages[p];
        if (x->n != y->n || x->base != y->base || memcmp(x->off, y->off, sizeof(uint16_t) * x->n) != 0) {
            return false;
        }
    }
    return true;
}

/* Swaps into member m: tier-2 slots pick2[0..s) replace cache slots pick1[0..s); kept and recalled rows are merged
 * in position order. Scratch: rk, rv [s][D], rpos [s], drop [cap], nk, nv [cap][D], npos [cap]. */
static void tri_rc_apply(tri_kv_cache * c, int il, int h, const tri_rc_pick * pick1, const tri_rc_pick * pick2,
                         int32_t s, char * scratch, int32_t cap) {
    const int D = c->head_dim;
    const int32_t live = c->n_live[tri_kv_index(c, il, h)];
    tri_fp16 * rk = (tri_fp16 *) scratch, * rv = rk + (size_t) s * D;
    tri_fp16 * nk = rv + (size_t) s * D, * nv = nk + (size_t) cap * D;
    int32_t * rpos = (int32_t *) (nv + (size_t) cap * D), * npos = rpos + s, * order = npos + cap;
    uint8_t * drop = (uint8_t *) (order + s);
    const tri_t2_head * th = tri_kv_tier2_head(c->t2, il, h);
    for (int32_t i = 0; i < s; i++) {   /* copies first: appends below may drop the oldest tier-2 page */
        const int32_t slot = pick2[i].idx - live;
        const tri_t2_page * pg = th->pages[slot / TRI_T2_PAGE_ROWS];
        const int32_t j = slot % TRI_T2_PAGE_ROWS;
        tri_kv_tier2_page_f16(pg, D, j, 1, rk + (size_t) i * D, rv + (size_t) i * D);
        rpos[i] = pg->base + pg->off[j];
        order[i] = i;
    }
    for (int32_t i = 1; i < s; i++) {   /* recalled rows by position (s is at most `rows`) */
        const int32_t x = order[i];
        int32_t j = i - 1;
        while (j >= 0 && rpos[order[j]] > rpos[x]) {
            order[j + 1] = order[j];
            j--;
        }
        order[j + 1] = x;
    }
    tri_fp16 * K = tri_kv_k(c, il, h), * V = tri_kv_v(c, il, h);
    int32_t * pos = tri_kv_pos(c, il, h);
    memset(drop, 0, (size_t) live);
    for (int32_t i = 0; i < s; i++) {
        const int32_t j = pick1[i].idx;
        drop[j] = 1;
        tri_kv_tier2_append(c->t2, il, h, pos[j], K + (size_t) j * D, V + (size_t) j * D);
    }
    int32_t n = 0, r = 0;
    for (int32_t j = 0; j <= live; j++) {
        while (r < s && (j == live || rpos[order[r]] < pos[j])) {
            memcpy(nk + (size_t) n * D, rk + (size_t) order[r] * D, sizeof(tri_fp16) * D);
            memcpy(nv + (size_t) n * D, rv + (size_t) order[r] * D, sizeof(tri_fp16) * D);
            npos[n++] = rpos[order[r++]];
        }
        if (j < live && !drop[j]) {
            memcpy(nk + (size_t) n * D, K + (size_t) j * D, sizeof(tri_fp16) * D);
            memcpy(nv + (size_t) n * D, V + (size_t) j * D, sizeof(tri_fp16) * D);
            npos[n++] = pos[j];
        }
    }
    memcpy(K, nk, sizeof(tri_fp16) * (size_t) n * D);
    memcpy(V, nv, sizeof(tri_fp16) * (size_t) n * D);
    memcpy(pos, npos, sizeof(int32_t) * (size_t) n);
}

/* Phase B scratch bytes of one thread. */
static size_t tri_rc_scratch_b(const tri_rc * r) {
    const size_t cap = (size_t) r->cap, t2 = (size_t) r->max_t2, R = (size_t) r->rows, D = (size_t) r->c->head_dim;
    const size_t nmax = cap > t2 ? cap : t2;
    return sizeof(float) * (cap + t2) + sizeof(tri_rc_ent) * (cap + t2) + sizeof(tri_triattn_cand) * nmax + nmax +
           sizeof(tri_rc_pick) * 2 * R +
           /* tri_rc_apply */ sizeof(tri_fp16) * (2 * R * D + 2 * cap * D) + sizeof(int32_t) * (2 * R + cap) + cap + 64;
}

static void tri_rc_group(tri_rc * r, int g, char * scratch) {
    tri_kv_cache * c = r->c;
    const int * mem = r->member + r->g0[g];
    const int nm = r->g0[g + 1] - r->g0[g];
    const int ref = mem[0], rl = ref / c->n_head_kv, rh = ref % c->n_head_kv;
    for (int i = 1; i < nm; i++) {
        if (!tri_rc_same(c, ref, mem[i])) {
            r->g_bad[g] = 1;
            return;
        }
    }
    const int32_t live = c->n_live[ref];
    const int32_t n2 = tri_kv_tier2_head(c->t2, rl, rh)->n_pages * TRI_T2_PAGE_ROWS, n = live + n2;
    float * v = (float *) scratch;                          /* [n] group score of each slot, then pooled */
    tri_rc_ent * e = (tri_rc_ent *) (v + r->cap + r->max_t2);
    tri_triattn_cand * sel = (tri_triattn_cand *) (e + r->cap + r->max_t2);
    const size_t nmax = (size_t) TRI_MAX(r->cap, r->max_t2);
    uint8_t * mark = (uint8_t *) (sel + nmax);
    tri_rc_pick * pick1 = (tri_rc_pick *) (mark + nmax + (8 - nmax % 8) % 8), * pick2 = pick1 + r->rows;
    char * apply = (char *) (pick2 + r->rows);

    for (int32_t j = 0; j < n; j++) {
        float x = -INFINITY;
        for (int i = 0; i < nm; i++) {
            const float y = r->scores[r->off[mem[i]] + j];
            x = y > x ? y : x;
        }
        v[j] = x;
    }
    /* pooling along positions over the rows that take part (tier-2 slots at -inf are unused or in the cache) */
    int32_t ne = 0;
    for (int32_t j = 0; j < n; j++) {
        if (j < live || v[j] > -INFINITY) {
            e[ne++] = (tri_rc_ent) { tri_rc_pos_of(c, rl, rh, live, j), j, v[j] };
        }
    }
    qsort(e, (size_t) ne, sizeof *e, tri_rc_ent_cmp);
    for (int32_t i = 0; i < ne; i++) {
        float x = e[i].v;
        for (int32_t a = i - 1; a >= 0 && e[i].pos - e[a].pos <= TRI_RECALL_BACK; a--) {
            x = e[a].v > x ? e[a].v : x;
        }
        for (int32_t b = i + 1; b < ne && e[b].pos - e[i].pos <= TRI_RECALL_FWD; b++) {
            x = e[b].v > x ? e[b].v : x;
        }
        v[e[i].idx] = x;
    }
    /* the best tier-2 rows against the worst replaceable cache rows */
    const int32_t lo = r->lo[ref], hi = r->hi[ref];
    int32_t finite = 0;
    for (int32_t j = live; j < n; j++) {
        finite += v[j] > -INFINITY;
    }
    const int32_t kk = TRI_MIN(TRI_MIN(r->rows, hi - lo), finite);
    if (kk <= 0) {
        return;
    }
    tri_triattn_topk(v + live, n2, kk, sel, mark);
    int32_t m2 = 0;
    for (int32_t j = 0; j < n2; j++) {
        if (mark[j]) {
            pick2[m2++] = (tri_rc_pick) { live + j, v[live + j] };
        }
    }
    for (int32_t j = lo; j < hi; j++) {
        v[j] = -v[j];   /* the worst become the best of the negated scores */
    }
    tri_triattn_topk(v + lo, hi - lo, kk, sel, mark);
    int32_t m1 = 0;
    for (int32_t j = lo; j < hi; j++) {
        if (mark[j - lo]) {
            pick1[m1++] = (tri_rc_pick) { j, -v[j] };
        }
    }
    qsort(pick2, (size_t) m2, sizeof *pick2, tri_rc_desc);
    qsort(pick1, (size_t) m1, sizeof *pick1, tri_rc_asc);
    int32_t s = 0;
    while (s < kk && s < m1 && s < m2 && pick2[s].v > pick1[s].v) {
        s++;
    }
    for (int i = 0; i < nm && s > 0; i++) {
        tri_rc_apply(c, mem[i] / c->n_head_kv, mem[i] % c->n_head_kv, pick1, pick2, s, apply, r->cap);
    }
    r->g_recalled[g] = (int64_t) s * nm;
}

static void tri_rc_group_worker(void * arg, int ith, int nth) {
    tri_rc * r = arg;
    long g0, g1;
    tri_split(r->n_groups, ith, nth, &g0, &g1);
    for (long g = g0; g < g1; g++) {
        tri_rc_group(r, (int) g, r->scratch + (size_t) ith * r->per_thread);
    }
}

/* ---- entry ---------------------------------------------------------------------------------------- */

enum triattn_status tri_kv_recall(tri_kv_cache * c, const tri_kv_policy * p, int G, float scale, int32_t rows, int32_t window,
                                  tri_threadpool * tp, int64_t * recalled, char * err, size_t en) {
    *recalled = 0;
    if (!c->t2 || rows <= 0 || c->q_cap <= 0 || tri_kv_tier2_rows(c->t2) == 0) {
        return TRIATTN_OK;
    }
    const int L = c->n_layer, Hkv = c->n_head_kv, LK = L * Hkv;
    tri_rc r = { .c = c, .p = p, .G = G, .scale = scale, .rows = rows, .cap = c->cap_max };
    size_t n_scores = 0;
    for (int i = 0; i < LK; i++) {
        const int32_t t2 = tri_kv_tier2_head(c->t2, i / Hkv, i % Hkv)->n_pages * TRI_T2_PAGE_ROWS;
        r.max_t2 = TRI_MAX(r.max_t2, t2);
        n_scores += (size_t) c->n_live[i] + (size_t) t2;
    }
    const int nth = tp ? tri_threadpool_size(tp) : 1;
    r.floats_a = tri_kv_recall_scratch(c, G, (size_t) r.cap + (size_t) r.max_t2);
    r.per_thread = TRI_MAX(sizeof(float) * r.floats_a, tri_rc_scratch_b(&r));
    r.per_thread = (r.per_thread + 63) & ~(size_t) 63;
    const size_t bytes = sizeof(int32_t) * 3 * LK + sizeof(size_t) * LK + sizeof(float) * n_scores +
                         sizeof(int) * (2 * LK + 1) + (sizeof(int64_t) + 1) * LK + r.per_thread * nth + 128;
    char * mem = malloc(bytes);
    if (!mem) {
        return tri_fail(err, en, TRIATTN_ERR_OOM, "recall: cannot allocate %.1f MiB of scratch", bytes / 1048576.0);
    }
    char * q = mem;
    /* 8-byte members first, then 4-byte ones, then bytes: each aligned whatever the counts */
    r.scratch = q;                     q += r.per_thread * nth;
    r.off = (size_t *) q;              q += sizeof(size_t) * LK;
    r.g_recalled = (int64_t *) q;      q += sizeof(int64_t) * LK;
    r.scores = (float *) q;            q += sizeof(float) * n_scores;
    r.lo = (int32_t *) q;              q += sizeof(int32_t) * LK;
    r.hi = (int32_t *) q;              q += sizeof(int32_t) * LK;
    r.k = (int32_t *) q;               q += sizeof(int32_t) * LK;
    r.member = (int *) q;              q += sizeof(int) * LK;
    r.g0 = (int *) q;                  q += sizeof(int) * (LK + 1);
    r.g_bad = (uint8_t *) q;
    size_t o = 0;
    for (int i = 0; i < LK; i++) {
        r.off[i] = o;
        o += (size_t) c->n_live[i] + (size_t) tri_kv_tier2_head(c->t2, i / Hkv, i % Hkv)->n_pages * TRI_T2_PAGE_ROWS;
    }
    int64_t unused;
    tri_kv_plan(p, c, window, r.lo, r.hi, r.k, &unused);
    /* groups of members, by the policy's sharing */
    int nmem = 0;
    const int n_outer = p->share == TRI_KV_SHARE_NONE ? LK : p->share == TRI_KV_SHARE_LAYERS ? Hkv : 1;
    for (int g = 0; g < n_outer; g++) {
        r.g0[r.n_groups] = nmem;
        for (int i = 0; i < LK; i++) {
            const bool in = p->share == TRI_KV_SHARE_NONE ? i == g : p->share == TRI_KV_SHARE_LAYERS ? i % Hkv == g : true;
            if (in && !tri_kv_windowed(c, i / Hkv)) {
                r.member[nmem++] = i;
            }
        }
        if (nmem > r.g0[r.n_groups]) {
            r.g_recalled[r.n_groups] = 0;
            r.g_bad[r.n_groups] = 0;
            r.n_groups++;
        }
    }
    r.g0[r.n_groups] = nmem;
    if (tp) {
        tri_threadpool_run(tp, tri_rc_score_worker, &r);
        tri_threadpool_run(tp, tri_rc_group_worker, &r);
    } else {
        tri_rc_score_worker(&r, 0, 1);
        tri_rc_group_worker(&r, 0, 1);
    }
    enum triattn_status st = TRIATTN_OK;
    for (int g = 0; g < r.n_groups; g++) {
        *recalled += r.g_recalled[g];
        if (r.g_bad[g] && st == TRIATTN_OK) {
            const int m = r.member[r.g0[g]];
            st = tri_fail(err, en, TRIATTN_ERR_INTERNAL,
                          "recall: the (layer, KV head) pairs sharing (layer %d, KV head %d)'s tokens hold other rows",
                          m / Hkv, m % Hkv);
        }
    }
    if (*recalled > 0) {
        c->moved++;
    }
    free(mem);
    return st;
}
