/* Model output → OpenAI tool calls, incrementally. Hermes/generic syntax: text outside <tool_call>...</tool_call>
 * is content; a suffix that may be the start of "<tool_call>" is held back; a closed block whose body is JSON
 * naming a tool becomes a call, anything else inside a block comes out verbatim as content. Llama 3 syntax: a
 * reply whose first non-blank character is '{' is held to the end and becomes calls when it is one or more
 * {"name", "parameters"} objects. A forced call (tool_choice required / named) starts inside the call. */
#include "chat_tools.h"

#include "common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char k_open[]  = "<tool_call>";
static const char k_close[] = "</tool_call>";

enum parse_mode { MODE_TEXT, MODE_CALL, MODE_START, MODE_PLAIN };

struct triattn_tool_parser {
    struct tri_tools t;
    char *           tools_text;   /* owned copies t points into */
    char *           choice_text;
    enum parse_mode  mode;
    bool             opened;       /* the call being read began with a <tool_call> tag in the output */
    bool             finished;
    int32_t          n_calls;
    uint64_t         rng;
    tri_gbuf         pend;         /* held text, or the body of the call being read */
    tri_gbuf         lead;         /* blank text before the call being read (content again if it fails) */
    tri_gbuf         deltas;       /* this feed's delta array */
    size_t           n_deltas;
    tri_gbuf         content;      /* every content byte emitted */
    tri_gbuf         calls;        /* the message's tool_calls items */
    tri_gbuf         msg;
};

static void parser_free(triattn_tool_parser * p) {
    free(p->tools_text);
    free(p->choice_text);
    tri_gbuf_free(&p->pend);
    tri_gbuf_free(&p->lead);
    tri_gbuf_free(&p->deltas);
    tri_gbuf_free(&p->content);
    tri_gbuf_free(&p->calls);
    tri_gbuf_free(&p->msg);
    free(p);
}

void triattn_tool_parser_free(triattn_tool_parser * p) {
    if (p) {
        parser_free(p);
    }
}

static char * dup_or_null(const char * s, bool * oom) {
    if (!s) {
        return NULL;
    }
    char * d = strdup(s);
    *oom     = *oom || !d;
    return d;
}

/* Calls can be parsed at all (and one more is allowed). */
static bool calls_open(const triattn_tool_parser * p) {
    return p->t.n_tools > 0 && p->t.choice != TRI_TOOL_NONE && (p->t.parallel || p->n_calls == 0);
}

enum triattn_status tri_tool_parser_create(const char * tmpl, const char * format,
                                           const struct triattn_tool_options * opts, triattn_tool_parser ** out,
                                           char * err, size_t err_size) {
    if (!out) {
        return tri_fail(err, err_size, TRIATTN_ERR_INVALID_ARG, "tools: NULL out");
    }
    *out = NULL;
    triattn_tool_parser * p = calloc(1, sizeof *p);
    if (!p) {
        return tri_fail(err, err_size, TRIATTN_ERR_OOM, "tools: out of memory");
    }
    struct triattn_tool_options o;
    triattn_tool_options_init(&o);
    if (opts) {
        o = *opts;
    }
    bool oom       = false;
    p->tools_text  = dup_or_null(o.tools, &oom);
    p->choice_text = dup_or_null(o.tool_choice, &oom);
    o.tools        = p->tools_text;
    o.tool_choice  = p->choice_text;
    enum triattn_status st = oom ? tri_fail(err, err_size, TRIATTN_ERR_OOM, "tools: out of memory")
                                 : tri_tools_init(&p->t, &o, tmpl, format, err, err_size);
    if (st != TRIATTN_OK) {
        parser_free(p);
        return st;
    }
    p->rng  = o.id_seed;
    p->mode = tri_tools_forced(&p->t) && calls_open(p) ? MODE_CALL
            : p->t.syntax == TRI_TOOLS_LLAMA3 && calls_open(p) ? MODE_START : MODE_TEXT;
    *out = p;
    return TRIATTN_OK;
}

/* ---- output ---------------------------------------------------------------------------------------- */

static void delta_begin(triattn_tool_parser * p) {
    tri_gbuf_str(&p->deltas, p->n_deltas++ ? "," : "");
}

static void emit_content(triattn_tool_parser * p, const char * s, size_t n) {
    if (n == 0) {
        return;
    }
    delta_begin(p);
    tri_gbuf_str(&p->deltas, "{\"content\":");
    tri_gbuf_json_str(&p->deltas, s, n);
    tri_gbuf_str(&p->deltas, "}");
    tri_gbuf_put(&p->content, s, n);
}

static uint64_t splitmix64(uint64_t * x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* One parsed call: its name (a JSON string from the output) and its arguments' JSON text. */
struct call {
    tri_js name;
    tri_js args;
};

static void emit_call(triattn_tool_parser * p, const struct call * c) {
    static const char alnum[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    char     id[5 + 24 + 1] = "call_";
    uint64_t r = 0;
    for (int i = 0; i < 24; i++) {
        if (i % 8 == 0) {
            r = splitmix64(&p->rng);
        }
        id[5 + i] = alnum[r % 62];
        r /= 62;
    }
    id[29] = '\0';
    char index[24];
    snprintf(index, sizeof index, "%d", (int) p->n_calls);
    tri_gbuf args = { 0 };
    tri_gbuf_json_str(&args, c->args.p, c->args.n);

    delta_begin(p);
    tri_gbuf_str(&p->deltas, "{\"tool_calls\":[{\"index\":");
    tri_gbuf_str(&p->deltas, index);
    tri_gbuf_str(&p->deltas, ",\"id\":\"");
    tri_gbuf_str(&p->deltas, id);
    tri_gbuf_str(&p->deltas, "\",\"type\":\"function\",\"function\":{\"name\":");
    tri_gbuf_put(&p->deltas, c->name.p, c->name.n);
    tri_gbuf_str(&p->deltas, ",\"arguments\":\"\"}}]}");
    delta_begin(p);
    tri_gbuf_str(&p->deltas, "{\"tool_calls\":[{\"index\":");
    tri_gbuf_str(&p->deltas, index);
    tri_gbuf_str(&p->deltas, ",\"function\":{\"arguments\":");
    tri_gbuf_put(&p->deltas, args.p ? args.p : "\"\"", args.p ? args.len : 2);
    tri_gbuf_str(&p->deltas, "}}]}");

    tri_gbuf_str(&p->calls, p->n_calls ? ",{\"id\":\"" : "{\"id\":\"");
    tri_gbuf_str(&p->calls, id);
    tri_gbuf_str(&p->calls, "\",\"type\":\"function\",\"function\":{\"name\":");
    tri_gbuf_put(&p->calls, c->name.p, c->name.n);
    tri_gbuf_str(&p->calls, ",\"arguments\":");
    tri_gbuf_put(&p->calls, args.p ? args.p : "\"\"", args.p ? args.len : 2);
    tri_gbuf_str(&p->calls, "}}");
    p->calls.oom = p->calls.oom || args.oom;
    tri_gbuf_free(&args);
    p->n_calls++;
}

/* ---- recognising calls ------------------------------------------------------------------------------ */

/* One call object: {"name": <a tool>, "arguments" (or "parameters"): {...} or a string holding one}. */
static bool read_call(const triattn_tool_parser * p, tri_js obj, struct call * c, tri_gbuf * scratch) {
    tri_js name, args = { "{}", 2 };
    if (obj.p[0] != '{' || !tri_js_get(obj, "name", &name) || name.p[0] != '"' || tri_tools_find(&p->t, name) < 0) {
        return false;
    }
    if (!tri_js_get(obj, "arguments", &args)) {
        tri_js_get(obj, "parameters", &args);
    }
    if (args.p[0] == '"') {  /* arguments written as a string of JSON */
        size_t at = scratch->len;
        tri_js_unescape(args, scratch);
        tri_js inner;
        if (scratch->oom || !tri_js_parse((tri_js){ scratch->p + at, scratch->len - at }, &inner)) {
            return false;
        }
        args = inner;
    }
    if (args.p[0] != '{') {
        return false;
    }
    c->name = name;
    c->args = args;
    return true;
}

/* body holds one or more call objects (separated by blanks or ';'): emits them all and returns true, or
 * returns false (nothing emitted) when any is malformed. */
static bool take_calls(triattn_tool_parser * p, tri_js body) {
    enum { MAX_CALLS = 16 };
    struct call calls[MAX_CALLS];
    size_t      n = 0;
    tri_gbuf    scratch = { 0 };
    /* strings of JSON are unescaped into scratch: reserved once so slices into it stay valid */
    scratch.p   = malloc(body.n + 1);
    scratch.cap = scratch.p ? body.n + 1 : 0;
    scratch.oom = !scratch.p;
    const char * s = body.p, * e = body.p + body.n;
    bool ok = !scratch.oom;
    while (ok) {
        s = tri_js_ws(s, e);
        while (s < e && *s == ';') {
            s = tri_js_ws(s + 1, e);
        }
        if (s >= e) {
            break;
        }
        const char * v = tri_js_value_end(s, e);
        ok = v && n < MAX_CALLS && read_call(p, (tri_js){ s, (size_t) (v - s) }, &calls[n], &scratch);
        n += ok;
        s = v;
    }
    ok = ok && n > 0 && scratch.len < scratch.cap;  /* scratch never grew (unescaping only shrinks) */
    for (size_t i = 0; ok && i < n && calls_open(p); i++) {
        emit_call(p, &calls[i]);
    }
    tri_gbuf_free(&scratch);
    return ok;
}

/* ---- the state machine --------------------------------------------------------------------------- */

static void pend_drop(tri_gbuf * b, size_t k) {
    memmove(b->p, b->p + k, b->len - k);
    b->len -= k;
    b->p[b->len] = '\0';
}

static bool all_blank(const char * s, size_t n) {
    return n == 0 || tri_js_ws(s, s + n) == s + n;
}

/* Length of the longest suffix of s[0..n) that is a proper prefix of tag. */
static size_t partial_tag(const char * s, size_t n, const char * tag) {
    size_t m = strlen(tag);
    for (size_t k = TRI_MIN(n, m - 1); k > 0; k--) {
        if (memcmp(s + n - k, tag, k) == 0) {
            return k;
        }
    }
    return 0;
}

/* Bytes at the end of s[0..n) that begin a UTF-8 character not complete yet (held until it is). */
static size_t utf8_incomplete(const char * s, size_t n) {
    for (size_t k = 1; k <= 3 && k <= n; k++) {
        unsigned char c = (unsigned char) s[n - k];
        if ((c & 0xC0) == 0x80) {
            continue;  /* a continuation byte: look further back */
        }
        size_t len = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
        return len > k ? k : 0;
    }
    return 0;
}

static const char * find(const tri_gbuf * b, const char * tag) {
    return b->len ? strstr(b->p, tag) : NULL;  /* generated text holds no NUL bytes that matter here */
}

/* A call block that did not parse comes out as the text it was. */
static void emit_failed_call(triattn_tool_parser * p, const char * body, size_t n, bool closed) {
    tri_gbuf t = { 0 };
    tri_gbuf_put(&t, p->lead.p, p->lead.len);
    if (p->opened) {
        tri_gbuf_str(&t, k_open);
    }
    tri_gbuf_put(&t, body, n);
    if (closed) {
        tri_gbuf_str(&t, k_close);
    }
    emit_content(p, t.p, t.len);
    p->content.oom = p->content.oom || t.oom;
    tri_gbuf_free(&t);
}

static void step(triattn_tool_parser * p, bool final) {
    for (;;) {
        tri_gbuf * b = &p->pend;
        if (p->mode == MODE_PLAIN || (p->mode == MODE_TEXT && !calls_open(p))) {
            size_t keep = final ? 0 : utf8_incomplete(b->p, b->len);
            if (!all_blank(b->p, b->len - keep) || final) {
                emit_content(p, b->p, b->len - keep);
                pend_drop(b, b->len - keep);
            }
            return;
        }
        if (p->mode == MODE_START) {  /* Llama 3: a reply that opens with '{' is a call */
            const char * s = tri_js_ws(b->p, b->p + b->len);
            if (s == b->p + b->len) {
                if (final) {
                    emit_content(p, b->p, b->len);
                    b->len = 0;
                }
                return;
            }
            p->mode = *s == '{' ? MODE_CALL : MODE_PLAIN;
            continue;
        }
        if (p->mode == MODE_TEXT) {
            const char * o = find(b, k_open);
            if (o) {
                size_t k = (size_t) (o - b->p);
                p->lead.len = 0;
                if (all_blank(b->p, k)) {
                    tri_gbuf_put(&p->lead, b->p, k);
                } else {
                    emit_content(p, b->p, k);
                }
                pend_drop(b, k + sizeof k_open - 1);
                p->mode   = MODE_CALL;
                p->opened = true;
                continue;
            }
            size_t keep = final ? 0 : partial_tag(b->p, b->len, k_open);
            keep = keep ? keep : final ? 0 : utf8_incomplete(b->p, b->len);
            if (final || !all_blank(b->p, b->len - keep)) {
                if (!(final && p->n_calls > 0 && all_blank(b->p, b->len - keep))) {
                    emit_content(p, b->p, b->len - keep);
                }
                pend_drop(b, b->len - keep);
            }
            return;
        }
        /* MODE_CALL */
        const char * c = p->t.syntax == TRI_TOOLS_LLAMA3 ? NULL : find(b, k_close);
        if (c) {
            size_t k = (size_t) (c - b->p);
            if (!take_calls(p, (tri_js){ b->p, k })) {
                emit_failed_call(p, b->p, k, true);
            }
            p->lead.len = 0;
            pend_drop(b, k + sizeof k_close - 1);
            p->mode   = MODE_TEXT;
            p->opened = false;
            continue;
        }
        if (!final) {
            return;
        }
        if (!take_calls(p, (tri_js){ b->p ? b->p : "", b->len })) {
            emit_failed_call(p, b->p, b->len, false);
        }
        p->lead.len = 0;
        b->len  = 0;
        p->mode = MODE_TEXT;
        return;
    }
}

static void build_message(triattn_tool_parser * p) {
    tri_gbuf * m = &p->msg;
    tri_gbuf_str(m, "{\"content\":");
    if (p->n_calls > 0 && all_blank(p->content.p, p->content.len)) {
        tri_gbuf_str(m, "null");
    } else {
        tri_gbuf_json_str(m, p->content.p ? p->content.p : "", p->content.len);
    }
    if (p->n_calls > 0) {
        tri_gbuf_str(m, ",\"tool_calls\":[");
        tri_gbuf_put(m, p->calls.p, p->calls.len);
        tri_gbuf_str(m, "]");
    }
    tri_gbuf_str(m, "}");
}

enum triattn_status triattn_tool_parser_feed(triattn_tool_parser * p, const char * text, size_t len, bool final,
                                             const char ** deltas, size_t * deltas_len) {
    if (!p || (!text && len > 0) || !deltas || !deltas_len) {
        return TRIATTN_ERR_INVALID_ARG;
    }
    p->deltas.len = 0;
    p->n_deltas   = 0;
    tri_gbuf_str(&p->deltas, "[");
    if (!p->finished) {
        tri_gbuf_put(&p->pend, text, len);
        if (p->pend.len == 0) {
            tri_gbuf_put(&p->pend, " ", 1);  /* keeps pend allocated so its text is never NULL */
            p->pend.len = 0;
            p->pend.p[0] = '\0';
        }
        step(p, final);
        if (final) {
            p->finished = true;
            build_message(p);
        }
    }
    tri_gbuf_str(&p->deltas, "]");
    if (p->deltas.oom || p->pend.oom || p->lead.oom || p->content.oom || p->calls.oom || p->msg.oom) {
        *deltas     = "[]";
        *deltas_len = 2;
        return TRIATTN_ERR_OOM;
    }
    *deltas     = p->deltas.p;
    *deltas_len = p->deltas.len;
    return TRIATTN_OK;
}

const char * triattn_tool_parser_message(const triattn_tool_parser * p, size_t * len) {
    const char * m = p && p->finished && p->msg.p ? p->msg.p : "{\"content\":null}";
    if (len) {
        *len = strlen(m);
    }
    return m;
}

int32_t triattn_tool_parser_n_calls(const triattn_tool_parser * p) { return p ? p->n_calls : 0; }
