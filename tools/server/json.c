/* json.c - strict JSON parser and compact serializer (see json.h). */
#include "json.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- UTF-8 ---- */

/* Length of the valid UTF-8 sequence at s (n bytes available), or 0 when invalid. */
static size_t utf8_seq(const unsigned char * s, size_t n) {
    unsigned c = s[0];
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF) return (n >= 2 && (s[1] & 0xC0) == 0x80) ? 2 : 0;
    if (c >= 0xE0 && c <= 0xEF) {
        if (n < 3 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80) return 0;
        if (c == 0xE0 && s[1] < 0xA0) return 0;            /* overlong */
        if (c == 0xED && s[1] >= 0xA0) return 0;           /* UTF-16 surrogate */
        return 3;
    }
    if (c >= 0xF0 && c <= 0xF4) {
        if (n < 4 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80 || (s[3] & 0xC0) != 0x80) return 0;
        if (c == 0xF0 && s[1] < 0x90) return 0;            /* overlong */
        if (c == 0xF4 && s[1] >= 0x90) return 0;           /* > U+10FFFF */
        return 4;
    }
    return 0;
}

bool json_utf8_valid(const char * s, size_t len) {
    const unsigned char * p = (const unsigned char *)s;
    size_t i = 0;
    while (i < len) {
        size_t k = utf8_seq(p + i, len - i);
        if (!k) return false;
        i += k;
    }
    return true;
}

static size_t utf8_put(char * out, uint32_t cp) {
    if (cp < 0x80) { out[0] = (char)cp; return 1; }
    if (cp < 0x800) { out[0] = (char)(0xC0 | (cp >> 6)); out[1] = (char)(0x80 | (cp & 0x3F)); return 2; }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12)); out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F)); return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18)); out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F)); out[3] = (char)(0x80 | (cp & 0x3F)); return 4;
}

/* ---- parser ---- */

typedef struct {
    const char * s;
    size_t       len, pos;
    size_t       nodes;
    size_t       bytes;        /* allocated so far (strings, element arrays) */
    struct json_limits lim;
    char *       err;
    size_t       err_size;
    bool         failed;
} parser;

static void fail(parser * p, const char * what) {
    if (p->failed) return;
    p->failed = true;
    if (p->err && p->err_size) snprintf(p->err, p->err_size, "%s at byte %zu", what, p->pos);
}

/* Counts n more allocated bytes against the budget; false (and the parse fails) beyond it. */
static bool charge(parser * p, size_t n) {
    p->bytes += n;
    if (p->lim.max_bytes && p->bytes > p->lim.max_bytes) {
        char what[96];
        snprintf(what, sizeof what, "document " JSON_ERR_BUDGET " of %zu bytes", p->lim.max_bytes);
        fail(p, what);
        return false;
    }
    return true;
}

static void skip_ws(parser * p) {
    while (p->pos < p->len) {
        char c = p->s[p->pos];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r') break;
        p->pos++;
    }
}

static int hex4(parser * p, uint32_t * out) {
    if (p->len - p->pos < 4) return 0;
    uint32_t v = 0;
    for (int k = 0; k < 4; k++) {
        char c = p->s[p->pos + k];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (uint32_t)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (uint32_t)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (uint32_t)(c - 'A' + 10);
        else return 0;
    }
    p->pos += 4;
    *out = v;
    return 1;
}

/* Parses a string starting at the opening quote into a fresh buffer. */
static char * parse_string(parser * p, size_t * out_len) {
    p->pos++;  /* opening quote */
    /* The decoded text is never longer than the raw text. */
    size_t start = p->pos, end = start;
    while (end < p->len && p->s[end] != '"') end += (p->s[end] == '\\') ? 2 : 1;
    if (end >= p->len) { fail(p, "unterminated string"); return NULL; }
    if (!charge(p, end - start + 1)) return NULL;
    char * out = malloc(end - start + 1);
    if (!out) { fail(p, JSON_ERR_OOM); return NULL; }
    size_t n = 0;
    for (;;) {
        if (p->pos >= p->len) { fail(p, "unterminated string"); break; }
        unsigned char c = (unsigned char)p->s[p->pos];
        if (c == '"') { p->pos++; out[n] = 0; *out_len = n; return out; }
        if (c < 0x20) { fail(p, "control character in string"); break; }
        if (c == '\\') {
            p->pos++;
            if (p->pos >= p->len) { fail(p, "unterminated escape"); break; }
            char e = p->s[p->pos++];
            switch (e) {
            case '"': out[n++] = '"'; break;
            case '\\': out[n++] = '\\'; break;
            case '/': out[n++] = '/'; break;
            case 'b': out[n++] = '\b'; break;
            case 'f': out[n++] = '\f'; break;
            case 'n': out[n++] = '\n'; break;
            case 'r': out[n++] = '\r'; break;
            case 't': out[n++] = '\t'; break;
            case 'u': {
                uint32_t cp;
                if (!hex4(p, &cp)) { fail(p, "bad \\u escape"); goto bad; }
                if (cp >= 0xDC00 && cp <= 0xDFFF) { fail(p, "lone low surrogate"); goto bad; }
                if (cp >= 0xD800 && cp <= 0xDBFF) {
                    uint32_t lo;
                    if (p->len - p->pos < 2 || p->s[p->pos] != '\\' || p->s[p->pos + 1] != 'u') {
                        fail(p, "lone high surrogate"); goto bad;
                    }
                    p->pos += 2;
                    if (!hex4(p, &lo) || lo < 0xDC00 || lo > 0xDFFF) { fail(p, "bad surrogate pair"); goto bad; }
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                }
                n += utf8_put(out + n, cp);  /* <= 6 raw bytes were consumed for <= 4 written */
                break;
            }
            default: fail(p, "bad escape"); goto bad;
            }
            continue;
        }
        size_t k = utf8_seq((const unsigned char *)p->s + p->pos, p->len - p->pos);
        if (!k) { fail(p, "invalid UTF-8 in string"); break; }
        memcpy(out + n, p->s + p->pos, k);
        n += k;
        p->pos += k;
    }
bad:
    free(out);
    return NULL;
}

static void parse_number(parser * p, json_value * v) {
    size_t st = p->pos;
    const char * s = p->s;
    bool integral = true;
    if (p->pos < p->len && s[p->pos] == '-') p->pos++;
    if (p->pos >= p->len) { fail(p, "bad number"); return; }
    if (s[p->pos] == '0') p->pos++;
    else if (s[p->pos] >= '1' && s[p->pos] <= '9') { while (p->pos < p->len && s[p->pos] >= '0' && s[p->pos] <= '9') p->pos++; }
    else { fail(p, "bad number"); return; }
    if (p->pos < p->len && s[p->pos] == '.') {
        integral = false;
        p->pos++;
        if (p->pos >= p->len || s[p->pos] < '0' || s[p->pos] > '9') { fail(p, "bad number"); return; }
        while (p->pos < p->len && s[p->pos] >= '0' && s[p->pos] <= '9') p->pos++;
    }
    if (p->pos < p->len && (s[p->pos] == 'e' || s[p->pos] == 'E')) {
        integral = false;
        p->pos++;
        if (p->pos < p->len && (s[p->pos] == '+' || s[p->pos] == '-')) p->pos++;
        if (p->pos >= p->len || s[p->pos] < '0' || s[p->pos] > '9') { fail(p, "bad number"); return; }
        while (p->pos < p->len && s[p->pos] >= '0' && s[p->pos] <= '9') p->pos++;
    }
    char tmp[64];
    size_t n = p->pos - st;
    char * buf = n < sizeof tmp ? tmp : malloc(n + 1);
    if (!buf) { fail(p, JSON_ERR_OOM); return; }
    memcpy(buf, s + st, n);
    buf[n] = 0;
    v->type = JSON_NUMBER;
    v->num = strtod(buf, NULL);
    if (isinf(v->num)) {  /* past double's range: refused, as serialising it back could not keep its value */
        if (buf != tmp) free(buf);
        p->pos = st;
        fail(p, "number out of range");
        return;
    }
    if (integral && n <= 19) {
        long long x = strtoll(buf, NULL, 10);
        v->is_int = true;
        v->i = x;
        if ((double)x != v->num && fabs(v->num) >= 9.2e18) v->is_int = false;
    }
    if (buf != tmp) free(buf);
}

static void parse_value(parser * p, json_value * v, int depth);

static bool push(parser * p, json_value * v, size_t * cap) {
    if (v->n == *cap) {
        size_t nc = *cap ? *cap * 2 : 4;
        if (!charge(p, (nc - *cap) * (sizeof *v->items + (v->type == JSON_OBJECT ? sizeof(char *) + sizeof(size_t) : 0))))
            return false;
        json_value * it = realloc(v->items, nc * sizeof *it);
        if (!it) { fail(p, JSON_ERR_OOM); return false; }
        v->items = it;
        if (v->type == JSON_OBJECT) {
            char ** k = realloc(v->keys, nc * sizeof *k);
            if (!k) { fail(p, JSON_ERR_OOM); return false; }
            v->keys = k;
            size_t * kl = realloc(v->key_lens, nc * sizeof *kl);
            if (!kl) { fail(p, JSON_ERR_OOM); return false; }
            v->key_lens = kl;
        }
        *cap = nc;
    }
    memset(&v->items[v->n], 0, sizeof v->items[0]);
    return true;
}

static void parse_value(parser * p, json_value * v, int depth) {
    memset(v, 0, sizeof *v);
    skip_ws(p);
    if (p->pos >= p->len) { fail(p, "unexpected end of input"); return; }
    if (++p->nodes > p->lim.max_nodes) { fail(p, "too many values"); return; }
    char c = p->s[p->pos];
    if (c == '{' || c == '[') {
        if (depth >= p->lim.max_depth) { fail(p, "nesting too deep"); return; }
        bool obj = c == '{';
        v->type = obj ? JSON_OBJECT : JSON_ARRAY;
        p->pos++;
        size_t cap = 0;
        skip_ws(p);
        if (p->pos < p->len && p->s[p->pos] == (obj ? '}' : ']')) { p->pos++; return; }
        for (;;) {
            if (!push(p, v, &cap)) return;
            if (obj) {
                skip_ws(p);
                if (p->pos >= p->len || p->s[p->pos] != '"') { fail(p, "expected a key"); return; }
                size_t kl = 0;
                char * k = parse_string(p, &kl);
                if (!k) return;
                v->keys[v->n] = k;
                v->key_lens[v->n] = kl;
                v->n++;  /* counted now so json_free releases the key on failure */
                skip_ws(p);
                if (p->pos >= p->len || p->s[p->pos] != ':') { fail(p, "expected ':'"); return; }
                p->pos++;
                parse_value(p, &v->items[v->n - 1], depth + 1);
            } else {
                v->n++;
                parse_value(p, &v->items[v->n - 1], depth + 1);
            }
            if (p->failed) return;
            skip_ws(p);
            if (p->pos >= p->len) { fail(p, "unexpected end of input"); return; }
            char d = p->s[p->pos++];
            if (d == ',') continue;
            if (d == (obj ? '}' : ']')) return;
            p->pos--;
            fail(p, obj ? "expected ',' or '}'" : "expected ',' or ']'");
            return;
        }
    }
    if (c == '"') {
        v->type = JSON_STRING;
        v->str = parse_string(p, &v->len);
        return;
    }
    if (c == '-' || (c >= '0' && c <= '9')) { parse_number(p, v); return; }
    static const struct { const char * w; enum json_type t; bool b; } lits[] = {
        { "true", JSON_BOOL, true }, { "false", JSON_BOOL, false }, { "null", JSON_NULL, false } };
    for (int k = 0; k < 3; k++) {
        size_t n = strlen(lits[k].w);
        if (p->len - p->pos >= n && memcmp(p->s + p->pos, lits[k].w, n) == 0) {
            v->type = lits[k].t;
            v->b = lits[k].b;
            p->pos += n;
            return;
        }
    }
    fail(p, "unexpected character");
}

static void free_inner(json_value * v) {
    if (v->type == JSON_STRING) free(v->str);
    if (v->type == JSON_ARRAY || v->type == JSON_OBJECT) {
        for (size_t k = 0; k < v->n; k++) {
            free_inner(&v->items[k]);
            if (v->type == JSON_OBJECT) free(v->keys[k]);
        }
        free(v->items);
        free(v->keys);
        free(v->key_lens);
    }
}

void json_free(json_value * v) {
    if (!v) return;
    free_inner(v);
    free(v);
}

json_value * json_parse(const char * text, size_t len, const struct json_limits * lim, char * err, size_t err_size) {
    parser p = { .s = text, .len = len, .err = err, .err_size = err_size };
    p.lim.max_depth = lim && lim->max_depth > 0 ? lim->max_depth : 64;
    p.lim.max_nodes = lim && lim->max_nodes > 0 ? lim->max_nodes : (size_t)1 << 20;
    p.lim.max_bytes = lim ? lim->max_bytes : 0;
    if (err && err_size) err[0] = 0;
    json_value * root = calloc(1, sizeof *root);
    if (!root) { fail(&p, JSON_ERR_OOM); return NULL; }
    parse_value(&p, root, 0);
    if (!p.failed) {
        skip_ws(&p);
        if (p.pos != p.len) fail(&p, "trailing characters after the document");
    }
    if (p.failed) { json_free(root); return NULL; }
    return root;
}

const json_value * json_get(const json_value * v, const char * key) {
    if (!v || v->type != JSON_OBJECT) return NULL;
    size_t kl = strlen(key);
    for (size_t k = v->n; k-- > 0;)
        if (v->key_lens[k] == kl && memcmp(v->keys[k], key, kl) == 0) return &v->items[k];
    return NULL;
}

/* ---- serializer ---- */

void jb_init(jbuf * b) { memset(b, 0, sizeof *b); }
void jb_free(jbuf * b) { free(b->data); memset(b, 0, sizeof *b); }
void jb_reset(jbuf * b) { b->len = 0; b->oom = false; if (b->data) b->data[0] = 0; }

static bool jb_reserve(jbuf * b, size_t extra) {
    if (b->oom) return false;
    if (b->len + extra + 1 <= b->cap) return true;
    size_t nc = b->cap ? b->cap : 256;
    while (nc < b->len + extra + 1) nc *= 2;
    char * d = realloc(b->data, nc);
    if (!d) { b->oom = true; return false; }
    b->data = d;
    b->cap = nc;
    return true;
}

void jb_raw(jbuf * b, const char * s, size_t n) {
    if (!jb_reserve(b, n)) return;
    memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = 0;
}

void jb_cstr(jbuf * b, const char * s) { jb_raw(b, s, strlen(s)); }

void jb_str(jbuf * b, const char * s, size_t n) {
    static const char hex[] = "0123456789abcdef";
    if (!jb_reserve(b, n + 2)) return;
    jb_raw(b, "\"", 1);
    const unsigned char * u = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        /* copy the longest run that needs no escaping */
        size_t j = i;
        while (j < n && u[j] >= 0x20 && u[j] != '"' && u[j] != '\\' && u[j] < 0x80) j++;
        if (j > i) { jb_raw(b, s + i, j - i); i = j; continue; }
        unsigned char c = u[i];
        char e[8];
        if (c >= 0x80) {
            size_t k = utf8_seq(u + i, n - i);
            if (k) { jb_raw(b, s + i, k); i += k; }
            else { jb_raw(b, "\\ufffd", 6); i++; }   /* invalid bytes become U+FFFD */
            continue;
        }
        switch (c) {
        case '"': jb_raw(b, "\\\"", 2); break;
        case '\\': jb_raw(b, "\\\\", 2); break;
        case '\n': jb_raw(b, "\\n", 2); break;
        case '\r': jb_raw(b, "\\r", 2); break;
        case '\t': jb_raw(b, "\\t", 2); break;
        case '\b': jb_raw(b, "\\b", 2); break;
        case '\f': jb_raw(b, "\\f", 2); break;
        default:
            e[0] = '\\'; e[1] = 'u'; e[2] = '0'; e[3] = '0'; e[4] = hex[c >> 4]; e[5] = hex[c & 15];
            jb_raw(b, e, 6);
        }
        i++;
    }
    jb_raw(b, "\"", 1);
}

void jb_qcstr(jbuf * b, const char * s) { jb_str(b, s, strlen(s)); }

void jb_int(jbuf * b, int64_t v) {
    char t[32];
    int n = snprintf(t, sizeof t, "%lld", (long long)v);
    jb_raw(b, t, (size_t)n);
}

void jb_num(jbuf * b, double v) {
    if (!isfinite(v)) { jb_raw(b, "null", 4); return; }
    if (v == 0 && signbit(v)) { jb_raw(b, "-0.0", 4); return; }  /* "-0" would read back as the integer 0 */
    char t[40];
    int n = snprintf(t, sizeof t, "%.17g", v);
    jb_raw(b, t, (size_t)n);
}

void jb_printf(jbuf * b, const char * fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    char t[512];
    int n = vsnprintf(t, sizeof t, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if ((size_t)n < sizeof t) { jb_raw(b, t, (size_t)n); return; }
    if (!jb_reserve(b, (size_t)n)) return;
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

void jb_value(jbuf * b, const json_value * v) {
    switch (v->type) {
    case JSON_NULL: jb_raw(b, "null", 4); break;
    case JSON_BOOL: jb_cstr(b, v->b ? "true" : "false"); break;
    case JSON_NUMBER: if (v->is_int) jb_int(b, v->i); else jb_num(b, v->num); break;
    case JSON_STRING: jb_str(b, v->str, v->len); break;
    case JSON_ARRAY:
    case JSON_OBJECT:
        jb_raw(b, v->type == JSON_ARRAY ? "[" : "{", 1);
        for (size_t k = 0; k < v->n; k++) {
            if (k) jb_raw(b, ",", 1);
            if (v->type == JSON_OBJECT) { jb_str(b, v->keys[k], v->key_lens[k]); jb_raw(b, ":", 1); }
            jb_value(b, &v->items[k]);
        }
        jb_raw(b, v->type == JSON_ARRAY ? "]" : "}", 1);
        break;
    }
}
