/* Tier 2 of the KV cache (kv_tier2.h): pages of evicted rows per (layer, KV head), K at 8 bits and V at 7. */
#include "kv_tier2.h"
#include "common.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Offsets are 16 bits: a page takes positions within [base, base + 65535]; base sits half a span below the first
 * row's position so that rows evicted later but older (swapped out by a recall) still fit. */
#define TRI_T2_SPAN 65535
#define TRI_T2_BACK 32768

void tri_t2_quantize_row(const tri_fp16 * x, int D, int qmax, int8_t * q, tri_fp16 * scale) {
    float xf[256];
    const bool held = D <= 256;   /* rows of up to 256 are converted once */
    float amax = 0.0f;
    for (int d = 0; d < D; d++) {
        const float a = tri_fp16_to_fp32(x[d]);
        if (held) {
            xf[d] = a;
        }
        amax = fabsf(a) > amax ? fabsf(a) : amax; /* NaN never compares greater: a NaN element quantises to 0 */
    }
    const float qm = (float) qmax;
    tri_fp16 s16 = tri_fp32_to_fp16(amax / qm);
    if (tri_fp16_to_fp32(s16) * qm < amax && s16 < 0x7bff) {
        s16++; /* rounded up, so every |x| / scale <= qmax (the next half of a positive half is one bit up) */
    }
    const float s = tri_fp16_to_fp32(s16);
    *scale = s16;
    if (!(s > 0.0f) || !isfinite(s)) {
        *scale = 0;
        memset(q, 0, (size_t) D);
        return;
    }
    const float inv = 1.0f / s, magic = 12582912.0f; /* 1.5 * 2^23: v + magic - magic rounds to nearest even */
    for (int d = 0; d < D; d++) {
        const float y = (held ? xf[d] : tri_fp16_to_fp32(x[d])) * inv;
        float v = y == y ? (y + magic) - magic : 0.0f;
        v = v > qm ? qm : v < -qm ? -qm : v;
        q[d] = (int8_t) v;
    }
}

void tri_t2_dequantize_row(const int8_t * q, tri_fp16 scale, int D, tri_fp16 * out) {
    const float s = tri_fp16_to_fp32(scale);
    for (int d = 0; d < D; d++) {
        out[d] = tri_fp32_to_fp16((float) q[d] * s);
    }
}

void tri_t2_pack7(const int8_t * q, int D, uint8_t * out) {
    uint32_t acc = 0;
    int      nb  = 0;
    for (int d = 0; d < D; d++) {
        acc |= (uint32_t) ((uint8_t) q[d] & 0x7fu) << nb;
        nb += 7;
        for (; nb >= 8; nb -= 8, acc >>= 8) {
            *out++ = (uint8_t) acc;
        }
    }
    if (nb > 0) {
        *out = (uint8_t) acc;
    }
}

void tri_t2_unpack7(const uint8_t * in, int D, int8_t * q) {
    uint32_t acc = 0;
    int      nb  = 0;
    for (int d = 0; d < D; d++) {
        for (; nb < 7; nb += 8) {
            acc |= (uint32_t) *in++ << nb;
        }
        const int c = (int) (acc & 0x7fu);
        q[d] = (int8_t) (c >= 64 ? c - 128 : c);
        acc >>= 7;
        nb -= 7;
    }
}

void tri_t2_pack_v(const tri_fp16 * x, int D, uint8_t * out, tri_fp16 * scale) {
    int8_t q[TRI_T2_MAX_DIM];
    tri_t2_quantize_row(x, D, TRI_T2_VMAX, q, scale);
    tri_t2_pack7(q, D, out);
}

enum triattn_status tri_kv_tier2_init(tri_kv_tier2 * t, int32_t n_layer, int32_t n_head_kv, int32_t head_dim,
                                      int32_t n_ctx, uint64_t max_bytes, int32_t n_managed, char * err, size_t n) {
    memset(t, 0, sizeof *t);
    if (n_layer <= 0 || n_head_kv <= 0 || head_dim <= 0 || n_ctx <= 0) {
        return tri_fail(err, n, TRIATTN_ERR_INVALID_ARG, "tier 2: bad geometry (%d layers, %d KV heads, dim %d, n_ctx %d)",
                        n_layer, n_head_kv, head_dim, n_ctx);
    }
    if (head_dim > TRI_T2_MAX_DIM) {
        return tri_fail(err, n, TRIATTN_ERR_UNSUPPORTED, "tier 2 (kv_recall): head_dim %d is above the %d it supports",
                        head_dim, TRI_T2_MAX_DIM);
    }
    const size_t LK = (size_t) n_layer * n_head_kv, words = ((size_t) n_ctx + 63) / 64;
    t->n_layer    = n_layer;
    t->n_head_kv  = n_head_kv;
    t->head_dim   = head_dim;
    t->n_ctx      = n_ctx;
    t->page_bytes = sizeof(tri_t2_page) + TRI_T2_PAGE_ROWS * ((size_t) head_dim + tri_t2_vbytes(head_dim));
    if (max_bytes > 0) {
        const uint64_t per = max_bytes / ((uint64_t) t->page_bytes * (uint64_t) TRI_MAX(n_managed, 1));
        t->max_pages = (int32_t) TRI_MIN(TRI_MAX(per, 1), (uint64_t) INT32_MAX);
    }
    t->heads = calloc(LK, sizeof *t->heads);
    t->bits  = calloc(LK * words, sizeof(uint64_t));
    if (!t->heads || !t->bits) {
        tri_kv_tier2_free(t);
        return tri_fail(err, n, TRIATTN_ERR_OOM, "tier 2: cannot allocate the position bitmaps (%.1f MiB)",
                        LK * words * 8.0 / 1048576.0);
    }
    for (size_t i = 0; i < LK; i++) {
        t->heads[i].has = t->bits + i * words;
    }
    return TRIATTN_OK;
}

void tri_kv_tier2_clear(tri_kv_tier2 * t) {
    if (!t->heads) {
        return;
    }
    const size_t LK = (size_t) t->n_layer * t->n_head_kv;
    for (size_t i = 0; i < LK; i++) {
        tri_t2_head * th = &t->heads[i];
        for (int32_t p = 0; p < th->n_pages; p++) {
            free(th->pages[p]);
        }
        free(th->pages);
        uint64_t * has = th->has;
        memset(th, 0, sizeof *th);
        th->has = has;
    }
    if (t->bits) {  /* (absent when its allocation failed) */
        memset(t->bits, 0, LK * (((size_t) t->n_ctx + 63) / 64) * sizeof(uint64_t));
    }
}

void tri_kv_tier2_free(tri_kv_tier2 * t) {
    tri_kv_tier2_clear(t);
    free(t->heads);
    free(t->bits);
    memset(t, 0, sizeof *t);
}

static void tri_t2_set_has(tri_t2_head * th, int32_t pos, bool on) {
    const uint64_t bit = 1ull << ((uint32_t) pos & 63);
    uint64_t * w = &th->has[(uint32_t) pos >> 6];
    *w = on ? (*w | bit) : (*w & ~bit);
}

/* A page with room for a row of position pos at the end of th (NULL when it cannot be had). */
static tri_t2_page * tri_t2_tail(tri_kv_tier2 * t, tri_t2_head * th, int32_t pos) {
    tri_t2_page * last = th->n_pages > 0 ? th->pages[th->n_pages - 1] : NULL;
    if (last && last->n < TRI_T2_PAGE_ROWS && pos >= last->base && (int64_t) pos - last->base <= TRI_T2_SPAN) {
        return last;
    }
    tri_t2_page * pg = NULL;
    if (t->max_pages > 0 && th->n_pages >= t->max_pages) {
        /* at the cap: the oldest page goes, and its memory holds the new one */
        pg = th->pages[0];
        for (int32_t j = 0; j < pg->n; j++) {
            tri_t2_set_has(th, pg->base + pg->off[j], false);
        }
        th->n_rows -= pg->n;
        th->n_dropped += pg->n;
        memmove(th->pages, th->pages + 1, sizeof(tri_t2_page *) * (size_t) (th->n_pages - 1));
        th->n_pages--;
    } else {
        if (th->n_pages == th->cap_pages) {
            const int32_t cap = th->cap_pages ? th->cap_pages * 2 : 16;
            tri_t2_page ** p = realloc(th->pages, sizeof(tri_t2_page *) * (size_t) cap);
            if (!p) {
                return NULL;
            }
            th->pages = p;
            th->cap_pages = cap;
        }
        pg = malloc(t->page_bytes);
        if (!pg) {
            return NULL;
        }
    }
    pg->base = TRI_MAX(pos - TRI_T2_BACK, 0);
    pg->n = 0;
    th->pages[th->n_pages++] = pg;
    return pg;
}

/* The slot of a new row of position pos in (il, h); NULL when the row is held already or cannot be stored. */
static tri_t2_page * tri_t2_slot(tri_kv_tier2 * t, int il, int h, int32_t pos, int32_t * j) {
    tri_t2_head * th = tri_kv_tier2_head(t, il, h);
    if (pos < 0 || pos >= t->n_ctx || tri_kv_tier2_has(th, pos)) {
        return NULL;
    }
    tri_t2_page * pg = tri_t2_tail(t, th, pos);
    if (!pg) {
        th->failed = true;
        th->n_dropped++;
        return NULL;
    }
    *j = pg->n++;
    pg->off[*j] = (uint16_t) (pos - pg->base);
    tri_t2_set_has(th, pos, true);
    th->n_rows++;
    return pg;
}

void tri_kv_tier2_append(tri_kv_tier2 * t, int il, int h, int32_t pos, const tri_fp16 * k, const tri_fp16 * v) {
    int32_t j;
    tri_t2_page * pg = tri_t2_slot(t, il, h, pos, &j);
    if (pg) {
        const int D = t->head_dim;
        tri_t2_quantize_row(k, D, TRI_T2_KMAX, (int8_t *) tri_t2_page_k(pg, j, D), &pg->ks[j]);
        tri_t2_pack_v(v, D, (uint8_t *) tri_t2_page_v(pg, j, D), &pg->vs[j]);
    }
}

bool tri_kv_tier2_append_q(tri_kv_tier2 * t, int il, int h, int32_t pos, const int8_t * k, tri_fp16 ks,
                           const uint8_t * v, tri_fp16 vs) {
    int32_t j;
    tri_t2_page * pg = tri_t2_slot(t, il, h, pos, &j);
    if (!pg) {
        return !tri_kv_tier2_head(t, il, h)->failed;
    }
    const int D = t->head_dim;
    memcpy((int8_t *) tri_t2_page_k(pg, j, D), k, (size_t) D);
    memcpy((uint8_t *) tri_t2_page_v(pg, j, D), v, tri_t2_vbytes(D));
    pg->ks[j] = ks;
    pg->vs[j] = vs;
    return true;
}

void tri_kv_tier2_page_f16(const tri_t2_page * pg, int D, int32_t j0, int32_t n, tri_fp16 * k, tri_fp16 * v) {
    for (int32_t j = 0; j < n; j++) {
        tri_t2_dequantize_row(tri_t2_page_k(pg, j0 + j, D), pg->ks[j0 + j], D, k + (size_t) j * D);
        if (v) {
            int8_t q[TRI_T2_MAX_DIM];
            tri_t2_unpack7(tri_t2_page_v(pg, j0 + j, D), D, q);
            tri_t2_dequantize_row(q, pg->vs[j0 + j], D, v + (size_t) j * D);
        }
    }
}

int64_t tri_kv_tier2_rows(const tri_kv_tier2 * t) {
    int64_t n = 0;
    for (int i = 0; t->heads && i < t->n_layer * t->n_head_kv; i++) {
        n += t->heads[i].n_rows;
    }
    return n;
}

int64_t tri_kv_tier2_dropped(const tri_kv_tier2 * t) {
    int64_t n = 0;
    for (int i = 0; t->heads && i < t->n_layer * t->n_head_kv; i++) {
        n += t->heads[i].n_dropped;
    }
    return n;
}

uint64_t tri_kv_tier2_bytes(const tri_kv_tier2 * t) {
    if (!t->heads) {
        return 0;
    }
    const size_t LK = (size_t) t->n_layer * t->n_head_kv;
    uint64_t b = LK * (((uint64_t) t->n_ctx + 63) / 64) * 8u;
    for (size_t i = 0; i < LK; i++) {
        b += (uint64_t) t->heads[i].n_pages * t->page_bytes + (uint64_t) t->heads[i].cap_pages * sizeof(void *);
    }
    return b;
}

bool tri_kv_tier2_take_failure(tri_kv_tier2 * t) {
    bool any = false;
    for (int i = 0; t->heads && i < t->n_layer * t->n_head_kv; i++) {
        any |= t->heads[i].failed;
        t->heads[i].failed = false;
    }
    return any;
}
