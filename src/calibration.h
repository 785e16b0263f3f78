/* TriAttention calibration: the pre-RoPE query statistics accumulator, the query centres a model carries
 * in its `triattention.*` GGUF metadata (load + validate against the model), and the model fingerprint. */
#ifndef TRI_CALIBRATION_H
#define TRI_CALIBRATION_H

#include "gguf.h"
#include "ops.h"
#include "triattn.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct triattn_model;

/* Running sums over every token seen, per (layer l, query head h, pair f), index ((l*H)+h)*F+f. */
typedef struct tri_calib {
    int32_t  n_layer, n_head, head_dim, freq_count;
    enum tri_rope_pairing pairing;
    double * sum_re;    /* [L][H][F] sum of Re q_f */
    double * sum_im;    /* [L][H][F] sum of Im q_f */
    double * sum_abs;   /* [L][H][F] sum of |q_f| */
    uint64_t n_tokens;  /* tokens accumulated (counted at layer 0) */
} tri_calib;

tri_calib * tri_calib_create(const struct triattn_model * m);
void        tri_calib_free(tri_calib * c);
void        tri_calib_clear(tri_calib * c);
/* Adds the pre-RoPE queries q [n_tok][n_head * head_dim] of layer il. */
void        tri_calib_accumulate(tri_calib * c, int il, const float * q, int n_tok);

/* Query centres of a model, index ((l*H)+h)*F+f. */
typedef struct tri_centres {
    int32_t  n_layer, n_head, freq_count;
    float *  q_re;      /* [L][H][F] Re q̄ */
    float *  q_im;      /* [L][H][F] Im q̄ */
    float *  q_abs;     /* [L][H][F] E|q| */
    uint64_t n_tokens;  /* triattention.calib.n_tokens (0 when absent) */
    char     auto_policy[16]; /* triattention.auto_policy: what kv_policy "auto" uses ("" = triattention) */
    int32_t  n_offsets; /* offsets 2^0..2^(n-1) the score averages over: from triattention.offmax, else
                         * TRI_TRIATTN_N_OFFSETS; a kv_mode with offmax= overrides it */
} tri_centres;

void tri_centres_free(tri_centres * c);

/* Reads and validates the triattention.* keys of g against the model m (geometry, pairing, rope base,
 * array lengths, finiteness, E|q| >= |q̄|). *out = NULL and TRIATTN_OK when g has no
 * triattention.format_version key. A mismatch returns TRIATTN_ERR_FORMAT naming the key; a different
 * model fingerprint is only a warning. what names the source in messages ("sidecar x.gguf"). */
enum triattn_status tri_centres_load(const struct triattn_model * m, const tri_gguf * g, const char * what,
                                     tri_centres ** out, char * err, size_t n);

/* "fnv1a64:<16 hex>" over the tensor directory and the first bytes of blk.0.attn_{q,k}.weight
 * (algorithm in docs/triattention-engine.md). out must hold 40 bytes. */
void tri_model_fingerprint(const tri_gguf * g, char out[40]);

/* Replaces the model's centres (tests, and hosts that calibrate in process). The arrays hold
 * n = n_layer * n_head * freq_count values; validated like a file. Not thread-safe with running sessions. */
enum triattn_status tri_model_set_centres(struct triattn_model * m, const float * q_re, const float * q_im,
                                          const float * q_abs, size_t n, uint64_t n_tokens, char * err, size_t en);

/* Selection steps of the triattention policy (src/kv_triattention.c), exposed for tests. */
typedef struct tri_triattn_cand {
    float   s;  /* aggregated score */
    int32_t j;  /* candidate index: larger = more recent */
} tri_triattn_cand;
/* In place: x = (x - mean) / max(population std, 1e-6). */
void tri_triattn_zscore(float * x, int32_t n);
/* mark[j] = 1 for the k highest s[j] (ties prefer the larger j; NaN ranks last), else 0. sel: n scratch. */
void tri_triattn_topk(const float * s, int32_t n, int32_t k, tri_triattn_cand * sel, uint8_t * mark);

#endif
