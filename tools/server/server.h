/* server.h - triattn-server's shared state: options, the model, the slot pool, counters. */
#ifndef TRI_SRV_SERVER_H
#define TRI_SRV_SERVER_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "slots.h"
#include "triattn.h"

struct server_opts {
    const char * host;
    int          port;
    size_t       max_body;
    int          timeout_s;
    const char * api_key;
    bool         cors;
    int          parallel;
    int          threads;
    int          ctx_size;
    const char * kv_policy;
    const char * kv_mode;     /* NULL = the library's default */
    int          kv_budget, kv_interval, kv_window, kv_sink;
    int          kv_recall, kv_recall_max_mib;  /* tier 2 (0 = off) */
    int          prefill_chunk;
    int          prefix_share;    /* --prefix-share: tokens a copy of another slot's cache must add (0 = off) */
    const char * calibration;
    const char * chat_format;
    bool         strict_tool_calls;  /* tool calls only in the chat format's own syntax */
    const char * model_path;
    const char * alias;
    int          max_conns;
    int          max_conns_per_ip;   /* 0: no limit */
    long long    max_held_bytes;     /* request bodies held server-wide, else 503 */
    const char * slot_save_path;   /* directory of POST /slots/{id} state files; NULL = off */
};

struct server {
    struct server_opts  o;
    triattn_model *     model;
    struct triattn_model_info info;
    struct slot_pool    pool;
    volatile int        stop;          /* set by SIGINT/SIGTERM */
    time_t              started;
    atomic_llong        requests_total, requests_failed, tokens_generated, prompt_tokens, id_counter;
    atomic_int          active_conns;
    atomic_int          reserved_conns;    /* connections served through the places kept for /health */
    atomic_llong        held_bytes;        /* bytes of request bodies being answered (max_held_bytes) */
    atomic_llong        decode_us_total;   /* generation wall time, for tokens/s */
};

/* Serves one accepted connection until it closes (keep-alive loop); closes fd. */
void api_serve_connection(struct server * srv, int fd);
/* A connection over the limits: one request with a short deadline; /health is answered, anything else gets
 * busy_status (503 or 429) with Retry-After. Closes fd. */
void api_serve_reserved(struct server * srv, int fd, int busy_status);

#endif
