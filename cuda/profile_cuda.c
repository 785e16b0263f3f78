/* Device time per phase of the forward steps, for finding where a step's time goes on a real device
 * (TRIATTN_CUDA_PROFILE=1). Events are recorded on the session's stream between the phases of every step; after the
 * step's sync the intervals are added up per step kind (decode: every session one token; chunk: the rest), next to
 * the host's wall time of the step. Steps then run without graphs (events inside a replayed graph are not
 * timed). When the session ends, one warning-level log line carries the sums as JSON. */
#include "backend_cuda.h"
#include "common.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

static const char * const k_phase_names[TRI_CU_PH_N] = { "input", "qkv", "kv", "attention", "out", "ffn_up", "down",
                                                         "logits" };

tri_cu_prof * tri_cu_prof_new(int n_layer) {
    if (!tri_cuda_env_flag("TRIATTN_CUDA_PROFILE", false)) {
        return NULL;
    }
    tri_cu_prof * p = calloc(1, sizeof *p);
    const int cap = 3 + 6 * n_layer; /* start, input, 6 per layer, logits */
    if (p) {
        p->ev = calloc((size_t) cap, sizeof *p->ev);
        p->ph = calloc((size_t) cap, sizeof *p->ph);
    }
    if (!p || !p->ev || !p->ph) {
        tri_cu_prof_free(p);
        return NULL;
    }
    for (p->cap = 0; p->cap < cap; p->cap++) {
        if (tri_cuda_event_create(&p->ev[p->cap]) != TRIATTN_OK) {
            tri_log(TRIATTN_LOG_WARN, "CUDA profile: %s; not profiling", tri_cuda_last_error());
            tri_cu_prof_free(p);
            return NULL;
        }
    }
    return p;
}

void tri_cu_prof_begin(tri_cu_prof * p, void * stream) {
    if (p) {
        p->n = 0;
        tri_cu_prof_mark(p, TRI_CU_PH_INPUT, stream);
    }
}

void tri_cu_prof_mark(tri_cu_prof * p, int phase, void * stream) {
    if (p && p->n < p->cap && tri_cuda_event_record(p->ev[p->n], stream) == TRIATTN_OK) {
        p->ph[p->n++] = (int8_t) phase;
    }
}

void tri_cu_prof_step(tri_cu_prof * p, bool decode, int rows, double wall_ms) {
    if (!p) {
        return;
    }
    const int k = decode ? 0 : 1;
    for (int i = 1; i < p->n; i++) { /* event i closes phase ph[i] */
        float ms = 0.0f;
        if (tri_cuda_event_ms(p->ev[i - 1], p->ev[i], &ms) == TRIATTN_OK) {
            p->ms[k][p->ph[i]] += ms;
        }
    }
    p->wall_ms[k] += wall_ms;
    p->steps[k]++;
    p->rows[k] += rows;
}

/* Appends to buf (cap bytes) at n; returns the new length, clamped to the buffer. */
static size_t tri_cu_cat(char * buf, size_t cap, size_t n, const char * fmt, ...) {
    if (n + 1 >= cap) {
        return n;
    }
    va_list ap;
    va_start(ap, fmt);
    const int w = vsnprintf(buf + n, cap - n, fmt, ap);
    va_end(ap);
    return w < 0 ? n : TRI_MIN(n + (size_t) w, cap - 1);
}

void tri_cu_prof_free(tri_cu_prof * p) {
    if (!p) {
        return;
    }
    char buf[960];
    size_t n = tri_cu_cat(buf, sizeof buf, 0, "{\"cuda_profile\": {");
    for (int k = 0; k < 2; k++) {
        n = tri_cu_cat(buf, sizeof buf, n, "%s\"%s\": {\"steps\": %lld, \"rows\": %lld, \"wall_ms\": %.3f", k ? ", " : "",
                       k ? "chunk" : "decode", (long long) p->steps[k], (long long) p->rows[k], p->wall_ms[k]);
        for (int ph = 0; ph < TRI_CU_PH_N; ph++) {
            n = tri_cu_cat(buf, sizeof buf, n, ", \"%s_ms\": %.3f", k_phase_names[ph], p->ms[k][ph]);
        }
        n = tri_cu_cat(buf, sizeof buf, n, "}");
    }
    tri_cu_cat(buf, sizeof buf, n, "}}");
    if (p->steps[0] + p->steps[1] > 0) {
        tri_log(TRIATTN_LOG_WARN, "CUDA profile: %s", buf);
    }
    for (int i = 0; i < p->cap; i++) {
        tri_cuda_event_destroy(p->ev[i]);
    }
    free(p->ev);
    free(p->ph);
    free(p);
}
