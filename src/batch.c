/* The forward step: one pass of the model over the chunks of one or more sessions. Every decode goes through
 * tri_step: a single session is a batch of one (triattn_session_decode), several sessions ride one step
 * (continuous batching, triattn_batch_decode), on the CPU (rows of the lead session's buffers) or on the
 * sessions' GPU backend (each weight read once for all of them). */
#include "backend.h"
#include "common.h"
#include "model.h"
#include "session.h"

#include <stdio.h>
#include <string.h>

#define TRI_BATCH_MAX 64

/* True when s's n tokens can ride in the step led by lead (after `rows` rows) without changing what they
 * compute; otherwise s is decoded alone, which also reports any error in its arguments. Calibrating sessions
 * decode alone; on a GPU backend several sessions share a step with one token each. */
static bool tri_batch_joinable(const triattn_session * lead, const triattn_session * s, const triattn_token * toks,
                               int32_t n, int32_t rows) {
    if (s->model != lead->model || s->calib || s->backend != lead->backend || n > tri_session_chunk_room(s) ||
        tri_session_recall_cut(s, toks, n) < n ||
        rows + n > lead->fwd.n_batch || (int64_t) s->n_past + n > s->params.n_ctx) {
        return false;
    }
    if (s->backend ? n != 1 : s->kv.cap_max > lead->fwd.capacity) {
        return false;
    }
    for (int32_t i = 0; i < n; i++) {
        if (toks[i] < 0 || toks[i] >= s->model->hp.n_vocab) {
            return false;
        }
    }
    return true;
}

/* The forward pass of one step on the CPU: the rows of every session on ss[0]'s buffers; logits of each
 * session's rows (mode) into its own buffer. */
static void tri_step_cpu(triattn_session * const * ss, const triattn_token * const * toks, const int32_t * counts,
                         int32_t n, enum tri_logits_mode mode) {
    tri_forward * f = &ss[0]->fwd;
    int32_t r = 0, nl = 0;
    for (int32_t i = 0; i < n; i++) {
        const int32_t first = mode == TRI_LOGITS_ALL ? 0 : counts[i] - 1;
        for (int32_t t = 0; t < counts[i]; t++, r++) {
            f->row_tok[r] = toks[i][t];
            f->row_kv[r]  = &ss[i]->kv;
            f->row_pos[r] = ss[i]->n_past + t;
            if (mode != TRI_LOGITS_NONE && t >= first) {
                f->logit_rows[nl++] = r;
            }
        }
    }
    tri_forward_rows(f, f->row_tok, r, nl);
    /* The lead's rows come first in f->logits; every other session gets a copy of its own. */
    const size_t V = (size_t) ss[0]->model->hp.n_vocab;
    nl = 0;
    for (int32_t i = 0; i < n; i++) {
        const int32_t rows = mode == TRI_LOGITS_NONE ? 0 : mode == TRI_LOGITS_ALL ? counts[i] : 1;
        if (i > 0 && rows > 0) {
            memcpy(ss[i]->fwd.logits, f->logits + (size_t) nl * V, (size_t) rows * V * sizeof(float));
        }
        ss[i]->fwd.n_logits = rows;
        nl += rows;
    }
}

enum triattn_status tri_step(triattn_session * const * ss, const triattn_token * const * toks, const int32_t * counts,
                             int32_t n, enum tri_logits_mode mode, bool accept, enum triattn_status * status) {
    /* Room first: a session whose policy round fails leaves the step. */
    triattn_session * in[TRI_BATCH_MAX];
    const triattn_token * in_toks[TRI_BATCH_MAX];
    int32_t in_counts[TRI_BATCH_MAX], idx[TRI_BATCH_MAX], m = 0;
    for (int32_t i = 0; i < n; i++) {
        if (ss[i]->n_past == 0 && ss[i]->policy.n_prompt == 0) {
            ss[i]->policy.n_prompt = counts[i];
        }
        status[i] = tri_session_make_room(ss[i], counts[i]);
        if (status[i] == TRIATTN_OK) {
            in[m] = ss[i];
            in_toks[m] = toks[i];
            in_counts[m] = counts[i];
            idx[m++] = i;
        }
    }
    if (m == 0) {
        return status[0];
    }
    if (in[0]->backend) {
        char msg[512] = "";
        const enum triattn_status st = in[0]->backend->forward(in, in_toks, in_counts, m, mode, msg, sizeof msg);
        if (st != TRIATTN_OK) {
            for (int32_t j = 0; j < m; j++) {
                status[idx[j]] = tri_session_fail(in[j], st, "%s backend: %s", in[j]->backend->name, msg);
            }
            return st;
        }
    } else {
        tri_step_cpu(in, in_toks, in_counts, m, mode);
    }
    for (int32_t j = 0; j < m; j++) {
        triattn_session * s = in[j];
        for (int32_t t = 0; accept && t < in_counts[j]; t++) {
            tri_sampler_accept(s->sampler, in_toks[j][t]);
        }
        tri_session_record(s, in_toks[j], in_counts[j]);
        s->n_past += in_counts[j];
    }
    /* A recall point reached by this step (chunks end at one): the question's queries are in the ring. */
    enum triattn_status first = TRIATTN_OK;
    for (int32_t j = 0; j < m; j++) {
        if (tri_session_recall_due(in[j])) {
            status[idx[j]] = tri_session_recall(in[j], mode);
            first = first == TRIATTN_OK ? status[idx[j]] : first;
        }
    }
    return first;
}

void tri_batch_decode(triattn_session * const * ss, int32_t n, const triattn_token * const * toks,
                      const int32_t * counts, enum triattn_status * status) {
    /* The step runs on the buffers of the first session that can join a step at all. */
    const triattn_session * lead = NULL;
    for (int32_t i = 0; i < n; i++) {
        status[i] = TRIATTN_OK;
        if (!lead && counts[i] > 0 && tri_batch_joinable(ss[i], ss[i], toks[i], counts[i], 0)) {
            lead = ss[i];
        }
    }
    triattn_session * step[TRI_BATCH_MAX];
    const triattn_token * step_toks[TRI_BATCH_MAX];
    int32_t step_counts[TRI_BATCH_MAX], idx[TRI_BATCH_MAX], m = 0, rows = 0;
    bool joined[TRI_BATCH_MAX] = { false };
    for (int32_t i = 0; i < n && lead; i++) {
        triattn_session * s = ss[i];
        if (counts[i] <= 0 || !tri_batch_joinable(lead, s, toks[i], counts[i], rows) ||
            (lead->backend && m > 0 && counts[i] != 1)) {
            continue;
        }
        s->last_error[0] = '\0';
        step[m] = s;
        step_toks[m] = toks[i];
        step_counts[m] = counts[i];
        idx[m++] = i;
        joined[i] = true;
        rows += counts[i];
    }
    if (m > 0) {
        enum triattn_status st[TRI_BATCH_MAX];
        tri_step(step, step_toks, step_counts, m, TRI_LOGITS_LAST, true, st);
        for (int32_t j = 0; j < m; j++) {
            triattn_session * s = step[j];
            status[idx[j]] = st[j];
            if (st[j] != TRIATTN_OK) {
                continue;
            }
            s->n_logits = s->fwd.n_logits;
            s->logits_all = false;
            if (s->policy.ops->should_compress(&s->policy, &s->kv)) {
                status[idx[j]] = tri_session_make_room(s, 0);
            }
        }
    }
    for (int32_t i = 0; i < n; i++) {
        if (counts[i] > 0 && !joined[i] && status[i] == TRIATTN_OK) {
            status[i] = triattn_session_decode(ss[i], toks[i], counts[i], false);
        }
    }
}

enum triattn_status triattn_batch_decode(triattn_session * const * sessions, int32_t n_sessions,
                                         const triattn_token * tokens, const int32_t * n_tokens, char * err,
                                         size_t err_size) {
    if (err && err_size) {
        err[0] = '\0';
    }
    if (!sessions || n_sessions <= 0 || !tokens || !n_tokens) {
        return tri_fail(err, err_size, TRIATTN_ERR_INVALID_ARG, "batch_decode: NULL argument or no sessions");
    }
    for (int32_t i = 0; i < n_sessions; i++) {
        if (!sessions[i] || n_tokens[i] < 0) {
            return tri_fail(err, err_size, TRIATTN_ERR_INVALID_ARG, "batch_decode: session %d is NULL or has %d tokens",
                            i, n_tokens[i]);
        }
        for (int32_t j = 0; j < i; j++) {
            if (sessions[j] == sessions[i]) {
                return tri_fail(err, err_size, TRIATTN_ERR_INVALID_ARG, "batch_decode: session %d repeats session %d",
                                i, j);
            }
        }
    }
    const triattn_token * cur = tokens;
    for (int32_t g0 = 0; g0 < n_sessions; g0 += TRI_BATCH_MAX) {
        const int32_t ng = TRI_MIN(TRI_BATCH_MAX, n_sessions - g0);
        const triattn_token * toks[TRI_BATCH_MAX];
        enum triattn_status st[TRI_BATCH_MAX];
        for (int32_t i = 0; i < ng; i++) {
            toks[i] = cur;
            cur += n_tokens[g0 + i];
        }
        tri_batch_decode(sessions + g0, ng, toks, n_tokens + g0, st);
        for (int32_t i = 0; i < ng; i++) {
            if (st[i] != TRIATTN_OK) {
                return tri_fail(err, err_size, st[i], "batch_decode: session %d: %s", g0 + i,
                                triattn_session_last_error(sessions[g0 + i]));
            }
        }
    }
    return TRIATTN_OK;
}

int32_t triattn_session_kv_budget(const triattn_session * s) {
    return s ? s->policy.cfg.budget : 0;
}

enum triattn_status triattn_session_set_kv_budget(triattn_session * s, int32_t budget) {
    if (!s) {
        return TRIATTN_ERR_INVALID_ARG;
    }
    if (s->kv.capacity >= s->params.n_ctx && s->policy.cfg.budget >= s->params.n_ctx) {
        return tri_session_fail(s, TRIATTN_ERR_INVALID_ARG, "kv_budget: the '%s' policy keeps every token (no budget)",
                                s->policy_name);
    }
    if (budget <= 0 || (int64_t) budget + s->policy.cfg.interval > s->kv.capacity) {
        return tri_session_fail(s, TRIATTN_ERR_INVALID_ARG,
                                "kv_budget must be in [1, %d] (budget + interval %d must fit the %d slots allocated)",
                                s->kv.capacity - s->policy.cfg.interval, s->policy.cfg.interval, s->kv.capacity);
    }
    if (budget != s->policy.cfg.budget && s->n_past > 0) {
        s->reuse_ok = false; /* the cache so far followed the old budget */
    }
    s->policy.cfg.budget = budget;
    s->params.kv_budget  = budget;
    return TRIATTN_OK;
}
