/* Candidate ranges and keep lists shared by the compressing KV policies (docs/triattention-engine.md). */
#include "kv_select.h"
#include "common.h"

int32_t tri_kv_count_below(const int32_t * pos, int32_t n, int32_t p) {
    int32_t lo = 0, hi = n;
    while (lo < hi) {
        const int32_t mid = lo + (hi - lo) / 2;
        if (pos[mid] < p) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return lo;
}

int32_t tri_kv_count_upto(const int32_t * pos, int32_t n, int32_t p) {
    return p == INT32_MAX ? n : tri_kv_count_below(pos, n, p + 1);
}

int32_t tri_kv_slack_capacity(const tri_kv_policy_cfg * cfg) {
    const int64_t c = (int64_t) cfg->budget + cfg->interval;
    return c > INT32_MAX ? INT32_MAX : (int32_t) c;
}

bool tri_kv_slack_should_compress(const tri_kv_policy * p, const tri_kv_cache * c) {
    int32_t lo, hi;
    tri_kv_cache_live_range(c, &lo, &hi);
    return (int64_t) hi >= (int64_t) p->cfg.budget + p->cfg.interval;
}

bool tri_kv_plan(const tri_kv_policy * p, const tri_kv_cache * c, int32_t window, int32_t * lo, int32_t * hi,
                 int32_t * k, int64_t * evicted) {
    const int32_t budget = p->cfg.budget;
    const int32_t sink = TRI_MIN(TRI_MAX(p->cfg.sink, 0), budget);
    const int32_t win = TRI_MIN(window, budget - sink);
    /* A prompt shorter than budget - window is kept whole (triattention.md §5). */
    const bool keep_prompt = p->n_prompt > 0 && (int64_t) p->n_prompt < (int64_t) budget - window;
    const int LK = c->n_layer * c->n_head_kv;
    bool any = false;
    *evicted = 0;
    for (int i = 0; i < LK; i++) {
        const int il = i / c->n_head_kv, h = i % c->n_head_kv;
        const int32_t live = c->n_live[i];
        if (tri_kv_windowed(c, il)) { /* bounded by its window: no candidates */
            lo[i] = hi[i] = live;
            k[i]  = 0;
            continue;
        }
        int32_t a = TRI_MIN(sink, live);
        if (keep_prompt) {
            a = TRI_MAX(a, tri_kv_count_below(tri_kv_pos(c, il, h), live, p->n_prompt));
        }
        const int32_t b = TRI_MAX(a, live - win);
        lo[i] = a;
        hi[i] = b;
        k[i]  = TRI_MAX(0, budget - (a + (live - b)));
        if (b - a > k[i]) {
            any = true;
            *evicted += (b - a) - k[i];
        }
    }
    return any;
}

int32_t tri_kv_keep_list(int32_t lo, int32_t hi, int32_t live, const uint8_t * mark, int32_t * keep) {
    int32_t n = 0;
    for (int32_t j = 0; j < lo; j++) {
        keep[n++] = j;
    }
    for (int32_t j = lo; j < hi; j++) {
        if (mark[j - lo]) {
            keep[n++] = j;
        }
    }
    for (int32_t j = hi; j < live; j++) {
        keep[n++] = j;
    }
    return n;
}
