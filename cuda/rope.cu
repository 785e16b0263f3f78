/* RoPE: one block per token, one thread per (head, frequency pair). */
#include "common.cuh"
#include "rope.cuh"

__global__ void tri_cu_rope_kernel(float * x, int n_heads, int head_dim, int rope_dim, const float * cs, int pairing) {
    const int t = blockIdx.x, F = rope_dim / 2;
    float * xt = x + (size_t) t * n_heads * head_dim;
    const float * c = cs + (size_t) t * rope_dim;
    for (int idx = threadIdx.x; idx < n_heads * F; idx += blockDim.x) {
        const int h = idx / F, f = idx % F;
        const int a = pairing == 0 ? 2 * f : f;
        const int b = pairing == 0 ? 2 * f + 1 : f + F;
        float * v = xt + (size_t) h * head_dim;
        const float co = c[2 * f], si = c[2 * f + 1];
        const float x0 = v[a], x1 = v[b];
        v[a] = x0 * co - x1 * si;
        v[b] = x0 * si + x1 * co;
    }
}

extern "C" enum triattn_status tri_cuda_rope(float * x, int n_tok, int n_heads, int head_dim, int rope_dim,
                                             const float * cs, int pairing, void * stream) {
    TRI_CUDA_REQUIRE(n_tok > 0 && n_heads > 0 && rope_dim > 0 && rope_dim % 2 == 0 && rope_dim <= head_dim &&
                     (pairing == 0 || pairing == 1));
    tri_cu_rope_kernel<<<n_tok, 256, 0, TRI_CU_STREAM(stream)>>>(x, n_heads, head_dim, rope_dim, cs, pairing);
    TRI_CUDA_LAUNCHED();
    return TRIATTN_OK;
}
