/* Several sessions advanced by one forward step (continuous batching). */
#include "common.h"
#include "model.h"
#include "session.h"

#include <stdio.h>
#include <string.h>

#define TRI_BATCH_MAX 64

/* True when s's n tokens can ride in the forward step run on lead's buffers (after `rows` rows) without
 * changing what they compute; otherwise s is decoded alone, which also reports any error in its arguments.
 * GPU sessions and calibrating sessions always decode alone. */
static bool tri_batch_joinable(const triattn_session * lead, const triattn_session * s, const triattn_token * toks,
                               int32_t n, int32_t rows) {
    if (s->model != lead->model || s->calib || s->backend || n > tri_session_chunk_room(s) ||
        s->kv.cap_max > lead->fwd.capacity || rows + n > lead->fwd.n_batch ||
        (int64_t) s->n_past + n > s->params.n_ctx) {
        return false;
    }
    for (int32_t i = 0; i < n; i++) {
        if (toks[i] < 0 || toks[i] >= s->model->hp.n_vocab) {
            return false;
        }
    }
    return true;
}

void tri_batch_decode(triattn_session * const * ss, int32_t n, const triattn_token * const * toks,
                      const int32_t * counts, enum triattn_status * status) {
    /* The step runs on the threads and buffers of the first session that can join a step at all. */
    triattn_session * lead = NULL;
    for (int32_t i = 0; i < n; i++) {
        status[i] = TRIATTN_OK;
        if (!lead && counts[i] > 0 && tri_batch_joinable(ss[i], ss[i], toks[i], counts[i], 0)) {
            lead = ss[i];
        }
    }
    bool joined[TRI_BATCH_MAX] = { false };
    int32_t rows = 0;
    for (int32_t i = 0; i < n && lead; i++) {
        triattn_session * s = ss[i];
        if (counts[i] <= 0 || !tri_batch_joinable(lead, s, toks[i], counts[i], rows)) {
            continue;
        }
        s->last_error[0] = '\0';
        /* Room first, exactly as triattn_session_decode makes it for one chunk. */
        if (s->n_past == 0 && s->policy.n_prompt == 0) {
            s->policy.n_prompt = counts[i];
        }
        status[i] = tri_session_make_room(s, counts[i]);
        if (status[i] != TRIATTN_OK) {
            continue;
        }
        joined[i] = true;
        rows += counts[i];
    }
    tri_forward * f = lead ? &lead->fwd : NULL;
    if (rows > 0) {
        int32_t r = 0, nl = 0;
        for (int32_t i = 0; i < n; i++) {
            if (!joined[i]) {
                continue;
            }
            for (int32_t t = 0; t < counts[i]; t++, r++) {
                f->row_tok[r] = toks[i][t];
                f->row_kv[r]  = &ss[i]->kv;
                f->row_pos[r] = ss[i]->n_past + t;
            }
            f->logit_rows[nl++] = r - 1;
        }
        tri_forward_rows(f, f->row_tok, rows, nl);
        /* Each session gets its own logits row 0; the lead's row is 0 already (it joins first). */
        const size_t V = (size_t) lead->model->hp.n_vocab;
        nl = 0;
        for (int32_t i = 0; i < n; i++) {
            if (!joined[i]) {
                continue;
            }
            triattn_session * s = ss[i];
            if (s != lead) {
                memcpy(s->fwd.logits, f->logits + (size_t) nl * V, V * sizeof(float));
            }
            nl++;
            for (int32_t t = 0; t < counts[i]; t++) {
                tri_sampler_accept(s->sampler, toks[i][t]);
            }
            tri_session_record(s, toks[i], counts[i]);
            s->n_past += counts[i];
            s->n_logits = 1;
            s->fwd.n_logits = 1;
            s->logits_all = false;
            if (s->policy.ops->should_compress(&s->policy, &s->kv)) {
                status[i] = tri_session_make_room(s, 0);
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
