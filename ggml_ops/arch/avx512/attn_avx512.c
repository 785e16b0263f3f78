/* Attention kernels compiled for AVX-512: the same 256-bit arithmetic as the AVX2 file (attn_x86.h), with
 * 32 vector registers, so four queries share each converted K/V vector. Same bits as the AVX2 kernels. */
#include "../ops_kernels.h"

#include <math.h>

#define TRI_ATT_R 4
#define TRI_ATT_NAME(f) f##_avx512
#include "../attn_x86.h"
