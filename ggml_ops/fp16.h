/* IEEE half (fp16) and bfloat16 <-> float conversions: scalar, exact, no F16C needed.
 * Rounding is round-to-nearest-even, the same as numpy's astype(float16) and F16C's _mm_cvtps_ph. */
#ifndef TRI_FP16_H
#define TRI_FP16_H

#include <stdint.h>
#include <string.h>

typedef uint16_t tri_fp16; /* raw half bits */
typedef uint16_t tri_bf16; /* raw bfloat16 bits (upper half of a float) */

static inline uint32_t tri_f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float    tri_bits_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

/* Exact: every half is a float. NaN payloads are kept, quiet bit set (as the hardware does). */
static inline float tri_fp16_to_fp32(tri_fp16 h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp  = (h >> 10) & 0x1fu;
    uint32_t man  = h & 0x3ffu;
    if (exp == 0x1f) {                       /* inf / nan */
        return tri_bits_f32(sign | 0x7f800000u | (man << 13) | (man ? 0x400000u : 0));
    }
    if (exp != 0) {                          /* normal: rebias 15 -> 127 */
        return tri_bits_f32(sign | ((exp + 112u) << 23) | (man << 13));
    }
    /* zero or subnormal: man * 2^-24, exact in float */
    float v = (float)man * 0x1p-24f;
    return tri_bits_f32(sign | tri_f32_bits(v));
}

static inline tri_fp16 tri_fp32_to_fp16(float f) {
    uint32_t x    = tri_f32_bits(f);
    uint32_t sign = (x >> 16) & 0x8000u;
    uint32_t ax   = x & 0x7fffffffu;
    if (ax > 0x7f800000u) {                  /* nan: keep the top payload bits, force quiet */
        return (tri_fp16)(sign | 0x7e00u | ((ax >> 13) & 0x3ffu));
    }
    if (ax >= 0x477ff000u) {                 /* >= 65520 rounds to inf */
        return (tri_fp16)(sign | 0x7c00u);
    }
    if (ax >= 0x38800000u) {                 /* normal half (>= 2^-14): rebias, round 13 dropped bits */
        uint32_t r = ax - 0x38000000u;
        r += 0xfffu + ((r >> 13) & 1u);
        return (tri_fp16)(sign | (r >> 13));
    }
    if (ax <= 0x33000000u) {                 /* <= 2^-25 rounds (ties-to-even) to zero */
        return (tri_fp16)sign;
    }
    /* subnormal half: round(value * 2^24) with value = mant * 2^(e - 150) */
    uint32_t e     = ax >> 23;               /* 102..112 */
    uint32_t mant  = (ax & 0x7fffffu) | 0x800000u;
    uint32_t shift = 126u - e;               /* 14..24 */
    uint32_t q     = mant >> shift;
    uint32_t rem   = mant & ((1u << shift) - 1u);
    uint32_t half  = 1u << (shift - 1u);
    if (rem > half || (rem == half && (q & 1u))) {
        q++;
    }
    return (tri_fp16)(sign | q);
}

static inline float tri_bf16_to_fp32(tri_bf16 h) {
    return tri_bits_f32((uint32_t)h << 16);
}

/* Round to nearest even; NaN stays NaN (quiet), as ggml_compute_fp32_to_bf16. */
static inline tri_bf16 tri_fp32_to_bf16(float f) {
    uint32_t x = tri_f32_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) {
        return (tri_bf16)((x >> 16) | 64u);
    }
    return (tri_bf16)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

#endif
