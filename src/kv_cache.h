/* KV cache with per-(layer, KV head) slot arrays, and the eviction-policy interface.
 *
 * Layout, for each layer l and KV head h: K and V rows of head_dim F16 values in `capacity` slots, an int32
 * original (absolute) position per slot and a live-slot count. Each (layer, KV head) may hold a different
 * set of tokens. Live slots are kept in increasing position order (appends are in order and compaction
 * preserves order), and attention masks by position, never by slot index. */
#ifndef TRI_KV_CACHE_H
#define TRI_KV_CACHE_H

#include "fp16.h"
#include "kv_tier2.h"
#include "threadpool.h"
#include "triattn.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct tri_kv_cache {
    int32_t    n_layer;
    int32_t    n_head_kv;
    int32_t    head_dim;
    int32_t    capacity;   /* slots per KV head of the layers without a window (what policies manage) */
    int32_t    cap_max;    /* largest slot count of any layer (windowed layers may hold more or fewer) */
    tri_fp16 * k;          /* per layer [n_head_kv][layer_cap[l]][head_dim], layers back to back */
    tri_fp16 * v;          /* same layout as k */
    int32_t *  pos;        /* per layer [n_head_kv][layer_cap[l]] */
    int32_t *  n_live;     /* [n_layer][n_head_kv] */
    int32_t *  layer_cap;  /* [n_layer] slots per KV head of each layer */
    size_t *   layer_row0; /* [n_layer] first slot row of each layer */
    int32_t *  window;     /* [n_layer] sliding-window length of the layer, 0 = sees the whole context.
                            * The forward pass drops what left a window; policies leave such layers alone. */
    size_t     bytes;      /* bytes allocated for k, v, pos */
    bool       poison;     /* compaction fills evicted slots with NaN (debug/ASan builds, TRIATTN_KV_POISON=1) */

    /* Ring of the most recent post-RoPE queries per layer, for policies that score keys by the attention
     * they receive (h2o, snapkv, rkv). q_cap == 0 (the default) keeps none. */
    int32_t    q_cap;      /* queries kept per layer */
    int32_t    q_dim;      /* n_head * head_dim */
    float *    q;          /* [n_layer][q_cap][q_dim], entry i holds query number i % q_cap */
    int32_t *  q_pos;      /* [n_layer][q_cap] absolute position of each entry */
    int64_t *  q_count;    /* [n_layer] queries pushed since the cache was cleared */
    uint64_t   epoch;      /* incremented by every tri_kv_cache_clear: policies with per-slot state see a reset */
    uint64_t   moved;      /* incremented when slots are rearranged outside the policy (a recall): per-slot state
                            * of the policy no longer matches the slots */

    /* Tier 2 (kv_tier2.h): evicted rows kept for recall; NULL = evicted rows are dropped. Owned by the cache. */
    tri_kv_tier2 * t2;
} tri_kv_cache;

/* Bytes needed for a cache of this geometry (0 on overflow). */
size_t tri_kv_cache_bytes(int32_t n_layer, int32_t n_head_kv, int32_t head_dim, int32_t capacity);
/* Allocates the cache; TRIATTN_ERR_OOM (message with the size) when it does not fit. */
enum triattn_status tri_kv_cache_init(tri_kv_cache * c, int32_t n_layer, int32_t n_head_kv, int32_t head_dim,
                                      int32_t capacity, char * err, size_t n);
/* Same, with each layer's own slot count layer_cap[l] (> 0) and sliding window window[l] (0 = none;
 * NULL = no windowed layer). */
enum triattn_status tri_kv_cache_init_layers(tri_kv_cache * c, int32_t n_layer, int32_t n_head_kv, int32_t head_dim,
                                             const int32_t * layer_cap, const int32_t * window, char * err, size_t n);
void tri_kv_cache_free(tri_kv_cache * c);
/* Gives the cache a tier 2 (kv_tier2.h) for positions < n_ctx, capped at max_bytes (0 = no cap). */
enum triattn_status tri_kv_cache_enable_tier2(tri_kv_cache * c, int32_t n_ctx, uint64_t max_bytes, char * err,
                                              size_t n);
/* Gives a cache whose k/v/pos live elsewhere (a device backend's host mirror) the per-layer layout of
 * n_layer layers of c->capacity slots without windows. */
enum triattn_status tri_kv_cache_uniform_layout(tri_kv_cache * c, char * err, size_t n);
/* Empties every (layer, KV head), tier 2 included. */
void tri_kv_cache_clear(tri_kv_cache * c);

static inline size_t tri_kv_index(const tri_kv_cache * c, int il, int h) {
    return (size_t) il * c->n_head_kv + h;
}
static inline size_t tri_kv_row0(const tri_kv_cache * c, int il, int h) {
    return c->layer_row0[il] + (size_t) h * c->layer_cap[il];
}
static inline tri_fp16 * tri_kv_k(const tri_kv_cache * c, int il, int h) {
    return c->k + tri_kv_row0(c, il, h) * c->head_dim;
}
static inline tri_fp16 * tri_kv_v(const tri_kv_cache * c, int il, int h) {
    return c->v + tri_kv_row0(c, il, h) * c->head_dim;
}
static inline int32_t * tri_kv_pos(const tri_kv_cache * c, int il, int h) {
    return c->pos + tri_kv_row0(c, il, h);
}
/* True when layer il only ever sees a sliding window of the most recent tokens. */
static inline bool tri_kv_windowed(const tri_kv_cache * c, int il) {
    return c->window[il] > 0;
}
/* Drops the slots of windowed layer il that no query at position >= pos can see again. */
void tri_kv_trim_window(tri_kv_cache * c, int il, int32_t pos);

/* Keeps the last q_cap post-RoPE queries (q_dim floats each) of every layer from now on; called by a policy's
 * init. TRIATTN_ERR_OOM when the ring cannot be allocated. */
enum triattn_status tri_kv_cache_enable_queries(tri_kv_cache * c, int32_t q_cap, int32_t q_dim, char * err, size_t n);
/* Records the post-RoPE query q (q_dim floats) of the token at absolute position pos in layer il's ring. */
void tri_kv_push_query(tri_kv_cache * c, int il, const float * q, int32_t pos);

/* Smallest and largest live-slot count over all (layer, KV head) of the layers without a window (windowed
 * layers are bounded by the forward pass itself). */
void tri_kv_cache_live_range(const tri_kv_cache * c, int32_t * lo, int32_t * hi);

/* Keeps only the slots keep[0..n_keep) (strictly increasing slot indices) of (il, h), moving K, V and
 * positions down so live slots stay contiguous and in order; with a tier 2 the evicted rows move there first.
 * Evicted slots are poisoned with NaN (position
 * INT32_MIN) when c->poison is set (debug and sanitizer builds, or TRIATTN_KV_POISON=1 at cache creation),
 * so a kernel that reads them fails loudly. */
void tri_kv_compact(tri_kv_cache * c, int il, int h, const int32_t * keep, int32_t n_keep);

/* ---- eviction policies ------------------------------------------------------------------------ */

typedef struct tri_kv_policy_cfg {
    int32_t n_ctx;
    int32_t budget;
    int32_t interval;
    int32_t window;
    int32_t sink;
    const char * mode;
    uint64_t seed;     /* the session's seed (policy `random`); UINT64_MAX = random */
} tri_kv_policy_cfg;

typedef struct tri_kv_policy tri_kv_policy;
struct triattn_model;

/* Which (layer, KV head) pairs a policy keeps identical token sets in: none (each its own), the layers of each KV
 * head (triattention per_head), or all of them (triattention global). A recall keeps the same sharing. */
enum tri_kv_share { TRI_KV_SHARE_NONE = 0, TRI_KV_SHARE_LAYERS = 1, TRI_KV_SHARE_ALL = 2 };

typedef struct tri_kv_policy_ops {
    const char * name;
    /* Slots per (layer, KV head) this policy needs: n_ctx for `full`, budget + interval when compressing. */
    int32_t (*capacity)(const tri_kv_policy_cfg * cfg);
    /* True when the cache must be compressed before more tokens can be appended. */
    bool    (*should_compress)(const tri_kv_policy * p, const tri_kv_cache * c);
    /* Chooses the slots to keep for every (layer, KV head) and compacts the cache. */
    enum triattn_status (*compress)(tri_kv_policy * p, tri_kv_cache * c, int32_t next_pos, char * err, size_t n);
    /* Optional (NULL = none): allocates the policy's scratch once, at session creation, for a cache of
     * c->capacity slots, and may enable the cache's query ring; p->model and p->tp are set before the call. */
    enum triattn_status (*init)(tri_kv_policy * p, tri_kv_cache * c, char * err, size_t n);
    /* Optional: frees what init allocated (also after a failed init). */
    void (*free)(tri_kv_policy * p);
    /* Optional (NULL = none): for a prompt of n tokens decoded into an empty cache, how many of its last tokens
     * a first, question-aware pass runs over (0 = no first pass). The session then runs that pass from position
     * n - tokens, calls lookahead_capture, clears the cache once and prefills the whole prompt again. */
    int32_t (*lookahead_tokens)(const tri_kv_policy * p, int32_t n);
    /* Optional: keeps what the policy needs from the first pass (the query ring); it applies to the rounds after
     * the following clear, until the cache is cleared again. */
    void (*lookahead_capture)(tri_kv_policy * p, const tri_kv_cache * c);
    /* Optional: state outside the cache that a saved session carries (the question-aware queries).
     * state_save writes it to dst (NULL: nothing) and returns its size in bytes, at most state_max(p).
     * state_load checks n bytes of a saved state and, unless check_only, takes them into the policy for the
     * cache c (just refilled from the same file); false when they cannot be this policy's state. */
    size_t (*state_save)(const tri_kv_policy * p, const tri_kv_cache * c, void * dst);
    size_t (*state_max)(const tri_kv_policy * p);
    bool   (*state_load)(tri_kv_policy * p, const tri_kv_cache * c, const void * src, size_t n, bool check_only);
} tri_kv_policy_ops;

struct tri_kv_policy {
    const tri_kv_policy_ops * ops;
    tri_kv_policy_cfg         cfg;
    int64_t                   n_compressions;
    int64_t                   n_evicted;
    double                    score_ms;
    const struct triattn_model * model;  /* set by the session before init */
    tri_threadpool *          tp;        /* the session's threads, for scoring */
    int32_t                   n_prompt;  /* tokens of the first decode call after create/reset */
    enum tri_kv_share         share;     /* set by init: which pairs hold the same tokens */
    void *                    state;     /* the policy's own scratch (init/free) */
};

/* Looks a policy up by name; NULL when unknown. */
const tri_kv_policy_ops * tri_kv_policy_find(const char * name);

extern const tri_kv_policy_ops tri_kv_policy_full;
extern const tri_kv_policy_ops tri_kv_policy_triattention;
/* Baselines of docs/triattention.md §6 (src/kv_baselines.c). */
extern const tri_kv_policy_ops tri_kv_policy_streaming;
extern const tri_kv_policy_ops tri_kv_policy_random;
extern const tri_kv_policy_ops tri_kv_policy_h2o;
extern const tri_kv_policy_ops tri_kv_policy_snapkv;
extern const tri_kv_policy_ops tri_kv_policy_rkv;
extern const tri_kv_policy_ops tri_kv_policy_snapkv_prompt;

#endif
