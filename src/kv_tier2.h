/* Tier 2 of the KV cache: every K/V row a policy evicts, kept in host memory at 8 bits, so that a later recall
 * (src/kv_recall.c) can bring back what the question needs.
 *
 * Per (layer, KV head) an append-only list of pages of TRI_T2_PAGE_ROWS rows. A row is its absolute position
 * (a 16-bit offset from the page's base), K as 8-bit codes (|q| <= 127) and V as 7-bit codes (|q| <= 63, packed
 * 8 to 7 bytes), each with one F16 scale per row (x = q * scale, scale = max|x| / qmax). K keeps the finer step
 * because recall ranks rows by q.k; V's error only averages into the attention output. A row then costs
 * head_dim + ceil(7 head_dim / 8) + 6 bytes (126 at head_dim 64) against 4 * head_dim for the F16 K and V of
 * full attention: under half for head_dim >= 64, whatever the context. Rows are never rewritten: a recalled row keeps its copy here, and a bitmap over
 * positions says which positions have one, so a row evicted again is not stored twice. With a byte cap the
 * oldest page of a (layer, KV head) is dropped (and counted) to make room for a new one.
 *
 * Appends to different (layer, KV head) may run on different threads (compaction runs per (layer, KV head)). */
#ifndef TRI_KV_TIER2_H
#define TRI_KV_TIER2_H

#include "fp16.h"
#include "triattn.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TRI_T2_PAGE_ROWS 128
#define TRI_T2_MAX_DIM   1024              /* largest head_dim tier 2 takes */
#define TRI_T2_KMAX      127               /* largest |code| of K */
#define TRI_T2_VMAX      63                /* largest |code| of V (7 bits) */

typedef struct tri_t2_page {
    int32_t  base;                          /* position of row j: base + off[j] */
    int32_t  n;                             /* rows used */
    uint16_t off[TRI_T2_PAGE_ROWS];
    tri_fp16 ks[TRI_T2_PAGE_ROWS];          /* K scale of each row */
    tri_fp16 vs[TRI_T2_PAGE_ROWS];          /* V scale of each row */
    int8_t   q[];                           /* K rows [TRI_T2_PAGE_ROWS][head_dim], then packed V rows
                                             * [TRI_T2_PAGE_ROWS][tri_t2_vbytes(head_dim)] */
} tri_t2_page;

typedef struct tri_t2_head {
    tri_t2_page ** pages;                   /* oldest first */
    int32_t        n_pages, cap_pages;
    int64_t        n_rows;                  /* rows held */
    int64_t        n_dropped;               /* rows dropped by the byte cap or a failed allocation */
    uint64_t *     has;                     /* bit p set: a row of position p is held */
    bool           failed;                  /* an allocation failed (the row was dropped) */
} tri_t2_head;

typedef struct tri_kv_tier2 {
    int32_t       n_layer, n_head_kv, head_dim, n_ctx;
    size_t        page_bytes;
    int32_t       max_pages;                /* pages per (layer, KV head); 0 = no cap */
    tri_t2_head * heads;                    /* [n_layer * n_head_kv] */
    uint64_t *    bits;                     /* the bitmaps, one allocation */
} tri_kv_tier2;

/* Row quantisation (scalar reference): q[d] = round(x[d] / scale) with scale the smallest F16 >= max|x| / qmax
 * (0 for a zero row), so |x - q * scale| <= scale / 2. */
void tri_t2_quantize_row(const tri_fp16 * x, int D, int qmax, int8_t * q, tri_fp16 * scale);
/* out[d] = F16(q[d] * scale). */
void tri_t2_dequantize_row(const int8_t * q, tri_fp16 scale, int D, tri_fp16 * out);

/* Bytes of a packed V row: D codes of 7 bits. */
static inline size_t tri_t2_vbytes(int D) {
    return ((size_t) D * 7 + 7) / 8;
}
/* Packs D codes in [-64, 63] as 7-bit two's complement, little-endian bit order, into tri_t2_vbytes(D) bytes. */
void tri_t2_pack7(const int8_t * q, int D, uint8_t * out);
void tri_t2_unpack7(const uint8_t * in, int D, int8_t * q);
/* A V row quantised to 7 bits and packed (the form tier 2 stores). */
void tri_t2_pack_v(const tri_fp16 * x, int D, uint8_t * out, tri_fp16 * scale);

/* Tier 2 for n_layer x n_head_kv heads of head_dim, positions < n_ctx. max_bytes > 0 caps the pages: shared
 * evenly by the n_managed (layer, KV head) pairs that can evict (at least one page each). */
enum triattn_status tri_kv_tier2_init(tri_kv_tier2 * t, int32_t n_layer, int32_t n_head_kv, int32_t head_dim,
                                      int32_t n_ctx, uint64_t max_bytes, int32_t n_managed, char * err, size_t n);
void tri_kv_tier2_free(tri_kv_tier2 * t);
/* Drops every row (pages are freed, counters kept at zero). */
void tri_kv_tier2_clear(tri_kv_tier2 * t);

static inline tri_t2_head * tri_kv_tier2_head(const tri_kv_tier2 * t, int il, int h) {
    return &t->heads[(size_t) il * t->n_head_kv + h];
}
static inline bool tri_kv_tier2_has(const tri_t2_head * th, int32_t pos) {
    return (th->has[(uint32_t) pos >> 6] >> ((uint32_t) pos & 63)) & 1u;
}
static inline const int8_t * tri_t2_page_k(const tri_t2_page * pg, int j, int D) {
    return pg->q + (size_t) j * D;
}
static inline const uint8_t * tri_t2_page_v(const tri_t2_page * pg, int j, int D) {
    return (const uint8_t *) pg->q + (size_t) TRI_T2_PAGE_ROWS * D + (size_t) j * tri_t2_vbytes(D);
}

/* Stores the F16 row (k, v) of position pos of (il, h), quantised, unless a row of pos is already held.
 * On an allocation failure the row is dropped and th->failed set. */
void tri_kv_tier2_append(tri_kv_tier2 * t, int il, int h, int32_t pos, const tri_fp16 * k, const tri_fp16 * v);
/* The same with rows already in tier 2's form (a saved state: K codes, packed V); false on an allocation failure. */
bool tri_kv_tier2_append_q(tri_kv_tier2 * t, int il, int h, int32_t pos, const int8_t * k, tri_fp16 ks,
                           const uint8_t * v, tri_fp16 vs);

/* Rows [j0, j0 + n) of a page as F16 K (and V unless NULL), n x head_dim each. */
void tri_kv_tier2_page_f16(const tri_t2_page * pg, int D, int32_t j0, int32_t n, tri_fp16 * k, tri_fp16 * v);

/* Totals over every (layer, KV head). */
int64_t  tri_kv_tier2_rows(const tri_kv_tier2 * t);
int64_t  tri_kv_tier2_dropped(const tri_kv_tier2 * t);
uint64_t tri_kv_tier2_bytes(const tri_kv_tier2 * t);
/* True (and cleared) when an append failed to allocate since the last call. */
bool     tri_kv_tier2_take_failure(tri_kv_tier2 * t);

#endif
