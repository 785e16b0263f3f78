/* The part of the CUDA runtime API that cuda/ uses, for the host simulator (sim.h). */
#ifndef TRI_CUDA_SIM_RUNTIME_H
#define TRI_CUDA_SIM_RUNTIME_H

#include "sim.h"

typedef enum cudaError {
    cudaSuccess                      = 0,
    cudaErrorInvalidValue            = 1,
    cudaErrorMemoryAllocation        = 2,
    cudaErrorInvalidConfiguration    = 9,
    cudaErrorInsufficientDriver      = 35,
    cudaErrorStreamCaptureUnsupported = 900,
    cudaErrorLaunchFailure           = 719,
} cudaError_t;

typedef enum cudaMemcpyKind { cudaMemcpyHostToDevice = 1, cudaMemcpyDeviceToHost = 2, cudaMemcpyDeviceToDevice = 3 } cudaMemcpyKind;

typedef enum cudaDeviceAttr {
    cudaDevAttrMultiProcessorCount = 16, cudaDevAttrComputeCapabilityMajor = 75,
} cudaDeviceAttr;

typedef enum cudaStreamCaptureMode { cudaStreamCaptureModeThreadLocal = 1 } cudaStreamCaptureMode;

typedef enum cudaLaunchAttributeID {
    cudaLaunchAttributeProgrammaticStreamSerialization = 5,
} cudaLaunchAttributeID;

typedef struct cudaLaunchAttributeValue {
    int programmaticStreamSerializationAllowed;
} cudaLaunchAttributeValue;

typedef struct cudaLaunchAttribute {
    cudaLaunchAttributeID    id;
    cudaLaunchAttributeValue val;
} cudaLaunchAttribute;

typedef struct cudaLaunchConfig_t {
    dim3                  gridDim, blockDim;
    size_t                dynamicSmemBytes;
    cudaStream_t          stream;
    cudaLaunchAttribute * attrs;
    unsigned              numAttrs;
} cudaLaunchConfig_t;

typedef struct cudaDeviceProp {
    char   name[256];
    size_t totalGlobalMem;
    int    major, minor, multiProcessorCount;
} cudaDeviceProp;

typedef struct tri_sim_graph *      cudaGraph_t;
typedef struct tri_sim_graph *      cudaGraphExec_t;
typedef struct tri_sim_event *      cudaEvent_t;

#define cudaStreamNonBlocking 1u

const char * cudaGetErrorString(cudaError_t e);
cudaError_t cudaGetLastError(void);
cudaError_t cudaGetDeviceCount(int * n);
cudaError_t cudaSetDevice(int dev);
cudaError_t cudaGetDevice(int * dev);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp * p, int dev);
cudaError_t cudaDeviceGetAttribute(int * v, cudaDeviceAttr a, int dev);
cudaError_t cudaMalloc(void ** p, size_t bytes);
cudaError_t cudaFree(void * p);
cudaError_t cudaMallocHost(void ** p, size_t bytes);
cudaError_t cudaFreeHost(void * p);
cudaError_t cudaMemGetInfo(size_t * free_bytes, size_t * total_bytes);
cudaError_t cudaMemsetAsync(void * p, int value, size_t bytes, cudaStream_t s = nullptr);
cudaError_t cudaMemcpyAsync(void * dst, const void * src, size_t bytes, cudaMemcpyKind kind, cudaStream_t s = nullptr);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t * s, unsigned flags);
cudaError_t cudaStreamDestroy(cudaStream_t s);
cudaError_t cudaStreamSynchronize(cudaStream_t s);
cudaError_t cudaStreamBeginCapture(cudaStream_t s, cudaStreamCaptureMode mode);
cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t * g);
cudaError_t cudaGraphInstantiate(cudaGraphExec_t * e, cudaGraph_t g, unsigned long long flags);
cudaError_t cudaGraphDestroy(cudaGraph_t g);
cudaError_t cudaGraphLaunch(cudaGraphExec_t e, cudaStream_t s);
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t e);
cudaError_t cudaEventCreate(cudaEvent_t * e);
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s = nullptr);
cudaError_t cudaEventElapsedTime(float * ms, cudaEvent_t from, cudaEvent_t to);
cudaError_t cudaEventDestroy(cudaEvent_t e);

template <typename... P, typename... A>
static inline cudaError_t cudaLaunchKernelEx(const cudaLaunchConfig_t * cfg, void (*k)(P...), A &&... args) {
    return (cudaError_t) tri_sim_launch_kernel(k, cfg->gridDim, cfg->blockDim, cfg->dynamicSmemBytes, cfg->stream,
                                               std::forward<A>(args)...);
}

#endif
