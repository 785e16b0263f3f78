/* A host simulator for the kernels of cuda/<op>.cu (tests only, docs/cuda.md "Tests").
 *
 * The kernels' own source, compiled as C++ by the host compiler: every thread of a block is a fiber with its own
 * stack, blocks run one after another in a random order, and the threads of a block run in a random order between
 * the points where CUDA lets them wait for each other (__syncthreads, __syncwarp, warp shuffles, warp-wide mma).
 * A thread reading shared memory that another thread writes without a barrier between them, a barrier that not all
 * threads reach, or a warp collective called by a divergent warp shows up as a wrong result or a reported deadlock.
 * Device memory is host memory (new allocations are filled with NaN bits); a kernel's out-of-bounds access is the
 * host's (run under ASan to catch it). The simulator implements the part of the CUDA runtime the backend uses. */
#ifndef TRI_CUDA_SIM_H
#define TRI_CUDA_SIM_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <functional>
#include <tuple>
#include <type_traits>
#include <utility>

#include "../ptx_mma.h"

#define __global__
#define __device__
#define __host__
#define __forceinline__     inline __attribute__((always_inline))
#define __launch_bounds__(...)
#define __align__(n)        __attribute__((aligned(n)))
/* translate.py turns each __shared__ declaration into a static (one block runs at a time: the block's copy) and a
 * call of tri_sim_shared_fresh. */
#define __shared__          static

struct uint3 {
    unsigned x, y, z;
};
struct dim3 {
    unsigned x, y, z;
    dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct alignas(8) int2 { int x, y; };
struct alignas(16) int4 { int x, y, z, w; };
struct alignas(16) uint4 { unsigned x, y, z, w; };
struct alignas(8) float2 { float x, y; };
struct alignas(16) float4 { float x, y, z, w; };
static inline int4 make_int4(int x, int y, int z, int w) { return int4{ x, y, z, w }; }
static inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return uint4{ x, y, z, w }; }
static inline float2 make_float2(float x, float y) { return float2{ x, y }; }
static inline float4 make_float4(float x, float y, float z, float w) { return float4{ x, y, z, w }; }

/* ---- the running thread ---- */

struct tri_sim_thread {
    uint3    idx;
    int      lane, warp;  /* warp: index in the block */
    int      state;       /* tri_sim_state */
    uint64_t gen_warp;    /* warp barriers passed: its parity picks the exchange buffer */
    uint64_t slot[2];     /* a shuffle's value */
    uint32_t regs[2][6];  /* an mma's fragment: A's registers 0..3, B's 4..5 */
};

extern tri_sim_thread * tri_sim_cur;
extern tri_sim_thread * tri_sim_threads; /* the running block's */
extern int              tri_sim_n_threads;
extern uint3            tri_sim_block_idx;
extern dim3             tri_sim_block_dim, tri_sim_grid_dim;

#define threadIdx (tri_sim_cur->idx)
#define blockIdx  tri_sim_block_idx
#define blockDim  tri_sim_block_dim
#define gridDim   tri_sim_grid_dim
#define warpSize  32

/* Waits until every live thread of the block (warp) has reached its barrier as often as this one. */
void tri_sim_barrier_block(void);
void tri_sim_barrier_warp(void);
/* The thread of the calling thread's warp at lane (NULL past the block's last thread). A lane that has ended keeps
 * what it published last. */
static inline tri_sim_thread * tri_sim_lane(int lane) {
    const int i = tri_sim_cur->warp * 32 + lane;
    return i < tri_sim_n_threads ? &tri_sim_threads[i] : nullptr;
}

/* The exchange buffer of the current warp step: a value written to it is read by the warp's other lanes after the
 * next warp barrier; the step after that uses the other buffer, so one barrier an exchange suffices. */
static inline int tri_sim_buf(void) {
    return (int) (tri_sim_cur->gen_warp & 1);
}

static inline void __syncthreads(void) { tri_sim_barrier_block(); }
static inline void __syncwarp(unsigned mask = 0xffffffffu) { (void) mask; tri_sim_barrier_warp(); }
static inline void __threadfence(void) {}

/* Every lane publishes v, then reads lane src's value. */
template <typename T> static inline T tri_sim_shfl(T v, int src) {
    static_assert(sizeof(T) <= 8, "shuffles move up to 8 bytes");
    const int b = tri_sim_buf();
    memcpy(&tri_sim_cur->slot[b], &v, sizeof v);
    tri_sim_barrier_warp();
    const tri_sim_thread * t = tri_sim_lane(src & 31);
    T r = v;
    if (t) {
        memcpy(&r, &t->slot[b], sizeof r);
    }
    return r;
}
template <typename T> static inline T __shfl_xor_sync(unsigned mask, T v, int o, int width = 32) {
    (void) mask;
    const int lane = tri_sim_cur->lane;
    return tri_sim_shfl(v, (lane & ~(width - 1)) | ((lane ^ o) & (width - 1)));
}
template <typename T> static inline T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
    (void) mask;
    return tri_sim_shfl(v, (tri_sim_cur->lane & ~(width - 1)) | (src & (width - 1)));
}
/* ---- atomics: fibers switch only at barriers, so a plain update is atomic ---- */

template <typename T> static inline T atomicAdd(T * p, T v) { const T o = *p; *p = o + v; return o; }
template <typename T> static inline T atomicExch(T * p, T v) { const T o = *p; *p = v; return o; }

/* ---- arithmetic and loads ---- */

static inline int max(int a, int b) { return a > b ? a : b; }
static inline int min(int a, int b) { return a < b ? a : b; }
static inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
static inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
static inline long long max(long long a, long long b) { return a > b ? a : b; }
static inline long long min(long long a, long long b) { return a < b ? a : b; }
static inline int64_t max(int64_t a, int64_t b) { return a > b ? a : b; }
static inline int64_t min(int64_t a, int64_t b) { return a < b ? a : b; }
static inline float __int_as_float(int i) { float f; memcpy(&f, &i, 4); return f; }
static inline float __uint_as_float(unsigned i) { float f; memcpy(&f, &i, 4); return f; }
static inline unsigned __float_as_uint(float f) { unsigned i; memcpy(&i, &f, 4); return i; }
static inline int __dp4a(int a, int b, int c) { return tri_ptx_dp4a((uint32_t) a, (uint32_t) b, c); }
template <typename T> static inline T __ldg(const T * p) { return *p; }
template <typename T> static inline T __ldcg(const T * p) { return *p; }

/* ---- launches ---- */

/* Fills the shared variable at p with NaN bits the first time a thread of the running block calls it. */
void tri_sim_shared_fresh(void * p, size_t bytes);
/* Dynamic shared memory of the running block. */
void * tri_sim_dyn_smem(void);

typedef struct tri_sim_stream * cudaStream_t;

/* Runs body (one thread's call of the kernel) for every thread of the grid, or records it into the capturing
 * stream's graph. Returns the launch's error (cudaError_t as int). */
int tri_sim_launch_fn(dim3 grid, dim3 block, size_t smem, cudaStream_t s, std::function<void()> body);

template <typename... P, typename... A>
static inline int tri_sim_launch_kernel(void (*k)(P...), dim3 grid, dim3 block, size_t smem, cudaStream_t s,
                                        A &&... args) {
    std::tuple<typename std::decay<P>::type...> a(std::forward<A>(args)...);
    return tri_sim_launch_fn(grid, block, smem, s, [k, a]() { std::apply(k, a); });
}

/* kernel<<<grid, block, smem, stream>>>(args) is rewritten as tri_sim_launch(kernel, grid, block, smem,
 * stream)(args) (translate.py). */
template <typename F> struct tri_sim_launcher {
    F            k;
    dim3         grid, block;
    size_t       smem;
    cudaStream_t s;
    template <typename... A> void operator()(A &&... args) const {
        (void) tri_sim_launch_kernel(k, grid, block, smem, s, std::forward<A>(args)...);
    }
};
template <typename F>
static inline tri_sim_launcher<F> tri_sim_launch(F k, dim3 grid, dim3 block, size_t smem = 0, cudaStream_t s = nullptr) {
    return tri_sim_launcher<F>{ k, grid, block, smem, s };
}

#endif
