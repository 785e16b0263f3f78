/* net.h - the sockets the server uses, over POSIX or Winsock: one interface, one definition per system (net.c).
 * A socket is an int (Winsock's SOCKET values fit in one). */
#ifndef TRI_SERVER_NET_H
#define TRI_SERVER_NET_H

#include <stdbool.h>
#include <stddef.h>

#if defined(_WIN32)
#  include <winsock2.h>
#  include <ws2tcpip.h>
#else
#  include <arpa/inet.h>
#  include <netdb.h>
#  include <netinet/in.h>
#  include <sys/socket.h>
#endif

/* Starts the socket layer (Winsock) and makes a write to a closed connection an error, not a signal (SIGPIPE). */
bool net_init(void);

/* A listening TCP socket on host:port (port 0: a free one, written to *bound_port), or -1 (message on stderr). */
int net_listen(const char * host, int port, int * bound_port);

/* The next connection of a listening socket (not inherited by child processes), or -1. */
int net_accept(int lfd, struct sockaddr_storage * peer);

void net_close(int fd);
void net_shutdown_write(int fd);
/* A send that cannot go on for this long fails (a client that stops reading cannot pin a thread). */
void net_send_timeout(int fd, int seconds);

/* Waits up to ms for fd to be readable: 1 readable (or reset: the read reports it), 0 timeout, -1 interrupted. */
int net_wait_readable(int fd, int ms);

#define NET_RETRY (-2) /* interrupted before anything moved: call again */
/* recv / send: bytes moved, 0 (recv: the peer closed), -1 error, NET_RETRY. nowait: never block (send). */
long net_recv(int fd, void * buf, size_t n);
long net_send(int fd, const void * buf, size_t n, bool nowait);

enum net_peer {
    NET_PEER_OPEN, /* nothing to say */
    NET_PEER_FIN,  /* the peer sent its FIN: a half-close or a client that went away */
    NET_PEER_GONE, /* reset or failed */
};
/* What the peer of a connection did, without waiting and without reading. */
enum net_peer net_peer_state(int fd);
/* After a write: whether the peer answers it with a reset within ms. */
bool net_reset_within(int fd, int ms);

#endif
