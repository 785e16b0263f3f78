/* Backend registry and the n_gpu_layers decision: GPU when this build has CUDA and a device is present,
 * otherwise the CPU with one log line that says why. */
#include "backend.h"
#include "common.h"
#include "model.h"
#include "session.h"

#include <stdio.h>

#ifdef TRIATTN_HAVE_CUDA
extern const tri_backend_ops tri_backend_cuda; /* cuda/backend_cuda.c */
#endif

const tri_backend_ops * tri_backend_gpu(void) {
#ifdef TRIATTN_HAVE_CUDA
    return &tri_backend_cuda;
#else
    return NULL;
#endif
}

bool triattn_cuda_available(void) {
    const tri_backend_ops * gpu = tri_backend_gpu();
    return gpu && gpu->device_count(NULL, 0) > 0;
}

bool triattn_model_gpu_memory(const triattn_model * m, uint64_t * used, uint64_t * limit) {
    uint64_t u = 0, l = 0;
    const bool on_gpu = m && m->backend && m->backend->memory;
    if (on_gpu) {
        m->backend->memory(m, &u, &l);
    }
    if (used) {
        *used = u;
    }
    if (limit) {
        *limit = l;
    }
    return on_gpu;
}

const char * triattn_backend_name(const triattn_session * s) {
    return s && s->backend ? s->backend->name : "cpu";
}

enum triattn_status tri_backend_model_attach(struct triattn_model * m, int32_t n_gpu_layers, uint64_t gpu_mem_limit,
                                             char * err, size_t n) {
    m->backend       = NULL;
    m->backend_state = NULL;
    if (n_gpu_layers == 0) {
        return TRIATTN_OK;
    }
    if (n_gpu_layers < -1) {
        return tri_fail(err, n, TRIATTN_ERR_INVALID_ARG, "n_gpu_layers must be >= -1 (-1 = every layer, 0 = none), got %d",
                        n_gpu_layers);
    }
    if (n_gpu_layers != -1 && n_gpu_layers < m->hp.n_layer) {
        return tri_fail(err, n, TRIATTN_ERR_UNSUPPORTED,
                        "n_gpu_layers = %d: partial offload is not supported: use 0 or -1 (the model has %d layers)",
                        n_gpu_layers, m->hp.n_layer);
    }
    const tri_backend_ops * gpu = tri_backend_gpu();
    if (!gpu) {
        tri_log(TRIATTN_LOG_WARN, "n_gpu_layers = %d: this libtriattn was built without CUDA (-DTRIATTN_CUDA=ON); "
                                  "running on the CPU", n_gpu_layers);
        return TRIATTN_OK;
    }
    char why[256] = "";
    if (gpu->device_count(why, sizeof why) <= 0) {
        tri_log(TRIATTN_LOG_WARN, "n_gpu_layers = %d: no CUDA device is usable (%s); running on the CPU", n_gpu_layers,
                why[0] ? why : "none found");
        return TRIATTN_OK;
    }
    if (m->hp.n_swa > 0 || m->hp.embd_scale != 1.0f) {
        return tri_fail(err, n, TRIATTN_ERR_UNSUPPORTED,
                        "n_gpu_layers = %d: the CUDA backend does not run %s (sliding-window layers, post-norms, GeGLU); "
                        "load it with n_gpu_layers = 0", n_gpu_layers, m->arch->name);
    }
    void * state = NULL;
    const enum triattn_status st = gpu->model_upload(m, gpu_mem_limit, &state, err, n);
    if (st != TRIATTN_OK) {
        return st;
    }
    m->backend       = gpu;
    m->backend_state = state;
    tri_log(TRIATTN_LOG_INFO, "model on %s: all %d layers, KV cache and KV-policy rounds on the device", gpu->name,
            m->hp.n_layer);
    return TRIATTN_OK;
}

void tri_backend_model_detach(struct triattn_model * m) {
    if (m->backend && m->backend->model_free) {
        m->backend->model_free(m->backend_state);
    }
    m->backend       = NULL;
    m->backend_state = NULL;
}
