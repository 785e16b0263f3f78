#include "forward.h"
#include "calibration.h"
#include "common.h"
#include "matmul.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define TRI_ATT_CHUNK 256 /* slots per attention chunk, see tri_blk_attention */

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
    /* Converted activations: at most 4 bytes per value (F32 weights), one region per distinct type. */
    f->xq_stride = tri_align64((size_t) n_batch * (size_t) max_in * 4 + 1024);

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
        { (void **) &f->att_s,    sizeof(float) * (size_t) nth * G * TRI_ATT_CHUNK },
        { (void **) &f->att_part, sizeof(float) * (size_t) TRI_MAX(nth, hp->n_head_kv) * n_chunks * G * (hp->head_dim + 2) },
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
    f->mem = aligned_alloc(64, total);
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
    free(f->mem);
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
            tri_matmul_rows(W->data, W->type, W->ne0, lo - base, hi - base, t->jobs[j].xq, t->n_tok, t->jobs[j].out,
                            W->ne1);
        }
        base += W->ne1;
    }
}

/* out_j[t] = in[t] @ W_j for every job; the input is converted once per distinct activation type. */
static void tri_matmuls(tri_forward * f, tri_mm_job * jobs, int n_jobs, const float * in, int64_t ld_in, int32_t n_tok) {
    tri_mm_task t = { .jobs = jobs, .n_jobs = n_jobs, .n_tok = n_tok, .in = in, .ld_in = ld_in, .n_in = jobs[0].W->ne0 };
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

/* Attention works on fixed chunks of TRI_ATT_CHUNK slots: each chunk yields a partial (max, sum, weighted V)
 * and the partials are merged in chunk order. Prefill and decode use the same chunks and the same merge,
 * so a token's attention output does not depend on how the tokens were batched. */

/* Partial of one chunk for the G query heads of KV head h: acc[G][D], then m[G], then l[G]. */
static size_t tri_att_part_size(int G, int D) {
    return (size_t) G * (D + 2);
}

typedef struct tri_att_task {
    tri_forward * f;
    int           il;
    int           n_chunks;  /* decode only: chunks per KV head (tasks = n_head_kv * n_chunks) */
} tri_att_task;

/* Number of live slots whose position is <= p (live positions are increasing). */
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

/* Live slots [*lo, *hi) of (il, h) a query at position p attends to: positions <= p, and on a sliding-window
 * layer only the window's most recent ones (> p - window). */
static void tri_att_range(const tri_forward * f, const tri_kv_cache * kv, int il, int h, int32_t p, int32_t * lo,
                          int32_t * hi) {
    const int32_t * pos = tri_kv_pos(kv, il, h);
    *hi = tri_upper_bound(pos, kv->n_live[tri_kv_index(kv, il, h)], p);
    const int32_t w = tri_hp_layer_window(&f->m->hp, il);
    *lo = w > 0 ? tri_upper_bound(pos, *hi, p - w) : 0;
}

/* Partial over slots [j0, j1) of (layer il, KV head h) for the G queries q (G x D). */
static void tri_att_partial(const tri_forward * f, const tri_kv_cache * kv, int il, int h, const float * q,
                            int32_t j0, int32_t j1, float * s, float * part) {
    const tri_hparams * hp = &f->m->hp;
    const int D = hp->head_dim, G = hp->n_head / hp->n_head_kv;
    const int n = j1 - j0;
    float * acc = part;
    float * m = part + (size_t) G * D;
    float * l = m + G;
    memset(acc, 0, sizeof(float) * G * D);
    if (n <= 0) {
        for (int g = 0; g < G; g++) {
            m[g] = -INFINITY;
            l[g] = 0.0f;
        }
        return;
    }
    f->attn.scores(D, G, q, tri_kv_k(kv, il, h) + (size_t) j0 * D, n, hp->attn_scale, s, n);
    for (int g = 0; g < G; g++) {
        float * sg = s + (size_t) g * n;
        float mx = -INFINITY;
        for (int j = 0; j < n; j++) {
            mx = sg[j] > mx ? sg[j] : mx;
        }
        m[g] = mx;
        l[g] = f->attn.exp_sum(sg, n, mx);
    }
    f->attn.accum(D, G, s, n, tri_kv_v(kv, il, h) + (size_t) j0 * D, n, acc);
}

/* out[g] = merge of n_chunks partials (stride part_stride floats), in chunk order. */
static void tri_att_merge(const float * parts, size_t part_stride, int n_chunks, int G, int D, float * out) {
    for (int g = 0; g < G; g++) {
        float mx = -INFINITY;
        for (int c = 0; c < n_chunks; c++) {
            const float * p = parts + c * part_stride;
            const float mc = p[(size_t) G * D + g];
            mx = mc > mx ? mc : mx;
        }
        float * o = out + (size_t) g * D;
        memset(o, 0, sizeof(float) * D);
        float total = 0.0f;
        for (int c = 0; c < n_chunks; c++) {
            const float * p = parts + c * part_stride;
            const float lc = p[(size_t) G * D + G + g];
            if (!(lc > 0.0f)) {
                continue;
            }
            const float w = expf(p[(size_t) G * D + g] - mx);
            total += w * lc;
            const float * a = p + (size_t) g * D;
            for (int d = 0; d < D; d++) {
                o[d] += w * a[d];
            }
        }
        const float inv = total > 0.0f ? 1.0f / total : 0.0f;
        for (int d = 0; d < D; d++) {
            o[d] *= inv;
        }
    }
}

/* Prefill: one task per (token, KV head), its chunks computed and merged by the same thread. */
static void tri_att_prefill_worker(void * arg, int ith, int nth) {
    tri_att_task * a = arg;
    tri_forward * f = a->f;
    const tri_hparams * hp = &f->m->hp;
    const int D = hp->head_dim, G = hp->n_head / hp->n_head_kv;
    const size_t ps = tri_att_part_size(G, D);
    const int max_chunks = (f->capacity + TRI_ATT_CHUNK - 1) / TRI_ATT_CHUNK;
    float * s = f->att_s + (size_t) ith * G * TRI_ATT_CHUNK;
    float * parts = f->att_part + (size_t) ith * max_chunks * ps;
    long t0, t1;
    tri_split((long) f->n_tok * hp->n_head_kv, ith, nth, &t0, &t1);
    for (long task = t0; task < t1; task++) {
        const int h = task % hp->n_head_kv;
        const int t = task / hp->n_head_kv;
        const tri_kv_cache * kv = f->row_kv[t];
        int32_t lo, hi;
        tri_att_range(f, kv, a->il, h, f->row_pos[t], &lo, &hi);
        const int n_chunks = TRI_MAX(1, (hi - lo + TRI_ATT_CHUNK - 1) / TRI_ATT_CHUNK);
        const float * q = f->q + ((int64_t) t * hp->n_head + (int64_t) h * G) * D;
        for (int c = 0; c < n_chunks; c++) {
            tri_att_partial(f, kv, a->il, h, q, lo + c * TRI_ATT_CHUNK, TRI_MIN(lo + (c + 1) * TRI_ATT_CHUNK, hi), s,
                            parts + c * ps);
        }
        tri_att_merge(parts, ps, n_chunks, G, D, f->att + ((int64_t) t * hp->n_head + (int64_t) h * G) * D);
    }
}

/* Decode: one task per (KV head, chunk), so threads share even one KV head; merged afterwards. */
static void tri_att_decode_worker(void * arg, int ith, int nth) {
    tri_att_task * a = arg;
    tri_forward * f = a->f;
    const tri_hparams * hp = &f->m->hp;
    const tri_kv_cache * kv = f->row_kv[0];
    const int D = hp->head_dim, G = hp->n_head / hp->n_head_kv, C = a->n_chunks;
    const size_t ps = tri_att_part_size(G, D);
    float * s = f->att_s + (size_t) ith * G * TRI_ATT_CHUNK;
    long t0, t1;
    tri_split((long) hp->n_head_kv * C, ith, nth, &t0, &t1);
    for (long task = t0; task < t1; task++) {
        const int c = task % C;
        const int h = task / C;
        int32_t lo, hi;
        tri_att_range(f, kv, a->il, h, f->row_pos[0], &lo, &hi);
        const float * q = f->q + (int64_t) h * G * D;
        tri_att_partial(f, kv, a->il, h, q, TRI_MIN(lo + c * TRI_ATT_CHUNK, hi),
                        TRI_MIN(lo + (c + 1) * TRI_ATT_CHUNK, hi), s, f->att_part + ((size_t) h * C + c) * ps);
    }
}

void tri_blk_attention(tri_forward * f, int il) {
    tri_att_task a = { .f = f, .il = il, .n_chunks = 1 };
    if (f->n_tok > 1) {
        tri_threadpool_run(f->tp, tri_att_prefill_worker, &a);
        return;
    }
    const tri_hparams * hp = &f->m->hp;
    const int D = hp->head_dim, G = hp->n_head / hp->n_head_kv;
    int32_t n_valid_max = 0;
    const tri_kv_cache * kv = f->row_kv[0];
    for (int h = 0; h < hp->n_head_kv; h++) {
        int32_t lo, hi;
        tri_att_range(f, kv, il, h, f->row_pos[0], &lo, &hi);
        n_valid_max = TRI_MAX(n_valid_max, hi - lo);
    }
    a.n_chunks = TRI_MAX(1, (n_valid_max + TRI_ATT_CHUNK - 1) / TRI_ATT_CHUNK);
    tri_threadpool_run(f->tp, tri_att_decode_worker, &a);
    /* A KV head with fewer valid slots has empty trailing chunks: the merge skips them. */
    const size_t ps = tri_att_part_size(G, D);
    for (int h = 0; h < hp->n_head_kv; h++) {
        tri_att_merge(f->att_part + (size_t) h * a.n_chunks * ps, ps, a.n_chunks, G, D, f->att + (int64_t) h * G * D);
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

/* Gated FFN: gate and up projections, act(gate) * up, down projection, residual add. */
static void tri_ffn_gated(tri_forward * f, const tri_layer * L, void (*act_mul)(float *, const float *, int)) {
    const tri_hparams * hp = &f->m->hp;
    tri_mm_job jobs[2] = { { &L->ffn_gate, f->gate, NULL }, { &L->ffn_up, f->up, NULL } };
    tri_matmuls(f, jobs, 2, f->xn, hp->n_embd, f->n_tok);
    act_mul(f->gate, f->up, f->n_tok * hp->n_ff);
    tri_mm_job down = { &L->ffn_down, f->tmp, NULL };
    tri_matmuls(f, &down, 1, f->gate, hp->n_ff, f->n_tok);
    tri_residual_add(f, &L->post_ffn_norm);
}

void tri_blk_ffn_swiglu(tri_forward * f, const tri_layer * L) {
    tri_ffn_gated(f, L, tri_silu_mul);
}

void tri_blk_ffn_geglu(tri_forward * f, const tri_layer * L) {
    tri_ffn_gated(f, L, tri_gelu_mul);
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
        et->to_float((const char *) m->w.tok_embd.data + (size_t) tokens[t] * erow, x, hp->n_embd);
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

    /* Final norm and logits for the rows the caller wants. */
    f->n_logits = 0;
    if (n_logits == 0) {
        return;
    }
    for (int i = 0; i < n_logits; i++) {
        const int32_t r = f->logit_rows[i];
        tri_rmsnorm(f->x + (int64_t) r * hp->n_embd, m->w.output_norm.data, f->xn + (int64_t) i * hp->n_embd,
                    hp->n_embd, hp->norm_eps);
    }
    tri_mm_job job = { &m->w.output, f->logits, NULL };
    tri_matmuls(f, &job, 1, f->xn, hp->n_embd, n_logits);
    f->n_logits = n_logits;
}
