/* The CUDA backend (src/backend.h): weights uploaded once per model in their GGUF block layout; per session a
 * device KV cache in the per-(layer, KV head) slot layout with positions, the forward pass of llama / qwen2 /
 * qwen3 layers, and the TriAttention round (fused scores, z-score, GQA max, layer mean, top-k, compaction) on
 * the device. The host keeps only the position and live-count mirror of the cache (s->kv.pos, s->kv.n_live),
 * plans each round with the CPU policy's own helpers (kv_select.h) and copies back the logits once per call
 * and the keep marks once per round. Compiled only with -DTRIATTN_CUDA=ON. */
#include "backend.h"
#include "calibration.h"
#include "common.h"
#include "kv_select.h"
#include "model.h"
#include "session.h"
#include "tri_cuda.h"
#include "triattn_score.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define TRI_CU_DEVICE    0    /* the one device a model uses */
#define TRI_CU_ALIGN     256  /* bytes: every device / pinned sub-buffer starts on this boundary */
#define TRI_CU_ATT_SLOTS 128  /* slots per attention split of a decode step */
#define TRI_CU_ATT_PARTS 64   /* most splits of one (token, head) */

/* ---- model ------------------------------------------------------------------------------------- */

/* A weight on the device (d = NULL when the optional tensor is absent). */
typedef struct tri_cu_w {
    const void * d;
    int          type;
    int64_t      ne0, ne1;
} tri_cu_w;

typedef struct tri_cu_layer {
    tri_cu_w attn_norm, wq, wk, wv, bq, bk, bv, q_norm, k_norm, wo, ffn_norm, ffn_gate, ffn_up, ffn_down;
} tri_cu_layer;

typedef struct tri_cu_model {
    void *         mem;       /* one device allocation holding every tensor */
    size_t         bytes;
    tri_cu_w       tok_embd, output_norm, output;
    tri_cu_layer * layers;    /* n_layer */
} tri_cu_model;

static size_t tri_cu_align(size_t n) {
    return (n + TRI_CU_ALIGN - 1) & ~(size_t) (TRI_CU_ALIGN - 1);
}

static size_t tri_cu_tensor_bytes(const tri_tensor * t) {
    return tri_row_size(t->type, t->ne0) * (size_t) t->ne1;
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
    tri_cuda_free(cm->mem);
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
    if (hp->head_dim > TRI_CUDA_ATT_MAX_D || hp->n_head > 65535 || (int64_t) hp->n_layer * hp->n_head > 65535) {
        return tri_fail(err, n, TRIATTN_ERR_UNSUPPORTED, "CUDA backend: head_dim %d / %d heads x %d layers exceed "
                        "the kernels' limits (head_dim <= %d)", hp->head_dim, hp->n_head, hp->n_layer,
                        TRI_CUDA_ATT_MAX_D);
    }
    return TRIATTN_OK;
}

static enum triattn_status tri_cu_model_upload(const struct triattn_model * m, void ** state, char * err, size_t n) {
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
    *state = cm;
    return TRIATTN_OK;
}

/* ---- session ----------------------------------------------------------------------------------- */

enum tri_cu_mode { TRI_CU_PER_HEAD = 0, TRI_CU_PER_LAYER_PER_HEAD = 1, TRI_CU_GLOBAL = 2 };

typedef struct tri_cu_session {
    tri_cuda_stream stream;
    int32_t L, H, Hkv, D, R, F, cap, n_batch, n_vocab, n_embd, n_ff, q_dim, kv_dim, part_rows;
    bool    triattention;
    enum tri_cu_mode mode;
    int32_t window;               /* as configured (-1 resolved to the default) */

    /* device */
    void *    dmem;
    void *    K, * V;             /* [L][Hkv][cap][D] halves */
    int32_t * pos, * n_live;      /* [L][Hkv][cap], [L][Hkv] */
    int32_t * tok;                /* [n_batch] */
    float *   cs;                 /* [n_batch][rope_dim] RoPE cos, sin */
    float *   x, * xn, * q, * k, * v, * att, * gate, * up, * tmp, * part, * logits;
    float *   w, * cw;            /* round: [L][H][D] synthetic queries and norm weights */
    float *   scores, * agg, * mean; /* round: [L][H][cap], [L][Hkv][cap], [Hkv][cap] */
    uint8_t * marks;              /* round: [L * Hkv][cap] */
    int32_t * lohi;               /* round: lo [L * Hkv], then hi [L * Hkv] */
    int32_t * nk;                 /* round: candidates [L * Hkv], then kept [L * Hkv], per selection group */
    int32_t * keep, * n_keep;     /* round: [L * Hkv][cap] slots kept, [L * Hkv] their count (-1 = untouched) */

    /* host, page-locked */
    void *     hmem;
    int32_t *  h_tok;
    float *    h_cs, * h_logits, * h_w, * h_cw;
    int32_t *  h_lohi, * h_nk, * h_keep, * h_n_keep, * h_k;
    uint8_t *  h_marks;
    tri_fp16 * h_rows;            /* [cap][D] staging of kv_keys */
    double *   omega, * a_re, * a_im; /* [F] */
} tri_cu_session;

typedef struct tri_cu_part {
    void ** p;
    size_t  bytes;
} tri_cu_part;

/* Carves one allocation (device or page-locked host) into the parts. */
static enum triattn_status tri_cu_carve(tri_cu_part * parts, size_t n_parts, bool device, void ** mem) {
    size_t total = 0;
    for (size_t i = 0; i < n_parts; i++) {
        total += tri_cu_align(parts[i].bytes);
    }
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
        if (c->stream) {
            (void) tri_cuda_sync(c->stream);
        }
        tri_cuda_free(c->dmem);
        tri_cuda_host_free(c->hmem);
        tri_cuda_stream_destroy(c->stream);
        free(c);
    }
    s->backend_state = NULL;
    tri_kv_cache_free(&s->kv); /* the host mirror: k and v are NULL */
    memset(&s->fwd, 0, sizeof s->fwd);
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
    c->part_rows = TRI_MAX(c->n_batch, TRI_CU_ATT_PARTS) * c->H;
    c->triattention = ta;
    c->mode = opts.mode == TRI_TA_PER_LAYER_PER_HEAD ? TRI_CU_PER_LAYER_PER_HEAD
            : opts.mode == TRI_TA_GLOBAL             ? TRI_CU_GLOBAL
                                                     : TRI_CU_PER_HEAD;
    c->window = s->policy.cfg.window < 0 ? TRI_KV_DEFAULT_WINDOW : s->policy.cfg.window;

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
        { (void **) &c->tok,      nb * sizeof(int32_t) },
        { (void **) &c->cs,       nb * c->R * sizeof(float) },
        { (void **) &c->x,        nb * c->n_embd * sizeof(float) },
        { (void **) &c->xn,       nb * c->n_embd * sizeof(float) },
        { (void **) &c->q,        nb * c->q_dim * sizeof(float) },
        { (void **) &c->k,        nb * c->kv_dim * sizeof(float) },
        { (void **) &c->v,        nb * c->kv_dim * sizeof(float) },
        { (void **) &c->att,      nb * c->q_dim * sizeof(float) },
        { (void **) &c->gate,     nb * c->n_ff * sizeof(float) },
        { (void **) &c->up,       nb * c->n_ff * sizeof(float) },
        { (void **) &c->tmp,      nb * c->n_embd * sizeof(float) },
        { (void **) &c->part,     (size_t) c->part_rows * (D + 2) * sizeof(float) },
        { (void **) &c->logits,   nb * c->n_vocab * sizeof(float) },
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
        { (void **) &c->h_logits, nb * c->n_vocab * sizeof(float) },
        { (void **) &c->h_w,      rs * LH * D * sizeof(float) },
        { (void **) &c->h_cw,     rs * LH * D * sizeof(float) },
        { (void **) &c->h_lohi,   rs * 2 * LK * sizeof(int32_t) },
        { (void **) &c->h_nk,     rs * 2 * LK * sizeof(int32_t) },
        { (void **) &c->h_keep,   rs * LK * capz * sizeof(int32_t) },
        { (void **) &c->h_n_keep, rs * LK * sizeof(int32_t) },
        { (void **) &c->h_k,      rs * LK * sizeof(int32_t) },
        { (void **) &c->h_marks,  rs * LK * capz },
        { (void **) &c->h_rows,   capz * D * sizeof(tri_fp16) },
        { (void **) &c->omega,    rs * c->F * sizeof(double) },
        { (void **) &c->a_re,     rs * c->F * sizeof(double) },
        { (void **) &c->a_im,     rs * c->F * sizeof(double) },
    };
    enum triattn_status st = tri_cuda_set_device(TRI_CU_DEVICE);
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
    enum triattn_status st = tri_cuda_memset(c->n_live, 0, (size_t) c->L * c->Hkv * sizeof(int32_t), c->stream);
    if (st == TRIATTN_OK) {
        st = tri_cuda_sync(c->stream);
    }
    if (st != TRIATTN_OK) {
        tri_log(TRIATTN_LOG_ERROR, "CUDA backend: reset: %s", tri_cuda_last_error());
    }
    s->fwd.n_logits = 0;
}

/* ---- forward pass ------------------------------------------------------------------------------ */

static enum triattn_status tri_cu_mm(const tri_cu_session * c, const tri_cu_w * w, const float * x, int64_t ldx, int n,
                                     float * y, int64_t ldy) {
    return tri_cuda_matmul(w->type, w->d, w->ne0, w->ne1, x, ldx, n, y, ldy, c->stream);
}

#define TRI_CU_TRY(expr)              \
    do {                              \
        st = (expr);                  \
        if (st != TRIATTN_OK) {       \
            goto fail;                \
        }                             \
    } while (0)

/* One layer of the pre-norm attention + SwiGLU block (llama, qwen2 biases, qwen3 q/k norms). */
static enum triattn_status tri_cu_layer_run(tri_cu_session * c, const struct triattn_model * m, const tri_cu_layer * Lw,
                                            int il, int n, int32_t pos0, int parts) {
    const tri_hparams * hp = &m->hp;
    const float eps = hp->norm_eps;
    void * sm = c->stream;
    const size_t lh0 = (size_t) il * c->Hkv;
    const size_t kv_off = lh0 * c->cap * c->D;
    enum triattn_status st;
    TRI_CU_TRY(tri_cuda_rmsnorm(c->x, Lw->attn_norm.d, c->xn, n, c->n_embd, c->n_embd, eps, sm));
    TRI_CU_TRY(tri_cu_mm(c, &Lw->wq, c->xn, c->n_embd, n, c->q, c->q_dim));
    TRI_CU_TRY(tri_cu_mm(c, &Lw->wk, c->xn, c->n_embd, n, c->k, c->kv_dim));
    TRI_CU_TRY(tri_cu_mm(c, &Lw->wv, c->xn, c->n_embd, n, c->v, c->kv_dim));
    if (Lw->bq.d) {
        TRI_CU_TRY(tri_cuda_add_bias(c->q, Lw->bq.d, n, c->q_dim, sm));
        TRI_CU_TRY(tri_cuda_add_bias(c->k, Lw->bk.d, n, c->kv_dim, sm));
        TRI_CU_TRY(tri_cuda_add_bias(c->v, Lw->bv.d, n, c->kv_dim, sm));
    }
    if (Lw->q_norm.d) {
        TRI_CU_TRY(tri_cuda_rmsnorm(c->q, Lw->q_norm.d, c->q, n * c->H, c->D, c->D, eps, sm));
        TRI_CU_TRY(tri_cuda_rmsnorm(c->k, Lw->k_norm.d, c->k, n * c->Hkv, c->D, c->D, eps, sm));
    }
    const int pairing = hp->rope_pairing == TRI_ROPE_ADJACENT ? 0 : 1;
    TRI_CU_TRY(tri_cuda_rope(c->q, n, c->H, c->D, c->R, c->cs, pairing, sm));
    TRI_CU_TRY(tri_cuda_rope(c->k, n, c->Hkv, c->D, c->R, c->cs, pairing, sm));
    TRI_CU_TRY(tri_cuda_kv_append(c->K, c->V, c->pos, c->n_live, il, c->Hkv, c->cap, c->D, c->k, c->v, n, pos0, sm));
    TRI_CU_TRY(tri_cuda_attention(c->q, (const tri_fp16 *) c->K + kv_off, (const tri_fp16 *) c->V + kv_off,
                                  c->pos + lh0 * c->cap, c->n_live + lh0, n, c->cap, c->H, c->Hkv, c->D, n, pos0, parts,
                                  c->part, c->att, sm));
    TRI_CU_TRY(tri_cu_mm(c, &Lw->wo, c->att, c->q_dim, n, c->tmp, c->n_embd));
    TRI_CU_TRY(tri_cuda_add(c->x, c->tmp, (int64_t) n * c->n_embd, sm));
    TRI_CU_TRY(tri_cuda_rmsnorm(c->x, Lw->ffn_norm.d, c->xn, n, c->n_embd, c->n_embd, eps, sm));
    TRI_CU_TRY(tri_cu_mm(c, &Lw->ffn_gate, c->xn, c->n_embd, n, c->gate, c->n_ff));
    TRI_CU_TRY(tri_cu_mm(c, &Lw->ffn_up, c->xn, c->n_embd, n, c->up, c->n_ff));
    TRI_CU_TRY(tri_cuda_swiglu(c->gate, c->up, (int64_t) n * c->n_ff, sm));
    TRI_CU_TRY(tri_cu_mm(c, &Lw->ffn_down, c->gate, c->n_ff, n, c->tmp, c->n_embd));
    TRI_CU_TRY(tri_cuda_add(c->x, c->tmp, (int64_t) n * c->n_embd, sm));
    return TRIATTN_OK;
fail:
    return st;
}

static enum triattn_status tri_cu_forward_chunk(triattn_session * s, const triattn_token * tokens, int32_t n,
                                                int32_t pos0, enum tri_logits_mode mode, char * err, size_t en) {
    tri_cu_session * c = s->backend_state;
    const struct triattn_model * m = s->model;
    const tri_cu_model * cm = m->backend_state;
    const tri_hparams * hp = &m->hp;
    s->fwd.n_logits = 0;
    if (s->fwd.calib) {
        return tri_fail(err, en, TRIATTN_ERR_UNSUPPORTED, "calibration runs on the CPU backend only: load the model "
                        "with n_gpu_layers = 0 to calibrate");
    }
    int32_t live_lo, live_hi;
    tri_kv_cache_live_range(&s->kv, &live_lo, &live_hi);
    if (n <= 0 || n > c->n_batch || live_hi + n > c->cap) {
        return tri_fail(err, en, TRIATTN_ERR_INTERNAL, "forward chunk of %d tokens: n_batch %d, %d live of %d slots", n,
                        c->n_batch, live_hi, c->cap);
    }
    /* Inputs: token ids and the RoPE table (in double, exactly as the CPU's). */
    memcpy(c->h_tok, tokens, sizeof(int32_t) * (size_t) n);
    for (int t = 0; t < n; t++) {
        const double p = (double) (pos0 + t) * hp->rope_freq_scale;
        float * cs = c->h_cs + (size_t) t * c->R;
        for (int i = 0; i < c->F; i++) {
            const double theta = p * m->rope_inv_freq[i];
            cs[2 * i]     = (float) cos(theta);
            cs[2 * i + 1] = (float) sin(theta);
        }
    }
    /* Attention splits: enough blocks for one decode token to fill the device, bounded by the scratch. */
    int parts = (live_hi + n + TRI_CU_ATT_SLOTS - 1) / TRI_CU_ATT_SLOTS;
    parts = TRI_MAX(1, TRI_MIN(parts, TRI_MIN(TRI_CU_ATT_PARTS, c->part_rows / (n * c->H))));

    enum triattn_status st;
    void * sm = c->stream;
    TRI_CU_TRY(tri_cuda_set_device(TRI_CU_DEVICE));
    TRI_CU_TRY(tri_cuda_h2d(c->tok, c->h_tok, sizeof(int32_t) * (size_t) n, sm));
    TRI_CU_TRY(tri_cuda_h2d(c->cs, c->h_cs, sizeof(float) * (size_t) n * c->R, sm));
    TRI_CU_TRY(tri_cuda_get_rows(cm->tok_embd.type, cm->tok_embd.d, c->n_embd, c->tok, n, c->x, sm));
    for (int il = 0; il < c->L; il++) {
        TRI_CU_TRY(tri_cu_layer_run(c, m, &cm->layers[il], il, n, pos0, parts));
    }
    TRI_CU_TRY(tri_cuda_kv_bump(c->n_live, c->L * c->Hkv, n, sm));
    int32_t rows = 0;
    if (mode != TRI_LOGITS_NONE) {
        const int first = mode == TRI_LOGITS_ALL ? 0 : n - 1;
        rows = n - first;
        TRI_CU_TRY(tri_cuda_rmsnorm(c->x + (size_t) first * c->n_embd, cm->output_norm.d, c->xn, rows, c->n_embd,
                                    c->n_embd, hp->norm_eps, sm));
        TRI_CU_TRY(tri_cu_mm(c, &cm->output, c->xn, c->n_embd, rows, c->logits, c->n_vocab));
        TRI_CU_TRY(tri_cuda_d2h(c->h_logits, c->logits, sizeof(float) * (size_t) rows * c->n_vocab, sm));
    }
    TRI_CU_TRY(tri_cuda_sync(sm));

    /* The host mirror follows the device: positions pos0.. appended to every (layer, KV head). */
    for (int i = 0; i < c->L * c->Hkv; i++) {
        int32_t * pos = s->kv.pos + (size_t) i * c->cap;
        for (int t = 0; t < n; t++) {
            pos[s->kv.n_live[i] + t] = pos0 + t;
        }
        s->kv.n_live[i] += n;
    }
    s->fwd.n_logits = rows;
    return TRIATTN_OK;
fail:
    return tri_fail(err, en, st, "%s (the session's cache may be inconsistent: reset it)", tri_cuda_last_error());
}

/* ---- TriAttention round ------------------------------------------------------------------------ */

static enum triattn_status tri_cu_compress(triattn_session * s, int32_t next_pos, char * err, size_t en) {
    tri_cu_session * c = s->backend_state;
    if (!c->triattention) {
        return TRIATTN_OK; /* full: nothing to evict; the session reports a full cache */
    }
    const int LK = c->L * c->Hkv, LH = c->L * c->H;
    int32_t * lo = c->h_lohi, * hi = c->h_lohi + LK;
    int64_t evicted = 0;
    if (!tri_kv_plan(&s->policy, &s->kv, c->window, lo, hi, c->h_k, &evicted)) {
        return TRIATTN_OK;
    }
    if (c->mode != TRI_CU_PER_LAYER_PER_HEAD) {
        for (int i = 0; i < LK; i++) {
            const int ref = c->mode == TRI_CU_GLOBAL ? 0 : i % c->Hkv;
            if (lo[i] != lo[ref] || hi[i] != hi[ref]) {
                return tri_fail(err, en, TRIATTN_ERR_INTERNAL,
                                "triattention: (layer %d, KV head %d) holds other tokens than its group", i / c->Hkv,
                                i % c->Hkv);
            }
        }
    }
    /* Selection groups: every (layer, KV head), each KV head, or one. */
    const int n_groups = c->mode == TRI_CU_PER_LAYER_PER_HEAD ? LK : c->mode == TRI_CU_GLOBAL ? 1 : c->Hkv;
    int max_n = 0;
    for (int i = 0; i < LK; i++) {
        max_n = TRI_MAX(max_n, hi[i] - lo[i]);
    }
    for (int g = 0; g < n_groups; g++) {
        c->h_nk[g] = hi[g] - lo[g];          /* group g's members share (0, g)'s range, or it is (l, h) itself */
        c->h_nk[LK + g] = c->h_k[g];
    }
    /* Synthetic queries of the round at the absolute position of the next token (host, double). */
    const tri_centres * ce = s->model->centres;
    tri_triattn_phase(c->F, c->omega, (double) next_pos, c->a_re, c->a_im);
    for (int r = 0; r < LH; r++) {
        const size_t o = (size_t) r * c->F;
        tri_triattn_query(c->R, s->model->hp.rope_pairing, ce->q_re + o, ce->q_im + o, ce->q_abs + o, c->a_re, c->a_im,
                          1.0, c->h_w + (size_t) r * c->D, c->h_cw + (size_t) r * c->D);
    }
    const int pairing = s->model->hp.rope_pairing == TRI_ROPE_ADJACENT ? 0 : 1;
    const size_t capz = (size_t) c->cap;
    void * sm = c->stream;
    enum triattn_status st;
    TRI_CU_TRY(tri_cuda_set_device(TRI_CU_DEVICE));
    TRI_CU_TRY(tri_cuda_h2d(c->w, c->h_w, sizeof(float) * (size_t) LH * c->D, sm));
    TRI_CU_TRY(tri_cuda_h2d(c->cw, c->h_cw, sizeof(float) * (size_t) LH * c->D, sm));
    TRI_CU_TRY(tri_cuda_h2d(c->lohi, c->h_lohi, sizeof(int32_t) * 2 * (size_t) LK, sm));
    TRI_CU_TRY(tri_cuda_h2d(c->nk, c->h_nk, sizeof(int32_t) * 2 * (size_t) LK, sm));
    TRI_CU_TRY(tri_cuda_triattn_score(c->K, c->w, c->cw, c->lohi, c->lohi + LK, c->L, c->H, c->Hkv, c->D, c->R, pairing,
                                      c->cap, max_n, c->scores, sm));
    TRI_CU_TRY(tri_cuda_triattn_zscore(c->scores, c->lohi, c->lohi + LK, c->L, c->H, c->Hkv, c->cap, sm));
    TRI_CU_TRY(tri_cuda_triattn_gqa_max(c->scores, c->lohi, c->lohi + LK, c->L, c->H, c->Hkv, c->cap, max_n, c->agg,
                                        sm));
    const float * ranked = c->agg;
    if (c->mode != TRI_CU_PER_LAYER_PER_HEAD) {
        TRI_CU_TRY(tri_cuda_triattn_layer_mean(c->agg, c->lohi, c->lohi + LK, c->L, c->Hkv, c->cap, max_n,
                                               c->mode == TRI_CU_GLOBAL, c->mean, sm));
        ranked = c->mean;
    }
    TRI_CU_TRY(tri_cuda_topk(ranked, c->nk, c->nk + LK, n_groups, c->cap, c->marks, sm));
    TRI_CU_TRY(tri_cuda_d2h(c->h_marks, c->marks, (size_t) n_groups * capz, sm));
    TRI_CU_TRY(tri_cuda_sync(sm));

    /* Keep lists from the marks; the host mirror is compacted the same way as the device. */
    for (int i = 0; i < LK; i++) {
        if (hi[i] - lo[i] <= 0) {
            c->h_n_keep[i] = -1;
            continue;
        }
        const int h = i % c->Hkv;
        const int group = c->mode == TRI_CU_PER_LAYER_PER_HEAD ? i : c->mode == TRI_CU_GLOBAL ? 0 : h;
        int32_t * keep = c->h_keep + (size_t) i * capz;
        const int32_t nk = tri_kv_keep_list(lo[i], hi[i], s->kv.n_live[i], c->h_marks + (size_t) group * capz, keep);
        int32_t * pos = s->kv.pos + (size_t) i * capz;
        for (int32_t r = 0; r < nk; r++) {
            pos[r] = pos[keep[r]]; /* keep[r] >= r: in place, in order */
        }
        s->kv.n_live[i] = nk;
        c->h_n_keep[i] = nk;
    }
    TRI_CU_TRY(tri_cuda_h2d(c->keep, c->h_keep, sizeof(int32_t) * (size_t) LK * capz, sm));
    TRI_CU_TRY(tri_cuda_h2d(c->n_keep, c->h_n_keep, sizeof(int32_t) * (size_t) LK, sm));
    TRI_CU_TRY(tri_cuda_kv_gather(c->K, c->V, c->pos, c->n_live, c->keep, c->n_keep, LK, c->cap, c->D, sm));
    TRI_CU_TRY(tri_cuda_sync(sm));
    s->policy.n_compressions++;
    s->policy.n_evicted += evicted / LK;
    return TRIATTN_OK;
fail:
    return tri_fail(err, en, st, "CUDA backend: %s (the session's cache may be inconsistent: reset it)",
                    tri_cuda_last_error());
}

/* ---- read-back and the table ------------------------------------------------------------------- */

static enum triattn_status tri_cu_kv_keys(const triattn_session * s, int layer, int kv_head, float * out, int32_t rows) {
    tri_cu_session * c = s->backend_state;
    if (rows <= 0) {
        return TRIATTN_OK;
    }
    const size_t lh = (size_t) layer * c->Hkv + kv_head, n = (size_t) rows * c->D;
    enum triattn_status st = tri_cuda_d2h(c->h_rows, (const tri_fp16 *) c->K + lh * c->cap * c->D, n * sizeof(tri_fp16),
                                          c->stream);
    if (st == TRIATTN_OK) {
        st = tri_cuda_sync(c->stream);
    }
    if (st != TRIATTN_OK) {
        tri_log(TRIATTN_LOG_ERROR, "CUDA backend: kv_keys: %s", tri_cuda_last_error());
        return st;
    }
    for (size_t i = 0; i < n; i++) {
        out[i] = tri_fp16_to_fp32(c->h_rows[i]);
    }
    return TRIATTN_OK;
}

static int tri_cu_device_count(char * why, size_t n) {
    return tri_cuda_device_count(why, n);
}

const tri_backend_ops tri_backend_cuda = {
    .name          = "cuda",
    .device_count  = tri_cu_device_count,
    .model_upload  = tri_cu_model_upload,
    .model_free    = tri_cu_model_free,
    .session_init  = tri_cu_session_init,
    .session_free  = tri_cu_session_free,
    .reset         = tri_cu_reset,
    .forward_chunk = tri_cu_forward_chunk,
    .compress      = tri_cu_compress,
    .kv_keys       = tri_cu_kv_keys,
};
