/* Tool calls in chat: OpenAI tools / tool_choice rendered into a chat format's prompt, the forced call's
 * JSON Schema, and a streaming parser of model output into OpenAI tool-call deltas. */
#ifndef TRI_CHAT_TOOLS_H
#define TRI_CHAT_TOOLS_H

#include "common.h"
#include "triattn.h"

/* ---- JSON slices (chat_tools_json.c) ---- */

typedef struct {
    const char * p;
    size_t       n;
} tri_js;  /* one JSON value's text (or any text) */

/* s[0..n) as a quoted JSON string; invalid UTF-8 bytes become U+FFFD. */
void tri_gbuf_json_str(tri_gbuf * b, const char * s, size_t n);

const char * tri_js_ws(const char * p, const char * e);
/* End of the valid JSON value at p (after whitespace), or NULL. */
const char * tri_js_value_end(const char * p, const char * e);
/* The JSON value at p (after whitespace) as far as the text goes: DONE with *end its end, MORE when p..e is a
 * proper prefix of a value, BAD with *end the first byte that cannot continue one. */
enum tri_js_scan { TRI_JS_DONE, TRI_JS_MORE, TRI_JS_BAD };
enum tri_js_scan tri_js_value_scan(const char * p, const char * e, const char ** end);
/* text is exactly one JSON value (surrounding whitespace allowed): *value = it, trimmed. */
bool tri_js_parse(tri_js text, tri_js * value);

typedef struct {
    const char * p, * e;
} tri_js_iter;
/* Members of a valid object (key != NULL) or elements of a valid array (key NULL). */
tri_js_iter tri_js_iter_of(tri_js container);
bool        tri_js_next(tri_js_iter * it, tri_js * key, tri_js * value);
/* Member `key` of a valid object; false when obj is not an object or has no such key. */
bool tri_js_get(tri_js obj, const char * key, tri_js * value);
/* A valid JSON string equals s once unescaped. */
bool tri_js_str_eq(tri_js str, const char * s);
/* Two valid JSON strings are equal once unescaped. Neither allocates. */
bool tri_js_str_same(tri_js a, tri_js b);
/* Code points of a valid JSON string once unescaped (no allocation). */
size_t tri_js_str_chars(tri_js str);
/* Appends a valid JSON string's unescaped UTF-8. */
void tri_js_unescape(tri_js str, tri_gbuf * out);
/* Re-spaces a valid value as Python's json.dumps does: ", " and ": " (indent 0), or indent spaces. */
void tri_js_dump(tri_gbuf * out, tri_js value, int indent);

/* ---- validation (chat_tools_check.c) ---- */

/* Two valid values are equal as JSON (numbers by value, strings unescaped, members in any order). */
bool tri_js_equal(tri_js a, tri_js b);
/* A valid value satisfies a JSON Schema (the keywords listed in chat_tools_check.c; others do not constrain). */
bool tri_js_valid(tri_js value, tri_js schema);

/* ---- tools (chat_tools.c) ---- */

enum tri_tool_choice { TRI_TOOL_AUTO, TRI_TOOL_NONE, TRI_TOOL_REQUIRED, TRI_TOOL_NAMED };

/* How a chat format writes calls: <tool_call> JSON tags (ChatML/Hermes; also the generic fallback), or
 * Llama 3's bare {"name", "parameters"} object. */
enum tri_tool_syntax { TRI_TOOLS_HERMES, TRI_TOOLS_LLAMA3, TRI_TOOLS_GENERIC };

/* A validated request: the tools array and the choice. */
struct tri_tools {
    tri_js               tools;      /* the array ("[]" when none) */
    size_t               n_tools;
    enum tri_tool_choice choice;
    tri_js               named;      /* TRI_TOOL_NAMED: the function name (a JSON string) */
    bool                 parallel;
    bool                 strict;     /* parse only the format's own call syntax */
    uint64_t             id_seed;
    enum tri_tool_syntax syntax;
};

enum triattn_status tri_tools_init(struct tri_tools * t, const struct triattn_tool_options * o, const char * tmpl,
                                   const char * format, char * err, size_t err_size);
/* Index of the tool named by the JSON string name, or -1. */
long tri_tools_find(const struct tri_tools * t, tri_js name);
/* The JSON Schema of tool i's arguments ({"type": "object", "properties": {}} when it declares none). */
tri_js tri_tools_params(const struct tri_tools * t, size_t i);
/* tool_choice forces a call. */
bool tri_tools_forced(const struct tri_tools * t);

enum triattn_status tri_chat_apply_tools(const char * tmpl, const char * format, const char * bos_text,
                                         const struct triattn_chat_tool_message * messages, size_t n_messages,
                                         const struct triattn_tool_options * opts, bool add_assistant, char * buf,
                                         size_t capacity, size_t * n_out, char * err, size_t err_size);
enum triattn_status tri_tool_call_schema(const char * tmpl, const char * format,
                                         const struct triattn_tool_options * opts, char * buf, size_t capacity,
                                         size_t * n_out, char * err, size_t err_size);

/* ---- output parser (chat_tools_parse.c) ---- */

enum triattn_status tri_tool_parser_create(const char * tmpl, const char * format,
                                           const struct triattn_tool_options * opts, triattn_tool_parser ** out,
                                           char * err, size_t err_size);

#endif
