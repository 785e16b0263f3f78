/* fuzz_tools: OpenAI tools arrays, tool_choice and model output through the tool-call parser of each chat format.
 * Input: one byte of options (format, strict, parallel, choice), the tools array's text, a NUL byte, then the
 * model's output, fed in pieces whose lengths the output's own bytes pick. Every feed returns a JSON array of
 * deltas; the final message is a JSON object whose tool_calls count is the parser's call count and whose calls
 * each name a declared tool. Rendering a conversation with the same tools succeeds or fails with a message. */
#include "chat_tools.h"
#include "json.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"

static const char * const formats[] = { "chatml", "llama3", "qwen", "mistral", "gemma", "llama2", "deepseek-r1", NULL };
static const char * const choices[] = { NULL, "\"none\"", "\"required\"", "\"auto\"" };

static json_value * parse_json(const char * s, size_t n, const char * what) {
    struct json_limits lim = { .max_depth = 128, .max_nodes = 1 << 20 };
    char err[256];
    json_value * v = json_parse(s, n, &lim, err, sizeof err);
    FUZZ_CHECK(v, "%s is not JSON (%s): %.*s", what, err, (int) (n > 400 ? 400 : n), s);
    return v;
}

static bool declared(const json_value * tools, const json_value * name) {
    if (!tools || tools->type != JSON_ARRAY || !name || name->type != JSON_STRING) return false;
    for (size_t i = 0; i < tools->n; i++) {
        const json_value * fn = json_get(&tools->items[i], "function");
        const json_value * nm = fn ? json_get(fn, "name") : NULL;
        if (nm && nm->type == JSON_STRING && nm->len == name->len && memcmp(nm->str, name->str, nm->len) == 0) {
            return true;
        }
    }
    return false;
}

int LLVMFuzzerTestOneInput(const uint8_t * data, size_t size) {
    if (size < 1) return 0;
    const uint8_t opt = data[0];
    const char * text = (const char *) data + 1;
    size_t n = size - 1;
    const char * nul = memchr(text, '\0', n);
    if (!nul) return 0;
    char * tools = fuzz_text(text, (size_t) (nul - text));
    const char * out = nul + 1;
    const size_t out_len = n - (size_t) (nul - text) - 1;

    struct triattn_tool_options o;
    triattn_tool_options_init(&o);
    o.tools = tools;
    o.tool_choice = choices[(opt >> 3) & 3];
    o.strict_tool_calls = opt & 32;
    o.parallel_tool_calls = !(opt & 64);
    o.id_seed = 7;
    const char * format = formats[opt & 7];

    char err[512] = "";
    triattn_tool_parser * p = NULL;
    enum triattn_status st = tri_tool_parser_create(NULL, format, &o, &p, err, sizeof err);
    if (st != TRIATTN_OK) {
        FUZZ_CHECK(!p && err[0], "a refused parser without a message (status %d)", st);
        free(tools);
        return 0;
    }
    for (size_t off = 0; off <= out_len;) {
        size_t piece = off < out_len ? 1 + (size_t) (uint8_t) out[off] % 7 : 0;
        if (piece > out_len - off) piece = out_len - off;
        const bool final = off + piece == out_len;
        const char * deltas = NULL;
        size_t deltas_len = 0;
        st = triattn_tool_parser_feed(p, out + off, piece, final, &deltas, &deltas_len);
        FUZZ_CHECK(st == TRIATTN_OK, "feed failed with status %d", st);
        json_value * d = parse_json(deltas, deltas_len, "the deltas");
        FUZZ_CHECK(d->type == JSON_ARRAY, "the deltas are not an array");
        json_free(d);
        off += piece;
        if (final) break;
    }
    size_t mlen = 0;
    const char * msg = triattn_tool_parser_message(p, &mlen);
    json_value * m = parse_json(msg, mlen, "the message");
    FUZZ_CHECK(m->type == JSON_OBJECT && json_get(m, "content"), "the message is not an object with content");
    const json_value * calls = json_get(m, "tool_calls");
    const int32_t n_calls = triattn_tool_parser_n_calls(p);
    FUZZ_CHECK(n_calls == 0 ? !calls : (calls && calls->type == JSON_ARRAY && calls->n == (size_t) n_calls),
               "%d calls parsed, the message holds %zu", n_calls, calls ? calls->n : 0);
    if (n_calls > 0) {
        json_value * t = parse_json(tools, strlen(tools), "a tools array that the parser took");
        for (size_t i = 0; i < calls->n; i++) {
            const json_value * fn = json_get(&calls->items[i], "function");
            FUZZ_CHECK(fn && declared(t, json_get(fn, "name")), "call %zu names no declared tool", i);
            const json_value * args = json_get(fn, "arguments");
            FUZZ_CHECK(args && args->type == JSON_STRING, "call %zu has no arguments string", i);
            json_free(parse_json(args->str, args->len, "a call's arguments"));
        }
        json_free(t);
    }
    json_free(m);
    triattn_tool_parser_free(p);

    struct triattn_chat_tool_message msgs[2];
    memset(msgs, 0, sizeof msgs);
    msgs[0].role = "user";
    msgs[0].content = "What is the weather?";
    msgs[1].role = "assistant";
    char * reply = fuzz_text(out, out_len);
    msgs[1].content = reply;
    size_t need = 0;
    static char buf[1 << 16];
    st = tri_chat_apply_tools(NULL, format, "", msgs, 2, &o, true, buf, sizeof buf, &need, err, sizeof err);
    FUZZ_CHECK(st == TRIATTN_OK || err[0], "rendering failed without a message (status %d)", st);
    free(reply);
    free(tools);
    return 0;
}
