/* Model loading: architecture lookup, hyperparameters, tensor binding with shape/type checks. */
#include "model.h"
#include "backend.h"
#include "calibration.h"
#include "common.h"
#include "grammar_mask.h"
#include "matmul.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const tri_arch * const tri_archs[] = { &tri_arch_llama, &tri_arch_qwen2, &tri_arch_qwen3, &tri_arch_gemma3 };

#define TRI_TRY(expr)                          \
    do {                                       \
        enum triattn_status st_ = (expr);      \
        if (st_ != TRIATTN_OK) {               \
            return st_;                        \
        }                                      \
    } while (0)

enum triattn_status tri_model_tensor(struct triattn_model * m, tri_tensor * t, const char * name, int64_t ne0,
                                     int64_t ne1, bool optional, char * err, size_t n) {
    memset(t, 0, sizeof *t);
    const tri_gguf_tensor * gt = tri_gguf_find_tensor(m->gguf, name);
    if (!gt) {
        if (optional) {
            return TRIATTN_OK;
        }
        return tri_fail(err, n, TRIATTN_ERR_FORMAT, "missing tensor '%s'", name);
    }
    const int64_t g1 = gt->n_dims >= 2 ? gt->ne[1] : 1;
    if (gt->ne[0] != ne0 || g1 != ne1 || (gt->n_dims > 2 && gt->ne[2] * gt->ne[3] != 1)) {
        return tri_fail(err, n, TRIATTN_ERR_FORMAT,
                        "tensor '%s' has shape [%lld, %lld, %lld, %lld], expected [%lld, %lld]", name,
                        (long long) gt->ne[0], (long long) gt->ne[1], (long long) gt->ne[2], (long long) gt->ne[3],
                        (long long) ne0, (long long) ne1);
    }
    const tri_type_traits * tt = tri_type_traits_get(gt->type);
    if (!tt) {
        return tri_fail(err, n, TRIATTN_ERR_UNSUPPORTED, "tensor '%s' has unsupported type %d", name, (int) gt->type);
    }
    if (ne1 > 1) {
        /* A matrix: rows are dotted with activations converted to its vec_dot type. */
        const tri_type_traits * vt = tri_type_traits_get(tt->vec_dot_type);
        if (!tt->vec_dot || !vt || !vt->from_float || ne0 % tt->blck_size != 0 || ne0 % vt->blck_size != 0) {
            return tri_fail(err, n, TRIATTN_ERR_UNSUPPORTED, "tensor '%s': type %s cannot be used as a matrix of %lld columns",
                            name, tt->name, (long long) ne0);
        }
    } else if (gt->type != TRI_TYPE_F32) {
        return tri_fail(err, n, TRIATTN_ERR_UNSUPPORTED, "vector tensor '%s' has type %s, expected F32", name, tt->name);
    }
    t->data   = gt->data;
    t->layout = TRI_WLAYOUT_ROWS;
    t->type   = gt->type;
    t->ne0  = ne0;
    t->ne1  = ne1;
    t->name = gt->name;
    return TRIATTN_OK;
}

enum triattn_status tri_model_layer_tensor(struct triattn_model * m, tri_tensor * t, int il, const char * suffix,
                                           int64_t ne0, int64_t ne1, bool optional, char * err, size_t n) {
    char name[128];
    snprintf(name, sizeof name, "blk.%d.%s", il, suffix);
    return tri_model_tensor(m, t, name, ne0, ne1, optional, err, n);
}

/* Reads "<arch>.<suffix>" as u32 into *out (kept when absent and optional). */
static enum triattn_status tri_arch_u32(const triattn_model * m, const char * suffix, bool optional, int32_t * out,
                                        char * err, size_t n) {
    char key[128];
    snprintf(key, sizeof key, "%s.%s", m->arch->name, suffix);
    uint32_t v = (uint32_t) *out;
    TRI_TRY(tri_gguf_get_u32(m->gguf, key, optional, &v, err, n));
    if (v > (uint32_t) INT32_MAX) {
        return tri_fail(err, n, TRIATTN_ERR_FORMAT, "key '%s' = %u is out of range", key, v);
    }
    *out = (int32_t) v;
    return TRIATTN_OK;
}

static enum triattn_status tri_arch_f32(const triattn_model * m, const char * suffix, bool optional, float * out,
                                        char * err, size_t n) {
    char key[128];
    snprintf(key, sizeof key, "%s.%s", m->arch->name, suffix);
    TRI_TRY(tri_gguf_get_f32(m->gguf, key, optional, out, err, n));
    if (!isfinite(*out)) {
        return tri_fail(err, n, TRIATTN_ERR_FORMAT, "key '%s' is not finite", key);
    }
    return TRIATTN_OK;
}

enum triattn_status tri_model_arch_u32(const triattn_model * m, const char * suffix, bool optional, int32_t * out,
                                       char * err, size_t n) {
    return tri_arch_u32(m, suffix, optional, out, err, n);
}

enum triattn_status tri_model_arch_f32(const triattn_model * m, const char * suffix, bool optional, float * out,
                                       char * err, size_t n) {
    return tri_arch_f32(m, suffix, optional, out, err, n);
}

static enum triattn_status tri_load_hparams(triattn_model * m, char * err, size_t n) {
    tri_hparams * hp = &m->hp;
    hp->n_ctx_train    = 4096;
    hp->rope_freq_base = 10000.0f;
    hp->norm_eps       = 1e-5f;
    hp->rope_freq_scale = 1.0f;
    hp->embd_scale     = 1.0f;
    TRI_TRY(tri_arch_u32(m, "embedding_length", false, &hp->n_embd, err, n));
    TRI_TRY(tri_arch_u32(m, "block_count", false, &hp->n_layer, err, n));
    TRI_TRY(tri_arch_u32(m, "feed_forward_length", false, &hp->n_ff, err, n));
    TRI_TRY(tri_arch_u32(m, "attention.head_count", false, &hp->n_head, err, n));
    hp->n_head_kv = hp->n_head;
    TRI_TRY(tri_arch_u32(m, "attention.head_count_kv", true, &hp->n_head_kv, err, n));
    TRI_TRY(tri_arch_u32(m, "context_length", true, &hp->n_ctx_train, err, n));
    TRI_TRY(tri_arch_f32(m, "attention.layer_norm_rms_epsilon", true, &hp->norm_eps, err, n));
    TRI_TRY(tri_arch_f32(m, "rope.freq_base", true, &hp->rope_freq_base, err, n));

    if (hp->n_embd <= 0 || hp->n_layer <= 0 || hp->n_layer > TRI_MAX_LAYERS || hp->n_ff <= 0 || hp->n_head <= 0 ||
        hp->n_head_kv <= 0 || hp->n_head % hp->n_head_kv != 0 || hp->n_ctx_train <= 0) {
        return tri_fail(err, n, TRIATTN_ERR_FORMAT,
                        "%s: invalid geometry: n_embd %d, n_layer %d, n_ff %d, n_head %d, n_head_kv %d, context %d",
                        m->arch->name, hp->n_embd, hp->n_layer, hp->n_ff, hp->n_head, hp->n_head_kv, hp->n_ctx_train);
    }
    hp->head_dim = hp->n_embd / hp->n_head;
    TRI_TRY(tri_arch_u32(m, "attention.key_length", true, &hp->head_dim, err, n));
    int32_t v_len = hp->head_dim;
    TRI_TRY(tri_arch_u32(m, "attention.value_length", true, &v_len, err, n));
    hp->rope_dim = hp->head_dim;
    TRI_TRY(tri_arch_u32(m, "rope.dimension_count", true, &hp->rope_dim, err, n));
    if (hp->head_dim <= 0 || hp->head_dim % 2 != 0 || v_len != hp->head_dim || hp->rope_dim <= 0 ||
        hp->rope_dim % 2 != 0 || hp->rope_dim > hp->head_dim) {
        return tri_fail(err, n, TRIATTN_ERR_FORMAT, "%s: invalid head geometry: key_length %d, value_length %d, rope dims %d",
                        m->arch->name, hp->head_dim, v_len, hp->rope_dim);
    }
    if (!(hp->rope_freq_base > 0.0f) || !(hp->norm_eps > 0.0f)) {
        return tri_fail(err, n, TRIATTN_ERR_FORMAT, "%s: rope.freq_base and layer_norm_rms_epsilon must be positive",
                        m->arch->name);
    }

    /* Linear RoPE scaling (positions divided by the factor); other scaling types are not supported. */
    char key[128];
    snprintf(key, sizeof key, "%s.rope.scaling.type", m->arch->name);
    tri_gguf_str stype = { 0 };
    TRI_TRY(tri_gguf_get_str(m->gguf, key, true, &stype, err, n));
    float factor = 0.0f;
    TRI_TRY(tri_arch_f32(m, "rope.scaling.factor", true, &factor, err, n));
    if (stype.len > 0 && !(stype.len == 4 && memcmp(stype.ptr, "none", 4) == 0)) {
        if (stype.len == 6 && memcmp(stype.ptr, "linear", 6) == 0) {
            if (factor > 0.0f) {
                hp->rope_freq_scale = 1.0f / factor;
            }
        } else {
            return tri_fail(err, n, TRIATTN_ERR_UNSUPPORTED, "%s: RoPE scaling type '%.*s' is not supported", m->arch->name,
                            (int) TRI_MIN(stype.len, 32), stype.ptr);
        }
    }
    hp->rope_pairing = m->arch->rope_pairing;
    hp->attn_scale   = 1.0f / sqrtf((float) hp->head_dim);
    return m->arch->load_hparams ? m->arch->load_hparams(m, err, n) : TRIATTN_OK;
}

static enum triattn_status tri_load_tensors(triattn_model * m, char * err, size_t n) {
    tri_hparams * hp = &m->hp;
    tri_weights * w = &m->w;
    TRI_TRY(tri_model_tensor(m, &w->tok_embd, "token_embd.weight", hp->n_embd, hp->n_vocab, false, err, n));
    if (!tri_type_traits_get(w->tok_embd.type)->to_float) {
        return tri_fail(err, n, TRIATTN_ERR_UNSUPPORTED, "token_embd.weight: type cannot be dequantized");
    }
    TRI_TRY(tri_model_tensor(m, &w->output_norm, "output_norm.weight", hp->n_embd, 1, false, err, n));
    TRI_TRY(tri_model_tensor(m, &w->output, "output.weight", hp->n_embd, hp->n_vocab, true, err, n));
    if (!w->output.data) {
        w->output = w->tok_embd; /* tied embeddings */
    }
    TRI_TRY(tri_model_tensor(m, &w->rope_freqs, "rope_freqs.weight", hp->rope_dim / 2, 1, true, err, n));
    w->layers = calloc((size_t) hp->n_layer, sizeof(tri_layer));
    if (!w->layers) {
        return tri_fail(err, n, TRIATTN_ERR_OOM, "out of memory");
    }
    for (int il = 0; il < hp->n_layer; il++) {
        TRI_TRY(m->arch->load_layer(m, il, err, n));
    }
    return TRIATTN_OK;
}

/* inv[i] = base^(-2i / rope_dim), divided by rope_freqs factors when the model has them. */
static enum triattn_status tri_rope_inv_freq(triattn_model * m, double base, float ** out, char * err, size_t n) {
    const tri_hparams * hp = &m->hp;
    const int F = hp->rope_dim / 2;
    *out = malloc(sizeof(float) * F);
    if (!*out) {
        return tri_fail(err, n, TRIATTN_ERR_OOM, "out of memory");
    }
    const float * factors = m->w.rope_freqs.data;
    for (int i = 0; i < F; i++) {
        double inv = pow(base, -2.0 * i / hp->rope_dim);
        if (factors) {
            if (!(factors[i] > 0.0f) || !isfinite(factors[i])) {
                return tri_fail(err, n, TRIATTN_ERR_FORMAT, "rope_freqs.weight[%d] = %g is not a positive number", i,
                                factors[i]);
            }
            inv /= factors[i];
        }
        (*out)[i] = (float) inv;
    }
    return TRIATTN_OK;
}

static enum triattn_status tri_load_rope(triattn_model * m, char * err, size_t n) {
    TRI_TRY(tri_rope_inv_freq(m, m->hp.rope_freq_base, &m->rope_inv_freq, err, n));
    return m->hp.n_swa > 0 ? tri_rope_inv_freq(m, m->hp.rope_freq_base_swa, &m->rope_inv_freq_swa, err, n) : TRIATTN_OK;
}

static enum triattn_status tri_load_all(triattn_model * m, char * err, size_t n) {
    tri_gguf_str arch = { 0 };
    TRI_TRY(tri_gguf_get_str(m->gguf, "general.architecture", false, &arch, err, n));
    for (size_t i = 0; i < sizeof tri_archs / sizeof tri_archs[0]; i++) {
        if (strlen(tri_archs[i]->name) == arch.len && memcmp(tri_archs[i]->name, arch.ptr, arch.len) == 0) {
            m->arch = tri_archs[i];
        }
    }
    if (!m->arch) {
        return tri_fail(err, n, TRIATTN_ERR_UNSUPPORTED, "architecture '%.*s' is not supported (supported: llama, qwen2, qwen3, gemma3)",
                        (int) TRI_MIN(arch.len, 64), arch.ptr);
    }
    TRI_TRY(tri_load_hparams(m, err, n));
    TRI_TRY(tri_vocab_load(m->gguf, &m->vocab, err, n));
    m->hp.n_vocab = tri_vocab_n_tokens(m->vocab);
    int32_t n_vocab_key = m->hp.n_vocab;
    TRI_TRY(tri_arch_u32(m, "vocab_size", true, &n_vocab_key, err, n));
    if (n_vocab_key != m->hp.n_vocab) {
        return tri_fail(err, n, TRIATTN_ERR_FORMAT, "%s.vocab_size = %d but the tokenizer has %d tokens", m->arch->name,
                        n_vocab_key, m->hp.n_vocab);
    }
    TRI_TRY(tri_load_tensors(m, err, n));
    TRI_TRY(tri_load_rope(m, err, n));
    tri_model_fingerprint(m->gguf, m->fingerprint);
    TRI_TRY(tri_centres_load(m, m->gguf, "triattention metadata", &m->centres, err, n));

    tri_gguf_str s = { 0 };
    TRI_TRY(tri_gguf_get_str(m->gguf, "tokenizer.chat_template", true, &s, err, n));
    if (s.ptr) {
        m->chat_template = malloc(s.len + 1);
        if (!m->chat_template) {
            return tri_fail(err, n, TRIATTN_ERR_OOM, "out of memory");
        }
        memcpy(m->chat_template, s.ptr, s.len);
        m->chat_template[s.len] = '\0';
    }
    memset(&s, 0, sizeof s);
    TRI_TRY(tri_gguf_get_str(m->gguf, "general.name", true, &s, err, n));
    snprintf(m->name, sizeof m->name, "%.*s", (int) TRI_MIN(s.len, sizeof m->name - 1), s.ptr ? s.ptr : "");
    for (uint64_t i = 0; i < m->gguf->n_tensors; i++) {
        const tri_gguf_tensor * t = &m->gguf->tensors[i];
        m->n_params += t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3];
        m->n_bytes += t->nbytes;
    }
    return TRIATTN_OK;
}

enum triattn_status tri_model_load_gguf(tri_gguf * g, const char * path, triattn_model ** out, char * err, size_t n) {
    *out = NULL;
    triattn_model * m = calloc(1, sizeof *m);
    if (!m) {
        tri_gguf_close(g);
        return tri_fail(err, n, TRIATTN_ERR_OOM, "out of memory");
    }
    m->gguf = g;
    char msg[768] = "";
    const enum triattn_status st = tri_load_all(m, msg, sizeof msg);
    if (st != TRIATTN_OK) {
        tri_fail(err, n, st, "%s: %s", path, msg);
        triattn_model_free(m);
        return st;
    }
    *out = m;
    return TRIATTN_OK;
}

void triattn_model_params_init(struct triattn_model_params * p) {
    memset(p, 0, sizeof *p);
    p->use_mmap = true;
}

/* On the CPU, matrices the decode kernels read faster as groups of 8 rows are repacked in place (repack.h):
 * the same bytes, so memory does not grow. When the output matrix is the token embeddings (tied), both
 * take the new layout and the embedding lookup reads rows from it. TRIATTN_REPACK=0 turns this off. */
/* Repacks one matrix when the kernels read its type and shape as x8; adds it to the counts. */
static void tri_tensor_repack(triattn_model * m, tri_tensor * t, int * n_done, size_t * n_bytes) {
    if (!t->data || t->layout != TRI_WLAYOUT_ROWS || !tri_matmul_x8_ok(t->type, t->ne0, t->ne1)) {
        return;
    }
    const size_t bytes = tri_row_size(t->type, t->ne0) * (size_t) t->ne1;
    if (!tri_gguf_make_writable(m->gguf, t->data, bytes) || !tri_x8_repack(t->type, (void *) t->data, t->ne0, t->ne1)) {
        return;
    }
    t->layout = TRI_WLAYOUT_X8;
    if (t->data == m->w.tok_embd.data) {
        m->w.tok_embd.layout = TRI_WLAYOUT_X8;
    }
    (*n_done)++;
    *n_bytes += bytes;
}

static void tri_model_repack(triattn_model * m) {
    const char * env = getenv("TRIATTN_REPACK");
    if (m->backend || (env && strcmp(env, "0") == 0)) {
        return;
    }
    int    n_done  = 0;
    size_t n_bytes = 0;
    for (int il = 0; il < m->hp.n_layer; il++) {
        tri_layer *  L       = &m->w.layers[il];
        tri_tensor * mats[7] = { &L->wq, &L->wk, &L->wv, &L->wo, &L->ffn_gate, &L->ffn_up, &L->ffn_down };
        for (int i = 0; i < 7; i++) {
            tri_tensor_repack(m, mats[i], &n_done, &n_bytes);
        }
    }
    tri_tensor_repack(m, &m->w.output, &n_done, &n_bytes);
    if (n_done > 0) {
        tri_log(TRIATTN_LOG_INFO, "repacked %d weight matrices (%.1f MiB) into groups of 8 rows for the CPU kernels",
                n_done, (double) n_bytes / (1024.0 * 1024.0));
    }
}

/* n_gpu_layers: CPU, or the weights uploaded once to a GPU backend; the model is freed on failure. */
static enum triattn_status tri_model_attach_backend(triattn_model ** out, const struct triattn_model_params * p,
                                                    char * err, size_t err_size) {
    const enum triattn_status st = tri_backend_model_attach(*out, p->n_gpu_layers, p->gpu_mem_limit, err, err_size);
    if (st != TRIATTN_OK) {
        triattn_model_free(*out);
        *out = NULL;
        return st;
    }
    tri_model_repack(*out);
    return st;
}

enum triattn_status triattn_model_load(const char * path, const struct triattn_model_params * p, triattn_model ** out,
                                       char * err, size_t err_size) {
    if (err && err_size) {
        err[0] = '\0';
    }
    if (!out) {
        return tri_fail(err, err_size, TRIATTN_ERR_INVALID_ARG, "triattn_model_load: out is NULL");
    }
    *out = NULL;
    if (!path) {
        return tri_fail(err, err_size, TRIATTN_ERR_INVALID_ARG, "triattn_model_load: path is NULL");
    }
    struct triattn_model_params defaults;
    if (!p) {
        triattn_model_params_init(&defaults);
        p = &defaults;
    }
    tri_ops_init();
    tri_gguf * g = NULL;
    char msg[768] = "";
    const enum triattn_status st = tri_gguf_open_file(path, p->use_mmap, &g, msg, sizeof msg);
    if (st != TRIATTN_OK) {
        return tri_fail(err, err_size, st, "%s: %s", path, msg);
    }
    enum triattn_status st2 = tri_model_load_gguf(g, path, out, err, err_size);
    if (st2 != TRIATTN_OK || !p->calibration_path) {
        return st2 != TRIATTN_OK ? st2 : tri_model_attach_backend(out, p, err, err_size);
    }
    /* A sidecar's centres replace any embedded ones. */
    tri_gguf * side = NULL;
    tri_centres * c = NULL;
    st2 = tri_gguf_open_file(p->calibration_path, true, &side, msg, sizeof msg);
    if (st2 == TRIATTN_OK) {
        char what[300];
        snprintf(what, sizeof what, "calibration %s", p->calibration_path);
        st2 = tri_centres_load(*out, side, what, &c, msg, sizeof msg);
        if (st2 == TRIATTN_OK && !c) {
            st2 = tri_fail(msg, sizeof msg, TRIATTN_ERR_FORMAT, "%s: no triattention.format_version key (not a calibration file)",
                           what);
        }
        tri_gguf_close(side);
    } else {
        char tmp[768];
        snprintf(tmp, sizeof tmp, "%s: %s", p->calibration_path, msg);
        memcpy(msg, tmp, sizeof msg);
    }
    if (st2 != TRIATTN_OK) {
        tri_fail(err, err_size, st2, "%s", msg);
        triattn_model_free(*out);
        *out = NULL;
        return st2;
    }
    tri_centres_free((*out)->centres);
    (*out)->centres = c;
    return tri_model_attach_backend(out, p, err, err_size);
}

void triattn_model_free(triattn_model * m) {
    if (!m) {
        return;
    }
    tri_backend_model_detach(m);
    tri_vocab_free(m->vocab);
    tri_gguf_close(m->gguf);
    free(m->w.layers);
    free(m->rope_inv_freq);
    free(m->rope_inv_freq_swa);
    free(m->chat_template);
    tri_centres_free(m->centres);
    tri_token_trie_release(m);
    free(m);
}

void triattn_model_get_info(const triattn_model * m, struct triattn_model_info * out) {
    memset(out, 0, sizeof *out);
    snprintf(out->arch, sizeof out->arch, "%s", m->arch->name);
    snprintf(out->name, sizeof out->name, "%s", m->name);
    out->n_vocab        = m->hp.n_vocab;
    out->n_ctx_train    = m->hp.n_ctx_train;
    out->n_embd         = m->hp.n_embd;
    out->n_layer        = m->hp.n_layer;
    out->n_head         = m->hp.n_head;
    out->n_head_kv      = m->hp.n_head_kv;
    out->head_dim       = m->hp.head_dim;
    out->n_ff           = m->hp.n_ff;
    out->rope_dim       = m->hp.rope_dim;
    out->rope_freq_base = m->hp.rope_freq_base;
    out->n_params       = m->n_params;
    out->n_bytes        = m->n_bytes;
    out->has_calibration = m->centres != NULL;
    snprintf(out->rope_pairing, sizeof out->rope_pairing, "%s", m->hp.rope_pairing == TRI_ROPE_ADJACENT ? "adjacent" : "half");
    out->freq_count     = m->hp.rope_dim / 2;
    snprintf(out->fingerprint, sizeof out->fingerprint, "%s", m->fingerprint);
}

/* Shared layer binding: attention + SwiGLU FFN, optional QKV biases and per-head q/k norms. */
enum triattn_status tri_model_bind_layer(struct triattn_model * m, int il, bool qkv_bias, bool qk_norm, char * err,
                                         size_t n) {
    const tri_hparams * hp = &m->hp;
    tri_layer * L = &m->w.layers[il];
    const int64_t q_dim = (int64_t) hp->n_head * hp->head_dim, kv_dim = (int64_t) hp->n_head_kv * hp->head_dim;
    TRI_TRY(tri_model_layer_tensor(m, &L->attn_norm, il, "attn_norm.weight", hp->n_embd, 1, false, err, n));
    TRI_TRY(tri_model_layer_tensor(m, &L->wq, il, "attn_q.weight", hp->n_embd, q_dim, false, err, n));
    TRI_TRY(tri_model_layer_tensor(m, &L->wk, il, "attn_k.weight", hp->n_embd, kv_dim, false, err, n));
    TRI_TRY(tri_model_layer_tensor(m, &L->wv, il, "attn_v.weight", hp->n_embd, kv_dim, false, err, n));
    TRI_TRY(tri_model_layer_tensor(m, &L->bq, il, "attn_q.bias", q_dim, 1, !qkv_bias, err, n));
    TRI_TRY(tri_model_layer_tensor(m, &L->bk, il, "attn_k.bias", kv_dim, 1, !qkv_bias, err, n));
    TRI_TRY(tri_model_layer_tensor(m, &L->bv, il, "attn_v.bias", kv_dim, 1, !qkv_bias, err, n));
    if (qk_norm) {
        TRI_TRY(tri_model_layer_tensor(m, &L->q_norm, il, "attn_q_norm.weight", hp->head_dim, 1, false, err, n));
        TRI_TRY(tri_model_layer_tensor(m, &L->k_norm, il, "attn_k_norm.weight", hp->head_dim, 1, false, err, n));
    }
    TRI_TRY(tri_model_layer_tensor(m, &L->wo, il, "attn_output.weight", q_dim, hp->n_embd, false, err, n));
    TRI_TRY(tri_model_layer_tensor(m, &L->ffn_norm, il, "ffn_norm.weight", hp->n_embd, 1, false, err, n));
    TRI_TRY(tri_model_layer_tensor(m, &L->ffn_gate, il, "ffn_gate.weight", hp->n_embd, hp->n_ff, false, err, n));
    TRI_TRY(tri_model_layer_tensor(m, &L->ffn_up, il, "ffn_up.weight", hp->n_embd, hp->n_ff, false, err, n));
    TRI_TRY(tri_model_layer_tensor(m, &L->ffn_down, il, "ffn_down.weight", hp->n_ff, hp->n_embd, false, err, n));
    return TRIATTN_OK;
}
