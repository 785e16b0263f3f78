/* fuzz_server: request bodies through triattn-server's endpoints, on the tiny calibrated model
 * (corpus/gguf/llama-tri.gguf, TriAttention at a small budget, two slots). Input: one byte choosing the endpoint
 * and whether the body goes whole or as a keep-alive pipeline of two, then the JSON body. The request goes through a
 * socket pair to api_serve_connection as an accepted connection would, and the whole answer is read back: it is
 * HTTP, never a 500, and a completion that answers 200 ends (finish_reason, or [DONE] when streamed). */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "server.h"
#include "server_test.h"

#include "fuzz.h"

static struct server g_srv;
static const char * const PATHS[] = { "/v1/chat/completions", "/v1/completions", "/tokenize", "/detokenize",
                                      "/completion", "/v1/chat/completions", "/v1/chat/completions", "/slots/0?action=erase" };

int LLVMFuzzerInitialize(int * argc, char *** argv) {
    struct server_opts * o = &g_srv.o;
    srv_test_opts(o, TRI_FUZZ_DIR "/corpus/gguf/llama-tri.gguf", "tiny", 96);
    o->kv_policy = "triattention";
    o->kv_budget = 16;
    o->kv_interval = 8;
    char err[512];
    FUZZ_CHECK(triattn_model_load(o->model_path, NULL, &g_srv.model, err, sizeof err) == TRIATTN_OK, "load: %s", err);
    FUZZ_CHECK(srv_test_start(&g_srv, err, sizeof err) == TRIATTN_OK, "slots: %s", err);
    return 0;
}

static double mono_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double) ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void * serve(void * arg) {
    api_serve_connection(&g_srv, (int) (intptr_t) arg);
    return NULL;
}

static void append(char ** buf, size_t * n, size_t * cap, const void * data, size_t len) {
    if (*n + len + 1 > *cap) {
        *cap = (*n + len + 1) * 2;
        *buf = realloc(*buf, *cap);
        FUZZ_CHECK(*buf, "out of memory");
    }
    memcpy(*buf + *n, data, len);
    *n += len;
    (*buf)[*n] = '\0';
}

static void request(char ** req, size_t * n, size_t * cap, const char * path, const uint8_t * body, size_t len,
                    bool last) {
    char head[256];
    int h = snprintf(head, sizeof head, "POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\n%s\r\n", path, len, last ? "Connection: close\r\n" : "");
    append(req, n, cap, head, (size_t) h);
    append(req, n, cap, body, len);
}

/* Checks each answer in the bytes read back: an HTTP status line, never 500. */
static void check_answers(const char * in, size_t n) {
    FUZZ_CHECK(n >= 12 && memcmp(in, "HTTP/1.1 ", 9) == 0, "not an HTTP answer: %.80s", in);
    for (const char * p = in; p && p < in + n; p = memmem(p + 1, (size_t) (in + n - p - 1), "\r\nHTTP/1.1 ", 11)) {
        const char * s = p[0] == '\r' ? p + 2 : p;
        FUZZ_CHECK(strncmp(s + 9, "500", 3) != 0, "a server error: %.300s", s);
    }
    if (strncmp(in + 9, "200", 3) == 0 && memmem(in, n, "text/event-stream", 17)) {
        FUZZ_CHECK(memmem(in, n, "data: [DONE]", 12), "a 200 stream without [DONE]: %.300s", in);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t * data, size_t size) {
    if (size < 1 || size > 32768) return 0;
    const char * path = PATHS[data[0] & 7];
    const bool pipeline = data[0] & 8;
    char * req = NULL;
    size_t n = 0, cap = 0;
    if (pipeline) request(&req, &n, &cap, "/tokenize", (const uint8_t *) "{\"content\": \"hi\"}", 17, false);
    request(&req, &n, &cap, path, data + 1, size - 1, true);

    int sv[2];
    FUZZ_CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0, "socketpair");
    int bufsz = 1 << 20;
    setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &bufsz, sizeof bufsz);
    pthread_t th;
    FUZZ_CHECK(pthread_create(&th, NULL, serve, (void *) (intptr_t) sv[1]) == 0, "pthread_create");
    for (size_t off = 0; off < n;) {
        ssize_t w = send(sv[0], req + off, n - off, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) continue;  /* libFuzzer's timer signals */
        if (w <= 0) break;  /* the server may close early after an error */
        off += (size_t) w;
    }
    shutdown(sv[0], SHUT_WR);
    char * in = NULL;
    size_t got = 0, in_cap = 0;
    char chunk[8192];
    for (double left = 60; left > 0;) {
        struct pollfd p = { .fd = sv[0], .events = POLLIN };
        const double t = mono_s();
        const int ready = poll(&p, 1, 1000);
        left -= mono_s() - t;
        if (ready < 0 && errno != EINTR) break;
        if (ready <= 0) {
            FUZZ_CHECK(left > 0, "no answer within 60 s");
            continue;
        }
        ssize_t r = recv(sv[0], chunk, sizeof chunk, 0);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        append(&in, &got, &in_cap, chunk, (size_t) r);
    }
    close(sv[0]);
    pthread_join(th, NULL);
    check_answers(in ? in : "", got);
    free(in);
    free(req);
    return 0;
}
