/* The C interface of the CUDA code: runtime helpers (memory, streams, errors) and one launcher per op.
 * Everything here is callable from C (cuda/backend_cuda.c, tests/c/tool_cuda.c); kernels live in the
 * cuda/<op>.cu files. Launchers are asynchronous on the given stream and return a status: the message of
 * the last failure is tri_cuda_last_error() (per thread). Nothing here exits or aborts. */
#ifndef TRI_CUDA_H
#define TRI_CUDA_H

#include "triattn.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef void * tri_cuda_stream; /* a cudaStream_t */

/* Message of the last failed CUDA call on this thread ("" if none). */
const char * tri_cuda_last_error(void);
/* Usable CUDA devices; 0 with the reason in why (may be NULL) when there are none (no driver, no GPU). */
int tri_cuda_device_count(char * why, size_t n);
enum triattn_status tri_cuda_set_device(int dev);
/* "NVIDIA H100 80GB HBM3 (sm_90, 79.1 GiB)" */
enum triattn_status tri_cuda_device_name(int dev, char * buf, size_t n);

enum triattn_status tri_cuda_malloc(void ** p, size_t bytes);
void tri_cuda_free(void * p);
/* Page-locked host memory, for asynchronous copies. */
enum triattn_status tri_cuda_host_alloc(void ** p, size_t bytes);
void tri_cuda_host_free(void * p);
enum triattn_status tri_cuda_memset(void * p, int value, size_t bytes, tri_cuda_stream s);
enum triattn_status tri_cuda_h2d(void * dst, const void * src, size_t bytes, tri_cuda_stream s);
enum triattn_status tri_cuda_d2h(void * dst, const void * src, size_t bytes, tri_cuda_stream s);
enum triattn_status tri_cuda_d2d(void * dst, const void * src, size_t bytes, tri_cuda_stream s);
enum triattn_status tri_cuda_stream_create(tri_cuda_stream * s);
void tri_cuda_stream_destroy(tri_cuda_stream s);
/* Waits for the stream and reports any error of the work queued on it. */
enum triattn_status tri_cuda_sync(tri_cuda_stream s);
/* Free and total bytes of the current device. */
enum triattn_status tri_cuda_mem_info(size_t * free_bytes, size_t * total_bytes);
/* A switch from the environment: def, unless the variable is "0" (turning a default-on switch off) or "1"
 * (turning a default-off switch on). */
bool tri_cuda_env_flag(const char * name, bool def);
/* Multiprocessors of the current device (0 when unknown). */
int tri_cuda_sm_count(void);

/* CUDA graphs: work queued on s between begin and end is recorded instead of run; end instantiates it into
 * *exec (NULL on failure, with the status). launch replays it on s; destroy frees it (NULL: no-op). */
enum triattn_status tri_cuda_graph_begin(tri_cuda_stream s);
enum triattn_status tri_cuda_graph_end(tri_cuda_stream s, void ** exec);
enum triattn_status tri_cuda_graph_launch(void * exec, tri_cuda_stream s);
void tri_cuda_graph_destroy(void * exec);

/* Timing events: record marks the point the stream has reached; ms is the device time between two recorded events
 * of a finished stream. */
enum triattn_status tri_cuda_event_create(void ** ev);
enum triattn_status tri_cuda_event_record(void * ev, tri_cuda_stream s);
enum triattn_status tri_cuda_event_ms(void * from, void * to, float * ms);
void tri_cuda_event_destroy(void * ev);

#ifdef __cplusplus
}
#endif

#include "act.cuh"
#include "attention.cuh"
#include "dequant.cuh"
#include "gather.cuh"
#include "kv.cuh"
#include "matmul.cuh"
#include "topk.cuh"
#include "triattn_score.cuh"

#endif
