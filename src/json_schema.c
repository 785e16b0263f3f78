/* JSON Schema subset -> node table (see json_schema.h). A small strict JSON reader builds a tree of the schema
 * text, then each schema object is checked keyword by keyword and compiled into one node. */
#include "json_schema.h"

#include "common.h"
#include "unicode.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- JSON tree ------------------------------------------------------------------------------------ */

enum { JV_NULL, JV_BOOL, JV_NUM, JV_STR, JV_ARR, JV_OBJ };

typedef struct jv {
    int         type;
    bool        b;
    char *      str;    /* JV_STR: decoded bytes; JV_NUM: the number's text */
    size_t      len;
    struct jv * items;  /* JV_ARR elements, JV_OBJ values */
    char **     keys;   /* JV_OBJ keys (decoded, NUL-terminated) */
    size_t *    klen;
    size_t      n;
} jv;

typedef struct jreader {
    const char * p;
    const char * end;
    const char * start;
    char *       err;
    size_t       err_size;
    int          depth;
} jreader;

static void jv_clear(jv * v) {
    free(v->str);
    for (size_t i = 0; i < v->n; i++) {
        jv_clear(&v->items[i]);
        if (v->keys) {
            free(v->keys[i]);
        }
    }
    free(v->items);
    free(v->keys);
    free(v->klen);
    memset(v, 0, sizeof *v);
}

static bool jr_fail(jreader * r, const char * what) {
    tri_fail(r->err, r->err_size, TRIATTN_ERR_INVALID_ARG, "json_schema: %s at byte %zu", what,
             (size_t) (r->p - r->start));
    return false;
}

static void jr_ws(jreader * r) {
    while (r->p < r->end && (*r->p == ' ' || *r->p == '\t' || *r->p == '\n' || *r->p == '\r')) {
        r->p++;
    }
}

static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Reads the 4 hex digits after "\u". */
static bool jr_hex4(jreader * r, uint32_t * cp) {
    if (r->end - r->p < 4) {
        return jr_fail(r, "truncated \\u escape");
    }
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        int h = hexval(r->p[i]);
        if (h < 0) {
            return jr_fail(r, "bad \\u escape");
        }
        v = v * 16 + (uint32_t) h;
    }
    r->p += 4;
    *cp = v;
    return true;
}

/* A string after its opening quote; the decoded bytes go to b. */
static bool jr_string(jreader * r, tri_gbuf * b) {
    for (;;) {
        if (r->p >= r->end) {
            return jr_fail(r, "unterminated string");
        }
        unsigned char c = (unsigned char) *r->p++;
        if (c == '"') {
            tri_gbuf_put(b, "", 0);
            return !b->oom || jr_fail(r, "out of memory");
        }
        if (c < 0x20) {
            return jr_fail(r, "control character in string");
        }
        if (c >= 0x80) {  /* raw UTF-8: whole, valid sequences only, so literals generate valid text */
            size_t len;
            if (tri_utf8_decode((const uint8_t *) r->p - 1, (size_t) (r->end - r->p) + 1, &len) == TRI_CP_INVALID) {
                r->p--;
                return jr_fail(r, "invalid UTF-8 in string");
            }
            tri_gbuf_put(b, r->p - 1, len);
            r->p += len - 1;
            continue;
        }
        if (c != '\\') {
            tri_gbuf_put(b, (const char *) &c, 1);
            continue;
        }
        if (r->p >= r->end) {
            return jr_fail(r, "truncated escape");
        }
        char e = *r->p++;
        const char * from = "\"\\/bfnrt";
        const char * to = "\"\\/\b\f\n\r\t";
        const char * k = e ? strchr(from, e) : NULL;
        if (k) {
            tri_gbuf_put(b, &to[k - from], 1);
            continue;
        }
        if (e != 'u') {
            return jr_fail(r, "bad escape");
        }
        uint32_t cp;
        if (!jr_hex4(r, &cp)) {
            return false;
        }
        if (cp >= 0xD800 && cp < 0xDC00) {
            uint32_t lo;
            if (r->end - r->p < 2 || r->p[0] != '\\' || r->p[1] != 'u') {
                return jr_fail(r, "lone surrogate");
            }
            r->p += 2;
            if (!jr_hex4(r, &lo)) {
                return false;
            }
            if (lo < 0xDC00 || lo > 0xDFFF) {
                return jr_fail(r, "bad surrogate pair");
            }
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
        } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
            return jr_fail(r, "lone surrogate");
        }
        uint8_t u[4];
        tri_gbuf_put(b, (const char *) u, (size_t) tri_utf8_encode(cp, u));
    }
}

static bool jr_value(jreader * r, jv * v);

static bool jr_members(jreader * r, jv * v, bool object) {
    size_t cap = 0;
    jr_ws(r);
    if (r->p < r->end && *r->p == (object ? '}' : ']')) {
        r->p++;
        return true;
    }
    for (;;) {
        if (v->n == cap) {
            cap = cap ? cap * 2 : 4;
            jv * it = realloc(v->items, cap * sizeof *it);
            if (it) v->items = it;
            char ** k = object ? realloc(v->keys, cap * sizeof *k) : NULL;
            if (k) v->keys = k;
            size_t * kl = object ? realloc(v->klen, cap * sizeof *kl) : NULL;
            if (kl) v->klen = kl;
            if (!it || (object && (!k || !kl))) {
                return jr_fail(r, "out of memory");
            }
        }
        jv * it = &v->items[v->n];
        memset(it, 0, sizeof *it);
        if (object) {
            jr_ws(r);
            if (r->p >= r->end || *r->p != '"') {
                return jr_fail(r, "expected a key");
            }
            r->p++;
            tri_gbuf kb = { 0 };
            if (!jr_string(r, &kb)) {
                free(kb.p);
                return false;
            }
            v->keys[v->n] = kb.p;
            v->klen[v->n] = kb.len;
            v->n++;
            jr_ws(r);
            if (r->p >= r->end || *r->p != ':') {
                return jr_fail(r, "expected ':'");
            }
            r->p++;
        } else {
            v->n++;
        }
        if (!jr_value(r, it)) {
            return false;
        }
        jr_ws(r);
        if (r->p < r->end && *r->p == ',') {
            r->p++;
            continue;
        }
        if (r->p < r->end && *r->p == (object ? '}' : ']')) {
            r->p++;
            return true;
        }
        return jr_fail(r, object ? "expected ',' or '}'" : "expected ',' or ']'");
    }
}

static bool jr_number(jreader * r, jv * v) {
    const char * s = r->p;
    if (r->p < r->end && *r->p == '-') r->p++;
    if (r->p >= r->end || *r->p < '0' || *r->p > '9') return jr_fail(r, "bad number");
    if (*r->p == '0') {
        r->p++;
    } else {
        while (r->p < r->end && *r->p >= '0' && *r->p <= '9') r->p++;
    }
    if (r->p < r->end && *r->p == '.') {
        r->p++;
        if (r->p >= r->end || *r->p < '0' || *r->p > '9') return jr_fail(r, "bad number");
        while (r->p < r->end && *r->p >= '0' && *r->p <= '9') r->p++;
    }
    if (r->p < r->end && (*r->p == 'e' || *r->p == 'E')) {
        r->p++;
        if (r->p < r->end && (*r->p == '+' || *r->p == '-')) r->p++;
        if (r->p >= r->end || *r->p < '0' || *r->p > '9') return jr_fail(r, "bad number");
        while (r->p < r->end && *r->p >= '0' && *r->p <= '9') r->p++;
    }
    v->type = JV_NUM;
    v->len = (size_t) (r->p - s);
    v->str = malloc(v->len + 1);
    if (!v->str) return jr_fail(r, "out of memory");
    memcpy(v->str, s, v->len);
    v->str[v->len] = '\0';
    return true;
}

static bool jr_value(jreader * r, jv * v) {
    jr_ws(r);
    if (r->p >= r->end) {
        return jr_fail(r, "expected a value");
    }
    const char c = *r->p;
    static const struct { const char * word; int type; bool b; } words[] = {
        { "null", JV_NULL, false }, { "true", JV_BOOL, true }, { "false", JV_BOOL, false },
    };
    for (size_t i = 0; i < 3; i++) {
        size_t n = strlen(words[i].word);
        if ((size_t) (r->end - r->p) >= n && memcmp(r->p, words[i].word, n) == 0) {
            r->p += n;
            v->type = words[i].type;
            v->b = words[i].b;
            return true;
        }
    }
    if (c == '"') {
        r->p++;
        tri_gbuf b = { 0 };
        if (!jr_string(r, &b)) {
            free(b.p);
            return false;
        }
        v->type = JV_STR;
        v->str = b.p;
        v->len = b.len;
        return true;
    }
    if (c == '{' || c == '[') {
        if (++r->depth > 64) {
            return jr_fail(r, "nesting deeper than 64");
        }
        r->p++;
        v->type = c == '{' ? JV_OBJ : JV_ARR;
        bool ok = jr_members(r, v, c == '{');
        r->depth--;
        return ok;
    }
    return jr_number(r, v);
}

/* Compact serialisation: strings escape only '"', '\\' and control characters. */
static void jv_write(const jv * v, tri_gbuf * b);

static void write_str(const char * s, size_t n, tri_gbuf * b) {
    tri_gbuf_put(b, "\"", 1);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char) s[i];
        char e[8];
        if (c == '"' || c == '\\') {
            e[0] = '\\'; e[1] = (char) c;
            tri_gbuf_put(b, e, 2);
        } else if (c < 0x20) {
            snprintf(e, sizeof e, "\\u%04x", c);
            tri_gbuf_put(b, e, 6);
        } else {
            tri_gbuf_put(b, (const char *) &c, 1);
        }
    }
    tri_gbuf_put(b, "\"", 1);
}

static void jv_write(const jv * v, tri_gbuf * b) {
    switch (v->type) {
    case JV_NULL: tri_gbuf_put(b, "null", 4); break;
    case JV_BOOL: v->b ? tri_gbuf_put(b, "true", 4) : tri_gbuf_put(b, "false", 5); break;
    case JV_NUM: tri_gbuf_put(b, v->str, v->len); break;
    case JV_STR: write_str(v->str, v->len, b); break;
    default:
        tri_gbuf_put(b, v->type == JV_OBJ ? "{" : "[", 1);
        for (size_t i = 0; i < v->n; i++) {
            if (i) tri_gbuf_put(b, ",", 1);
            if (v->type == JV_OBJ) {
                write_str(v->keys[i], v->klen[i], b);
                tri_gbuf_put(b, ":", 1);
            }
            jv_write(&v->items[i], b);
        }
        tri_gbuf_put(b, v->type == JV_OBJ ? "}" : "]", 1);
    }
}

static const jv * jv_get(const jv * o, const char * key) {
    for (size_t i = o->n; i-- > 0;) {
        if (strcmp(o->keys[i], key) == 0 && strlen(key) == o->klen[i]) {
            return &o->items[i];
        }
    }
    return NULL;
}

/* ---- compiler ------------------------------------------------------------------------------------- */

typedef struct compiler {
    tri_schema * s;
    char *       err;
    size_t       err_size;
    enum triattn_status st;
    char         path[512];
} compiler;

static int32_t cfail(compiler * c, enum triattn_status st, const char * fmt, const char * what) {
    char msg[256];
    snprintf(msg, sizeof msg, fmt, what);
    c->st = tri_fail(c->err, c->err_size, st, "json_schema: %s at %s", msg, c->path);
    return -1;
}

static int32_t new_node(compiler * c) {
    tri_schema * s = c->s;
    if (s->n_nodes == s->cap_nodes) {
        int32_t cap = s->cap_nodes ? s->cap_nodes * 2 : 16;
        tri_schema_node * n = realloc(s->nodes, (size_t) cap * sizeof *n);
        if (!n) return cfail(c, TRIATTN_ERR_OOM, "%s", "out of memory");
        s->nodes = n;
        s->cap_nodes = cap;
    }
    tri_schema_node * n = &s->nodes[s->n_nodes];
    memset(n, 0, sizeof *n);
    n->types = TRI_T_ANY;
    n->max_len = TRI_SCHEMA_MAX_STRING;
    n->max_items = -1;
    n->items = 0;
    n->additional = 0;
    return s->n_nodes++;
}

static bool add_lit(compiler * c, char * text, size_t len) {
    tri_schema * s = c->s;
    if (s->n_lits == s->cap_lits) {
        int32_t cap = s->cap_lits ? s->cap_lits * 2 : 16;
        char ** l = realloc(s->lits, (size_t) cap * sizeof *l);
        if (l) s->lits = l;
        int32_t * ll = realloc(s->lit_len, (size_t) cap * sizeof *ll);
        if (ll) s->lit_len = ll;
        if (!l || !ll) {
            free(text);
            cfail(c, TRIATTN_ERR_OOM, "%s", "out of memory");
            return false;
        }
        s->cap_lits = cap;
    }
    s->lits[s->n_lits] = text;
    s->lit_len[s->n_lits] = (int32_t) len;
    s->n_lits++;
    return true;
}

/* add_lit of a copy of text[0..len). */
static bool add_lit_copy(compiler * c, const char * text, size_t len) {
    char * t = malloc(len + 1);
    if (!t) {
        cfail(c, TRIATTN_ERR_OOM, "%s", "out of memory");
        return false;
    }
    memcpy(t, text, len);
    t[len] = '\0';
    return add_lit(c, t, len);
}

/* Room for n more entries of prop_node. */
static bool reserve_props(compiler * c, int32_t n) {
    tri_schema * s = c->s;
    if (s->n_props + n <= s->cap_props) return true;
    const int32_t cap = TRI_MAX(s->cap_props * 2, s->n_props + n + 16);
    int32_t * p = realloc(s->prop_node, (size_t) cap * sizeof *p);
    if (!p) {
        cfail(c, TRIATTN_ERR_OOM, "%s", "out of memory");
        return false;
    }
    s->prop_node = p;
    s->cap_props = cap;
    return true;
}

static int lit_cmp(const char * a, int32_t na, const char * b, int32_t nb) {
    int r = memcmp(a, b, (size_t) TRI_MIN(na, nb));
    return r ? r : (na > nb) - (na < nb);
}

/* Sorts the literals [first, first + n) (insertion sort, carrying perm along when given) and refuses
 * duplicates. */
static bool sort_lits(compiler * c, int32_t first, int32_t n, int32_t * perm, const char * what) {
    tri_schema * s = c->s;
    for (int32_t i = 1; i < n; i++) {
        for (int32_t j = first + i; j > first; j--) {
            int r = lit_cmp(s->lits[j - 1], s->lit_len[j - 1], s->lits[j], s->lit_len[j]);
            if (r == 0) {
                cfail(c, TRIATTN_ERR_INVALID_ARG, "duplicate %s", what);
                return false;
            }
            if (r < 0) break;
            char * t = s->lits[j]; s->lits[j] = s->lits[j - 1]; s->lits[j - 1] = t;
            int32_t l = s->lit_len[j]; s->lit_len[j] = s->lit_len[j - 1]; s->lit_len[j - 1] = l;
            if (perm) {
                int32_t p = perm[j - first]; perm[j - first] = perm[j - 1 - first]; perm[j - 1 - first] = p;
            }
        }
    }
    return true;
}

static bool is_annotation(const char * key) {
    static const char * ann[] = { "title", "description", "$schema", "$id", "$comment", "default", "examples" };
    for (size_t k = 0; k < sizeof ann / sizeof ann[0]; k++) {
        if (strcmp(key, ann[k]) == 0) return true;
    }
    return false;
}

static uint32_t jv_types(const jv * v) {
    switch (v->type) {
    case JV_NULL: return TRI_T_NULL;
    case JV_BOOL: return TRI_T_BOOL;
    case JV_STR: return TRI_T_STR;
    case JV_ARR: return TRI_T_ARR;
    case JV_OBJ: return TRI_T_OBJ;
    default: return strpbrk(v->str, ".eE") ? TRI_T_NUM : TRI_T_NUM | TRI_T_INT;
    }
}

static int32_t compile_node(compiler * c, const jv * v, int depth);

/* Compiles v at path + suffix (restoring the path afterwards). */
static int32_t compile_at(compiler * c, const jv * v, int depth, const char * suffix) {
    size_t n = strlen(c->path);
    snprintf(c->path + n, sizeof c->path - n, "%s", suffix);
    int32_t r = compile_node(c, v, depth);
    if (c->st == TRIATTN_OK) c->path[n] = '\0';
    return r;
}

static bool get_count(compiler * c, const jv * o, const char * key, int32_t * out) {
    const jv * v = jv_get(o, key);
    if (!v) return true;
    if (v->type != JV_NUM || strpbrk(v->str, ".eE-") || v->len > 9) {
        cfail(c, TRIATTN_ERR_INVALID_ARG, "'%s' must be a non-negative integer below 1e9", key);
        return false;
    }
    *out = (int32_t) strtol(v->str, NULL, 10);
    return true;
}

static bool compile_types(compiler * c, const jv * o, tri_schema_node * n) {
    const jv * t = jv_get(o, "type");
    if (!t) return true;
    static const struct { const char * name; uint32_t bits; } names[] = {
        { "null", TRI_T_NULL }, { "boolean", TRI_T_BOOL }, { "integer", TRI_T_INT },
        { "number", TRI_T_NUM | TRI_T_INT }, { "string", TRI_T_STR }, { "array", TRI_T_ARR }, { "object", TRI_T_OBJ },
    };
    size_t count = t->type == JV_ARR ? t->n : 1;
    n->types = 0;
    for (size_t i = 0; i < count; i++) {
        const jv * e = t->type == JV_ARR ? &t->items[i] : t;
        uint32_t bits = 0;
        for (size_t k = 0; e->type == JV_STR && k < sizeof names / sizeof names[0]; k++) {
            if (strcmp(e->str, names[k].name) == 0) bits = names[k].bits;
        }
        if (!bits) {
            cfail(c, TRIATTN_ERR_INVALID_ARG, "%s", "'type' must name JSON types");
            return false;
        }
        n->types |= bits;
    }
    return true;
}

/* enum / const (const wins when both are given): the compact texts of the values whose type the node allows. */
static bool compile_lits(compiler * c, const jv * o, int32_t id) {
    const jv * e = jv_get(o, "enum");
    const jv * k = jv_get(o, "const");
    if (!e && !k) return true;
    if (e && e->type != JV_ARR) {
        cfail(c, TRIATTN_ERR_INVALID_ARG, "%s", "'enum' must be an array");
        return false;
    }
    int32_t first = c->s->n_lits;
    size_t count = k ? 1 : e->n;
    for (size_t i = 0; i < count; i++) {
        const jv * v = k ? k : &e->items[i];
        if (!(jv_types(v) & c->s->nodes[id].types)) {
            continue;
        }
        tri_gbuf b = { 0 };
        jv_write(v, &b);
        if (b.oom) {
            free(b.p);
            cfail(c, TRIATTN_ERR_OOM, "%s", "out of memory");
            return false;
        }
        if (!add_lit(c, b.p, b.len)) return false;
    }
    tri_schema_node * n = &c->s->nodes[id];
    n->lits.first = first;
    n->lits.count = c->s->n_lits - first;
    if (n->lits.count == 0) {
        cfail(c, TRIATTN_ERR_INVALID_ARG, "%s", "enum/const allows no value of the schema's type");
        return false;
    }
    return sort_lits(c, first, n->lits.count, NULL, "enum value");
}

static bool compile_object(compiler * c, const jv * o, int32_t id, int depth) {
    const jv * props = jv_get(o, "properties");
    const jv * req = jv_get(o, "required");
    const jv * add = jv_get(o, "additionalProperties");
    if ((props && props->type != JV_OBJ) || (req && req->type != JV_ARR) ||
        (add && add->type != JV_BOOL && add->type != JV_OBJ)) {
        cfail(c, TRIATTN_ERR_INVALID_ARG, "%s", "bad properties / required / additionalProperties");
        return false;
    }
    /* other keys: none when properties are listed (unless additionalProperties says so), any otherwise */
    int32_t additional = props ? -1 : 0;
    if (add && add->type == JV_BOOL) {
        additional = add->b ? 0 : -1;
    } else if (add) {
        additional = compile_at(c, add, depth + 1, ".additionalProperties");
        if (additional < 0) return false;
    }
    int32_t n_keys = 0;
    int32_t perm[TRI_SCHEMA_MAX_PROPS];
    int32_t value_node[TRI_SCHEMA_MAX_PROPS];
    const char * names[TRI_SCHEMA_MAX_PROPS];
    size_t name_len[TRI_SCHEMA_MAX_PROPS];
    size_t n_props = props ? props->n : 0, n_req = req ? req->n : 0;
    /* value schemas first (they add literals of their own), then this object's key literals in one range */
    for (size_t i = 0; i < n_props + n_req; i++) {
        const char * name = i < n_props ? props->keys[i] : req->items[i - n_props].str;
        size_t nlen = i < n_props ? props->klen[i] : req->items[i - n_props].len;
        if (i >= n_props) {
            if (req->items[i - n_props].type != JV_STR) {
                cfail(c, TRIATTN_ERR_INVALID_ARG, "%s", "'required' must list strings");
                return false;
            }
            bool listed = false;
            for (int32_t k = 0; k < n_keys && !listed; k++) {
                listed = name_len[k] == nlen && memcmp(names[k], name, nlen) == 0;
            }
            if (listed) continue;
            if (add && add->type == JV_BOOL && !add->b) {
                cfail(c, TRIATTN_ERR_INVALID_ARG, "required property '%s' is not allowed by the schema", name);
                return false;
            }
        } else if (jv_get(props, name) != &props->items[i]) {
            continue; /* a duplicate key: the last one wins */
        }
        if (n_keys == TRI_SCHEMA_MAX_PROPS) {
            cfail(c, TRIATTN_ERR_UNSUPPORTED, "%s", "more than 64 properties");
            return false;
        }
        int32_t vn = additional >= 0 ? additional : 0; /* a required key outside properties: any value */
        if (i < n_props) {
            char suffix[300];
            snprintf(suffix, sizeof suffix, ".properties.%s", name);
            vn = compile_at(c, &props->items[i], depth + 1, suffix);
            if (vn < 0) return false;
        }
        perm[n_keys] = n_keys;
        value_node[n_keys] = vn;
        names[n_keys] = name;
        name_len[n_keys] = nlen;
        n_keys++;
    }
    const int32_t first = c->s->n_lits;
    for (int32_t k = 0; k < n_keys; k++) {
        tri_gbuf b = { 0 };
        write_str(names[k], name_len[k], &b);
        if (b.oom) {
            free(b.p);
            cfail(c, TRIATTN_ERR_OOM, "%s", "out of memory");
            return false;
        }
        if (!add_lit(c, b.p, b.len)) return false;
    }
    if (!sort_lits(c, first, n_keys, perm, "property")) return false;
    if (!reserve_props(c, n_keys)) return false;
    tri_schema * s = c->s;
    tri_schema_node * n = &s->nodes[id];
    n->keys.first = first;
    n->keys.count = n_keys;
    n->props = s->n_props;
    n->additional = additional;
    n->required = 0;
    for (int32_t k = 0; k < n_keys; k++) {
        s->prop_node[s->n_props + k] = value_node[perm[k]];
        const char * key = s->lits[first + k];
        for (size_t r = 0; r < n_req; r++) {
            const jv * rv = &req->items[r];
            tri_gbuf b = { 0 };
            write_str(rv->str, rv->len, &b);
            if (b.p && (int32_t) b.len == s->lit_len[first + k] && memcmp(b.p, key, b.len) == 0) {
                n->required |= 1ull << k;
            }
            free(b.p);
        }
    }
    s->n_props += n_keys;
    return true;
}

/* The key index of the literal text (t, n) among node nd's keys, or -1. */
static int32_t key_index(const tri_schema * s, const tri_schema_node * nd, const char * t, int32_t n) {
    for (int32_t k = 0; k < nd->keys.count; k++) {
        const int32_t l = nd->keys.first + k;
        if (s->lit_len[l] == n && memcmp(s->lits[l], t, (size_t) n) == 0) return k;
    }
    return -1;
}

/* A discriminator of the compiled alternatives: a key that each of them requires with literal values; -1 when
 * there is none. Returns the key index in alternative 0. */
static int32_t find_discriminator(const tri_schema * s, const int32_t * alt, size_t n) {
    const tri_schema_node * a0 = &s->nodes[alt[0]];
    for (int32_t k = 0; k < a0->keys.count; k++) {
        const char * t = s->lits[a0->keys.first + k];
        const int32_t tn = s->lit_len[a0->keys.first + k];
        bool ok = true;
        for (size_t i = 0; i < n && ok; i++) {
            const tri_schema_node * a = &s->nodes[alt[i]];
            const int32_t ki = key_index(s, a, t, tn);
            ok = ki >= 0 && (a->required >> ki & 1) && s->nodes[s->prop_node[a->props + ki]].lits.count > 0;
        }
        if (ok) return k;
    }
    return -1;
}

/* Room for n more entries of alt_node / alt_key. */
static bool reserve_alts(compiler * c, int32_t n) {
    tri_schema * s = c->s;
    if (s->n_alts + n <= s->cap_alts) return true;
    const int32_t cap = TRI_MAX(s->cap_alts * 2, s->n_alts + n + 16);
    int32_t * an = realloc(s->alt_node, (size_t) cap * sizeof *an);
    if (an) s->alt_node = an;
    int32_t * ak = an ? realloc(s->alt_key, (size_t) cap * sizeof *ak) : NULL;
    if (ak) s->alt_key = ak;
    if (!an || !ak) {
        cfail(c, TRIATTN_ERR_OOM, "%s", "out of memory");
        return false;
    }
    s->cap_alts = cap;
    return true;
}

static int32_t union_refused(compiler * c, const char * why) {
    c->st = tri_fail(c->err, c->err_size, TRIATTN_ERR_UNSUPPORTED,
                     "json_schema: unsupported keyword 'anyOf' at %s (%s; anyOf is supported as a union of object "
                     "schemas that all require one property with const or enum values no two of them share)",
                     c->path, why);
    return -1;
}

/* anyOf as a discriminated union (see json_schema.h): a node whose only key is the discriminator, whose value
 * node holds every alternative's values, each mapped to its alternative. */
static int32_t compile_union(compiler * c, const jv * v, int depth) {
    for (size_t i = 0; i < v->n; i++) {
        if (strcmp(v->keys[i], "anyOf") != 0 && !is_annotation(v->keys[i])) {
            return union_refused(c, "other keywords beside it");
        }
    }
    const jv * any = jv_get(v, "anyOf");
    if (any->type != JV_ARR || any->n == 0) {
        return cfail(c, TRIATTN_ERR_INVALID_ARG, "%s", "'anyOf' must be a non-empty array");
    }
    if (any->n > TRI_SCHEMA_MAX_PROPS) return union_refused(c, "more than 64 alternatives");
    int32_t alt[TRI_SCHEMA_MAX_PROPS];
    for (size_t i = 0; i < any->n; i++) {
        char suffix[32];
        snprintf(suffix, sizeof suffix, ".anyOf[%zu]", i);
        alt[i] = compile_at(c, &any->items[i], depth + 1, suffix);
        if (alt[i] < 0) return -1;
        const tri_schema_node * a = &c->s->nodes[alt[i]];
        if (a->types != TRI_T_OBJ || a->lits.count > 0 || a->n_alts > 0) {
            return union_refused(c, "an alternative is not an object schema");
        }
    }
    const int32_t dk = find_discriminator(c->s, alt, any->n);
    if (dk < 0) return union_refused(c, "no property that every alternative requires with const or enum values");
    tri_schema * s = c->s;
    const tri_schema_node * a0 = &s->nodes[alt[0]];
    const char * dtext = s->lits[a0->keys.first + dk];
    const int32_t dlen = s->lit_len[a0->keys.first + dk];
    /* the value node: every alternative's literals; owner[i] = (alternative, its discriminator key index) of
     * value i, perm follows the values through the sort */
    int32_t n_vals = 0;
    uint32_t types = 0;
    for (size_t i = 0; i < any->n; i++) {
        const tri_schema_node * a = &s->nodes[alt[i]];
        const tri_schema_node * vn = &s->nodes[s->prop_node[a->props + key_index(s, a, dtext, dlen)]];
        n_vals += vn->lits.count;
        types |= vn->types;
    }
    const int32_t val = new_node(c);
    int32_t * owner = malloc((size_t) n_vals * 3 * sizeof *owner);
    if (val < 0 || !owner || !reserve_alts(c, n_vals)) {
        free(owner);
        return val < 0 || !owner ? cfail(c, TRIATTN_ERR_OOM, "%s", "out of memory") : -1;
    }
    int32_t * perm = owner + 2 * n_vals;
    const int32_t first = s->n_lits;
    for (size_t i = 0, k = 0; i < any->n; i++) {
        const tri_schema_node * a = &s->nodes[alt[i]];
        const int32_t ki = key_index(s, a, dtext, dlen);
        const tri_litset vl = s->nodes[s->prop_node[a->props + ki]].lits;
        for (int32_t l = 0; l < vl.count; l++, k++) {
            if (!add_lit_copy(c, s->lits[vl.first + l], (size_t) s->lit_len[vl.first + l])) {
                free(owner);
                return -1;
            }
            owner[2 * k] = alt[i];
            owner[2 * k + 1] = ki;
            perm[k] = (int32_t) k;
        }
    }
    if (!sort_lits(c, first, n_vals, perm, "literal")) {
        free(owner);
        c->st = TRIATTN_OK; /* the union's own message replaces sort_lits' */
        return union_refused(c, "two alternatives share a discriminator value");
    }
    const int32_t alts = s->n_alts;
    for (int32_t k = 0; k < n_vals; k++) {
        s->alt_node[alts + k] = owner[2 * perm[k]];
        s->alt_key[alts + k] = owner[2 * perm[k] + 1];
    }
    s->n_alts += n_vals;
    free(owner);
    s->nodes[val].types = types;
    s->nodes[val].lits.first = first;
    s->nodes[val].lits.count = n_vals;
    /* the union node: one required key, the discriminator */
    const int32_t id = new_node(c);
    const int32_t kfirst = s->n_lits;
    if (id < 0 || !reserve_props(c, 1) || !add_lit_copy(c, dtext, (size_t) dlen)) return -1;
    tri_schema_node * n = &s->nodes[id];
    n->types = TRI_T_OBJ;
    n->keys.first = kfirst;
    n->keys.count = 1;
    n->props = s->n_props;
    n->additional = -1;
    n->required = 1;
    n->alts = alts;
    n->n_alts = n_vals;
    s->prop_node[s->n_props++] = val;
    return id;
}

static int32_t compile_node(compiler * c, const jv * v, int depth) {
    if (depth > TRI_SCHEMA_MAX_DEPTH - 3) {
        return cfail(c, TRIATTN_ERR_UNSUPPORTED, "%s", "schema nested too deeply");
    }
    if (v->type == JV_BOOL) {
        return v->b ? 0 : cfail(c, TRIATTN_ERR_UNSUPPORTED, "%s", "schema 'false' matches nothing");
    }
    if (v->type != JV_OBJ) {
        return cfail(c, TRIATTN_ERR_INVALID_ARG, "%s", "a schema must be an object or a boolean");
    }
    if (jv_get(v, "anyOf")) {
        return compile_union(c, v, depth);
    }
    static const char * known[] = {
        "type", "properties", "required", "additionalProperties", "items", "enum", "const", "minLength",
        "maxLength", "minItems", "maxItems",
    };
    for (size_t i = 0; i < v->n; i++) {
        bool ok = is_annotation(v->keys[i]);
        for (size_t k = 0; k < sizeof known / sizeof known[0] && !ok; k++) {
            ok = strcmp(v->keys[i], known[k]) == 0;
        }
        if (!ok) {
            return cfail(c, TRIATTN_ERR_UNSUPPORTED, "unsupported keyword '%s'", v->keys[i]);
        }
    }
    int32_t id = new_node(c);
    if (id < 0 || !compile_types(c, v, &c->s->nodes[id])) return -1;
    if (!compile_lits(c, v, id)) return -1;
    tri_schema_node tmp = c->s->nodes[id];
    if (!get_count(c, v, "minLength", &tmp.min_len) || !get_count(c, v, "maxLength", &tmp.max_len) ||
        !get_count(c, v, "minItems", &tmp.min_items) || !get_count(c, v, "maxItems", &tmp.max_items)) {
        return -1;
    }
    if (!jv_get(v, "maxLength") && tmp.min_len > TRI_SCHEMA_MAX_STRING) tmp.max_len = tmp.min_len;
    if (tmp.min_len > tmp.max_len || (tmp.max_items >= 0 && tmp.min_items > tmp.max_items)) {
        return cfail(c, TRIATTN_ERR_INVALID_ARG, "%s", "a minimum exceeds its maximum");
    }
    const jv * items = jv_get(v, "items");
    if (items) {
        tmp.items = compile_at(c, items, depth + 1, ".items");
        if (tmp.items < 0) return -1;
    }
    c->s->nodes[id] = tmp;
    if (!compile_object(c, v, id, depth)) return -1;
    return id;
}

/* ---- public --------------------------------------------------------------------------------------- */

void tri_schema_free(tri_schema * s) {
    if (!s) return;
    for (int32_t i = 0; i < s->n_lits; i++) free(s->lits[i]);
    free(s->lits);
    free(s->lit_len);
    free(s->nodes);
    free(s->prop_node);
    free(s->alt_node);
    free(s->alt_key);
    free(s);
}

/* A node whose value is one of the given literal texts. */
static int32_t literal_node(compiler * c, const char * const * texts, int32_t n) {
    int32_t id = new_node(c);
    if (id < 0) return -1;
    int32_t first = c->s->n_lits;
    for (int32_t i = 0; i < n; i++) {
        if (!add_lit_copy(c, texts[i], strlen(texts[i]))) return -1;
    }
    c->s->nodes[id].lits.first = first;
    c->s->nodes[id].lits.count = n;
    return sort_lits(c, first, n, NULL, "literal") ? id : -1;
}

enum triattn_status tri_schema_compile(const char * text, size_t len, tri_schema ** out, char * err, size_t err_size) {
    if (!out || !text) return tri_fail(err, err_size, TRIATTN_ERR_INVALID_ARG, "json_schema: NULL argument");
    *out = NULL;
    jreader r = { text, text + len, text, err, err_size, 0 };
    jv root = { 0 };
    if (!jr_value(&r, &root)) {
        jv_clear(&root);
        return TRIATTN_ERR_INVALID_ARG;
    }
    jr_ws(&r);
    if (r.p != r.end) {
        jv_clear(&root);
        jr_fail(&r, "trailing characters after the schema");
        return TRIATTN_ERR_INVALID_ARG;
    }
    compiler c = { 0 };
    c.err = err;
    c.err_size = err_size;
    c.st = TRIATTN_OK;
    strcpy(c.path, "$");
    c.s = calloc(1, sizeof *c.s);
    if (!c.s) {
        jv_clear(&root);
        return tri_fail(err, err_size, TRIATTN_ERR_OOM, "json_schema: out of memory");
    }
    static const char * const bools[] = { "true", "false" }, * const nulls[] = { "null" };
    /* node 0: any value (its items and additional values are node 0 again) */
    if (new_node(&c) == 0) {
        c.s->node_bool = literal_node(&c, bools, 2);
        c.s->node_null = c.st == TRIATTN_OK ? literal_node(&c, nulls, 1) : -1;
        c.s->root = c.st == TRIATTN_OK ? compile_node(&c, &root, 0) : -1;
    }
    jv_clear(&root);
    if (c.st != TRIATTN_OK) {
        tri_schema_free(c.s);
        return c.st;
    }
    *out = c.s;
    return TRIATTN_OK;
}

enum triattn_status triattn_json_schema_check(const char * schema, char * err, size_t err_size) {
    if (err && err_size) err[0] = '\0';
    if (!schema) return tri_fail(err, err_size, TRIATTN_ERR_INVALID_ARG, "json_schema: schema is NULL");
    tri_schema * s = NULL;
    const enum triattn_status st = tri_schema_compile(schema, strlen(schema), &s, err, err_size);
    tri_schema_free(s);
    return st;
}
