/* Internal: the SIMD kernels of each instruction set, gathered into one table per ISA.
 * cpu.c fills the tables once (tri_ops_init) and picks the best one the CPU and OS support;
 * matmul.c reads the active table for the multi-token kernels and the fast activation quantizers. */
#ifndef TRI_ARCH_KERNELS_H
#define TRI_ARCH_KERNELS_H

#include "../types.h"

/* s[t * ls] = dot(x, y + t * by) for t in 0..3: one weight row against four activation rows, so the
 * weight block is unpacked once per four tokens (prefill). */
typedef void (*tri_vec_dot4_fn)(int n, float * restrict s, int64_t ls, const void * restrict x,
                                const void * restrict y, size_t by);

typedef struct tri_isa_kernels {
    tri_vec_dot_fn    vec_dot[TRI_TYPE_COUNT];   /* weight type -> dot with its vec_dot_type; NULL if none */
    tri_vec_dot4_fn   vec_dot4[TRI_TYPE_COUNT];  /* optional 1 x 4 micro-kernel */
    tri_from_float_fn quantize[TRI_TYPE_COUNT];  /* activation quantizer per vec_dot_type (same bytes as the reference) */
} tri_isa_kernels;

/* Each ISA file fills in the entries it implements (the table starts zeroed). */
void tri_register_avx2(tri_isa_kernels * k);
void tri_register_avx512(tri_isa_kernels * k);

/* The table of the ISA chosen for this CPU (scalar entries where the ISA has no kernel). */
const tri_isa_kernels * tri_kernels_active(void);

#endif
