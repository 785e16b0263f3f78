/* The host simulator's own checks (tests/test_cuda.py::test_cuda_sim_selftest): it runs kernels' threads with CUDA's
 * guarantees and no more, so that a kernel relying on more fails. */
#include <cuda_runtime.h>

#include <stdio.h>
#include <stdlib.h>

static int failures;

#define CHECK(cond, ...)                                                                                          \
    do {                                                                                                          \
        if (!(cond)) {                                                                                            \
            failures++;                                                                                           \
            printf("FAIL %s:%d: ", __FILE__, __LINE__);                                                          \
            printf(__VA_ARGS__);                                                                                  \
            printf("\n");                                                                                         \
        }                                                                                                         \
    } while (0)

/* out[t] = what thread (t + 32) % 64 stored, with or without a barrier between the store and the load. */
__global__ void exchange_kernel(int * out, bool barrier) {
    __shared__ int sh[64];
    const int t = threadIdx.x;
    sh[t] = 1000 + t + 64 * blockIdx.x;
    if (barrier) {
        __syncthreads();
    }
    out[64 * blockIdx.x + t] = sh[(t + 32) % 64];
}

/* Sum of the lane ids of each warp, by shuffles; and each lane's neighbour by __shfl_sync. */
__global__ void shuffle_kernel(int * sums, int * next) {
    int v = threadIdx.x % 32;
    for (int o = 16; o > 0; o >>= 1) {
        v += __shfl_xor_sync(0xffffffffu, v, o);
    }
    sums[threadIdx.x] = v;
    next[threadIdx.x] = __shfl_sync(0xffffffffu, (int) threadIdx.x, (threadIdx.x + 1) % 32);
}

/* Half of each warp at a warp collective, the other half at __syncthreads: a deadlock on the device. */
__global__ void divergent_kernel(int * out) {
    int v = threadIdx.x;
    if (threadIdx.x % 32 < 16) {
        v = __shfl_xor_sync(0xffffffffu, v, 1);
    }
    __syncthreads();
    out[threadIdx.x] = v;
}

__global__ void count_kernel(int * n) {
    if (threadIdx.x == 0 && blockIdx.x == 0) {
        atomicAdd(n, 1);
    }
}

int main(void) {
    int * d = NULL;
    CHECK(cudaMalloc((void **) &d, 256 * sizeof(int)) == cudaSuccess, "cudaMalloc");
    int h[256];

    /* shared memory written by other warps: wrong without the barrier (unwritten shared memory reads as NaN bits) */
    for (int barrier = 0; barrier < 2; barrier++) {
        exchange_kernel<<<4, 64>>>(d, barrier != 0);
        cudaMemcpyAsync(h, d, sizeof(int) * 256, cudaMemcpyDeviceToHost);
        CHECK(cudaStreamSynchronize(NULL) == cudaSuccess, "exchange sync");
        int bad = 0;
        for (int i = 0; i < 256; i++) {
            bad += h[i] != 1000 + (i / 64) * 64 + ((i % 64) + 32) % 64;
        }
        if (barrier) {
            CHECK(bad == 0, "with a barrier: %d of 256 values wrong", bad);
        } else {
            CHECK(bad >= 128, "without a barrier: only %d of 256 values wrong (warps must get ahead of each other)", bad);
        }
    }

    /* shuffles */
    shuffle_kernel<<<1, 96>>>(d, d + 128);
    cudaMemcpyAsync(h, d, sizeof(int) * 256, cudaMemcpyDeviceToHost);
    for (int i = 0; i < 96; i++) {
        CHECK(h[i] == 496, "warp sum of lane %d: %d", i, h[i]);
        CHECK(h[128 + i] == 32 * (i / 32) + (i + 1) % 32, "neighbour of lane %d: %d", i, h[128 + i]);
    }

    /* launch configuration */
    count_kernel<<<1, 2048>>>(d);
    CHECK(cudaGetLastError() == cudaErrorInvalidConfiguration, "2048 threads a block accepted");
    count_kernel<<<0, 32>>>(d);
    CHECK(cudaGetLastError() == cudaErrorInvalidConfiguration, "an empty grid accepted");

    /* graphs: recorded once, replayed twice; nothing runs while recording */
    cudaStream_t s;
    CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) == cudaSuccess, "stream");
    cudaMemsetAsync(d, 0, sizeof(int), s);
    CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal) == cudaSuccess, "capture");
    count_kernel<<<3, 32, 0, s>>>(d);
    cudaGraph_t g;
    cudaGraphExec_t ge;
    CHECK(cudaStreamEndCapture(s, &g) == cudaSuccess, "end capture");
    CHECK(cudaGraphInstantiate(&ge, g, 0) == cudaSuccess, "instantiate");
    cudaMemcpyAsync(h, d, sizeof(int), cudaMemcpyDeviceToHost, s);
    CHECK(h[0] == 0, "the kernel ran while it was recorded");
    cudaGraphLaunch(ge, s);
    cudaGraphLaunch(ge, s);
    cudaMemcpyAsync(h, d, sizeof(int), cudaMemcpyDeviceToHost, s);
    CHECK(h[0] == 2, "two replays counted %d", h[0]);
    cudaGraphExecDestroy(ge);
    cudaGraphDestroy(g);
    cudaStreamDestroy(s);

    /* a divergent warp collective: reported, and the failure is sticky */
    CHECK(cudaGetLastError() == cudaSuccess, "an error before the deadlock");
    divergent_kernel<<<1, 64>>>(d);
    CHECK(cudaStreamSynchronize(NULL) == cudaErrorLaunchFailure, "the deadlock went unreported");
    CHECK(cudaGetLastError() == cudaErrorLaunchFailure, "the failure is not sticky");

    cudaFree(d);
    printf("%s\n", failures ? "FAILED" : "ok");
    return failures ? 1 : 0;
}
