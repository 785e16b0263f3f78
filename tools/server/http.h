/*
 * http.h - a strict, bounded HTTP/1.1 server connection for triattn-server.
 *
 * One connection = one socket + one read buffer. http_read_request reads one request (headers, then a
 * Content-Length body) under a deadline, with limits on header size/count and body size. Responses are
 * sent whole (http_respond) or as a chunked stream (http_stream_begin / _chunk / _end).
 */
#ifndef TRI_SRV_HTTP_H
#define TRI_SRV_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define HTTP_MAX_HEADERS   64
#define HTTP_HEADER_BYTES  16384   /* request line + headers */

struct http_limits {
    size_t max_body;       /* bytes (413 beyond) */
    int    timeout_s;      /* one deadline for the whole request: idle wait, head and body */
    const volatile int * stop;  /* non-zero: give up waiting (shutdown) */
    /* Bytes of request bodies held server-wide (NULL: unlimited). A body that would take the total past
     * held_cap is refused with 503 before it is read; http_request_free gives the bytes back. */
    _Atomic long long * held;
    long long           held_cap;
};

struct http_header { char * name; char * value; };

struct http_request {
    char *  method;
    char *  target;         /* request target with the query string cut off */
    char *  path;           /* = target (the path routed on) */
    char *  query;          /* the query string after '?', or NULL */
    int     minor;          /* HTTP/1.minor */
    struct http_header headers[HTTP_MAX_HEADERS];
    int     n_headers;
    char *  body;           /* NUL-terminated copy (malloc'd), or NULL */
    size_t  body_len;
    bool    keep_alive;
    size_t  held;           /* bytes counted in http_limits.held for this request */
    _Atomic long long * held_in;
};

/* Result of reading one request. Positive values are HTTP status codes to answer with, then close
 * (408 when the deadline passed with a request partly received, or before the first one arrived). */
enum {
    HTTP_READ_OK      = 0,
    HTTP_READ_CLOSED  = -1,   /* peer closed cleanly between requests (or shutdown): just close */
    HTTP_READ_TIMEOUT = -2,   /* deadline passed: close */
    HTTP_READ_ERROR   = -3,   /* socket error: close */
};

struct http_conn {
    int    fd;
    char   buf[HTTP_HEADER_BYTES + 1];
    size_t len;             /* bytes in buf (pipelined data kept between requests) */
    char   hdr[HTTP_HEADER_BYTES + 1];   /* NUL-separated copy of the current head */
    bool   broken;          /* a send failed: the client is gone */
    double deadline;        /* monotonic seconds: the current request's deadline (read, then drain) */
    int    n_requests;      /* requests read on this connection */
    /* the current request (reset by http_read_request) */
    int    minor;           /* HTTP/1.minor */
    bool   head_only;       /* HEAD: responses carry headers only */
    bool   responding;      /* a response head was sent */
    bool   probed;          /* an interim 100 was sent to tell a half-close from a vanished client */
    bool   raw_stream;      /* HTTP/1.0 stream: body until close, no chunks */
    bool   must_close;      /* the response ends with the connection */
};

void http_conn_init(struct http_conn * c, int fd);
/* Reads the next request into req (its strings point into c->hdr, body is malloc'd). */
int  http_read_request(struct http_conn * c, const struct http_limits * lim, struct http_request * req);
void http_request_free(struct http_request * req);
/* Case-insensitive header lookup; NULL when absent. */
const char * http_header(const struct http_request * req, const char * name);

/* Sends all bytes (MSG_NOSIGNAL). false (and c->broken) when the peer is gone. */
bool http_send(struct http_conn * c, const void * data, size_t len);
/* A complete response. extra_headers: "Name: value\r\n" lines or NULL. */
bool http_respond(struct http_conn * c, int status, const char * content_type, const char * extra_headers,
                  const char * body, size_t body_len, bool keep_alive);
bool http_stream_begin(struct http_conn * c, int status, const char * content_type, const char * extra_headers,
                       bool keep_alive);
bool http_stream_chunk(struct http_conn * c, const char * data, size_t len);
bool http_stream_end(struct http_conn * c);
/* True when the client is gone: reset, or closed with no way to answer it. A FIN alone may be a
 * half-close (shutdown(SHUT_WR) after the request), whose answer is still wanted: before any response
 * byte an HTTP/1.1 client then gets an interim "100 Continue", and a client that really closed answers
 * it with a reset, seen by this check (it waits up to 20 ms for it) or a later one. */
bool http_peer_gone(struct http_conn * c);
/* After an error reply: reads and drops what the client still sends, for at most 1 s and 1 MiB, so the
 * response is not lost to a reset; never past the request's deadline by more than that second. */
void http_drain(struct http_conn * c);

const char * http_reason(int status);

#endif
