/* Weight layouts: a matrix's rows as the GGUF stores them, or repacked in place into groups of 8 rows
 * (x8) that the decode kernels read with one row per vector lane. A repacked matrix has the same size;
 * only tri_matmul_rows reads it. */
#ifndef TRI_REPACK_H
#define TRI_REPACK_H

#include "types.h"

enum tri_wlayout {
    TRI_WLAYOUT_ROWS = 0, /* rows as in the GGUF file */
    TRI_WLAYOUT_X8   = 1, /* groups of 8 rows, super-block by super-block (below) */
};

/* Rows 8g .. 8g + 7 occupy the 8 row strides from row 8g, as one group per super-block s (the 8 rows'
 * blocks s), in order. Q4_K x8: groups of 1152 bytes:
 *     [0, 16)       d of rows 0..7 (fp16)          [16, 32)  dmin of rows 0..7 (fp16)
 *     [32, 96)      low 4 bits of the 128 six-bit values v (byte i: v = i in bits 0-3, v = i + 64 in 4-7)
 *     [96, 128)     their high 2 bits (byte i: bits 2q, 2q + 1 of v = i + 32q)
 *     [128, 1152)   codes: for chunk c (0..3), word k (0..7), row r: bytes 32c + 4k .. 32c + 4k + 3 of the
 *                   row's qs (low nibbles: sub-block 2c, high nibbles: sub-block 2c + 1)
 * v = 8j + r is the scale of sub-block j of row r; v = 64 + 16p + 2r + e the min of sub-block 2p + e. */
#define TRI_X8_Q4K_GROUP  1152
#define TRI_X8_Q4K_DMIN   16
#define TRI_X8_Q4K_SLO    32
#define TRI_X8_Q4K_QS     128

/* Q5_K x8: groups of 1408 bytes, [0, 128) as Q4_K's, then
 *     [128, 384)    qh: for word k (0..7), row r: the row's qh bytes 4k .. 4k + 3
 *     [384, 1408)   qs as Q4_K's codes (the fifth bit of value 64c + 32h + l is bit 2c + h of qh byte l) */
#define TRI_X8_Q5K_GROUP  1408
#define TRI_X8_Q5K_QH     128
#define TRI_X8_Q5K_QS     384

/* Q6_K x8: groups of 1680 bytes per super-block:
 *     [0, 16)       d of rows 0..7 (fp16)
 *     [16, 144)     scales: byte 16p + 2r + e is the scale of sub-block 2p + e of row r
 *     [144, 1168)   ql: for half h (0..1), u (0..1), word k (0..7), row r: the row's ql bytes
 *                   64h + 32u + 4k .. + 3, at 144 + 512h + 256u + 32k + 4r
 *     [1168, 1680)  qh: for h, k, r: the row's qh bytes 32h + 4k .. + 3, at 1168 + 256h + 32k + 4r */
#define TRI_X8_Q6K_GROUP  1680
#define TRI_X8_Q6K_SC     16
#define TRI_X8_Q6K_QL     144
#define TRI_X8_Q6K_QH     1168

/* Q2_K x8: groups of 672 bytes per super-block:
 *     [0, 16)       d of rows 0..7 (fp16)          [16, 32)  dmin of rows 0..7 (fp16)
 *     [32, 160)     scales: byte 16p + 2r + e is the scales byte (scale | min << 4) of sub-block 2p + e of row r
 *     [160, 672)    qs: for half h (0..1), word k (0..7), row r: the row's qs bytes 32h + 4k .. + 3, at
 *                   160 + 256h + 32k + 4r (crumb u of byte l: value 128h + 32u + l) */
#define TRI_X8_Q2K_GROUP  672
#define TRI_X8_Q2K_DMIN   16
#define TRI_X8_Q2K_SC     32
#define TRI_X8_Q2K_QS     160

/* Q3_K x8: groups of 880 bytes per super-block:
 *     [0, 16)       d of rows 0..7 (fp16)
 *     [16, 112)     the 128 six-bit values v = scale + 32 in Q4_K's encoding ([16, 80) low 4 bits, [80, 112)
 *                   high 2 bits); v = 16p + 2r + e is the scale of sub-block 2p + e of row r
 *     [112, 368)    hmask: for word k (0..7), row r: the row's hmask bytes 4k .. 4k + 3, at 112 + 32k + 4r
 *     [368, 880)    qs as Q2_K's (the third bit of value 128h + 32u + l is bit 4h + u of hmask byte l) */
#define TRI_X8_Q3K_GROUP  880
#define TRI_X8_Q3K_SLO    16
#define TRI_X8_Q3K_HM     112
#define TRI_X8_Q3K_QS     368

/* 32-value types (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) x8: one unit of 8 blocks per block b (8 x the block size):
 *     d of rows 0..7 (fp16), then m (Q4_1, Q5_1), then qh (Q5_0, Q5_1: 4 bytes per row), then the codes:
 *     word k of row r, the row's qs bytes 4k .. 4k + 3, at 32k + 4r (nibble types, k < 4: low nibbles are
 *     values 4k .. 4k + 3, high nibbles values 16 + 4k .. 16 + 4k + 3; Q8_0, k < 8: values 4k .. 4k + 3). */
typedef struct {
    size_t unit;      /* bytes per unit */
    int    m, qh, qs; /* offsets in a unit; -1: none */
    int    words;     /* 4-byte words of qs per row */
} tri_x8_parts32;

/* The unit layout of a 32-value type (unit 0 for a type without the layout). */
static inline tri_x8_parts32 tri_x8_parts32_of(enum tri_type type) {
    switch (type) {
    case TRI_TYPE_Q4_0: return (tri_x8_parts32){ 144, -1, -1, 16, 4 };
    case TRI_TYPE_Q4_1: return (tri_x8_parts32){ 160, 16, -1, 32, 4 };
    case TRI_TYPE_Q5_0: return (tri_x8_parts32){ 176, -1, 16, 48, 4 };
    case TRI_TYPE_Q5_1: return (tri_x8_parts32){ 192, 16, 32, 64, 4 };
    case TRI_TYPE_Q8_0: return (tri_x8_parts32){ 272, -1, -1, 16, 8 };
    default: return (tri_x8_parts32){ 0, -1, -1, -1, 0 };
    }
}

/* Whether a matrix of this type and shape can be repacked to x8 (rows a multiple of 8). */
bool tri_x8_supported(enum tri_type type, int64_t n_in, int64_t n_rows);

/* Repacks n_rows rows of n_in values in place (the layout above). Returns false, touching nothing, when
 * tri_x8_supported is false or a buffer of 8 rows cannot be allocated. */
bool tri_x8_repack(enum tri_type type, void * data, int64_t n_in, int64_t n_rows);

/* Row `row` of an x8 matrix of n_in values as floats (the token-embedding lookup of a tied output matrix). */
void tri_x8_row_to_float(enum tri_type type, const void * data, int64_t n_in, int64_t row, float * out);

/* Writes super-block (or block, for 32-value types) s of the 8 rows of one x8 group (group points at the
 * group's first row) as 8 blocks in GGUF order, 8 consecutive blocks at out. */
void tri_x8_unpack_sb(enum tri_type type, const void * group, int s, void * out);

#endif
