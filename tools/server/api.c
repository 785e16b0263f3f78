/* api.c - the OpenAI-compatible endpoints of triattn-server and the per-connection request loop. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "api_embed.h"
#include "api_tools.h"
#include "http.h"
#include "json.h"
#include "net.h"
#include "server.h"

#define MAX_STOP 16
#define MAX_CHOICES 16
/* The error body when memory runs out (built without allocating). */
#define OOM_BODY "{\"error\":{\"message\":\"out of memory\",\"type\":\"server_error\",\"param\":null,\"code\":null}}"

/* One request being answered: the connection, the parsed request, the response status for the log. */
typedef struct {
    struct server *       srv;
    struct http_conn *    c;
    struct http_request * req;
    int                   status;
    size_t                bytes;
    const char *          cors;   /* extra header lines */
    const char *          param;  /* the request parameter an error is about, or NULL */
} ctx;

static double mono_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

static void reply(ctx * x, int status, const char * type, const char * body, size_t len) {
    x->status = status;
    x->bytes = len;
    http_respond(x->c, status, type, x->cors, body, len, x->req->keep_alive);
}

static void reply_json(ctx * x, int status, jbuf * b) {
    if (b->oom) { reply(x, 500, "application/json", OOM_BODY, sizeof OOM_BODY - 1); return; }
    reply(x, status, "application/json", b->data, b->len);
}

/* {"error": {"message", "type", "param", "code"}}; param is x->param (the offending request field) or null. */
/* {"error": {"message", "type", "param", "code"}} into b; param and code may be NULL (null). */
static void error_object(jbuf * b, const char * msg, const char * type, const char * param, const char * code) {
    jb_cstr(b, "{\"error\":{\"message\":");
    jb_qcstr(b, msg);
    jb_cstr(b, ",\"type\":");
    jb_qcstr(b, type);
    jb_cstr(b, ",\"param\":");
    if (param) jb_qcstr(b, param); else jb_cstr(b, "null");
    jb_cstr(b, ",\"code\":");
    if (code) jb_qcstr(b, code); else jb_cstr(b, "null");
    jb_cstr(b, "}}");
}

static void reply_error(ctx * x, int status, const char * code, const char * fmt, ...) JSON_PRINTF(4, 5);
static void reply_error(ctx * x, int status, const char * code, const char * fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    const char * type = status == 401 ? "authentication_error" : status == 404 ? "not_found_error"
                      : status >= 500 ? "server_error" : "invalid_request_error";
    jbuf b;
    jb_init(&b);
    error_object(&b, msg, type, x->param, code);
    reply_json(x, status, &b);
    jb_free(&b);
    atomic_fetch_add(&x->srv->requests_failed, 1);
}

/* ---- request field helpers: each returns false after answering 400 ---- */

static bool parse_body(ctx * x, json_value ** out) {
    char err[160];
    struct json_limits lim = { .max_depth = 64, .max_nodes = 1 << 18 };
    lim.max_bytes = 16 * x->req->body_len + 65536;   /* request memory: a small multiple of its size */
    json_value * v = json_parse(x->req->body ? x->req->body : "", x->req->body_len, &lim, err, sizeof err);
    if (!v && strncmp(err, JSON_ERR_OOM, sizeof JSON_ERR_OOM - 1) == 0) { reply_error(x, 500, NULL, "out of memory"); return false; }
    if (!v && strstr(err, JSON_ERR_BUDGET)) { reply_error(x, 413, "request_too_complex", "the JSON body has too many values for its size: %s", err); return false; }
    if (!v) { reply_error(x, 400, "invalid_json", "invalid JSON body: %s", err); return false; }
    if (v->type != JSON_OBJECT) { json_free(v); reply_error(x, 400, "invalid_json", "the body must be a JSON object"); return false; }
    *out = v;
    return true;
}

static bool is_null(const json_value * v) { return !v || v->type == JSON_NULL; }

static bool get_number(ctx * x, const json_value * o, const char * key, double lo, double hi, float * out) {
    const json_value * v = json_get(o, key);
    x->param = key;
    if (is_null(v)) return true;
    if (v->type != JSON_NUMBER) { reply_error(x, 400, "invalid_type", "'%s' must be a number", key); return false; }
    if (!(v->num >= lo && v->num <= hi)) { reply_error(x, 400, "invalid_value", "'%s' must be in [%g, %g]", key, lo, hi); return false; }
    *out = (float)v->num;
    return true;
}

static bool get_int(ctx * x, const json_value * o, const char * key, int64_t lo, int64_t hi, int64_t * out, bool * present) {
    const json_value * v = json_get(o, key);
    x->param = key;
    if (present) *present = false;
    if (is_null(v)) return true;
    if (v->type != JSON_NUMBER || !v->is_int) { reply_error(x, 400, "invalid_type", "'%s' must be an integer", key); return false; }
    if (v->i < lo || v->i > hi) { reply_error(x, 400, "invalid_value", "'%s' must be in [%lld, %lld]", key, (long long)lo, (long long)hi); return false; }
    *out = v->i;
    if (present) *present = true;
    return true;
}

static bool get_bool(ctx * x, const json_value * o, const char * key, bool * out) {
    const json_value * v = json_get(o, key);
    x->param = key;
    if (is_null(v)) return true;
    if (v->type != JSON_BOOL) { reply_error(x, 400, "invalid_type", "'%s' must be a boolean", key); return false; }
    *out = v->b;
    return true;
}

/* ---- generation (completions and chat) ---- */

struct gen_req {
    bool   chat, stream;
    int    n_choices;          /* "n": choices generated one after another in the request's slot */
    int    index;              /* the choice being generated (its events' "index") */
    size_t echo_len;           /* completions' echo: the prompt's bytes before the text (0 = no echo) */
    int    top_logprobs;       /* alternatives per token in the response; -1 = no logprobs */
    int32_t kv_budget;         /* 0 = the server's */
    bool   cache_prompt;       /* reuse the longest cached prefix (default true) */
    const triattn_token * toks; /* with cache_prompt: the prompt's tokens, while the request holds its slots */
    int32_t n_toks;
    char * prompt;             /* malloc'd */
    const char * stop[MAX_STOP];
    int    n_stop;
    struct triattn_generate_params gp;
    char   id[48];
    long long created;
    struct tool_req tools;     /* chat: tools, tool_choice and the reply's parser */
    bool   include_usage;      /* stream_options.include_usage: a last chunk with the usage */
    char * owned;              /* the stop strings' copies (gen_detach), malloc'd */
    char * json_schema;        /* malloc'd: response_format's schema, NULL = plain text */
    triattn_token * bias_ids;  /* malloc'd: logit_bias's tokens and values (gp.sampling points at them) */
    float * bias;
};

static void gen_free(struct gen_req * g) {
    free(g->prompt);
    free(g->owned);
    api_tools_free(&g->tools);
    free(g->json_schema);
    free(g->bias_ids);
    free(g->bias);
}

/* logit_bias: {"token id": bias in [-100, 100], ...}, added to those tokens' logits before sampling. */
static bool parse_logit_bias(ctx * x, const json_value * body, struct gen_req * g) {
    const json_value * lb = json_get(body, "logit_bias");
    x->param = "logit_bias";
    if (is_null(lb)) return true;
    const int32_t n_vocab = x->srv->info.n_vocab;
    if (lb->type != JSON_OBJECT) { reply_error(x, 400, "invalid_type", "'logit_bias' must be an object of token id -> bias"); return false; }
    if (lb->n > (size_t)n_vocab) { reply_error(x, 400, "invalid_value", "'logit_bias' has %zu entries; the vocabulary has %d tokens", lb->n, n_vocab); return false; }
    if (lb->n == 0) return true;
    g->bias_ids = malloc(lb->n * sizeof *g->bias_ids);
    g->bias = malloc(lb->n * sizeof *g->bias);
    if (!g->bias_ids || !g->bias) { reply_error(x, 500, NULL, "out of memory"); return false; }
    for (size_t k = 0; k < lb->n; k++) {
        const char * key = lb->keys[k];
        char * end = NULL;
        const long long id = key[0] >= '0' && key[0] <= '9' && lb->key_lens[k] <= 10 ? strtoll(key, &end, 10) : -1;
        if (id < 0 || !end || end != key + lb->key_lens[k] || id >= n_vocab) { reply_error(x, 400, "invalid_value", "'logit_bias' key '%.32s' is not a token id in [0, %d)", key, n_vocab); return false; }
        const json_value * v = &lb->items[k];
        if (v->type != JSON_NUMBER || !(v->num >= -100 && v->num <= 100)) { reply_error(x, 400, "invalid_value", "'logit_bias' value of token %lld must be a number in [-100, 100]", id); return false; }
        g->bias_ids[k] = (triattn_token)id;
        g->bias[k] = (float)v->num;
    }
    g->gp.sampling.logit_bias_tokens = g->bias_ids;
    g->gp.sampling.logit_bias = g->bias;
    g->gp.sampling.n_logit_bias = (int32_t)lb->n;
    return true;
}

/* Makes g independent of the parse tree and the request body (copies what points into them) and frees the
 * body, so a request waiting for a slot holds its prompt and little else. */
static bool gen_detach(ctx * x, struct gen_req * g) {
    size_t total = 0;
    for (int k = 0; k < g->n_stop; k++) total += strlen(g->stop[k]) + 1;
    if (total) {
        g->owned = malloc(total);
        if (!g->owned) { reply_error(x, 500, NULL, "out of memory"); return false; }
        char * d = g->owned;
        for (int k = 0; k < g->n_stop; k++) {
            size_t n = strlen(g->stop[k]) + 1;
            memcpy(d, g->stop[k], n);
            g->stop[k] = d;
            d += n;
        }
    }
    free(x->req->body);   /* its bytes stay counted (held) until the response ends */
    x->req->body = NULL;
    return true;
}

static bool conn_gone(void * c) { return http_peer_gone(c); }

static void chunk_head(struct gen_req * g, ctx * x, jbuf * b) {
    jb_cstr(b, "{\"id\":");
    jb_qcstr(b, g->id);
    jb_cstr(b, g->chat ? ",\"object\":\"chat.completion.chunk\"" : ",\"object\":\"text_completion\"");
    jb_printf(b, ",\"created\":%lld,\"model\":", g->created);
    jb_qcstr(b, x->srv->o.alias);
}

/* The raw bytes of one token (at most 256); 0 bytes when it cannot be rendered. */
static int32_t token_piece(ctx * x, triattn_token tok, char piece[256]) {
    int32_t n = 0;
    if (triattn_token_to_piece(x->srv->model, tok, false, piece, 256, &n) != TRIATTN_OK || n < 0 || n > 256) n = 0;
    return n;
}

/* "token" (and "bytes" for chat) of one token. */
static void token_json(ctx * x, jbuf * b, triattn_token tok, bool with_bytes) {
    char piece[256];
    const int32_t n = token_piece(x, tok, piece);
    jb_cstr(b, "\"token\":");
    jb_str(b, piece, (size_t)n);
    if (!with_bytes) return;
    jb_cstr(b, ",\"bytes\":[");
    for (int32_t k = 0; k < n; k++) jb_printf(b, "%s%u", k ? "," : "", (unsigned char)piece[k]);
    jb_cstr(b, "]");
}

/* The OpenAI "logprobs" object of tokens lps[0..n): chat {"content": [...]}, completions {"tokens", ...}. */
static void logprobs_json(struct gen_req * g, ctx * x, jbuf * b, const struct job_logprob * lps, size_t n) {
    if (g->top_logprobs < 0) { jb_cstr(b, "null"); return; }
    if (g->chat) {
        jb_cstr(b, "{\"content\":[");
        for (size_t k = 0; k < n; k++) {
            const struct triattn_token_logprobs * lp = &lps[k].lp;
            jb_cstr(b, k ? ",{" : "{");
            token_json(x, b, lp->token, true);
            jb_printf(b, ",\"logprob\":%.6g,\"top_logprobs\":[", lp->logprob);
            for (int t = 0; t < lp->n_top && t < g->top_logprobs; t++) {
                jb_cstr(b, t ? ",{" : "{");
                token_json(x, b, lp->top_tokens[t], true);
                jb_printf(b, ",\"logprob\":%.6g}", lp->top_logprobs[t]);
            }
            jb_cstr(b, "]}");
        }
        jb_cstr(b, "]}");
        return;
    }
    char piece[256];
    jb_cstr(b, "{\"tokens\":[");
    for (size_t k = 0; k < n; k++) {
        if (k) jb_cstr(b, ",");
        jb_str(b, piece, (size_t)token_piece(x, lps[k].lp.token, piece));
    }
    jb_cstr(b, "],\"token_logprobs\":[");
    for (size_t k = 0; k < n; k++) jb_printf(b, "%s%.6g", k ? "," : "", lps[k].lp.logprob);
    jb_cstr(b, "],\"top_logprobs\":[");
    for (size_t k = 0; k < n; k++) {
        const struct triattn_token_logprobs * lp = &lps[k].lp;
        jb_cstr(b, k ? ",{" : "{");
        for (int t = 0; t < lp->n_top && t < g->top_logprobs; t++) {
            if (t) jb_cstr(b, ",");
            jb_str(b, piece, (size_t)token_piece(x, lp->top_tokens[t], piece));
            jb_printf(b, ":%.6g", lp->top_logprobs[t]);
        }
        jb_cstr(b, "}");
    }
    jb_cstr(b, "],\"text_offset\":[");
    for (size_t k = 0; k < n; k++) jb_printf(b, "%s%zu", k ? "," : "", g->echo_len + lps[k].text_offset);
    jb_cstr(b, "]}");
}

/* Sends the event built in b; false when the connection is gone. An event that ran out of memory is not sent and
 * sets *oom (the stream then ends with an error event). */
static bool emit(ctx * x, jbuf * b, bool * oom) {
    if (b->oom) { *oom = true; return true; }
    x->bytes += b->len;
    return http_stream_chunk(x->c, b->data, b->len);
}

/* A failure after the stream began: an event with the error object, then the stream's end. */
static void send_stream_error(ctx * x, const char * code, const char * msg) {
    static const char oom[] = "data: " OOM_BODY "\n\n";
    jbuf b;
    jb_init(&b);
    jb_cstr(&b, "data: ");
    error_object(&b, msg, "server_error", NULL, code);
    jb_cstr(&b, "\n\n");
    const bool sent = b.oom ? http_stream_chunk(x->c, oom, sizeof oom - 1) : http_stream_chunk(x->c, b.data, b.len);
    x->bytes += b.oom ? sizeof oom - 1 : b.len;
    if (sent) http_stream_end(x->c);
    jb_free(&b);
}

/* An SSE event with one piece (text != NULL) or the final finish_reason. */
static bool send_event(struct gen_req * g, ctx * x, jbuf * b, const char * text, size_t len, const char * finish,
                       bool first, const struct job_logprob * lps, size_t n_lps, bool * oom) {
    jb_reset(b);
    jb_cstr(b, "data: ");
    chunk_head(g, x, b);
    jb_printf(b, ",\"choices\":[{\"index\":%d,", g->index);
    if (g->chat) {
        jb_cstr(b, "\"delta\":{");
        if (first) jb_cstr(b, "\"role\":\"assistant\"");
        if (text) { if (first) jb_cstr(b, ","); jb_cstr(b, "\"content\":"); jb_str(b, text, len); }
        jb_cstr(b, "}");
    } else {
        jb_cstr(b, "\"text\":");
        jb_str(b, text ? text : "", text ? len : 0);
    }
    jb_cstr(b, ",\"logprobs\":");
    if (n_lps) logprobs_json(g, x, b, lps, n_lps); else jb_cstr(b, "null");
    jb_cstr(b, ",\"finish_reason\":");
    if (finish) jb_qcstr(b, finish); else jb_cstr(b, "null");
    jb_cstr(b, "}]}\n\n");
    return emit(x, b, oom);
}

/* The chat deltas the tool parser releases for text (final: the end of generation), one event each. */
static bool send_tool_deltas(struct gen_req * g, ctx * x, jbuf * b, triattn_tool_parser * parser, const char * text,
                             size_t len, bool final, bool * first, bool * oom) {
    const char * d = NULL;
    size_t dn = 0;
    if (triattn_tool_parser_feed(parser, text, len, final, &d, &dn) != TRIATTN_OK) { *oom = true; return true; }
    struct json_limits lim = { .max_depth = 64, .max_nodes = 1 << 20 };
    char err[160];
    json_value * arr = json_parse(d, dn, &lim, err, sizeof err);
    if (!arr) { *oom = true; return true; }   /* the parser's deltas are JSON: only memory can fail */
    bool ok = arr->type == JSON_ARRAY;
    for (size_t k = 0; ok && !*oom && k < arr->n; k++) {
        jb_reset(b);
        jb_cstr(b, "data: ");
        chunk_head(g, x, b);
        jb_printf(b, ",\"choices\":[{\"index\":%d,\"delta\":{", g->index);
        if (*first) jb_cstr(b, "\"role\":\"assistant\",");
        *first = false;
        jbuf item;
        jb_init(&item);
        jb_value(&item, &arr->items[k]);
        if (item.len > 2) jb_raw(b, item.data + 1, item.len - 1);   /* the delta's members and its '}' */
        else jb_cstr(b, "}");
        if (item.oom) b->oom = true;
        jb_free(&item);
        jb_cstr(b, ",\"logprobs\":null,\"finish_reason\":null}]}\n\n");
        ok = emit(x, b, oom);
    }
    json_free(arr);
    return ok;
}

/* stream_options: {"include_usage": bool}. */
static bool stream_options(ctx * x, const json_value * body, struct gen_req * g) {
    const json_value * so = json_get(body, "stream_options");
    if (is_null(so)) return true;
    x->param = "stream_options";
    if (so->type != JSON_OBJECT) { reply_error(x, 400, "invalid_type", "'stream_options' must be an object"); return false; }
    return get_bool(x, so, "include_usage", &g->include_usage);
}

/* The last chunk of a stream with stream_options.include_usage: no choices, the usage. */
static bool send_usage(struct gen_req * g, ctx * x, jbuf * b, int32_t n_prompt, int32_t n_gen, int32_t n_cached,
                       bool * oom) {
    jb_reset(b);
    jb_cstr(b, "data: ");
    chunk_head(g, x, b);
    jb_printf(b, ",\"choices\":[],\"usage\":{\"prompt_tokens\":%d,\"completion_tokens\":%d,\"total_tokens\":%d,"
              "\"prompt_tokens_details\":{\"cached_tokens\":%d}}}\n\n",
              n_prompt, n_gen, n_prompt + n_gen, n_cached);
    return emit(x, b, oom);
}

static const char * reuse_name(enum triattn_reuse_kind k) {
    return k == TRIATTN_REUSE_CONTINUE ? "continue" : k == TRIATTN_REUSE_ROLLBACK ? "rollback"
         : k == TRIATTN_REUSE_RESTART ? "restart" : "fresh";
}

static const char * finish_name(enum triattn_stop_reason r) {
    return (r == TRIATTN_STOP_LENGTH || r == TRIATTN_STOP_CONTEXT) ? "length" : "stop";
}

/* Builds the prompt text of a chat request from "messages" and its tools; readies the reply's tool parsing. */
static bool chat_prompt(ctx * x, const json_value * body, struct gen_req * g) {
    struct tool_err e = { .status = 400 };
    const char * fmt = x->srv->o.chat_format;
    const triattn_model * m = x->srv->model;
    if (api_tools_parse(body, x->srv->o.strict_tool_calls, &g->tools, &e) &&
        api_tools_prompt(m, fmt, body, &g->tools, &g->prompt, &e) && api_tools_constrain(m, fmt, &g->tools, &g->gp, &e) &&
        api_tools_parser(m, fmt, &g->tools, &e))
        return true;
    x->param = e.param;
    reply_error(x, e.status, e.status >= 500 ? NULL : "invalid_request", "%s", e.msg);
    return false;
}

/* The names this server answers to: the alias, and the model file's name with or without ".gguf". */
static bool model_known(const struct server * srv, const char * name) {
    if (strcmp(name, srv->o.alias) == 0) return true;
    const char * base = strrchr(srv->o.model_path, '/');
    base = base ? base + 1 : srv->o.model_path;
    size_t n = strlen(base);
    if (strcmp(name, base) == 0) return true;
    return n > 5 && strcmp(base + n - 5, ".gguf") == 0 && strlen(name) == n - 5 && strncmp(name, base, n - 5) == 0;
}

/* The request's "model", when given, must name the served model (404 otherwise). */
static bool check_model(ctx * x, const json_value * body) {
    const json_value * m = json_get(body, "model");
    x->param = "model";
    if (!is_null(m) && m->type != JSON_STRING) { reply_error(x, 400, "invalid_type", "'model' must be a string"); return false; }
    if (!is_null(m) && (strlen(m->str) != m->len || !model_known(x->srv, m->str))) {   /* no embedded NUL */
        reply_error(x, 404, "model_not_found", "the model '%s' does not exist (this server has '%s')", m->str, x->srv->o.alias);
        return false;
    }
    return true;
}

/* response_format: {"type": "text"}, {"type": "json_object"} (any object, or "schema" as llama-cpp-python
 * takes it) or {"type": "json_schema", "json_schema": {"schema": ...}} -> g->json_schema, checked here so that
 * an unsupported keyword is a 400 naming it. */
static bool parse_response_format(ctx * x, const json_value * body, struct gen_req * g) {
    const json_value * rf = json_get(body, "response_format");
    if (is_null(rf)) return true;
    x->param = "response_format";
    const json_value * type = json_get(rf, "type");
    if (rf->type != JSON_OBJECT || !type || type->type != JSON_STRING) {
        reply_error(x, 400, "invalid_type", "%s", "'response_format' must be an object with a string 'type'");
        return false;
    }
    const json_value * schema = NULL;
    if (strcmp(type->str, "text") == 0) return true;
    if (strcmp(type->str, "json_object") == 0) {
        schema = json_get(rf, "schema");
    } else if (strcmp(type->str, "json_schema") == 0) {
        schema = json_get(json_get(rf, "json_schema"), "schema");
        if (is_null(schema)) {
            reply_error(x, 400, "invalid_value", "%s", "response_format json_schema needs 'json_schema': {'schema': {...}}");
            return false;
        }
    } else {
        reply_error(x, 400, "invalid_value", "%s", "response_format 'type' must be 'text', 'json_object' or 'json_schema'");
        return false;
    }
    jbuf b;
    jb_init(&b);
    if (is_null(schema)) jb_cstr(&b, "{\"type\":\"object\"}");
    else jb_value(&b, schema);
    if (b.oom) { jb_free(&b); reply_error(x, 500, NULL, "out of memory"); return false; }
    char err[512];
    const enum triattn_status st = triattn_json_schema_check(b.data, err, sizeof err);
    if (st != TRIATTN_OK) {
        jb_free(&b);
        reply_error(x, 400, st == TRIATTN_ERR_UNSUPPORTED ? "unsupported_schema" : "invalid_schema", "%s", err);
        return false;
    }
    g->json_schema = b.data;   /* owned by g now */
    g->gp.json_schema = g->json_schema;
    return true;
}

/* Reads the OpenAI fields into g. */
static bool gen_parse(ctx * x, const json_value * body, struct gen_req * g) {
    triattn_generate_params_init(&g->gp);
    struct triattn_sampler_params * sp = &g->gp.sampling;
    /* OpenAI's defaults: temperature 1, top_p 1; min_p/top_k keep the engine's defaults */
    sp->temperature = 1.0f;
    sp->top_p = 1.0f;
    if (g->chat) {
        if (!chat_prompt(x, body, g)) return false;
    } else {
        const json_value * p = json_get(body, "prompt");
        if (p && p->type == JSON_ARRAY && p->n == 1) p = &p->items[0];
        if (!p || p->type != JSON_STRING) { x->param = "prompt"; reply_error(x, 400, "invalid_type", "'prompt' must be a string"); return false; }
        g->prompt = strdup(p->str);
        if (!g->prompt) { reply_error(x, 500, NULL, "out of memory"); return false; }
        bool echo = false;
        if (!get_bool(x, body, "echo", &echo)) return false;
        g->echo_len = echo ? strlen(g->prompt) : 0;
    }
    int64_t v = 0;
    bool present = false;
    g->n_choices = 1;
    if (!get_int(x, body, "n", 1, MAX_CHOICES, &v, &present)) return false;
    if (present) g->n_choices = (int)v;
    int64_t max_tok = g->chat ? -1 : 16;
    if (!get_int(x, body, "max_tokens", 1, 1 << 30, &max_tok, NULL)) return false;
    if (g->chat && !get_int(x, body, "max_completion_tokens", 1, 1 << 30, &max_tok, NULL)) return false;
    g->gp.max_tokens = (int32_t)max_tok;
    if (!get_number(x, body, "temperature", 0, 100, &sp->temperature)) return false;
    if (!get_number(x, body, "top_p", 0, 1, &sp->top_p)) return false;
    if (!get_number(x, body, "min_p", 0, 1, &sp->min_p)) return false;
    if (!get_number(x, body, "presence_penalty", -2, 2, &sp->presence_penalty)) return false;
    if (!get_number(x, body, "frequency_penalty", -2, 2, &sp->frequency_penalty)) return false;
    if (!get_number(x, body, "repeat_penalty", 0, 100, &sp->repeat_penalty)) return false;
    if (!get_int(x, body, "top_k", 0, 1 << 30, &v, &present)) return false;
    if (present) sp->top_k = (int32_t)v;
    if (!get_int(x, body, "seed", INT64_MIN, INT64_MAX, &v, &present)) return false;
    if (present) sp->seed = (uint64_t)v == UINT64_MAX ? 0 : (uint64_t)v;
    if (!parse_logit_bias(x, body, g)) return false;
    if (!get_bool(x, body, "stream", &g->stream)) return false;
    if (!stream_options(x, body, g)) return false;
    if (!get_bool(x, body, "ignore_eos", &g->gp.ignore_eos)) return false;   /* extension */
    g->cache_prompt = true;
    if (!get_bool(x, body, "cache_prompt", &g->cache_prompt)) return false;   /* extension (llama-server's) */
    if (!check_model(x, body)) return false;
    int64_t kvb = 0;
    if (!get_int(x, body, "kv_budget", 1, INT32_MAX, &kvb, &present)) return false;   /* extension */
    if (present) {
        const struct slot_pool * p = &x->srv->pool;
        const int64_t hi = p->slots[0].kv.capacity - x->srv->o.kv_interval;
        if (!p->compressing) { reply_error(x, 400, "invalid_value", "'kv_budget' needs a compressing KV policy (this server runs '%s')", p->slots[0].kv.policy); return false; }
        if (kvb > hi) { reply_error(x, 400, "invalid_value", "'kv_budget' must be in [1, %lld] on this server (--kv-budget)", (long long)hi); return false; }
        g->kv_budget = (int32_t)kvb;
    }
    g->top_logprobs = -1;
    if (g->chat) {
        bool want = false;
        int64_t top = 0;
        if (!get_bool(x, body, "logprobs", &want)) return false;
        if (!get_int(x, body, "top_logprobs", 0, TRIATTN_MAX_TOP_LOGPROBS, &top, &present)) return false;
        if (present && !want) { reply_error(x, 400, "invalid_value", "'top_logprobs' needs 'logprobs': true"); return false; }
        if (want) g->top_logprobs = (int)top;
    } else {
        int64_t top = 0;
        if (!get_int(x, body, "logprobs", 0, TRIATTN_MAX_TOP_LOGPROBS, &top, &present)) return false;
        if (present) g->top_logprobs = (int)top;
    }
    g->gp.logprobs = g->top_logprobs < 0 ? 0 : g->top_logprobs > 0 ? g->top_logprobs : 1;
    const json_value * st = json_get(body, "stop");
    x->param = "stop";
    if (!is_null(st)) {
        if (st->type == JSON_STRING) { if (st->len) g->stop[g->n_stop++] = st->str; }
        else if (st->type == JSON_ARRAY && st->n <= MAX_STOP) {
            for (size_t k = 0; k < st->n; k++) {
                if (st->items[k].type != JSON_STRING) { reply_error(x, 400, "invalid_type", "'stop' must be a string or an array of strings"); return false; }
                if (st->items[k].len) g->stop[g->n_stop++] = st->items[k].str;
            }
        } else { reply_error(x, 400, "invalid_type", "'stop' must be a string or an array of at most %d strings", MAX_STOP); return false; }
    }
    g->gp.stop = g->n_stop ? g->stop : NULL;
    g->gp.n_stop = g->n_stop;
    x->param = NULL;
    if (g->gp.json_schema) return true;   /* a forced tool call's schema: response_format does not apply */
    if (!parse_response_format(x, body, g)) return false;
    x->param = NULL;
    return true;
}

/* One of the request's n choices, as a slot's job generated it. */
struct gen_choice {
    jbuf   out;                       /* the text (non-streamed: with the echoed prompt in front) */
    struct job_logprob * lps;         /* copies of the job's, for the response */
    size_t n_lps, cap_lps;
    size_t lp_sent;                   /* streamed so far */
    bool   first;                     /* streamed chat: the next delta is the choice's first (it carries the role) */
    bool   begun;                     /* the job started: its prompt was accepted */
    enum triattn_status st;
    int    http_status;
    char   err[512];
    struct triattn_generate_result res;
    struct triattn_reuse_info reuse;
    int    shared_from;               /* the slot whose cache was copied for the prompt, or -1 */
    int32_t n_shared;                 /* prompt tokens that copy gave */
    const char * finish;
    triattn_tool_parser * parser;     /* requests with tools: this choice's (the first choice's is g->tools') */
    char * msg;                       /* a non-streamed reply with tools: the parsed message (malloc'd JSON) */
    size_t msg_len;
};

/* A slot the request holds and the choice it is generating (-1: none). */
struct gen_lane {
    struct slot * sl;
    int    choice;
    size_t had, had_lp;               /* the choice's text and logprobs before the last take */
    bool   news, ended, begun;        /* as the last take found the job */
    bool   waiting;                   /* not started yet: it starts from a copy of the first lane's prefilled cache */
};

/* What the choices of one request share. */
struct gen_run {
    jbuf ev;                          /* scratch event */
    struct gen_choice * ch;
    struct gen_lane lanes[MAX_CHOICES];
    int  n_lanes;
    int  next;                        /* the next choice to start */
    int  bad;                         /* the first choice that failed, or -1 */
    bool forkable;                    /* the first lane's cache holds the prompt: the waiting lanes can start */
    bool alive;                       /* the client is still there */
    bool started;                     /* the response (or the stream) has begun */
    bool oom;
};

/* Copies the job's new text and logprobs into ch (pool lock held). */
static void choice_take_locked(const struct slot_job * j, struct gen_choice * ch, struct gen_run * r) {
    if (j->len > ch->out.len) jb_raw(&ch->out, j->text + ch->out.len, j->len - ch->out.len);
    if (ch->out.oom) r->oom = true;
    if (j->n_lp <= ch->n_lps) return;
    if (j->n_lp > ch->cap_lps) {
        size_t cap = j->n_lp * 2;
        struct job_logprob * t = realloc(ch->lps, cap * sizeof *t);
        if (!t) { r->oom = true; return; }
        ch->lps = t;
        ch->cap_lps = cap;
    }
    memcpy(ch->lps + ch->n_lps, j->lps + ch->n_lps, (j->n_lp - ch->n_lps) * sizeof *ch->lps);
    ch->n_lps = j->n_lp;
}

/* Starts choice c on lane l: the request's prompt and parameters, the seed + c when the request set one (so the
 * choices differ), its own tool parser. A lane's later choices take the prompt from its cache. False when memory
 * ran out. */
static bool gen_start_choice(ctx * x, struct gen_req * g, struct gen_run * r, struct gen_lane * l, int c,
                             struct slot * fork) {
    struct gen_choice * ch = &r->ch[c];
    ch->parser = g->tools.parser;
    if (c > 0 && g->tools.parser) {
        struct tool_req t = g->tools;   /* the same options, another parser and call ids */
        t.parser = NULL;
        t.opts.id_seed += (uint64_t)c;
        struct tool_err e;
        if (!api_tools_parser(x->srv->model, x->srv->o.chat_format, &t, &e)) return false;
        ch->parser = t.parser;
    }
    ch->first = true;
    struct slot_job * j = &l->sl->job;
    j->prompt = g->prompt;
    j->gp = g->gp;
    if (j->gp.sampling.seed != UINT64_MAX) j->gp.sampling.seed += (uint64_t)c;
    if (j->gp.sampling.seed == UINT64_MAX) j->gp.sampling.seed = 0;
    j->kv_budget = g->kv_budget;
    j->client_gone = conn_gone;   /* the engine checks once more before it starts the job */
    j->client = x->c;
    j->cache_prompt = c >= r->n_lanes || g->cache_prompt || fork;
    j->fork_from = fork;
    j->tokens = g->toks;
    j->n_tokens = g->n_toks;
    l->choice = c;
    l->waiting = false;
    l->had = l->had_lp = 0;
    l->news = l->ended = false;
    g->index = c;
    slots_submit(&x->srv->pool, l->sl);
    return true;
}

/* Takes the lanes' news (pool lock held); true when there is any, false when none (then *running says whether a
 * job is still under way). */
static bool gen_take_locked(ctx * x, struct gen_run * r, bool * running) {
    bool any = false;
    *running = false;
    const struct gen_lane * first = &r->lanes[0];
    if (!r->forkable && first->choice == 0 && r->n_lanes > 1 &&
        (first->sl->job.result.n_generated > 0 || first->sl->job.state == JOB_DONE)) {
        r->forkable = any = true;   /* its prompt is prefilled (its first token sampled) */
    }
    for (int k = 0; k < r->n_lanes; k++) {
        struct gen_lane * l = &r->lanes[k];
        if (l->choice < 0) continue;
        const struct slot_job * j = &l->sl->job;
        struct gen_choice * ch = &r->ch[l->choice];
        l->ended = j->state == JOB_DONE;
        l->begun = j->begun;
        l->news = false;
        l->had = ch->out.len;
        l->had_lp = ch->n_lps;
        if (!j->begun && !l->ended) {
            *running = true;
            if (x->srv->stop) slots_cancel_locked(&x->srv->pool, l->sl);
            continue;
        }
        if (j->begun) choice_take_locked(j, ch, r);
        l->news = l->ended || (j->begun && !ch->begun) || ch->out.len > l->had || ch->n_lps > l->had_lp;
        if (l->ended) {
            ch->st = j->status;
            ch->http_status = j->http_status;
            snprintf(ch->err, sizeof ch->err, "%s", j->error);
            ch->res = j->result;
            ch->reuse = j->reuse;
            ch->shared_from = j->shared_from;
            ch->n_shared = j->n_shared;
        }
        any |= l->news;
        *running |= !l->ended;
    }
    return any;
}

/* Streams lane l's new text (and begins the response with its first). */
static void gen_emit(ctx * x, struct gen_req * g, struct gen_run * r, struct gen_lane * l) {
    struct gen_choice * ch = &r->ch[l->choice];
    if (!l->news || !l->begun) return;
    g->index = l->choice;
    if (g->stream && !r->started && r->alive) {
        r->alive = http_stream_begin(x->c, 200, "text/event-stream", x->cors, x->req->keep_alive);
        x->status = 200;
    }
    r->started = true;
    if (g->stream && !ch->begun && r->alive && g->echo_len)
        r->alive = send_event(g, x, &r->ev, g->prompt, g->echo_len, NULL, false, NULL, 0, &r->oom);
    ch->begun = true;
    if (g->stream && r->alive && ch->parser && ch->out.len > l->had) {
        r->alive = send_tool_deltas(g, x, &r->ev, ch->parser, ch->out.data + l->had, ch->out.len - l->had, false,
                                    &ch->first, &r->oom);
    } else if (g->stream && r->alive && (ch->out.len > l->had || ch->n_lps > l->had_lp)) {
        r->alive = send_event(g, x, &r->ev, ch->out.data + l->had, ch->out.len - l->had, NULL, ch->first,
                              ch->lps ? ch->lps + ch->lp_sent : NULL, ch->n_lps - ch->lp_sent, &r->oom);
        ch->first = false;
        ch->lp_sent = ch->n_lps;
    }
}

/* Lane l's job ended: its finish event (streamed) or its whole text and tool message (kept for the reply). */
static void gen_finish(ctx * x, struct gen_req * g, struct gen_run * r, struct gen_lane * l) {
    struct gen_choice * ch = &r->ch[l->choice];
    g->index = l->choice;
    ch->finish = finish_name(ch->res.stop_reason);
    if (!ch->begun || ch->st != TRIATTN_OK) { if (r->bad < 0) r->bad = l->choice; return; }
    if (r->oom || !r->alive || x->srv->stop) return;
    if (ch->parser && g->stream) {
        r->alive = send_tool_deltas(g, x, &r->ev, ch->parser, NULL, 0, true, &ch->first, &r->oom);
    } else if (ch->parser) {
        const char * d;
        size_t dn, n = 0;
        if (triattn_tool_parser_feed(ch->parser, ch->out.data ? ch->out.data : "", ch->out.len, true, &d, &dn) !=
            TRIATTN_OK) { r->oom = true; return; }   /* (its only failure) */
        const char * msg = triattn_tool_parser_message(ch->parser, &n);
        if (msg && n >= 2 && !(ch->msg = malloc(n))) { r->oom = true; return; }
        if (ch->msg) { memcpy(ch->msg, msg, n); ch->msg_len = n; }
    }
    if (triattn_tool_parser_n_calls(ch->parser) > 0) ch->finish = "tool_calls";
    if (g->stream) {
        if (r->alive && !r->oom && g->chat && ch->first) r->alive = send_event(g, x, &r->ev, "", 0, NULL, true, NULL, 0, &r->oom);
        if (r->alive && !r->oom) r->alive = send_event(g, x, &r->ev, NULL, 0, ch->finish, false, NULL, 0, &r->oom);
    } else if (g->echo_len) {   /* echo: the prompt, then the text */
        jb_reset(&r->ev);
        jb_raw(&r->ev, g->prompt, g->echo_len);
        jb_raw(&r->ev, ch->out.data ? ch->out.data : "", ch->out.len);
        if (r->ev.oom) r->oom = true;
        else { const jbuf t = ch->out; ch->out = r->ev; r->ev = t; }
    }
}

/* Runs every choice on the lanes held (a lane starts its next choice when its last one ends), streaming as the text
 * comes; stops starting choices after a failure, an error or the client's departure, and cancels the rest. */
static void gen_run_choices(ctx * x, struct gen_req * g, struct gen_run * r) {
    struct server * srv = x->srv;
    struct slot_pool * pool = &srv->pool;
    /* the first lane prefills the prompt; the others start from copies of its cache once it has */
    for (int k = 1; k < r->n_lanes; k++) r->lanes[k].waiting = true;
    if (!gen_start_choice(x, g, r, &r->lanes[0], r->next++, NULL)) r->oom = true;
    pthread_mutex_lock(&pool->mu);
    for (;;) {
        bool running = false;
        if (!gen_take_locked(x, r, &running)) {
            if (!running) break;
            slots_sleep_locked(pool, r->lanes[0].sl, 100);   /* the other lanes wake it too */
            continue;
        }
        pthread_mutex_unlock(&pool->mu);
        for (int k = 0; k < r->n_lanes; k++) {
            struct gen_lane * l = &r->lanes[k];
            if (l->choice < 0 || !l->news) continue;
            gen_emit(x, g, r, l);
            if (!l->ended) continue;
            gen_finish(x, g, r, l);
            l->choice = -1;
            if (r->bad < 0 && r->alive && !r->oom && !srv->stop && r->next < g->n_choices &&
                !gen_start_choice(x, g, r, l, r->next++, NULL))
                r->oom = true;
        }
        for (int k = 1; k < r->n_lanes && r->forkable; k++) {
            struct gen_lane * l = &r->lanes[k];
            if (l->waiting && r->bad < 0 && r->alive && !r->oom && !srv->stop && r->next < g->n_choices &&
                !gen_start_choice(x, g, r, l, r->next++, r->lanes[0].sl))
                r->oom = true;
            l->waiting = false;
        }
        /* a vanished client (or shutdown, or a failed choice) frees the slots at once */
        if (r->alive && http_peer_gone(x->c)) r->alive = false;
        if (!r->alive || srv->stop || r->oom || r->bad >= 0)
            for (int k = 0; k < r->n_lanes; k++) if (r->lanes[k].choice >= 0) slots_cancel(pool, r->lanes[k].sl);
        pthread_mutex_lock(&pool->mu);
    }
    pthread_mutex_unlock(&pool->mu);
}

/* The non-streamed reply: every choice, the usage (the prompt once, the tokens of all choices) and the timings. */
static void reply_choices(ctx * x, struct gen_req * g, struct gen_choice * ch, int n) {
    struct server * srv = x->srv;
    jbuf b;
    jb_init(&b);
    jb_cstr(&b, "{\"id\":");
    jb_qcstr(&b, g->id);
    jb_cstr(&b, g->chat ? ",\"object\":\"chat.completion\"" : ",\"object\":\"text_completion\"");
    jb_printf(&b, ",\"created\":%lld,\"model\":", g->created);
    jb_qcstr(&b, srv->o.alias);
    jb_cstr(&b, ",\"choices\":[");
    int32_t n_gen = 0;
    double prompt_ms = 0, decode_ms = 0;
    for (int c = 0; c < n; c++) {
        const struct gen_choice * h = &ch[c];
        const char * text = h->out.data ? h->out.data : "";
        jb_printf(&b, "%s{\"index\":%d,", c ? "," : "", c);
        if (h->msg) { jb_cstr(&b, "\"message\":{\"role\":\"assistant\","); jb_raw(&b, h->msg + 1, h->msg_len - 1); }
        else if (g->chat) { jb_cstr(&b, "\"message\":{\"role\":\"assistant\",\"content\":"); jb_str(&b, text, h->out.len); jb_cstr(&b, "}"); }
        else { jb_cstr(&b, "\"text\":"); jb_str(&b, text, h->out.len); }
        jb_cstr(&b, ",\"logprobs\":");
        logprobs_json(g, x, &b, h->lps, h->n_lps);
        jb_cstr(&b, ",\"finish_reason\":");
        jb_qcstr(&b, h->finish);
        jb_cstr(&b, "}");
        n_gen += h->res.n_generated;
        prompt_ms += h->res.prompt_ms;
        decode_ms += h->res.decode_ms;
    }
    const struct triattn_generate_result * res = &ch[0].res;
    const struct triattn_reuse_info * reuse = &ch[0].reuse;
    jb_printf(&b, "],\"usage\":{\"prompt_tokens\":%d,\"completion_tokens\":%d,\"total_tokens\":%d,"
              "\"prompt_tokens_details\":{\"cached_tokens\":%d}}",
              res->n_prompt_tokens, n_gen, res->n_prompt_tokens + n_gen, reuse->n_cached);
    jb_printf(&b, ",\"timings\":{\"prompt_ms\":%.3f,\"decode_ms\":%.3f,\"cache_n\":%d,\"prompt_n\":%d,\"cache\":\"%s\"",
              prompt_ms, decode_ms, reuse->n_cached, res->n_prompt_tokens - reuse->n_cached, reuse_name(reuse->kind));
    if (ch[0].shared_from >= 0) {
        jb_printf(&b, ",\"cache_from_slot\":%d,\"cache_shared_n\":%d", ch[0].shared_from, ch[0].n_shared);
    }
    jb_cstr(&b, "}}");
    reply_json(x, 200, &b);
    jb_free(&b);
}

/* Answers the request once its choices ran: the error, the end of the stream, or the whole reply. */
static void gen_reply(ctx * x, struct gen_req * g, struct gen_run * r, int32_t n_ctx) {
    struct server * srv = x->srv;
    const struct gen_choice * f = &r->ch[r->bad >= 0 ? r->bad : 0];
    const bool whole = r->bad < 0 && !r->oom && r->next == g->n_choices && !srv->stop &&
                       !x->c->broken;   /* every choice ran to its end */
    if (!r->started) {
        if (f->st == TRIATTN_OK && x->c->broken) {   /* dropped by the engine: the client went away */
            x->req->keep_alive = false;
            x->status = 499;
        } else if (r->oom)
            reply_error(x, 500, NULL, "out of memory");
        else if (f->st == TRIATTN_OK)
            reply_error(x, 503, "shutting_down", "the server is shutting down");
        else if (f->st == TRIATTN_ERR_CONTEXT)
            reply_error(x, 400, "context_length_exceeded", "the prompt does not fit in the context of %d tokens: %s",
                        n_ctx, f->err);
        else
            reply_error(x, f->http_status ? f->http_status : 500, triattn_status_name(f->st), "%s", f->err);
    } else if (g->stream) {
        const bool keep = x->req->keep_alive;
        x->req->keep_alive = false;  /* unless the stream ends whole below */
        if (r->alive && whole) {
            if (g->include_usage) {
                int32_t n_gen = 0;
                for (int c = 0; c < g->n_choices; c++) n_gen += r->ch[c].res.n_generated;
                r->alive = send_usage(g, x, &r->ev, r->ch[0].res.n_prompt_tokens, n_gen, r->ch[0].reuse.n_cached, &r->oom);
            }
            if (r->alive && !r->oom) { r->alive = http_stream_chunk(x->c, "data: [DONE]\n\n", 14); x->bytes += 14; }
            if (r->alive && !r->oom) { http_stream_end(x->c); x->req->keep_alive = keep; }
        }
        /* a generation that failed after the stream began ends it with an error event */
        if (r->alive && !srv->stop && !x->c->broken && (!whole || r->oom)) {
            const char * msg = r->oom ? "out of memory" : f->st != TRIATTN_OK ? f->err : "the server is shutting down";
            send_stream_error(x, r->oom ? "server_error" : triattn_status_name(f->st), msg);
        }
    } else if (r->oom) {
        reply_error(x, 500, NULL, "out of memory");
    } else if (f->st != TRIATTN_OK) {
        reply_error(x, 500, triattn_status_name(f->st), "generation failed: %s", f->err);
    } else if (r->alive && whole) {
        reply_choices(x, g, r->ch, g->n_choices);
    } else if (r->alive && !x->c->broken) {
        reply_error(x, 503, "shutting_down", "the server is shutting down");
    } else {
        x->req->keep_alive = false;
        x->status = 499;  /* client closed the request (nginx's convention, log only) */
    }
}

static void handle_generate(ctx * x, bool chat) {
    struct server * srv = x->srv;
    struct slot_pool * pool = &srv->pool;
    json_value * body = NULL;
    if (!parse_body(x, &body)) return;
    struct gen_req g;
    memset(&g, 0, sizeof g);
    g.chat = chat;
    g.created = (long long)time(NULL);
    snprintf(g.id, sizeof g.id, "%s-%lld", chat ? "chatcmpl" : "cmpl", (long long)atomic_fetch_add(&srv->id_counter, 1));
    if (!gen_parse(x, body, &g)) { gen_free(&g); json_free(body); return; }
    /* from here on the request lives in g: the parse tree and the body are freed before the queue */
    if (!gen_detach(x, &g)) { gen_free(&g); json_free(body); return; }
    json_free(body);
    struct gen_run r = { .alive = true, .bad = -1 };
    r.ch = calloc((size_t)g.n_choices, sizeof *r.ch);
    if (!r.ch) { reply_error(x, 500, NULL, "out of memory"); gen_free(&g); return; }
    for (int c = 0; c < g.n_choices; c++) { jb_init(&r.ch[c].out); r.ch[c].shared_from = -1; }
    jb_init(&r.ev);

    /* a client that goes away while queued leaves the queue: no slot, no tokenization, no prefill */
    bool left = false;
    /* the idle slot whose cache shares the longest prefix with the prompt */
    int32_t n_toks = 0;
    triattn_token * toks = g.cache_prompt ? slot_cache_tokenize(srv->model, g.prompt, g.gp.add_special, g.gp.parse_special, &n_toks) : NULL;
    struct slot * sl = slots_acquire_unless(pool, toks, toks ? n_toks : 0, conn_gone, x->c, &left);
    g.toks = toks;   /* kept for the engine (prefix sharing) until the slots are released */
    g.n_toks = toks ? n_toks : 0;
    if (sl) r.lanes[r.n_lanes++] = (struct gen_lane){ .sl = sl, .choice = -1 };
    /* n choices: more slots when they are free now and nobody queues for them (they decode side by side); past
     * those the choices follow one another, each after the first from its slot's cache */
    while (sl && r.n_lanes < g.n_choices) {
        struct slot * more = slots_take_free(pool, NULL, 0, &sl->cv);   /* the least recently used */
        if (!more) break;
        r.lanes[r.n_lanes++] = (struct gen_lane){ .sl = more, .choice = -1 };
    }
    if (!sl && left) {
        x->req->keep_alive = false;
        x->status = 499;
    } else if (!sl) {
        reply_error(x, 503, "shutting_down", "the server is shutting down");
    } else {
        const double t0 = mono_ms();
        gen_run_choices(x, &g, &r);
        const int32_t n_ctx = triattn_session_n_ctx(sl->session);
        for (int k = r.n_lanes - 1; k >= 0; k--) slots_release(pool, r.lanes[k].sl);
        g.toks = NULL;
        for (int c = 0; c < r.next; c++) {
            atomic_fetch_add(&srv->prompt_tokens, r.ch[c].res.n_prompt_tokens - (c ? r.ch[c].reuse.n_cached : 0));
            atomic_fetch_add(&srv->tokens_generated, r.ch[c].res.n_generated);
        }
        atomic_fetch_add(&srv->decode_us_total, (long long)((mono_ms() - t0) * 1e3));
        gen_reply(x, &g, &r, n_ctx);
    }
    for (int c = 0; c < g.n_choices; c++) {
        jb_free(&r.ch[c].out);
        free(r.ch[c].lps);
        free(r.ch[c].msg);
        if (r.ch[c].parser != g.tools.parser) triattn_tool_parser_free(r.ch[c].parser);
    }
    free(r.ch);
    jb_free(&r.ev);
    free(toks);
    gen_free(&g);
}

/* ---- small endpoints ---- */

/* POST /v1/embeddings: a free slot's session embeds the inputs (it forgets its cached prompt) while the engine
 * steps the other slots. */
static void handle_embeddings(ctx * x) {
    struct server * srv = x->srv;
    struct slot_pool * pool = &srv->pool;
    json_value * body = NULL;
    if (!parse_body(x, &body)) return;
    struct embed_req r;
    struct tool_err e;
    if (!check_model(x, body)) { json_free(body); return; }
    if (!api_embed_parse(srv->model, srv->info.n_embd, triattn_session_n_ctx(pool->slots[0].session), body, &r,
                         &e)) {
        x->param = e.param;
        reply_error(x, e.status, e.status == 400 ? "invalid_value" : NULL, "%s", e.msg);
        api_embed_free(&r);
        json_free(body);
        return;
    }
    json_free(body);
    bool left = false;
    struct slot * sl = slots_acquire_unless(pool, NULL, 0, conn_gone, x->c, &left);
    if (!sl) {
        if (left) { x->req->keep_alive = false; x->status = 499; }
        else reply_error(x, 503, "shutting_down", "the server is shutting down");
        api_embed_free(&r);
        return;
    }
    jbuf b;
    jb_init(&b);
    char err[512] = "";
    /* the server's budget, whatever the slot's last request asked for */
    enum triattn_status st = pool->compressing ? triattn_session_set_kv_budget(sl->session, pool->kv_budget) : TRIATTN_OK;
    if (st == TRIATTN_OK) st = api_embed_run(sl->session, srv->info.n_embd, &r, srv->o.alias, &b, err, sizeof err);
    else snprintf(err, sizeof err, "%s", triattn_session_last_error(sl->session));
    pthread_mutex_lock(&pool->mu);
    triattn_session_kv_stats(sl->session, &sl->kv);
    sl->n_prompt = 0;
    sl->n_generated = 0;
    pthread_mutex_unlock(&pool->mu);
    slots_release(pool, sl);
    x->param = NULL;
    if (st == TRIATTN_OK) {
        atomic_fetch_add(&srv->prompt_tokens, r.n_tokens);
        reply_json(x, 200, &b);
    } else {
        reply_error(x, st == TRIATTN_ERR_UNSUPPORTED ? 501 : st == TRIATTN_ERR_OOM ? 500 : 400, triattn_status_name(st),
                    "%s", err);
    }
    jb_free(&b);
    api_embed_free(&r);
}

static void handle_tokenize(ctx * x) {
    json_value * body = NULL;
    if (!parse_body(x, &body)) return;
    const json_value * c = json_get(body, "content");
    bool add_special = true, parse_special = true;
    if (!c || c->type != JSON_STRING) { reply_error(x, 400, "invalid_type", "'content' must be a string"); json_free(body); return; }
    if (!get_bool(x, body, "add_special", &add_special) || !get_bool(x, body, "parse_special", &parse_special)) { json_free(body); return; }
    if (c->len > (size_t)INT32_MAX / 2) { reply_error(x, 400, "invalid_value", "'content' is too long"); json_free(body); return; }
    int32_t cap = (int32_t)c->len + 8, n = 0;
    triattn_token * toks = malloc((size_t)cap * sizeof *toks);
    enum triattn_status st = toks ? triattn_tokenize(x->srv->model, c->str, (int32_t)c->len, add_special, parse_special, toks, cap, &n)
                                  : TRIATTN_ERR_OOM;
    if (st == TRIATTN_OK && n > cap) {
        triattn_token * t2 = realloc(toks, (size_t)n * sizeof *toks);
        if (t2) { toks = t2; cap = n; st = triattn_tokenize(x->srv->model, c->str, (int32_t)c->len, add_special, parse_special, toks, cap, &n); }
        else st = TRIATTN_ERR_OOM;
    }
    if (st != TRIATTN_OK) reply_error(x, 500, triattn_status_name(st), "tokenization failed");
    else {
        jbuf b;
        jb_init(&b);
        jb_cstr(&b, "{\"tokens\":[");
        for (int32_t k = 0; k < n; k++) { if (k) jb_raw(&b, ",", 1); jb_int(&b, toks[k]); }
        jb_cstr(&b, "]}");
        reply_json(x, 200, &b);
        jb_free(&b);
    }
    free(toks);
    json_free(body);
}

static void handle_detokenize(ctx * x) {
    json_value * body = NULL;
    if (!parse_body(x, &body)) return;
    const json_value * t = json_get(body, "tokens");
    if (!t || t->type != JSON_ARRAY || t->n > (1u << 24)) { reply_error(x, 400, "invalid_type", "'tokens' must be an array of token ids"); json_free(body); return; }
    int32_t nv = triattn_vocab_size(x->srv->model);
    triattn_token * toks = malloc((t->n + 1) * sizeof *toks);
    if (!toks) { reply_error(x, 500, NULL, "out of memory"); json_free(body); return; }
    for (size_t k = 0; k < t->n; k++) {
        const json_value * e = &t->items[k];
        if (e->type != JSON_NUMBER || !e->is_int || e->i < 0 || e->i >= nv) {
            reply_error(x, 400, "invalid_value", "tokens[%zu] is not a token id in [0, %d)", k, nv);
            free(toks); json_free(body); return;
        }
        toks[k] = (triattn_token)e->i;
    }
    int32_t cap = (int32_t)t->n * 16 + 16, n = 0;
    char * buf = malloc((size_t)cap);
    enum triattn_status st = buf ? triattn_detokenize(x->srv->model, toks, (int32_t)t->n, false, buf, cap, &n) : TRIATTN_ERR_OOM;
    if (st == TRIATTN_OK && n >= cap) {
        char * b2 = realloc(buf, (size_t)n + 1);
        if (b2) { buf = b2; cap = n + 1; st = triattn_detokenize(x->srv->model, toks, (int32_t)t->n, false, buf, cap, &n); }
        else st = TRIATTN_ERR_OOM;
    }
    if (st != TRIATTN_OK) reply_error(x, 500, triattn_status_name(st), "detokenization failed");
    else {
        jbuf b;
        jb_init(&b);
        jb_cstr(&b, "{\"content\":");
        jb_str(&b, buf, (size_t)n);   /* invalid UTF-8 (cut characters) becomes U+FFFD */
        jb_cstr(&b, "}");
        reply_json(x, 200, &b);
        jb_free(&b);
    }
    free(buf);
    free(toks);
    json_free(body);
}

/* The OpenAI model object of the served model. */
static void model_json(ctx * x, jbuf * b) {
    jb_cstr(b, "{\"id\":");
    jb_qcstr(b, x->srv->o.alias);
    jb_printf(b, ",\"object\":\"model\",\"created\":%lld,\"owned_by\":\"triattn\",\"meta\":{\"arch\":",
              (long long)x->srv->started);
    jb_qcstr(b, x->srv->info.arch);
    jb_printf(b, ",\"n_vocab\":%d,\"n_ctx_train\":%d,\"n_ctx\":%d,\"n_params\":%lld}}", x->srv->info.n_vocab,
              x->srv->info.n_ctx_train, triattn_session_n_ctx(x->srv->pool.slots[0].session), (long long)x->srv->info.n_params);
}

static void handle_models(ctx * x) {
    jbuf b;
    jb_init(&b);
    jb_cstr(&b, "{\"object\":\"list\",\"data\":[");
    model_json(x, &b);
    jb_cstr(&b, "]}");
    reply_json(x, 200, &b);
    jb_free(&b);
}

/* GET /v1/models/{id}: the model object, or 404 when id is not a name of the served model. */
static void handle_model(ctx * x, const char * id) {
    char name[256];
    size_t n = 0;
    for (const char * p = id; *p && n + 1 < sizeof name; p++) {   /* percent-decoding */
        unsigned v;
        if (*p == '%' && p[1] && p[2] && sscanf(p + 1, "%2x", &v) == 1) { name[n++] = (char)v; p += 2; }
        else name[n++] = *p;
    }
    name[n] = '\0';
    if (strlen(name) != n || !model_known(x->srv, name)) {
        x->param = "model";
        reply_error(x, 404, "model_not_found", "the model '%s' does not exist (this server has '%s')", name, x->srv->o.alias);
        return;
    }
    jbuf b;
    jb_init(&b);
    model_json(x, &b);
    reply_json(x, 200, &b);
    jb_free(&b);
}

static void handle_slots(ctx * x) {
    struct slot_pool * p = &x->srv->pool;
    jbuf b;
    jb_init(&b);
    jb_raw(&b, "[", 1);
    pthread_mutex_lock(&p->mu);
    for (int k = 0; k < p->n; k++) {
        const struct slot * s = &p->slots[k];
        if (k) jb_raw(&b, ",", 1);
        jb_printf(&b, "{\"id\":%d,\"state\":\"%s\",\"n_requests\":%lld,\"n_prompt_tokens\":%d,\"n_generated\":%d,"
                  "\"n_cached_tokens\":%lld,\"kv\":{\"policy\":", s->id, s->busy ? "busy" : "idle", (long long)s->n_requests,
                  s->n_prompt, s->n_generated, (long long)s->kv.n_past);
        jb_qcstr(&b, s->kv.policy);
        jb_printf(&b, ",\"n_past\":%lld,\"capacity\":%d,\"live_min\":%d,\"live_max\":%d,\"kv_bytes\":%llu,"
                  "\"kv_bytes_live\":%llu,\"n_compressions\":%lld,\"n_evicted\":%lld}}",
                  (long long)s->kv.n_past, s->kv.capacity, s->kv.live_min, s->kv.live_max,
                  (unsigned long long)s->kv.kv_bytes, (unsigned long long)s->kv.kv_bytes_live,
                  (long long)s->kv.n_compressions, (long long)s->kv.n_evicted);
    }
    pthread_mutex_unlock(&p->mu);
    jb_raw(&b, "]", 1);
    reply_json(x, 200, &b);
    jb_free(&b);
}

/* A file name under --slot-save-path: letters, digits, '.', '_', '-', not starting with '.', at most 128. */
static bool slot_file_name_ok(const char * s) {
    size_t n = strlen(s);
    if (n == 0 || n > 128 || s[0] == '.') return false;
    for (size_t k = 0; k < n; k++) {
        const char c = s[k];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-')) return false;
    }
    return true;
}

/* POST /slots/{id}?action=save|restore with {"filename": "..."}: the slot's session to / from a file. */
static void handle_slot_action(ctx * x, const char * id_text) {
    struct server * srv = x->srv;
    char * end = NULL;
    const long id = strtol(id_text, &end, 10);
    if (!*id_text || *end || id < 0 || id >= srv->pool.n) {
        reply_error(x, 404, "not_found", "no slot '%s' (slots 0..%d)", id_text, srv->pool.n - 1);
        return;
    }
    const char * q = x->req->query ? x->req->query : "";
    const bool save = strcmp(q, "action=save") == 0, restore = strcmp(q, "action=restore") == 0;
    if (!save && !restore) { reply_error(x, 400, "invalid_value", "use ?action=save or ?action=restore"); return; }
    if (!srv->o.slot_save_path) { reply_error(x, 501, "not_supported", "slot save/restore needs --slot-save-path DIR"); return; }
    json_value * body = NULL;
    if (!parse_body(x, &body)) return;
    const json_value * f = json_get(body, "filename");
    if (!f || f->type != JSON_STRING || !slot_file_name_ok(f->str)) {
        reply_error(x, 400, "invalid_value", "'filename' must be a plain file name (letters, digits, '.', '_', '-'; no path)");
        json_free(body);
        return;
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", srv->o.slot_save_path, f->str);
    char err[768];
    const double t0 = mono_ms();
    const enum triattn_status st = slot_cache_file(&srv->pool, (int)id, path, save, err, sizeof err);
    const double ms = mono_ms() - t0;
    if (st != TRIATTN_OK) {
        const int code = st == TRIATTN_ERR_IO && restore ? 404 : st == TRIATTN_ERR_IO || st == TRIATTN_ERR_OOM ? 500 : 400;
        reply_error(x, code, triattn_status_name(st), "%s", err);
        json_free(body);
        return;
    }
    jbuf b;
    jb_init(&b);
    jb_printf(&b, "{\"id_slot\":%ld,\"filename\":", id);
    jb_qcstr(&b, f->str);
    pthread_mutex_lock(&srv->pool.mu);
    const long long n_tokens = (long long)srv->pool.slots[id].kv.n_past;
    pthread_mutex_unlock(&srv->pool.mu);
    jb_printf(&b, ",\"%s\":%lld,\"timings\":{\"%s_ms\":%.3f}}", save ? "n_saved" : "n_restored", n_tokens,
              save ? "save" : "restore", ms);
    reply_json(x, 200, &b);
    jb_free(&b);
    json_free(body);
}

static void handle_metrics(ctx * x) {
    struct server * srv = x->srv;
    struct slot_pool * p = &srv->pool;
    int busy = 0, waiting;
    unsigned long long kv = 0, kv_live = 0;
    long long compr = 0;
    pthread_mutex_lock(&p->mu);
    for (int k = 0; k < p->n; k++) {
        busy += p->slots[k].busy;
        kv += p->slots[k].kv.kv_bytes;
        kv_live += p->slots[k].kv.kv_bytes_live;
        compr += p->slots[k].kv.n_compressions;
    }
    waiting = p->n_waiting;
    const long long steps = p->n_steps, rows = p->rows_total, shares = p->n_shares, shared = p->shared_tokens;
    pthread_mutex_unlock(&p->mu);
    long long gen = atomic_load(&srv->tokens_generated), us = atomic_load(&srv->decode_us_total);
    jbuf b;
    jb_init(&b);
    jb_printf(&b, "# HELP triattn_requests_total HTTP requests answered.\n# TYPE triattn_requests_total counter\n"
              "triattn_requests_total %lld\n", (long long)atomic_load(&srv->requests_total));
    jb_printf(&b, "# HELP triattn_requests_failed_total Requests answered with an error.\n# TYPE triattn_requests_failed_total counter\n"
              "triattn_requests_failed_total %lld\n", (long long)atomic_load(&srv->requests_failed));
    jb_printf(&b, "# HELP triattn_tokens_generated_total Tokens generated.\n# TYPE triattn_tokens_generated_total counter\n"
              "triattn_tokens_generated_total %lld\n", gen);
    jb_printf(&b, "# HELP triattn_prompt_tokens_total Prompt tokens processed.\n# TYPE triattn_prompt_tokens_total counter\n"
              "triattn_prompt_tokens_total %lld\n", (long long)atomic_load(&srv->prompt_tokens));
    jb_printf(&b, "# HELP triattn_prefix_shares_total Requests started from a copy of another slot's cache.\n"
              "# TYPE triattn_prefix_shares_total counter\ntriattn_prefix_shares_total %lld\n", shares);
    jb_printf(&b, "# HELP triattn_prefix_shared_tokens_total Prompt tokens taken from those copies, not prefilled.\n"
              "# TYPE triattn_prefix_shared_tokens_total counter\ntriattn_prefix_shared_tokens_total %lld\n", shared);
    jb_printf(&b, "# HELP triattn_tokens_per_second Generated tokens per second of generation time, per slot.\n"
              "# TYPE triattn_tokens_per_second gauge\ntriattn_tokens_per_second %.3f\n", us > 0 ? gen * 1e6 / (double)us : 0.0);
    jb_printf(&b, "# HELP triattn_slots_busy Slots generating now.\n# TYPE triattn_slots_busy gauge\ntriattn_slots_busy %d\n", busy);
    jb_printf(&b, "# HELP triattn_slots_total Slots.\n# TYPE triattn_slots_total gauge\ntriattn_slots_total %d\n", p->n);
    jb_printf(&b, "# HELP triattn_requests_waiting Requests waiting for a slot.\n# TYPE triattn_requests_waiting gauge\n"
              "triattn_requests_waiting %d\n", waiting);
    jb_printf(&b, "# HELP triattn_engine_steps_total Forward steps of the engine (each advances every busy slot).\n"
              "# TYPE triattn_engine_steps_total counter\ntriattn_engine_steps_total %lld\n", steps);
    jb_printf(&b, "# HELP triattn_engine_slot_steps_total Slots advanced, summed over steps (/ steps = mean batch).\n"
              "# TYPE triattn_engine_slot_steps_total counter\ntriattn_engine_slot_steps_total %lld\n", rows);
    jb_printf(&b, "# HELP triattn_kv_bytes KV cache bytes allocated over all slots.\n# TYPE triattn_kv_bytes gauge\n"
              "triattn_kv_bytes %llu\n", kv);
    jb_printf(&b, "# HELP triattn_kv_bytes_live KV cache bytes holding live tokens.\n# TYPE triattn_kv_bytes_live gauge\n"
              "triattn_kv_bytes_live %llu\n", kv_live);
    jb_printf(&b, "# HELP triattn_kv_compressions_total KV compression rounds (at the last snapshot of each slot).\n"
              "# TYPE triattn_kv_compressions_total counter\ntriattn_kv_compressions_total %lld\n", compr);
    jb_printf(&b, "# HELP triattn_connections_open Open client connections (this one included).\n"
              "# TYPE triattn_connections_open gauge\ntriattn_connections_open %d\n", atomic_load(&srv->active_conns));
    jb_printf(&b, "# HELP triattn_request_bytes_held Bytes of request bodies being answered (--max-queued-bytes).\n"
              "# TYPE triattn_request_bytes_held gauge\ntriattn_request_bytes_held %lld\n", (long long)atomic_load(&srv->held_bytes));
    if (b.oom) reply_error(x, 500, NULL, "out of memory");
    else reply(x, 200, "text/plain; version=0.0.4", b.data, b.len);
    jb_free(&b);
}

/* Constant-time comparison of the bearer token. */
static bool authorized(ctx * x) {
    const char * key = x->srv->o.api_key;
    if (!key || !*key) return true;
    const char * h = http_header(x->req, "Authorization");
    if (!h || strncasecmp(h, "Bearer ", 7) != 0) return false;
    h += 7;
    size_t a = strlen(h), b = strlen(key);
    unsigned diff = (unsigned)(a ^ b);
    for (size_t k = 0; k < a; k++) diff |= (unsigned char)h[k] ^ (unsigned char)key[k % (b ? b : 1)];
    return diff == 0;
}

static void route(ctx * x) {
    const char * m = x->req->method, * path = x->req->path;
    static const struct { const char * path; const char * method; int id; } routes[] = {
        { "/health", "GET", 0 }, { "/v1/health", "GET", 0 }, { "/v1/models", "GET", 1 }, { "/models", "GET", 1 },
        { "/v1/completions", "POST", 2 }, { "/completions", "POST", 2 },
        { "/v1/chat/completions", "POST", 3 }, { "/chat/completions", "POST", 3 },
        { "/v1/embeddings", "POST", 8 }, { "/embeddings", "POST", 8 },
        { "/tokenize", "POST", 4 }, { "/detokenize", "POST", 5 }, { "/metrics", "GET", 6 }, { "/slots", "GET", 7 },
    };
    int found = -1;
    for (size_t k = 0; k < sizeof routes / sizeof routes[0]; k++) {
        if (strcmp(routes[k].path, path) != 0) continue;
        found = (int)k;
        if (strcmp(routes[k].method, m) == 0 || (strcmp(m, "HEAD") == 0 && routes[k].method[0] == 'G')) break;
        found = -2 - (int)k;
    }
    if (strcmp(m, "OPTIONS") == 0 && x->srv->o.cors) {
        x->status = 204;
        http_respond(x->c, 204, "text/plain", x->cors, NULL, 0, x->req->keep_alive);
        return;
    }
    /* the key is checked before anything else is said about the path (only /health is open) */
    const bool health = found >= 0 ? routes[found].id == 0 : found <= -2 && routes[-2 - found].id == 0;
    if (!health && !authorized(x)) { reply_error(x, 401, "invalid_api_key", "missing or invalid API key"); return; }
    const char * model_id = strncmp(path, "/v1/models/", 11) == 0 ? path + 11 : strncmp(path, "/models/", 8) == 0 ? path + 8 : NULL;
    if (found == -1 && model_id && *model_id && (strcmp(m, "GET") == 0 || strcmp(m, "HEAD") == 0)) {
        handle_model(x, model_id);
        return;
    }
    if (found == -1 && strncmp(path, "/slots/", 7) == 0) {
        if (strcmp(m, "POST") != 0) { reply_error(x, 405, "method_not_allowed", "%s is not allowed on %s (use POST)", m, path); return; }
        handle_slot_action(x, path + 7);
        return;
    }
    if (found == -1) { reply_error(x, 404, "not_found", "unknown endpoint %s", path); return; }
    if (found <= -2) {
        /* Allow header names the one method this path takes */
        x->status = 405;
        reply_error(x, 405, "method_not_allowed", "%s is not allowed on %s (use %s)", m, path, routes[-2 - found].method);
        return;
    }
    int id = routes[found].id;
    switch (id) {
    case 0: { static const char ok[] = "{\"status\":\"ok\"}"; reply(x, 200, "application/json", ok, sizeof ok - 1); break; }
    case 1: handle_models(x); break;
    case 2: handle_generate(x, false); break;
    case 3: handle_generate(x, true); break;
    case 4: handle_tokenize(x); break;
    case 5: handle_detokenize(x); break;
    case 6: handle_metrics(x); break;
    case 7: handle_slots(x); break;
    case 8: handle_embeddings(x); break;
    }
}

/* Answers a malformed request with status and closes, reading (and dropping) what the client is still
 * sending for a moment so the response is not lost to a reset. */
static void reply_and_close(struct server * srv, struct http_conn * c, int status, const char * peer) {
    struct http_request dummy;
    memset(&dummy, 0, sizeof dummy);
    dummy.keep_alive = false;
    char extra[128];
    snprintf(extra, sizeof extra, "%s%s", srv->o.cors ? "Access-Control-Allow-Origin: *\r\n" : "",
             status == 503 || status == 429 ? "Retry-After: 1\r\n" : "");
    ctx x = { .srv = srv, .c = c, .req = &dummy, .cors = extra };
    c->head_only = false;   /* the request line may not even have been read */
    reply_error(&x, status, NULL, "%s", http_reason(status));
    atomic_fetch_add(&srv->requests_total, 1);
    fprintf(stderr, "%s - - %d %zu (%s)\n", peer, status, x.bytes, status == 408 ? "timeout" : status == 503 ? "busy" : "bad request");
    http_drain(c);
}

/* No memory for a connection's state: a 503 written whole, without reading the request, and the connection closed. */
static void refuse_without_memory(int fd) {
    char m[384];
    const int n = snprintf(m, sizeof m, "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                           "Content-Length: %zu\r\nRetry-After: 1\r\nConnection: close\r\n\r\n" OOM_BODY, sizeof OOM_BODY - 1);
    if (net_send(fd, m, (size_t) n, true) == n) net_shutdown_write(fd);
    net_close(fd);
}

void api_serve_connection(struct server * srv, int fd) {
    struct http_conn * c = malloc(sizeof *c);
    if (!c) { refuse_without_memory(fd); return; }
    http_conn_init(c, fd);
    net_send_timeout(fd, srv->o.timeout_s);
    struct http_limits lim = { .max_body = srv->o.max_body, .timeout_s = srv->o.timeout_s, .stop = &srv->stop,
                               .held = &srv->held_bytes, .held_cap = srv->o.max_held_bytes };
    char peer[64] = "-";
    struct sockaddr_storage sa;
    socklen_t sl = sizeof sa;
    if (getpeername(fd, (struct sockaddr *)&sa, &sl) == 0 && sa.ss_family == AF_INET) {
        const unsigned char * a = (const unsigned char *)&((struct sockaddr_in *)&sa)->sin_addr;
        snprintf(peer, sizeof peer, "%u.%u.%u.%u", a[0], a[1], a[2], a[3]);
    }
    const char * cors = srv->o.cors ? "Access-Control-Allow-Origin: *\r\nAccess-Control-Allow-Headers: *\r\n"
                                      "Access-Control-Allow-Methods: GET, POST, OPTIONS\r\n" : NULL;
    for (;;) {
        struct http_request req;
        int r = http_read_request(c, &lim, &req);
        if (r < 0) break;
        if (r > 0) { http_request_free(&req); reply_and_close(srv, c, r, peer); break; }
        double t0 = mono_ms();
        if (srv->stop) req.keep_alive = false;
        ctx x = { .srv = srv, .c = c, .req = &req, .status = 0, .cors = cors };
        route(&x);
        atomic_fetch_add(&srv->requests_total, 1);
        fprintf(stderr, "%s \"%s %s HTTP/1.%d\" %d %zu %.1fms\n", peer, req.method, req.path, req.minor, x.status,
                x.bytes, mono_ms() - t0);
        bool keep = req.keep_alive && !c->broken && !c->must_close && !srv->stop;
        http_request_free(&req);
        if (!keep) break;
    }
    net_close(fd);
    free(c);
}

void api_serve_reserved(struct server * srv, int fd, int busy_status) {
    struct http_conn * c = malloc(sizeof *c);
    if (!c) { refuse_without_memory(fd); return; }
    http_conn_init(c, fd);
    net_send_timeout(fd, 2);
    /* no body is read here: only /health is served */
    struct http_limits lim = { .max_body = 0, .timeout_s = 2, .stop = &srv->stop };
    struct http_request req;
    int r = http_read_request(c, &lim, &req);
    if (r == HTTP_READ_OK && (!strcmp(req.path, "/health") || !strcmp(req.path, "/v1/health")) &&
        (!strcmp(req.method, "GET") || !strcmp(req.method, "HEAD"))) {
        static const char ok[] = "{\"status\":\"ok\"}";
        http_respond(c, 200, "application/json", NULL, ok, sizeof ok - 1, false);
    } else if (r != HTTP_READ_CLOSED && r != HTTP_READ_ERROR) {
        char body[160];
        int n = snprintf(body, sizeof body, "{\"error\":{\"message\":\"%s\",\"type\":\"server_error\",\"code\":\"busy\"}}",
                         busy_status == 429 ? "too many connections from this address" : "too many connections");
        c->head_only = false;
        http_respond(c, busy_status, "application/json", "Retry-After: 1\r\n", body, (size_t)n, false);
    }
    atomic_fetch_add(&srv->requests_total, 1);
    http_request_free(&req);
    net_shutdown_write(fd);
    net_close(fd);
    free(c);
}
