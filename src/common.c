#include "common.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum triattn_status tri_fail(char * err, size_t n, enum triattn_status status, const char * fmt, ...) {
    if (err && n > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, n, fmt, ap);
        va_end(ap);
    }
    return status;
}

static struct {
    pthread_mutex_t        lock;
    triattn_log_fn         fn;
    void *                 user_data;
    enum triattn_log_level min_level;
} g_log = { PTHREAD_MUTEX_INITIALIZER, NULL, NULL, TRIATTN_LOG_WARN };

void triattn_log_set(triattn_log_fn fn, void * user_data, enum triattn_log_level min_level) {
    pthread_mutex_lock(&g_log.lock);
    g_log.fn        = fn;
    g_log.user_data = user_data;
    g_log.min_level = fn ? min_level : TRIATTN_LOG_WARN;
    pthread_mutex_unlock(&g_log.lock);
}

void tri_log(enum triattn_log_level level, const char * fmt, ...) {
    pthread_mutex_lock(&g_log.lock);
    triattn_log_fn fn = g_log.fn;
    void * ud = g_log.user_data;
    enum triattn_log_level min_level = g_log.min_level;
    pthread_mutex_unlock(&g_log.lock);
    if (level < min_level) {
        return;
    }
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (fn) {
        fn(level, msg, ud);
    } else {
        static const char * names[] = { "debug", "info", "warning", "error" };
        fprintf(stderr, "triattn %s: %s\n", names[level & 3], msg);
    }
}

double tri_time_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double) ts.tv_sec * 1e3 + (double) ts.tv_nsec * 1e-6;
}

/* ---- growable output --------------------------------------------------------------------------- */

void tri_gbuf_put(tri_gbuf * b, const char * s, size_t n) {
    if (b->oom || (n == 0 && b->p)) {
        return;
    }
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1) {
            cap *= 2;
        }
        char * p = realloc(b->p, cap);
        if (!p) {
            b->oom = true;
            return;
        }
        b->p   = p;
        b->cap = cap;
    }
    if (n > 0) {
        memcpy(b->p + b->len, s, n);
        b->len += n;
    }
    b->p[b->len] = '\0';
}

void tri_gbuf_str(tri_gbuf * b, const char * s) { tri_gbuf_put(b, s, strlen(s)); }

void tri_gbuf_free(tri_gbuf * b) {
    free(b->p);
    *b = (tri_gbuf){ 0 };
}
