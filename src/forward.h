/* Per-session forward-pass state and the shared blocks every architecture is built from. */
#ifndef TRI_FORWARD_H
#define TRI_FORWARD_H

#include "kv_cache.h"
#include "model.h"
#include "threadpool.h"

/* Activations of one chunk of up to n_batch tokens; all buffers carved from one allocation. */
typedef struct tri_forward {
    const struct triattn_model * m;
    tri_kv_cache *   kv;
    tri_threadpool * tp;
    tri_attn_kernels attn;
    tri_act_kernels  act;
    struct tri_calib * calib;  /* pre-RoPE query statistics accumulator while calibrating, else NULL */

    int32_t  n_batch;
    int32_t  n_tok;     /* rows (tokens) in the current step */
    int32_t  capacity;  /* largest cache (slots of any layer and KV head, cap_max) a row may attend over */
    tri_kv_cache ** row_kv;  /* [n_batch] the cache each row appends to and attends over */
    int32_t *       row_pos; /* [n_batch] absolute position of each row */
    int32_t *       logit_rows; /* [n_batch] rows whose logits the step computes, in order */
    triattn_token * row_tok;    /* [n_batch] token of each row, for callers that gather them */

    float *  x;         /* [n_batch][n_embd] residual stream */
    float *  xn;        /* [n_batch][n_embd] normalised input of a block */
    float *  q;         /* [n_batch][n_head * head_dim] */
    float *  k;         /* [n_batch][n_head_kv * head_dim] */
    float *  v;         /* [n_batch][n_head_kv * head_dim] */
    float *  att;       /* [n_batch][n_head * head_dim] attention output */
    float *  gate;      /* [n_batch][n_ff] */
    float *  up;        /* [n_batch][n_ff] */
    float *  tmp;       /* [n_batch][n_embd] block output before the residual add */
    float *  rope_cs;   /* [n_batch][rope_dim] cos, sin per frequency pair */
    float *  rope_cs_swa; /* same with the sliding-window layers' frequencies; NULL when the model has none */
    void *   xq;        /* activations converted to the weights' vec_dot types: 3 x [n_batch][row] */
    size_t   xq_stride; /* bytes of one converted buffer region */
    void *   mm_scratch;        /* per thread: repacked weight rows of the prefill matrix kernels */
    size_t   mm_scratch_stride; /* bytes per thread */
    float *  att_s;     /* per thread: attention scores, chunk partials and running states (tri_att_scratch_floats) */
    float *  att_part;  /* decode chunk partials: [n_head_kv][chunks][G][head_dim + 2] */
    int32_t * att_blk;  /* [n_batch + 1] prefill: first row of each block of rows attending together */
    float *  logits;    /* [n_batch][n_vocab] */
    int32_t  n_logits;  /* rows of logits computed by the last chunk */
    bool     hidden_only; /* steps stop at the final norm: hidden holds the logit rows' states, no logits */
    const float * hidden; /* [n_logits][n_embd] after a hidden_only step (the CPU's xn, a backend's host rows) */
    void *   mem;
    size_t   mem_bytes;
} tri_forward;


/* Allocates the activation buffers for (model, n_batch, cache capacity, threads). */
enum triattn_status tri_forward_init(tri_forward * f, const struct triattn_model * m, tri_kv_cache * kv,
                                     tri_threadpool * tp, int32_t n_batch, char * err, size_t n);
void tri_forward_free(tri_forward * f);

enum tri_logits_mode { TRI_LOGITS_NONE = 0, TRI_LOGITS_LAST = 1, TRI_LOGITS_ALL = 2 };

/* One step over rows that may belong to different sequences: row t appends to and attends over
 * f->row_kv[t] at position f->row_pos[t] (set by the caller; a sequence's rows are consecutive and in
 * position order, every cache has room and at most f->capacity slots). Logits of the rows
 * f->logit_rows[0..n_logits) go to f->logits in that order. A row's result does not depend on the other
 * rows of the step. */
void tri_forward_rows(tri_forward * f, const triattn_token * tokens, int32_t n_tok, int32_t n_logits);

/* ---- blocks used by src/models/<arch>.c ---------------------------------------------------------- */

/* out[t] = rmsnorm(in[t]) * w for the chunk's tokens (n_embd wide). */
void tri_blk_rmsnorm(tri_forward * f, const float * in, const tri_tensor * w, float * out);
/* q, k, v = xn @ wq, wk, wv (+ biases when present). */
void tri_blk_qkv(tri_forward * f, const tri_layer * L);
/* Per-head RMSNorm of q and k with the layer's q_norm / k_norm weights (Qwen3). */
void tri_blk_qk_norm(tri_forward * f, const tri_layer * L);
/* RoPE on q and k at the tokens' absolute positions (the local frequencies on a sliding-window layer), then
 * k, v appended to the cache of layer il; a windowed layer first drops slots no row of the step can see. */
void tri_blk_rope_store(tri_forward * f, int il);
/* att = softmax(q k^T * attn_scale) v over layer il's live slots, masked by position (and, on a sliding-window
 * layer, to the window's most recent positions). */
void tri_blk_attention(tri_forward * f, int il);
/* x += att @ wo, the product normalised by the layer's post_attn_norm first when it has one. */
void tri_blk_attn_out(tri_forward * f, const tri_layer * L);
/* x += down(silu(gate(xn)) * up(xn)) (normalised by post_ffn_norm first when the layer has one). */
void tri_blk_ffn_swiglu(tri_forward * f, const tri_layer * L);
/* x += down(gelu_tanh(gate(xn)) * up(xn)) (normalised by post_ffn_norm first when the layer has one). */
void tri_blk_ffn_geglu(tri_forward * f, const tri_layer * L);

#endif
