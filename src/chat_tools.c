/* Tools in the prompt: a request's OpenAI tools / tool_choice and the tool turns of a conversation become plain
 * system/user/assistant messages in the chat format's own words (Hermes tags for ChatML-family templates,
 * Llama 3's JSON calls and ipython turns, the Hermes tags as a generic fallback elsewhere), which the chat
 * renderer (chat.c) then formats. Also the JSON Schema of a forced call. */
#include "chat_tools.h"

#include "chat.h"
#include "common.h"
#include "json_schema.h"
#include "model.h"
#include "vocab.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char k_hermes_head[] =
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>";
static const char k_hermes_tail[] =
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n"
    "</tool_call>";
static const char k_llama3_head[] =
    "Given the following functions, please respond with a JSON for a function call with its proper arguments "
    "that best answers the given prompt.\n\nRespond in the format {\"name\": function name, \"parameters\": "
    "dictionary of argument name and its value}.Do not use variables.\n\n";
static const char k_llama3_ipython[] = "<|start_header_id|>ipython<|end_header_id|>\n\n";
static const char k_forced_prefix[]  = "<tool_call>\n";

typedef const struct triattn_chat_tool_message * tri_msg_tools;

void triattn_tool_options_init(struct triattn_tool_options * o) {
    if (o) {
        *o = (struct triattn_tool_options){ .parallel_tool_calls = true };
    }
}

/* ---- request validation ------------------------------------------------------------------------- */

/* The "function" object of tool i (validated by tri_tools_init). */
static tri_js tool_function(const struct tri_tools * t, size_t i) {
    tri_js_iter it = tri_js_iter_of(t->tools);
    tri_js      v  = { "{}", 2 }, f = { "{}", 2 };
    size_t      k  = 0;
    while (k++ <= i && tri_js_next(&it, NULL, &v)) {
        /* walk to element i */
    }
    tri_js_get(v, "function", &f);
    return f;
}

static tri_js tool_name(const struct tri_tools * t, size_t i) {
    tri_js n = { "\"\"", 2 };
    tri_js_get(tool_function(t, i), "name", &n);
    return n;
}

static tri_js tool_params(const struct tri_tools * t, size_t i) {
    static const char none[] = "{\"type\": \"object\", \"properties\": {}}";
    tri_js p = { none, sizeof none - 1 };
    tri_js_get(tool_function(t, i), "parameters", &p);
    return p;
}

static long tool_index(const struct tri_tools * t, tri_js name) {
    for (size_t i = 0; i < t->n_tools; i++) {
        if (tri_js_str_same(tool_name(t, i), name)) {
            return (long) i;
        }
    }
    return -1;
}

long tri_tools_find(const struct tri_tools * t, tri_js name) { return tool_index(t, name); }

tri_js tri_tools_params(const struct tri_tools * t, size_t i) { return tool_params(t, i); }

static enum triattn_status bad(char * err, size_t n, const char * what) {
    return tri_fail(err, n, TRIATTN_ERR_INVALID_ARG, "tools: %s", what);
}

static enum triattn_status check_tools(struct tri_tools * t, const char * text, char * err, size_t err_size) {
    t->tools   = (tri_js){ "[]", 2 };
    t->n_tools = 0;
    if (!text || !*text) {
        return TRIATTN_OK;
    }
    tri_js v;
    if (!tri_js_parse((tri_js){ text, strlen(text) }, &v) || v.p[0] != '[') {
        return bad(err, err_size, "'tools' must be a JSON array");
    }
    tri_js_iter it = tri_js_iter_of(v);
    tri_js      tool;
    size_t      i = 0;
    for (; tri_js_next(&it, NULL, &tool); i++) {
        tri_js ty, f, name, params;
        if (tool.p[0] != '{' || !tri_js_get(tool, "function", &f) || f.p[0] != '{') {
            return tri_fail(err, err_size, TRIATTN_ERR_INVALID_ARG, "tools: tools[%zu] must be an object with a "
                            "'function' object", i);
        }
        if (tri_js_get(tool, "type", &ty) && !tri_js_str_eq(ty, "function")) {
            return tri_fail(err, err_size, TRIATTN_ERR_INVALID_ARG, "tools: tools[%zu].type must be \"function\"", i);
        }
        if (!tri_js_get(f, "name", &name) || name.p[0] != '"' || name.n <= 2) {
            return tri_fail(err, err_size, TRIATTN_ERR_INVALID_ARG, "tools: tools[%zu].function.name must be a "
                            "non-empty string", i);
        }
        if (tri_js_get(f, "parameters", &params) && params.p[0] != '{') {
            return tri_fail(err, err_size, TRIATTN_ERR_INVALID_ARG, "tools: tools[%zu].function.parameters must be "
                            "a JSON Schema object", i);
        }
    }
    t->tools   = v;
    t->n_tools = i;
    return TRIATTN_OK;
}

static enum triattn_status check_choice(struct tri_tools * t, const char * text, char * err, size_t err_size) {
    t->choice = TRI_TOOL_AUTO;
    if (!text || !*text) {
        return TRIATTN_OK;
    }
    tri_js v, f, name;
    if (!tri_js_parse((tri_js){ text, strlen(text) }, &v)) {
        return bad(err, err_size, "'tool_choice' is not valid JSON");
    }
    if (v.p[0] == '"') {
        static const char * const names[] = { "auto", "none", "required" };
        for (int k = 0; k < 3; k++) {
            if (tri_js_str_eq(v, names[k])) {
                t->choice = (enum tri_tool_choice) k;
                return TRIATTN_OK;
            }
        }
        return bad(err, err_size, "'tool_choice' must be \"auto\", \"none\", \"required\" or a function object");
    }
    if (v.p[0] != '{' || !tri_js_get(v, "function", &f) || !tri_js_get(f, "name", &name) || name.p[0] != '"') {
        return bad(err, err_size, "'tool_choice' must be {\"type\": \"function\", \"function\": {\"name\": ...}}");
    }
    if (tool_index(t, name) < 0) {
        return tri_fail(err, err_size, TRIATTN_ERR_INVALID_ARG, "tools: 'tool_choice' names the function %.*s, which "
                        "is not in 'tools'", (int) TRI_MIN(name.n, 128), name.p);
    }
    t->choice = TRI_TOOL_NAMED;
    t->named  = name;
    return TRIATTN_OK;
}

/* The chat format name in effect (NULL when none is recognised; the renderer reports it). */
static const char * resolve_format(const char * tmpl, const char * format) {
    return !format || strcmp(format, "auto") == 0 ? tri_chat_detect(tmpl) : format;
}

enum triattn_status tri_tools_init(struct tri_tools * t, const struct triattn_tool_options * o, const char * tmpl,
                                   const char * format, char * err, size_t err_size) {
    memset(t, 0, sizeof *t);
    struct triattn_tool_options def;
    triattn_tool_options_init(&def);
    if (!o) {
        o = &def;
    }
    enum triattn_status st = check_tools(t, o->tools, err, err_size);
    if (st == TRIATTN_OK) {
        st = check_choice(t, o->tool_choice, err, err_size);
    }
    if (st != TRIATTN_OK) {
        return st;
    }
    if ((t->choice == TRI_TOOL_REQUIRED) && t->n_tools == 0) {
        return bad(err, err_size, "'tool_choice' \"required\" needs a non-empty 'tools' array");
    }
    t->parallel = o->parallel_tool_calls;
    t->strict   = o->strict_tool_calls;
    t->id_seed  = o->id_seed;
    const char * f = resolve_format(tmpl, format);
    t->syntax = !f ? TRI_TOOLS_GENERIC
              : strcmp(f, "llama3") == 0 ? TRI_TOOLS_LLAMA3
              : strcmp(f, "chatml") == 0 || strcmp(f, "qwen") == 0 || strcmp(f, "qwen3") == 0 ? TRI_TOOLS_HERMES
                                                                                                 : TRI_TOOLS_GENERIC;
    return TRIATTN_OK;
}

bool tri_tools_forced(const struct tri_tools * t) {
    return t->choice == TRI_TOOL_REQUIRED || t->choice == TRI_TOOL_NAMED;
}

/* ---- rendering ----------------------------------------------------------------------------------- */

/* The default system prompt a ChatML template injects (SmolLM2, Qwen2.5), read off a one-turn render. */
static void default_system(const char * tmpl, const char * format, tri_gbuf * out) {
    static const char head[] = "<|im_start|>system\n";
    struct triattn_chat_message m = { "user", "" };
    size_t n = 0;
    char   err[64];
    if (tri_chat_apply(tmpl, format, NULL, &m, 1, false, NULL, 0, &n, err, sizeof err) != TRIATTN_OK) {
        return;
    }
    char * buf = malloc(n + 1);
    if (buf && tri_chat_apply(tmpl, format, NULL, &m, 1, false, buf, n + 1, &n, err, sizeof err) == TRIATTN_OK &&
        strncmp(buf, head, sizeof head - 1) == 0) {
        const char * b = buf + sizeof head - 1;
        const char * e = strstr(b, "<|im_end|>");
        if (e) {
            tri_gbuf_put(out, b, (size_t) (e - b));
        }
    }
    free(buf);
}

/* The arguments of an OpenAI call as the templates print them: the JSON its "arguments" string holds
 * (re-spaced), or the string itself when it does not hold JSON. */
static void put_arguments(tri_gbuf * o, tri_js args) {
    if (args.p[0] != '"') {
        tri_js_dump(o, args, 0);
        return;
    }
    tri_gbuf raw = { 0 };
    tri_js_unescape(args, &raw);
    tri_js v;
    if (raw.oom) {
        o->oom = true;  /* the rendering fails for want of memory, not prints the string instead */
    } else if (raw.len > 0 && tri_js_parse((tri_js){ raw.p, raw.len }, &v)) {
        tri_js_dump(o, v, 0);
    } else {
        tri_gbuf_put(o, args.p, args.n);
    }
    tri_gbuf_free(&raw);
}

/* An assistant turn's calls in the format's words; false when tool_calls is not a valid array of calls. */
static bool put_calls(tri_gbuf * o, enum tri_tool_syntax syn, const char * text, bool sep_first) {
    tri_js v;
    if (!tri_js_parse((tri_js){ text, strlen(text) }, &v) || v.p[0] != '[') {
        return false;
    }
    tri_js_iter it = tri_js_iter_of(v);
    tri_js      call;
    for (size_t i = 0; tri_js_next(&it, NULL, &call); i++) {
        tri_js f = call, name, args = { "\"{}\"", 4 };
        tri_js_get(call, "function", &f);
        if (!tri_js_get(f, "name", &name) || name.p[0] != '"') {
            return false;
        }
        tri_js_get(f, "arguments", &args);
        if (i > 0 || sep_first) {
            tri_gbuf_str(o, "\n");
        }
        tri_gbuf_str(o, syn == TRI_TOOLS_LLAMA3 ? "{\"name\": " : "<tool_call>\n{\"name\": ");
        tri_gbuf_put(o, name.p, name.n);
        tri_gbuf_str(o, syn == TRI_TOOLS_LLAMA3 ? ", \"parameters\": " : ", \"arguments\": ");
        put_arguments(o, args);
        tri_gbuf_str(o, syn == TRI_TOOLS_LLAMA3 ? "}" : "}\n</tool_call>");
    }
    return true;
}

/* Rewritten conversation: plain messages whose contents live in owned strings. */
struct plain_conv {
    struct triattn_chat_message * m;
    char **                       owned;
    size_t                        n;
    bool                          oom;
};

static void conv_free(struct plain_conv * c) {
    for (size_t i = 0; c->owned && i < c->n; i++) {
        free(c->owned[i]);
    }
    free(c->owned);
    free(c->m);
}

/* Appends a message taking ownership of b's text. */
static void conv_add(struct plain_conv * c, const char * role, tri_gbuf * b) {
    c->oom             = c->oom || b->oom;
    c->m[c->n].role    = role;
    c->owned[c->n]     = b->p;
    c->m[c->n].content = b->p ? b->p : "";
    c->n++;
    *b = (tri_gbuf){ 0 };
}

/* The marker a Llama 3 tool result stands as while the chat renderer runs (replaced by an ipython turn). */
static void llama3_marker(tri_gbuf * b, size_t i) {
    char m[48];
    snprintf(m, sizeof m, "\x02tool-result-%zu\x03", i);
    tri_gbuf_str(b, m);
}

static enum triattn_status build_conv(const struct tri_tools * t, const char * tmpl, const char * format,
                                      tri_msg_tools m, size_t n, struct plain_conv * c, bool * oom, char * err,
                                      size_t err_size) {
    bool   show  = t->choice != TRI_TOOL_NONE && t->n_tools > 0;
    size_t first = n > 0 && strcmp(m[0].role, "system") == 0 ? 1 : 0;
    tri_gbuf b = { 0 };
    if (show && t->syntax != TRI_TOOLS_LLAMA3) {
        /* the system prompt: the conversation's (or the template's default) + the tool block */
        if (first) {
            tri_gbuf_str(&b, m[0].content ? m[0].content : "");
        } else if (t->syntax == TRI_TOOLS_HERMES) {
            default_system(tmpl, format, &b);
        }
        if (b.len > 0) {
            tri_gbuf_str(&b, "\n\n");
        }
        tri_gbuf_str(&b, k_hermes_head);
        tri_js_iter it = tri_js_iter_of(t->tools);
        tri_js      tool;
        while (tri_js_next(&it, NULL, &tool)) {
            tri_gbuf_str(&b, "\n");
            tri_js_dump(&b, tool, 0);
        }
        tri_gbuf_str(&b, k_hermes_tail);
        conv_add(c, "system", &b);
    } else if (first) {
        tri_gbuf_str(&b, m[0].content ? m[0].content : "");
        conv_add(c, "system", &b);
    }
    bool tools_put = !(show && t->syntax == TRI_TOOLS_LLAMA3);
    for (size_t i = first; i < n; i++) {
        const char * role    = m[i].role;
        const char * content = m[i].content ? m[i].content : "";
        if (strcmp(role, "tool") == 0) {
            if (t->syntax == TRI_TOOLS_LLAMA3) {
                llama3_marker(&b, i);
                conv_add(c, "user", &b);
                continue;
            }
            /* consecutive results share one user turn */
            size_t k = i;
            for (; k < n && strcmp(m[k].role, "tool") == 0; k++) {
                tri_gbuf_str(&b, k > i ? "\n<tool_response>\n" : "<tool_response>\n");
                tri_gbuf_str(&b, m[k].content ? m[k].content : "");
                tri_gbuf_str(&b, "\n</tool_response>");
            }
            i = k - 1;
            conv_add(c, "user", &b);
            continue;
        }
        if (strcmp(role, "user") != 0 && strcmp(role, "assistant") != 0 && strcmp(role, "system") != 0) {
            tri_gbuf_free(&b);
            return tri_fail(err, err_size, TRIATTN_ERR_INVALID_ARG, "chat: message %zu has unknown role '%.64s' "
                            "(expected system, user, assistant or tool)", i, role);
        }
        if (!tools_put && strcmp(role, "user") == 0) {
            /* Llama 3 puts the functions in the first user message */
            tri_gbuf_str(&b, k_llama3_head);
            tri_js_iter it = tri_js_iter_of(t->tools);
            tri_js      tool;
            while (tri_js_next(&it, NULL, &tool)) {
                tri_js_dump(&b, tool, 4);
                tri_gbuf_str(&b, "\n\n");
            }
            tools_put = true;
        }
        tri_gbuf_str(&b, content);
        if (strcmp(role, "assistant") == 0 && m[i].tool_calls && *m[i].tool_calls &&
            !put_calls(&b, t->syntax, m[i].tool_calls, *content != '\0')) {
            tri_gbuf_free(&b);
            return tri_fail(err, err_size, TRIATTN_ERR_INVALID_ARG, "chat: message %zu: tool_calls must be an array "
                            "of {\"function\": {\"name\": ..., \"arguments\": ...}}", i);
        }
        conv_add(c, role, &b);
    }
    *oom = c->oom;
    return TRIATTN_OK;
}

/* Llama 3 post-pass: tool-result markers become ipython turns, and a system header announces the tools. */
static void llama3_splice(const tri_gbuf * in, tri_msg_tools m, size_t n, bool show, tri_gbuf * out) {
    static const char user_head[] = "<|start_header_id|>user<|end_header_id|>\n\n";
    static const char sys_date[]  = "<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date:";
    const char * p = in->p ? in->p : "";
    const char * e = p + in->len;
    const char * s = show ? strstr(p, sys_date) : NULL;
    if (s) {
        const size_t head = sizeof sys_date - 1 - strlen("Cutting Knowledge Date:");
        tri_gbuf_put(out, p, (size_t) (s - p) + head);
        tri_gbuf_str(out, "Environment: ipython\n");
        p = s + head;
    }
    while (p < e) {
        const char * u = strstr(p, user_head);
        const char * x = u ? u + sizeof user_head - 1 : NULL;
        if (!u || *x != '\x02') {
            const char * stop = u ? x : e;
            tri_gbuf_put(out, p, (size_t) (stop - p));
            p = stop;
            continue;
        }
        tri_gbuf_put(out, p, (size_t) (u - p));
        size_t i = (size_t) strtoull(x + strlen("\x02tool-result-"), NULL, 10);
        tri_gbuf_str(out, k_llama3_ipython);
        const char * content = i < n && m[i].content ? m[i].content : "";
        tri_gbuf_json_str(out, content, strlen(content));  /* the template writes content | tojson */
        const char * end = strchr(x, '\x03');
        p = end ? end + 1 : e;
    }
}

enum triattn_status tri_chat_apply_tools(const char * tmpl, const char * format, const char * bos_text,
                                         const struct triattn_chat_tool_message * messages, size_t n_messages,
                                         const struct triattn_tool_options * opts, bool add_assistant, char * buf,
                                         size_t capacity, size_t * n_out, char * err, size_t err_size) {
    enum triattn_status begin_st = tri_chat_begin(buf, capacity, n_out, messages, n_messages, err, err_size);
    if (begin_st != TRIATTN_OK) {
        return begin_st;
    }
    for (size_t i = 0; i < n_messages; i++) {
        if (!messages[i].role) {
            return tri_fail(err, err_size, TRIATTN_ERR_INVALID_ARG, "chat: message %zu has a NULL role", i);
        }
    }
    struct tri_tools t;
    enum triattn_status st = tri_tools_init(&t, opts, tmpl, format, err, err_size);
    if (st != TRIATTN_OK) {
        return st;
    }
    struct plain_conv c = { calloc(n_messages + 1, sizeof *c.m), calloc(n_messages + 1, sizeof *c.owned), 0, false };
    bool     oom = !c.m || !c.owned;
    tri_gbuf r = { 0 }, spliced = { 0 };
    if (!oom) {
        st = build_conv(&t, tmpl, format, messages, n_messages, &c, &oom, err, err_size);
    }
    size_t need = 0;
    if (st == TRIATTN_OK && !oom) {
        st = tri_chat_apply(tmpl, format, bos_text, c.m, c.n, add_assistant, NULL, 0, &need, err, err_size);
    }
    if (st == TRIATTN_OK && !oom) {
        r.p   = malloc(need + 1);
        r.cap = need + 1;
        oom   = !r.p;
        if (!oom) {
            st    = tri_chat_apply(tmpl, format, bos_text, c.m, c.n, add_assistant, r.p, need + 1, &need, err,
                                   err_size);
            r.len = need;
        }
    }
    const tri_gbuf * res = &r;
    if (st == TRIATTN_OK && !oom && t.syntax == TRI_TOOLS_LLAMA3) {
        llama3_splice(&r, messages, n_messages, t.choice != TRI_TOOL_NONE && t.n_tools > 0, &spliced);
        res = &spliced;
    }
    tri_strbuf o = { buf, buf ? capacity : 0, 0 };
    if (st == TRIATTN_OK && !oom) {
        tri_strbuf_put(&o, res->p ? res->p : "", res->len);
        if (add_assistant && tri_tools_forced(&t) && t.syntax != TRI_TOOLS_LLAMA3) {
            tri_strbuf_put(&o, k_forced_prefix, sizeof k_forced_prefix - 1);
        }
        oom = res->oom;
    }
    conv_free(&c);
    tri_gbuf_free(&r);
    tri_gbuf_free(&spliced);
    if (st == TRIATTN_OK && oom) {
        st = tri_fail(err, err_size, TRIATTN_ERR_OOM, "chat: out of memory rendering tools");
    }
    return tri_strbuf_end(&o, st, n_out);
}

/* ---- forced calls --------------------------------------------------------------------------------- */

/* True when constrained sampling can hold arguments to this parameters schema. */
static bool grammar_can_enforce(tri_js params) {
    tri_schema * s = NULL;
    const bool ok = tri_schema_compile(params.p, params.n, &s, NULL, 0) == TRIATTN_OK;
    tri_schema_free(s);
    return ok;
}

enum triattn_status tri_tool_call_schema(const char * tmpl, const char * format,
                                         const struct triattn_tool_options * opts, char * buf, size_t capacity,
                                         size_t * n_out, char * err, size_t err_size) {
    if (n_out) {
        *n_out = 0;
    }
    if (capacity > 0 && buf) {
        buf[0] = '\0';
    }
    if (!buf && capacity > 0) {
        return tri_fail(err, err_size, TRIATTN_ERR_INVALID_ARG, "tools: NULL buf");
    }
    struct tri_tools t;
    enum triattn_status st = tri_tools_init(&t, opts, tmpl, format, err, err_size);
    if (st != TRIATTN_OK || !tri_tools_forced(&t)) {
        return st;
    }
    /* one call object per allowed tool; several tools make a union told apart by the name */
    size_t first = 0, count = t.n_tools;
    if (t.choice == TRI_TOOL_NAMED) {
        first = (size_t) tool_index(&t, t.named);
        count = 1;
    }
    tri_gbuf b = { 0 };
    if (count > 1) {
        tri_gbuf_str(&b, "{\"anyOf\":[");
    }
    for (size_t i = first; i < first + count; i++) {
        const tri_js name = tool_name(&t, i);
        bool repeated = false; /* a name declared twice calls the first declaration, as tool_index does */
        for (size_t j = first; j < i && !repeated; j++) {
            const tri_js other = tool_name(&t, j);
            repeated = other.n == name.n && memcmp(other.p, name.p, name.n) == 0;
        }
        if (repeated) {
            continue;
        }
        tri_js params = tool_params(&t, i);
        if (!grammar_can_enforce(params)) {
            params = (tri_js){ "{\"type\":\"object\"}", 17 }; /* the parser still checks the arguments */
        }
        tri_gbuf_str(&b, i > first ? ",{" : "{");
        tri_gbuf_str(&b, "\"type\":\"object\",\"properties\":{\"name\":{\"type\":\"string\",\"enum\":[");
        tri_gbuf_put(&b, name.p, name.n);
        tri_gbuf_str(&b, t.syntax == TRI_TOOLS_LLAMA3 ? "]},\"parameters\":" : "]},\"arguments\":");
        tri_gbuf_put(&b, params.p, params.n);
        tri_gbuf_str(&b, t.syntax == TRI_TOOLS_LLAMA3 ? "},\"required\":[\"name\",\"parameters\"]}"
                                                      : "},\"required\":[\"name\",\"arguments\"]}");
    }
    if (count > 1) {
        tri_gbuf_str(&b, "]}");
    }
    if (b.oom) {
        tri_gbuf_free(&b);
        return tri_fail(err, err_size, TRIATTN_ERR_OOM, "tools: out of memory");
    }
    tri_strbuf o = { buf, buf ? capacity : 0, 0 };
    tri_strbuf_put(&o, b.p, b.len);
    tri_gbuf_free(&b);
    return tri_strbuf_end(&o, TRIATTN_OK, n_out);
}

/* ---- public wrappers ------------------------------------------------------------------------------ */

static const char * bos_text_of(const triattn_model * m) {
    const triattn_token bos = tri_vocab_bos(m->vocab);
    return bos >= 0 ? tri_vocab_token_text(m->vocab, bos) : NULL;
}

enum triattn_status triattn_chat_apply_tools(const triattn_model * model, const char * format,
                                             const struct triattn_chat_tool_message * messages, size_t n_messages,
                                             const struct triattn_tool_options * opts, bool add_assistant, char * buf,
                                             size_t capacity, size_t * n_out, char * err, size_t err_size) {
    if (!model || !n_out) {
        return tri_fail(err, err_size, TRIATTN_ERR_INVALID_ARG, "chat: NULL %s", model ? "n_out" : "model");
    }
    return tri_chat_apply_tools(model->chat_template, format, bos_text_of(model), messages, n_messages, opts,
                                add_assistant, buf, capacity, n_out, err, err_size);
}

enum triattn_status triattn_tool_call_schema(const triattn_model * model, const char * format,
                                             const struct triattn_tool_options * opts, char * buf, size_t capacity,
                                             size_t * n_out, char * err, size_t err_size) {
    if (!model || !n_out) {
        return tri_fail(err, err_size, TRIATTN_ERR_INVALID_ARG, "tools: NULL %s", model ? "n_out" : "model");
    }
    return tri_tool_call_schema(model->chat_template, format, opts, buf, capacity, n_out, err, err_size);
}

enum triattn_status triattn_tool_parser_create(const triattn_model * model, const char * format,
                                               const struct triattn_tool_options * opts, triattn_tool_parser ** out,
                                               char * err, size_t err_size) {
    if (!model) {
        return tri_fail(err, err_size, TRIATTN_ERR_INVALID_ARG, "tools: NULL model");
    }
    return tri_tool_parser_create(model->chat_template, format, opts, out, err, err_size);
}
