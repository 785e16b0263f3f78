/* slots.c - the FIFO pool of sessions and the engine thread that batches them (see slots.h). */
#include "slots.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void deadline_in(struct timespec * ts, int ms) {
    clock_gettime(CLOCK_REALTIME, ts);
    ts->tv_sec += ms / 1000;
    ts->tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) { ts->tv_sec++; ts->tv_nsec -= 1000000000L; }
}

/* ---- engine ---- */

static bool job_append(struct slot_job * j, const char * text, size_t len) {
    if (j->len + len + 1 > j->cap) {
        size_t cap = j->cap ? j->cap : 1024;
        while (cap < j->len + len + 1) cap *= 2;
        char * t = realloc(j->text, cap);
        if (!t) return false;
        j->text = t;
        j->cap = cap;
    }
    memcpy(j->text + j->len, text, len);
    j->len += len;
    j->text[j->len] = '\0';
    return true;
}

static bool job_add_logprob(struct slot_job * j, const struct triattn_token_logprobs * lp, size_t offset) {
    if (j->n_lp == j->cap_lp) {
        size_t cap = j->cap_lp ? j->cap_lp * 2 : 64;
        struct job_logprob * t = realloc(j->lps, cap * sizeof *t);
        if (!t) return false;
        j->lps = t;
        j->cap_lp = cap;
    }
    j->lps[j->n_lp].lp = *lp;
    j->lps[j->n_lp].text_offset = offset;
    j->n_lp++;
    return true;
}

static int32_t job_budget(const struct slot_pool * p, const struct slot_job * j) {
    return j->kv_budget > 0 ? j->kv_budget : p->kv_budget;
}

/* ---- prefix sharing: a job starts from a copy of another slot's cache that holds more of its prompt ---- */

static bool share_applies(const struct slot_pool * p, const struct slot_job * j) {
    return p->share_min > 0 && j->cache_prompt && !j->fork_from && j->tokens && j->n_tokens > 0;
}

/* The prompt tokens job j's own slot would keep: none when the job changes a compressing cache's budget. */
static int32_t share_have(const struct slot_pool * p, const struct slot * own) {
    if (p->compressing && triattn_session_kv_budget(own->session) != job_budget(p, &own->job)) return 0;
    return triattn_session_reusable(own->session, own->job.tokens, own->job.n_tokens);
}

/* Whether the engine may read slot s's session between steps: a free slot, or one whose job has begun or ended.
 * A slot held without a running job (a job not started yet, embeddings, a slot file) is its request's. */
static bool share_readable_locked(const struct slot * s) {
    return !s->busy || s->job.state == JOB_DONE || (s->job.state == JOB_RUNNING && s->job.begun);
}

/* Whether queued job j of slot own waits: another slot is prefilling a prompt that shares at least share_min more
 * tokens with j's than own's cache gives (have) and has not got that far yet; j then starts from a copy of it
 * instead of prefilling the same tokens beside it. Prompts long enough to be compressed while prefilled are not
 * waited for (their cache would not cut back to the shared part). */
static bool share_wait_locked(const struct slot_pool * p, const struct slot * own, int32_t have) {
    const struct slot_job * j = &own->job;
    for (int k = 0; k < p->n; k++) {
        const struct slot * s = &p->slots[k];
        const struct slot_job * o = &s->job;
        if (s == own || o->state != JOB_RUNNING || o->cancel || !o->cache_prompt || !o->tokens ||
            o->result.n_generated > 0) continue;
        if (p->compressing && (job_budget(p, o) != job_budget(p, j) || o->n_tokens > job_budget(p, o))) continue;
        int32_t c = 0;
        while (c < o->n_tokens && c < j->n_tokens - 1 && o->tokens[c] == j->tokens[c]) c++;
        if (c - have < p->share_min) continue;
        if (o->begun && triattn_session_n_past(s->session) >= c) continue;   /* far enough: copied at once */
        return true;
    }
    return false;
}

/* For job j of slot own about to start: the readable slot whose cache gives the most of its prompt, when that is
 * at least share_min tokens more than own's (have): j copies it first (pinned meanwhile). A copy takes the whole
 * cache, at a small fraction of the time prefilling takes per token, so the gain must also be at least 1/16 of the
 * live slots copied. */
static void share_pick_locked(struct slot_pool * p, struct slot * own, int32_t have) {
    struct slot_job * j = &own->job;
    struct slot * best = NULL;
    int32_t best_n = have + p->share_min - 1;
    for (int k = 0; k < p->n; k++) {
        struct slot * s = &p->slots[k];
        if (s == own || !share_readable_locked(s) ||
            (p->compressing && triattn_session_kv_budget(s->session) != job_budget(p, j))) continue;
        const int32_t n = triattn_session_reusable(s->session, j->tokens, j->n_tokens);
        if (n <= best_n) continue;
        struct triattn_kv_stats kv;
        triattn_session_kv_stats(s->session, &kv);
        if (16 * (int64_t)(n - have) < kv.live_max) continue;
        best = s;
        best_n = n;
    }
    if (!best) return;
    j->fork_from = best;
    j->shared_from = best->id;
    j->n_shared = have;   /* until the job has started: then what the copy gave beyond it */
    best->pinned++;
}

/* Starts a submitted job on its session (engine thread, no lock held). */
static void job_start(struct slot_pool * p, struct slot * sl) {
    struct slot_job * j = &sl->job;
    triattn_session * s = sl->session;
    if (!j->cache_prompt) triattn_session_reset(s);
    /* (a failed copy leaves the session as it was: the prompt is then prefilled here) */
    if (j->cache_prompt && j->fork_from) (void)triattn_session_copy(s, j->fork_from->session);
    enum triattn_status st = TRIATTN_OK;
    if (p->compressing) {
        st = triattn_session_set_kv_budget(s, job_budget(p, j));
    }
    j->gp.prefill_chunk = p->prefill_chunk;
    if (st == TRIATTN_OK) {
        st = j->cache_prompt ? triattn_generate_begin_cached(s, j->prompt, &j->gp) : triattn_generate_begin(s, j->prompt, &j->gp);
        triattn_generate_get_reuse(s, &j->reuse);
    }
    if (st != TRIATTN_OK) {
        j->status = st;
        j->http_status = (st == TRIATTN_ERR_INVALID_ARG || st == TRIATTN_ERR_CONTEXT) ? 400 : 500;
        snprintf(j->error, sizeof j->error, "%s", triattn_session_last_error(s));
        triattn_generate_get_result(s, &j->result);
    }
}

/* Wakes the request that follows the slot (and the one whose other slot it is working for). */
static void slot_signal(struct slot * sl) {
    pthread_cond_broadcast(&sl->cv);
    if (sl->wake) pthread_cond_broadcast(sl->wake);
}

/* Forgets what the engine wrote for the slot's last job (text, logprobs, status, result). */
static void job_clear_output(struct slot_job * j) {
    j->len = 0;
    if (j->text) j->text[0] = '\0';
    j->n_lp = 0;
    j->status = TRIATTN_OK;
    j->http_status = 0;
    j->error[0] = '\0';
    j->cancel = false;
    j->begun = false;
    j->shared_from = -1;
    j->n_shared = 0;
    memset(&j->result, 0, sizeof j->result);
    memset(&j->reuse, 0, sizeof j->reuse);
}

/* A job whose client went away before it started ends unstarted (no tokenization, no prefill). */
static bool job_client_gone(struct slot * sl) {
    struct slot_job * j = &sl->job;
    if (!j->client_gone || !j->client_gone(j->client)) return false;
    j->result.stop_reason = TRIATTN_STOP_CALLBACK;
    return true;
}

static void slot_snapshot_locked(struct slot * sl) {
    triattn_session_kv_stats(sl->session, &sl->kv);
    sl->n_prompt = sl->job.result.n_prompt_tokens;
    sl->n_generated = sl->job.result.n_generated;
}

static void * engine_main(void * arg) {
    struct slot_pool * p = arg;
    const int n = p->n;
    struct slot ** starting = p->step.starting, ** active = p->step.active;
    triattn_session ** ss = p->step.ss;
    const char ** text = p->step.text;
    size_t * len = p->step.len;
    bool * done = p->step.done;
    enum triattn_status * st = p->step.st;
    for (;;) {
        int n_start = 0, n_active = 0;
        pthread_mutex_lock(&p->mu);
        for (;;) {
            for (int k = 0; k < n; k++) {
                struct slot * sl = &p->slots[k];
                if (sl->job.state == JOB_QUEUED && sl->job.cancel) {
                    sl->job.result.stop_reason = TRIATTN_STOP_CALLBACK;   /* dropped before any work */
                    sl->job.state = JOB_DONE;
                    slot_signal(sl);
                } else if (sl->job.state == JOB_QUEUED) {
                    const bool share = share_applies(p, &sl->job);
                    const int32_t have = share ? share_have(p, sl) : 0;
                    if (share && share_wait_locked(p, sl, have)) continue;
                    sl->job.state = JOB_RUNNING;
                    if (share) share_pick_locked(p, sl, have);
                    starting[n_start++] = sl;
                } else if (sl->job.state == JOB_RUNNING && sl->job.cancel) {
                    sl->job.result.stop_reason = TRIATTN_STOP_CALLBACK;
                    sl->job.state = JOB_DONE;
                    slot_snapshot_locked(sl);
                    slot_signal(sl);
                } else if (sl->job.state == JOB_RUNNING) {
                    active[n_active++] = sl;
                }
            }
            if (n_start + n_active > 0 || *p->stop) break;
            struct timespec ts;
            deadline_in(&ts, 200);
            pthread_cond_timedwait(&p->engine_cv, &p->mu, &ts);
        }
        pthread_mutex_unlock(&p->mu);
        if (*p->stop) break;

        /* Starting a job only tokenizes (prompts are prefilled by the steps). */
        for (int k = 0; k < n_start; k++) {
            if (job_client_gone(starting[k])) continue;
            job_start(p, starting[k]);
            /* once more after tokenizing a long prompt: a client that left meanwhile costs no prefill */
            if (starting[k]->job.status == TRIATTN_OK && !job_client_gone(starting[k])) active[n_active++] = starting[k];
        }
        if (n_start) {
            pthread_mutex_lock(&p->mu);
            for (int k = 0; k < n_start; k++) {
                struct slot_job * j = &starting[k]->job;
                if (j->shared_from >= 0) {
                    if (--p->slots[j->shared_from].pinned == 0) pthread_cond_broadcast(&p->cv);
                    j->n_shared = j->reuse.n_cached > j->n_shared ? j->reuse.n_cached - j->n_shared : 0;
                    p->n_shares += j->n_shared > 0;
                    p->shared_tokens += j->n_shared;
                    if (j->n_shared == 0) j->shared_from = -1;   /* the copy failed, or gave nothing */
                }
                if (starting[k]->job.status != TRIATTN_OK || starting[k]->job.result.stop_reason == TRIATTN_STOP_CALLBACK)
                    starting[k]->job.state = JOB_DONE;
                else starting[k]->job.begun = true;
                slot_signal(starting[k]);
            }
            pthread_mutex_unlock(&p->mu);
        }
        if (n_active == 0) continue;
        /* Slot order, so the step's lead session (whose threads run it) stays the same while it is busy. */
        for (int a = 1; a < n_active; a++) {
            for (int b = a; b > 0 && active[b]->id < active[b - 1]->id; b--) {
                struct slot * t = active[b]; active[b] = active[b - 1]; active[b - 1] = t;
            }
        }
        for (int k = 0; k < n_active; k++) ss[k] = active[k]->session;
        triattn_generate_next_batch(ss, n_active, text, len, done, st);

        pthread_mutex_lock(&p->mu);
        p->n_steps++;
        p->rows_total += n_active;
        for (int k = 0; k < n_active; k++) {
            struct slot * sl = active[k];
            struct slot_job * j = &sl->job;
            const int32_t before = j->result.n_generated;
            triattn_generate_get_result(sl->session, &j->result);
            bool ok = st[k] == TRIATTN_OK;
            struct triattn_token_logprobs lp;
            if (ok && j->gp.logprobs > 0 && j->result.n_generated > before &&
                triattn_generate_last_logprobs(sl->session, &lp) == TRIATTN_OK) {
                ok = job_add_logprob(j, &lp, j->len);
            }
            if (ok && len[k]) ok = job_append(j, text[k], len[k]);
            if (!ok) {
                j->status = st[k] != TRIATTN_OK ? st[k] : TRIATTN_ERR_OOM;
                j->http_status = 500;
                snprintf(j->error, sizeof j->error, "%s",
                         st[k] != TRIATTN_OK ? triattn_session_last_error(sl->session) : "out of memory");
            }
            if (!ok || done[k]) {
                j->state = JOB_DONE;
                slot_snapshot_locked(sl);
            } else if ((j->result.n_generated & 15) == 0) {
                slot_snapshot_locked(sl);
            }
            if (!ok || done[k] || len[k]) slot_signal(sl);
        }
        pthread_mutex_unlock(&p->mu);
    }
    /* shutdown: every job still running ends now */
    pthread_mutex_lock(&p->mu);
    p->engine_done = true;
    for (int k = 0; k < n; k++) {
        if (p->slots[k].job.state == JOB_QUEUED || p->slots[k].job.state == JOB_RUNNING) {
            p->slots[k].job.state = JOB_DONE;
            p->slots[k].job.result.stop_reason = TRIATTN_STOP_CALLBACK;
            slot_signal(&p->slots[k]);
        }
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

/* ---- pool ---- */

enum triattn_status slots_init(struct slot_pool * p, const triattn_model * model, int n,
                               const struct triattn_session_params * sp, int32_t prefill_chunk, int32_t share_min,
                               volatile int * stop,
                               char * err, size_t err_size) {
    memset(p, 0, sizeof *p);
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    pthread_cond_init(&p->engine_cv, NULL);
    p->stop = stop;
    p->slots = calloc((size_t)n, sizeof *p->slots);
    p->step.starting = calloc((size_t)n, sizeof *p->step.starting);
    p->step.active = calloc((size_t)n, sizeof *p->step.active);
    p->step.ss = calloc((size_t)n, sizeof *p->step.ss);
    p->step.text = calloc((size_t)n, sizeof *p->step.text);
    p->step.len = calloc((size_t)n, sizeof *p->step.len);
    p->step.done = calloc((size_t)n, sizeof *p->step.done);
    p->step.st = calloc((size_t)n, sizeof *p->step.st);
    if (!p->slots || !p->step.starting || !p->step.active || !p->step.ss || !p->step.text || !p->step.len ||
        !p->step.done || !p->step.st) {
        slots_free(p);
        snprintf(err, err_size, "out of memory for %d slots", n);
        return TRIATTN_ERR_OOM;
    }
    for (int k = 0; k < n; k++) {
        enum triattn_status st = triattn_session_create(model, sp, &p->slots[k].session, err, err_size);
        if (st != TRIATTN_OK) { p->n = k; slots_free(p); return st; }
        p->slots[k].id = k;
        pthread_cond_init(&p->slots[k].cv, NULL);
        triattn_session_kv_stats(p->slots[k].session, &p->slots[k].kv);
        p->n = k + 1;
    }
    p->kv_budget = sp->kv_budget;
    p->compressing = p->slots[0].kv.capacity < triattn_session_n_ctx(p->slots[0].session);
    /* A compressing cache takes at most kv_interval tokens between rounds. */
    p->prefill_chunk = prefill_chunk;
    p->share_min = share_min;
    if (p->compressing && p->prefill_chunk > sp->kv_interval) p->prefill_chunk = sp->kv_interval;
    if (pthread_create(&p->engine, NULL, engine_main, p) != 0) {
        snprintf(err, err_size, "cannot start the engine thread: %s", strerror(errno));
        slots_free(p);
        return TRIATTN_ERR_OOM;
    }
    p->engine_started = true;
    return TRIATTN_OK;
}

void slots_free(struct slot_pool * p) {
    if (p->engine_started) {
        *p->stop = 1;
        pthread_mutex_lock(&p->mu);
        pthread_cond_broadcast(&p->engine_cv);
        pthread_mutex_unlock(&p->mu);
        pthread_join(p->engine, NULL);
        p->engine_started = false;
    }
    for (int k = 0; k < p->n; k++) {
        triattn_session_free(p->slots[k].session);
        pthread_cond_destroy(&p->slots[k].cv);
        free(p->slots[k].job.text);
        free(p->slots[k].job.lps);
    }
    free(p->slots);
    p->slots = NULL;
    free(p->step.starting); free(p->step.active); free(p->step.ss); free(p->step.text); free(p->step.len);
    free(p->step.done); free(p->step.st);
    memset(&p->step, 0, sizeof p->step);
    free(p->left);
    p->left = NULL;
    p->n_left = p->cap_left = 0;
    p->n = 0;
    pthread_cond_destroy(&p->cv);
    pthread_cond_destroy(&p->engine_cv);
    pthread_mutex_destroy(&p->mu);
}

/* The queue moves on to the next ticket, past those whose waiters left. */
static void serve_next_locked(struct slot_pool * p) {
    p->serving++;
    for (int k = 0; k < p->n_left;) {
        if (p->left[k] == p->serving) { p->left[k] = p->left[--p->n_left]; p->serving++; k = 0; }
        else k++;
    }
}

/* Calls gone(arg) with the pool lock released. */
static bool client_gone_locked(struct slot_pool * p, bool (*gone)(void *), void * arg) {
    if (!gone) return false;
    pthread_mutex_unlock(&p->mu);
    bool g = gone(arg);
    pthread_mutex_lock(&p->mu);
    return g;
}

/* Marks a free slot as the caller's, its job empty. */
static void slot_take_locked(struct slot_pool * p, struct slot * got) {
    got->busy = true;
    got->n_requests++;
    got->last_used = ++p->n_acquired;
    got->n_prompt = got->n_generated = 0;
    got->wake = NULL;
    struct slot_job * j = &got->job;
    j->state = JOB_IDLE;
    job_clear_output(j);
    j->kv_budget = 0;
    j->client_gone = NULL;
    j->client = NULL;
    j->cache_prompt = false;
    j->fork_from = NULL;
    j->tokens = NULL;
    j->n_tokens = 0;
}

struct slot * slots_take_free(struct slot_pool * p, const triattn_token * tokens, int32_t n, pthread_cond_t * wake) {
    pthread_mutex_lock(&p->mu);
    struct slot * got = NULL;
    if (!*p->stop && p->n_waiting == 0) got = slot_cache_pick_locked(p, tokens, n);
    if (got) {
        slot_take_locked(p, got);
        got->wake = wake;
    }
    pthread_mutex_unlock(&p->mu);
    return got;
}

void slots_sleep_locked(struct slot_pool * p, struct slot * s, int timeout_ms) {
    struct timespec ts;
    deadline_in(&ts, timeout_ms);
    pthread_cond_timedwait(&s->cv, &p->mu, &ts);
}

struct slot * slots_acquire(struct slot_pool * p) { return slots_acquire_unless(p, NULL, 0, NULL, NULL, NULL); }

struct slot * slots_acquire_unless(struct slot_pool * p, const triattn_token * tokens, int32_t n, bool (*gone)(void *),
                                   void * arg, bool * left) {
    if (left) *left = false;
    pthread_mutex_lock(&p->mu);
    uint64_t ticket = p->next_ticket++;
    p->n_waiting++;
    struct slot * got = NULL;
    for (;;) {
        if (*p->stop) break;
        /* gone() runs unlocked: a wake-up missed meanwhile shows as a change of these */
        const uint64_t serving_seen = p->serving, releases_seen = p->n_released;
        if (ticket == p->serving) {
            got = slot_cache_pick_locked(p, tokens, n);
            /* the slot is ours while our ticket is served: nobody takes it while the check runs */
            if (client_gone_locked(p, gone, arg)) { got = NULL; if (left) *left = true; break; }
            if (got) break;
        } else if (client_gone_locked(p, gone, arg)) {
            /* leave the queue now: the ticket is skipped when its turn comes */
            if (p->n_left == p->cap_left) {
                int cap = p->cap_left ? p->cap_left * 2 : 16;
                uint64_t * t = realloc(p->left, (size_t)cap * sizeof *t);
                if (t) { p->left = t; p->cap_left = cap; }
            }
            if (p->n_left < p->cap_left && ticket != p->serving) {
                p->left[p->n_left++] = ticket;
                p->n_waiting--;
                if (left) *left = true;
                pthread_mutex_unlock(&p->mu);
                return NULL;
            }
            if (ticket == p->serving) { if (left) *left = true; break; }
        }
        if (gone && (p->serving != serving_seen || p->n_released != releases_seen)) continue;
        /* bounded wait so shutdown is noticed */
        struct timespec ts;
        deadline_in(&ts, 200);
        pthread_cond_timedwait(&p->cv, &p->mu, &ts);
    }
    p->n_waiting--;
    if (got) slot_take_locked(p, got);
    /* the next ticket may take another free slot; a skipped ticket (shutdown) must not block the queue */
    serve_next_locked(p);
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    return got;
}

void slots_submit(struct slot_pool * p, struct slot * s) {
    pthread_mutex_lock(&p->mu);
    job_clear_output(&s->job);
    s->job.state = p->engine_done ? JOB_DONE : JOB_QUEUED;
    if (p->engine_done) s->job.result.stop_reason = TRIATTN_STOP_CALLBACK;
    pthread_cond_signal(&p->engine_cv);
    pthread_mutex_unlock(&p->mu);
}

enum job_state slots_wait_locked(struct slot_pool * p, struct slot * s, size_t have, size_t have_lp, int timeout_ms) {
    if (s->job.state != JOB_DONE && s->job.len <= have && s->job.n_lp <= have_lp) slots_sleep_locked(p, s, timeout_ms);
    return s->job.state;
}

void slots_cancel_locked(struct slot_pool * p, struct slot * s) {
    s->job.cancel = true;
    pthread_cond_signal(&p->engine_cv);
}

void slots_cancel(struct slot_pool * p, struct slot * s) {
    pthread_mutex_lock(&p->mu);
    slots_cancel_locked(p, s);
    pthread_mutex_unlock(&p->mu);
}

void slots_release(struct slot_pool * p, struct slot * s) {
    pthread_mutex_lock(&p->mu);
    while (s->job.state == JOB_QUEUED || s->job.state == JOB_RUNNING) {
        s->job.cancel = true;
        pthread_cond_signal(&p->engine_cv);
        struct timespec ts;
        deadline_in(&ts, 200);
        pthread_cond_timedwait(&s->cv, &p->mu, &ts);
    }
    s->job.state = JOB_IDLE;
    s->busy = false;
    s->wake = NULL;
    p->n_released++;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
}
