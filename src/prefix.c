/* Prefix reuse: a new prompt that starts with the tokens a session has consumed continues from its cache;
 * one that diverges is cut back to the divergence when the cache still holds exactly what it held there,
 * otherwise the session starts over. */
#include "backend.h"
#include "common.h"
#include "kv_select.h"
#include "model.h"
#include "session.h"

#include <string.h>

/* Policies whose cache at position n is the current cache without the slots at positions >= n, as long as no
 * round ran after n: full attention, and TriAttention (its rounds keep no per-slot or per-query state). */
static bool tri_prefix_cuttable(const triattn_session * s, int32_t n) {
    if (!s->reuse_ok) {
        return false;
    }
    /* A sliding-window layer has dropped the slots that fell out of its window: cutting back to n needs the
     * oldest position a query at n may still see. */
    const tri_kv_cache * c = &s->kv;
    for (int il = 0; c->window && il < c->n_layer; il++) {
        if (c->window[il] <= 0) {
            continue;
        }
        const int32_t oldest = TRI_MAX(0, n - c->window[il]);
        for (int h = 0; h < c->n_head_kv; h++) {
            if (c->n_live[tri_kv_index(c, il, h)] > 0 && tri_kv_pos(c, il, h)[0] > oldest) {
                return false;
            }
        }
    }
    if (s->policy.ops == &tri_kv_policy_full) {
        return true;
    }
    return s->policy.ops == &tri_kv_policy_triattention && s->last_compress_pos <= n;
}

bool tri_session_truncate(triattn_session * s, int32_t n) {
    if (n < 0 || n > s->n_past || !tri_prefix_cuttable(s, n)) {
        return false;
    }
    tri_kv_cache * c = &s->kv;
    for (int il = 0; il < c->n_layer; il++) {
        for (int h = 0; h < c->n_head_kv; h++) {
            int32_t * live = &c->n_live[tri_kv_index(c, il, h)];
            const int32_t keep = tri_kv_count_below(tri_kv_pos(c, il, h), *live, n);
            *live = keep; /* live slots are in position order: the first `keep` are those before n */
        }
    }
    if (s->backend && s->backend->kv_set_live(s) != TRIATTN_OK) {
        triattn_session_reset(s); /* the device no longer matches: start over rather than decode a wrong cache */
        return false;
    }
    /* The penalty history is the tail of the token history. */
    tri_sampler_reset(s->sampler);
    for (int32_t i = 0; i < n; i++) {
        tri_sampler_accept(s->sampler, s->hist[i]);
    }
    s->n_past = n;
    s->n_logits = 0;
    if (n == 0) {
        s->policy.n_prompt = 0;
    }
    return true;
}

/* What tri_session_reuse does with tokens[0..n), without doing it: the kind, and for a ROLLBACK the position the
 * cache is cut back to (n_cached). */
static void tri_reuse_plan(const triattn_session * s, const triattn_token * tokens, int32_t n,
                           struct triattn_reuse_info * out) {
    memset(out, 0, sizeof *out);
    const int32_t held = s->n_past;
    int32_t common = 0;
    if (s->reuse_ok) {
        const int32_t m = TRI_MIN(held, n);
        while (common < m && s->hist[common] == tokens[common]) {
            common++;
        }
    }
    out->n_common = common;
    if (held == 0) {
        out->kind = TRIATTN_REUSE_FRESH;
    } else if (common == held && (common < n || s->n_logits > 0)) {
        /* The prompt extends (or equals, with the last token's logits at hand) what the session holds. */
        out->kind = TRIATTN_REUSE_CONTINUE;
        out->n_cached = common;
    } else if (TRI_MIN(common, n - 1) > 0 && tri_prefix_cuttable(s, TRI_MIN(common, n - 1))) {
        /* Cut back to the divergence, keeping at least one prompt token to decode for fresh logits. */
        out->kind = TRIATTN_REUSE_ROLLBACK;
        out->n_cached = TRI_MIN(common, n - 1);
    } else {
        out->kind = TRIATTN_REUSE_RESTART;
    }
}

enum triattn_status tri_session_reuse(triattn_session * s, const triattn_token * tokens, int32_t n,
                                      struct triattn_reuse_info * out) {
    tri_reuse_plan(s, tokens, n, out);
    if (out->kind == TRIATTN_REUSE_ROLLBACK && !tri_session_truncate(s, out->n_cached)) {
        out->kind = TRIATTN_REUSE_RESTART; /* the device cache could not follow */
        out->n_cached = 0;
    }
    if (out->kind == TRIATTN_REUSE_RESTART) {
        triattn_session_reset(s);
    }
    return TRIATTN_OK;
}

int32_t triattn_session_reusable(const triattn_session * s, const triattn_token * tokens, int32_t n) {
    if (!s || !tokens || n <= 0) {
        return 0;
    }
    struct triattn_reuse_info info;
    tri_reuse_plan(s, tokens, n, &info);
    return info.n_cached;
}

enum triattn_status triattn_session_reuse_prefix(triattn_session * s, const triattn_token * tokens, int32_t n,
                                                 struct triattn_reuse_info * out) {
    if (!s) {
        return TRIATTN_ERR_INVALID_ARG;
    }
    s->last_error[0] = '\0';
    if (!tokens || n <= 0 || !out) {
        return tri_session_fail(s, TRIATTN_ERR_INVALID_ARG, "reuse_prefix: need at least one token (got %d)", n);
    }
    s->gen.active = false;
    return tri_session_reuse(s, tokens, n, out);
}

enum triattn_status triattn_session_tokens(const triattn_session * s, triattn_token * out, int32_t capacity,
                                           int32_t * n_out) {
    if (!s || !n_out || capacity < 0 || (capacity > 0 && !out)) {
        return TRIATTN_ERR_INVALID_ARG;
    }
    if (capacity > 0) {
        memcpy(out, s->hist, sizeof(triattn_token) * (size_t) TRI_MIN(capacity, s->n_past));
    }
    *n_out = s->n_past;
    return TRIATTN_OK;
}
