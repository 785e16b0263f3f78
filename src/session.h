/* Per-run state: KV cache + policy, activations, sampler, generation state. */
#ifndef TRI_SESSION_H
#define TRI_SESSION_H

#include "common.h"
#include "forward.h"
#include "kv_cache.h"
#include "sampler.h"
#include "textstream.h"

struct triattn_session {
    const struct triattn_model * model;
    struct triattn_session_params params;   /* resolved: n_ctx, n_batch, n_threads, kv_* filled in */
    char             policy_name[32];
    char             mode_name[128];

    tri_threadpool * tp;
    tri_kv_cache     kv;
    tri_kv_policy    policy;
    tri_forward      fwd;
    tri_sampler *    sampler;
    struct tri_calib * calib;        /* query statistics (triattn_session_calib_*), NULL until begun */
    const struct tri_backend_ops * backend;  /* NULL = CPU; else the model's GPU backend (src/backend.h) */
    void *           backend_state;

    int32_t          n_past;
    int32_t          n_logits;       /* rows of logits from the last decode */
    bool             logits_all;

    /* token history: the id of every token decoded since create/reset (hist[i] is at position i, evicted
     * or not), n_ctx entries allocated once; what prefix reuse (src/prefix.c) matches new prompts against */
    triattn_token *  hist;
    int32_t          last_compress_pos;  /* n_past when the cache was last compressed, -1 = never */
    bool             reuse_ok;           /* false once the cache no longer follows from hist alone (budget
                                            changed mid-stream): the next reuse starts over */

    /* recall from tier 2 (src/session_recall.c; tier 2 itself is kv.t2) */
    triattn_token    recall_marker[16];  /* a recall runs after these tokens (the chat template's end of a user turn
                                            and start of the reply) */
    int32_t          n_recall_marker;    /* 0 = no marker */
    int32_t          recall_at;          /* a recall runs once n_past reaches it (a prompt's end), -1 = none */
    int32_t          recall_pos;         /* n_past at the last recall, -1 = none */
    bool             recall_off;         /* no recall (the look= first pass) */
    int64_t          n_recalls, n_recalled;
    double           recall_ms;

    /* generation in progress (triattn_generate_begin / _next) */
    struct {
        bool             active;
        bool             done;
        bool             ignore_eos;
        int32_t          max_tokens;
        tri_textstream * ts;
        char *           text;      /* text released by the current step */
        size_t           text_len;
        size_t           text_cap;
        double           t_start;
        struct triattn_generate_result result;
        triattn_token *  prompt;    /* prompt tokens still to prefill (prefill_chunk > 0) */
        int32_t          prompt_cap;
        int32_t          prompt_off;
        int32_t          prompt_len;
        int32_t          prefill_chunk;
        triattn_token    next;      /* the token sampled by the current step, to decode */
        int32_t          n_logprobs;
        bool             lp_valid;  /* lp describes the token sampled by the last step */
        struct triattn_token_logprobs lp;
        struct triattn_reuse_info reuse;  /* what the last triattn_generate_begin_cached kept */
        struct tri_constraint * constraint; /* json_schema of this generation, NULL when unconstrained */
    } gen;

    char             last_error[768];
};

/* Sets the session's last error and returns status. */
enum triattn_status tri_session_fail(triattn_session * s, enum triattn_status status, const char * fmt, ...)
    TRI_PRINTF(3, 4);

/* Tokens one forward chunk of s may take: n_batch, and at most kv_interval with a compressing cache (it takes
 * at most that many new tokens between compressions). */
int32_t tri_session_chunk_limit(const triattn_session * s);

/* Runs the policy when the cache cannot take `incoming` more tokens, or when its trigger fires. */
enum triattn_status tri_session_make_room(triattn_session * s, int32_t incoming);

/* triattn_batch_decode over n <= 64 sessions with per-session token pointers; status[i] per session
 * (TRIATTN_OK for a session with counts[i] == 0). */
/* Tokens the next forward chunk of s may take: tri_session_chunk_limit, and never past the point where the
 * policy's trigger fires (live slots = budget + interval), so compression rounds happen at the same positions
 * however the tokens are split into calls and chunks. */
int32_t tri_session_chunk_room(const triattn_session * s);

/* kv_mode look=: before a prompt of n tokens is prefilled into the empty cache, runs the policy's first pass over
 * its last tokens (when the policy asks for one) so the rounds of the prefill can use the question's queries,
 * then clears the cache again. Nothing happens when n_past != 0 or the policy needs no pass. */
enum triattn_status tri_session_lookahead(triattn_session * s, const triattn_token * tokens, int32_t n);

/* Records tokens[0..n) as decoded at positions n_past..n_past + n - 1 (before n_past advances). */
void tri_session_record(triattn_session * s, const triattn_token * tokens, int32_t n);

/* Cuts the session back to its first n tokens (n <= n_past) when the cache still holds exactly what it held at
 * position n; false (nothing changed) otherwise. */
bool tri_session_truncate(triattn_session * s, int32_t n);

/* Makes the session's context start with tokens[0..n) (n >= 1) by the rules of triattn_session_reuse_prefix;
 * out->n_cached tokens are kept, the caller decodes the rest. */
enum triattn_status tri_session_reuse(triattn_session * s, const triattn_token * tokens, int32_t n,
                                      struct triattn_reuse_info * out);

/* Recall (src/session_recall.c). init: tier 2, the query ring and the marker when kv_recall > 0 (at creation). */
enum triattn_status tri_session_recall_init(triattn_session * s, char * err, size_t n);
/* True when s has a tier 2 and recalls are not suspended. */
bool tri_session_recall_on(const triattn_session * s);
/* How many of toks[0..n) the next chunk may take so that it ends at the first recall point among them. */
int32_t tri_session_recall_cut(const triattn_session * s, const triattn_token * toks, int32_t n);
/* True when a recall is due at n_past (after a step). */
bool tri_session_recall_due(const triattn_session * s);
/* Runs a recall now, then (unless mode is TRI_LOGITS_ALL or nothing came back) decodes the last TRI_RECALL_REPLAY
 * tokens again, so that they see the recalled rows. */
enum triattn_status tri_session_recall(triattn_session * s, enum tri_logits_mode mode);
/* Drops the last n (<= 64) tokens from the cache and decodes them again (no recall, not accepted by the sampler
 * twice); the last one's logits are kept. */
enum triattn_status tri_session_replay(triattn_session * s, int32_t n);

void tri_batch_decode(triattn_session * const * ss, int32_t n, const triattn_token * const * toks,
                      const int32_t * counts, enum triattn_status * status);

/* One forward step over the chunks of n <= 64 sessions of one model and backend (the CPU: any chunks within
 * ss[0]'s n_batch and cache capacity; a GPU: one session's chunk, or one token each): room is made for each chunk
 * as the policy requires, every chunk runs through the model at once, then each session records its tokens,
 * accepts them into its sampler (accept), advances n_past and holds its logits for `mode` in s->fwd. status[i] per
 * session; returns the first failure (a session whose room could not be made leaves the step). */
enum triattn_status tri_step(triattn_session * const * ss, const triattn_token * const * toks, const int32_t * counts,
                             int32_t n, enum tri_logits_mode mode, bool accept, enum triattn_status * status);

#endif
