/* Tool calls at the C level: the JSON scanner on random documents and every truncation of them, re-spacing,
 * prompt rendering per syntax, forced-call schemas, request errors, and the output parser on random (often
 * malformed) text fed in random pieces: content must come back byte for byte when no call is recognised, the
 * deltas must not depend on how the text was split, and valid calls must round-trip. */
#define _POSIX_C_SOURCE 200809L
#include "chat_tools.h"

#include "chat.h"
#include "common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TU_FAIL_PRINT_LIMIT 20
#include "test_util.h"

static const char k_chatml[] = "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' }}";
static const char k_llama3[] = "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}";

/* ---- random JSON ---------------------------------------------------------------------------------- */

static void rand_ws(tri_gbuf * b) {
    static const char * ws[] = { "", "", " ", "\n", "\t ", "\r\n" };
    tri_gbuf_str(b, ws[tu_below(6)]);
}

static void rand_string(tri_gbuf * b) {
    static const char * parts[] = { "a", "Z9", "\\n", "\\\"", "\\u00e9", "\\ud83d\\ude00", "é", "中", " ", "\\\\", "/" };
    tri_gbuf_str(b, "\"");
    for (int i = (int) tu_below(5); i > 0; i--) {
        tri_gbuf_str(b, parts[tu_below(11)]);
    }
    tri_gbuf_str(b, "\"");
}

static void rand_json(tri_gbuf * b, int depth) {
    int kind = (int) tu_below(depth > 3 ? 4 : 6);
    static const char * nums[] = { "0", "-1", "3.25", "1e9", "-0.5E-3", "42" };
    static const char * lits[] = { "true", "false", "null" };
    switch (kind) {
        case 0: rand_string(b); break;
        case 1: tri_gbuf_str(b, nums[tu_below(6)]); break;
        case 2: tri_gbuf_str(b, lits[tu_below(3)]); break;
        case 3: rand_string(b); break;
        default: {
            bool obj = kind == 4;
            tri_gbuf_str(b, obj ? "{" : "[");
            for (int i = 0, n = (int) tu_below(4); i < n; i++) {
                if (i) tri_gbuf_str(b, ",");
                rand_ws(b);
                if (obj) {
                    rand_string(b);
                    rand_ws(b);
                    tri_gbuf_str(b, ":");
                    rand_ws(b);
                }
                rand_json(b, depth + 1);
                rand_ws(b);
            }
            tri_gbuf_str(b, obj ? "}" : "]");
        }
    }
}

/* The text without whitespace outside strings. */
static void squeeze(const char * s, size_t n, tri_gbuf * out) {
    bool in = false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (in && c == '\\') {
            tri_gbuf_put(out, s + i, 2);
            i++;
            continue;
        }
        if (c == '"') in = !in;
        if (!in && (c == ' ' || c == '\n' || c == '\t' || c == '\r')) continue;
        tri_gbuf_put(out, &c, 1);
    }
}

static void test_json_scanner(void) {
    for (int it = 0; it < 300; it++) {
        tri_gbuf b = { 0 };
        tri_gbuf_str(&b, tu_below(2) ? "{" : "[");
        bool obj = b.p[0] == '{';
        tri_gbuf_str(&b, "");
        for (int i = 0, n = 1 + (int) tu_below(4); i < n; i++) {
            if (i) tri_gbuf_str(&b, ",");
            if (obj) {
                rand_string(&b);
                tri_gbuf_str(&b, ":");
            }
            rand_json(&b, 1);
        }
        tri_gbuf_str(&b, obj ? "}" : "]");
        tri_js v;
        CHECK(tri_js_parse((tri_js){ b.p, b.len }, &v) && v.n == b.len, "valid document rejected: %s", b.p);
        /* a proper prefix of an object or array is never a document */
        for (size_t k = 0; k < b.len; k++) {
            CHECK(!tri_js_parse((tri_js){ b.p, k }, &v), "prefix %zu of %s accepted", k, b.p);
        }
        /* a flipped structural byte breaks it */
        tri_gbuf bad = { 0 };
        tri_gbuf_put(&bad, b.p, b.len);
        bad.p[bad.len - 1] = obj ? ']' : '}';
        CHECK(!tri_js_parse((tri_js){ bad.p, bad.len }, &v), "mismatched close accepted: %s", bad.p);
        /* re-spacing keeps the tokens and stays valid, with or without indentation */
        for (int indent = 0; indent <= 4; indent += 4) {
            tri_gbuf d = { 0 }, s1 = { 0 }, s2 = { 0 };
            tri_js_dump(&d, (tri_js){ b.p, b.len }, indent);
            squeeze(b.p, b.len, &s1);
            squeeze(d.p, d.len, &s2);
            CHECK(tri_js_parse((tri_js){ d.p, d.len }, &v), "dump is not JSON: %s", d.p);
            CHECK(s1.len == s2.len && memcmp(s1.p, s2.p, s1.len) == 0, "dump changed tokens: %s -> %s", b.p, d.p);
            tri_gbuf_free(&d);
            tri_gbuf_free(&s1);
            tri_gbuf_free(&s2);
        }
        tri_gbuf_free(&bad);
        tri_gbuf_free(&b);
    }
    static const char * invalid[] = { "", "{", "{\"a\"}", "{\"a\":}", "[1,]", "[01]", "\"\\x\"", "\"a", "tru",
                                      "[1 2]", "{\"a\":1,}", "-", "1.", "\"\x01\"", "\"\xC3\"", "[\"\xED\xA0\x80\"]" };
    for (size_t i = 0; i < sizeof invalid / sizeof invalid[0]; i++) {
        tri_js v;
        CHECK(!tri_js_parse((tri_js){ invalid[i], strlen(invalid[i]) }, &v), "accepted invalid %s", invalid[i]);
    }
    tri_gbuf u = { 0 };
    const char * esc = "\"a\\u00e9\\ud83d\\ude00\\n\\\\\"";
    tri_js_unescape((tri_js){ esc, strlen(esc) }, &u);
    CHECK(u.len == strlen("a\xC3\xA9\xF0\x9F\x98\x80\n\\") && memcmp(u.p, "a\xC3\xA9\xF0\x9F\x98\x80\n\\", u.len) == 0,
          "unescape: %s", u.p);
    tri_gbuf_free(&u);
}

/* ---- rendering ------------------------------------------------------------------------------------ */

static const char k_tools[] =
    "[{\"type\":\"function\",\"function\":{\"name\":\"calc\",\"description\":\"Evaluate\",\"parameters\":{\"type\":"
    "\"object\",\"properties\":{\"expr\":{\"type\":\"string\"}},\"required\":[\"expr\"]}}},"
    "{\"type\":\"function\",\"function\":{\"name\":\"clock\"}}]";

static char * render(const char * tmpl, const char * fmt, const struct triattn_chat_tool_message * m, size_t n,
                     const char * choice, enum triattn_status * st, char * err) {
    struct triattn_tool_options o;
    triattn_tool_options_init(&o);
    o.tools       = k_tools;
    o.tool_choice = choice;
    size_t need = 0;
    *st = tri_chat_apply_tools(tmpl, fmt, "<BOS>", m, n, &o, true, NULL, 0, &need, err, 256);
    if (*st != TRIATTN_OK) return NULL;
    char * buf = malloc(need + 1);
    size_t got = 0;
    *st = tri_chat_apply_tools(tmpl, fmt, "<BOS>", m, n, &o, true, buf, need + 1, &got, err, 256);
    CHECK(got == need, "length changed: %zu vs %zu", got, need);
    return buf;
}

static void test_render(void) {
    const char * calls = "[{\"id\":\"call_1\",\"type\":\"function\",\"function\":{\"name\":\"calc\","
                         "\"arguments\":\"{\\\"expr\\\":\\\"2+2\\\"}\"}}]";
    struct triattn_chat_tool_message m[] = {
        { "system", "Be brief.", NULL, NULL, NULL },
        { "user", "2+2?", NULL, NULL, NULL },
        { "assistant", NULL, calls, NULL, NULL },
        { "tool", "4", NULL, "call_1", "calc" },
        { "tool", "5", NULL, "call_2", "calc" },
    };
    enum triattn_status st;
    char err[256] = "";
    char * s = render(k_chatml, NULL, m, 5, NULL, &st, err);
    CHECK(st == TRIATTN_OK && s, "chatml render: %s", err);
    if (s) {
        CHECK(strstr(s, "<|im_start|>system\nBe brief.\n\n# Tools\n") != NULL, "system + tools: %s", s);
        CHECK(strstr(s, "<tools>\n{\"type\": \"function\", \"function\": {\"name\": \"calc\", \"description\": "
                        "\"Evaluate\"") != NULL, "tools as tojson: %s", s);
        CHECK(strstr(s, "<|im_start|>assistant\n<tool_call>\n{\"name\": \"calc\", \"arguments\": {\"expr\": \"2+2\"}}"
                        "\n</tool_call><|im_end|>\n") != NULL, "assistant call: %s", s);
        CHECK(strstr(s, "<|im_start|>user\n<tool_response>\n4\n</tool_response>\n<tool_response>\n5\n"
                        "</tool_response><|im_end|>\n<|im_start|>assistant\n") != NULL, "merged results: %s", s);
        size_t n = strlen(s);
        CHECK(n > 23 && strcmp(s + n - 22, "<|im_start|>assistant\n") == 0, "generation prompt: %s", s + n - 30);
    }
    free(s);
    s = render(k_chatml, NULL, m, 5, "\"none\"", &st, err);
    CHECK(s && !strstr(s, "<tools>") && strstr(s, "<tool_response>"), "none hides tools only: %s", s ? s : err);
    free(s);
    s = render(k_chatml, NULL, m, 5, "{\"type\":\"function\",\"function\":{\"name\":\"clock\"}}", &st, err);
    CHECK(s && strlen(s) > 12 && strcmp(s + strlen(s) - 12, "<tool_call>\n") == 0, "forced prefix: %s", s ? s : err);
    free(s);
    s = render(k_llama3, NULL, m, 5, NULL, &st, err);
    CHECK(st == TRIATTN_OK && s, "llama3 render: %s", err);
    if (s) {
        CHECK(strstr(s, "<|start_header_id|>user<|end_header_id|>\n\nGiven the following functions") != NULL,
              "llama3 tools in the first user turn: %s", s);
        CHECK(strstr(s, "{\n    \"type\": \"function\",\n    \"function\": {\n        \"name\": \"calc\"") != NULL,
              "llama3 tools indented: %s", s);
        CHECK(strstr(s, "<|start_header_id|>assistant<|end_header_id|>\n\n{\"name\": \"calc\", \"parameters\": "
                        "{\"expr\": \"2+2\"}}<|eot_id|>") != NULL, "llama3 call: %s", s);
        CHECK(strstr(s, "<|start_header_id|>ipython<|end_header_id|>\n\n\"4\"<|eot_id|><|start_header_id|>ipython"
                        "<|end_header_id|>\n\n\"5\"<|eot_id|>") != NULL, "llama3 ipython turns: %s", s);
        CHECK(!strchr(s, '\x02') && !strchr(s, '\x03'), "llama3 markers left: %s", s);
    }
    free(s);
    s = render(NULL, "mistral", m + 1, 4, NULL, &st, err);
    CHECK(st == TRIATTN_OK && s && strstr(s, "[INST] # Tools") && strstr(s, "[INST] <tool_response>\n4"),
          "generic fallback: %s", s ? s : err);
    free(s);

    /* request errors */
    static const struct { const char * tools, * choice, * want; } bad[] = {
        { "{", NULL, "JSON array" }, { "[{\"type\":\"function\"}]", NULL, "'function' object" },
        { "[{\"function\":{\"name\":\"\"}}]", NULL, "non-empty" }, { "[1]", NULL, "tools[0]" },
        { k_tools, "\"sometimes\"", "tool_choice" }, { k_tools, "{\"type\":\"function\",\"function\":{\"name\":\"x\"}}",
                                                        "not in 'tools'" },
        { NULL, "\"required\"", "non-empty 'tools'" },
        { "[{\"function\":{\"name\":\"a\",\"parameters\":[]}}]", NULL, "parameters" },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct triattn_tool_options o;
        triattn_tool_options_init(&o);
        o.tools       = bad[i].tools;
        o.tool_choice = bad[i].choice;
        size_t need = 0;
        err[0]      = '\0';
        st = tri_chat_apply_tools(k_chatml, NULL, NULL, m + 1, 1, &o, true, NULL, 0, &need, err, sizeof err);
        CHECK(st == TRIATTN_ERR_INVALID_ARG && strstr(err, bad[i].want), "case %zu: %d %s", i, st, err);
    }
    struct triattn_chat_tool_message odd = { "robot", "x", NULL, NULL, NULL };
    size_t need = 0;
    st = tri_chat_apply_tools(k_chatml, NULL, NULL, &odd, 1, NULL, true, NULL, 0, &need, err, sizeof err);
    CHECK(st == TRIATTN_ERR_INVALID_ARG && strstr(err, "robot"), "unknown role: %s", err);
    struct triattn_chat_tool_message badcalls = { "assistant", "", "{\"not\":\"an array\"}", NULL, NULL };
    st = tri_chat_apply_tools(k_chatml, NULL, NULL, &badcalls, 1, NULL, true, NULL, 0, &need, err, sizeof err);
    CHECK(st == TRIATTN_ERR_INVALID_ARG && strstr(err, "tool_calls"), "bad tool_calls: %s", err);

    /* without tools the output is the plain renderer's */
    struct triattn_chat_message plain[] = { { "system", "S" }, { "user", "U" }, { "assistant", "A" } };
    char a[512], b2[512];
    size_t na = 0, nb = 0;
    tri_chat_apply(k_chatml, NULL, NULL, plain, 3, true, a, sizeof a, &na, err, sizeof err);
    st = tri_chat_apply_tools(k_chatml, NULL, NULL, m, 0, NULL, true, b2, sizeof b2, &nb, err, sizeof err);
    struct triattn_chat_tool_message pm[] = { { "system", "S", 0, 0, 0 }, { "user", "U", 0, 0, 0 },
                                              { "assistant", "A", 0, 0, 0 } };
    st = tri_chat_apply_tools(k_chatml, NULL, NULL, pm, 3, NULL, true, b2, sizeof b2, &nb, err, sizeof err);
    CHECK(st == TRIATTN_OK && na == nb && strcmp(a, b2) == 0, "no tools: %s vs %s", a, b2);
    /* truncation contract */
    st = tri_chat_apply_tools(k_chatml, NULL, NULL, pm, 3, NULL, true, b2, 5, &nb, err, sizeof err);
    CHECK(st == TRIATTN_OK && nb == na && strlen(b2) == 4, "truncated output: %zu %s", nb, b2);
}

static void test_schema(void) {
    struct triattn_tool_options o;
    triattn_tool_options_init(&o);
    o.tools = k_tools;
    char   buf[1024], err[256];
    size_t n = 7;
    CHECK(tri_tool_call_schema(k_chatml, NULL, &o, buf, sizeof buf, &n, err, sizeof err) == TRIATTN_OK && n == 0,
          "auto forces nothing: %zu", n);
    o.tool_choice = "{\"type\":\"function\",\"function\":{\"name\":\"calc\"}}";
    tri_tool_call_schema(k_chatml, NULL, &o, buf, sizeof buf, &n, err, sizeof err);
    tri_js v, props, name, args;
    CHECK(tri_js_parse((tri_js){ buf, n }, &v) && tri_js_get(v, "properties", &props) &&
          tri_js_get(props, "name", &name) && tri_js_get(props, "arguments", &args), "named schema: %s", buf);
    CHECK(strstr(buf, "\"enum\":[\"calc\"]") && strstr(buf, "\"required\":[\"expr\"]"), "named schema: %s", buf);
    o.tool_choice = "\"required\"";
    tri_tool_call_schema(k_llama3, NULL, &o, buf, sizeof buf, &n, err, sizeof err);
    CHECK(tri_js_parse((tri_js){ buf, n }, &v) && strstr(buf, "\"enum\":[\"calc\",\"clock\"]") &&
          strstr(buf, "\"parameters\":{\"type\":\"object\"}"), "required schema (llama3): %s", buf);
}

/* ---- output parser -------------------------------------------------------------------------------- */

struct parsed {
    tri_gbuf content;
    tri_gbuf deltas;   /* every delta, concatenated */
    int      n_calls;
    tri_gbuf message;
};

static void parse_all(const char * tmpl, const struct triattn_tool_options * o, const char * text, size_t len,
                      bool random_split, struct parsed * out) {
    memset(out, 0, sizeof *out);
    triattn_tool_parser * p = NULL;
    char err[256];
    if (tri_tool_parser_create(tmpl, NULL, o, &p, err, sizeof err) != TRIATTN_OK) {
        CHECK(false, "parser: %s", err);
        return;
    }
    size_t at = 0;
    while (true) {
        size_t       r = (size_t) tu_below(7);  /* drawn once: TRI_MIN evaluates its arguments twice */
        size_t       k = random_split ? TRI_MIN(len - at, r) : len - at;
        bool         fin = at + k == len && (!random_split || tu_below(2));
        const char * d;
        size_t       dn;
        CHECK(triattn_tool_parser_feed(p, text + at, k, fin, &d, &dn) == TRIATTN_OK, "feed");
        tri_js arr;
        CHECK(tri_js_parse((tri_js){ d, dn }, &arr) && arr.p[0] == '[', "deltas are not a JSON array: %s", d);
        tri_js_iter it = tri_js_iter_of(arr);
        tri_js      delta, c;
        while (tri_js_next(&it, NULL, &delta)) {
            tri_gbuf_put(&out->deltas, delta.p, delta.n);
            if (tri_js_get(delta, "content", &c)) tri_js_unescape(c, &out->content);
        }
        at += k;
        if (fin) break;
    }
    out->n_calls = triattn_tool_parser_n_calls(p);
    size_t       ml;
    const char * m = triattn_tool_parser_message(p, &ml);
    tri_gbuf_put(&out->message, m, ml);
    triattn_tool_parser_free(p);
}

static void parsed_free(struct parsed * p) {
    tri_gbuf_free(&p->content);
    tri_gbuf_free(&p->deltas);
    tri_gbuf_free(&p->message);
}

static void test_parser_random(void) {
    static const char * frags[] = { "<tool_call>", "</tool_call>", "<tool_", "_call>", "<", "{", "}", "\"name\"",
                                    ":", "\"calc\"", "\"nope\"", "\"arguments\"", "{\"expr\": \"1\"}", ",", " ",
                                    "\n", "hello", "é", "中文", "\\", "\"", "[", "]", "tool_call", "</", "null" };
    struct triattn_tool_options o;
    triattn_tool_options_init(&o);
    o.tools = k_tools;
    for (int it = 0; it < 400; it++) {
        tri_gbuf t = { 0 };
        for (int i = (int) tu_below(24); i > 0; i--) tri_gbuf_str(&t, frags[tu_below(26)]);
        const char * tmpl = tu_below(2) ? k_chatml : k_llama3;
        o.tool_choice     = tu_below(4) == 0 ? "\"required\"" : NULL;
        struct parsed a, b;
        parse_all(tmpl, &o, t.p ? t.p : "", t.len, false, &a);
        parse_all(tmpl, &o, t.p ? t.p : "", t.len, true, &b);
        /* pieces split content deltas differently: compare the content and the calls */
        CHECK(a.n_calls == b.n_calls, "split changed the calls: %d vs %d for %s", a.n_calls, b.n_calls, t.p);
        CHECK(a.content.len == b.content.len && (a.content.len == 0 || memcmp(a.content.p, b.content.p, a.content.len) == 0),
              "split changed the content for %s", t.p);
        if (a.n_calls == 0) {
            CHECK(a.content.len == t.len && (t.len == 0 || memcmp(a.content.p, t.p, t.len) == 0),
                  "content lost without calls: '%s' -> '%s'", t.p, a.content.p);
        }
        tri_js v, calls;
        CHECK(tri_js_parse((tri_js){ a.message.p, a.message.len }, &v), "message is not JSON: %s", a.message.p);
        CHECK(tri_js_get(v, "tool_calls", &calls) == (a.n_calls > 0), "tool_calls presence: %s", a.message.p);
        parsed_free(&a);
        parsed_free(&b);
        tri_gbuf_free(&t);
    }
}

static void test_parser_calls(void) {
    struct triattn_tool_options o;
    triattn_tool_options_init(&o);
    o.tools   = k_tools;
    o.id_seed = tu_u64();
    const char * text = "Let me see. <tool_call>\n{\"name\": \"calc\", \"arguments\": {\"expr\": \"6*7\"}}\n</tool_call>\n"
                        "<tool_call>{\"name\": \"clock\", \"arguments\": \"{}\"}</tool_call>"
                        "<tool_call>{\"name\": \"nope\", \"arguments\": {}}</tool_call>";
    struct parsed p;
    parse_all(k_chatml, &o, text, strlen(text), true, &p);
    CHECK(p.n_calls == 2, "two calls: %d", p.n_calls);
    tri_js msg, calls, c0, f, name, args, id;
    CHECK(tri_js_parse((tri_js){ p.message.p, p.message.len }, &msg) && tri_js_get(msg, "tool_calls", &calls),
          "message: %s", p.message.p);
    tri_js_iter it = tri_js_iter_of(calls);
    CHECK(tri_js_next(&it, NULL, &c0) && tri_js_get(c0, "function", &f) && tri_js_get(f, "name", &name) &&
          tri_js_str_eq(name, "calc") && tri_js_get(f, "arguments", &args) &&
          tri_js_str_eq(args, "{\"expr\": \"6*7\"}") && tri_js_get(c0, "id", &id) && id.n == 31 &&
          memcmp(id.p, "\"call_", 6) == 0, "first call: %s", p.message.p);
    CHECK(strstr(p.content.p ? p.content.p : "", "Let me see.") && strstr(p.content.p, "\"nope\""),
          "content keeps the text and the unknown call: %s", p.content.p);
    CHECK(strstr(p.deltas.p, "\"arguments\":\"\"") != NULL, "first delta has empty arguments: %s", p.deltas.p);
    parsed_free(&p);

    o.parallel_tool_calls = false;
    parse_all(k_chatml, &o, text, strlen(text), false, &p);
    CHECK(p.n_calls == 1, "parallel_tool_calls false: %d", p.n_calls);
    parsed_free(&p);
    o.parallel_tool_calls = true;

    /* forced: the output is the bare call (its tag was in the prompt), possibly unclosed */
    o.tool_choice = "\"required\"";
    const char * forced = "{\"name\": \"clock\", \"arguments\": {}}";
    parse_all(k_chatml, &o, forced, strlen(forced), true, &p);
    CHECK(p.n_calls == 1 && strstr(p.message.p, "\"content\":null"), "forced call: %s", p.message.p);
    parsed_free(&p);
    const char * broken = "{\"name\": \"clock\", \"argum";
    parse_all(k_chatml, &o, broken, strlen(broken), true, &p);
    CHECK(p.n_calls == 0 && p.content.len == strlen(broken), "broken forced call as content: %s", p.message.p);
    parsed_free(&p);

    /* Llama 3: a bare JSON reply */
    o.tool_choice = NULL;
    const char * l3 = " {\"name\": \"calc\", \"parameters\": {\"expr\": \"1\"}}";
    parse_all(k_llama3, &o, l3, strlen(l3), true, &p);
    CHECK(p.n_calls == 1, "llama3 call: %s", p.message.p);
    parsed_free(&p);
    const char * l3text = "The answer is {x}.";
    parse_all(k_llama3, &o, l3text, strlen(l3text), true, &p);
    CHECK(p.n_calls == 0 && p.content.len == strlen(l3text), "llama3 text: %s", p.message.p);
    parsed_free(&p);

    /* tool_choice none: tags are plain text */
    o.tool_choice = "\"none\"";
    parse_all(k_chatml, &o, text, strlen(text), true, &p);
    CHECK(p.n_calls == 0 && p.content.len == strlen(text), "none parses no calls: %d", p.n_calls);
    parsed_free(&p);
}

int main(void) {
    tu_seed_init("TRI_TEST_SEED");
    test_json_scanner();
    test_render();
    test_schema();
    test_parser_random();
    test_parser_calls();
    return tu_finish();
}
