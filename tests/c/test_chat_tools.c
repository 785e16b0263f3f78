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
        /* a proper prefix of an object or array is never a document, and the incremental scan says so */
        for (size_t k = 0; k < b.len; k++) {
            const char * end = NULL;
            CHECK(!tri_js_parse((tri_js){ b.p, k }, &v), "prefix %zu of %s accepted", k, b.p);
            CHECK(tri_js_value_scan(b.p, b.p + k, &end) == TRI_JS_MORE && end == b.p + k, "prefix %zu of %s not MORE",
                  k, b.p);
        }
        const char * end = NULL;
        CHECK(tri_js_value_scan(b.p, b.p + b.len, &end) == TRI_JS_DONE && end == b.p + b.len, "scan of %s", b.p);
        /* a flipped structural byte breaks it */
        tri_gbuf bad = { 0 };
        tri_gbuf_put(&bad, b.p, b.len);
        bad.p[bad.len - 1] = obj ? ']' : '}';
        CHECK(!tri_js_parse((tri_js){ bad.p, bad.len }, &v), "mismatched close accepted: %s", bad.p);
        CHECK(tri_js_value_scan(bad.p, bad.p + bad.len, &end) == TRI_JS_BAD && end == bad.p + bad.len - 1,
              "mismatched close: stop at %td of %s", end - bad.p, bad.p);
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
    /* where a scan stops: the first byte that cannot continue a value, or the end of a cut one */
    static const struct { const char * text; enum tri_js_scan want; int stop; } stops[] = {
        { "[1 2]", TRI_JS_BAD, 3 }, { "{\"a\"}", TRI_JS_BAD, 4 }, { "{x", TRI_JS_BAD, 1 }, { "[tru", TRI_JS_MORE, 4 },
        { "[trux", TRI_JS_BAD, 4 }, { "[1.", TRI_JS_MORE, 3 }, { "[-", TRI_JS_MORE, 2 }, { "[\"\\u00", TRI_JS_MORE, 6 },
        { "[\"\\u0g", TRI_JS_BAD, 5 }, { "[\"\xC3", TRI_JS_MORE, 3 }, { "[\"\xC3x", TRI_JS_BAD, 2 },
        { "{\"a\": [1, {}], \"b\": null} tail", TRI_JS_DONE, 25 }, { "   ", TRI_JS_MORE, 3 },
    };
    for (size_t i = 0; i < sizeof stops / sizeof stops[0]; i++) {
        const char * t = stops[i].text, * end = NULL;
        enum tri_js_scan r = tri_js_value_scan(t, t + strlen(t), &end);
        CHECK(r == stops[i].want && end == t + stops[i].stop, "scan %s: %d at %td", t, (int) r, end - t);
    }
    tri_gbuf u = { 0 };
    const char * esc = "\"a\\u00e9\\ud83d\\ude00\\n\\\\\"";
    tri_js_unescape((tri_js){ esc, strlen(esc) }, &u);
    CHECK(u.len == strlen("a\xC3\xA9\xF0\x9F\x98\x80\n\\") && memcmp(u.p, "a\xC3\xA9\xF0\x9F\x98\x80\n\\", u.len) == 0,
          "unescape: %s", u.p);
    tri_gbuf_free(&u);
}

/* A random JSON string token (with its quotes) into buf from pieces of text, each written one of its ways. */
static size_t random_js_string(char * buf, size_t cap, int n_pieces) {
    static const char * const ways[][3] = {
        { "a", "\\u0061", "a" },          { "\xC3\xA9", "\\u00e9", "\\u00E9" }, { "\\n", "\\u000a", "\\u000A" },
        { "\\\"", "\\u0022", "\\\"" },     { "\\\\", "\\u005c", "\\\\" },
        { "\xF0\x9F\x98\x80", "\\ud83d\\ude00", "\\uD83D\\uDE00" },  { "\\u0000", "\\u0000", "\\u0000" },
        { "/", "\\/", "/" },              { "\\ud800", "\\ufffd", "\xEF\xBF\xBD" }, { "x", "x", "\\u0078" },
    };
    size_t n = 0;
    buf[n++] = '"';
    for (int i = 0; i < n_pieces; i++) {
        const char * w = ways[tu_below(sizeof ways / sizeof ways[0])][tu_below(3)];
        const size_t m = strlen(w);
        if (n + m + 2 > cap) break;
        memcpy(buf + n, w, m);
        n += m;
    }
    buf[n++] = '"';
    buf[n] = '\0';
    return n;
}

/* The allocation-free string comparisons (tool names, keys, enum values) against unescaping into a buffer. */
static void test_string_compare(void) {
    int same = 0;
    for (int it = 0; it < 20000; it++) {
        char a[256], b[256];
        const tri_js ja = { a, random_js_string(a, sizeof a, (int) tu_below(6)) };
        const tri_js jb = { b, random_js_string(b, sizeof b, (int) tu_below(6)) };
        CHECK(tri_js_parse(ja, &(tri_js){ 0 }) && tri_js_parse(jb, &(tri_js){ 0 }), "not JSON: %s / %s", a, b);
        tri_gbuf ua = { 0 }, ub = { 0 };
        tri_js_unescape(ja, &ua);
        tri_js_unescape(jb, &ub);
        const bool want = ua.len == ub.len && (ua.len == 0 || memcmp(ua.p, ub.p, ua.len) == 0);
        same += want;
        CHECK(tri_js_str_same(ja, jb) == want && tri_js_str_same(jb, ja) == want, "same(%s, %s) != %d", a, b, want);
        size_t chars = 0;
        for (size_t i = 0; i < ua.len; i++) chars += ((unsigned char) ua.p[i] & 0xC0) != 0x80;
        CHECK(tri_js_str_chars(ja) == chars, "chars(%s) = %zu, want %zu", a, tri_js_str_chars(ja), chars);
        if (!ua.len || !memchr(ua.p, '\0', ua.len)) {
            CHECK(tri_js_str_eq(ja, ua.p ? ua.p : ""), "str_eq(%s) with its own text", a);
            CHECK(tri_js_str_eq(jb, ua.p ? ua.p : "") == want, "str_eq(%s, text of %s) != %d", b, a, want);
        }
        tri_gbuf_free(&ua);
        tri_gbuf_free(&ub);
    }
    CHECK(same > 500, "only %d equal pairs drawn", same);
}

/* ---- argument validation -------------------------------------------------------------------------- */

static void test_validate(void) {
    static const struct { const char * schema, * value; bool want; } cases[] = {
        { "{\"type\": \"object\"}", "{}", true }, { "{\"type\": \"object\"}", "[]", false },
        { "{\"type\": \"string\"}", "\"x\"", true }, { "{\"type\": \"string\"}", "1", false },
        { "{\"type\": \"integer\"}", "3", true }, { "{\"type\": \"integer\"}", "3.0", true },
        { "{\"type\": \"integer\"}", "-2e2", true }, { "{\"type\": \"integer\"}", "3.5", false },
        { "{\"type\": \"number\"}", "-0.5E-3", true }, { "{\"type\": \"number\"}", "\"1\"", false },
        { "{\"type\": \"boolean\"}", "false", true }, { "{\"type\": \"boolean\"}", "null", false },
        { "{\"type\": \"null\"}", "null", true }, { "{\"type\": \"array\"}", "{}", false },
        { "{\"type\": [\"string\", \"null\"]}", "null", true }, { "{\"type\": [\"string\", \"null\"]}", "0", false },
        { "{\"enum\": [\"C\", \"F\"]}", "\"F\"", true }, { "{\"enum\": [\"C\", \"F\"]}", "\"K\"", false },
        { "{\"enum\": [\"\\u00e9\"]}", "\"\xC3\xA9\"", true }, { "{\"enum\": [1, [2]]}", "1.0", true },
        { "{\"enum\": [1, [2]]}", "[2]", true }, { "{\"enum\": [1, [2]]}", "[2, 2]", false },
        { "{\"const\": {\"a\": 1, \"b\": [true]}}", "{\"b\": [true], \"a\": 1}", true },
        { "{\"const\": {\"a\": 1, \"b\": [true]}}", "{\"a\": 1}", false },
        /* duplicate keys: the last one counts, on either side */
        { "{\"const\": {\"a\": 1, \"a\": 2}}", "{\"a\": 1, \"a\": 2}", true },
        { "{\"const\": {\"a\": 2}}", "{\"a\": 1, \"a\": 2}", true },
        { "{\"const\": {\"a\": 1, \"a\": 2}}", "{\"a\": 2, \"b\": 3}", false },
        { "{\"const\": {\"a\": 2, \"b\": 3}}", "{\"a\": 1, \"a\": 2}", false },
        { "{\"const\": {\"a\\u0000b\": 1}}", "{\"a\\u0000b\": 1}", true },
        { "{\"const\": {\"a\\u0000b\": 1}}", "{\"a\\u0000c\": 1}", false },
        { "{\"properties\": {\"a\": {\"type\": \"string\"}}}", "{\"a\": \"x\", \"b\": 2}", true },
        { "{\"properties\": {\"a\": {\"type\": \"string\"}}}", "{\"a\": 1}", false },
        { "{\"properties\": {\"a\": {}}, \"additionalProperties\": false}", "{\"a\": 1}", true },
        { "{\"properties\": {\"a\": {}}, \"additionalProperties\": false}", "{\"a\": 1, \"b\": 2}", false },
        { "{\"additionalProperties\": {\"type\": \"number\"}}", "{\"x\": 1, \"y\": \"2\"}", false },
        { "{\"required\": [\"a\", \"b\"]}", "{\"a\": 1, \"b\": 2}", true },
        { "{\"required\": [\"a\", \"b\"]}", "{\"a\": 1}", false },
        { "{\"items\": {\"type\": \"integer\"}, \"minItems\": 1, \"maxItems\": 2}", "[1, 2]", true },
        { "{\"items\": {\"type\": \"integer\"}, \"minItems\": 1, \"maxItems\": 2}", "[1, \"2\"]", false },
        { "{\"items\": {\"type\": \"integer\"}, \"minItems\": 1, \"maxItems\": 2}", "[]", false },
        { "{\"items\": {\"type\": \"integer\"}, \"minItems\": 1, \"maxItems\": 2}", "[1, 2, 3]", false },
        { "{\"minLength\": 2, \"maxLength\": 3}", "\"\xE4\xB8\xAD\xE6\x96\x87\"", true },
        { "{\"minLength\": 2, \"maxLength\": 3}", "\"abcd\"", false }, { "{\"minLength\": 2}", "\"a\"", false },
        { "{\"minimum\": 0, \"maximum\": 10}", "10", true }, { "{\"minimum\": 0, \"maximum\": 10}", "-1", false },
        { "{\"exclusiveMinimum\": 0}", "0", false }, { "{\"exclusiveMaximum\": 1}", "0.5", true },
        { "{\"anyOf\": [{\"type\": \"string\"}, {\"type\": \"integer\"}]}", "2", true },
        { "{\"anyOf\": [{\"type\": \"string\"}, {\"type\": \"integer\"}]}", "[]", false },
        { "{\"oneOf\": [{\"type\": \"number\"}, {\"type\": \"integer\"}]}", "2", false },
        { "{\"oneOf\": [{\"type\": \"number\"}, {\"type\": \"integer\"}]}", "2.5", true },
        { "{\"allOf\": [{\"minimum\": 1}, {\"maximum\": 3}]}", "4", false },
        { "{\"not\": {\"type\": \"null\"}}", "null", false }, { "{\"not\": {\"type\": \"null\"}}", "0", true },
        { "{\"pattern\": \"^a\", \"format\": \"email\", \"$ref\": \"#/x\"}", "\"zzz\"", true },
        { "true", "[1]", true }, { "false", "1", false },
        { "{\"type\": \"object\", \"properties\": {\"loc\": {\"type\": \"object\", \"properties\": {\"lat\": "
          "{\"type\": \"number\"}}, \"required\": [\"lat\"]}}}", "{\"loc\": {\"lat\": \"north\"}}", false },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        tri_js s, v;
        CHECK(tri_js_parse((tri_js){ cases[i].schema, strlen(cases[i].schema) }, &s) &&
              tri_js_parse((tri_js){ cases[i].value, strlen(cases[i].value) }, &v), "case %zu is not JSON", i);
        CHECK(tri_js_valid(v, s) == cases[i].want, "%s against %s: want %d", cases[i].value, cases[i].schema,
              cases[i].want);
    }
    /* a number written with 200 digits is read whole: 1e199 is over a maximum of 1e150 */
    char big[201];
    big[0] = '1';
    memset(big + 1, '0', 199);
    big[200] = '\0';
    tri_js s, v;
    const char * max = "{\"maximum\": 1e150}";
    CHECK(tri_js_parse((tri_js){ max, strlen(max) }, &s) && tri_js_parse((tri_js){ big, 200 }, &v) &&
          !tri_js_valid(v, s), "a 200-digit 1e199 passes maximum 1e150");
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
    /* several tools: a union told apart by the name, each name with its own parameters */
    CHECK(tri_js_parse((tri_js){ buf, n }, &v) && strncmp(buf, "{\"anyOf\":[", 10) == 0 &&
          strstr(buf, "\"enum\":[\"calc\"]},\"parameters\":{\"type\":\"object\",\"properties\":{\"expr\"") &&
          strstr(buf, "\"enum\":[\"clock\"]},\"parameters\":{\"type\": \"object\", \"properties\": {}}"),
          "required schema (llama3): %s", buf);
    CHECK(triattn_json_schema_check(buf, err, sizeof err) == TRIATTN_OK, "required schema compiles: %s", err);
    /* a tool whose parameters the grammar cannot hold gets any object (the parser still checks them) */
    o.tools = "[{\"type\":\"function\",\"function\":{\"name\":\"f\",\"parameters\":{\"type\":\"object\","
              "\"properties\":{\"s\":{\"type\":\"string\",\"pattern\":\"^a\"}}}}},"
              "{\"type\":\"function\",\"function\":{\"name\":\"f\"}},{\"type\":\"function\",\"function\":{\"name\":\"g\"}}]";
    tri_tool_call_schema(k_chatml, NULL, &o, buf, sizeof buf, &n, err, sizeof err);
    CHECK(strstr(buf, "\"enum\":[\"f\"]},\"arguments\":{\"type\":\"object\"}}") && !strstr(buf, "pattern") &&
          triattn_json_schema_check(buf, err, sizeof err) == TRIATTN_OK, "loose alternative: %s (%s)", buf, err);
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
                                    "\n", "hello", "é", "中文", "\\", "\"", "[", "]", "tool_call", "</", "null",
                                    "```", "```json\n", "<|python_tag|>", "[TOOL_CALLS]", ";", "\n  ", "`",
                                    "{\"name\": \"clock\", \"arguments\": {}}", "{\"name\": \"calc\", \"arguments\": {",
                                    "{\"name\": \"calc\", \"parameters\": {\"expr\": 2}}", "<|python", "[TOOL_",
                                    "<tool_call>{\"name\": \"clock\", \"arguments\": {}}</tool_call>" };
    const size_t n_frags = sizeof frags / sizeof frags[0];
    struct triattn_tool_options o;
    triattn_tool_options_init(&o);
    o.tools = k_tools;
    int with_calls[2] = { 0, 0 };  /* texts that held calls, lenient and strict: the calls path is exercised */
    for (int it = 0; it < 800; it++) {
        tri_gbuf t = { 0 };
        for (int i = (int) tu_below(24); i > 0; i--) tri_gbuf_str(&t, frags[tu_below(n_frags)]);
        const char * tmpl   = tu_below(2) ? k_chatml : k_llama3;
        o.tool_choice       = tu_below(4) == 0 ? "\"required\"" : NULL;
        o.strict_tool_calls = tu_below(2);
        o.parallel_tool_calls = tu_below(4) != 0;
        struct parsed a, b;
        parse_all(tmpl, &o, t.p ? t.p : "", t.len, false, &a);
        parse_all(tmpl, &o, t.p ? t.p : "", t.len, true, &b);
        /* pieces split content deltas differently: compare the content and the calls */
        CHECK(a.n_calls == b.n_calls, "split changed the calls: %d vs %d for %s", a.n_calls, b.n_calls, t.p);
        CHECK(a.content.len == b.content.len && (a.content.len == 0 || memcmp(a.content.p, b.content.p, a.content.len) == 0),
              "split changed the content for %s: '%s' vs '%s'", t.p, a.content.p, b.content.p);
        if (a.n_calls == 0) {
            CHECK(a.content.len == t.len && (t.len == 0 || memcmp(a.content.p, t.p, t.len) == 0),
                  "content lost without calls: '%s' -> '%s'", t.p, a.content.p);
        }
        with_calls[o.strict_tool_calls] += a.n_calls > 0 && !o.tool_choice;
        tri_js v, calls;
        CHECK(tri_js_parse((tri_js){ a.message.p, a.message.len }, &v), "message is not JSON: %s", a.message.p);
        CHECK(tri_js_get(v, "tool_calls", &calls) == (a.n_calls > 0), "tool_calls presence: %s", a.message.p);
        parsed_free(&a);
        parsed_free(&b);
        tri_gbuf_free(&t);
    }
    CHECK(with_calls[0] > 20 && with_calls[1] > 5, "random texts with calls: %d lenient, %d strict", with_calls[0],
          with_calls[1]);
    o.strict_tool_calls   = false;
    o.parallel_tool_calls = true;
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
    /* a closing tag inside an argument string does not end the call, forced or tagged */
    const char * quoted = "{\"name\": \"calc\", \"arguments\": {\"expr\": \"}}</tool_call>\\\"x\"}}";
    parse_all(k_chatml, &o, quoted, strlen(quoted), true, &p);
    CHECK(p.n_calls == 1 && strstr(p.message.p, "</tool_call>"), "closing tag in a forced argument: %s", p.message.p);
    parsed_free(&p);
    o.tool_choice = NULL;
    const char * tagged = "<tool_call>{\"name\": \"calc\", \"arguments\": {\"expr\": \"a</tool_call>\"}}</tool_call> ok";
    parse_all(k_chatml, &o, tagged, strlen(tagged), true, &p);
    CHECK(p.n_calls == 1 && p.content.p && strcmp(p.content.p, " ok") == 0, "closing tag in a tagged argument: %s / %s",
          p.message.p, p.content.p ? p.content.p : "");
    parsed_free(&p);
    const char * unterminated = "<tool_call>{\"name\": \"calc</tool_call> and on";
    parse_all(k_chatml, &o, unterminated, strlen(unterminated), true, &p);
    CHECK(p.n_calls == 0 && p.content.len == strlen(unterminated), "unterminated string as content: %s", p.content.p);
    parsed_free(&p);
    o.tool_choice = "\"required\"";

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

/* ---- call shapes ---------------------------------------------------------------------------------- */

#define CALC(e)   "{\"name\": \"calc\", \"arguments\": {\"expr\": \"" e "\"}}"
#define L3CALC(e) "{\"name\": \"calc\", \"parameters\": {\"expr\": \"" e "\"}}"
#define CLOCK     "{\"name\": \"clock\", \"arguments\": {}}"

/* Replies in the shapes models write, each parsed without and with strict_tool_calls: the calls expected, the
 * content when there are calls (NULL: null), and the first call's arguments as written. With no calls the
 * content must be the text, byte for byte. */
static const struct shape {
    const char * text;
    bool         llama3;          /* the Llama 3 template, else ChatML */
    int          lenient, strict; /* calls expected */
    const char * content;
    const char * args;
} k_shapes[] = {
    /* the formats' own syntax */
    { "<tool_call>\n" CALC("1") "\n</tool_call>", false, 1, 1, NULL, "{\"expr\": \"1\"}" },
    { " " L3CALC("2"), true, 1, 1, NULL, "{\"expr\": \"2\"}" },
    /* fenced */
    { "```json\n" CALC("3") "\n```", false, 1, 0, NULL, "{\"expr\": \"3\"}" },
    { "```\n" CLOCK "\n```", false, 1, 0, NULL, "{}" },
    { "```JSON\n[" CALC("4") ", " CLOCK "]\n```", false, 2, 0, NULL, "{\"expr\": \"4\"}" },
    { "```json\n" CALC("5") "\n" CLOCK "\n```", false, 2, 0, NULL, "{\"expr\": \"5\"}" },
    { "Sure, let me check.\n```json\n" CALC("6") "\n```\nDone.", false, 1, 0, "Sure, let me check.\n\nDone.",
      "{\"expr\": \"6\"}" },
    { "```json\n{\"name\": \"calc\", \"arguments\": \"{\\\"expr\\\": \\\"7\\\"}\"}\n```", false, 1, 0, NULL,
      "{\"expr\": \"7\"}" },
    { "```json\n" CALC("8"), false, 1, 0, NULL, "{\"expr\": \"8\"}" },  /* the fence never closed */
    /* bare */
    { CALC("9"), false, 1, 0, NULL, "{\"expr\": \"9\"}" },
    { "\n  " CALC("10") "\n", false, 1, 0, NULL, "{\"expr\": \"10\"}" },
    { "[" CALC("11") ", " CLOCK "]", false, 2, 0, NULL, "{\"expr\": \"11\"}" },
    { L3CALC("12"), false, 1, 0, NULL, "{\"expr\": \"12\"}" },
    { CALC("13") "; " CLOCK, false, 2, 0, NULL, "{\"expr\": \"13\"}" },
    { CALC("14") "\n\n" CLOCK, false, 2, 0, NULL, "{\"expr\": \"14\"}" },
    { "Let me look.\n" CALC("15"), false, 1, 0, "Let me look.\n", "{\"expr\": \"15\"}" },
    { CALC("16") "\nThat is the call.", false, 1, 0, "\nThat is the call.", "{\"expr\": \"16\"}" },
    { "[" CLOCK "]", true, 1, 0, NULL, "{}" },
    { "I will call it.\n" L3CALC("17"), true, 1, 0, "I will call it.\n", "{\"expr\": \"17\"}" },
    /* tagged */
    { "<|python_tag|>" L3CALC("18"), false, 1, 0, NULL, "{\"expr\": \"18\"}" },
    { "Calling now: <|python_tag|>" CLOCK, false, 1, 0, "Calling now: ", "{}" },
    { "<|python_tag|>{\"name\": \"calc\", \"parameters\": {\"expr\": 19}}", false, 1, 0, NULL, "{\"expr\": 19}" },
    { "[TOOL_CALLS] [" CLOCK "]", false, 1, 0, NULL, "{}" },
    { "[TOOL_CALLS]" CALC("20"), true, 1, 0, NULL, "{\"expr\": \"20\"}" },
    { "<tool_call>" CALC("21") "</tool_call>", true, 1, 0, NULL, "{\"expr\": \"21\"}" },
    { "<tool_call>[" CALC("22") ", " CLOCK "]</tool_call>", false, 2, 0, NULL, "{\"expr\": \"22\"}" },
    /* near misses: content */
    { "```json\n{\"name\": \"joke\", \"arguments\": {\"text\": \"x\"}}\n```", false, 0, 0, NULL, NULL },
    { "{\"name\": \"calc\", \"arguments\": {\"expr\": 5}}", false, 0, 0, NULL, NULL },
    { "```json\n{\"name\": \"calc\", \"arguments\": {}}\n```", false, 0, 0, NULL, NULL },
    { "{\"name\": \"calc\", \"arguments\": \"not json\"}", false, 0, 0, NULL, NULL },
    { "{\"name\": [\"calc\"], \"arguments\": {\"expr\": \"1\"}}", false, 0, 0, NULL, NULL },
    { "The call would be " CALC("1") " in JSON.", false, 0, 0, NULL, NULL },
    { "Use `" CALC("1") "` to call it.", false, 0, 0, NULL, NULL },
    { "Result:\n{\"expr\": \"1\"}\nok", false, 0, 0, NULL, NULL },
    { "```python\nprint(" CALC("1") ")\n```", false, 0, 0, NULL, NULL },
    { "```python\n" CALC("1") "\n```", false, 0, 0, NULL, NULL },
    { "``` json\n" CALC("1") "\n```", false, 0, 0, NULL, NULL },
    { "```json\n" CALC("1") "\nmore\n```", false, 0, 0, NULL, NULL },
    { "```json\n{\"name\": \"calc\", \"arguments\": {\"expr\"", false, 0, 0, NULL, NULL },
    { "[1, 2, 3]\n[link](http://x)\n{{x}}\n[]\n{}\n", false, 0, 0, NULL, NULL },
    { "[" CALC("1") ", {\"name\": \"joke\", \"arguments\": {}}]", false, 0, 0, NULL, NULL },
    { "{\"a\": [\n" CALC("1") "\n]}", false, 0, 0, NULL, NULL },
    { "[TOOL_CALLS] hello", false, 0, 0, NULL, NULL },
    { "<|python_tag|>print(1)", true, 0, 0, NULL, NULL },
    { "<tool_call>\n[1, 2]\n</tool_call>", false, 0, 0, NULL, NULL },
    { "<tool_call>" CALC("1") " trailing</tool_call>", false, 0, 0, NULL, NULL },
    { "The answer is {x}.", true, 0, 0, NULL, NULL },
};

/* The first call's "arguments" in a parsed message, unescaped. */
static bool first_args(const tri_gbuf * message, tri_gbuf * out) {
    tri_js msg, calls, c0, f, args;
    tri_js_iter it;
    if (!tri_js_parse((tri_js){ message->p, message->len }, &msg) || !tri_js_get(msg, "tool_calls", &calls)) {
        return false;
    }
    it = tri_js_iter_of(calls);
    if (!tri_js_next(&it, NULL, &c0) || !tri_js_get(c0, "function", &f) || !tri_js_get(f, "arguments", &args)) {
        return false;
    }
    tri_js_unescape(args, out);
    return true;
}

static void test_parser_shapes(void) {
    struct triattn_tool_options o;
    triattn_tool_options_init(&o);
    o.tools = k_tools;
    for (size_t i = 0; i < sizeof k_shapes / sizeof k_shapes[0]; i++) {
        const struct shape * c = &k_shapes[i];
        for (int strict = 0; strict <= 1; strict++) {
            o.strict_tool_calls = strict;
            const int    want   = strict ? c->strict : c->lenient;
            const char * tmpl   = c->llama3 ? k_llama3 : k_chatml;
            struct parsed whole, split;
            parse_all(tmpl, &o, c->text, strlen(c->text), false, &whole);
            CHECK(whole.n_calls == want, "case %zu strict=%d: %d calls, want %d: %s -> %s", i, strict, whole.n_calls,
                  want, c->text, whole.message.p);
            const char * content = want ? c->content : c->text;
            size_t       n       = content ? strlen(content) : 0;
            CHECK(whole.content.len == n && (n == 0 || memcmp(whole.content.p, content, n) == 0),
                  "case %zu strict=%d content: '%.*s', want '%s'", i, strict, (int) whole.content.len,
                  whole.content.p ? whole.content.p : "", content ? content : "(null)");
            CHECK((strstr(whole.message.p, "\"content\":null") != NULL) == (want > 0 && !content),
                  "case %zu strict=%d message: %s", i, strict, whole.message.p);
            tri_gbuf a = { 0 };
            if (want > 0) {
                CHECK(first_args(&whole.message, &a) && a.len == strlen(c->args) && memcmp(a.p, c->args, a.len) == 0,
                      "case %zu strict=%d arguments: %s", i, strict, whole.message.p);
            }
            tri_gbuf_free(&a);
            for (int r = 0; r < 8; r++) {  /* token-sized pieces say the same */
                parse_all(tmpl, &o, c->text, strlen(c->text), true, &split);
                CHECK(split.n_calls == whole.n_calls && split.content.len == whole.content.len &&
                      (n == 0 || memcmp(split.content.p, whole.content.p, n) == 0),
                      "case %zu strict=%d: pieces changed the reply: %s", i, strict, split.message.p);
                parsed_free(&split);
            }
            parsed_free(&whole);
        }
    }
}

/* Streaming: content that cannot be part of a call is released before the reply ends, and nothing of a call
 * has been released as content. */
static void test_parser_streaming(void) {
    struct triattn_tool_options o;
    triattn_tool_options_init(&o);
    o.tools = k_tools;
    static const struct { const char * text, * released; } cases[] = {
        { "Hello there.\nHow are you?", "Hello there.\nHow are you?" },
        { "Sure.\n```json\n" CALC("1") "\n```", "Sure.\n" },
        { "Sure.\n" CALC("1"), "Sure.\n" },
        { "Sure.\n" CALC("1") "\n", "Sure.\n" },   /* a ';' may still follow the call */
        { "Sure.\n```python\nx = 1\n", "Sure.\n```python\nx = 1\n" },
        { "```python\n" CALC("1") "\n", "```python\n" CALC("1") "\n" },
        { "See {\"a\": 1} and [2].", "See {\"a\": 1} and [2]." },
        { "Almost <tool_", "Almost " },
        { "{\"name\": \"calc\", \"arguments\": {\"expr\": 5}}\nok", "{\"name\": \"calc\", \"arguments\": {\"expr\": 5}}\nok" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        triattn_tool_parser * p = NULL;
        char err[256];
        CHECK(tri_tool_parser_create(k_chatml, NULL, &o, &p, err, sizeof err) == TRIATTN_OK, "parser: %s", err);
        const char * d;
        size_t       dn;
        tri_gbuf     got = { 0 };
        for (const char * t = cases[i].text; *t; t++) {
            CHECK(triattn_tool_parser_feed(p, t, 1, false, &d, &dn) == TRIATTN_OK, "feed");
            tri_js arr, delta, c;
            tri_js_parse((tri_js){ d, dn }, &arr);
            tri_js_iter it = tri_js_iter_of(arr);
            while (tri_js_next(&it, NULL, &delta)) {
                if (tri_js_get(delta, "content", &c)) tri_js_unescape(c, &got);
            }
        }
        size_t n = strlen(cases[i].released);
        CHECK(got.len == n && (n == 0 || memcmp(got.p, cases[i].released, n) == 0), "case %zu released '%.*s', want '%s'",
              i, (int) got.len, got.p ? got.p : "", cases[i].released);
        tri_gbuf_free(&got);
        triattn_tool_parser_free(p);
    }
}

/* A candidate longer than the parser holds (16 KiB) is text, however it arrives. */
static void test_parser_long(void) {
    struct triattn_tool_options o;
    triattn_tool_options_init(&o);
    o.tools = k_tools;
    for (int call = 0; call <= 1; call++) {
        tri_gbuf t = { 0 };
        tri_gbuf_str(&t, call ? "{\"name\": \"calc\", \"arguments\": {\"expr\": \"" : "{\"data\": \"");
        for (int i = 0; i < 20000; i++) tri_gbuf_str(&t, i % 61 ? "x" : " ");
        tri_gbuf_str(&t, call ? "\"}}\n" CALC("1") : "\"}\nok");
        struct parsed whole, split;
        parse_all(k_chatml, &o, t.p, t.len, false, &whole);
        parse_all(k_chatml, &o, t.p, t.len, true, &split);
        size_t skip = call ? t.len - strlen(CALC("1")) : t.len;  /* the short call after it still counts */
        CHECK(whole.n_calls == call && split.n_calls == call, "long candidate %d: %d / %d calls", call, whole.n_calls,
              split.n_calls);
        CHECK(whole.content.len == skip && split.content.len == skip && memcmp(whole.content.p, t.p, skip) == 0 &&
              memcmp(split.content.p, t.p, skip) == 0, "long candidate %d: content %zu / %zu of %zu", call,
              whole.content.len, split.content.len, skip);
        parsed_free(&whole);
        parsed_free(&split);
        tri_gbuf_free(&t);
    }
}

int main(void) {
    tu_seed_init("TRI_TEST_SEED");
    test_json_scanner();
    test_string_compare();
    test_validate();
    test_render();
    test_schema();
    test_parser_random();
    test_parser_calls();
    test_parser_shapes();
    test_parser_streaming();
    test_parser_long();
    return tu_finish();
}
