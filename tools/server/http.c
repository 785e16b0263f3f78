/* http.c - HTTP/1.1 request reading and response writing (see http.h). */
#define _GNU_SOURCE
#include "http.h"

#include "net.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

void http_conn_init(struct http_conn * c, int fd) {
    c->fd = fd;
    c->len = 0;
    c->broken = false;
    c->deadline = 0;
    c->n_requests = 0;
    c->minor = 1;
    c->head_only = c->responding = c->probed = c->raw_stream = c->must_close = false;
}

/* Waits until fd is readable, the deadline passes or shutdown starts (ticks of 200 ms).
 * Returns 1 readable, 0 timeout, -1 shutdown. */
static int wait_readable(int fd, double deadline, const volatile int * stop) {
    for (;;) {
        if (stop && *stop) return -1;
        double left = deadline - now_s();
        if (left <= 0) return 0;
        int ms = left > 0.2 ? 200 : (int)(left * 1000) + 1;
        if (net_wait_readable(fd, ms) > 0) return 1;  /* an error too: let recv report it */
    }
}

/* Reads some bytes; >0 count, 0 peer closed, -1 error, -2 timeout, -3 shutdown. */
static long read_some(int fd, char * dst, size_t cap, double deadline, const volatile int * stop) {
    for (;;) {
        int w = wait_readable(fd, deadline, stop);
        if (w == 0) return -2;
        if (w < 0) return -3;
        long n = net_recv(fd, dst, cap);
        if (n != NET_RETRY) return n;
    }
}

/* The first CRLFCRLF in buf[0, n), or NULL (memmem is not everywhere). */
static char * find_crlfcrlf(char * buf, size_t n) {
    for (size_t i = 0; i + 4 <= n; i++) {
        if (buf[i] == '\r' && !memcmp(buf + i, "\r\n\r\n", 4)) return buf + i;
    }
    return NULL;
}

static bool is_tchar(char ch) {
    unsigned char c = (unsigned char)ch;
    if (c >= 'a' && c <= 'z') return true;
    if (c >= 'A' && c <= 'Z') return true;
    if (c >= '0' && c <= '9') return true;
    return c && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

const char * http_header(const struct http_request * req, const char * name) {
    for (int k = 0; k < req->n_headers; k++)
        if (strcasecmp(req->headers[k].name, name) == 0) return req->headers[k].value;
    return NULL;
}

void http_request_free(struct http_request * req) {
    free(req->body);
    req->body = NULL;
    req->body_len = 0;
    if (req->held_in && req->held) atomic_fetch_sub(req->held_in, (long long)req->held);
    req->held = 0;
    req->held_in = NULL;
}

/* Index of the first LF in s[0..n) not preceded by CR, or n. */
static size_t bare_lf(const char * s, size_t n) {
    for (const char * p = memchr(s, '\n', n); p; p = memchr(p + 1, '\n', n - (size_t)(p + 1 - s)))
        if (p == s || p[-1] != '\r') return (size_t)(p - s);
    return n;
}

/* Case-insensitive search for a token in a comma-separated header value. */
static bool has_token(const char * v, const char * tok) {
    size_t n = strlen(tok);
    while (v && *v) {
        while (*v == ' ' || *v == '\t' || *v == ',') v++;
        const char * e = v;
        while (*e && *e != ',') e++;
        const char * t = e;
        while (t > v && (t[-1] == ' ' || t[-1] == '\t')) t--;
        if ((size_t)(t - v) == n && strncasecmp(v, tok, n) == 0) return true;
        v = e;
    }
    return false;
}

/* Parses the head in c->hdr (head_len bytes, ending with CRLFCRLF). Returns 0 or an HTTP status. */
static int parse_head(struct http_conn * c, size_t head_len, struct http_request * req) {
    char * s = c->hdr;
    s[head_len] = 0;
    /* request line: method SP target SP HTTP/1.x CRLF */
    char * eol = strstr(s, "\r\n");
    if (!eol) return 400;
    *eol = 0;
    char * sp1 = strchr(s, ' ');
    if (!sp1) return 400;
    *sp1 = 0;
    char * target = sp1 + 1;
    char * sp2 = strchr(target, ' ');
    if (!sp2) return 400;
    *sp2 = 0;
    char * ver = sp2 + 1;
    if (!*s) return 400;
    for (char * m = s; *m; m++) if (!is_tchar(*m)) return 400;
    if (target[0] != '/') return 400;
    for (char * t = target; *t; t++) if ((unsigned char)*t <= 0x20 || (unsigned char)*t >= 0x7F) return 400;
    if (strncmp(ver, "HTTP/1.", 7) != 0 || (ver[7] != '0' && ver[7] != '1') || ver[8]) {
        return strncmp(ver, "HTTP/", 5) == 0 ? 505 : 400;
    }
    req->method = s;
    req->target = target;
    req->minor = ver[7] - '0';
    c->minor = req->minor;
    c->head_only = strcmp(s, "HEAD") == 0;
    /* headers */
    char * line = eol + 2;
    req->n_headers = 0;
    while (*line) {
        char * e = strstr(line, "\r\n");
        if (!e) return 400;
        *e = 0;
        if (e == line) break;  /* the empty line */
        if (*line == ' ' || *line == '\t') return 400;  /* obsolete line folding */
        char * colon = strchr(line, ':');
        if (!colon || colon == line) return 400;
        for (char * q = line; q < colon; q++) if (!is_tchar(*q)) return 400;
        *colon = 0;
        char * v = colon + 1;
        while (*v == ' ' || *v == '\t') v++;
        char * ve = v + strlen(v);
        while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t')) *--ve = 0;
        for (char * q = v; *q; q++) {
            unsigned char ch = (unsigned char)*q;
            if ((ch < 0x20 && ch != '\t') || ch == 0x7F) return 400;
        }
        if (req->n_headers == HTTP_MAX_HEADERS) return 431;
        req->headers[req->n_headers].name = line;
        req->headers[req->n_headers].value = v;
        req->n_headers++;
        line = e + 2;
    }
    return 0;
}

int http_read_request(struct http_conn * c, const struct http_limits * lim, struct http_request * req) {
    memset(req, 0, sizeof *req);
    /* One deadline covers the idle wait, the head and the body (and bounds the drain after an error). */
    const double deadline = now_s() + (lim->timeout_s > 0 ? lim->timeout_s : 30);
    c->deadline = deadline;
    c->minor = 1;
    c->head_only = c->responding = c->probed = c->raw_stream = c->must_close = false;
    const bool first = c->n_requests++ == 0;
    size_t head_end = 0;
    for (;;) {
        c->buf[c->len] = 0;
        /* a NUL byte in the head is invalid; the search finds the terminator regardless */
        char * t = find_crlfcrlf(c->buf, c->len);
        /* lines end with CRLF: a bare LF is refused at once instead of waiting for a CRLFCRLF */
        if (bare_lf(c->buf, t ? (size_t)(t - c->buf) : c->len) < (t ? (size_t)(t - c->buf) : c->len)) return 400;
        if (t) { head_end = (size_t)(t - c->buf) + 4; break; }
        if (c->len >= HTTP_HEADER_BYTES) return 431;
        long n = read_some(c->fd, c->buf + c->len, HTTP_HEADER_BYTES - c->len, deadline, lim->stop);
        if (n == 0 || n == -3) return c->len == 0 || n == -3 ? HTTP_READ_CLOSED : HTTP_READ_ERROR;
        if (n == -2) return c->len > 0 || first ? 408 : HTTP_READ_TIMEOUT;
        if (n < 0) return HTTP_READ_ERROR;
        c->len += (size_t)n;
    }
    if (memchr(c->buf, 0, head_end)) return 400;
    memcpy(c->hdr, c->buf, head_end);
    int st = parse_head(c, head_end, req);
    size_t rest = c->len - head_end;
    memmove(c->buf, c->buf + head_end, rest);
    c->len = rest;
    if (st) return st;
    /* routing uses the path only; the query string is dropped */
    char * q = strchr(req->target, '?');
    if (q) *q = 0;
    req->query = q ? q + 1 : NULL;
    req->path = req->target;
    const char * conn = http_header(req, "Connection");
    req->keep_alive = req->minor >= 1 ? !has_token(conn, "close") : has_token(conn, "keep-alive");
    if (http_header(req, "Transfer-Encoding")) return 411;  /* chunked request bodies are not supported */
    size_t clen = 0;
    bool have_len = false;
    for (int k = 0; k < req->n_headers; k++) {
        if (strcasecmp(req->headers[k].name, "Content-Length") != 0) continue;
        const char * v = req->headers[k].value;
        if (!*v || strlen(v) > 18) return strlen(v) > 18 ? 413 : 400;
        size_t x = 0;
        for (const char * d = v; *d; d++) {
            if (*d < '0' || *d > '9') return 400;
            x = x * 10 + (size_t)(*d - '0');
        }
        if (have_len && x != clen) return 400;
        clen = x;
        have_len = true;
    }
    if (clen > lim->max_body) return 413;
    if (lim->held && clen) {
        /* the server-wide budget of request bytes: refuse (503) rather than read past it */
        if (atomic_fetch_add(lim->held, (long long)clen) + (long long)clen > lim->held_cap) {
            atomic_fetch_sub(lim->held, (long long)clen);
            return 503;
        }
        req->held = clen;
        req->held_in = lim->held;
    }
    const char * expect = http_header(req, "Expect");
    if (expect) {
        if (strcasecmp(expect, "100-continue") != 0) return 417;
        if (clen > c->len) {
            static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
            if (!http_send(c, cont, sizeof cont - 1)) return HTTP_READ_ERROR;
        }
    }
    req->body = malloc(clen + 1);
    if (!req->body) { http_request_free(req); return 503; }
    size_t have = c->len < clen ? c->len : clen;
    memcpy(req->body, c->buf, have);
    memmove(c->buf, c->buf + have, c->len - have);
    c->len -= have;
    while (have < clen) {
        long n = read_some(c->fd, req->body + have, clen - have, deadline, lim->stop);
        if (n == -2) { http_request_free(req); return 408; }
        if (n <= 0) { http_request_free(req); return HTTP_READ_ERROR; }
        have += (size_t)n;
    }
    req->body[clen] = 0;
    req->body_len = clen;
    return HTTP_READ_OK;
}

bool http_send(struct http_conn * c, const void * data, size_t len) {
    const char * p = data;
    while (len && !c->broken) {
        long n = net_send(c->fd, p, len, false);
        if (n == NET_RETRY) continue;
        if (n < 0) {
            c->broken = true;  /* EPIPE, ECONNRESET, or the send timeout (EAGAIN) */
            break;
        }
        p += n;
        len -= (size_t)n;
    }
    return !c->broken;
}

const char * http_reason(int status) {
    switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 204: return "No Content";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 411: return "Length Required";
    case 413: return "Payload Too Large";
    case 417: return "Expectation Failed";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 503: return "Service Unavailable";
    case 505: return "HTTP Version Not Supported";
    default:  return "Unknown";
    }
}

static bool send_head(struct http_conn * c, int status, const char * content_type, const char * extra,
                      const char * framing, bool keep_alive) {
    c->responding = true;
    if (!keep_alive) c->must_close = true;
    char head[1024];
    int n = snprintf(head, sizeof head, "HTTP/1.1 %d %s\r\nServer: triattn-server\r\nContent-Type: %s\r\n%s"
                     "Connection: %s\r\n", status, http_reason(status), content_type, framing,
                     keep_alive ? "keep-alive" : "close");
    if (n < 0 || (size_t)n >= sizeof head) return false;
    if (!http_send(c, head, (size_t)n)) return false;
    if (extra && !http_send(c, extra, strlen(extra))) return false;
    return http_send(c, "\r\n", 2);
}

bool http_respond(struct http_conn * c, int status, const char * content_type, const char * extra_headers,
                  const char * body, size_t body_len, bool keep_alive) {
    char framing[64];
    snprintf(framing, sizeof framing, "Content-Length: %zu\r\n", body_len);
    if (!send_head(c, status, content_type, extra_headers, framing, keep_alive)) return false;
    return body_len == 0 || c->head_only || http_send(c, body, body_len);
}

bool http_stream_begin(struct http_conn * c, int status, const char * content_type, const char * extra_headers,
                       bool keep_alive) {
    /* HTTP/1.0 has no chunked coding: the body runs until the connection closes */
    c->raw_stream = c->minor == 0;
    if (c->raw_stream) return send_head(c, status, content_type, extra_headers, "Cache-Control: no-cache\r\n", false);
    return send_head(c, status, content_type, extra_headers,
                     "Transfer-Encoding: chunked\r\nCache-Control: no-cache\r\n", keep_alive);
}

bool http_stream_chunk(struct http_conn * c, const char * data, size_t len) {
    if (c->raw_stream) return http_send(c, data, len);
    if (len == 0) return !c->broken;  /* an empty chunk would end the stream */
    char sz[24];
    int n = snprintf(sz, sizeof sz, "%zx\r\n", len);
    return http_send(c, sz, (size_t)n) && http_send(c, data, len) && http_send(c, "\r\n", 2);
}

bool http_stream_end(struct http_conn * c) { return c->raw_stream ? !c->broken : http_send(c, "0\r\n\r\n", 5); }

bool http_peer_gone(struct http_conn * c) {
    if (c->broken) return true;
    const enum net_peer st = net_peer_state(c->fd);
    if (st == NET_PEER_GONE) { c->broken = true; return true; }
    if (st != NET_PEER_FIN || c->probed) return false;
    /* A FIN: a half-close or a client that went away. Only a write tells them apart, and only an interim
     * response can be written before the answer (HTTP/1.1 clients skip it; HTTP/1.0 ones cannot). */
    if (c->responding || c->minor == 0) return false;
    c->probed = true;
    static const char probe[] = "HTTP/1.1 100 Continue\r\n\r\n";
    if (!http_send(c, probe, sizeof probe - 1)) return true;
    if (net_reset_within(c->fd, 20)) { c->broken = true; return true; }
    return false;
}

void http_drain(struct http_conn * c) {
    net_shutdown_write(c->fd);
    double end = now_s() + 1.0;
    if (c->deadline > now_s() && c->deadline < end) end = c->deadline;
    if (end < now_s() + 0.2) end = now_s() + 0.2;   /* a moment for the response to leave */
    char sink[4096];
    size_t total = 0;
    while (total < ((size_t)1 << 20)) {
        long n = read_some(c->fd, sink, sizeof sink, end, NULL);
        if (n <= 0) break;
        total += (size_t)n;
    }
}
