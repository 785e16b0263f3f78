#include "threadpool.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>

#if defined(__x86_64__) || defined(__i386__)
#  include <immintrin.h>
#  define TRI_PAUSE() _mm_pause()
#else
#  define TRI_PAUSE() ((void) 0)
#endif

/* Waiting: busy-spin briefly (a job usually follows within microseconds during decode), then yield the
 * core so an oversubscribed machine still makes progress, then (workers only) sleep. */
#define TRI_SPIN_PAUSES 2000
#define TRI_SPIN_YIELDS 20000

struct tri_worker {
    tri_threadpool * tp;
    int              ith;
    pthread_t        thread;
};

struct tri_threadpool {
    int                 n_threads;
    struct tri_worker * workers;   /* n_threads - 1 entries */
    int                 n_started;

    tri_task_fn         fn;
    void *              arg;
    atomic_uint         generation; /* bumped once per job */
    atomic_int          pending;    /* workers still running the current job */
    atomic_int          stop;

    pthread_mutex_t     lock;
    pthread_cond_t      wake;
    atomic_int          n_sleeping;
};

static void * tri_worker_main(void * p) {
    struct tri_worker * w = p;
    tri_threadpool * tp = w->tp;
    unsigned seen = 0; /* no job can have started before this worker existed */
    for (;;) {
        int spins = 0;
        while (atomic_load_explicit(&tp->generation, memory_order_acquire) == seen && !atomic_load(&tp->stop)) {
            if (++spins < TRI_SPIN_PAUSES) {
                TRI_PAUSE();
                continue;
            }
            if (spins < TRI_SPIN_PAUSES + TRI_SPIN_YIELDS) {
                sched_yield();
                continue;
            }
            pthread_mutex_lock(&tp->lock);
            atomic_fetch_add(&tp->n_sleeping, 1);
            while (atomic_load(&tp->generation) == seen && !atomic_load(&tp->stop)) {
                pthread_cond_wait(&tp->wake, &tp->lock);
            }
            atomic_fetch_sub(&tp->n_sleeping, 1);
            pthread_mutex_unlock(&tp->lock);
        }
        if (atomic_load(&tp->stop)) {
            return NULL;
        }
        seen = atomic_load(&tp->generation);
        tp->fn(tp->arg, w->ith, tp->n_threads);
        atomic_fetch_sub_explicit(&tp->pending, 1, memory_order_release);
    }
}

tri_threadpool * tri_threadpool_create(int n_threads) {
    if (n_threads < 1) {
        n_threads = 1;
    }
    tri_threadpool * tp = calloc(1, sizeof *tp);
    if (!tp) {
        return NULL;
    }
    tp->n_threads = n_threads;
    pthread_mutex_init(&tp->lock, NULL);
    pthread_cond_init(&tp->wake, NULL);
    if (n_threads > 1) {
        tp->workers = calloc((size_t) n_threads - 1, sizeof *tp->workers);
        if (!tp->workers) {
            tri_threadpool_free(tp);
            return NULL;
        }
        for (int i = 1; i < n_threads; i++) {
            struct tri_worker * w = &tp->workers[i - 1];
            w->tp  = tp;
            w->ith = i;
            if (pthread_create(&w->thread, NULL, tri_worker_main, w) != 0) {
                tri_threadpool_free(tp);
                return NULL;
            }
            tp->n_started++;
        }
    }
    return tp;
}

void tri_threadpool_free(tri_threadpool * tp) {
    if (!tp) {
        return;
    }
    pthread_mutex_lock(&tp->lock);
    atomic_store(&tp->stop, 1);
    pthread_cond_broadcast(&tp->wake);
    pthread_mutex_unlock(&tp->lock);
    for (int i = 0; i < tp->n_started; i++) {
        pthread_join(tp->workers[i].thread, NULL);
    }
    pthread_mutex_destroy(&tp->lock);
    pthread_cond_destroy(&tp->wake);
    free(tp->workers);
    free(tp);
}

int tri_threadpool_size(const tri_threadpool * tp) {
    return tp->n_threads;
}

void tri_threadpool_run(tri_threadpool * tp, tri_task_fn fn, void * arg) {
    if (tp->n_threads == 1) {
        fn(arg, 0, 1);
        return;
    }
    tp->fn  = fn;
    tp->arg = arg;
    atomic_store(&tp->pending, tp->n_threads - 1);
    atomic_fetch_add_explicit(&tp->generation, 1, memory_order_release);
    if (atomic_load(&tp->n_sleeping) > 0) {
        pthread_mutex_lock(&tp->lock);
        pthread_cond_broadcast(&tp->wake);
        pthread_mutex_unlock(&tp->lock);
    }
    fn(arg, 0, tp->n_threads);
    for (int spins = 0; atomic_load_explicit(&tp->pending, memory_order_acquire) > 0; spins++) {
        if (spins < TRI_SPIN_PAUSES) {
            TRI_PAUSE();
        } else {
            sched_yield();
        }
    }
}
