/* fuzz_http: the server's HTTP/1.1 request reader on any bytes a client may send, pipelined requests included.
 * The bytes are written to one end of a socket pair and read back by http_read_request until it stops: every
 * request it returns has a method, a path, at most HTTP_MAX_HEADERS headers with names and values, and a
 * NUL-terminated body of at most the body limit; anything else ends in a status or a close. */
#include "http.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "fuzz.h"

enum { FUZZ_MAX_INPUT = 100000, FUZZ_MAX_BODY = 4096 };

int LLVMFuzzerTestOneInput(const uint8_t * data, size_t size) {
    if (size > FUZZ_MAX_INPUT) return 0;  /* the socket buffer holds it whole */
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) return 0;
    int buf = 4 * FUZZ_MAX_INPUT;
    setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &buf, sizeof buf);
    setsockopt(sv[1], SOL_SOCKET, SO_RCVBUF, &buf, sizeof buf);
    for (size_t off = 0; off < size;) {
        ssize_t n = write(sv[0], data + off, size - off);
        if (n < 0 && errno == EINTR) continue;  /* libFuzzer's timer signals */
        FUZZ_CHECK(n > 0, "cannot write the input to the socket pair");
        off += (size_t) n;
    }
    shutdown(sv[0], SHUT_WR);

    static struct http_conn c;  /* 32 KiB: off the stack */
    http_conn_init(&c, sv[1]);
    const struct http_limits lim = { .max_body = FUZZ_MAX_BODY, .timeout_s = 5 };
    for (int k = 0; k < 64; k++) {
        struct http_request req;
        memset(&req, 0, sizeof req);
        int r = http_read_request(&c, &lim, &req);
        if (r != HTTP_READ_OK) {
            FUZZ_CHECK(r == HTTP_READ_CLOSED || r == HTTP_READ_ERROR || (r >= 400 && r < 600),
                       "http_read_request returned %d", r);
            FUZZ_CHECK(r != HTTP_READ_TIMEOUT, "a timeout with every byte at hand");
            http_request_free(&req);
            break;
        }
        FUZZ_CHECK(req.method && req.method[0] && req.path && req.target, "a request without method or path");
        FUZZ_CHECK(req.n_headers >= 0 && req.n_headers <= HTTP_MAX_HEADERS, "%d headers", req.n_headers);
        for (int h = 0; h < req.n_headers; h++) {
            FUZZ_CHECK(req.headers[h].name && req.headers[h].name[0] && req.headers[h].value, "an empty header");
            FUZZ_CHECK(http_header(&req, req.headers[h].name) != NULL, "a header not found by its own name");
        }
        FUZZ_CHECK(req.body_len <= FUZZ_MAX_BODY, "a body of %zu bytes over the limit", req.body_len);
        FUZZ_CHECK(!req.body || req.body[req.body_len] == '\0', "a body without its NUL");
        FUZZ_CHECK(req.body || req.body_len == 0, "a body length without a body");
        http_request_free(&req);
        if (!req.keep_alive) break;
    }
    close(sv[0]);
    close(sv[1]);
    return 0;
}
