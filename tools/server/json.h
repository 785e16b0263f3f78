/*
 * json.h - a small JSON parser (DOM) and serializer for triattn-server.
 *
 * The parser follows RFC 8259 strictly: full UTF-8 validation (no overlong forms, no encoded surrogates,
 * nothing past U+10FFFF), every escape including \u surrogate pairs (lone surrogates are rejected), a depth
 * limit and a node limit. A parsed document owns all its memory; json_free releases it.
 */
#ifndef TRI_SRV_JSON_H
#define TRI_SRV_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum json_type { JSON_NULL, JSON_BOOL, JSON_NUMBER, JSON_STRING, JSON_ARRAY, JSON_OBJECT };

/* One value: 40 bytes (the type's fields share their storage; read only those of v->type). */
typedef struct json_value json_value;
struct json_value {
    enum json_type type;
    bool           b;          /* JSON_BOOL */
    bool           is_int;     /* JSON_NUMBER: no fraction or exponent, and it fits int64 */
    union {
        struct { double num; int64_t i; };                      /* JSON_NUMBER */
        struct { char * str; size_t len; };                     /* JSON_STRING: NUL-terminated UTF-8 (may
                                                                   contain \0 from \u0000; see len) */
        struct {                                                /* JSON_ARRAY, JSON_OBJECT */
            json_value * items;    /* array elements or object values */
            char **      keys;     /* object keys (NUL-terminated) */
            size_t *     key_lens;
            size_t       n;        /* number of elements / members */
        };
    };
};

struct json_limits {
    int    max_depth;   /* nesting of arrays/objects (default 64) */
    size_t max_nodes;   /* values in the document (default 1 << 20) */
    size_t max_bytes;   /* memory the document may take, all allocations counted (0: unlimited); beyond it
                           the parse fails with a message containing JSON_ERR_BUDGET */
};

#define JSON_ERR_BUDGET "over the memory budget"
#define JSON_ERR_OOM    "out of memory"  /* an allocation failed: the server's fault, not the document's */

/* Parses text[0..len). Returns the root or NULL with a message in err (includes the byte offset). */
json_value * json_parse(const char * text, size_t len, const struct json_limits * lim, char * err, size_t err_size);
void         json_free(json_value * v);

/* Member of an object by key, or NULL (also NULL when v is not an object). The last duplicate wins. */
const json_value * json_get(const json_value * v, const char * key);

/* True when s[0..len) is valid UTF-8 (same rules as the parser). */
bool json_utf8_valid(const char * s, size_t len);

/* ---- serializer: an append-only growable buffer ---- */
typedef struct {
    char * data;
    size_t len, cap;
    bool   oom;       /* an allocation failed; the content is truncated */
} jbuf;

void jb_init(jbuf * b);
void jb_free(jbuf * b);
void jb_reset(jbuf * b);
void jb_raw(jbuf * b, const char * s, size_t n);
void jb_cstr(jbuf * b, const char * s);                 /* raw, NUL-terminated */
void jb_str(jbuf * b, const char * s, size_t n);        /* quoted and escaped JSON string */
void jb_qcstr(jbuf * b, const char * s);                /* quoted, NUL-terminated */
void jb_int(jbuf * b, int64_t v);
void jb_num(jbuf * b, double v);                        /* NaN/inf become null */
/* printf-checked formats (MinGW: the C99 printf of __USE_MINGW_ANSI_STDIO) */
#if defined(__MINGW32__)
#  define JSON_PRINTF(a, b) __attribute__((format(gnu_printf, a, b)))
#else
#  define JSON_PRINTF(a, b) __attribute__((format(printf, a, b)))
#endif

void jb_printf(jbuf * b, const char * fmt, ...) JSON_PRINTF(2, 3);
/* Serializes a parsed value (compact). */
void jb_value(jbuf * b, const json_value * v);

#endif
