#include "forward.h"
#include "calibration.h"
#include "common.h"
#include "platform.h"
#include "matmul.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define TRI_ATT_CHUNK 256 /* slots per attention chunk, see tri_blk_attention */
#define TRI_ATT_TB    4   /* tokens per prefill attention task */
#define TRI_ATT_MAXG  64  /* query heads per KV head the attention supports (checked at init) */

static size_t tri_att_scratch_floats(const tri_hparams * hp);

/* ---- buffers ----------------------------------------------------------------------------------- */

static size_t tri_align64(size_t n) {
    return (n + 63) & ~(size_t) 63;
}

enum triattn_status tri_forward_init(tri_forward * f, const struct triattn_model * m, tri_kv_cache * kv,
                                     tri_threadpool * tp, int32_t n_batch, char * err, size_t n) {
    memset(f, 0, sizeof *f);
    const tri_hparams * hp = &m->hp;
    const int nth = tri_threadpool_size(tp);
    const int G = hp->n_head / hp->n_head_kv;
    const int64_t q_dim = (int64_t) hp->n_head * hp->head_dim;
    const int64_t kv_dim = (int64_t) hp->n_head_kv * hp->head_dim;
    int64_t max_in = TRI_MAX(TRI_MAX((int64_t) hp->n_embd, (int64_t) hp->n_ff), q_dim);
    const size_t n_chunks = ((size_t) kv->cap_max + TRI_ATT_CHUNK - 1) / TRI_ATT_CHUNK;

    f->m       = m;
    f->kv      = kv;
    f->tp      = tp;
    f->n_batch = n_batch;
    f->capacity = kv->cap_max;
    f->attn    = tri_attn_kernels_get(TRI_ISA_COUNT);
    f->act     = tri_act_kernels_get(TRI_ISA_COUNT);
    if (G > TRI_ATT_MAXG) {
        return tri_fail(err, n, TRIATTN_ERR_UNSUPPORTED, "%d query heads per KV head (at most %d supported)", G,
                        TRI_ATT_MAXG);
    }
    /* Converted activations: at most 4 bytes per value (F32 weights), one region per distinct type. */
    f->xq_stride = tri_align64((size_t) n_batch * (size_t) max_in * 4 + 1024);
    f->mm_scratch_stride = tri_align64(tri_matmul_scratch_size(max_in));

    struct { void ** p; size_t bytes; } parts[] = {
        { (void **) &f->x,        sizeof(float) * n_batch * hp->n_embd },
        { (void **) &f->xn,       sizeof(float) * n_batch * TRI_MAX(hp->n_embd, q_dim) },
        { (void **) &f->q,        sizeof(float) * n_batch * q_dim },
        { (void **) &f->k,        sizeof(float) * n_batch * kv_dim },
        { (void **) &f->v,        sizeof(float) * n_batch * kv_dim },
        { (void **) &f->att,      sizeof(float) * n_batch * q_dim },
        { (void **) &f->gate,     sizeof(float) * n_batch * hp->n_ff },
        { (void **) &f->up,       sizeof(float) * n_batch * hp->n_ff },
        { (void **) &f->tmp,      sizeof(float) * n_batch * hp->n_embd },
        { (void **) &f->rope_cs,  sizeof(float) * n_batch * hp->rope_dim },
        { (void **) &f->rope_cs_swa, m->rope_inv_freq_swa ? sizeof(float) * n_batch * hp->rope_dim : 0 },
        { (void **) &f->xq,       f->xq_stride * 3 },
        { (void **) &f->mm_scratch, n_batch > 1 ? f->mm_scratch_stride * (size_t) nth : 0 },
        { (void **) &f->att_s,    sizeof(float) * (size_t) nth * tri_att_scratch_floats(hp) },
        { (void **) &f->att_part, sizeof(float) * (size_t) hp->n_head_kv * (n_chunks + 1) * G * (hp->head_dim + 2) },
        { (void **) &f->att_blk,  sizeof(int32_t) * (size_t) (n_batch + 1) },
        { (void **) &f->logits,   sizeof(float) * (size_t) n_batch * hp->n_vocab },
        { (void **) &f->row_kv,   sizeof(tri_kv_cache *) * (size_t) n_batch },
        { (void **) &f->row_pos,  sizeof(int32_t) * (size_t) n_batch },
        { (void **) &f->logit_rows, sizeof(int32_t) * (size_t) n_batch },
        { (void **) &f->row_tok,  sizeof(triattn_token) * (size_t) n_batch },
    };
    size_t total = 0;
    for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++) {
        total += tri_align64(parts[i].bytes);
    }
    f->mem = tri_aligned_alloc(64, total);
    if (!f->mem) {
        return tri_fail(err, n, TRIATTN_ERR_OOM, "cannot allocate %.1f MiB of activation buffers (n_batch %d)",
                        total / 1048576.0, n_batch);
    }
    f->mem_bytes = total;
    char * p = f->mem;
    for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++) {
        *parts[i].p = parts[i].bytes ? p : NULL;
        p += tri_align64(parts[i].bytes);
    }
    return TRIATTN_OK;
}

void tri_forward_free(tri_forward * f) {
    tri_aligned_free(f->mem);
    memset(f, 0, sizeof *f);
}

/* ---- matmul over several weights sharing one input --------------------------------------------- */

typedef struct tri_mm_job {
    const tri_tensor * W;
    float *            out;  /* [n_tok][W->ne1] */
    const void *       xq;   /* input converted to W's vec_dot type */
} tri_mm_job;

typedef struct tri_mm_task {
    const tri_mm_job * jobs;
    int                n_jobs;
    int64_t            total_rows;
    int32_t            n_tok;
    /* conversion stage */
    const float *      in;
    int64_t            ld_in;
    int64_t            n_in;
    void *             scratch;  /* per thread, scratch_stride bytes apart */
    size_t             scratch_stride;
    enum tri_type      conv_types[3];
    void *             conv_dst[3];
    int                n_conv;
} tri_mm_task;

static void tri_mm_convert_worker(void * arg, int ith, int nth) {
    tri_mm_task * t = arg;
    long t0, t1;
    tri_split(t->n_tok, ith, nth, &t0, &t1);
    if (t0 >= t1) {
        return;
    }
    for (int i = 0; i < t->n_conv; i++) {
        tri_quantize_rows(t->in, t->ld_in, t->conv_dst[i], t->conv_types[i], t->n_in, t0, t1);
    }
}

static void tri_mm_worker(void * arg, int ith, int nth) {
    tri_mm_task * t = arg;
    /* Split rows in multiples of 16 so tiles stay whole. */
    const int64_t n_units = (t->total_rows + 15) / 16;
    long u0, u1;
    tri_split(n_units, ith, nth, &u0, &u1);
    int64_t r0 = u0 * 16, r1 = TRI_MIN(u1 * 16, t->total_rows);
    int64_t base = 0;
    for (int j = 0; j < t->n_jobs && r0 < r1; j++) {
        const tri_tensor * W = t->jobs[j].W;
        const int64_t lo = TRI_MAX(r0, base), hi = TRI_MIN(r1, base + W->ne1);
        if (lo < hi) {
            tri_matmul_rows(W->data, W->type, W->layout, W->ne0, lo - base, hi - base, t->jobs[j].xq, t->n_tok, t->jobs[j].out,
                            W->ne1, t->scratch ? (char *) t->scratch + (size_t) ith * t->scratch_stride : NULL);
        }
        base += W->ne1;
    }
}

/* out_j[t] = in[t] @ W_j for every job; the input is converted once per distinct activation type. */
static void tri_matmuls(tri_forward * f, tri_mm_job * jobs, int n_jobs, const float * in, int64_t ld_in, int32_t n_tok) {
    tri_mm_task t = { .jobs = jobs, .n_jobs = n_jobs, .n_tok = n_tok, .in = in, .ld_in = ld_in, .n_in = jobs[0].W->ne0,
                      .scratch = f->mm_scratch, .scratch_stride = f->mm_scratch_stride };
    for (int j = 0; j < n_jobs; j++) {
        const enum tri_type vdt = tri_type_traits_get(jobs[j].W->type)->vec_dot_type;
        int c = 0;
        while (c < t.n_conv && t.conv_types[c] != vdt) {
            c++;
        }
        if (c == t.n_conv) {
            t.conv_types[c] = vdt;
            t.conv_dst[c]   = (char *) f->xq + (size_t) c * f->xq_stride;
            t.n_conv++;
        }
        jobs[j].xq = t.conv_dst[c];
        t.total_rows += jobs[j].W->ne1;
    }
    if (n_tok >= 8) {
        tri_threadpool_run(f->tp, tri_mm_convert_worker, &t);
    } else {
        tri_mm_convert_worker(&t, 0, 1);
    }
    tri_threadpool_run(f->tp, tri_mm_worker, &t);
}

/* ---- blocks ------------------------------------------------------------------------------------ */

void tri_blk_rmsnorm(tri_forward * f, const float * in, const tri_tensor * w, float * out) {
    const int n_embd = f->m->hp.n_embd;
    for (int t = 0; t < f->n_tok; t++) {
        tri_rmsnorm(in + (int64_t) t * n_embd, w->data, out + (int64_t) t * n_embd, n_embd, f->m->hp.norm_eps);
    }
}

static void tri_add_bias(float * y, const tri_tensor * b, int32_t n_tok) {
    if (!b->data) {
        return;
    }
    const float * bias = b->data;
    for (int32_t t = 0; t < n_tok; t++) {
        for (int64_t i = 0; i < b->ne0; i++) {
            y[t * b->ne0 + i] += bias[i];
        }
    }
}

void tri_blk_qkv(tri_forward * f, const tri_layer * L) {
    tri_mm_job jobs[3] = { { &L->wq, f->q, NULL }, { &L->wk, f->k, NULL }, { &L->wv, f->v, NULL } };
    tri_matmuls(f, jobs, 3, f->xn, f->m->hp.n_embd, f->n_tok);
    tri_add_bias(f->q, &L->bq, f->n_tok);
    tri_add_bias(f->k, &L->bk, f->n_tok);
    tri_add_bias(f->v, &L->bv, f->n_tok);
}

void tri_blk_qk_norm(tri_forward * f, const tri_layer * L) {
    const tri_hparams * hp = &f->m->hp;
    const int hd = hp->head_dim;
    for (int t = 0; t < f->n_tok; t++) {
        for (int h = 0; h < hp->n_head; h++) {
            float * q = f->q + ((int64_t) t * hp->n_head + h) * hd;
            tri_rmsnorm(q, L->q_norm.data, q, hd, hp->norm_eps);
        }
        for (int h = 0; h < hp->n_head_kv; h++) {
            float * k = f->k + ((int64_t) t * hp->n_head_kv + h) * hd;
            tri_rmsnorm(k, L->k_norm.data, k, hd, hp->norm_eps);
        }
    }
}

/* Before rows [t, t + n) of one sequence append to windowed layer il: when they would not fit, drop the slots
 * the first of them (the lowest position) can no longer see. */
static void tri_window_make_room(tri_forward * f, int il, int t) {
    tri_kv_cache * kv = f->row_kv[t];
    if (!tri_kv_windowed(kv, il) || (t > 0 && f->row_kv[t - 1] == kv)) {
        return;
    }
    int32_t n = 1;
    while (t + n < f->n_tok && f->row_kv[t + n] == kv) {
        n++;
    }
    int32_t live = 0;
    for (int h = 0; h < kv->n_head_kv; h++) {
        live = TRI_MAX(live, kv->n_live[tri_kv_index(kv, il, h)]);
    }
    if (live + n > kv->layer_cap[il]) {
        tri_kv_trim_window(kv, il, f->row_pos[t]);
    }
}

void tri_blk_rope_store(tri_forward * f, int il) {
    const tri_hparams * hp = &f->m->hp;
    const int hd = hp->head_dim;
    if (f->calib) {
        tri_calib_accumulate(f->calib, il, f->q, f->n_tok); /* pre-RoPE q, after bias and q_norm */
    }
    const float * cs_table = tri_hp_layer_window(hp, il) > 0 ? f->rope_cs_swa : f->rope_cs;
    for (int t = 0; t < f->n_tok; t++) {
        tri_window_make_room(f, il, t);
        const float * cs = cs_table + (int64_t) t * hp->rope_dim;
        float * q = f->q + (int64_t) t * hp->n_head * hd;
        float * k = f->k + (int64_t) t * hp->n_head_kv * hd;
        tri_rope(q, hp->n_head, hd, hp->rope_dim, cs, hp->rope_pairing);
        tri_rope(k, hp->n_head_kv, hd, hp->rope_dim, cs, hp->rope_pairing);
        tri_kv_cache * kv = f->row_kv[t];
        if (kv->q_cap > 0) {
            tri_kv_push_query(kv, il, q, f->row_pos[t]);
        }
        for (int h = 0; h < hp->n_head_kv; h++) {
            const int32_t slot = kv->n_live[tri_kv_index(kv, il, h)]++;
            tri_f32_to_f16_row(f->k + ((int64_t) t * hp->n_head_kv + h) * hd, tri_kv_k(kv, il, h) + (int64_t) slot * hd, hd);
            tri_f32_to_f16_row(f->v + ((int64_t) t * hp->n_head_kv + h) * hd, tri_kv_v(kv, il, h) + (int64_t) slot * hd, hd);
            tri_kv_pos(kv, il, h)[slot] = f->row_pos[t];
        }
    }
}

/* ---- attention --------------------------------------------------------------------------------- */

/* Attention works on a fixed grid of chunks of at most TRI_ATT_CHUNK slots: chunk k holds slots
 * [k, k + 1) * TRI_ATT_CHUNK, or on a sliding-window layer (whose oldest slots are dropped as it slides, so
 * slot numbers shift while positions stay dense) the slots whose position lies in that range: each chunk yields a partial (max, sum, weighted V) per query, folded into a running state in chunk order.
 * Prefill and decode use the same grid, the same kernels (whose per-pair arithmetic does not depend on
 * the other queries of a call) and the same fold, so a token's attention output does not depend on how
 * the tokens were batched. Decode splits one token's chunks across threads; prefill gives each thread
 * blocks of up to TRI_ATT_TB consecutive tokens of one sequence, which share every K and V row they read. */

/* Live slots [*lo, *hi) of (il, h) a query at position p attends to: positions <= p, and on a sliding-window
 * layer only the window's most recent ones (> p - window). */
static int32_t tri_upper_bound(const int32_t * pos, int32_t n, int32_t p) {
    int32_t lo = 0, hi = n;
    while (lo < hi) {
        const int32_t mid = lo + (hi - lo) / 2;
        if (pos[mid] <= p) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return lo;
}

static void tri_att_range(const tri_forward * f, const tri_kv_cache * kv, int il, int h, int32_t p, int32_t * lo,
                          int32_t * hi) {
    const int32_t * pos = tri_kv_pos(kv, il, h);
    *hi = tri_upper_bound(pos, kv->n_live[tri_kv_index(kv, il, h)], p);
    const int32_t w = tri_hp_layer_window(&f->m->hp, il);
    *lo = w > 0 ? tri_upper_bound(pos, *hi, p - w) : 0;
}

/* One chunk for nq queries q[i] of KV head h: scores over slots [j0, j1); query i keeps [a[i], b[i]) inside
 * it (empty when a[i] >= b[i]). Writes acc[i] (D floats), m[i], l[i]; s[i]: score rows of j1 - j0 floats. */
static void tri_att_chunk(const tri_forward * f, const tri_kv_cache * kv, int il, int h, int nq, const float * const * q,
                          int32_t j0, int32_t j1, const int32_t * a, const int32_t * b, float * const * s,
                          float * const * acc, float * m, float * l) {
    const tri_hparams * hp = &f->m->hp;
    const int D = hp->head_dim, n = j1 - j0;
    for (int i = 0; i < nq; i++) {
        memset(acc[i], 0, sizeof(float) * D);
        m[i] = -INFINITY;
        l[i] = 0.0f;
    }
    if (n <= 0) {
        return;
    }
    f->attn.scores_q(D, nq, q, tri_kv_k(kv, il, h) + (size_t) j0 * D, n, hp->attn_scale, s);
    for (int i = 0; i < nq; i++) {
        const int lo = a[i] - j0, hi = b[i] - j0;
        if (lo < hi) {
            m[i] = f->attn.max(s[i] + lo, hi - lo);
            l[i] = f->attn.exp_sum(s[i] + lo, hi - lo, m[i]);
        }
        /* weights outside the query's range are 0: the accumulation over [j0, j1) skips them exactly */
        for (int j = 0; j < n; j++) {
            s[i][j] = j >= lo && j < hi ? s[i][j] : 0.0f;
        }
    }
    f->attn.accum_q(D, nq, (const float * const *) s, tri_kv_v(kv, il, h) + (size_t) j0 * D, n, acc);
}

/* Running state of one query: acc[D], then m, l. Folds a chunk partial (acc, m, l) into it. */
static void tri_att_fold(float * st, const float * acc, float m, float l, int D) {
    float * sm = st + D;
    float * sl = st + D + 1;
    if (!(l > 0.0f)) {
        return;
    }
    if (!(*sl > 0.0f)) {
        memcpy(st, acc, sizeof(float) * D);
        *sm = m;
        *sl = l;
        return;
    }
    const float mx = m > *sm ? m : *sm;
    const float ws = expf(*sm - mx), wc = expf(m - mx);
    for (int d = 0; d < D; d++) {
        st[d] = st[d] * ws + acc[d] * wc;
    }
    *sl = *sl * ws + l * wc;
    *sm = mx;
}

static void tri_att_state_init(float * st, int D) {
    memset(st, 0, sizeof(float) * D);
    st[D]     = -INFINITY;
    st[D + 1] = 0.0f;
}

static void tri_att_finish(const float * st, int D, float * out) {
    const float inv = st[D + 1] > 0.0f ? 1.0f / st[D + 1] : 0.0f;
    for (int d = 0; d < D; d++) {
        out[d] = st[d] * inv;
    }
}

/* Slots [*a, *b) of grid chunk k of (il, h), clipped to [lo, hi) (empty: *a == *b). */
static void tri_att_clip(const tri_forward * f, const tri_kv_cache * kv, int il, int h, int32_t k, int32_t lo,
                         int32_t hi, int32_t * a, int32_t * b) {
    if (tri_hp_layer_window(&f->m->hp, il) > 0) {
        const int32_t * pos = tri_kv_pos(kv, il, h);
        *a = lo + tri_upper_bound(pos + lo, hi - lo, k * TRI_ATT_CHUNK - 1);
        *b = *a + tri_upper_bound(pos + *a, hi - *a, (k + 1) * TRI_ATT_CHUNK - 1);
    } else {
        *a = TRI_MAX(lo, k * TRI_ATT_CHUNK);
        *b = TRI_MAX(*a, TRI_MIN(hi, (k + 1) * TRI_ATT_CHUNK));
    }
}

/* Grid chunks [*k0, *k1) that meet the slots [lo, hi) of (il, h). */
static void tri_att_chunks(const tri_forward * f, const tri_kv_cache * kv, int il, int h, int32_t lo, int32_t hi,
                           int32_t * k0, int32_t * k1) {
    const bool bypos = tri_hp_layer_window(&f->m->hp, il) > 0;
    const int32_t * pos = tri_kv_pos(kv, il, h);
    *k0 = lo < hi ? (bypos ? pos[lo] : lo) / TRI_ATT_CHUNK : 0;
    *k1 = lo < hi ? (bypos ? pos[hi - 1] : hi - 1) / TRI_ATT_CHUNK + 1 : 0;
}

typedef struct tri_att_task {
    tri_forward * f;
    int           il;
    int           n_chunks;  /* decode: chunks per KV head (tasks = n_head_kv * n_chunks) */
    int           n_blocks;  /* prefill: token blocks (tasks = n_blocks * n_head_kv) */
} tri_att_task;

/* Per-thread prefill scratch in floats: scores, chunk partials and states of TRI_ATT_TB * G queries. */
static size_t tri_att_scratch_floats(const tri_hparams * hp) {
    const size_t nq = (size_t) TRI_ATT_TB * (hp->n_head / hp->n_head_kv);
    return nq * (TRI_ATT_CHUNK + 2 * ((size_t) hp->head_dim + 2));
}

/* Prefill: task = (block of consecutive tokens of one sequence, KV head), dealt round-robin (causal
 * attention costs more for later tokens). */
static void tri_att_prefill_worker(void * arg, int ith, int nth) {
    tri_att_task * a = arg;
    tri_forward * f = a->f;
    const tri_hparams * hp = &f->m->hp;
    const int D = hp->head_dim, G = hp->n_head / hp->n_head_kv;
    float * base = f->att_s + (size_t) ith * tri_att_scratch_floats(hp);
    const float * q[TRI_ATT_TB * TRI_ATT_MAXG];
    float * s[TRI_ATT_TB * TRI_ATT_MAXG];
    float * acc[TRI_ATT_TB * TRI_ATT_MAXG];
    float * st[TRI_ATT_TB * TRI_ATT_MAXG];
    float   m[TRI_ATT_TB * TRI_ATT_MAXG], l[TRI_ATT_TB * TRI_ATT_MAXG];
    int32_t lo[TRI_ATT_TB], hi[TRI_ATT_TB], qa[TRI_ATT_TB * TRI_ATT_MAXG], qb[TRI_ATT_TB * TRI_ATT_MAXG];
    for (long task = ith; task < (long) a->n_blocks * hp->n_head_kv; task += nth) {
        const int h = (int) (task % hp->n_head_kv);
        const int32_t t0 = f->att_blk[task / hp->n_head_kv], nt = f->att_blk[task / hp->n_head_kv + 1] - t0;
        const tri_kv_cache * kv = f->row_kv[t0];
        const int nq = nt * G;
        int32_t k_min = INT32_MAX, k_max = 0;
        for (int tt = 0; tt < nt; tt++) {
            int32_t k0, k1;
            tri_att_range(f, kv, a->il, h, f->row_pos[t0 + tt], &lo[tt], &hi[tt]);
            tri_att_chunks(f, kv, a->il, h, lo[tt], hi[tt], &k0, &k1);
            if (k0 < k1) {
                k_min = TRI_MIN(k_min, k0);
                k_max = TRI_MAX(k_max, k1);
            }
            for (int g = 0; g < G; g++) {
                const int i = tt * G + g;
                q[i]   = f->q + ((int64_t) (t0 + tt) * hp->n_head + (int64_t) h * G + g) * D;
                s[i]   = base + (size_t) i * TRI_ATT_CHUNK;
                acc[i] = base + (size_t) nq * TRI_ATT_CHUNK + (size_t) i * (D + 2);
                st[i]  = acc[i] + (size_t) nq * (D + 2);
                tri_att_state_init(st[i], D);
            }
        }
        for (int32_t k = k_min; k < k_max; k++) {
            int32_t j0 = INT32_MAX, j1 = 0;
            for (int tt = 0; tt < nt; tt++) {
                int32_t ca, cb;
                tri_att_clip(f, kv, a->il, h, k, lo[tt], hi[tt], &ca, &cb);
                if (ca < cb) {
                    j0 = TRI_MIN(j0, ca);
                    j1 = TRI_MAX(j1, cb);
                }
                for (int g = 0; g < G; g++) {
                    qa[tt * G + g] = ca;
                    qb[tt * G + g] = cb;
                }
            }
            if (j0 >= j1) {
                continue;
            }
            tri_att_chunk(f, kv, a->il, h, nq, q, j0, j1, qa, qb, s, acc, m, l);
            for (int i = 0; i < nq; i++) {
                tri_att_fold(st[i], acc[i], m[i], l[i], D);
            }
        }
        for (int i = 0; i < nq; i++) {
            const int tt = i / G, g = i % G;
            tri_att_finish(st[i], D, f->att + ((int64_t) (t0 + tt) * hp->n_head + (int64_t) h * G + g) * D);
        }
    }
}

/* Partial of one decode chunk for the G query heads of KV head h: acc[G][D], then m[G], then l[G]. */
static size_t tri_att_part_size(int G, int D) {
    return (size_t) G * (D + 2);
}

/* Decode: one task per (KV head, chunk), so threads share even one KV head; folded afterwards. */
static void tri_att_decode_worker(void * arg, int ith, int nth) {
    tri_att_task * a = arg;
    tri_forward * f = a->f;
    const tri_hparams * hp = &f->m->hp;
    const tri_kv_cache * kv = f->row_kv[0];
    const int D = hp->head_dim, G = hp->n_head / hp->n_head_kv, C = a->n_chunks;
    const size_t ps = tri_att_part_size(G, D);
    const float * q[TRI_ATT_MAXG];
    float * s[TRI_ATT_MAXG];
    float * acc[TRI_ATT_MAXG];
    int32_t qa[TRI_ATT_MAXG], qb[TRI_ATT_MAXG];
    long t0, t1;
    tri_split((long) hp->n_head_kv * C, ith, nth, &t0, &t1);
    for (long task = t0; task < t1; task++) {
        const int c = (int) (task % C);
        const int h = (int) (task / C);
        int32_t lo, hi, k0, k1, ca, cb;
        tri_att_range(f, kv, a->il, h, f->row_pos[0], &lo, &hi);
        tri_att_chunks(f, kv, a->il, h, lo, hi, &k0, &k1);
        tri_att_clip(f, kv, a->il, h, k0 + c, lo, hi, &ca, &cb);
        float * part = f->att_part + ((size_t) h * C + c) * ps;
        for (int g = 0; g < G; g++) {
            q[g]   = f->q + (int64_t) (h * G + g) * D;
            s[g]   = f->att_s + ((size_t) ith * G + g) * TRI_ATT_CHUNK;
            acc[g] = part + (size_t) g * D;
            qa[g]  = ca;
            qb[g]  = cb;
        }
        tri_att_chunk(f, kv, a->il, h, G, q, ca, cb, qa, qb, s, acc, part + (size_t) G * D, part + (size_t) G * D + G);
    }
}

void tri_blk_attention(tri_forward * f, int il) {
    tri_att_task a = { .f = f, .il = il, .n_chunks = 1 };
    const tri_hparams * hp = &f->m->hp;
    if (f->n_tok > 1) {
        /* blocks of up to TRI_ATT_TB consecutive rows of one sequence */
        int nb = 0;
        for (int32_t t = 0; t < f->n_tok; t++) {
            if (t == 0 || f->row_kv[t] != f->row_kv[t - 1] || t - f->att_blk[nb - 1] == TRI_ATT_TB) {
                f->att_blk[nb++] = t;
            }
        }
        f->att_blk[nb] = f->n_tok;
        a.n_blocks = nb;
        tri_threadpool_run(f->tp, tri_att_prefill_worker, &a);
        return;
    }
    const int D = hp->head_dim, G = hp->n_head / hp->n_head_kv;
    int32_t n_max = 1;
    const tri_kv_cache * kv = f->row_kv[0];
    for (int h = 0; h < hp->n_head_kv; h++) {
        int32_t lo, hi, k0, k1;
        tri_att_range(f, kv, il, h, f->row_pos[0], &lo, &hi);
        tri_att_chunks(f, kv, il, h, lo, hi, &k0, &k1);
        n_max = TRI_MAX(n_max, k1 - k0);
    }
    a.n_chunks = n_max;
    tri_threadpool_run(f->tp, tri_att_decode_worker, &a);
    /* A KV head with fewer valid slots has empty trailing chunks: the fold skips them. */
    const size_t ps = tri_att_part_size(G, D);
    float * st = f->att_s; /* the workers are done with it */
    for (int h = 0; h < hp->n_head_kv; h++) {
        for (int g = 0; g < G; g++) {
            tri_att_state_init(st, D);
            for (int c = 0; c < a.n_chunks; c++) {
                const float * part = f->att_part + ((size_t) h * a.n_chunks + c) * ps;
                tri_att_fold(st, part + (size_t) g * D, part[(size_t) G * D + g], part[(size_t) G * D + G + g], D);
            }
            tri_att_finish(st, D, f->att + (int64_t) (h * G + g) * D);
        }
    }
}

static void tri_add_rows(float * x, const float * y, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        x[i] += y[i];
    }
}

/* x += block output f->tmp, normalised by post_norm first when the layer has one. */
static void tri_residual_add(tri_forward * f, const tri_tensor * post_norm) {
    if (post_norm->data) {
        tri_blk_rmsnorm(f, f->tmp, post_norm, f->tmp);
    }
    tri_add_rows(f->x, f->tmp, (int64_t) f->n_tok * f->m->hp.n_embd);
}

void tri_blk_attn_out(tri_forward * f, const tri_layer * L) {
    tri_mm_job job = { &L->wo, f->tmp, NULL };
    tri_matmuls(f, &job, 1, f->att, L->wo.ne0, f->n_tok);
    tri_residual_add(f, &L->post_attn_norm);
}

typedef struct tri_act_task {
    tri_act_mul_fn fn;
    float *        g;
    const float *  u;
    int64_t        n;
} tri_act_task;

/* Element-wise, so any split gives the same values; slices of 64 floats. */
static void tri_act_worker(void * arg, int ith, int nth) {
    const tri_act_task * a = arg;
    long s0, s1;
    tri_split((long) ((a->n + 63) / 64), ith, nth, &s0, &s1);
    const int64_t i0 = (int64_t) s0 * 64, i1 = TRI_MIN((int64_t) s1 * 64, a->n);
    if (i0 < i1) {
        a->fn(a->g + i0, a->u + i0, (int) (i1 - i0));
    }
}

/* Gated FFN: gate and up projections, act(gate) * up, down projection, residual add. */
static void tri_ffn_gated(tri_forward * f, const tri_layer * L, tri_act_mul_fn act_mul) {
    const tri_hparams * hp = &f->m->hp;
    tri_mm_job jobs[2] = { { &L->ffn_gate, f->gate, NULL }, { &L->ffn_up, f->up, NULL } };
    tri_matmuls(f, jobs, 2, f->xn, hp->n_embd, f->n_tok);
    tri_act_task a = { act_mul, f->gate, f->up, (int64_t) f->n_tok * hp->n_ff };
    if (f->n_tok >= 8) {
        tri_threadpool_run(f->tp, tri_act_worker, &a);
    } else {
        tri_act_worker(&a, 0, 1); /* a few rows: not worth waking the pool */
    }
    tri_mm_job down = { &L->ffn_down, f->tmp, NULL };
    tri_matmuls(f, &down, 1, f->gate, hp->n_ff, f->n_tok);
    tri_residual_add(f, &L->post_ffn_norm);
}

void tri_blk_ffn_swiglu(tri_forward * f, const tri_layer * L) {
    tri_ffn_gated(f, L, f->act.silu_mul);
}

void tri_blk_ffn_geglu(tri_forward * f, const tri_layer * L) {
    tri_ffn_gated(f, L, f->act.gelu_mul);
}

/* ---- whole chunk ------------------------------------------------------------------------------- */

/* cos, sin of every row's position times each inverse frequency (positions times scale). */
static void tri_rope_table(tri_forward * f, const float * inv_freq, double scale, float * table) {
    const int R = f->m->hp.rope_dim;
    for (int t = 0; t < f->n_tok; t++) {
        const double p = (double) f->row_pos[t] * scale;
        float * cs = table + (int64_t) t * R;
        for (int i = 0; i < R / 2; i++) {
            const double theta = p * inv_freq[i];
            cs[2 * i]     = (float) cos(theta);
            cs[2 * i + 1] = (float) sin(theta);
        }
    }
}

void tri_forward_rows(tri_forward * f, const triattn_token * tokens, int32_t n_tok, int32_t n_logits) {
    const struct triattn_model * m = f->m;
    const tri_hparams * hp = &m->hp;
    f->n_tok = n_tok;

    const tri_type_traits * et = tri_type_traits_get(m->w.tok_embd.type);
    const size_t erow = tri_row_size(m->w.tok_embd.type, hp->n_embd);
    for (int t = 0; t < n_tok; t++) {
        float * x = f->x + (int64_t) t * hp->n_embd;
        if (m->w.tok_embd.layout == TRI_WLAYOUT_X8) { /* tied to the output matrix, repacked for it */
            tri_x8_row_to_float(m->w.tok_embd.type, m->w.tok_embd.data, hp->n_embd, tokens[t], x);
        } else {
            et->to_float((const char *) m->w.tok_embd.data + (size_t) tokens[t] * erow, x, hp->n_embd);
        }
        if (hp->embd_scale != 1.0f) {
            for (int i = 0; i < hp->n_embd; i++) {
                x[i] *= hp->embd_scale;
            }
        }
    }
    tri_rope_table(f, m->rope_inv_freq, hp->rope_freq_scale, f->rope_cs);
    if (f->rope_cs_swa) {
        tri_rope_table(f, m->rope_inv_freq_swa, 1.0, f->rope_cs_swa);
    }

    for (int il = 0; il < hp->n_layer; il++) {
        m->arch->build_layer(f, il);
    }

    /* Final norm and logits (or, hidden_only, the normed rows in xn) for the rows the caller wants. */
    f->n_logits = 0;
    if (n_logits == 0) {
        return;
    }
    for (int i = 0; i < n_logits; i++) {
        const int32_t r = f->logit_rows[i];
        tri_rmsnorm(f->x + (int64_t) r * hp->n_embd, m->w.output_norm.data, f->xn + (int64_t) i * hp->n_embd,
                    hp->n_embd, hp->norm_eps);
    }
    f->hidden = f->xn;
    if (!f->hidden_only) {
        tri_mm_job job = { &m->w.output, f->logits, NULL };
        tri_matmuls(f, &job, 1, f->xn, hp->n_embd, n_logits);
    }
    f->n_logits = n_logits;
}
