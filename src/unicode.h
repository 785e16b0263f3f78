/* UTF-8 decoding/encoding and the code point properties the pre-tokenizers need. */
#ifndef TRI_UNICODE_H
#define TRI_UNICODE_H

#include <stddef.h>
#include <stdint.h>

/* Returned by tri_utf8_decode for a byte that does not start a valid sequence (its own "character"). */
#define TRI_CP_INVALID 0x110000u

enum tri_uc_flag {
    TRI_UC_LETTER = 1,  /* \p{L} */
    TRI_UC_NUMBER = 2,  /* \p{N} */
    TRI_UC_SPACE  = 4,  /* \s (White_Space) */
};

/* Generated tables (src/unicode_data.c). */
extern const uint32_t tri_uc_n_ranges;
extern const uint32_t tri_uc_range_start[];
extern const uint8_t  tri_uc_range_flags[];
extern const uint8_t  tri_uc_ascii_flags[128];

/* Decodes one code point from s[0..n) (n >= 1). Sets *len to the bytes consumed (1..4). Overlong forms,
 * surrogates, values past U+10FFFF and truncated sequences give TRI_CP_INVALID with *len = 1. */
static inline uint32_t tri_utf8_decode(const uint8_t * s, size_t n, size_t * len) {
    uint32_t c = s[0];
    if (c < 0x80) {
        *len = 1;
        return c;
    }
    *len = 1;
    if (c < 0xC2 || c > 0xF4) {
        return TRI_CP_INVALID;
    }
    if (c < 0xE0) {
        if (n < 2 || (s[1] & 0xC0) != 0x80) {
            return TRI_CP_INVALID;
        }
        *len = 2;
        return ((c & 0x1F) << 6) | (s[1] & 0x3F);
    }
    if (c < 0xF0) {
        if (n < 3 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80) {
            return TRI_CP_INVALID;
        }
        uint32_t cp = ((c & 0x0F) << 12) | ((uint32_t) (s[1] & 0x3F) << 6) | (s[2] & 0x3F);
        if (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF)) {
            return TRI_CP_INVALID;
        }
        *len = 3;
        return cp;
    }
    if (n < 4 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80 || (s[3] & 0xC0) != 0x80) {
        return TRI_CP_INVALID;
    }
    uint32_t cp = ((c & 0x07) << 18) | ((uint32_t) (s[1] & 0x3F) << 12) | ((uint32_t) (s[2] & 0x3F) << 6) |
                  (s[3] & 0x3F);
    if (cp < 0x10000 || cp > 0x10FFFF) {
        return TRI_CP_INVALID;
    }
    *len = 4;
    return cp;
}

/* Writes the UTF-8 form of cp into out; returns its length (1..4), or 0 for a surrogate or cp > U+10FFFF. */
int tri_utf8_encode(uint32_t cp, uint8_t out[4]);

/* Property flags (enum tri_uc_flag) of a code point; 0 for TRI_CP_INVALID. */
unsigned tri_uc_flags_slow(uint32_t cp);
static inline unsigned tri_uc_flags(uint32_t cp) {
    return cp < 128 ? tri_uc_ascii_flags[cp] : tri_uc_flags_slow(cp);
}

#endif
