#include "kv_cache.h"
#include "common.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Debug and sanitizer builds always poison evicted slots; release builds only on request (TRIATTN_KV_POISON=1). */
#if defined(NDEBUG) && !defined(__SANITIZE_ADDRESS__)
#define TRI_KV_POISON_DEFAULT false
#else
#define TRI_KV_POISON_DEFAULT true
#endif

static bool tri_kv_poison_requested(void) {
    const char * e = getenv("TRIATTN_KV_POISON");
    return TRI_KV_POISON_DEFAULT || (e && e[0] == '1');
}

size_t tri_kv_cache_bytes(int32_t n_layer, int32_t n_head_kv, int32_t head_dim, int32_t capacity) {
    if (n_layer <= 0 || n_head_kv <= 0 || head_dim <= 0 || capacity <= 0) {
        return 0;
    }
    const unsigned __int128 slots = (unsigned __int128) n_layer * n_head_kv * capacity;
    const unsigned __int128 bytes = slots * (2u * head_dim * sizeof(tri_fp16) + sizeof(int32_t));
    return bytes > (unsigned __int128) (SIZE_MAX / 2) ? 0 : (size_t) bytes;
}

enum triattn_status tri_kv_cache_init(tri_kv_cache * c, int32_t n_layer, int32_t n_head_kv, int32_t head_dim,
                                      int32_t capacity, char * err, size_t n) {
    if (n_layer <= 0 || n_layer > 65536) {
        memset(c, 0, sizeof *c);
        return tri_fail(err, n, TRIATTN_ERR_INVALID_ARG, "KV cache of %d layers is invalid", n_layer);
    }
    int32_t * caps = malloc(sizeof(int32_t) * (size_t) n_layer);
    if (!caps) {
        memset(c, 0, sizeof *c);
        return tri_fail(err, n, TRIATTN_ERR_OOM, "out of memory");
    }
    for (int32_t l = 0; l < n_layer; l++) {
        caps[l] = capacity;
    }
    const enum triattn_status st = tri_kv_cache_init_layers(c, n_layer, n_head_kv, head_dim, caps, NULL, err, n);
    free(caps);
    return st;
}

enum triattn_status tri_kv_cache_init_layers(tri_kv_cache * c, int32_t n_layer, int32_t n_head_kv, int32_t head_dim,
                                             const int32_t * layer_cap, const int32_t * window, char * err, size_t n) {
    memset(c, 0, sizeof *c);
    size_t n_rows = 0, bytes = 0;
    int32_t cap_max = 0, cap_global = 0;
    for (int32_t l = 0; l < n_layer; l++) {
        const size_t b = tri_kv_cache_bytes(1, n_head_kv, head_dim, layer_cap[l]);
        if (b == 0 || bytes > SIZE_MAX / 4 - b) {
            return tri_fail(err, n, TRIATTN_ERR_INVALID_ARG, "KV cache of %d slots x %d KV heads (layer %d) is too large",
                            layer_cap[l], n_head_kv, l);
        }
        bytes += b;
        n_rows += (size_t) n_head_kv * layer_cap[l];
        cap_max = TRI_MAX(cap_max, layer_cap[l]);
        if (!window || window[l] <= 0) {
            cap_global = TRI_MAX(cap_global, layer_cap[l]);
        }
    }
    c->k          = malloc(n_rows * head_dim * sizeof(tri_fp16));
    c->v          = malloc(n_rows * head_dim * sizeof(tri_fp16));
    c->pos        = malloc(n_rows * sizeof(int32_t));
    c->n_live     = calloc((size_t) n_layer * n_head_kv, sizeof(int32_t));
    c->layer_cap  = malloc(sizeof(int32_t) * (size_t) n_layer);
    c->layer_row0 = malloc(sizeof(size_t) * (size_t) n_layer);
    c->window     = calloc((size_t) n_layer, sizeof(int32_t));
    if (!c->k || !c->v || !c->pos || !c->n_live || !c->layer_cap || !c->layer_row0 || !c->window) {
        tri_kv_cache_free(c);
        return tri_fail(err, n, TRIATTN_ERR_OOM, "cannot allocate the KV cache: %.1f MiB (%d slots per layer and KV head)",
                        bytes / 1048576.0, cap_max);
    }
    size_t row = 0;
    for (int32_t l = 0; l < n_layer; l++) {
        c->layer_cap[l]  = layer_cap[l];
        c->layer_row0[l] = row;
        c->window[l]     = window ? TRI_MAX(window[l], 0) : 0;
        row += (size_t) n_head_kv * layer_cap[l];
    }
    c->n_layer   = n_layer;
    c->n_head_kv = n_head_kv;
    c->head_dim  = head_dim;
    c->capacity  = cap_global > 0 ? cap_global : cap_max;
    c->cap_max   = cap_max;
    c->bytes     = bytes;
    c->poison    = tri_kv_poison_requested();
    return TRIATTN_OK;
}

enum triattn_status tri_kv_cache_uniform_layout(tri_kv_cache * c, char * err, size_t n) {
    c->layer_cap  = malloc(sizeof(int32_t) * (size_t) c->n_layer);
    c->layer_row0 = malloc(sizeof(size_t) * (size_t) c->n_layer);
    c->window     = calloc((size_t) c->n_layer, sizeof(int32_t));
    if (!c->layer_cap || !c->layer_row0 || !c->window) {
        return tri_fail(err, n, TRIATTN_ERR_OOM, "out of memory");
    }
    c->cap_max = c->capacity;
    for (int32_t l = 0; l < c->n_layer; l++) {
        c->layer_cap[l]  = c->capacity;
        c->layer_row0[l] = (size_t) l * c->n_head_kv * c->capacity;
    }
    return TRIATTN_OK;
}

enum triattn_status tri_kv_cache_enable_tier2(tri_kv_cache * c, int32_t n_ctx, uint64_t max_bytes, char * err,
                                              size_t n) {
    if (c->t2) {
        return TRIATTN_OK;
    }
    int32_t managed = 0;
    for (int il = 0; il < c->n_layer; il++) {
        managed += tri_kv_windowed(c, il) ? 0 : c->n_head_kv;
    }
    c->t2 = calloc(1, sizeof *c->t2);
    if (!c->t2) {
        return tri_fail(err, n, TRIATTN_ERR_OOM, "out of memory");
    }
    const enum triattn_status st =
        tri_kv_tier2_init(c->t2, c->n_layer, c->n_head_kv, c->head_dim, n_ctx, max_bytes, managed, err, n);
    if (st != TRIATTN_OK) {
        free(c->t2);
        c->t2 = NULL;
    }
    return st;
}

void tri_kv_cache_free(tri_kv_cache * c) {
    if (c->t2) {
        tri_kv_tier2_free(c->t2);
        free(c->t2);
    }
    free(c->q);
    free(c->q_pos);
    free(c->q_count);
    free(c->k);
    free(c->v);
    free(c->pos);
    free(c->n_live);
    free(c->layer_cap);
    free(c->layer_row0);
    free(c->window);
    memset(c, 0, sizeof *c);
}

void tri_kv_cache_clear(tri_kv_cache * c) {
    memset(c->n_live, 0, (size_t) c->n_layer * c->n_head_kv * sizeof(int32_t));
    if (c->q_count) {
        memset(c->q_count, 0, (size_t) c->n_layer * sizeof(int64_t));
    }
    if (c->t2) {
        tri_kv_tier2_clear(c->t2);
    }
    c->epoch++;
}

enum triattn_status tri_kv_cache_enable_queries(tri_kv_cache * c, int32_t q_cap, int32_t q_dim, char * err, size_t n) {
    free(c->q);
    free(c->q_pos);
    free(c->q_count);
    c->q = NULL;
    c->q_pos = NULL;
    c->q_count = NULL;
    c->q_cap = 0;
    c->q_dim = 0;
    if (q_cap <= 0 || q_dim <= 0 || (uint64_t) c->n_layer * q_cap * q_dim > (uint64_t) (SIZE_MAX / 8)) {
        return tri_fail(err, n, TRIATTN_ERR_INVALID_ARG, "query ring of %d x %d floats per layer is invalid", q_cap,
                        q_dim);
    }
    c->q_dim = q_dim;
    c->q       = malloc((size_t) c->n_layer * q_cap * q_dim * sizeof(float));
    c->q_pos   = malloc((size_t) c->n_layer * q_cap * sizeof(int32_t));
    c->q_count = calloc((size_t) c->n_layer, sizeof(int64_t));
    if (!c->q || !c->q_pos || !c->q_count) {
        return tri_fail(err, n, TRIATTN_ERR_OOM, "cannot allocate a ring of %d queries per layer", q_cap);
    }
    c->q_cap = q_cap;
    return TRIATTN_OK;
}

void tri_kv_push_query(tri_kv_cache * c, int il, const float * q, int32_t pos) {
    const int64_t i = c->q_count[il]++ % c->q_cap;
    const size_t e = (size_t) il * c->q_cap + (size_t) i;
    memcpy(c->q + e * c->q_dim, q, (size_t) c->q_dim * sizeof(float));
    c->q_pos[e] = pos;
}

void tri_kv_cache_live_range(const tri_kv_cache * c, int32_t * lo, int32_t * hi) {
    int32_t a = INT32_MAX, b = 0;
    for (int i = 0; i < c->n_layer * c->n_head_kv; i++) {
        if (tri_kv_windowed(c, i / c->n_head_kv)) {
            continue;
        }
        a = TRI_MIN(a, c->n_live[i]);
        b = TRI_MAX(b, c->n_live[i]);
    }
    *lo = a == INT32_MAX ? 0 : a;
    *hi = b;
}

void tri_kv_trim_window(tri_kv_cache * c, int il, int32_t pos) {
    const int32_t lo = pos - c->window[il]; /* a query at pos sees positions > lo */
    const int D = c->head_dim;
    for (int h = 0; h < c->n_head_kv; h++) {
        const int32_t * p = tri_kv_pos(c, il, h);
        const int32_t live = c->n_live[tri_kv_index(c, il, h)];
        int32_t drop = 0;
        while (drop < live && p[drop] <= lo) {
            drop++;
        }
        if (drop == 0) {
            continue;
        }
        const int32_t keep = live - drop;
        memmove(tri_kv_k(c, il, h), tri_kv_k(c, il, h) + (size_t) drop * D, (size_t) keep * D * sizeof(tri_fp16));
        memmove(tri_kv_v(c, il, h), tri_kv_v(c, il, h) + (size_t) drop * D, (size_t) keep * D * sizeof(tri_fp16));
        memmove(tri_kv_pos(c, il, h), p + drop, (size_t) keep * sizeof(int32_t));
        if (c->poison) {
            const tri_fp16 nan16 = 0x7e00;
            for (size_t i = (size_t) keep * D; i < (size_t) live * D; i++) {
                tri_kv_k(c, il, h)[i] = nan16;
                tri_kv_v(c, il, h)[i] = nan16;
            }
            for (int32_t i = keep; i < live; i++) {
                tri_kv_pos(c, il, h)[i] = INT32_MIN;
            }
        }
        c->n_live[tri_kv_index(c, il, h)] = keep;
    }
}

void tri_kv_compact(tri_kv_cache * c, int il, int h, const int32_t * keep, int32_t n_keep) {
    const int D = c->head_dim;
    tri_fp16 * k = tri_kv_k(c, il, h);
    tri_fp16 * v = tri_kv_v(c, il, h);
    int32_t * pos = tri_kv_pos(c, il, h);
    int32_t * live = &c->n_live[tri_kv_index(c, il, h)];
    if (c->t2) { /* the rows not in keep move to tier 2 before kept rows overwrite them */
        for (int32_t j = 0, i = 0; j < *live; j++) {
            if (i < n_keep && keep[i] == j) {
                i++;
            } else {
                tri_kv_tier2_append(c->t2, il, h, pos[j], k + (size_t) j * D, v + (size_t) j * D);
            }
        }
    }
    for (int32_t i = 0; i < n_keep; i++) {
        const int32_t j = keep[i];
        if (j != i) {
            memcpy(k + (size_t) i * D, k + (size_t) j * D, D * sizeof(tri_fp16));
            memcpy(v + (size_t) i * D, v + (size_t) j * D, D * sizeof(tri_fp16));
            pos[i] = pos[j];
        }
    }
    if (c->poison) {
        const tri_fp16 nan16 = 0x7e00;
        for (int32_t i = n_keep; i < *live; i++) {
            for (int d = 0; d < D; d++) {
                k[(size_t) i * D + d] = nan16;
                v[(size_t) i * D + d] = nan16;
            }
            pos[i] = INT32_MIN;
        }
    }
    *live = n_keep;
}

/* ---- full attention: never evicts ---------------------------------------------------------------- */

static int32_t tri_full_capacity(const tri_kv_policy_cfg * cfg) {
    return cfg->n_ctx;
}

static bool tri_full_should_compress(const tri_kv_policy * p, const tri_kv_cache * c) {
    return false;
}

static enum triattn_status tri_full_compress(tri_kv_policy * p, tri_kv_cache * c, int32_t next_pos, char * err,
                                             size_t n) {
    return TRIATTN_OK;
}

const tri_kv_policy_ops tri_kv_policy_full = {
    .name            = "full",
    .capacity        = tri_full_capacity,
    .should_compress = tri_full_should_compress,
    .compress        = tri_full_compress,
};

const tri_kv_policy_ops * tri_kv_policy_find(const char * name) {
    static const tri_kv_policy_ops * const all[] = { &tri_kv_policy_full,      &tri_kv_policy_triattention,
                                                     &tri_kv_policy_streaming, &tri_kv_policy_random,
                                                     &tri_kv_policy_h2o,       &tri_kv_policy_snapkv,
                                                     &tri_kv_policy_rkv,       &tri_kv_policy_snapkv_prompt };
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
        if (strcmp(all[i]->name, name) == 0) {
            return all[i];
        }
    }
    return NULL;
}
