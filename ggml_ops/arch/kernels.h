/* Internal: the SIMD kernels of each instruction set, gathered into one table per ISA.
 * cpu.c fills the tables once (tri_ops_init) and picks the best one the CPU and OS support;
 * matmul.c reads the active table for the matrix kernels and the fast activation quantizers. */
#ifndef TRI_ARCH_KERNELS_H
#define TRI_ARCH_KERNELS_H

#include "../types.h"

/* Activation rows of the integer matrix kernels ("x rows"): the vec_dot_type blocks (Q8_0, Q8_1 or Q8_K,
 * bytes as the reference quantizer writes them), then what the prefill tiles read per token: the codes
 * plus 128 as unsigned bytes, the block scales as floats, and per type the sums they need. Offsets in
 * bytes from the start of a row; 0 where a part is absent. */
typedef struct tri_xrow_layout {
    size_t xu;    /* n bytes: code + 128 */
    size_t d;     /* n / block floats: block scales */
    size_t s;     /* Q8_1: n / 32 floats, the blocks' s */
    size_t bs16;  /* Q8_K: n / 16 int16, the blocks' bsums */
    size_t bs32;  /* Q8_K: n / 32 int16, sums of 32 codes */
    size_t sum;   /* Q8_0, Q8_1: n / 32 int32, the blocks' sums of codes */
    size_t size;  /* row stride (a multiple of 64); 0 when vdt has no x rows */
} tri_xrow_layout;

tri_xrow_layout tri_xrow_layout_of(enum tri_type vdt, int64_t n);

/* Decode: y[t * ldy + r] = dot(row r of W, x row t) for r in [0, nrows), t in [0, n_tok); W rows of n values
 * (stride rs), x rows at stride xs. Each row is read once for all tokens and no rows are repacked; a token's
 * results do not depend on the others (n_tok 1 gives the same bits). */
typedef void (*tri_gemv_fn)(int n, const void * W, size_t rs, int64_t nrows, const void * x, size_t xs,
                            int64_t n_tok, float * y, int64_t ldy);
/* Prefill: y[t * ldy + r] for r in [0, nrows), t in [0, n_tok); x rows at stride xs. scratch holds
 * tri_matmul_scratch_size(n) bytes (the repacked rows). Same results as the gemv, bit for bit. */
typedef void (*tri_gemm_fn)(int n, const void * W, size_t rs, int64_t nrows, const void * x, size_t xs,
                            int64_t n_tok, float * y, int64_t ldy, void * scratch);

typedef struct tri_isa_kernels {
    tri_vec_dot_fn    vec_dot[TRI_TYPE_COUNT];   /* weight type -> dot with its vec_dot_type; NULL if none */
    tri_gemv_fn       gemv[TRI_TYPE_COUNT];      /* integer matrix kernels (both or neither); they read x rows */
    tri_gemm_fn       gemm[TRI_TYPE_COUNT];
    tri_gemv_fn       gemv_x8[TRI_TYPE_COUNT];   /* the same for weights in the x8 layout (repack.h): rows in */
    tri_gemm_fn       gemm_x8[TRI_TYPE_COUNT];   /* whole groups of 8, W at a group's first row */
    tri_from_float_fn quantize[TRI_TYPE_COUNT];  /* activation quantizer per vec_dot_type (same bytes as the reference) */
} tri_isa_kernels;

/* Each ISA file fills in the entries it implements (the table starts zeroed). */
void tri_register_avx2(tri_isa_kernels * k);
void tri_register_avx512(tri_isa_kernels * k);
/* AArch64: the ARMv8.0 Advanced SIMD kernels; then, on CPUs with the dot product instructions (HWCAP_ASIMDDP),
 * tri_register_neon_dotprod replaces the integer ones by versions built on SDOT (same results, bit for bit). */
void tri_register_neon(tri_isa_kernels * k);
void tri_register_neon_dotprod(tri_isa_kernels * k);
/* AArch64 with the dot product instructions: the kernels over weights in the x8 layout (their results equal
 * the dotprod vec_dot's, row by row, bit for bit). */
void tri_register_neon_x8(tri_isa_kernels * k);

/* The table of the ISA chosen for this CPU (scalar entries where the ISA has no kernel). */
const tri_isa_kernels * tri_kernels_active(void);
/* The table of one ISA (NULL when the CPU lacks it), for tests. */
const tri_isa_kernels * tri_kernels_for_isa(enum tri_isa isa);

#endif
