/* Split attention (see attention.cuh): partial (max, sum, weighted V) per slot range, then an in-order merge. */
#include "amerge.h"
#include "atile.h"
#include "attention.cuh"
#include "common.cuh"
#include "ptx.cuh"

#define TRI_ATT_THREADS 128
#define TRI_ATT_TILE    TRI_AT_SLOTS
#define TRI_ATT_GMAX    8   /* query heads per block */
#define TRI_ATT_MERGE   64  /* threads of the merge */
#define TRI_ATT_LOADS   8   /* global loads a thread issues before it uses the first */
#define TRI_ATT_MMA_WARPS 4 /* warps of the tensor-core kernel, 16 query rows each */

static_assert(TRI_CUDA_ATT_TICKETS(TRI_ATT_GMAX + 1, 1) == 2, "a part counter per group of TRI_ATT_GMAX heads");
static_assert(TRI_ATT_MMA_WARPS * TRI_AT_ROWS == TRI_CUDA_ATT_CHUNK_ROWS, "flat rows of a tensor-core block");
static_assert(TRI_ATT_TILE == 64 && TRI_ATT_THREADS == 2 * TRI_ATT_TILE && TRI_CUDA_ATT_MAX_D <= TRI_ATT_THREADS * 2,
              "the fp32 kernel: a thread per (slot, head parity), two slots a lane in the softmax, a column pair each");
static_assert(TRI_ATT_GMAX * (TRI_CUDA_ATT_MAX_PARTS + 2) <= TRI_ATT_GMAX * TRI_CUDA_ATT_MAX_D,
              "the partial kernel's query rows hold a merge's scratch");

struct tri_cu_att_args {
    const float *        q;
    const tri_cuda_row * rows;
    float *              part;
    float *              out;
    int *                tickets;
    int                  il, H, Hkv, D, parts, head_groups;
    float                scale;
};

/* Threads tid < nth of the block merge, for each of nh query heads g, the parts pr + g * hs [parts][D + 2] into
 * out + g * D (amerge.h): a warp per head for the weights, then a thread per (head, column). sh: nh * (parts + 2)
 * words of shared memory. Every thread of the block calls it. */
static_assert(TRI_CUDA_ATT_MAX_PARTS <= 32 * TRI_AM_PARTS_LANE, "a warp holds a head's parts");
__device__ void tri_cu_att_merge(const float * pr, size_t hs, int nh, int parts, int D, float * out, int tid, int nth,
                                 float * sh) {
    float * w = sh;                  /* [nh][parts] */
    float * inv = sh + nh * parts;   /* [nh]: 1 / the weighted sum of l */
    int * used = (int *) (inv + nh); /* [nh]: 1 + the last non-empty part */
    const int lane = tid & 31, warp = tid >> 5;
    __syncthreads(); /* sh is free */
    for (int g = warp; g < nh; g += nth / 32) {
        float m[TRI_AM_PARTS_LANE], l[TRI_AM_PARTS_LANE], mx;
        int u;
        tri_am_lane_parts(pr + g * hs, parts, D, lane, m, l, &mx, &u);
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
            u = max(u, __shfl_xor_sync(0xffffffffu, u, o));
        }
        const float t = tri_cu_warp_sum(tri_am_lane_weights(m, l, mx, u, lane, w + g * parts));
        if (lane == 0) {
            inv[g] = t > 0.0f ? 1.0f / t : 0.0f;
            used[g] = u;
        }
    }
    __syncthreads();
    for (int e = tid; e < nh * D; e += nth) {
        const int g = e / D, d = e - g * D;
        out[(size_t) g * D + d] = tri_am_column(pr + g * hs + d, w + g * parts, used[g], D, inv[g]);
    }
    __syncthreads(); /* sh may be reused */
}

/* After a block stored its part: the block storing the last of the parts counted in tickets[i] merges the parts of
 * query heads hq0 .. hq0 + nh - 1 of row r into a.out and sets the count back to 0 for the next launch. sh: nh *
 * (a.parts + 2) words (tri_cu_att_merge). Every thread of the block calls it. */
__device__ void tri_cu_att_last_merges(const tri_cu_att_args & a, size_t i, int r, int hq0, int nh, float * sh) {
    __shared__ int last;
    __threadfence(); /* this block's part is visible device-wide before its ticket */
    __syncthreads();
    if (threadIdx.x == 0) {
        last = atomicAdd(a.tickets + i, 1) == a.parts - 1;
        if (last) {
            atomicExch(a.tickets + i, 0);
        }
    }
    __syncthreads();
    if (!last) {
        return;
    }
    __threadfence();
    const size_t row = (size_t) r * a.H + hq0, hs = (size_t) a.parts * (a.D + 2);
    tri_cu_att_merge(a.part + row * hs, hs, nh, a.parts, a.D, a.out + row * a.D, threadIdx.x, blockDim.x, sh);
}

/* grid: x = part, y = KV head * head_groups + group, z = row. Partial of query head g: acc[D], m, l. */
__global__ void __launch_bounds__(TRI_ATT_THREADS) tri_cu_att_partial_kernel(const tri_cu_att_args a) {
    tri_cu_pdl_enter();
    __shared__ float qs[TRI_ATT_GMAX][TRI_CUDA_ATT_MAX_D];
    __shared__ float s[TRI_ATT_GMAX][TRI_ATT_TILE];
    __shared__ float m_run[TRI_ATT_GMAX], l_run[TRI_ATT_GMAX], corr[TRI_ATT_GMAX];
    __shared__ int range[2];
    const int p = blockIdx.x, h = blockIdx.y / a.head_groups, hg = blockIdx.y % a.head_groups, r = blockIdx.z;
    const int G = a.H / a.Hkv, g0 = hg * TRI_ATT_GMAX, Gb = min(TRI_ATT_GMAX, G - g0);
    const int D = a.D, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const tri_cuda_row row = a.rows[r];
    const size_t lh = (size_t) a.il * a.Hkv + h;
    const __half * K = (const __half *) row.K + lh * row.cap * D;
    const __half * V = (const __half *) row.V + lh * row.cap * D;
    if (tid == 0) {
        /* the slots at positions <= the row's: every slot live before the step (all at earlier positions) and
         * the step's own rows up to this one, which the step appends in order (kv.cu) */
        const int n_valid = min(row.n_live[lh] + row.rank + 1, row.cap);
        /* whole tiles per part: a short cache fills the first parts and leaves the rest empty, whatever the
         * part count the step was recorded with */
        tri_at_range(n_valid, a.parts, p, &range[0], &range[1]);
    }
    for (int e = tid; e < Gb * D; e += TRI_ATT_THREADS) {
        const int g = e / D, d = e % D;
        qs[g][d] = a.q[((size_t) r * a.H + h * G + g0 + g) * D + d] * a.scale;
    }
    if (tid < TRI_ATT_GMAX) {
        m_run[tid] = -INFINITY;
        l_run[tid] = 0.0f;
    }
    __syncthreads();
    /* an empty part (j0 >= j1) runs no tile and stores m = -inf, l = 0: the merge skips it */
    const int j0 = range[0], j1 = range[1];
    /* V accumulators: thread (column pair cp, slot group sg) */
    const int cols = D / 2, groups = TRI_ATT_THREADS / cols;
    const int cp = tid % cols, sg = tid / cols;
    float acc[TRI_ATT_GMAX][2];
#pragma unroll
    for (int g = 0; g < TRI_ATT_GMAX; g++) {
        acc[g][0] = acc[g][1] = 0.0f;
    }
    for (int jt = j0; jt < j1; jt += TRI_ATT_TILE) {
        const int nt = min(TRI_ATT_TILE, j1 - jt);
        /* scores: thread (slot jj, heads of parity gp) */
        {
            const int jj = tid % TRI_ATT_TILE, gp = tid / TRI_ATT_TILE;
            float sc[TRI_ATT_GMAX / 2];
#pragma unroll
            for (int i = 0; i < TRI_ATT_GMAX / 2; i++) {
                sc[i] = 0.0f;
            }
            if (jj < nt) {
                const int4 * kr = (const int4 *) (K + (size_t) (jt + jj) * D);
                /* the key's 16-byte pieces in batches of TRI_ATT_LOADS, all loads of a batch issued before use */
                for (int d0 = 0; d0 < D / 8; d0 += TRI_ATT_LOADS) {
                    int4 raw[TRI_ATT_LOADS];
#pragma unroll
                    for (int u = 0; u < TRI_ATT_LOADS; u++) {
                        raw[u] = d0 + u < D / 8 ? kr[d0 + u] : make_int4(0, 0, 0, 0);
                    }
#pragma unroll
                    for (int u = 0; u < TRI_ATT_LOADS; u++) {
                        const int d8 = d0 + u;
                        if (d8 >= D / 8) {
                            break;
                        }
                        const __half2 * kh = (const __half2 *) &raw[u];
                        float kf[8];
#pragma unroll
                        for (int i = 0; i < 4; i++) {
                            const float2 f = __half22float2(kh[i]);
                            kf[2 * i] = f.x;
                            kf[2 * i + 1] = f.y;
                        }
#pragma unroll
                        for (int i = 0; i < TRI_ATT_GMAX / 2; i++) {
                            const int g = gp + 2 * i;
                            if (g < Gb) {
                                const float * qg = &qs[g][8 * d8];
#pragma unroll
                                for (int e = 0; e < 8; e++) {
                                    sc[i] += qg[e] * kf[e];
                                }
                            }
                        }
                    }
                }
            }
#pragma unroll
            for (int i = 0; i < TRI_ATT_GMAX / 2; i++) {
                const int g = gp + 2 * i;
                if (g < Gb) {
                    s[g][jj] = jj < nt ? sc[i] : -INFINITY;
                }
            }
        }
        __syncthreads();
        /* online softmax: warp w updates heads w, w + 4 */
        for (int g = warp; g < Gb; g += TRI_ATT_THREADS / 32) {
            const float a0 = s[g][lane], a1 = s[g][lane + 32];
            float mx = fmaxf(a0, a1);
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) {
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
            }
            const float m_new = fmaxf(m_run[g], mx);
            const float e0 = expf(a0 - m_new), e1 = expf(a1 - m_new);
            s[g][lane] = e0;
            s[g][lane + 32] = e1;
            const float sum = tri_cu_warp_sum(e0 + e1);
            if (lane == 0) {
                const float c = expf(m_run[g] - m_new); /* 0 on the first tile */
                corr[g] = c;
                l_run[g] = l_run[g] * c + sum;
                m_run[g] = m_new;
            }
        }
        __syncthreads();
        /* weighted V */
#pragma unroll
        for (int g = 0; g < TRI_ATT_GMAX; g++) {
            if (g < Gb) {
                acc[g][0] *= corr[g];
                acc[g][1] *= corr[g];
            }
        }
        /* TRI_ATT_LOADS slots' values loaded at once; threads past the last slot group idle */
        for (int jb = sg < groups ? sg : nt; jb < nt; jb += TRI_ATT_LOADS * groups) {
            float2 vv[TRI_ATT_LOADS];
#pragma unroll
            for (int u = 0; u < TRI_ATT_LOADS; u++) {
                const int jj = jb + u * groups;
                const __half2 * vr = (const __half2 *) (V + (size_t) (jt + jj) * D);
                vv[u] = jj < nt ? __half22float2(vr[cp]) : make_float2(0.0f, 0.0f);
            }
#pragma unroll
            for (int u = 0; u < TRI_ATT_LOADS; u++) {
                const int jj = jb + u * groups;
                if (jj >= nt) {
                    break;
                }
#pragma unroll
                for (int g = 0; g < TRI_ATT_GMAX; g++) {
                    if (g < Gb) {
                        const float w = s[g][jj];
                        acc[g][0] += w * vv[u].x;
                        acc[g][1] += w * vv[u].y;
                    }
                }
            }
        }
        __syncthreads(); /* s is rewritten by the next tile */
    }
    /* combine the slot groups through shared memory (qs is free now) */
    float * red = &qs[0][0]; /* [groups][Gb][D] <= TRI_ATT_GMAX * MAX_D floats */
    for (int k = 1; k < groups; k++) {
        if (sg == k) {
            for (int g = 0; g < Gb; g++) {
                red[((k - 1) * Gb + g) * D + 2 * cp] = acc[g][0];
                red[((k - 1) * Gb + g) * D + 2 * cp + 1] = acc[g][1];
            }
        }
    }
    __syncthreads();
    if (sg == 0) {
        for (int g = 0; g < Gb; g++) {
            float o0 = acc[g][0], o1 = acc[g][1];
            for (int k = 1; k < groups; k++) {
                o0 += red[((k - 1) * Gb + g) * D + 2 * cp];
                o1 += red[((k - 1) * Gb + g) * D + 2 * cp + 1];
            }
            float * out = a.part + (((size_t) r * a.H + h * G + g0 + g) * a.parts + p) * (D + 2);
            out[2 * cp] = o0;
            out[2 * cp + 1] = o1;
            if (cp == 0) {
                out[D] = m_run[g];
                out[D + 1] = l_run[g];
            }
        }
    }
    if (a.tickets) { /* the last of the row's parts to finish merges them */
        tri_cu_att_last_merges(a, (size_t) r * gridDim.y + blockIdx.y, r, h * G + g0, Gb, &qs[0][0]);
    }
}

/* One session's chunk of rows on tensor cores (atile.h). The chunk's (token, query head) pairs of KV head h,
 * token-major, are the block's "flat rows": 16 per warp, TRI_ATT_MMA_WARPS warps. The block reads each K/V tile
 * once into shared memory for all of them and takes the slots of part p up to the last flat row's limit; every
 * row masks the slots past its own (n_live + rank + 1). grid: x = part, y = KV head, z = block of flat rows. */
template <int D>
__global__ void __launch_bounds__(TRI_ATT_MMA_WARPS * 32) tri_cu_att_mma_kernel(const tri_cu_att_args a, int n_rows) {
    tri_cu_pdl_enter();
    __shared__ __align__(16) uint16_t Ks[TRI_AT_SLOTS * TRI_AT_KLD(D)];
    __shared__ __align__(16) uint16_t Vt[D * TRI_AT_VLD];
    constexpr int FB = TRI_CUDA_ATT_CHUNK_ROWS; /* flat rows per block */
    const int p = blockIdx.x, h = blockIdx.y, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int G = a.H / a.Hkv, nf = n_rows * G, f0 = blockIdx.z * FB, fw = f0 + warp * TRI_AT_ROWS;
    const tri_cuda_row first = a.rows[f0 / G];
    const size_t lh = (size_t) a.il * a.Hkv + h;
    const int live = first.n_live[lh], cap = first.cap;
    const __half * K = (const __half *) first.K + lh * cap * D;
    const __half * V = (const __half *) first.V + lh * cap * D;
    int j0, j1;
    tri_at_range(min(live + a.rows[(min(f0 + FB, nf) - 1) / G].rank + 1, cap), a.parts, p, &j0, &j1);
    /* the lane's rows g and g + 8 of the warp's 16: query, visible slots of this part, output */
    const float * qr[2] = { NULL, NULL };
    float * outp[2] = { NULL, NULL };
    int lim[2] = { 0, 0 };
#pragma unroll
    for (int r = 0; r < 2; r++) {
        const int f = fw + (lane >> 2) + 8 * r;
        if (f < nf) {
            const int t = f / G, hq = h * G + f % G;
            qr[r] = a.q + ((size_t) t * a.H + hq) * D;
            lim[r] = min(min(live + a.rows[t].rank + 1, cap), j1);
            outp[r] = a.part + (((size_t) t * a.H + hq) * a.parts + p) * (D + 2);
        }
    }
    /* the warp's last row sees the most slots */
    const int fl = min(fw + TRI_AT_ROWS, nf) - 1;
    const int wlim = fl >= fw ? min(min(live + a.rows[fl / G].rank + 1, cap), j1) : 0;
    uint32_t qa[D / 16][4];
#pragma unroll
    for (int ks = 0; ks < D / 16; ks++) {
        tri_at_q_frag(qr[0], qr[1], ks, lane, a.scale, qa[ks]);
    }
    tri_at_run run = { { -INFINITY, -INFINITY }, { 0.0f, 0.0f } };
    float o[D / 8][4];
#pragma unroll
    for (int dt = 0; dt < D / 8; dt++) {
        o[dt][0] = o[dt][1] = o[dt][2] = o[dt][3] = 0.0f;
    }
    for (int jt = j0; jt < j1; jt += TRI_AT_SLOTS) {
        __syncthreads(); /* the last tile's readers are done */
        tri_at_load((const uint16_t *) K, (const uint16_t *) V, jt, min(TRI_AT_SLOTS, j1 - jt), D, tid,
                    TRI_ATT_MMA_WARPS * 32, Ks, Vt);
        __syncthreads();
        if (jt >= wlim) { /* none of the warp's rows sees these slots (uniform over the warp) */
            continue;
        }
        float s[TRI_AT_SLOTS / 8][4];
#pragma unroll
        for (int nt = 0; nt < TRI_AT_SLOTS / 8; nt++) {
            s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
        }
#pragma unroll
        for (int ks = 0; ks < D / 16; ks++) {
#pragma unroll
            for (int nt = 0; nt < TRI_AT_SLOTS / 8; nt++) {
                uint32_t b[2];
                tri_at_k_frag(Ks, D, nt, ks, lane, b);
                tri_cu_hmma16(s[nt], qa[ks], b);
            }
        }
        float mx[2], corr[2];
        tri_at_mask_max(s, jt, lim, lane, mx);
#pragma unroll
        for (int r = 0; r < 2; r++) {
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
        }
        uint32_t pf[TRI_AT_SLOTS / 16][4];
        tri_at_softmax(s, mx, &run, corr, pf);
        tri_at_rescale(o, D / 8, corr);
#pragma unroll
        for (int kk = 0; kk < TRI_AT_SLOTS / 16; kk++) {
#pragma unroll
            for (int dt = 0; dt < D / 8; dt++) {
                uint32_t b[2];
                tri_at_v_frag(Vt, dt, kk, lane, b);
                tri_cu_hmma16(o[dt], pf[kk], b);
            }
        }
    }
#pragma unroll
    for (int r = 0; r < 2; r++) {
        run.l[r] += __shfl_xor_sync(0xffffffffu, run.l[r], 1);
        run.l[r] += __shfl_xor_sync(0xffffffffu, run.l[r], 2);
        if (outp[r]) {
            tri_at_store(outp[r], o, D, r, &run, lane);
        }
    }
}

/* grid.x = n_rows * n_head, TRI_ATT_MERGE threads: merges the parts of one (row, head) (the tensor-core kernel's). */
__global__ void __launch_bounds__(TRI_ATT_MERGE) tri_cu_att_merge_kernel(const float * part, int parts, int D,
                                                                          float * out) {
    tri_cu_pdl_enter();
    __shared__ float sh[TRI_CUDA_ATT_MAX_PARTS + 2];
    const size_t row = blockIdx.x;
    tri_cu_att_merge(part + row * parts * (D + 2), 0, 1, parts, D, out + row * D, threadIdx.x, TRI_ATT_MERGE, sh);
}

extern "C" enum triattn_status tri_cuda_attention(const float * q, const tri_cuda_row * rows, int n_rows, int il,
                                                  int n_head, int n_head_kv, int D, float scale, int parts,
                                                  bool chunk, float * part, int * tickets, float * out,
                                                  void * stream) {
    TRI_CUDA_REQUIRE(n_rows > 0 && n_rows <= 65535 && n_head > 0 && n_head_kv > 0 && n_head % n_head_kv == 0 &&
                     D >= 16 && D <= TRI_CUDA_ATT_MAX_D && D % 16 == 0 && parts > 0 && parts <= TRI_CUDA_ATT_MAX_PARTS &&
                     il >= 0);
    tri_cu_att_args a;
    a.q = q;
    a.rows = rows;
    a.part = part;
    a.out = out;
    a.tickets = tickets;
    a.il = il;
    a.H = n_head;
    a.Hkv = n_head_kv;
    a.D = D;
    a.parts = parts;
    a.head_groups = (n_head / n_head_kv + TRI_ATT_GMAX - 1) / TRI_ATT_GMAX;
    a.scale = scale;
    const bool mma = chunk && TRI_CUDA_ATT_MMA_D(D);
    if (mma) {
        const int64_t blocks = ((int64_t) n_rows * (n_head / n_head_kv) + TRI_CUDA_ATT_CHUNK_ROWS - 1) /
                               TRI_CUDA_ATT_CHUNK_ROWS;
        TRI_CUDA_REQUIRE(blocks <= 65535 && n_head_kv <= 65535);
        const dim3 grid((unsigned) parts, (unsigned) n_head_kv, (unsigned) blocks);
        (void) tri_cu_launch(D == 64 ? tri_cu_att_mma_kernel<64> : tri_cu_att_mma_kernel<128>, grid,
                             TRI_ATT_MMA_WARPS * 32, TRI_CU_STREAM(stream), a, n_rows);
    } else { /* with tickets the last block of each (row, KV head, group) merges: one launch */
        TRI_CUDA_REQUIRE((int64_t) n_head_kv * a.head_groups <= 65535);
        const dim3 grid((unsigned) parts, (unsigned) (n_head_kv * a.head_groups), (unsigned) n_rows);
        (void) tri_cu_launch(tri_cu_att_partial_kernel, grid, TRI_ATT_THREADS, TRI_CU_STREAM(stream), a);
    }
    TRI_CUDA_LAUNCHED();
    if (mma || !tickets) {
        (void) tri_cu_launch(tri_cu_att_merge_kernel, (unsigned) n_rows * n_head, TRI_ATT_MERGE,
                             TRI_CU_STREAM(stream), (const float *) part, parts, D, out);
        TRI_CUDA_LAUNCHED();
    }
    return TRIATTN_OK;
}
