/* Streaming text filter: a UTF-8 decoder (invalid bytes -> U+FFFD, incomplete characters held back) feeding
 * a fixed-size pending buffer from which everything is emitted except the longest tail that could still
 * grow into a stop string. The buffer is sized at creation; pieces larger than it are processed in chunks,
 * so pushing never allocates. */
#include "textstream.h"

#include <stdlib.h>
#include <string.h>

struct tri_textstream {
    char **  stop;      /* n_stop non-empty stop strings, all in one allocation with this struct */
    size_t * stop_len;
    int32_t  n_stop;
    size_t   max_stop;  /* longest stop string */

    char *   text;      /* pending text: whole, valid UTF-8 characters not yet emitted */
    size_t   len;
    size_t   checked;   /* matches ending within text[0..checked) were already looked for */
    size_t   cap;

    unsigned char part[4];  /* bytes of an incomplete character */
    int           n_part;
    int           need;     /* length of that character */
    unsigned char lo, hi;   /* allowed range of its second byte */

    enum tri_ts_result done;  /* CONTINUE while running; STOP/ABORT once ended */
};

static const char k_replacement[3] = { (char) 0xEF, (char) 0xBF, (char) 0xBD };  /* U+FFFD */

tri_textstream * tri_textstream_create(const char * const * stop, int32_t n_stop) {
    size_t  strings = 0, max_stop = 0;
    int32_t n_keep  = 0;
    for (int32_t i = 0; i < n_stop && stop; i++) {
        size_t l = stop[i] ? strlen(stop[i]) : 0;
        if (l > 0) {
            strings += l + 1;
            max_stop = l > max_stop ? l : max_stop;
            n_keep++;
        }
    }
    /* Room for a held-back tail (< max_stop) plus a useful chunk of new text. */
    size_t cap   = 2 * max_stop + 256;
    size_t bytes = sizeof(tri_textstream) + (size_t) n_keep * (sizeof(char *) + sizeof(size_t)) + strings + cap;
    tri_textstream * ts = calloc(1, bytes);
    if (!ts) {
        return NULL;
    }
    char * p     = (char *) (ts + 1);
    ts->stop     = (char **) p;
    p           += (size_t) n_keep * sizeof(char *);
    ts->stop_len = (size_t *) p;
    p           += (size_t) n_keep * sizeof(size_t);
    for (int32_t i = 0; i < n_stop && stop; i++) {
        size_t l = stop[i] ? strlen(stop[i]) : 0;
        if (l > 0) {
            memcpy(p, stop[i], l + 1);
            ts->stop[ts->n_stop]     = p;
            ts->stop_len[ts->n_stop] = l;
            ts->n_stop++;
            p += l + 1;
        }
    }
    ts->max_stop = max_stop;
    ts->text     = p;
    ts->cap      = cap;
    return ts;
}

void tri_textstream_free(tri_textstream * ts) { free(ts); }

void tri_textstream_reset(tri_textstream * ts) {
    if (ts) {
        ts->len     = 0;
        ts->checked = 0;
        ts->n_part  = 0;
        ts->done   = TRI_TS_CONTINUE;
    }
}

static bool emit(const char * s, size_t n, triattn_piece_fn fn, void * user_data) {
    return n == 0 || !fn || fn(s, (int32_t) n, user_data);
}

/* Start of the stop-string match that ends first in the pending text (the longest one among those ending at
 * the same byte), or -1. This is the match a token-by-token generator meets first, so the result does not
 * depend on how the text was split into pieces. Ends up to ts->checked were searched before. */
static long find_stop(const tri_textstream * ts) {
    for (size_t e = ts->checked + 1; e <= ts->len; e++) {
        size_t best = 0;
        for (int32_t k = 0; k < ts->n_stop; k++) {
            size_t l = ts->stop_len[k];
            if (l <= e && l > best && ts->text[e - 1] == ts->stop[k][l - 1] &&
                memcmp(ts->text + e - l, ts->stop[k], l) == 0) {
                best = l;
            }
        }
        if (best > 0) {
            return (long) (e - best);
        }
    }
    return -1;
}

/* Length of the longest tail of the pending text that is a proper prefix of a stop string. */
static size_t held_tail(const tri_textstream * ts) {
    size_t m = ts->max_stop > 0 ? ts->max_stop - 1 : 0;
    m        = m < ts->len ? m : ts->len;
    for (size_t t = m; t > 0; t--) {
        const char * tail = ts->text + ts->len - t;
        for (int32_t k = 0; k < ts->n_stop; k++) {
            if (ts->stop_len[k] > t && memcmp(tail, ts->stop[k], t) == 0) {
                return t;
            }
        }
    }
    return 0;
}

/* Emits what is safe in the pending text; keeps the possible start of a stop string. */
static enum tri_ts_result drain(tri_textstream * ts, bool final, triattn_piece_fn fn, void * user_data) {
    long at = find_stop(ts);
    if (at >= 0) {
        bool ok  = emit(ts->text, (size_t) at, fn, user_data);
        ts->len  = 0;
        ts->done = ok ? TRI_TS_STOP : TRI_TS_ABORT;
        return ts->done;
    }
    size_t keep = final ? 0 : held_tail(ts);
    size_t out  = ts->len - keep;
    while (out > 0 && out < ts->len && ((unsigned char) ts->text[out] & 0xC0) == 0x80) {
        out--;  /* a stop string that starts mid-character: keep the whole character */
    }
    ts->checked = ts->len;
    if (out == 0) {
        return TRI_TS_CONTINUE;
    }
    bool ok = emit(ts->text, out, fn, user_data);
    memmove(ts->text, ts->text + out, ts->len - out);
    ts->len -= out;
    ts->checked = ts->len;
    if (!ok) {
        ts->done = TRI_TS_ABORT;
    }
    return ts->done;
}

static void append(tri_textstream * ts, const void * s, size_t n) {
    memcpy(ts->text + ts->len, s, n);
    ts->len += n;
}

/* Decodes one byte into the pending text. */
static void put_byte(tri_textstream * ts, unsigned char c) {
    if (ts->n_part > 0) {
        unsigned char lo = ts->n_part == 1 ? ts->lo : 0x80, hi = ts->n_part == 1 ? ts->hi : 0xBF;
        if (c >= lo && c <= hi) {
            ts->part[ts->n_part++] = c;
            if (ts->n_part == ts->need) {
                append(ts, ts->part, (size_t) ts->need);
                ts->n_part = 0;
            }
            return;
        }
        /* The sequence broke off: its maximal valid prefix becomes one U+FFFD, c starts afresh. */
        append(ts, k_replacement, 3);
        ts->n_part = 0;
    }
    int need = 0;
    unsigned char lo = 0x80, hi = 0xBF;
    if (c < 0x80) {
        append(ts, &c, 1);
        return;
    } else if (c >= 0xC2 && c <= 0xDF) {
        need = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
        need = 3;
        lo   = c == 0xE0 ? 0xA0 : 0x80;  /* no overlong forms */
        hi   = c == 0xED ? 0x9F : 0xBF;  /* no surrogates */
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 4;
        lo   = c == 0xF0 ? 0x90 : 0x80;
        hi   = c == 0xF4 ? 0x8F : 0xBF;  /* at most U+10FFFF */
    } else {
        append(ts, k_replacement, 3);  /* stray continuation byte, C0/C1, F5..FF */
        return;
    }
    ts->part[0] = c;
    ts->n_part  = 1;
    ts->need    = need;
    ts->lo      = lo;
    ts->hi      = hi;
}

enum tri_ts_result tri_textstream_push(tri_textstream * ts, const char * bytes, int32_t n, triattn_piece_fn fn,
                                       void * user_data) {
    if (!ts) {
        return TRI_TS_ABORT;
    }
    if (ts->done != TRI_TS_CONTINUE) {
        return ts->done;
    }
    const unsigned char * b = (const unsigned char *) bytes;
    for (int32_t i = 0; b && i < n; i++) {
        if (ts->len + 8 > ts->cap) {  /* room for a replacement plus a 4-byte character */
            enum tri_ts_result r = drain(ts, false, fn, user_data);
            if (r != TRI_TS_CONTINUE) {
                return r;
            }
        }
        put_byte(ts, b[i]);
    }
    return drain(ts, false, fn, user_data);
}

enum tri_ts_result tri_textstream_flush(tri_textstream * ts, triattn_piece_fn fn, void * user_data) {
    if (!ts) {
        return TRI_TS_ABORT;
    }
    if (ts->done != TRI_TS_CONTINUE) {
        return ts->done;
    }
    if (ts->n_part > 0) {
        append(ts, k_replacement, 3);  /* len < cap - 8 holds after every push */
        ts->n_part = 0;
    }
    return drain(ts, true, fn, user_data);
}
