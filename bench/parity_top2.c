/* llama.cpp side of bench/parity.py (built against llama.cpp's llama.h / libllama; not part of the engine).
 *
 *   parity_top2 MODEL N_PREDICT N_THREADS FLASH_ATTN(0/1) PROMPT
 *     greedy decoding; prints "prompt <ids...>", then per step "step <i> <id1> <logit1> <id2> <logit2>"
 *     (logits with %.9g: they read back bit-exact as float32). The prompt is tokenized with the
 *     vocabulary's own BOS rule and special tokens parsed, as llama-cli does.
 *   parity_top2 ppl MODEL TOKENS.i32 N_CTX N_CHUNK N_THREADS FLASH_ATTN(0/1) [KV_TYPE [NLL_OUT]]
 *     llama-perplexity's scoring rule on given token ids (int32 file): chunk i = tokens[i*N_CTX ...], first
 *     token replaced by BOS when the vocabulary adds one, fresh context per chunk, logits at positions
 *     N_CTX/2 .. N_CTX-2 score the next token; prints "chunk <i> <sum>" per chunk, then "nll <sum> <count>"
 *     (double). KV_TYPE: f16 (llama.cpp's default KV cache) or f32; NLL_OUT: a file that receives every
 *     scored token's nll, one per line, chunk by chunk. */
#include "llama.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void top2(const float * x, int n, int * i1, int * i2) {
    *i1 = 0;
    *i2 = -1;
    for (int i = 1; i < n; i++) {
        if (x[i] > x[*i1]) {
            *i2 = *i1;
            *i1 = i;
        } else if (*i2 < 0 || x[i] > x[*i2]) {
            *i2 = i;
        }
    }
}

static struct llama_model * load_model(const char * path) {
    llama_backend_init();
    struct llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 0;
    struct llama_model * model = llama_model_load_from_file(path, mp);
    if (!model) {
        fprintf(stderr, "cannot load %s\n", path);
    }
    return model;
}

/* A context of n_ctx tokens, one batch of up to n_ctx, CPU threads, flash attention on or off. */
static struct llama_context * new_context(struct llama_model * model, uint32_t n_ctx, int n_threads, int fa,
                                          enum ggml_type kv_type) {
    struct llama_context_params cp = llama_context_default_params();
    cp.type_k = cp.type_v = kv_type;
    cp.n_ctx = cp.n_batch = cp.n_ubatch = n_ctx;
    cp.n_threads = cp.n_threads_batch = n_threads;
    cp.flash_attn_type = fa ? LLAMA_FLASH_ATTN_TYPE_ENABLED : LLAMA_FLASH_ATTN_TYPE_DISABLED;
    struct llama_context * ctx = llama_init_from_model(model, cp);
    if (!ctx) {
        fprintf(stderr, "cannot create a context\n");
    }
    return ctx;
}

static double log_softmax_at(const float * x, int n, int tok) {
    float mx = x[0];
    for (int i = 1; i < n; i++) {
        mx = x[i] > mx ? x[i] : mx;
    }
    double sum = 0.0;
    for (int i = 0; i < n; i++) {
        sum += expf(x[i] - mx);
    }
    return x[tok] - mx - log(sum);
}

static int ppl_main(int argc, char ** argv) {
    if (argc < 8 || argc > 10 || (argc > 8 && strcmp(argv[8], "f16") != 0 && strcmp(argv[8], "f32") != 0)) {
        fprintf(stderr, "usage: %s ppl MODEL TOKENS.i32 N_CTX N_CHUNK N_THREADS FLASH_ATTN [f16|f32 [NLL_OUT]]\n",
                argv[0]);
        return 2;
    }
    const enum ggml_type kv_type = argc > 8 && strcmp(argv[8], "f32") == 0 ? GGML_TYPE_F32 : GGML_TYPE_F16;
    FILE * nll_out = NULL;
    if (argc > 9 && !(nll_out = fopen(argv[9], "w"))) {
        fprintf(stderr, "cannot write %s\n", argv[9]);
        return 1;
    }
    const int n_ctx = atoi(argv[4]), n_chunk = atoi(argv[5]);
    FILE * fp = fopen(argv[3], "rb");
    if (!fp) {
        fprintf(stderr, "cannot open %s\n", argv[3]);
        return 1;
    }
    llama_token * toks = malloc(sizeof(llama_token) * (size_t) n_ctx * (size_t) n_chunk);
    if (!toks || fread(toks, sizeof(llama_token), (size_t) n_ctx * n_chunk, fp) != (size_t) n_ctx * n_chunk) {
        fprintf(stderr, "%s: fewer than %d tokens\n", argv[3], n_ctx * n_chunk);
        return 1;
    }
    fclose(fp);
    struct llama_model * model = load_model(argv[2]);
    struct llama_context * ctx = model ? new_context(model, (uint32_t) n_ctx, atoi(argv[6]), atoi(argv[7]), kv_type) : NULL;
    if (!ctx) {
        return 1;
    }
    const struct llama_vocab * vocab = llama_model_get_vocab(model);
    const int n_vocab = llama_vocab_n_tokens(vocab);
    struct llama_batch batch = llama_batch_init(n_ctx, 0, 1);
    const int first = n_ctx / 2;
    double nll = 0.0;
    long count = 0;
    for (int c = 0; c < n_chunk; c++) {
        llama_token * t = toks + (size_t) c * n_ctx;
        if (llama_vocab_get_add_bos(vocab)) {
            t[0] = llama_vocab_bos(vocab);
        }
        llama_memory_clear(llama_get_memory(ctx), true);
        batch.n_tokens = n_ctx;
        for (int j = 0; j < n_ctx; j++) {
            batch.token[j] = t[j];
            batch.pos[j] = j;
            batch.n_seq_id[j] = 1;
            batch.seq_id[j][0] = 0;
            batch.logits[j] = j >= first;
        }
        if (llama_decode(ctx, batch) != 0) {
            fprintf(stderr, "decode failed at chunk %d\n", c);
            return 1;
        }
        double part = 0.0;
        for (int j = first; j < n_ctx - 1; j++) {
            const double e = -log_softmax_at(llama_get_logits_ith(ctx, j), n_vocab, t[j + 1]);
            if (nll_out) {
                fprintf(nll_out, "%.17g\n", e);
            }
            part += e;
            count++;
        }
        nll += part;
        printf("chunk %d %.17g\n", c, part);
        fflush(stdout);
    }
    if (nll_out && fclose(nll_out) != 0) {
        fprintf(stderr, "cannot write %s\n", argv[9]);
        return 1;
    }
    printf("nll %.17g %ld\n", nll, count);
    llama_batch_free(batch);
    llama_free(ctx);
    llama_model_free(model);
    free(toks);
    llama_backend_free();
    return 0;
}

int main(int argc, char ** argv) {
    if (argc > 1 && strcmp(argv[1], "ppl") == 0) {
        return ppl_main(argc, argv);
    }
    if (argc != 6) {
        fprintf(stderr, "usage: %s MODEL N_PREDICT N_THREADS FLASH_ATTN PROMPT\n", argv[0]);
        return 2;
    }
    const int n_predict = atoi(argv[2]);
    const int n_threads = atoi(argv[3]);
    const char * prompt = argv[5];

    struct llama_model * model = load_model(argv[1]);
    if (!model) {
        return 1;
    }
    const struct llama_vocab * vocab = llama_model_get_vocab(model);
    const int n_vocab = llama_vocab_n_tokens(vocab);

    const int len = (int) strlen(prompt);
    int n_tok = -llama_tokenize(vocab, prompt, len, NULL, 0, true, true);
    if (n_tok <= 0) {
        fprintf(stderr, "tokenization failed\n");
        return 1;
    }
    llama_token * toks = malloc(sizeof(llama_token) * (size_t) (n_tok + n_predict + 1));
    if (!toks || llama_tokenize(vocab, prompt, len, toks, n_tok, true, true) != n_tok) {
        fprintf(stderr, "tokenization failed\n");
        return 1;
    }

    struct llama_context * ctx = new_context(model, (uint32_t) (n_tok + n_predict + 16), n_threads, atoi(argv[4]), GGML_TYPE_F16);
    if (!ctx) {
        return 1;
    }

    printf("prompt");
    for (int i = 0; i < n_tok; i++) {
        printf(" %d", toks[i]);
    }
    printf("\n");
    struct llama_batch batch = llama_batch_get_one(toks, n_tok);
    for (int step = 0; step < n_predict; step++) {
        if (llama_decode(ctx, batch) != 0) {
            fprintf(stderr, "decode failed at step %d\n", step);
            return 1;
        }
        const float * logits = llama_get_logits_ith(ctx, -1);
        int i1, i2;
        top2(logits, n_vocab, &i1, &i2);
        printf("step %d %d %.9g %d %.9g\n", step, i1, logits[i1], i2, logits[i2]);
        toks[n_tok + step] = i1;
        batch = llama_batch_get_one(&toks[n_tok + step], 1);
    }
    fflush(stdout);
    llama_free(ctx);
    llama_model_free(model);
    free(toks);
    llama_backend_free();
    return 0;
}
