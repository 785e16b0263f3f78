/* The JSON needed by tool calls: a validating scanner over slices of JSON text (no tree is built), a
 * string escaping and Python-json.dumps-style re-spacing (what chat templates'
 * `tojson` writes). */
#include "chat_tools.h"
#include "unicode.h"

#include <stdlib.h>
#include <string.h>

/* Length of a valid UTF-8 sequence at s (1..4), or 0 when the bytes there are not one. */
static size_t utf8_len(const unsigned char * s, size_t n) {
    unsigned c = s[0];
    if (c < 0x80) {
        return 1;
    }
    size_t len = (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (len == 0 || len > n || (len == 2 && c < 0xC2) || (len == 4 && c > 0xF4)) {
        return 0;
    }
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) {
            return 0;
        }
    }
    if ((len == 3 && c == 0xE0 && s[1] < 0xA0) || (len == 3 && c == 0xED && s[1] >= 0xA0) ||
        (len == 4 && c == 0xF0 && s[1] < 0x90) || (len == 4 && c == 0xF4 && s[1] >= 0x90)) {
        return 0;  /* overlong, surrogate or past U+10FFFF */
    }
    return len;
}

void tri_gbuf_json_str(tri_gbuf * b, const char * s, size_t n) {
    static const char hex[] = "0123456789abcdef";
    tri_gbuf_put(b, "\"", 1);
    for (size_t i = 0; i < n;) {
        unsigned char c = (unsigned char) s[i];
        if (c == '"' || c == '\\') {
            char e[2] = { '\\', (char) c };
            tri_gbuf_put(b, e, 2);
            i++;
        } else if (c < 0x20) {
            const char * named = c == '\n' ? "\\n" : c == '\t' ? "\\t" : c == '\r' ? "\\r" : NULL;
            if (named) {
                tri_gbuf_put(b, named, 2);
            } else {
                char e[6] = { '\\', 'u', '0', '0', hex[c >> 4], hex[c & 15] };
                tri_gbuf_put(b, e, 6);
            }
            i++;
        } else {
            size_t k = utf8_len((const unsigned char *) s + i, n - i);
            if (k == 0) {
                tri_gbuf_str(b, "\xEF\xBF\xBD");  /* invalid byte: U+FFFD */
                i++;
            } else {
                tri_gbuf_put(b, s + i, k);
                i += k;
            }
        }
    }
    tri_gbuf_put(b, "\"", 1);
}

/* ---- scanner ------------------------------------------------------------------------------------- */

const char * tri_js_ws(const char * p, const char * e) {
    while (p < e && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) {
        p++;
    }
    return p;
}

static int hexval(char c) {
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

/* A scan in progress: where the text ends, and on failure the first byte that cannot continue a value
 * (e when the text ran out: it is then a proper prefix of a value, unless `hard`). */
struct scan {
    const char * e;
    const char * stop;
    bool         hard;   /* failed for a reason more text cannot mend (nesting too deep) */
};

static const char * stop_at(struct scan * s, const char * p) {
    s->stop = p;
    return NULL;
}

/* The bytes s..e are the start of a valid UTF-8 sequence cut short by e. */
static bool utf8_cut(const unsigned char * s, const unsigned char * e) {
    unsigned c   = s[0];
    size_t   len = (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (len == 0 || (size_t) (e - s) >= len || (len == 2 && c < 0xC2) || (len == 4 && c > 0xF4)) {
        return false;
    }
    for (const unsigned char * q = s + 1; q < e; q++) {
        if ((*q & 0xC0) != 0x80) {
            return false;
        }
    }
    return true;
}

static const char * scan_string(struct scan * s, const char * p) {
    const char * e = s->e;
    p++;  /* opening quote */
    while (p < e) {
        unsigned char c = (unsigned char) *p;
        if (c == '"') {
            return p + 1;
        }
        if (c < 0x20) {
            return stop_at(s, p);
        }
        if (c == '\\') {
            if (p + 1 >= e) {
                return stop_at(s, e);
            }
            char x = p[1];
            if (x == 'u') {
                for (int k = 2; k < 6; k++) {
                    if (p + k >= e || hexval(p[k]) < 0) {
                        return stop_at(s, p + k >= e ? e : p + k);
                    }
                }
                p += 6;
            } else if (strchr("\"\\/bfnrt", x) && x) {
                p += 2;
            } else {
                return stop_at(s, p + 1);
            }
            continue;
        }
        size_t k = utf8_len((const unsigned char *) p, (size_t) (e - p));
        if (k == 0) {
            return stop_at(s, utf8_cut((const unsigned char *) p, (const unsigned char *) e) ? e : p);
        }
        p += k;
    }
    return stop_at(s, e);
}

static const char * scan_digits(struct scan * s, const char * p) {
    const char * d = p;
    while (p < s->e && *p >= '0' && *p <= '9') {
        p++;
    }
    return p > d ? p : stop_at(s, p);
}

static const char * scan_number(struct scan * s, const char * p) {
    const char * e = s->e;
    if (p < e && *p == '-') {
        p++;
    }
    if (p < e && *p == '0') {
        p++;
    } else if (!(p = scan_digits(s, p))) {
        return NULL;
    }
    if (p < e && *p == '.' && !(p = scan_digits(s, p + 1))) {
        return NULL;
    }
    if (p < e && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < e && (*p == '+' || *p == '-')) {
            p++;
        }
        if (!(p = scan_digits(s, p))) {
            return NULL;
        }
    }
    return p;
}

static const char * scan_literal(struct scan * s, const char * p) {
    static const char * const lits[] = { "true", "false", "null" };
    for (int i = 0; i < 3; i++) {
        if (*p != lits[i][0]) {
            continue;
        }
        size_t m = strlen(lits[i]), k = 1;
        while (k < m && p + k < s->e && p[k] == lits[i][k]) {
            k++;
        }
        return k == m ? p + m : stop_at(s, p + k);
    }
    return stop_at(s, p);
}

#define TRI_JS_MAX_DEPTH 64

static const char * scan_value(struct scan * s, const char * p, int depth) {
    const char * e = s->e;
    p = tri_js_ws(p, e);
    if (p >= e) {
        return stop_at(s, e);
    }
    if (depth > TRI_JS_MAX_DEPTH) {
        s->hard = true;
        return stop_at(s, p);
    }
    char c = *p;
    if (c == '"') {
        return scan_string(s, p);
    }
    if (c == '{' || c == '[') {
        char close = c == '{' ? '}' : ']';
        p = tri_js_ws(p + 1, e);
        if (p < e && *p == close) {
            return p + 1;
        }
        for (;;) {
            if (c == '{') {
                p = tri_js_ws(p, e);
                if (p >= e || *p != '"') {
                    return stop_at(s, p);
                }
                if (!(p = scan_string(s, p))) {
                    return NULL;
                }
                p = tri_js_ws(p, e);
                if (p >= e || *p != ':') {
                    return stop_at(s, p);
                }
                p++;
            }
            if (!(p = scan_value(s, p, depth + 1))) {
                return NULL;
            }
            p = tri_js_ws(p, e);
            if (p >= e) {
                return stop_at(s, e);
            }
            if (*p == close) {
                return p + 1;
            }
            if (*p != ',') {
                return stop_at(s, p);
            }
            p++;
        }
    }
    if (c == '-' || (c >= '0' && c <= '9')) {
        return scan_number(s, p);
    }
    return scan_literal(s, p);
}

const char * tri_js_value_end(const char * p, const char * e) {
    struct scan s = { e, NULL, false };
    return scan_value(&s, p, 0);
}

enum tri_js_scan tri_js_value_scan(const char * p, const char * e, const char ** end) {
    struct scan s = { e, NULL, false };
    const char * v = scan_value(&s, p, 0);
    *end = v ? v : s.stop;
    return v ? TRI_JS_DONE : s.stop == e && !s.hard ? TRI_JS_MORE : TRI_JS_BAD;
}

bool tri_js_parse(tri_js text, tri_js * value) {
    const char * e = text.p + text.n;
    const char * b = tri_js_ws(text.p, e);
    const char * v = tri_js_value_end(b, e);
    if (!v || tri_js_ws(v, e) != e) {
        return false;
    }
    *value = (tri_js){ b, (size_t) (v - b) };
    return true;
}

bool tri_js_next(tri_js_iter * it, tri_js * key, tri_js * value) {
    const char * p = tri_js_ws(it->p, it->e);
    if (p >= it->e || *p == '}' || *p == ']') {
        return false;
    }
    if (*p == ',') {
        p = tri_js_ws(p + 1, it->e);
    }
    if (key) {
        struct scan  s = { it->e, NULL, false };
        const char * k = scan_string(&s, p);  /* valid by construction */
        *key = (tri_js){ p, (size_t) (k - p) };
        p    = tri_js_ws(k, it->e) + 1;  /* the ':' */
        p    = tri_js_ws(p, it->e);
    }
    const char * v = tri_js_value_end(p, it->e);
    *value = (tri_js){ p, (size_t) (v - p) };
    it->p = v;
    return true;
}

tri_js_iter tri_js_iter_of(tri_js container) {
    return (tri_js_iter){ container.p + 1, container.p + container.n };
}

bool tri_js_get(tri_js obj, const char * key, tri_js * value) {
    if (obj.n == 0 || obj.p[0] != '{') {
        return false;
    }
    tri_js_iter it = tri_js_iter_of(obj);
    tri_js      k, v;
    bool        found = false;
    while (tri_js_next(&it, &k, &v)) {
        if (tri_js_str_eq(k, key)) {
            *value = v;  /* the last duplicate wins */
            found  = true;
        }
    }
    return found;
}

static uint32_t hex4(const char * p) {
    return (uint32_t) (hexval(p[0]) << 12 | hexval(p[1]) << 8 | hexval(p[2]) << 4 | hexval(p[3]));
}

/* A JSON string token read back unescaped, piece by piece: a run of plain bytes (pointing into the token) or one
 * escape's UTF-8 bytes (in buf). */
typedef struct {
    const char * p, * e;  /* inside the quotes: what is left */
    const char * s;       /* the current piece: n bytes */
    size_t       n;
    uint8_t      buf[4];
} tri_js_reader;

static void js_reader_init(tri_js_reader * r, tri_js str) {
    r->p = str.p + 1;
    r->e = str.p + str.n - 1;
    r->n = 0;
}

/* Makes the next piece current when the last is used up; false at the end of the string. */
static bool js_reader_fill(tri_js_reader * r) {
    if (r->n > 0 || r->p >= r->e) {
        return r->n > 0;
    }
    const char * p = r->p;
    if (*p != '\\') {
        r->s = p;
        while (p < r->e && *p != '\\') {
            p++;
        }
        r->n = (size_t) (p - r->s);
        r->p = p;
        return true;
    }
    char x = p[1];
    if (x != 'u') {
        r->buf[0] = (uint8_t) (x == 'n' ? '\n' : x == 't' ? '\t' : x == 'r' ? '\r' : x == 'b' ? '\b' : x == 'f' ? '\f' : x);
        r->s = (const char *) r->buf;
        r->n = 1;
        r->p = p + 2;
        return true;
    }
    uint32_t cp = hex4(p + 2);
    p += 6;
    if (cp >= 0xD800 && cp < 0xDC00 && r->e - p >= 6 && p[0] == '\\' && p[1] == 'u') {
        uint32_t lo = hex4(p + 2);
        if (lo >= 0xDC00 && lo < 0xE000) {
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            p += 6;
        }
    }
    r->n = (size_t) tri_utf8_encode(cp >= 0xD800 && cp < 0xE000 ? 0xFFFD : cp, r->buf);  /* a lone surrogate: U+FFFD */
    r->s = (const char *) r->buf;
    r->p = p;
    return true;
}

/* Takes k bytes of the current piece. */
static void js_reader_take(tri_js_reader * r, size_t k) {
    r->s += k;
    r->n -= k;
}

void tri_js_unescape(tri_js str, tri_gbuf * out) {
    tri_js_reader r;
    js_reader_init(&r, str);
    while (js_reader_fill(&r)) {
        tri_gbuf_put(out, r.s, r.n);
        js_reader_take(&r, r.n);
    }
}

bool tri_js_str_same(tri_js a, tri_js b) {
    if (a.n < 2 || a.p[0] != '"' || b.n < 2 || b.p[0] != '"') {
        return false;
    }
    tri_js_reader ra, rb;
    js_reader_init(&ra, a);
    js_reader_init(&rb, b);
    for (;;) {
        const bool ha = js_reader_fill(&ra), hb = js_reader_fill(&rb);
        if (!ha || !hb) {
            return ha == hb;
        }
        const size_t k = TRI_MIN(ra.n, rb.n);
        if (memcmp(ra.s, rb.s, k) != 0) {
            return false;
        }
        js_reader_take(&ra, k);
        js_reader_take(&rb, k);
    }
}

size_t tri_js_str_chars(tri_js str) {
    tri_js_reader r;
    size_t        n = 0;
    js_reader_init(&r, str);
    while (js_reader_fill(&r)) {
        for (size_t i = 0; i < r.n; i++) {
            n += ((unsigned char) r.s[i] & 0xC0) != 0x80;
        }
        js_reader_take(&r, r.n);
    }
    return n;
}

bool tri_js_str_eq(tri_js str, const char * s) {
    if (str.n < 2 || str.p[0] != '"') {
        return false;
    }
    size_t        m = strlen(s);
    tri_js_reader r;
    js_reader_init(&r, str);
    while (js_reader_fill(&r)) {
        if (r.n > m || memcmp(r.s, s, r.n) != 0) {
            return false;
        }
        s += r.n;
        m -= r.n;
        js_reader_take(&r, r.n);
    }
    return m == 0;
}

/* ---- re-spacing like Python's json.dumps ---------------------------------------------------------- */

static void newline_indent(tri_gbuf * b, int indent, int level) {
    tri_gbuf_put(b, "\n", 1);
    for (int i = 0; i < indent * level; i++) {
        tri_gbuf_put(b, " ", 1);
    }
}

static void dump_value(tri_gbuf * b, tri_js v, int indent, int level) {
    char c = v.p[0];
    if (c != '{' && c != '[') {
        tri_gbuf_put(b, v.p, v.n);
        return;
    }
    bool        obj = c == '{';
    tri_js_iter it  = tri_js_iter_of(v);
    tri_js      key, val;
    size_t      i = 0;
    tri_gbuf_put(b, &c, 1);
    while (tri_js_next(&it, obj ? &key : NULL, &val)) {
        if (i++ > 0) {
            tri_gbuf_str(b, indent > 0 ? "," : ", ");
        }
        if (indent > 0) {
            newline_indent(b, indent, level + 1);
        }
        if (obj) {
            tri_gbuf_put(b, key.p, key.n);
            tri_gbuf_str(b, ": ");
        }
        dump_value(b, val, indent, level + 1);
    }
    if (i > 0 && indent > 0) {
        newline_indent(b, indent, level);
    }
    tri_gbuf_put(b, obj ? "}" : "]", 1);
}

void tri_js_dump(tri_gbuf * out, tri_js value, int indent) { dump_value(out, value, indent, 0); }
