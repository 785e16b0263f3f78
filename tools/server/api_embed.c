/* api_embed.c - POST /v1/embeddings (see api_embed.h). */
#include "api_embed.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "slots.h"

static bool all_ints(const json_value * a) {
    for (size_t k = 0; k < a->n; k++) {
        if (a->items[k].type != JSON_NUMBER || !a->items[k].is_int) return false;
    }
    return a->n > 0;
}

/* Input k (a string or an array of token ids) into r->toks[k] / r->n[k]. */
static bool parse_input(const triattn_model * model, int32_t n_ctx, const json_value * v, size_t k,
                        struct embed_req * r, struct tool_err * e) {
    const int32_t n_vocab = triattn_vocab_size(model);
    if (v->type == JSON_STRING) {
        if (v->len == 0) return tool_err_set(e, 400, "input", "input[%zu] is an empty string", k);
        if (strlen(v->str) != v->len) return tool_err_set(e, 400, "input", "input[%zu] contains a NUL character", k);
        r->toks[k] = slot_cache_tokenize(model, v->str, true, false, &r->n[k]);
        if (!r->toks[k]) return tool_err_set(e, 500, NULL, "input[%zu]: tokenization failed", k);
        if (r->n[k] == 0) return tool_err_set(e, 400, "input", "input[%zu] has no tokens", k);
    } else if (v->type == JSON_ARRAY && all_ints(v)) {
        if (v->n > (size_t) n_ctx) {
            return tool_err_set(e, 400, "input", "input[%zu] has %zu tokens, more than the context (%d)", k, v->n,
                                n_ctx);
        }
        r->toks[k] = malloc(v->n * sizeof **r->toks);
        if (!r->toks[k]) return tool_err_set(e, 500, NULL, "out of memory");
        for (size_t j = 0; j < v->n; j++) {
            const int64_t t = v->items[j].i;
            if (t < 0 || t >= n_vocab) {
                return tool_err_set(e, 400, "input", "input[%zu][%zu] is not a token id in [0, %d)", k, j, n_vocab);
            }
            r->toks[k][j] = (triattn_token) t;
        }
        r->n[k] = (int32_t) v->n;
    } else {
        return tool_err_set(e, 400, "input", "input[%zu] must be a non-empty string or a non-empty array of token ids",
                            k);
    }
    if (r->n[k] > n_ctx) {
        return tool_err_set(e, 400, "input", "input[%zu] has %d tokens, more than the context (%d)", k, r->n[k], n_ctx);
    }
    r->n_tokens += r->n[k];
    return true;
}

bool api_embed_parse(const triattn_model * model, int32_t n_embd, int32_t n_ctx, const json_value * body,
                     struct embed_req * r, struct tool_err * e) {
    memset(r, 0, sizeof *r);
    r->normalize = true;
    r->pooling = TRIATTN_POOLING_MEAN;
    const json_value * in = json_get(body, "input");
    if (!in || (in->type != JSON_STRING && in->type != JSON_ARRAY)) {
        return tool_err_set(e, 400, "input", "'input' must be a string, an array of strings or an array of token ids");
    }
    /* one input: a string or one array of token ids; else an array of inputs */
    const bool one = in->type == JSON_STRING || all_ints(in);
    const size_t n = one ? 1 : in->n;
    if (n == 0) return tool_err_set(e, 400, "input", "'input' is an empty array");
    if (n > API_EMBED_MAX_INPUTS) {
        return tool_err_set(e, 400, "input", "'input' has %zu items, at most %d", n, API_EMBED_MAX_INPUTS);
    }
    const json_value * f = json_get(body, "encoding_format");
    if (f && f->type != JSON_NULL) {
        if (f->type != JSON_STRING || (strcmp(f->str, "float") != 0 && strcmp(f->str, "base64") != 0)) {
            return tool_err_set(e, 400, "encoding_format", "'encoding_format' must be \"float\" or \"base64\"");
        }
        r->base64 = strcmp(f->str, "base64") == 0;
    }
    const json_value * d = json_get(body, "dimensions");
    if (d && d->type != JSON_NULL && (d->type != JSON_NUMBER || !d->is_int || d->i != n_embd)) {
        return tool_err_set(e, 400, "dimensions", "'dimensions' must be the model's %d", n_embd);
    }
    const json_value * p = json_get(body, "pooling");
    if (p && p->type != JSON_NULL) {
        if (p->type != JSON_STRING || (strcmp(p->str, "mean") != 0 && strcmp(p->str, "last") != 0)) {
            return tool_err_set(e, 400, "pooling", "'pooling' must be \"mean\" or \"last\"");
        }
        r->pooling = strcmp(p->str, "last") == 0 ? TRIATTN_POOLING_LAST : TRIATTN_POOLING_MEAN;
    }
    const json_value * u = json_get(body, "normalize");
    if (u && u->type != JSON_NULL) {
        if (u->type != JSON_BOOL) return tool_err_set(e, 400, "normalize", "'normalize' must be a boolean");
        r->normalize = u->b;
    }
    r->toks = calloc(n, sizeof *r->toks);
    r->n = calloc(n, sizeof *r->n);
    if (!r->toks || !r->n) return tool_err_set(e, 500, NULL, "out of memory");
    r->n_inputs = n;
    for (size_t k = 0; k < n; k++) {
        if (!parse_input(model, n_ctx, one ? in : &in->items[k], k, r, e)) return false;
    }
    return true;
}

/* n floats as little-endian float32 bytes in base64, quoted. */
static void jb_base64_floats(jbuf * b, const float * v, size_t n) {
    static const char digits[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const size_t nb = 4 * n;
    jb_raw(b, "\"", 1);
    for (size_t i = 0; i < nb; i += 3) {
        unsigned char in[3] = { 0, 0, 0 };
        const size_t m = nb - i < 3 ? nb - i : 3;
        for (size_t j = 0; j < m; j++) {
            uint32_t bits;
            memcpy(&bits, &v[(i + j) / 4], 4);
            in[j] = (unsigned char) (bits >> (8 * ((i + j) % 4)));  /* little-endian whatever the host */
        }
        const char out[4] = { digits[in[0] >> 2], digits[((in[0] & 3) << 4) | (in[1] >> 4)],
                              m > 1 ? digits[((in[1] & 15) << 2) | (in[2] >> 6)] : '=',
                              m > 2 ? digits[in[2] & 63] : '=' };
        jb_raw(b, out, 4);
    }
    jb_raw(b, "\"", 1);
}

enum triattn_status api_embed_run(triattn_session * s, int32_t n_embd, const struct embed_req * r,
                                  const char * model_name, jbuf * b, char * err, size_t err_size) {
    float * v = malloc((size_t) n_embd * sizeof *v);
    if (!v) {
        snprintf(err, err_size, "out of memory");
        return TRIATTN_ERR_OOM;
    }
    jb_cstr(b, "{\"object\":\"list\",\"data\":[");
    for (size_t k = 0; k < r->n_inputs; k++) {
        const enum triattn_status st = triattn_session_embed(s, r->toks[k], r->n[k], r->pooling, r->normalize, v,
                                                             n_embd);
        if (st != TRIATTN_OK) {
            snprintf(err, err_size, "input[%zu]: %s", k, triattn_session_last_error(s));
            free(v);
            return st;
        }
        jb_printf(b, "%s{\"object\":\"embedding\",\"index\":%zu,\"embedding\":", k ? "," : "", k);
        if (r->base64) {
            jb_base64_floats(b, v, (size_t) n_embd);
        } else {
            jb_raw(b, "[", 1);
            for (int32_t j = 0; j < n_embd; j++) jb_printf(b, "%s%.9g", j ? "," : "", (double) v[j]);
            jb_raw(b, "]", 1);
        }
        jb_raw(b, "}", 1);
    }
    free(v);
    jb_cstr(b, "],\"model\":");
    jb_qcstr(b, model_name);
    jb_printf(b, ",\"usage\":{\"prompt_tokens\":%lld,\"total_tokens\":%lld}}", (long long) r->n_tokens,
              (long long) r->n_tokens);
    return TRIATTN_OK;
}

void api_embed_free(struct embed_req * r) {
    for (size_t k = 0; r->toks && k < r->n_inputs; k++) free(r->toks[k]);
    free(r->toks);
    free(r->n);
    memset(r, 0, sizeof *r);
}
