/* The CUDA backend's state, shared by its three parts: backend_cuda.c (model upload, sessions, device-memory
 * budget), forward_cuda.c (the forward step over the rows of one or more sessions, CUDA graphs for decode) and
 * compress_cuda.c (the TriAttention round). Compiled only with -DTRIATTN_CUDA=ON. */
#ifndef TRI_BACKEND_CUDA_H
#define TRI_BACKEND_CUDA_H

#include "backend.h"
#include "session.h"
#include "tri_cuda.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#define TRI_CU_DEVICE     0    /* the one device a model uses */
#define TRI_CU_ALIGN      256  /* bytes: every device / pinned sub-buffer starts on this boundary */
#define TRI_CU_ACT_SLOTS  3    /* 8-bit activation buffers (distinct activation types one input may need) */
#define TRI_CU_ATT_SLOTS  64   /* slots per part a decode step aims at: one tile of the attention kernel */
#define TRI_CU_VEC_ROWS   32   /* steps of up to this many rows use 8-bit activations (matrix-vector kernels, 8 rows a
                                  launch, or from mq_min rows the integer tensor cores), longer ones fp16 tensor cores */
#define TRI_CU_MQ_MIN     9    /* default mq_min (TRIATTN_CUDA_MQ_MIN) */
#define TRI_CU_ATT_MMA_MIN 16  /* default att_mma_min (TRIATTN_CUDA_ATT_MMA_MIN) */
#define TRI_CU_PART_ROWS  1024 /* (row, part) pairs of split-K scratch a step may use, at least */
#define TRI_CU_LOGIT_ROWS 32   /* rows of logits computed per output product (more rows: in pieces) */

/* Runs a call returning a status; on failure jumps to `fail` with it in `st`. */
#define TRI_CU_TRY(expr)              \
    do {                              \
        st = (expr);                  \
        if (st != TRIATTN_OK) {       \
            goto fail;                \
        }                             \
    } while (0)

/* A weight on the device (d = NULL when the optional tensor is absent). */
typedef struct tri_cu_w {
    const void * d;
    int          type;
    int64_t      ne0, ne1;
} tri_cu_w;

typedef struct tri_cu_layer {
    tri_cu_w attn_norm, wq, wk, wv, bq, bk, bv, q_norm, k_norm, wo, ffn_norm, ffn_gate, ffn_up, ffn_down;
} tri_cu_layer;

/* Activations of a forward step, shared by every session of a model (a step holds the model's lock), sized for the
 * largest n_batch of its sessions. */
typedef struct tri_cu_ws {
    void *    mem;
    uint64_t  bytes;
    int32_t   rows;               /* rows a step may have */
    int32_t   part_rows;          /* (row, part) pairs of split-K scratch */
    uint32_t  version;            /* bumped when the buffers move: graphs recorded before are stale */
    int32_t * tok;                /* [rows] */
    float *   cs;                 /* [rows][rope_dim] RoPE cos, sin */
    tri_cuda_row * row;           /* [rows] */
    float *   x, * xn, * q, * k, * v, * att, * gate, * up, * hid;
    float *   part;               /* [part_rows][n_head][head_dim + 2] */
    int32_t * tickets;            /* [rows][TRI_CUDA_ATT_TICKETS]: attention's part counters, zero between steps */
    float *   logits;             /* [TRI_CU_LOGIT_ROWS][n_vocab] */
    tri_cuda_q8 q8[TRI_CU_ACT_SLOTS]; /* [q8_rows][max_in] each */
    int32_t     q8_rows;              /* rows of 8-bit activations (TRI_CU_VEC_ROWS, or up to TRIATTN_CUDA_MQ_MAX) */
} tri_cu_ws;

typedef struct tri_cu_model {
    void *         mem;       /* one device allocation holding every tensor */
    size_t         bytes;
    tri_cu_w       tok_embd, output_norm, output;
    tri_cu_layer * layers;    /* n_layer */
    /* device-memory budget: the weights, the step workspace and every live session count against the limit */
    pthread_mutex_t lock;     /* budget, workspace, and one step at a time */
    uint64_t       limit;     /* bytes the model may use on the device; 0 = what the device has free */
    uint64_t       used;
    tri_cu_ws      ws;
} tri_cu_model;

enum tri_cu_mode { TRI_CU_PER_HEAD = 0, TRI_CU_PER_LAYER_PER_HEAD = 1, TRI_CU_GLOBAL = 2 };

/* Decode graphs: one per shape, a row count 1..TRI_CU_VEC_ROWS (a step of that many sessions of one token each) and
 * the attention's part count, recorded on first use; a session keeps the TRI_CU_GRAPHS it used last. */
#define TRI_CU_GRAPHS 16
typedef struct tri_cu_graph {
    void *   exec;
    int32_t  n, parts;  /* the shape; n = 0: an empty entry */
    uint64_t used;      /* the session's step count at its last use */
    bool     failed;    /* recording failed once: run that shape without a graph */
} tri_cu_graph;

/* profile_cuda.c: device time per phase of the forward steps (TRIATTN_CUDA_PROFILE=1). */
enum { TRI_CU_PH_INPUT, TRI_CU_PH_QKV, TRI_CU_PH_KV, TRI_CU_PH_ATT, TRI_CU_PH_OUT, TRI_CU_PH_FFN, TRI_CU_PH_DOWN,
       TRI_CU_PH_LOGITS, TRI_CU_PH_N };
typedef struct tri_cu_prof {
    void **  ev;      /* [cap] events */
    int8_t * ph;      /* [cap] the phase event i closes */
    int      cap, n;  /* events, and those recorded in this step */
    double   ms[2][TRI_CU_PH_N], wall_ms[2]; /* [decode, chunk] */
    int64_t  steps[2], rows[2];
} tri_cu_prof;
/* NULL unless TRIATTN_CUDA_PROFILE=1 (or when events cannot be made). */
tri_cu_prof * tri_cu_prof_new(int n_layer);
/* Step start; then a mark after each phase; after the step's sync, its sums. All no-ops on NULL. */
void tri_cu_prof_begin(tri_cu_prof * p, void * stream);
void tri_cu_prof_mark(tri_cu_prof * p, int phase, void * stream);
void tri_cu_prof_step(tri_cu_prof * p, bool decode, int rows, double wall_ms);
/* Logs the sums (one JSON line) and frees. */
void tri_cu_prof_free(tri_cu_prof * p);

typedef struct tri_cu_session {
    tri_cuda_stream stream;
    int32_t L, H, Hkv, D, R, F, cap, n_batch, n_vocab, n_embd, n_ff, q_dim, kv_dim, max_in;
    bool    triattention;
    enum tri_cu_mode mode;
    int32_t window;               /* as configured (-1 resolved to the default) */
    uint64_t dev_bytes;           /* counted in the model's budget */

    /* device */
    void *    dmem;
    void *    K, * V;             /* [L][Hkv][cap][D] halves */
    int32_t * pos, * n_live;      /* [L][Hkv][cap], [L][Hkv] */
    float *   w, * cw;            /* round: [L][H][D] synthetic queries and norm weights */
    float *   scores, * agg, * mean; /* round: [L][H][cap], [L][Hkv][cap], [Hkv][cap] */
    uint8_t * marks;              /* round: [L * Hkv][cap] */
    int32_t * lohi;               /* round: lo [L * Hkv], then hi [L * Hkv] */
    int32_t * nk;                 /* round: candidates [L * Hkv], then kept [L * Hkv], per selection group */
    int32_t * keep, * n_keep;     /* round: [L * Hkv][cap] slots kept, [L * Hkv] their count (-1 = untouched) */

    /* host, page-locked */
    void *     hmem;
    int32_t *  h_tok;             /* [n_batch] step inputs, copied to the workspace */
    float *    h_cs, * h_logits, * h_w, * h_cw;
    tri_cuda_row * h_rows;        /* [n_batch] */
    int32_t *  h_lohi, * h_nk, * h_keep, * h_n_keep, * h_k;
    uint8_t *  h_marks;
    tri_fp16 * h_rows_kv;         /* [cap][D] staging of kv_keys */
    double *   omega, * a_re, * a_im; /* [F] */

    tri_cu_graph graphs[TRI_CU_GRAPHS];
    uint64_t   graph_clock;
    uint32_t   graphs_version;    /* the workspace version the graphs were recorded against */
    bool       use_graphs;
    int32_t    mq_min;            /* steps of at least this many rows (<= TRI_CU_VEC_ROWS) multiply quantized weights
                                     on integer tensor cores, shorter ones with matrix-vector kernels */
    int32_t    mq_max;            /* steps of up to this many rows (>= TRI_CU_VEC_ROWS) use 8-bit activations */
    int32_t    att_mma_min;       /* one session's steps of at least this many rows attend on tensor cores */
    bool       att_fused;         /* decode attention merges its parts in the same launch */
    tri_cu_prof * prof;           /* NULL unless profiling */
} tri_cu_session;

/* backend_cuda.c: bytes of the attention's part counters of a workspace of `rows` rows */
size_t tri_cu_tickets_bytes(const tri_hparams * hp, int32_t rows);
/* The kernel choices' row counts from the environment (docs/cuda.md), read when a session or workspace is made:
 * integer tensor cores from mq_min rows (TRIATTN_CUDA_MQ_MIN), 8-bit activations up to mq_max rows (past
 * TRI_CU_VEC_ROWS on integer tensor cores, TRIATTN_CUDA_MQ_MAX), a session's chunks of att_mma_min rows and more
 * attend on tensor cores (TRIATTN_CUDA_ATT_MMA_MIN; INT32_MAX: never). */
int32_t tri_cu_mq_min(void);
int32_t tri_cu_mq_max(void);
int32_t tri_cu_att_mma_min(void);
/* forward_cuda.c */
enum triattn_status tri_cu_forward(triattn_session * const * ss, const triattn_token * const * toks,
                                   const int32_t * counts, int32_t n_sess, enum tri_logits_mode mode, char * err,
                                   size_t en);
void tri_cu_graphs_free(tri_cu_session * c);
/* compress_cuda.c */
enum triattn_status tri_cu_compress(triattn_session * s, int32_t next_pos, char * err, size_t en);

#endif
