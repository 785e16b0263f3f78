/* Chat formats: recognise a GGUF tokenizer.chat_template by its distinctive substrings and render messages
 * exactly as that Jinja template would (system/user/assistant messages, add_generation_prompt), without a
 * Jinja interpreter. No allocation: everything is written straight into the caller's buffer. */
#define _POSIX_C_SOURCE 200809L  /* localtime_r */
#include "chat.h"

#include "common.h"
#include "unicode.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

enum tri_chat_format {
    TRI_CHAT_CHATML,
    TRI_CHAT_QWEN,
    TRI_CHAT_QWEN3,
    TRI_CHAT_LLAMA3,
    TRI_CHAT_LLAMA2,
    TRI_CHAT_MISTRAL,
    TRI_CHAT_GEMMA,
    TRI_CHAT_DEEPSEEK_R1,
    TRI_CHAT_COUNT,
};

static const char * const k_format_names[TRI_CHAT_COUNT] = {
    "chatml", "qwen", "qwen3", "llama3", "llama2", "mistral", "gemma", "deepseek-r1",
};

#define TRI_CHAT_NAME_LIST "chatml, qwen, qwen3, llama3, llama2, mistral, gemma, deepseek-r1"

static const char k_qwen_default_system[] = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.";
static const char k_eos_sp[]              = "</s>";  /* SentencePiece EOS spelled by the Llama 2 / Mistral templates */
static const char k_ds_user[]             = "<\xEF\xBD\x9C" "User\xEF\xBD\x9C>";
static const char k_ds_assistant[]        = "<\xEF\xBD\x9C" "Assistant\xEF\xBD\x9C>";
static const char k_ds_eos[]              = "<\xEF\xBD\x9C" "end\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>";

/* ---- small string views ------------------------------------------------------------------------ */

typedef struct {
    const char * p;
    size_t       n;
} tri_sv;

static tri_sv sv_of(const char * s) { return (tri_sv){ s, strlen(s) }; }

/* First occurrence of needle in hay, or NULL. */
static const char * sv_find(tri_sv hay, const char * needle) {
    size_t m = strlen(needle);
    if (m == 0) {
        return hay.p;
    }
    for (size_t i = 0; i + m <= hay.n; i++) {
        if (hay.p[i] == needle[0] && memcmp(hay.p + i, needle, m) == 0) {
            return hay.p + i;
        }
    }
    return NULL;
}

/* Last occurrence of needle in hay, or NULL. */
static const char * sv_rfind(tri_sv hay, const char * needle) {
    size_t m = strlen(needle);
    if (m > hay.n) {
        return NULL;
    }
    for (size_t i = hay.n - m + 1; i-- > 0;) {
        if (memcmp(hay.p + i, needle, m) == 0) {
            return hay.p + i;
        }
    }
    return NULL;
}

/* Python's str.isspace(), which Jinja's trim filter and str.strip() use. */
static bool py_isspace(uint32_t c) {
    return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
           c == 0x3000;
}

/* str.lstrip() / str.rstrip() / str.strip() with no argument: Unicode whitespace. */
static tri_sv sv_lstrip(tri_sv s) {
    const unsigned char * p = (const unsigned char *) s.p;
    size_t b = 0;
    while (b < s.n) {
        size_t         k;
        const uint32_t cp = tri_utf8_decode(p + b, s.n - b, &k);
        if (!py_isspace(cp)) {
            break;
        }
        b += k;
    }
    return (tri_sv){ s.p + b, s.n - b };
}

static tri_sv sv_rstrip(tri_sv s) {
    const unsigned char * p = (const unsigned char *) s.p;
    size_t e = s.n;
    while (e > 0) {
        size_t st = e - 1;  /* walk back to the lead byte of the last character */
        while (st > 0 && (p[st] & 0xC0) == 0x80 && e - st < 4) {
            st--;
        }
        size_t         k;
        const uint32_t cp = tri_utf8_decode(p + st, e - st, &k);
        if (st + k != e || !py_isspace(cp)) {
            break;
        }
        e = st;
    }
    return (tri_sv){ s.p, e };
}

static tri_sv sv_strip(tri_sv s) { return sv_rstrip(sv_lstrip(s)); }

static tri_sv sv_lstrip_nl(tri_sv s) {
    while (s.n > 0 && s.p[0] == '\n') {
        s.p++;
        s.n--;
    }
    return s;
}

static tri_sv sv_rstrip_nl(tri_sv s) {
    while (s.n > 0 && s.p[s.n - 1] == '\n') {
        s.n--;
    }
    return s;
}

/* ---- output into the caller's buffer ----------------------------------------------------------- */

typedef tri_strbuf tri_out;

static void out_put(tri_out * o, const char * s, size_t n) { tri_strbuf_put(o, s, n); }

static void out_str(tri_out * o, const char * s) { out_put(o, s, strlen(s)); }
static void out_sv(tri_out * o, tri_sv s) { out_put(o, s.p, s.n); }

/* Writes the body of a Jinja string literal, resolving its backslash escapes. */
static void out_unescape(tri_out * o, tri_sv lit) {
    for (size_t i = 0; i < lit.n; i++) {
        char c = lit.p[i];
        if (c == '\\' && i + 1 < lit.n) {
            char e = lit.p[++i];
            c = e == 'n' ? '\n' : e == 't' ? '\t' : e == 'r' ? '\r' : e;
        }
        out_put(o, &c, 1);
    }
}

/* ---- what the template says beyond its family ---------------------------------------------------- */

struct tri_chat_opts {
    tri_sv default_system;     /* ChatML family: system prompt injected when the first message is not one */
    bool   default_escaped;    /* default_system is a Jinja literal body (escapes to resolve) */
    int    llama3_header;      /* 0: none; 1: Llama 3.1 system header with a fixed date; 2: today's date */
    tri_sv llama3_date;        /* the fixed date of header mode 1 */
    bool   deepseek_think;     /* generation prompt opens a <think> block */
};

/* Finds a literal '<|im_start|>system\n...<|im_end|>' in a ChatML template: its body is the default system
 * prompt (SmolLM2, Qwen2, Qwen2.5 inject one when the conversation has none). */
static bool find_default_system(tri_sv t, tri_sv * out) {
    static const char head[] = "<|im_start|>system";
    size_t            hn = sizeof head - 1;
    for (size_t i = 1; i + hn < t.n; i++) {
        if (memcmp(t.p + i, head, hn) != 0) {
            continue;
        }
        char q = t.p[i - 1];
        if (q != '\'' && q != '"') {
            continue;
        }
        size_t j = i + hn;
        if (t.p[j] == '\n') {
            j += 1;
        } else if (j + 1 < t.n && t.p[j] == '\\' && t.p[j + 1] == 'n') {
            j += 2;
        } else {
            continue;
        }
        size_t b = j;
        for (; j < t.n; j++) {
            if (t.p[j] == '\\') {
                j++;
                continue;
            }
            if (t.p[j] == q) {
                break;  /* the literal ends before <|im_end|>: content comes from a variable */
            }
            if (t.n - j >= 10 && memcmp(t.p + j, "<|im_end|>", 10) == 0) {
                *out = (tri_sv){ t.p + b, j - b };
                return true;
            }
        }
    }
    return false;
}

/* Value of the first string literal after `key` (e.g. 'date_string = "26 Jul 2024"'). */
static bool find_literal_after(tri_sv t, const char * key, tri_sv * out) {
    const char * k = sv_find(t, key);
    if (!k) {
        return false;
    }
    const char * end = t.p + t.n;
    const char * p   = k + strlen(key);
    while (p < end && *p != '"' && *p != '\'' && *p != '\n') {
        p++;
    }
    if (p >= end || *p == '\n') {
        return false;
    }
    char         q = *p++;
    const char * b = p;
    while (p < end && *p != q) {
        p++;
    }
    if (p >= end) {
        return false;
    }
    *out = (tri_sv){ b, (size_t) (p - b) };
    return true;
}

static void opts_from_template(enum tri_chat_format f, const char * tmpl, struct tri_chat_opts * o) {
    memset(o, 0, sizeof *o);
    tri_sv t = tmpl ? sv_of(tmpl) : (tri_sv){ "", 0 };
    if (f == TRI_CHAT_CHATML || f == TRI_CHAT_QWEN) {
        if (find_default_system(t, &o->default_system)) {
            o->default_escaped = true;
        } else if (f == TRI_CHAT_QWEN) {
            o->default_system = sv_of(k_qwen_default_system);
        }
    }
    if (f == TRI_CHAT_LLAMA3 && sv_find(t, "Cutting Knowledge Date")) {
        o->llama3_header = sv_find(t, "strftime_now") ? 2 : 1;
        if (!find_literal_after(t, "date_string = ", &o->llama3_date)) {
            o->llama3_date = sv_of("26 Jul 2024");
        }
    }
    if (f == TRI_CHAT_DEEPSEEK_R1) {
        /* Newer R1 templates open the think block in the generation prompt; with no template assume them. */
        o->deepseek_think = !tmpl || sv_find(t, "<\xEF\xBD\x9C" "Assistant\xEF\xBD\x9C><think>") != NULL;
    }
}

/* ---- detection ----------------------------------------------------------------------------------- */

const char * tri_chat_detect(const char * tmpl) {
    if (!tmpl || !*tmpl) {
        return NULL;
    }
    tri_sv t = sv_of(tmpl);
    if (sv_find(t, k_ds_user)) {
        return k_format_names[TRI_CHAT_DEEPSEEK_R1];
    }
    if (sv_find(t, "<|start_header_id|>")) {
        return k_format_names[TRI_CHAT_LLAMA3];
    }
    if (sv_find(t, "<start_of_turn>")) {
        return k_format_names[TRI_CHAT_GEMMA];
    }
    if (sv_find(t, "<|im_start|>")) {
        if (sv_find(t, "<think>")) {
            return k_format_names[TRI_CHAT_QWEN3];
        }
        if (sv_find(t, "You are Qwen")) {
            return k_format_names[TRI_CHAT_QWEN];
        }
        return k_format_names[TRI_CHAT_CHATML];
    }
    if (sv_find(t, "[INST]")) {
        return sv_find(t, "<<SYS>>") ? k_format_names[TRI_CHAT_LLAMA2] : k_format_names[TRI_CHAT_MISTRAL];
    }
    return NULL;
}

static int format_index(const char * name) {
    for (int i = 0; i < TRI_CHAT_COUNT; i++) {
        if (strcmp(name, k_format_names[i]) == 0) {
            return i;
        }
    }
    return -1;
}

/* ---- renderers ----------------------------------------------------------------------------------- */

typedef const struct triattn_chat_message tri_msg;

static bool is_role(tri_msg * m, const char * r) { return strcmp(m->role, r) == 0; }

/* The Llama 2 / Mistral / Gemma templates raise when user and assistant turns do not alternate. */
static enum triattn_status check_alternation(tri_msg * m, size_t i, size_t loop_i, char * err, size_t err_size) {
    if (is_role(m, "user") != (loop_i % 2 == 0)) {
        return tri_fail(err, err_size, TRIATTN_ERR_INVALID_ARG,
                        "chat: message %zu (%s): conversation roles must alternate user/assistant/user/assistant "
                        "(after an optional first system message)", i, m->role);
    }
    return TRIATTN_OK;
}

static void render_chatml(tri_out * o, const struct tri_chat_opts * op, tri_msg * m, size_t n, bool gen) {
    if (n > 0 && op->default_system.p && !is_role(&m[0], "system")) {
        out_str(o, "<|im_start|>system\n");
        if (op->default_escaped) {
            out_unescape(o, op->default_system);
        } else {
            out_sv(o, op->default_system);
        }
        out_str(o, "<|im_end|>\n");
    }
    for (size_t i = 0; i < n; i++) {
        out_str(o, "<|im_start|>");
        out_str(o, m[i].role);
        out_str(o, "\n");
        out_str(o, m[i].content);
        out_str(o, "<|im_end|>\n");
    }
    if (gen) {
        out_str(o, "<|im_start|>assistant\n");
    }
}

/* Qwen3: ChatML, but assistant turns carry their reasoning only after the last user query. */
static void render_qwen3(tri_out * o, tri_msg * m, size_t n, bool gen) {
    size_t last_query = n > 0 ? n - 1 : 0;
    for (size_t i = n; i-- > 0;) {
        tri_sv c = sv_of(m[i].content);
        bool tool_resp = c.n >= 31 && memcmp(c.p, "<tool_response>", 15) == 0 &&
                         memcmp(c.p + c.n - 16, "</tool_response>", 16) == 0;
        if (is_role(&m[i], "user") && !tool_resp) {
            last_query = i;
            break;
        }
    }
    for (size_t i = 0; i < n; i++) {
        tri_sv c = sv_of(m[i].content);
        out_str(o, "<|im_start|>");
        out_str(o, m[i].role);
        out_str(o, "\n");
        if (!is_role(&m[i], "assistant")) {
            out_sv(o, c);
            out_str(o, "<|im_end|>\n");
            continue;
        }
        tri_sv content = c, reasoning = { "", 0 };
        const char * close = sv_find(c, "</think>");
        if (close) {
            const char * last_close = sv_rfind(c, "</think>");
            content = sv_lstrip_nl((tri_sv){ last_close + 8, (size_t) (c.p + c.n - (last_close + 8)) });
            tri_sv       before = sv_rstrip_nl((tri_sv){ c.p, (size_t) (close - c.p) });
            const char * open   = sv_rfind(before, "<think>");
            if (open) {
                before = (tri_sv){ open + 7, (size_t) (before.p + before.n - (open + 7)) };
            }
            reasoning = sv_lstrip_nl(before);
        }
        if (i > last_query && (i == n - 1 || reasoning.n > 0)) {
            out_str(o, "<think>\n");
            out_sv(o, sv_lstrip_nl(sv_rstrip_nl(reasoning)));
            out_str(o, "\n</think>\n\n");
            out_sv(o, sv_lstrip_nl(content));
        } else {
            out_sv(o, content);
        }
        out_str(o, "<|im_end|>\n");
    }
    if (gen) {
        out_str(o, "<|im_start|>assistant\n");
    }
}

static void llama3_turn(tri_out * o, const char * role, tri_sv content) {
    out_str(o, "<|start_header_id|>");
    out_str(o, role);
    out_str(o, "<|end_header_id|>\n\n");
    out_sv(o, sv_strip(content));
    out_str(o, "<|eot_id|>");
}

static void render_llama3(tri_out * o, const struct tri_chat_opts * op, const char * bos, tri_msg * m, size_t n,
                          bool gen) {
    size_t first = 0;
    if (op->llama3_header) {
        /* Llama 3.1+: BOS, then a system turn that always states the knowledge cutoff and date. */
        char   today[32];
        tri_sv date = op->llama3_date;
        if (op->llama3_header == 2) {
            time_t    now = time(NULL);
            struct tm tmv;
            if (localtime_r(&now, &tmv) && strftime(today, sizeof today, "%d %b %Y", &tmv) > 0) {
                date = sv_of(today);
            }
        }
        tri_sv sys = { "", 0 };
        if (n > 0 && is_role(&m[0], "system")) {
            sys   = sv_strip(sv_of(m[0].content));
            first = 1;
        }
        out_str(o, bos);
        out_str(o, "<|start_header_id|>system<|end_header_id|>\n\n");
        out_str(o, "Cutting Knowledge Date: December 2023\nToday Date: ");
        out_sv(o, date);
        out_str(o, "\n\n");
        out_sv(o, sys);
        out_str(o, "<|eot_id|>");
    }
    for (size_t i = first; i < n; i++) {
        if (i == 0 && !op->llama3_header) {
            out_str(o, bos);
        }
        llama3_turn(o, m[i].role, sv_of(m[i].content));
    }
    if (gen) {
        out_str(o, "<|start_header_id|>assistant<|end_header_id|>\n\n");
    }
}

/* Llama 2 chat: BOS [INST] (<<SYS>>) user [/INST] assistant EOS; no generation prompt of its own. */
static void llama2_content(tri_out * o, const char * sys, tri_sv c) {
    if (!sys) {
        out_sv(o, sv_strip(c));
        return;
    }
    /* strip() runs over '<<SYS>>\n' + sys + '\n<</SYS>>\n\n' + content: the left end is '<', and on the
     * right it can eat back into the block only through the '\n\n' when the content is all whitespace. */
    out_str(o, "<<SYS>>\n");
    out_str(o, sys);
    tri_sv cs = sv_rstrip(c);
    if (cs.n == 0) {
        out_str(o, "\n<</SYS>>");
        return;
    }
    out_str(o, "\n<</SYS>>\n\n");
    out_sv(o, cs);
}

static enum triattn_status render_llama2(tri_out * o, const char * bos, tri_msg * m, size_t n, char * err,
                                         size_t err_size) {
    size_t       first = n > 0 && is_role(&m[0], "system") ? 1 : 0;
    const char * sys   = first ? m[0].content : NULL;
    for (size_t i = first; i < n; i++) {
        enum triattn_status st = check_alternation(&m[i], i, i - first, err, err_size);
        if (st != TRIATTN_OK) {
            return st;
        }
    }
    for (size_t i = first; i < n; i++) {
        const char * s = i == first ? sys : NULL;
        if (is_role(&m[i], "user")) {
            out_str(o, bos);
            out_str(o, "[INST] ");
            llama2_content(o, s, sv_of(m[i].content));
            out_str(o, " [/INST]");
        } else if (is_role(&m[i], "assistant")) {
            out_str(o, " ");
            llama2_content(o, s, sv_of(m[i].content));
            out_str(o, " ");
            out_str(o, k_eos_sp);
        }
        /* any other role at an odd position renders nothing, as in the template */
    }
    return TRIATTN_OK;
}

static enum triattn_status render_mistral(tri_out * o, const char * bos, tri_msg * m, size_t n, char * err,
                                          size_t err_size) {
    size_t       first = n > 0 && is_role(&m[0], "system") ? 1 : 0;
    const char * sys   = first ? m[0].content : NULL;
    for (size_t i = first; i < n; i++) {
        enum triattn_status st = check_alternation(&m[i], i, i - first, err, err_size);
        if (st != TRIATTN_OK) {
            return st;
        }
        if (!is_role(&m[i], "user") && !is_role(&m[i], "assistant")) {
            return tri_fail(err, err_size, TRIATTN_ERR_INVALID_ARG,
                            "chat: message %zu: the mistral format supports only user and assistant roles after an "
                            "optional first system message", i);
        }
    }
    out_str(o, bos);
    for (size_t i = first; i < n; i++) {
        if (is_role(&m[i], "user")) {
            out_str(o, "[INST] ");
            if (i == first && sys) {
                out_str(o, sys);
                out_str(o, "\n\n");
            }
            out_str(o, m[i].content);
            out_str(o, " [/INST]");
        } else {
            out_str(o, m[i].content);
            out_str(o, k_eos_sp);
        }
    }
    return TRIATTN_OK;
}

/* Gemma (2/3): "model" role, system text prepended to the first turn, contents trimmed. */
static enum triattn_status render_gemma(tri_out * o, const char * bos, tri_msg * m, size_t n, bool gen, char * err,
                                        size_t err_size) {
    size_t       first = n > 0 && is_role(&m[0], "system") ? 1 : 0;
    const char * sys   = first ? m[0].content : NULL;
    for (size_t i = first; i < n; i++) {
        enum triattn_status st = check_alternation(&m[i], i, i - first, err, err_size);
        if (st != TRIATTN_OK) {
            return st;
        }
    }
    out_str(o, bos);
    for (size_t i = first; i < n; i++) {
        out_str(o, "<start_of_turn>");
        out_str(o, is_role(&m[i], "assistant") ? "model" : m[i].role);
        out_str(o, "\n");
        if (i == first && sys) {
            out_str(o, sys);
            out_str(o, "\n\n");
        }
        out_sv(o, sv_strip(sv_of(m[i].content)));
        out_str(o, "<end_of_turn>\n");
    }
    if (gen) {
        out_str(o, "<start_of_turn>model\n");
    }
    return TRIATTN_OK;
}

/* DeepSeek-R1: BOS + the (last) system prompt, then full-width-bar user/assistant tags; the reasoning of
 * earlier assistant turns is dropped. */
static void render_deepseek(tri_out * o, const struct tri_chat_opts * op, const char * bos, tri_msg * m, size_t n,
                            bool gen) {
    const char * sys = "";
    for (size_t i = 0; i < n; i++) {
        if (is_role(&m[i], "system")) {
            sys = m[i].content;
        }
    }
    out_str(o, bos);
    out_str(o, sys);
    for (size_t i = 0; i < n; i++) {
        if (is_role(&m[i], "user")) {
            out_str(o, k_ds_user);
            out_str(o, m[i].content);
        } else if (is_role(&m[i], "assistant")) {
            tri_sv       c     = sv_of(m[i].content);
            const char * close = sv_rfind(c, "</think>");
            if (close) {
                c = (tri_sv){ close + 8, (size_t) (c.p + c.n - (close + 8)) };
            }
            out_str(o, k_ds_assistant);
            out_sv(o, c);
            out_str(o, k_ds_eos);
        }
    }
    if (gen) {
        out_str(o, k_ds_assistant);
        if (op->deepseek_think) {
            out_str(o, "<think>\n");
        }
    }
}

/* ---- entry point --------------------------------------------------------------------------------- */

enum triattn_status tri_chat_begin(char * buf, size_t capacity, size_t * n_out, const void * messages,
                                   size_t n_messages, char * err, size_t err_size) {
    if (n_out) {
        *n_out = 0;
    }
    if (capacity > 0 && buf) {
        buf[0] = '\0';
    }
    if ((!buf && capacity > 0) || (!messages && n_messages > 0)) {
        return tri_fail(err, err_size, TRIATTN_ERR_INVALID_ARG, "chat: NULL %s", messages ? "buf" : "messages");
    }
    return TRIATTN_OK;
}

enum triattn_status tri_chat_apply(const char * tmpl, const char * format, const char * bos_text,
                                   const struct triattn_chat_message * messages, size_t n_messages,
                                   bool add_assistant, char * buf, size_t capacity, size_t * n_out,
                                   char * err, size_t err_size) {
    enum triattn_status begin_st = tri_chat_begin(buf, capacity, n_out, messages, n_messages, err, err_size);
    if (begin_st != TRIATTN_OK) {
        return begin_st;
    }
    for (size_t i = 0; i < n_messages; i++) {
        const char * r = messages[i].role;
        if (!r) {
            return tri_fail(err, err_size, TRIATTN_ERR_INVALID_ARG, "chat: message %zu has a NULL role", i);
        }
        if (strcmp(r, "system") != 0 && strcmp(r, "user") != 0 && strcmp(r, "assistant") != 0) {
            return tri_fail(err, err_size, TRIATTN_ERR_INVALID_ARG,
                            "chat: message %zu has unknown role '%.64s' (expected system, user or assistant)", i, r);
        }
        if (!messages[i].content) {
            return tri_fail(err, err_size, TRIATTN_ERR_INVALID_ARG, "chat: message %zu (%s) has NULL content", i, r);
        }
    }

    const char * name = format;
    if (!name || strcmp(name, "auto") == 0) {
        name = tri_chat_detect(tmpl);
        if (!name) {
            return tri_fail(err, err_size, TRIATTN_ERR_UNSUPPORTED,
                            "chat: %s; pass a chat format name: " TRI_CHAT_NAME_LIST,
                            tmpl && *tmpl ? "the model's chat template is not recognised"
                                          : "the model has no chat template");
        }
    }
    int f = format_index(name);
    if (f < 0) {
        return tri_fail(err, err_size, TRIATTN_ERR_UNSUPPORTED, "chat: unknown chat format '%.64s'; known: " TRI_CHAT_NAME_LIST,
                        name);
    }
    struct tri_chat_opts op;
    opts_from_template((enum tri_chat_format) f, tmpl, &op);

    tri_out             o   = { buf, buf ? capacity : 0, 0 };
    const char *        bos = bos_text ? bos_text : "";
    enum triattn_status st  = TRIATTN_OK;
    switch ((enum tri_chat_format) f) {
        case TRI_CHAT_CHATML:
        case TRI_CHAT_QWEN:        render_chatml(&o, &op, messages, n_messages, add_assistant); break;
        case TRI_CHAT_QWEN3:       render_qwen3(&o, messages, n_messages, add_assistant); break;
        case TRI_CHAT_LLAMA3:      render_llama3(&o, &op, bos, messages, n_messages, add_assistant); break;
        case TRI_CHAT_LLAMA2:      st = render_llama2(&o, bos, messages, n_messages, err, err_size); break;
        case TRI_CHAT_MISTRAL:     st = render_mistral(&o, bos, messages, n_messages, err, err_size); break;
        case TRI_CHAT_GEMMA:       st = render_gemma(&o, bos, messages, n_messages, add_assistant, err, err_size); break;
        case TRI_CHAT_DEEPSEEK_R1: render_deepseek(&o, &op, bos, messages, n_messages, add_assistant); break;
        default:                   st = tri_fail(err, err_size, TRIATTN_ERR_INTERNAL, "chat: bad format %d", f); break;
    }
    return tri_strbuf_end(&o, st, n_out);
}
