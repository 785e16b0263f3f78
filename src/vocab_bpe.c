/* Byte-level BPE ("gpt2" tokenizer model): hand-written pre-tokenizer matchers, one per regex family of
 * tokenizer.ggml.pre, then ranked merges over the GPT-2 byte alphabet, done on token ids.
 *
 * The matchers work on the original bytes, decoding UTF-8 on the fly; an invalid byte is one character of
 * class "other", so every byte ends up in exactly one word and byte-level tokens round-trip any input. */
#include "vocab_impl.h"

#include "unicode.h"

#include <limits.h>
#include <string.h>

/* Character classes: exactly one per character. */
enum { C_L = TRI_UC_LETTER, C_N = TRI_UC_NUMBER, C_S = TRI_UC_SPACE, C_O = 8 };

static inline unsigned char_at(const uint8_t * s, size_t p, size_t end, uint32_t * cp, size_t * len) {
    uint32_t c = s[p];
    if (c < 0x80) {
        *cp  = c;
        *len = 1;
        unsigned f = tri_uc_ascii_flags[c];
        return f ? f : C_O;
    }
    c = tri_utf8_decode(s + p, end - p, len);
    *cp = c;
    unsigned f = tri_uc_flags(c);
    return f ? f : C_O;
}

/* Advances over characters whose class is in mask; *last = start of the last one taken (p if none). */
static inline size_t run_class(const uint8_t * s, size_t p, size_t end, unsigned mask, size_t * last) {
    *last = p;
    while (p < end) {
        uint32_t c;
        size_t l;
        if (!(char_at(s, p, end, &c, &l) & mask)) {
            break;
        }
        *last = p;
        p += l;
    }
    return p;
}

static inline uint8_t ascii_lower(uint8_t c) { return c >= 'A' && c <= 'Z' ? (uint8_t) (c + 32) : c; }

/* 's 't 're 've 'm 'll 'd at s[p] == '\'': end of the contraction, or p if none. */
static inline size_t match_contraction(const uint8_t * s, size_t p, size_t end, bool any_case) {
    if (p + 1 >= end) {
        return p;
    }
    uint8_t a = s[p + 1], b = p + 2 < end ? s[p + 2] : 0;
    if (any_case) {
        a = ascii_lower(a);
        b = ascii_lower(b);
    }
    if (a == 's' || a == 't' || a == 'm' || a == 'd') {
        return p + 2;
    }
    if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) {
        return p + 3;
    }
    return p;
}

/* GPT-2: 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
 * Returns the end of the match at p (always > p). */
static size_t match_gpt2(const uint8_t * s, size_t p, size_t end) {
    uint32_t c, c2;
    size_t l, l2, last;
    unsigned k = char_at(s, p, end, &c, &l);
    if (c == '\'') {
        size_t q = match_contraction(s, p, end, false);
        if (q > p) {
            return q;
        }
    }
    if (c == ' ' && p + 1 < end) {
        unsigned k2 = char_at(s, p + 1, end, &c2, &l2);
        if (k2 != C_S) {
            return run_class(s, p + 1, end, k2, &last);
        }
    }
    if (k != C_S) {
        return run_class(s, p, end, k, &last);
    }
    size_t q = run_class(s, p, end, C_S, &last);
    if (q < end && last > p) {
        return last; /* \s+(?!\S): the last space goes with the next word */
    }
    return q;
}

/* llama3 (max_digits 3) and qwen2 (max_digits 1):
 * (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+ */
static size_t match_llama3(const uint8_t * s, size_t p, size_t end, int max_digits) {
    uint32_t c, c2;
    size_t l, l2, last;
    unsigned k = char_at(s, p, end, &c, &l);
    if (c == '\'') {
        size_t q = match_contraction(s, p, end, true);
        if (q > p) {
            return q;
        }
    }
    if (k == C_L) {
        return run_class(s, p, end, C_L, &last);
    }
    if (k != C_N && c != '\r' && c != '\n' && p + l < end && char_at(s, p + l, end, &c2, &l2) == C_L) {
        return run_class(s, p + l, end, C_L, &last);
    }
    if (k == C_N) {
        size_t q = p + l;
        for (int i = 1; i < max_digits && q < end && char_at(s, q, end, &c2, &l2) == C_N; i++) {
            q += l2;
        }
        return q;
    }
    size_t q0 = p;
    if (c == ' ' && p + 1 < end && char_at(s, p + 1, end, &c2, &l2) == C_O) {
        q0 = p + 1;
    }
    if (q0 > p || k == C_O) {
        size_t q = run_class(s, q0, end, C_O, &last);
        while (q < end && (s[q] == '\r' || s[q] == '\n')) {
            q++;
        }
        return q;
    }
    /* whitespace */
    size_t q = p, nl_end = p;
    last = p;
    while (q < end && char_at(s, q, end, &c2, &l2) == C_S) {
        last = q;
        q += l2;
        if (c2 == '\r' || c2 == '\n') {
            nl_end = q;
        }
    }
    if (nl_end > p) {
        return nl_end; /* \s*[\r\n]+ ends at the last line break of the run */
    }
    if (q < end && last > p) {
        return last;
    }
    return q;
}

typedef struct bpe_ctx {
    const tri_vocab *   v;
    tri_tok_out *       out;
    tri_scratch *       scratch;
    enum triattn_status status;
} bpe_ctx;

/* A byte whose GPT-2 character is not in the vocabulary (-1) is dropped, as HF tokenizers does; the
 * unknown token of such vocabularies is often an end-of-text token that must not appear mid-prompt. */
static inline void push_sym(bpe_ctx * c, int32_t id) {
    if (id >= 0) {
        tri_tok_push(c->out, id);
    }
}

enum { SMALL_WORD = 48 };

/* Merges a short word by repeatedly taking the lowest-ranked adjacent pair (leftmost on ties). */
static void bpe_small(bpe_ctx * c, const uint8_t * w, int n) {
    const tri_vocab * v = c->v;
    int32_t ids[SMALL_WORD], rk[SMALL_WORD], mg[SMALL_WORD];
    int m = n;
    for (int i = 0; i < m; i++) {
        ids[i] = v->byte_tok[w[i]];
    }
    for (int i = 0; i + 1 < m; i++) {
        rk[i] = tri_merge_find(v, ids[i], ids[i + 1], &mg[i]);
    }
    for (;;) {
        int best = -1;
        int32_t br = INT32_MAX;
        for (int i = 0; i + 1 < m; i++) {
            if (rk[i] < br) {
                br   = rk[i];
                best = i;
            }
        }
        if (best < 0) {
            break;
        }
        ids[best] = mg[best];
        for (int i = best + 1; i + 1 < m; i++) { /* drop symbol best + 1 and pair best */
            ids[i]    = ids[i + 1];
            rk[i - 1] = rk[i];
            mg[i - 1] = mg[i];
        }
        m--;
        if (best > 0) {
            rk[best - 1] = tri_merge_find(v, ids[best - 1], ids[best], &mg[best - 1]);
        }
        if (best + 1 < m) {
            rk[best] = tri_merge_find(v, ids[best], ids[best + 1], &mg[best]);
        }
    }
    for (int i = 0; i < m; i++) {
        push_sym(c, ids[i]);
    }
}

static void heap_add(const tri_vocab * v, tri_bigram * h, int32_t * hn, const int32_t * ids, int32_t l, int32_t r) {
    int32_t merged;
    int32_t rank = tri_merge_find(v, ids[l], ids[r], &merged);
    if (rank != INT32_MAX) {
        tri_heap_push(h, hn, (tri_bigram) { -(double) rank, l, r, ids[l], ids[r], merged });
    }
}

/* Same merges for long words (whitespace runs, long letter strings) with a priority queue: O(n log n). */
static void bpe_large(bpe_ctx * c, const uint8_t * w, size_t n) {
    const tri_vocab * v = c->v;
    if (n > (size_t) INT32_MAX / 4) {
        c->status = TRIATTN_ERR_INVALID_ARG;
        return;
    }
    size_t need = 3 * n * sizeof(int32_t) + 3 * n * sizeof(tri_bigram) + 64;
    if (!tri_scratch_reserve(c->scratch, need)) {
        c->status = TRIATTN_ERR_OOM;
        return;
    }
    tri_bigram * h   = c->scratch->p;
    int32_t *    ids = (int32_t *) (h + 3 * n);
    int32_t *    prv = ids + n;
    int32_t *    nxt = prv + n;
    int32_t      hn  = 0;
    int32_t      m   = (int32_t) n;
    for (int32_t i = 0; i < m; i++) {
        ids[i] = v->byte_tok[w[i]];
        prv[i] = i - 1;
        nxt[i] = i + 1 < m ? i + 1 : -1;
    }
    for (int32_t i = 0; i + 1 < m; i++) {
        heap_add(v, h, &hn, ids, i, i + 1);
    }
    while (hn > 0) {
        tri_bigram e = tri_heap_pop(h, &hn);
        if (nxt[e.left] != e.right || ids[e.left] != e.a || ids[e.right] != e.b) {
            continue; /* stale: one side merged since */
        }
        ids[e.left]  = e.merged;
        ids[e.right] = INT32_MIN;
        nxt[e.left]  = nxt[e.right];
        if (nxt[e.right] >= 0) {
            prv[nxt[e.right]] = e.left;
        }
        if (prv[e.left] >= 0) {
            heap_add(v, h, &hn, ids, prv[e.left], e.left);
        }
        if (nxt[e.left] >= 0) {
            heap_add(v, h, &hn, ids, e.left, nxt[e.left]);
        }
    }
    for (int32_t i = 0; i >= 0; i = nxt[i]) {
        push_sym(c, ids[i]);
    }
}

static void bpe_word(bpe_ctx * c, const uint8_t * w, size_t n) {
    const tri_vocab * v = c->v;
    if (n == 1) {
        push_sym(c, v->byte_tok[w[0]]);
        return;
    }
    if (v->ignore_merges) {
        /* The word as a token: needs its GPT-2 alphabet form, at most 2 bytes per input byte. */
        uint8_t buf[2 * 256];
        buf[0] = 0; /* silences a gcc 12 false positive */
        if (n <= 256) {
            size_t k = 0;
            for (size_t i = 0; i < n; i++) {
                uint32_t cp = tri_gpt2_byte_to_cp(w[i]); /* < 0x800: one or two bytes */
                if (cp < 0x80) {
                    buf[k++] = (uint8_t) cp;
                } else {
                    buf[k++] = (uint8_t) (0xC0 | (cp >> 6));
                    buf[k++] = (uint8_t) (0x80 | (cp & 0x3F));
                }
            }
            int32_t id = tri_vocab_find(v, (const char *) buf, k);
            if (id >= 0) {
                tri_tok_push(c->out, id);
                return;
            }
        }
    }
    if (n <= SMALL_WORD) {
        bpe_small(c, w, (int) n);
    } else {
        bpe_large(c, w, n);
    }
}

static void split_regex(bpe_ctx * c, const uint8_t * s, size_t p, size_t end) {
    enum tri_pre pre = c->v->pre;
    while (p < end && c->status == TRIATTN_OK) {
        size_t q = pre == TRI_PRE_GPT2 || pre == TRI_PRE_DIGITS ? match_gpt2(s, p, end)
                                                               : match_llama3(s, p, end, pre == TRI_PRE_QWEN2 ? 1 : 3);
        if (q <= p || q > end) {
            q = p + 1; /* cannot happen; keeps the loop finite */
        }
        bpe_word(c, s + p, q - p);
        p = q;
    }
}

/* \p{N} pass: every number character alone, the text between goes through the regex. */
static void split_digits(bpe_ctx * c, const uint8_t * s, size_t p, size_t end) {
    size_t start = p;
    while (p < end && c->status == TRIATTN_OK) {
        uint32_t cp;
        size_t l;
        if (char_at(s, p, end, &cp, &l) == C_N) {
            split_regex(c, s, start, p);
            bpe_word(c, s + p, l);
            start = p + l;
        }
        p += l;
    }
    split_regex(c, s, start, end);
}

enum triattn_status tri_bpe_tokenize(const tri_vocab * v, const uint8_t * text, size_t n, tri_tok_out * out,
                                     tri_scratch * scratch) {
    bpe_ctx c = { v, out, scratch, TRIATTN_OK };
    if (v->pre == TRI_PRE_DIGITS) {
        split_digits(&c, text, 0, n);
    } else {
        split_regex(&c, text, 0, n);
    }
    return c.status;
}
