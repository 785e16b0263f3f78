/* The CUDA runtime and launchers of cuda/tri_cuda.h emulated on the host, so that the backend's host code (the C
 * files of cuda/: model upload, sessions, the batched forward step, graphs, TriAttention rounds, save/restore, the
 * memory cap) runs and is tested where there is no GPU (a build with -DTRIATTN_CUDA_EMU=ON). Device memory is host
 * memory, copies are memcpy, and each launcher computes what its header promises, on the host, in the plainest way:
 * the CPU's own ops where they exist (dequantizers, RMSNorm, RoPE, SwiGLU, the TriAttention scorer, z-score and
 * top-k), products with the CPU's integer sums (cuda/qchunk.h), exact softmax attention. It checks the launchers'
 * arguments as the kernels do. It says nothing about the kernels themselves (tool_cuda parity does, on a device). A
 * graph records the calls queued between begin and end and replays them. Streams run their work at once: every
 * stream is always synchronized. */
#include "calibration.h"
#include "fp16.h"
#include "ops.h"
#include "qchunk.h"
#include "quants.h"
#include "tri_cuda.h"
#include "triattn_score.h"
#include "types.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define EMU_ARGS 512 /* bytes of one recorded call's arguments */

static _Thread_local char emu_err[256];

static enum triattn_status emu_fail(const char * what) {
    snprintf(emu_err, sizeof emu_err, "emulated CUDA: %.200s", what);
    return TRIATTN_ERR_INTERNAL;
}
#define EMU_REQUIRE(cond)                                   \
    do {                                                    \
        if (!(cond)) return emu_fail("argument check: " #cond); \
    } while (0)

const char * tri_cuda_last_error(void) { return emu_err; }

/* A device's memory running out is cudaErrorMemoryAllocation: the emulation's host memory running out is the same. */
static enum triattn_status emu_oom(const char * what) {
    emu_fail(what);
    return TRIATTN_ERR_OOM;
}

/* An emulated kernel that could not get its host scratch did not run: the error is sticky, as a device's is after a
 * faulting kernel, and the launch that ran it (or the graph, or the next synchronization) reports it. */
static atomic_bool emu_kernel_failed;
static void        emu_kernel_fail(void) { atomic_store(&emu_kernel_failed, true); }
static enum triattn_status emu_kernel_status(void) {
    return atomic_exchange(&emu_kernel_failed, false) ? emu_oom("out of host memory in an emulated kernel") : TRIATTN_OK;
}

/* ---- memory: a size header before each block, so that free memory can be reported ---- */

static pthread_mutex_t emu_lock = PTHREAD_MUTEX_INITIALIZER;
static size_t          emu_used;
static void            emu_weights_forget(const void * p, size_t bytes);
static bool            emu_lazy(void);

static size_t emu_total(void) {
    const char * v = getenv("TRIATTN_CUDA_EMU_GIB");
    const double gib = v ? atof(v) : 0.0;
    return (size_t) ((gib > 0 ? gib : 16.0) * (double) (1u << 30));
}

enum triattn_status tri_cuda_malloc(void ** p, size_t bytes) {
    *p = NULL;
    pthread_mutex_lock(&emu_lock); /* the bytes are counted before the allocation, as a device would */
    const bool fits = bytes <= emu_total() - emu_used;
    if (fits) {
        emu_used += bytes;
    }
    pthread_mutex_unlock(&emu_lock);
    if (!fits) {
        return emu_fail("out of memory"), TRIATTN_ERR_OOM;
    }
    unsigned char * b = malloc(bytes + 64);
    if (!b) {
        pthread_mutex_lock(&emu_lock);
        emu_used -= bytes;
        pthread_mutex_unlock(&emu_lock);
        return emu_fail("out of host memory"), TRIATTN_ERR_OOM;
    }
    memcpy(b, &bytes, sizeof bytes);
    if (!emu_lazy()) {
        memset(b + 64, 0xA5, bytes); /* what cudaMalloc returns is not zeroed either */
    }
    *p = b + 64;
    return TRIATTN_OK;
}

void tri_cuda_free(void * p) {
    if (!p) {
        return;
    }
    unsigned char * b = (unsigned char *) p - 64;
    size_t bytes;
    memcpy(&bytes, b, sizeof bytes);
    pthread_mutex_lock(&emu_lock);
    emu_used -= bytes;
    emu_weights_forget(p, bytes);
    pthread_mutex_unlock(&emu_lock);
    free(b);
}

enum triattn_status tri_cuda_mem_info(size_t * free_bytes, size_t * total_bytes) {
    pthread_mutex_lock(&emu_lock);
    *total_bytes = emu_total();
    *free_bytes = *total_bytes - emu_used;
    pthread_mutex_unlock(&emu_lock);
    return TRIATTN_OK;
}

enum triattn_status tri_cuda_host_alloc(void ** p, size_t bytes) {
    *p = malloc(bytes ? bytes : 1);
    return *p ? TRIATTN_OK : (emu_fail("out of host memory"), TRIATTN_ERR_OOM);
}
void tri_cuda_host_free(void * p) { free(p); }

int tri_cuda_device_count(char * why, size_t n) {
    if (why && n) {
        why[0] = '\0';
    }
    return 1;
}
enum triattn_status tri_cuda_set_device(int dev) { return dev == 0 ? TRIATTN_OK : emu_fail("no such device"); }
enum triattn_status tri_cuda_device_name(int dev, char * buf, size_t n) {
    snprintf(buf, n, "host emulation (%.1f GiB)", (double) emu_total() / (double) (1u << 30));
    return TRIATTN_OK;
}
int tri_cuda_sm_count(void) { return 132; }

/* ---- streams and graphs: a call runs at once, or is recorded while its stream captures ---- */

typedef void (*emu_fn)(const void * args);
typedef struct emu_call {
    emu_fn        fn;
    unsigned char args[EMU_ARGS];
} emu_call;
typedef struct emu_list {
    emu_call * calls;
    int        n, cap;
} emu_list;
typedef struct emu_stream {
    bool     capturing;
    bool     failed; /* a call could not be recorded */
    emu_list rec;
} emu_stream;

static enum triattn_status emu_submit(tri_cuda_stream s, emu_fn fn, const void * args, size_t n) {
    emu_stream * st = s;
    if (!st || !st->capturing) {
        fn(args);
        return emu_kernel_status();
    }
    emu_list * l = &st->rec;
    if (l->n == l->cap) {
        const int cap = l->cap ? 2 * l->cap : 64;
        emu_call * c = realloc(l->calls, sizeof *c * (size_t) cap);
        if (!c) {
            st->failed = true;
            return emu_oom("out of host memory recording a graph");
        }
        l->calls = c;
        l->cap = cap;
    }
    l->calls[l->n].fn = fn;
    memcpy(l->calls[l->n].args, args, n);
    l->n++;
    return TRIATTN_OK;
}
#define EMU_SUBMIT(s, fn, a) (sizeof(a) <= EMU_ARGS ? emu_submit((s), (fn), &(a), sizeof(a)) : emu_fail("arguments"))

/* TRIATTN_CUDA_EMU_NOOP=1: kernels do nothing (copies, events and live counts still run; top-k keeps each group's
 * first k), so that a benchmark on this build times the host side of the backend alone: what a step costs the CPU
 * besides the device's work. TRIATTN_CUDA_EMU_NOOP=2 also skips the memsets and copies to the device of more than
 * 64 KiB (weights, caches; the small control arrays still arrive) and leaves new device memory untouched, so that
 * device memory costs next to no host memory: a model larger than the host's memory runs its plan (sizes, the
 * memory cap, refusals, the sessions that fit) without its arithmetic. Outputs are then meaningless. */
static pthread_once_t emu_noop_once = PTHREAD_ONCE_INIT;
static int            emu_noop_level;
static void emu_noop_init(void) {
    const char * v = getenv("TRIATTN_CUDA_EMU_NOOP");
    emu_noop_level = v && (strcmp(v, "1") == 0 || strcmp(v, "2") == 0) ? v[0] - '0' : 0;
}
static int emu_noop_at(void) {
    pthread_once(&emu_noop_once, emu_noop_init);
    return emu_noop_level;
}
static bool emu_noop(void) { return emu_noop_at() > 0; }
static bool emu_lazy(void) { return emu_noop_at() > 1; }
static size_t emu_lazy_n(size_t bytes) { return emu_lazy() && bytes > ((size_t) 64 << 10) ? 0 : bytes; }
static void emu_skip(const void * args) {
    (void) args;
}
#define EMU_KERNEL(s, fn, a) EMU_SUBMIT((s), emu_noop() ? emu_skip : (fn), (a))

enum triattn_status tri_cuda_stream_create(tri_cuda_stream * s) {
    *s = calloc(1, sizeof(emu_stream));
    return *s ? TRIATTN_OK : (emu_fail("out of host memory"), TRIATTN_ERR_OOM);
}
void tri_cuda_stream_destroy(tri_cuda_stream s) {
    if (s) {
        free(((emu_stream *) s)->rec.calls);
        free(s);
    }
}
enum triattn_status tri_cuda_sync(tri_cuda_stream s) {
    const emu_stream * st = s;
    return st && st->capturing ? emu_fail("synchronizing a capturing stream") : emu_kernel_status();
}

enum triattn_status tri_cuda_graph_begin(tri_cuda_stream s) {
    emu_stream * st = s;
    if (!st || st->capturing) {
        return emu_fail("graph capture on the default stream or twice");
    }
    st->capturing = true;
    st->failed = false;
    st->rec.n = 0;
    return TRIATTN_OK;
}
enum triattn_status tri_cuda_graph_end(tri_cuda_stream s, void ** exec) {
    emu_stream * st = s;
    *exec = NULL;
    if (!st || !st->capturing) {
        return emu_fail("no capture to end");
    }
    st->capturing = false;
    if (st->failed) {
        return emu_fail("a call of the capture failed");
    }
    emu_list * g = calloc(1, sizeof *g);
    if (!g) {
        return emu_oom("out of host memory");
    }
    *g = st->rec;
    st->rec = (emu_list) { 0 };
    *exec = g;
    return TRIATTN_OK;
}
enum triattn_status tri_cuda_graph_launch(void * exec, tri_cuda_stream s) {
    const emu_list * g = exec;
    if (!g || (s && ((emu_stream *) s)->capturing)) {
        return emu_fail("graph launch");
    }
    for (int i = 0; i < g->n; i++) {
        g->calls[i].fn(g->calls[i].args);
    }
    return emu_kernel_status();
}
void tri_cuda_graph_destroy(void * exec) {
    if (exec) {
        free(((emu_list *) exec)->calls);
        free(exec);
    }
}

/* ---- copies and events ---- */

typedef struct {
    void *       dst;
    const void * src;
    size_t       n;
    int          value; /* memset: the byte; -1: a copy */
} emu_copy;
static void emu_copy_run(const void * p) {
    const emu_copy * a = p;
    if (a->value >= 0) {
        memset(a->dst, a->value, a->n);
    } else if (a->n) {
        memcpy(a->dst, a->src, a->n);
    }
}
enum triattn_status tri_cuda_memset(void * p, int value, size_t bytes, tri_cuda_stream s) {
    EMU_REQUIRE(p || !bytes);
    const emu_copy a = { p, NULL, emu_lazy_n(bytes), value & 0xff };
    return EMU_SUBMIT(s, emu_copy_run, a);
}
enum triattn_status tri_cuda_d2h(void * dst, const void * src, size_t bytes, tri_cuda_stream s) {
    EMU_REQUIRE((dst && src) || !bytes);
    const emu_copy a = { dst, src, bytes, -1 };
    return EMU_SUBMIT(s, emu_copy_run, a);
}
enum triattn_status tri_cuda_h2d(void * dst, const void * src, size_t bytes, tri_cuda_stream s) {
    return tri_cuda_d2h(dst, src, emu_lazy_n(bytes), s);
}
enum triattn_status tri_cuda_d2d(void * dst, const void * src, size_t bytes, tri_cuda_stream s) {
    return tri_cuda_d2h(dst, src, emu_lazy_n(bytes), s);
}

static void emu_event_run(const void * p) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    **(double * const *) p = (double) t.tv_sec * 1e3 + (double) t.tv_nsec / 1e6;
}
enum triattn_status tri_cuda_event_create(void ** ev) {
    *ev = calloc(1, sizeof(double));
    return *ev ? TRIATTN_OK : (emu_fail("out of host memory"), TRIATTN_ERR_OOM);
}
enum triattn_status tri_cuda_event_record(void * ev, tri_cuda_stream s) {
    EMU_REQUIRE(ev);
    double * a = ev;
    return EMU_SUBMIT(s, emu_event_run, a);
}
enum triattn_status tri_cuda_event_ms(void * from, void * to, float * ms) {
    EMU_REQUIRE(from && to);
    *ms = (float) (*(double *) to - *(double *) from);
    return TRIATTN_OK;
}
void tri_cuda_event_destroy(void * ev) { free(ev); }

/* ---- weights ---- */


bool tri_cuda_type_supported(int type) {
    return tri_qc_block_bytes(type) > 0 || type == TRI_TYPE_F32 || type == TRI_TYPE_F16 || type == TRI_TYPE_BF16;
}
int tri_cuda_mm_act_type(int type) { return tri_qc_block_bytes(type) > 0 ? tri_qc_act_type(type) : 0; }

/* Row values as the CPU's dequantizer computes them. */
static void emu_row_values(int type, const uint8_t * row, int64_t ne0, float * out) {
    tri_type_traits_get((enum tri_type) type)->to_float(row, out, ne0);
}

typedef struct {
    int     type;
    int64_t ne0;
    const void * W;
    const int32_t * ids;
    int n_tok;
    int64_t n_rows; /* dequantize: rows 0..n_rows; get_rows: 0 */
    float * out;
} emu_rows;
static void emu_rows_run(const void * p) {
    const emu_rows * a = p;
    const size_t rb = tri_row_size((enum tri_type) a->type, a->ne0);
    const int64_t n = a->ids ? a->n_tok : a->n_rows;
    for (int64_t t = 0; t < n; t++) {
        const int64_t r = a->ids ? a->ids[t] : t;
        emu_row_values(a->type, (const uint8_t *) a->W + (size_t) r * rb, a->ne0, a->out + (size_t) t * a->ne0);
    }
}
enum triattn_status tri_cuda_get_rows(int type, const void * W, int64_t ne0, const int32_t * ids, int n_tok,
                                      float * out, void * stream) {
    EMU_REQUIRE(tri_cuda_type_supported(type) && ne0 > 0 && ne0 % 32 == 0 && n_tok > 0 && W && ids && out);
    const emu_rows a = { type, ne0, W, ids, n_tok, 0, out };
    return EMU_KERNEL(stream, emu_rows_run, a);
}
enum triattn_status tri_cuda_dequantize(int type, const void * W, int64_t ne0, int64_t n_rows, float * out,
                                        void * stream) {
    EMU_REQUIRE(tri_cuda_type_supported(type) && ne0 > 0 && ne0 % 32 == 0 && n_rows > 0 && W && out);
    const emu_rows a = { type, ne0, W, NULL, 0, n_rows, out };
    return EMU_KERNEL(stream, emu_rows_run, a);
}

/* ---- activations ---- */

typedef struct {
    const float * x, * u, * norm_w;
    int64_t ldx, ldf;
    bool norm;
    float eps;
    int n_rows, n, n_q8;
    float * f;
    tri_cuda_q8 q8[2];
} emu_act;
static void emu_act_run(const void * p) {
    const emu_act * a = p;
    float * v = malloc(sizeof(float) * (size_t) a->n);
    if (!v) {
        emu_kernel_fail();
        return;
    }
    for (int r = 0; r < a->n_rows; r++) {
        const float * xr = a->x + (size_t) r * a->ldx;
        if (a->norm) {
            tri_rmsnorm(xr, a->norm_w, v, a->n, a->eps);
        } else {
            memcpy(v, xr, sizeof(float) * (size_t) a->n);
            if (a->u) {
                tri_silu_mul(v, a->u + (size_t) r * a->ldx, a->n);
            }
        }
        if (a->f) {
            memcpy(a->f + (size_t) r * a->ldf, v, sizeof(float) * (size_t) a->n);
        }
        for (int o = 0; o < a->n_q8; o++) {
            const tri_cuda_q8 * q = &a->q8[o];
            const int blk = q->type == TRI_QC_ACT_Q8_K ? 256 : 32;
            for (int b = 0; b < a->n / blk; b++) {
                float amax = 0.0f;
                for (int i = 0; i < blk; i++) {
                    amax = fmaxf(amax, fabsf(v[b * blk + i]));
                }
                int8_t * qs = q->qs + (size_t) r * q->ld + (size_t) b * blk;
                const float d = tri_qc_quant8(v + b * blk, blk, amax, qs);
                for (int c = 0; c < blk / 32; c++) {
                    int s0 = 0, s1 = 0;
                    for (int i = 0; i < 16; i++) {
                        s0 += qs[32 * c + i];
                        s1 += qs[32 * c + 16 + i];
                    }
                    tri_cuda_q8_meta m;
                    m.d = q->type == TRI_QC_ACT_Q8_K ? d : tri_qc_round_f16(d);
                    m.s = q->type == TRI_QC_ACT_Q8_1 ? tri_qc_round_f16(d * (float) (s0 + s1)) : 0.0f;
                    m.sum[0] = s0;
                    m.sum[1] = s1;
                    q->meta[(size_t) r * (q->ld / 32) + (size_t) b * blk / 32 + c] = m;
                }
            }
        }
    }
    free(v);
}
enum triattn_status tri_cuda_act_prep(const float * x, int64_t ldx, const float * u, bool norm, const float * norm_w,
                                      float eps, int n_rows, int n, float * f, int64_t ldf, const tri_cuda_q8 * q8,
                                      int n_q8, void * stream) {
    EMU_REQUIRE(n_rows > 0 && n > 0 && ldx >= n && n_q8 >= 0 && n_q8 <= 2 && (!f || ldf >= n) && !(norm && u));
    emu_act a = { x, u, norm_w, ldx, ldf, norm, eps, n_rows, n, n_q8, f, { { 0 } } };
    for (int i = 0; i < n_q8; i++) {
        const int blk = q8[i].type == TRI_QC_ACT_Q8_K ? 256 : 32;
        EMU_REQUIRE(n % blk == 0 && q8[i].ld >= n && q8[i].ld % 32 == 0 &&
                    (q8[i].type == TRI_QC_ACT_Q8_0 || q8[i].type == TRI_QC_ACT_Q8_1 || q8[i].type == TRI_QC_ACT_Q8_K));
        a.q8[i] = q8[i];
    }
    return EMU_KERNEL(stream, emu_act_run, a);
}

/* ---- products ---- */

typedef struct {
    int type;
    int64_t ne0;
    tri_cuda_mm_job jobs[TRI_CUDA_MM_JOBS];
    int n_jobs, n_tok;
    const float * xf;
    int64_t ldx;
    bool q8_on, accumulate;
    bool round_w, round_x; /* operands rounded to fp16: tensor cores both, F16 matrix-vector the activations */
    tri_cuda_q8 q8;
} emu_mm;

/* Chunks ch (their codes unpacked in codes) of a weight row x token t of q8: the CPU's integer sums per block
 * (super-block), finished with its formula. */
static float emu_dot_q8(int type, const tri_qc_chunk * ch, const int8_t * codes, int64_t ne0, const tri_cuda_q8 * q8,
                        int t) {
    const int kind = tri_qc_kind(type), G = tri_qc_block_values(type) / 32;
    const int8_t * xq = q8->qs + (size_t) t * q8->ld;
    const tri_cuda_q8_meta * xm = q8->meta + (size_t) t * (q8->ld / 32);
    float acc = 0.0f;
    for (int64_t b = 0; b < ne0 / 32 / G; b++) {
        int32_t isum = 0, msum = 0;
        for (int j = 0; j < G; j++) {
            const int64_t c = b * G + j;
            const int8_t * w = codes + 32 * c, * x = xq + 32 * c;
            int32_t s0 = 0, s1 = 0;
            for (int i = 0; i < 16; i++) {
                s0 += (int32_t) w[i] * x[i];
                s1 += (int32_t) w[16 + i] * x[16 + i];
            }
            tri_qc_isum(&ch[c], s0, s1, xm[c].sum, &isum, &msum);
        }
        const tri_cuda_q8_meta m = xm[(b + 1) * G - 1];
        acc += tri_qc_finish(kind, ch[b * G].d, ch[b * G].m, m.d, m.s, isum, msum);
    }
    return acc;
}

/* A weight matrix prepared once, per matrix: quantized types unpacked into chunks (codes and scales) for 8-bit
 * activations, or every type's values as floats (rounded to fp16 for the tensor cores); dropped when the memory
 * holding the weights is freed. */
typedef struct emu_wcache {
    const uint8_t *     W;
    size_t              bytes;
    int                 type, form; /* 0: chunks; 1: float values; 2: values rounded to fp16 */
    int64_t             ne0;
    int8_t *            codes;      /* [ne1][ne0] */
    tri_qc_chunk *      ch;         /* [ne1][ne0 / 32] */
    float *             vals;       /* [ne1][ne0] */
    struct emu_wcache * next;
} emu_wcache;
static emu_wcache * emu_wc;

static void emu_wcache_free(emu_wcache * e) {
    free(e->codes);
    free(e->ch);
    free(e->vals);
    free(e);
}

static emu_wcache * emu_wcache_make(int type, const void * W, int64_t ne0, int64_t ne1, int form) {
    emu_wcache * e = calloc(1, sizeof *e);
    if (!e) {
        return NULL;
    }
    const size_t rb = tri_row_size((enum tri_type) type, ne0), nc = (size_t) (ne0 / 32), n = (size_t) (ne0 * ne1);
    *e = (emu_wcache) { W, rb * (size_t) ne1, type, form, ne0, NULL, NULL, NULL, NULL };
    if (form == 0) {
        e->codes = malloc(n);
        e->ch = malloc(sizeof(tri_qc_chunk) * nc * (size_t) ne1);
    } else {
        e->vals = malloc(sizeof(float) * n);
    }
    if (form == 0 ? !e->codes || !e->ch : !e->vals) {
        emu_wcache_free(e);
        return NULL;
    }
    for (int64_t r = 0; r < ne1; r++) {
        const uint8_t * row = (const uint8_t *) W + (size_t) r * rb;
        if (form != 0) {
            float * v = e->vals + (size_t) r * ne0;
            emu_row_values(type, row, ne0, v);
            for (int64_t i = 0; form == 2 && i < ne0; i++) {
                v[i] = tri_fp16_to_fp32(tri_fp32_to_fp16(v[i]));
            }
            continue;
        }
        for (size_t c = 0; c < nc; c++) {
            tri_qc_chunk * h = &e->ch[(size_t) r * nc + c];
            tri_qc_prep(type, row, (int64_t) c, h);
            memcpy(e->codes + (size_t) r * ne0 + 32 * c, h->q, 32); /* little-endian words: code i is byte i */
        }
    }
    return e;
}

static const emu_wcache * emu_weights(int type, const void * W, int64_t ne0, int64_t ne1, int form) {
    pthread_mutex_lock(&emu_lock);
    emu_wcache * e = emu_wc;
    while (e && !(e->W == W && e->type == type && e->form == form && e->ne0 == ne0 &&
                  e->bytes >= tri_row_size((enum tri_type) type, ne0) * (size_t) ne1)) {
        e = e->next;
    }
    if (!e && (e = emu_wcache_make(type, W, ne0, ne1, form))) {
        e->next = emu_wc;
        emu_wc = e;
    }
    pthread_mutex_unlock(&emu_lock);
    return e;
}

/* Drops the prepared weights inside [p, p + bytes). Called with emu_lock held. */
static void emu_weights_forget(const void * p, size_t bytes) {
    for (emu_wcache ** pe = &emu_wc; *pe;) {
        emu_wcache * e = *pe;
        if (e->W >= (const uint8_t *) p && e->W < (const uint8_t *) p + bytes) {
            *pe = e->next;
            emu_wcache_free(e);
        } else {
            pe = &e->next;
        }
    }
}

static void emu_mm_run(const void * p) {
    const emu_mm * a = p;
    const int64_t ne0 = a->ne0;
    float * xs = NULL; /* the float activations, rounded to fp16 where the launcher rounds them */
    if (!a->q8_on) {
        if (!(xs = malloc(sizeof(float) * (size_t) (ne0 * a->n_tok)))) {
            emu_kernel_fail();
            return;
        }
        for (int t = 0; t < a->n_tok; t++) {
            for (int64_t i = 0; i < ne0; i++) {
                const float x = a->xf[(size_t) t * a->ldx + i];
                xs[(size_t) t * ne0 + i] = a->round_x ? tri_fp16_to_fp32(tri_fp32_to_fp16(x)) : x;
            }
        }
    }
    for (int j = 0; j < a->n_jobs; j++) {
        const tri_cuda_mm_job * jb = &a->jobs[j];
        const emu_wcache * wc = emu_weights(a->type, jb->W, ne0, jb->ne1, a->q8_on ? 0 : a->round_w ? 2 : 1);
        if (!wc) {
            emu_kernel_fail();
            break;
        }
        for (int64_t r = 0; r < jb->ne1; r++) {
            for (int t = 0; t < a->n_tok; t++) {
                float y;
                if (a->q8_on) {
                    y = emu_dot_q8(a->type, wc->ch + (size_t) r * (ne0 / 32), wc->codes + (size_t) r * ne0, ne0, &a->q8,
                                   t);
                } else { /* the CPU's reference dot */
                    tri_vec_dot_f32_ref((int) ne0, &y, wc->vals + (size_t) r * ne0, xs + (size_t) t * ne0);
                }
                if (jb->bias) {
                    y += jb->bias[r];
                }
                float * out = jb->y + (size_t) t * jb->ldy + r;
                *out = a->accumulate ? *out + y : y;
            }
        }
    }
    free(xs);
}

static enum triattn_status emu_mm_submit(int type, int64_t ne0, const tri_cuda_mm_job * jobs, int n_jobs,
                                         const float * xf, int64_t ldx, const tri_cuda_q8 * q8, int n_tok,
                                         bool accumulate, bool tc, void * stream) {
    EMU_REQUIRE(tri_cuda_type_supported(type) && ne0 > 0 && ne0 % 32 == 0 && n_jobs >= 1 &&
                n_jobs <= TRI_CUDA_MM_JOBS && n_tok > 0);
    emu_mm a = { type, ne0, { { 0 } }, n_jobs, n_tok, xf, ldx, q8 != NULL, accumulate, tc, tc || type == TRI_TYPE_F16,
                 { 0 } };
    if (q8) {
        EMU_REQUIRE(q8->type == tri_cuda_mm_act_type(type) && q8->ld >= ne0 && q8->ld % 32 == 0);
        a.q8 = *q8;
    } else {
        EMU_REQUIRE(xf && ldx >= ne0);
    }
    for (int j = 0; j < n_jobs; j++) {
        EMU_REQUIRE(jobs[j].W && jobs[j].y && jobs[j].ne1 > 0 && jobs[j].ldy >= jobs[j].ne1);
        a.jobs[j] = jobs[j];
    }
    return EMU_KERNEL(stream, emu_mm_run, a);
}

enum triattn_status tri_cuda_mm_vec(int type, int64_t ne0, const tri_cuda_mm_job * jobs, int n_jobs, const float * xf,
                                    int64_t ldx, const tri_cuda_q8 * q8, int n_tok, bool accumulate, void * stream) {
    EMU_REQUIRE(n_tok <= TRI_CUDA_MV_TOK && (tri_cuda_mm_act_type(type) ? q8 != NULL : xf != NULL));
    return emu_mm_submit(type, ne0, jobs, n_jobs, tri_cuda_mm_act_type(type) ? NULL : xf, ldx,
                         tri_cuda_mm_act_type(type) ? q8 : NULL, n_tok, accumulate, false, stream);
}
enum triattn_status tri_cuda_mm_q(int type, int64_t ne0, const tri_cuda_mm_job * jobs, int n_jobs,
                                  const tri_cuda_q8 * q8, int n_tok, bool accumulate, void * stream) {
    EMU_REQUIRE(tri_cuda_mm_act_type(type) && q8);
    return emu_mm_submit(type, ne0, jobs, n_jobs, NULL, 0, q8, n_tok, accumulate, false, stream);
}
enum triattn_status tri_cuda_mm_tc(int type, int64_t ne0, const tri_cuda_mm_job * jobs, int n_jobs, const float * xf,
                                   int64_t ldx, int n_tok, bool accumulate, void * stream) {
    return emu_mm_submit(type, ne0, jobs, n_jobs, xf, ldx, NULL, n_tok, accumulate, true, stream);
}
enum triattn_status tri_cuda_mm_tc_bn(int type, int64_t ne0, const tri_cuda_mm_job * jobs, int n_jobs,
                                      const float * xf, int64_t ldx, int n_tok, bool accumulate, int bn,
                                      void * stream) {
    EMU_REQUIRE(bn == 32 || bn == 64 || bn == 128);
    return emu_mm_submit(type, ne0, jobs, n_jobs, xf, ldx, NULL, n_tok, accumulate, true, stream);
}

/* ---- the KV cache: post-projection work, attention, live counts, compaction ---- */

typedef struct {
    float * q;
    const float * k, * v, * q_norm, * k_norm, * cs;
    const tri_cuda_row * rows;
    int n_rows, il;
    tri_cuda_heads hd;
} emu_qkv;

/* RMSNorm and RoPE of one head into b, with the CPU's own ops. */
static void emu_head_post(const float * x, const float * nw, const float * cs, const tri_cuda_heads * hd, float * b) {
    if (nw) {
        tri_rmsnorm(x, nw, b, hd->head_dim, hd->eps);
    } else {
        memcpy(b, x, sizeof(float) * (size_t) hd->head_dim);
    }
    tri_rope(b, 1, hd->head_dim, hd->rope_dim, cs, (enum tri_rope_pairing) hd->pairing);
}

static void emu_qkv_run(const void * p) {
    const emu_qkv * a = p;
    const int D = a->hd.head_dim, H = a->hd.n_head, Hkv = a->hd.n_head_kv;
    float b[TRI_CUDA_ATT_MAX_D];
    for (int r = 0; r < a->n_rows; r++) {
        const tri_cuda_row row = a->rows[r];
        const float * cs = a->cs + (size_t) r * a->hd.rope_dim;
        for (int h = 0; h < H; h++) {
            float * x = a->q + ((size_t) r * H + h) * D;
            emu_head_post(x, a->q_norm, cs, &a->hd, b);
            memcpy(x, b, sizeof(float) * (size_t) D);
        }
        for (int h = 0; h < Hkv; h++) {
            const size_t lh = (size_t) a->il * Hkv + h;
            const int slot = row.n_live[lh] + row.rank;
            if (slot >= row.cap) {
                continue;
            }
            const size_t dst = (lh * (size_t) row.cap + slot) * D;
            emu_head_post(a->k + ((size_t) r * Hkv + h) * D, a->k_norm, cs, &a->hd, b);
            for (int d = 0; d < D; d++) {
                ((tri_fp16 *) row.K)[dst + d] = tri_fp32_to_fp16(b[d]);
                ((tri_fp16 *) row.V)[dst + d] = tri_fp32_to_fp16(a->v[((size_t) r * Hkv + h) * D + d]);
            }
            row.pos[lh * row.cap + slot] = row.position;
        }
    }
}
enum triattn_status tri_cuda_qkv_post(float * q, const float * k, const float * v, const float * q_norm,
                                      const float * k_norm, const float * cs, const tri_cuda_row * rows, int n_rows,
                                      int il, const tri_cuda_heads * hd, int n_layer, void * stream) {
    EMU_REQUIRE(n_rows > 0 && n_rows <= 65535 && hd->n_head > 0 && hd->n_head_kv > 0 && hd->head_dim > 0 &&
                hd->head_dim <= TRI_CUDA_ATT_MAX_D && hd->rope_dim > 0 && hd->rope_dim % 2 == 0 &&
                hd->rope_dim <= hd->head_dim && (hd->pairing == 0 || hd->pairing == 1) && il >= 0 && il < n_layer);
    const emu_qkv a = { q, k, v, q_norm, k_norm, cs, rows, n_rows, il, *hd };
    return EMU_KERNEL(stream, emu_qkv_run, a);
}

typedef struct {
    const float * q;
    const tri_cuda_row * rows;
    int n_rows, il, H, Hkv, D;
    float scale;
    const int * tickets;
    float * out;
} emu_att;
static void emu_att_run(const void * p) {
    const emu_att * a = p;
    const int G = a->H / a->Hkv, D = a->D;
    for (int r = 0; r < a->n_rows; r++) {
        const tri_cuda_row row = a->rows[r];
        for (int g = 0; g < a->H; g++) {
            const size_t lh = (size_t) a->il * a->Hkv + g / G;
            const int n = row.n_live[lh] + row.rank + 1 < row.cap ? row.n_live[lh] + row.rank + 1 : row.cap;
            const float * q = a->q + ((size_t) r * a->H + g) * D;
            const tri_fp16 * K = (const tri_fp16 *) row.K + lh * (size_t) row.cap * D;
            const tri_fp16 * V = (const tri_fp16 *) row.V + lh * (size_t) row.cap * D;
            double acc[TRI_CUDA_ATT_MAX_D] = { 0 }, mx = -INFINITY, l = 0.0;
            for (int j = 0; j < n; j++) { /* online softmax in double */
                double s = 0.0;
                for (int d = 0; d < D; d++) {
                    s += (double) q[d] * tri_fp16_to_fp32(K[(size_t) j * D + d]);
                }
                s *= a->scale;
                const double m_new = s > mx ? s : mx, c = exp(mx - m_new), e = exp(s - m_new);
                l = l * c + e;
                for (int d = 0; d < D; d++) {
                    acc[d] = acc[d] * c + e * tri_fp16_to_fp32(V[(size_t) j * D + d]);
                }
                mx = m_new;
            }
            float * o = a->out + ((size_t) r * a->H + g) * D;
            for (int d = 0; d < D; d++) {
                o[d] = l > 0 ? (float) (acc[d] / l) : 0.0f;
            }
        }
    }
}
enum triattn_status tri_cuda_attention(const float * q, const tri_cuda_row * rows, int n_rows, int il, int n_head,
                                       int n_head_kv, int D, float scale, int parts, bool chunk, float * part,
                                       int * tickets, float * out, void * stream) {
    EMU_REQUIRE(n_rows > 0 && n_rows <= 65535 && n_head > 0 && n_head_kv > 0 && n_head % n_head_kv == 0 && D >= 16 &&
                D <= TRI_CUDA_ATT_MAX_D && D % 16 == 0 && parts > 0 && parts <= TRI_CUDA_ATT_MAX_PARTS && il >= 0 &&
                part && q && rows && out);
    const emu_att a = { q, rows, n_rows, il, n_head, n_head_kv, D, scale, tickets, out };
    return EMU_KERNEL(stream, emu_att_run, a);
}

typedef struct {
    const tri_cuda_row * rows;
    int n_rows, n_lk;
} emu_bump;
static void emu_bump_run(const void * p) {
    const emu_bump * a = p;
    for (int r = 0; r < a->n_rows; r++) {
        const tri_cuda_row row = a->rows[r];
        if (row.rank == row.n_new - 1) { /* one row per session */
            for (int i = 0; i < a->n_lk; i++) {
                row.n_live[i] += row.n_new;
            }
        }
    }
}
enum triattn_status tri_cuda_kv_bump(const tri_cuda_row * rows, int n_rows, int n_lk, void * stream) {
    EMU_REQUIRE(n_rows > 0 && n_lk > 0 && rows);
    const emu_bump a = { rows, n_rows, n_lk };
    return EMU_SUBMIT(stream, emu_bump_run, a);
}

typedef struct {
    tri_fp16 * K, * V;
    int32_t * pos, * n_live;
    const int32_t * keep, * n_keep;
    int n_lh, cap, D;
} emu_gather;
static void emu_gather_run(const void * p) {
    const emu_gather * a = p;
    for (int lh = 0; lh < a->n_lh; lh++) {
        const int nk = a->n_keep[lh];
        if (nk < 0) {
            continue;
        }
        const int32_t * kp = a->keep + (size_t) lh * a->cap;
        tri_fp16 * K = a->K + (size_t) lh * a->cap * a->D, * V = a->V + (size_t) lh * a->cap * a->D;
        int32_t * pos = a->pos + (size_t) lh * a->cap;
        for (int r = 0; r < nk; r++) { /* keep[r] >= r: in place, in order */
            memmove(K + (size_t) r * a->D, K + (size_t) kp[r] * a->D, sizeof(tri_fp16) * (size_t) a->D);
            memmove(V + (size_t) r * a->D, V + (size_t) kp[r] * a->D, sizeof(tri_fp16) * (size_t) a->D);
            pos[r] = pos[kp[r]];
        }
        a->n_live[lh] = nk;
    }
}
enum triattn_status tri_cuda_kv_gather(void * K, void * V, int32_t * pos, int32_t * n_live, const int32_t * keep,
                                       const int32_t * n_keep, int n_lh, int cap, int D, void * stream) {
    EMU_REQUIRE(n_lh > 0 && cap > 0 && D > 0 && K && V && pos && n_live && keep && n_keep);
    const emu_gather a = { K, V, pos, n_live, keep, n_keep, n_lh, cap, D };
    return EMU_KERNEL(stream, emu_gather_run, a);
}

/* ---- the TriAttention round's scoring and selection ---- */

typedef struct {
    const void * K;
    const float * w, * cw;
    const int32_t * lo, * hi;
    int L, H, Hkv, D, rope_dim, pairing, cap, max_n, global, op;
    float * scores;       /* score: out; zscore: in place; gqa_max, layer_mean: in */
    float * out;          /* gqa_max: agg; layer_mean: mean */
} emu_ta;
enum { EMU_TA_SCORE, EMU_TA_ZSCORE, EMU_TA_GQA, EMU_TA_MEAN };
static void emu_ta_run(const void * p) {
    const emu_ta * a = p;
    const int G = a->H / a->Hkv;
    if (a->op == EMU_TA_MEAN) {
        const int groups = a->global ? 1 : a->Hkv;
        for (int gi = 0; gi < groups; gi++) {
            for (int j = 0; j < a->hi[gi] - a->lo[gi]; j++) {
                float acc = 0.0f;
                int count = 0;
                for (int i = 0; i < a->L * a->Hkv; i++) {
                    if (a->global || i % a->Hkv == gi) {
                        acc += a->scores[(size_t) i * a->cap + j];
                        count++;
                    }
                }
                a->out[(size_t) gi * a->cap + j] = acc * (1.0f / (float) count);
            }
        }
        return;
    }
    for (int l = 0; l < a->L; l++) {
        for (int hq = 0; hq < a->H; hq++) {
            const int lh = l * a->Hkv + hq / G, n = a->hi[lh] - a->lo[lh], row = l * a->H + hq;
            float * s = a->scores + (size_t) row * a->cap;
            if (a->op == EMU_TA_ZSCORE) {
                if (n > 0) {
                    tri_triattn_zscore(s, n);
                }
            } else if (a->op == EMU_TA_SCORE) { /* the CPU's scorer, one query head at a time */
                tri_triattn_score_ref(a->D, a->rope_dim, (enum tri_rope_pairing) a->pairing, 1,
                                      a->w + (size_t) row * a->D, a->cw + (size_t) row * a->D,
                                      (const tri_fp16 *) a->K + ((size_t) lh * a->cap + a->lo[lh]) * a->D, n, s,
                                      a->cap);
            } else if (hq % G == 0) { /* GQA max over the KV head's query heads, NaN never replacing */
                for (int j = 0; j < n; j++) {
                    float m = s[j];
                    for (int g = 1; g < G; g++) {
                        const float v = s[(size_t) g * a->cap + j];
                        m = v > m ? v : m;
                    }
                    a->out[(size_t) lh * a->cap + j] = m;
                }
            }
        }
    }
}
static enum triattn_status emu_ta_submit(emu_ta a, void * stream) {
    EMU_REQUIRE(a.L > 0 && a.H > 0 && a.Hkv > 0 && a.H % a.Hkv == 0 && a.cap > 0 && a.lo && a.hi && a.scores);
    EMU_REQUIRE(a.op != EMU_TA_SCORE || (a.rope_dim > 0 && a.rope_dim % 2 == 0 && a.rope_dim <= a.D && a.max_n >= 0 &&
                                         a.max_n <= a.cap));
    return EMU_KERNEL(stream, emu_ta_run, a);
}
enum triattn_status tri_cuda_triattn_score(const void * K, const float * w, const float * cw, const int32_t * lo,
                                           const int32_t * hi, int L, int H, int Hkv, int D, int rope_dim, int pairing,
                                           int cap, int max_n, float * scores, void * stream) {
    return emu_ta_submit((emu_ta) { K, w, cw, lo, hi, L, H, Hkv, D, rope_dim, pairing, cap, max_n, 0, EMU_TA_SCORE,
                                    scores, NULL }, stream);
}
enum triattn_status tri_cuda_triattn_zscore(float * scores, const int32_t * lo, const int32_t * hi, int L, int H,
                                            int Hkv, int cap, void * stream) {
    return emu_ta_submit((emu_ta) { NULL, NULL, NULL, lo, hi, L, H, Hkv, 0, 0, 0, cap, 0, 0, EMU_TA_ZSCORE, scores,
                                    NULL }, stream);
}
enum triattn_status tri_cuda_triattn_gqa_max(const float * scores, const int32_t * lo, const int32_t * hi, int L, int H,
                                             int Hkv, int cap, int max_n, float * agg, void * stream) {
    return emu_ta_submit((emu_ta) { NULL, NULL, NULL, lo, hi, L, H, Hkv, 0, 0, 0, cap, max_n, 0, EMU_TA_GQA,
                                    (float *) scores, agg }, stream);
}
enum triattn_status tri_cuda_triattn_layer_mean(const float * agg, const int32_t * lo, const int32_t * hi, int L,
                                                int Hkv, int cap, int max_n, int global, float * mean, void * stream) {
    return emu_ta_submit((emu_ta) { NULL, NULL, NULL, lo, hi, L, Hkv, Hkv, 0, 0, 0, cap, max_n, global, EMU_TA_MEAN,
                                    (float *) agg, mean }, stream);
}

typedef struct {
    const float * scores;
    const int32_t * n_of, * k_of;
    int n_groups, stride;
    uint8_t * marks;
} emu_topk;
static void emu_topk_run(const void * p) {
    const emu_topk * a = p;
    tri_triattn_cand * sel = malloc(sizeof *sel * (size_t) a->stride);
    if (!sel) {
        emu_kernel_fail();
        return;
    }
    for (int g = 0; g < a->n_groups; g++) {
        const int n = a->n_of[g];
        uint8_t * marks = a->marks + (size_t) g * a->stride;
        if (emu_noop()) { /* each group's first k */
            for (int j = 0; j < n; j++) {
                marks[j] = j < a->k_of[g];
            }
        } else if (n > 0) {
            tri_triattn_topk(a->scores + (size_t) g * a->stride, n, a->k_of[g], sel, marks);
        }
    }
    free(sel);
}
enum triattn_status tri_cuda_topk(const float * scores, const int32_t * n_of, const int32_t * k_of, int n_groups,
                                  int stride, uint8_t * marks, void * stream) {
    EMU_REQUIRE(n_groups > 0 && stride > 0 && scores && n_of && k_of && marks);
    const emu_topk a = { scores, n_of, k_of, n_groups, stride, marks };
    return EMU_SUBMIT(stream, emu_topk_run, a);
}
