/* UTF-8 encoding and code point property lookup over the generated range tables. */
#include "unicode.h"

/* Flags of 0..127, the tokenizer's fast path (same values as the generated ranges; test_vocab checks). */
const uint8_t tri_uc_ascii_flags[128] = {
    0, 0, 0, 0, 0, 0, 0, 0, 0, 4, 4, 4, 4, 4, 0, 0,  /* \t \n \v \f \r */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,  /* space */
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 0, 0, 0, 0, 0, 0,  /* 0-9 */
    0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,  /* A-O */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0,  /* P-Z */
    0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,  /* a-o */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0,  /* p-z */
};

int tri_utf8_encode(uint32_t cp, uint8_t out[4]) {
    if (cp < 0x80) {
        out[0] = (uint8_t) cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (uint8_t) (0xC0 | (cp >> 6));
        out[1] = (uint8_t) (0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        if (cp >= 0xD800 && cp <= 0xDFFF) {
            return 0;
        }
        out[0] = (uint8_t) (0xE0 | (cp >> 12));
        out[1] = (uint8_t) (0x80 | ((cp >> 6) & 0x3F));
        out[2] = (uint8_t) (0x80 | (cp & 0x3F));
        return 3;
    }
    if (cp <= 0x10FFFF) {
        out[0] = (uint8_t) (0xF0 | (cp >> 18));
        out[1] = (uint8_t) (0x80 | ((cp >> 12) & 0x3F));
        out[2] = (uint8_t) (0x80 | ((cp >> 6) & 0x3F));
        out[3] = (uint8_t) (0x80 | (cp & 0x3F));
        return 4;
    }
    return 0;
}

unsigned tri_uc_flags_slow(uint32_t cp) {
    if (cp > 0x10FFFF) {
        return 0;
    }
    /* Last range whose start is <= cp (range 0 starts at 0). */
    uint32_t lo = 0, hi = tri_uc_n_ranges;
    while (hi - lo > 1) {
        uint32_t mid = (lo + hi) / 2;
        if (tri_uc_range_start[mid] <= cp) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    return tri_uc_range_flags[lo];
}
