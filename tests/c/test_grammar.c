/* JSON-Schema compiler and grammar matcher: hand cases, refused keywords, random schemas with valid documents
 * (every prefix accepted, the whole document complete), random walks that never reach a dead end, and the
 * token-trie mask against a token-by-token check on the real vocabulary (when TRI_DEFAULT_MODEL is set). */
#include "triattn.h"
#include "test_util.h"

#include "grammar.h"
#include "grammar_mask.h"
#include "model.h"

#include <stdbool.h>

static tri_schema * compile(const char * text) {
    tri_schema * s = NULL;
    char err[512];
    enum triattn_status st = tri_schema_compile(text, strlen(text), &s, err, sizeof err);
    CHECK(st == TRIATTN_OK, "compile %s: %s", text, err);
    return s;
}

/* 1: the whole text is a complete document; 0: rejected or incomplete. */
static int accepts(const tri_schema * s, const char * doc, size_t n) {
    tri_gstate g;
    tri_gstate_init(s, &g);
    for (size_t i = 0; i < n; i++) {
        if (!tri_gstate_feed(s, &g, (uint8_t) doc[i])) return 0;
    }
    return tri_gstate_complete(s, &g);
}

#define TOOL_CALL(name, args) \
    "{\"type\":\"object\",\"properties\":{\"name\":{\"enum\":[\"" name "\"]},\"arguments\":" args "}," \
    "\"required\":[\"name\",\"arguments\"]}"
#define TOOLS_UNION                                                                                            \
    "{\"anyOf\":[" TOOL_CALL("add", "{\"type\":\"object\",\"properties\":{\"x\":{\"type\":\"number\"},"                 \
                             "\"y\":{\"type\":\"number\"}},\"required\":[\"x\",\"y\"]}") ","                        \
        TOOL_CALL("neg", "{\"type\":\"object\",\"properties\":{\"x\":{\"type\":\"integer\"}},\"required\":[\"x\"]}") \
        "," TOOL_CALL("now", "{\"type\":\"object\",\"properties\":{}}") "]}"

static void test_hand_cases(void) {
    static const struct { const char * schema, * doc; int ok; } cases[] = {
        { "{\"type\":\"object\"}", "{}", 1 },
        { "{\"type\":\"object\"}", "{\"a\":1,\"b\":[true,null,\"x\"]}", 1 },
        { "{\"type\":\"object\"}", "{\"a\": {\"b\": [1.5e3, -0]}}", 1 },
        { "{\"type\":\"object\"}", "[1]", 0 },
        { "{\"type\":\"object\"}", "{\"a\":1", 0 },
        { "{\"type\":\"object\"}", "{\"a\"  :1}", 0 },
        { "{\"type\":\"object\"}", "{\"a\":01}", 0 },
        { "{\"type\":\"object\"}", "{\"a\":\"\\ud800\"}", 0 },
        { "{\"type\":\"object\"}", "{\"a\":\"\\u00e9\\n\"}", 1 },
        { "{\"type\":\"object\"}", "{\"a\":\"\xc3\xa9\"}", 1 },
        { "{\"type\":\"object\"}", "{\"a\":\"\xc3\"}", 0 },
        { "{\"type\":\"object\"}", "{\"a\":\"\xed\xa0\x80\"}", 0 },
        { "{}", "3.25", 1 },
        { "{}", "\"x\"", 1 },
        { "{\"type\":\"integer\"}", "-12", 1 },
        { "{\"type\":\"integer\"}", "1.0", 0 },
        { "{\"type\":\"number\"}", "1.0e-7", 1 },
        { "{\"type\":\"number\"}", "1.", 0 },
        { "{\"type\":\"boolean\"}", "false", 1 },
        { "{\"type\":\"boolean\"}", "fals", 0 },
        { "{\"type\":[\"string\",\"null\"]}", "null", 1 },
        { "{\"type\":[\"string\",\"null\"]}", "\"n\"", 1 },
        { "{\"type\":[\"string\",\"null\"]}", "0", 0 },
        { "{\"enum\":[\"red\",\"green\",1,null]}", "\"green\"", 1 },
        { "{\"enum\":[\"red\",\"green\",1,null]}", "1", 1 },
        { "{\"enum\":[\"red\",\"green\",1,null]}", "\"gre\"", 0 },
        { "{\"const\":{\"a\":[1,2]}}", "{\"a\":[1,2]}", 1 },
        { "{\"type\":\"string\",\"maxLength\":3}", "\"abc\"", 1 },
        { "{\"type\":\"string\",\"maxLength\":3}", "\"abcd\"", 0 },
        { "{\"type\":\"string\",\"maxLength\":2}", "\"\xc3\xa9\xc3\xa9\"", 1 },
        { "{\"type\":\"string\",\"minLength\":2}", "\"a\"", 0 },
        { "{\"type\":\"array\",\"items\":{\"type\":\"integer\"},\"minItems\":1,\"maxItems\":2}", "[1, 2]", 1 },
        { "{\"type\":\"array\",\"items\":{\"type\":\"integer\"},\"minItems\":1,\"maxItems\":2}", "[]", 0 },
        { "{\"type\":\"array\",\"items\":{\"type\":\"integer\"},\"minItems\":1,\"maxItems\":2}", "[1,2,3]", 0 },
        { "{\"type\":\"array\",\"items\":{\"type\":\"integer\"}}", "[1,\"a\"]", 0 },
        { "{\"properties\":{\"a\":{\"type\":\"integer\"},\"b\":{\"type\":\"string\"}},\"required\":[\"a\"]}",
          "{\"b\":\"x\",\"a\":1}", 1 },
        { "{\"properties\":{\"a\":{\"type\":\"integer\"},\"b\":{\"type\":\"string\"}},\"required\":[\"a\"]}",
          "{\"b\":\"x\"}", 0 },
        { "{\"properties\":{\"a\":{\"type\":\"integer\"},\"b\":{\"type\":\"string\"}},\"required\":[\"a\"]}",
          "{\"a\":1,\"a\":2}", 0 },
        { "{\"properties\":{\"a\":{\"type\":\"integer\"}}}", "{\"c\":1}", 0 },
        { "{\"properties\":{\"a\":{\"type\":\"integer\"}},\"additionalProperties\":true}", "{\"ab\":\"z\",\"a\":1}", 1 },
        { "{\"properties\":{\"ab\":{\"type\":\"integer\"}},\"additionalProperties\":{\"type\":\"boolean\"}}",
          "{\"a\":true,\"ab\":1,\"abc\":false}", 1 },
        { "{\"properties\":{\"ab\":{\"type\":\"integer\"}},\"additionalProperties\":{\"type\":\"boolean\"}}",
          "{\"a\":1}", 0 },
        { "{\"type\":\"object\",\"additionalProperties\":false}", "{}", 1 },
        { "{\"properties\":{\"a\":{}},\"required\":[\"b\"]}", "{\"b\":[2]}", 1 },
        { "{\"properties\":{\"a\":{}},\"required\":[\"b\"]}", "{\"a\":1}", 0 },
        { "{\"type\":\"object\",\"additionalProperties\":false}", "{\"a\":1}", 0 },
        /* a tool call: a named function and its arguments */
        { "{\"type\":\"object\",\"properties\":{\"name\":{\"const\":\"add\"},\"arguments\":{\"type\":\"object\","
          "\"properties\":{\"x\":{\"type\":\"number\"},\"y\":{\"type\":\"number\"}},\"required\":[\"x\",\"y\"]}},"
          "\"required\":[\"name\",\"arguments\"]}", "{\"name\": \"add\", \"arguments\": {\"x\": 1, \"y\": 2.5}}", 1 },
        { "{\"type\":\"object\",\"properties\":{\"name\":{\"enum\":[\"add\",\"mul\"]}},\"required\":[\"name\"]}",
          "{\"name\":\"sub\"}", 0 },        /* a call to one of several tools: anyOf told apart by the name, which comes first */
        { TOOLS_UNION, "{\"name\":\"add\",\"arguments\":{\"x\":1,\"y\":2}}", 1 },
        { TOOLS_UNION, "{\"name\": \"neg\", \"arguments\": {\"x\": -1}}", 1 },
        { TOOLS_UNION, "{\"name\":\"now\",\"arguments\":{}}", 1 },
        { TOOLS_UNION, "{\"name\":\"neg\",\"arguments\":{\"x\":1,\"y\":2}}", 0 },
        { TOOLS_UNION, "{\"name\":\"add\",\"arguments\":{\"x\":1}}", 0 },
        { TOOLS_UNION, "{\"name\":\"add\"}", 0 },
        { TOOLS_UNION, "{\"arguments\":{\"x\":1},\"name\":\"neg\"}", 0 },
        { TOOLS_UNION, "{\"name\":\"ad\",\"arguments\":{}}", 0 },
        { TOOLS_UNION, "{\"name\":\"now\",\"arguments\":{},\"name\":\"now\"}", 0 },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        tri_schema * s = compile(cases[i].schema);
        if (!s) continue;
        int got = accepts(s, cases[i].doc, strlen(cases[i].doc));
        CHECK(got == cases[i].ok, "schema %s doc %s: got %d want %d", cases[i].schema, cases[i].doc, got, cases[i].ok);
        tri_schema_free(s);
    }
}

static void test_errors(void) {
    static const struct { const char * schema; enum triattn_status st; const char * msg; } cases[] = {
        { "{\"type\":\"object\",\"properties\":{\"x\":{\"type\":\"string\",\"pattern\":\"a+\"}}}", TRIATTN_ERR_UNSUPPORTED,
          "json_schema: unsupported keyword 'pattern' at $.properties.x" },
        { "{\"anyOf\":[{}]}", TRIATTN_ERR_UNSUPPORTED, "unsupported keyword 'anyOf' at $" },
        { "{\"anyOf\":[{\"type\":\"object\",\"properties\":{\"t\":{\"const\":1}},\"required\":[\"t\"]}],"
          "\"type\":\"object\"}", TRIATTN_ERR_UNSUPPORTED, "other keywords beside it" },
        { "{\"anyOf\":[{\"type\":\"object\",\"properties\":{\"t\":{\"const\":1}},\"required\":[\"t\"]},"
          "{\"type\":\"object\",\"properties\":{\"t\":{\"type\":\"integer\"}},\"required\":[\"t\"]}]}",
          TRIATTN_ERR_UNSUPPORTED, "no property that every alternative requires" },
        { "{\"anyOf\":[{\"type\":\"object\",\"properties\":{\"t\":{\"enum\":[1,2]}},\"required\":[\"t\"]},"
          "{\"type\":\"object\",\"properties\":{\"t\":{\"const\":2}},\"required\":[\"t\"]}]}",
          TRIATTN_ERR_UNSUPPORTED, "share a discriminator value" },
        { "{\"anyOf\":{}}", TRIATTN_ERR_INVALID_ARG, "non-empty array" },
        { "{\"properties\":{\"p\":{\"anyOf\":[{\"type\":\"object\",\"properties\":{\"t\":{\"const\":1}},"
          "\"required\":[\"t\"],\"pattern\":\"x\"}]}}}", TRIATTN_ERR_UNSUPPORTED,
          "unsupported keyword 'pattern' at $.properties.p.anyOf[0]" },
        { "{\"items\":{\"$ref\":\"#\"}}", TRIATTN_ERR_UNSUPPORTED, "unsupported keyword '$ref' at $.items" },
        { "{\"type\":\"strin\"}", TRIATTN_ERR_INVALID_ARG, "'type' must name JSON types" },
        { "{\"type\":", TRIATTN_ERR_INVALID_ARG, "at byte" },
        { "{\"type\":\"string\",\"minLength\":5,\"maxLength\":2}", TRIATTN_ERR_INVALID_ARG, "exceeds" },
        { "{\"properties\":{\"a\":{}},\"required\":[\"b\"],\"additionalProperties\":false}", TRIATTN_ERR_INVALID_ARG,
          "required property 'b'" },
        { "{\"type\":\"integer\",\"enum\":[\"a\"]}", TRIATTN_ERR_INVALID_ARG, "enum/const" },
        { "false", TRIATTN_ERR_UNSUPPORTED, "matches nothing" },
        /* invalid UTF-8 in a literal would be generated as is */
        { "{\"const\":\"\xff\"}", TRIATTN_ERR_INVALID_ARG, "invalid UTF-8 in string at byte 10" },
        { "{\"enum\":[\"a\xc0\x80\"]}", TRIATTN_ERR_INVALID_ARG, "invalid UTF-8 in string" },
        { "{\"properties\":{\"\xed\xa0\x80\":{}}}", TRIATTN_ERR_INVALID_ARG, "invalid UTF-8 in string" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        tri_schema * s = NULL;
        char err[512] = "";
        enum triattn_status st = tri_schema_compile(cases[i].schema, strlen(cases[i].schema), &s, err, sizeof err);
        CHECK(st == cases[i].st && !s && strstr(err, cases[i].msg), "schema %s: status %d msg '%s'", cases[i].schema,
              (int) st, err);
        tri_schema_free(s);
    }
    char err[256];
    CHECK(triattn_json_schema_check("{\"minimum\":1}", err, sizeof err) == TRIATTN_ERR_UNSUPPORTED &&
          strstr(err, "'minimum'"), "check: %s", err);
    CHECK(triattn_json_schema_check("{\"type\":\"number\"}", err, sizeof err) == TRIATTN_OK, "check: %s", err);
    CHECK(triattn_json_schema_check(NULL, err, sizeof err) == TRIATTN_ERR_INVALID_ARG, "NULL schema");
}

/* ---- random schemas with a valid document ------------------------------------------------------- */

typedef struct text { char b[16384]; size_t n; } text;

static void put(text * t, const char * s) {
    size_t n = strlen(s);
    if (t->n + n < sizeof t->b) {
        memcpy(t->b + t->n, s, n);
        t->n += n;
    }
    t->b[t->n] = '\0';
}

static void put_sep(text * t, const char * sep) {
    put(t, sep);
    if (tu_below(2)) put(t, " ");
}

/* Writes a random schema into sch and a random document it accepts into doc. */
static void random_pair(text * sch, text * doc, int depth) {
    int kind = (int) tu_below(depth > 2 ? 6 : 10);
    char num[64];
    switch (kind) {
    case 0: {
        int max = (int) tu_int(0, 8);
        snprintf(num, sizeof num, "{\"type\":\"string\",\"maxLength\":%d}", max);
        put(sch, num);
        put(doc, "\"");
        static const char * chars[] = { "a", "Z", " ", "\\n", "\\\"", "\\u00e9", "\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\x98\x80" };
        for (int i = (int) tu_int(0, max); i > 0; i--) put(doc, chars[tu_below(9)]);
        put(doc, "\"");
        break;
    }
    case 1:
        put(sch, "{\"type\":\"integer\"}");
        snprintf(num, sizeof num, "%lld", (long long) tu_int(-100000, 100000));
        put(doc, num);
        break;
    case 2:
        put(sch, "{\"type\":\"number\"}");
        snprintf(num, sizeof num, tu_below(2) ? "%.3f" : "%.2e", tu_symmetric() * 1000.0);
        put(doc, num);
        break;
    case 3:
        put(sch, tu_below(2) ? "{\"type\":\"boolean\"}" : "{\"type\":[\"boolean\",\"null\"]}");
        put(doc, tu_below(2) ? "true" : "false");
        break;
    case 4: {
        put(sch, "{\"enum\":[\"ab\",\"abc\",12,1,null,[1]]}");
        static const char * vals[] = { "\"ab\"", "\"abc\"", "12", "1", "null", "[1]" };
        put(doc, vals[tu_below(6)]);
        break;
    }
    case 5:
        put(sch, "{}");
        put(doc, tu_below(2) ? "{\"k\":[1,{}]}" : "\"any\"");
        break;
    case 6:
    case 7: { /* object with named properties, some required, maybe additional */
        int n = (int) tu_int(1, 4);
        bool add = tu_below(2);
        bool req[4];
        text vals[4];
        char names[4][8];
        put(sch, "{\"type\":\"object\",\"properties\":{");
        for (int i = 0; i < n; i++) {
            snprintf(names[i], sizeof names[i], "%s%d", tu_below(2) ? "k" : "ke", i);
            snprintf(num, sizeof num, "%s\"%s\":", i ? "," : "", names[i]);
            put(sch, num);
            vals[i].n = 0;
            vals[i].b[0] = '\0';
            random_pair(sch, &vals[i], depth + 1);
            req[i] = tu_below(2);
        }
        put(sch, "},\"required\":[");
        int nr = 0;
        for (int i = 0; i < n; i++) {
            if (!req[i]) continue;
            snprintf(num, sizeof num, "%s\"%s\"", nr++ ? "," : "", names[i]);
            put(sch, num);
        }
        put(sch, add ? "],\"additionalProperties\":{\"type\":\"integer\"}}" : "]}");
        /* members in a random order: every required one, optional ones at random, maybe an extra key */
        int order[4] = { 0, 1, 2, 3 };
        for (int i = n - 1; i > 0; i--) {
            int j = (int) tu_below((uint64_t) i + 1), t = order[i]; order[i] = order[j]; order[j] = t;
        }
        put(doc, "{");
        int w = 0;
        for (int i = 0; i < n; i++) {
            int k = order[i];
            if (!req[k] && tu_below(2)) continue;
            if (w++) put_sep(doc, ",");
            snprintf(num, sizeof num, "\"%s\":", names[k]);
            put_sep(doc, num);
            put(doc, vals[k].b);
        }
        if (add && tu_below(2)) {
            if (w++) put_sep(doc, ",");
            put_sep(doc, "\"k\":");
            put(doc, "7");
        }
        put(doc, "}");
        break;
    }
    case 9: { /* anyOf told apart by the required key "t"; the document picks one alternative and leads with it */
        static const char * tags[] = { "\"a\"", "\"ab\"", "1", "12", "null", "true" };
        int n = (int) tu_int(1, 4), pick = (int) tu_below((uint64_t) n);
        put(sch, "{\"anyOf\":[");
        for (int i = 0; i < n; i++) {
            snprintf(num, sizeof num, "%s{\"type\":\"object\",\"properties\":{\"t\":{\"const\":%s},\"v%d\":", i ? "," : "",
                     tags[i], i);
            put(sch, num);
            text val = { .n = 0 };
            val.b[0] = '\0';
            random_pair(sch, &val, depth + 1);
            snprintf(num, sizeof num, "},\"required\":[\"t\",\"v%d\"]}", i);
            put(sch, num);
            if (i == pick) {
                put(doc, "{\"t\":");
                put(doc, tags[i]);
                put_sep(doc, ",");
                snprintf(num, sizeof num, "\"v%d\":", i);
                put_sep(doc, num);
                put(doc, val.b);
                put(doc, "}");
            }
        }
        put(sch, "]}");
        break;
    }
    default: { /* array */
        int min = (int) tu_int(0, 2), max = min + (int) tu_int(0, 2);
        snprintf(num, sizeof num, "{\"type\":\"array\",\"minItems\":%d,\"maxItems\":%d,\"items\":", min, max);
        put(sch, num);
        text item = { .n = 0 };
        item.b[0] = '\0';
        random_pair(sch, &item, depth + 1);
        put(sch, "}");
        put(doc, "[");
        for (int i = (int) tu_int(min, max); i > 0; i--) {
            put(doc, item.b);
            if (i > 1) put_sep(doc, ",");
        }
        put(doc, "]");
        break;
    }
    }
}

/* Feeds random accepted bytes until the document is complete; every state must accept some byte or be
 * complete. Returns the number of bytes fed. */
static int random_walk(const tri_schema * s, char * out, int cap) {
    tri_gstate g;
    tri_gstate_init(s, &g);
    uint8_t ok[256];
    for (int n = 0; n < cap; n++) {
        int m = 0;
        for (int c = 0; c < 256; c++) {
            tri_gstate t;
            tri_gstate_copy(&t, &g);
            if (tri_gstate_step(s, &t, (uint8_t) c)) ok[m++] = (uint8_t) c;
        }
        const bool complete = tri_gstate_complete(s, &g);
        CHECK(m > 0 || complete, "dead end after %d bytes: %.*s", n, n, out);
        if (m == 0 || (complete && tu_below(4) == 0)) return n;
        /* prefer structural bytes so walks finish */
        uint8_t c = ok[tu_below((uint64_t) m)];
        for (int k = 0; k < m && tu_below(3) == 0; k++) {
            if (strchr("\"]}", ok[k])) c = ok[k];
        }
        CHECK(tri_gstate_feed(s, &g, c), "feed of an accepted byte failed");
        out[n] = (char) c;
    }
    return cap;
}

static void test_random_schemas(void) {
    for (int iter = 0; iter < 300; iter++) {
        text sch = { .n = 0 }, doc = { .n = 0 };
        random_pair(&sch, &doc, 0);
        tri_schema * s = compile(sch.b);
        if (!s) continue;
        /* the document and all its prefixes are accepted; only the whole one need be complete */
        tri_gstate g;
        tri_gstate_init(s, &g);
        size_t i = 0;
        while (i < doc.n && tri_gstate_feed(s, &g, (uint8_t) doc.b[i])) i++;
        CHECK(i == doc.n && tri_gstate_complete(s, &g), "schema %s doc %s: stopped at byte %zu", sch.b, doc.b, i);
        /* a truncated container is never complete */
        if (doc.n > 1 && (doc.b[0] == '{' || doc.b[0] == '[')) {
            CHECK(!accepts(s, doc.b, doc.n - 1), "schema %s: truncated %s complete", sch.b, doc.b);
        }
        char walk[4096];
        for (int w = 0; w < 5; w++) random_walk(s, walk, sizeof walk);
        tri_schema_free(s);
    }
}

/* ---- the trie mask against a token-by-token check ----------------------------------------------- */

static void test_trie_mask(void) {
    triattn_model * m = tu_load_default_model("token trie mask");
    if (!m) return;
    char err[256];
    const tri_token_trie * t = tri_token_trie_get(m, err, sizeof err);
    CHECK(t && tri_token_trie_get(m, err, sizeof err) == t, "trie: %s", err);
    const int32_t nv = triattn_vocab_size(m);
    uint8_t * allow = calloc((size_t) nv, 1);
    tri_gstate * scratch = malloc((size_t) (t ? t->max_depth + 1 : 1) * sizeof *scratch);
    for (int iter = 0; t && iter < 6; iter++) {
        text sch = { .n = 0 }, doc = { .n = 0 };
        random_pair(&sch, &doc, 0);
        tri_schema * s = compile(sch.b);
        if (!s) continue;
        tri_gstate g;
        tri_gstate_init(s, &g);
        size_t cut = (size_t) tu_below(doc.n); /* a random prefix of the valid document */
        CHECK(tri_gstate_feed_bytes(s, &g, doc.b, (int32_t) cut), "prefix");
        memset(allow, 0, (size_t) nv);
        int32_t n = tri_token_trie_mask(t, s, &g, scratch, allow);
        int32_t want = 0, bad = 0;
        for (triattn_token id = 0; id < nv; id++) {
            char piece[256];
            int32_t len = 0;
            triattn_token_to_piece(m, id, false, piece, sizeof piece, &len);
            tri_gstate c;
            tri_gstate_copy(&c, &g);
            bool ok = len > 0 && len <= (int32_t) sizeof piece && tri_gstate_feed_bytes(s, &c, piece, len);
            want += ok;
            bad += ok != (allow[id] != 0);
        }
        CHECK(bad == 0 && n == want, "schema %s after %.*s: %d tokens differ, mask %d want %d", sch.b, (int) cut,
              doc.b, bad, n, want);
        tri_schema_free(s);
    }
    free(allow);
    free(scratch);

    /* generation under a schema ends with a complete document; a refused schema fails generate_begin */
    static const char * schema = "{\"type\":\"object\",\"properties\":{\"name\":{\"type\":\"string\",\"maxLength\":12},"
                                 "\"n\":{\"type\":\"integer\"},\"ok\":{\"type\":\"boolean\"}},\"required\":[\"name\",\"n\"]}";
    tri_schema * s = compile(schema);
    struct triattn_session_params sp;
    triattn_session_params_init(&sp);
    sp.n_ctx = 256;
    sp.n_threads = 2;
    triattn_session * sess = NULL;
    CHECK(triattn_session_create(m, &sp, &sess, err, sizeof err) == TRIATTN_OK, "session: %s", err);
    for (int run = 0; sess && s && run < 3; run++) {
        struct triattn_generate_params gp;
        triattn_generate_params_init(&gp);
        gp.max_tokens = 48;
        gp.json_schema = schema;
        gp.sampling.temperature = run == 0 ? 0.0f : 1.0f;
        gp.sampling.seed = tu_u64() >> 1;
        triattn_session_reset(sess);
        text out = { .n = 0 };
        out.b[0] = '\0';
        enum triattn_status st = triattn_generate_begin(sess, "A JSON record:", &gp);
        bool done = false;
        while (st == TRIATTN_OK && !done) {
            const char * piece;
            size_t len;
            st = triattn_generate_next(sess, &piece, &len, &done);
            if (st == TRIATTN_OK && len < sizeof out.b - out.n) {
                memcpy(out.b + out.n, piece, len);
                out.n += len;
                out.b[out.n] = '\0';
            }
        }
        struct triattn_generate_result res;
        triattn_generate_get_result(sess, &res);
        CHECK(st == TRIATTN_OK, "generate: %s", triattn_session_last_error(sess));
        if (res.stop_reason == TRIATTN_STOP_EOG) {
            CHECK(accepts(s, out.b, out.n), "run %d: output %s does not match", run, out.b);
        } else {
            tri_gstate g;
            tri_gstate_init(s, &g);
            CHECK(res.stop_reason == TRIATTN_STOP_LENGTH && tri_gstate_feed_bytes(s, &g, out.b, (int32_t) out.n),
                  "run %d: stop %d, output %s is not a valid prefix", run, (int) res.stop_reason, out.b);
        }
    }
    struct triattn_generate_params gp;
    triattn_generate_params_init(&gp);
    gp.json_schema = "{\"type\":\"string\",\"format\":\"date\"}";
    if (sess) {
        CHECK(triattn_generate_begin(sess, "x", &gp) == TRIATTN_ERR_UNSUPPORTED &&
              strstr(triattn_session_last_error(sess), "unsupported keyword 'format' at $"),
              "refused schema: %s", triattn_session_last_error(sess));
    }
    triattn_session_free(sess);
    tri_schema_free(s);
    triattn_model_free(m);
}

int main(void) {
    tu_seed_init("TRI_TEST_SEED");
    test_hand_cases();
    test_errors();
    test_random_schemas();
    test_trie_mask();
    return tu_finish();
}
