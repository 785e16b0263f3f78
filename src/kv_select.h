/* Shared pieces of the compressing KV policies (triattention and the baselines of docs/triattention.md §6):
 * the candidate range of a round (sink / recent window / short-prompt protection), keep lists built from
 * candidate marks, and the scoring kernels of the attention-based baselines, exposed for the tests. */
#ifndef TRI_KV_SELECT_H
#define TRI_KV_SELECT_H

#include "kv_cache.h"
#include "ops.h"

#include <stdbool.h>
#include <stdint.h>

/* Recent window used when kv_window is -1. */
#define TRI_KV_DEFAULT_WINDOW 128

/* The slack schedule of triattention.md §5: capacity = budget + interval slots; compress when the largest
 * live count reaches budget + interval. */
int32_t tri_kv_slack_capacity(const tri_kv_policy_cfg * cfg);
bool    tri_kv_slack_should_compress(const tri_kv_policy * p, const tri_kv_cache * c);

/* Candidates of one round for every (layer, KV head), index il * n_head_kv + h: slots [lo, hi) may be
 * evicted, k of them are kept. Protected: the first min(sink, budget) live slots, the min(window,
 * budget - sink) most recent, and every position < n_prompt when the prompt is shorter than
 * budget - window (window as configured). Returns true when some (layer, KV head) must evict; *evicted =
 * tokens evicted over all of them. */
bool tri_kv_plan(const tri_kv_policy * p, const tri_kv_cache * c, int32_t window, int32_t * lo, int32_t * hi,
                 int32_t * k, int64_t * evicted);

/* keep = [0, lo) + the slots j in [lo, hi) with mark[j - lo] != 0 + [hi, live), ascending; returns its length. */
int32_t tri_kv_keep_list(int32_t lo, int32_t hi, int32_t live, const uint8_t * mark, int32_t * keep);

/* Number of the first n positions (increasing) that are < p. */
int32_t tri_kv_count_below(const int32_t * pos, int32_t n, int32_t p);
/* Number of the first n positions (increasing) that are <= p. */
int32_t tri_kv_count_upto(const int32_t * pos, int32_t n, int32_t p);

/* ---- options of the `triattention` policy ------------------------------------------------------- */

enum tri_ta_mode { TRI_TA_PER_HEAD = 0, TRI_TA_PER_LAYER_PER_HEAD = 1, TRI_TA_GLOBAL = 2 };

/* kv_mode = "MODE[,key=value]...": MODE per_head | per_layer_per_head | global, keys
 *   trig=X  weight of the trigonometric term (default 1)     norm=X  weight of the norm term (default 1)
 *   agg=mean|max  aggregation over layers (default mean)
 *   look=N|all  question-aware prefill: a prompt that will be compressed is first run over its last N tokens
 *               (all: the whole prompt) to learn the queries of its last TRI_SNAPKV_WINDOW tokens, then
 *               prefilled again with every round adding lookw x the z-scored attention those queries give each
 *               candidate (default 0 = off)
 *   lookw=X weight of that term (default 1)
 *   offmax=N  largest future offset of the phase average, a power of two 1..65536 (default 65536: offsets
 *             2^0..2^16) */
typedef struct tri_ta_opts {
    enum tri_ta_mode mode;
    float trig, norm;
    bool  layer_max;
    int32_t look;      /* tail tokens of the first pass; 0 = off, INT32_MAX = the whole prompt */
    float lookw;
    int32_t n_offsets; /* offsets 2^0 .. 2^(n_offsets - 1) averaged over (default TRI_TRIATTN_N_OFFSETS) */
    bool    offmax_set; /* offmax= was given (else the centres' horizon applies) */
} tri_ta_opts;

/* Parses kv_mode (NULL = defaults). TRIATTN_ERR_UNSUPPORTED with a message naming the bad part. */
enum triattn_status tri_ta_parse_mode(const char * s, tri_ta_opts * o, char * err, size_t n);

/* The last round of the `triattention` policy p for (il, h): see triattn_session_kv_scores. Any output may be
 * NULL. TRIATTN_ERR_UNSUPPORTED when p is another policy. */
enum triattn_status tri_triattn_last_scores(const tri_kv_policy * p, int il, int h, int32_t * pos, float * raw,
                                            float * agg, uint8_t * kept, int32_t capacity, int32_t * n_out);

/* ---- scoring of the attention-based baselines (src/kv_baselines.c), per (layer, KV head) ----------- */

#define TRI_SNAPKV_WINDOW 8   /* observation window w: the last w queries */
#define TRI_SNAPKV_POOL   7   /* max-pool kernel along tokens */

/* Scratch floats tri_snapkv_scores needs for n keys and G query heads. */
size_t tri_snapkv_scratch(int32_t n, int G);

/* SnapKV signal of keys [0, n - w) (w = number of queries given, 1..TRI_SNAPKV_WINDOW, the last w live slots
 * are their own keys): logits q·k/sqrt(D) of the nq queries (nq x G x D floats, the G query heads of this KV
 * head), GQA max over the G heads, softmax over the n - w keys, mean over the queries, max-pool (kernel 7,
 * stride 1, no padding value) along the keys. out: n - w floats. */
void tri_snapkv_scores(const tri_attn_kernels * kr, int D, int G, const float * q, int nq, const tri_fp16 * K,
                       int32_t n, float * out, float * scratch);

/* Copies the last (up to w = TRI_SNAPKV_WINDOW) queries of layer il's query ring, the G heads of KV head h, into
 * q (nq x G x D floats); returns nq. */
int tri_kv_window_queries(const tri_kv_cache * c, int il, int h, int G, int D, float * q);

/* Scratch floats tri_rkv_redundancy needs for n keys of head_dim D. */
size_t tri_rkv_scratch(int32_t n, int D);

/* R-KV redundancy of n keys: cos_ij = k_i·k_j / ((|k_i| + 1e-8)(|k_j| + 1e-8)); row i drops its diagonal and
 * its most recent near-duplicate (largest j != i with cos_ij > 0.5, if any); red_j = softmax over j of
 * (1/n) sum_i cos_ij. out: n floats. */
void tri_rkv_redundancy(const tri_attn_kernels * kr, int D, const tri_fp16 * K, int32_t n, float * out,
                        float * scratch);

#endif
