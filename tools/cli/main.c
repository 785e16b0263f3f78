/* triattn-cli: generate text from a GGUF model (like llama.cpp's llama-cli), or benchmark prefill and decode
 * speed at several KV depths (like llama-bench). Built only on the public header include/triattn.h. */
#define _POSIX_C_SOURCE 200809L
#include "triattn.h"
#include "../common/model_files.h"

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#if defined(_WIN32)
#  define WIN32_LEAN_AND_MEAN
#  include <windows.h>
#  include <shellapi.h>
#endif

#define CLI_MAX_LIST 32
#define CLI_MAX_STOP 16
#define CLI_MAX_BIAS 64

static const char * g_prog = "triattn-cli";
static volatile sig_atomic_t g_interrupted = 0;

static void on_sigint(int sig) {
    (void) sig;
    g_interrupted = 1;
}

struct cli_args {
    const char * model;
    const char * prompt;       /* -p text (generation) or list of prompt lengths (bench) */
    const char * prompt_file;
    const char * n_predict;    /* -n: one number (generation) or a list (bench) */
    const char * depths;       /* -d list (bench) */
    const char * parallel;     /* -np list (bench): sessions decoding together */
    const char * system;
    const char * chat_format;
    const char * calibration;
    char         sidecar[4096]; /* the centres loaded: --calibration, a sidecar found by name, or "" */
    char         default_model[4096];
    int32_t      n_gpu_layers; /* -ngl: 0 = CPU, -1 = the whole model on the GPU */
    uint64_t     gpu_mem_limit; /* --gpu-mem-limit bytes, 0 = none */
    const char * stop[CLI_MAX_STOP];
    int32_t      n_stop;
    triattn_token bias_ids[CLI_MAX_BIAS]; /* -l: logit bias pairs */
    float        bias[CLI_MAX_BIAS];
    bool         chat, ignore_eos, verbose, bench, json, no_display_prompt;
    int32_t      repetitions;
    struct triattn_session_params  sp;
    struct triattn_sampler_params  sampling;
    bool         seed_set;
};

/* ---- usage and number parsing ------------------------------------------------------------------- */

static void usage(FILE * f) {
    fprintf(f,
        "usage: %s [-m MODEL.gguf] [-p PROMPT | -f FILE] [options]       generate text\n"
        "       %s [-m MODEL.gguf] --bench [-p 512] [-n 128] [-d 0,1024,4096] [-r 3] [options]\n"
        "\n"
        "model and prompt:\n"
        "  -m, --model FILE        GGUF model to load (default: the default model, " MODEL_FILES_DEFAULT_NAME ",\n"
        "                          in pytriattn's cache: $PYTRIATTN_CACHE or ~/.cache/pytriattn; `pytriattn\n"
        "                          fetch` downloads it)\n"
        "  -p, --prompt TEXT       prompt text (with --bench: prompt lengths to time, comma list; default 512)\n"
        "  -f, --file FILE         read the prompt from FILE\n"
        "  --calibration FILE      sidecar GGUF with triattention.* query centres (default: MODEL.tri-stats.gguf\n"
        "                          beside the model or in the installed package's data folder, when there is one;\n"
        "                          the default model's ships there)\n"
        "\n"
        "generation:\n"
        "  -n, --n-predict N       tokens to generate; -1 = until the context is full (default 256;\n"
        "                          with --bench a comma list of generation lengths, default 128)\n"
        "  --temp X                temperature; <= 0 is greedy (default 0.8)\n"
        "  --top-k N               top-k sampling; <= 0 disables (default 40)\n"
        "  --top-p X               nucleus sampling; >= 1 disables (default 0.95)\n"
        "  --min-p X               min-p sampling; <= 0 disables (default 0.05)\n"
        "  --repeat-penalty X      penalty for repeated tokens; 1 disables (default 1.0)\n"
        "  --repeat-last-n N       tokens of history the penalty looks at; -1 = context (default 64)\n"
        "  --seed N                random seed (default: random)\n"
        "  --ignore-eos            keep generating past end-of-generation tokens\n"
        "  --stop TEXT             stop when TEXT is generated (repeatable, up to %d)\n"
        "  -l, --logit-bias ID+X   add X to token ID's logit before sampling (ID-X subtracts, 13-inf bans\n"
        "                          token 13, 13=-2.5 works too; repeatable, up to %d)\n"
        "\n"
        "chat:\n"
        "  --chat                  wrap the prompt as a user message with the model's chat template\n"
        "  --system TEXT           system message (implies --chat)\n"
        "  --chat-format NAME      chatml, qwen, qwen3, llama3, llama2, mistral, gemma, deepseek-r1\n"
        "                          (implies --chat; default: detected from the model)\n"
        "\n"
        "runtime:\n"
        "  -t, --threads N         worker threads; 0 = all cores (default 0)\n"
        "  -c, --ctx-size N        context length in tokens; 0 = the model's (default 0)\n"
        "  -b, --batch-size N      tokens per forward chunk during prefill (default 512)\n"
        "  -ngl, --n-gpu-layers N  layers on the GPU: 0 = none (default), -1 = all (CUDA builds; else the CPU)\n"
        "  --gpu-mem-limit SIZE    device memory the weights and sessions may use, e.g. 24GiB (default: what the\n"
        "                          device has free); a session that does not fit is refused with what it needs\n"
        "\n"
        "KV cache:\n"
        "  --kv-policy NAME        auto, full, triattention, ... (default auto: triattention when the model\n"
        "                          carries query centres, else full)\n"
        "  --kv-budget N           slots kept per (layer, KV head) after a compression (default 2048)\n"
        "  --kv-interval N         compress when live slots reach budget + N (default 128)\n"
        "  --kv-window N           most recent tokens never evicted; -1 = policy default (default -1)\n"
        "  --kv-sink N             leading tokens never evicted (default 4)\n"
        "  --kv-mode MODE          triattention score options: per_head (default), per_layer_per_head, global,\n"
        "                          then ,trig=X ,norm=X ,agg=max ,look=N|all ,lookw=X (see docs/triattention-engine.md)\n"
        "  --kv-recall N           keep evicted rows in a second tier (host memory, 8-bit) and bring back up to N\n"
        "                          per layer/KV head that a prompt's last queries attend to (default 0 = off)\n"
        "  --kv-recall-max-mib N   cap of that tier in MiB, oldest pages dropped beyond it (default 0 = no cap)\n"
        "\n"
        "benchmark (--bench):\n"
        "  -d, --depth LIST        KV depths at which prefill (ppP @ dD) and decoding (tgN @ dD) are timed\n"
        "                          (default 0). Each depth is prefilled once and its state restored for every\n"
        "                          repetition and test (policies full and triattention)\n"
        "  -np, --parallel LIST    sessions decoding together, each at the depth, one forward step per token\n"
        "                          for all of them (continuous batching); t/s counts every session's tokens\n"
        "                          (default 1). 'fit': as many sessions as the memory takes (at most 64), e.g.\n"
        "                          with --gpu-mem-limit\n"
        "  -r, --repetitions N     runs per test; median, min and max are reported (default 3)\n"
        "  --json                  print JSON instead of a markdown table\n"
        "\n"
        "other:\n"
        "  -v, --verbose           log library messages and print model details\n"
        "  -h, --help              show this help\n"
        "\n"
        "The generated text streams to stdout; statistics go to stderr. Exit status: 0 ok, 1 error, 2 usage.\n",
        g_prog, g_prog, CLI_MAX_STOP, CLI_MAX_BIAS);
}

static int usage_error(const char * fmt, const char * a, const char * b) {
    fprintf(stderr, "%s: ", g_prog);
    fprintf(stderr, fmt, a, b);
    fprintf(stderr, "\nTry '%s --help'.\n", g_prog);
    return 2;
}

static bool parse_long(const char * s, long lo, long hi, long * out) {
    if (!s || !*s) {
        return false;
    }
    char * end = NULL;
    errno      = 0;
    long v     = strtol(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < lo || v > hi) {
        return false;
    }
    *out = v;
    return true;
}

/* A logit bias pair: ID+X, ID-X (X may be inf: -inf bans) or ID=X. The token's range is the library's check. */
static bool parse_bias(const char * s, triattn_token * id, float * bias) {
    char * end = NULL;
    errno = 0;
    const long t = strtol(s, &end, 10);
    if (errno != 0 || end == s || t < 0 || t > INT32_MAX || (*end != '+' && *end != '-' && *end != '=')) {
        return false;
    }
    const char * num = *end == '=' ? end + 1 : end;
    char * rest = NULL;
    const float b = strtof(num, &rest);
    if (rest == num || *rest != '\0' || isnan(b) || b == INFINITY) {
        return false;
    }
    *id = (triattn_token) t;
    *bias = b;
    return true;
}

static bool parse_float(const char * s, float * out) {
    if (!s || !*s) {
        return false;
    }
    char * end = NULL;
    errno      = 0;
    float v    = strtof(s, &end);
    if (errno != 0 || end == s || *end != '\0' || !isfinite(v)) {
        return false;
    }
    *out = v;
    return true;
}

static bool parse_u64(const char * s, uint64_t * out) {
    if (!s || !*s || *s == '-') {
        return false;
    }
    char * end = NULL;
    errno      = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0') {
        return false;
    }
    *out = (uint64_t) v;
    return true;
}

/* Comma-separated list of integers in [lo, hi]. */
static bool parse_list(const char * s, long lo, long hi, int32_t * out, int * n_out) {
    char buf[512];
    if (!s || strlen(s) >= sizeof buf) {
        return false;
    }
    strcpy(buf, s);
    int n = 0;
    for (char * save = NULL, * tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        long v;
        if (n >= CLI_MAX_LIST || !parse_long(tok, lo, hi, &v)) {
            return false;
        }
        out[n++] = (int32_t) v;
    }
    *n_out = n;
    return n > 0;
}

/* ---- argument parsing ------------------------------------------------------------------------------ */

/* Returns 0 to run, 2 on a usage error, -1 after --help. */
static int parse_args(int argc, char ** argv, struct cli_args * a) {
    memset(a, 0, sizeof *a);
    triattn_session_params_init(&a->sp);
    triattn_sampler_params_init(&a->sampling);
    a->sampling.logit_bias_tokens = a->bias_ids; /* -l fills them; n_logit_bias counts */
    a->sampling.logit_bias = a->bias;
    a->repetitions = 3;
    for (int i = 1; i < argc; i++) {
        const char * o = argv[i];
        /* flags */
        if (!strcmp(o, "-h") || !strcmp(o, "--help")) { usage(stdout); return -1; }
        if (!strcmp(o, "--chat"))       { a->chat = true; continue; }
        if (!strcmp(o, "--ignore-eos")) { a->ignore_eos = true; continue; }
        if (!strcmp(o, "-v") || !strcmp(o, "--verbose")) { a->verbose = true; continue; }
        if (!strcmp(o, "--bench"))      { a->bench = true; continue; }
        if (!strcmp(o, "--json"))       { a->json = true; continue; }
        /* options with a value */
        if (o[0] != '-') {
            return usage_error("unexpected argument '%s'%s", o, "");
        }
        static const char * const value_opts[] = {
            "-m", "--model", "-p", "--prompt", "-f", "--file", "-n", "--n-predict", "-d", "--depth", "-np", "--parallel", "--system",
            "--chat-format", "--calibration", "--kv-policy", "--stop", "--temp", "--top-p", "--min-p",
            "--repeat-penalty", "--top-k", "--repeat-last-n", "--seed", "-t", "--threads", "-c", "--ctx-size", "-b",
            "--batch-size", "-ngl", "--n-gpu-layers", "--gpu-mem-limit", "--kv-budget", "--kv-interval", "--kv-window", "--kv-sink", "--kv-mode", "-r", "--repetitions",
            "--kv-recall", "--kv-recall-max-mib", "-l", "--logit-bias",
        };
        bool known = false;
        for (size_t k = 0; k < sizeof value_opts / sizeof value_opts[0]; k++) {
            known = known || !strcmp(o, value_opts[k]);
        }
        if (!known) {
            return usage_error("unknown option '%s'%s", o, "");
        }
        if (i + 1 >= argc) {
            return usage_error("option '%s' needs a value%s", o, "");
        }
        const char * v = argv[i + 1];
        long         l = 0;
        float        x = 0.0f;
        bool         ok = true;
        if (!strcmp(o, "-m") || !strcmp(o, "--model"))               a->model = v;
        else if (!strcmp(o, "-p") || !strcmp(o, "--prompt"))         a->prompt = v;
        else if (!strcmp(o, "-f") || !strcmp(o, "--file"))           a->prompt_file = v;
        else if (!strcmp(o, "-n") || !strcmp(o, "--n-predict"))      a->n_predict = v;
        else if (!strcmp(o, "-d") || !strcmp(o, "--depth"))          a->depths = v;
        else if (!strcmp(o, "-np") || !strcmp(o, "--parallel"))      a->parallel = v;
        else if (!strcmp(o, "--system"))                             { a->system = v; a->chat = true; }
        else if (!strcmp(o, "--chat-format"))                        { a->chat_format = v; a->chat = true; }
        else if (!strcmp(o, "--calibration"))                        a->calibration = v;
        else if (!strcmp(o, "--kv-policy"))                          a->sp.kv_policy = v;
        else if (!strcmp(o, "--kv-mode"))                            a->sp.kv_mode = v;
        else if (!strcmp(o, "--stop")) {
            if (a->n_stop >= CLI_MAX_STOP) return usage_error("too many %s options%s", o, "");
            if (!*v) return usage_error("%s needs a non-empty text%s", o, "");
            a->stop[a->n_stop++] = v;
        }
        else if (!strcmp(o, "-l") || !strcmp(o, "--logit-bias")) {
            if (a->sampling.n_logit_bias >= CLI_MAX_BIAS) return usage_error("too many %s options%s", o, "");
            ok = parse_bias(v, &a->bias_ids[a->sampling.n_logit_bias], &a->bias[a->sampling.n_logit_bias]);
            a->sampling.n_logit_bias += ok;
        }
        else if (!strcmp(o, "--temp"))            { ok = parse_float(v, &x); a->sampling.temperature = x; }
        else if (!strcmp(o, "--top-p"))           { ok = parse_float(v, &x) && x >= 0; a->sampling.top_p = x; }
        else if (!strcmp(o, "--min-p"))           { ok = parse_float(v, &x) && x <= 1; a->sampling.min_p = x; }
        else if (!strcmp(o, "--repeat-penalty"))  { ok = parse_float(v, &x) && x > 0; a->sampling.repeat_penalty = x; }
        else if (!strcmp(o, "--top-k"))           { ok = parse_long(v, -1, INT32_MAX, &l); a->sampling.top_k = (int32_t) l; }
        else if (!strcmp(o, "--repeat-last-n"))   { ok = parse_long(v, -1, INT32_MAX, &l); a->sampling.repeat_last_n = (int32_t) l; }
        else if (!strcmp(o, "--seed"))            { ok = parse_u64(v, &a->sp.seed); a->sampling.seed = a->sp.seed; a->seed_set = ok; }
        else if (!strcmp(o, "-t") || !strcmp(o, "--threads"))    { ok = parse_long(v, 0, 1024, &l); a->sp.n_threads = (int32_t) l; }
        else if (!strcmp(o, "-c") || !strcmp(o, "--ctx-size"))   { ok = parse_long(v, 0, INT32_MAX, &l); a->sp.n_ctx = (int32_t) l; }
        else if (!strcmp(o, "-b") || !strcmp(o, "--batch-size")) { ok = parse_long(v, 1, INT32_MAX, &l); a->sp.n_batch = (int32_t) l; }
        else if (!strcmp(o, "-ngl") || !strcmp(o, "--n-gpu-layers")) { ok = parse_long(v, -1, INT32_MAX, &l); a->n_gpu_layers = (int32_t) l; }
        else if (!strcmp(o, "--gpu-mem-limit")) ok = triattn_parse_bytes(v, &a->gpu_mem_limit);
        else if (!strcmp(o, "--kv-budget"))       { ok = parse_long(v, 1, INT32_MAX, &l); a->sp.kv_budget = (int32_t) l; }
        else if (!strcmp(o, "--kv-interval"))     { ok = parse_long(v, 1, INT32_MAX, &l); a->sp.kv_interval = (int32_t) l; }
        else if (!strcmp(o, "--kv-window"))       { ok = parse_long(v, -1, INT32_MAX, &l); a->sp.kv_window = (int32_t) l; }
        else if (!strcmp(o, "--kv-recall"))       { ok = parse_long(v, 0, INT32_MAX, &l); a->sp.kv_recall = (int32_t) l; }
        else if (!strcmp(o, "--kv-recall-max-mib")) { ok = parse_long(v, 0, INT32_MAX, &l); a->sp.kv_recall_max_mib = (int32_t) l; }
        else if (!strcmp(o, "--kv-sink"))         { ok = parse_long(v, 0, INT32_MAX, &l); a->sp.kv_sink = (int32_t) l; }
        else if (!strcmp(o, "-r") || !strcmp(o, "--repetitions")) { ok = parse_long(v, 1, 1000, &l); a->repetitions = (int32_t) l; }
        else return usage_error("unknown option '%s'%s", o, "");
        if (!ok) {
            return usage_error("invalid value '%s' for %s", v, o);
        }
        i++;
    }
    if (!a->model) {
        if (!model_files_default_model(a->default_model, sizeof a->default_model) ||
            access(a->default_model, R_OK) != 0) {
            return usage_error("no model given (-m FILE), and the default model is not at %s%s (`pytriattn fetch` "
                               "downloads it)", a->default_model[0] ? a->default_model : "$HOME/.cache/pytriattn", "");
        }
        a->model = a->default_model;
    }
    if (!a->bench) {
        if (a->prompt && a->prompt_file) return usage_error("use -p or -f, not both%s%s", "", "");
        if (!a->prompt && !a->prompt_file) return usage_error("no prompt given (-p TEXT or -f FILE)%s%s", "", "");
        long n;
        if (a->n_predict && !parse_long(a->n_predict, -1, INT32_MAX, &n)) {
            return usage_error("invalid value '%s' for %s", a->n_predict, "-n");
        }
        if (a->depths || a->json || a->parallel) return usage_error("-d, -np and --json apply to --bench only%s%s", "", "");
    }
    return 0;
}

/* ---- shared helpers ------------------------------------------------------------------------------ */

/* Online CPUs: the library's default thread count (all cores, at most 64). On Windows also: the arguments as
 * UTF-8 (the library's paths are UTF-8; main's argv is in the ANSI code page) and UTF-8 console output. */
#if defined(_WIN32)
static void utf8_console_args(int * argc, char *** argv) {
    SetConsoleOutputCP(CP_UTF8);
    int        n = 0;
    wchar_t ** w = CommandLineToArgvW(GetCommandLineW(), &n);
    char **    a = w && n > 0 ? calloc((size_t) n + 1, sizeof *a) : NULL;
    bool       ok = a != NULL;
    for (int i = 0; ok && i < n; i++) {
        const int k = WideCharToMultiByte(CP_UTF8, 0, w[i], -1, NULL, 0, NULL, NULL);
        a[i] = k > 0 ? malloc((size_t) k) : NULL;
        ok   = a[i] && WideCharToMultiByte(CP_UTF8, 0, w[i], -1, a[i], k, NULL, NULL) == k;
    }
    if (ok) { /* the converted arguments live as long as the program */
        *argc = n;
        *argv = a;
    } else if (a) { /* out of memory: keep the ANSI arguments */
        for (int i = 0; i < n; i++) {
            free(a[i]);
        }
        free(a);
    }
    LocalFree(w);
}
#else
static void utf8_console_args(int * argc, char *** argv) {
    (void) argc;
    (void) argv;
}
#endif

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double) ts.tv_sec * 1e3 + (double) ts.tv_nsec * 1e-6;
}

static void log_to_stderr(enum triattn_log_level level, const char * msg, void * ud) {
    static const char * names[] = { "debug", "info", "warn", "error" };
    (void) ud;
    fprintf(stderr, "triattn %s: %s\n", names[(unsigned) level & 3u], msg);
}

static char * read_file(const char * path, size_t * n_out) {
    FILE * f = fopen(path, "rb");
    if (!f) {
        return NULL;
    }
    size_t cap = 1 << 16, n = 0;
    char * buf = malloc(cap);
    while (buf) {
        size_t r = fread(buf + n, 1, cap - n - 1, f);
        n += r;
        if (r == 0) {
            break;
        }
        if (cap - n - 1 == 0) {
            char * nb = realloc(buf, cap * 2);
            if (!nb) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = nb;
            cap *= 2;
        }
    }
    bool bad = ferror(f);
    fclose(f);
    if (!buf || bad) {
        free(buf);
        return NULL;
    }
    buf[n] = '\0';
    *n_out = n;
    return buf;
}

static void print_model_info(const triattn_model * model, const struct cli_args * a) {
    struct triattn_model_info mi;
    triattn_model_get_info(model, &mi);
    fprintf(stderr, "system: %s (libtriattn %s)\n", triattn_system_info(), triattn_version());
    fprintf(stderr, "model: %s (%s), %.1f M params, %.1f MiB, %d layers, %d/%d heads, head_dim %d, n_ctx_train %d, "
                    "calibration: %s\n",
            mi.name[0] ? mi.name : a->model, mi.arch, (double) mi.n_params / 1e6, (double) mi.n_bytes / (1 << 20),
            mi.n_layer, mi.n_head, mi.n_head_kv, mi.head_dim, mi.n_ctx_train,
            a->sidecar[0] ? a->sidecar : mi.has_calibration ? "embedded" : "none");
}

static void print_kv_stats(const triattn_session * s) {
    struct triattn_kv_stats kv;
    triattn_session_kv_stats(s, &kv);
    fprintf(stderr, "kv cache: policy %s, %d slots per (layer, KV head), live %d..%d, %.2f MiB allocated "
                    "(%.2f MiB live), %lld compressions, %lld evicted, scoring %.1f ms\n",
            kv.policy, kv.capacity, kv.live_min, kv.live_max, (double) kv.kv_bytes / (1 << 20),
            (double) kv.kv_bytes_live / (1 << 20), (long long) kv.n_compressions, (long long) kv.n_evicted,
            kv.score_ms);
}

static const char * stop_reason_name(enum triattn_stop_reason r) {
    switch (r) {
        case TRIATTN_STOP_EOG:      return "end of generation token";
        case TRIATTN_STOP_LENGTH:   return "length (-n)";
        case TRIATTN_STOP_STRING:   return "stop string";
        case TRIATTN_STOP_CALLBACK: return "interrupted";
        case TRIATTN_STOP_CONTEXT:  return "context full (-c)";
        default:                    return "none";
    }
}

/* ---- generation ---------------------------------------------------------------------------------- */

static bool on_piece(const char * piece, int32_t len, void * ud) {
    (void) ud;
    fwrite(piece, 1, (size_t) len, stdout);
    fflush(stdout);
    return !g_interrupted;
}

/* Wraps the prompt as [system,] user and renders it with the chat template. NULL on error (printed). */
static char * apply_chat(const triattn_model * model, const struct cli_args * a, const char * prompt) {
    struct triattn_chat_message msgs[2];
    size_t n = 0;
    if (a->system) {
        msgs[n++] = (struct triattn_chat_message){ "system", a->system };
    }
    msgs[n++] = (struct triattn_chat_message){ "user", prompt };
    size_t need = 0;
    enum triattn_status st = triattn_chat_apply(model, a->chat_format, msgs, n, true, NULL, 0, &need);
    char * out = st == TRIATTN_OK ? malloc(need + 1) : NULL;
    if (out) {
        st = triattn_chat_apply(model, a->chat_format, msgs, n, true, out, need + 1, &need);
    }
    if (st != TRIATTN_OK || !out) {
        const char * detected = triattn_chat_detect(model);
        fprintf(stderr, "%s: error: cannot apply chat format '%s' (%s)%s\n", g_prog,
                a->chat_format ? a->chat_format : detected ? detected : "auto",
                triattn_status_name(out ? st : TRIATTN_ERR_OOM),
                st == TRIATTN_ERR_UNSUPPORTED ? "; pass --chat-format chatml|qwen|qwen3|llama3|llama2|mistral|gemma|"
                                                "deepseek-r1" : "");
        free(out);
        return NULL;
    }
    return out;
}

/* True when the text already starts with the BOS token (chat templates often spell it out). */
static bool starts_with_bos(const triattn_model * model, const char * text) {
    triattn_token bos = triattn_token_bos(model);
    triattn_token toks[8];
    int32_t       n = 0;
    if (bos < 0 || triattn_tokenize(model, text, -1, false, true, toks, 8, &n) != TRIATTN_OK) {
        return false;
    }
    return n > 0 && toks[0] == bos;
}

static int run_generate(triattn_model * model, triattn_session * s, const struct cli_args * a) {
    char * owned = NULL;
    const char * prompt = a->prompt;
    if (a->prompt_file) {
        size_t n = 0;
        owned = read_file(a->prompt_file, &n);
        if (!owned) {
            fprintf(stderr, "%s: error: cannot read prompt file '%s': %s\n", g_prog, a->prompt_file, strerror(errno));
            return 1;
        }
        prompt = owned;
    }
    struct triattn_generate_params gp;
    triattn_generate_params_init(&gp);
    gp.max_tokens = 256;
    if (a->n_predict) {
        gp.max_tokens = (int32_t) strtol(a->n_predict, NULL, 10);
    }
    gp.ignore_eos = a->ignore_eos;
    gp.sampling   = a->sampling;
    gp.stop       = a->n_stop ? (const char **) a->stop : NULL;
    gp.n_stop     = a->n_stop;

    char * chat = NULL;
    if (a->chat) {
        chat = apply_chat(model, a, prompt);
        if (!chat) {
            free(owned);
            return 1;
        }
        prompt         = chat;
        gp.add_special = !starts_with_bos(model, chat);
        if (a->verbose) {
            const char * fmt = a->chat_format ? a->chat_format : triattn_chat_detect(model);
            fprintf(stderr, "chat format %s, rendered prompt:\n%s\n---\n", fmt ? fmt : "?", chat);
        }
    }

    struct triattn_generate_result res;
    memset(&res, 0, sizeof res);
    enum triattn_status st = triattn_generate(s, prompt, &gp, on_piece, NULL, &res);
    fputc('\n', stdout);
    fflush(stdout);
    free(chat);
    free(owned);
    if (st != TRIATTN_OK) {
        fprintf(stderr, "%s: error: generation failed (%s): %s\n", g_prog, triattn_status_name(st),
                triattn_session_last_error(s));
        return 1;
    }
    double pp_s = res.prompt_ms / 1e3, tg_s = res.decode_ms / 1e3;
    fprintf(stderr, "\nprompt: %d tokens in %.3f s, %.2f tok/s\n", res.n_prompt_tokens, pp_s,
            pp_s > 0 ? res.n_prompt_tokens / pp_s : 0.0);
    fprintf(stderr, "decode: %d tokens in %.3f s, %.2f tok/s\n", res.n_generated, tg_s,
            tg_s > 0 ? res.n_generated / tg_s : 0.0);
    fprintf(stderr, "stop: %s\n", stop_reason_name(res.stop_reason));
    print_kv_stats(s);
    return 0;
}

/* ---- benchmark ----------------------------------------------------------------------------------- */

struct bench_row {
    char     test[64];
    int32_t  n_prompt, n_gen, depth, parallel;
    int32_t  depth_prefills;  /* times the depth was prefilled for this row; the other repetitions restored it */
    double   round_ms;        /* KV-policy rounds during the timed parts: their time, and their number */
    int64_t  rounds;
    double   tps[1000];
    int      n;
    double   median, min, max;
    uint64_t kv_bytes;
    int32_t  kv_live_max;
};

static uint64_t g_rng_state = 0x9E3779B97F4A7C15ULL;
static uint32_t bench_rand(void) {
    g_rng_state ^= g_rng_state >> 12;
    g_rng_state ^= g_rng_state << 25;
    g_rng_state ^= g_rng_state >> 27;
    return (uint32_t) ((g_rng_state * 2685821657736338717ULL) >> 32);
}

static int cmp_double(const void * x, const void * y) {
    double a = *(const double *) x, b = *(const double *) y;
    return a < b ? -1 : a > b;
}

static void row_finish(struct bench_row * r) {
    double sorted[1000];
    memcpy(sorted, r->tps, sizeof(double) * (size_t) r->n);
    qsort(sorted, (size_t) r->n, sizeof(double), cmp_double);
    r->min    = sorted[0];
    r->max    = sorted[r->n - 1];
    r->median = r->n % 2 ? sorted[r->n / 2] : 0.5 * (sorted[r->n / 2 - 1] + sorted[r->n / 2]);
}

/* Ordinary text tokens (no EOG, no control tokens) to feed as random input. */
static triattn_token * bench_candidates(const triattn_model * model, int32_t * n_out) {
    int32_t         nv  = triattn_vocab_size(model);
    triattn_token * c   = malloc(sizeof(triattn_token) * (size_t) (nv > 0 ? nv : 1));
    int32_t         n   = 0;
    char            piece[256];
    for (int32_t t = 0; c && t < nv; t++) {
        int32_t len = 0;
        if (triattn_token_is_eog(model, t) ||
            triattn_token_to_piece(model, t, false, piece, (int32_t) sizeof piece, &len) != TRIATTN_OK || len <= 0) {
            continue;
        }
        c[n++] = t;
    }
    *n_out = n;
    return c;
}

static void fill_random(triattn_token * out, int32_t n, const triattn_token * cand, int32_t n_cand) {
    for (int32_t i = 0; i < n; i++) {
        out[i] = cand[bench_rand() % (uint32_t) n_cand];
    }
}

/* Decodes n tokens (chunked by the session's n_batch); returns the elapsed ms or a negative value on error. */
static double timed_decode(triattn_session * s, const triattn_token * toks, int32_t n) {
    double t0 = now_ms();
    if (triattn_session_decode(s, toks, n, false) != TRIATTN_OK) {
        return -1.0;
    }
    return now_ms() - t0;
}

/* The context at one KV depth: prefilled once with random tokens and saved to a file, then restored before
 * every repetition of every test at that depth, as llama-bench restores its state instead of prefilling
 * again. A session that cannot be saved (a policy or backend without session files) is prefilled again
 * for each repetition. */
struct bench_depth {
    int32_t depth;
    char    path[4096];  /* the state file; "" when none could be created */
    bool    tried, saved;
};

/* A fresh temporary file for the depth states ("" when none can be made: every repetition prefills). */
static void bench_state_file(char * out, size_t n) {
    const char * dir = getenv("TMPDIR");
    snprintf(out, n, "%s/triattn-bench-XXXXXX", dir && *dir ? dir : "/tmp");
    int fd = mkstemp(out);
    if (fd < 0) {
        out[0] = '\0';
        return;
    }
    close(fd);
}

/* Brings s to d->depth tokens of context: the saved state when there is one, else a prefill (saved for the
 * next repetitions the first time). Counts prefills in *n_prefills. Returns 0, or 1 on error. */
static int depth_enter(triattn_session * s, struct bench_depth * d, triattn_token * toks, const triattn_token * cand,
                       int32_t n_cand, int32_t * n_prefills, bool verbose) {
    if (d->saved) {
        return triattn_session_load(s, d->path) == TRIATTN_OK ? 0 : 1;
    }
    triattn_session_reset(s);
    if (d->depth == 0) {
        return 0;
    }
    fill_random(toks, d->depth, cand, n_cand);
    double ms = timed_decode(s, toks, d->depth);
    if (ms < 0 || g_interrupted) {
        return 1;
    }
    (*n_prefills)++;
    if (d->tried || !d->path[0]) {
        return 0;
    }
    d->tried = true;
    double t0 = now_ms();
    enum triattn_status st = triattn_session_save(s, d->path);
    d->saved = st == TRIATTN_OK;
    if (!d->saved && st != TRIATTN_ERR_UNSUPPORTED) {
        fprintf(stderr, "%s: warning: cannot save the depth-%d state (%s): every repetition prefills it\n", g_prog,
                d->depth, triattn_session_last_error(s));
    } else if (verbose) {
        fprintf(stderr, "depth %d: prefilled in %.2f s; %s (%.0f ms)\n", d->depth, ms / 1e3,
                d->saved ? "state saved, restored for every repetition" : "this session cannot be saved: "
                "prefilled for every repetition", now_ms() - t0);
    }
    return 0;
}

static void row_kv(struct bench_row * r, const triattn_session * s, int32_t n_sessions) {
    struct triattn_kv_stats kv;
    triattn_session_kv_stats(s, &kv);
    r->kv_bytes    = kv.kv_bytes * (uint64_t) n_sessions;
    r->kv_live_max = kv.live_max;
}

/* One row on one session: reps x (the context at the depth, then n_prompt tokens in one prefill, or n_gen
 * one-token steps), only the latter timed. Returns 0, or 1 on error (the session's last error says why). */
static int bench_single(triattn_session * s, struct bench_depth * d, int32_t n_prompt, int32_t n_gen, int reps,
                        triattn_token * toks, const triattn_token * cand, int32_t n_cand, bool verbose,
                        struct bench_row * r) {
    for (int rep = 0; rep < reps && (n_prompt > 0 || n_gen > 0); rep++) {
        if (depth_enter(s, d, toks, cand, n_cand, &r->depth_prefills, verbose)) {
            return 1;
        }
        double ms = 0;
        struct triattn_kv_stats kv0, kv1;
        triattn_session_kv_stats(s, &kv0);
        if (n_prompt > 0) {
            fill_random(toks, n_prompt, cand, n_cand);
            ms = timed_decode(s, toks, n_prompt);
        } else {
            const double t0 = now_ms();
            bool         ok = true;
            for (int32_t k = 0; k < n_gen && ok; k++) {
                triattn_token t = cand[bench_rand() % (uint32_t) n_cand];
                ok = triattn_session_decode(s, &t, 1, false) == TRIATTN_OK && !g_interrupted;
            }
            ms = ok ? now_ms() - t0 : -1.0;
        }
        if (ms < 0 || g_interrupted) {
            return 1;
        }
        triattn_session_kv_stats(s, &kv1);
        r->round_ms += kv1.score_ms - kv0.score_ms;
        r->rounds += kv1.n_compressions - kv0.n_compressions;
        r->tps[r->n++] = (n_prompt > 0 ? n_prompt : n_gen) / (ms / 1e3);
        row_kv(r, s, 1);
    }
    return 0;
}

/* n_par sessions each at the depth, then n_gen forward steps of all of them together; tokens/s counts
 * every session's tokens. Returns 0, or 1 on error (printed). */
static int bench_parallel(triattn_session ** ss, int32_t n_par, struct bench_depth * d, int32_t n_gen, int reps,
                          triattn_token * toks, const int32_t * ones, const triattn_token * cand, int32_t n_cand,
                          bool verbose, struct bench_row * r) {
    char err[1024] = "";
    snprintf(r->test, sizeof r->test, "tg%d @ d%d x%d", n_gen, d->depth, n_par);
    for (int rep = 0; rep < reps && n_gen > 0; rep++) {
        for (int k = 0; k < n_par; k++) {
            if (depth_enter(ss[k], d, toks, cand, n_cand, &r->depth_prefills, verbose)) {
                fprintf(stderr, "%s: error: %s\n", g_prog, triattn_session_last_error(ss[k]));
                return 1;
            }
        }
        const double t0 = now_ms();
        for (int32_t g = 0; g < n_gen; g++) {
            fill_random(toks, n_par, cand, n_cand);
            if (triattn_batch_decode(ss, n_par, toks, ones, err, sizeof err) != TRIATTN_OK || g_interrupted) {
                fprintf(stderr, "%s: error: %s\n", g_prog, g_interrupted ? "interrupted" : err);
                return 1;
            }
        }
        r->tps[r->n++] = (double) n_par * n_gen / ((now_ms() - t0) / 1e3);
        row_kv(r, ss[0], n_par);
    }
    return 0;
}

static void json_string(const char * s) {
    putchar('"');
    for (const unsigned char * p = (const unsigned char *) s; *p; p++) {
        if (*p == '"' || *p == '\\') printf("\\%c", *p);
        else if (*p < 0x20) printf("\\u%04x", *p);
        else putchar(*p);
    }
    putchar('"');
}

/* Rows in order: ppP from an empty context for each -p; then per depth D of -d: ppP @ dD (D > 0) for each
 * -p, and tgN @ dD (xK with -np) for each -n and -np. */
static int run_bench(triattn_model * model, const struct cli_args * a, struct triattn_session_params sp) {
    int32_t pl[CLI_MAX_LIST], nl[CLI_MAX_LIST], dl[CLI_MAX_LIST], ql[CLI_MAX_LIST];
    int     np = 1, nn = 1, nd = 1, nq = 1;
    pl[0] = 512;
    nl[0] = 128;
    dl[0] = 0;
    ql[0] = 1;
    if (a->prompt && !parse_list(a->prompt, 0, 1 << 24, pl, &np)) return usage_error("invalid -p list '%s'%s", a->prompt, "");
    if (a->n_predict && !parse_list(a->n_predict, 0, 1 << 24, nl, &nn)) return usage_error("invalid -n list '%s'%s", a->n_predict, "");
    if (a->depths && !parse_list(a->depths, 0, 1 << 24, dl, &nd)) return usage_error("invalid -d list '%s'%s", a->depths, "");
    /* -np fit: as many sessions as the model's memory takes (up to 64), found by creating them */
    const bool fit = a->parallel && !strcmp(a->parallel, "fit");
    if (fit) ql[0] = 64;
    else if (a->parallel && !parse_list(a->parallel, 1, 64, ql, &nq)) return usage_error("invalid -np list '%s' (1..64 or fit)%s", a->parallel, "");
    int32_t max_par = 1;
    for (int q = 0; q < nq; q++) max_par = ql[q] > max_par ? ql[q] : max_par;

    int32_t need = 1, max_fill = 1;
    for (int i = 0; i < np; i++) max_fill = pl[i] > max_fill ? pl[i] : max_fill;
    for (int j = 0; j < nd; j++) {
        max_fill = dl[j] > max_fill ? dl[j] : max_fill;
        for (int i = 0; i < np; i++) need = dl[j] + pl[i] > need ? dl[j] + pl[i] : need;
        for (int i = 0; i < nn; i++) need = dl[j] + nl[i] > need ? dl[j] + nl[i] : need;
    }
    for (int i = 0; i < np; i++) need = pl[i] > need ? pl[i] : need;
    if (sp.n_ctx < need) {
        sp.n_ctx = need;  /* the depths and lengths must fit */
    }
    char err[1024];
    triattn_session * s = NULL;
    enum triattn_status st = triattn_session_create(model, &sp, &s, err, sizeof err);
    if (st != TRIATTN_OK) {
        fprintf(stderr, "%s: error: cannot create session (%s): %s\n", g_prog, triattn_status_name(st), err);
        return 1;
    }
    int32_t         n_cand = 0;
    triattn_token * cand   = bench_candidates(model, &n_cand);
    triattn_token * toks   = malloc(sizeof(triattn_token) * (size_t) (max_fill > max_par ? max_fill : max_par));
    int             n_rows = np + nd * (np + nn * nq);
    struct bench_row * rows = calloc((size_t) n_rows, sizeof *rows);
    /* sessions decoding together (-np): ss[0] is s */
    triattn_session ** ss = calloc((size_t) max_par, sizeof *ss);
    int32_t * ones = malloc(sizeof(int32_t) * (size_t) max_par);
    if (!cand || !toks || !rows || !ss || !ones || n_cand == 0) {
        fprintf(stderr, "%s: error: %s\n", g_prog, n_cand == 0 && cand ? "no ordinary tokens in the vocabulary" : "out of memory");
        free(cand); free(toks); free(rows); free(ss); free(ones);
        triattn_session_free(s);
        return 1;
    }
    ss[0] = s;
    for (int q = 0; q < max_par; q++) ones[q] = 1;
    for (int q = 1; q < max_par; q++) {
        st = triattn_session_create(model, &sp, &ss[q], err, sizeof err);
        if (st == TRIATTN_ERR_OOM && fit) {
            fprintf(stderr, "%s: -np fit: %d %s; session %d: %s\n", g_prog, q, q == 1 ? "session fits" : "sessions fit",
                    q + 1, err);
            max_par = ql[0] = q;
            break;
        }
        if (st != TRIATTN_OK) {
            fprintf(stderr, "%s: error: cannot create session %d of %d (%s): %s\n", g_prog, q + 1, max_par,
                    triattn_status_name(st), err);
            for (int k = 1; k < q; k++) triattn_session_free(ss[k]);
            free(cand); free(toks); free(rows); free(ss); free(ones);
            triattn_session_free(s);
            return 1;
        }
    }
    g_rng_state ^= (uint64_t) time(NULL) * 0x100000001B3ULL;

    /* Warm-up: touch the weights and the thread pool once. */
    fill_random(toks, 16 < max_fill ? 16 : max_fill, cand, n_cand);
    timed_decode(s, toks, 16 < max_fill ? 16 : max_fill);
    triattn_session_reset(s);

    struct bench_depth d = { 0 };
    bench_state_file(d.path, sizeof d.path);
    int rc = 0, r_i = 0;
    for (int i = 0; i < np && rc == 0; i++) {
        struct bench_row * r = &rows[r_i++];
        r->n_prompt = pl[i];
        snprintf(r->test, sizeof r->test, "pp%d", pl[i]);
        rc = bench_single(s, &d, pl[i], 0, a->repetitions, toks, cand, n_cand, a->verbose, r);
    }
    for (int j = 0; j < nd && rc == 0; j++) {
        d.depth = dl[j];
        d.tried = d.saved = false;
        for (int i = 0; i < np && rc == 0 && dl[j] > 0; i++) {
            struct bench_row * r = &rows[r_i++];
            r->n_prompt = pl[i];
            r->depth    = dl[j];
            snprintf(r->test, sizeof r->test, "pp%d @ d%d", pl[i], dl[j]);
            rc = bench_single(s, &d, pl[i], 0, a->repetitions, toks, cand, n_cand, a->verbose, r);
        }
        for (int i = 0; i < nn && rc == 0; i++) {
            for (int q = 0; q < nq && rc == 0; q++) {
                struct bench_row * r = &rows[r_i++];
                r->n_gen    = nl[i];
                r->depth    = dl[j];
                r->parallel = ql[q];
                if (ql[q] > 1) {
                    rc = bench_parallel(ss, ql[q], &d, nl[i], a->repetitions, toks, ones, cand, n_cand, a->verbose, r);
                    continue;
                }
                snprintf(r->test, sizeof r->test, "tg%d @ d%d", nl[i], dl[j]);
                rc = bench_single(s, &d, 0, nl[i], a->repetitions, toks, cand, n_cand, a->verbose, r);
            }
        }
    }
    if (d.path[0]) {
        unlink(d.path);
    }
    if (rc) {
        fprintf(stderr, "%s: error: benchmark %s: %s\n", g_prog, g_interrupted ? "interrupted" : "failed",
                triattn_session_last_error(s));
    }

    struct triattn_model_info mi;
    triattn_model_get_info(model, &mi);
    struct triattn_kv_stats kv;
    triattn_session_kv_stats(s, &kv);
    const char * name = mi.name[0] ? mi.name : a->model;
    long threads = triattn_session_n_threads(s);
    uint64_t gpu_used = 0, gpu_limit = 0; /* device memory with every session of the run alive */
    triattn_model_gpu_memory(model, &gpu_used, &gpu_limit);
    if (a->json) {
        printf("[\n");
        bool first = true;
        for (int k = 0; k < r_i; k++) {
            struct bench_row * r = &rows[k];
            if (r->n == 0) continue;
            row_finish(r);
            printf("%s  {\"model\": ", first ? "" : ",\n");
            json_string(name);
            printf(", \"arch\": ");
            json_string(mi.arch);
            printf(", \"policy\": ");
            json_string(kv.policy);
            printf(", \"kv_budget\": %d, \"threads\": %ld, \"test\": \"%s\", \"n_prompt\": %d, \"n_gen\": %d, "
                   "\"depth\": %d, \"parallel\": %d, \"reps\": %d, \"tps_median\": %.3f, \"tps_min\": %.3f, \"tps_max\": %.3f, "
                   "\"kv_bytes\": %llu, \"kv_live_max\": %d, \"depth_prefills\": %d, \"model_bytes\": %llu, "
                   "\"gpu_mem_used\": %llu, \"gpu_mem_limit\": %llu, \"round_ms\": %.3f, \"samples_tps\": [",
                   sp.kv_budget, threads, r->test, r->n_prompt, r->n_gen, r->depth, r->parallel > 0 ? r->parallel : 1, r->n, r->median, r->min, r->max,
                   (unsigned long long) r->kv_bytes, r->kv_live_max, r->depth_prefills, (unsigned long long) mi.n_bytes,
                   (unsigned long long) gpu_used, (unsigned long long) gpu_limit,
                   r->rounds > 0 ? r->round_ms / (double) r->rounds : 0.0);
            for (int q = 0; q < r->n; q++) printf("%s%.3f", q ? ", " : "", r->tps[q]);
            printf("]}");
            first = false;
        }
        printf("\n]\n");
    } else {
        printf("| model | size | params | policy | threads | test | t/s (median) | min | max |\n");
        printf("| --- | ---: | ---: | --- | ---: | --- | ---: | ---: | ---: |\n");
        for (int k = 0; k < r_i; k++) {
            struct bench_row * r = &rows[k];
            if (r->n == 0) continue;
            row_finish(r);
            printf("| %s | %.2f MiB | %.2f M | %s | %ld | %s | %.2f | %.2f | %.2f |\n", name,
                   (double) mi.n_bytes / (1 << 20), (double) mi.n_params / 1e6, kv.policy, threads, r->test,
                   r->median, r->min, r->max);
        }
        fflush(stdout);
        if (a->verbose) print_kv_stats(s);
    }
    free(cand);
    free(toks);
    free(rows);
    for (int q = 1; q < max_par; q++) triattn_session_free(ss[q]);
    free(ss);
    free(ones);
    triattn_session_free(s);
    return rc;
}

/* ---- main ---------------------------------------------------------------------------------------- */

int main(int argc, char ** argv) {
    utf8_console_args(&argc, &argv);
    struct cli_args a;
    int pr = parse_args(argc, argv, &a);
    if (pr != 0) {
        return pr < 0 ? 0 : pr;
    }
    if (a.verbose) {
        triattn_log_set(log_to_stderr, NULL, TRIATTN_LOG_DEBUG);
    }
    signal(SIGINT, on_sigint);

    char prefix[64];
    snprintf(prefix, sizeof prefix, "%s: ", g_prog);
    triattn_model * model = NULL;
    char err[1024];
    struct triattn_model_params mp;
    triattn_model_params_init(&mp);
    mp.n_gpu_layers  = a.n_gpu_layers;
    mp.gpu_mem_limit = a.gpu_mem_limit;
    enum triattn_status st = model_files_load(prefix, a.model, a.calibration, &mp, &model, a.sidecar,
                                              sizeof a.sidecar);
    if (st != TRIATTN_OK) {
        return 1;
    }
    if (a.verbose) {
        print_model_info(model, &a);
    }
    if (model_files_centres_missing(prefix, model, a.model, a.sp.kv_policy)) {
        triattn_model_free(model);
        return 1;
    }
    int rc;
    if (a.bench) {
        rc = run_bench(model, &a, a.sp);
    } else {
        triattn_session * s = NULL;
        st = triattn_session_create(model, &a.sp, &s, err, sizeof err);
        if (st != TRIATTN_OK) {
            fprintf(stderr, "%s: error: cannot create session (%s): %s\n", g_prog, triattn_status_name(st), err);
            triattn_model_free(model);
            return 1;
        }
        if (a.verbose) {
            fprintf(stderr, "session: n_ctx %d\n", triattn_session_n_ctx(s));
        }
        rc = run_generate(model, s, &a);
        triattn_session_free(s);
    }
    triattn_model_free(model);
    return rc;
}
