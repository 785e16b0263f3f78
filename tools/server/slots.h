/*
 * slots.h - the server's pool of sessions ("slots") over one shared model.
 *
 * Each slot owns one triattn_session. A request takes a free slot in arrival order (FIFO tickets) and
 * gives it back when done; requests wait while every slot is busy. A slot's session is used by one
 * thread at a time (the one holding it); others read only the snapshot fields under the pool lock.
 */
#ifndef TRI_SRV_SLOTS_H
#define TRI_SRV_SLOTS_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "triattn.h"

struct slot {
    int               id;
    triattn_session * session;
    bool              busy;
    /* snapshot for /slots and /metrics, written by the holder under the pool lock */
    struct triattn_kv_stats kv;
    int64_t           n_requests;
    int32_t           n_prompt;      /* current/last request */
    int32_t           n_generated;
};

struct slot_pool {
    pthread_mutex_t mu;
    pthread_cond_t  cv;
    struct slot *   slots;
    int             n;
    uint64_t        next_ticket;   /* FIFO: the ticket handed to the next waiter */
    uint64_t        serving;       /* the ticket allowed to take a slot now */
    int             n_waiting;
};

/* Creates n sessions with params sp. Returns TRIATTN_OK or the error (message in err). */
enum triattn_status slots_init(struct slot_pool * p, const triattn_model * model, int n,
                               const struct triattn_session_params * sp, char * err, size_t err_size);
void slots_free(struct slot_pool * p);
/* Waits for a free slot in arrival order. NULL when *stop becomes non-zero (shutdown). */
struct slot * slots_acquire(struct slot_pool * p, const volatile int * stop);
void slots_release(struct slot_pool * p, struct slot * s);
/* Refreshes the slot's KV snapshot and counters (called by the holder). */
void slots_snapshot(struct slot_pool * p, struct slot * s, int32_t n_prompt, int32_t n_generated);

#endif
