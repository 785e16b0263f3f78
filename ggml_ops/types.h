/* Tensor element types (values equal GGUF's ggml_type ids) and the per-type kernel table. */
#ifndef TRI_TYPES_H
#define TRI_TYPES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum tri_type {
    TRI_TYPE_F32  = 0,
    TRI_TYPE_F16  = 1,
    TRI_TYPE_Q4_0 = 2,
    TRI_TYPE_Q4_1 = 3,
    TRI_TYPE_Q5_0 = 6,
    TRI_TYPE_Q5_1 = 7,
    TRI_TYPE_Q8_0 = 8,
    TRI_TYPE_Q8_1 = 9,
    TRI_TYPE_Q2_K = 10,
    TRI_TYPE_Q3_K = 11,
    TRI_TYPE_Q4_K = 12,
    TRI_TYPE_Q5_K = 13,
    TRI_TYPE_Q6_K = 14,
    TRI_TYPE_Q8_K = 15,
    TRI_TYPE_BF16 = 30,
    TRI_TYPE_COUNT = 40, /* upper bound of the id space we index by */
};

/* Instruction sets a kernel may be written for. The order ranks ISAs of one architecture only (x86: AVX2 <
 * AVX512); ask tri_cpu_has_isa whether one may run rather than comparing with tri_cpu_isa(). */
enum tri_isa {
    TRI_ISA_SCALAR = 0,
    TRI_ISA_AVX2   = 1, /* x86-64: AVX2 + FMA + F16C */
    TRI_ISA_AVX512 = 2, /* x86-64: AVX-512 F/BW/VL/DQ (+ VNNI where the kernel uses it) */
    TRI_ISA_NEON   = 3, /* AArch64: Advanced SIMD (+ the dot product instructions where the CPU has them) */
    TRI_ISA_COUNT  = 4,
};

/* Dequantize k values (k a multiple of the block size) from x into y. */
typedef void (*tri_to_float_fn)(const void * restrict x, float * restrict y, int64_t k);
/* Quantize k floats into blocks of the type (reference rounding, as ggml's quantize_row_*_ref). */
typedef void (*tri_from_float_fn)(const float * restrict x, void * restrict y, int64_t k);
/* *s = dot(x, y) over n values; x is a row of the weight type, y a row of its vec_dot_type. */
typedef void (*tri_vec_dot_fn)(int n, float * restrict s, const void * restrict x, const void * restrict y);

typedef struct tri_type_traits {
    const char *      name;          /* "Q4_1" */
    int64_t           blck_size;     /* values per block */
    size_t            type_size;     /* bytes per block */
    bool              is_quantized;
    tri_to_float_fn   to_float;
    tri_from_float_fn from_float;    /* NULL when the type cannot be produced */
    enum tri_type     vec_dot_type;  /* activations are converted to this type before vec_dot */
    tri_vec_dot_fn    vec_dot;       /* best kernel for this CPU (set by tri_ops_init) */
    tri_vec_dot_fn    vec_dot_ref;   /* scalar reference */
} tri_type_traits;

/* Selects kernels for this CPU. Idempotent and thread-safe; every entry point below calls it. */
void tri_ops_init(void);
/* Traits of a type, or NULL when the id is unknown or not supported. */
const tri_type_traits * tri_type_traits_get(enum tri_type type);
/* Bytes of one row of n values (n must be a multiple of the block size). */
size_t tri_row_size(enum tri_type type, int64_t n);
/* The vec_dot of one ISA for a type, or NULL when that ISA has no kernel for it or the CPU lacks it.
 * Lets tests compare every SIMD kernel with the scalar reference. */
tri_vec_dot_fn tri_vec_dot_for_isa(enum tri_type type, enum tri_isa isa);
/* Best ISA available on this CPU (after the TRIATTN_ISA cap). */
enum tri_isa tri_cpu_isa(void);
/* Whether kernels of the ISA may run: the CPU has it and TRIATTN_ISA does not cap it away. Scalar: always. */
bool tri_cpu_has_isa(enum tri_isa isa);
/* Human-readable list of the CPU features in use, e.g. "AVX2 FMA F16C AVX512 VNNI". Static string. */
const char * tri_cpu_features(void);

#endif
