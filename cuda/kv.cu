/* Per-layer K/V work of a forward step (see kv.cuh): one warp (block) per (head, row). */
#include "attention.cuh"
#include "common.cuh"
#include "kv.cuh"


/* RMSNorm of head x (D values, as ggml_ops' tri_rmsnorm: squares summed in double) into buf, then RoPE of its
 * first R dims in buf. Whole warp. */
__device__ static void tri_cu_head_post(const float * x, const float * nw, const float * cs, const tri_cuda_heads & hd,
                                        float * buf) {
    const int lane = threadIdx.x & 31, D = hd.head_dim, F = hd.rope_dim / 2;
    float r = 1.0f;
    if (nw) {
        double ss = 0.0;
        for (int d = lane; d < D; d += 32) {
            ss += (double) x[d] * x[d];
        }
        ss = tri_cu_warp_sum_d(ss);
        r = (float) (1.0 / sqrt(ss / D + hd.eps));
    }
    for (int d = lane; d < D; d += 32) {
        buf[d] = nw ? x[d] * r * nw[d] : x[d];
    }
    __syncwarp();
    for (int f = lane; f < F; f += 32) {
        const int a = hd.pairing == 0 ? 2 * f : f;
        const int b = hd.pairing == 0 ? 2 * f + 1 : f + F;
        const float co = cs[2 * f], si = cs[2 * f + 1];
        const float x0 = buf[a], x1 = buf[b];
        buf[a] = x0 * co - x1 * si;
        buf[b] = x0 * si + x1 * co;
    }
    __syncwarp();
}

/* grid: x = head (query heads, then K heads, then V heads), y = row; one warp. */
__global__ void __launch_bounds__(32)
tri_cu_qkv_post_kernel(float * q, const float * k, const float * v, const float * q_norm, const float * k_norm,
                       const float * cs, const tri_cuda_row * rows, int il, tri_cuda_heads hd) {
    tri_cu_pdl_enter();
    __shared__ float b[TRI_CUDA_ATT_MAX_D];
    const int r = blockIdx.y, hh = blockIdx.x, lane = threadIdx.x;
    const int D = hd.head_dim, H = hd.n_head, Hkv = hd.n_head_kv;
    const tri_cuda_row row = rows[r];
    const float * csr = cs + (size_t) r * hd.rope_dim;
    if (hh < H) {
        float * x = q + ((size_t) r * H + hh) * D;
        tri_cu_head_post(x, q_norm, csr, hd, b);
        for (int d = lane; d < D; d += 32) {
            x[d] = b[d];
        }
        return;
    }
    const bool is_k = hh < H + Hkv;
    const int h = is_k ? hh - H : hh - H - Hkv;
    const size_t lh = (size_t) il * Hkv + h;
    const int slot = row.n_live[lh] + row.rank;
    if (slot >= row.cap) {
        return; /* never happens when the host made room; keeps a bug from writing out of bounds */
    }
    const size_t dst = (lh * row.cap + slot) * D;
    if (is_k) {
        tri_cu_head_post(k + ((size_t) r * Hkv + h) * D, k_norm, csr, hd, b);
        for (int d = lane; d < D; d += 32) {
            ((__half *) row.K)[dst + d] = __float2half_rn(b[d]);
        }
        if (lane == 0) {
            row.pos[lh * row.cap + slot] = row.position;
        }
    } else {
        const float * x = v + ((size_t) r * Hkv + h) * D;
        for (int d = lane; d < D; d += 32) {
            ((__half *) row.V)[dst + d] = __float2half_rn(x[d]);
        }
    }
}

__global__ void tri_cu_kv_bump_kernel(const tri_cuda_row * rows, int n_lk) {
    tri_cu_pdl_enter();
    const tri_cuda_row row = rows[blockIdx.x];
    if (row.rank != row.n_new - 1) {
        return; /* one row per session bumps */
    }
    for (int i = threadIdx.x; i < n_lk; i += blockDim.x) {
        row.n_live[i] += row.n_new;
    }
}

extern "C" enum triattn_status tri_cuda_qkv_post(float * q, const float * k, const float * v, const float * q_norm,
                                                 const float * k_norm, const float * cs, const tri_cuda_row * rows,
                                                 int n_rows, int il, const tri_cuda_heads * hd, int n_layer,
                                                 void * stream) {
    TRI_CUDA_REQUIRE(n_rows > 0 && hd->n_head > 0 && hd->n_head_kv > 0 && hd->head_dim > 0 &&
                     hd->head_dim <= TRI_CUDA_ATT_MAX_D && hd->rope_dim > 0 && hd->rope_dim % 2 == 0 &&
                     hd->rope_dim <= hd->head_dim && (hd->pairing == 0 || hd->pairing == 1) && il >= 0 && il < n_layer);
    TRI_CUDA_REQUIRE(n_rows <= 65535);
    const dim3 grid((unsigned) (hd->n_head + 2 * hd->n_head_kv), (unsigned) n_rows);
    (void) tri_cu_launch(tri_cu_qkv_post_kernel, grid, 32, TRI_CU_STREAM(stream), q, k, v, q_norm, k_norm, cs, rows, il,
                          *hd);
    TRI_CUDA_LAUNCHED();
    return TRIATTN_OK;
}

extern "C" enum triattn_status tri_cuda_kv_bump(const tri_cuda_row * rows, int n_rows, int n_lk, void * stream) {
    TRI_CUDA_REQUIRE(n_rows > 0 && n_lk > 0);
    (void) tri_cu_launch(tri_cu_kv_bump_kernel, n_rows, 256, TRI_CU_STREAM(stream), rows, n_lk);
    TRI_CUDA_LAUNCHED();
    return TRIATTN_OK;
}
