/* api_tools.c - tool calling on /v1/chat/completions: the request's tools and tool turns go to the library's
 * renderer (triattn_chat_apply_tools), a forced call gets its JSON Schema, and the reply is parsed back into
 * OpenAI tool_calls by triattn_tool_parser. */
#if defined(_WIN32)
#  define _CRT_RAND_S /* rand_s */
#else
#  define _GNU_SOURCE
#endif
#include "api_tools.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#if !defined(_WIN32)
#  include <sys/random.h>
#endif

bool tool_err_set(struct tool_err * e, int status, const char * param, const char * fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    va_end(ap);
    e->param  = param;
    e->status = status;
    return false;
}

/* v as compact JSON text (malloc'd), or NULL when memory runs out. */
static char * to_text(const json_value * v) {
    jbuf b;
    jb_init(&b);
    jb_value(&b, v);
    if (b.oom || !b.data) {
        jb_free(&b);
        return NULL;
    }
    return b.data;
}

/* 64 bits from the system's random source; false when it has none ready. */
#if defined(_WIN32)
static bool os_random64(uint64_t * s) {
    unsigned int a, b;
    if (rand_s(&a) != 0 || rand_s(&b) != 0) return false;
    *s = (uint64_t) a << 32 | b;
    return true;
}
#else
static bool os_random64(uint64_t * s) {
    return getrandom(s, sizeof *s, GRND_NONBLOCK) == (ssize_t) sizeof *s;
}
#endif

static uint64_t random_seed(void) {
    uint64_t s = 0;
    if (!os_random64(&s)) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        s = (uint64_t) ts.tv_sec * 1000000007u ^ (uint64_t) ts.tv_nsec ^ (uint64_t) (uintptr_t) &ts;
    }
    return s;
}

bool api_tools_parse(const json_value * body, bool strict, struct tool_req * t, struct tool_err * e) {
    memset(t, 0, sizeof *t);
    triattn_tool_options_init(&t->opts);
    t->opts.id_seed = random_seed();
    t->opts.strict_tool_calls = strict;
    const json_value * tools = json_get(body, "tools"), * choice = json_get(body, "tool_choice");
    const json_value * par = json_get(body, "parallel_tool_calls");
    if (tools && tools->type != JSON_NULL) {
        if (tools->type != JSON_ARRAY) return tool_err_set(e, 400, "tools", "'tools' must be an array of function tools");
        if (!(t->tools = to_text(tools))) return tool_err_set(e, 500, NULL, "out of memory");
    }
    if (choice && choice->type != JSON_NULL) {
        if (choice->type != JSON_STRING && choice->type != JSON_OBJECT)
            return tool_err_set(e, 400, "tool_choice", "'tool_choice' must be \"auto\", \"none\", \"required\" or "
                        "{\"type\": \"function\", \"function\": {\"name\": ...}}");
        if (!(t->choice = to_text(choice))) return tool_err_set(e, 500, NULL, "out of memory");
    }
    if (par && par->type != JSON_NULL) {
        if (par->type != JSON_BOOL) return tool_err_set(e, 400, "parallel_tool_calls", "'parallel_tool_calls' must be a boolean");
        t->opts.parallel_tool_calls = par->b;
    }
    t->opts.tools = t->tools;
    t->opts.tool_choice = t->choice;
    return true;
}

/* The text of a message's content: a string, null, or OpenAI content parts ({"type": "text", "text": ...}). */
static bool content_text(const json_value * content, size_t k, char ** owned, const char ** out, struct tool_err * e) {
    if (content && content->type == JSON_STRING) { *out = content->str; return true; }
    if (!content || content->type == JSON_NULL) { *out = ""; return true; }
    if (content->type != JSON_ARRAY)
        return tool_err_set(e, 400, "messages", "messages[%zu].content must be a string or an array of parts", k);
    jbuf t;
    jb_init(&t);
    for (size_t j = 0; j < content->n; j++) {
        const json_value * txt = json_get(&content->items[j], "text");
        if (!txt || txt->type != JSON_STRING) {
            jb_free(&t);
            return tool_err_set(e, 400, "messages", "messages[%zu].content parts must have a string 'text'", k);
        }
        jb_raw(&t, txt->str, txt->len);
    }
    if (t.oom) { jb_free(&t); return tool_err_set(e, 500, NULL, "out of memory"); }
    *owned = t.data ? t.data : strdup("");
    *out = *owned;
    return *owned != NULL || tool_err_set(e, 500, NULL, "out of memory");
}

bool api_tools_prompt(const triattn_model * model, const char * chat_format, const json_value * body,
                      struct tool_req * t, char ** prompt, struct tool_err * e) {
    const json_value * msgs = json_get(body, "messages");
    if (!msgs || msgs->type != JSON_ARRAY || msgs->n == 0)
        return tool_err_set(e, 400, "messages", "'messages' must be a non-empty array");
    struct triattn_chat_tool_message * cm = calloc(msgs->n, sizeof *cm);
    char ** owned = calloc(2 * msgs->n, sizeof *owned);   /* content and tool_calls text per message */
    bool ok = cm && owned;
    if (!ok) tool_err_set(e, 500, NULL, "out of memory");
    for (size_t k = 0; ok && k < msgs->n; k++) {
        const json_value * m = &msgs->items[k];
        const json_value * role = json_get(m, "role"), * calls = json_get(m, "tool_calls");
        const json_value * id = json_get(m, "tool_call_id"), * name = json_get(m, "name");
        if (!role || role->type != JSON_STRING) { ok = tool_err_set(e, 400, "messages", "messages[%zu].role must be a string", k); break; }
        cm[k].role = role->str;
        if (!(ok = content_text(json_get(m, "content"), k, &owned[2 * k], &cm[k].content, e))) break;
        if (calls && calls->type != JSON_NULL) {
            if (calls->type != JSON_ARRAY) { ok = tool_err_set(e, 400, "messages", "messages[%zu].tool_calls must be an array", k); break; }
            if (!(owned[2 * k + 1] = to_text(calls))) { ok = tool_err_set(e, 500, NULL, "out of memory"); break; }
            cm[k].tool_calls = owned[2 * k + 1];
        }
        if (id && id->type == JSON_STRING) cm[k].tool_call_id = id->str;
        if (name && name->type == JSON_STRING) cm[k].name = name->str;
    }
    char err[400] = "";
    char * buf = NULL;
    size_t need = 0, cap = 4096;
    for (int attempt = 0; ok && attempt < 2; attempt++) {
        free(buf);
        if (!(buf = malloc(cap))) { ok = tool_err_set(e, 500, NULL, "out of memory"); break; }
        enum triattn_status st = triattn_chat_apply_tools(model, chat_format, cm, msgs->n, &t->opts, true, buf, cap,
                                                          &need, err, sizeof err);
        if (st == TRIATTN_ERR_OOM) { ok = tool_err_set(e, 500, NULL, "out of memory"); break; }
        if (st != TRIATTN_OK) {
            const char * param = strstr(err, "tool_choice") ? "tool_choice" : strncmp(err, "tools:", 6) == 0 ? "tools" : "messages";
            ok = tool_err_set(e, 400, param, "cannot format the messages: %s", err);
            break;
        }
        if (need < cap) break;
        cap = need + 1;
    }
    if (ok) *prompt = buf; else free(buf);
    for (size_t k = 0; owned && k < 2 * msgs->n; k++) free(owned[k]);
    free(owned);
    free(cm);
    return ok;
}

bool api_tools_constrain(const triattn_model * model, const char * chat_format, struct tool_req * t,
                         struct triattn_generate_params * gp, struct tool_err * e) {
    char err[400] = "";
    size_t n = 0;
    enum triattn_status st = triattn_tool_call_schema(model, chat_format, &t->opts, NULL, 0, &n, err, sizeof err);
    if (st != TRIATTN_OK) return tool_err_set(e, 400, "tool_choice", "%s", err);
    if (n == 0) return true;
    if (!(t->schema = malloc(n + 1))) return tool_err_set(e, 500, NULL, "out of memory");
    st = triattn_tool_call_schema(model, chat_format, &t->opts, t->schema, n + 1, &n, err, sizeof err);
    if (st != TRIATTN_OK) return tool_err_set(e, 500, NULL, "%s", err);
    /* a function's parameters may use keywords constrained sampling does not enforce: a 400 naming them */
    st = triattn_json_schema_check(t->schema, err, sizeof err);
    if (st != TRIATTN_OK) return tool_err_set(e, st == TRIATTN_ERR_OOM ? 500 : 400, "tools", "the forced call's %s", err);
    gp->json_schema = t->schema;
    return true;
}

bool api_tools_parser(const triattn_model * model, const char * chat_format, struct tool_req * t,
                      struct tool_err * e) {
    if (!t->tools) return true;   /* no tools: the reply is plain content */
    char err[400] = "";
    enum triattn_status st = triattn_tool_parser_create(model, chat_format, &t->opts, &t->parser, err, sizeof err);
    if (st != TRIATTN_OK) return tool_err_set(e, st == TRIATTN_ERR_OOM ? 500 : 400, "tools", "%s", err);
    return true;
}

void api_tools_free(struct tool_req * t) {
    triattn_tool_parser_free(t->parser);
    free(t->tools);
    free(t->choice);
    free(t->schema);
    memset(t, 0, sizeof *t);
}
