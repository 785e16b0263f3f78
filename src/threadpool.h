/* Persistent worker threads. The caller is thread 0; workers spin briefly, then sleep, between jobs. */
#ifndef TRI_THREADPOOL_H
#define TRI_THREADPOOL_H

typedef struct tri_threadpool tri_threadpool;

/* A job: called once on every thread with its index ith in [0, nth). */
typedef void (*tri_task_fn)(void * arg, int ith, int nth);

/* n_threads >= 1 counts the caller. Returns NULL when threads cannot be started. */
tri_threadpool * tri_threadpool_create(int n_threads);
void             tri_threadpool_free(tri_threadpool * tp);
int              tri_threadpool_size(const tri_threadpool * tp);
/* Runs fn(arg, ith, nth) on all threads and returns when every thread has finished. */
void             tri_threadpool_run(tri_threadpool * tp, tri_task_fn fn, void * arg);

/* [*begin, *end) = the share of ith among nth of n items. */
static inline void tri_split(long n, int ith, int nth, long * begin, long * end) {
    long per = (n + nth - 1) / nth;
    *begin = per * ith < n ? per * ith : n;
    *end   = *begin + per < n ? *begin + per : n;
}

#endif
