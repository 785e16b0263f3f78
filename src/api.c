/* Library-level entry points and the public wrappers over the model's vocabulary, chat formats and metadata. */
#include "chat.h"
#include "common.h"
#include "model.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef TRIATTN_VERSION_STR
#define TRIATTN_VERSION_STR "0.0.0"
#endif

uint32_t triattn_abi_version(void) {
    return TRIATTN_ABI_VERSION;
}

const char * triattn_version(void) {
    return TRIATTN_VERSION_STR;
}

const char * triattn_status_name(enum triattn_status status) {
    switch (status) {
        case TRIATTN_OK:              return "TRIATTN_OK";
        case TRIATTN_ERR_IO:          return "TRIATTN_ERR_IO";
        case TRIATTN_ERR_FORMAT:      return "TRIATTN_ERR_FORMAT";
        case TRIATTN_ERR_UNSUPPORTED: return "TRIATTN_ERR_UNSUPPORTED";
        case TRIATTN_ERR_INVALID_ARG: return "TRIATTN_ERR_INVALID_ARG";
        case TRIATTN_ERR_OOM:         return "TRIATTN_ERR_OOM";
        case TRIATTN_ERR_CONTEXT:     return "TRIATTN_ERR_CONTEXT";
        case TRIATTN_ERR_ABORTED:     return "TRIATTN_ERR_ABORTED";
        case TRIATTN_ERR_INTERNAL:    return "TRIATTN_ERR_INTERNAL";
    }
    return "TRIATTN_ERR_UNKNOWN";
}

bool triattn_parse_bytes(const char * s, uint64_t * out) {
    if (!s || !out) {
        return false;
    }
    char * end = NULL;
    errno = 0;
    const double v = strtod(s, &end);
    if (end == s || errno != 0 || !(v >= 0.0) || *s == '-' || *s == '+' || isspace((unsigned char) *s)) {
        return false;
    }
    double scale = 1.0;
    static const char units[] = "KMGT";
    const char * u = *end ? strchr(units, toupper((unsigned char) *end)) : NULL;
    if (u) {
        for (const char * p = units; p <= u; p++) {
            scale *= 1024.0;
        }
        end++;
        if (*end == 'i' && (end[1] == 'B' || end[1] == 'b')) {
            end += 2;
        } else if (*end == 'B' || *end == 'b') {
            end++;
        }
    } else if (*end == 'B' || *end == 'b') {
        end++;
    }
    const double bytes = v * scale;
    if (*end != '\0' || bytes >= 18446744073709551616.0) {
        return false;
    }
    *out = (uint64_t) bytes;
    return true;
}

const char * triattn_system_info(void) {
    tri_ops_init();
    return tri_cpu_features();
}

/* ---- vocabulary ------------------------------------------------------------------------------- */

int32_t triattn_vocab_size(const triattn_model * m) {
    return m->hp.n_vocab;
}

triattn_token triattn_token_bos(const triattn_model * m) {
    return tri_vocab_bos(m->vocab);
}

triattn_token triattn_token_eos(const triattn_model * m) {
    return tri_vocab_eos(m->vocab);
}

bool triattn_token_is_eog(const triattn_model * m, triattn_token t) {
    return tri_vocab_is_eog(m->vocab, t);
}

enum triattn_status triattn_tokenize(const triattn_model * m, const char * text, int32_t text_len, bool add_special,
                                     bool parse_special, triattn_token * out, int32_t capacity, int32_t * n_out) {
    if (!m || !text || !n_out || capacity < 0 || (capacity > 0 && !out)) {
        return TRIATTN_ERR_INVALID_ARG;
    }
    return tri_vocab_tokenize(m->vocab, text, text_len, add_special, parse_special, out, capacity, n_out);
}

enum triattn_status triattn_token_to_piece(const triattn_model * m, triattn_token t, bool special, char * buf,
                                           int32_t capacity, int32_t * n_out) {
    if (!m || !n_out || capacity < 0 || (capacity > 0 && !buf)) {
        return TRIATTN_ERR_INVALID_ARG;
    }
    return tri_vocab_token_to_piece(m->vocab, t, special, buf, capacity, n_out);
}

enum triattn_status triattn_detokenize(const triattn_model * m, const triattn_token * tokens, int32_t n_tokens,
                                       bool special, char * buf, int32_t capacity, int32_t * n_out) {
    if (!m || !n_out || n_tokens < 0 || (n_tokens > 0 && !tokens) || capacity < 0 || (capacity > 0 && !buf)) {
        return TRIATTN_ERR_INVALID_ARG;
    }
    return tri_vocab_detokenize(m->vocab, tokens, n_tokens, special, buf, capacity, n_out);
}

/* ---- chat ------------------------------------------------------------------------------------- */

enum triattn_status triattn_chat_apply(const triattn_model * m, const char * format,
                                       const struct triattn_chat_message * messages, size_t n_messages,
                                       bool add_assistant, char * buf, size_t capacity, size_t * n_out) {
    if (!m || !n_out || (n_messages > 0 && !messages) || (capacity > 0 && !buf)) {
        return TRIATTN_ERR_INVALID_ARG;
    }
    const triattn_token bos = tri_vocab_bos(m->vocab);
    char err[256];
    if ((!format || strcmp(format, "auto") == 0) && !m->chat_template && m->arch->chat_format) {
        format = m->arch->chat_format; /* no template in the file: the architecture's own format */
    }
    return tri_chat_apply(m->chat_template, format, bos >= 0 ? tri_vocab_token_text(m->vocab, bos) : NULL, messages,
                          n_messages, add_assistant, buf, capacity, n_out, err, sizeof err);
}

const char * triattn_chat_detect(const triattn_model * m) {
    return m->chat_template ? tri_chat_detect(m->chat_template) : m->arch->chat_format;
}

/* ---- metadata --------------------------------------------------------------------------------- */

int32_t triattn_model_meta_count(const triattn_model * m) {
    return (int32_t) m->gguf->n_kv;
}

const char * triattn_model_meta_key(const triattn_model * m, int32_t i) {
    if (i < 0 || (uint64_t) i >= m->gguf->n_kv) {
        return NULL;
    }
    return m->gguf->kv[i].key;
}

static void tri_meta_scalar(tri_strbuf * b, enum tri_gguf_type t, const tri_gguf_kv * kv, uint64_t i) {
    char tmp[64];
    int n = 0;
    switch (t) {
        case TRI_GGUF_FLOAT32:
        case TRI_GGUF_FLOAT64:
            n = snprintf(tmp, sizeof tmp, "%.9g", tri_gguf_arr_f64(kv, i));
            break;
        case TRI_GGUF_BOOL:
            n = snprintf(tmp, sizeof tmp, "%s", tri_gguf_arr_i64(kv, i) ? "true" : "false");
            break;
        case TRI_GGUF_UINT64: {
            uint64_t v;
            memcpy(&v, (const char *) kv->data + i * 8, 8);
            n = snprintf(tmp, sizeof tmp, "%" PRIu64, v);
            break;
        }
        default:
            n = snprintf(tmp, sizeof tmp, "%" PRId64, tri_gguf_arr_i64(kv, i));
            break;
    }
    tri_strbuf_put(b, tmp, (size_t) n);
}

enum triattn_status triattn_model_meta_value(const triattn_model * m, int32_t i, char * buf, size_t capacity,
                                             size_t * n_out) {
    if (!m || !n_out || (capacity > 0 && !buf) || i < 0 || (uint64_t) i >= m->gguf->n_kv) {
        return TRIATTN_ERR_INVALID_ARG;
    }
    const tri_gguf_kv * kv = &m->gguf->kv[i];
    tri_strbuf b = { buf, capacity, 0 };
    if (kv->type == TRI_GGUF_STRING) {
        tri_strbuf_put(&b, kv->strs[0].ptr, kv->strs[0].len);
    } else if (kv->type != TRI_GGUF_ARRAY) {
        tri_meta_scalar(&b, kv->type, kv, 0);
    } else if (kv->n > 16) {
        char tmp[64];
        int n = snprintf(tmp, sizeof tmp, "[... %" PRIu64 " items]", kv->n);
        tri_strbuf_put(&b, tmp, (size_t) n);
    } else {
        tri_strbuf_put(&b, "[", 1);
        for (uint64_t j = 0; j < kv->n; j++) {
            if (j) {
                tri_strbuf_put(&b, ", ", 2);
            }
            if (kv->arr_type == TRI_GGUF_STRING) {
                tri_strbuf_put(&b, "\"", 1);
                tri_strbuf_put(&b, kv->strs[j].ptr, kv->strs[j].len);
                tri_strbuf_put(&b, "\"", 1);
            } else {
                tri_meta_scalar(&b, kv->arr_type, kv, j);
            }
        }
        tri_strbuf_put(&b, "]", 1);
    }
    tri_strbuf_finish(&b);
    *n_out = b.len;
    return TRIATTN_OK;
}
