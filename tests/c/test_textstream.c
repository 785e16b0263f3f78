/* Streaming text filter: random texts (valid and broken UTF-8) split at random byte boundaries with random
 * stop strings, compared with a whole-text reference; every emitted piece must be valid UTF-8. */
#include "textstream.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define TU_FAIL_PRINT_LIMIT 20
#include "test_util.h"

/* ---- independent UTF-8 oracle: canonical decoding by arithmetic ---- */

/* True when s[0..len) is exactly one well-formed character. */
static bool seq_ok(const unsigned char * s, int len) {
    static const unsigned char lead_mask[5] = { 0, 0x80, 0xE0, 0xF0, 0xF8 };
    static const unsigned char lead_val[5]  = { 0, 0x00, 0xC0, 0xE0, 0xF0 };
    static const uint32_t      min_cp[5]    = { 0, 0, 0x80, 0x800, 0x10000 };
    if (len < 1 || len > 4 || (s[0] & lead_mask[len]) != lead_val[len]) {
        return false;
    }
    uint32_t cp = s[0] & (0xFF >> (len + 1));
    for (int i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) {
            return false;
        }
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    return cp >= min_cp[len] && cp <= 0x10FFFF && !(cp >= 0xD800 && cp <= 0xDFFF);
}

/* True when s[0..k) can be completed into a well-formed character (brute force over continuations). */
static bool prefix_ok(const unsigned char * s, int k) {
    static const unsigned char tails[] = { 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF };
    unsigned char buf[4];
    for (int len = k; len <= 4; len++) {
        int r = len - k, combos = 1;
        for (int i = 0; i < r; i++) combos *= 6;
        for (int c = 0; c < combos; c++) {
            memcpy(buf, s, (size_t) k);
            for (int i = 0, v = c; i < r; i++, v /= 6) buf[k + i] = tails[v % 6];
            if (seq_ok(buf, len)) return true;
        }
    }
    return false;
}

/* Replaces each maximal ill-formed subpart by U+FFFD. Returns the output length. */
static size_t sanitize_ref(const unsigned char * s, size_t n, unsigned char * out) {
    size_t o = 0, i = 0;
    while (i < n) {
        int ok = 0;
        for (int len = 1; len <= 4 && !ok; len++) {
            if (i + (size_t) len <= n && seq_ok(s + i, len)) ok = len;
        }
        if (ok) {
            memcpy(out + o, s + i, (size_t) ok);
            o += (size_t) ok;
            i += (size_t) ok;
            continue;
        }
        int m = 1;
        while (m < 3 && i + (size_t) m < n && prefix_ok(s + i, m + 1)) m++;
        if (!prefix_ok(s + i, 1)) m = 1;
        out[o++] = 0xEF; out[o++] = 0xBF; out[o++] = 0xBD;
        i += (size_t) m;
    }
    return o;
}

static bool valid_utf8(const unsigned char * s, size_t n) {
    for (size_t i = 0; i < n;) {
        int ok = 0;
        for (int len = 1; len <= 4 && !ok; len++) {
            if (i + (size_t) len <= n && seq_ok(s + i, len)) ok = len;
        }
        if (!ok) return false;
        i += (size_t) ok;
    }
    return true;
}

/* ---- random material ---- */

static size_t put_cp(unsigned char * o, uint32_t cp) {
    if (cp < 0x80) { o[0] = (unsigned char) cp; return 1; }
    if (cp < 0x800) { o[0] = 0xC0 | (cp >> 6); o[1] = 0x80 | (cp & 0x3F); return 2; }
    if (cp < 0x10000) { o[0] = 0xE0 | (cp >> 12); o[1] = 0x80 | ((cp >> 6) & 0x3F); o[2] = 0x80 | (cp & 0x3F); return 3; }
    o[0] = 0xF0 | (cp >> 18); o[1] = 0x80 | ((cp >> 12) & 0x3F); o[2] = 0x80 | ((cp >> 6) & 0x3F); o[3] = 0x80 | (cp & 0x3F);
    return 4;
}

/* A random character from a small alphabet (so stop strings recur) or anywhere in Unicode. */
static uint32_t rand_cp(void) {
    static const uint32_t small[] = { 'a', 'b', 'c', ' ', '\n', '<', '|', '>', 0xE9, 0x4E2D, 0x1F600, 0xFF5C };
    if ((uint32_t) tu_below(4) != 0) return small[(uint32_t) tu_below(sizeof small / sizeof small[0])];
    switch ((uint32_t) tu_below(4)) {
        case 0: return 0x20 + (uint32_t) tu_below(0x5F);
        case 1: return 0x80 + (uint32_t) tu_below(0x780);
        case 2: { uint32_t c = 0x800 + (uint32_t) tu_below(0xF800); return (c >= 0xD800 && c <= 0xDFFF) ? 0x3042 : c; }
        default: return 0x10000 + (uint32_t) tu_below(0x100000);
    }
}

static size_t rand_text(unsigned char * o, size_t max_chars, bool broken) {
    size_t n = 0, chars = (uint32_t) tu_below((uint32_t) max_chars + 1);
    for (size_t i = 0; i < chars; i++) {
        if (broken && (uint32_t) tu_below(10) == 0) {
            /* a stray byte, or a character cut short */
            if ((uint32_t) tu_below(2)) { o[n++] = (unsigned char) (0x80 + (uint32_t) tu_below(0x80)); }
            else { unsigned char tmp[4]; size_t l = put_cp(tmp, 0x800 + (uint32_t) tu_below(0x10000)); memcpy(o + n, tmp, l - 1); n += l - 1; }
        } else {
            n += put_cp(o + n, rand_cp());
        }
    }
    return n;
}

struct sink {
    unsigned char buf[1 << 16];
    size_t n;
    int calls;
    int abort_after;  /* return false on this call (1-based); 0 = never */
    bool bad_piece;
};

static void sink_clear(struct sink * s) {
    s->n = 0; s->calls = 0; s->abort_after = 0; s->bad_piece = false;
}

static bool on_piece(const char * p, int32_t len, void * ud) {
    struct sink * s = ud;
    s->calls++;
    if (len <= 0 || !valid_utf8((const unsigned char *) p, (size_t) len)) s->bad_piece = true;
    memcpy(s->buf + s->n, p, (size_t) len);
    s->n += (size_t) len;
    return !(s->abort_after && s->calls == s->abort_after);
}

static const unsigned char * memfind(const unsigned char * h, size_t hn, const char * nd, size_t nn) {
    for (size_t i = 0; i + nn <= hn; i++) if (memcmp(h + i, nd, nn) == 0) return h + i;
    return NULL;
}

static void one_case(bool broken, size_t max_chars) {
    static unsigned char text[1 << 14], clean[3 << 14];
    static struct sink sink;
    size_t n = rand_text(text, max_chars, broken);
    size_t cn = sanitize_ref(text, n, clean);

    /* Stop strings: pieces of the (clean) text, so they do occur, plus random ones. */
    char stops[4][64];
    const char * sp[4];
    int n_stop = (int) (uint32_t) tu_below(5);
    for (int k = 0; k < n_stop; k++) {
        size_t l = 0;
        if (cn > 0 && (uint32_t) tu_below(3) != 0) {
            size_t a = (uint32_t) tu_below((uint32_t) cn), len = 1 + (uint32_t) tu_below(12);
            while (a > 0 && (clean[a] & 0xC0) == 0x80) a--;
            size_t b = a + len < cn ? a + len : cn;
            while (b < cn && (clean[b] & 0xC0) == 0x80) b++;
            l = b - a < sizeof stops[k] - 1 ? b - a : 0;
            memcpy(stops[k], clean + a, l);
        } else {
            l = rand_text((unsigned char *) stops[k], 4, false);
            if (l > sizeof stops[k] - 1) l = 0;
        }
        stops[k][l] = '\0';
        sp[k] = stops[k];
    }

    /* Reference: the clean text cut where the first-completed stop occurrence starts (a generator meets
     * the occurrence that ends first; among those ending together, the longest). */
    size_t ref_n = cn, best_end = (size_t) -1, best_len = 0;
    bool   ref_stop = false;
    for (int k = 0; k < n_stop; k++) {
        size_t l = strlen(sp[k]);
        if (l == 0) continue;
        const unsigned char * f = memfind(clean, cn, sp[k], l);
        if (!f) continue;
        size_t end = (size_t) (f - clean) + l;
        if (end < best_end || (end == best_end && l > best_len)) { best_end = end; best_len = l; }
    }
    if (best_len > 0) { ref_stop = true; ref_n = best_end - best_len; }

    tri_textstream * ts = tri_textstream_create(sp, n_stop);
    CHECK(ts != NULL, "create");
    if (!ts) return;
    for (int round = 0; round < 2; round++) {  /* the second round checks reset */
        sink.n = 0; sink.calls = 0; sink.abort_after = 0; sink.bad_piece = false;
        enum tri_ts_result r = TRI_TS_CONTINUE;
        for (size_t i = 0; i < n && r == TRI_TS_CONTINUE;) {
            size_t piece = (uint32_t) tu_below(4) == 0 ? 0 : 1 + (uint32_t) tu_below((uint32_t) tu_below(8) == 0 ? 600 : 7);
            if (piece > n - i) piece = n - i;
            r = tri_textstream_push(ts, (const char *) text + i, (int32_t) piece, on_piece, &sink);
            i += piece;
        }
        if (r == TRI_TS_CONTINUE) r = tri_textstream_flush(ts, on_piece, &sink);
        CHECK(r == (ref_stop ? TRI_TS_STOP : TRI_TS_CONTINUE), "result %d, expected stop=%d (n=%zu, stops=%d)", r, ref_stop, n, n_stop);
        CHECK(sink.n == ref_n && memcmp(sink.buf, clean, ref_n) == 0, "output %zu bytes, reference %zu (broken=%d)", sink.n, ref_n, broken);
        CHECK(!sink.bad_piece, "an emitted piece was empty or not valid UTF-8");
        if (ref_stop) {
            CHECK(tri_textstream_push(ts, "x", 1, on_piece, &sink) == TRI_TS_STOP, "push after stop must keep returning STOP");
        }
        tri_textstream_reset(ts);
    }
    tri_textstream_free(ts);
}

static void test_abort(void) {
    static struct sink sink;
    const char * stop[] = { "STOP!" };
    tri_textstream * ts = tri_textstream_create(stop, 1);
    sink_clear(&sink);
    int k = 1 + (int) (uint32_t) tu_below(5);
    sink.abort_after = k;
    enum tri_ts_result r = TRI_TS_CONTINUE;
    int pushes = 0;
    while (r == TRI_TS_CONTINUE && pushes < 100) {
        char piece[8];
        size_t l = put_cp((unsigned char *) piece, 'a' + (uint32_t) tu_below(26));
        r = tri_textstream_push(ts, piece, (int32_t) l, on_piece, &sink);
        pushes++;
    }
    CHECK(r == TRI_TS_ABORT, "abort expected, got %d", r);
    CHECK(sink.calls == k, "callback called %d times, abort at %d", sink.calls, k);
    CHECK(tri_textstream_push(ts, "a", 1, on_piece, &sink) == TRI_TS_ABORT, "push after abort");
    CHECK(tri_textstream_flush(ts, on_piece, &sink) == TRI_TS_ABORT, "flush after abort");
    tri_textstream_reset(ts);
    sink.abort_after = 0;
    size_t before = sink.n;
    CHECK(tri_textstream_push(ts, "xyzSTO", 6, on_piece, &sink) == TRI_TS_CONTINUE, "push after reset");
    CHECK(sink.n - before == 3 && memcmp(sink.buf + before, "xyz", 3) == 0, "held back the stop prefix 'STO'");
    CHECK(tri_textstream_push(ts, "P!tail", 6, on_piece, &sink) == TRI_TS_STOP, "stop across pieces");
    CHECK(sink.n - before == 3, "nothing after the stop string");
    tri_textstream_free(ts);
}

/* A character split across pieces is held back, and an incomplete tail becomes U+FFFD at flush. */
static void test_split_char(void) {
    static struct sink sink;
    tri_textstream * ts = tri_textstream_create(NULL, 0);
    sink_clear(&sink);
    unsigned char c[4];
    uint32_t cp = 0x10000 + (uint32_t) tu_below(0x100000);
    size_t l = put_cp(c, cp);
    for (size_t i = 0; i + 1 < l; i++) tri_textstream_push(ts, (const char *) c + i, 1, on_piece, &sink);
    CHECK(sink.n == 0, "partial character must be held back (%zu bytes out)", sink.n);
    tri_textstream_push(ts, (const char *) c + l - 1, 1, on_piece, &sink);
    CHECK(sink.n == l && memcmp(sink.buf, c, l) == 0, "completed character emitted");
    tri_textstream_push(ts, (const char *) c, 2, on_piece, &sink);
    tri_textstream_flush(ts, on_piece, &sink);
    CHECK(sink.n == l + 3 && memcmp(sink.buf + l, "\xEF\xBF\xBD", 3) == 0, "incomplete tail -> U+FFFD at flush");
    tri_textstream_free(ts);
}

int main(void) {
    tu_seed_init("TRI_TEST_SEED");
    for (int i = 0; i < 3000; i++) one_case(false, i % 10 == 0 ? 2000 : 60);
    for (int i = 0; i < 3000; i++) one_case(true, i % 10 == 0 ? 2000 : 60);
    for (int i = 0; i < 20; i++) { test_abort(); test_split_char(); }
    return tu_finish();
}
