/* fuzz_tokenize: the tokenizer of the real default model (TRI_DEFAULT_MODEL) on any bytes. Tokenizing never fails
 * and gives ids inside the vocabulary; for valid UTF-8 without special-token parsing, detokenizing gives the text
 * back byte for byte (the model's BPE is byte-level) unless the text holds a byte the vocabulary has no token for
 * (the default model lacks 0x04, 0x06, 0x13, 0x14, 0x16, 0x1D, 0xF1 and 0xF2). Without TRI_DEFAULT_MODEL it prints a skip line and checks nothing. */
#include "triattn.h"
#include "json.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"

static triattn_model * model;
static bool lost[256];  /* bytes no token of the vocabulary can spell (dropped, as llama.cpp and HF drop them) */

static triattn_token * tokens(const char * text, size_t n, bool special, int32_t * count) {
    int32_t need = 0;
    enum triattn_status st = triattn_tokenize(model, text, (int32_t) n, false, special, NULL, 0, &need);
    FUZZ_CHECK(st == TRIATTN_OK && need >= 0 && (size_t) need <= n + 1, "tokenize: status %d, %d tokens", st, need);
    triattn_token * t = malloc(sizeof *t * (size_t) (need + 1));
    int32_t got = 0;
    st = triattn_tokenize(model, text, (int32_t) n, false, special, t, need, &got);
    FUZZ_CHECK(st == TRIATTN_OK && got == need, "tokenize again: status %d, %d then %d tokens", st, need, got);
    const int32_t nv = triattn_vocab_size(model);
    for (int32_t i = 0; i < got; i++) FUZZ_CHECK(t[i] >= 0 && t[i] < nv, "token %d out of the vocabulary", t[i]);
    *count = got;
    return t;
}

static char * text_of(const triattn_token * t, int32_t n, int32_t * len) {
    int32_t need = 0;
    enum triattn_status st = triattn_detokenize(model, t, n, false, NULL, 0, &need);
    FUZZ_CHECK(st == TRIATTN_OK && need >= 0, "detokenize: status %d", st);
    char * s = malloc((size_t) need + 1);
    st = triattn_detokenize(model, t, n, false, s, need + 1, len);
    FUZZ_CHECK(st == TRIATTN_OK && *len == need, "detokenize again: status %d", st);
    return s;
}

static bool round_trips(const char * text, size_t n) {
    int32_t nt = 0, len = 0;
    triattn_token * t = tokens(text, n, false, &nt);
    char * back = text_of(t, nt, &len);
    const bool same = (size_t) len == n && memcmp(back, text, n) == 0;
    free(back);
    free(t);
    return same;
}

int LLVMFuzzerInitialize(int * argc, char *** argv) {
    const char * path = getenv("TRI_DEFAULT_MODEL");
    if (!path || !*path) {
        printf("skip: fuzz_tokenize (set TRI_DEFAULT_MODEL to the default GGUF)\n");
        return 0;
    }
    struct triattn_model_params mp;
    triattn_model_params_init(&mp);
    char err[512];
    FUZZ_CHECK(triattn_model_load(path, &mp, &model, err, sizeof err) == TRIATTN_OK, "load %s: %s", path, err);
    for (int b = 0; b < 0x80; b++) lost[b] = !round_trips((const char[]) { 'a', (char) b, 'b' }, 3);
    lost[0xF1] = !round_trips("\xF1\x80\x80\x80", 4);
    lost[0xF2] = !round_trips("\xF2\x80\x80\x80", 4);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t * data, size_t size) {
    if (!model || size > 1 << 16) return 0;
    const char * text = (const char *) data;
    int32_t n_special = 0;
    free(tokens(text, size, true, &n_special));
    if (!json_utf8_valid(text, size)) {
        int32_t n = 0;
        free(tokens(text, size, false, &n));
        return 0;
    }
    for (size_t i = 0; i < size; i++) {
        if (lost[data[i]]) return 0;
    }
    FUZZ_CHECK(round_trips(text, size), "detokenize(tokenize(x)) != x (%zu bytes)", size);
    return 0;
}
