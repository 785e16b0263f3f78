/* slots.c - FIFO pool of sessions (see slots.h). */
#include "slots.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum triattn_status slots_init(struct slot_pool * p, const triattn_model * model, int n,
                               const struct triattn_session_params * sp, char * err, size_t err_size) {
    memset(p, 0, sizeof *p);
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    p->slots = calloc((size_t)n, sizeof *p->slots);
    if (!p->slots) { snprintf(err, err_size, "out of memory for %d slots", n); return TRIATTN_ERR_OOM; }
    for (int k = 0; k < n; k++) {
        enum triattn_status st = triattn_session_create(model, sp, &p->slots[k].session, err, err_size);
        if (st != TRIATTN_OK) { p->n = k; slots_free(p); return st; }
        p->slots[k].id = k;
        triattn_session_kv_stats(p->slots[k].session, &p->slots[k].kv);
    }
    p->n = n;
    return TRIATTN_OK;
}

void slots_free(struct slot_pool * p) {
    for (int k = 0; k < p->n; k++) triattn_session_free(p->slots[k].session);
    free(p->slots);
    p->slots = NULL;
    p->n = 0;
    pthread_cond_destroy(&p->cv);
    pthread_mutex_destroy(&p->mu);
}

struct slot * slots_acquire(struct slot_pool * p, const volatile int * stop) {
    pthread_mutex_lock(&p->mu);
    uint64_t ticket = p->next_ticket++;
    p->n_waiting++;
    struct slot * got = NULL;
    for (;;) {
        if (*stop) break;
        if (ticket == p->serving) {
            for (int k = 0; k < p->n && !got; k++) if (!p->slots[k].busy) got = &p->slots[k];
            if (got) break;
        }
        /* bounded wait so shutdown is noticed */
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 200 * 1000000L;
        if (ts.tv_nsec >= 1000000000L) { ts.tv_sec++; ts.tv_nsec -= 1000000000L; }
        pthread_cond_timedwait(&p->cv, &p->mu, &ts);
    }
    p->n_waiting--;
    if (got) {
        got->busy = true;
        got->n_requests++;
        got->n_prompt = got->n_generated = 0;
        p->serving++;
        pthread_cond_broadcast(&p->cv);  /* the next ticket may take another free slot */
    }
    pthread_mutex_unlock(&p->mu);
    return got;
}

void slots_release(struct slot_pool * p, struct slot * s) {
    struct triattn_kv_stats kv;
    triattn_session_kv_stats(s->session, &kv);
    pthread_mutex_lock(&p->mu);
    s->kv = kv;
    s->busy = false;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
}

void slots_snapshot(struct slot_pool * p, struct slot * s, int32_t n_prompt, int32_t n_generated) {
    struct triattn_kv_stats kv;
    triattn_session_kv_stats(s->session, &kv);
    pthread_mutex_lock(&p->mu);
    s->kv = kv;
    s->n_prompt = n_prompt;
    s->n_generated = n_generated;
    pthread_mutex_unlock(&p->mu);
}
