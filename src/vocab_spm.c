/* SentencePiece-style BPE ("llama" tokenizer model): spaces become U+2581, then adjacent symbols are merged
 * best score first (the merged piece's score, leftmost on ties) while the merged text is a token;
 * leftover symbols that are not tokens fall back to <0xXX> byte tokens, or the unknown token. */
#include "vocab_impl.h"

#include "unicode.h"

#include <string.h>

typedef struct spm_sym {
    uint32_t start, len; /* bytes in the escaped text; len 0 once merged into its left neighbour */
    int32_t  prev, next;
} spm_sym;

static void try_add(const tri_vocab * v, const char * t, const spm_sym * sym, tri_bigram * h, int32_t * hn,
                    int32_t l, int32_t r) {
    if (l < 0 || r < 0) {
        return;
    }
    uint32_t size = sym[l].len + sym[r].len;
    int32_t id = tri_vocab_find(v, t + sym[l].start, size);
    if (id >= 0) {
        tri_heap_push(h, hn, (tri_bigram) { v->score[id], l, r, (int32_t) size, 0, id });
    }
}

/* A symbol that is not a token: its bytes as byte tokens, or one unknown token when one is missing. */
static void push_bytes(const tri_vocab * v, const uint8_t * s, uint32_t n, tri_tok_out * out) {
    bool all = true;
    for (uint32_t i = 0; i < n; i++) {
        all = all && v->byte_tok[s[i]] >= 0;
    }
    if (!all) {
        if (v->unk >= 0) {
            tri_tok_push(out, v->unk);
        }
        return;
    }
    for (uint32_t i = 0; i < n; i++) {
        tri_tok_push(out, v->byte_tok[s[i]]);
    }
}

enum triattn_status tri_spm_tokenize(const tri_vocab * v, const uint8_t * text, size_t n, bool add_prefix,
                                     tri_tok_out * out, tri_scratch * scratch) {
    if (n > (size_t) INT32_MAX / 8) {
        return TRIATTN_ERR_INVALID_ARG;
    }
    size_t cap = 3 * n + 3; /* escaped text: each space grows to 3 bytes */
    size_t need = cap + 8 + cap * sizeof(spm_sym) + 3 * cap * sizeof(tri_bigram);
    if (!tri_scratch_reserve(scratch, need)) {
        return TRIATTN_ERR_OOM;
    }
    tri_bigram * h   = scratch->p;
    spm_sym *    sym = (spm_sym *) (h + 3 * cap);
    char *       t   = (char *) (sym + cap);

    size_t tn = 0;
    if (add_prefix) {
        memcpy(t, "\xe2\x96\x81", 3);
        tn = 3;
    }
    for (size_t i = 0; i < n; i++) {
        if (text[i] == ' ') {
            memcpy(t + tn, "\xe2\x96\x81", 3);
            tn += 3;
        } else {
            t[tn++] = (char) text[i];
        }
    }
    int32_t m = 0;
    for (size_t i = 0; i < tn;) {
        size_t l;
        tri_utf8_decode((const uint8_t *) t + i, tn - i, &l);
        sym[m] = (spm_sym) { (uint32_t) i, (uint32_t) l, m - 1, -1 };
        if (m > 0) {
            sym[m - 1].next = m;
        }
        m++;
        i += l;
    }
    int32_t hn = 0;
    for (int32_t i = 0; i + 1 < m; i++) {
        try_add(v, t, sym, h, &hn, i, i + 1);
    }
    while (hn > 0) {
        tri_bigram e = tri_heap_pop(h, &hn);
        spm_sym * L = &sym[e.left], * R = &sym[e.right];
        if (L->len == 0 || R->len == 0 || L->next != e.right || L->len + R->len != (uint32_t) e.a) {
            continue; /* stale */
        }
        L->len += R->len;
        R->len = 0;
        L->next = R->next;
        if (R->next >= 0) {
            sym[R->next].prev = e.left;
        }
        try_add(v, t, sym, h, &hn, L->prev, e.left);
        try_add(v, t, sym, h, &hn, e.left, L->next);
    }
    for (int32_t i = 0; i >= 0 && m > 0; i = sym[i].next) {
        int32_t id = tri_vocab_find(v, t + sym[i].start, sym[i].len);
        if (id >= 0) {
            tri_tok_push(out, id);
        } else {
            push_bytes(v, (const uint8_t *) t + sym[i].start, sym[i].len, out);
        }
    }
    return TRIATTN_OK;
}
