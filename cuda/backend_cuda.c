/* The CUDA backend (src/backend.h): weights uploaded once per model in their GGUF block layout; per session a device
 * KV cache in the per-(layer, KV head) slot layout with positions, activation buffers for n_batch rows, and the
 * TriAttention round's scratch, all carved from one device and one page-locked allocation. Every byte a model and
 * its sessions take on the device counts against a budget (triattn_model_params.gpu_mem_limit, else what the device
 * has free), so a session that would not fit is refused with a message saying what it needs. The forward step is
 * forward_cuda.c, the round compress_cuda.c. Compiled only with -DTRIATTN_CUDA=ON. */
#include "backend_cuda.h"
#include "common.h"
#include "kv_select.h"
#include "model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- model ------------------------------------------------------------------------------------- */

static size_t tri_cu_align(size_t n) {
    return (n + TRI_CU_ALIGN - 1) & ~(size_t) (TRI_CU_ALIGN - 1);
}

static size_t tri_cu_tensor_bytes(const tri_tensor * t) {
    return tri_row_size(t->type, t->ne0) * (size_t) t->ne1;
}

/* A byte count for messages: "5.12 GiB", or "40.0 MiB" under 1 GiB. */
typedef struct tri_cu_size {
    char s[24];
} tri_cu_size;
static tri_cu_size tri_cu_size_of(uint64_t bytes) {
    tri_cu_size z;
    if (bytes >= ((uint64_t) 1 << 30)) {
        snprintf(z.s, sizeof z.s, "%.2f GiB", (double) bytes / 1073741824.0);
    } else {
        snprintf(z.s, sizeof z.s, "%.1f MiB", (double) bytes / 1048576.0);
    }
    return z;
}

/* The model's tensors in a fixed order, paired with their device views. */
typedef struct tri_cu_pair {
    const tri_tensor * h;
    tri_cu_w *         d;
} tri_cu_pair;

static int tri_cu_pairs(const struct triattn_model * m, tri_cu_model * cm, tri_cu_pair * out) {
    int n = 0;
    out[n++] = (tri_cu_pair) { &m->w.tok_embd, &cm->tok_embd };
    out[n++] = (tri_cu_pair) { &m->w.output_norm, &cm->output_norm };
    out[n++] = (tri_cu_pair) { &m->w.output, &cm->output };
    for (int il = 0; il < m->hp.n_layer; il++) {
        const tri_layer * L = &m->w.layers[il];
        tri_cu_layer * D = &cm->layers[il];
        const tri_cu_pair p[] = {
            { &L->attn_norm, &D->attn_norm }, { &L->wq, &D->wq }, { &L->wk, &D->wk }, { &L->wv, &D->wv },
            { &L->bq, &D->bq }, { &L->bk, &D->bk }, { &L->bv, &D->bv }, { &L->q_norm, &D->q_norm },
            { &L->k_norm, &D->k_norm }, { &L->wo, &D->wo }, { &L->ffn_norm, &D->ffn_norm },
            { &L->ffn_gate, &D->ffn_gate }, { &L->ffn_up, &D->ffn_up }, { &L->ffn_down, &D->ffn_down },
        };
        for (size_t i = 0; i < sizeof p / sizeof p[0]; i++) {
            out[n++] = p[i];
        }
    }
    return n;
}

static void tri_cu_model_free(void * state) {
    tri_cu_model * cm = state;
    if (!cm) {
        return;
    }
    (void) tri_cuda_set_device(TRI_CU_DEVICE); /* the caller's thread may have another device current */
    tri_cuda_free(cm->mem);
    tri_cuda_free(cm->ws.mem);
    pthread_mutex_destroy(&cm->lock);
    free(cm->layers);
    free(cm);
}

static enum triattn_status tri_cu_check_model(const struct triattn_model * m, char * err, size_t n) {
    const char * arch = m->arch->name;
    if (strcmp(arch, "llama") != 0 && strcmp(arch, "qwen2") != 0 && strcmp(arch, "qwen3") != 0) {
        return tri_fail(err, n, TRIATTN_ERR_UNSUPPORTED, "CUDA backend: architecture '%s' is not supported "
                        "(llama, qwen2, qwen3); use n_gpu_layers = 0", arch);
    }
    const tri_hparams * hp = &m->hp;
    if (hp->head_dim > TRI_CUDA_ATT_MAX_D || hp->head_dim % 16 != 0 || hp->n_head > 65535 ||
        (int64_t) hp->n_layer * hp->n_head > 65535 || hp->n_embd % 32 != 0 || hp->n_ff % 32 != 0 ||
        (hp->n_head * hp->head_dim) % 32 != 0) {
        return tri_fail(err, n, TRIATTN_ERR_UNSUPPORTED, "CUDA backend: head_dim %d, n_embd %d, n_ff %d, %d heads x %d "
                        "layers are outside the kernels' limits (head_dim a multiple of 16 up to %d, widths multiples "
                        "of 32)", hp->head_dim, hp->n_embd, hp->n_ff, hp->n_head, hp->n_layer, TRI_CUDA_ATT_MAX_D);
    }
    return TRIATTN_OK;
}

/* Bytes the budget allows now: limit - used, or what the device has free when there is no limit. */
static uint64_t tri_cu_available(const tri_cu_model * cm) {
    if (cm->limit) {
        return cm->limit > cm->used ? cm->limit - cm->used : 0;
    }
    size_t free_b = 0, total_b = 0;
    return tri_cuda_mem_info(&free_b, &total_b) == TRIATTN_OK ? free_b : 0;
}

static enum triattn_status tri_cu_model_upload(const struct triattn_model * m, uint64_t mem_limit, void ** state,
                                               char * err, size_t n) {
    *state = NULL;
    enum triattn_status st = tri_cu_check_model(m, err, n);
    if (st != TRIATTN_OK) {
        return st;
    }
    tri_cu_model * cm = calloc(1, sizeof *cm);
    const int n_pairs = 3 + 14 * m->hp.n_layer;
    tri_cu_pair * pairs = malloc(sizeof *pairs * (size_t) n_pairs);
    if (cm) {
        cm->layers = calloc((size_t) m->hp.n_layer, sizeof *cm->layers);
        pthread_mutex_init(&cm->lock, NULL);
        cm->limit = mem_limit;
    }
    if (!cm || !cm->layers || !pairs) {
        free(pairs);
        tri_cu_model_free(cm);
        return tri_fail(err, n, TRIATTN_ERR_OOM, "out of memory");
    }
    tri_cu_pairs(m, cm, pairs);
    bool have_msg = false;
    /* Offsets: every present tensor once (the tied output shares the embedding's bytes). */
    size_t total = 0;
    for (int i = 0; i < n_pairs; i++) {
        const tri_tensor * t = pairs[i].h;
        if (!t->data || (i == 2 && t->data == m->w.tok_embd.data)) {
            continue;
        }
        if (!tri_cuda_type_supported((int) t->type)) {
            st = tri_fail(err, n, TRIATTN_ERR_UNSUPPORTED, "CUDA backend: tensor '%s' has type %s, which the "
                          "device kernels do not decode", t->name, tri_type_traits_get(t->type)->name);
            have_msg = true;
            break;
        }
        total += tri_cu_align(tri_cu_tensor_bytes(t));
    }
    if (st == TRIATTN_OK) {
        st = tri_cuda_set_device(TRI_CU_DEVICE);
    }
    if (st == TRIATTN_OK && total > tri_cu_available(cm)) {
        st = tri_fail(err, n, TRIATTN_ERR_OOM, "CUDA backend: the weights need %s of device memory, %s %s",
                      tri_cu_size_of(total).s, tri_cu_size_of(tri_cu_available(cm)).s,
                      cm->limit ? "is the gpu_mem_limit (--gpu-mem-limit)" : "are free on the device");
        have_msg = true;
    }
    if (st == TRIATTN_OK) {
        st = tri_cuda_malloc(&cm->mem, total);
    }
    size_t off = 0;
    for (int i = 0; i < n_pairs && st == TRIATTN_OK; i++) {
        const tri_tensor * t = pairs[i].h;
        tri_cu_w * w = pairs[i].d;
        if (!t->data) {
            continue;
        }
        w->type = (int) t->type;
        w->ne0  = t->ne0;
        w->ne1  = t->ne1;
        if (i == 2 && t->data == m->w.tok_embd.data) {
            w->d = cm->tok_embd.d;
            continue;
        }
        w->d = (char *) cm->mem + off;
        st = tri_cuda_h2d((void *) w->d, t->data, tri_cu_tensor_bytes(t), NULL);
        off += tri_cu_align(tri_cu_tensor_bytes(t));
    }
    if (st == TRIATTN_OK) {
        st = tri_cuda_sync(NULL);
    }
    free(pairs);
    if (st != TRIATTN_OK) {
        if (!have_msg) {
            tri_fail(err, n, st, "CUDA backend: uploading %.1f MiB of weights: %s", total / 1048576.0,
                     tri_cuda_last_error());
        }
        tri_cu_model_free(cm);
        return st;
    }
    cm->bytes = total;
    cm->used = total;
    *state = cm;
    return TRIATTN_OK;
}

/* ---- session ----------------------------------------------------------------------------------- */

typedef struct tri_cu_part {
    void ** p;
    size_t  bytes;
} tri_cu_part;

static size_t tri_cu_parts_bytes(const tri_cu_part * parts, size_t n_parts) {
    size_t total = 0;
    for (size_t i = 0; i < n_parts; i++) {
        total += tri_cu_align(parts[i].bytes);
    }
    return total;
}

/* Carves one allocation (device or page-locked host) into the parts. */
static enum triattn_status tri_cu_carve(tri_cu_part * parts, size_t n_parts, bool device, void ** mem) {
    const size_t total = tri_cu_parts_bytes(parts, n_parts);
    const enum triattn_status st = device ? tri_cuda_malloc(mem, total) : tri_cuda_host_alloc(mem, total);
    if (st != TRIATTN_OK) {
        return st;
    }
    char * p = *mem;
    for (size_t i = 0; i < n_parts; i++) {
        *parts[i].p = p;
        p += tri_cu_align(parts[i].bytes);
    }
    return TRIATTN_OK;
}

static void tri_cu_session_free(triattn_session * s) {
    tri_cu_session * c = s->backend_state;
    if (c) {
        (void) tri_cuda_set_device(TRI_CU_DEVICE); /* the caller's thread may have another device current */
        if (c->stream) {
            (void) tri_cuda_sync(c->stream);
        }
        tri_cu_graphs_free(c);
        tri_cu_prof_free(c->prof);
        tri_cuda_free(c->dmem);
        tri_cuda_host_free(c->hmem);
        tri_cuda_stream_destroy(c->stream);
        if (c->dev_bytes) {
            tri_cu_model * cm = s->model->backend_state;
            pthread_mutex_lock(&cm->lock);
            cm->used -= c->dev_bytes;
            pthread_mutex_unlock(&cm->lock);
        }
        free(c);
    }
    s->backend_state = NULL;
    tri_kv_cache_free(&s->kv); /* the host mirror: k and v are NULL */
    memset(&s->fwd, 0, sizeof s->fwd);
}

/* Widest input of any product: the rows an activation buffer holds. */
static int32_t tri_cu_max_in(const tri_hparams * hp) {
    return TRI_MAX(TRI_MAX(hp->n_embd, hp->n_ff), hp->n_head * hp->head_dim);
}

bool tri_cuda_env_flag(const char * name, bool def) {
    const char * v = getenv(name);
    return v && strcmp(v, def ? "0" : "1") == 0 ? !def : def;
}

/* A row count in [lo, hi] from the environment; unset or anything else: def. */
static int32_t tri_cu_env_rows(const char * name, long lo, long hi, int32_t def) {
    const char * v = getenv(name);
    char * end = NULL;
    const long x = v ? strtol(v, &end, 10) : 0;
    return v && end != v && *end == '\0' && x >= lo && x <= hi ? (int32_t) x : def;
}

int32_t tri_cu_mq_min(void) {
    return tri_cu_env_rows("TRIATTN_CUDA_MQ_MIN", 1, 1000, TRI_CU_MQ_MIN);
}

int32_t tri_cu_mq_max(void) {
    return tri_cu_env_rows("TRIATTN_CUDA_MQ_MAX", TRI_CU_VEC_ROWS, 65535, TRI_CU_VEC_ROWS);
}

int32_t tri_cu_att_mma_min(void) {
    const int32_t n = tri_cu_env_rows("TRIATTN_CUDA_ATT_MMA_MIN", 0, 1000000, TRI_CU_ATT_MMA_MIN);
    return n == 0 ? INT32_MAX : n; /* 0: never */
}

/* Bytes of the attention's part counters for `rows` rows (zeroed when the workspace is carved). */
size_t tri_cu_tickets_bytes(const tri_hparams * hp, int32_t rows) {
    return (size_t) rows * TRI_CUDA_ATT_TICKETS(hp->n_head, hp->n_head_kv) * sizeof(int32_t);
}

/* The step workspace's parts for `rows` rows (tri_cu_ws). */
static size_t tri_cu_ws_layout(const tri_hparams * hp, int32_t rows, tri_cu_ws * ws, tri_cu_part * parts) {
    const size_t nr = (size_t) rows, mi = (size_t) tri_cu_max_in(hp);
    const size_t mv = (size_t) TRI_MAX(TRI_CU_VEC_ROWS, TRI_MIN(rows, tri_cu_mq_max())); /* 8-bit activation rows */
    const size_t q_dim = (size_t) hp->n_head * hp->head_dim, kv_dim = (size_t) hp->n_head_kv * hp->head_dim;
    ws->part_rows = TRI_MAX(rows, TRI_CU_PART_ROWS);
    ws->q8_rows = (int32_t) mv;
    size_t n = 0;
#define TRI_CU_PART(ptr, bytes) parts[n++] = (tri_cu_part) { (void **) &(ptr), (bytes) }
    TRI_CU_PART(ws->tok, nr * sizeof(int32_t));
    TRI_CU_PART(ws->cs, nr * hp->rope_dim * sizeof(float));
    TRI_CU_PART(ws->row, nr * sizeof(tri_cuda_row));
    TRI_CU_PART(ws->x, nr * hp->n_embd * sizeof(float));
    TRI_CU_PART(ws->xn, nr * TRI_MAX((size_t) hp->n_embd, q_dim) * sizeof(float));
    TRI_CU_PART(ws->q, nr * q_dim * sizeof(float));
    TRI_CU_PART(ws->k, nr * kv_dim * sizeof(float));
    TRI_CU_PART(ws->v, nr * kv_dim * sizeof(float));
    TRI_CU_PART(ws->att, nr * q_dim * sizeof(float));
    TRI_CU_PART(ws->gate, nr * hp->n_ff * sizeof(float));
    TRI_CU_PART(ws->up, nr * hp->n_ff * sizeof(float));
    TRI_CU_PART(ws->hid, nr * hp->n_ff * sizeof(float));
    TRI_CU_PART(ws->part, (size_t) ws->part_rows * hp->n_head * (hp->head_dim + 2) * sizeof(float));
    TRI_CU_PART(ws->tickets, tri_cu_tickets_bytes(hp, rows));
    TRI_CU_PART(ws->logits, (size_t) TRI_CU_LOGIT_ROWS * hp->n_vocab * sizeof(float));
    for (int i = 0; i < TRI_CU_ACT_SLOTS; i++) {
        TRI_CU_PART(ws->q8[i].qs, mv * mi);
        TRI_CU_PART(ws->q8[i].meta, mv * mi / 32 * sizeof(tri_cuda_q8_meta));
        ws->q8[i].ld = (int64_t) mi;
    }
#undef TRI_CU_PART
    return n;
}

/* Reserves the session's own device bytes in the model's budget and grows the shared step workspace to its
 * n_batch rows, or says why they do not fit. */
static enum triattn_status tri_cu_reserve(triattn_session * s, uint64_t bytes, size_t kv_bytes, char * err, size_t en) {
    tri_cu_model * cm = s->model->backend_state;
    tri_cu_part parts[20 + 2 * TRI_CU_ACT_SLOTS];
    tri_cu_ws grown = { 0 };
    const int32_t rows = s->params.n_batch;
    const size_t n_parts = tri_cu_ws_layout(&s->model->hp, rows, &grown, parts);
    pthread_mutex_lock(&cm->lock);
    const uint64_t ws_bytes = rows > cm->ws.rows ? tri_cu_parts_bytes(parts, n_parts) : 0;
    const uint64_t need = bytes + (ws_bytes > cm->ws.bytes ? ws_bytes - cm->ws.bytes : 0);
    const uint64_t avail = tri_cu_available(cm);
    enum triattn_status st = need <= avail ? TRIATTN_OK : TRIATTN_ERR_OOM;
    if (st == TRIATTN_OK && ws_bytes) { /* no step is in flight while the lock is held */
        st = tri_cu_carve(parts, n_parts, true, &grown.mem);
        if (st == TRIATTN_OK) {
            st = tri_cuda_memset(grown.tickets, 0, tri_cu_tickets_bytes(&s->model->hp, rows), NULL);
            st = st == TRIATTN_OK ? tri_cuda_sync(NULL) : st;
            if (st != TRIATTN_OK) {
                tri_cuda_free(grown.mem);
            }
        }
        if (st == TRIATTN_OK) {
            tri_cuda_free(cm->ws.mem);
            cm->used -= cm->ws.bytes;
            grown.bytes = ws_bytes;
            grown.rows = rows;
            grown.version = cm->ws.version + 1;
            cm->ws = grown;
            cm->used += ws_bytes;
        }
    }
    if (st == TRIATTN_OK) {
        cm->used += bytes;
    }
    pthread_mutex_unlock(&cm->lock);
    if (st == TRIATTN_OK) {
        return TRIATTN_OK;
    }
    if (need <= avail) {
        return tri_fail(err, en, st, "CUDA backend: step buffers for n_batch %d (%.1f MiB): %s", rows,
                        ws_bytes / 1048576.0, tri_cuda_last_error());
    }
    const bool compressing = s->kv.capacity < s->params.n_ctx;
    char where[96];
    if (cm->limit) {
        snprintf(where, sizeof where, "left under the %s gpu_mem_limit", tri_cu_size_of(cm->limit).s);
    } else {
        snprintf(where, sizeof where, "free on the device");
    }
    return tri_fail(err, en, TRIATTN_ERR_OOM,
                    "KV cache for n_ctx %d (%d slots per layer and KV head) needs %s, the session %s in all; %s %s: "
                    "%s", s->params.n_ctx, s->kv.capacity, tri_cu_size_of(kv_bytes).s, tri_cu_size_of(need).s,
                    tri_cu_size_of(avail).s, where,
                    compressing ? "use a smaller kv_budget (--kv-budget) or n_batch (-b)"
                                : "use kv_policy triattention (--kv-policy triattention) or a smaller n_ctx (-c)");
}

static enum triattn_status tri_cu_session_init(triattn_session * s, char * err, size_t en) {
    const struct triattn_model * m = s->model;
    const tri_hparams * hp = &m->hp;
    const char * policy = s->policy.ops->name;
    const bool ta = strcmp(policy, "triattention") == 0;
    if (!ta && strcmp(policy, "full") != 0) {
        return tri_fail(err, en, TRIATTN_ERR_UNSUPPORTED, "kv_policy '%s' is not supported on the CUDA backend "
                        "(supported there: full, triattention); load the model with n_gpu_layers = 0 for it", policy);
    }
    if (ta && !m->centres) {
        return tri_fail(err, en, TRIATTN_ERR_INVALID_ARG, "kv_policy 'triattention' needs query centres");
    }
    tri_ta_opts opts;
    enum triattn_status ost = tri_ta_parse_mode(s->policy.cfg.mode, &opts, err, en);
    if (ost != TRIATTN_OK) {
        return ost;
    }
    if (opts.trig != 1.0f || opts.norm != 1.0f || opts.layer_max || opts.look > 0) {
        return tri_fail(err, en, TRIATTN_ERR_UNSUPPORTED, "kv_mode '%s': options after the mode are not supported "
                        "on the CUDA backend; load the model with n_gpu_layers = 0 for them", s->policy.cfg.mode);
    }
    if (s->params.n_batch > 65535) {
        return tri_fail(err, en, TRIATTN_ERR_UNSUPPORTED, "CUDA backend: n_batch %d > 65535", s->params.n_batch);
    }
    const int32_t cap = TRI_MIN(s->policy.ops->capacity(&s->policy.cfg), s->params.n_ctx);
    const size_t kv_bytes = tri_kv_cache_bytes(hp->n_layer, hp->n_head_kv, hp->head_dim, cap);
    if (kv_bytes == 0) {
        return tri_fail(err, en, TRIATTN_ERR_INVALID_ARG, "KV cache of %d slots x %d layers x %d KV heads is too large",
                        cap, hp->n_layer, hp->n_head_kv);
    }
    tri_cu_session * c = calloc(1, sizeof *c);
    if (!c) {
        return tri_fail(err, en, TRIATTN_ERR_OOM, "out of memory");
    }
    s->backend_state = c;
    c->L = hp->n_layer;
    c->H = hp->n_head;
    c->Hkv = hp->n_head_kv;
    c->D = hp->head_dim;
    c->R = hp->rope_dim;
    c->F = hp->rope_dim / 2;
    c->cap = cap;
    c->n_batch = s->params.n_batch;
    c->n_vocab = hp->n_vocab;
    c->n_embd = hp->n_embd;
    c->n_ff = hp->n_ff;
    c->q_dim = hp->n_head * hp->head_dim;
    c->kv_dim = hp->n_head_kv * hp->head_dim;
    c->max_in = tri_cu_max_in(hp);
    c->triattention = ta;
    c->mode = opts.mode == TRI_TA_PER_LAYER_PER_HEAD ? TRI_CU_PER_LAYER_PER_HEAD
            : opts.mode == TRI_TA_GLOBAL             ? TRI_CU_GLOBAL
                                                     : TRI_CU_PER_HEAD;
    c->window = s->policy.cfg.window < 0 ? TRI_KV_DEFAULT_WINDOW : s->policy.cfg.window;
    c->prof = tri_cu_prof_new(c->L);
    c->use_graphs = tri_cuda_env_flag("TRIATTN_CUDA_GRAPHS", true) && !c->prof; /* profiled steps run plainly */
    c->mq_min = tri_cu_mq_min();
    c->mq_max = tri_cu_mq_max();
    c->att_mma_min = tri_cu_att_mma_min();
    c->att_fused = tri_cuda_env_flag("TRIATTN_CUDA_ATT_FUSED", true);

    /* Host mirror of the cache: positions and live counts only. */
    const size_t LK = (size_t) c->L * c->Hkv, LH = (size_t) c->L * c->H, slots = LK * cap;
    s->kv.n_layer   = c->L;
    s->kv.n_head_kv = c->Hkv;
    s->kv.head_dim  = c->D;
    s->kv.capacity  = cap;
    s->kv.bytes     = kv_bytes;
    s->kv.pos       = malloc(sizeof(int32_t) * slots);
    s->kv.n_live    = calloc(LK, sizeof(int32_t));
    if (!s->kv.pos || !s->kv.n_live) {
        return tri_fail(err, en, TRIATTN_ERR_OOM, "out of memory");
    }
    const enum triattn_status lst = tri_kv_cache_uniform_layout(&s->kv, err, en);
    if (lst != TRIATTN_OK) {
        return lst;
    }

    const size_t nb = (size_t) c->n_batch, capz = (size_t) cap, D = (size_t) c->D;
    const size_t rs = ta ? 1 : 0; /* round scratch only for triattention */
    tri_cu_part dev[] = {
        { &c->K,                  slots * D * sizeof(tri_fp16) },
        { &c->V,                  slots * D * sizeof(tri_fp16) },
        { (void **) &c->pos,      slots * sizeof(int32_t) },
        { (void **) &c->n_live,   LK * sizeof(int32_t) },
        { (void **) &c->w,        rs * LH * D * sizeof(float) },
        { (void **) &c->cw,       rs * LH * D * sizeof(float) },
        { (void **) &c->scores,   rs * LH * capz * sizeof(float) },
        { (void **) &c->agg,      rs * LK * capz * sizeof(float) },
        { (void **) &c->mean,     rs * c->Hkv * capz * sizeof(float) },
        { (void **) &c->marks,    rs * LK * capz },
        { (void **) &c->lohi,     rs * 2 * LK * sizeof(int32_t) },
        { (void **) &c->nk,       rs * 2 * LK * sizeof(int32_t) },
        { (void **) &c->keep,     rs * LK * capz * sizeof(int32_t) },
        { (void **) &c->n_keep,   rs * LK * sizeof(int32_t) },
    };
    tri_cu_part host[] = {
        { (void **) &c->h_tok,    nb * sizeof(int32_t) },
        { (void **) &c->h_cs,     nb * c->R * sizeof(float) },
        { (void **) &c->h_rows,   nb * sizeof(tri_cuda_row) },
        { (void **) &c->h_logits, nb * TRI_MAX(c->n_vocab, c->n_embd) * sizeof(float) }, /* or hidden rows */
        { (void **) &c->h_w,      rs * LH * D * sizeof(float) },
        { (void **) &c->h_cw,     rs * LH * D * sizeof(float) },
        { (void **) &c->h_lohi,   rs * 2 * LK * sizeof(int32_t) },
        { (void **) &c->h_nk,     rs * 2 * LK * sizeof(int32_t) },
        { (void **) &c->h_keep,   rs * LK * capz * sizeof(int32_t) },
        { (void **) &c->h_n_keep, rs * LK * sizeof(int32_t) },
        { (void **) &c->h_k,      rs * LK * sizeof(int32_t) },
        { (void **) &c->h_marks,  rs * LK * capz },
        { (void **) &c->h_rows_kv, capz * D * sizeof(tri_fp16) },
        { (void **) &c->omega,    rs * c->F * sizeof(double) },
        { (void **) &c->a_re,     rs * c->F * sizeof(double) },
        { (void **) &c->a_im,     rs * c->F * sizeof(double) },
    };
    const size_t dev_total = tri_cu_parts_bytes(dev, sizeof dev / sizeof dev[0]);
    enum triattn_status st = tri_cuda_set_device(TRI_CU_DEVICE);
    if (st == TRIATTN_OK) {
        st = tri_cu_reserve(s, dev_total, kv_bytes, err, en);
        if (st != TRIATTN_OK) {
            return st;
        }
        c->dev_bytes = dev_total;
    }
    if (st == TRIATTN_OK) {
        st = tri_cuda_stream_create(&c->stream);
    }
    if (st == TRIATTN_OK) {
        st = tri_cu_carve(dev, sizeof dev / sizeof dev[0], true, &c->dmem);
    }
    if (st == TRIATTN_OK) {
        st = tri_cu_carve(host, sizeof host / sizeof host[0], false, &c->hmem);
    }
    if (st == TRIATTN_OK) {
        st = tri_cuda_memset(c->n_live, 0, LK * sizeof(int32_t), c->stream);
    }
    if (st == TRIATTN_OK) {
        st = tri_cuda_sync(c->stream);
    }
    if (st != TRIATTN_OK) {
        return tri_fail(err, en, st, "CUDA backend: session buffers (KV cache %.1f MiB, n_batch %d): %s",
                        kv_bytes / 1048576.0, c->n_batch, tri_cuda_last_error());
    }
    if (ta) {
        memset(c->h_w, 0, LH * D * sizeof(float));
        memset(c->h_cw, 0, LH * D * sizeof(float));
        for (int f = 0; f < c->F; f++) {
            c->omega[f] = (double) m->rope_inv_freq[f] * (double) hp->rope_freq_scale;
        }
    }
    s->fwd.m       = m;
    s->fwd.n_batch = c->n_batch;
    s->fwd.logits  = c->h_logits;
    s->fwd.n_logits = 0;
    return TRIATTN_OK;
}

static void tri_cu_reset(triattn_session * s) {
    tri_cu_session * c = s->backend_state;
    enum triattn_status st = tri_cuda_set_device(TRI_CU_DEVICE);
    if (st == TRIATTN_OK) {
        st = tri_cuda_memset(c->n_live, 0, (size_t) c->L * c->Hkv * sizeof(int32_t), c->stream);
    }
    if (st == TRIATTN_OK) {
        st = tri_cuda_sync(c->stream);
    }
    if (st != TRIATTN_OK) {
        tri_log(TRIATTN_LOG_ERROR, "CUDA backend: reset: %s", tri_cuda_last_error());
    }
    s->fwd.n_logits = 0;
}

/* ---- read-back and the table ------------------------------------------------------------------- */

/* Device K and V rows of (layer, KV head) i. */
static void tri_cu_head_rows(const tri_cu_session * c, int i, tri_fp16 ** k, tri_fp16 ** v) {
    const size_t row0 = (size_t) i * c->cap;
    *k = (tri_fp16 *) c->K + row0 * c->D;
    *v = (tri_fp16 *) c->V + row0 * c->D;
}

/* bytes between a head's device rows dev and other (host memory, or another session's device rows) in direction dir. */
static enum triattn_status tri_cu_move(enum tri_kv_copy_dir dir, tri_fp16 * dev, tri_fp16 * other, size_t bytes,
                                       tri_cuda_stream s) {
    return dir == TRI_KV_TO_HOST     ? tri_cuda_d2h(other, dev, bytes, s)
         : dir == TRI_KV_TO_DEVICE   ? tri_cuda_h2d(dev, other, bytes, s)
                                     : tri_cuda_d2d(dev, other, bytes, s);
}

static enum triattn_status tri_cu_kv_keys(const triattn_session * s, int layer, int kv_head, float * out, int32_t rows) {
    tri_cu_session * c = s->backend_state;
    if (rows <= 0) {
        return TRIATTN_OK;
    }
    const size_t n = (size_t) rows * c->D;
    tri_fp16 * K, * V;
    tri_cu_head_rows(c, layer * c->Hkv + kv_head, &K, &V);
    enum triattn_status st = tri_cuda_set_device(TRI_CU_DEVICE);
    if (st == TRIATTN_OK) {
        st = tri_cuda_d2h(c->h_rows_kv, K, n * sizeof(tri_fp16), c->stream);
    }
    if (st == TRIATTN_OK) {
        st = tri_cuda_sync(c->stream);
    }
    if (st != TRIATTN_OK) {
        tri_log(TRIATTN_LOG_ERROR, "CUDA backend: kv_keys: %s", tri_cuda_last_error());
        return st;
    }
    for (size_t i = 0; i < n; i++) {
        out[i] = tri_fp16_to_fp32(c->h_rows_kv[i]);
    }
    return TRIATTN_OK;
}

static enum triattn_status tri_cu_kv_copy(triattn_session * s, int i, tri_fp16 * k, tri_fp16 * v,
                                          enum tri_kv_copy_dir dir) {
    tri_cu_session * c = s->backend_state;
    const size_t row0 = (size_t) i * c->cap, n = (size_t) s->kv.n_live[i];
    const size_t bytes = n * (size_t) c->D * sizeof(tri_fp16);
    tri_fp16 * K, * V;
    tri_cu_head_rows(c, i, &K, &V);
    enum triattn_status st = tri_cuda_set_device(TRI_CU_DEVICE);
    if (st == TRIATTN_OK) {
        st = tri_cu_move(dir, K, k, bytes, c->stream);
    }
    if (st == TRIATTN_OK) {
        st = tri_cu_move(dir, V, v, bytes, c->stream);
    }
    if (st == TRIATTN_OK && dir != TRI_KV_TO_HOST) {
        st = tri_cuda_h2d(c->pos + row0, s->kv.pos + row0, n * sizeof(int32_t), c->stream);
    }
    /* pageable host memory: those copies are done on return; a copy on the device is, at kv_set_live's wait */
    if (st == TRIATTN_OK && dir != TRI_KV_ON_DEVICE) {
        st = tri_cuda_sync(c->stream);
    }
    if (st != TRIATTN_OK) {
        (void) tri_cuda_sync(c->stream); /* nothing left reading the source's rows */
        return tri_session_fail(s, st, "CUDA backend: copying the KV cache: %s", tri_cuda_last_error());
    }
    return TRIATTN_OK;
}

static enum triattn_status tri_cu_kv_rows(triattn_session * s, int i, const tri_fp16 ** k, const tri_fp16 ** v) {
    tri_cu_session * c = s->backend_state;
    tri_fp16 * K, * V;
    tri_cu_head_rows(c, i, &K, &V);
    *k = K;
    *v = V;
    enum triattn_status st = tri_cuda_set_device(TRI_CU_DEVICE);
    if (st == TRIATTN_OK) {
        st = tri_cuda_sync(c->stream);
    }
    if (st != TRIATTN_OK) {
        return tri_session_fail(s, st, "CUDA backend: waiting for the KV cache: %s", tri_cuda_last_error());
    }
    return TRIATTN_OK;
}

static enum triattn_status tri_cu_kv_set_live(triattn_session * s) {
    tri_cu_session * c = s->backend_state;
    enum triattn_status st = tri_cuda_set_device(TRI_CU_DEVICE);
    if (st == TRIATTN_OK) {
        st = tri_cuda_h2d(c->n_live, s->kv.n_live, sizeof(int32_t) * (size_t) c->L * c->Hkv, c->stream);
    }
    if (st == TRIATTN_OK) {
        st = tri_cuda_sync(c->stream);
    }
    if (st != TRIATTN_OK) {
        return tri_session_fail(s, st, "CUDA backend: setting the live slots: %s", tri_cuda_last_error());
    }
    return TRIATTN_OK;
}

static int tri_cu_device_count(char * why, size_t n) {
    return tri_cuda_device_count(why, n);
}

static void tri_cu_memory(const struct triattn_model * m, uint64_t * used, uint64_t * limit) {
    tri_cu_model * cm = m->backend_state;
    pthread_mutex_lock(&cm->lock);
    *used = cm->used;
    *limit = cm->limit;
    pthread_mutex_unlock(&cm->lock);
}

const tri_backend_ops tri_backend_cuda = {
    .name          = "cuda",
    .device_count  = tri_cu_device_count,
    .model_upload  = tri_cu_model_upload,
    .model_free    = tri_cu_model_free,
    .memory        = tri_cu_memory,
    .session_init  = tri_cu_session_init,
    .session_free  = tri_cu_session_free,
    .reset         = tri_cu_reset,
    .forward       = tri_cu_forward,
    .compress      = tri_cu_compress,
    .kv_keys       = tri_cu_kv_keys,
    .kv_copy       = tri_cu_kv_copy,
    .kv_rows       = tri_cu_kv_rows,
    .kv_set_live   = tri_cu_kv_set_live,
};
