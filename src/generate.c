/* Generation helpers: tokenize -> prefill -> sample/decode loop -> stop, step-wise and with a callback. */
#include "common.h"
#include "model.h"
#include "session.h"

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

enum triattn_status triattn_generate_begin(triattn_session * s, const char * prompt,
                                           const struct triattn_generate_params * p) {
    if (!s) {
        return TRIATTN_ERR_INVALID_ARG;
    }
    s->last_error[0] = '\0';
    s->gen.active = false;
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
    enum triattn_status st = triattn_session_set_sampler(s, &p->sampling);
    if (st != TRIATTN_OK) {
        return st;
    }
    tri_textstream * ts = tri_textstream_create(p->stop, p->n_stop);
    if (!ts) {
        return tri_session_fail(s, TRIATTN_ERR_OOM, "generate: out of memory");
    }
    tri_textstream_free(s->gen.ts);
    s->gen.ts = ts;

    /* Tokenize into a buffer sized from the text (each byte yields at most one token, plus BOS/EOS). */
    const size_t len = strlen(prompt);
    if (len > (size_t) INT32_MAX - 8) {
        return tri_session_fail(s, TRIATTN_ERR_INVALID_ARG, "generate: prompt too long");
    }
    triattn_token * toks = malloc(sizeof(triattn_token) * (len + 8));
    if (!toks) {
        return tri_session_fail(s, TRIATTN_ERR_OOM, "generate: out of memory");
    }
    int32_t n = 0;
    st = tri_vocab_tokenize(s->model->vocab, prompt, (int32_t) len, p->add_special, p->parse_special, toks,
                            (int32_t) len + 8, &n);
    if (st == TRIATTN_OK && n > (int32_t) len + 8) {
        /* More tokens than bytes (e.g. byte fallback plus specials): retry with the exact size. */
        triattn_token * bigger = realloc(toks, sizeof(triattn_token) * (size_t) n);
        if (!bigger) {
            free(toks);
            return tri_session_fail(s, TRIATTN_ERR_OOM, "generate: out of memory");
        }
        toks = bigger;
        st = tri_vocab_tokenize(s->model->vocab, prompt, (int32_t) len, p->add_special, p->parse_special, toks, n, &n);
    }
    if (st != TRIATTN_OK) {
        free(toks);
        return tri_session_fail(s, st, "generate: tokenization failed");
    }
    memset(&s->gen.result, 0, sizeof s->gen.result);
    s->gen.result.n_prompt_tokens = n;
    const double t0 = tri_time_ms();
    if (n > 0) {
        st = triattn_session_decode(s, toks, n, false);
    } else if (!triattn_session_logits(s, -1)) {
        st = tri_session_fail(s, TRIATTN_ERR_INVALID_ARG, "generate: empty prompt and nothing decoded yet");
    }
    free(toks);
    if (st != TRIATTN_OK) {
        return st;
    }
    s->gen.result.prompt_ms = tri_time_ms() - t0;
    s->gen.max_tokens = p->max_tokens;
    s->gen.ignore_eos = p->ignore_eos;
    s->gen.done       = false;
    s->gen.active     = true;
    s->gen.t_start    = tri_time_ms();
    return TRIATTN_OK;
}

static void tri_gen_finish(triattn_session * s, enum triattn_stop_reason why) {
    if (tri_textstream_flush(s->gen.ts, tri_gen_collect, s) == TRI_TS_ABORT) {
        why = TRIATTN_STOP_CALLBACK;
    }
    s->gen.done = true;
    s->gen.result.stop_reason = why;
    s->gen.result.decode_ms = tri_time_ms() - s->gen.t_start;
}

enum triattn_status triattn_generate_next(triattn_session * s, const char ** text, size_t * len, bool * done) {
    if (!s || !text || !len || !done) {
        return TRIATTN_ERR_INVALID_ARG;
    }
    s->gen.text_len = 0;
    s->gen.text[0] = '\0';
    *text = s->gen.text;
    *len = 0;
    if (!s->gen.active) {
        *done = true;
        return tri_session_fail(s, TRIATTN_ERR_INVALID_ARG, "generate_next: no generation in progress");
    }
    if (s->gen.done) {
        *done = true;
        return TRIATTN_OK;
    }
    *done = false;
    const int32_t max = s->gen.max_tokens;
    if (max == 0) {
        tri_gen_finish(s, TRIATTN_STOP_LENGTH);
    } else {
        triattn_token tok;
        enum triattn_status st = triattn_session_sample(s, &tok);
        if (st != TRIATTN_OK) {
            return st;
        }
        if (!s->gen.ignore_eos && tri_vocab_is_eog(s->model->vocab, tok)) {
            tri_gen_finish(s, TRIATTN_STOP_EOG);
        } else {
            s->gen.result.n_generated++;
            const char * piece = NULL;
            int32_t n = 0;
            st = tri_vocab_piece(s->model->vocab, tok, false, &piece, &n);
            if (st != TRIATTN_OK) {
                return tri_session_fail(s, st, "generate: cannot render token %d", tok);
            }
            const enum tri_ts_result r = tri_textstream_push(s->gen.ts, piece, n, tri_gen_collect, s);
            if (r == TRI_TS_STOP) {
                tri_gen_finish(s, TRIATTN_STOP_STRING);
            } else if (r == TRI_TS_ABORT) {
                return tri_session_fail(s, TRIATTN_ERR_OOM, "generate: out of memory");
            } else if (max > 0 && s->gen.result.n_generated >= max) {
                tri_gen_finish(s, TRIATTN_STOP_LENGTH);
            } else if (s->n_past >= s->params.n_ctx) {
                tri_gen_finish(s, TRIATTN_STOP_CONTEXT);
            } else {
                st = triattn_session_decode(s, &tok, 1, false);
                if (st != TRIATTN_OK) {
                    return st;
                }
            }
        }
    }
    *text = s->gen.text;
    *len  = s->gen.text_len;
    *done = s->gen.done;
    return TRIATTN_OK;
}

void triattn_generate_get_result(const triattn_session * s, struct triattn_generate_result * out) {
    *out = s->gen.result;
}

enum triattn_status triattn_generate(triattn_session * s, const char * prompt, const struct triattn_generate_params * p,
                                     triattn_piece_fn on_piece, void * user_data,
                                     struct triattn_generate_result * result) {
    enum triattn_status st = triattn_generate_begin(s, prompt, p);
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
