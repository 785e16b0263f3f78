/* Allocation failures: every allocation site the engine and the server reach in a scenario is made to fail, once
 * at its first call and once at a random later call, and the scenario must end cleanly: a status with a message,
 * or success with the results of an undisturbed run (under ASan + UBSan: no leak, no invalid access). Also: a
 * session's decode steps allocate nothing. The allocator is interposed at link time (-Wl,--wrap=malloc,...; see
 * CMakeLists.txt), so the calls of libtriattn's and the server's objects come here with their call sites.
 * TRI_AF_VERBOSE=1 names each injection (site offset for addr2line, call) before it runs.
 * Scenarios run on the tiny calibrated model of the fuzz corpus. Random later calls, fresh seed each run
 * (TRI_TEST_SEED reproduces one). */
#define _GNU_SOURCE
#include "server.h"
#include "server_test.h"
#include "triattn.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "test_util.h"

#define MODEL TRI_SOURCE_DIR "/tests/fuzz/corpus/gguf/llama-tri.gguf"

/* ---- the interposed allocator -------------------------------------------------------------------- */

void * __real_malloc(size_t n);
void * __real_calloc(size_t n, size_t size);
void * __real_realloc(void * p, size_t n);
void * __real_aligned_alloc(size_t align, size_t n);
int    __real_posix_memalign(void ** p, size_t align, size_t n);
char * __real_strdup(const char * s);

#define MAX_SITES 2048

extern const char __executable_start;  /* (GNU ld) sites are printed as offsets for addr2line */

static _Atomic(const void *) g_site;   /* armed: calls from this site fail at the g_nth-th (from 0) */
static atomic_long           g_nth, g_hits;
static atomic_int            g_fired;
static atomic_long           g_calls;  /* every call, armed or not */
static atomic_bool           g_record;
static pthread_mutex_t       g_lock = PTHREAD_MUTEX_INITIALIZER;
static const void *          g_sites[MAX_SITES];
static long                  g_site_calls[MAX_SITES];
static int                   g_n_sites;

static bool af_fail(const void * site) {
    atomic_fetch_add(&g_calls, 1);
    if (atomic_load(&g_record)) {
        pthread_mutex_lock(&g_lock);
        int i = 0;
        while (i < g_n_sites && g_sites[i] != site) i++;
        if (i < MAX_SITES) {
            g_sites[i] = site;
            g_site_calls[i]++;
            g_n_sites += i == g_n_sites;
        }
        pthread_mutex_unlock(&g_lock);
    }
    if (site == atomic_load(&g_site) && atomic_fetch_add(&g_hits, 1) == atomic_load(&g_nth)) {
        atomic_store(&g_fired, 1);
        return true;
    }
    return false;
}

void * __wrap_malloc(size_t n) { return af_fail(__builtin_return_address(0)) ? NULL : __real_malloc(n); }
void * __wrap_calloc(size_t n, size_t size) {
    return af_fail(__builtin_return_address(0)) ? NULL : __real_calloc(n, size);
}
void * __wrap_realloc(void * p, size_t n) { return af_fail(__builtin_return_address(0)) ? NULL : __real_realloc(p, n); }
void * __wrap_aligned_alloc(size_t align, size_t n) {
    return af_fail(__builtin_return_address(0)) ? NULL : __real_aligned_alloc(align, n);
}
int __wrap_posix_memalign(void ** p, size_t align, size_t n) {
    return af_fail(__builtin_return_address(0)) ? ENOMEM : __real_posix_memalign(p, align, n);
}
char * __wrap_strdup(const char * s) { return af_fail(__builtin_return_address(0)) ? NULL : __real_strdup(s); }

/* A site as an offset into the executable (addr2line -f -e test_alloc_fail 0x...). */
static unsigned long site_off(const void * site) { return (unsigned long) ((const char *) site - &__executable_start); }

static void arm(const void * site, long nth) {
    atomic_store(&g_site, NULL);
    atomic_store(&g_hits, 0);
    atomic_store(&g_nth, nth);
    atomic_store(&g_fired, 0);
    atomic_store(&g_site, site);
}

/* ---- scenarios ----------------------------------------------------------------------------------- */

/* A scenario returns the first failing status with its message in err (after freeing what it made), or
 * TRIATTN_OK; it records its results in ref on the recording run and compares them with ref afterwards,
 * setting *wrong when a run that succeeded computed something else. */
typedef struct {
    char   text[4096];  /* generated text, token ids, ... as text */
    size_t n;
} af_result;

typedef enum triattn_status (*af_scenario)(void * ctx, af_result * out, char * err, size_t err_size);

static void res_put(af_result * r, const char * s, size_t n) {
    const size_t room = sizeof r->text - 1 - r->n;
    if (n > room) n = room;
    memcpy(r->text + r->n, s, n);
    r->n += n;
    r->text[r->n] = '\0';
}

static bool on_piece(const char * piece, int32_t len, void * user) {
    res_put(user, piece, (size_t) len);
    return true;
}

/* Session failures carry their message in the session. */
static enum triattn_status sess_fail(const triattn_session * s, enum triattn_status st, const char * what, char * err,
                                     size_t n) {
    snprintf(err, n, "%s: %s", what, triattn_session_last_error(s));
    return st;
}

#define AF_TRY(call)                              \
    do {                                          \
        st = (call);                              \
        if (st != TRIATTN_OK) goto done;          \
    } while (0)
#define AF_TRY_S(s, call, what)                                  \
    do {                                                         \
        st = (call);                                             \
        if (st != TRIATTN_OK) {                                  \
            sess_fail((s), st, (what), err, err_size);           \
            goto done;                                           \
        }                                                        \
    } while (0)

static const char * k_prompt =
    "In the beginning God created the heaven and the earth. And the earth was without form, and void; and darkness "
    "was upon the face of the deep. And the Spirit of God moved upon the face of the waters.";

/* Load (mapped and read), tokenize, detokenize, render a chat. */
static enum triattn_status sc_model(void * ctx, af_result * out, char * err, size_t err_size) {
    (void) ctx;
    enum triattn_status st = TRIATTN_OK;
    for (int mapped = 1; mapped >= 0; mapped--) {
        struct triattn_model_params mp;
        triattn_model_params_init(&mp);
        mp.use_mmap = mapped;
        triattn_model * m = NULL;
        AF_TRY(triattn_model_load(MODEL, &mp, &m, err, err_size));
        triattn_token toks[256];
        int32_t       n = 0;
        char          text[1024];
        int32_t       len = 0;
        size_t        chat_len = 0;
        st = triattn_tokenize(m, k_prompt, -1, true, false, toks, 256, &n);
        if (st == TRIATTN_OK) st = triattn_detokenize(m, toks, n, false, text, 512, &len);
        struct triattn_chat_message msg[2] = { { "system", "Be brief." }, { "user", "Hello there" } };
        if (st == TRIATTN_OK) st = triattn_chat_apply(m, "chatml", msg, 2, true, text + len, 512, &chat_len);
        if (st != TRIATTN_OK) snprintf(err, err_size, "tokenize/detokenize/chat: %s", triattn_status_name(st));
        else res_put(out, text, strlen(text));
        triattn_model_free(m);
        if (st != TRIATTN_OK) return st;
    }
done:
    return st;
}

struct sess_ctx {
    triattn_model * m;
    int32_t         recall;
    const char *    state_path;
};

static void sess_params(const struct sess_ctx * c, struct triattn_session_params * sp) {
    triattn_session_params_init(sp);
    sp->n_ctx = 512;
    sp->n_batch = 32;
    sp->n_threads = 2;
    sp->seed = 1;
    sp->kv_policy = "triattention";
    sp->kv_budget = 16;
    sp->kv_interval = 8;
    sp->kv_recall = c->recall;
}

static void greedy(struct triattn_generate_params * gp, int max_tokens) {
    triattn_generate_params_init(gp);
    gp->max_tokens = max_tokens;
    gp->ignore_eos = true;
    gp->sampling.temperature = 0;
}

/* A TriAttention session (with recall when asked): generate (compressions run), a second turn, save the state,
 * load it into a second session, and both decode the same next token to the same logits. */
static enum triattn_status sc_session(void * ctx, af_result * out, char * err, size_t err_size) {
    const struct sess_ctx * c = ctx;
    enum triattn_status     st = TRIATTN_OK;
    triattn_session *       s = NULL, * t = NULL;
    struct triattn_session_params sp;
    sess_params(c, &sp);
    struct triattn_generate_params gp;
    greedy(&gp, 24);
    AF_TRY(triattn_session_create(c->m, &sp, &s, err, err_size));
    AF_TRY_S(s, triattn_generate(s, k_prompt, &gp, on_piece, out, NULL), "generate");
    gp.add_special = false;
    AF_TRY_S(s, triattn_generate(s, " And God said,", &gp, on_piece, out, NULL), "generate (second turn)");
    AF_TRY_S(s, triattn_session_save(s, c->state_path), "save");
    AF_TRY(triattn_session_create(c->m, &sp, &t, err, err_size));
    AF_TRY_S(t, triattn_session_load(t, c->state_path), "load");
    const triattn_token tok = 42;
    AF_TRY_S(s, triattn_session_decode(s, &tok, 1, false), "decode");
    AF_TRY_S(t, triattn_session_decode(t, &tok, 1, false), "decode (loaded)");
    const float * a = triattn_session_logits(s, -1), * b = triattn_session_logits(t, -1);
    const int32_t V = triattn_vocab_size(c->m);
    int32_t       same = 0;
    for (int32_t i = 0; i < V; i++) same += a[i] == b[i];
    char line[64];
    snprintf(line, sizeof line, "|loaded logits equal: %d", same == V);
    res_put(out, line, strlen(line));
done:
    triattn_session_free(s);
    triattn_session_free(t);
    return st;
}

/* Two sessions generating in one batched step each time. */
static enum triattn_status sc_batch(void * ctx, af_result * out, char * err, size_t err_size) {
    const struct sess_ctx * c = ctx;
    enum triattn_status     st = TRIATTN_OK;
    triattn_session *       ss[2] = { NULL, NULL };
    struct triattn_session_params sp;
    sess_params(c, &sp);
    struct triattn_generate_params gp;
    greedy(&gp, 20);
    gp.prefill_chunk = 16;
    for (int i = 0; i < 2; i++) {
        AF_TRY(triattn_session_create(c->m, &sp, &ss[i], err, err_size));
        AF_TRY_S(ss[i], triattn_generate_begin(ss[i], i ? "And the evening" : k_prompt, &gp), "generate_begin");
    }
    bool done_[2] = { false, false };
    while (!done_[0] || !done_[1]) {
        const char *        text[2];
        size_t              len[2];
        enum triattn_status sts[2];
        AF_TRY(triattn_generate_next_batch(ss, 2, text, len, done_, sts));
        for (int i = 0; i < 2; i++) {
            if (sts[i] != TRIATTN_OK) {
                st = sess_fail(ss[i], sts[i], "generate_next_batch", err, err_size);
                goto done;
            }
            res_put(out, text[i], len[i]);
        }
    }
done:
    for (int i = 0; i < 2; i++) triattn_session_free(ss[i]);
    return st;
}

/* Constrained generation, a chat with tools and the tool-call parser, on a model loaded for them. */
static enum triattn_status sc_constrained(void * ctx, af_result * out, char * err, size_t err_size) {
    (void) ctx;
    enum triattn_status     st = TRIATTN_OK;
    triattn_session *       s = NULL;
    triattn_tool_parser *   p = NULL;
    struct sess_ctx         own = { 0 }, * c = &own;  /* a model of its own: the token trie is built once a model */
    struct triattn_session_params sp;
    sess_params(c, &sp);
    AF_TRY(triattn_model_load(MODEL, NULL, &own.m, err, err_size));
    struct triattn_generate_params gp;
    greedy(&gp, 40);
    gp.json_schema = "{\"type\":\"object\",\"properties\":{\"name\":{\"type\":\"string\",\"maxLength\":8},"
                     "\"n\":{\"type\":\"integer\"}},\"required\":[\"name\",\"n\"]}";
    AF_TRY(triattn_session_create(c->m, &sp, &s, err, err_size));
    AF_TRY_S(s, triattn_generate(s, "A JSON object:", &gp, on_piece, out, NULL), "generate (json_schema)");

    struct triattn_tool_options o;
    triattn_tool_options_init(&o);
    o.tools = "[{\"type\":\"function\",\"function\":{\"name\":\"add\",\"parameters\":{\"type\":\"object\","
              "\"properties\":{\"a\":{\"type\":\"integer\"}},\"required\":[\"a\"]}}}]";
    const struct triattn_chat_tool_message msg = { .role = "user", .content = "add 2" };
    char   text[4096];
    size_t len = 0;
    AF_TRY(triattn_chat_apply_tools(c->m, "chatml", &msg, 1, &o, true, text, sizeof text, &len, err, err_size));
    res_put(out, text, len);
    AF_TRY(triattn_tool_parser_create(c->m, "chatml", &o, &p, err, err_size));
    const char * reply = "<tool_call>\n{\"name\": \"add\", \"arguments\": {\"a\": 2}}\n</tool_call>";
    const char * deltas = NULL;
    size_t       dn = 0;
    st = triattn_tool_parser_feed(p, reply, strlen(reply), true, &deltas, &dn);
    if (st != TRIATTN_OK) {
        snprintf(err, err_size, "tool_parser_feed: %s", triattn_status_name(st));
        goto done;
    }
    res_put(out, deltas, dn);
    size_t       mn = 0;
    const char * message = triattn_tool_parser_message(p, &mn);
    res_put(out, message, mn);
done:
    triattn_tool_parser_free(p);
    triattn_session_free(s);
    triattn_model_free(own.m);
    return st;
}

/* Every other KV policy generating past a few compressions, and full attention. */
static enum triattn_status sc_policies(void * ctx, af_result * out, char * err, size_t err_size) {
    const struct sess_ctx * c = ctx;
    static const char * const policies[] = { "streaming", "random", "h2o", "snapkv", "rkv", "snapkv_prompt", "full" };
    enum triattn_status st = TRIATTN_OK;
    for (size_t i = 0; i < sizeof policies / sizeof *policies; i++) {
        struct triattn_session_params sp;
        sess_params(c, &sp);
        sp.kv_policy = policies[i];
        struct triattn_generate_params gp;
        greedy(&gp, 24);
        triattn_session * s = NULL;
        AF_TRY(triattn_session_create(c->m, &sp, &s, err, err_size));
        st = triattn_generate(s, k_prompt, &gp, on_piece, out, NULL);
        if (st != TRIATTN_OK) sess_fail(s, st, policies[i], err, err_size);
        triattn_session_free(s);
        if (st != TRIATTN_OK) break;
        res_put(out, "|", 1);
    }
done:
    return st;
}

/* Prefix reuse over three turns (continue, then a rollback to a shorter shared prefix), and calibration. */
static enum triattn_status sc_reuse_calib(void * ctx, af_result * out, char * err, size_t err_size) {
    const struct sess_ctx * c = ctx;
    enum triattn_status     st = TRIATTN_OK;
    triattn_session *       s = NULL;
    struct triattn_session_params sp;
    sess_params(c, &sp);
    sp.kv_policy = "full";
    struct triattn_generate_params gp;
    greedy(&gp, 12);
    AF_TRY(triattn_session_create(c->m, &sp, &s, err, err_size));
    AF_TRY_S(s, triattn_session_calib_begin(s), "calib_begin");
    const char * turns[3] = { "And God said, Let there be light", "And God said, Let there be light: and there was",
                              "And God saw" };
    for (int t = 0; t < 3; t++) {
        AF_TRY_S(s, triattn_generate_cached(s, turns[t], &gp, on_piece, out, NULL), "generate_cached");
        struct triattn_reuse_info ri;
        triattn_generate_get_reuse(s, &ri);
        char line[64];
        snprintf(line, sizeof line, "|kept %d|", ri.n_cached);
        res_put(out, line, strlen(line));
    }
    struct triattn_model_info mi;
    triattn_model_get_info(c->m, &mi);
    static float re[1 << 16];
    const size_t n = (size_t) mi.n_layer * mi.n_head * mi.freq_count;
    uint64_t     n_tok = 0;
    if (n > sizeof re / sizeof *re) {
        snprintf(err, err_size, "the test's buffer holds %zu of %zu statistics", sizeof re / sizeof *re, n);
        st = TRIATTN_ERR_INVALID_ARG;
        goto done;
    }
    AF_TRY_S(s, triattn_session_calib_get(s, re, NULL, NULL, n, &n_tok), "calib_get");
    triattn_session_calib_end(s);
    char line[64];
    snprintf(line, sizeof line, "calibrated on %llu tokens, %a", (unsigned long long) n_tok, re[n / 2]);
    res_put(out, line, strlen(line));
done:
    triattn_session_free(s);
    return st;
}

/* The other tokenizers and chat formats: Qwen2 (byte-level BPE) and Gemma 3 (SentencePiece), loaded read. */
static enum triattn_status sc_tokenizers(void * ctx, af_result * out, char * err, size_t err_size) {
    (void) ctx;
    static const char * const files[] = { TRI_SOURCE_DIR "/tests/fuzz/corpus/gguf/qwen2_Q4_0.gguf",
                                          TRI_SOURCE_DIR "/tests/fuzz/corpus/gguf/gemma3_Q4_0.gguf" };
    enum triattn_status st = TRIATTN_OK;
    for (int f = 0; f < 2; f++) {
        struct triattn_model_params mp;
        triattn_model_params_init(&mp);
        mp.use_mmap = false;
        triattn_model * m = NULL;
        AF_TRY(triattn_model_load(files[f], &mp, &m, err, err_size));
        triattn_token toks[512];
        int32_t       n = 0, len = 0;
        char          text[2048];
        size_t        chat_len = 0;
        st = triattn_tokenize(m, "Héllo wörld, 1234 <tag> \u00e9t\xc3\xa9 \xf0\x9f\xa6\x99 end", -1, true, true, toks, 512, &n);
        if (st == TRIATTN_OK) st = triattn_detokenize(m, toks, n, true, text, 1024, &len);
        struct triattn_chat_message msg[2] = { { "user", "Hello" }, { "assistant", "Hi there" } };
        if (st == TRIATTN_OK) st = triattn_chat_apply(m, f ? "gemma" : "qwen", msg, 2, true, text + len, 1024, &chat_len);
        if (st != TRIATTN_OK) snprintf(err, err_size, "%s: tokenize/detokenize/chat: %s", files[f], triattn_status_name(st));
        else res_put(out, text, strlen(text));
        triattn_model_free(m);
        if (st != TRIATTN_OK) break;
    }
done:
    return st;
}

/* The CUDA backend (on a device, or its host emulation): the model uploaded, a TriAttention session generating with
 * its rounds on the device, its state saved and loaded into a second, the two decoding together, and a session over
 * the memory cap refused. */
static enum triattn_status sc_gpu(void * ctx, af_result * out, char * err, size_t err_size) {
    enum triattn_status st = TRIATTN_OK;
    triattn_session *   ss[2] = { NULL, NULL };
    struct sess_ctx     c = { .state_path = ((const struct sess_ctx *) ctx)->state_path };
    struct triattn_model_params mp;
    triattn_model_params_init(&mp);
    mp.n_gpu_layers = -1;
    mp.gpu_mem_limit = 16ull << 20;
    AF_TRY(triattn_model_load(MODEL, &mp, &c.m, err, err_size));
    struct triattn_session_params sp;
    sess_params(&c, &sp);
    struct triattn_generate_params gp;
    greedy(&gp, 24);
    AF_TRY(triattn_session_create(c.m, &sp, &ss[0], err, err_size));
    if (strcmp(triattn_backend_name(ss[0]), "cuda") != 0) {
        snprintf(err, err_size, "the session runs on '%s'", triattn_backend_name(ss[0]));
        st = TRIATTN_ERR_INTERNAL;
        goto done;
    }
    AF_TRY_S(ss[0], triattn_generate(ss[0], k_prompt, &gp, on_piece, out, NULL), "generate");
    AF_TRY_S(ss[0], triattn_session_save(ss[0], c.state_path), "save");
    AF_TRY(triattn_session_create(c.m, &sp, &ss[1], err, err_size));
    AF_TRY_S(ss[1], triattn_session_load(ss[1], c.state_path), "load");
    const triattn_token toks[2] = { 42, 42 };
    const int32_t       counts[2] = { 1, 1 };
    AF_TRY(triattn_batch_decode(ss, 2, toks, counts, err, err_size));
    const float * a = triattn_session_logits(ss[0], -1), * b = triattn_session_logits(ss[1], -1);
    int32_t       best[2] = { 0, 0 };
    for (int32_t i = 1; i < triattn_vocab_size(c.m); i++) {
        best[0] = a[i] > a[best[0]] ? i : best[0];
        best[1] = b[i] > b[best[1]] ? i : best[1];
    }
    triattn_session_free(ss[1]);
    ss[1] = NULL;
    sp.kv_policy = "full";
    sp.n_ctx = 1 << 20;
    char msg[512] = "";
    const enum triattn_status capped = triattn_session_create(c.m, &sp, &ss[1], msg, sizeof msg);
    char line[128];
    snprintf(line, sizeof line, "|next %d %d|over the cap: %s", best[0], best[1], triattn_status_name(capped));
    res_put(out, line, strlen(line));
done:
    triattn_session_free(ss[0]);
    triattn_session_free(ss[1]);
    triattn_model_free(c.m);
    return st;
}

/* ---- the server ---------------------------------------------------------------------------------- */

static void * serve(void * arg) {
    void ** a = arg;
    api_serve_connection(a[0], (int) (intptr_t) a[1]);
    return NULL;
}

/* One request through a socket pair to api_serve_connection; the whole answer into out. */
static void http_post(struct server * srv, const char * path, const char * body, af_result * out) {
    char req[2048];
    const int n = snprintf(req, sizeof req,
                           "POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n"
                           "Connection: close\r\n\r\n%s", path, strlen(body), body);
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
        CHECK(0, "socketpair: %s", strerror(errno));
        return;
    }
    pthread_t th;
    void *    arg[2] = { srv, (void *) (intptr_t) sv[1] };
    if (pthread_create(&th, NULL, serve, arg) != 0) {
        CHECK(0, "pthread_create");
        close(sv[0]);
        close(sv[1]);
        return;
    }
    for (int off = 0; off < n;) {
        const ssize_t w = send(sv[0], req + off, (size_t) (n - off), MSG_NOSIGNAL);
        if (w <= 0) break;
        off += (int) w;
    }
    shutdown(sv[0], SHUT_WR);
    char chunk[4096];
    for (;;) {
        struct pollfd pf = { .fd = sv[0], .events = POLLIN };
        if (poll(&pf, 1, 60000) <= 0) {
            CHECK(0, "no answer within 60 s to %s", path);
            break;
        }
        const ssize_t r = recv(sv[0], chunk, sizeof chunk, 0);
        if (r <= 0) break;
        res_put(out, chunk, (size_t) r);
    }
    close(sv[0]);
    pthread_join(th, NULL);
}

static const char * k_chat_body =
    "{\"model\":\"tiny\",\"messages\":[{\"role\":\"user\",\"content\":\"Say something.\"}],\"max_tokens\":12,"
    "\"temperature\":0,\"n\":2,\"stream\":%s}";

/* A chat completion, streamed or not: any answer is HTTP with a status line, a failure is a 5xx with an error
 * object; the results compared are the undisturbed run's body. */
static enum triattn_status sc_server(void * ctx, af_result * out, char * err, size_t err_size) {
    struct server * srv = ctx;
    for (int stream = 0; stream < 2; stream++) {
        char body[512];
        snprintf(body, sizeof body, k_chat_body, stream ? "true" : "false");
        af_result a = { .n = 0 };
        http_post(srv, "/v1/chat/completions", body, &a);
        /* the interim answer to the half-close (the request's writing side is shut) */
        const char * interim = "HTTP/1.1 100 Continue\r\n\r\n";
        if (a.n >= strlen(interim) && memcmp(a.text, interim, strlen(interim)) == 0) {
            memmove(a.text, a.text + strlen(interim), a.n - strlen(interim) + 1);
            a.n -= strlen(interim);
        }
        if (a.n < 12 || memcmp(a.text, "HTTP/1.1 ", 9) != 0) {
            snprintf(err, err_size, "not an HTTP answer: %.80s", a.text);
            return TRIATTN_ERR_INTERNAL;
        }
        if (memcmp(a.text + 9, "200", 3) != 0) {
            const bool error_object = strstr(a.text, "\"error\"") != NULL;
            snprintf(err, err_size, "%.3s%s", a.text + 9, error_object ? "" : " without an error object");
            return error_object && a.text[9] == '5' ? TRIATTN_ERR_OOM : TRIATTN_ERR_INTERNAL;
        }
        if (stream && strstr(a.text, "data: {\"error\":")) {  /* a failure after the stream began */
            snprintf(err, err_size, "an error event: %.200s", strstr(a.text, "data: {\"error\":"));
            return TRIATTN_ERR_OOM;
        }
        if (stream && !strstr(a.text, "data: [DONE]")) {
            snprintf(err, err_size, "a 200 stream without [DONE]: %.200s", a.text);
            return TRIATTN_ERR_INTERNAL;
        }
        /* the generated text of each choice (however the stream's events cut and interleave it), not ids and
         * timings: the content that follows each "index" */
        const char * key = "\"content\":\"";
        for (int choice = 0; choice < 2; choice++) {
            char idx[32];
            snprintf(idx, sizeof idx, "\"index\":%d,", choice);
            for (const char * q = strstr(a.text, idx); q; q = strstr(q + 1, idx)) {
                const char * next = strstr(q + 1, "\"index\":");
                const char * c = strstr(q, key);
                if (!c || (next && c > next)) continue;
                c += strlen(key);
                const char * e = c;
                while (*e && *e != '"') e += e[0] == '\\' && e[1] ? 2 : 1;
                res_put(out, c, (size_t) (e - c));
            }
            res_put(out, "|", 1);
        }
    }
    return TRIATTN_OK;
}

/* ---- the sweep ----------------------------------------------------------------------------------- */

/* Runs f once recording its allocation sites and results, then once per (site, call) with that call failing:
 * at each site its first call, its last and up to three random ones between. Returns the number of failures injected. */
static int sweep(const char * name, af_scenario f, void * ctx, bool (*server_ok)(void *)) {
    static af_result ref, got;
    char             err[1024] = "";
    memset(&ref, 0, sizeof ref);
    pthread_mutex_lock(&g_lock);
    g_n_sites = 0;
    memset(g_site_calls, 0, sizeof g_site_calls);
    pthread_mutex_unlock(&g_lock);
    arm(NULL, 0);
    atomic_store(&g_record, true);
    enum triattn_status st = f(ctx, &ref, err, sizeof err);
    atomic_store(&g_record, false);
    CHECK(st == TRIATTN_OK, "%s: the undisturbed run fails: %s", name, err);
    if (st != TRIATTN_OK) return 0;
    const int  n_sites = g_n_sites;
    const bool verbose = getenv("TRI_AF_VERBOSE") != NULL;  /* each injection named before it runs */
    int injected = 0, refused = 0, absorbed = 0;
    for (int i = 0; i < n_sites; i++) {
        const long calls = g_site_calls[i];
        /* the first call, the last, and up to three distinct ones between */
        long nths[5] = { 0, calls - 1, 0, 0, 0 };
        int  n_nth = calls > 1 ? 2 : 1;
        for (int k = 0; k < 3 && calls > 2; k++) {
            const long x = 1 + (long) tu_below((uint64_t) calls - 2);
            bool       seen = false;
            for (int j = 0; j < n_nth; j++) seen = seen || nths[j] == x;
            if (!seen) nths[n_nth++] = x;
        }
        for (int k = 0; k < n_nth; k++) {
            memset(&got, 0, sizeof got);
            err[0] = '\0';
            if (verbose) fprintf(stderr, "%s: failing site 0x%lx call %ld\n", name, site_off(g_sites[i]), nths[k]);
            arm(g_sites[i], nths[k]);
            st = f(ctx, &got, err, sizeof err);
            const bool fired = atomic_load(&g_fired);
            arm(NULL, 0);
            if (!fired) {
                fprintf(stderr, "%s: not reached again: site 0x%lx call %ld\n", name, site_off(g_sites[i]), nths[k]);
                continue;
            }
            injected++;
            if (st != TRIATTN_OK) {
                refused++;
                CHECK(err[0] && st != TRIATTN_ERR_INTERNAL, "%s: site 0x%lx call %ld: status %s, message '%s'", name,
                      site_off(g_sites[i]), nths[k], triattn_status_name(st), err);
            } else {
                absorbed++;
                size_t d = 0;
                while (d < got.n && d < ref.n && got.text[d] == ref.text[d]) d++;
                CHECK(d == ref.n && d == got.n,
                      "%s: site 0x%lx call %ld failed, the run succeeded with other results from byte %zu:\n  %.200s\n"
                      "want\n  %.200s", name, site_off(g_sites[i]), nths[k], d, got.text + d, ref.text + d);
            }
            if (server_ok) CHECK(server_ok(ctx), "%s: site 0x%lx call %ld: the server does not serve afterwards",
                                 name, site_off(g_sites[i]), nths[k]);
        }
    }
    printf("%s: %d allocation sites, %d failures injected: %d refused with a message, %d absorbed\n", name, n_sites,
           injected, refused, absorbed);
    CHECK(injected > 0, "%s: no failure injected over %d sites", name, n_sites);
    return injected;
}

/* A server started (its slots, and what their first jobs allocate) and stopped around the requests. */
static enum triattn_status sc_server_start(void * ctx, af_result * out, char * err, size_t err_size) {
    struct server * srv = ctx;
    enum triattn_status st = srv_test_start(srv, err, err_size);
    if (st != TRIATTN_OK) return st;
    st = sc_server(srv, out, err, err_size);
    slots_free(&srv->pool);
    return st;
}

static bool server_serves(void * ctx) {
    af_result r = { .n = 0 };
    char      err[256];
    return sc_server(ctx, &r, err, sizeof err) == TRIATTN_OK;
}

/* Decode steps allocate nothing: generate, then count the allocations of further steps (compressions included). */
static void test_no_step_allocations(struct sess_ctx * c) {
    struct triattn_session_params sp;
    sess_params(c, &sp);
    triattn_session * s = NULL;
    char              err[512];
    if (triattn_session_create(c->m, &sp, &s, err, sizeof err) != TRIATTN_OK) {
        CHECK(0, "session: %s", err);
        return;
    }
    struct triattn_generate_params gp;
    greedy(&gp, 64);
    bool ok = triattn_generate_begin(s, k_prompt, &gp) == TRIATTN_OK;
    long before = 0;
    int  steps = 0;
    bool done = false;
    struct triattn_kv_stats k0, k1;
    while (ok && !done) {
        if (steps == 4) {
            before = atomic_load(&g_calls);
            triattn_session_kv_stats(s, &k0);
        }
        const char * text;
        size_t       len;
        ok = triattn_generate_next(s, &text, &len, &done) == TRIATTN_OK;
        steps++;
    }
    const long calls = atomic_load(&g_calls) - before;
    triattn_session_kv_stats(s, &k1);
    CHECK(ok, "generate: %s", triattn_session_last_error(s));
    CHECK(k1.n_compressions - k0.n_compressions >= 4, "only %lld compressions in the measured steps",
          (long long) (k1.n_compressions - k0.n_compressions));
    CHECK(calls == 0, "%ld allocations in %d decode steps", calls, steps - 4);
    printf("decode: %ld allocations in %d steps (%lld compressions)\n", calls, steps - 4,
           (long long) (k1.n_compressions - k0.n_compressions));
    triattn_session_free(s);
}

int main(void) {
    tu_seed_init("TRI_TEST_SEED");
    char err[512];
    char state[] = "/tmp/tri_alloc_fail_XXXXXX";
    const int fd = mkstemp(state);
    CHECK(fd >= 0, "mkstemp: %s", strerror(errno));
    if (fd >= 0) close(fd);

    sweep("model", sc_model, NULL, NULL);

    struct sess_ctx c = { .state_path = state };
    if (triattn_model_load(MODEL, NULL, &c.m, err, sizeof err) != TRIATTN_OK) {
        CHECK(0, "load %s: %s", MODEL, err);
        return tu_finish();
    }
    test_no_step_allocations(&c);
    sweep("session", sc_session, &c, NULL);
    c.recall = 8;
    sweep("session with recall", sc_session, &c, NULL);
    c.recall = 0;
    sweep("batch", sc_batch, &c, NULL);
    sweep("constrained and tools", sc_constrained, &c, NULL);
    sweep("other policies", sc_policies, &c, NULL);
    sweep("prefix reuse and calibration", sc_reuse_calib, &c, NULL);
    sweep("other tokenizers", sc_tokenizers, NULL, NULL);
    if (triattn_cuda_available()) {
        sweep("cuda backend", sc_gpu, &c, NULL);
    } else {
        printf("cuda backend: not built or no device (the CUDA-emulation build runs it)\n");
    }

    static struct server srv;
    srv_test_opts(&srv.o, MODEL, "tiny", 128);
    srv.o.timeout_s = 10;
    srv.o.kv_policy = "triattention";
    srv.o.kv_budget = 16;
    srv.o.kv_interval = 8;
    srv.o.chat_format = "chatml";
    srv.model = c.m;
    sweep("server start", sc_server_start, &srv, NULL);
    if (srv_test_start(&srv, err, sizeof err) != TRIATTN_OK) {
        CHECK(0, "slots: %s", err);
    } else {
        sweep("server", sc_server, &srv, server_serves);
        slots_free(&srv.pool);
    }
    triattn_model_free(c.m);
    unlink(state);
    return tu_finish();
}
