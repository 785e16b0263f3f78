/* server_test.h - an in-process triattn-server for tests and fuzzers (header-only): options for a small setup, and
 * the slot pool started from them as the server's main does from its command line. Needs server.h. */
#ifndef TRI_SERVER_TEST_H
#define TRI_SERVER_TEST_H

#include <string.h>
#include <time.h>

/* Two slots of ctx_size tokens on 127.0.0.1, bodies up to 64 KiB, 5 s timeouts, 16 connections; callers change
 * what they need before srv_test_start. */
static inline void srv_test_opts(struct server_opts * o, const char * model_path, const char * alias, int ctx_size) {
    memset(o, 0, sizeof *o);
    o->host = "127.0.0.1";
    o->max_body = 1 << 16;
    o->timeout_s = 5;
    o->parallel = 2;
    o->ctx_size = ctx_size;
    o->model_path = model_path;
    o->alias = alias;
    o->max_conns = 16;
    o->max_held_bytes = 1 << 22;
    o->prefix_share = 8;   /* small prompts share prefixes too */
}

/* Starts srv's slot pool (srv->model loaded) from its options: one thread a slot, prompts prefilled 64 tokens a
 * step; a KV budget or interval left 0 takes the library's default, written back into the options. */
static inline enum triattn_status srv_test_start(struct server * srv, char * err, size_t err_size) {
    struct server_opts * o = &srv->o;
    struct triattn_session_params sp;
    triattn_session_params_init(&sp);
    sp.n_ctx = o->ctx_size;
    sp.n_threads = 1;
    sp.kv_policy = o->kv_policy;
    if (o->kv_budget) sp.kv_budget = o->kv_budget;
    if (o->kv_interval) sp.kv_interval = o->kv_interval;
    o->kv_budget = sp.kv_budget;
    o->kv_interval = sp.kv_interval;
    triattn_model_get_info(srv->model, &srv->info);
    srv->stop = 0;
    srv->started = time(NULL);
    return slots_init(&srv->pool, srv->model, o->parallel, &sp, 64, o->prefix_share, &srv->stop, err, err_size);
}

#endif
