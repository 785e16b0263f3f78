/* fuzz_json: the JSON of requests and tool calls, from any bytes.
 * - The server's parser (tools/server/json.c): a document it accepts serialises to text that parses again
 *   to the same serialisation (a fixed point), and every string in it is valid UTF-8.
 * - The engine's JSON slices (src/chat_tools_json.c): accept what the server's parser accepts and reject what
 *   it rejects (both are RFC 8259 with the same depth limit), but for \u escapes of lone surrogates, which
 *   RFC 8259's grammar admits and the slices read as U+FFFD while the server refuses them, and for numbers past
 *   double's range, which the server refuses; a value's every proper prefix scans as a value
 *   still to come, never as bad text; equality with its own serialisation holds. */
#include "chat_tools.h"
#include "json.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"

static void strings_valid(const json_value * v) {
    switch (v->type) {
        case JSON_STRING:
            FUZZ_CHECK(json_utf8_valid(v->str, v->len), "a parsed string is not valid UTF-8");
            break;
        case JSON_ARRAY:
        case JSON_OBJECT:
            for (size_t i = 0; i < v->n; i++) {
                if (v->type == JSON_OBJECT) {
                    FUZZ_CHECK(json_utf8_valid(v->keys[i], v->key_lens[i]), "a parsed key is not valid UTF-8");
                }
                strings_valid(&v->items[i]);
            }
            break;
        default:
            break;
    }
}

static int json_depth(const json_value * v) {
    int d = 0;
    if (v->type == JSON_ARRAY || v->type == JSON_OBJECT) {
        for (size_t i = 0; i < v->n; i++) {
            int c = json_depth(&v->items[i]);
            if (c > d) d = c;
        }
        return d + 1;
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t * data, size_t size) {
    const char * text = (const char *) data;
    struct json_limits lim = { .max_depth = 64, .max_nodes = 1 << 16, .max_bytes = 64 * size + 65536 };
    char err[256];
    json_value * v = json_parse(text, size, &lim, err, sizeof err);
    tri_js slice;
    const bool sliced = tri_js_parse((tri_js) { text, size }, &slice);
    if (!v) {
        FUZZ_CHECK(err[0], "json_parse failed without a message");
        if (!strstr(err, JSON_ERR_BUDGET) && !strstr(err, "too many") && !strstr(err, "too deep") &&
            !strstr(err, "out of memory") && !strstr(err, "surrogate") &&
            !strstr(err, "out of range")) {
            FUZZ_CHECK(!sliced, "tri_js_parse accepts what json_parse refuses: %s", err);
        }
        return 0;
    }
    FUZZ_CHECK(sliced || json_depth(v) >= 64, "tri_js_parse refuses what json_parse accepts");
    strings_valid(v);

    jbuf a, b;
    jb_init(&a);
    jb_init(&b);
    jb_value(&a, v);
    FUZZ_CHECK(!a.oom, "serialisation ran out of memory");
    json_value * w = json_parse(a.data, a.len, &lim, err, sizeof err);
    FUZZ_CHECK(w, "the serialisation does not parse: %s", err);
    jb_value(&b, w);
    FUZZ_CHECK(a.len == b.len && memcmp(a.data, b.data, a.len) == 0, "serialisation is not a fixed point");

    tri_js again;
    FUZZ_CHECK(tri_js_parse((tri_js) { a.data, a.len }, &again), "tri_js_parse refuses a serialisation");
    FUZZ_CHECK(tri_js_equal(slice, again), "a value differs from its serialisation under tri_js_equal");

    if (slice.n <= 512) {
        for (size_t k = 1; k < slice.n; k++) {
            const char * end = NULL;
            enum tri_js_scan r = tri_js_value_scan(slice.p, slice.p + k, &end);
            FUZZ_CHECK(r != TRI_JS_BAD, "a proper prefix of %zu bytes of a value scans as bad at %td", k,
                       end ? end - slice.p : -1);
        }
        const char * end = NULL;
        FUZZ_CHECK(tri_js_value_scan(slice.p, slice.p + slice.n, &end) == TRI_JS_DONE && end == slice.p + slice.n,
                   "a whole value does not scan as done at its end");
    }
    json_free(w);
    json_free(v);
    jb_free(&a);
    jb_free(&b);
    return 0;
}
