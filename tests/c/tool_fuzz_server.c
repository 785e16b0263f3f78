/* tool_fuzz_server: in-process fuzzing of triattn-server's connection handling and API handlers.
 *
 *   tool_fuzz_server --model M.gguf [--seconds S] [--seed N] [--workers W]
 *
 * The server's own code (HTTP parser, JSON, endpoints, chat formatting, streaming, the slot queue and the
 * engine thread) runs over a real model; each request goes through a socketpair to api_serve_connection,
 * as an accepted connection would. Requests are valid templates, mutated JSON bodies, mutated HTTP heads or
 * pipelines of them; the client then reads the answer, half-closes, stops reading mid-stream or vanishes
 * (cancellation paths). Every answer must be HTTP (or nothing) and no connection may hang; crashes and
 * undefined behaviour are the sanitizers' part (build with -DTRIATTN_SANITIZE=ON). The seed is fresh
 * each run unless given, and printed. Prints a status-code summary and "N passed, F failed". */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "../../tools/server/server.h"
#include "server_test.h"
#include "test_util.h"

/* ---- per-worker PRNG (test_util's is global) ---- */

typedef struct { uint64_t s; } rng_t;
static uint64_t rnd(rng_t * r) { return tu_splitmix64(&r->s); }
static size_t below(rng_t * r, size_t n) { return n ? (size_t)(rnd(r) % n) : 0; }

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ---- request generation ---- */

typedef struct { char * d; size_t n, cap; } buf_t;

static void put(buf_t * b, const void * s, size_t n) {
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 1024;
        while (cap < b->n + n + 1) cap *= 2;
        char * d = realloc(b->d, cap);
        if (!d) { fprintf(stderr, "out of memory\n"); exit(2); }
        b->d = d;
        b->cap = cap;
    }
    memcpy(b->d + b->n, s, n);
    b->n += n;
    b->d[b->n] = 0;
}
static void puts_(buf_t * b, const char * s) { put(b, s, strlen(s)); }

static const char * const PROMPTS[] = { "Hello", "The capital of France is", "Once upon a time", "1, 2, 3,",
                                        "caf\xc3\xa9 \xe4\xb8\xad\xe6\x96\x87 \xf0\x9f\x98\x80", "\\n\\t\\\"quoted\\\"", "" };
static const char * const ROLES[] = { "system", "user", "assistant", "tool", "", "User" };

/* A valid (or nearly valid) JSON body for one of the endpoints; *path gets its path. */
static void body_template(rng_t * r, buf_t * b, const char ** path, bool * stream) {
    const char * prompt = PROMPTS[below(r, sizeof PROMPTS / sizeof PROMPTS[0])];
    char t[256];
    *stream = below(r, 2);
    switch (below(r, 7)) {
    case 0: case 1:
        *path = below(r, 4) ? "/v1/completions" : "/completions";
        const bool list = below(r, 4) == 0;   /* "prompt": ["..."] */
        snprintf(t, sizeof t, "{\"model\":\"smol\",\"prompt\":%s\"%s\"%s,\"max_tokens\":%zu,\"temperature\":%.2f,"
                 "\"stream\":%s", list ? "[" : "", prompt, list ? "]" : "", 1 + below(r, 4),
                 (double)below(r, 150) / 100.0, *stream ? "true" : "false");
        puts_(b, t);
        if (below(r, 3) == 0) { snprintf(t, sizeof t, ",\"logprobs\":%zu", below(r, 4)); puts_(b, t); }
        if (below(r, 3) == 0) puts_(b, ",\"stop\":[\"\\n\",\", \"]");
        if (below(r, 4) == 0) { snprintf(t, sizeof t, ",\"seed\":%zu,\"top_k\":%zu,\"top_p\":0.9", below(r, 1000), below(r, 50)); puts_(b, t); }
        if (below(r, 6) == 0) puts_(b, ",\"ignore_eos\":true,\"presence_penalty\":0.5,\"min_p\":0.05");
        if (below(r, 5) == 0) puts_(b, ",\"echo\":true");
        if (below(r, 5) == 0) { snprintf(t, sizeof t, ",\"n\":%zu", below(r, 19)); puts_(b, t); }   /* 0 and > 16: 400 */
        if (below(r, 4) == 0) {   /* ids past the vocabulary (49152) and values past +-100 now and then */
            snprintf(t, sizeof t, ",\"logit_bias\":{\"%zu\":%d,\"%zu\":-100}", below(r, 50000), (int)below(r, 230) - 115,
                     below(r, 50000));
            puts_(b, t);
        }
        puts_(b, "}");
        break;
    case 2: case 3: {
        *path = below(r, 4) ? "/v1/chat/completions" : "/chat/completions";
        puts_(b, "{\"model\":\"smol\",\"messages\":[");
        size_t n = 1 + below(r, 4);
        for (size_t k = 0; k < n; k++) {
            const char * role = ROLES[below(r, sizeof ROLES / sizeof ROLES[0])];
            const char * text = PROMPTS[below(r, sizeof PROMPTS / sizeof PROMPTS[0])];
            if (below(r, 4) == 0) snprintf(t, sizeof t, "%s{\"role\":\"%s\",\"content\":[{\"type\":\"text\",\"text\":\"%s\"}]}",
                                           k ? "," : "", role, text);
            else snprintf(t, sizeof t, "%s{\"role\":\"%s\",\"content\":\"%s\"}", k ? "," : "", role, text);
            puts_(b, t);
        }
        snprintf(t, sizeof t, "],\"max_tokens\":%zu,\"stream\":%s", 1 + below(r, 3), *stream ? "true" : "false");
        puts_(b, t);
        if (below(r, 3) == 0) { snprintf(t, sizeof t, ",\"logprobs\":true,\"top_logprobs\":%zu", below(r, 3)); puts_(b, t); }
        if (below(r, 5) == 0) { snprintf(t, sizeof t, ",\"n\":%zu", 1 + below(r, 3)); puts_(b, t); }
        puts_(b, "}");
        break;
    }
    case 4:
        *path = "/tokenize";
        snprintf(t, sizeof t, "{\"content\":\"%s\",\"add_special\":%s}", prompt, below(r, 2) ? "true" : "false");
        puts_(b, t);
        break;
    case 5:
        *path = below(r, 4) ? "/v1/embeddings" : "/embeddings";
        if (below(r, 2)) snprintf(t, sizeof t, "{\"model\":\"smol\",\"input\":[\"%s\",\"%s\"],\"encoding_format\":\"%s\"}",
                                  prompt, PROMPTS[below(r, sizeof PROMPTS / sizeof PROMPTS[0])], below(r, 2) ? "float" : "base64");
        else snprintf(t, sizeof t, "{\"input\":[%zu,%zu,%zu],\"pooling\":\"%s\",\"normalize\":%s}", below(r, 50000),
                      below(r, 50000), below(r, 50000), below(r, 2) ? "mean" : "last", below(r, 2) ? "true" : "false");
        puts_(b, t);
        break;
    default:
        *path = "/detokenize";
        puts_(b, "{\"tokens\":[");
        for (size_t k = 0, n = below(r, 8); k < n; k++) { snprintf(t, sizeof t, "%s%zu", k ? "," : "", below(r, 50000)); puts_(b, t); }
        puts_(b, "]}");
        break;
    }
}

static void mutate(rng_t * r, buf_t * b, const char * alphabet) {
    const size_t na = strlen(alphabet);
    for (size_t m = 0, n = 1 + below(r, 6); m < n && b->n; m++) {
        size_t pos = below(r, b->n);
        switch (below(r, 5)) {
        case 0: b->d[pos] = (char)rnd(r); break;
        case 1: {   /* insert a byte of the alphabet */
            put(b, "", 1);
            memmove(b->d + pos + 1, b->d + pos, b->n - pos - 1);
            b->d[pos] = alphabet[below(r, na)];
            break;
        }
        case 2: memmove(b->d + pos, b->d + pos + 1, b->n - pos - 1); b->n--; break;
        case 3: {   /* duplicate a run */
            size_t len = 1 + below(r, 16);
            if (len > b->n - pos) len = b->n - pos;
            char tmp[16];
            memcpy(tmp, b->d + pos, len);
            put(b, tmp, len);
            memmove(b->d + pos + len, b->d + pos, b->n - pos - len);
            memcpy(b->d + pos, tmp, len);
            break;
        }
        default: b->n = pos; break;   /* truncate */
        }
        b->d[b->n] = 0;
    }
}

static const char * const METHODS[] = { "GET", "HEAD", "POST", "OPTIONS", "PUT" };
static const char * const GET_PATHS[] = { "/health", "/v1/models", "/metrics", "/slots", "/nowhere", "/v1/health?x=1" };

/* One request (head + body), possibly mutated. */
static void one_request(rng_t * r, buf_t * out, bool last) {
    buf_t body = { 0 };
    const char * path = "/health";
    bool stream = false;
    const int kind = (int)below(r, 10);
    if (kind < 2) {
        path = GET_PATHS[below(r, sizeof GET_PATHS / sizeof GET_PATHS[0])];
    } else {
        body_template(r, &body, &path, &stream);
        if (kind >= 6) mutate(r, &body, "\"\\{}[],:0123456789.eE+-truefalsnul \xc3\xa9\xff\x00u");
    }
    char head[512];
    const char * method = kind < 2 ? METHODS[below(r, 2)] : (below(r, 20) ? "POST" : METHODS[below(r, 5)]);
    int n = snprintf(head, sizeof head, "%s %s HTTP/1.%d\r\nHost: x\r\n%s%s%s", method, path, below(r, 8) ? 1 : 0,
                     body.n || kind >= 2 ? "Content-Type: application/json\r\n" : "",
                     last && below(r, 2) ? "Connection: close\r\n" : "",
                     below(r, 10) == 0 ? "Expect: 100-continue\r\n" : "");
    buf_t h = { 0 };
    put(&h, head, (size_t)n);
    if (kind >= 2) { n = snprintf(head, sizeof head, "Content-Length: %zu\r\n", body.n); put(&h, head, (size_t)n); }
    puts_(&h, "\r\n");
    if (kind == 5) mutate(r, &h, " :\r\n\x00\xff/?%HTTP1.GETPOST\t");
    put(out, h.d, h.n);
    if (body.n) put(out, body.d, body.n);
    free(h.d);
    free(body.d);
}

/* ---- one connection ---- */

static struct server g_srv;

static void * serve(void * arg) {
    api_serve_connection(&g_srv, (int)(intptr_t)arg);
    return NULL;
}

struct stats {
    atomic_long conns, responses, violations, hangs, vanished, cut, half_closed;
    atomic_long status[6];   /* 1xx..5xx, [0] = no response */
    atomic_long gen_ok, stream_ok;
};
static struct stats g_st;

enum { CLIENT_HALF_CLOSE, CLIENT_KEEP_OPEN, CLIENT_CUT, CLIENT_VANISH };

/* Sends data with a deadline (the server may stop reading after an early error). */
static bool send_all(int fd, const char * d, size_t n, double deadline) {
    while (n) {
        ssize_t w = send(fd, d, n, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w > 0) { d += w; n -= (size_t)w; continue; }
        if (w < 0 && errno != EAGAIN && errno != EINTR) return false;
        if (now_s() > deadline) return false;
        struct pollfd p = { .fd = fd, .events = POLLOUT };
        poll(&p, 1, 50);
    }
    return true;
}

static void check_response(const buf_t * in, int client) {
    if (in->n == 0) { atomic_fetch_add(&g_st.status[0], 1); return; }
    /* each answer starts "HTTP/1.1 DDD "; interim 100s may come first */
    const char * p = in->d;
    for (int guard = 0; guard < 8; guard++) {
        if ((size_t)(p - in->d) + 13 > in->n || strncmp(p, "HTTP/1.1 ", 9) != 0 || p[9] < '1' || p[9] > '5') {
            if (client == CLIENT_CUT || client == CLIENT_VANISH) return;   /* cut short by us */
            fprintf(stderr, "violation: not an HTTP response: %.80s\n", p);
            atomic_fetch_add(&g_st.violations, 1);
            return;
        }
        atomic_fetch_add(&g_st.status[p[9] - '0'], 1);
        atomic_fetch_add(&g_st.responses, 1);
        if (p[9] != '1') break;
        const char * e = memmem(p, in->n - (size_t)(p - in->d), "\r\n\r\n", 4);
        if (!e) return;
        p = e + 4;
    }
    if (memmem(in->d, in->n, "data: [DONE]", 12)) atomic_fetch_add(&g_st.stream_ok, 1);
    else if (memmem(in->d, in->n, "\"finish_reason\":\"", 17)) atomic_fetch_add(&g_st.gen_ok, 1);
    if (strncmp(p + 9, "500", 3) == 0) {   /* 503 (busy) and 505 (a mutated version) are answers too */
        fprintf(stderr, "violation: server error: %.200s\n", p);
        atomic_fetch_add(&g_st.violations, 1);
    }
}

static void one_connection(rng_t * r) {
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) { perror("socketpair"); exit(2); }
    pthread_t th;
    if (pthread_create(&th, NULL, serve, (void *)(intptr_t)sv[1]) != 0) { perror("pthread_create"); exit(2); }
    atomic_fetch_add(&g_st.conns, 1);
    buf_t req = { 0 };
    const size_t n_req = below(r, 6) == 0 ? 2 + below(r, 2) : 1;
    for (size_t k = 0; k < n_req; k++) one_request(r, &req, k + 1 == n_req);
    const int client = (int)below(r, 8) < 4 ? CLIENT_HALF_CLOSE : (int)below(r, 4);
    const double t0 = now_s();
    bool sent = send_all(sv[0], req.d, req.n, t0 + 5);
    buf_t in = { 0 };
    if (client == CLIENT_VANISH) {
        atomic_fetch_add(&g_st.vanished, 1);
    } else {
        if (client == CLIENT_HALF_CLOSE || !sent) { shutdown(sv[0], SHUT_WR); atomic_fetch_add(&g_st.half_closed, 1); }
        const size_t cut_at = client == CLIENT_CUT ? 1 + below(r, 400) : (size_t)-1;
        char chunk[4096];
        double last = t0;
        for (;;) {
            /* generous: requests are small, but a sanitized build on a busy machine steps slowly */
            if (now_s() - t0 > 300) {
                fprintf(stderr, "violation: connection still open after 300 s: %.200s\n", req.d);
                atomic_fetch_add(&g_st.hangs, 1);
                atomic_fetch_add(&g_st.violations, 1);
                break;
            }
            struct pollfd p = { .fd = sv[0], .events = POLLIN };
            if (poll(&p, 1, 100) <= 0) {
                /* a keep-alive client leaves after a pause in the answer */
                if (client == CLIENT_KEEP_OPEN && in.n && now_s() - last > 0.3) break;
                continue;
            }
            ssize_t got = recv(sv[0], chunk, sizeof chunk, 0);
            if (got <= 0) break;
            put(&in, chunk, (size_t)got);
            last = now_s();
            if (in.n >= cut_at) { atomic_fetch_add(&g_st.cut, 1); break; }
        }
        check_response(&in, client);
    }
    close(sv[0]);
    pthread_join(th, NULL);
    free(req.d);
    free(in.d);
}

struct worker { rng_t r; double end; };

static void * worker_main(void * arg) {
    struct worker * w = arg;
    while (now_s() < w->end) one_connection(&w->r);
    return NULL;
}

int main(int argc, char ** argv) {
    const char * model_path = getenv("TRI_DEFAULT_MODEL");
    double seconds = 30;
    int workers = 4;
    uint64_t seed = 0;
    bool have_seed = false;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--model")) model_path = argv[i + 1];
        else if (!strcmp(argv[i], "--seconds")) seconds = atof(argv[i + 1]);
        else if (!strcmp(argv[i], "--workers")) workers = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--seed")) { seed = strtoull(argv[i + 1], NULL, 10); have_seed = true; }
        else { fprintf(stderr, "unknown option %s\n", argv[i]); return 2; }
    }
    if (!model_path || workers < 1 || workers > 64) {
        fprintf(stderr, "usage: tool_fuzz_server --model M.gguf [--seconds S] [--seed N] [--workers W]\n");
        return 2;
    }
    if (!have_seed) seed = (uint64_t)time(NULL) * 1000003u ^ (uint64_t)getpid() ^ (uint64_t)(now_s() * 1e6);
    printf("seed %llu\n", (unsigned long long)seed);
    fflush(stdout);

    struct server * srv = &g_srv;
    struct server_opts * o = &srv->o;
    srv_test_opts(o, model_path, "smol", 192);
    o->timeout_s = 1;
    o->max_conns = 256;
    o->max_held_bytes = 1 << 20;
    o->cors = true;
    char err[512];
    struct triattn_model_params mp;
    triattn_model_params_init(&mp);
    if (triattn_model_load(model_path, &mp, &srv->model, err, sizeof err) != TRIATTN_OK) {
        fprintf(stderr, "error: %s\n", err);
        return 2;
    }
    if (srv_test_start(srv, err, sizeof err) != TRIATTN_OK) {
        fprintf(stderr, "error: %s\n", err);
        triattn_model_free(srv->model);
        return 2;
    }

    struct worker * ws = calloc((size_t)workers, sizeof *ws);
    pthread_t * th = calloc((size_t)workers, sizeof *th);
    if (!ws || !th) return 2;
    const double end = now_s() + seconds;
    for (int k = 0; k < workers; k++) {
        uint64_t s = seed + (uint64_t)k;
        ws[k].r.s = tu_splitmix64(&s);
        ws[k].end = end;
        if (pthread_create(&th[k], NULL, worker_main, &ws[k]) != 0) { perror("pthread_create"); return 2; }
    }
    for (int k = 0; k < workers; k++) pthread_join(th[k], NULL);
    srv->stop = 1;
    slots_free(&srv->pool);   /* (the engine has stopped: its counters stay) */
    const long long shares = srv->pool.n_shares, shared = srv->pool.shared_tokens;
    triattn_model_free(srv->model);
    free(ws);
    free(th);

    const long v = atomic_load(&g_st.violations);
    printf("connections %ld, responses %ld (1xx %ld, 2xx %ld, 3xx %ld, 4xx %ld, 5xx %ld, none %ld); completions "
           "answered %ld, streams finished %ld; clients: half-closed %ld, cut mid-answer %ld, vanished %ld\n",
           atomic_load(&g_st.conns), atomic_load(&g_st.responses), atomic_load(&g_st.status[1]),
           atomic_load(&g_st.status[2]), atomic_load(&g_st.status[3]), atomic_load(&g_st.status[4]),
           atomic_load(&g_st.status[5]), atomic_load(&g_st.status[0]), atomic_load(&g_st.gen_ok),
           atomic_load(&g_st.stream_ok), atomic_load(&g_st.half_closed), atomic_load(&g_st.cut),
           atomic_load(&g_st.vanished));
    printf("prompts started from another slot's cache: %lld (%lld tokens)\n", shares, shared);
    printf("%ld passed, %ld failed\n", atomic_load(&g_st.conns) - v, v);
    if (v) printf("seed %llu (rerun with --seed)\n", (unsigned long long)seed);
    return v ? 1 : 0;
}
