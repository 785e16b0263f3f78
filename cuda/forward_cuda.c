/* The forward step on the device over the rows of one or more sessions of a model (llama, qwen2, qwen3 layers).
 *
 * A step runs on the lead session's buffers and stream; each row carries its own session's cache (tri_cuda_row), so
 * N sessions decoding one token each read every weight once. Per layer: RMSNorm fused with the 8-bit quantization of
 * its output (act.cuh), Q/K/V products (one launch per weight type, biases fused), q/k norms + RoPE + K/V append
 * (one launch), split-K attention (from att_mma_min rows of one session on tensor cores), the output projection
 * accumulated into the residual, RMSNorm, gate and up, SwiGLU fused with quantization, the down projection
 * accumulated into the residual. Steps of up to TRI_CU_VEC_ROWS rows multiply 8-bit activations, with the integer
 * matrix-vector kernels (8 rows a launch) or, from mq_min rows, on integer tensor cores (each weight read once);
 * longer steps use fp16 tensor cores, or up to mq_max rows (TRIATTN_CUDA_MQ_MAX; off by default) integer tensor
 * cores again. Decode steps (every session one token) are recorded once per shape (row count, attention parts) as a
 * CUDA graph and replayed: the inputs that change (token ids, RoPE table, row descriptors) travel in page-locked
 * buffers the graph copies from. */
#include "backend_cuda.h"
#include "common.h"
#include "model.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

typedef struct tri_cu_step {
    tri_cu_session *             c;   /* lead: stream and page-locked inputs */
    const struct triattn_model * m;
    const tri_cu_model *         cm;
    const tri_cu_ws *            ws;  /* the model's step buffers */
    int                          n;   /* rows */
    int                          first_logit, n_logits;
    int                          parts;
    bool                         chunk;  /* one session's rows: attention on tensor cores */
    bool                         hidden; /* the logit rows' final normed states come back instead of logits */
} tri_cu_step;

/* One product of a linear: weight, output rows (stride = weight rows), optional bias. */
typedef struct tri_cu_job {
    const tri_cu_w * w;
    float *          y;
    const tri_cu_w * bias;
} tri_cu_job;

/* Rows [r0, r0 + n) of a q8 buffer. */
static tri_cuda_q8 tri_cu_q8_rows(tri_cuda_q8 q, int r0) {
    q.qs   += (size_t) r0 * q.ld;
    q.meta += (size_t) r0 * (q.ld / 32);
    return q;
}

/* y_j (+)= W_j f(in) for jobs reading one input of width ne0 and n rows, where f is RMSNorm (norm_w; norm), SwiGLU
 * with `up`, or nothing. fbuf receives f(in) as floats when the tensor cores or float weights need it. */
static enum triattn_status tri_cu_linear(tri_cu_step * t, int n, const float * in, int64_t ld_in, const float * up,
                                         bool norm, const tri_cu_w * norm_w, float * fbuf, int64_t ne0,
                                         const tri_cu_job * jobs, int n_jobs, bool accumulate) {
    tri_cu_session * c = t->c;
    void * sm = c->stream;
    const bool vec = n <= TRI_CU_VEC_ROWS;  /* matrix-vector kernels possible */
    const bool q8 = vec || n <= TRI_MIN(c->mq_max, t->ws->q8_rows); /* quantized weights read 8-bit activations */
    const bool transform = norm || up;
    /* what the products read */
    int act_types[TRI_CU_ACT_SLOTS], n_act = 0;
    bool need_float = !q8;
    for (int j = 0; j < n_jobs; j++) {
        const int at = tri_cuda_mm_act_type(jobs[j].w->type);
        if (!at) {
            need_float = true;
            continue;
        }
        int k = 0;
        while (k < n_act && act_types[k] != at) {
            k++;
        }
        if (k == n_act && q8) {
            act_types[n_act++] = at; /* at most 3 activation types exist */
        }
    }
    tri_cuda_q8 acts[TRI_CU_ACT_SLOTS];
    for (int k = 0; k < n_act; k++) {
        acts[k] = t->ws->q8[k];
        acts[k].type = act_types[k];
    }
    const float * xf = transform ? fbuf : in;
    const int64_t ldx = transform ? ne0 : ld_in;
    const float eps = t->m->hp.norm_eps;
    enum triattn_status st = TRIATTN_OK;
    if (transform || n_act > 0) {
        TRI_CU_TRY(tri_cuda_act_prep(in, ld_in, up, norm, norm_w ? norm_w->d : NULL, eps, n, (int) ne0,
                                     transform && need_float ? fbuf : NULL, ne0, acts, TRI_MIN(n_act, 2), sm));
        if (n_act > 2) {
            TRI_CU_TRY(tri_cuda_act_prep(in, ld_in, up, norm, norm_w ? norm_w->d : NULL, eps, n, (int) ne0, NULL, ne0,
                                         acts + 2, 1, sm));
        }
    }
    /* one launch per weight type (jobs of a type keep their order) */
    bool done[TRI_CUDA_MM_JOBS] = { false };
    for (int j = 0; j < n_jobs; j++) {
        if (done[j]) {
            continue;
        }
        const int type = jobs[j].w->type;
        tri_cuda_mm_job mj[TRI_CUDA_MM_JOBS];
        int nj = 0;
        for (int i = j; i < n_jobs; i++) {
            if (!done[i] && jobs[i].w->type == type) {
                mj[nj++] = (tri_cuda_mm_job) { jobs[i].w->d, jobs[i].w->ne1, jobs[i].y, jobs[i].w->ne1,
                                               jobs[i].bias ? jobs[i].bias->d : NULL };
                done[i] = true;
            }
        }
        const int at = tri_cuda_mm_act_type(type);
        if (!q8 || (!at && !vec)) {
            TRI_CU_TRY(tri_cuda_mm_tc(type, ne0, mj, nj, xf, ldx, n, accumulate, sm));
            continue;
        }
        int slot = 0;
        while (at && act_types[slot] != at) {
            slot++;
        }
        if (at && (n >= c->mq_min || !vec)) { /* every weight byte once per 32 rows */
            TRI_CU_TRY(tri_cuda_mm_q(type, ne0, mj, nj, &acts[slot], n, accumulate, sm));
            continue;
        }
        for (int r0 = 0; r0 < n; r0 += TRI_CUDA_MV_TOK) {
            const int nr = TRI_MIN(TRI_CUDA_MV_TOK, n - r0);
            tri_cuda_mm_job g[TRI_CUDA_MM_JOBS];
            for (int i = 0; i < nj; i++) {
                g[i] = mj[i];
                g[i].y += (size_t) r0 * g[i].ldy;
            }
            tri_cuda_q8 qr;
            if (at) {
                qr = tri_cu_q8_rows(acts[slot], r0);
            }
            TRI_CU_TRY(tri_cuda_mm_vec(type, ne0, g, nj, xf ? xf + (size_t) r0 * ldx : NULL, ldx, at ? &qr : NULL, nr,
                                       accumulate, sm));
        }
    }
fail:
    return st;
}

/* One pre-norm attention + SwiGLU layer (llama, qwen2 biases, qwen3 q/k norms). */
static enum triattn_status tri_cu_layer_run(tri_cu_step * t, int il) {
    const tri_cu_session * c = t->c;
    const tri_cu_ws * w = t->ws;
    const tri_cu_layer * Lw = &t->cm->layers[il];
    const tri_hparams * hp = &t->m->hp;
    const int n = t->n;
    void * sm = c->stream;
    enum triattn_status st;
    const tri_cu_job qkv[3] = { { &Lw->wq, w->q, Lw->bq.d ? &Lw->bq : NULL }, { &Lw->wk, w->k, Lw->bk.d ? &Lw->bk : NULL },
                                { &Lw->wv, w->v, Lw->bv.d ? &Lw->bv : NULL } };
    TRI_CU_TRY(tri_cu_linear(t, n, w->x, c->n_embd, NULL, true, &Lw->attn_norm, w->xn, c->n_embd, qkv, 3, false));
    tri_cu_prof_mark(c->prof, TRI_CU_PH_QKV, sm);
    const tri_cuda_heads heads = { hp->n_head, hp->n_head_kv, hp->head_dim, hp->rope_dim,
                                   hp->rope_pairing == TRI_ROPE_ADJACENT ? 0 : 1, hp->norm_eps };
    TRI_CU_TRY(tri_cuda_qkv_post(w->q, w->k, w->v, Lw->q_norm.d, Lw->k_norm.d, w->cs, w->row, n, il, &heads, c->L, sm));
    tri_cu_prof_mark(c->prof, TRI_CU_PH_KV, sm);
    TRI_CU_TRY(tri_cuda_attention(w->q, w->row, n, il, c->H, c->Hkv, c->D, hp->attn_scale, t->parts, t->chunk, w->part,
                                  c->att_fused ? w->tickets : NULL, w->att, sm));
    tri_cu_prof_mark(c->prof, TRI_CU_PH_ATT, sm);
    const tri_cu_job out = { &Lw->wo, w->x, NULL };
    TRI_CU_TRY(tri_cu_linear(t, n, w->att, c->q_dim, NULL, false, NULL, NULL, c->q_dim, &out, 1, true));
    tri_cu_prof_mark(c->prof, TRI_CU_PH_OUT, sm);
    const tri_cu_job ffn[2] = { { &Lw->ffn_gate, w->gate, NULL }, { &Lw->ffn_up, w->up, NULL } };
    TRI_CU_TRY(tri_cu_linear(t, n, w->x, c->n_embd, NULL, true, &Lw->ffn_norm, w->xn, c->n_embd, ffn, 2, false));
    tri_cu_prof_mark(c->prof, TRI_CU_PH_FFN, sm);
    const tri_cu_job down = { &Lw->ffn_down, w->x, NULL };
    TRI_CU_TRY(tri_cu_linear(t, n, w->gate, c->n_ff, w->up, false, NULL, w->hid, c->n_ff, &down, 1, true));
    tri_cu_prof_mark(c->prof, TRI_CU_PH_DOWN, sm);
    return TRIATTN_OK;
fail:
    return st;
}

/* Everything a step runs on the device, from the inputs in the page-locked buffers to the logits copied back. */
static enum triattn_status tri_cu_enqueue(tri_cu_step * t) {
    tri_cu_session * c = t->c;
    const tri_cu_ws * w = t->ws;
    const int n = t->n;
    void * sm = c->stream;
    enum triattn_status st;
    tri_cu_prof_begin(c->prof, sm);
    TRI_CU_TRY(tri_cuda_h2d(w->tok, c->h_tok, sizeof(int32_t) * (size_t) n, sm));
    TRI_CU_TRY(tri_cuda_h2d(w->cs, c->h_cs, sizeof(float) * (size_t) n * c->R, sm));
    TRI_CU_TRY(tri_cuda_h2d(w->row, c->h_rows, sizeof(tri_cuda_row) * (size_t) n, sm));
    TRI_CU_TRY(tri_cuda_get_rows(t->cm->tok_embd.type, t->cm->tok_embd.d, c->n_embd, w->tok, n, w->x, sm));
    tri_cu_prof_mark(c->prof, TRI_CU_PH_INPUT, sm);
    for (int il = 0; il < c->L; il++) {
        TRI_CU_TRY(tri_cu_layer_run(t, il));
    }
    TRI_CU_TRY(tri_cuda_kv_bump(w->row, n, c->L * c->Hkv, sm));
    if (t->hidden && t->n_logits > 0) { /* the rows after the output norm, into the page-locked logit rows */
        TRI_CU_TRY(tri_cuda_act_prep(w->x + (size_t) t->first_logit * c->n_embd, c->n_embd, NULL, true,
                                     t->cm->output_norm.d, t->m->hp.norm_eps, t->n_logits, c->n_embd, w->xn,
                                     c->n_embd, NULL, 0, sm));
        TRI_CU_TRY(tri_cuda_d2h(c->h_logits, w->xn, sizeof(float) * (size_t) t->n_logits * c->n_embd, sm));
    }
    /* logits in pieces of TRI_CU_LOGIT_ROWS rows, each copied back to the session's page-locked rows */
    for (int r0 = 0; r0 < t->n_logits && !t->hidden; r0 += TRI_CU_LOGIT_ROWS) {
        const int nr = TRI_MIN(TRI_CU_LOGIT_ROWS, t->n_logits - r0);
        const tri_cu_job out = { &t->cm->output, w->logits, NULL };
        TRI_CU_TRY(tri_cu_linear(t, nr, w->x + (size_t) (t->first_logit + r0) * c->n_embd, c->n_embd, NULL, true,
                                 &t->cm->output_norm, w->xn, c->n_embd, &out, 1, false));
        TRI_CU_TRY(tri_cuda_d2h(c->h_logits + (size_t) r0 * c->n_vocab, w->logits,
                                sizeof(float) * (size_t) nr * c->n_vocab, sm));
    }
    tri_cu_prof_mark(c->prof, TRI_CU_PH_LOGITS, sm); /* with the live-count bump */
    return TRIATTN_OK;
fail:
    return st;
}

void tri_cu_graphs_free(tri_cu_session * c) {
    for (int i = 0; i < TRI_CU_GRAPHS; i++) {
        tri_cuda_graph_destroy(c->graphs[i].exec);
        c->graphs[i] = (tri_cu_graph) { 0 };
    }
}

/* The graph entry of a shape: the one recorded for it, else the least recently used (emptied) for a new recording. */
static tri_cu_graph * tri_cu_graph_of(tri_cu_session * c, int n, int parts) {
    tri_cu_graph * lru = &c->graphs[0];
    for (int i = 0; i < TRI_CU_GRAPHS; i++) {
        tri_cu_graph * g = &c->graphs[i];
        if (g->n == n && g->parts == parts) {
            g->used = ++c->graph_clock;
            return g;
        }
        if (g->used < lru->used) {
            lru = g;
        }
    }
    tri_cuda_graph_destroy(lru->exec);
    *lru = (tri_cu_graph) { .n = n, .parts = parts, .used = ++c->graph_clock };
    return lru;
}

/* Runs the step: replays (recording it first) the graph of a decode shape, else launches directly. */
static enum triattn_status tri_cu_run(tri_cu_step * t, bool decode_shape) {
    tri_cu_session * c = t->c;
    if (c->graphs_version != t->ws->version) { /* the workspace moved since they were recorded */
        tri_cu_graphs_free(c);
        c->graphs_version = t->ws->version;
    }
    tri_cu_graph * g = decode_shape && c->use_graphs && t->n <= TRI_CU_VEC_ROWS ? tri_cu_graph_of(c, t->n, t->parts)
                                                                                 : NULL;
    if (g && !g->failed && !g->exec) {
        enum triattn_status st = tri_cuda_graph_begin(c->stream);
        const enum triattn_status qst = st == TRIATTN_OK ? tri_cu_enqueue(t) : st;
        char why[256]; /* the first failure's message */
        snprintf(why, sizeof why, "%s", tri_cuda_last_error());
        void * exec = NULL;
        if (st == TRIATTN_OK) {
            st = tri_cuda_graph_end(c->stream, &exec); /* ends the capture even after a failed enqueue */
        }
        if (qst != TRIATTN_OK || st != TRIATTN_OK) {
            tri_cuda_graph_destroy(exec);
            g->failed = true;
            tri_log(TRIATTN_LOG_WARN, "CUDA backend: recording the %d-row decode step as a graph failed (%s); running "
                    "it without one", t->n, qst != TRIATTN_OK ? why : tri_cuda_last_error());
        } else {
            g->exec = exec;
        }
    }
    if (g && g->exec) {
        return tri_cuda_graph_launch(g->exec, c->stream);
    }
    return tri_cu_enqueue(t);
}

/* Split-K parts: enough blocks to fill the device, never ranges much under TRI_CU_ATT_SLOTS of the step's `slots`
 * (the most any row sees), within the scratch. A block takes (row, KV head, up to 8 query heads, part), or on tensor
 * cores (chunk) 64 (row, query head) pairs of a KV head and a part. The count follows the live slots, not the
 * cache's capacity (a short context in a large cache launches few blocks), on a coarse scale: every count up to 8,
 * then four steps per doubling, so that a decode reaching deep contexts records few graphs. */
static int tri_cu_parts(const tri_cu_session * c, const tri_cu_ws * ws, int n, int32_t slots, bool chunk) {
    const int sms = TRI_MAX(tri_cuda_sm_count(), 1);
    const int groups = (c->H / c->Hkv + 7) / 8;
    const int chunk_blocks = (n * (c->H / c->Hkv) + TRI_CUDA_ATT_CHUNK_ROWS - 1) / TRI_CUDA_ATT_CHUNK_ROWS;
    const int per_part = chunk ? chunk_blocks * c->Hkv : n * c->Hkv * groups; /* blocks */
    int parts = (8 * sms + per_part - 1) / per_part;
    parts = TRI_MAX(TRI_MIN(parts, (slots + TRI_CU_ATT_SLOTS - 1) / TRI_CU_ATT_SLOTS), 1);
    int step = 1;
    while (step * 8 < parts) {
        step *= 2;
    }
    parts = (parts + step - 1) / step * step;
    parts = TRI_MIN(parts, TRI_CUDA_ATT_MAX_PARTS);
    parts = TRI_MIN(parts, ws->part_rows / n);
    return TRI_MAX(parts, 1);
}

/* After a failed step, before the model's lock is released: waits for what the step queued (the workspace is the
 * next step's), sets the part counters back to zero and the device's live counts back to the host mirror's (the
 * step may have bumped them). why receives the failure's message first. */
static void tri_cu_step_abort(const tri_cu_step * t, triattn_session * const * ss, int32_t n_sess, char * why,
                              size_t wn) {
    snprintf(why, wn, "%s", tri_cuda_last_error());
    tri_cu_session * c = t->c;
    (void) tri_cuda_sync(c->stream);
    (void) tri_cuda_memset(t->ws->tickets, 0, tri_cu_tickets_bytes(&t->m->hp, t->ws->rows), c->stream);
    for (int i = 0; i < n_sess; i++) {
        const tri_cu_session * si = ss[i]->backend_state;
        (void) tri_cuda_h2d(si->n_live, ss[i]->kv.n_live, sizeof(int32_t) * (size_t) c->L * c->Hkv, c->stream);
    }
    (void) tri_cuda_sync(c->stream);
}

enum triattn_status tri_cu_forward(triattn_session * const * ss, const triattn_token * const * toks,
                                   const int32_t * counts, int32_t n_sess, enum tri_logits_mode mode, char * err,
                                   size_t en) {
    triattn_session * lead = ss[0];
    tri_cu_session * c = lead->backend_state;
    const struct triattn_model * m = lead->model;
    const tri_hparams * hp = &m->hp;
    int n = 0;
    bool one_each = true;
    int32_t max_slots = 0; /* the most slots a row of the step sees */
    for (int i = 0; i < n_sess; i++) {
        ss[i]->fwd.n_logits = 0;
        if (ss[i]->fwd.calib) {
            return tri_fail(err, en, TRIATTN_ERR_UNSUPPORTED, "calibration runs on the CPU backend only: load the model "
                            "with n_gpu_layers = 0 to calibrate");
        }
        int32_t live_lo, live_hi;
        tri_kv_cache_live_range(&ss[i]->kv, &live_lo, &live_hi);
        if (ss[i]->model != m || !ss[i]->backend_state || counts[i] <= 0 || live_hi + counts[i] > ss[i]->kv.capacity) {
            return tri_fail(err, en, TRIATTN_ERR_INTERNAL, "forward step: session %d (%d tokens, %d live of %d slots) "
                            "cannot join", i, counts[i], live_hi, ss[i]->kv.capacity);
        }
        n += counts[i];
        one_each = one_each && counts[i] == 1;
        max_slots = TRI_MAX(max_slots, live_hi + counts[i]);
    }
    if (n > c->n_batch || (n_sess > 1 && (!one_each || mode == TRI_LOGITS_ALL))) {
        return tri_fail(err, en, TRIATTN_ERR_INTERNAL, "forward step: %d rows of %d sessions (n_batch %d): several "
                        "sessions step with one token each", n, n_sess, c->n_batch);
    }
    /* inputs: tokens, RoPE table (in double, exactly as the CPU's), row descriptors */
    int r = 0;
    for (int i = 0; i < n_sess; i++) {
        const tri_cu_session * si = ss[i]->backend_state;
        for (int j = 0; j < counts[i]; j++, r++) {
            const int32_t position = ss[i]->n_past + j;
            c->h_tok[r] = toks[i][j];
            const double p = (double) position * hp->rope_freq_scale;
            float * cs = c->h_cs + (size_t) r * c->R;
            for (int f = 0; f < c->F; f++) {
                const double theta = p * m->rope_inv_freq[f];
                cs[2 * f]     = (float) cos(theta);
                cs[2 * f + 1] = (float) sin(theta);
            }
            c->h_rows[r] = (tri_cuda_row) { si->K, si->V, si->pos, si->n_live, si->cap, position, j, counts[i] };
        }
    }
    tri_cu_model * cm = m->backend_state;
    pthread_mutex_lock(&cm->lock); /* one step at a time on the model's workspace */
    const bool chunk = n_sess == 1 && n >= c->att_mma_min && TRI_CUDA_ATT_MMA_D(c->D);
    tri_cu_step t = { .c = c, .m = m, .cm = cm, .ws = &cm->ws, .n = n, .chunk = chunk,
                      .hidden = n_sess == 1 && lead->fwd.hidden_only,
                      .parts = tri_cu_parts(c, &cm->ws, n, max_slots, chunk) };
    if (mode == TRI_LOGITS_ALL) {
        t.first_logit = 0;
        t.n_logits = n;
    } else if (mode == TRI_LOGITS_LAST) {
        t.first_logit = n_sess > 1 ? 0 : n - 1; /* several sessions: one row each */
        t.n_logits = n_sess > 1 ? n : 1;
    }
    const double t0 = c->prof ? tri_time_ms() : 0.0;
    enum triattn_status st = tri_cuda_set_device(TRI_CU_DEVICE);
    if (st == TRIATTN_OK) {
        st = tri_cu_run(&t, one_each && mode == TRI_LOGITS_LAST);
    }
    if (st == TRIATTN_OK) {
        st = tri_cuda_sync(c->stream);
    }
    char why[256] = "";
    if (st == TRIATTN_OK) {
        tri_cu_prof_step(c->prof, one_each, n, c->prof ? tri_time_ms() - t0 : 0.0);
    } else {
        tri_cu_step_abort(&t, ss, n_sess, why, sizeof why);
    }
    pthread_mutex_unlock(&cm->lock);
    if (st != TRIATTN_OK) {
        return tri_fail(err, en, st, "%s (the session's cache may be inconsistent: reset it)", why);
    }

    /* each session: its logits rows, and the host mirror follows the device (positions appended to every
     * (layer, KV head)) */
    for (int i = 0; i < n_sess; i++) {
        triattn_session * s = ss[i];
        if (t.n_logits > 0 && i > 0) {
            memcpy(s->fwd.logits, c->h_logits + (size_t) i * c->n_vocab, sizeof(float) * (size_t) c->n_vocab);
        }
        s->fwd.n_logits = n_sess > 1 ? (t.n_logits > 0) : t.n_logits;
        s->fwd.hidden = t.hidden ? c->h_logits : NULL;
        for (int lk = 0; lk < c->L * c->Hkv; lk++) {
            int32_t * pos = s->kv.pos + (size_t) lk * s->kv.capacity;
            for (int j = 0; j < counts[i]; j++) {
                pos[s->kv.n_live[lk] + j] = s->n_past + j;
            }
            s->kv.n_live[lk] += counts[i];
        }
    }
    return TRIATTN_OK;
}
