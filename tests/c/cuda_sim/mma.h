/* nvcuda::wmma for the host simulator (sim.h): the fp16 m16n16k16 shapes cuda/mma.cu uses. Every lane holds the
 * whole A and B tiles; lane l owns the accumulator elements e with e % 32 == l, computes and stores only those, so
 * a warp's product costs what one product costs. */
#ifndef TRI_CUDA_SIM_MMA_H
#define TRI_CUDA_SIM_MMA_H

#include "cuda_fp16.h"

namespace nvcuda {
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int M, int N, int K, typename T, typename Layout = void> struct fragment {
    static constexpr int rows = std::is_same<Use, matrix_b>::value ? K : M;
    static constexpr int cols = std::is_same<Use, matrix_a>::value ? K : N;
    enum { num_elements = rows * cols };
    T x[rows * cols]; /* [rows][cols] */
};

static inline float tri_sim_wmma_f(__half h) { return __half2float(h); }
static inline float tri_sim_wmma_f(float f) { return f; }

template <typename Use, int M, int N, int K, typename T, typename L>
static inline void fill_fragment(fragment<Use, M, N, K, T, L> & f, float v) {
    for (int e = 0; e < f.num_elements; e++) {
        f.x[e] = (T) v;
    }
}

/* A or B tile from memory in the fragment's layout. */
template <typename Use, int M, int N, int K, typename T, typename L>
static inline void load_matrix_sync(fragment<Use, M, N, K, T, L> & f, const T * p, unsigned ldm) {
    typedef fragment<Use, M, N, K, T, L> F;
    for (int r = 0; r < F::rows; r++) {
        for (int c = 0; c < F::cols; c++) {
            f.x[r * F::cols + c] = std::is_same<L, row_major>::value ? p[(size_t) r * ldm + c] : p[(size_t) c * ldm + r];
        }
    }
    tri_sim_barrier_warp(); /* a collective: the warp's lanes meet, after reading (no ordering of earlier stores) */
}

template <int M, int N, int K, typename TA, typename LA, typename TB, typename LB, typename TC>
static inline void mma_sync(fragment<accumulator, M, N, K, TC> & d, const fragment<matrix_a, M, N, K, TA, LA> & a,
                            const fragment<matrix_b, M, N, K, TB, LB> & b, const fragment<accumulator, M, N, K, TC> & c) {
    tri_sim_barrier_warp();
    for (int e = tri_sim_cur->lane; e < M * N; e += 32) {
        const int m = e / N, n = e % N;
        float s = tri_sim_wmma_f(c.x[e]);
        for (int k = 0; k < K; k++) {
            s += tri_sim_wmma_f(a.x[m * K + k]) * tri_sim_wmma_f(b.x[k * N + n]);
        }
        d.x[e] = (TC) s;
    }
}

template <int M, int N, int K, typename T>
static inline void store_matrix_sync(T * p, const fragment<accumulator, M, N, K, T> & f, unsigned ldm, layout_t l) {
    for (int e = tri_sim_cur->lane; e < M * N; e += 32) {
        const int m = e / N, n = e % N;
        p[l == mem_row_major ? (size_t) m * ldm + n : (size_t) n * ldm + m] = f.x[e];
    }
    tri_sim_barrier_warp();
}

} // namespace wmma
} // namespace nvcuda

#endif
