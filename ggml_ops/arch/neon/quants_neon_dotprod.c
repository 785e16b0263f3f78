/* AArch64 kernels on the dot product instructions (ARMv8.2 FEAT_DotProd; this file is compiled with
 * -march=armv8.2-a+dotprod and registered only when the CPU reports HWCAP_ASIMDDP): the integer vec_dot
 * of neon_int_dots.h with SDOT, the same results as the ARMv8.0 versions bit for bit. */
#pragma GCC optimize("fp-contract=off")

#include <arm_neon.h>

#include "../../quants.h"
#include "../kernels.h"

/* acc + the products of 16 int8 pairs, four per int32 lane */
static inline int32x4_t tri_dot_i8(int32x4_t acc, int8x16_t a, int8x16_t b) {
    return vdotq_s32(acc, a, b);
}

#define TRI_NEON_FN(name) name##_neon_dotprod
#include "neon_int_dots.h"

void tri_register_neon_dotprod(tri_isa_kernels * k) {
    k->vec_dot[TRI_TYPE_Q4_0] = tri_vec_dot_q4_0_neon_dotprod;
    k->vec_dot[TRI_TYPE_Q4_1] = tri_vec_dot_q4_1_neon_dotprod;
    k->vec_dot[TRI_TYPE_Q5_0] = tri_vec_dot_q5_0_neon_dotprod;
    k->vec_dot[TRI_TYPE_Q5_1] = tri_vec_dot_q5_1_neon_dotprod;
    k->vec_dot[TRI_TYPE_Q8_0] = tri_vec_dot_q8_0_neon_dotprod;
    k->vec_dot[TRI_TYPE_Q2_K] = tri_vec_dot_q2_K_neon_dotprod;
    k->vec_dot[TRI_TYPE_Q3_K] = tri_vec_dot_q3_K_neon_dotprod;
    k->vec_dot[TRI_TYPE_Q4_K] = tri_vec_dot_q4_K_neon_dotprod;
    k->vec_dot[TRI_TYPE_Q5_K] = tri_vec_dot_q5_K_neon_dotprod;
    k->vec_dot[TRI_TYPE_Q6_K] = tri_vec_dot_q6_K_neon_dotprod;
}
