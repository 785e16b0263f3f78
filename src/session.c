/* Session lifecycle, decode (chunked prefill + eviction schedule), logits, sampling, KV statistics. */
#include "session.h"
#include "backend.h"
#include "calibration.h"
#include "common.h"
#include "grammar_mask.h"
#include "kv_select.h"
#include "model.h"
#include "platform.h"
#include "triattn_score.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum triattn_status tri_session_fail(triattn_session * s, enum triattn_status status, const char * fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->last_error, sizeof s->last_error, fmt, ap);
    va_end(ap);
    return status;
}

void triattn_session_params_init(struct triattn_session_params * p) {
    memset(p, 0, sizeof *p);
    p->n_ctx       = 0;
    p->n_batch     = 512;
    p->n_threads   = 0;
    p->seed        = UINT64_MAX;
    p->kv_policy   = NULL;
    p->kv_budget   = 2048;
    p->kv_interval = 128;
    p->kv_window   = -1;
    p->kv_sink     = 4;
    p->kv_mode     = NULL;
    p->kv_recall   = 0;
    p->kv_recall_max_mib = 0;
}

static int tri_default_threads(void) {
    return TRI_MIN(tri_cpu_count(), 64);
}

/* Validates the parameters and fills in defaults; the message names the first bad field. */
static enum triattn_status tri_session_resolve(const triattn_model * m, struct triattn_session_params * p,
                                               const tri_kv_policy_ops ** ops, char * err, size_t n) {
    if (p->n_ctx < 0) {
        return tri_fail(err, n, TRIATTN_ERR_INVALID_ARG, "n_ctx must be >= 0 (0 = the model's %d), got %d",
                        m->hp.n_ctx_train, p->n_ctx);
    }
    if (p->n_ctx == 0) {
        p->n_ctx = m->hp.n_ctx_train;
    }
    if (p->n_batch <= 0 || p->n_batch > 65536) {
        return tri_fail(err, n, TRIATTN_ERR_INVALID_ARG, "n_batch must be in [1, 65536], got %d", p->n_batch);
    }
    p->n_batch = TRI_MIN(p->n_batch, p->n_ctx);
    if (p->n_threads < 0 || p->n_threads > 1024) {
        return tri_fail(err, n, TRIATTN_ERR_INVALID_ARG, "n_threads must be in [0, 1024], got %d", p->n_threads);
    }
    if (p->n_threads == 0) {
        p->n_threads = tri_default_threads();
    }
    if (p->kv_budget <= 0) {
        return tri_fail(err, n, TRIATTN_ERR_INVALID_ARG, "kv_budget must be > 0, got %d", p->kv_budget);
    }
    if (p->kv_interval <= 0) {
        return tri_fail(err, n, TRIATTN_ERR_INVALID_ARG, "kv_interval must be > 0, got %d", p->kv_interval);
    }
    if (p->kv_sink < 0) {
        return tri_fail(err, n, TRIATTN_ERR_INVALID_ARG, "kv_sink must be >= 0, got %d", p->kv_sink);
    }
    if (p->kv_window < -1) {
        return tri_fail(err, n, TRIATTN_ERR_INVALID_ARG, "kv_window must be >= 0 (or -1 for the default), got %d",
                        p->kv_window);
    }
    if (p->kv_recall < 0 || p->kv_recall_max_mib < 0) {
        return tri_fail(err, n, TRIATTN_ERR_INVALID_ARG, "kv_recall and kv_recall_max_mib must be >= 0, got %d and %d",
                        p->kv_recall, p->kv_recall_max_mib);
    }
    if (p->kv_recall > 0 && m->backend) {
        return tri_fail(err, n, TRIATTN_ERR_UNSUPPORTED, "kv_recall is not supported with n_gpu_layers != 0");
    }
    const char * name = p->kv_policy;
    if (!name || strcmp(name, "auto") == 0) {
        name = !m->centres ? "full" : m->centres->auto_policy[0] ? m->centres->auto_policy : "triattention";
        if (m->centres && strcmp(name, "triattention") != 0) {
            tri_log(TRIATTN_LOG_INFO, "kv_policy auto: %s (the calibration's policy check found it closer to full "
                                      "attention than triattention on this model; kv_policy 'triattention' overrides)",
                    name);
        }
        if (!m->centres) {
            tri_log(TRIATTN_LOG_INFO, "kv_policy auto: the model has no TriAttention centres, using full attention "
                                      "(calibrate with `pytriattn calibrate model.gguf -o model.tri.gguf`)");
        }
    }
    *ops = tri_kv_policy_find(name);
    if (!*ops) {
        return tri_fail(err, n, TRIATTN_ERR_UNSUPPORTED,
                        "unknown kv_policy '%s' (available: full, triattention, streaming, random, h2o, snapkv, rkv, "
                        "snapkv_prompt)", name);
    }
    if (strcmp(name, "triattention") == 0 && !m->centres) {
        return tri_fail(err, n, TRIATTN_ERR_INVALID_ARG,
                        "kv_policy 'triattention' needs query centres, and this model has none: run `pytriattn "
                        "calibrate model.gguf --self-generate -o model.tri.gguf` and load model.tri.gguf (or a "
                        "sidecar as triattn_model_params.calibration_path)");
    }
    tri_ta_opts opts;
    return tri_ta_parse_mode(p->kv_mode, &opts, err, n);
}

/* The host KV cache: capacity slots per KV head on global layers; a sliding-window layer keeps only its window
 * plus one step of rows (the forward pass drops what left the window), whatever the policy. */
static enum triattn_status tri_session_kv_init(triattn_session * s, int32_t capacity, char * err, size_t n) {
    const tri_hparams * hp = &s->model->hp;
    int32_t * caps = malloc(sizeof(int32_t) * 2 * (size_t) hp->n_layer);
    if (!caps) {
        return tri_fail(err, n, TRIATTN_ERR_OOM, "out of memory");
    }
    int32_t * windows = caps + hp->n_layer;
    for (int il = 0; il < hp->n_layer; il++) {
        windows[il] = tri_hp_layer_window(hp, il);
        const int64_t local = (int64_t) windows[il] + s->params.n_batch;
        caps[il] = windows[il] > 0 ? (int32_t) TRI_MIN(local, (int64_t) s->params.n_ctx) : capacity;
    }
    const enum triattn_status st = tri_kv_cache_init_layers(&s->kv, hp->n_layer, hp->n_head_kv, hp->head_dim, caps,
                                                            windows, err, n);
    free(caps);
    return st;
}

enum triattn_status triattn_session_create(const triattn_model * m, const struct triattn_session_params * pin,
                                           triattn_session ** out, char * err, size_t err_size) {
    if (err && err_size) {
        err[0] = '\0';
    }
    if (!out) {
        return tri_fail(err, err_size, TRIATTN_ERR_INVALID_ARG, "triattn_session_create: out is NULL");
    }
    *out = NULL;
    if (!m) {
        return tri_fail(err, err_size, TRIATTN_ERR_INVALID_ARG, "triattn_session_create: model is NULL");
    }
    struct triattn_session_params p;
    if (pin) {
        p = *pin;
    } else {
        triattn_session_params_init(&p);
    }
    const tri_kv_policy_ops * ops = NULL;
    enum triattn_status st = tri_session_resolve(m, &p, &ops, err, err_size);
    if (st != TRIATTN_OK) {
        return st;
    }

    triattn_session * s = calloc(1, sizeof *s);
    if (!s) {
        return tri_fail(err, err_size, TRIATTN_ERR_OOM, "out of memory");
    }
    s->model = m;
    snprintf(s->policy_name, sizeof s->policy_name, "%s", ops->name);
    snprintf(s->mode_name, sizeof s->mode_name, "%s", p.kv_mode ? p.kv_mode : "per_head");
    p.kv_policy = s->policy_name;
    p.kv_mode   = s->mode_name;
    s->params   = p;

    s->policy.ops = ops;
    s->policy.cfg = (tri_kv_policy_cfg) { .n_ctx = p.n_ctx, .budget = p.kv_budget, .interval = p.kv_interval,
                                          .window = p.kv_window, .sink = p.kv_sink, .mode = s->mode_name,
                                          .seed = p.seed };
    const int32_t capacity = TRI_MIN(ops->capacity(&s->policy.cfg), p.n_ctx);

    s->backend = m->backend;
    tri_ta_opts opts;
    if (s->backend && strcmp(ops->name, "triattention") == 0 &&
        tri_ta_parse_mode(s->mode_name, &opts, NULL, 0) == TRIATTN_OK && opts.n_offsets != TRI_TRIATTN_N_OFFSETS) {
        st = tri_fail(err, err_size, TRIATTN_ERR_UNSUPPORTED, "kv_mode offmax= runs on the CPU only");
    } else if (s->backend) {
        st = s->backend->session_init(s, err, err_size); /* device cache + host mirror of s->kv */
    } else {
        st = tri_session_kv_init(s, capacity, err, err_size);
    }
    if (st == TRIATTN_OK) {
        s->tp = tri_threadpool_create(p.n_threads);
        if (!s->tp) {
            st = tri_fail(err, err_size, TRIATTN_ERR_OOM, "cannot start %d threads", p.n_threads);
        }
    }
    if (st == TRIATTN_OK && ops->init && !s->backend) {
        s->policy.model = m;
        s->policy.tp    = s->tp;
        st = ops->init(&s->policy, &s->kv, err, err_size);
    }
    if (st == TRIATTN_OK && !s->backend) {
        st = tri_session_recall_init(s, err, err_size);
    }
    if (st == TRIATTN_OK && !s->backend) {
        st = tri_forward_init(&s->fwd, m, &s->kv, s->tp, p.n_batch, err, err_size);
    }
    if (st == TRIATTN_OK) {
        /* The penalty history ring need not grow with n_ctx when the cache is bounded. */
        const int32_t hist = capacity < p.n_ctx ? TRI_MIN(p.n_ctx, TRI_MAX(capacity, 65536)) : p.n_ctx;
        s->sampler = tri_sampler_create(m->hp.n_vocab, hist, p.seed);
        s->gen.ts  = tri_textstream_create(NULL, 0);
        s->gen.text_cap = 4096;
        s->gen.text = malloc(s->gen.text_cap);
        s->hist = malloc(sizeof(triattn_token) * (size_t) p.n_ctx);
        s->last_compress_pos = -1;
        s->reuse_ok = true;
        if (!s->sampler || !s->gen.ts || !s->gen.text || !s->hist) {
            st = tri_fail(err, err_size, TRIATTN_ERR_OOM, "out of memory");
        }
    }
    if (st != TRIATTN_OK) {
        triattn_session_free(s);
        return st;
    }
    *out = s;
    return TRIATTN_OK;
}

void triattn_session_free(triattn_session * s) {
    if (!s) {
        return;
    }
    if (s->backend) {
        s->backend->session_free(s);
    }
    if (s->policy.ops && s->policy.ops->free) {
        s->policy.ops->free(&s->policy);
    }
    tri_calib_free(s->calib);
    tri_forward_free(&s->fwd);
    tri_kv_cache_free(&s->kv);
    tri_threadpool_free(s->tp);
    tri_sampler_free(s->sampler);
    tri_textstream_free(s->gen.ts);
    tri_constraint_free(s->gen.constraint);
    free(s->gen.text);
    free(s->gen.prompt);
    free(s->hist);
    free(s);
}

const char * triattn_session_last_error(const triattn_session * s) {
    return s ? s->last_error : "session is NULL";
}

void triattn_session_reset(triattn_session * s) {
    tri_kv_cache_clear(&s->kv);
    if (s->backend) {
        s->backend->reset(s);
    }
    tri_sampler_reset(s->sampler);
    s->n_past   = 0;
    s->n_logits = 0;
    s->gen.active = false;
    s->policy.n_compressions = 0;
    s->policy.n_evicted = 0;
    s->policy.score_ms = 0.0;
    s->policy.n_prompt = 0;
    s->last_compress_pos = -1;
    s->reuse_ok = true;
    s->recall_at = -1;
    s->recall_pos = -1;
    s->n_recalls = 0;
    s->n_recalled = 0;
    s->recall_ms = 0.0;
}

int32_t triattn_session_n_ctx(const triattn_session * s) {
    return s->params.n_ctx;
}

int32_t triattn_session_n_threads(const triattn_session * s) {
    return s->params.n_threads;
}

int32_t triattn_session_n_past(const triattn_session * s) {
    return s->n_past;
}

int32_t tri_session_chunk_limit(const triattn_session * s) {
    return s->kv.capacity < s->params.n_ctx ? TRI_MIN(s->params.n_batch, s->params.kv_interval) : s->params.n_batch;
}

int32_t tri_session_chunk_room(const triattn_session * s) {
    if (s->kv.capacity >= s->params.n_ctx) {
        return s->params.n_batch;
    }
    /* Up to the trigger a chunk may fill the cache (a prompt shorter than the budget prefills in n_batch chunks);
     * at the trigger the round leaves room for `interval` tokens. */
    int32_t lo, hi;
    tri_kv_cache_live_range(&s->kv, &lo, &hi);
    const int64_t trigger = (int64_t) s->policy.cfg.budget + s->policy.cfg.interval;
    return hi < trigger ? (int32_t) TRI_MIN(s->params.n_batch, TRI_MIN(trigger, s->kv.capacity) - hi)
                        : tri_session_chunk_limit(s);
}

void tri_session_record(triattn_session * s, const triattn_token * tokens, int32_t n) {
    memcpy(s->hist + s->n_past, tokens, sizeof(triattn_token) * (size_t) n);
}

enum triattn_status tri_session_make_room(triattn_session * s, int32_t incoming) {
    int32_t lo, hi;
    tri_kv_cache_live_range(&s->kv, &lo, &hi);
    if (hi + incoming <= s->kv.capacity && !s->policy.ops->should_compress(&s->policy, &s->kv)) {
        return TRIATTN_OK;
    }
    char msg[512] = "";
    const double t0 = tri_time_ms();
    enum triattn_status st;
    if (s->backend) {
        st = s->backend->compress(s, s->n_past, msg, sizeof msg);
    } else {
        st = s->policy.ops->compress(&s->policy, &s->kv, s->n_past, msg, sizeof msg);
    }
    s->policy.score_ms += tri_time_ms() - t0;
    s->last_compress_pos = s->n_past;
    if (st != TRIATTN_OK) {
        return tri_session_fail(s, st, "KV policy '%s': %s", s->policy.ops->name, msg);
    }
    if (s->kv.t2 && tri_kv_tier2_take_failure(s->kv.t2)) {
        return tri_session_fail(s, TRIATTN_ERR_OOM, "KV policy '%s': tier 2 is out of memory (evicted rows were "
                                "dropped)", s->policy.ops->name);
    }
    tri_kv_cache_live_range(&s->kv, &lo, &hi);
    if (hi + incoming > s->kv.capacity) {
        return tri_session_fail(s, TRIATTN_ERR_CONTEXT, "KV cache full: %d live slots + %d new tokens > capacity %d",
                                hi, incoming, s->kv.capacity);
    }
    return TRIATTN_OK;
}

/* Decodes tokens[0..n_tokens) at positions n_past..; accept: the tokens join the sampler's penalty history. */
static enum triattn_status tri_session_run(triattn_session * s, const triattn_token * tokens, int32_t n_tokens,
                                           bool logits_all, bool accept) {
    for (int32_t i = 0, n = 0; i < n_tokens; i += n) {
        /* logits_all takes one chunk (room is made for all of it at once); otherwise chunks stop where the
         * policy's trigger fires, so the compression schedule does not depend on how tokens are split. */
        n = logits_all ? n_tokens : TRI_MIN(tri_session_chunk_room(s), n_tokens - i);
        if (!logits_all) {
            n = tri_session_recall_cut(s, tokens + i, n); /* a recall point ends the chunk */
        }
        const bool last = i + n == n_tokens;
        const enum tri_logits_mode mode = !last ? TRI_LOGITS_NONE : logits_all ? TRI_LOGITS_ALL : TRI_LOGITS_LAST;
        const triattn_token * chunk = tokens + i;
        enum triattn_status st;
        tri_step(&s, &chunk, &n, 1, mode, accept, &st);
        if (st != TRIATTN_OK) {
            return st;
        }
    }
    s->n_logits   = s->fwd.n_logits;
    s->logits_all = logits_all;
    /* Slack trigger: compress once live slots reach budget + interval. */
    if (s->policy.ops->should_compress(&s->policy, &s->kv)) {
        return tri_session_make_room(s, 0);
    }
    return TRIATTN_OK;
}

enum triattn_status tri_session_replay(triattn_session * s, int32_t n) {
    triattn_token toks[64];
    if (n <= 0 || n > 64 || n > s->n_past) {
        return n == 0 ? TRIATTN_OK : tri_session_fail(s, TRIATTN_ERR_INTERNAL, "replay of %d tokens", n);
    }
    const int32_t start = s->n_past - n;
    memcpy(toks, s->hist + start, sizeof(triattn_token) * (size_t) n);
    tri_kv_cache * c = &s->kv;
    for (int i = 0; i < c->n_layer * c->n_head_kv; i++) { /* positions are increasing: the last slots go */
        c->n_live[i] = tri_kv_count_below(tri_kv_pos(c, i / c->n_head_kv, i % c->n_head_kv), c->n_live[i], start);
    }
    s->n_past = start;
    const bool off = s->recall_off;
    s->recall_off = true;
    const enum triattn_status st = tri_session_run(s, toks, n, false, false);
    s->recall_off = off;
    return st;
}

enum triattn_status tri_session_lookahead(triattn_session * s, const triattn_token * tokens, int32_t n) {
    const tri_kv_policy_ops * ops = s->policy.ops;
    const int32_t tail = ops->lookahead_tokens && !s->backend ? ops->lookahead_tokens(&s->policy, n) : 0;
    if (tail <= 0 || s->n_past != 0) {
        return TRIATTN_OK;
    }
    const int64_t n_compressions = s->policy.n_compressions, n_evicted = s->policy.n_evicted;
    s->n_past = n - tail;
    s->recall_off = true;
    enum triattn_status st = tri_session_run(s, tokens + (n - tail), tail, false, false);
    s->recall_off = false;
    if (st == TRIATTN_OK) {
        ops->lookahead_capture(&s->policy, &s->kv);
    }
    /* the statistics describe the cache the caller builds next, not this pass */
    tri_kv_cache_clear(&s->kv);
    s->policy.n_compressions = n_compressions;
    s->policy.n_evicted      = n_evicted;
    s->n_past   = 0;
    s->n_logits = 0;
    s->last_compress_pos = -1;
    return st;
}

enum triattn_status triattn_session_decode(triattn_session * s, const triattn_token * tokens, int32_t n_tokens,
                                           bool logits_all) {
    if (!s) {
        return TRIATTN_ERR_INVALID_ARG;
    }
    s->last_error[0] = '\0';
    if (!tokens || n_tokens <= 0) {
        return tri_session_fail(s, TRIATTN_ERR_INVALID_ARG, "decode: need at least one token (got %d)", n_tokens);
    }
    const int32_t n_vocab = s->model->hp.n_vocab;
    for (int32_t i = 0; i < n_tokens; i++) {
        if (tokens[i] < 0 || tokens[i] >= n_vocab) {
            return tri_session_fail(s, TRIATTN_ERR_INVALID_ARG, "decode: token %d at index %d is out of range [0, %d)",
                                    tokens[i], i, n_vocab);
        }
    }
    if (logits_all && n_tokens > s->params.n_batch) {
        return tri_session_fail(s, TRIATTN_ERR_INVALID_ARG, "decode: logits_all needs n_tokens <= n_batch (%d > %d)",
                                n_tokens, s->params.n_batch);
    }
    if ((int64_t) s->n_past + n_tokens > s->params.n_ctx) {
        return tri_session_fail(s, TRIATTN_ERR_CONTEXT, "decode: %d tokens after position %d exceed n_ctx %d", n_tokens,
                                s->n_past, s->params.n_ctx);
    }
    /* A compressing cache takes at most `interval` new tokens between compressions. */
    const int32_t chunk = tri_session_chunk_limit(s);
    if (logits_all && n_tokens > chunk) {
        return tri_session_fail(s, TRIATTN_ERR_INVALID_ARG,
                                "decode: logits_all needs n_tokens <= %d with a compressing KV policy", chunk);
    }
    s->n_logits = 0;
    if (s->n_past == 0 && s->policy.n_prompt == 0) {
        s->policy.n_prompt = n_tokens; /* the prompt = the first decode call after create/reset, unless a
                                          generation that prefills in steps has set it */
        enum triattn_status st = tri_session_lookahead(s, tokens, n_tokens);
        if (st != TRIATTN_OK) {
            return st;
        }
    }
    return tri_session_run(s, tokens, n_tokens, logits_all, true);
}

const float * triattn_session_logits(const triattn_session * s, int32_t i) {
    if (!s || s->n_logits == 0) {
        return NULL;
    }
    if (i < 0) {
        i = s->n_logits + i;
    }
    if (i < 0 || i >= s->n_logits) {
        return NULL;
    }
    return s->fwd.logits + (size_t) i * s->model->hp.n_vocab;
}

void triattn_session_kv_stats(const triattn_session * s, struct triattn_kv_stats * out) {
    memset(out, 0, sizeof *out);
    out->n_past   = s->n_past;
    out->capacity = s->kv.capacity;
    tri_kv_cache_live_range(&s->kv, &out->live_min, &out->live_max);
    out->kv_bytes = s->kv.bytes;
    int64_t live = 0;
    for (int i = 0; i < s->kv.n_layer * s->kv.n_head_kv; i++) {
        live += s->kv.n_live[i];
    }
    out->kv_bytes_live  = (uint64_t) live * (2u * s->kv.head_dim * sizeof(tri_fp16) + sizeof(int32_t));
    out->n_compressions = s->policy.n_compressions;
    out->n_evicted      = s->policy.n_evicted;
    out->score_ms       = s->policy.score_ms;
    snprintf(out->policy, sizeof out->policy, "%s", s->policy_name);
    if (s->kv.t2) {
        out->t2_rows    = tri_kv_tier2_rows(s->kv.t2);
        out->t2_bytes   = tri_kv_tier2_bytes(s->kv.t2);
        out->t2_dropped = tri_kv_tier2_dropped(s->kv.t2);
    }
    out->n_recalls  = s->n_recalls;
    out->n_recalled = s->n_recalled;
    out->recall_ms  = s->recall_ms;
}

enum triattn_status triattn_session_kv_positions(const triattn_session * s, int32_t layer, int32_t kv_head,
                                                int32_t * out, int32_t capacity, int32_t * n_out) {
    if (!s || !n_out || capacity < 0 || (capacity > 0 && !out) || layer < 0 || layer >= s->kv.n_layer ||
        kv_head < 0 || kv_head >= s->kv.n_head_kv) {
        return TRIATTN_ERR_INVALID_ARG;
    }
    const int32_t live = s->kv.n_live[tri_kv_index(&s->kv, layer, kv_head)];
    if (capacity > 0) {
        memcpy(out, tri_kv_pos(&s->kv, layer, kv_head), sizeof(int32_t) * (size_t) TRI_MIN(live, capacity));
    }
    *n_out = live;
    return TRIATTN_OK;
}

enum triattn_status triattn_session_kv_keys(const triattn_session * s, int32_t layer, int32_t kv_head, float * out,
                                            int32_t capacity_rows, int32_t * n_out) {
    if (!s || !n_out || capacity_rows < 0 || (capacity_rows > 0 && !out) || layer < 0 || layer >= s->kv.n_layer ||
        kv_head < 0 || kv_head >= s->kv.n_head_kv) {
        return TRIATTN_ERR_INVALID_ARG;
    }
    const int32_t live = s->kv.n_live[tri_kv_index(&s->kv, layer, kv_head)];
    if (s->backend) {
        *n_out = live;
        return s->backend->kv_keys(s, layer, kv_head, out, TRI_MIN(live, capacity_rows));
    }
    const size_t n = (size_t) TRI_MIN(live, capacity_rows) * s->kv.head_dim;
    const tri_fp16 * k = tri_kv_k(&s->kv, layer, kv_head);
    for (size_t i = 0; i < n; i++) {
        out[i] = tri_fp16_to_fp32(k[i]);
    }
    *n_out = live;
    return TRIATTN_OK;
}

enum triattn_status triattn_model_get_centres(const triattn_model * m, float * re, float * im, float * abs_mean,
                                              size_t n) {
    if (!m || !m->centres) {
        return TRIATTN_ERR_INVALID_ARG;
    }
    const tri_centres * c = m->centres;
    if (n != (size_t) c->n_layer * c->n_head * c->freq_count) {
        return TRIATTN_ERR_INVALID_ARG;
    }
    if (re) {
        memcpy(re, c->q_re, n * sizeof(float));
    }
    if (im) {
        memcpy(im, c->q_im, n * sizeof(float));
    }
    if (abs_mean) {
        memcpy(abs_mean, c->q_abs, n * sizeof(float));
    }
    return TRIATTN_OK;
}

enum triattn_status triattn_session_set_sampler(triattn_session * s, const struct triattn_sampler_params * p) {
    if (!p) {
        return tri_session_fail(s, TRIATTN_ERR_INVALID_ARG, "sampler params are NULL");
    }
    return tri_sampler_set_params(s->sampler, p, s->last_error, sizeof s->last_error);
}

enum triattn_status triattn_session_sample(triattn_session * s, triattn_token * out) {
    const float * logits = triattn_session_logits(s, -1);
    if (!logits) {
        return tri_session_fail(s, TRIATTN_ERR_INVALID_ARG, "sample: no logits (decode something first)");
    }
    *out = tri_sampler_sample(s->sampler, logits);
    if (*out < 0) {
        return tri_session_fail(s, TRIATTN_ERR_INTERNAL, "sample: no valid token (all logits are NaN?)");
    }
    return TRIATTN_OK;
}

enum triattn_status triattn_session_kv_scores(const triattn_session * s, int32_t layer, int32_t kv_head,
                                              int32_t * position, float * raw, float * agg, uint8_t * kept,
                                              int32_t capacity, int32_t * n_out) {
    if (!s || !n_out || capacity < 0 || layer < 0 || layer >= s->kv.n_layer || kv_head < 0 ||
        kv_head >= s->kv.n_head_kv) {
        return TRIATTN_ERR_INVALID_ARG;
    }
    *n_out = 0;
    if (s->backend) {
        return TRIATTN_ERR_UNSUPPORTED;
    }
    return tri_triattn_last_scores(&s->policy, layer, kv_head, position, raw, agg, kept, capacity, n_out);
}
