/* Model output → OpenAI tool calls, incrementally. Text is content until a call may open; from there it is held
 * back until it is known to be a call (then it becomes tool-call deltas) or not (then it comes out as the text it
 * was). Where a call may open:
 *   - <tool_call> (Hermes, the generic fallback; any format unless strict): the block up to </tool_call>;
 *   - Llama 3: a reply whose first non-blank character is '{' is held to the end;
 *   - unless strict: after <|python_tag|> or [TOOL_CALLS] (tagged), and at the start of a line a '{' or '['
 *     (bare) or a ``` / ```json fence: one or more call objects (or arrays of them); untagged ones count only
 *     when their arguments satisfy the tool's parameters schema.
 * A forced call (tool_choice required / named) starts inside the call. */
#include "chat_tools.h"

#include "common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char k_open[]  = "<tool_call>";
static const char k_close[] = "</tool_call>";
static const char k_fence[] = "```";

/* TEXT: content, looking for openers; CALL: inside <tool_call> (or a forced / Llama 3 call); START: Llama 3,
 * before the first non-blank character; PLAIN: content only; SEQ: after an opener of the lenient shapes; CODE:
 * inside a fenced block that holds no call (content up to its closing fence). */
enum parse_mode { MODE_TEXT, MODE_CALL, MODE_START, MODE_PLAIN, MODE_SEQ, MODE_CODE };

/* What opens a call in text. */
enum opener { OPEN_NONE, OPEN_TAG, OPEN_PYTHON, OPEN_MISTRAL, OPEN_FENCE, OPEN_BARE };

/* Openers recognised anywhere in text; `lenient` ones only without strict_tool_calls. */
static const struct {
    const char * text;
    enum opener  kind;
    bool         lenient;
} k_tags[] = {
    { "<tool_call>", OPEN_TAG, false },
    { "<|python_tag|>", OPEN_PYTHON, true },
    { "[TOOL_CALLS]", OPEN_MISTRAL, true },
};

struct triattn_tool_parser {
    struct tri_tools t;
    char *           tools_text;   /* owned copies t points into */
    char *           choice_text;
    enum parse_mode  mode;
    bool             opened;       /* the call being read began with a <tool_call> tag in the output */
    bool             line_start;   /* the text consumed so far ends where a line starts (blanks may follow) */
    bool             fresh;        /* only blanks since the start or the last call (held, dropped before a call) */
    enum opener      seq;          /* MODE_SEQ: what opened the calls being read (the opener begins pend) */
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
    p->rng        = o.id_seed;
    p->line_start = true;
    p->fresh      = true;
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
    p->fresh = p->fresh && tri_js_ws(s, s + n) == s + n;
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
    p->fresh = true;
}

/* ---- recognising calls ------------------------------------------------------------------------------ */

enum { TAKE_ARRAYS = 1, TAKE_VALIDATE = 2 };

/* One call object: {"name": <a tool>, "arguments" (or "parameters"): {...} or a string holding one}; with
 * TAKE_VALIDATE the arguments must satisfy the tool's parameters schema. */
static bool read_call(const triattn_tool_parser * p, tri_js obj, struct call * c, tri_gbuf * scratch, int flags) {
    tri_js name, args = { "{}", 2 };
    long   tool;
    if (obj.p[0] != '{' || !tri_js_get(obj, "name", &name) || name.p[0] != '"' ||
        (tool = tri_tools_find(&p->t, name)) < 0) {
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
    if (args.p[0] != '{' || ((flags & TAKE_VALIDATE) && !tri_js_valid(args, tri_tools_params(&p->t, (size_t) tool)))) {
        return false;
    }
    c->name = name;
    c->args = args;
    return true;
}

/* body holds one or more call objects (separated by blanks or ';'; with TAKE_ARRAYS also arrays of them): emits
 * them all and returns true, or returns false (nothing emitted) when any is malformed. */
static bool take_calls(triattn_tool_parser * p, tri_js body, int flags) {
    enum { MAX_CALLS = 16 };
    struct call calls[MAX_CALLS];
    size_t      n = 0;
    tri_gbuf    scratch = { 0 };
    /* strings of JSON are unescaped into scratch: reserved once so slices into it stay valid */
    scratch.p   = malloc(body.n + 1);
    scratch.cap = scratch.p ? body.n + 1 : 0;
    scratch.oom = !scratch.p;
    p->calls.oom = p->calls.oom || scratch.oom;  /* the feed fails with TRIATTN_ERR_OOM, not reads calls as text */
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
        tri_js       value = { s, v ? (size_t) (v - s) : 0 };
        if (v && *s == '[' && (flags & TAKE_ARRAYS)) {
            tri_js_iter it = tri_js_iter_of(value);
            tri_js      item;
            size_t      had = n;
            while (ok && tri_js_next(&it, NULL, &item)) {
                ok = n < MAX_CALLS && read_call(p, item, &calls[n], &scratch, flags);
                n += ok;
            }
            ok = ok && n > had;
        } else {
            ok = v && n < MAX_CALLS && read_call(p, value, &calls[n], &scratch, flags);
            n += ok;
        }
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

/* Drops the first k bytes of pend (emitted or parsed); the line state follows them. */
static void consume(triattn_tool_parser * p, size_t k) {
    for (size_t i = 0; i < k; i++) {
        char c = p->pend.p[i];
        p->line_start = c == '\n' || (p->line_start && (c == ' ' || c == '\t'));
    }
    pend_drop(&p->pend, k);
}

static bool all_blank(const char * s, size_t n) {
    return n == 0 || tri_js_ws(s, s + n) == s + n;
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

/* s[0..n) begins with text, or with all of s being a proper prefix of it (*partial). */
static bool starts(const char * s, size_t n, const char * text, bool * partial) {
    size_t m = strlen(text);
    *partial = n < m;
    return memcmp(s, text, TRI_MIN(n, m)) == 0;
}

/* The first place in s[0..n) where a call opens (in code: where the block closes): its kind and *at. OPEN_NONE
 * when there is none, with *at where text that may still become an opener begins (n when nothing may). */
static enum opener find_opener(const triattn_tool_parser * p, const char * s, size_t n, size_t * at) {
    const bool code    = p->mode == MODE_CODE;
    const bool lenient = !p->t.strict && !code;
    bool       ls      = p->line_start, partial;
    for (size_t j = 0; j < n; j++) {
        *at = j;
        for (size_t k = 0; k < sizeof k_tags / sizeof k_tags[0]; k++) {
            bool on = !code && (k_tags[k].lenient ? lenient : lenient || p->t.syntax != TRI_TOOLS_LLAMA3);
            if (on && starts(s + j, n - j, k_tags[k].text, &partial)) {
                return partial ? OPEN_NONE : k_tags[k].kind;
            }
        }
        if (lenient && ls && (s[j] == '{' || s[j] == '[')) {
            return OPEN_BARE;
        }
        if ((lenient || code) && ls && starts(s + j, n - j, k_fence, &partial)) {
            return partial ? OPEN_NONE : OPEN_FENCE;
        }
        ls = s[j] == '\n' || (ls && (s[j] == ' ' || s[j] == '\t'));
    }
    *at = n;
    return OPEN_NONE;
}

static size_t opener_len(enum opener o) {
    for (size_t k = 0; k < sizeof k_tags / sizeof k_tags[0]; k++) {
        if (k_tags[k].kind == o) {
            return strlen(k_tags[k].text);
        }
    }
    return o == OPEN_FENCE ? sizeof k_fence - 1 : 0;
}

/* MODE_SEQ: pend s..e is the opener, then (for a fence) a language name, then the calls. TRI_JS_DONE: *body is the
 * calls' JSON and *end the end of the calls (past a fence's closing ```); TRI_JS_MORE: more text is needed;
 * TRI_JS_BAD: this is no call, *end is the first byte that is not part of one. At the end of the output
 * (final) MORE is never returned. */
static enum tri_js_scan seq_scan(const triattn_tool_parser * p, const char * s, const char * e, bool final,
                                 const char ** end, tri_js * body) {
    const bool   fence = p->seq == OPEN_FENCE;
    const char * q     = s + opener_len(p->seq);
    bool         partial;
    if (fence) {  /* ``` or ```json (any case) */
        const char * lang = q;
        while (q < e && ((*q >= 'a' && *q <= 'z') || (*q >= 'A' && *q <= 'Z') || (*q >= '0' && *q <= '9'))) {
            q++;
        }
        if (q == e && !final) {
            return TRI_JS_MORE;
        }
        bool json = q - lang == 4 && (lang[0] | 32) == 'j' && (lang[1] | 32) == 's' && (lang[2] | 32) == 'o' &&
                    (lang[3] | 32) == 'n';
        if (q != lang && !json) {
            *end = q;
            return TRI_JS_BAD;
        }
    }
    const char * first = NULL, * last = NULL;  /* the calls read so far */
    for (;;) {
        const char * v = tri_js_ws(q, e);
        while (last && v < e && *v == ';') {
            v = tri_js_ws(v + 1, e);
        }
        if (v == e && !final) {
            return TRI_JS_MORE;
        }
        if (v == e || (last && !fence)) {
            if (!last) {
                *end = e;
                return TRI_JS_BAD;
            }
            /* one bare or tagged call (with the ';' that may follow it), or an unclosed fence at the end */
            const char * semi = tri_js_ws(last, e);
            *end = fence ? e : semi < e && *semi == ';' ? semi + 1 : last;
            break;
        }
        if (last && starts(v, (size_t) (e - v), k_fence, &partial)) {
            if (partial && !final) {
                return TRI_JS_MORE;
            }
            *end = partial ? last : v + sizeof k_fence - 1;
            break;
        }
        if (*v != '{' && *v != '[') {
            *end = v;
            return TRI_JS_BAD;
        }
        enum tri_js_scan r = tri_js_value_scan(v, e, &q);
        if (r == TRI_JS_MORE && !final) {
            return TRI_JS_MORE;
        }
        if (r != TRI_JS_DONE) {
            *end = q;
            return TRI_JS_BAD;
        }
        first = first ? first : v;
        last  = q;
    }
    *body = (tri_js){ first, (size_t) (last - first) };
    return TRI_JS_DONE;
}

/* Text that did not become a call comes out as it was: the blanks before it, an opener already consumed, then
 * s[0..n) and a closing tag. */
static void emit_failed_call(triattn_tool_parser * p, const char * s, size_t n, bool opened, bool closed) {
    tri_gbuf t = { 0 };
    tri_gbuf_put(&t, p->lead.p, p->lead.len);
    if (opened) {
        tri_gbuf_str(&t, k_open);
    }
    tri_gbuf_put(&t, s, n);
    if (closed) {
        tri_gbuf_str(&t, k_close);
    }
    emit_content(p, t.p, t.len);
    p->content.oom = p->content.oom || t.oom;
    tri_gbuf_free(&t);
    p->lead.len = 0;
}

/* Releases pend up to where an opener may begin (at; all of it when final). Blanks with nothing but blanks since
 * the start or the last call are held: dropped when a call follows them. */
static void release(triattn_tool_parser * p, size_t at, bool final) {
    tri_gbuf * b     = &p->pend;
    size_t     keep  = final ? 0 : b->len - at;
    keep             = keep ? keep : final ? 0 : utf8_incomplete(b->p, b->len);
    size_t     n     = b->len - keep;
    bool       blank = p->fresh && all_blank(b->p, n);
    if (final || !blank) {
        if (!(blank && p->n_calls > 0)) {
            emit_content(p, b->p, n);
        }
        consume(p, n);
    }
}

/* Text mode: content up to the next opener, which switches the mode (held blanks before it become the lead). */
static bool step_text(triattn_tool_parser * p, bool final) {
    tri_gbuf *  b  = &p->pend;
    size_t      at = 0;
    enum opener o  = find_opener(p, b->p, b->len, &at);
    if (o == OPEN_NONE) {
        release(p, at, final);
        return false;
    }
    p->lead.len = 0;
    if (p->fresh && all_blank(b->p, at)) {
        tri_gbuf_put(&p->lead, b->p, at);
    } else {
        emit_content(p, b->p, at);
    }
    consume(p, at);
    if (o == OPEN_TAG) {
        consume(p, sizeof k_open - 1);
        p->mode   = MODE_CALL;
        p->opened = true;
    } else {
        p->mode = MODE_SEQ;
        p->seq  = o;
    }
    return true;
}

/* A fenced block that holds no call: content through its closing fence. */
static bool step_code(triattn_tool_parser * p, bool final) {
    size_t at = 0;
    if (find_opener(p, p->pend.p, p->pend.len, &at) == OPEN_NONE) {
        release(p, at, final);
        return false;
    }
    emit_content(p, p->pend.p, at + sizeof k_fence - 1);
    consume(p, at + sizeof k_fence - 1);
    p->mode = MODE_TEXT;
    return true;
}

/* The first closing tag in b outside a JSON string (a call's arguments may quote one). At the end of the output
 * with none outside, the body runs to the end, unless it ends inside a string (not JSON): then the first tag. */
static const char * find_close(const tri_gbuf * b, bool final) {
    bool in_str = false, esc = false;
    for (size_t i = 0; i < b->len; i++) {
        const char ch = b->p[i];
        if (esc) {
            esc = false;
        } else if (in_str) {
            esc    = ch == '\\';
            in_str = ch != '"';
        } else if (ch == '"') {
            in_str = true;
        } else if (ch == '<' && b->len - i >= sizeof k_close - 1 && memcmp(b->p + i, k_close, sizeof k_close - 1) == 0) {
            return b->p + i;
        }
    }
    return final && in_str ? find(b, k_close) : NULL;
}

/* Calls opened by a tag (or forced): the body up to the closing tag, or to the end of the output. */
static bool step_call(triattn_tool_parser * p, bool final) {
    tri_gbuf *   b = &p->pend;
    const char * c = p->opened || p->t.syntax != TRI_TOOLS_LLAMA3 ? find_close(b, final) : NULL;
    if (!c && !final) {
        return false;
    }
    size_t k     = c ? (size_t) (c - b->p) : b->len;
    int    flags = p->t.strict ? 0 : TAKE_ARRAYS;
    bool   took  = take_calls(p, (tri_js){ b->p ? b->p : "", k }, flags);
    if (!took) {
        emit_failed_call(p, b->p, k, p->opened, c != NULL);
    }
    p->lead.len = 0;
    pend_drop(b, c ? k + sizeof k_close - 1 : k);
    p->line_start = took;  /* after a call as at the start of a line; after the text of a failed one, not */
    p->mode       = MODE_TEXT;
    p->opened     = false;
    return c != NULL;
}

/* Calls opened by <|python_tag|>, [TOOL_CALLS], a fence or a bare '{' / '[' at the start of a line. */
static bool step_seq(triattn_tool_parser * p, bool final) {
    /* The text is rescanned as it grows: a candidate longer than this is no call, and the scan sees no further
     * (the same decision however the text was split). */
    enum { MAX_CALL_TEXT = 1 << 14 };
    tri_gbuf *       b    = &p->pend;
    const bool       full = b->len >= MAX_CALL_TEXT;
    const char *     e    = b->p + (full ? MAX_CALL_TEXT : b->len);
    const char *     end  = NULL;
    tri_js           body;
    enum tri_js_scan r = seq_scan(p, b->p, e, final && !full, &end, &body);
    if (r == TRI_JS_MORE && !full) {
        return false;
    }
    if (r == TRI_JS_MORE) {
        r   = TRI_JS_BAD;
        end = e;
    }
    int    flags = TAKE_ARRAYS | (p->seq == OPEN_FENCE || p->seq == OPEN_BARE ? TAKE_VALIDATE : 0);
    size_t k     = end > b->p ? (size_t) (end - b->p) : 1;  /* every opener is at least one byte */
    if (r == TRI_JS_DONE && take_calls(p, body, flags)) {
        p->lead.len = 0;
        pend_drop(b, k);
        p->line_start = true;
        p->mode = MODE_TEXT;
    } else {
        emit_failed_call(p, b->p, k, false, false);
        consume(p, k);
        /* a fence that holds no call is code: no call is read inside it */
        p->mode = p->seq == OPEN_FENCE && r == TRI_JS_BAD ? MODE_CODE : MODE_TEXT;
    }
    return true;
}

static void step(triattn_tool_parser * p, bool final) {
    for (bool more = true; more;) {
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
            p->mode = *s == '{' ? MODE_CALL : p->t.strict ? MODE_PLAIN : MODE_TEXT;
            continue;
        }
        more = p->mode == MODE_TEXT ? step_text(p, final)
             : p->mode == MODE_SEQ  ? step_seq(p, final)
             : p->mode == MODE_CODE ? step_code(p, final)
                                    : step_call(p, final);
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
        const bool empty = p->pend.len == 0;
        if (empty) {
            tri_gbuf_put(&p->pend, " ", 1);  /* keeps pend allocated so its text is never NULL */
        }
        if (p->pend.oom) {  /* the text could not be held: nothing is parsed, the feed fails */
            *deltas     = "[]";
            *deltas_len = 2;
            return TRIATTN_ERR_OOM;
        }
        if (empty) {
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
