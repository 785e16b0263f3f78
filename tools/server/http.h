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
    int    timeout_s;      /* whole request (and keep-alive idle) deadline */
    const volatile int * stop;  /* non-zero: give up waiting (shutdown) */
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
};

/* Result of reading one request. Positive values are HTTP status codes to answer with, then close. */
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
/* True when the peer has closed or reset the connection (non-blocking check). */
bool http_peer_gone(struct http_conn * c);

const char * http_reason(int status);

#endif
