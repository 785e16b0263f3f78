/* net.c - the socket layer of net.h: POSIX (Linux) and Winsock, one definition each. */
#if !defined(_WIN32)
#  define _GNU_SOURCE /* accept4, POLLRDHUP */
#endif
#include "net.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

#if !defined(_WIN32)
#  include <poll.h>
#  include <unistd.h>
#endif

/* The first address of res that binds and listens, or -1. */
static int net_bind_first(const struct addrinfo * res);
/* getaddrinfo's error code as words. */
static const char * net_resolve_error(int rc);

int net_listen(const char * host, int port, int * bound_port) {
    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE };
    struct addrinfo * res = NULL;
    char ps[16];
    snprintf(ps, sizeof ps, "%d", port);
    int rc = getaddrinfo(host, ps, &hints, &res);
    if (rc) { fprintf(stderr, "error: cannot resolve %s: %s\n", host, net_resolve_error(rc)); return -1; }
    const int fd = net_bind_first(res);
    freeaddrinfo(res);
    if (fd < 0) { fprintf(stderr, "error: cannot listen on %s:%d: %s\n", host, port, strerror(errno)); return -1; }
    struct sockaddr_storage sa;
    socklen_t sl = sizeof sa;
    getsockname(fd, (struct sockaddr *)&sa, &sl);
    *bound_port = ntohs(sa.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&sa)->sin6_port
                                                 : ((struct sockaddr_in *)&sa)->sin_port);
    return fd;
}

#if defined(_WIN32)

bool net_init(void) {
    WSADATA wd;
    return WSAStartup(MAKEWORD(2, 2), &wd) == 0; /* Winsock raises no signal on a closed connection */
}

static const char * net_resolve_error(int rc) {
    return rc == WSAHOST_NOT_FOUND ? "no such host" : "name resolution failed";
}

static int net_bind_first(const struct addrinfo * res) {
    for (const struct addrinfo * ai = res; ai; ai = ai->ai_next) {
        SOCKET s = WSASocketW(ai->ai_family, ai->ai_socktype, ai->ai_protocol, NULL, 0, WSA_FLAG_NO_HANDLE_INHERIT);
        if (s == INVALID_SOCKET) continue;
        BOOL excl = TRUE; /* Windows' SO_REUSEADDR would let another program take the port */
        setsockopt(s, SOL_SOCKET, SO_EXCLUSIVEADDRUSE, (const char *)&excl, sizeof excl);
        if (bind(s, ai->ai_addr, (int)ai->ai_addrlen) == 0 && listen(s, 128) == 0) return (int)s;
        closesocket(s);
    }
    errno = EADDRINUSE;
    return -1;
}

int net_accept(int lfd, struct sockaddr_storage * peer) {
    int pl = sizeof *peer;
    SOCKET s = accept((SOCKET)lfd, (struct sockaddr *)peer, &pl);
    if (s == INVALID_SOCKET) return -1;
    SetHandleInformation((HANDLE)s, HANDLE_FLAG_INHERIT, 0);
    return (int)s;
}

void net_close(int fd) { closesocket((SOCKET)fd); }

void net_shutdown_write(int fd) { shutdown((SOCKET)fd, SD_SEND); }

void net_send_timeout(int fd, int seconds) {
    DWORD ms = (DWORD)seconds * 1000u;
    setsockopt((SOCKET)fd, SOL_SOCKET, SO_SNDTIMEO, (const char *)&ms, sizeof ms);
}

int net_wait_readable(int fd, int ms) {
    WSAPOLLFD p = { .fd = (SOCKET)fd, .events = POLLRDNORM };
    int r = WSAPoll(&p, 1, ms);
    return r != 0; /* readable, or an error for recv to report */
}

long net_recv(int fd, void * buf, size_t n) {
    int r = recv((SOCKET)fd, buf, n > 1u << 30 ? 1 << 30 : (int)n, 0);
    if (r >= 0) return r;
    return WSAGetLastError() == WSAEINTR ? NET_RETRY : -1;
}

long net_send(int fd, const void * buf, size_t n, bool nowait) {
    u_long on = 1, off = 0;
    if (nowait) ioctlsocket((SOCKET)fd, FIONBIO, &on);
    int r = send((SOCKET)fd, buf, n > 1u << 30 ? 1 << 30 : (int)n, 0);
    const int e = r < 0 ? WSAGetLastError() : 0;
    if (nowait) ioctlsocket((SOCKET)fd, FIONBIO, &off);
    return r >= 0 ? r : e == WSAEINTR ? NET_RETRY : -1;
}

/* A FIN shows as readable with nothing to read: a peeked read of 0 bytes. */
enum net_peer net_peer_state(int fd) {
    WSAPOLLFD p = { .fd = (SOCKET)fd, .events = POLLRDNORM };
    if (WSAPoll(&p, 1, 0) <= 0) return NET_PEER_OPEN;
    if (p.revents & (POLLERR | POLLNVAL)) return NET_PEER_GONE;
    char c;
    const int r = recv((SOCKET)fd, &c, 1, MSG_PEEK);
    return r == 0 ? NET_PEER_FIN : r < 0 ? NET_PEER_GONE : NET_PEER_OPEN;
}

/* After a FIN the socket stays readable, so polling returns at once: look for the reset every 2 ms instead. */
bool net_reset_within(int fd, int ms) {
    for (int t = 0; t <= ms; t += 2) {
        char c;
        if (recv((SOCKET)fd, &c, 1, MSG_PEEK) < 0 && WSAGetLastError() == WSAECONNRESET) return true;
        Sleep(2);
    }
    return false;
}

#else

bool net_init(void) {
    signal(SIGPIPE, SIG_IGN);
    return true;
}

static const char * net_resolve_error(int rc) { return gai_strerror(rc); }

static int net_bind_first(const struct addrinfo * res) {
    int fd = -1;
    for (const struct addrinfo * ai = res; ai; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) continue;
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, 128) == 0) return fd;
        close(fd);
        fd = -1;
    }
    return fd;
}

int net_accept(int lfd, struct sockaddr_storage * peer) {
    socklen_t pl = sizeof *peer;
    return accept4(lfd, (struct sockaddr *)peer, &pl, SOCK_CLOEXEC);
}

void net_close(int fd) { close(fd); }

void net_shutdown_write(int fd) { shutdown(fd, SHUT_WR); }

void net_send_timeout(int fd, int seconds) {
    struct timeval tv = { .tv_sec = seconds, .tv_usec = 0 };
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

int net_wait_readable(int fd, int ms) {
    struct pollfd p = { .fd = fd, .events = POLLIN };
    int r = poll(&p, 1, ms);
    return r > 0 ? 1 : r == 0 ? 0 : errno == EINTR ? -1 : 1; /* an error: let recv report it */
}

long net_recv(int fd, void * buf, size_t n) {
    ssize_t r = recv(fd, buf, n, 0);
    return r >= 0 ? (long)r : errno == EINTR || errno == EAGAIN ? NET_RETRY : -1;
}

long net_send(int fd, const void * buf, size_t n, bool nowait) {
    ssize_t r = send(fd, buf, n, MSG_NOSIGNAL | (nowait ? MSG_DONTWAIT : 0));
    return r >= 0 ? (long)r : errno == EINTR ? NET_RETRY : -1;
}

enum net_peer net_peer_state(int fd) {
    struct pollfd p = { .fd = fd, .events = POLLRDHUP };
    if (poll(&p, 1, 0) <= 0) return NET_PEER_OPEN;
    if (p.revents & (POLLHUP | POLLERR)) return NET_PEER_GONE;
    return p.revents & POLLRDHUP ? NET_PEER_FIN : NET_PEER_OPEN;
}

bool net_reset_within(int fd, int ms) {
    struct pollfd q = { .fd = fd, .events = 0 }; /* wakes on a reset (POLLERR/POLLHUP) only */
    return poll(&q, 1, ms) > 0 && (q.revents & (POLLHUP | POLLERR));
}

#endif
