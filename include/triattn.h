/*
 * triattn.h - the public C API of libtriattn.
 *
 * libtriattn loads llama.cpp GGUF models (llama, qwen2, qwen3) and runs them on the CPU with a KV cache
 * that can be kept small by TriAttention eviction. This header is the only one an embedder needs.
 *
 * Usage walkthrough
 * -----------------
 *
 *     struct triattn_model_params mp;
 *     triattn_model_params_init(&mp);
 *     triattn_model * model = NULL;
 *     char err[512];
 *     if (triattn_model_load("model.gguf", &mp, &model, err, sizeof err) != TRIATTN_OK) {
 *         fprintf(stderr, "%s\n", err);                 // e.g. "model.gguf: tensor 'blk.3.attn_q.weight' ..."
 *         return 1;
 *     }
 *
 *     struct triattn_session_params sp;
 *     triattn_session_params_init(&sp);                 // n_ctx = model's, kv_policy = auto, ...
 *     triattn_session * s = NULL;
 *     if (triattn_session_create(model, &sp, &s, err, sizeof err) != TRIATTN_OK) { ... }
 *
 *     // High level: tokenize, prefill, sample, stream pieces to a callback, stop.
 *     struct triattn_generate_params gp;
 *     triattn_generate_params_init(&gp);
 *     gp.max_tokens = 256;
 *     struct triattn_generate_result res;
 *     if (triattn_generate(s, "Once upon a time", &gp, on_piece, user_data, &res) != TRIATTN_OK) {
 *         fprintf(stderr, "%s\n", triattn_session_last_error(s));
 *     }
 *
 *     // Low level: feed tokens, read logits, sample.
 *     triattn_token toks[64]; int32_t n = 0;
 *     triattn_tokenize(model, "Hello", -1, true, false, toks, 64, &n);
 *     triattn_session_decode(s, toks, n, false);        // logits of the last token
 *     const float * logits = triattn_session_logits(s, -1);
 *     triattn_token next = 0;
 *     triattn_session_sample(s, &next);
 *
 *     triattn_session_free(s);
 *     triattn_model_free(model);
 *
 * Thread safety: a model is immutable after loading and may be shared by any number of sessions on any
 * threads. A session must be used by one thread at a time. The log callback is process-wide.
 *
 * Errors are values: every fallible call returns an enum triattn_status. Calls on a session store a
 * message in the session (triattn_session_last_error); calls that create an object write the message
 * into a caller buffer. Nothing in the library exits or aborts the process.
 *
 * Buffers: functions that produce variable-length output take (buf, capacity, *n_out). *n_out is always
 * set to the full length needed; when it exceeds the capacity the output is truncated and the call can
 * be repeated with a larger buffer. Strings are NUL-terminated when capacity > 0.
 */
#ifndef TRIATTN_H
#define TRIATTN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32) && defined(TRIATTN_SHARED)
#  ifdef TRIATTN_BUILD
#    define TRIATTN_API __declspec(dllexport)
#  else
#    define TRIATTN_API __declspec(dllimport)
#  endif
#elif defined(__GNUC__) && !defined(_WIN32)
#  define TRIATTN_API __attribute__((visibility("default")))
#else
#  define TRIATTN_API
#endif

/* Bumped whenever a struct layout or function signature in this header changes. */
#define TRIATTN_ABI_VERSION 6

enum triattn_status {
    TRIATTN_OK              = 0,
    TRIATTN_ERR_IO          = 1,  /* a file could not be opened, read or mapped */
    TRIATTN_ERR_FORMAT      = 2,  /* malformed or truncated GGUF, or inconsistent metadata */
    TRIATTN_ERR_UNSUPPORTED = 3,  /* unknown architecture, tensor type, tokenizer or chat template */
    TRIATTN_ERR_INVALID_ARG = 4,  /* a parameter is out of range or a pointer is NULL */
    TRIATTN_ERR_OOM         = 5,  /* an allocation failed */
    TRIATTN_ERR_CONTEXT     = 6,  /* the tokens do not fit in the session's context (n_ctx) */
    TRIATTN_ERR_ABORTED     = 7,  /* a long operation was cancelled by the caller */
    TRIATTN_ERR_INTERNAL    = 8,  /* a bug: please report it with the message */
};

/* Paths (model files, sidecars, session files) are UTF-8 strings on every system, Windows included. */

typedef int32_t triattn_token;
typedef struct triattn_model   triattn_model;
typedef struct triattn_session triattn_session;

/* ---- library ---------------------------------------------------------------------------------- */

/* TRIATTN_ABI_VERSION of the compiled library; bindings compare it with the header they were built from. */
TRIATTN_API uint32_t     triattn_abi_version(void);
/* Library version, e.g. "0.1.0". */
TRIATTN_API const char * triattn_version(void);
/* Short static name of a status code, e.g. "TRIATTN_ERR_FORMAT". */
TRIATTN_API const char * triattn_status_name(enum triattn_status status);
/* The CPU features and the kernels selected at run time, e.g. "AVX2 FMA F16C [avx2]" or
 * "NEON DOTPROD [neon+dotprod]". Static string. */
TRIATTN_API const char * triattn_system_info(void);

enum triattn_log_level {
    TRIATTN_LOG_DEBUG = 0,
    TRIATTN_LOG_INFO  = 1,
    TRIATTN_LOG_WARN  = 2,
    TRIATTN_LOG_ERROR = 3,
};
/* Receives one message (no trailing newline). May be called from any thread that calls the library. */
typedef void (*triattn_log_fn)(enum triattn_log_level level, const char * message, void * user_data);
/* Installs the process-wide log callback; NULL restores the default (WARN and ERROR to stderr).
 * min_level filters what reaches the callback. */
TRIATTN_API void triattn_log_set(triattn_log_fn fn, void * user_data, enum triattn_log_level min_level);

/* ---- model ------------------------------------------------------------------------------------ */

struct triattn_model_params {
    bool         use_mmap;          /* map the file (default true); false reads it into memory */
    const char * calibration_path;  /* optional sidecar GGUF with triattention.* keys; NULL = none */
    /* Layers run on the GPU: 0 = CPU only (default); -1 or >= n_layer = the whole model, its KV cache and the
     * TriAttention rounds on one CUDA device (builds with -DTRIATTN_CUDA=ON). When the library was built
     * without CUDA or no device is present, the CPU runs the model and one WARN log line says why. Other
     * positive values (partial offload): TRIATTN_ERR_UNSUPPORTED; below -1: TRIATTN_ERR_INVALID_ARG. */
    int32_t      n_gpu_layers;
    /* GPU only: bytes of device memory the weights and every session of the model may use together (0 = what the
     * device has free). A session whose KV cache and buffers would not fit is refused with TRIATTN_ERR_OOM and a
     * message saying what it needs and what is left. */
    uint64_t     gpu_mem_limit;
};
TRIATTN_API void triattn_model_params_init(struct triattn_model_params * p);

/* Loads a GGUF model.
 * Returns TRIATTN_OK and *out, or: TRIATTN_ERR_IO (cannot open/map), TRIATTN_ERR_FORMAT (malformed file;
 * the message names the key or tensor and byte offset), TRIATTN_ERR_UNSUPPORTED (architecture, tensor
 * type or tokenizer), TRIATTN_ERR_OOM, TRIATTN_ERR_INVALID_ARG (NULL path/out). On error *out is NULL
 * and err (if not NULL) holds a NUL-terminated message. */
TRIATTN_API enum triattn_status triattn_model_load(const char * path, const struct triattn_model_params * p,
                                                   triattn_model ** out, char * err, size_t err_size);
/* Frees a model. NULL is a no-op. All sessions of the model must be freed first. */
TRIATTN_API void triattn_model_free(triattn_model * model);

struct triattn_model_info {
    char     arch[32];        /* general.architecture, e.g. "llama" */
    char     name[128];       /* general.name, or "" */
    int32_t  n_vocab;
    int32_t  n_ctx_train;     /* {arch}.context_length */
    int32_t  n_embd;
    int32_t  n_layer;
    int32_t  n_head;
    int32_t  n_head_kv;
    int32_t  head_dim;
    int32_t  n_ff;
    int32_t  rope_dim;
    float    rope_freq_base;
    int64_t  n_params;        /* number of weights */
    uint64_t n_bytes;         /* bytes of tensor data */
    bool     has_calibration; /* triattention.* query centres are available (embedded or sidecar) */
    char     rope_pairing[16]; /* the engine's RoPE pairing: "adjacent" (x[2f], x[2f+1]) or "half" (x[f], x[f+F]) */
    int32_t  freq_count;      /* F = rope_dim / 2 frequency pairs per head */
    char     fingerprint[40]; /* "fnv1a64:<16 hex>" over the tensor directory and a few attention weights */
};
TRIATTN_API void triattn_model_get_info(const triattn_model * model, struct triattn_model_info * out);

/* GGUF metadata, in file order (sidecar keys are not included). */
TRIATTN_API int32_t triattn_model_meta_count(const triattn_model * model);
/* Key of entry i, or NULL when i is out of range. */
TRIATTN_API const char * triattn_model_meta_key(const triattn_model * model, int32_t i);
/* Value of entry i rendered as text: numbers in decimal, strings verbatim, bools "true"/"false", arrays
 * as a JSON-like list ("[1, 2, ...]", elided past 16 elements as "[... 49152 items]").
 * Returns TRIATTN_ERR_INVALID_ARG when i is out of range. */
TRIATTN_API enum triattn_status triattn_model_meta_value(const triattn_model * model, int32_t i,
                                                         char * buf, size_t capacity, size_t * n_out);

/* True when the library was built with CUDA and at least one CUDA device is usable. */
TRIATTN_API bool triattn_cuda_available(void);
/* Parses a byte size: a number with an optional unit K, M, G or T (each 1024 times the last; "KB", "KiB" and
 * "B" suffixes accepted), e.g. "24GiB", "512M", "1.5G", "1048576". False for anything else. */
TRIATTN_API bool triattn_parse_bytes(const char * s, uint64_t * out);
/* Device memory of a model on the GPU: bytes its weights and live sessions use, and its gpu_mem_limit (0 = none).
 * Returns false (both 0) for a model on the CPU. */
TRIATTN_API bool triattn_model_gpu_memory(const triattn_model * model, uint64_t * used, uint64_t * limit);

/* ---- vocabulary ------------------------------------------------------------------------------- */

TRIATTN_API int32_t       triattn_vocab_size(const triattn_model * model);
TRIATTN_API triattn_token triattn_token_bos(const triattn_model * model);  /* -1 if none */
TRIATTN_API triattn_token triattn_token_eos(const triattn_model * model);  /* -1 if none */
/* True for tokens that end generation (EOS, EOT, <|im_end|>, ...). */
TRIATTN_API bool          triattn_token_is_eog(const triattn_model * model, triattn_token token);

/* Text → tokens. text_len < 0 means NUL-terminated. add_special adds BOS when the model asks for it
 * (tokenizer.ggml.add_bos_token); parse_special turns special-token text such as "<|im_start|>" into
 * its token instead of plain text. *n_out = number of tokens (see "Buffers" above). */
TRIATTN_API enum triattn_status triattn_tokenize(const triattn_model * model, const char * text, int32_t text_len,
                                                 bool add_special, bool parse_special,
                                                 triattn_token * out, int32_t capacity, int32_t * n_out);
/* The raw bytes of one token (may be a partial UTF-8 character). Special/control tokens render as
 * their text only when special is true, otherwise as "". Not NUL-terminated; *n_out = byte count. */
TRIATTN_API enum triattn_status triattn_token_to_piece(const triattn_model * model, triattn_token token,
                                                       bool special, char * buf, int32_t capacity, int32_t * n_out);
/* Tokens → text (concatenated pieces, with the SentencePiece leading space removed where applicable).
 * NUL-terminated when capacity > 0. */
TRIATTN_API enum triattn_status triattn_detokenize(const triattn_model * model, const triattn_token * tokens,
                                                   int32_t n_tokens, bool special,
                                                   char * buf, int32_t capacity, int32_t * n_out);

/* ---- chat templates --------------------------------------------------------------------------- */

struct triattn_chat_message {
    const char * role;     /* "system", "user", "assistant" */
    const char * content;
};
/* Formats messages with a chat format. format NULL or "auto" detects it from the model's
 * tokenizer.chat_template; otherwise one of "chatml", "llama3", "llama2", "mistral", "gemma",
 * "qwen", "deepseek-r1". add_assistant appends the opening of the assistant turn.
 * Returns TRIATTN_ERR_UNSUPPORTED when the model's template is not recognised (pass a format name)
 * or the name is unknown. Output is NUL-terminated text; *n_out = its length. */
TRIATTN_API enum triattn_status triattn_chat_apply(const triattn_model * model, const char * format,
                                                   const struct triattn_chat_message * messages, size_t n_messages,
                                                   bool add_assistant, char * buf, size_t capacity, size_t * n_out);
/* The format name detected from the model's template (for a model without one, its architecture's format,
 * e.g. "gemma" for gemma3), or NULL when it is not recognised. Static string. */
TRIATTN_API const char * triattn_chat_detect(const triattn_model * model);

/* ---- session ---------------------------------------------------------------------------------- */

struct triattn_session_params {
    int32_t      n_ctx;        /* maximum logical positions; 0 = the model's training context */
    int32_t      n_batch;      /* tokens per forward chunk during prefill (default 512) */
    int32_t      n_threads;    /* worker threads; 0 = number of CPU cores */
    uint64_t     seed;         /* sampler seed; 0xFFFFFFFFFFFFFFFF = random (default) */
    /* KV cache policy. NULL or "auto": "triattention" when the model carries query centres, else "full".
     * Names: "full", "triattention" (TRIATTN_ERR_INVALID_ARG when the model has no centres), and the
     * baselines "streaming" (sink + most recent), "random" (seeded by `seed`), "h2o" (accumulated attention),
     * "snapkv" (attention of the last 8 queries), "rkv" (SnapKV attention minus key redundancy); all
     * compressing policies share kv_budget / kv_interval / kv_window / kv_sink. */
    const char * kv_policy;
    int32_t      kv_budget;    /* slots kept per (layer, KV head) after a compression (default 2048) */
    int32_t      kv_interval;  /* compression happens when live slots reach budget + interval (default 128) */
    int32_t      kv_window;    /* most recent tokens never evicted; -1 = policy default */
    int32_t      kv_sink;      /* leading tokens never evicted (default 4) */
    const char * kv_mode;      /* TriAttention selection mode: "per_head" (default), "per_layer_per_head", "global" */
    /* Recall (tier 2): with kv_recall = R > 0 every row an evicting policy drops is kept in host memory at 8 bits
     * instead, and when a prompt has been read (before its last token is decoded; in a chat, after each user
     * turn's end) the last queries bring back up to R of those rows per (layer, KV head) in place of the
     * cache's least attended ones: the cache stays within its budget. 0 = off (default). CPU sessions only:
     * TRIATTN_ERR_UNSUPPORTED with a GPU backend (n_gpu_layers != 0). */
    int32_t      kv_recall;
    int32_t      kv_recall_max_mib; /* tier-2 memory cap in MiB, oldest pages dropped beyond it; 0 = no cap */
};
TRIATTN_API void triattn_session_params_init(struct triattn_session_params * p);

/* Creates a session: KV cache, scratch buffers and sampler, all allocated here once.
 * Returns TRIATTN_ERR_INVALID_ARG for out-of-range parameters (named in err), TRIATTN_ERR_UNSUPPORTED
 * for an unknown kv_policy / kv_mode, TRIATTN_ERR_OOM when the cache does not fit in memory. */
TRIATTN_API enum triattn_status triattn_session_create(const triattn_model * model,
                                                       const struct triattn_session_params * p,
                                                       triattn_session ** out, char * err, size_t err_size);
/* Frees a session. NULL is a no-op. */
TRIATTN_API void triattn_session_free(triattn_session * s);
/* Message of the last failing call on this session ("" if none). Valid until the next call. */
TRIATTN_API const char * triattn_session_last_error(const triattn_session * s);
/* Forgets every token: empty KV cache, position 0, penalty history cleared. */
TRIATTN_API void triattn_session_reset(triattn_session * s);
/* Where the session's forward pass and KV cache live: "cpu" or "cuda". Static string. */
TRIATTN_API const char * triattn_backend_name(const triattn_session * s);
/* The session's n_ctx (after resolving 0). */
TRIATTN_API int32_t triattn_session_n_ctx(const triattn_session * s);
/* The session's worker thread count (after resolving 0 to the CPU cores, at most 64). */
TRIATTN_API int32_t triattn_session_n_threads(const triattn_session * s);
/* Number of tokens processed so far = the absolute position of the next token. */
TRIATTN_API int32_t triattn_session_n_past(const triattn_session * s);

/* Runs the model on n_tokens tokens appended after the current position (prefill when n_tokens > 1,
 * decode when 1). Internally processed in chunks of n_batch. Afterwards triattn_session_logits(s, -1)
 * holds the logits of the last token; with logits_all, triattn_session_logits(s, i) holds those of every
 * token i of this call (requires n_tokens <= n_batch).
 * Returns TRIATTN_ERR_INVALID_ARG (n_tokens <= 0, token id out of range, logits_all with
 * n_tokens > n_batch), TRIATTN_ERR_CONTEXT (position would exceed n_ctx; nothing is appended). */
TRIATTN_API enum triattn_status triattn_session_decode(triattn_session * s, const triattn_token * tokens,
                                                       int32_t n_tokens, bool logits_all);
/* Logits (n_vocab floats) of token i of the last decode call; i = -1 is the last token. NULL when i is
 * out of range or no logits were requested for it. Valid until the next decode. */
TRIATTN_API const float * triattn_session_logits(const triattn_session * s, int32_t i);

/* How triattn_session_embed turns the tokens' hidden states into embeddings. */
enum triattn_pooling {
    TRIATTN_POOLING_MEAN = 0, /* one vector: the mean over the tokens */
    TRIATTN_POOLING_LAST = 1, /* one vector: the last token's (decoder embedding models) */
    TRIATTN_POOLING_NONE = 2, /* one vector per token */
};

/* Embeddings of n_tokens tokens: the model's final normalised hidden states (n_embd floats per token, the
 * input of the output matrix) over a forward pass that starts at position 0 under the session's KV policy
 * (a compressing policy evicts while it reads, as in prefill), pooled, then scaled to unit L2 norm when
 * normalize is set. out receives n_embd floats (MEAN, LAST) or n_tokens x n_embd (NONE); n_out is its size
 * in floats. The session forgets every token before and after (as triattn_session_reset).
 * Returns TRIATTN_ERR_INVALID_ARG (no tokens, token out of range, unknown pooling, out too small, a calibrating
 * session), TRIATTN_ERR_CONTEXT (n_tokens > n_ctx), TRIATTN_ERR_OOM, or a backend's error (a GPU session runs
 * the pass on its device). */
TRIATTN_API enum triattn_status triattn_session_embed(triattn_session * s, const triattn_token * tokens,
                                                      int32_t n_tokens, enum triattn_pooling pooling, bool normalize,
                                                      float * out, int64_t n_out);

struct triattn_kv_stats {
    int64_t  n_past;          /* tokens processed */
    int32_t  capacity;        /* slots allocated per (layer, KV head) */
    int32_t  live_min;        /* live slots, min over (layer, KV head) */
    int32_t  live_max;        /* live slots, max over (layer, KV head) */
    uint64_t kv_bytes;        /* bytes allocated for K, V and positions */
    uint64_t kv_bytes_live;   /* bytes holding live tokens */
    int64_t  n_compressions;  /* compression rounds so far */
    int64_t  n_evicted;       /* tokens evicted so far, summed over KV heads and divided by their count */
    double   score_ms;        /* time spent choosing what to evict */
    char     policy[32];      /* resolved policy name */
    int64_t  t2_rows;         /* rows held in tier 2, over all (layer, KV head) (kv_recall > 0) */
    uint64_t t2_bytes;        /* bytes allocated for tier 2 */
    int64_t  t2_dropped;      /* tier-2 rows dropped by kv_recall_max_mib */
    int64_t  n_recalls;       /* recalls run */
    int64_t  n_recalled;      /* rows brought back by them, over all (layer, KV head) */
    double   recall_ms;       /* time spent in recalls */
};
TRIATTN_API void triattn_session_kv_stats(const triattn_session * s, struct triattn_kv_stats * out);

/* Runs a recall now (see triattn_session_params.kv_recall) with the queries of the last tokens decoded; the
 * library does this by itself when a prompt has been read. TRIATTN_ERR_INVALID_ARG when kv_recall is 0. */
TRIATTN_API enum triattn_status triattn_session_kv_recall(triattn_session * s);

/* Original (absolute) positions held by one (layer, KV head) of the cache, in slot order (increasing).
 * *n_out = live slots (see "Buffers" above). Returns TRIATTN_ERR_INVALID_ARG when layer or kv_head is
 * out of range or a pointer is NULL. */
TRIATTN_API enum triattn_status triattn_session_kv_positions(const triattn_session * s, int32_t layer,
                                                             int32_t kv_head, int32_t * out, int32_t capacity,
                                                             int32_t * n_out);

/* Cached post-RoPE K rows of one (layer, KV head), converted from F16 to float: head_dim floats per live
 * slot, in slot order (the order of triattn_session_kv_positions). capacity_rows = rows out can hold;
 * *n_out = live slots (see "Buffers" above). For tests and analysis tools. Returns TRIATTN_ERR_INVALID_ARG
 * when layer or kv_head is out of range or a pointer is NULL. */
TRIATTN_API enum triattn_status triattn_session_kv_keys(const triattn_session * s, int32_t layer, int32_t kv_head,
                                                        float * out, int32_t capacity_rows, int32_t * n_out);

/* ---- calibration (TriAttention query centres) ------------------------------------------------- */

/* Starts (or restarts, from zero) accumulating pre-RoPE query statistics over every token decoded
 * afterwards on this session: per (layer l, query head h, frequency pair f), sums of Re q_f, Im q_f
 * and |q_f| in double, with the engine's RoPE pairing. Buffers are allocated on the first call.
 * Returns TRIATTN_ERR_OOM when they cannot be. */
TRIATTN_API enum triattn_status triattn_session_calib_begin(triattn_session * s);
/* The statistics so far: q_center = mean q_f (re, im) and q_abs_mean = mean |q_f|, each n =
 * n_layer * n_head * freq_count floats at index ((l * n_head) + h) * freq_count + f (the layout of the
 * triattention.* GGUF keys). Any output pointer may be NULL; *n_tokens (if not NULL) = tokens averaged.
 * Works after triattn_session_calib_end too. Returns TRIATTN_ERR_INVALID_ARG when calibration was never
 * started or n is wrong. */
TRIATTN_API enum triattn_status triattn_session_calib_get(const triattn_session * s, float * q_center_re,
                                                          float * q_center_im, float * q_abs_mean, size_t n,
                                                          uint64_t * n_tokens);
/* Stops accumulating (the statistics stay readable until the next calib_begin). */
TRIATTN_API void triattn_session_calib_end(triattn_session * s);
/* The query centres the model uses (embedded, sidecar or injected), in the layout of calib_get: q̄ = re + i im
 * and E|q| = abs_mean, n = n_layer * n_head * freq_count floats each; any output pointer may be NULL.
 * Returns TRIATTN_ERR_INVALID_ARG when the model has no centres, n is wrong or model is NULL. */
TRIATTN_API enum triattn_status triattn_model_get_centres(const triattn_model * model, float * re, float * im,
                                                          float * abs_mean, size_t n);

/* ---- sampling --------------------------------------------------------------------------------- */

struct triattn_sampler_params {
    float    temperature;        /* <= 0: greedy (default 0.8) */
    int32_t  top_k;              /* <= 0: off (default 40) */
    float    top_p;              /* >= 1: off (default 0.95) */
    float    min_p;              /* <= 0: off (default 0.05) */
    float    repeat_penalty;     /* 1: off (default 1.0) */
    int32_t  repeat_last_n;      /* tokens of history the penalties look at (default 64; -1 = n_ctx) */
    float    frequency_penalty;  /* 0: off */
    float    presence_penalty;   /* 0: off */
    uint64_t seed;               /* 0xFFFFFFFFFFFFFFFF: keep the session's RNG stream (default) */
    /* logit bias: n_logit_bias pairs (logit_bias_tokens[i], logit_bias[i]), each bias added to its token's logit
     * before every other step (penalties, greedy and the truncations see the biased logits; logprobs report the
     * model's own). -INFINITY bans a token; a token listed twice gets both. At most n_vocab pairs, copied by
     * triattn_session_set_sampler (default none). */
    const triattn_token * logit_bias_tokens;
    const float *         logit_bias;
    int32_t               n_logit_bias;
};
TRIATTN_API void triattn_sampler_params_init(struct triattn_sampler_params * p);
/* Sets the session's sampler (and reseeds its RNG when p->seed is not the "keep" value). Returns
 * TRIATTN_ERR_INVALID_ARG naming the field for a value out of range (a NaN, top_p <= 0, a bias token outside
 * [0, n_vocab), a bias that is NaN or +inf, ...). */
TRIATTN_API enum triattn_status triattn_session_set_sampler(triattn_session * s, const struct triattn_sampler_params * p);
/* Samples the next token from the last logits with the session's sampler. Does not decode it. */
TRIATTN_API enum triattn_status triattn_session_sample(triattn_session * s, triattn_token * out);

/* ---- generation ------------------------------------------------------------------------------- */

/* Receives each new piece of text. Pieces are whole UTF-8 characters (bytes of a character split
 * across tokens are held back until complete) and never contain (part of) a stop string.
 * Return false to stop generation (the result's stop reason is then TRIATTN_STOP_CALLBACK). */
typedef bool (*triattn_piece_fn)(const char * piece, int32_t len, void * user_data);

struct triattn_generate_params {
    int32_t       max_tokens;      /* tokens to generate at most (default 512); < 0 = until n_ctx */
    const char ** stop;            /* stop strings (not included in the output) */
    int32_t       n_stop;
    bool          add_special;     /* add BOS when the model wants one (default true) */
    bool          parse_special;   /* special-token text in the prompt becomes tokens (default true) */
    bool          ignore_eos;      /* keep going past end-of-generation tokens (default false) */
    struct triattn_sampler_params sampling;
    /* 0 (default): triattn_generate_begin prefills the whole prompt. > 0: begin only tokenizes, and each
     * triattn_generate_next / _next_batch step prefills at most this many prompt tokens (returning no
     * text) until the prompt is in, so a server can interleave long prompts with running streams. */
    int32_t       prefill_chunk;
    /* 0 (default): off. k in [1, TRIATTN_MAX_TOP_LOGPROBS]: every sampled token's log-probability under
     * the model (softmax of the raw logits) and the k most likely alternatives are recorded; read them with
     * triattn_generate_last_logprobs after each step. */
    int32_t       logprobs;
    /* NULL (default): unconstrained. Otherwise a JSON Schema (as JSON text; "{}" or {"type":"object"} for any
     * JSON object) that every generated text must match: sampling only picks tokens that keep the output a
     * valid prefix of a matching document, and generation ends when the document is complete. End-of-generation
     * tokens are allowed only then (ignore_eos does not apply); the stop reason is TRIATTN_STOP_EOG. Supported
     * subset and generation policy: triattn_json_schema_check below and README "Constrained output"; a schema
     * outside it makes triattn_generate_begin fail with TRIATTN_ERR_UNSUPPORTED. */
    const char *  json_schema;
};
TRIATTN_API void triattn_generate_params_init(struct triattn_generate_params * p);

enum triattn_stop_reason {
    TRIATTN_STOP_NONE     = 0,
    TRIATTN_STOP_EOG      = 1,  /* end-of-generation token */
    TRIATTN_STOP_LENGTH   = 2,  /* max_tokens reached */
    TRIATTN_STOP_STRING   = 3,  /* a stop string matched */
    TRIATTN_STOP_CALLBACK = 4,  /* the piece callback returned false */
    TRIATTN_STOP_CONTEXT  = 5,  /* n_ctx reached */
};

struct triattn_generate_result {
    int32_t  n_prompt_tokens;
    int32_t  n_generated;
    enum triattn_stop_reason stop_reason;
    double   prompt_ms;    /* prefill wall time */
    double   decode_ms;    /* generation wall time (decode + sampling) */
};

/* Tokenizes prompt, appends it to the session's context (call triattn_session_reset first for a fresh
 * start), then samples and decodes up to max_tokens tokens, passing text pieces to on_piece (may be
 * NULL). The session keeps the generated tokens. result may be NULL. */
TRIATTN_API enum triattn_status triattn_generate(triattn_session * s, const char * prompt,
                                                 const struct triattn_generate_params * p,
                                                 triattn_piece_fn on_piece, void * user_data,
                                                 struct triattn_generate_result * result);

/* Step-wise generation, for generators and servers that interleave sessions.
 * triattn_generate_begin tokenizes the prompt and prefills it (same rules as triattn_generate; the stop
 * strings are copied). Each triattn_generate_next samples and decodes one token and returns in *text and *len
 * the text that became safe to show (possibly empty; valid until the next call on the session) and sets
 * *done when generation has ended (the final held-back text comes with the last call). After done,
 * triattn_generate_get_result reports the counts, timings and stop reason. */
TRIATTN_API enum triattn_status triattn_generate_begin(triattn_session * s, const char * prompt,
                                                       const struct triattn_generate_params * p);
TRIATTN_API enum triattn_status triattn_generate_next(triattn_session * s, const char ** text, size_t * len,
                                                      bool * done);
TRIATTN_API void triattn_generate_get_result(const triattn_session * s, struct triattn_generate_result * out);

#define TRIATTN_MAX_TOP_LOGPROBS 20
struct triattn_token_logprobs {
    triattn_token token;                                  /* the token sampled by the last step */
    float         logprob;                                /* its log-probability under the model */
    int32_t       n_top;                                  /* alternatives below, most likely first */
    triattn_token top_tokens[TRIATTN_MAX_TOP_LOGPROBS];
    float         top_logprobs[TRIATTN_MAX_TOP_LOGPROBS];
};
/* The token the last triattn_generate_next step sampled, with log-probabilities (generate params
 * `logprobs` > 0). TRIATTN_ERR_INVALID_ARG when logprobs are off or the last step sampled no token
 * (a prefill step, or generation had already ended). An end-of-generation token that stopped the run
 * is reported too. */
TRIATTN_API enum triattn_status triattn_generate_last_logprobs(const triattn_session * s,
                                                               struct triattn_token_logprobs * out);

/* ---- several sessions in one forward step ----------------------------------------------------- */

/* Appends n_tokens[i] tokens to sessions[i] for every i (the tokens of session 0 first, then session 1's,
 * ...) in one forward step, so the weights are read once for all of them: the results are exactly those of
 * triattn_session_decode(sessions[i], ..., false) on each session in turn, including the KV policy's
 * schedule. The sessions must be distinct and share one model; the step uses sessions[0]'s threads and
 * scratch buffers. Sessions that cannot share the step (more rows than sessions[0]'s n_batch, a cache
 * larger than sessions[0]'s, more tokens than one compression interval, calibration running) are decoded
 * one after another instead, with the same results. Returns the first failing session's status, with its
 * index and message in err; every session before it has been advanced. */
TRIATTN_API enum triattn_status triattn_batch_decode(triattn_session * const * sessions, int32_t n_sessions,
                                                     const triattn_token * tokens, const int32_t * n_tokens,
                                                     char * err, size_t err_size);

/* One triattn_generate_next step for several sessions (each with a generation begun), with every decode
 * (and prompt chunk, see prefill_chunk) of the step run through triattn_batch_decode. Per session i:
 * text[i], len[i], done[i] as triattn_generate_next returns them, and status[i] its status (a failing
 * session does not stop the others; its message is in triattn_session_last_error). Returns TRIATTN_OK,
 * or TRIATTN_ERR_INVALID_ARG for bad arguments. */
TRIATTN_API enum triattn_status triattn_generate_next_batch(triattn_session * const * sessions, int32_t n_sessions,
                                                            const char ** text, size_t * len, bool * done,
                                                            enum triattn_status * status);

/* Changes the KV budget of a session with a compressing policy for what it decodes from now on (a server
 * sets it per request). budget + kv_interval must fit the slots allocated at creation.
 * TRIATTN_ERR_INVALID_ARG otherwise, or for the `full` policy (no budget). */
TRIATTN_API enum triattn_status triattn_session_set_kv_budget(triattn_session * s, int32_t budget);
/* The KV budget the session decodes under now (a compressing policy's; for `full`, its configured value). */
TRIATTN_API int32_t triattn_session_kv_budget(const triattn_session * s);

/* ---- tool calls ------------------------------------------------------------------------------- */

/* OpenAI function calling over the chat formats. Tools are rendered the way the format's template does it:
 * ChatML / Qwen / Qwen3 as Hermes-style `<tools>` JSON in the system prompt, calls written as
 * `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` and results as `<tool_response>` blocks in a user
 * turn; Llama 3 as JSON function definitions in the first user message, calls as a bare
 * {"name": ..., "parameters": {...}} object and results in `ipython` turns; every other format (Llama 2,
 * Mistral, Gemma, DeepSeek-R1) with the generic fallback: the Hermes instructions and tags in the system prompt
 * (or the first user turn when the format has no system role). */

/* A chat message that may carry tool calls (assistant) or answer one (role "tool"). */
struct triattn_chat_tool_message {
    const char * role;          /* "system", "user", "assistant" or "tool" */
    const char * content;       /* NULL = "" */
    const char * tool_calls;    /* assistant: OpenAI "tool_calls" array as JSON text; NULL = none */
    const char * tool_call_id;  /* tool: the id of the call answered; may be NULL (no format prints it) */
    const char * name;          /* tool: the function that produced the content; may be NULL (likewise) */
};

struct triattn_tool_options {
    const char * tools;         /* OpenAI "tools" array as JSON text; NULL = none */
    /* OpenAI "tool_choice" as JSON text: the JSON string "auto" (NULL = auto), "none" (tools are not shown and no
     * call is parsed), "required", or {"type":"function","function":{"name":"..."}}. The last two force a call:
     * the prompt ends with the call's opening and triattn_tool_call_schema gives the schema to sample it. */
    const char * tool_choice;
    bool         parallel_tool_calls;  /* more than one call per reply (default true) */
    /* Parse only the chat format's own call syntax (Hermes <tool_call> tags; Llama 3's bare JSON reply). Default
     * false: the parser also accepts the shapes small models write instead, for declared tools only (see
     * triattn_tool_parser_create). */
    bool         strict_tool_calls;
    uint64_t     id_seed;       /* the parser derives the "call_..." ids from it */
};
TRIATTN_API void triattn_tool_options_init(struct triattn_tool_options * o);

/* triattn_chat_apply with tools. Errors (TRIATTN_ERR_INVALID_ARG for a malformed tools array or tool_choice,
 * a tool_choice naming no tool, an unknown role; the rest as triattn_chat_apply) are described in err. */
TRIATTN_API enum triattn_status triattn_chat_apply_tools(const triattn_model * model, const char * format,
                                                         const struct triattn_chat_tool_message * messages,
                                                         size_t n_messages, const struct triattn_tool_options * opts,
                                                         bool add_assistant, char * buf, size_t capacity,
                                                         size_t * n_out, char * err, size_t err_size);

/* The JSON Schema of the call a forcing tool_choice requires (for triattn_generate_params.json_schema):
 * {"type":"object","properties":{"name":{"type":"string","enum":[names]},"arguments":<parameters>},
 * "required":["name","arguments"]} ("parameters" instead of "arguments" for Llama 3); with "required" and tools
 * whose parameters differ, the arguments are any object. "" (*n_out = 0) when nothing is forced. */
TRIATTN_API enum triattn_status triattn_tool_call_schema(const triattn_model * model, const char * format,
                                                         const struct triattn_tool_options * opts, char * buf,
                                                         size_t capacity, size_t * n_out, char * err,
                                                         size_t err_size);

/* Turns generated text into OpenAI chat deltas. Text that may begin a call is held back until it is known;
 * a call that is not well-formed JSON naming one of the tools comes out as plain content. Calls are one JSON
 * object {"name": <a declared tool>, "arguments" or "parameters": <object, or a string holding one>}, or several
 * separated by blanks or ';'. The format's own syntax is always read: <tool_call>...</tool_call> (Hermes and
 * the generic fallback), or a reply opening with '{' (Llama 3). Unless strict_tool_calls, these are calls too:
 * <tool_call> blocks in any format; a JSON array of call objects wherever an object is accepted; after
 * <|python_tag|> or [TOOL_CALLS]; and, when the arguments satisfy the tool's "parameters" schema, a call
 * object or array opening a line (bare) or filling a ``` or ```json fenced block. These shapes hold at most 16
 * KiB of text each (longer ones are content), and JSON inside a line of prose is never a call. */
typedef struct triattn_tool_parser triattn_tool_parser;
TRIATTN_API enum triattn_status triattn_tool_parser_create(const triattn_model * model, const char * format,
                                                           const struct triattn_tool_options * opts,
                                                           triattn_tool_parser ** out, char * err, size_t err_size);
TRIATTN_API void triattn_tool_parser_free(triattn_tool_parser * p);
/* Feeds len bytes of generated text; final = the generation ended (held-back text is resolved). *deltas: a
 * JSON array of the chat.completion.chunk "delta" objects that became ready, each {"content": "..."} or
 * {"tool_calls": [...]} (a call's first delta has index, id, type, function.name and "arguments": "", then
 * argument fragments follow); valid until the next call. TRIATTN_ERR_OOM when memory runs out. */
TRIATTN_API enum triattn_status triattn_tool_parser_feed(triattn_tool_parser * p, const char * text, size_t len,
                                                         bool final, const char ** deltas, size_t * deltas_len);
/* After the final feed: the reply as {"content": string or null, "tool_calls": [...]} (tool_calls only when
 * there are calls; content is null when it is only whitespace beside calls). */
TRIATTN_API const char * triattn_tool_parser_message(const triattn_tool_parser * p, size_t * len);
/* Calls parsed so far (finish_reason "tool_calls" when > 0). */
TRIATTN_API int32_t triattn_tool_parser_n_calls(const triattn_tool_parser * p);

/* ---- prefix reuse and session state ----------------------------------------------------------- */

/* A session remembers the id of every token it has decoded since create/reset (prompt and generated, evicted
 * ones included). A prompt that starts with those tokens continues from the cache and only its suffix is
 * prefilled; the compression rounds of a compressing policy then happen at the same positions as in a session
 * that was given the whole prompt at once, so the logits are the same bit for bit. */
enum triattn_reuse_kind {
    TRIATTN_REUSE_FRESH    = 0,  /* the session held no tokens: the whole prompt was prefilled */
    TRIATTN_REUSE_CONTINUE = 1,  /* the prompt starts with the session's tokens: only the rest was prefilled */
    TRIATTN_REUSE_ROLLBACK = 2,  /* the prompt diverged at n_cached: the cache was cut back there */
    TRIATTN_REUSE_RESTART  = 3,  /* the cache could not be cut back to the divergence: reset, whole prompt */
};
struct triattn_reuse_info {
    int32_t n_cached;            /* prompt tokens taken from the cache (not prefilled) */
    int32_t n_common;            /* length of the common prefix of the prompt and the session's tokens */
    enum triattn_reuse_kind kind;
};

/* Makes the session's context start with tokens[0..n): keeps the longest common prefix with the session's
 * tokens when it can and tells how much in *out; decode tokens[out->n_cached..n) afterwards. A prompt that
 * diverges at token i (or equals the session's tokens without their last logits at hand) cuts the cache back
 * to i when the cache still holds exactly what it held at i: always with `full`, with `triattention` when no
 * compression round ran after position i; otherwise (other policies, a CUDA session, a KV budget changed
 * mid-stream) the session is reset. At least one token is always left to decode unless the prompt equals the
 * session's tokens and their last logits are current. TRIATTN_ERR_INVALID_ARG for n <= 0 or NULL pointers. */
TRIATTN_API enum triattn_status triattn_session_reuse_prefix(triattn_session * s, const triattn_token * tokens,
                                                             int32_t n, struct triattn_reuse_info * out);
/* How many of tokens[0..n) triattn_session_reuse_prefix would take from the session's cache now (its n_cached),
 * without changing the session: 0 when it would start over, or for bad arguments. */
TRIATTN_API int32_t triattn_session_reusable(const triattn_session * s, const triattn_token * tokens, int32_t n);
/* The tokens the session holds (n_past of them, position order). *n_out = n_past (see "Buffers" above). */
TRIATTN_API enum triattn_status triattn_session_tokens(const triattn_session * s, triattn_token * out,
                                                       int32_t capacity, int32_t * n_out);
/* triattn_generate_begin / triattn_generate where the prompt is the whole context (do not reset in between):
 * triattn_session_reuse_prefix with its tokens, then the remainder is prefilled. n_prompt_tokens in the result
 * counts the whole prompt; triattn_generate_get_reuse says how many of them came from the cache. */
TRIATTN_API enum triattn_status triattn_generate_begin_cached(triattn_session * s, const char * prompt,
                                                              const struct triattn_generate_params * p);
TRIATTN_API enum triattn_status triattn_generate_cached(triattn_session * s, const char * prompt,
                                                        const struct triattn_generate_params * p,
                                                        triattn_piece_fn on_piece, void * user_data,
                                                        struct triattn_generate_result * result);
/* What the last triattn_generate_begin_cached kept (zeros after a plain triattn_generate_begin). */
TRIATTN_API void triattn_generate_get_reuse(const triattn_session * s, struct triattn_reuse_info * out);

/* Writes the session's state to path: the token history, the live KV slots with their positions, the
 * policy's schedule state, the last logits and the policy's own state (the question's queries of kv_mode look=),
 * under a header naming the model fingerprint, the policy and
 * its parameters, with a 64-bit FNV-1a checksum at the end. A compressing session's file holds budget +
 * interval slots at most, not the context. Policies `full` and `triattention` on the CPU; others and CUDA
 * sessions: TRIATTN_ERR_UNSUPPORTED. TRIATTN_ERR_IO when the file cannot be written. */
TRIATTN_API enum triattn_status triattn_session_save(triattn_session * s, const char * path);
/* Replaces the session's state with the one saved in path, so decoding continues exactly as in the saved
 * session (same model, policy, kv_interval/window/sink/mode; a saved kv_budget is adopted when it fits the
 * slots allocated). The whole file is validated first: TRIATTN_ERR_IO (cannot read), TRIATTN_ERR_FORMAT
 * (not a session file, truncated, checksum mismatch, inconsistent contents), TRIATTN_ERR_INVALID_ARG (another
 * model, policy or geometry); the message says what and the session is left unchanged. */
TRIATTN_API enum triattn_status triattn_session_load(triattn_session * s, const char * path);
/* Makes dst hold what src holds (as a save of src loaded into dst, without a file): the same token history,
 * cache, schedule and last logits, so both decode on from there alike. Both sessions of the same model and of
 * compatible policies (as for triattn_session_load); src is unchanged, dst is unchanged on failure (the message
 * is dst's). Not while either session is being decoded on another thread. */
TRIATTN_API enum triattn_status triattn_session_copy(triattn_session * dst, triattn_session * src);

/* ---- constrained output ----------------------------------------------------------------------- */

/* Checks a JSON Schema (as JSON text) against the subset that triattn_generate_params.json_schema supports,
 * without generating: TRIATTN_OK, or TRIATTN_ERR_INVALID_ARG (malformed JSON, a bad keyword value) /
 * TRIATTN_ERR_UNSUPPORTED (a keyword outside the subset) with a message in err such as
 * "json_schema: unsupported keyword 'pattern' at $.properties.x". */
TRIATTN_API enum triattn_status triattn_json_schema_check(const char * schema, char * err, size_t err_size);

/* ---- KV scores of the last compression round ------------------------------------------------ */

/* What the last compression round of the `triattention` policy saw in one (layer, KV head): every slot live
 * when it ran (before eviction), in slot order. position[i] = original position; raw[i] = max over the KV
 * head's query heads of the score of docs/triattention.md §3 (weighted as kv_mode says); agg[i] = the value
 * the round ranked by (z-scored, GQA max, aggregated over layers); kept[i] = 1
 * when the slot survived. Protected slots (sink, recent window, a short prompt) have raw = agg = NaN and
 * kept = 1. Any array may be NULL; capacity = entries each array can hold; *n_out = slots of the round (0
 * before the first one). TRIATTN_ERR_UNSUPPORTED for another policy or a GPU session, TRIATTN_ERR_INVALID_ARG
 * for an out-of-range layer or kv_head. */
TRIATTN_API enum triattn_status triattn_session_kv_scores(const triattn_session * s, int32_t layer, int32_t kv_head,
                                                          int32_t * position, float * raw, float * agg,
                                                          uint8_t * kept, int32_t capacity, int32_t * n_out);

#ifdef __cplusplus
}
#endif

#endif /* TRIATTN_H */
