/*
 * triattn-server: an OpenAI-compatible HTTP server over libtriattn (include/triattn.h only).
 *
 * Threads: the main thread accepts; each connection gets a thread that reads requests (keep-alive) and
 * answers them; a generation request takes one of --parallel slots (sessions over the shared model),
 * waiting in FIFO order while all are busy.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <malloc.h>
#include <time.h>
#include <unistd.h>

#include "net.h"
#include "server.h"
#include "../common/model_files.h"

static struct server g_srv;

static void on_signal(int sig) { (void)sig; g_srv.stop = 1; }

/* The process's side, one definition per system: Ctrl-C (and SIGTERM) stop the server; how the C
 * library's allocator is tuned. */
#if defined(_WIN32)
static void process_setup(void) {
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
}
#else
static void process_setup(void) {
    /* Connection threads come and go: two malloc arenas keep their freed buffers reusable instead of
     * spreading them over one arena per thread (RSS stays flat under load). */
    mallopt(M_ARENA_MAX, 2);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
}
#endif

static void usage(FILE * f) {
    fprintf(f,
        "usage: triattn-server [-m MODEL.gguf] [options]\n"
        "\n"
        "An OpenAI-compatible HTTP server: /v1/completions, /v1/chat/completions (stream and not), /v1/embeddings\n"
        "(CPU), /v1/models, /health, /tokenize, /detokenize, /metrics (Prometheus), /slots.\n"
        "\n"
        "server:\n"
        "  --host ADDR          address to listen on (default 127.0.0.1)\n"
        "  --port N             port; 0 picks a free one (default 8080). Prints 'listening on http://HOST:PORT'\n"
        "  --parallel N         slots = requests generated at once; more wait in a queue (default 4). One engine\n"
        "                       thread advances every busy slot by one token per forward step (continuous batching)\n"
        "  --prefill-chunk N    prompt tokens a slot prefills per step, between the running slots' tokens (default\n"
        "                       128; at most --kv-interval with a compressing policy)\n"
        "  --max-body BYTES     largest request body, else 413 (default 1048576)\n"
        "  --max-queued-bytes BYTES  request bodies held at once, server-wide; beyond it 503 with Retry-After\n"
        "                       (default 67108864)\n"
        "  --timeout S          one deadline per request: keep-alive idle wait, head and body (408 when it\n"
        "                       passes with a request partly received; default 30)\n"
        "  --max-conns N        open connections at most; more get 503, but /health is still answered through\n"
        "                       a few places kept for it (default 256)\n"
        "  --max-conns-per-ip N open connections per client address; more get 429 (default 0 = no limit)\n"
        "  --api-key KEY        require 'Authorization: Bearer KEY' (all but /health); visible in ps: prefer\n"
        "  --api-key-file FILE  the key from a file (trailing whitespace dropped), or $TRIATTN_API_KEY\n"
        "  --cors               send Access-Control-Allow-* headers and answer OPTIONS preflights\n"
        "  --alias NAME         model name reported by the API (default: the file name)\n"
        "\n"
        "model and sessions:\n"
        "  -m, --model PATH     GGUF model file (default: the default model, " MODEL_FILES_DEFAULT_NAME ",\n"
        "                       in pytriattn's cache: $PYTRIATTN_CACHE or ~/.cache/pytriattn; `pytriattn fetch`)\n"
        "  -c, --ctx-size N     context per slot in tokens (default 4096)\n"
        "  -t, --threads N      CPU threads running each forward step (default: all cores)\n"
        "  -ngl, --n-gpu-layers N  layers on the GPU: 0 = none (default), -1 = all (CUDA builds; else the CPU)\n"
        "  --gpu-mem-limit SIZE device memory the weights and every slot may use, e.g. 24GiB (default: what the\n"
        "                       device has free); slots that do not fit are refused at startup with what they need\n"
        "  --chat-format NAME   chatml, llama3, llama2, mistral, gemma, qwen, deepseek-r1 (default: from the model)\n"
        "  --strict-tool-calls  read tool calls only in the chat format's own syntax (<tool_call> tags, Llama 3's\n"
        "                       JSON reply). Default: also the shapes small models write for declared tools\n"
        "                       (```json fences, bare JSON calls, <|python_tag|>, [TOOL_CALLS])\n"
        "\n"
        "KV cache (TriAttention):\n"
        "  --kv-policy NAME     full, triattention, or a baseline: streaming, random, h2o, snapkv, rkv\n"
        "                       (default: triattention when calibrated, else full). Requests may lower the\n"
        "                       budget with \"kv_budget\": N\n"
        "  --kv-budget N        slots kept per layer/KV head after compression (default 2048)\n"
        "  --kv-interval N      compress when live slots reach budget + interval (default 128)\n"
        "  --kv-window N        recent tokens never evicted (default: the policy's)\n"
        "  --kv-sink N          leading tokens never evicted (default 4)\n"
        "  --kv-mode MODE       triattention score options: per_head (default), per_layer_per_head, global, then\n"
        "                       ,trig=X ,norm=X ,agg=max ,look=N|all ,lookw=X (see docs/triattention-engine.md)\n"
        "  --kv-recall N        keep evicted rows in a second tier (host memory, 8-bit) and, once a prompt is\n"
        "                       read, bring back up to N per layer/KV head that its last queries attend to\n"
        "                       (default 0 = off)\n"
        "  --kv-recall-max-mib N  cap of that tier per slot in MiB, oldest pages dropped (default 0 = no cap)\n"
        "  --calibration PATH   sidecar GGUF with triattention.* query centres (default: MODEL.tri-stats.gguf\n"
        "                       beside the model or in the installed package's data folder, when there is one;\n"
        "                       the default model's ships there)\n"
        "\n"
        "prompt cache:\n"
        "  --slot-save-path DIR directory for POST /slots/{id}?action=save|restore {\"filename\": NAME} (off by default).\n"
        "                       Requests go to the idle slot sharing the longest prefix with their prompt and only\n"
        "                       the rest is prefilled (\"cache_prompt\": false opts out)\n"
        "  --prefix-share N     a request starts from a copy of another slot's cache (busy or idle) when that holds\n"
        "                       at least N more of its prompt's tokens than its own slot, e.g. a shared system\n"
        "                       prompt; a request whose prompt another slot is prefilling waits for that part and\n"
        "                       copies it (default 64; 0 = off)\n"
        "\n"
        "  -h, --help           this help\n");
}

/* -ngl / --n-gpu-layers: 0 = CPU, -1 = the whole model on the GPU (CUDA builds; else the CPU with a warning). */
static long g_n_gpu_layers = 0;
static uint64_t g_gpu_mem_limit = 0; /* --gpu-mem-limit: device bytes of the weights and every slot; 0 = none */

/* The API key from a file: its content up to trailing whitespace (at most 4 KiB). NULL after a message. */
static const char * read_key_file(const char * path) {
    FILE * f = fopen(path, "rb");
    if (!f) { fprintf(stderr, "error: --api-key-file %s: %s\n", path, strerror(errno)); return NULL; }
    static char key[4097];
    size_t n = fread(key, 1, sizeof key, f);
    fclose(f);
    if (n == sizeof key) { fprintf(stderr, "error: --api-key-file %s: longer than 4096 bytes\n", path); return NULL; }
    while (n > 0 && (key[n - 1] == '\n' || key[n - 1] == '\r' || key[n - 1] == ' ' || key[n - 1] == '\t')) n--;
    key[n] = 0;
    if (n == 0 || strlen(key) != n) {
        fprintf(stderr, "error: --api-key-file %s: %s\n", path, n ? "the key contains a NUL byte" : "empty");
        return NULL;
    }
    return key;
}

static bool parse_int(const char * s, long long lo, long long hi, long long * out) {
    char * e = NULL;
    errno = 0;
    long long v = strtoll(s, &e, 10);
    if (errno || !e || *e || e == s || v < lo || v > hi) return false;
    *out = v;
    return true;
}

static int parse_args(int argc, char ** argv, struct server_opts * o) {
    o->host = "127.0.0.1";
    o->port = 8080;
    o->max_body = 1 << 20;
    o->timeout_s = 30;
    o->parallel = 4;
    o->threads = 0;
    o->ctx_size = 4096;
    struct triattn_session_params defaults; /* KV defaults come from the library */
    triattn_session_params_init(&defaults);
    o->kv_budget = defaults.kv_budget;
    o->kv_interval = defaults.kv_interval;
    o->kv_window = defaults.kv_window;
    o->kv_sink = defaults.kv_sink;
    o->max_conns = 256;
    o->max_held_bytes = 64LL << 20;
    o->prefill_chunk = 128;
    o->prefix_share = 64;
    for (int i = 1; i < argc; i++) {
        const char * a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(stdout); return 1; }
        if (!strcmp(a, "--cors")) { o->cors = true; continue; }
        if (!strcmp(a, "--strict-tool-calls")) { o->strict_tool_calls = true; continue; }
        if (i + 1 >= argc) { fprintf(stderr, "error: unknown option or missing value: %s\n", a); return -1; }
        const char * v = argv[++i];
        long long n = 0; /* 64-bit on every system (long is 32-bit on Windows) */
#define INTOPT(name, lo, hi, field) \
        if (!strcmp(a, name)) { if (!parse_int(v, lo, hi, &n)) { fprintf(stderr, "error: %s needs an integer in [%lld, %lld]\n", a, (long long)(lo), (long long)(hi)); return -1; } field = n; continue; }
        INTOPT("--port", 0, 65535, o->port)
        INTOPT("--parallel", 1, 256, o->parallel)
        INTOPT("--max-body", 1, 1L << 30, o->max_body)
        INTOPT("--timeout", 1, 86400, o->timeout_s)
        INTOPT("--max-conns", 1, 100000, o->max_conns)
        INTOPT("--max-conns-per-ip", 0, 100000, o->max_conns_per_ip)
        INTOPT("--max-queued-bytes", 1, 1LL << 40, o->max_held_bytes)
        INTOPT("-c", 0, 1 << 24, o->ctx_size)
        INTOPT("--ctx-size", 0, 1 << 24, o->ctx_size)
        INTOPT("-t", 0, 1024, o->threads)
        INTOPT("--threads", 0, 1024, o->threads)
        INTOPT("--kv-budget", 1, 1 << 24, o->kv_budget)
        INTOPT("--kv-interval", 1, 1 << 24, o->kv_interval)
        INTOPT("--kv-window", -1, 1 << 24, o->kv_window)
        INTOPT("--kv-sink", 0, 1 << 24, o->kv_sink)
        INTOPT("--kv-recall", 0, 1 << 24, o->kv_recall)
        INTOPT("--kv-recall-max-mib", 0, 1 << 30, o->kv_recall_max_mib)
        INTOPT("--prefill-chunk", 1, 65536, o->prefill_chunk)
        INTOPT("--prefix-share", 0, 1 << 24, o->prefix_share)
        INTOPT("-ngl", -1, 1 << 20, g_n_gpu_layers)
        INTOPT("--n-gpu-layers", -1, 1 << 20, g_n_gpu_layers)
#undef INTOPT
        if (!strcmp(a, "--gpu-mem-limit")) {
            if (!triattn_parse_bytes(v, &g_gpu_mem_limit)) {
                fprintf(stderr, "error: --gpu-mem-limit needs a byte size such as 24GiB or 512M, got '%s'\n", v);
                return -1;
            }
            continue;
        }
        if (!strcmp(a, "--host")) { o->host = v; continue; }
        if (!strcmp(a, "--api-key")) { o->api_key = v; continue; }
        if (!strcmp(a, "--api-key-file")) { if (!(o->api_key = read_key_file(v))) return -1; continue; }
        if (!strcmp(a, "--alias")) { o->alias = v; continue; }
        if (!strcmp(a, "-m") || !strcmp(a, "--model")) { o->model_path = v; continue; }
        if (!strcmp(a, "--chat-format")) { o->chat_format = v; continue; }
        if (!strcmp(a, "--kv-policy")) { o->kv_policy = v; continue; }
        if (!strcmp(a, "--kv-mode")) { o->kv_mode = v; continue; }
        if (!strcmp(a, "--calibration")) { o->calibration = v; continue; }
        if (!strcmp(a, "--slot-save-path")) { o->slot_save_path = v; continue; }
        fprintf(stderr, "error: unknown option %s (see --help)\n", a);
        return -1;
    }
    if (!o->model_path) {
        static char def[4096];
        if (!model_files_default_model(def, sizeof def) || access(def, R_OK) != 0) {
            fprintf(stderr, "error: no model given (-m MODEL.gguf), and the default model is not at %s (`pytriattn "
                    "fetch` downloads it; see --help)\n", def[0] ? def : "$HOME/.cache/pytriattn");
            return -1;
        }
        o->model_path = def;
    }
    if (!o->api_key) {
        const char * env = getenv("TRIATTN_API_KEY");
        if (env && *env) o->api_key = env;
    }
    if (!o->alias) {
        const char * b = strrchr(o->model_path, '/');
        o->alias = b ? b + 1 : o->model_path;
    }
    return 0;
}

/* ---- open connections per client address (--max-conns-per-ip) ---- */

struct addr_count { unsigned char addr[16]; int n; };
static struct { pthread_mutex_t mu; struct addr_count * v; int n, cap; } g_addrs = { .mu = PTHREAD_MUTEX_INITIALIZER };

/* The peer's address as 16 bytes (IPv4 as v4-mapped IPv6). */
static void peer_key(const struct sockaddr_storage * sa, unsigned char key[16]) {
    memset(key, 0, 16);
    if (sa->ss_family == AF_INET6) { memcpy(key, &((const struct sockaddr_in6 *)sa)->sin6_addr, 16); return; }
    if (sa->ss_family == AF_INET) { key[10] = key[11] = 0xFF; memcpy(key + 12, &((const struct sockaddr_in *)sa)->sin_addr, 4); }
}

/* Counts one more connection from key unless it already has limit (0: no limit). */
static bool addr_take(const unsigned char key[16], int limit) {
    if (limit <= 0) return true;
    pthread_mutex_lock(&g_addrs.mu);
    int k = 0;
    while (k < g_addrs.n && memcmp(g_addrs.v[k].addr, key, 16) != 0) k++;
    bool ok = true;
    if (k == g_addrs.n) {
        if (g_addrs.n == g_addrs.cap) {
            int cap = g_addrs.cap ? g_addrs.cap * 2 : 64;
            struct addr_count * t = realloc(g_addrs.v, (size_t)cap * sizeof *t);
            if (t) { g_addrs.v = t; g_addrs.cap = cap; }
        }
        if (g_addrs.n < g_addrs.cap) { memcpy(g_addrs.v[k].addr, key, 16); g_addrs.v[k].n = 0; g_addrs.n++; }
        else ok = false;
    }
    if (ok && g_addrs.v[k].n >= limit) ok = false;
    if (ok) g_addrs.v[k].n++;
    pthread_mutex_unlock(&g_addrs.mu);
    return ok;
}

static void addr_give_back(const unsigned char key[16], int limit) {
    if (limit <= 0) return;
    pthread_mutex_lock(&g_addrs.mu);
    for (int k = 0; k < g_addrs.n; k++) {
        if (memcmp(g_addrs.v[k].addr, key, 16) != 0) continue;
        if (--g_addrs.v[k].n == 0) g_addrs.v[k] = g_addrs.v[--g_addrs.n];
        break;
    }
    pthread_mutex_unlock(&g_addrs.mu);
}

/* Places kept for connections over the limits, so /health still answers. */
#define RESERVED_CONNS 4

struct conn_arg { int fd; int busy_status; unsigned char addr[16]; };

static void * conn_main(void * p) {
    struct conn_arg * ca = p;
    api_serve_connection(&g_srv, ca->fd);
    addr_give_back(ca->addr, g_srv.o.max_conns_per_ip);
    atomic_fetch_sub(&g_srv.active_conns, 1);
    free(ca);
    return NULL;
}

static void * reserved_main(void * p) {
    struct conn_arg * ca = p;
    api_serve_reserved(&g_srv, ca->fd, ca->busy_status);
    atomic_fetch_sub(&g_srv.reserved_conns, 1);
    free(ca);
    return NULL;
}

static void refuse_now(int fd) {
    static const char body[] = "{\"error\":{\"message\":\"too many connections\",\"type\":\"server_error\",\"code\":\"busy\"}}";
    char busy[320];
    int n = snprintf(busy, sizeof busy, "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\nRetry-After: 1\r\nConnection: close\r\n\r\n%s", sizeof body - 1, body);
    (void)net_send(fd, busy, (size_t)n, true);
    net_close(fd);
}

/* Starts a detached thread running fn(ca); false (ca freed, fd closed) when it cannot. */
static bool spawn(pthread_attr_t * attr, void * (*fn)(void *), struct conn_arg * ca) {
    pthread_t th;
    if (pthread_create(&th, attr, fn, ca) == 0) return true;
    net_close(ca->fd);
    free(ca);
    return false;
}

/* Warns when the server listens beyond loopback without an API key. */
static void warn_if_open(int lfd, const char * key) {
    if (key && *key) return;
    struct sockaddr_storage sa;
    socklen_t sl = sizeof sa;
    if (getsockname(lfd, (struct sockaddr *)&sa, &sl) != 0) return;
    unsigned char k[16];
    peer_key(&sa, k);
    static const unsigned char v6_loop[16] = { [15] = 1 };
    const bool v4_loop = k[10] == 0xFF && k[11] == 0xFF && k[12] == 127 && !memcmp(k, v6_loop, 10);
    if (v4_loop || !memcmp(k, v6_loop, 16)) return;
    fprintf(stderr, "warning: listening on a non-loopback address without an API key: anyone who can reach it "
                    "can use the model (--api-key-file FILE or $TRIATTN_API_KEY)\n");
}

int main(int argc, char ** argv) {
    struct server * srv = &g_srv;
    int pa = parse_args(argc, argv, &srv->o);
    if (pa) return pa > 0 ? 0 : 2;

    process_setup();
    if (!net_init()) {
        fprintf(stderr, "error: the socket layer did not start\n");
        return 1;
    }

    char err[512], sidecar[4096];
    struct triattn_model_params mp;
    triattn_model_params_init(&mp);
    mp.n_gpu_layers  = (int32_t) g_n_gpu_layers;
    mp.gpu_mem_limit = g_gpu_mem_limit;
    if (model_files_load("", srv->o.model_path, srv->o.calibration, &mp, &srv->model, sidecar,
                         sizeof sidecar) != TRIATTN_OK) {
        return 1;
    }
    triattn_model_get_info(srv->model, &srv->info);
    if (model_files_centres_missing("", srv->model, srv->o.model_path, srv->o.kv_policy)) {
        triattn_model_free(srv->model);
        return 1;
    }

    struct triattn_session_params sp;
    triattn_session_params_init(&sp);
    sp.n_ctx = srv->o.ctx_size;
    sp.n_threads = srv->o.threads;  /* 0 = every core: one forward step at a time runs every slot's tokens */
    sp.kv_policy = srv->o.kv_policy;
    sp.kv_mode = srv->o.kv_mode;
    sp.kv_budget = srv->o.kv_budget;
    sp.kv_interval = srv->o.kv_interval;
    sp.kv_window = srv->o.kv_window;
    sp.kv_sink = srv->o.kv_sink;
    sp.kv_recall = srv->o.kv_recall;
    sp.kv_recall_max_mib = srv->o.kv_recall_max_mib;
    if (slots_init(&srv->pool, srv->model, srv->o.parallel, &sp, srv->o.prefill_chunk, srv->o.prefix_share, &srv->stop, err, sizeof err) != TRIATTN_OK) {
        fprintf(stderr, "error: creating %d sessions: %s\n", srv->o.parallel, err);
        triattn_model_free(srv->model);
        return 1;
    }

    int port = 0;
    int lfd = net_listen(srv->o.host, srv->o.port, &port);
    if (lfd < 0) { slots_free(&srv->pool); triattn_model_free(srv->model); return 1; }
    srv->started = time(NULL);
    warn_if_open(lfd, srv->o.api_key);
    fprintf(stderr, "triattn-server %s: model %s (%s, %lld params), %d slots x %d threads, n_ctx %d, kv %s, "
            "query centres: %s\n", triattn_version(), srv->o.alias, srv->info.arch, (long long)srv->info.n_params,
            srv->o.parallel, triattn_session_n_threads(srv->pool.slots[0].session), triattn_session_n_ctx(srv->pool.slots[0].session),
            srv->pool.slots[0].kv.policy, sidecar[0] ? sidecar : srv->info.has_calibration ? "embedded" : "none");
    printf("listening on http://%s:%d\n", srv->o.host, port);
    fflush(stdout);

    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, 1 << 20);
    while (!srv->stop) {
        if (net_wait_readable(lfd, 200) <= 0) continue;
        struct sockaddr_storage peer;
        int fd = net_accept(lfd, &peer);
        if (fd < 0) continue;
        struct conn_arg * ca = malloc(sizeof *ca);
        if (!ca) { refuse_now(fd); continue; }
        ca->fd = fd;
        peer_key(&peer, ca->addr);
        int busy = 0;
        if (atomic_load(&srv->active_conns) >= srv->o.max_conns) busy = 503;
        else if (!addr_take(ca->addr, srv->o.max_conns_per_ip)) busy = 429;
        if (busy) {
            /* over a limit: one of a few reserved places answers /health (and says busy to the rest) */
            ca->busy_status = busy;
            if (atomic_fetch_add(&srv->reserved_conns, 1) >= RESERVED_CONNS) {
                atomic_fetch_sub(&srv->reserved_conns, 1);
                free(ca);
                refuse_now(fd);
            } else if (!spawn(&attr, reserved_main, ca)) {
                atomic_fetch_sub(&srv->reserved_conns, 1);
            }
            continue;
        }
        unsigned char key[16];
        memcpy(key, ca->addr, sizeof key);
        atomic_fetch_add(&srv->active_conns, 1);
        if (!spawn(&attr, conn_main, ca)) {
            addr_give_back(key, srv->o.max_conns_per_ip);
            atomic_fetch_sub(&srv->active_conns, 1);
        }
    }
    pthread_attr_destroy(&attr);
    net_close(lfd);
    fprintf(stderr, "shutting down: waiting for %d connection(s)\n", atomic_load(&srv->active_conns));
    /* connections notice the stop flag within ~200 ms; generations stop at the next token */
    for (int k = 0; k < 100 && atomic_load(&srv->active_conns) > 0; k++) usleep(50 * 1000);
    if (atomic_load(&srv->active_conns) == 0) {
        slots_free(&srv->pool);
        triattn_model_free(srv->model);
    }
    fprintf(stderr, "bye\n");
    return 0;
}
