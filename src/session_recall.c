/* When a session recalls from tier 2 (src/kv_recall.c): at points fixed by the token sequence alone, so that a
 * conversation sent turn by turn builds the same cache as the same tokens sent at once.
 *
 * A recall runs once a generation's prompt has been read, and after every occurrence of the recall marker (the
 * chat template's end of a user turn and start of the reply); a chat prompt ends with the marker, so both rules
 * meet there, and when the same conversation is prefilled in one request the marker inside it recalls where each
 * earlier turn did. The queries that score tier 2 include the prompt's last token (the one whose logits give the
 * first reply token, and often the most telling: "... the number is"). The last TRI_RECALL_REPLAY tokens are then
 * decoded again: their K/V were computed while what came back was missing, and the answer is often read through
 * them (the question's words attend to the matching words of the text, the last token to the question's words). */
#include "common.h"
#include "kv_recall.h"
#include "kv_select.h"
#include "model.h"
#include "session.h"
#include "vocab.h"

#include <stdio.h>
#include <string.h>

enum triattn_status tri_session_recall_init(triattn_session * s, char * err, size_t n) {
    s->recall_at  = -1;
    s->recall_pos = -1;
    const struct triattn_session_params * p = &s->params;
    if (p->kv_recall <= 0 || s->policy.ops == &tri_kv_policy_full) {
        return TRIATTN_OK; /* off, or nothing is ever evicted */
    }
    const uint64_t cap = (uint64_t) p->kv_recall_max_mib << 20;
    enum triattn_status st = tri_kv_cache_enable_tier2(&s->kv, p->n_ctx, cap, err, n);
    if (st == TRIATTN_OK && s->kv.q_cap < TRI_RECALL_QUERIES) {
        const tri_hparams * hp = &s->model->hp;
        st = tri_kv_cache_enable_queries(&s->kv, TRI_RECALL_QUERIES, hp->n_head * hp->head_dim, err, n);
    }
    if (st != TRIATTN_OK) {
        return st;
    }
    /* The marker: what the template writes after a user message's content, up to the reply (none when the
     * model has no chat template). */
    static const char sentinel[] = "\x01\x02\x03";
    const struct triattn_chat_message msg = { "user", sentinel };
    char buf[1024];
    size_t len = 0;
    if (triattn_chat_apply(s->model, NULL, &msg, 1, true, buf, sizeof buf, &len) != TRIATTN_OK || len >= sizeof buf) {
        return TRIATTN_OK;
    }
    const char * at = strstr(buf, sentinel);
    if (!at) {
        return TRIATTN_OK;
    }
    const char * tail = at + strlen(sentinel);
    triattn_token toks[64];
    int32_t nt = 0;
    if (tri_vocab_tokenize(s->model->vocab, tail, (int32_t) strlen(tail), false, true, toks, 64, &nt) != TRIATTN_OK ||
        nt < 1 || nt > 64) {
        return TRIATTN_OK;
    }
    const int32_t m = TRI_MIN(nt, (int32_t) (sizeof s->recall_marker / sizeof s->recall_marker[0]));
    memcpy(s->recall_marker, toks + (nt - m), sizeof(triattn_token) * (size_t) m);
    s->n_recall_marker = m;
    return TRIATTN_OK;
}

bool tri_session_recall_on(const triattn_session * s) {
    return s->kv.t2 && !s->recall_off;
}

/* True when the tokens up to absolute position end (inclusive), hist[0..n_past) then toks, end with the marker. */
static bool tri_marker_ends(const triattn_session * s, const triattn_token * toks, int32_t end) {
    const int32_t m = s->n_recall_marker;
    if (m <= 0 || end + 1 < m) {
        return false;
    }
    for (int32_t k = 0; k < m; k++) {
        const int32_t i = end - (m - 1) + k;
        if ((i < s->n_past ? s->hist[i] : toks[i - s->n_past]) != s->recall_marker[k]) {
            return false;
        }
    }
    return true;
}

int32_t tri_session_recall_cut(const triattn_session * s, const triattn_token * toks, int32_t n) {
    if (!tri_session_recall_on(s)) {
        return n;
    }
    for (int32_t i = 0; i + 1 < n; i++) {
        const int32_t p = s->n_past + i;
        if (p + 1 == s->recall_at || tri_marker_ends(s, toks, p)) {
            return i + 1;
        }
    }
    return n;
}

bool tri_session_recall_due(const triattn_session * s) {
    if (!tri_session_recall_on(s) || s->n_past == 0 || s->recall_pos == s->n_past) {
        return false;
    }
    return s->n_past == s->recall_at || tri_marker_ends(s, NULL, s->n_past - 1);
}

enum triattn_status tri_session_recall(triattn_session * s, enum tri_logits_mode mode) {
    if (!s->kv.t2 || s->n_past == 0) {
        return TRIATTN_OK;
    }
    /* A round that is due runs first, so it cannot undo the recall right away. */
    enum triattn_status st = TRIATTN_OK;
    if (s->policy.ops->should_compress(&s->policy, &s->kv)) {
        st = tri_session_make_room(s, 0);
        if (st != TRIATTN_OK) {
            return st;
        }
    }
    const tri_hparams * hp = &s->model->hp;
    const int32_t pw = s->policy.cfg.window < 0 ? TRI_KV_DEFAULT_WINDOW : s->policy.cfg.window;
    const double t0 = tri_time_ms();
    char msg[512] = "";
    int64_t rows = 0;
    st = tri_kv_recall(&s->kv, &s->policy, hp->n_head / hp->n_head_kv, hp->attn_scale,
                       TRI_MIN(s->params.kv_recall, s->kv.capacity), /* no more than the cache holds */
                       TRI_MAX(pw, TRI_RECALL_QUERIES), s->tp, &rows, msg, sizeof msg);
    s->recall_ms += tri_time_ms() - t0;
    s->n_recalls++;
    s->n_recalled += rows;
    s->recall_pos = s->n_past;
    if (s->recall_at <= s->n_past) {
        s->recall_at = -1;
    }
    s->last_compress_pos = s->n_past; /* the cache no longer holds what it held before this point */
    if (st != TRIATTN_OK) {
        return tri_session_fail(s, st, "recall: %s", msg);
    }
    if (tri_kv_tier2_take_failure(s->kv.t2)) {
        return tri_session_fail(s, TRIATTN_ERR_OOM, "recall: tier 2 is out of memory (rows were dropped)");
    }
    if (mode == TRI_LOGITS_ALL || rows == 0) {
        return TRIATTN_OK; /* logits of every token were asked for (they stay as computed), or nothing changed */
    }
    /* the tokens to decode again: the newest ones that every (layer, KV head) still holds (a policy with a recent
     * window shorter than TRI_RECALL_REPLAY may have evicted some) */
    int32_t k = (int32_t) TRI_MIN((int64_t) TRI_RECALL_REPLAY, (int64_t) s->n_past);
    for (int i = 0; i < s->kv.n_layer * s->kv.n_head_kv; i++) {
        const int32_t live = s->kv.n_live[i], * pos = tri_kv_pos(&s->kv, i / s->kv.n_head_kv, i % s->kv.n_head_kv);
        int32_t run = 0;
        while (run < k && run < live && pos[live - 1 - run] == s->n_past - 1 - run) {
            run++;
        }
        k = run;
    }
    return tri_session_replay(s, k);
}

enum triattn_status triattn_session_kv_recall(triattn_session * s) {
    if (!s) {
        return TRIATTN_ERR_INVALID_ARG;
    }
    s->last_error[0] = '\0';
    if (!s->kv.t2) {
        return tri_session_fail(s, TRIATTN_ERR_INVALID_ARG, "kv_recall: this session has no tier 2 (kv_recall %d, "
                                "policy '%s')", s->params.kv_recall, s->policy_name);
    }
    return tri_session_recall(s, s->n_logits > 0 ? TRI_LOGITS_LAST : TRI_LOGITS_NONE);
}
