/* Candidate ranges and keep lists shared by the compressing KV policies (docs/triattention-engine.md). */
#include "kv_select.h"
#include "common.h"
#include "triattn_score.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

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

int tri_kv_window_queries(const tri_kv_cache * c, int il, int h, int G, int D, float * q) {
    const int64_t count = c->q_count[il];
    const int nq = (int) TRI_MIN((int64_t) TRI_SNAPKV_WINDOW, TRI_MIN(count, (int64_t) c->q_cap));
    const size_t row = (size_t) G * D;
    for (int t = 0; t < nq; t++) {
        const int64_t idx = count - nq + t;
        const size_t e = (size_t) il * c->q_cap + (size_t) (idx % c->q_cap);
        memcpy(q + (size_t) t * row, c->q + e * c->q_dim + (size_t) h * row, sizeof(float) * row);
    }
    return nq;
}

/* Reads a finite float in [lo, hi] from s[0..len). */
static bool tri_ta_number(const char * s, size_t len, float lo, float hi, float * out) {
    char buf[32];
    if (len == 0 || len >= sizeof buf) {
        return false;
    }
    memcpy(buf, s, len);
    buf[len] = '\0';
    char * end = NULL;
    errno = 0;
    const double v = strtod(buf, &end);
    if (errno != 0 || end != buf + len || !isfinite(v) || v < lo || v > hi) {
        return false;
    }
    *out = (float) v;
    return true;
}

enum triattn_status tri_ta_parse_mode(const char * s, tri_ta_opts * o, char * err, size_t n) {
    *o = (tri_ta_opts) { .mode = TRI_TA_PER_HEAD, .trig = 1.0f, .norm = 1.0f, .layer_max = false, .look = 0,
                         .lookw = 1.0f, .n_offsets = TRI_TRIATTN_N_OFFSETS };
    if (!s) {
        return TRIATTN_OK;
    }
    const char * p = s;
    for (int part = 0; *p || part == 0; part++) {
        const char * end = strchr(p, ',');
        const size_t len = end ? (size_t) (end - p) : strlen(p);
        const char * eq = memchr(p, '=', len);
        bool ok = false;
        if (part == 0) {
            static const char * const modes[] = { "per_head", "per_layer_per_head", "global" };
            for (int i = 0; i < 3; i++) {
                if (len == strlen(modes[i]) && strncmp(p, modes[i], len) == 0) {
                    o->mode = (enum tri_ta_mode) i;
                    ok = true;
                }
            }
        } else if (eq) {
            const size_t kl = (size_t) (eq - p), vl = len - kl - 1;
            const char * v = eq + 1;
            if (kl == 4 && strncmp(p, "trig", 4) == 0) {
                ok = tri_ta_number(v, vl, 0.0f, 1e3f, &o->trig);
            } else if (kl == 4 && strncmp(p, "norm", 4) == 0) {
                ok = tri_ta_number(v, vl, 0.0f, 1e3f, &o->norm);
            } else if (kl == 3 && strncmp(p, "agg", 3) == 0) {
                ok = (vl == 4 && strncmp(v, "mean", 4) == 0) || (vl == 3 && strncmp(v, "max", 3) == 0);
                o->layer_max = vl == 3;
            } else if (kl == 4 && strncmp(p, "look", 4) == 0) {
                float t = 0.0f;
                if (vl == 3 && strncmp(v, "all", 3) == 0) {
                    o->look = INT32_MAX;
                    ok = true;
                } else if (tri_ta_number(v, vl, 0.0f, 1e9f, &t) && t == floorf(t) &&
                           (t == 0.0f || t >= TRI_SNAPKV_WINDOW)) {
                    o->look = (int32_t) t;
                    ok = true;
                }
            } else if (kl == 5 && strncmp(p, "lookw", 5) == 0) {
                ok = tri_ta_number(v, vl, 0.0f, 1e3f, &o->lookw);
            } else if (kl == 6 && strncmp(p, "offmax", 6) == 0) {
                float t = 0.0f;
                ok = tri_ta_number(v, vl, 1.0f, 65536.0f, &t) && t == floorf(t) && ((int32_t) t & ((int32_t) t - 1)) == 0;
                o->n_offsets = ok ? 1 + (int32_t) log2f(t) : o->n_offsets;
                o->offmax_set = ok;
            }
        }
        if (!ok) {
            return tri_fail(err, n, TRIATTN_ERR_UNSUPPORTED,
                            "kv_mode '%s': cannot read '%.*s' (expected MODE[,key=value]...: MODE per_head, "
                            "per_layer_per_head or global; keys trig=X, norm=X (0..1000), agg=mean|max, look=N (0 or >= %d "
                            "tokens) or look=all, lookw=X (0..1000), offmax=N (a power of two 1..65536))",
                            s, (int) len, p, TRI_SNAPKV_WINDOW);
        }
        if (!end) {
            break;
        }
        p = end + 1;
        if (!*p) {
            return tri_fail(err, n, TRIATTN_ERR_UNSUPPORTED, "kv_mode '%s': empty option after ','", s);
        }
    }
    if (o->trig == 0.0f && o->norm == 0.0f) {
        return tri_fail(err, n, TRIATTN_ERR_UNSUPPORTED, "kv_mode '%s': trig and norm are both 0", s);
    }
    return TRIATTN_OK;
}
