/* CPU feature detection and the per-type kernel table (tri_type_traits), filled once per process. */
#include "arch/kernels.h"
#include "quants.h"
#include "types.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#  include <cpuid.h>
#  define TRI_X86 1
#else
#  define TRI_X86 0
#endif
#if defined(__aarch64__)
#  define TRI_ARM64 1
#  if defined(__linux__)
#    include <sys/auxv.h>
#    ifndef HWCAP_ASIMD
#      define HWCAP_ASIMD (1UL << 1)
#    endif
#    ifndef HWCAP_ASIMDDP
#      define HWCAP_ASIMDDP (1UL << 20)
#    endif
#  elif defined(__APPLE__)
#    include <sys/sysctl.h>
#  endif
#else
#  define TRI_ARM64 0
#endif

/* The ISAs of this architecture from the lowest; each one's CPUs have the ones before it. */
#if TRI_X86
static const enum tri_isa k_isa_chain[] = { TRI_ISA_SCALAR, TRI_ISA_AVX2, TRI_ISA_AVX512 };
#elif TRI_ARM64
static const enum tri_isa k_isa_chain[] = { TRI_ISA_SCALAR, TRI_ISA_NEON };
#else
static const enum tri_isa k_isa_chain[] = { TRI_ISA_SCALAR };
#endif
#define TRI_ISA_CHAIN_LEN (int)(sizeof k_isa_chain / sizeof k_isa_chain[0])

static const char * const k_isa_names[TRI_ISA_COUNT] = { "scalar", "avx2", "avx512", "neon" };

/* Reference table: layout facts, scalar kernels, reference quantizers. vec_dot is filled at init. */
static const tri_type_traits k_ref_traits[TRI_TYPE_COUNT] = {
    [TRI_TYPE_F32]  = { "F32",  1, 4, false, tri_dequantize_row_f32, tri_quantize_row_f32_ref,
                        TRI_TYPE_F32, NULL, tri_vec_dot_f32_ref },
    [TRI_TYPE_F16]  = { "F16",  1, 2, false, tri_dequantize_row_f16, tri_quantize_row_f16_ref,
                        TRI_TYPE_F16, NULL, tri_vec_dot_f16_ref },
    [TRI_TYPE_BF16] = { "BF16", 1, 2, false, tri_dequantize_row_bf16, tri_quantize_row_bf16_ref,
                        TRI_TYPE_F32, NULL, tri_vec_dot_bf16_ref },
    [TRI_TYPE_Q4_0] = { "Q4_0", TRI_QK4_0, sizeof(tri_block_q4_0), true, tri_dequantize_row_q4_0,
                        tri_quantize_row_q4_0_ref, TRI_TYPE_Q8_0, NULL, tri_vec_dot_q4_0_ref },
    [TRI_TYPE_Q4_1] = { "Q4_1", TRI_QK4_1, sizeof(tri_block_q4_1), true, tri_dequantize_row_q4_1,
                        tri_quantize_row_q4_1_ref, TRI_TYPE_Q8_1, NULL, tri_vec_dot_q4_1_ref },
    [TRI_TYPE_Q5_0] = { "Q5_0", TRI_QK5_0, sizeof(tri_block_q5_0), true, tri_dequantize_row_q5_0,
                        tri_quantize_row_q5_0_ref, TRI_TYPE_Q8_0, NULL, tri_vec_dot_q5_0_ref },
    [TRI_TYPE_Q5_1] = { "Q5_1", TRI_QK5_1, sizeof(tri_block_q5_1), true, tri_dequantize_row_q5_1,
                        tri_quantize_row_q5_1_ref, TRI_TYPE_Q8_1, NULL, tri_vec_dot_q5_1_ref },
    [TRI_TYPE_Q8_0] = { "Q8_0", TRI_QK8_0, sizeof(tri_block_q8_0), true, tri_dequantize_row_q8_0,
                        tri_quantize_row_q8_0_ref, TRI_TYPE_Q8_0, NULL, tri_vec_dot_q8_0_ref },
    [TRI_TYPE_Q8_1] = { "Q8_1", TRI_QK8_1, sizeof(tri_block_q8_1), true, tri_dequantize_row_q8_1,
                        tri_quantize_row_q8_1_ref, TRI_TYPE_Q8_1, NULL, NULL },
    [TRI_TYPE_Q2_K] = { "Q2_K", TRI_QK_K, sizeof(tri_block_q2_K), true, tri_dequantize_row_q2_K,
                        tri_quantize_row_q2_K_ref, TRI_TYPE_Q8_K, NULL, tri_vec_dot_q2_K_ref },
    [TRI_TYPE_Q3_K] = { "Q3_K", TRI_QK_K, sizeof(tri_block_q3_K), true, tri_dequantize_row_q3_K,
                        tri_quantize_row_q3_K_ref, TRI_TYPE_Q8_K, NULL, tri_vec_dot_q3_K_ref },
    [TRI_TYPE_Q4_K] = { "Q4_K", TRI_QK_K, sizeof(tri_block_q4_K), true, tri_dequantize_row_q4_K,
                        tri_quantize_row_q4_K_ref, TRI_TYPE_Q8_K, NULL, tri_vec_dot_q4_K_ref },
    [TRI_TYPE_Q5_K] = { "Q5_K", TRI_QK_K, sizeof(tri_block_q5_K), true, tri_dequantize_row_q5_K,
                        tri_quantize_row_q5_K_ref, TRI_TYPE_Q8_K, NULL, tri_vec_dot_q5_K_ref },
    [TRI_TYPE_Q6_K] = { "Q6_K", TRI_QK_K, sizeof(tri_block_q6_K), true, tri_dequantize_row_q6_K,
                        tri_quantize_row_q6_K_ref, TRI_TYPE_Q8_K, NULL, tri_vec_dot_q6_K_ref },
    [TRI_TYPE_Q8_K] = { "Q8_K", TRI_QK_K, sizeof(tri_block_q8_K), true, tri_dequantize_row_q8_K,
                        tri_quantize_row_q8_K_ref, TRI_TYPE_Q8_K, NULL, NULL },
};

static struct {
    pthread_once_t  once;
    enum tri_isa    isa;                         /* best usable ISA (after the TRIATTN_ISA cap) */
    bool            usable[TRI_ISA_COUNT];       /* the ISAs of k_isa_chain up to isa */
    char            features[128];
    tri_type_traits traits[TRI_TYPE_COUNT];
    tri_isa_kernels kernels[TRI_ISA_COUNT];      /* [ISA] -> kernels; scalar = references */
    tri_isa_kernels active;                      /* kernels[isa] with gaps filled from lower ISAs */
} g_ops = { .once = PTHREAD_ONCE_INIT };

typedef struct {
    bool avx2, fma, f16c, avx512f, avx512bw, avx512vl, avx512dq, avx512vnni;
    bool os_ymm, os_zmm;
    bool neon, dotprod;
} tri_cpu_flags;

static tri_cpu_flags tri_detect(void) {
    tri_cpu_flags f;
    memset(&f, 0, sizeof f);
#if TRI_X86
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) {
        return f;
    }
    const bool osxsave = (c >> 27) & 1;
    const bool avx     = (c >> 28) & 1;
    f.fma  = (c >> 12) & 1;
    f.f16c = (c >> 29) & 1;
    if (osxsave && avx) {
        /* XCR0: the OS saves XMM|YMM state (bits 1,2) and for AVX-512 opmask|ZMM_Hi256|Hi16_ZMM (5,6,7). */
        unsigned xlo, xhi;
        __asm__ volatile("xgetbv" : "=a"(xlo), "=d"(xhi) : "c"(0));
        f.os_ymm = (xlo & 0x6) == 0x6;
        f.os_zmm = (xlo & 0xe6) == 0xe6;
    }
    if (__get_cpuid_max(0, NULL) >= 7) {
        __cpuid_count(7, 0, a, b, c, d);
        f.avx2       = (b >> 5) & 1;
        f.avx512f    = (b >> 16) & 1;
        f.avx512dq   = (b >> 17) & 1;
        f.avx512bw   = (b >> 30) & 1;
        f.avx512vl   = (b >> 31) & 1;
        f.avx512vnni = (c >> 11) & 1;
    }
#elif TRI_ARM64 && defined(__linux__)
    const unsigned long hw = getauxval(AT_HWCAP);
    f.neon    = (hw & HWCAP_ASIMD) != 0;
    f.dotprod = f.neon && (hw & HWCAP_ASIMDDP) != 0;
#elif TRI_ARM64 && defined(__APPLE__)
    f.neon = true; /* Advanced SIMD is part of every AArch64 ABI; the OS names the optional features */
    int    on  = 0;
    size_t len = sizeof on;
    f.dotprod = sysctlbyname("hw.optional.arm.FEAT_DotProd", &on, &len, NULL, 0) == 0 && on != 0;
#elif TRI_ARM64
    f.neon = true; /* Advanced SIMD is part of every AArch64 ABI; the dot product is known on Linux and macOS */
#endif
    return f;
}

static void tri_ops_init_once(void) {
    const tri_cpu_flags f = tri_detect();
    const bool has_avx2   = f.os_ymm && f.avx2 && f.fma && f.f16c;
    const bool has_avx512 = has_avx2 && f.os_zmm && f.avx512f && f.avx512bw && f.avx512vl && f.avx512dq &&
                            f.avx512vnni;
    bool has[TRI_ISA_COUNT] = { [TRI_ISA_SCALAR] = true, [TRI_ISA_AVX2] = has_avx2, [TRI_ISA_AVX512] = has_avx512,
                                [TRI_ISA_NEON] = f.neon };

    /* TRIATTN_ISA=<name> (scalar, avx2, avx512, neon) caps the choice to that ISA of this architecture
     * (benchmarks, debugging); it never raises it, and another architecture's name leaves it alone. */
    int top = 0;
    while (top + 1 < TRI_ISA_CHAIN_LEN && has[k_isa_chain[top + 1]]) {
        top++;
    }
    const char * cap = getenv("TRIATTN_ISA");
    for (int i = 0; cap && i < TRI_ISA_CHAIN_LEN; i++) {
        if (strcmp(cap, k_isa_names[k_isa_chain[i]]) == 0) {
            top = i < top ? i : top;
        }
    }
    const enum tri_isa isa = k_isa_chain[top];
    g_ops.isa = isa;
    memset(g_ops.usable, 0, sizeof g_ops.usable);
    for (int i = 0; i <= top; i++) {
        g_ops.usable[k_isa_chain[i]] = true;
    }
    const bool dotprod = f.dotprod && g_ops.usable[TRI_ISA_NEON];

    snprintf(g_ops.features, sizeof g_ops.features, "%s%s%s%s%s%s%s%s%s[%s%s]",
             f.avx2 && f.os_ymm ? "AVX2 " : "", f.fma ? "FMA " : "", f.f16c ? "F16C " : "",
             f.avx512f && f.os_zmm ? "AVX512F " : "", f.avx512bw ? "AVX512BW " : "",
             f.avx512vl ? "AVX512VL " : "", f.avx512vnni ? "VNNI " : "", f.neon ? "NEON " : "",
             f.dotprod ? "DOTPROD " : "", k_isa_names[isa], dotprod ? "+dotprod" : "");

    memset(g_ops.kernels, 0, sizeof g_ops.kernels);
    for (int t = 0; t < TRI_TYPE_COUNT; t++) {
        g_ops.kernels[TRI_ISA_SCALAR].vec_dot[t] = k_ref_traits[t].vec_dot_ref;
    }
    g_ops.kernels[TRI_ISA_SCALAR].quantize[TRI_TYPE_Q8_0] = tri_quantize_row_q8_0_ref;
    g_ops.kernels[TRI_ISA_SCALAR].quantize[TRI_TYPE_Q8_1] = tri_quantize_row_q8_1_ref;
    g_ops.kernels[TRI_ISA_SCALAR].quantize[TRI_TYPE_Q8_K] = tri_quantize_row_q8_K_ref;
    g_ops.kernels[TRI_ISA_SCALAR].quantize[TRI_TYPE_F16]  = tri_quantize_row_f16_ref;
    g_ops.kernels[TRI_ISA_SCALAR].quantize[TRI_TYPE_BF16] = tri_quantize_row_bf16_ref;
    g_ops.kernels[TRI_ISA_SCALAR].quantize[TRI_TYPE_F32]  = tri_quantize_row_f32_ref;
#if TRI_X86
    /* Registering is just filling tables; the kernels run only when the CPU has the ISA. */
    tri_register_avx2(&g_ops.kernels[TRI_ISA_AVX2]);
    tri_register_avx512(&g_ops.kernels[TRI_ISA_AVX512]);
#elif TRI_ARM64
    tri_register_neon(&g_ops.kernels[TRI_ISA_NEON]);
    if (dotprod) {
        tri_register_neon_dotprod(&g_ops.kernels[TRI_ISA_NEON]);
        tri_register_neon_x8(&g_ops.kernels[TRI_ISA_NEON]);
    }
#endif

    /* Active table: for each entry the best usable ISA of this architecture that has it. */
    g_ops.active = g_ops.kernels[TRI_ISA_SCALAR];
    for (int i = 1; i <= top; i++) {
        const tri_isa_kernels * k = &g_ops.kernels[k_isa_chain[i]];
        for (int t = 0; t < TRI_TYPE_COUNT; t++) {
            if (k->vec_dot[t])  g_ops.active.vec_dot[t]  = k->vec_dot[t];
            if (k->gemv[t])     g_ops.active.gemv[t]     = k->gemv[t];
            if (k->gemm[t])     g_ops.active.gemm[t]     = k->gemm[t];
            if (k->gemv_x8[t])  g_ops.active.gemv_x8[t]  = k->gemv_x8[t];
            if (k->gemm_x8[t])  g_ops.active.gemm_x8[t]  = k->gemm_x8[t];
            if (k->quantize[t]) g_ops.active.quantize[t] = k->quantize[t];
        }
    }
    for (int t = 0; t < TRI_TYPE_COUNT; t++) {
        g_ops.traits[t]         = k_ref_traits[t];
        g_ops.traits[t].vec_dot = g_ops.active.vec_dot[t];
    }
}

void tri_ops_init(void) {
    pthread_once(&g_ops.once, tri_ops_init_once);
}

const tri_type_traits * tri_type_traits_get(enum tri_type type) {
    tri_ops_init();
    if ((int)type < 0 || (int)type >= TRI_TYPE_COUNT || !g_ops.traits[type].name) {
        return NULL;
    }
    return &g_ops.traits[type];
}

size_t tri_row_size(enum tri_type type, int64_t n) {
    const tri_type_traits * t = tri_type_traits_get(type);
    if (!t || n < 0 || n % t->blck_size != 0) {
        return 0;
    }
    return (size_t)(n / t->blck_size) * t->type_size;
}

tri_vec_dot_fn tri_vec_dot_for_isa(enum tri_type type, enum tri_isa isa) {
    tri_ops_init();
    if ((int)type < 0 || (int)type >= TRI_TYPE_COUNT || !tri_cpu_has_isa(isa)) {
        return NULL;
    }
    return g_ops.kernels[isa].vec_dot[type];
}

enum tri_isa tri_cpu_isa(void) {
    tri_ops_init();
    return g_ops.isa;
}

bool tri_cpu_has_isa(enum tri_isa isa) {
    tri_ops_init();
    return (int)isa >= 0 && (int)isa < TRI_ISA_COUNT && g_ops.usable[isa];
}

const char * tri_cpu_features(void) {
    tri_ops_init();
    return g_ops.features;
}

const tri_isa_kernels * tri_kernels_active(void) {
    tri_ops_init();
    return &g_ops.active;
}

const tri_isa_kernels * tri_kernels_for_isa(enum tri_isa isa) {
    return tri_cpu_has_isa(isa) ? &g_ops.kernels[isa] : NULL;
}
