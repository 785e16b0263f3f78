/*
 * slot_cache.c - the slots' prompt caches: which free slot a prompt goes to (the longest common prefix with the
 * tokens its session holds, when that prefix is at least half of them; ties and no match: the least recently
 * used) and slot state files (POST /slots/{id}).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "slots.h"

/* Tokens the session of an idle slot shares with tokens[0..n) from the start. */
static int32_t common_prefix(const triattn_session * s, const triattn_token * tokens, int32_t n, triattn_token * buf,
                             int32_t cap) {
    int32_t held = 0;
    if (triattn_session_tokens(s, buf, cap, &held) != TRIATTN_OK) return 0;
    const int32_t m = held < n ? held : n;
    int32_t k = 0;
    while (k < m && k < cap && buf[k] == tokens[k]) k++;
    return k;
}

struct slot * slot_cache_pick_locked(struct slot_pool * p, const triattn_token * tokens, int32_t n) {
    struct slot * best = NULL;
    int32_t best_len = -1;
    triattn_token * buf = NULL;
    int32_t cap = 0;
    if (tokens && n > 0) {
        cap = n;
        buf = malloc(sizeof *buf * (size_t)cap);   /* no buffer: every slot ties at 0 (LRU) */
    }
    for (int k = 0; k < p->n; k++) {
        struct slot * s = &p->slots[k];
        if (s->busy || s->pinned) continue;
        int32_t len = buf ? common_prefix(s->session, tokens, n, buf, cap) : 0;
        /* A match that would throw away most of a slot's cache (say a shared system prompt only) counts as none,
         * so a conversation keeps its slot while other prompts go to the least recently used one. */
        if (2 * (int64_t)len < triattn_session_n_past(s->session)) len = 0;
        if (len > best_len || (len == best_len && s->last_used < best->last_used)) {
            best = s;
            best_len = len;
        }
    }
    free(buf);
    return best;
}

triattn_token * slot_cache_tokenize(const triattn_model * model, const char * prompt, bool add_special,
                                    bool parse_special, int32_t * n) {
    const size_t len = strlen(prompt);
    if (len > (size_t)INT32_MAX - 8) return NULL;
    int32_t cap = (int32_t)len + 8;
    for (int attempt = 0; attempt < 2; attempt++) {
        triattn_token * t = malloc(sizeof *t * (size_t)cap);
        if (!t) return NULL;
        if (triattn_tokenize(model, prompt, (int32_t)len, add_special, parse_special, t, cap, n) != TRIATTN_OK) {
            free(t);
            return NULL;
        }
        if (*n <= cap) return t;
        free(t);
        cap = *n;
    }
    return NULL;
}

enum triattn_status slot_cache_file(struct slot_pool * p, int id, const char * path, bool save, char * err,
                                    size_t err_size) {
    if (id < 0 || id >= p->n) {
        snprintf(err, err_size, "slot %d does not exist (this server has %d)", id, p->n);
        return TRIATTN_ERR_INVALID_ARG;
    }
    struct slot * s = &p->slots[id];
    pthread_mutex_lock(&p->mu);
    while ((s->busy || s->pinned) && !*p->stop) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 200 * 1000000L;
        if (ts.tv_nsec >= 1000000000L) { ts.tv_sec++; ts.tv_nsec -= 1000000000L; }
        pthread_cond_timedwait(&p->cv, &p->mu, &ts);
    }
    if (*p->stop) {
        pthread_mutex_unlock(&p->mu);
        snprintf(err, err_size, "the server is shutting down");
        return TRIATTN_ERR_ABORTED;
    }
    s->busy = true;   /* held: no request is given this slot meanwhile */
    pthread_mutex_unlock(&p->mu);

    const enum triattn_status st = save ? triattn_session_save(s->session, path) : triattn_session_load(s->session, path);
    snprintf(err, err_size, "%s", st == TRIATTN_OK ? "" : triattn_session_last_error(s->session));

    pthread_mutex_lock(&p->mu);
    triattn_session_kv_stats(s->session, &s->kv);
    if (!save && st == TRIATTN_OK) {
        s->n_prompt = triattn_session_n_past(s->session);
        s->n_generated = 0;
    }
    s->busy = false;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    return st;
}
