/* Embeddings: the final normalised hidden states of a forward pass over the caller's tokens, pooled. The pass is
 * an ordinary prefill in steps (tri_step) whose last stage stops at the output norm instead of the logits. */
#include "backend.h"
#include "common.h"
#include "model.h"
#include "session.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static void tri_embd_unit(float * v, int32_t n) {
    double ss = 0.0;
    for (int32_t i = 0; i < n; i++) {
        ss += (double) v[i] * v[i];
    }
    if (ss > 0.0) {
        const double inv = 1.0 / sqrt(ss);
        for (int32_t i = 0; i < n; i++) {
            v[i] = (float) (v[i] * inv);
        }
    }
}

static enum triattn_status tri_embd_check(triattn_session * s, const triattn_token * tokens, int32_t n_tokens,
                                          enum triattn_pooling pooling, const float * out, int64_t n_out) {
    const int32_t E = s->model->hp.n_embd;
    if (!tokens || n_tokens <= 0) {
        return tri_session_fail(s, TRIATTN_ERR_INVALID_ARG, "embed: need at least one token (got %d)", n_tokens);
    }
    if (pooling != TRIATTN_POOLING_MEAN && pooling != TRIATTN_POOLING_LAST && pooling != TRIATTN_POOLING_NONE) {
        return tri_session_fail(s, TRIATTN_ERR_INVALID_ARG, "embed: unknown pooling %d (0 mean, 1 last, 2 none)",
                                (int) pooling);
    }
    const int64_t need = pooling == TRIATTN_POOLING_NONE ? (int64_t) n_tokens * E : E;
    if (!out || n_out < need) {
        return tri_session_fail(s, TRIATTN_ERR_INVALID_ARG, "embed: out holds %lld floats, %lld needed",
                                (long long) (out ? n_out : 0), (long long) need);
    }
    for (int32_t i = 0; i < n_tokens; i++) {
        if (tokens[i] < 0 || tokens[i] >= s->model->hp.n_vocab) {
            return tri_session_fail(s, TRIATTN_ERR_INVALID_ARG, "embed: token %d at index %d is out of range [0, %d)",
                                    tokens[i], i, s->model->hp.n_vocab);
        }
    }
    if (n_tokens > s->params.n_ctx) {
        return tri_session_fail(s, TRIATTN_ERR_CONTEXT, "embed: %d tokens exceed n_ctx %d", n_tokens,
                                s->params.n_ctx);
    }
    if (s->calib) {
        return tri_session_fail(s, TRIATTN_ERR_INVALID_ARG, "embed: the session is collecting query statistics");
    }
    return TRIATTN_OK;
}

enum triattn_status triattn_session_embed(triattn_session * s, const triattn_token * tokens, int32_t n_tokens,
                                          enum triattn_pooling pooling, bool normalize, float * out, int64_t n_out) {
    if (!s) {
        return TRIATTN_ERR_INVALID_ARG;
    }
    s->last_error[0] = '\0';
    enum triattn_status st = tri_embd_check(s, tokens, n_tokens, pooling, out, n_out);
    if (st != TRIATTN_OK) {
        return st;
    }
    const int32_t E = s->model->hp.n_embd;
    double * sum = pooling == TRIATTN_POOLING_MEAN ? calloc((size_t) E, sizeof(double)) : NULL;
    if (pooling == TRIATTN_POOLING_MEAN && !sum) {
        return tri_session_fail(s, TRIATTN_ERR_OOM, "embed: cannot allocate %d doubles", E);
    }
    triattn_session_reset(s);
    const bool recall_off = s->recall_off;
    s->recall_off = true;
    s->fwd.hidden_only = true;
    /* chunks end where a compressing policy's trigger fires, as in a prefill */
    for (int32_t i = 0, n = 0; i < n_tokens && st == TRIATTN_OK; i += n) {
        n = TRI_MIN(tri_session_chunk_room(s), n_tokens - i);
        const triattn_token * chunk = tokens + i;
        tri_step(&s, &chunk, &n, 1, TRI_LOGITS_ALL, false, &st);
        for (int32_t r = 0; r < n && st == TRIATTN_OK; r++) {
            const float * h = s->fwd.hidden + (int64_t) r * E;
            if (pooling == TRIATTN_POOLING_NONE) {
                memcpy(out + (int64_t) (i + r) * E, h, sizeof(float) * (size_t) E);
            } else if (pooling == TRIATTN_POOLING_LAST && i + r == n_tokens - 1) {
                memcpy(out, h, sizeof(float) * (size_t) E);
            } else if (pooling == TRIATTN_POOLING_MEAN) {
                for (int32_t j = 0; j < E; j++) {
                    sum[j] += h[j];
                }
            }
        }
    }
    s->fwd.hidden_only = false;
    s->recall_off = recall_off;
    triattn_session_reset(s);
    if (st != TRIATTN_OK) {
        free(sum);
        return st;
    }
    for (int32_t j = 0; sum && j < E; j++) {
        out[j] = (float) (sum[j] / n_tokens);
    }
    free(sum);
    const int32_t n_vec = pooling == TRIATTN_POOLING_NONE ? n_tokens : 1;
    for (int32_t v = 0; normalize && v < n_vec; v++) {
        tri_embd_unit(out + (int64_t) v * E, E);
    }
    return TRIATTN_OK;
}
