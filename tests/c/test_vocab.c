/* Tokenizer unit tests: UTF-8 decode/encode, code point properties, and tokenize/detokenize on small
 * vocabularies written as GGUF in memory (byte-level BPE and SentencePiece-style), fuzzed with random and
 * invalid UTF-8. With TRI_DEFAULT_MODEL or TRIATTN_TEST_MODEL (or the cached default model) the real vocabulary is
 * fuzzed too.
 * Random inputs are fresh each run: the seed is printed on failure (TEST_SEED=... replays it). */
#include "common.h"
#include "gguf.h"
#include "unicode.h"
#include "vocab.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "test_util.h"

/* ---- UTF-8 and properties ------------------------------------------------------------------------ */

static void test_utf8_round_trip(void) {
    int bad = 0;
    for (int i = 0; i < 200000; i++) {
        uint32_t cp;
        switch ((uint32_t) tu_below(4)) {
            case 0: cp = (uint32_t) tu_below(0x80); break;
            case 1: cp = 0x80 + (uint32_t) tu_below(0x800 - 0x80); break;
            case 2: cp = 0x800 + (uint32_t) tu_below(0x10000 - 0x800); break;
            default: cp = 0x10000 + (uint32_t) tu_below(0x110000 - 0x10000); break;
        }
        if (cp >= 0xD800 && cp <= 0xDFFF) {
            continue;
        }
        uint8_t buf[4];
        int n = tri_utf8_encode(cp, buf);
        int want = cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4;
        uint8_t * exact = malloc((size_t) n); /* exact size: an over-read shows under ASan */
        memcpy(exact, buf, (size_t) n);
        size_t len = 0;
        uint32_t back = tri_utf8_decode(exact, (size_t) n, &len);
        free(exact);
        if (n != want || back != cp || len != (size_t) n) {
            if (bad++ < 5) {
                CHECK(0, "U+%04X: encoded %d bytes (want %d), decoded U+%04X len %zu", cp, n, want, back, len);
            }
        }
    }
    CHECK(bad == 0, "%d UTF-8 round trip failures", bad);
    uint8_t buf[4];
    CHECK(tri_utf8_encode(0xD800, buf) == 0 && tri_utf8_encode(0xDFFF, buf) == 0, "surrogates must not encode");
    CHECK(tri_utf8_encode(0x110000, buf) == 0, "past U+10FFFF must not encode");
}

static void test_utf8_invalid(void) {
    static const struct { const char * s; size_t n; } cases[] = {
        { "\x80", 1 }, { "\xbf", 1 },                        /* stray continuation bytes */
        { "\xc0\x80", 2 }, { "\xc1\xbf", 2 },                /* overlong 2-byte */
        { "\xe0\x80\x80", 3 }, { "\xe0\x9f\xbf", 3 },        /* overlong 3-byte */
        { "\xf0\x80\x80\x80", 4 }, { "\xf0\x8f\xbf\xbf", 4 },/* overlong 4-byte */
        { "\xed\xa0\x80", 3 }, { "\xed\xbf\xbf", 3 },        /* surrogates */
        { "\xf4\x90\x80\x80", 4 }, { "\xf5\x80\x80\x80", 4 }, { "\xff", 1 }, /* past U+10FFFF */
        { "\xe2\x82", 2 }, { "\xf0\x9f\x98", 3 }, { "\xc3", 1 },             /* truncated */
        { "\xc3\x41", 2 }, { "\xe2\x41\x82", 3 },                            /* bad continuation */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        uint8_t * exact = malloc(cases[i].n);
        memcpy(exact, cases[i].s, cases[i].n);
        size_t len = 0;
        uint32_t cp = tri_utf8_decode(exact, cases[i].n, &len);
        free(exact);
        CHECK(cp == TRI_CP_INVALID && len == 1, "invalid case %zu decoded as U+%04X len %zu", i, cp, len);
    }
    /* Random bytes: every step consumes 1..4 bytes within the buffer; valid results re-encode identically. */
    int bad = 0;
    for (int iter = 0; iter < 2000; iter++) {
        size_t n = 1 + (uint32_t) tu_below(64);
        uint8_t * s = malloc(n);
        for (size_t i = 0; i < n; i++) {
            s[i] = (uint8_t) ((uint32_t) tu_below(3) ? 0x80 + (uint32_t) tu_below(0x80) : (uint32_t) tu_below(256));
        }
        for (size_t p = 0; p < n;) {
            size_t len = 0;
            uint32_t cp = tri_utf8_decode(s + p, n - p, &len);
            uint8_t re[4];
            bool ok = len >= 1 && len <= n - p &&
                      (cp == TRI_CP_INVALID ? len == 1
                                            : (size_t) tri_utf8_encode(cp, re) == len && !memcmp(re, s + p, len));
            if (!ok) {
                bad++;
                break;
            }
            p += len;
        }
        free(s);
    }
    CHECK(bad == 0, "%d random byte strings decoded inconsistently", bad);
}

static void test_properties(void) {
    static const struct { uint32_t cp; unsigned flags; } known[] = {
        { 'A', TRI_UC_LETTER }, { 'z', TRI_UC_LETTER }, { '5', TRI_UC_NUMBER }, { ' ', TRI_UC_SPACE },
        { '\t', TRI_UC_SPACE }, { '\n', TRI_UC_SPACE }, { '\r', TRI_UC_SPACE }, { 0x0B, TRI_UC_SPACE },
        { '!', 0 }, { '\'', 0 }, { '_', 0 }, { 0x00, 0 }, { 0x1F, 0 }, { 0x7F, 0 },
        { 0xE9, TRI_UC_LETTER },   /* é */
        { 0xAA, TRI_UC_LETTER },   /* ª Lo */
        { 0x416, TRI_UC_LETTER },  /* Ж */
        { 0x4E2D, TRI_UC_LETTER }, /* 中 */
        { 0x3042, TRI_UC_LETTER }, /* あ */
        { 0xAC00, TRI_UC_LETTER }, /* 가 */
        { 0x1D400, TRI_UC_LETTER },/* mathematical bold A */
        { 0x0663, TRI_UC_NUMBER }, /* Arabic-Indic three */
        { 0xBD, TRI_UC_NUMBER },   /* ½ No */
        { 0x216B, TRI_UC_NUMBER }, /* Roman twelve Nl */
        { 0xB2, TRI_UC_NUMBER },   /* superscript two */
        { 0xA0, TRI_UC_SPACE }, { 0x85, TRI_UC_SPACE }, { 0x1680, TRI_UC_SPACE }, { 0x2000, TRI_UC_SPACE },
        { 0x200A, TRI_UC_SPACE }, { 0x2028, TRI_UC_SPACE }, { 0x2029, TRI_UC_SPACE }, { 0x202F, TRI_UC_SPACE },
        { 0x205F, TRI_UC_SPACE }, { 0x3000, TRI_UC_SPACE },
        { 0x200B, 0 },  /* zero width space is not White_Space */
        { 0x180E, 0 }, { 0xFEFF, 0 }, { 0x1C, 0 },
        { 0x20AC, 0 },  /* € */
        { 0x1F600, 0 }, /* 😀 */
        { 0x0301, 0 },  /* combining acute (Mn) */
        { 0x200D, 0 },  /* ZWJ */
        { 0x10FFFF, 0 }, { TRI_CP_INVALID, 0 }, { 0xFFFFFFFF, 0 },
    };
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++) {
        unsigned f = tri_uc_flags(known[i].cp);
        CHECK(f == known[i].flags, "U+%04X: flags %u, want %u", known[i].cp, f, known[i].flags);
    }
    int bad = 0;
    for (uint32_t c = 0; c < 128; c++) {
        bad += tri_uc_ascii_flags[c] != tri_uc_flags_slow(c);
    }
    CHECK(bad == 0, "ASCII fast table disagrees with the generated ranges at %d code points", bad);
    bool sorted = tri_uc_n_ranges > 0 && tri_uc_range_start[0] == 0;
    for (uint32_t i = 1; i < tri_uc_n_ranges; i++) {
        sorted = sorted && tri_uc_range_start[i] > tri_uc_range_start[i - 1] &&
                 tri_uc_range_flags[i] != tri_uc_range_flags[i - 1];
    }
    CHECK(sorted, "range table must start at 0, be strictly increasing and merged");
}

/* ---- in-memory GGUF writer ------------------------------------------------------------------------ */

typedef struct gbuf {
    tu_buf   b;
    uint64_t n_kv;
} gbuf;

static void kv_key(gbuf * b, const char * key, uint32_t type) {
    tu_put_str(&b->b, key, strlen(key));
    tu_put_u32(&b->b, type);
    b->n_kv++;
}
static void kv_str(gbuf * b, const char * key, const char * v) {
    kv_key(b, key, TRI_GGUF_STRING);
    tu_put_str(&b->b, v, strlen(v));
}
static void kv_u32(gbuf * b, const char * key, uint32_t v) {
    kv_key(b, key, TRI_GGUF_UINT32);
    tu_put_u32(&b->b, v);
}
static void kv_bool(gbuf * b, const char * key, bool v) {
    kv_key(b, key, TRI_GGUF_BOOL);
    uint8_t x = v;
    tu_put(&b->b, &x, 1);
}
static void kv_strs(gbuf * b, const char * key, char ** v, size_t n) {
    kv_key(b, key, TRI_GGUF_ARRAY);
    tu_put_u32(&b->b, TRI_GGUF_STRING);
    tu_put_u64(&b->b, n);
    for (size_t i = 0; i < n; i++) {
        tu_put_str(&b->b, v[i], strlen(v[i]));
    }
}
static void kv_i32s(gbuf * b, const char * key, const int32_t * v, size_t n) {
    kv_key(b, key, TRI_GGUF_ARRAY);
    tu_put_u32(&b->b, TRI_GGUF_INT32);
    tu_put_u64(&b->b, n);
    tu_put(&b->b, v, 4 * n);
}
static void kv_f32s(gbuf * b, const char * key, const float * v, size_t n) {
    kv_key(b, key, TRI_GGUF_ARRAY);
    tu_put_u32(&b->b, TRI_GGUF_FLOAT32);
    tu_put_u64(&b->b, n);
    tu_put(&b->b, v, 4 * n);
}

/* Header + the key/values in kv (n_tensors 0). Returns a malloc'd file image. */
static uint8_t * gguf_image(const gbuf * kv, size_t * size) {
    tu_buf f = { 0 };
    tu_put(&f, "GGUF", 4);
    tu_put_u32(&f, 3);
    tu_put_u64(&f, 0);
    tu_put_u64(&f, kv->n_kv);
    tu_put(&f, kv->b.p, kv->b.n);
    *size = f.n;
    return f.p;
}

/* Loads a vocabulary from key/values; returns status, fills *v on success. */
static enum triattn_status load_kv(const gbuf * kv, tri_vocab ** v, char * err, size_t err_size) {
    size_t size;
    uint8_t * img = gguf_image(kv, &size);
    tri_gguf * g = NULL;
    enum triattn_status st = tri_gguf_open_buffer(img, size, &g, err, err_size);
    if (st == TRIATTN_OK) {
        st = tri_vocab_load(g, v, err, err_size); /* the vocabulary must not keep pointers into img */
        tri_gguf_close(g);
    }
    memset(img, 0xAB, size);
    free(img);
    return st;
}

/* ---- byte-level BPE vocabulary --------------------------------------------------------------------- */

static size_t gpt2_char(uint8_t b, char * out) {
    uint32_t cp = b;
    if (b <= 32) cp = 256 + b;
    else if (b >= 127 && b <= 160) cp = 256 + 33 + (b - 127);
    else if (b == 173) cp = 256 + 67;
    return (size_t) tri_utf8_encode(cp, (uint8_t *) out);
}

enum { BPE_BASE = 256 }; /* token i < 256: byte i; then these: */
static const char * k_bpe_extra[] = { "he", "ll", "hell", "hello", "\xc4\xa0hello", "<|end|>", "<|user|>" };
static const char * k_bpe_merges[] = { "h e", "l l", "he ll", "hell o", "\xc4\xa0 hello", "x y" /* no token */ };

static void bpe_kv(gbuf * kv, const char * model, const char * pre, int types_n_delta, uint32_t eos,
                   const char * bad_merge) {
    size_t n = BPE_BASE + sizeof k_bpe_extra / sizeof k_bpe_extra[0];
    char ** toks = malloc(n * sizeof *toks);
    int32_t * types = malloc(n * sizeof *types);
    for (int b = 0; b < 256; b++) {
        toks[b] = calloc(4, 1);
        gpt2_char((uint8_t) b, toks[b]);
        types[b] = 1;
    }
    for (size_t i = BPE_BASE; i < n; i++) {
        toks[i] = strdup(k_bpe_extra[i - BPE_BASE]);
        types[i] = toks[i][0] == '<' ? (i == n - 1 ? 4 : 3) : 1; /* <|end|> control, <|user|> user-defined */
    }
    size_t nm = sizeof k_bpe_merges / sizeof k_bpe_merges[0];
    char * merges[8];
    for (size_t i = 0; i < nm; i++) {
        merges[i] = (char *) k_bpe_merges[i];
    }
    if (bad_merge) {
        merges[nm++] = (char *) bad_merge;
    }
    kv_str(kv, "tokenizer.ggml.model", model);
    if (pre) kv_str(kv, "tokenizer.ggml.pre", pre);
    kv_strs(kv, "tokenizer.ggml.tokens", toks, n);
    kv_i32s(kv, "tokenizer.ggml.token_type", types, (size_t) ((int) n + types_n_delta));
    kv_strs(kv, "tokenizer.ggml.merges", merges, nm);
    kv_u32(kv, "tokenizer.ggml.eos_token_id", eos);
    kv_bool(kv, "tokenizer.ggml.add_bos_token", false);
    for (size_t i = 0; i < n; i++) {
        free(toks[i]);
    }
    free(toks);
    free(types);
}

static int32_t tokenize(const tri_vocab * v, const char * s, int32_t n, bool parse_special, triattn_token * out,
                        int32_t cap) {
    int32_t n_out = -1;
    enum triattn_status st = tri_vocab_tokenize(v, s, n, false, parse_special, out, cap, &n_out);
    return st == TRIATTN_OK ? n_out : -1;
}

/* Tokenize then detokenize random byte strings (exact-size buffers); the bytes must come back. */
static int fuzz_round_trip(const tri_vocab * v, int iters, int max_len, bool ascii_heavy) {
    int bad = 0;
    triattn_token * ids = malloc(sizeof *ids * (size_t) (4 * max_len + 8));
    char * back = malloc((size_t) max_len * 4 + 8);
    static const char * pieces[] = { " ", "  ", "\t", "\n", "\r\n", "'s", "'LL", "é", "日本", "😀", "\xe2\x80\x8d",
                                     "hello", "he", "12", "\xc3", "\x80", "\xed\xa0\x80", "\xf4\x90\x80\x80", "<|end|>",
                                     "<|user|>", "\xff", "\xc0\xaf", "\x00" };
    for (int it = 0; it < iters; it++) {
        int n = (int) (uint32_t) tu_below((uint32_t) max_len + 1);
        char * s = malloc((size_t) n + 1);
        for (int i = 0; i < n;) {
            const char * p = NULL;
            size_t pl = 1;
            char one;
            uint32_t r = (uint32_t) tu_below(10);
            if (ascii_heavy && r < 5) {
                one = (char) (' ' + (uint32_t) tu_below(95));
                p   = &one;
            } else if (r < 8) {
                p  = pieces[(uint32_t) tu_below(sizeof pieces / sizeof pieces[0])];
                pl = strlen(p) ? strlen(p) : 1; /* "\x00" is one NUL byte */
            } else {
                one = (char) (uint32_t) tu_below(256);
                p   = &one;
            }
            size_t k = TRI_MIN(pl, (size_t) (n - i));
            memcpy(s + i, p, k);
            i += (int) k;
        }
        char * exact = malloc((size_t) n + 1);
        memcpy(exact, s, (size_t) n);
        int32_t cnt = tokenize(v, exact, n, false, ids, 4 * max_len + 8);
        int32_t len = -1;
        enum triattn_status st = cnt >= 0 ? tri_vocab_detokenize(v, ids, cnt, false, back, max_len * 4 + 8, &len)
                                          : TRIATTN_ERR_INTERNAL;
        if (st != TRIATTN_OK || len != n || memcmp(back, s, (size_t) n) != 0) {
            if (bad++ < 3) {
                fprintf(stderr, "  round trip mismatch: %d bytes in, %d tokens, %d bytes back\n", n, cnt, len);
            }
        }
        free(exact);
        free(s);
    }
    free(ids);
    free(back);
    return bad;
}

static void test_bpe_synthetic(void) {
    gbuf kv = { 0 };
    bpe_kv(&kv, "gpt2", "gpt2", 0, BPE_BASE + 5, NULL);
    tri_vocab * v = NULL;
    char err[256] = "";
    enum triattn_status st = load_kv(&kv, &v, err, sizeof err);
    free(kv.b.p);
    CHECK(st == TRIATTN_OK, "load synthetic BPE vocab: %s", err);
    if (st != TRIATTN_OK) {
        return;
    }
    const int32_t HE = BPE_BASE, LL = BPE_BASE + 1, HELLO = BPE_BASE + 3, SP_HELLO = BPE_BASE + 4;
    const int32_t END = BPE_BASE + 5, USER = BPE_BASE + 6;
    triattn_token ids[64];
    int32_t n = tokenize(v, "hello hello", -1, false, ids, 64);
    CHECK(n == 2 && ids[0] == HELLO && ids[1] == SP_HELLO, "'hello hello' -> %d tokens [%d %d]", n, ids[0], ids[1]);
    n = tokenize(v, "hellohello", -1, false, ids, 64);
    CHECK(n == 2 && ids[0] == HELLO && ids[1] == HELLO, "'hellohello' -> %d tokens", n);
    n = tokenize(v, "hel", -1, false, ids, 64);
    CHECK(n == 2 && ids[0] == HE && ids[1] == 'l', "'hel' -> he l, got %d tokens", n);
    n = tokenize(v, "xy", -1, false, ids, 64); /* the merge "x y" has no token: plain bytes */
    CHECK(n == 2 && ids[0] == 'x' && ids[1] == 'y', "'xy' -> x y, got %d tokens", n);
    n = tokenize(v, "ll", -1, false, ids, 64);
    CHECK(n == 1 && ids[0] == LL, "'ll' -> ll");

    /* Special tokens: control only with parse_special; user-defined always. */
    n = tokenize(v, "a<|end|>b", -1, true, ids, 64);
    CHECK(n == 3 && ids[0] == 'a' && ids[1] == END && ids[2] == 'b', "parse_special: %d tokens", n);
    n = tokenize(v, "a<|end|>b", -1, false, ids, 64);
    CHECK(n == 9, "no parse_special: 9 byte tokens, got %d", n);
    bool no_end = true;
    for (int32_t i = 0; i < n && i < 64; i++) no_end = no_end && ids[i] != END;
    CHECK(no_end, "control token must not appear without parse_special");
    n = tokenize(v, "x<|user|>", -1, false, ids, 64);
    CHECK(n == 2 && ids[1] == USER, "user-defined token is matched without parse_special");
    CHECK(tri_vocab_is_eog(v, END) && !tri_vocab_is_eog(v, USER) && !tri_vocab_is_eog(v, HELLO),
          "EOG: eos only");

    /* Pieces: control renders only when special. */
    char buf[32];
    int32_t len = -1;
    st = tri_vocab_token_to_piece(v, END, false, buf, sizeof buf, &len);
    CHECK(st == TRIATTN_OK && len == 0, "control piece without special: %d bytes", len);
    st = tri_vocab_token_to_piece(v, END, true, buf, sizeof buf, &len);
    CHECK(st == TRIATTN_OK && len == 7 && !memcmp(buf, "<|end|>", 7), "control piece with special");
    st = tri_vocab_token_to_piece(v, SP_HELLO, false, buf, sizeof buf, &len);
    CHECK(st == TRIATTN_OK && len == 6 && !memcmp(buf, " hello", 6), "'\\u0120hello' renders ' hello'");
    st = tri_vocab_token_to_piece(v, ' ', false, buf, sizeof buf, &len); /* byte 0x20 is the token 'Ġ' */
    CHECK(st == TRIATTN_OK && len == 1 && buf[0] == ' ', "byte token 0x20 renders a space");

    /* Buffers: *n_out is the full size; output truncated to the capacity. */
    triattn_token small[3] = { -7, -7, -7 };
    int32_t need = -1;
    st = tri_vocab_tokenize(v, "a b c d e", -1, false, false, small, 2, &need);
    CHECK(st == TRIATTN_OK && need == 9 && small[0] == 'a' && small[2] == -7, "truncated tokenize: need %d", need);
    st = tri_vocab_tokenize(v, "a b c d e", -1, false, false, NULL, 0, &need);
    CHECK(st == TRIATTN_OK && need == 9, "size query: need %d", need);
    triattn_token hh[2] = { HELLO, SP_HELLO };
    char out[5];
    memset(out, 'z', sizeof out);
    st = tri_vocab_detokenize(v, hh, 2, false, out, 5, &need);
    CHECK(st == TRIATTN_OK && need == 11 && !memcmp(out, "hell", 4) && out[4] == '\0', "truncated detokenize");

    /* Bad arguments are values, not crashes. */
    triattn_token bad_id = 100000;
    CHECK(tri_vocab_detokenize(v, &bad_id, 1, false, out, 5, &need) == TRIATTN_ERR_INVALID_ARG, "bad id detok");
    CHECK(tri_vocab_token_to_piece(v, -1, false, out, 5, &need) == TRIATTN_ERR_INVALID_ARG, "bad id piece");
    CHECK(tri_vocab_tokenize(v, NULL, 3, false, false, ids, 64, &need) == TRIATTN_ERR_INVALID_ARG, "NULL text");
    CHECK(tri_vocab_tokenize(v, "x", 1, false, false, NULL, 5, &need) == TRIATTN_ERR_INVALID_ARG, "NULL out");
    CHECK(tri_vocab_token_text(v, HELLO) && !strcmp(tri_vocab_token_text(v, HELLO), "hello"), "token text");
    CHECK(tri_vocab_token_text(v, -1) == NULL && tri_vocab_token_text(v, 1 << 20) == NULL, "token text range");

    /* Long words take the priority-queue path: same merges as the short path. */
    int reps = 300;
    char * longw = malloc((size_t) reps * 5 + 1);
    for (int i = 0; i < reps; i++) memcpy(longw + 5 * i, "hello", 5);
    triattn_token * lids = malloc(sizeof *lids * (size_t) reps * 5);
    n = tokenize(v, longw, reps * 5, false, lids, reps * 5);
    bool all = n == reps;
    for (int32_t i = 0; all && i < n; i++) all = lids[i] == HELLO;
    CHECK(all, "%d x 'hello' in one word -> %d tokens, want %d x hello", reps, n, reps);
    free(longw);
    free(lids);

    /* Every byte string round-trips: all 256 byte characters are tokens. */
    int bad = fuzz_round_trip(v, 3000, 200, false);
    CHECK(bad == 0, "gpt2 pre: %d of 3000 random byte strings did not round-trip", bad);
    bad = fuzz_round_trip(v, 20, 20000, true); /* long whitespace / letter runs */
    CHECK(bad == 0, "gpt2 pre: %d long strings did not round-trip", bad);
    tri_vocab_free(v);

    static const char * pres[] = { "smollm", "llama-bpe", "qwen2", "default" };
    for (size_t i = 0; i < sizeof pres / sizeof pres[0]; i++) {
        gbuf k2 = { 0 };
        bpe_kv(&k2, "gpt2", pres[i], 0, BPE_BASE + 5, NULL);
        st = load_kv(&k2, &v, err, sizeof err);
        free(k2.b.p);
        CHECK(st == TRIATTN_OK, "load with pre %s: %s", pres[i], err);
        if (st == TRIATTN_OK) {
            bad = fuzz_round_trip(v, 1500, 200, i % 2 == 0);
            CHECK(bad == 0, "pre %s: %d random byte strings did not round-trip", pres[i], bad);
            tri_vocab_free(v);
        }
    }
}

static void test_load_errors(void) {
    struct { const char * model, * pre; int types_delta; uint32_t eos; const char * bad_merge; enum triattn_status want;
             const char * in_msg; } cases[] = {
        { "bert", "gpt2", 0, 1, NULL, TRIATTN_ERR_UNSUPPORTED, "bert" },
        { "gpt2", "klingon", 0, 1, NULL, TRIATTN_ERR_UNSUPPORTED, "klingon" },
        { "gpt2", "gpt2", -1, 1, NULL, TRIATTN_ERR_FORMAT, "token_type" },
        { "gpt2", "gpt2", 0, 99999, NULL, TRIATTN_ERR_FORMAT, "eos_token_id" },
        { "gpt2", "gpt2", 0, 1, "nospace", TRIATTN_ERR_FORMAT, "merges" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        gbuf kv = { 0 };
        bpe_kv(&kv, cases[i].model, cases[i].pre, cases[i].types_delta, cases[i].eos, cases[i].bad_merge);
        tri_vocab * v = (tri_vocab *) 1;
        char err[256] = "";
        enum triattn_status st = load_kv(&kv, &v, err, sizeof err);
        free(kv.b.p);
        CHECK(st == cases[i].want && v == NULL && strstr(err, cases[i].in_msg),
              "load error case %zu: status %d, message '%s'", i, (int) st, err);
        if (st == TRIATTN_OK) tri_vocab_free(v);
    }
    gbuf kv = { 0 };
    kv_str(&kv, "tokenizer.ggml.model", "gpt2");
    tri_vocab * v = NULL;
    char err[256] = "";
    enum triattn_status st = load_kv(&kv, &v, err, sizeof err);
    free(kv.b.p);
    CHECK(st == TRIATTN_ERR_FORMAT && strstr(err, "tokenizer.ggml.tokens"), "missing tokens: '%s'", err);
}

/* ---- SentencePiece-style vocabulary ---------------------------------------------------------------- */

static void test_spm_synthetic(void) {
    /* <unk> <s> </s> <0x00>..<0xFF> then pieces with scores (higher merges first). */
    static const char * extra[] = { "\xe2\x96\x81", "a", "b", "\xe2\x96\x81" "a", "ab", "\xe2\x96\x81" "ab", "ba" };
    static const float extra_score[] = { -1, -1, -1, -3, -2, -4, -5 };
    size_t ne = sizeof extra / sizeof extra[0], n = 3 + 256 + ne;
    char ** toks = malloc(n * sizeof *toks);
    int32_t * types = malloc(n * sizeof *types);
    float * scores = calloc(n, sizeof *scores);
    toks[0] = strdup("<unk>"); types[0] = 2;
    toks[1] = strdup("<s>");   types[1] = 3;
    toks[2] = strdup("</s>");  types[2] = 3;
    for (int b = 0; b < 256; b++) {
        toks[3 + b] = malloc(8);
        snprintf(toks[3 + b], 8, "<0x%02X>", b);
        types[3 + b] = 6;
    }
    for (size_t i = 0; i < ne; i++) {
        toks[259 + i] = strdup(extra[i]);
        types[259 + i] = 1;
        scores[259 + i] = extra_score[i];
    }
    gbuf kv = { 0 };
    kv_str(&kv, "tokenizer.ggml.model", "llama");
    kv_strs(&kv, "tokenizer.ggml.tokens", toks, n);
    kv_i32s(&kv, "tokenizer.ggml.token_type", types, n);
    kv_f32s(&kv, "tokenizer.ggml.scores", scores, n);
    for (size_t i = 0; i < n; i++) free(toks[i]);
    free(toks);
    free(types);
    free(scores);
    tri_vocab * v = NULL;
    char err[256] = "";
    enum triattn_status st = load_kv(&kv, &v, err, sizeof err);
    free(kv.b.p);
    CHECK(st == TRIATTN_OK, "load synthetic SPM vocab: %s", err);
    if (st != TRIATTN_OK) {
        return;
    }
    const int32_t SP = 259, A = 260, B = 261, SP_A = 262, AB = 263, SP_AB = 264, BA = 265;
    triattn_token ids[64];
    /* "ab": ▁ a b; pairs ▁a (-3), ab (-2): ab first, then ▁ab (-4) -> one token. */
    int32_t k = tokenize(v, "ab", -1, false, ids, 64);
    CHECK(k == 1 && ids[0] == SP_AB, "'ab' -> \\u2581ab, got %d tokens [%d]", k, ids[0]);
    /* "aa": ▁ a a; ▁a (-3) then 'a' alone. */
    k = tokenize(v, "aa", -1, false, ids, 64);
    CHECK(k == 2 && ids[0] == SP_A && ids[1] == A, "'aa' -> \\u2581a a, got %d tokens", k);
    /* "c" is not a piece: byte fallback <0x63>. */
    k = tokenize(v, "c", -1, false, ids, 64);
    CHECK(k == 2 && ids[0] == SP && ids[1] == 3 + 'c', "'c' -> \\u2581 <0x63>, got %d tokens", k);
    /* "bab": ▁ b a b; ▁b is not a piece, ab (-2) beats ba (-5) -> ▁ b ab. */
    k = tokenize(v, "bab", -1, false, ids, 64);
    CHECK(k == 3 && ids[0] == SP && ids[1] == B && ids[2] == AB, "'bab' -> \\u2581 b ab, got %d tokens", k);
    /* "ba": ▁ b a -> ba (-5). */
    k = tokenize(v, "ba", -1, false, ids, 64);
    CHECK(k == 2 && ids[0] == SP && ids[1] == BA, "'ba' -> \\u2581 ba, got %d tokens", k);
    int32_t need;
    st = tri_vocab_tokenize(v, "ab", -1, true, false, ids, 64, &need);
    CHECK(st == TRIATTN_OK && need == 2 && ids[0] == 1 && ids[1] == SP_AB, "add_special adds <s> by default");
    int bad = fuzz_round_trip(v, 3000, 120, false);
    CHECK(bad == 0, "SPM: %d of 3000 random byte strings did not round-trip", bad);
    tri_vocab_free(v);
}

/* ---- the real default model, when present --------------------------------------------------------- */

static void test_real_model(void) {
    const char * path = getenv("TRI_DEFAULT_MODEL"); /* as the other C tests name it */
    char fallback[512];
    if (!path) {
        path = getenv("TRIATTN_TEST_MODEL");
    }
    if (!path) {
        const char * home = getenv("HOME");
        snprintf(fallback, sizeof fallback, "%s/.cache/pytriattn/SmolLM2-135M-Instruct.Q4_1.gguf", home ? home : "");
        path = fallback;
    }
    FILE * f = fopen(path, "rb");
    if (!f) {
        printf("skip: real model not found (%s)\n", path);
        return;
    }
    fclose(f);
    tri_gguf * g = NULL;
    char err[256] = "";
    if (tri_gguf_open_file(path, true, &g, err, sizeof err) != TRIATTN_OK) {
        CHECK(0, "open %s: %s", path, err);
        return;
    }
    tri_vocab * v = NULL;
    double t0 = tri_time_ms();
    enum triattn_status st = tri_vocab_load(g, &v, err, sizeof err);
    double ms = tri_time_ms() - t0;
    tri_gguf_close(g);
    CHECK(st == TRIATTN_OK, "load real vocab: %s", err);
    if (st != TRIATTN_OK) {
        return;
    }
    printf("real vocab: %d tokens loaded in %.1f ms\n", tri_vocab_n_tokens(v), ms);
    CHECK(ms < 500, "vocab load took %.1f ms", ms);
    /* Random bytes never crash; text made of valid UTF-8 round-trips exactly. */
    int bad = 0;
    triattn_token ids[1024];
    char back[4096];
    for (int it = 0; it < 3000; it++) {
        int n = (int) (uint32_t) tu_below(300);
        char * s = malloc((size_t) n + 1);
        for (int i = 0; i < n; i++) s[i] = (char) (uint32_t) tu_below(256);
        int32_t k = tokenize(v, s, n, it & 1, ids, 1024);
        bad += k < 0 || k > n;
        free(s);
    }
    CHECK(bad == 0, "%d random byte strings failed to tokenize", bad);
    static const char * texts[] = { "Hello world! It's 2024.", "  日本語 😀👨\xe2\x80\x8d👩 café\n\n\tx  ",
                                    "<|im_start|>user\nHi<|im_end|>" };
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
        int32_t k = tokenize(v, texts[i], -1, i == 2, ids, 1024), len = -1;
        st = tri_vocab_detokenize(v, ids, k, true, back, sizeof back, &len);
        CHECK(st == TRIATTN_OK && len == (int32_t) strlen(texts[i]) && !memcmp(back, texts[i], (size_t) len),
              "real vocab round trip of text %zu", i);
    }
    tri_vocab_free(v);
}

int main(void) {
    tu_seed_init("TEST_SEED");
    test_utf8_round_trip();
    test_utf8_invalid();
    test_properties();
    test_bpe_synthetic();
    test_load_errors();
    test_spm_synthetic();
    test_real_model();
    return tu_finish();
}
