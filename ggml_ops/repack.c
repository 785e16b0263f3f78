/* In-place repacking of weight matrices into the x8 layout (repack.h), and its inverse per super-block. */
#include "repack.h"

#include "quants.h"

#include <stddef.h>
#include <stdlib.h>
#include <string.h>

static bool tri_x8_is_k(enum tri_type type) {
    return type == TRI_TYPE_Q2_K || type == TRI_TYPE_Q3_K || type == TRI_TYPE_Q4_K || type == TRI_TYPE_Q5_K ||
           type == TRI_TYPE_Q6_K;
}

bool tri_x8_supported(enum tri_type type, int64_t n_in, int64_t n_rows) {
    const int64_t blk = tri_x8_is_k(type) ? TRI_QK_K : 32;
    return (tri_x8_is_k(type) || tri_x8_parts32_of(type).unit > 0) && n_in > 0 && n_in % blk == 0 && n_rows > 0 &&
           n_rows % 8 == 0;
}

/* Bytes of the group of one super-block (K types) or block (32-value types). */
static size_t tri_x8_group_size(enum tri_type type) {
    switch (type) {
    case TRI_TYPE_Q2_K: return TRI_X8_Q2K_GROUP;
    case TRI_TYPE_Q3_K: return TRI_X8_Q3K_GROUP;
    case TRI_TYPE_Q6_K: return TRI_X8_Q6K_GROUP;
    case TRI_TYPE_Q5_K: return TRI_X8_Q5K_GROUP;
    case TRI_TYPE_Q4_K: return TRI_X8_Q4K_GROUP;
    default: return tri_x8_parts32_of(type).unit;
    }
}

/* Q4_K and Q5_K share d, dmin and the 12 scale bytes at the start of a block; qs (and Q5_K's qh) follow. */
typedef struct {
    size_t qs, qh;       /* offsets in a block (qh: Q5_K only) */
    size_t x8_qs, x8_qh; /* offsets in a group */
    bool   q5;
} tri_k4_parts;

static tri_k4_parts tri_k4_parts_of(enum tri_type type) {
    if (type == TRI_TYPE_Q5_K) {
        return (tri_k4_parts){ offsetof(tri_block_q5_K, qs), offsetof(tri_block_q5_K, qh), TRI_X8_Q5K_QS, TRI_X8_Q5K_QH,
                               true };
    }
    return (tri_k4_parts){ offsetof(tri_block_q4_K, qs), 0, TRI_X8_Q4K_QS, 0, false };
}

/* Copies n bytes between a group and a block. */
static void tri_x8_field(uint8_t * in_group, uint8_t * in_block, size_t n, bool to_group) {
    memcpy(to_group ? in_group : in_block, to_group ? in_block : in_group, n);
}

/* Copies the 4-byte words of a code array between 8 blocks and a group: word k of row r at x8 + 32k + 4r
 * (n words per row); to_group says which way. */
static void tri_x8_words(uint8_t * x8, uint8_t * const blk[8], size_t off, int n, bool to_group) {
    for (int k = 0; k < n; k++) {
        for (int r = 0; r < 8; r++) {
            if (to_group) {
                memcpy(x8 + 32 * k + 4 * r, blk[r] + off + 4 * k, 4);
            } else {
                memcpy(blk[r] + off + 4 * k, x8 + 32 * k + 4 * r, 4);
            }
        }
    }
}

/* 128 six-bit values v as 64 bytes of low nibbles at lo (byte i: v[i] in bits 0-3, v[i + 64] in bits 4-7) and
 * 32 bytes of high bits at lo + 64 (byte i: bits 2q, 2q + 1 of v[i + 32q]). */
static void tri_x8_put6(uint8_t * lo, const uint8_t v[128]) {
    for (int i = 0; i < 64; i++) {
        lo[i] = (uint8_t) ((v[i] & 15) | ((v[i + 64] & 15) << 4));
    }
    for (int i = 0; i < 32; i++) {
        uint8_t h = 0;
        for (int q = 0; q < 4; q++) {
            h |= (uint8_t) ((v[i + 32 * q] >> 4) << (2 * q));
        }
        lo[64 + i] = h;
    }
}

static void tri_x8_get6(const uint8_t * lo, uint8_t v[128]) {
    for (int i = 0; i < 64; i++) {
        v[i]      = lo[i] & 15;
        v[i + 64] = lo[i] >> 4;
    }
    for (int i = 0; i < 32; i++) {
        for (int q = 0; q < 4; q++) {
            v[i + 32 * q] |= (uint8_t) (((lo[64 + i] >> (2 * q)) & 3) << 4);
        }
    }
}

static void tri_x8_pack_sb_k4(enum tri_type type, uint8_t * const blk[8], uint8_t * g) {
    const tri_k4_parts P = tri_k4_parts_of(type);
    uint8_t v[128];
    for (int r = 0; r < 8; r++) {
        memcpy(g + 2 * r, blk[r], 2);
        memcpy(g + TRI_X8_Q4K_DMIN + 2 * r, blk[r] + 2, 2);
        for (int j = 0; j < 8; j++) {
            uint8_t sc, mn;
            tri_get_scale_min_k4(j, blk[r] + 4, &sc, &mn);
            v[8 * j + r]                         = sc;
            v[64 + 16 * (j / 2) + 2 * r + j % 2] = mn;
        }
    }
    tri_x8_put6(g + TRI_X8_Q4K_SLO, v);
    tri_x8_words(g + P.x8_qs, blk, P.qs, 32, true);
    if (P.q5) {
        tri_x8_words(g + P.x8_qh, blk, P.qh, 8, true);
    }
}

static void tri_x8_unpack_sb_k4(enum tri_type type, uint8_t * g, uint8_t * const blk[8]) {
    const tri_k4_parts P = tri_k4_parts_of(type);
    uint8_t v[128];
    tri_x8_get6(g + TRI_X8_Q4K_SLO, v);
    for (int r = 0; r < 8; r++) {
        memcpy(blk[r], g + 2 * r, 2);
        memcpy(blk[r] + 2, g + TRI_X8_Q4K_DMIN + 2 * r, 2);
        uint8_t sc[8], mn[8];
        for (int j = 0; j < 8; j++) {
            sc[j] = v[8 * j + r];
            mn[j] = v[64 + 16 * (j / 2) + 2 * r + j % 2];
        }
        tri_pack_scale_min_k4(sc, mn, blk[r] + 4);
    }
    tri_x8_words(g + P.x8_qs, blk, P.qs, 32, false);
    if (P.q5) {
        tri_x8_words(g + P.x8_qh, blk, P.qh, 8, false);
    }
}

/* Q2_K: d, dmin, the scales bytes in pairs, then qs word by word (repack.h). */
static void tri_x8_sb_q2_K(uint8_t * g, uint8_t * const blk[8], bool to_group) {
    for (int r = 0; r < 8; r++) {
        tri_x8_field(g + 2 * r, blk[r] + offsetof(tri_block_q2_K, d), 2, to_group);
        tri_x8_field(g + TRI_X8_Q2K_DMIN + 2 * r, blk[r] + offsetof(tri_block_q2_K, dmin), 2, to_group);
        for (int j = 0; j < 16; j++) {
            tri_x8_field(g + TRI_X8_Q2K_SC + 16 * (j / 2) + 2 * r + j % 2, blk[r] + offsetof(tri_block_q2_K, scales) + j,
                         1, to_group);
        }
    }
    for (int h = 0; h < 2; h++) {
        tri_x8_words(g + TRI_X8_Q2K_QS + 256 * h, blk, offsetof(tri_block_q2_K, qs) + 32 * h, 8, to_group);
    }
}

/* Q3_K: d, the scales as six-bit values (scale + 32) in pairs, hmask and qs word by word (repack.h). */
static void tri_x8_sb_q3_K(uint8_t * g, uint8_t * const blk[8], bool to_group) {
    uint8_t v[128];
    if (!to_group) {
        tri_x8_get6(g + TRI_X8_Q3K_SLO, v);
    }
    for (int r = 0; r < 8; r++) {
        tri_x8_field(g + 2 * r, blk[r] + offsetof(tri_block_q3_K, d), 2, to_group);
        uint8_t * scales = blk[r] + offsetof(tri_block_q3_K, scales);
        if (to_group) {
            int8_t sc[16];
            tri_q3_K_scales(scales, sc);
            for (int j = 0; j < 16; j++) {
                v[16 * (j / 2) + 2 * r + j % 2] = (uint8_t) (sc[j] + 32);
            }
        } else {
            memset(scales, 0, 12);
            for (int j = 0; j < 16; j++) {
                const uint8_t s6 = v[16 * (j / 2) + 2 * r + j % 2];
                scales[j % 8]     |= (uint8_t) ((s6 & 15) << (4 * (j / 8)));
                scales[8 + j % 4] |= (uint8_t) ((s6 >> 4) << (2 * (j / 4)));
            }
        }
    }
    if (to_group) {
        tri_x8_put6(g + TRI_X8_Q3K_SLO, v);
    }
    tri_x8_words(g + TRI_X8_Q3K_HM, blk, offsetof(tri_block_q3_K, hmask), 8, to_group);
    for (int h = 0; h < 2; h++) {
        tri_x8_words(g + TRI_X8_Q3K_QS + 256 * h, blk, offsetof(tri_block_q3_K, qs) + 32 * h, 8, to_group);
    }
}

/* Q6_K: d, the scales in pairs, then ql and qh word by word (repack.h). */
static void tri_x8_sb_q6_K(uint8_t * g, uint8_t * const blk[8], bool to_group) {
    for (int r = 0; r < 8; r++) {
        for (int j = 0; j < 16; j++) {
            tri_x8_field(g + TRI_X8_Q6K_SC + 16 * (j / 2) + 2 * r + j % 2, blk[r] + offsetof(tri_block_q6_K, scales) + j,
                         1, to_group);
        }
        tri_x8_field(g + 2 * r, blk[r] + offsetof(tri_block_q6_K, d), 2, to_group);
    }
    for (int h = 0; h < 2; h++) {
        for (int u = 0; u < 2; u++) {
            tri_x8_words(g + TRI_X8_Q6K_QL + 512 * h + 256 * u, blk, offsetof(tri_block_q6_K, ql) + 64 * h + 32 * u, 8,
                         to_group);
        }
        tri_x8_words(g + TRI_X8_Q6K_QH + 256 * h, blk, offsetof(tri_block_q6_K, qh) + 32 * h, 8, to_group);
    }
}

/* A 32-value type: d, m and qh of each row side by side, then qs word by word (repack.h). In a block, d is
 * followed by m (when present), qh (when present) and qs. */
static void tri_x8_sb_32(enum tri_type type, uint8_t * g, uint8_t * const blk[8], bool to_group) {
    const tri_x8_parts32 P   = tri_x8_parts32_of(type);
    const size_t         bqh = P.m >= 0 ? 4 : 2;
    const size_t         bqs = bqh + (P.qh >= 0 ? 4 : 0);
    for (int r = 0; r < 8; r++) {
        tri_x8_field(g + 2 * r, blk[r], 2, to_group);
        if (P.m >= 0) {
            tri_x8_field(g + P.m + 2 * r, blk[r] + 2, 2, to_group);
        }
        if (P.qh >= 0) {
            tri_x8_field(g + P.qh + 4 * r, blk[r] + bqh, 4, to_group);
        }
    }
    tri_x8_words(g + P.qs, blk, bqs, P.words, to_group);
}

/* One group g <-> the 8 blocks blk of its super-block (K types) or block; to_group says which way. */
static void tri_x8_sb(enum tri_type type, uint8_t * g, uint8_t * const blk[8], bool to_group) {
    if (type == TRI_TYPE_Q6_K) {
        tri_x8_sb_q6_K(g, blk, to_group);
    } else if (type == TRI_TYPE_Q2_K) {
        tri_x8_sb_q2_K(g, blk, to_group);
    } else if (type == TRI_TYPE_Q3_K) {
        tri_x8_sb_q3_K(g, blk, to_group);
    } else if (tri_x8_is_k(type) && to_group) {
        tri_x8_pack_sb_k4(type, blk, g);
    } else if (tri_x8_is_k(type)) {
        tri_x8_unpack_sb_k4(type, g, blk);
    } else {
        tri_x8_sb_32(type, g, blk, to_group);
    }
}

void tri_x8_unpack_sb(enum tri_type type, const void * group, int s, void * out) {
    const size_t bsz = tri_type_traits_get(type)->type_size;
    uint8_t *    blk[8];
    for (int r = 0; r < 8; r++) {
        blk[r] = (uint8_t *) out + (size_t) r * bsz;
    }
    tri_x8_sb(type, (uint8_t *) group + (size_t) s * tri_x8_group_size(type), blk, false);
}

void tri_x8_row_to_float(enum tri_type type, const void * data, int64_t n_in, int64_t row, float * out) {
    const tri_type_traits * tt  = tri_type_traits_get(type);
    const size_t            rs  = tri_row_size(type, n_in);
    const int64_t           nb  = n_in / tt->blck_size;
    const uint8_t *         grp = (const uint8_t *) data + (size_t) (row / 8) * 8 * rs;
    uint8_t blocks[8 * sizeof(tri_block_q6_K)];
    for (int64_t b = 0; b < nb; b++) {
        tri_x8_unpack_sb(type, grp, (int) b, blocks);
        tt->to_float(blocks + (size_t) (row % 8) * tt->type_size, out + b * tt->blck_size, tt->blck_size);
    }
}

bool tri_x8_repack(enum tri_type type, void * data, int64_t n_in, int64_t n_rows) {
    if (!tri_x8_supported(type, n_in, n_rows)) {
        return false;
    }
    const tri_type_traits * tt = tri_type_traits_get(type);
    const int64_t nsb = n_in / tt->blck_size;
    const size_t  bsz = tt->type_size;
    const size_t  rs  = (size_t) nsb * bsz;
    const size_t  gsz = tri_x8_group_size(type);
    uint8_t * rows = malloc(8 * rs); /* one group's rows, read from while the group is rewritten */
    if (!rows) {
        return false;
    }
    for (int64_t r0 = 0; r0 < n_rows; r0 += 8) {
        uint8_t * grp = (uint8_t *) data + (size_t) r0 * rs;
        memcpy(rows, grp, 8 * rs);
        for (int64_t s = 0; s < nsb; s++) {
            uint8_t * blk[8];
            for (int r = 0; r < 8; r++) {
                blk[r] = rows + (size_t) r * rs + (size_t) s * bsz;
            }
            tri_x8_sb(type, grp + (size_t) s * gsz, blk, true);
        }
    }
    free(rows);
    return true;
}
