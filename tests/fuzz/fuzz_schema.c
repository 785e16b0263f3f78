/* fuzz_schema: response_format JSON Schemas and the bytes the grammar lets a model write.
 * Input: a schema's text, a NUL byte, then candidate output bytes. The schema compiles or is refused with a
 * message. When it compiles, the output's bytes are fed one by one and each refused byte skipped:
 * - a refused byte leaves the state as it was;
 * - the state after any accepted prefix is a complete document or can still be extended (no dead end);
 * - a schema that compiles is JSON;
 * - a complete document is one JSON value (the server's strict parser) that satisfies the schema as the tool-call
 *   validator reads it (src/chat_tools_check.c). */
#include "chat_tools.h"
#include "grammar.h"
#include "json.h"
#include "json_schema.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"

static bool same_state(const tri_gstate * a, const tri_gstate * b) {
    return a->depth == b->depth && memcmp(a->f, b->f, (size_t) a->depth * sizeof a->f[0]) == 0;
}

static void check_document(const char * schema, size_t schema_len, const char * doc, size_t n) {
    struct json_limits lim = { .max_depth = 64, .max_nodes = 1 << 16 };
    char err[256];
    json_value * v = json_parse(doc, n, &lim, err, sizeof err);
    FUZZ_CHECK(v, "the grammar completed a document that does not parse (%s): %.*s", err, (int) n, doc);
    json_free(v);
    tri_js value, sch;
    FUZZ_CHECK(tri_js_parse((tri_js) { doc, n }, &value), "tri_js_parse refuses a completed document");
    FUZZ_CHECK(tri_js_parse((tri_js) { schema, schema_len }, &sch), "tri_js_parse refuses a compiled schema");
    FUZZ_CHECK(tri_js_valid(value, sch), "the grammar completed a document the schema rejects: %.*s", (int) n, doc);
}

int LLVMFuzzerTestOneInput(const uint8_t * data, size_t size) {
    const char * text = (const char *) data;
    const char * nul = memchr(text, '\0', size);
    const size_t schema_len = nul ? (size_t) (nul - text) : size;
    const char * out = nul ? nul + 1 : text + size;
    const size_t out_len = nul ? size - schema_len - 1 : 0;

    tri_schema * s = NULL;
    char err[256] = "";
    enum triattn_status st = tri_schema_compile(text, schema_len, &s, err, sizeof err);
    if (st != TRIATTN_OK) {
        FUZZ_CHECK(!s && err[0], "a refused schema without a message (status %d)", st);
        return 0;
    }
    {
        struct json_limits lim = { .max_depth = 64, .max_nodes = 1 << 16 };
        json_value * v = json_parse(text, schema_len, &lim, err, sizeof err);
        FUZZ_CHECK(v, "a schema compiled that is not JSON (%s)", err);
        json_free(v);
    }
    tri_gstate g, before;
    tri_gstate_init(s, &g);
    char * doc = malloc(out_len + 1);
    size_t n = 0;
    for (size_t i = 0; i < out_len; i++) {
        tri_gstate_copy(&before, &g);
        if (!tri_gstate_feed(s, &g, (uint8_t) out[i])) {
            FUZZ_CHECK(same_state(&before, &g), "a refused byte changed the state");
            continue;
        }
        doc[n++] = out[i];
        const bool complete = tri_gstate_complete(s, &g);
        FUZZ_CHECK(complete || tri_gstate_can_continue(s, &g), "a dead end after %zu accepted bytes", n);
        if (complete) check_document(text, schema_len, doc, n);
        (void) tri_gstate_plain_room(s, &g);
    }
    free(doc);
    tri_schema_free(s);
    return 0;
}
