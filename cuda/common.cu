/* CUDA runtime helpers: device discovery, memory, streams, and the per-thread last error. */
#include "tri_cuda.h"
#include "common.cuh"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static __thread char tri_cuda_msg[512];

extern "C" enum triattn_status tri_cuda_fail(cudaError_t e, const char * what, const char * file, int line) {
    const char * base = strrchr(file, '/');
    snprintf(tri_cuda_msg, sizeof tri_cuda_msg, "%s: %s (%s:%d)", what, cudaGetErrorString(e), base ? base + 1 : file,
             line);
    (void) cudaGetLastError(); /* clear a non-sticky error so later calls report their own */
    return e == cudaErrorMemoryAllocation ? TRIATTN_ERR_OOM : TRIATTN_ERR_INTERNAL;
}

extern "C" const char * tri_cuda_last_error(void) {
    return tri_cuda_msg;
}

extern "C" int tri_cuda_device_count(char * why, size_t n) {
    int count = 0;
    const cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess) {
        if (why && n) {
            snprintf(why, n, "%s%s", cudaGetErrorString(e),
                     e == cudaErrorInsufficientDriver ? ": no NVIDIA driver was found, or it is older than this CUDA "
                                                        "runtime needs" : "");
        }
        (void) cudaGetLastError();
        return 0;
    }
    if (count <= 0 && why && n) {
        snprintf(why, n, "no CUDA device found");
    }
    return count > 0 ? count : 0;
}

extern "C" enum triattn_status tri_cuda_set_device(int dev) {
    TRI_CUDA_CHECK(cudaSetDevice(dev));
    return TRIATTN_OK;
}

extern "C" enum triattn_status tri_cuda_device_name(int dev, char * buf, size_t n) {
    cudaDeviceProp p;
    TRI_CUDA_CHECK(cudaGetDeviceProperties(&p, dev));
    snprintf(buf, n, "%s (sm_%d%d, %.1f GiB)", p.name, p.major, p.minor, p.totalGlobalMem / 1073741824.0);
    return TRIATTN_OK;
}

extern "C" enum triattn_status tri_cuda_malloc(void ** p, size_t bytes) {
    *p = NULL;
    TRI_CUDA_CHECK(cudaMalloc(p, bytes ? bytes : 1));
    return TRIATTN_OK;
}

extern "C" void tri_cuda_free(void * p) {
    if (p) {
        (void) cudaFree(p);
    }
}

extern "C" enum triattn_status tri_cuda_host_alloc(void ** p, size_t bytes) {
    *p = NULL;
    TRI_CUDA_CHECK(cudaMallocHost(p, bytes ? bytes : 1));
    return TRIATTN_OK;
}

extern "C" void tri_cuda_host_free(void * p) {
    if (p) {
        (void) cudaFreeHost(p);
    }
}

extern "C" enum triattn_status tri_cuda_memset(void * p, int value, size_t bytes, tri_cuda_stream s) {
    TRI_CUDA_CHECK(cudaMemsetAsync(p, value, bytes, TRI_CU_STREAM(s)));
    return TRIATTN_OK;
}

extern "C" enum triattn_status tri_cuda_h2d(void * dst, const void * src, size_t bytes, tri_cuda_stream s) {
    if (bytes) {
        TRI_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, TRI_CU_STREAM(s)));
    }
    return TRIATTN_OK;
}

extern "C" enum triattn_status tri_cuda_d2h(void * dst, const void * src, size_t bytes, tri_cuda_stream s) {
    if (bytes) {
        TRI_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, TRI_CU_STREAM(s)));
    }
    return TRIATTN_OK;
}

extern "C" enum triattn_status tri_cuda_d2d(void * dst, const void * src, size_t bytes, tri_cuda_stream s) {
    if (bytes) {
        TRI_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, TRI_CU_STREAM(s)));
    }
    return TRIATTN_OK;
}

extern "C" enum triattn_status tri_cuda_stream_create(tri_cuda_stream * s) {
    cudaStream_t st = NULL;
    *s = NULL;
    TRI_CUDA_CHECK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    *s = (tri_cuda_stream) st;
    return TRIATTN_OK;
}

extern "C" void tri_cuda_stream_destroy(tri_cuda_stream s) {
    if (s) {
        (void) cudaStreamDestroy(TRI_CU_STREAM(s));
    }
}

extern "C" enum triattn_status tri_cuda_sync(tri_cuda_stream s) {
    TRI_CUDA_CHECK(cudaStreamSynchronize(TRI_CU_STREAM(s)));
    TRI_CUDA_CHECK(cudaGetLastError());
    return TRIATTN_OK;
}

extern "C" enum triattn_status tri_cuda_mem_info(size_t * free_bytes, size_t * total_bytes) {
    TRI_CUDA_CHECK(cudaMemGetInfo(free_bytes, total_bytes));
    return TRIATTN_OK;
}

extern "C" bool tri_cuda_pdl(void) {
    static const bool on = [] {
        int dev = 0, major = 0;
        if (!tri_cuda_env_flag("TRIATTN_CUDA_PDL", true)) {
            return false;
        }
        if (cudaGetDevice(&dev) != cudaSuccess ||
            cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess) {
            (void) cudaGetLastError();
            return false;
        }
        return major >= 9;
    }();
    return on;
}

extern "C" int tri_cuda_sm_count(void) {
    int dev = 0, n = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess) {
        (void) cudaGetLastError();
        return 0;
    }
    return n;
}

extern "C" enum triattn_status tri_cuda_graph_begin(tri_cuda_stream s) {
    TRI_CUDA_CHECK(cudaStreamBeginCapture(TRI_CU_STREAM(s), cudaStreamCaptureModeThreadLocal));
    return TRIATTN_OK;
}

extern "C" enum triattn_status tri_cuda_graph_end(tri_cuda_stream s, void ** exec) {
    *exec = NULL;
    cudaGraph_t graph = NULL;
    TRI_CUDA_CHECK(cudaStreamEndCapture(TRI_CU_STREAM(s), &graph));
    cudaGraphExec_t ge = NULL;
    const cudaError_t e = cudaGraphInstantiate(&ge, graph, 0);
    (void) cudaGraphDestroy(graph);
    TRI_CUDA_CHECK(e);
    *exec = (void *) ge;
    return TRIATTN_OK;
}

extern "C" enum triattn_status tri_cuda_graph_launch(void * exec, tri_cuda_stream s) {
    TRI_CUDA_CHECK(cudaGraphLaunch((cudaGraphExec_t) exec, TRI_CU_STREAM(s)));
    return TRIATTN_OK;
}

extern "C" void tri_cuda_graph_destroy(void * exec) {
    if (exec) {
        (void) cudaGraphExecDestroy((cudaGraphExec_t) exec);
    }
}

extern "C" enum triattn_status tri_cuda_event_create(void ** ev) {
    cudaEvent_t e = NULL;
    TRI_CUDA_CHECK(cudaEventCreate(&e));
    *ev = e;
    return TRIATTN_OK;
}

extern "C" enum triattn_status tri_cuda_event_record(void * ev, tri_cuda_stream s) {
    TRI_CUDA_CHECK(cudaEventRecord((cudaEvent_t) ev, TRI_CU_STREAM(s)));
    return TRIATTN_OK;
}

extern "C" enum triattn_status tri_cuda_event_ms(void * from, void * to, float * ms) {
    TRI_CUDA_CHECK(cudaEventElapsedTime(ms, (cudaEvent_t) from, (cudaEvent_t) to));
    return TRIATTN_OK;
}

extern "C" void tri_cuda_event_destroy(void * ev) {
    if (ev) {
        (void) cudaEventDestroy((cudaEvent_t) ev);
    }
}
