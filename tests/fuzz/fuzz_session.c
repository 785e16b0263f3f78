/* fuzz_session: session files (triattn_session_load) from any bytes, on a tiny calibrated model
 * (corpus/gguf/llama-tri.gguf). Input: one byte choosing the session (full or triattention, with or without a
 * recall tier), then a file's body; the target appends the body's checksum, so that the bytes behind it are what is
 * tested. A load either succeeds, after which the session decodes on, or fails with a message and leaves the
 * session as it was (it decodes, and its logits equal an untouched twin's). With TRI_FUZZ_WRITE_SEEDS=DIR it first
 * writes one real saved state per session kind into DIR. */
#include "triattn.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fuzz.h"

enum { N_KINDS = 4, N_CTX = 48 };

static triattn_model * model;
static char path[256];

static triattn_session * session_of(int kind) {
    struct triattn_session_params sp;
    triattn_session_params_init(&sp);
    sp.n_ctx = N_CTX;
    sp.n_batch = 8;
    sp.n_threads = 1;
    sp.kv_policy = kind & 1 ? "triattention" : "full";
    sp.kv_budget = 8;
    sp.kv_interval = 4;
    sp.kv_recall = kind & 2 ? 2 : 0;
    triattn_session * s = NULL;
    char err[512];
    FUZZ_CHECK(triattn_session_create(model, &sp, &s, err, sizeof err) == TRIATTN_OK, "session: %s", err);
    return s;
}

static void prefill(triattn_session * s, int n) {
    triattn_token t[N_CTX];
    for (int i = 0; i < n; i++) t[i] = (triattn_token) ((i * 37 + 11) % triattn_vocab_size(model));
    FUZZ_CHECK(triattn_session_decode(s, t, n, false) == TRIATTN_OK, "prefill: %s", triattn_session_last_error(s));
}

static uint64_t fnv1a(const uint8_t * p, size_t n) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 0x100000001b3ull;
    return h;
}

static void write_seeds(const char * dir) {
    for (int kind = 0; kind < N_KINDS; kind++) {
        triattn_session * s = session_of(kind);
        prefill(s, 30);
        FUZZ_CHECK(triattn_session_save(s, path) == TRIATTN_OK, "save: %s", triattn_session_last_error(s));
        triattn_session_free(s);
        FILE * f = fopen(path, "rb");
        FUZZ_CHECK(f, "cannot read %s", path);
        static uint8_t buf[1 << 20];
        size_t n = fread(buf, 1, sizeof buf, f);
        fclose(f);
        char seed[512];
        snprintf(seed, sizeof seed, "%s/saved-%d", dir, kind);
        f = fopen(seed, "wb");
        FUZZ_CHECK(f, "cannot write %s", seed);
        const uint8_t k = (uint8_t) kind;
        fwrite(&k, 1, 1, f);
        fwrite(buf, 1, n - 8, f);  /* the body without its checksum */
        fclose(f);
    }
}

int LLVMFuzzerInitialize(int * argc, char *** argv) {
    char err[512];
    FUZZ_CHECK(triattn_model_load(TRI_FUZZ_DIR "/corpus/gguf/llama-tri.gguf", NULL, &model, err, sizeof err) == TRIATTN_OK,
               "load the tiny model: %s", err);
    const char * tmp = getenv("TMPDIR");
    snprintf(path, sizeof path, "%s/fuzz_session.%d", tmp && *tmp ? tmp : "/tmp", (int) getpid());
    const char * seeds = getenv("TRI_FUZZ_WRITE_SEEDS");
    if (seeds && *seeds) write_seeds(seeds);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t * data, size_t size) {
    if (size < 1 || size > (1 << 20)) return 0;
    const int kind = data[0] % N_KINDS;
    FILE * f = fopen(path, "wb");
    FUZZ_CHECK(f, "cannot write %s", path);
    const uint64_t sum = fnv1a(data + 1, size - 1);
    fwrite(data + 1, 1, size - 1, f);
    fwrite(&sum, 1, 8, f);
    fclose(f);

    triattn_session * s = session_of(kind), * twin = session_of(kind);
    prefill(s, 5);
    prefill(twin, 5);
    const enum triattn_status st = triattn_session_load(s, path);
    const triattn_token next[2] = { 7, 9 };
    if (st != TRIATTN_OK) {
        FUZZ_CHECK(triattn_session_last_error(s)[0], "a refused load without a message (status %d)", st);
        FUZZ_CHECK(triattn_session_decode(s, next, 2, false) == TRIATTN_OK &&
                   triattn_session_decode(twin, next, 2, false) == TRIATTN_OK, "decode after a refused load");
        const float * a = triattn_session_logits(s, -1), * b = triattn_session_logits(twin, -1);
        FUZZ_CHECK(memcmp(a, b, sizeof *a * (size_t) triattn_vocab_size(model)) == 0,
                   "a refused load changed the session");
    } else {
        const enum triattn_status d = triattn_session_decode(s, next, 2, false);
        FUZZ_CHECK(d == TRIATTN_OK || triattn_session_last_error(s)[0], "decode after a load: status %d", d);
    }
    triattn_session_free(s);
    triattn_session_free(twin);
    unlink(path);
    return 0;
}
