/* Internal helpers shared by the engine: status formatting, logging, small utilities. */
#ifndef TRI_COMMON_H
#define TRI_COMMON_H

#include "triattn.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(__MINGW32__)
#  define TRI_PRINTF(a, b) __attribute__((format(gnu_printf, a, b))) /* with __USE_MINGW_ANSI_STDIO */
#elif defined(__GNUC__)
#  define TRI_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#  define TRI_PRINTF(a, b)
#endif

/* Writes a formatted message into err (if err && n > 0) and returns status. */
enum triattn_status tri_fail(char * err, size_t n, enum triattn_status status, const char * fmt, ...) TRI_PRINTF(4, 5);

/* Process-wide logging through the callback installed by triattn_log_set. */
void tri_log(enum triattn_log_level level, const char * fmt, ...) TRI_PRINTF(2, 3);

/* Monotonic wall clock in milliseconds. */
double tri_time_ms(void);

/* Text written into a caller buffer of capacity cap: len counts the full length even past the capacity,
 * one byte is kept for the terminating NUL (tri_strbuf_finish). */
typedef struct tri_strbuf {
    char * buf;
    size_t cap;
    size_t len;
} tri_strbuf;

static inline void tri_strbuf_put(tri_strbuf * b, const char * s, size_t n) {
    if (b->len + 1 < b->cap) {
        const size_t room = b->cap - 1 - b->len;
        memcpy(b->buf + b->len, s, n < room ? n : room);
    }
    b->len += n;
}

static inline void tri_strbuf_finish(tri_strbuf * b) {
    if (b->cap > 0) {
        b->buf[b->len < b->cap ? b->len : b->cap - 1] = '\0';
    }
}

/* Growable, NUL-terminated output. A put (even of nothing) leaves p pointing at a string unless an
 * allocation failed, which sets oom and ignores further puts. */
typedef struct {
    char * p;
    size_t len, cap;
    bool   oom;
} tri_gbuf;

void tri_gbuf_put(tri_gbuf * b, const char * s, size_t n);
void tri_gbuf_str(tri_gbuf * b, const char * s);
void tri_gbuf_free(tri_gbuf * b);

/* Ends a call that writes into a caller buffer: on success the text is terminated and *n_out (when given) is
 * its full length; on failure the buffer is left empty. Returns st. */
static inline enum triattn_status tri_strbuf_end(tri_strbuf * b, enum triattn_status st, size_t * n_out) {
    if (st != TRIATTN_OK) {
        if (b->cap > 0) {
            b->buf[0] = '\0';
        }
        return st;
    }
    tri_strbuf_finish(b);
    if (n_out) {
        *n_out = b->len;
    }
    return TRIATTN_OK;
}

#define TRI_MIN(a, b) ((a) < (b) ? (a) : (b))
#define TRI_MAX(a, b) ((a) > (b) ? (a) : (b))

#endif
