/* fuzz_gguf: model files from any bytes. A buffer either parses, with every key, string and tensor inside it,
 * or is refused with a message; a parse either loads as a model or is refused with a message; a model that loads
 * tokenizes text, renders a chat, and decodes a few tokens in a small session (each succeeding or failing with
 * a message). The corpus starts from tiny random models of each architecture (tests/tinymodels.py). */
#include "gguf.h"
#include "gguf_check.h"
#include "model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"

static void use_model(triattn_model * model) {
    triattn_token toks[64];
    int32_t n = 0;
    enum triattn_status st = triattn_tokenize(model, "Hello world, <|im_start|>3.14", -1, true, true, toks, 64, &n);
    FUZZ_CHECK(st == TRIATTN_OK, "tokenize: status %d", st);
    char text[512];
    int32_t tn = 0;
    st = triattn_detokenize(model, toks, n < 64 ? n : 64, true, text, sizeof text, &tn);
    FUZZ_CHECK(st == TRIATTN_OK, "detokenize: status %d", st);
    struct triattn_chat_message msg = { .role = "user", .content = "Hi" };
    size_t need = 0;
    st = triattn_chat_apply(model, NULL, &msg, 1, true, text, sizeof text, &need);
    FUZZ_CHECK(st == TRIATTN_OK || st == TRIATTN_ERR_UNSUPPORTED, "chat_apply: status %d", st);
    const char * broken = tri_gguf_run_small(model);
    FUZZ_CHECK(!broken, "%s", broken);
}

int LLVMFuzzerTestOneInput(const uint8_t * data, size_t size) {
    char err[512] = "";
    tri_gguf * g = NULL;
    enum triattn_status st = tri_gguf_open_buffer(data, size, &g, err, sizeof err);
    if (st != TRIATTN_OK) {
        FUZZ_CHECK(!g && err[0], "a refused GGUF without a message (status %d)", st);
        return 0;
    }
    FUZZ_CHECK(tri_gguf_inside(g, data, size), "a parse points outside the buffer");
    triattn_model * model = NULL;
    err[0] = '\0';
    st = tri_model_load_gguf(g, "fuzz", &model, err, sizeof err);
    if (st != TRIATTN_OK) {
        FUZZ_CHECK(!model && err[0], "a refused model without a message (status %d)", st);
        return 0;
    }
    use_model(model);
    triattn_model_free(model);
    return 0;
}
