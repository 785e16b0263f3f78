/* Generation helpers: tokenize -> prefill -> sample/decode loop -> stop, step-wise and with a callback. */
#include "common.h"
#include "grammar_mask.h"
#include "model.h"
#include "session.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void triattn_generate_params_init(struct triattn_generate_params * p) {
    memset(p, 0, sizeof *p);
    p->max_tokens    = 512;
    p->add_special   = true;
    p->parse_special = true;
    triattn_sampler_params_init(&p->sampling);
}

/* textstream sink: appends released text to the session's step buffer. */
static bool tri_gen_collect(const char * piece, int32_t len, void * user_data) {
    triattn_session * s = user_data;
    if (s->gen.text_len + (size_t) len + 1 > s->gen.text_cap) {
        size_t cap = s->gen.text_cap * 2;
        while (cap < s->gen.text_len + (size_t) len + 1) {
            cap *= 2;
        }
        char * p = realloc(s->gen.text, cap);
        if (!p) {
            return false;
        }
        s->gen.text = p;
        s->gen.text_cap = cap;
    }
    memcpy(s->gen.text + s->gen.text_len, piece, (size_t) len);
    s->gen.text_len += (size_t) len;
    s->gen.text[s->gen.text_len] = '\0';
    return true;
}

/* Tokenizes prompt into s->gen.prompt (grown as needed); *n = token count. */
static enum triattn_status tri_gen_tokenize(triattn_session * s, const char * prompt,
                                            const struct triattn_generate_params * p, int32_t * n) {
    const size_t len = strlen(prompt);
    if (len > (size_t) INT32_MAX - 8) {
        return tri_session_fail(s, TRIATTN_ERR_INVALID_ARG, "generate: prompt too long");
    }
    /* Each byte yields at most one token, plus BOS/EOS; byte fallback plus specials may need a retry. */
    int32_t want = (int32_t) len + 8;
    for (int attempt = 0; attempt < 2; attempt++) {
        if (want > s->gen.prompt_cap) {
            triattn_token * t = realloc(s->gen.prompt, sizeof(triattn_token) * (size_t) want);
            if (!t) {
                return tri_session_fail(s, TRIATTN_ERR_OOM, "generate: out of memory for %d prompt tokens", want);
            }
            s->gen.prompt = t;
            s->gen.prompt_cap = want;
        }
        enum triattn_status st = tri_vocab_tokenize(s->model->vocab, prompt, (int32_t) len, p->add_special,
                                                    p->parse_special, s->gen.prompt, s->gen.prompt_cap, n);
        if (st != TRIATTN_OK) {
            return tri_session_fail(s, st, "generate: tokenization failed");
        }
        if (*n <= s->gen.prompt_cap) {
            return TRIATTN_OK;
        }
        want = *n;
    }
    return tri_session_fail(s, TRIATTN_ERR_INTERNAL, "generate: tokenizer count changed between calls");
}

/* triattn_generate_begin (cached = false: the prompt is appended) and triattn_generate_begin_cached (the
 * prompt is the whole context: the longest reusable prefix of what the session holds is kept). */
static enum triattn_status tri_gen_begin(triattn_session * s, const char * prompt,
                                         const struct triattn_generate_params * p, bool cached) {
    if (!s) {
        return TRIATTN_ERR_INVALID_ARG;
    }
    s->last_error[0] = '\0';
    s->gen.active = false;
    s->gen.lp_valid = false;
    struct triattn_generate_params defaults;
    if (!p) {
        triattn_generate_params_init(&defaults);
        p = &defaults;
    }
    if (!prompt) {
        return tri_session_fail(s, TRIATTN_ERR_INVALID_ARG, "generate: prompt is NULL");
    }
    if (p->n_stop < 0 || (p->n_stop > 0 && !p->stop)) {
        return tri_session_fail(s, TRIATTN_ERR_INVALID_ARG, "generate: bad stop list (n_stop %d)", p->n_stop);
    }
    for (int32_t i = 0; i < p->n_stop; i++) {
        if (!p->stop[i] || !p->stop[i][0]) {
            return tri_session_fail(s, TRIATTN_ERR_INVALID_ARG, "generate: stop string %d is empty", i);
        }
    }
    if (p->prefill_chunk < 0) {
        return tri_session_fail(s, TRIATTN_ERR_INVALID_ARG, "generate: prefill_chunk must be >= 0, got %d",
                                p->prefill_chunk);
    }
    if (p->logprobs < 0 || p->logprobs > TRIATTN_MAX_TOP_LOGPROBS) {
        return tri_session_fail(s, TRIATTN_ERR_INVALID_ARG, "generate: logprobs must be in [0, %d], got %d",
                                TRIATTN_MAX_TOP_LOGPROBS, p->logprobs);
    }
    tri_constraint_free(s->gen.constraint);
    s->gen.constraint = NULL;
    enum triattn_status st = TRIATTN_OK;
    if (p->json_schema) {
        st = tri_constraint_create(s->model, p->json_schema, &s->gen.constraint, s->last_error, sizeof s->last_error);
        if (st != TRIATTN_OK) {
            return st;
        }
    }
    st = triattn_session_set_sampler(s, &p->sampling);
    if (st != TRIATTN_OK) {
        return st;
    }
    tri_textstream * ts = tri_textstream_create(p->stop, p->n_stop);
    if (!ts) {
        return tri_session_fail(s, TRIATTN_ERR_OOM, "generate: out of memory");
    }
    tri_textstream_free(s->gen.ts);
    s->gen.ts = ts;

    int32_t n = 0;
    st = tri_gen_tokenize(s, prompt, p, &n);
    if (st != TRIATTN_OK) {
        return st;
    }
    memset(&s->gen.result, 0, sizeof s->gen.result);
    memset(&s->gen.reuse, 0, sizeof s->gen.reuse);
    s->gen.result.n_prompt_tokens = n;
    s->gen.prompt_off = 0;
    s->gen.prompt_len = 0;
    int32_t keep = 0;
    if (cached && n > 0) {
        st = tri_session_reuse(s, s->gen.prompt, n, &s->gen.reuse);
        if (st != TRIATTN_OK) {
            return st;
        }
        keep = s->gen.reuse.n_cached;
    }
    s->gen.prefill_chunk = p->prefill_chunk;
    s->gen.n_logprobs = p->logprobs;
    s->recall_at = n > keep ? s->n_past + (n - keep) : -1; /* a recall once the prompt is read */
    if (n == 0 && !triattn_session_logits(s, -1)) {
        return tri_session_fail(s, TRIATTN_ERR_INVALID_ARG, "generate: empty prompt and nothing decoded yet");
    }
    if (n > keep && p->prefill_chunk > 0) {
        /* Prefilled by the steps; the context check is done now so the request fails early. */
        if ((int64_t) s->n_past + (n - keep) > s->params.n_ctx) {
            return tri_session_fail(s, TRIATTN_ERR_CONTEXT, "decode: %d tokens after position %d exceed n_ctx %d",
                                    n - keep, s->n_past, s->params.n_ctx);
        }
        if (s->n_past == 0) {
            s->policy.n_prompt = n;
            st = tri_session_lookahead(s, s->gen.prompt, n);
            if (st != TRIATTN_OK) {
                return st;
            }
        }
        s->gen.prompt_off = keep;
        s->gen.prompt_len = n;
    } else if (n > keep) {
        const double t0 = tri_time_ms();
        st = triattn_session_decode(s, s->gen.prompt + keep, n - keep, false);
        if (st != TRIATTN_OK) {
            return st;
        }
        s->gen.result.prompt_ms = tri_time_ms() - t0;
    }
    s->gen.max_tokens = p->max_tokens;
    s->gen.ignore_eos = p->ignore_eos;
    s->gen.done       = false;
    s->gen.active     = true;
    s->gen.t_start    = tri_time_ms();
    return TRIATTN_OK;
}

enum triattn_status triattn_generate_begin(triattn_session * s, const char * prompt,
                                           const struct triattn_generate_params * p) {
    return tri_gen_begin(s, prompt, p, false);
}

enum triattn_status triattn_generate_begin_cached(triattn_session * s, const char * prompt,
                                                  const struct triattn_generate_params * p) {
    return tri_gen_begin(s, prompt, p, true);
}

void triattn_generate_get_reuse(const triattn_session * s, struct triattn_reuse_info * out) {
    *out = s->gen.reuse;
}

static void tri_gen_finish(triattn_session * s, enum triattn_stop_reason why) {
    if (tri_textstream_flush(s->gen.ts, tri_gen_collect, s) == TRI_TS_ABORT) {
        why = TRIATTN_STOP_CALLBACK;
    }
    s->gen.done = true;
    s->gen.result.stop_reason = why;
    s->gen.result.decode_ms = tri_time_ms() - s->gen.t_start;
}

/* Log-probabilities of every token under softmax(logits): the sampled token's and the k largest. */
static void tri_gen_logprobs(triattn_session * s, const float * logits, triattn_token tok) {
    const int32_t V = s->model->hp.n_vocab;
    const int32_t k = s->gen.n_logprobs;
    struct triattn_token_logprobs * lp = &s->gen.lp;
    float mx = -INFINITY;
    for (int32_t i = 0; i < V; i++) {
        mx = logits[i] > mx ? logits[i] : mx;
    }
    double sum = 0.0;
    for (int32_t i = 0; i < V; i++) {
        sum += exp((double) logits[i] - mx);
    }
    const float lse = mx + (float) log(sum);
    /* k largest by insertion into a sorted list; ties keep the lower id first. */
    int32_t n = 0;
    for (int32_t i = 0; i < V; i++) {
        const float v = logits[i];
        if (n == k && !(v > lp->top_logprobs[k - 1])) {
            continue;
        }
        int32_t j = n < k ? n++ : k - 1;
        while (j > 0 && v > lp->top_logprobs[j - 1]) {
            lp->top_logprobs[j] = lp->top_logprobs[j - 1];
            lp->top_tokens[j]   = lp->top_tokens[j - 1];
            j--;
        }
        lp->top_logprobs[j] = v;
        lp->top_tokens[j]   = i;
    }
    for (int32_t j = 0; j < n; j++) {
        lp->top_logprobs[j] -= lse;
    }
    lp->n_top   = n;
    lp->token   = tok;
    lp->logprob = logits[tok] - lse;
    s->gen.lp_valid = true;
}

/* Samples the next token, under the generation's json_schema when there is one; *end when the constrained
 * document is complete and nothing can follow it. */
static enum triattn_status tri_gen_sample(triattn_session * s, triattn_token * tok, bool * end) {
    *end = false;
    if (!s->gen.constraint) {
        return triattn_session_sample(s, tok);
    }
    const float * logits = triattn_session_logits(s, -1);
    if (!logits) {
        return tri_session_fail(s, TRIATTN_ERR_INVALID_ARG, "sample: no logits (decode something first)");
    }
    return tri_constraint_sample(s->gen.constraint, s->sampler, logits, tok, end, s->last_error,
                                 sizeof s->last_error);
}

/* True when the constrained document is complete and cannot be extended: generation ends there. */
static bool tri_gen_document_done(const triattn_session * s) {
    const tri_constraint * c = s->gen.constraint;
    return c && tri_gstate_complete(c->schema, &c->state) && !tri_gstate_can_continue(c->schema, &c->state);
}

/* First half of a step: the tokens s needs decoded by this step (a prompt chunk or the token just sampled,
 * *n = 0 for none). Sampling, stop checks and the text the step releases happen here. */
static enum triattn_status tri_gen_prepare(triattn_session * s, const triattn_token ** toks, int32_t * n) {
    s->gen.text_len = 0;
    s->gen.text[0] = '\0';
    s->gen.lp_valid = false;
    *n = 0;
    if (!s->gen.active) {
        return tri_session_fail(s, TRIATTN_ERR_INVALID_ARG, "generate_next: no generation in progress");
    }
    if (s->gen.done) {
        return TRIATTN_OK;
    }
    if (s->gen.prompt_off < s->gen.prompt_len) {
        *toks = s->gen.prompt + s->gen.prompt_off;
        *n = TRI_MIN(s->gen.prefill_chunk, s->gen.prompt_len - s->gen.prompt_off);
        return TRIATTN_OK;
    }
    const int32_t max = s->gen.max_tokens;
    if (max == 0) {
        tri_gen_finish(s, TRIATTN_STOP_LENGTH);
        return TRIATTN_OK;
    }
    triattn_token tok;
    bool end = false;
    enum triattn_status st = tri_gen_sample(s, &tok, &end);
    if (st != TRIATTN_OK) {
        return st;
    }
    if (end) {
        tri_gen_finish(s, TRIATTN_STOP_EOG);
        return TRIATTN_OK;
    }
    if (s->gen.n_logprobs > 0) {
        tri_gen_logprobs(s, triattn_session_logits(s, -1), tok);
    }
    if ((!s->gen.ignore_eos || s->gen.constraint) && tri_vocab_is_eog(s->model->vocab, tok)) {
        tri_gen_finish(s, TRIATTN_STOP_EOG);
        return TRIATTN_OK;
    }
    s->gen.result.n_generated++;
    const char * piece = NULL;
    int32_t np = 0;
    st = tri_vocab_piece(s->model->vocab, tok, false, &piece, &np);
    if (st != TRIATTN_OK) {
        return tri_session_fail(s, st, "generate: cannot render token %d", tok);
    }
    const enum tri_ts_result r = tri_textstream_push(s->gen.ts, piece, np, tri_gen_collect, s);
    if (r == TRI_TS_STOP) {
        tri_gen_finish(s, TRIATTN_STOP_STRING);
    } else if (r == TRI_TS_ABORT) {
        return tri_session_fail(s, TRIATTN_ERR_OOM, "generate: out of memory");
    } else if (tri_gen_document_done(s)) {
        tri_gen_finish(s, TRIATTN_STOP_EOG);
    } else if (max > 0 && s->gen.result.n_generated >= max) {
        tri_gen_finish(s, TRIATTN_STOP_LENGTH);
    } else if (s->n_past >= s->params.n_ctx) {
        tri_gen_finish(s, TRIATTN_STOP_CONTEXT);
    } else {
        s->gen.next = tok;
        *toks = &s->gen.next;
        *n = 1;
    }
    return TRIATTN_OK;
}

/* Second half, once the n tokens from tri_gen_prepare are decoded (ms: the step's decode time). */
static void tri_gen_complete(triattn_session * s, int32_t n, double ms) {
    if (s->gen.prompt_off < s->gen.prompt_len) {
        s->gen.prompt_off += n;
        s->gen.result.prompt_ms += ms;
        if (s->gen.prompt_off == s->gen.prompt_len) {
            s->gen.t_start = tri_time_ms();
        }
    }
}

enum triattn_status triattn_generate_next(triattn_session * s, const char ** text, size_t * len, bool * done) {
    if (!s || !text || !len || !done) {
        return TRIATTN_ERR_INVALID_ARG;
    }
    const triattn_token * toks = NULL;
    int32_t n = 0;
    enum triattn_status st = tri_gen_prepare(s, &toks, &n);
    *text = s->gen.text;
    *len  = 0;
    *done = !s->gen.active || s->gen.done;
    if (st != TRIATTN_OK) {
        return st;
    }
    if (n > 0) {
        const double t0 = tri_time_ms();
        st = triattn_session_decode(s, toks, n, false);
        if (st != TRIATTN_OK) {
            return st;
        }
        tri_gen_complete(s, n, tri_time_ms() - t0);
    }
    *len  = s->gen.text_len;
    *done = s->gen.done;
    return TRIATTN_OK;
}

enum triattn_status triattn_generate_last_logprobs(const triattn_session * s, struct triattn_token_logprobs * out) {
    if (!s || !out || !s->gen.lp_valid) {
        return TRIATTN_ERR_INVALID_ARG;
    }
    *out = s->gen.lp;
    return TRIATTN_OK;
}

/* The sessions of one step, at most this many at a time (larger calls run in groups). */
#define TRI_GEN_GROUP 64

enum triattn_status triattn_generate_next_batch(triattn_session * const * sessions, int32_t n_sessions,
                                                const char ** text, size_t * len, bool * done,
                                                enum triattn_status * status) {
    if (!sessions || n_sessions <= 0 || !text || !len || !done || !status) {
        return TRIATTN_ERR_INVALID_ARG;
    }
    for (int32_t g0 = 0; g0 < n_sessions; g0 += TRI_GEN_GROUP) {
        const int32_t ng = TRI_MIN(TRI_GEN_GROUP, n_sessions - g0);
        triattn_session * const * ss = sessions + g0;
        const triattn_token * toks[TRI_GEN_GROUP];
        int32_t counts[TRI_GEN_GROUP];
        int32_t n_rows = 0;
        /* Decodes first, then prompt chunks in the rows left in the first session's step. */
        for (int32_t i = 0; i < ng; i++) {
            if (!ss[i]) {
                return TRIATTN_ERR_INVALID_ARG;
            }
            status[g0 + i] = tri_gen_prepare(ss[i], &toks[i], &counts[i]);
            if (status[g0 + i] != TRIATTN_OK) {
                counts[i] = 0;
            }
            if (counts[i] > 0 && ss[i]->gen.prompt_off >= ss[i]->gen.prompt_len) {
                n_rows += counts[i];
            }
        }
        int32_t room = ss[0]->params.n_batch - n_rows;
        for (int32_t i = 0; i < ng; i++) {
            triattn_session * s = ss[i];
            if (counts[i] > 0 && s->gen.prompt_off < s->gen.prompt_len) {
                counts[i] = TRI_MAX(0, TRI_MIN(counts[i], TRI_MIN(tri_session_chunk_room(s), room)));
                counts[i] = tri_session_recall_cut(s, toks[i], counts[i]);
                room -= counts[i];
            }
        }
        const double t0 = tri_time_ms();
        enum triattn_status bst[TRI_GEN_GROUP];
        tri_batch_decode(ss, ng, toks, counts, bst);
        const double ms = tri_time_ms() - t0;
        for (int32_t i = 0; i < ng; i++) {
            triattn_session * s = ss[i];
            if (status[g0 + i] == TRIATTN_OK && counts[i] > 0) {
                status[g0 + i] = bst[i];
                if (bst[i] == TRIATTN_OK) {
                    tri_gen_complete(s, counts[i], ms);
                }
            }
            text[g0 + i] = s->gen.text;
            len[g0 + i]  = status[g0 + i] == TRIATTN_OK ? s->gen.text_len : 0;
            done[g0 + i] = !s->gen.active || s->gen.done;
        }
    }
    return TRIATTN_OK;
}

void triattn_generate_get_result(const triattn_session * s, struct triattn_generate_result * out) {
    *out = s->gen.result;
}

/* triattn_generate / triattn_generate_cached: begin, then steps until done, pieces to on_piece. */
static enum triattn_status tri_gen_run(triattn_session * s, const char * prompt,
                                       const struct triattn_generate_params * p, bool cached, triattn_piece_fn on_piece,
                                       void * user_data, struct triattn_generate_result * result) {
    enum triattn_status st = tri_gen_begin(s, prompt, p, cached);
    bool done = false;
    while (st == TRIATTN_OK && !done) {
        const char * text;
        size_t len;
        st = triattn_generate_next(s, &text, &len, &done);
        if (st == TRIATTN_OK && len > 0 && on_piece && !on_piece(text, (int32_t) len, user_data)) {
            s->gen.done = true;
            s->gen.result.stop_reason = TRIATTN_STOP_CALLBACK;
            s->gen.result.decode_ms = tri_time_ms() - s->gen.t_start;
            done = true;
        }
    }
    if (result) {
        *result = s ? s->gen.result : (struct triattn_generate_result) { 0 };
    }
    return st;
}

enum triattn_status triattn_generate(triattn_session * s, const char * prompt, const struct triattn_generate_params * p,
                                     triattn_piece_fn on_piece, void * user_data,
                                     struct triattn_generate_result * result) {
    return tri_gen_run(s, prompt, p, false, on_piece, user_data, result);
}

enum triattn_status triattn_generate_cached(triattn_session * s, const char * prompt,
                                            const struct triattn_generate_params * p, triattn_piece_fn on_piece,
                                            void * user_data, struct triattn_generate_result * result) {
    return tri_gen_run(s, prompt, p, true, on_piece, user_data, result);
}
