/* Tokenizer: vocabulary loading from tokenizer.ggml.* keys, special-token partitioning, pieces and
 * detokenization. The BPE and SentencePiece merge algorithms live in vocab_bpe.c and vocab_spm.c. */
#include "vocab_impl.h"

#include "common.h"
#include "unicode.h"

#include <stdlib.h>
#include <string.h>

/* ---- small helpers ----------------------------------------------------------------------------- */

static uint64_t hash_bytes(const char * s, size_t n) {
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++) {
        h = (h ^ (uint8_t) s[i]) * 0x100000001b3ull;
    }
    return h ^ (h >> 29);
}

static uint32_t table_size(uint64_t n) { /* power of two >= 2n, at least 16 */
    uint32_t s = 16;
    while (s < 2 * n) {
        s <<= 1;
    }
    return s;
}

int32_t tri_vocab_find(const tri_vocab * v, const char * s, size_t n) {
    uint32_t i = (uint32_t) hash_bytes(s, n) & v->tok_mask;
    for (;;) {
        int32_t id = v->tok_hash[i];
        if (id < 0) {
            return -1;
        }
        uint32_t len;
        const char * t = tri_vocab_text(v, id, &len);
        if (len == n && memcmp(t, s, n) == 0) {
            return id;
        }
        i = (i + 1) & v->tok_mask;
    }
}

bool tri_scratch_reserve(tri_scratch * s, size_t bytes) {
    if (bytes <= s->size) {
        return true;
    }
    size_t want = s->size ? s->size : 4096;
    while (want < bytes) {
        want *= 2;
    }
    void * p = malloc(want);
    if (!p) {
        return false;
    }
    free(s->p);
    s->p    = p;
    s->size = want;
    return true;
}

uint32_t tri_gpt2_byte_to_cp(uint8_t b) {
    /* Printable bytes map to themselves; the 68 others (0-32, 127-160, 173) to 256.. in byte order. */
    if (b <= 32) {
        return 256u + b;
    }
    if (b >= 127 && b <= 160) {
        return 256u + 33u + (b - 127u);
    }
    if (b == 173) {
        return 256u + 67u;
    }
    return b;
}

int tri_gpt2_cp_to_byte(uint32_t cp) {
    if (cp < 256) {
        return (cp <= 32 || (cp >= 127 && cp <= 160) || cp == 173) ? -1 : (int) cp;
    }
    if (cp <= 256 + 32) {
        return (int) (cp - 256);
    }
    if (cp <= 256 + 66) {
        return (int) (cp - 256 - 33 + 127);
    }
    if (cp == 256 + 67) {
        return 173;
    }
    return -1;
}

/* ---- loading ------------------------------------------------------------------------------------ */

static const struct { const char * name; enum tri_pre pre; bool ignore_merges; } k_pre_names[] = {
    { "default", TRI_PRE_GPT2, false },      { "gpt2", TRI_PRE_GPT2, false },
    { "gpt-2", TRI_PRE_GPT2, false },        { "phi-2", TRI_PRE_GPT2, false },
    { "mpt", TRI_PRE_GPT2, false },          { "olmo", TRI_PRE_GPT2, false },
    { "jais", TRI_PRE_GPT2, false },         { "roberta-bpe", TRI_PRE_GPT2, false },
    { "jina-es", TRI_PRE_GPT2, false },      { "jina-de", TRI_PRE_GPT2, false },
    { "jina-v1-en", TRI_PRE_GPT2, false },   { "jina-v2-es", TRI_PRE_GPT2, false },
    { "jina-v2-de", TRI_PRE_GPT2, false },   { "jina-v2-code", TRI_PRE_GPT2, false },
    { "smollm", TRI_PRE_DIGITS, false },     { "starcoder", TRI_PRE_DIGITS, false },
    { "refact", TRI_PRE_DIGITS, false },     { "command-r", TRI_PRE_DIGITS, false },
    { "codeshell", TRI_PRE_DIGITS, false },  { "exaone", TRI_PRE_DIGITS, false },
    { "minerva-7b", TRI_PRE_DIGITS, false },
    { "llama3", TRI_PRE_LLAMA3, true },      { "llama-v3", TRI_PRE_LLAMA3, true },
    { "llama-bpe", TRI_PRE_LLAMA3, true },   { "falcon3", TRI_PRE_LLAMA3, true },
    { "falcon-h1", TRI_PRE_LLAMA3, true },   { "pixtral", TRI_PRE_LLAMA3, true },
    { "midm-2.0", TRI_PRE_LLAMA3, true },
    { "dbrx", TRI_PRE_LLAMA3, false },       { "smaug-bpe", TRI_PRE_LLAMA3, false },
    { "chatglm-bpe", TRI_PRE_LLAMA3, false },
    { "qwen2", TRI_PRE_QWEN2, false },       { "deepseek-r1-qwen", TRI_PRE_QWEN2, false },
    { "stablelm2", TRI_PRE_QWEN2, false },   { "megrez", TRI_PRE_QWEN2, false },
};

/* Control tokens with these texts end generation, besides eos/eot/eom. */
static const char * const k_eog_texts[] = {
    "<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end_of_text|>", "<|endoftext|>", "<end_of_turn>", "<|end|>",
    "</s>", "<|EOT|>", "<EOT>", "_<EOT>", "<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>",
    "<end_of_utterance>",
};

static bool str_eq(tri_gguf_str s, const char * z) {
    size_t n = strlen(z);
    return s.len == n && memcmp(s.ptr, z, n) == 0;
}

static int printable_len(tri_gguf_str s) { /* for "%.*s" in messages */
    return s.len > 64 ? 64 : (int) s.len;
}

/* Reads an optional token id key into *out (which holds the default). -1 (or 0xFFFFFFFF) means none. */
static enum triattn_status read_id(const tri_gguf * g, const char * key, int32_t n_tokens, int32_t * out,
                                   char * err, size_t err_size) {
    if (!tri_gguf_find(g, key)) {
        return TRIATTN_OK;
    }
    int32_t v;
    if (tri_gguf_get_i32(g, key, false, &v, NULL, 0) != TRIATTN_OK) {
        uint32_t u;
        enum triattn_status st = tri_gguf_get_u32(g, key, false, &u, err, err_size);
        if (st != TRIATTN_OK) {
            return st;
        }
        if (u != UINT32_MAX) {
            return tri_fail(err, err_size, TRIATTN_ERR_FORMAT, "tokenizer: %s = %u is not a token id (%d tokens)",
                            key, u, n_tokens);
        }
        v = -1;
    }
    if (v < -1 || v >= n_tokens) {
        return tri_fail(err, err_size, TRIATTN_ERR_FORMAT, "tokenizer: %s = %d is not a token id (%d tokens)", key,
                        v, n_tokens);
    }
    *out = v;
    return TRIATTN_OK;
}

/* An array key: must hold n elements of an accepted kind when present. */
static enum triattn_status get_array(const tri_gguf * g, const char * key, bool required, int kind, uint64_t n,
                                     const tri_gguf_kv ** out, char * err, size_t err_size) {
    /* kind: 0 strings, 1 integers, 2 numbers */
    const tri_gguf_kv * kv = tri_gguf_find(g, key);
    *out = NULL;
    if (!kv) {
        return required ? tri_fail(err, err_size, TRIATTN_ERR_FORMAT, "tokenizer: required key '%s' is missing", key)
                        : TRIATTN_OK;
    }
    bool ok = kv->type == TRI_GGUF_ARRAY;
    if (ok) {
        enum tri_gguf_type t = kv->arr_type;
        bool is_int = t == TRI_GGUF_UINT8 || t == TRI_GGUF_INT8 || t == TRI_GGUF_UINT16 || t == TRI_GGUF_INT16 ||
                      t == TRI_GGUF_UINT32 || t == TRI_GGUF_INT32 || t == TRI_GGUF_UINT64 || t == TRI_GGUF_INT64;
        ok = kind == 0 ? (t == TRI_GGUF_STRING && kv->strs != NULL)
           : kind == 1 ? is_int
                       : (is_int || t == TRI_GGUF_FLOAT32 || t == TRI_GGUF_FLOAT64);
    }
    if (!ok) {
        static const char * want[] = { "an array of strings", "an array of integers", "an array of numbers" };
        return tri_fail(err, err_size, TRIATTN_ERR_FORMAT, "tokenizer: key '%s' is not %s", key, want[kind]);
    }
    if (n != UINT64_MAX && kv->n != n) {
        return tri_fail(err, err_size, TRIATTN_ERR_FORMAT, "tokenizer: key '%s' has %llu entries, expected %llu", key,
                        (unsigned long long) kv->n, (unsigned long long) n);
    }
    *out = kv;
    return TRIATTN_OK;
}

static void tok_hash_insert(tri_vocab * v, int32_t id) {
    uint32_t len;
    const char * s = tri_vocab_text(v, id, &len);
    uint32_t i = (uint32_t) hash_bytes(s, len) & v->tok_mask;
    for (;;) {
        int32_t cur = v->tok_hash[i];
        if (cur < 0) {
            v->tok_hash[i] = id;
            return;
        }
        uint32_t clen;
        const char * c = tri_vocab_text(v, cur, &clen);
        if (clen == len && memcmp(c, s, len) == 0) {
            v->tok_hash[i] = id; /* duplicate text: the last id wins */
            return;
        }
        i = (i + 1) & v->tok_mask;
    }
}

static enum triattn_status load_merges(tri_vocab * v, const tri_gguf_kv * kv, char * err, size_t err_size) {
    if (kv->n > (1u << 30)) {
        return tri_fail(err, err_size, TRIATTN_ERR_FORMAT, "tokenizer: tokenizer.ggml.merges has %llu entries",
                        (unsigned long long) kv->n);
    }
    v->merge_mask = table_size(kv->n) - 1;
    size_t slots = (size_t) v->merge_mask + 1;
    v->merges = malloc(slots * sizeof *v->merges);
    size_t cap = 256;
    char * buf = malloc(cap);
    if (!v->merges || !buf) {
        free(buf);
        return tri_fail(err, err_size, TRIATTN_ERR_OOM, "tokenizer: out of memory for merges");
    }
    for (size_t i = 0; i < slots; i++) {
        v->merges[i] = (struct tri_merge_slot) { 0, -1, -1 };
    }
    for (uint64_t r = 0; r < kv->n; r++) {
        tri_gguf_str m = kv->strs[r];
        const char * sp = m.len > 1 ? memchr(m.ptr + 1, ' ', m.len - 1) : NULL;
        if (!sp) {
            free(buf);
            return tri_fail(err, err_size, TRIATTN_ERR_FORMAT,
                            "tokenizer: tokenizer.ggml.merges[%llu] = '%.*s' is not two space-separated tokens",
                            (unsigned long long) r, printable_len(m), m.ptr);
        }
        size_t la = (size_t) (sp - m.ptr), lb = m.len - la - 1;
        if (la + lb > cap) {
            free(buf);
            cap = 2 * (la + lb);
            buf = malloc(cap);
            if (!buf) {
                return tri_fail(err, err_size, TRIATTN_ERR_OOM, "tokenizer: out of memory for merges");
            }
        }
        int32_t a = tri_vocab_find(v, m.ptr, la);
        int32_t b = tri_vocab_find(v, sp + 1, lb);
        memcpy(buf, m.ptr, la);
        memcpy(buf + la, sp + 1, lb);
        int32_t ab = tri_vocab_find(v, buf, la + lb);
        if (a < 0 || b < 0 || ab < 0) {
            continue; /* a merge whose parts are not tokens can never apply to token ids */
        }
        uint64_t key = ((uint64_t) (uint32_t) a << 32) | (uint32_t) b;
        uint32_t i = (uint32_t) ((key * 0x9E3779B97F4A7C15ull) >> 32) & v->merge_mask; /* as tri_merge_find */
        while (v->merges[i].rank >= 0 && v->merges[i].key != key) {
            i = (i + 1) & v->merge_mask;
        }
        if (v->merges[i].rank < 0) { /* the first (lowest-rank) occurrence of a pair wins */
            v->merges[i] = (struct tri_merge_slot) { key, (int32_t) r, ab };
        }
    }
    free(buf);
    return TRIATTN_OK;
}

/* Bytes a normal/byte/user-defined token renders as (control-like tokens keep their text). */
static size_t render_token(const tri_vocab * v, int32_t id, char * out) {
    uint32_t len;
    const char * s = tri_vocab_text(v, id, &len);
    uint8_t type = v->type[id];
    if (type == TRI_TOK_BYTE && len == 6 && memcmp(s, "<0x", 3) == 0 && s[5] == '>') {
        unsigned val = 0;
        bool ok = true;
        for (int k = 3; k < 5; k++) {
            char c = s[k];
            unsigned d = c >= '0' && c <= '9' ? (unsigned) (c - '0')
                       : c >= 'A' && c <= 'F' ? (unsigned) (c - 'A' + 10)
                       : c >= 'a' && c <= 'f' ? (unsigned) (c - 'a' + 10)
                                              : 16u;
            ok = ok && d < 16;
            val = val * 16 + d;
        }
        if (ok) {
            out[0] = (char) val;
            return 1;
        }
    }
    if (type != TRI_TOK_NORMAL && type != TRI_TOK_UNDEFINED) {
        memcpy(out, s, len);
        return len;
    }
    size_t n = 0;
    if (v->kind == TRI_VOCAB_SPM) { /* U+2581 -> space */
        for (uint32_t i = 0; i < len;) {
            if (i + 3 <= len && (uint8_t) s[i] == 0xE2 && (uint8_t) s[i + 1] == 0x96 && (uint8_t) s[i + 2] == 0x81) {
                out[n++] = ' ';
                i += 3;
            } else {
                out[n++] = s[i++];
            }
        }
        return n;
    }
    for (uint32_t i = 0; i < len;) { /* GPT-2 alphabet -> bytes; characters outside it stay as UTF-8 */
        size_t cl;
        uint32_t cp = tri_utf8_decode((const uint8_t *) s + i, len - i, &cl);
        int b = cp == TRI_CP_INVALID ? -1 : tri_gpt2_cp_to_byte(cp);
        if (b >= 0) {
            out[n++] = (char) b;
        } else {
            memcpy(out + n, s + i, cl);
            n += cl;
        }
        i += (uint32_t) cl;
    }
    return n;
}

struct special_key {
    uint8_t first;
    uint32_t len;
    int32_t id;
};

static int cmp_special(const void * pa, const void * pb) { /* by first byte, then longest first */
    const struct special_key * a = pa, * b = pb;
    if (a->first != b->first) {
        return a->first < b->first ? -1 : 1;
    }
    if (a->len != b->len) {
        return a->len > b->len ? -1 : 1;
    }
    return a->id < b->id ? -1 : a->id > b->id;
}

static bool sort_specials(tri_vocab * v) {
    struct special_key * keys = malloc(((size_t) v->n_special + 1) * sizeof *keys);
    if (!keys) {
        return false;
    }
    for (int32_t k = 0; k < v->n_special; k++) {
        uint32_t len;
        const char * s = tri_vocab_text(v, v->special[k], &len);
        keys[k] = (struct special_key) { (uint8_t) s[0], len, v->special[k] };
    }
    qsort(keys, (size_t) v->n_special, sizeof *keys, cmp_special);
    for (int32_t k = 0; k < v->n_special; k++) {
        v->special[k] = keys[k].id;
    }
    free(keys);
    return true;
}

static enum triattn_status build_tables(tri_vocab * v, char * err, size_t err_size) {
    int32_t n = v->n_tokens;
    v->tok_mask = table_size((uint64_t) n) - 1;
    v->tok_hash = malloc(((size_t) v->tok_mask + 1) * sizeof *v->tok_hash);
    v->is_eog   = calloc((size_t) n, 1);
    v->special  = malloc((size_t) n * sizeof *v->special);
    v->piece_off = malloc(((size_t) n + 1) * sizeof *v->piece_off);
    /* A rendered piece is never longer than its text. */
    v->piece = malloc((size_t) v->text_off[n] + 1);
    if (!v->tok_hash || !v->is_eog || !v->special || !v->piece_off || !v->piece) {
        return tri_fail(err, err_size, TRIATTN_ERR_OOM, "tokenizer: out of memory");
    }
    memset(v->tok_hash, 0xff, ((size_t) v->tok_mask + 1) * sizeof *v->tok_hash);
    uint32_t off = 0;
    for (int32_t i = 0; i < n; i++) {
        tok_hash_insert(v, i);
        v->piece_off[i] = off;
        off += (uint32_t) render_token(v, i, v->piece + off);
        uint32_t len;
        const char * s = tri_vocab_text(v, i, &len);
        uint8_t t = v->type[i];
        if ((t == TRI_TOK_CONTROL || t == TRI_TOK_USER_DEFINED || t == TRI_TOK_UNKNOWN) && len > 0) {
            v->special[v->n_special++] = i;
        }
        if (t == TRI_TOK_CONTROL) {
            for (size_t k = 0; k < sizeof k_eog_texts / sizeof k_eog_texts[0]; k++) {
                if (strlen(k_eog_texts[k]) == len && memcmp(k_eog_texts[k], s, len) == 0) {
                    v->is_eog[i] = 1;
                }
            }
        }
    }
    v->piece_off[n] = off;
    if (v->eos >= 0) v->is_eog[v->eos] = 1;
    if (v->eot >= 0) v->is_eog[v->eot] = 1;
    if (v->eom >= 0) v->is_eog[v->eom] = 1;

    if (!sort_specials(v)) {
        return tri_fail(err, err_size, TRIATTN_ERR_OOM, "tokenizer: out of memory");
    }
    int32_t k = 0;
    for (int b = 0; b <= 256; b++) {
        while (k < v->n_special && (uint8_t) v->text[v->text_off[v->special[k]]] < b) {
            k++;
        }
        v->special_start[b] = k;
    }

    for (int b = 0; b < 256; b++) {
        char buf[8];
        size_t len;
        if (v->kind == TRI_VOCAB_BPE) {
            len = (size_t) tri_utf8_encode(tri_gpt2_byte_to_cp((uint8_t) b), (uint8_t *) buf);
        } else {
            static const char hex[] = "0123456789ABCDEF";
            memcpy(buf, "<0x", 3);
            buf[3] = hex[b >> 4];
            buf[4] = hex[b & 15];
            buf[5] = '>';
            len = 6;
        }
        v->byte_tok[b] = tri_vocab_find(v, buf, len);
        if (v->byte_tok[b] < 0 && v->kind == TRI_VOCAB_SPM) {
            buf[0] = (char) b; /* some SentencePiece vocabularies hold raw single bytes */
            v->byte_tok[b] = tri_vocab_find(v, buf, 1);
        }
    }
    return TRIATTN_OK;
}

static enum triattn_status load(const tri_gguf * g, tri_vocab * v, char * err, size_t err_size) {
    enum triattn_status st;
    tri_gguf_str model;
    if ((st = tri_gguf_get_str(g, "tokenizer.ggml.model", false, &model, err, err_size)) != TRIATTN_OK) {
        return st;
    }
    if (str_eq(model, "gpt2")) {
        v->kind = TRI_VOCAB_BPE;
    } else if (str_eq(model, "llama")) {
        v->kind = TRI_VOCAB_SPM;
    } else {
        return tri_fail(err, err_size, TRIATTN_ERR_UNSUPPORTED,
                        "tokenizer: tokenizer.ggml.model '%.*s' is not supported (gpt2, llama)", printable_len(model),
                        model.ptr);
    }
    v->pre = TRI_PRE_GPT2;
    if (v->kind == TRI_VOCAB_BPE) {
        tri_gguf_str pre = { "default", 7 };
        if ((st = tri_gguf_get_str(g, "tokenizer.ggml.pre", true, &pre, err, err_size)) != TRIATTN_OK) {
            return st;
        }
        size_t k = 0, nk = sizeof k_pre_names / sizeof k_pre_names[0];
        while (k < nk && !str_eq(pre, k_pre_names[k].name)) {
            k++;
        }
        if (k == nk) {
            return tri_fail(err, err_size, TRIATTN_ERR_UNSUPPORTED,
                            "tokenizer: tokenizer.ggml.pre '%.*s' is not supported", printable_len(pre), pre.ptr);
        }
        v->pre           = k_pre_names[k].pre;
        v->ignore_merges = k_pre_names[k].ignore_merges;
    }

    const tri_gguf_kv * toks;
    if ((st = get_array(g, "tokenizer.ggml.tokens", true, 0, UINT64_MAX, &toks, err, err_size)) != TRIATTN_OK) {
        return st;
    }
    if (toks->n == 0 || toks->n > (1u << 30)) {
        return tri_fail(err, err_size, TRIATTN_ERR_FORMAT, "tokenizer: tokenizer.ggml.tokens has %llu entries",
                        (unsigned long long) toks->n);
    }
    int32_t n = v->n_tokens = (int32_t) toks->n;
    uint64_t total = 0;
    for (int32_t i = 0; i < n; i++) {
        total += toks->strs[i].len + 1;
    }
    if (total >= UINT32_MAX) {
        return tri_fail(err, err_size, TRIATTN_ERR_FORMAT, "tokenizer: tokenizer.ggml.tokens texts are too large");
    }
    v->text     = malloc((size_t) total);
    v->text_off = malloc(((size_t) n + 1) * sizeof *v->text_off);
    v->type     = malloc((size_t) n);
    v->score    = calloc((size_t) n, sizeof *v->score);
    if (!v->text || !v->text_off || !v->type || !v->score) {
        return tri_fail(err, err_size, TRIATTN_ERR_OOM, "tokenizer: out of memory");
    }
    uint32_t off = 0;
    for (int32_t i = 0; i < n; i++) {
        v->text_off[i] = off;
        memcpy(v->text + off, toks->strs[i].ptr, toks->strs[i].len);
        off += (uint32_t) toks->strs[i].len;
        v->text[off++] = '\0';
    }
    v->text_off[n] = off;

    const tri_gguf_kv * types;
    if ((st = get_array(g, "tokenizer.ggml.token_type", false, 1, (uint64_t) n, &types, err, err_size)) !=
        TRIATTN_OK) {
        return st;
    }
    for (int32_t i = 0; i < n; i++) {
        int64_t t = types ? tri_gguf_arr_i64(types, (uint64_t) i) : TRI_TOK_NORMAL;
        if (t < 0 || t > TRI_TOK_BYTE) {
            return tri_fail(err, err_size, TRIATTN_ERR_FORMAT,
                            "tokenizer: tokenizer.ggml.token_type[%d] = %lld is not a token type", i, (long long) t);
        }
        v->type[i] = (uint8_t) t;
    }
    const tri_gguf_kv * scores;
    if ((st = get_array(g, "tokenizer.ggml.scores", false, 2, (uint64_t) n, &scores, err, err_size)) != TRIATTN_OK) {
        return st;
    }
    for (int32_t i = 0; scores && i < n; i++) {
        v->score[i] = (float) tri_gguf_arr_f64(scores, (uint64_t) i);
    }

    bool spm = v->kind == TRI_VOCAB_SPM;
    v->bos = v->eos = v->unk = v->pad = v->eot = v->eom = -1;
    if (spm) { /* SentencePiece defaults: <unk> <s> </s> */
        v->unk = n > 0 ? 0 : -1;
        v->bos = n > 1 ? 1 : -1;
        v->eos = n > 2 ? 2 : -1;
    }
    static const char * id_keys[] = { "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                                      "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.padding_token_id",
                                      "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id" };
    int32_t * id_out[] = { &v->bos, &v->eos, &v->unk, &v->pad, &v->eot, &v->eom };
    for (int k = 0; k < 6; k++) {
        if ((st = read_id(g, id_keys[k], n, id_out[k], err, err_size)) != TRIATTN_OK) {
            return st;
        }
    }
    v->add_bos          = spm || v->pre == TRI_PRE_LLAMA3;
    v->add_eos          = false;
    v->add_space_prefix = spm;
    if ((st = tri_gguf_get_bool(g, "tokenizer.ggml.add_bos_token", true, &v->add_bos, err, err_size)) != TRIATTN_OK ||
        (st = tri_gguf_get_bool(g, "tokenizer.ggml.add_eos_token", true, &v->add_eos, err, err_size)) != TRIATTN_OK ||
        (st = tri_gguf_get_bool(g, "tokenizer.ggml.add_space_prefix", true, &v->add_space_prefix, err, err_size)) !=
            TRIATTN_OK) {
        return st;
    }

    if ((st = build_tables(v, err, err_size)) != TRIATTN_OK) {
        return st;
    }
    if (v->kind == TRI_VOCAB_BPE) {
        const tri_gguf_kv * merges;
        if ((st = get_array(g, "tokenizer.ggml.merges", true, 0, UINT64_MAX, &merges, err, err_size)) != TRIATTN_OK) {
            return st;
        }
        if ((st = load_merges(v, merges, err, err_size)) != TRIATTN_OK) {
            return st;
        }
    }
    return TRIATTN_OK;
}

enum triattn_status tri_vocab_load(const tri_gguf * g, tri_vocab ** out, char * err, size_t err_size) {
    if (!out) {
        return tri_fail(err, err_size, TRIATTN_ERR_INVALID_ARG, "tri_vocab_load: out is NULL");
    }
    *out = NULL;
    if (!g) {
        return tri_fail(err, err_size, TRIATTN_ERR_INVALID_ARG, "tri_vocab_load: gguf is NULL");
    }
    tri_vocab * v = calloc(1, sizeof *v);
    if (!v) {
        return tri_fail(err, err_size, TRIATTN_ERR_OOM, "tokenizer: out of memory");
    }
    enum triattn_status st = load(g, v, err, err_size);
    if (st != TRIATTN_OK) {
        tri_vocab_free(v);
        return st;
    }
    *out = v;
    return TRIATTN_OK;
}

void tri_vocab_free(tri_vocab * v) {
    if (!v) {
        return;
    }
    free(v->text);
    free(v->text_off);
    free(v->type);
    free(v->score);
    free(v->is_eog);
    free(v->piece);
    free(v->piece_off);
    free(v->tok_hash);
    free(v->merges);
    free(v->special);
    free(v);
}

/* ---- queries ------------------------------------------------------------------------------------ */

int32_t tri_vocab_n_tokens(const tri_vocab * v) { return v ? v->n_tokens : 0; }
triattn_token tri_vocab_bos(const tri_vocab * v) { return v ? v->bos : -1; }
triattn_token tri_vocab_eos(const tri_vocab * v) { return v ? v->eos : -1; }

bool tri_vocab_is_eog(const tri_vocab * v, triattn_token t) {
    return v && t >= 0 && t < v->n_tokens && v->is_eog[t];
}

const char * tri_vocab_token_text(const tri_vocab * v, triattn_token t) {
    if (!v || t < 0 || t >= v->n_tokens) {
        return NULL;
    }
    return v->text + v->text_off[t];
}

/* ---- tokenize ----------------------------------------------------------------------------------- */

static enum triattn_status tokenize_raw(const tri_vocab * v, const uint8_t * s, size_t n, bool after_special,
                                        tri_tok_out * o, tri_scratch * scratch) {
    if (n == 0) {
        return TRIATTN_OK;
    }
    if (v->kind == TRI_VOCAB_BPE) {
        return tri_bpe_tokenize(v, s, n, o, scratch);
    }
    return tri_spm_tokenize(v, s, n, v->add_space_prefix && after_special, o, scratch);
}

/* Longest special token starting at s[0..n), -1 if none. Without parse_special only user-defined ones. */
static int32_t match_special(const tri_vocab * v, const uint8_t * s, size_t n, bool parse_special) {
    int32_t lo = v->special_start[s[0]], hi = v->special_start[s[0] + 1];
    for (int32_t k = lo; k < hi; k++) {
        int32_t id = v->special[k];
        if (!parse_special && v->type[id] != TRI_TOK_USER_DEFINED) {
            continue;
        }
        uint32_t len;
        const char * t = tri_vocab_text(v, id, &len);
        if (len <= n && memcmp(t, s, len) == 0) {
            return id;
        }
    }
    return -1;
}

enum triattn_status tri_vocab_tokenize(const tri_vocab * v, const char * text, int32_t text_len, bool add_special,
                                       bool parse_special, triattn_token * out, int32_t capacity, int32_t * n_out) {
    if (n_out) {
        *n_out = 0;
    }
    if (!v || !n_out || capacity < 0 || (capacity > 0 && !out) || (!text && text_len != 0)) {
        return TRIATTN_ERR_INVALID_ARG;
    }
    size_t n = text_len < 0 ? strlen(text) : (size_t) text_len;
    const uint8_t * s = (const uint8_t *) text;
    tri_tok_out o = { out, capacity, 0 };
    tri_scratch scratch = { NULL, 0 };
    enum triattn_status st = TRIATTN_OK;

    if (add_special && v->add_bos && v->bos >= 0) {
        tri_tok_push(&o, v->bos);
    }
    size_t frag = 0;
    bool after_special = true;
    for (size_t i = 0; i < n && st == TRIATTN_OK;) {
        int32_t id = v->special_start[s[i]] < v->special_start[s[i] + 1] ? match_special(v, s + i, n - i, parse_special)
                                                                          : -1;
        if (id < 0) {
            i++;
            continue;
        }
        st = tokenize_raw(v, s + frag, i - frag, after_special, &o, &scratch);
        tri_tok_push(&o, id);
        i += v->text_off[id + 1] - v->text_off[id] - 1;
        frag = i;
        after_special = true;
    }
    if (st == TRIATTN_OK) {
        st = tokenize_raw(v, s + frag, n - frag, after_special, &o, &scratch);
    }
    if (add_special && v->add_eos && v->eos >= 0) {
        tri_tok_push(&o, v->eos);
    }
    free(scratch.p);
    if (st != TRIATTN_OK) {
        return st;
    }
    if (o.n > INT32_MAX) {
        return TRIATTN_ERR_INVALID_ARG;
    }
    *n_out = (int32_t) o.n;
    return TRIATTN_OK;
}

/* ---- pieces and detokenize ---------------------------------------------------------------------- */

static bool renders_empty(const tri_vocab * v, triattn_token t, bool special) {
    uint8_t type = v->type[t];
    return !special && (type == TRI_TOK_CONTROL || type == TRI_TOK_UNKNOWN || type == TRI_TOK_UNUSED);
}

enum triattn_status tri_vocab_token_to_piece(const tri_vocab * v, triattn_token t, bool special, char * buf,
                                             int32_t capacity, int32_t * n_out) {
    if (n_out) {
        *n_out = 0;
    }
    if (!v || !n_out || capacity < 0 || (capacity > 0 && !buf) || t < 0 || t >= v->n_tokens) {
        return TRIATTN_ERR_INVALID_ARG;
    }
    if (renders_empty(v, t, special)) {
        return TRIATTN_OK;
    }
    uint32_t len = v->piece_off[t + 1] - v->piece_off[t];
    if (capacity > 0) {
        memcpy(buf, v->piece + v->piece_off[t], TRI_MIN(len, (uint32_t) capacity));
    }
    *n_out = (int32_t) len;
    return TRIATTN_OK;
}

enum triattn_status tri_vocab_piece(const tri_vocab * v, triattn_token t, bool special, const char ** piece,
                                    int32_t * n_out) {
    if (!v || !piece || !n_out || t < 0 || t >= v->n_tokens) {
        return TRIATTN_ERR_INVALID_ARG;
    }
    *piece = v->piece + v->piece_off[t];
    *n_out = renders_empty(v, t, special) ? 0 : (int32_t) (v->piece_off[t + 1] - v->piece_off[t]);
    return TRIATTN_OK;
}

enum triattn_status tri_vocab_detokenize(const tri_vocab * v, const triattn_token * tokens, int32_t n_tokens,
                                         bool special, char * buf, int32_t capacity, int32_t * n_out) {
    if (n_out) {
        *n_out = 0;
    }
    if (!v || !n_out || n_tokens < 0 || (n_tokens > 0 && !tokens) || capacity < 0 || (capacity > 0 && !buf)) {
        return TRIATTN_ERR_INVALID_ARG;
    }
    for (int32_t i = 0; i < n_tokens; i++) {
        if (tokens[i] < 0 || tokens[i] >= v->n_tokens) {
            return TRIATTN_ERR_INVALID_ARG;
        }
    }
    /* Output keeps one byte for the NUL. */
    int64_t room = capacity > 0 ? capacity - 1 : 0, total = 0;
    bool strip = v->kind == TRI_VOCAB_SPM && v->add_space_prefix; /* the space the tokenizer prefixed */
    for (int32_t i = 0; i < n_tokens; i++) {
        triattn_token t = tokens[i];
        if (renders_empty(v, t, special)) {
            continue;
        }
        const char * p = v->piece + v->piece_off[t];
        uint32_t len = v->piece_off[t + 1] - v->piece_off[t];
        if (len == 0) {
            continue;
        }
        if (strip && p[0] == ' ') {
            p++;
            len--;
        }
        strip = false;
        if (total < room) {
            memcpy(buf + total, p, (size_t) TRI_MIN((int64_t) len, room - total));
        }
        total += len;
    }
    if (total > INT32_MAX) {
        return TRIATTN_ERR_INVALID_ARG;
    }
    if (capacity > 0) {
        buf[TRI_MIN(total, room)] = '\0';
    }
    *n_out = (int32_t) total;
    return TRIATTN_OK;
}
