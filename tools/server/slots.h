/*
 * slots.h - the server's pool of sessions ("slots") over one shared model, and the engine thread.
 *
 * Each slot owns one triattn_session. A request takes a free slot in arrival order (FIFO tickets),
 * submits its job and reads the text as it comes; requests wait while every slot is busy. One engine
 * thread owns every session: each step it starts the newly submitted jobs and advances all running ones
 * together with triattn_generate_next_batch (continuous batching: one forward step for every slot's next
 * token, new prompts prefilled in chunks between those steps). Everything shared is under the pool lock.
 */
#ifndef TRI_SRV_SLOTS_H
#define TRI_SRV_SLOTS_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "triattn.h"

enum job_state { JOB_IDLE, JOB_QUEUED, JOB_RUNNING, JOB_DONE };

/* One generated token with its log-probabilities (when the request asked for them). */
struct job_logprob {
    struct triattn_token_logprobs lp;
    size_t text_offset;   /* bytes of generated text released before this token */
};

struct slot_job {
    /* set by the request before slots_submit */
    const char * prompt;
    struct triattn_generate_params gp;
    int32_t      kv_budget;       /* 0 = the server's */
    bool         cache_prompt;    /* continue from the slot's cache when the prompt starts with its tokens */
    struct slot * fork_from;      /* with cache_prompt: first copy this slot's session (one the request holds too,
                                   * whose cache holds the prompt), so only a cut back remains */
    const triattn_token * tokens; /* with cache_prompt (optional): the prompt as the job will tokenize it, kept by the
                                   * request until it releases the slot; the engine then starts the job from a copy
                                   * of another slot's cache that holds more of it (the pool's share_min) */
    int32_t      n_tokens;
    /* written by the engine, read by the request (pool lock) */
    enum job_state state;
    bool         begun;           /* the prompt was accepted: the response can start */
    char *       text;            /* text released so far */
    size_t       len, cap;
    struct job_logprob * lps;     /* one per generated token when gp.logprobs > 0 */
    size_t       n_lp, cap_lp;
    enum triattn_status status;
    int          http_status;     /* for a failed start: 400 (bad request / context) or 500 */
    char         error[512];
    struct triattn_generate_result result;
    struct triattn_reuse_info reuse;  /* prompt tokens taken from the slot's cache */
    int          shared_from;     /* the slot whose cache the engine copied for this job, or -1 */
    int32_t      n_shared;        /* prompt tokens that copy gave beyond what the slot's own cache held */
    /* set by the request: stop generating (client gone, shutdown) */
    bool         cancel;
    /* set by the request (optional): the engine asks client_gone(client) before starting the job, and drops
     * it unstarted when the client went away; the request does not use the connection until `begun` */
    bool       (*client_gone)(void *);
    void *       client;
};

struct slot {
    int               id;
    triattn_session * session;
    bool              busy;
    pthread_cond_t    cv;          /* the engine signals new text or the end of the job */
    pthread_cond_t *  wake;        /* signalled with cv: the held slot's, when a request holds several */
    struct slot_job   job;
    /* snapshot for /slots and /metrics */
    struct triattn_kv_stats kv;
    int64_t           n_requests;
    int32_t           n_prompt;      /* current/last request */
    int32_t           n_generated;
    uint64_t          last_used;     /* acquisition order, for least-recently-used ties */
    int               pinned;        /* the engine copies this slot's session now: nobody takes the slot meanwhile */
};

struct slot_pool {
    pthread_mutex_t mu;
    pthread_cond_t  cv;            /* a slot became free */
    pthread_cond_t  engine_cv;     /* a job was submitted or cancelled */
    struct slot *   slots;
    int             n;
    uint64_t        next_ticket;   /* FIFO: the ticket handed to the next waiter */
    uint64_t        serving;       /* the ticket allowed to take a slot now */
    int             n_waiting;
    int32_t         prefill_chunk; /* prompt tokens a slot prefills per engine step */
    int32_t         kv_budget;     /* the server's default budget (compressing policies) */
    int32_t         share_min;     /* a job starts from a copy of another slot's cache when that holds at least this
                                    * many more of its prompt's tokens than its own slot (0: never) */
    int64_t         n_shares;      /* such copies so far */
    int64_t         shared_tokens; /* prompt tokens they gave (not prefilled) */
    bool            compressing;   /* the sessions' policy evicts (per-request kv_budget is allowed) */
    int64_t         n_steps;       /* engine steps so far */
    int64_t         rows_total;    /* slots advanced, summed over steps (mean batch = rows / steps) */
    uint64_t        n_acquired;    /* slot acquisitions so far (slot.last_used clock) */
    pthread_t       engine;
    bool            engine_started;
    bool            engine_done;   /* the engine thread has exited: new jobs end at once */
    volatile int *  stop;
    uint64_t *      left;          /* tickets of waiters that left the queue (skipped when served) */
    uint64_t        n_released;    /* slots given back so far */
    int             n_left, cap_left;
    struct {                       /* the engine thread's step, n of each (allocated with the pool) */
        struct slot **        starting, ** active;
        triattn_session **    ss;
        const char **         text;
        size_t *              len;
        bool *                done;
        enum triattn_status * st;
    } step;
};

/* Creates n sessions with params sp and starts the engine thread (stops when *stop becomes non-zero); share_min:
 * see slot_pool. Returns TRIATTN_OK or the error (message in err). */
enum triattn_status slots_init(struct slot_pool * p, const triattn_model * model, int n,
                               const struct triattn_session_params * sp, int32_t prefill_chunk, int32_t share_min,
                               volatile int * stop,
                               char * err, size_t err_size);
/* Stops the engine and frees the sessions (after every request has released its slot). */
void slots_free(struct slot_pool * p);
/* Waits for a free slot in arrival order. NULL when *stop becomes non-zero (shutdown). */
struct slot * slots_acquire(struct slot_pool * p);
/* Waits for a free slot, choosing among the free ones with slot_cache_pick_locked (n == 0: the least recently
 * used), but gives up its place (NULL, *left = true) as soon as gone(arg) says the client went away, checked
 * while waiting and once more before a slot is taken; gone is called without the pool lock. */
struct slot * slots_acquire_unless(struct slot_pool * p, const triattn_token * tokens, int32_t n, bool (*gone)(void *),
                                   void * arg, bool * left);

/* For a request that holds a slot and wants more (its n choices): a free slot now, without waiting, and only while
 * no request is queued; chosen as slots_acquire_unless chooses. The engine signals wake whenever it signals the
 * slot. NULL when none is free. */
struct slot * slots_take_free(struct slot_pool * p, const triattn_token * tokens, int32_t n, pthread_cond_t * wake);
/* Waits on slot s's signal (and so on the slots that wake it) for at most timeout_ms. Pool lock held. */
void slots_sleep_locked(struct slot_pool * p, struct slot * s, int timeout_ms);

/* ---- slot cache (slot_cache.c) ---- */

/* The free slot for a prompt of tokens[0..n): the longest common prefix with its session's tokens among slots
 * that keep at least half of their tokens that way; ties and no such slot: the least recently used. Call with
 * the pool lock held; NULL when every slot is busy (or pinned: being copied). */
struct slot * slot_cache_pick_locked(struct slot_pool * p, const triattn_token * tokens, int32_t n);
/* Tokenizes prompt as the generation will (add_special / parse_special) into a malloc'd array; NULL on failure. */
triattn_token * slot_cache_tokenize(const triattn_model * model, const char * prompt, bool add_special,
                                    bool parse_special, int32_t * n);
/* Saves (save = true) or restores slot id's session to / from path once the slot is free, holding it meanwhile.
 * Returns the status; err holds the message. */
enum triattn_status slot_cache_file(struct slot_pool * p, int id, const char * path, bool save, char * err,
                                    size_t err_size);
/* Hands the slot's job (prompt, gp, kv_budget filled in) to the engine; its output fields start empty, so a
 * request may submit again to the slot it holds once the last job is done. */
void slots_submit(struct slot_pool * p, struct slot * s);
/* Waits up to timeout_ms for the job to have more than `have` bytes of text or to end; returns its state.
 * Call with the pool lock held (pthread_mutex_lock(&p->mu)). */
enum job_state slots_wait_locked(struct slot_pool * p, struct slot * s, size_t have, size_t have_lp, int timeout_ms);
/* Asks the engine to stop the job (client gone); it ends at the next step. */
void slots_cancel(struct slot_pool * p, struct slot * s);
void slots_cancel_locked(struct slot_pool * p, struct slot * s);
/* Gives the slot back once its job has ended (waits for the engine to let go of it). */
void slots_release(struct slot_pool * p, struct slot * s);

#endif
