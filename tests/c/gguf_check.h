/* gguf_check.h - checks shared by the GGUF fuzzers (tests/c/tool_gguf_fuzz.c, tests/fuzz/fuzz_gguf.c): that a
 * parse points only inside its buffer, and that a loaded model runs a few tokens in a small session. */
#ifndef TRI_GGUF_CHECK_H
#define TRI_GGUF_CHECK_H

#include "gguf.h"
#include "triattn.h"

#include <stdbool.h>
#include <stdint.h>

/* Every key's data, string and tensor of an OK parse lies inside [base, base + size). */
static inline bool tri_gguf_inside(const tri_gguf * g, const uint8_t * base, size_t size) {
    const uint8_t * end = base + size;
    for (uint64_t i = 0; i < g->n_kv; i++) {
        const tri_gguf_kv * kv = &g->kv[i];
        const size_t esz = tri_gguf_type_size(kv->type == TRI_GGUF_ARRAY ? kv->arr_type : kv->type);
        const uint8_t * p = kv->data;
        if (p && (p < base || p > end || kv->n * esz > (uint64_t) (end - p))) return false;
        const uint64_t ns = kv->type == TRI_GGUF_STRING ? 1 : (kv->arr_type == TRI_GGUF_STRING ? kv->n : 0);
        for (uint64_t j = 0; j < ns; j++) {
            const uint8_t * s = (const uint8_t *) kv->strs[j].ptr;
            if (s < base || s > end || kv->strs[j].len > (uint64_t) (end - s)) return false;
        }
    }
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const tri_gguf_tensor * t = &g->tensors[i];
        const uint8_t * p = t->data;
        if (p < base || p > end || t->nbytes > (uint64_t) (end - p) || t->offset % g->alignment != 0) return false;
    }
    return true;
}

/* Decodes 4 tokens in a 16-token session of model. NULL when each step succeeded or failed with a message, else
 * what broke that contract. */
static inline const char * tri_gguf_run_small(triattn_model * model) {
    struct triattn_session_params sp;
    triattn_session_params_init(&sp);
    sp.n_ctx = 16;
    sp.n_batch = 8;
    sp.n_threads = 1;
    triattn_session * s = NULL;
    char err[512] = "";
    enum triattn_status st = triattn_session_create(model, &sp, &s, err, sizeof err);
    if (st != TRIATTN_OK) return s || err[0] == '\0' ? "session create failed without a message" : NULL;
    const int32_t nv = triattn_vocab_size(model);
    const triattn_token toks[4] = { 0, 1 % nv, 2 % nv, 3 % nv };
    const char * broken = NULL;
    st = triattn_session_decode(s, toks, 4, false);
    if (st != TRIATTN_OK && triattn_session_last_error(s)[0] == '\0') broken = "decode failed without a message";
    if (st == TRIATTN_OK && !triattn_session_logits(s, -1)) broken = "no logits after a decode";
    triattn_session_free(s);
    return broken;
}

#endif
