/* test_json.c - the server's JSON parser/serializer: valid and invalid documents, UTF-8, escapes,
 * round trips of random documents, and a mutation fuzz loop (must never crash; checked under ASan too). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../../tools/server/json.c"

#include "test_util.h"

static json_value * P(const char * s) { char e[128]; return json_parse(s, strlen(s), NULL, e, sizeof e); }

static void test_valid(void) {
    const char * docs[] = { "{}", "[]", "0", "-0.5e+3", "\"a\"", "true", " null ", "[1,[2,[3]],{\"a\":{}}]",
                            "{\"k\":\"\\u00e9\\ud83d\\ude00\\n\\t\\\"\\\\\\/\"}", "\"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\"" };
    for (size_t k = 0; k < sizeof docs / sizeof docs[0]; k++) {
        json_value * v = P(docs[k]);
        CHECK(v != NULL, "valid document rejected: %s", docs[k]);
        json_free(v);
    }
    json_value * v = P("{\"k\":\"\\u00e9\\ud83d\\ude00x\",\"n\":-12,\"f\":2.5,\"k\":7}");
    CHECK(v && json_get(v, "k")->type == JSON_NUMBER && json_get(v, "k")->i == 7, "last duplicate wins");
    CHECK(v && json_get(v, "n")->is_int && json_get(v, "n")->i == -12, "integer");
    CHECK(v && !json_get(v, "f")->is_int && json_get(v, "f")->num == 2.5, "fraction");
    json_free(v);
    v = P("\"\\u00e9\\ud83d\\ude00x\"");
    CHECK(v && v->len == 7 && memcmp(v->str, "\xc3\xa9\xf0\x9f\x98\x80x", 7) == 0, "escapes decode to UTF-8");
    json_free(v);
}

static void test_invalid(void) {
    const char * docs[] = { "", "{", "[1,]", "{\"a\"}", "{\"a\":}", "[1 2]", "01", "1.", ".5", "-", "1e", "+1",
                            "\"abc", "\"\\x\"", "\"\\u12\"", "\"\\ud800\"", "\"\\udc00\"", "\"\\ud800\\u0041\"",
                            "\"\x01\"", "\"\xc0\xaf\"", "\"\xe0\x80\xaf\"", "\"\xed\xa0\x80\"", "\"\xf4\x90\x80\x80\"",
                            "\"\xff\"", "\"\xc3\"", "tru", "nul", "[1] x", "{\"a\":1,}", "'a'", "NaN", "[\"\\u00\"]" };
    for (size_t k = 0; k < sizeof docs / sizeof docs[0]; k++) {
        char err[128] = "";
        json_value * v = json_parse(docs[k], strlen(docs[k]), NULL, err, sizeof err);
        CHECK(v == NULL && err[0], "invalid document #%zu accepted", k);
        json_free(v);
    }
    /* depth limit */
    char deep[300];
    memset(deep, '[', 200);
    deep[200] = 0;
    struct json_limits lim = { .max_depth = 64 };
    char err[128];
    json_value * v = json_parse(deep, 200, &lim, err, sizeof err);
    CHECK(v == NULL && strstr(err, "deep"), "depth limit: %s", err);
    /* embedded NUL outside strings is an error */
    v = json_parse("[1]\0", 4, NULL, err, sizeof err);
    CHECK(v == NULL, "trailing NUL rejected");
}

/* Random document generator (valid JSON), with random UTF-8 strings. */
static void gen(jbuf * b, int depth) {
    unsigned r = tu_u32() % (depth > 4 ? 4 : 6);
    switch (r) {
    case 0: jb_int(b, (int64_t)(tu_u32() % 2000000) - 1000000); break;
    case 1: jb_num(b, ((double)tu_u32() / 7.0 - 1e5) * pow(10, (int)(tu_u32() % 20) - 10)); break;
    case 2: case 3: {
        char s[64];
        size_t n = 0, want = tu_u32() % 12;
        for (size_t k = 0; k < want; k++) {
            unsigned kind = tu_u32() % 5;
            uint32_t cp = kind == 0 ? tu_u32() % 0x80 : kind == 1 ? 0x80 + tu_u32() % 0x780 : kind == 2 ? 0x800 + tu_u32() % 0xD000
                        : kind == 3 ? 0x10000 + tu_u32() % 0x100000 : 0xE000 + tu_u32() % 0x2000;
            if (cp >= 0xD800 && cp <= 0xDFFF) cp = 'x';
            n += utf8_put(s + n, cp);
        }
        if (tu_u32() % 2) jb_str(b, s, n); else jb_value(b, &(json_value){ .type = tu_u32() % 2 ? JSON_BOOL : JSON_NULL, .b = true });
        break;
    }
    case 4: {
        jb_raw(b, "[", 1);
        unsigned n = tu_u32() % 5;
        for (unsigned k = 0; k < n; k++) { if (k) jb_raw(b, ",", 1); gen(b, depth + 1); }
        jb_raw(b, "]", 1);
        break;
    }
    default: {
        jb_raw(b, "{", 1);
        unsigned n = tu_u32() % 5;
        for (unsigned k = 0; k < n; k++) {
            if (k) jb_raw(b, ",", 1);
            char key[8];
            snprintf(key, sizeof key, "k%u", tu_u32() % 100);
            jb_qcstr(b, key);
            jb_raw(b, ":", 1);
            gen(b, depth + 1);
        }
        jb_raw(b, "}", 1);
    }
    }
}

static void test_roundtrip_and_fuzz(void) {
    jbuf a, c;
    jb_init(&a);
    jb_init(&c);
    int rt_ok = 1, accepted = 0;
    long fuzz_iters = 0;
    /* TRI_FUZZ_SECONDS=N: keep fuzzing for N seconds (long runs outside CI); default 3000 documents */
    const char * env = getenv("TRI_FUZZ_SECONDS");
    const double seconds = env ? atof(env) : 0.0;
    const time_t t_end = time(NULL) + (time_t) seconds;
    for (long it = 0; seconds > 0 ? time(NULL) < t_end : it < 3000; it++) {
        jb_reset(&a);
        gen(&a, 0);
        char err[128];
        json_value * v = json_parse(a.data, a.len, NULL, err, sizeof err);
        if (!v) { CHECK(0, "generated document rejected: %s: %.200s", err, a.data); break; }
        jb_reset(&c);
        jb_value(&c, v);
        json_value * w = json_parse(c.data, c.len, NULL, err, sizeof err);
        jbuf d;
        jb_init(&d);
        if (w) jb_value(&d, w);
        if (!w || d.len != c.len || memcmp(d.data, c.data, c.len) != 0) { rt_ok = 0; printf("round trip differs: %.200s\n", a.data); }
        jb_free(&d);
        json_free(w);
        json_free(v);
        /* mutations: flip, insert, delete or truncate bytes; the parser must only succeed or fail */
        for (int m = 0; m < 8; m++) {
            size_t n = a.len;
            char * buf = malloc(n + 8);
            memcpy(buf, a.data, n);
            unsigned ops = 1 + tu_u32() % 3;
            for (unsigned o = 0; o < ops && n > 0; o++) {
                size_t pos = tu_u32() % n;
                switch (tu_u32() % 4) {
                case 0: buf[pos] = (char)tu_u32(); break;
                case 1: if (n < a.len + 7) { memmove(buf + pos + 1, buf + pos, n - pos); buf[pos] = "\"\\{}[],:u\xc3\xed"[tu_u32() % 12]; n++; } break;
                case 2: memmove(buf + pos, buf + pos + 1, n - pos - 1); n--; break;
                default: n = pos; break;
                }
            }
            json_value * f = json_parse(buf, n, NULL, err, sizeof err);
            if (f) {
                accepted++;
                /* anything accepted must serialize to valid JSON whose strings are valid UTF-8 */
                jb_reset(&c);
                jb_value(&c, f);
                json_value * g = json_parse(c.data, c.len, NULL, err, sizeof err);
                if (!g) { rt_ok = 0; printf("re-parse of accepted mutant failed: %s\n", err); }
                json_free(g);
            } else if (!json_utf8_valid(buf, n)) {
                /* fine: invalid UTF-8 must be rejected when it is inside a string; nothing to check */
            }
            json_free(f);
            free(buf);
            fuzz_iters++;
        }
    }
    CHECK(rt_ok, "round trips and accepted mutants re-parse");
    CHECK(fuzz_iters >= 20000 && accepted > 0, "fuzz ran %ld mutants (%d accepted)", fuzz_iters, accepted);
    printf("json fuzz: %ld mutants, %d accepted\n", fuzz_iters, accepted);
    jb_free(&a);
    jb_free(&c);
}

static void test_serializer(void) {
    jbuf b;
    jb_init(&b);
    jb_str(&b, "a\"\\\n\x01\xc3\xa9\xff", 8);
    CHECK(strcmp(b.data, "\"a\\\"\\\\\\n\\u0001\xc3\xa9\\ufffd\"") == 0, "escaping: %s", b.data);
    jb_reset(&b);
    jb_num(&b, NAN);
    CHECK(strcmp(b.data, "null") == 0, "NaN -> null");
    /* negative zero keeps its sign through a round trip ("-0" would read back as the integer 0) */
    json_value * z = json_parse("[-0.0e+1]", 9, NULL, NULL, 0);
    jb_reset(&b);
    if (z) jb_value(&b, z);
    CHECK(z && strcmp(b.data, "[-0.0]") == 0, "-0.0 serialises as %s", b.data);
    json_free(z);
    char err[128] = "";
    CHECK(!json_parse("[1.0e400]", 9, NULL, err, sizeof err) && strstr(err, "number out of range at byte 1"),
          "a number past double's range is refused: %s", err);
    z = json_parse("-1e-400", 7, NULL, NULL, 0);
    CHECK(z && z->num == 0, "a number below double's range reads as 0");
    json_free(z);
    jb_free(&b);
    CHECK(json_utf8_valid("\xf0\x9f\x98\x80", 4) && !json_utf8_valid("\xf0\x9f\x98", 3), "utf8_valid");
}

/* The memory budget: a document of n tiny values needs about n x sizeof(json_value) (plus the arrays'
 * growth); under a budget below that it fails with JSON_ERR_BUDGET, above it parses the same values. */
static void test_memory_budget(void) {
    CHECK(sizeof(json_value) <= 40, "json_value is %zu bytes", sizeof(json_value));
    for (int round = 0; round < 20; round++) {
        const size_t n = 1000 + tu_below(20000);
        jbuf b;
        jb_init(&b);
        jb_raw(&b, "{\"k\":[", 6);
        int64_t sum = 0;
        for (size_t k = 0; k < n; k++) {
            const int64_t x = tu_int(-9, 9);
            sum += x;
            jb_printf(&b, "%s%lld", k ? "," : "", (long long)x);
        }
        jb_raw(&b, "]}", 2);
        char err[160] = "";
        const size_t need = n * sizeof(json_value);
        struct json_limits tight = { .max_bytes = need / 2 + tu_below(need / 2) };
        json_value * v = json_parse(b.data, b.len, &tight, err, sizeof err);
        CHECK(v == NULL && strstr(err, JSON_ERR_BUDGET), "budget %zu for %zu values: %s", tight.max_bytes, n, err);
        json_free(v);
        struct json_limits roomy = { .max_bytes = 3 * need + 1024 };
        v = json_parse(b.data, b.len, &roomy, err, sizeof err);
        const json_value * k = v ? json_get(v, "k") : NULL;
        int64_t got = 0;
        for (size_t j = 0; k && j < k->n; j++) got += k->items[j].i;
        CHECK(k && k->type == JSON_ARRAY && k->n == n && got == sum, "roomy budget: %s", err);
        json_free(v);
        jb_free(&b);
    }
}

int main(void) {
    tu_seed_init("TRI_TEST_SEED");
    test_memory_budget();
    test_valid();
    test_invalid();
    test_serializer();
    test_roundtrip_and_fuzz();
    return tu_finish();
}
