/* Compute backends: the seam between a session and where its forward pass, KV cache and KV-policy rounds run.
 *
 * The CPU is the built-in default and the reference: a model or session whose `backend` is NULL runs the
 * code of forward.c / kv_*.c exactly as before. A backend (today only CUDA, cuda/backend_cuda.c, compiled
 * with -DTRIATTN_CUDA=ON) is chosen once per model at load time from n_gpu_layers; every session of that
 * model then uses it. A backend session keeps the host-side view the rest of session.c relies on:
 * s->kv.{n_layer, n_head_kv, head_dim, capacity, bytes} and the position / live-count mirrors s->kv.pos and
 * s->kv.n_live (no host K/V), and writes logits into s->fwd.logits / s->fwd.n_logits. */
#ifndef TRI_BACKEND_H
#define TRI_BACKEND_H

#include "forward.h"
#include "triattn.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct triattn_model;

/* Where kv_copy moves a head's live K and V rows. */
enum tri_kv_copy_dir { TRI_KV_TO_HOST, TRI_KV_TO_DEVICE, TRI_KV_ON_DEVICE };

typedef struct tri_backend_ops {
    const char * name;
    /* Usable devices (0 = none); why (may be NULL) receives the reason when there are none. */
    int (*device_count)(char * why, size_t n);
    /* Uploads the weights once; the state belongs to the model (model_free). mem_limit: device bytes the model and
     * its sessions may use (0 = what the device has free). */
    enum triattn_status (*model_upload)(const struct triattn_model * m, uint64_t mem_limit, void ** state, char * err,
                                        size_t n);
    void (*model_free)(void * state);
    /* Device bytes the model and its live sessions use now, and the limit (0 = none set). */
    void (*memory)(const struct triattn_model * m, uint64_t * used, uint64_t * limit);
    /* Device KV cache and activations of a session whose params, policy and model are set; fills the host
     * mirror of s->kv. TRIATTN_ERR_UNSUPPORTED for a KV policy the backend cannot run. */
    enum triattn_status (*session_init)(triattn_session * s, char * err, size_t n);
    /* Frees what session_init made (also after a failed init) and clears the s->kv / s->fwd views. */
    void (*session_free)(triattn_session * s);
    /* Empties the cache (the host mirror is cleared by the session). */
    void (*reset)(triattn_session * s);
    /* One forward step over the chunks of n_sess sessions of the model (ss[0] leads: its buffers run the step): one
     * session with any number of tokens up to its n_batch, or several with one token each. Session i's counts[i]
     * tokens toks[i] sit at positions ss[i]->n_past.. (its cache has room); K/V are appended on the device and to
     * its host mirror, and the logits of `mode` (several sessions: LAST or NONE) go to ss[i]->fwd.logits with
     * ss[i]->fwd.n_logits rows. */
    enum triattn_status (*forward)(triattn_session * const * ss, const triattn_token * const * toks,
                                   const int32_t * counts, int32_t n_sess, enum tri_logits_mode mode, char * err,
                                   size_t en);
    /* The session's KV-policy round (same contract as tri_kv_policy_ops.compress, stats in s->policy). */
    enum triattn_status (*compress)(triattn_session * s, int32_t next_pos, char * err, size_t n);
    /* Reads min(live, rows) K rows of (layer, KV head) back as float. */
    enum triattn_status (*kv_keys)(const triattn_session * s, int layer, int kv_head, float * out, int32_t rows);
    /* Copies the s->kv.n_live[i] live slots of (layer, KV head) i (row-major F16, head_dim each) from the device into
     * k and v (TRI_KV_TO_HOST), or to the device together with their positions from the host mirror: from host
     * memory (TRI_KV_TO_DEVICE) or from another session's rows on the same device (TRI_KV_ON_DEVICE, kv_rows). */
    enum triattn_status (*kv_copy)(triattn_session * s, int i, tri_fp16 * k, tri_fp16 * v, enum tri_kv_copy_dir dir);
    /* Device addresses of the live K and V rows of (layer, KV head) i, for another session of the same backend to
     * copy (kv_copy's TRI_KV_ON_DEVICE); the session's queued work is done on return. */
    enum triattn_status (*kv_rows)(triattn_session * s, int i, const tri_fp16 ** k, const tri_fp16 ** v);
    /* Makes the device's live counts those of the host mirror (after the host cut slots off the end, or loaded). */
    enum triattn_status (*kv_set_live)(triattn_session * s);
} tri_backend_ops;

/* Chooses and prepares the model's backend for n_gpu_layers (triattn_model_params): 0 = CPU; -1 or >= n_layer =
 * the GPU when this build has one and a device is present, else the CPU with one WARN log line saying why;
 * other values are refused (partial offload). Sets m->backend / m->backend_state. */
enum triattn_status tri_backend_model_attach(struct triattn_model * m, int32_t n_gpu_layers, uint64_t gpu_mem_limit,
                                             char * err, size_t n);
/* Releases the model's backend state (NULL backend: nothing). */
void tri_backend_model_detach(struct triattn_model * m);

/* The GPU backend compiled into this library, or NULL (built without CUDA). */
const tri_backend_ops * tri_backend_gpu(void);

#endif
