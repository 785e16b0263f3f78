/* Private to the tokenizer (vocab.c, vocab_bpe.c, vocab_spm.c): the vocabulary layout and shared helpers. */
#ifndef TRI_VOCAB_IMPL_H
#define TRI_VOCAB_IMPL_H

#include "vocab.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* tokenizer.ggml.token_type values. */
enum tri_tok_type {
    TRI_TOK_UNDEFINED    = 0,
    TRI_TOK_NORMAL       = 1,
    TRI_TOK_UNKNOWN      = 2,
    TRI_TOK_CONTROL      = 3,
    TRI_TOK_USER_DEFINED = 4,
    TRI_TOK_UNUSED       = 5,
    TRI_TOK_BYTE         = 6,
};

enum tri_vocab_kind {
    TRI_VOCAB_BPE, /* "gpt2": byte-level BPE with ranked merges */
    TRI_VOCAB_SPM, /* "llama": SentencePiece-style BPE over scores, byte fallback */
};

/* Pre-tokenizer families (tokenizer.ggml.pre); each is one or two split passes. */
enum tri_pre {
    TRI_PRE_GPT2,   /* GPT-2 regex */
    TRI_PRE_DIGITS, /* each \p{N} alone, then the GPT-2 regex (smollm, starcoder, refact, ...) */
    TRI_PRE_LLAMA3, /* llama3 regex: case-insensitive contractions, \p{N}{1,3} */
    TRI_PRE_QWEN2,  /* llama3 regex with single \p{N} */
};

struct tri_merge_slot {
    uint64_t key;  /* left id << 32 | right id */
    int32_t  rank; /* -1: empty slot */
    int32_t  id;   /* the merged token */
};

struct tri_vocab {
    enum tri_vocab_kind kind;
    enum tri_pre        pre;
    int32_t             n_tokens;

    char *     text;       /* token texts, each NUL-terminated: token i at text + text_off[i] */
    uint32_t * text_off;   /* (n_tokens + 1) */
    uint8_t *  type;       /* (n_tokens) enum tri_tok_type */
    float *    score;      /* (n_tokens) SPM merge scores, 0 when absent */
    uint8_t *  is_eog;     /* (n_tokens) */
    char *     piece;      /* rendered bytes of normal/byte tokens: token i is piece[piece_off[i] .. piece_off[i+1]) */
    uint32_t * piece_off;  /* (n_tokens + 1) */

    int32_t *  tok_hash;   /* open addressing, token text -> id, -1 empty; (tok_mask + 1) slots */
    uint32_t   tok_mask;

    struct tri_merge_slot * merges; /* open addressing on (left id << 32 | right id); one cache line per probe */
    uint32_t   merge_mask;

    int32_t    byte_tok[256]; /* BPE: token of the byte's GPT-2 character; SPM: <0xXX>; -1 if none */

    int32_t *  special;       /* control/user-defined/unknown tokens sorted by (first byte, length desc) */
    int32_t    n_special;
    int32_t    special_start[257]; /* special[special_start[b] .. special_start[b+1]) start with byte b */

    int32_t    bos, eos, unk, pad, eot, eom;
    bool       add_bos, add_eos, add_space_prefix;
    bool       ignore_merges; /* a pre-token that is itself a token is emitted whole (llama3) */
};

static inline const char * tri_vocab_text(const tri_vocab * v, int32_t id, uint32_t * len) {
    *len = v->text_off[id + 1] - v->text_off[id] - 1;
    return v->text + v->text_off[id];
}

/* Token id of exactly these bytes, -1 if none. */
int32_t tri_vocab_find(const tri_vocab * v, const char * s, size_t n);

/* Rank of merging tokens a and b (INT32_MAX when no merge applies) and the merged token in *merged. */
static inline int32_t tri_merge_find(const tri_vocab * v, int32_t a, int32_t b, int32_t * merged) {
    if (a < 0 || b < 0) {
        return INT32_MAX;
    }
    uint64_t key = ((uint64_t) (uint32_t) a << 32) | (uint32_t) b;
    uint32_t i = (uint32_t) ((key * 0x9E3779B97F4A7C15ull) >> 32) & v->merge_mask;
    for (;;) {
        const struct tri_merge_slot * e = &v->merges[i];
        if (e->rank < 0) {
            return INT32_MAX;
        }
        if (e->key == key) {
            *merged = e->id;
            return e->rank;
        }
        i = (i + 1) & v->merge_mask;
    }
}

/* Token ids are written while they fit; n counts every token produced. */
typedef struct tri_tok_out {
    triattn_token * out;
    int64_t         cap;
    int64_t         n;
} tri_tok_out;

static inline void tri_tok_push(tri_tok_out * o, int32_t t) {
    if (o->n < o->cap) {
        o->out[o->n] = t;
    }
    o->n++;
}

/* Per-call working memory, grown on demand and reused across words. */
typedef struct tri_scratch {
    void * p;
    size_t size;
} tri_scratch;

/* Ensures at least `bytes`; false on OOM. Contents are not preserved. */
bool tri_scratch_reserve(tri_scratch * s, size_t bytes);

/* Candidate merge of symbols left and right: a max-heap on key, ties to the leftmost pair. a and b are
 * what the two symbols held when the candidate was made (to skip stale entries). */
typedef struct tri_bigram {
    double  key;
    int32_t left, right;
    int32_t a, b;
    int32_t merged;
} tri_bigram;

static inline bool tri_bigram_before(const tri_bigram * x, const tri_bigram * y) {
    return x->key > y->key || (x->key == y->key && x->left < y->left);
}

static inline void tri_heap_push(tri_bigram * h, int32_t * n, tri_bigram e) {
    int32_t i = (*n)++;
    while (i > 0) {
        int32_t p = (i - 1) / 2;
        if (!tri_bigram_before(&e, &h[p])) {
            break;
        }
        h[i] = h[p];
        i = p;
    }
    h[i] = e;
}

static inline tri_bigram tri_heap_pop(tri_bigram * h, int32_t * n) {
    tri_bigram top = h[0];
    tri_bigram last = h[--(*n)];
    int32_t i = 0;
    for (;;) {
        int32_t c = 2 * i + 1;
        if (c >= *n) {
            break;
        }
        if (c + 1 < *n && tri_bigram_before(&h[c + 1], &h[c])) {
            c++;
        }
        if (!tri_bigram_before(&h[c], &last)) {
            break;
        }
        h[i] = h[c];
        i = c;
    }
    if (*n > 0) {
        h[i] = last;
    }
    return top;
}

/* Tokenizes raw text (no special tokens inside). */
enum triattn_status tri_bpe_tokenize(const tri_vocab * v, const uint8_t * text, size_t n, tri_tok_out * out,
                                     tri_scratch * scratch);
enum triattn_status tri_spm_tokenize(const tri_vocab * v, const uint8_t * text, size_t n, bool add_prefix,
                                     tri_tok_out * out, tri_scratch * scratch);

/* GPT-2 byte <-> unicode alphabet. */
uint32_t tri_gpt2_byte_to_cp(uint8_t b);
int      tri_gpt2_cp_to_byte(uint32_t cp); /* -1 if cp is not in the alphabet */

#endif
