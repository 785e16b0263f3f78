/* test_util.h - shared scaffolding of the C unit tests (header-only, C11): a seeded PRNG (xoshiro256**
 * seeded through splitmix64), uniform/normal helpers, pass/fail counters, CHECK(cond, fmt, ...) and
 * tu_finish(), which prints the exact final line "N passed, M failed" that ctest/pytest/CI parse.
 *
 *   int main(void) {
 *       tu_seed_init("TRI_TEST_SEED");   // fresh seed from the clock unless the env var is set
 *       ...
 *       return tu_finish();              // prints the seed on failure, then "N passed, M failed"
 *   }
 *
 * Define TU_FAIL_PRINT_LIMIT before including to print only the first N failures (all are counted).
 * Also: tu_buf, a growable byte buffer for in-memory file images (GGUF writers), and, when triattn.h is
 * included first, tu_load_default_model() for the real model named by TRI_DEFAULT_MODEL. */
#ifndef TRI_TEST_UTIL_H
#define TRI_TEST_UTIL_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#if defined(_WIN32)
#  include <direct.h>
#  include <io.h>
#  include <process.h>
#else
#  include <unistd.h>
#endif

/* ---- the system: environment and temporary files (POSIX and Windows) ----------------------------- */

#if defined(_WIN32)
static inline int tu_pid(void) { return _getpid(); }
/* The folder of temporary files. */
static inline const char * tu_tmp_root(void) {
    const char * t = getenv("TEMP");
    return t && *t ? t : ".";
}
/* Sets (value NULL: removes) an environment variable of this process. */
static inline void tu_setenv(const char * name, const char * value) {
    _putenv_s(name, value ? value : "");
}
/* A new folder in the temporary files' folder: its path in out (n bytes), or false. */
static inline int tu_mkdtemp(char * out, size_t n, const char * prefix) {
    for (int i = 0; i < 100; i++) {
        snprintf(out, n, "%s/%s%d_%d", tu_tmp_root(), prefix, tu_pid(), i);
        if (_mkdir(out) == 0) {
            return 1;
        }
    }
    return 0;
}
#else
static inline int tu_pid(void) { return (int) getpid(); }
static inline const char * tu_tmp_root(void) {
    const char * t = getenv("TMPDIR");
    return t && *t ? t : "/tmp";
}
static inline void tu_setenv(const char * name, const char * value) {
    if (value) {
        setenv(name, value, 1);
    } else {
        unsetenv(name);
    }
}
static inline int tu_mkdtemp(char * out, size_t n, const char * prefix) {
    snprintf(out, n, "%s/%sXXXXXX", tu_tmp_root(), prefix);
    return mkdtemp(out) != NULL;
}
#endif

/* A path for a temporary file named after name and this process (the file is not created). */
static inline void tu_tmp_file(char * out, size_t n, const char * name) {
    snprintf(out, n, "%s/%s_%d", tu_tmp_root(), name, tu_pid());
}

/* ---- PRNG ---------------------------------------------------------------------------------------- */

static uint64_t tu_rng_s[4];
static uint64_t tu_seed_value;
static const char * tu_seed_env;

static inline uint64_t tu_splitmix64(uint64_t * x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Seeds the generator with an explicit value (e.g. from a command line). */
static inline void tu_seed(uint64_t seed) {
    uint64_t x = seed;
    tu_seed_value = seed;
    for (int i = 0; i < 4; i++) {
        tu_rng_s[i] = tu_splitmix64(&x);
    }
}

/* Seeds from the clock, unless env_name (may be NULL) names a set environment variable; remembers the
 * seed and the variable for tu_finish(). Returns the seed. */
static inline uint64_t tu_seed_init(const char * env_name) {
    const char * env = env_name ? getenv(env_name) : NULL;
    uint64_t seed;
    if (env && *env) {
        seed = strtoull(env, NULL, 10);
    } else {
        int local;
        seed = (uint64_t) time(NULL) ^ ((uint64_t) clock() << 20) ^ ((uint64_t) (uintptr_t) &local << 32);
    }
    tu_seed_env = env_name;
    tu_seed(seed);
    return seed;
}

static inline uint64_t tu_rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

/* xoshiro256** */
static inline uint64_t tu_u64(void) {
    uint64_t * s = tu_rng_s;
    const uint64_t r = tu_rotl(s[1] * 5, 7) * 9;
    const uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = tu_rotl(s[3], 45);
    return r;
}
static inline uint32_t tu_u32(void) { return (uint32_t) (tu_u64() >> 32); }
/* Uniform in [0, n); 0 when n is 0. */
static inline uint64_t tu_below(uint64_t n) { return n ? tu_u64() % n : 0; }
/* Uniform integer in [lo, hi] (inclusive). */
static inline int64_t tu_int(int64_t lo, int64_t hi) { return lo + (int64_t) tu_below((uint64_t) (hi - lo) + 1); }
/* Uniform double in [0, 1). */
static inline double tu_uniform(void) { return (double) (tu_u64() >> 11) * 0x1.0p-53; }
/* Uniform double in (0, 1): safe for log(). */
static inline double tu_uniform_open(void) { return ((double) (tu_u64() >> 11) + 0.5) * 0x1.0p-53; }
/* Uniform double in [-1, 1). */
static inline double tu_symmetric(void) { return tu_uniform() * 2.0 - 1.0; }

/* The larger of a and b for maxima of errors and values; a NaN in either wins, so a NaN error fails the check
 * that follows it (fmax would drop the NaN). */
static inline double tu_max(double a, double b) {
    if (a != a) return a;
    return b != b || b > a ? b : a;
}
/* Uniform float in [lo, hi). */
static inline float tu_uniformf(float lo, float hi) { return lo + (hi - lo) * (float) tu_uniform(); }
/* Standard normal (Box-Muller). */
static inline double tu_normal(void) {
    return sqrt(-2.0 * log(tu_uniform_open())) * cos(6.283185307179586 * tu_uniform());
}

/* ---- counters and CHECK -------------------------------------------------------------------------- */

static int tu_n_pass, tu_n_fail;

#ifndef TU_FAIL_PRINT_LIMIT
#define TU_FAIL_PRINT_LIMIT 0 /* 0: print every failure */
#endif

static inline int tu_fail_printable(void) {
    return TU_FAIL_PRINT_LIMIT <= 0 || tu_n_fail <= TU_FAIL_PRINT_LIMIT;
}

/* Counts a check; on failure prints "FAIL file:line (seed N): message". */
#define CHECK(cond, ...)                                                                             \
    do {                                                                                             \
        if (cond) {                                                                                  \
            tu_n_pass++;                                                                             \
        } else {                                                                                     \
            tu_n_fail++;                                                                             \
            if (tu_fail_printable()) {                                                               \
                printf("FAIL %s:%d (seed %llu): ", __FILE__, __LINE__,                               \
                       (unsigned long long) tu_seed_value);                                          \
                printf(__VA_ARGS__);                                                                 \
                printf("\n");                                                                        \
                fflush(stdout);                                                                      \
            }                                                                                        \
        }                                                                                            \
    } while (0)

/* Prints the seed when something failed, then "N passed, M failed"; returns the exit code. */
static inline int tu_finish(void) {
    if (tu_n_fail) {
        if (tu_seed_env) {
            printf("seed %llu (rerun with %s=%llu)\n", (unsigned long long) tu_seed_value, tu_seed_env,
                   (unsigned long long) tu_seed_value);
        } else {
            printf("seed %llu\n", (unsigned long long) tu_seed_value);
        }
    }
    printf("%d passed, %d failed\n", tu_n_pass, tu_n_fail);
    fflush(stdout);
    return tu_n_fail ? 1 : 0;
}

/* ---- growable byte buffer (in-memory file images) ------------------------------------------------ */

typedef struct tu_buf {
    uint8_t * p;
    size_t    n, cap;
} tu_buf;

static inline void tu_put(tu_buf * b, const void * d, size_t n) {
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 256;
        b->p   = realloc(b->p, b->cap);
    }
    if (n) {
        memcpy(b->p + b->n, d, n);
    }
    b->n += n;
}
static inline void tu_put_u32(tu_buf * b, uint32_t v) { tu_put(b, &v, 4); }
static inline void tu_put_u64(tu_buf * b, uint64_t v) { tu_put(b, &v, 8); }
/* GGUF string: u64 length, then the bytes (may contain NUL). */
static inline void tu_put_str(tu_buf * b, const char * s, size_t n) {
    tu_put_u64(b, n);
    tu_put(b, s, n);
}

/* ---- the real model (TRI_DEFAULT_MODEL) ---------------------------------------------------------- */

#ifdef TRIATTN_H
/* Loads the model named by TRI_DEFAULT_MODEL. Unset: prints "skip: <what> (...)" and returns NULL.
 * Load error: a failed check, NULL. */
static inline triattn_model * tu_load_default_model(const char * what) {
    const char * path = getenv("TRI_DEFAULT_MODEL");
    if (!path || !*path) {
        printf("skip: %s (set TRI_DEFAULT_MODEL to the default GGUF)\n", what);
        return NULL;
    }
    char err[1024];
    triattn_model * m = NULL;
    if (triattn_model_load(path, NULL, &m, err, sizeof err) != TRIATTN_OK) {
        CHECK(0, "load %s: %s", path, err);
        return NULL;
    }
    return m;
}

/* A CPU session of m with the given KV policy, budget and interval (n_batch 0: the default). A failed check,
 * NULL, when the session cannot be created. */
/* kv_mode NULL and window -1: the defaults. */
/* kv_recall > 0: with a second tier of that many recalled rows. */
static inline triattn_session * tu_session_recall(triattn_model * m, const char * policy, const char * kv_mode,
                                                  int window, int budget, int interval, int n_ctx, int n_batch,
                                                  int kv_recall) {
    struct triattn_session_params sp;
    triattn_session_params_init(&sp);
    sp.kv_recall = kv_recall;
    if (kv_mode) {
        sp.kv_mode = kv_mode;
    }
    sp.kv_window = window;
    sp.n_ctx = n_ctx;
    sp.n_threads = 2;
    if (n_batch > 0) {
        sp.n_batch = n_batch;
    }
    sp.kv_policy = policy;
    sp.kv_budget = budget;
    sp.kv_interval = interval;
    triattn_session * s = NULL;
    char err[512];
    if (triattn_session_create(m, &sp, &s, err, sizeof err) != TRIATTN_OK) {
        CHECK(0, "session_create(%s): %s", policy, err);
        return NULL;
    }
    return s;
}

static inline triattn_session * tu_session_mode(triattn_model * m, const char * policy, const char * kv_mode,
                                                int window, int budget, int interval, int n_ctx, int n_batch) {
    return tu_session_recall(m, policy, kv_mode, window, budget, interval, n_ctx, n_batch, 0);
}

static inline triattn_session * tu_session(triattn_model * m, const char * policy, int budget, int interval,
                                           int n_ctx, int n_batch) {
    return tu_session_mode(m, policy, NULL, -1, budget, interval, n_ctx, n_batch);
}
#endif

/* Index of the largest of x[0..n) (the first one on ties). */
static inline int tu_argmax(const float * x, int n) {
    int b = 0;
    for (int i = 1; i < n; i++) {
        b = x[i] > x[b] ? i : b;
    }
    return b;
}

#if defined(TRIATTN_H) && defined(TRI_CALIBRATION_H)
/* Random query centres so the TriAttention policy can run on the real model (what it keeps does not matter
 * to tests of the engine's plumbing). False (a failed check) when the model refuses them. */
static inline bool tu_inject_random_centres(triattn_model * m) {
    struct triattn_model_info info;
    triattn_model_get_info(m, &info);
    const size_t n = (size_t) info.n_layer * info.n_head * info.freq_count;
    float * re = malloc(n * sizeof(float)), * im = malloc(n * sizeof(float)), * ab = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) {
        re[i] = (float) tu_normal();
        im[i] = (float) tu_normal();
        ab[i] = (float) (hypot(re[i], im[i]) + tu_uniform());
    }
    char err[256];
    const enum triattn_status st = tri_model_set_centres(m, re, im, ab, n, 1000, err, sizeof err);
    CHECK(st == TRIATTN_OK, "set_centres: %s", err);
    free(re);
    free(im);
    free(ab);
    return st == TRIATTN_OK;
}
#endif

#endif /* TRI_TEST_UTIL_H */
