/* The host simulator's scheduler and runtime (sim.h, cuda_runtime.h). */
#include "cuda_runtime.h"

#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>
#include <ucontext.h>

#if defined(__x86_64__) && !defined(__SANITIZE_ADDRESS__)
/* Saves the callee-saved registers on the running stack, stores its pointer in *save, and resumes the stack at to:
 * a thread switch without the signal-mask system calls of swapcontext. */
extern "C" void tri_sim_switch(void ** save, void * to);
__asm__(".text\n"
        ".p2align 4\n"
        "tri_sim_switch:\n"
        "    pushq %rbp\n    pushq %rbx\n    pushq %r12\n    pushq %r13\n    pushq %r14\n    pushq %r15\n"
        "    movq %rsp, (%rdi)\n"
        "    movq %rsi, %rsp\n"
        "    popq %r15\n    popq %r14\n    popq %r13\n    popq %r12\n    popq %rbx\n    popq %rbp\n"
        "    ret\n");
#define TRI_SIM_FAST_SWITCH 1
#else
#define TRI_SIM_FAST_SWITCH 0
#endif

#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

enum tri_sim_state { TRI_SIM_RUN = 0, TRI_SIM_WAIT_BLOCK = 1, TRI_SIM_WAIT_WARP = 2, TRI_SIM_DONE = 3 };

tri_sim_thread * tri_sim_cur;
tri_sim_thread * tri_sim_threads;
int              tri_sim_n_threads;
uint3            tri_sim_block_idx;
dim3             tri_sim_block_dim, tri_sim_grid_dim;

namespace {

#if TRI_SIM_FAST_SWITCH
constexpr size_t STACK_BYTES = 256 * 1024;
#else
constexpr size_t STACK_BYTES = 64 * 1024; /* ASan's swapcontext clears the shadow of the whole stack each switch */
#endif

struct fiber {
    int            i; /* thread index in the block */
    ucontext_t     ctx;
    void *         sp; /* the saved stack pointer (TRI_SIM_FAST_SWITCH) */
    void *         stack;
};

struct sim_stream {
    bool                               capturing = false;
    std::vector<std::function<void()>> ops;
};

thread_local cudaError_t         last_error = cudaSuccess; /* per host thread, as CUDA's */
std::string                      fault;      /* the message of a kernel's failure, printed once */
std::vector<fiber>               fibers;
std::vector<tri_sim_thread>      threads;
/* Per warp: live lanes, lanes waiting at a warp barrier, at the block barrier. */
std::vector<int>                 warp_live, warp_wait, warp_block;
int                              block_live, block_wait;
ucontext_t                       sched_ctx;
void *                           sched_sp;
fiber *                          running;
const std::function<void()> *    body;
std::vector<unsigned char>       dyn_smem;
std::vector<void *>              fresh_shared; /* the block's shared variables filled so far */
uint64_t                         rng_state;
std::unordered_map<void *, size_t> allocations;
size_t                           allocated;
std::mutex                       run_lock;   /* one grid at a time, whichever host thread launches it */
std::mutex                       alloc_lock;

uint64_t rng(void) {
    if (rng_state == 0) {
        const char * s = getenv("TRI_CUDA_SIM_SEED");
        if (!s) {
            s = getenv("TRI_TEST_SEED");
        }
        rng_state = s ? strtoull(s, nullptr, 10) * 2654435761u + 1 : (uint64_t) time(nullptr) | 1;
    }
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

void shuffle(std::vector<int> & v) {
    for (size_t i = v.size(); i > 1; i--) {
        std::swap(v[i - 1], v[rng() % i]);
    }
}

size_t memory_limit(void) {
    const char * s = getenv("TRI_CUDA_SIM_GIB");
    const double gib = s ? atof(s) : 16.0;
    return (size_t) ((gib > 0 ? gib : 16.0) * 1073741824.0);
}

void fail(cudaError_t e, const std::string & why) {
    fprintf(stderr, "cuda-sim: %s\n", why.c_str());
    if (last_error == cudaSuccess || e == cudaErrorLaunchFailure) {
        last_error = e;
    }
    if (e == cudaErrorLaunchFailure && fault.empty()) {
        fault = why; /* the sticky error's message */
    }
}

void fiber_main(void);

#if TRI_SIM_FAST_SWITCH
/* A fresh thread that starts in fiber_main on its own stack. */
void fiber_start(fiber & f) {
    uintptr_t * sp = (uintptr_t *) ((char *) f.stack + STACK_BYTES); /* 16-byte aligned */
    *--sp = 0;                                                      /* fiber_main's return address: none */
    *--sp = (uintptr_t) fiber_main;                                 /* where tri_sim_switch returns to */
    for (int i = 0; i < 6; i++) {
        *--sp = 0;                                                  /* rbp, rbx, r12-r15 */
    }
    f.sp = sp;
}
/* Scheduler -> thread f, until it waits or ends. */
void fiber_switch_in(fiber & f) {
    tri_sim_switch(&sched_sp, f.sp);
}
/* Running thread -> scheduler (for good when the thread has ended). */
void fiber_yield(void) {
    tri_sim_switch(&running->sp, sched_sp);
}
#else
void fiber_start(fiber & f) {
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = f.stack;
    f.ctx.uc_stack.ss_size = STACK_BYTES;
    f.ctx.uc_link = &sched_ctx;
    makecontext(&f.ctx, fiber_main, 0);
}
void fiber_switch_in(fiber & f) {
    swapcontext(&sched_ctx, &f.ctx);
}
void fiber_yield(void) {
    swapcontext(&running->ctx, &sched_ctx);
}
#endif

void fiber_main(void) {
    (*body)();
    tri_sim_thread & t = threads[running->i];
    t.state = TRI_SIM_DONE;
    warp_live[t.warp]--;
    block_live--;
    fiber_yield(); /* never resumed */
}

void fiber_resume(fiber & f) {
    running = &f;
    tri_sim_cur = &threads[f.i];
    fiber_switch_in(f);
}

/* Runs the block's threads to their end; false on a deadlock (reported). */
bool run_block(int n_threads) {
    if (fibers.size() < (size_t) n_threads) {
        const size_t old = fibers.size();
        fibers.resize((size_t) n_threads);
        threads.resize((size_t) n_threads);
        for (size_t i = old; i < fibers.size(); i++) {
            fibers[i].i = (int) i;
            fibers[i].stack = mmap(nullptr, STACK_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                                   -1, 0);
            if (fibers[i].stack == MAP_FAILED) {
                fibers.resize(i);
                fail(cudaErrorLaunchFailure, "no memory for a thread's stack");
                return false;
            }
        }
    }
    const dim3 b = tri_sim_block_dim;
    const int n_warps = (n_threads + 31) / 32;
    tri_sim_threads = threads.data();
    tri_sim_n_threads = n_threads;
    warp_live.assign((size_t) n_warps, 0);
    warp_wait.assign((size_t) n_warps, 0);
    warp_block.assign((size_t) n_warps, 0);
    for (int i = 0; i < n_threads; i++) {
        tri_sim_thread & t = threads[i];
        t = tri_sim_thread();
        t.idx = uint3{ i % b.x, (i / b.x) % b.y, i / (b.x * b.y) };
        t.lane = i % 32;
        t.warp = i / 32;
        t.state = TRI_SIM_RUN;
        warp_live[t.warp]++;
        fiber_start(fibers[i]);
    }
    block_live = n_threads;
    block_wait = 0;
    std::vector<int> ready;
    for (;;) {
        /* a warp with runnable lanes, at random; it runs on (its warp barriers released at once) while a coin says
         * so, so that warps get ahead of each other between block barriers */
        ready.clear();
        for (int w = 0; w < n_warps; w++) {
            if (warp_live[w] > warp_wait[w] + warp_block[w]) {
                ready.push_back(w);
            }
        }
        if (!ready.empty()) {
            const int w = ready[rng() % ready.size()];
            const int lo = 32 * w, width = (n_threads < 32 * (w + 1) ? n_threads : 32 * (w + 1)) - lo;
            for (;;) {
                const uint64_t r = rng();
                const int start = (int) (r % (uint64_t) width), step = (r >> 32) & 1 ? 1 : width - 1;
                for (int k = 0, l = start; k < width; k++, l = (l + step) % width) {
                    if (threads[lo + l].state == TRI_SIM_RUN) {
                        fiber_resume(fibers[lo + l]);
                    }
                }
                if (warp_live[w] == 0 || warp_wait[w] != warp_live[w]) {
                    break; /* done, at the block barrier, or some lanes at a block barrier and some at a warp's */
                }
                for (int l = 0; l < width; l++) {
                    if (threads[lo + l].state == TRI_SIM_WAIT_WARP) {
                        threads[lo + l].state = TRI_SIM_RUN;
                    }
                }
                warp_wait[w] = 0;
                if (rng() & 1) {
                    break;
                }
            }
            continue;
        }
        if (block_live == 0) {
            return true;
        }
        if (block_wait == block_live) {
            for (int i = 0; i < n_threads; i++) {
                if (threads[i].state == TRI_SIM_WAIT_BLOCK) {
                    threads[i].state = TRI_SIM_RUN;
                }
            }
            std::fill(warp_block.begin(), warp_block.end(), 0);
            block_wait = 0;
            continue;
        }
        char msg[256];
        snprintf(msg, sizeof msg,
                 "deadlock in block (%u, %u, %u) of %d threads: %d live, %d at __syncthreads, the rest at a warp "
                 "collective their warp's other live lanes do not reach",
                 tri_sim_block_idx.x, tri_sim_block_idx.y, tri_sim_block_idx.z, n_threads, block_live, block_wait);
        fail(cudaErrorLaunchFailure, msg);
        return false;
    }
}

void run_grid(dim3 grid, dim3 block, size_t smem, const std::function<void()> & fn) {
    std::lock_guard<std::mutex> hold(run_lock);
    const int n_threads = (int) (block.x * block.y * block.z);
    const size_t n_blocks = (size_t) grid.x * grid.y * grid.z;
    std::vector<int> order(n_blocks);
    for (size_t i = 0; i < n_blocks; i++) {
        order[i] = (int) i;
    }
    shuffle(order);
    body = &fn;
    tri_sim_block_dim = block;
    tri_sim_grid_dim = grid;
    dyn_smem.resize(smem ? smem : 1);
    for (int bi : order) {
        tri_sim_block_idx = uint3{ bi % grid.x, (bi / grid.x) % grid.y, bi / (grid.x * grid.y) };
        memset(dyn_smem.data(), 0xff, dyn_smem.size()); /* shared memory starts as NaN bits */
        fresh_shared.clear();
        if (!run_block(n_threads)) {
            break;
        }
    }
    tri_sim_cur = nullptr;
}

void run_or_record(cudaStream_t s, std::function<void()> op) {
    sim_stream * st = (sim_stream *) s;
    if (st && st->capturing) {
        st->ops.push_back(std::move(op));
    } else {
        op();
    }
}

} // namespace

void tri_sim_barrier_block(void) {
    tri_sim_cur->state = TRI_SIM_WAIT_BLOCK;
    warp_block[tri_sim_cur->warp]++;
    block_wait++;
    fiber_yield();
}

void tri_sim_barrier_warp(void) {
    tri_sim_cur->gen_warp++;
    tri_sim_cur->state = TRI_SIM_WAIT_WARP;
    warp_wait[tri_sim_cur->warp]++;
    fiber_yield();
}

void tri_sim_shared_fresh(void * p, size_t bytes) {
    for (void * q : fresh_shared) {
        if (q == p) {
            return;
        }
    }
    fresh_shared.push_back(p);
    memset(p, 0xff, bytes);
}

void * tri_sim_dyn_smem(void) {
    return dyn_smem.data();
}

int tri_sim_launch_fn(dim3 grid, dim3 block, size_t smem, cudaStream_t s, std::function<void()> fn) {
    const uint64_t threads = (uint64_t) block.x * block.y * block.z;
    if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.y > 65535 || grid.z > 65535 || threads == 0 ||
        threads > 1024 || block.z > 64 || smem > 227 * 1024) {
        char msg[160];
        snprintf(msg, sizeof msg, "invalid launch: grid (%u, %u, %u), block (%u, %u, %u), %zu bytes of shared memory",
                 grid.x, grid.y, grid.z, block.x, block.y, block.z, smem);
        fail(cudaErrorInvalidConfiguration, msg);
        return cudaErrorInvalidConfiguration;
    }
    run_or_record(s, [grid, block, smem, fn]() { run_grid(grid, block, smem, fn); });
    return cudaSuccess;
}

/* ---- runtime ---- */

const char * cudaGetErrorString(cudaError_t e) {
    switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorLaunchFailure: return fault.empty() ? "unspecified launch failure" : fault.c_str();
    default: return "simulator error";
    }
}

cudaError_t cudaGetLastError(void) {
    const cudaError_t e = last_error;
    if (e != cudaErrorLaunchFailure) { /* a kernel's failure is sticky, as on a device */
        last_error = cudaSuccess;
    }
    return e;
}

cudaError_t cudaGetDeviceCount(int * n) {
    *n = 1;
    return cudaSuccess;
}

cudaError_t cudaSetDevice(int dev) {
    return dev == 0 ? cudaSuccess : cudaErrorInvalidValue;
}

cudaError_t cudaGetDevice(int * dev) {
    *dev = 0;
    return cudaSuccess;
}

static int sm_count(void) {
    const char * s = getenv("TRI_CUDA_SIM_SMS");
    const int n = s ? atoi(s) : 4;
    return n > 0 ? n : 4;
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp * p, int dev) {
    if (dev != 0) {
        return cudaErrorInvalidValue;
    }
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "host simulator");
    p->totalGlobalMem = memory_limit();
    p->major = 8;
    p->minor = 0;
    p->multiProcessorCount = sm_count();
    return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int * v, cudaDeviceAttr a, int dev) {
    if (dev != 0) {
        return cudaErrorInvalidValue;
    }
    *v = a == cudaDevAttrMultiProcessorCount ? sm_count() : a == cudaDevAttrComputeCapabilityMajor ? 8 : 0;
    return cudaSuccess;
}

cudaError_t cudaMalloc(void ** p, size_t bytes) {
    std::lock_guard<std::mutex> hold(alloc_lock);
    *p = nullptr;
    if (bytes > memory_limit() - allocated) {
        return last_error = cudaErrorMemoryAllocation;
    }
    void * m = aligned_alloc(256, (bytes + 255) / 256 * 256);
    if (!m) {
        return last_error = cudaErrorMemoryAllocation;
    }
    memset(m, 0xff, bytes); /* device memory starts as NaN bits */
    allocations[m] = bytes;
    allocated += bytes;
    *p = m;
    return cudaSuccess;
}

cudaError_t cudaFree(void * p) {
    std::lock_guard<std::mutex> hold(alloc_lock);
    auto it = allocations.find(p);
    if (it == allocations.end()) {
        return p ? cudaErrorInvalidValue : cudaSuccess;
    }
    allocated -= it->second;
    allocations.erase(it);
    free(p);
    return cudaSuccess;
}

cudaError_t cudaMallocHost(void ** p, size_t bytes) {
    *p = malloc(bytes ? bytes : 1);
    return *p ? cudaSuccess : cudaErrorMemoryAllocation;
}

cudaError_t cudaFreeHost(void * p) {
    free(p);
    return cudaSuccess;
}

cudaError_t cudaMemGetInfo(size_t * free_bytes, size_t * total_bytes) {
    std::lock_guard<std::mutex> hold(alloc_lock);
    *total_bytes = memory_limit();
    *free_bytes = *total_bytes - allocated;
    return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void * p, int value, size_t bytes, cudaStream_t s) {
    run_or_record(s, [p, value, bytes]() { memset(p, value, bytes); });
    return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void * dst, const void * src, size_t bytes, cudaMemcpyKind kind, cudaStream_t s) {
    (void) kind;
    run_or_record(s, [dst, src, bytes]() { memmove(dst, src, bytes); });
    return cudaSuccess;
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t * s, unsigned flags) {
    (void) flags;
    *s = (cudaStream_t) new sim_stream();
    return cudaSuccess;
}

cudaError_t cudaStreamDestroy(cudaStream_t s) {
    delete (sim_stream *) s;
    return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t s) {
    (void) s;
    return last_error == cudaErrorLaunchFailure ? last_error : cudaSuccess;
}

struct tri_sim_graph {
    std::vector<std::function<void()>> ops;
};

cudaError_t cudaStreamBeginCapture(cudaStream_t s, cudaStreamCaptureMode mode) {
    (void) mode;
    sim_stream * st = (sim_stream *) s;
    if (!st || st->capturing) {
        return last_error = cudaErrorStreamCaptureUnsupported;
    }
    st->capturing = true;
    st->ops.clear();
    return cudaSuccess;
}

cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t * g) {
    sim_stream * st = (sim_stream *) s;
    *g = nullptr;
    if (!st || !st->capturing) {
        return last_error = cudaErrorStreamCaptureUnsupported;
    }
    st->capturing = false;
    *g = new tri_sim_graph{ std::move(st->ops) };
    st->ops.clear();
    return cudaSuccess;
}

cudaError_t cudaGraphInstantiate(cudaGraphExec_t * e, cudaGraph_t g, unsigned long long flags) {
    (void) flags;
    *e = new tri_sim_graph{ g->ops };
    return cudaSuccess;
}

cudaError_t cudaGraphDestroy(cudaGraph_t g) {
    delete g;
    return cudaSuccess;
}

cudaError_t cudaGraphLaunch(cudaGraphExec_t e, cudaStream_t s) {
    const tri_sim_graph * g = e;
    run_or_record(s, [g]() {
        for (const auto & op : g->ops) {
            op();
        }
    });
    return cudaSuccess;
}

cudaError_t cudaGraphExecDestroy(cudaGraphExec_t e) {
    delete e;
    return cudaSuccess;
}

struct tri_sim_event {
    double ms = 0.0;
};

cudaError_t cudaEventCreate(cudaEvent_t * e) {
    *e = new tri_sim_event();
    return cudaSuccess;
}

cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s) {
    run_or_record(s, [e]() {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        e->ms = ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
    });
    return cudaSuccess;
}

cudaError_t cudaEventElapsedTime(float * ms, cudaEvent_t from, cudaEvent_t to) {
    *ms = (float) (to->ms - from->ms);
    return cudaSuccess;
}

cudaError_t cudaEventDestroy(cudaEvent_t e) {
    delete e;
    return cudaSuccess;
}
