/* Session save/restore: the token history, the live KV slots with their positions, the policy's schedule
 * state and the last logits, in one checksummed file that a session of the same model and policy can load.
 *
 * File layout (little-endian):
 *   header  magic "TRIATTNS", u32 version, model fingerprint[40], policy[32], kv_mode[128],
 *           i32 n_ctx, budget, interval, window, sink, n_layer, n_head_kv, head_dim, n_vocab,
 *           i32 n_past, n_prompt, last_compress_pos, n_logits (0 or 1), i64 n_compressions, n_evicted
 *   body    i32 tokens[n_past], i32 n_live[n_layer * n_head_kv],
 *           per (layer, KV head): i32 pos[n_live], f16 K[n_live][head_dim], f16 V[n_live][head_dim],
 *           f32 logits[n_vocab] when n_logits = 1,
 *           u32 n_policy, the policy's own state[n_policy] (version 2; the question-aware queries),
 *           u32 tier2 (version 3; 1 when the session keeps a tier 2, kv_recall > 0), and then
 *             i32 recall_pos, i64 n_recalls, n_recalled,
 *             i32 nq, q_dim, per layer: i32 pos[nq], f32 q[nq][q_dim] (the last queries, which the next recall reads),
 *             per (layer, KV head): i64 n_dropped, i32 n_rows,
 *             n_rows x (i32 pos, f16 k_scale, f16 v_scale, i8 K[head_dim], u8 V[ceil(7 head_dim / 8)]) in
 *             tier-2 order (V as tier 2 packs it; version 3 had i8 V[head_dim])
 *   footer  u64 FNV-1a 64 of every byte before it
 * Files of versions 1 to 3 still load (a version-3 tier 2 is converted to 7-bit V). */
#include "backend.h"
#include "common.h"
#include "kv_recall.h"
#include "model.h"
#include "platform.h"
#include "session.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define TRI_STATE_MAGIC   "TRIATTNS"
#define TRI_STATE_VERSION 4u

typedef struct tri_state_header {
    char     magic[8];
    uint32_t version;
    char     fingerprint[40];
    char     policy[32];
    char     mode[128];
    int32_t  n_ctx, budget, interval, window, sink, n_layer, n_head_kv, head_dim, n_vocab;
    int32_t  n_past, n_prompt, last_compress_pos, n_logits;
    int64_t  n_compressions, n_evicted;
} tri_state_header;

/* Serialised header size: the fields above without padding. */
#define TRI_STATE_HEADER_BYTES (8 + 4 + 40 + 32 + 128 + 13 * 4 + 2 * 8)

static uint64_t tri_fnv1a(uint64_t h, const void * data, size_t n) {
    const unsigned char * p = data;
    for (size_t i = 0; i < n; i++) {
        h = (h ^ p[i]) * 0x100000001b3ull;
    }
    return h;
}
#define TRI_FNV_OFFSET 0xcbf29ce484222325ull

/* ---- writing ------------------------------------------------------------------------------------- */

/* A piece of a state in memory: the bytes at p, or (p NULL) at offset off of the writer's buffer; device: p is a
 * device address (a GPU source's K or V rows, copied on the device into a GPU destination; never read here). */
typedef struct tri_state_seg {
    const unsigned char * p;
    size_t                off, n;
    bool                  device;
} tri_state_seg;

#define TRI_STATE_SEGS_MAX(LK) (3 * (LK) + 1) /* a copy's pieces: 2 LK named blobs, the buffer's runs around them */

/* Writes to a file (checksummed), or (f NULL) appends to a growing buffer (a copy in memory: no checksum). A copy
 * with seg names the source's K and V (tri_put_ref) instead of copying them: the state is then seg[0..n_seg), the
 * runs of the buffer between the named blobs; with device set too, a GPU source names its device rows. */
typedef struct tri_writer {
    FILE *          f;
    uint64_t        hash;
    bool            ok, device;
    unsigned char * mem;
    size_t          len, cap;
    tri_state_seg * seg;
    int             n_seg, seg_cap;
} tri_writer;

static void tri_put(tri_writer * w, const void * data, size_t n) {
    if (!w->ok || n == 0) {
        return;
    }
    if (w->f) {
        w->hash = tri_fnv1a(w->hash, data, n);
        w->ok = fwrite(data, 1, n, w->f) == n;
        return;
    }
    if (w->seg) { /* the buffer's run goes on, or starts after a named blob */
        tri_state_seg * last = w->n_seg ? &w->seg[w->n_seg - 1] : NULL;
        if (last && !last->p) {
            last->n += n;
        } else if (w->n_seg < w->seg_cap) {
            w->seg[w->n_seg++] = (tri_state_seg) { NULL, w->len, n, false };
        } else {
            w->ok = false;
            return;
        }
    }
    if (n > w->cap - w->len) {
        size_t cap = w->cap ? w->cap : 1 << 16;
        while (cap - w->len < n) {
            cap *= 2;
        }
        unsigned char * m = realloc(w->mem, cap);
        if (!m) {
            w->ok = false;
            return;
        }
        w->mem = m;
        w->cap = cap;
    }
    memcpy(w->mem + w->len, data, n);
    w->len += n;
}
/* n bytes that stay where they are until the copy is read: named, not copied, where the writer keeps pieces (on the
 * device: named only). */
static void tri_put_ref(tri_writer * w, const void * data, size_t n, bool device) {
    if (!w->seg || !w->ok || n == 0) { /* a file (never device rows), a failed writing or nothing */
        tri_put(w, data, n);
    } else if (w->n_seg < w->seg_cap) {
        w->seg[w->n_seg++] = (tri_state_seg) { data, 0, n, device };
    } else {
        w->ok = false;
    }
}
static void tri_put_i32(tri_writer * w, int32_t v) { tri_put(w, &v, sizeof v); }
static void tri_put_i64(tri_writer * w, int64_t v) { tri_put(w, &v, sizeof v); }

/* The policies whose whole state is the cache, the counters and the schedule position. */
static enum triattn_status tri_state_supported(triattn_session * s, const char * what) {
    if (s->policy.ops != &tri_kv_policy_full && s->policy.ops != &tri_kv_policy_triattention) {
        return tri_session_fail(s, TRIATTN_ERR_UNSUPPORTED,
                                "%s: the '%s' KV policy keeps state outside the cache; only 'full' and "
                                "'triattention' sessions can be saved", what, s->policy_name);
    }
    return TRIATTN_OK;
}

static void tri_state_header_of(const triattn_session * s, tri_state_header * h) {
    memset(h, 0, sizeof *h);
    memcpy(h->magic, TRI_STATE_MAGIC, 8);
    h->version = TRI_STATE_VERSION;
    snprintf(h->fingerprint, sizeof h->fingerprint, "%s", s->model->fingerprint);
    snprintf(h->policy, sizeof h->policy, "%s", s->policy_name);
    snprintf(h->mode, sizeof h->mode, "%s", s->mode_name);
    h->n_ctx = s->params.n_ctx;
    h->budget = s->policy.cfg.budget;
    h->interval = s->policy.cfg.interval;
    h->window = s->policy.cfg.window;
    h->sink = s->policy.cfg.sink;
    h->n_layer = s->kv.n_layer;
    h->n_head_kv = s->kv.n_head_kv;
    h->head_dim = s->kv.head_dim;
    h->n_vocab = s->model->hp.n_vocab;
    h->n_past = s->n_past;
    h->n_prompt = s->policy.n_prompt;
    h->last_compress_pos = s->last_compress_pos;
    h->n_logits = s->n_logits > 0 ? 1 : 0;
    h->n_compressions = s->policy.n_compressions;
    h->n_evicted = s->policy.n_evicted;
}

static void tri_state_put_header(tri_writer * w, const tri_state_header * h) {
    tri_put(w, h->magic, 8);
    tri_put(w, &h->version, 4);
    tri_put(w, h->fingerprint, 40);
    tri_put(w, h->policy, 32);
    tri_put(w, h->mode, sizeof h->mode);
    const int32_t v[13] = { h->n_ctx,   h->budget,   h->interval, h->window, h->sink,
                            h->n_layer, h->n_head_kv, h->head_dim, h->n_vocab, h->n_past,
                            h->n_prompt, h->last_compress_pos, h->n_logits };
    for (int i = 0; i < 13; i++) {
        tri_put_i32(w, v[i]);
    }
    tri_put_i64(w, h->n_compressions);
    tri_put_i64(w, h->n_evicted);
}

/* Row bytes of tier 2 in a state file of a version. */
static size_t tri_state_t2_row(int32_t head_dim, uint32_t version) {
    return 4 + 2 + 2 + (size_t) head_dim + (version >= 4 ? tri_t2_vbytes(head_dim) : (size_t) head_dim);
}

/* Queries of the ring a recall reads: the last min(TRI_RECALL_QUERIES, held) of every layer. */
static int32_t tri_state_ring_n(const tri_kv_cache * c) {
    int64_t n = c->q_cap > 0 ? TRI_MIN((int64_t) TRI_RECALL_QUERIES, (int64_t) c->q_cap) : 0;
    for (int il = 0; il < c->n_layer && n > 0; il++) {
        n = TRI_MIN(n, c->q_count[il]);
    }
    return (int32_t) n;
}

/* Ring entry of the t-th of the last nq queries of layer il. */
static size_t tri_state_ring_at(const tri_kv_cache * c, int il, int32_t nq, int32_t t) {
    return (size_t) il * c->q_cap + (size_t) ((c->q_count[il] - nq + t) % c->q_cap);
}

static void tri_state_put_tier2(tri_writer * w, const triattn_session * s) {
    const tri_kv_tier2 * t = s->kv.t2;
    const uint32_t flag = t ? 1u : 0u;
    tri_put(w, &flag, sizeof flag);
    if (!t) {
        return;
    }
    tri_put_i32(w, s->recall_pos);
    tri_put_i64(w, s->n_recalls);
    tri_put_i64(w, s->n_recalled);
    const tri_kv_cache * c = &s->kv;
    const int32_t nq = tri_state_ring_n(c);
    tri_put_i32(w, nq);
    tri_put_i32(w, c->q_dim);
    for (int il = 0; il < c->n_layer; il++) {
        for (int32_t t = 0; t < nq; t++) {
            tri_put_i32(w, c->q_pos[tri_state_ring_at(c, il, nq, t)]);
        }
        for (int32_t t = 0; t < nq; t++) {
            tri_put(w, c->q + tri_state_ring_at(c, il, nq, t) * c->q_dim, sizeof(float) * (size_t) c->q_dim);
        }
    }
    const int D = t->head_dim;
    for (int i = 0; i < t->n_layer * t->n_head_kv; i++) {
        const tri_t2_head * th = &t->heads[i];
        tri_put_i64(w, th->n_dropped);
        tri_put_i32(w, (int32_t) th->n_rows);
        for (int32_t p = 0; p < th->n_pages; p++) {
            const tri_t2_page * pg = th->pages[p];
            for (int32_t j = 0; j < pg->n; j++) {
                tri_put_i32(w, pg->base + pg->off[j]);
                tri_put(w, &pg->ks[j], 2);
                tri_put(w, &pg->vs[j], 2);
                tri_put(w, tri_t2_page_k(pg, j, D), (size_t) D);
                tri_put(w, tri_t2_page_v(pg, j, D), tri_t2_vbytes(D));
            }
        }
    }
}

/* The whole state, checksum last, into w. A GPU session's K and V come through one staging buffer, a (layer, KV
 * head) at a time, or (w->device) are named where they are on the device; a failed copy from the device is its
 * status (w->ok false: the writing failed). */
static enum triattn_status tri_state_write(triattn_session * s, tri_writer * w) {
    tri_state_header h;
    tri_state_header_of(s, &h);
    tri_state_put_header(w, &h);
    const tri_kv_cache * c = &s->kv;
    const int LK = c->n_layer * c->n_head_kv;
    tri_put(w, s->hist, sizeof(int32_t) * (size_t) s->n_past);
    tri_put(w, c->n_live, sizeof(int32_t) * (size_t) LK);
    const bool staged = s->backend && !w->device;
    tri_fp16 * stage = staged ? malloc(2 * sizeof(tri_fp16) * (size_t) c->cap_max * c->head_dim) : NULL;
    if (staged && !stage) {
        w->ok = false;
    }
    for (int i = 0; i < LK && w->ok; i++) {
        const int il = i / c->n_head_kv, hd = i % c->n_head_kv;
        const size_t live = (size_t) c->n_live[i];
        const tri_fp16 * k = stage, * v = stage ? stage + live * c->head_dim : NULL;
        enum triattn_status st = TRIATTN_OK;
        if (stage) {
            st = s->backend->kv_copy(s, i, stage, stage + live * c->head_dim, TRI_KV_TO_HOST);
        } else if (w->device) {
            st = s->backend->kv_rows(s, i, &k, &v);
        } else {
            k = tri_kv_k(c, il, hd);
            v = tri_kv_v(c, il, hd);
        }
        if (st != TRIATTN_OK) {
            free(stage);
            return st;
        }
        tri_put(w, tri_kv_pos(c, il, hd), sizeof(int32_t) * live);
        if (stage) { /* the staging buffer is the next head's */
            tri_put(w, k, sizeof(tri_fp16) * live * c->head_dim);
            tri_put(w, v, sizeof(tri_fp16) * live * c->head_dim);
        } else {
            tri_put_ref(w, k, sizeof(tri_fp16) * live * c->head_dim, w->device);
            tri_put_ref(w, v, sizeof(tri_fp16) * live * c->head_dim, w->device);
        }
    }
    free(stage);
    if (h.n_logits) {
        tri_put(w, triattn_session_logits(s, -1), sizeof(float) * (size_t) h.n_vocab);
    }
    const tri_kv_policy_ops * ops = s->policy.ops;
    const size_t pol_n = ops->state_save ? ops->state_save(&s->policy, c, NULL) : 0;
    void * pol = pol_n ? malloc(pol_n) : NULL;
    if (pol_n && !pol) {
        w->ok = false;
    } else if (pol_n) {
        ops->state_save(&s->policy, c, pol);
    }
    const uint32_t pol_n32 = (uint32_t) pol_n;
    tri_put(w, &pol_n32, sizeof pol_n32);
    tri_put(w, pol, pol_n);
    free(pol);
    tri_state_put_tier2(w, s);
    const uint64_t sum = w->hash;
    tri_put(w, &sum, sizeof sum);
    return TRIATTN_OK;
}

enum triattn_status triattn_session_save(triattn_session * s, const char * path) {
    if (!s) {
        return TRIATTN_ERR_INVALID_ARG;
    }
    s->last_error[0] = '\0';
    if (!path || !path[0]) {
        return tri_session_fail(s, TRIATTN_ERR_INVALID_ARG, "session_save: path is empty");
    }
    enum triattn_status st = tri_state_supported(s, "session_save");
    if (st != TRIATTN_OK) {
        return st;
    }
    /* Written beside the target and renamed, so a failed save never leaves half a file under path. */
    const size_t plen = strlen(path);
    char * tmp = malloc(plen + 8);
    if (!tmp) {
        return tri_session_fail(s, TRIATTN_ERR_OOM, "session_save: out of memory");
    }
    snprintf(tmp, plen + 8, "%s.tmp", path);
    tri_writer w = { .f = tri_fopen(tmp, "wb"), .hash = TRI_FNV_OFFSET, .ok = true };
    if (!w.f) {
        st = tri_session_fail(s, TRIATTN_ERR_IO, "session_save: cannot create '%s': %s", tmp, strerror(errno));
        free(tmp);
        return st;
    }
    st = tri_state_write(s, &w);
    if (st != TRIATTN_OK) {
        fclose(w.f);
        remove(tmp);
        free(tmp);
        return st;
    }
    const bool ok = w.ok && fclose(w.f) == 0;
    if (!ok || tri_rename_replace(tmp, path) != 0) {
        if (!w.ok) {
            fclose(w.f);
        }
        st = tri_session_fail(s, TRIATTN_ERR_IO, "session_save: cannot write '%s': %s", path, strerror(errno));
        remove(tmp);
    }
    free(tmp);
    return st;
}

/* ---- reading ------------------------------------------------------------------------------------- */

/* Reads a state from its pieces in order (one for a file); n bytes in all, the checksum after them left out. */
typedef struct tri_reader {
    const tri_state_seg * seg;
    int                   n_seg, si; /* the piece read now, */
    size_t                so;        /* at this offset */
    size_t                n, off;
} tri_reader;

static tri_reader tri_reader_of(const tri_state_seg * seg, int n_seg, size_t n) {
    return (tri_reader) { .seg = seg, .n_seg = n_seg, .n = n };
}

/* Points *out at the next n bytes (contiguous: within one piece); false when the state ends first, or when they
 * would span two pieces (the writer's pieces are what the reader takes, so only a malformed state does). A piece on
 * the device is taken only where device is given (*device says so); host code never reads it. */
static bool tri_take_at(tri_reader * r, size_t n, const void ** out, bool * device) {
    if (n > r->n - r->off) {
        return false;
    }
    while (r->si < r->n_seg && r->so == r->seg[r->si].n) {
        r->si++;
        r->so = 0;
    }
    if (device) {
        *device = false;
    }
    if (r->si == r->n_seg || n == 0) { /* nothing to read: an address all the same (memcpy's of 0 bytes) */
        static const unsigned char none;
        *out = &none;
        return true;
    }
    const tri_state_seg * g = &r->seg[r->si];
    if (n > g->n - r->so || (g->device && !device)) {
        return false;
    }
    if (device) {
        *device = g->device;
    }
    *out = g->p + r->so;
    r->so += n;
    r->off += n;
    return true;
}

static bool tri_take(tri_reader * r, size_t n, const void ** out) {
    return tri_take_at(r, n, out, NULL);
}

static bool tri_get(tri_reader * r, void * dst, size_t n) {
    const void * src;
    if (!tri_take(r, n, &src)) {
        return false;
    }
    memcpy(dst, src, n);
    return true;
}

static bool tri_state_get_header(tri_reader * r, tri_state_header * h) {
    int32_t v[13];
    bool ok = tri_get(r, h->magic, 8) && tri_get(r, &h->version, 4) && tri_get(r, h->fingerprint, 40) &&
              tri_get(r, h->policy, 32) && tri_get(r, h->mode, sizeof h->mode) && tri_get(r, v, sizeof v) &&
              tri_get(r, &h->n_compressions, 8) && tri_get(r, &h->n_evicted, 8);
    if (!ok) {
        return false;
    }
    h->fingerprint[39] = h->policy[31] = h->mode[sizeof h->mode - 1] = '\0';
    int32_t * f[13] = { &h->n_ctx,   &h->budget,   &h->interval, &h->window,  &h->sink,
                        &h->n_layer, &h->n_head_kv, &h->head_dim, &h->n_vocab, &h->n_past,
                        &h->n_prompt, &h->last_compress_pos, &h->n_logits };
    for (int i = 0; i < 13; i++) {
        *f[i] = v[i];
    }
    return true;
}

/* The file's header against the session it is loaded into; the message names the first mismatch. */
static enum triattn_status tri_state_check_header(triattn_session * s, const tri_state_header * h, const char * path) {
    const tri_kv_cache * c = &s->kv;
#define TRI_STATE_SAME(field, mine)                                                                                  \
    if (h->field != (mine)) {                                                                                        \
        return tri_session_fail(s, TRIATTN_ERR_INVALID_ARG, "session_load: '%s' has " #field " %d, this session %d", \
                                path, h->field, (int) (mine));                                                       \
    }
    if (strcmp(h->fingerprint, s->model->fingerprint) != 0) {
        return tri_session_fail(s, TRIATTN_ERR_INVALID_ARG,
                                "session_load: '%s' was saved with another model (fingerprint %s, this model %s)", path,
                                h->fingerprint, s->model->fingerprint);
    }
    if (strcmp(h->policy, s->policy_name) != 0 || strcmp(h->mode, s->mode_name) != 0) {
        return tri_session_fail(s, TRIATTN_ERR_INVALID_ARG,
                                "session_load: '%s' holds a '%s' (%s) cache, this session uses '%s' (%s)", path,
                                h->policy, h->mode, s->policy_name, s->mode_name);
    }
    TRI_STATE_SAME(n_layer, c->n_layer)
    TRI_STATE_SAME(n_head_kv, c->n_head_kv)
    TRI_STATE_SAME(head_dim, c->head_dim)
    TRI_STATE_SAME(n_vocab, s->model->hp.n_vocab)
    const bool compressing = c->capacity < s->params.n_ctx;
    if (compressing) {
        TRI_STATE_SAME(interval, s->policy.cfg.interval)
        TRI_STATE_SAME(window, s->policy.cfg.window)
        TRI_STATE_SAME(sink, s->policy.cfg.sink)
        if (h->budget <= 0 || (int64_t) h->budget + h->interval > c->capacity) {
            return tri_session_fail(s, TRIATTN_ERR_INVALID_ARG,
                                    "session_load: '%s' has kv_budget %d; this session's %d slots take at most %d",
                                    path, h->budget, c->capacity, c->capacity - s->policy.cfg.interval);
        }
    }
#undef TRI_STATE_SAME
    if (h->n_past < 0 || h->n_past > s->params.n_ctx) {
        return tri_session_fail(s, TRIATTN_ERR_INVALID_ARG, "session_load: '%s' holds %d tokens, this session's n_ctx is %d",
                                path, h->n_past, s->params.n_ctx);
    }
    if (h->n_prompt < 0 || h->n_prompt > h->n_ctx || h->last_compress_pos < -1 || h->last_compress_pos > h->n_past ||
        (h->n_logits != 0 && h->n_logits != 1) || h->n_compressions < 0 || h->n_evicted < 0) {
        return tri_session_fail(s, TRIATTN_ERR_FORMAT, "session_load: '%s': inconsistent header", path);
    }
    return TRIATTN_OK;
}

static bool tri_f16_ok(const unsigned char * p) {
    tri_fp16 x;
    memcpy(&x, p, 2);
    const float f = tri_fp16_to_fp32(x);
    return isfinite(f) && f >= 0.0f;
}

/* The tier-2 section: present only when this session keeps a tier 2 too; per (layer, KV head) rows of distinct
 * positions below n_past with finite, non-negative scales. */
static enum triattn_status tri_state_check_tier2(triattn_session * s, tri_reader * r, const tri_state_header * h,
                                                 const char * path) {
    uint32_t flag;
    if (!tri_get(r, &flag, sizeof flag) || flag > 1) {
        return tri_session_fail(s, TRIATTN_ERR_FORMAT, "session_load: '%s' is truncated (tier 2)", path);
    }
    if (!flag) {
        return TRIATTN_OK;
    }
    const tri_kv_cache * c = &s->kv;
    const void * head;
    if (!tri_take(r, 4 + 8 + 8, &head)) {
        return tri_session_fail(s, TRIATTN_ERR_FORMAT, "session_load: '%s' is truncated (tier 2)", path);
    }
    int32_t recall_pos;
    int64_t counts[2];
    memcpy(&recall_pos, head, 4);
    memcpy(counts, (const char *) head + 4, 16);
    if (recall_pos < -1 || recall_pos > h->n_past || counts[0] < 0 || counts[1] < 0) {
        return tri_session_fail(s, TRIATTN_ERR_FORMAT, "session_load: '%s': inconsistent recall counters", path);
    }
    int32_t ring[2];
    const void * qs;
    if (!tri_get(r, ring, sizeof ring) || ring[0] < 0 || ring[0] > TRI_RECALL_QUERIES || ring[1] < 0 ||
        ring[1] > (1 << 20) || (c->t2 && ring[0] > 0 && ring[1] != c->q_dim) ||
        !tri_take(r, (size_t) c->n_layer * ring[0] * (4 + 4 * (size_t) ring[1]), &qs)) {
        return tri_session_fail(s, TRIATTN_ERR_FORMAT, "session_load: '%s' is truncated or inconsistent (queries)", path);
    }
    for (size_t i = 0; i < (size_t) c->n_layer * ring[0]; i++) {
        const char * l = (const char *) qs + i / ring[0] * (size_t) ring[0] * (4 + 4 * (size_t) ring[1]);
        int32_t qp;
        memcpy(&qp, l + 4 * (i % ring[0]), 4);
        if (qp < 0 || qp >= h->n_past) {
            return tri_session_fail(s, TRIATTN_ERR_FORMAT, "session_load: '%s': a query of position %d", path, qp);
        }
    }
    for (size_t i = 0; i < (size_t) c->n_layer * ring[0] * ring[1]; i++) {
        const size_t per = (size_t) ring[0] * ring[1], il = i / per;
        float v;
        memcpy(&v, (const char *) qs + il * (size_t) ring[0] * (4 + 4 * (size_t) ring[1]) + 4 * (size_t) ring[0] +
                       4 * (i % per), 4);
        if (!isfinite(v)) {
            return tri_session_fail(s, TRIATTN_ERR_FORMAT, "session_load: '%s': a query value is not finite", path);
        }
    }
    const size_t row = tri_state_t2_row(c->head_dim, h->version);
    uint64_t * seen = calloc(((size_t) h->n_past + 64) / 64, sizeof(uint64_t));
    if (!seen) {
        return tri_session_fail(s, TRIATTN_ERR_OOM, "session_load: out of memory");
    }
    enum triattn_status st = TRIATTN_OK;
    for (int i = 0; i < c->n_layer * c->n_head_kv && st == TRIATTN_OK; i++) {
        int64_t dropped;
        int32_t n_rows;
        const void * rows;
        if (!tri_get(r, &dropped, 8) || !tri_get(r, &n_rows, 4) || n_rows < 0 || n_rows > h->n_past ||
            dropped < 0 || !tri_take(r, row * (size_t) n_rows, &rows)) {
            st = tri_session_fail(s, TRIATTN_ERR_FORMAT, "session_load: '%s' is truncated or inconsistent (tier 2 of "
                                  "layer %d, KV head %d)", path, i / c->n_head_kv, i % c->n_head_kv);
            break;
        }
        const unsigned char * p = rows;
        for (int32_t j = 0; j < n_rows && st == TRIATTN_OK; j++, p += row) {
            int32_t pos;
            memcpy(&pos, p, 4);
            const bool dup = pos >= 0 && pos < h->n_past && ((seen[pos >> 6] >> (pos & 63)) & 1u);
            if (pos < 0 || pos >= h->n_past || dup || !tri_f16_ok(p + 4) || !tri_f16_ok(p + 6)) {
                st = tri_session_fail(s, TRIATTN_ERR_FORMAT, "session_load: '%s': tier-2 row %d of (layer %d, KV head "
                                      "%d) is invalid (position %d)", path, j, i / c->n_head_kv, i % c->n_head_kv, pos);
            } else {
                seen[pos >> 6] |= 1ull << (pos & 63);
            }
        }
        p = rows;
        for (int32_t j = 0; j < n_rows; j++, p += row) { /* clear for the next (layer, KV head) */
            int32_t pos;
            memcpy(&pos, p, 4);
            if (pos >= 0 && pos < h->n_past) {
                seen[pos >> 6] &= ~(1ull << (pos & 63));
            }
        }
        if (st == TRIATTN_OK && n_rows > 0 && !c->t2) {
            st = tri_session_fail(s, TRIATTN_ERR_INVALID_ARG, "session_load: '%s' holds tier-2 rows (saved with "
                                  "kv_recall > 0); this session has kv_recall 0", path);
        }
    }
    free(seen);
    return st;
}

/* The body against the header: token ids in range, live counts within the session's slots, positions strictly
 * increasing below n_past, exact size. */
static enum triattn_status tri_state_check_body(triattn_session * s, tri_reader * r, const tri_state_header * h,
                                                const char * path) {
    const tri_kv_cache * c = &s->kv;
    const int LK = c->n_layer * c->n_head_kv;
    const void * tok_p, * live_p;
    if (!tri_take(r, sizeof(int32_t) * (size_t) h->n_past, &tok_p) || !tri_take(r, sizeof(int32_t) * (size_t) LK, &live_p)) {
        return tri_session_fail(s, TRIATTN_ERR_FORMAT, "session_load: '%s' is truncated (token history)", path);
    }
    for (int32_t i = 0; i < h->n_past; i++) {
        int32_t t;
        memcpy(&t, (const char *) tok_p + 4 * (size_t) i, 4);
        if (t < 0 || t >= h->n_vocab) {
            return tri_session_fail(s, TRIATTN_ERR_FORMAT, "session_load: '%s': token %d at position %d is out of range",
                                    path, t, i);
        }
    }
    for (int i = 0; i < LK; i++) {
        int32_t live;
        memcpy(&live, (const char *) live_p + 4 * (size_t) i, 4);
        const int32_t cap = c->layer_cap[i / c->n_head_kv];   /* sliding-window layers have their own */
        if (live < 0 || live > cap || live > h->n_past) {
            return tri_session_fail(s, TRIATTN_ERR_FORMAT,
                                    "session_load: '%s': (layer %d, KV head %d) has %d live slots (capacity %d, %d tokens)",
                                    path, i / c->n_head_kv, i % c->n_head_kv, live, cap, h->n_past);
        }
        const void * pos_p, * k_p, * v_p;
        bool k_dev, v_dev; /* rows on the device reach only a session of the same backend (triattn_session_copy) */
        if (!tri_take(r, sizeof(int32_t) * (size_t) live, &pos_p) ||
            !tri_take_at(r, sizeof(tri_fp16) * (size_t) live * c->head_dim, &k_p, &k_dev) ||
            !tri_take_at(r, sizeof(tri_fp16) * (size_t) live * c->head_dim, &v_p, &v_dev) ||
            ((k_dev || v_dev) && !s->backend)) {
            return tri_session_fail(s, TRIATTN_ERR_FORMAT, "session_load: '%s' is truncated (KV of layer %d, head %d)",
                                    path, i / c->n_head_kv, i % c->n_head_kv);
        }
        int32_t prev = -1;
        for (int32_t j = 0; j < live; j++) {
            int32_t pos;
            memcpy(&pos, (const char *) pos_p + 4 * (size_t) j, 4);
            if (pos <= prev || pos >= h->n_past) {
                return tri_session_fail(s, TRIATTN_ERR_FORMAT,
                                        "session_load: '%s': (layer %d, KV head %d) slot %d has position %d", path,
                                        i / c->n_head_kv, i % c->n_head_kv, j, pos);
            }
            prev = pos;
        }
    }
    const void * logits;
    if (h->n_logits && !tri_take(r, sizeof(float) * (size_t) h->n_vocab, &logits)) {
        return tri_session_fail(s, TRIATTN_ERR_FORMAT, "session_load: '%s' is truncated (logits)", path);
    }
    if (h->version >= 2) {
        const tri_kv_policy_ops * ops = s->policy.ops;
        uint32_t pol_n;
        const void * pol;
        if (!tri_get(r, &pol_n, sizeof pol_n) || !tri_take(r, pol_n, &pol)) {
            return tri_session_fail(s, TRIATTN_ERR_FORMAT, "session_load: '%s' is truncated (policy state)", path);
        }
        if (pol_n > 0 && (!ops->state_load || !ops->state_load(&s->policy, c, pol, pol_n, true))) {
            return tri_session_fail(s, TRIATTN_ERR_FORMAT,
                                    "session_load: '%s': %u bytes of policy state that '%s' (%s) cannot hold", path,
                                    pol_n, s->policy_name, s->mode_name);
        }
    }
    if (h->version >= 3) {
        const enum triattn_status st = tri_state_check_tier2(s, r, h, path);
        if (st != TRIATTN_OK) {
            return st;
        }
    }
    if (r->off != r->n) {
        return tri_session_fail(s, TRIATTN_ERR_FORMAT, "session_load: '%s' has %zu bytes after the state", path,
                                r->n - r->off);
    }
    return TRIATTN_OK;
}

/* Refills tier 2 from a validated section (a session without one reads past rows-free sections); false on OOM. */
static bool tri_state_apply_tier2(triattn_session * s, tri_reader * r, uint32_t version) {
    tri_kv_cache * c = &s->kv;
    int32_t recall_pos = -1;
    int64_t n_recalls = 0, n_recalled = 0;
    tri_get(r, &recall_pos, 4);
    tri_get(r, &n_recalls, 8);
    tri_get(r, &n_recalled, 8);
    s->recall_pos = recall_pos;
    s->n_recalls = n_recalls;
    s->n_recalled = n_recalled;
    int32_t ring[2] = { 0, 0 };
    const void * qs = NULL;
    tri_get(r, ring, sizeof ring);
    tri_take(r, (size_t) c->n_layer * ring[0] * (4 + 4 * (size_t) ring[1]), &qs);
    for (int il = 0; c->t2 && il < c->n_layer && ring[0] <= c->q_cap; il++) {
        const char * l = (const char *) qs + (size_t) il * ring[0] * (4 + 4 * (size_t) ring[1]);
        for (int32_t t = 0; t < ring[0]; t++) {
            int32_t qp;
            memcpy(&qp, l + 4 * (size_t) t, 4);
            tri_kv_push_query(c, il, (const float *) (l + 4 * (size_t) ring[0]) + (size_t) t * ring[1], qp);
        }
    }
    const int D = c->head_dim;
    const size_t row = tri_state_t2_row(D, version);
    for (int i = 0; i < c->n_layer * c->n_head_kv; i++) {
        int64_t dropped = 0;
        int32_t n_rows = 0;
        const void * rows = NULL;
        tri_get(r, &dropped, 8);
        tri_get(r, &n_rows, 4);
        tri_take(r, row * (size_t) n_rows, &rows);
        if (!c->t2) {
            continue; /* n_rows is 0 (checked) */
        }
        const unsigned char * p = rows;
        for (int32_t j = 0; j < n_rows; j++, p += row) {
            int32_t pos;
            tri_fp16 ks, vs;
            memcpy(&pos, p, 4);
            memcpy(&ks, p + 4, 2);
            memcpy(&vs, p + 6, 2);
            const uint8_t * v = p + 8 + D;
            uint8_t v7[TRI_T2_MAX_DIM];
            if (version < 4) { /* 8-bit V of a version-3 file */
                tri_fp16 x[TRI_T2_MAX_DIM];
                tri_t2_dequantize_row((const int8_t *) v, vs, D, x);
                tri_t2_pack_v(x, D, v7, &vs);
                v = v7;
            }
            if (!tri_kv_tier2_append_q(c->t2, i / c->n_head_kv, i % c->n_head_kv, pos, (const int8_t *) p + 8, ks,
                                       v, vs)) {
                return false;
            }
        }
        c->t2->heads[i].n_dropped += dropped;
    }
    return true;
}

/* Copies a validated state into the session (a GPU session's K and V go to the device). */
static enum triattn_status tri_state_apply(triattn_session * s, tri_reader * r, const tri_state_header * h) {
    tri_kv_cache * c = &s->kv;
    const int LK = c->n_layer * c->n_head_kv;
    triattn_session_reset(s);
    tri_get(r, s->hist, sizeof(int32_t) * (size_t) h->n_past);
    tri_get(r, c->n_live, sizeof(int32_t) * (size_t) LK);
    for (int i = 0; i < LK; i++) {
        const int il = i / c->n_head_kv, hd = i % c->n_head_kv;
        const size_t live = (size_t) c->n_live[i], n = live * c->head_dim;
        tri_get(r, tri_kv_pos(c, il, hd), sizeof(int32_t) * live);
        if (s->backend) {
            const void * k = NULL, * v = NULL;
            bool dev = false;
            tri_take_at(r, sizeof(tri_fp16) * n, &k, &dev); /* sizes checked by tri_state_check_body */
            tri_take_at(r, sizeof(tri_fp16) * n, &v, &dev);
            const enum triattn_status st = s->backend->kv_copy(s, i, (tri_fp16 *) k, (tri_fp16 *) v,
                                                               dev ? TRI_KV_ON_DEVICE : TRI_KV_TO_DEVICE);
            if (st != TRIATTN_OK) {
                triattn_session_reset(s);
                return st;
            }
            continue;
        }
        tri_get(r, tri_kv_k(c, il, hd), sizeof(tri_fp16) * n);
        tri_get(r, tri_kv_v(c, il, hd), sizeof(tri_fp16) * n);
    }
    if (s->backend) {
        const enum triattn_status st = s->backend->kv_set_live(s);
        if (st != TRIATTN_OK) {
            triattn_session_reset(s);
            return st;
        }
    }
    if (h->n_logits) {
        tri_get(r, s->fwd.logits, sizeof(float) * (size_t) h->n_vocab);
    }
    uint32_t pol_n = 0;
    const void * pol = NULL;
    if (h->version >= 2 && tri_get(r, &pol_n, sizeof pol_n) && tri_take(r, pol_n, &pol) && s->policy.ops->state_load) {
        s->policy.ops->state_load(&s->policy, c, pol, pol_n, false); /* checked by tri_state_check_body */
    }
    uint32_t t2 = 0;
    if (h->version >= 3 && tri_get(r, &t2, sizeof t2) && t2 && !tri_state_apply_tier2(s, r, h->version)) {
        triattn_session_reset(s);
        return tri_session_fail(s, TRIATTN_ERR_OOM, "session_load: out of memory for tier 2");
    }
    for (int32_t i = 0; i < h->n_past; i++) {
        tri_sampler_accept(s->sampler, s->hist[i]);
    }
    s->n_past = h->n_past;
    s->n_logits = h->n_logits;
    s->logits_all = false;
    s->fwd.n_logits = h->n_logits;
    s->last_compress_pos = h->last_compress_pos;
    s->policy.n_prompt = h->n_prompt;
    s->policy.n_compressions = h->n_compressions;
    s->policy.n_evicted = h->n_evicted;
    if (c->capacity < s->params.n_ctx) {
        s->policy.cfg.budget = h->budget;
        s->params.kv_budget = h->budget;
    }
    return TRIATTN_OK;
}

static enum triattn_status tri_state_read(triattn_session * s, tri_state_seg * seg, int n_seg, const char * path,
                                          bool check_sum);

enum triattn_status triattn_session_load(triattn_session * s, const char * path) {
    if (!s) {
        return TRIATTN_ERR_INVALID_ARG;
    }
    s->last_error[0] = '\0';
    if (!path || !path[0]) {
        return tri_session_fail(s, TRIATTN_ERR_INVALID_ARG, "session_load: path is empty");
    }
    enum triattn_status st = tri_state_supported(s, "session_load");
    if (st != TRIATTN_OK) {
        return st;
    }
    FILE * f = tri_fopen(path, "rb");
    if (!f) {
        return tri_session_fail(s, TRIATTN_ERR_IO, "session_load: cannot open '%s': %s", path, strerror(errno));
    }
    /* Nothing larger than this session's own state can be valid. */
    const tri_kv_cache * c = &s->kv;
    const uint64_t max = TRI_STATE_HEADER_BYTES + 4ull * s->params.n_ctx + 4ull * c->n_layer * c->n_head_kv +
                         (uint64_t) c->n_layer * c->n_head_kv * c->cap_max * (4ull + 4ull * c->head_dim) +
                         4ull * s->model->hp.n_vocab + 4 +
                         (s->policy.ops->state_max ? s->policy.ops->state_max(&s->policy) : 0) + 8 +
                         4 + 20 + 8 + (uint64_t) c->n_layer * TRI_RECALL_QUERIES * (4 + 4ull * s->model->hp.n_head * c->head_dim) +
                         12ull * c->n_layer * c->n_head_kv +
                         (uint64_t) c->n_layer * c->n_head_kv * s->params.n_ctx * tri_state_t2_row(c->head_dim, 3);
    struct stat sb;
    if (fstat(fileno(f), &sb) != 0 || !S_ISREG(sb.st_mode)) {
        fclose(f);
        return tri_session_fail(s, TRIATTN_ERR_IO, "session_load: '%s' is not a regular file", path);
    }
    const uint64_t size = (uint64_t) sb.st_size;
    if (size < TRI_STATE_HEADER_BYTES + 8 || size > max) {
        fclose(f);
        return tri_session_fail(s, TRIATTN_ERR_FORMAT,
                                "session_load: '%s' has %llu bytes: not a state this session can hold (%llu..%llu)",
                                path, (unsigned long long) size, (unsigned long long) (TRI_STATE_HEADER_BYTES + 8),
                                (unsigned long long) max);
    }
    unsigned char * buf = malloc((size_t) size);
    if (!buf) {
        fclose(f);
        return tri_session_fail(s, TRIATTN_ERR_OOM, "session_load: cannot allocate %llu bytes",
                                (unsigned long long) size);
    }
    const bool read_ok = fread(buf, 1, (size_t) size, f) == (size_t) size;
    fclose(f);
    if (!read_ok) {
        st = tri_session_fail(s, TRIATTN_ERR_IO, "session_load: cannot read '%s'", path);
    } else {
        tri_state_seg whole = { buf, 0, (size_t) size };
        st = tri_state_read(s, &whole, 1, path, true);
    }
    free(buf);
    return st;
}

/* Validates the state in pieces seg[0..n_seg) (checksum last, in the last piece; compared when check_sum: a file,
 * one piece) against session s, then adopts it; s is unchanged on failure. path names the source in messages. */
static enum triattn_status tri_state_read(triattn_session * s, tri_state_seg * seg, int n_seg, const char * path,
                                          bool check_sum) {
    enum triattn_status st;
    size_t size = 0;
    for (int i = 0; i < n_seg; i++) {
        size += seg[i].n;
    }
    tri_state_seg * last = &seg[n_seg - 1]; /* at least the 8 bytes of the checksum (the callers' sizes) */
    uint64_t sum;
    memcpy(&sum, last->p + last->n - 8, 8);
    last->n -= 8;
    tri_reader r = tri_reader_of(seg, n_seg, size - 8);
    tri_state_header h;
    const bool header = tri_state_get_header(&r, &h);
    const tri_reader body = r; /* the checks read on from here, then the copy does */
    if (!header || memcmp(h.magic, TRI_STATE_MAGIC, 8) != 0) {
        st = tri_session_fail(s, TRIATTN_ERR_FORMAT, "session_load: '%s' is not a pytriattn session file", path);
    } else if (h.version < 1 || h.version > TRI_STATE_VERSION) {
        st = tri_session_fail(s, TRIATTN_ERR_FORMAT, "session_load: '%s' has format version %u, this library reads 1..%u",
                              path, h.version, TRI_STATE_VERSION);
    } else if (check_sum && (n_seg != 1 || tri_fnv1a(TRI_FNV_OFFSET, seg[0].p, size - 8) != sum)) {
        st = tri_session_fail(s, TRIATTN_ERR_FORMAT,
                              "session_load: '%s' is corrupt or truncated (checksum mismatch over %llu bytes)", path,
                              (unsigned long long) (size - 8));
    } else if ((st = tri_state_check_header(s, &h, path)) == TRIATTN_OK &&
               (st = tri_state_check_body(s, &r, &h, path)) == TRIATTN_OK) {
        r = body;
        st = tri_state_apply(s, &r, &h);
    }
    return st;
}

enum triattn_status triattn_session_copy(triattn_session * dst, triattn_session * src) {
    if (!dst || !src) {
        return TRIATTN_ERR_INVALID_ARG;
    }
    dst->last_error[0] = '\0';
    if (dst == src) {
        return TRIATTN_OK;
    }
    char msg[sizeof dst->last_error];
    enum triattn_status st = tri_state_supported(dst, "session_copy");
    if (st == TRIATTN_OK && (st = tri_state_supported(src, "session_copy")) != TRIATTN_OK) {
        snprintf(msg, sizeof msg, "%s", src->last_error);
        return tri_session_fail(dst, st, "%s", msg);
    }
    if (st != TRIATTN_OK) {
        return st;
    }
    /* A CPU source's K and V are read where they are (named pieces), a GPU source's too when the destination is on
     * the same device (copied there, device to device); the buffer takes the rest, sized at once (and a GPU
     * source's cache for a CPU destination: it comes through a staging buffer) */
    const tri_kv_cache * c = &src->kv;
    const int LK = c->n_layer * c->n_head_kv;
    const bool device = src->backend && dst->backend == src->backend && src->backend->kv_rows;
    tri_writer w = { .hash = TRI_FNV_OFFSET, .ok = true, .device = device, .seg_cap = TRI_STATE_SEGS_MAX(LK),
                     .seg = malloc(sizeof(tri_state_seg) * TRI_STATE_SEGS_MAX(LK)) };
    const bool staged = src->backend && !device;
    const size_t per_slot = sizeof(int32_t) + (staged ? 2 * sizeof(tri_fp16) * (size_t) c->head_dim : 0);
    size_t est = ((size_t) 1 << 16) + sizeof(int32_t) * (size_t) src->n_past +
                 sizeof(float) * (size_t) src->model->hp.n_vocab;
    for (int i = 0; i < LK; i++) {
        est += (size_t) c->n_live[i] * per_slot + sizeof(int32_t);
    }
    w.mem = w.seg ? malloc(est) : NULL;
    w.cap = w.mem ? est : 0;
    w.ok = w.mem != NULL;
    st = tri_state_write(src, &w);
    if (st != TRIATTN_OK) {
        snprintf(msg, sizeof msg, "%s", src->last_error);
        st = tri_session_fail(dst, st, "session_copy: %s", msg);
    } else if (!w.ok) {
        st = tri_session_fail(dst, TRIATTN_ERR_OOM, "session_copy: out of memory for the state of %d tokens",
                              src->n_past);
    } else {
        for (int i = 0; i < w.n_seg; i++) { /* the buffer's runs: where it ended up */
            if (!w.seg[i].p) {
                w.seg[i].p = w.mem + w.seg[i].off;
            }
        }
        st = tri_state_read(dst, w.seg, w.n_seg, "the source", false);
        const char * load = "session_load: ";
        if (st != TRIATTN_OK && strncmp(dst->last_error, load, strlen(load)) == 0) {   /* the reader's words */
            snprintf(msg, sizeof msg, "session_copy: %s", dst->last_error + strlen(load));
            snprintf(dst->last_error, sizeof dst->last_error, "%s", msg);
        }
    }
    free(w.seg);
    free(w.mem);
    return st;
}
