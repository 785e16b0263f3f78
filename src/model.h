/* The loaded model: hyperparameters, views of the weights inside the GGUF mapping, vocabulary.
 * Immutable after triattn_model_load; shared by every session. */
#ifndef TRI_MODEL_H
#define TRI_MODEL_H

#include "gguf.h"
#include "ops.h"
#include "repack.h"
#include "triattn.h"
#include "vocab.h"

#define TRI_MAX_LAYERS 512

/* A weight matrix or vector inside the mapping. Rows are ne0 values of `type`. */
typedef struct tri_tensor {
    const void *  data;  /* NULL when the (optional) tensor is absent */
    enum tri_type type;
    int64_t       ne0;   /* inner dimension (inputs) */
    int64_t       ne1;   /* rows (outputs) */
    const char *  name;
    enum tri_wlayout layout; /* matrices on the CPU: the GGUF's rows, or repacked in place at load (repack.h) */
} tri_tensor;

typedef struct tri_hparams {
    int32_t n_vocab;
    int32_t n_ctx_train;
    int32_t n_embd;
    int32_t n_layer;
    int32_t n_head;
    int32_t n_head_kv;
    int32_t head_dim;
    int32_t n_ff;
    int32_t rope_dim;        /* rotated dims per head (<= head_dim) */
    float   rope_freq_base;
    float   rope_freq_scale; /* linear position scaling: positions are multiplied by this */
    float   norm_eps;
    enum tri_rope_pairing rope_pairing;
    float   embd_scale;      /* token embeddings are multiplied by this (1, or sqrt(n_embd) for Gemma) */
    int32_t n_swa;           /* sliding window of the local layers, 0 = every layer is global */
    int32_t swa_period;      /* layer il is global iff (il + 1) % swa_period == 0 (when n_swa > 0) */
    float   rope_freq_base_swa; /* RoPE base of the local layers (no position scaling there) */
    float   attn_scale;      /* attention logits = q.k * attn_scale (1 / sqrt(head_dim) unless the arch says) */
} tri_hparams;

/* Sliding window of layer il: n_swa on local layers, 0 on global ones. */
static inline int32_t tri_hp_layer_window(const tri_hparams * hp, int il) {
    return hp->n_swa > 0 && (il + 1) % hp->swa_period != 0 ? hp->n_swa : 0;
}

typedef struct tri_layer {
    tri_tensor attn_norm;  /* (n_embd) */
    tri_tensor wq;         /* (n_embd -> n_head * head_dim) */
    tri_tensor wk;         /* (n_embd -> n_head_kv * head_dim) */
    tri_tensor wv;         /* (n_embd -> n_head_kv * head_dim) */
    tri_tensor bq;         /* (n_head * head_dim), qwen2 only */
    tri_tensor bk;         /* (n_head_kv * head_dim), qwen2 only */
    tri_tensor bv;         /* (n_head_kv * head_dim), qwen2 only */
    tri_tensor q_norm;     /* (head_dim), qwen3 only */
    tri_tensor k_norm;     /* (head_dim), qwen3 only */
    tri_tensor wo;         /* (n_head * head_dim -> n_embd) */
    tri_tensor ffn_norm;   /* (n_embd) */
    tri_tensor ffn_gate;   /* (n_embd -> n_ff) */
    tri_tensor ffn_up;     /* (n_embd -> n_ff) */
    tri_tensor ffn_down;   /* (n_ff -> n_embd) */
    tri_tensor post_attn_norm; /* (n_embd), gemma3: normalises the attention output before the residual add */
    tri_tensor post_ffn_norm;  /* (n_embd), gemma3: normalises the FFN output before the residual add */
} tri_layer;

typedef struct tri_weights {
    tri_tensor  tok_embd;     /* (n_embd) x n_vocab rows */
    tri_tensor  output_norm;  /* (n_embd) */
    tri_tensor  output;       /* (n_embd -> n_vocab); token_embd when tied */
    tri_tensor  rope_freqs;   /* (rope_dim / 2) divisors of each frequency, optional */
    tri_layer * layers;       /* n_layer */
} tri_weights;

struct tri_forward;
struct triattn_model;

/* One architecture = one file in src/models/ with this skeleton. */
typedef struct tri_arch {
    const char * name;                 /* general.architecture */
    enum tri_rope_pairing rope_pairing;
    /* Reads {arch}.* keys into m->hp beyond the common ones. */
    enum triattn_status (*load_hparams)(struct triattn_model * m, char * err, size_t n);
    /* Binds m->w.layers[il] tensors. */
    enum triattn_status (*load_layer)(struct triattn_model * m, int il, char * err, size_t n);
    /* Runs layer il on the forward state (residual stream in f->x). */
    void (*build_layer)(struct tri_forward * f, int il);
    /* Chat format of the family when the GGUF carries no tokenizer.chat_template (NULL: none). */
    const char * chat_format;
} tri_arch;

struct triattn_model {
    tri_gguf *       gguf;
    const tri_arch * arch;
    tri_hparams      hp;
    tri_weights      w;
    tri_vocab *      vocab;
    float *          rope_inv_freq;  /* rope_dim / 2: angle per position of each pair (factors applied) */
    float *          rope_inv_freq_swa; /* same for the sliding-window layers (rope_freq_base_swa); NULL without */
    char *           chat_template;  /* tokenizer.chat_template, NUL-terminated, or NULL */
    char             name[128];
    struct tri_centres * centres;    /* TriAttention query centres (embedded or sidecar), NULL when none */
    char             fingerprint[40]; /* "fnv1a64:<hex>" (src/calibration.c) */
    int64_t          n_params;
    uint64_t         n_bytes;
    const struct tri_backend_ops * backend;  /* NULL = CPU; else weights uploaded once (src/backend.h) */
    void *           backend_state;
    struct tri_token_trie * token_trie; /* token bytes for constrained sampling, built on first use (grammar_mask.c) */
};

/* Binds a tensor by name and checks its type is supported and its shape is (ne0, ne1) (ne1 = 1 for
 * vectors). Optional tensors that are absent leave t->data NULL and return OK. */
enum triattn_status tri_model_tensor(struct triattn_model * m, tri_tensor * t, const char * name, int64_t ne0,
                                     int64_t ne1, bool optional, char * err, size_t n);
/* Same, with the name formatted as "blk.<il>.<suffix>". */
enum triattn_status tri_model_layer_tensor(struct triattn_model * m, tri_tensor * t, int il, const char * suffix,
                                           int64_t ne0, int64_t ne1, bool optional, char * err, size_t n);
/* Binds blk.<il>.* of a pre-norm attention + SwiGLU layer; qkv_bias requires attn_{q,k,v}.bias, qk_norm
 * requires attn_{q,k}_norm.weight. */
enum triattn_status tri_model_bind_layer(struct triattn_model * m, int il, bool qkv_bias, bool qk_norm, char * err,
                                         size_t n);
/* "<arch>.<suffix>" as u32 / f32 into *out, kept when absent and optional (for an arch's load_hparams). */
enum triattn_status tri_model_arch_u32(const struct triattn_model * m, const char * suffix, bool optional,
                                       int32_t * out, char * err, size_t n);
enum triattn_status tri_model_arch_f32(const struct triattn_model * m, const char * suffix, bool optional, float * out,
                                       char * err, size_t n);
/* Loads from an already-parsed GGUF, taking ownership of g (closed on failure too). */
enum triattn_status tri_model_load_gguf(tri_gguf * g, const char * path, triattn_model ** out, char * err, size_t n);

/* Registered architectures (src/models/). */
extern const tri_arch tri_arch_llama;
extern const tri_arch tri_arch_qwen2;
extern const tri_arch tri_arch_qwen3;
extern const tri_arch tri_arch_gemma3;

#endif
