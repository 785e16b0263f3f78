/* Recall from tier 2 (kv_tier2.h): when the question is known, its queries score every row of the cache and of
 * tier 2, and the best tier-2 rows replace the worst replaceable rows of the cache (docs/triattention-engine.md,
 * "Tier 2 and recall").
 *
 * Score of a row (either tier) for one (layer, KV head): the softmax probability the last TRI_RECALL_QUERIES
 * post-RoPE queries give it over every row of both tiers (exact dot products q.k times the attention scale, causal), max
 * over those queries and the G query heads; then max over the members of a sharing group (tri_kv_share), then
 * max over the rows from TRI_RECALL_BACK positions before to TRI_RECALL_FWD after (what the question matches is
 * usually followed by what it asks for: "the number for KEY is VALUE"; an answer is a span, not a token). Up to `rows` tier-2
 * rows come back per (layer, KV head): the i-th best replaces the i-th worst replaceable row of the cache while
 * it scores higher. Replaceable: the candidates of tri_kv_plan (the sink, the recent window and a prompt kept
 * whole stay). The cache keeps its live count and position order; replaced rows move to tier 2. */
#ifndef TRI_KV_RECALL_H
#define TRI_KV_RECALL_H

#include "kv_cache.h"

#include <stdint.h>

#define TRI_RECALL_QUERIES 32   /* the question: the last queries of every layer */
#define TRI_RECALL_REPLAY  32   /* tokens decoded again after a recall (src/session_recall.c) */
#define TRI_RECALL_BACK    16   /* a row takes the score of rows up to this many positions before it */
#define TRI_RECALL_FWD     4    /* ... and after it */

/* Scores [0, n_live) then [0, n_pages * TRI_T2_PAGE_ROWS) of one (layer, KV head), as above before the group max
 * and the pooling (-inf: a tier-2 slot unused or holding a row that is in the cache); returns the queries used.
 * Exposed for the tests; scratch is tri_kv_recall_scratch(c, G, n_live + n_pages * TRI_T2_PAGE_ROWS) floats. */
int tri_kv_recall_scores(const tri_kv_cache * c, int il, int h, int G, float scale, float * out, float * scratch);
size_t tri_kv_recall_scratch(const tri_kv_cache * c, int G, size_t n_rows);

/* Recalls up to `rows` rows per (layer, KV head) into the cache c of policy p (sharing p->share, candidates of
 * tri_kv_plan with the recent window `window`; G query heads per KV head, attention scale), on the threads tp. *recalled = rows brought back over all
 * (layer, KV head). Needs the cache's query ring (>= 1 query per layer) and tier 2; without either nothing
 * happens. TRIATTN_ERR_INTERNAL when a sharing group's members hold different rows; TRIATTN_ERR_OOM. */
enum triattn_status tri_kv_recall(tri_kv_cache * c, const tri_kv_policy * p, int G, float scale, int32_t rows, int32_t window,
                                  tri_threadpool * tp, int64_t * recalled, char * err, size_t n);

#endif
