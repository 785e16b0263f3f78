/* TriAttention calibration: query statistics accumulator, centres in GGUF metadata, model fingerprint,
 * and the session calibration API. */
#include "calibration.h"
#include "common.h"
#include "model.h"
#include "session.h"
#include "triattn_score.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- accumulator ------------------------------------------------------------------------------- */

tri_calib * tri_calib_create(const struct triattn_model * m) {
    tri_calib * c = calloc(1, sizeof *c);
    if (!c) {
        return NULL;
    }
    c->n_layer    = m->hp.n_layer;
    c->n_head     = m->hp.n_head;
    c->head_dim   = m->hp.head_dim;
    c->freq_count = m->hp.rope_dim / 2;
    c->pairing    = m->hp.rope_pairing;
    const size_t n = (size_t) c->n_layer * c->n_head * c->freq_count;
    c->sum_re  = calloc(n, sizeof(double));
    c->sum_im  = calloc(n, sizeof(double));
    c->sum_abs = calloc(n, sizeof(double));
    if (!c->sum_re || !c->sum_im || !c->sum_abs) {
        tri_calib_free(c);
        return NULL;
    }
    return c;
}

void tri_calib_free(tri_calib * c) {
    if (!c) {
        return;
    }
    free(c->sum_re);
    free(c->sum_im);
    free(c->sum_abs);
    free(c);
}

void tri_calib_clear(tri_calib * c) {
    const size_t n = (size_t) c->n_layer * c->n_head * c->freq_count;
    memset(c->sum_re, 0, n * sizeof(double));
    memset(c->sum_im, 0, n * sizeof(double));
    memset(c->sum_abs, 0, n * sizeof(double));
    c->n_tokens = 0;
}

void tri_calib_accumulate(tri_calib * c, int il, const float * q, int n_tok) {
    const int H = c->n_head, D = c->head_dim, F = c->freq_count;
    const bool adj = c->pairing == TRI_ROPE_ADJACENT;
    for (int t = 0; t < n_tok; t++) {
        for (int h = 0; h < H; h++) {
            const float * x = q + ((int64_t) t * H + h) * D;
            const size_t base = ((size_t) il * H + h) * F;
            for (int f = 0; f < F; f++) {
                const double re = x[adj ? 2 * f : f], im = x[adj ? 2 * f + 1 : f + F];
                c->sum_re[base + f]  += re;
                c->sum_im[base + f]  += im;
                c->sum_abs[base + f] += sqrt(re * re + im * im);
            }
        }
    }
    if (il == 0) {
        c->n_tokens += (uint64_t) n_tok;
    }
}

/* ---- centres ----------------------------------------------------------------------------------- */

void tri_centres_free(tri_centres * c) {
    if (!c) {
        return;
    }
    free(c->q_re);
    free(c->q_im);
    free(c->q_abs);
    free(c);
}

static tri_centres * tri_centres_alloc(int32_t L, int32_t H, int32_t F) {
    tri_centres * c = calloc(1, sizeof *c);
    if (!c) {
        return NULL;
    }
    const size_t n = (size_t) L * H * F;
    c->n_layer = L;
    c->n_head = H;
    c->freq_count = F;
    c->n_offsets = TRI_TRIATTN_N_OFFSETS;
    c->q_re  = malloc(n * sizeof(float));
    c->q_im  = malloc(n * sizeof(float));
    c->q_abs = malloc(n * sizeof(float));
    if (!c->q_re || !c->q_im || !c->q_abs) {
        tri_centres_free(c);
        return NULL;
    }
    return c;
}

/* Every value finite and E|q| >= |q̄| up to float rounding. */
static enum triattn_status tri_centres_check(const tri_centres * c, const char * what, char * err, size_t n) {
    const size_t cnt = (size_t) c->n_layer * c->n_head * c->freq_count;
    for (size_t i = 0; i < cnt; i++) {
        if (!isfinite(c->q_re[i]) || !isfinite(c->q_im[i]) || !isfinite(c->q_abs[i])) {
            return tri_fail(err, n, TRIATTN_ERR_FORMAT, "%s: triattention centres: value %zu is not finite", what, i);
        }
        const double mod = hypot(c->q_re[i], c->q_im[i]);
        if ((double) c->q_abs[i] < mod * (1.0 - 1e-5) - 1e-6) {
            return tri_fail(err, n, TRIATTN_ERR_FORMAT,
                            "%s: triattention.q_abs_mean[%zu] = %g is below |q_center| = %g (E|q| >= |E q| must hold)",
                            what, i, c->q_abs[i], mod);
        }
    }
    return TRIATTN_OK;
}

static enum triattn_status tri_key_u32_eq(const tri_gguf * g, const char * key, int32_t want, const char * model_what,
                                          const char * what, char * err, size_t n) {
    uint32_t v = 0;
    char msg[256];
    if (tri_gguf_get_u32(g, key, false, &v, msg, sizeof msg) != TRIATTN_OK) {
        return tri_fail(err, n, TRIATTN_ERR_FORMAT, "%s: %s", what, msg);
    }
    if ((int64_t) v != want) {
        return tri_fail(err, n, TRIATTN_ERR_FORMAT, "%s: %s = %u but the model has %d %s", what, key, v, want,
                        model_what);
    }
    return TRIATTN_OK;
}

static enum triattn_status tri_key_str_eq(const tri_gguf * g, const char * key, const char * want, const char * what,
                                          char * err, size_t n) {
    tri_gguf_str s = { 0 };
    char msg[256];
    if (tri_gguf_get_str(g, key, false, &s, msg, sizeof msg) != TRIATTN_OK) {
        return tri_fail(err, n, TRIATTN_ERR_FORMAT, "%s: %s", what, msg);
    }
    if (s.len != strlen(want) || memcmp(s.ptr, want, s.len) != 0) {
        return tri_fail(err, n, TRIATTN_ERR_FORMAT, "%s: %s = '%.*s' but the model needs '%s'", what, key,
                        (int) TRI_MIN(s.len, 64), s.ptr, want);
    }
    return TRIATTN_OK;
}

static enum triattn_status tri_key_f32_array(const tri_gguf * g, const char * key, size_t want, float * out,
                                             const char * what, char * err, size_t n) {
    const tri_gguf_kv * kv = tri_gguf_find(g, key);
    if (!kv) {
        return tri_fail(err, n, TRIATTN_ERR_FORMAT, "%s: missing key '%s'", what, key);
    }
    if (kv->type != TRI_GGUF_ARRAY || kv->arr_type != TRI_GGUF_FLOAT32) {
        return tri_fail(err, n, TRIATTN_ERR_FORMAT, "%s: %s must be an array of f32", what, key);
    }
    if (kv->n != want) {
        return tri_fail(err, n, TRIATTN_ERR_FORMAT, "%s: %s has %llu values but the model needs %zu (n_layer * n_head * freq_count)",
                        what, key, (unsigned long long) kv->n, want);
    }
    for (size_t i = 0; i < want; i++) {
        memcpy(&out[i], (const char *) kv->data + 4 * i, 4);
    }
    return TRIATTN_OK;
}

enum triattn_status tri_centres_load(const struct triattn_model * m, const tri_gguf * g, const char * what,
                                     tri_centres ** out, char * err, size_t n) {
    *out = NULL;
    if (!tri_gguf_find(g, "triattention.format_version")) {
        return TRIATTN_OK;
    }
    const tri_hparams * hp = &m->hp;
    const int32_t F = hp->rope_dim / 2;
    enum triattn_status st;
    uint32_t version = 0;
    char msg[256];
    if (tri_gguf_get_u32(g, "triattention.format_version", false, &version, msg, sizeof msg) != TRIATTN_OK) {
        return tri_fail(err, n, TRIATTN_ERR_FORMAT, "%s: %s", what, msg);
    }
    if (version != 1) {
        return tri_fail(err, n, TRIATTN_ERR_FORMAT, "%s: triattention.format_version = %u, this engine reads 1", what,
                        version);
    }
    if ((st = tri_key_str_eq(g, "triattention.architecture", m->arch->name, what, err, n)) != TRIATTN_OK ||
        (st = tri_key_u32_eq(g, "triattention.n_layer", hp->n_layer, "layers", what, err, n)) != TRIATTN_OK ||
        (st = tri_key_u32_eq(g, "triattention.n_head", hp->n_head, "query heads", what, err, n)) != TRIATTN_OK ||
        (st = tri_key_u32_eq(g, "triattention.n_head_kv", hp->n_head_kv, "KV heads", what, err, n)) != TRIATTN_OK ||
        (st = tri_key_u32_eq(g, "triattention.rope_dim", hp->rope_dim, "rotary dims", what, err, n)) != TRIATTN_OK ||
        (st = tri_key_u32_eq(g, "triattention.freq_count", F, "frequency pairs", what, err, n)) != TRIATTN_OK ||
        (st = tri_key_str_eq(g, "triattention.rope_pairing",
                             hp->rope_pairing == TRI_ROPE_ADJACENT ? "adjacent" : "half", what, err, n)) != TRIATTN_OK) {
        return st;
    }
    float base = 0.0f;
    if (tri_gguf_get_f32(g, "triattention.rope_freq_base", false, &base, msg, sizeof msg) != TRIATTN_OK) {
        return tri_fail(err, n, TRIATTN_ERR_FORMAT, "%s: %s", what, msg);
    }
    if (!(fabs((double) base - hp->rope_freq_base) <= 1e-6 * fabs((double) hp->rope_freq_base))) {
        return tri_fail(err, n, TRIATTN_ERR_FORMAT, "%s: triattention.rope_freq_base = %g but the model has %g", what,
                        base, hp->rope_freq_base);
    }
    tri_centres * c = tri_centres_alloc(hp->n_layer, hp->n_head, F);
    if (!c) {
        return tri_fail(err, n, TRIATTN_ERR_OOM, "out of memory");
    }
    const size_t cnt = (size_t) hp->n_layer * hp->n_head * F;
    if ((st = tri_key_f32_array(g, "triattention.q_center_re", cnt, c->q_re, what, err, n)) != TRIATTN_OK ||
        (st = tri_key_f32_array(g, "triattention.q_center_im", cnt, c->q_im, what, err, n)) != TRIATTN_OK ||
        (st = tri_key_f32_array(g, "triattention.q_abs_mean", cnt, c->q_abs, what, err, n)) != TRIATTN_OK ||
        (st = tri_centres_check(c, what, err, n)) != TRIATTN_OK) {
        tri_centres_free(c);
        return st;
    }
    if (tri_gguf_get_u64(g, "triattention.calib.n_tokens", true, &c->n_tokens, msg, sizeof msg) != TRIATTN_OK) {
        tri_centres_free(c);
        return tri_fail(err, n, TRIATTN_ERR_FORMAT, "%s: %s", what, msg);
    }
    tri_gguf_str ap = { 0 };
    if (tri_gguf_get_str(g, "triattention.auto_policy", true, &ap, msg, sizeof msg) != TRIATTN_OK) {
        tri_centres_free(c);
        return tri_fail(err, n, TRIATTN_ERR_FORMAT, "%s: %s", what, msg);
    }
    if (ap.ptr) {
        static const char * const allowed[] = { "triattention", "streaming", "snapkv" };
        bool ok = false;
        for (size_t i = 0; i < sizeof allowed / sizeof allowed[0]; i++) {
            ok = ok || (ap.len == strlen(allowed[i]) && memcmp(ap.ptr, allowed[i], ap.len) == 0);
        }
        if (!ok) {
            tri_centres_free(c);
            return tri_fail(err, n, TRIATTN_ERR_FORMAT, "%s: triattention.auto_policy = '%.*s' (expected triattention, "
                            "streaming or snapkv)", what, (int) TRI_MIN(ap.len, 32), ap.ptr);
        }
        memcpy(c->auto_policy, ap.ptr, ap.len);
        c->auto_policy[ap.len] = '\0';
    }
    uint32_t offmax = 0;
    msg[0] = '\0';
    if (tri_gguf_get_u32(g, "triattention.offmax", true, &offmax, msg, sizeof msg) != TRIATTN_OK ||
        (offmax != 0 && (offmax > 65536 || (offmax & (offmax - 1)) != 0))) {
        tri_centres_free(c);
        return tri_fail(err, n, TRIATTN_ERR_FORMAT, "%s: triattention.offmax must be a power of two 1..65536 (%s)", what,
                        msg[0] ? msg : "got another value");
    }
    if (offmax) {
        c->n_offsets = 1 + __builtin_ctz(offmax);
    }
    tri_gguf_str fp = { 0 };
    if (tri_gguf_get_str(g, "triattention.model_fingerprint", true, &fp, msg, sizeof msg) == TRIATTN_OK && fp.ptr &&
        (fp.len != strlen(m->fingerprint) || memcmp(fp.ptr, m->fingerprint, fp.len) != 0)) {
        tri_log(TRIATTN_LOG_WARN,
                "%s: triattention.model_fingerprint '%.*s' differs from this model's '%s': the centres were made for "
                "other weights of the same geometry", what, (int) TRI_MIN(fp.len, 64), fp.ptr, m->fingerprint);
    }
    *out = c;
    return TRIATTN_OK;
}

enum triattn_status tri_model_set_centres(struct triattn_model * m, const float * q_re, const float * q_im,
                                          const float * q_abs, size_t n, uint64_t n_tokens, char * err, size_t en) {
    const int32_t F = m->hp.rope_dim / 2;
    const size_t cnt = (size_t) m->hp.n_layer * m->hp.n_head * F;
    if (!q_re || !q_im || !q_abs || n != cnt) {
        return tri_fail(err, en, TRIATTN_ERR_INVALID_ARG, "centres need %zu values per array, got %zu", cnt, n);
    }
    tri_centres * c = tri_centres_alloc(m->hp.n_layer, m->hp.n_head, F);
    if (!c) {
        return tri_fail(err, en, TRIATTN_ERR_OOM, "out of memory");
    }
    memcpy(c->q_re, q_re, cnt * sizeof(float));
    memcpy(c->q_im, q_im, cnt * sizeof(float));
    memcpy(c->q_abs, q_abs, cnt * sizeof(float));
    c->n_tokens = n_tokens;
    const enum triattn_status st = tri_centres_check(c, "centres", err, en);
    if (st != TRIATTN_OK) {
        tri_centres_free(c);
        return st == TRIATTN_ERR_FORMAT ? TRIATTN_ERR_INVALID_ARG : st;
    }
    tri_centres_free(m->centres);
    m->centres = c;
    return TRIATTN_OK;
}

/* ---- fingerprint ------------------------------------------------------------------------------- */

static uint64_t tri_fnv1a(uint64_t h, const void * p, size_t n) {
    const uint8_t * b = p;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

static uint64_t tri_fnv1a_le(uint64_t h, uint64_t v, int bytes) {
    for (int i = 0; i < bytes; i++) {
        const uint8_t b = (uint8_t) (v >> (8 * i));
        h = tri_fnv1a(h, &b, 1);
    }
    return h;
}

void tri_model_fingerprint(const tri_gguf * g, char out[40]) {
    uint64_t h = 0xcbf29ce484222325ULL;
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const tri_gguf_tensor * t = &g->tensors[i];
        h = tri_fnv1a(h, t->name, strlen(t->name) + 1); /* name and one 0 byte */
        h = tri_fnv1a_le(h, t->n_dims, 4);
        for (uint32_t d = 0; d < t->n_dims; d++) {
            h = tri_fnv1a_le(h, (uint64_t) t->ne[d], 8);
        }
        h = tri_fnv1a_le(h, (uint64_t) t->type, 4);
    }
    static const char * const sampled[] = { "blk.0.attn_q.weight", "blk.0.attn_k.weight" };
    for (int i = 0; i < 2; i++) {
        const tri_gguf_tensor * t = tri_gguf_find_tensor(g, sampled[i]);
        if (t && t->data) {
            h = tri_fnv1a(h, t->data, (size_t) TRI_MIN(t->nbytes, 4096u));
        }
    }
    snprintf(out, 40, "fnv1a64:%016llx", (unsigned long long) h);
}

/* ---- session API ------------------------------------------------------------------------------- */

enum triattn_status triattn_session_calib_begin(triattn_session * s) {
    if (!s) {
        return TRIATTN_ERR_INVALID_ARG;
    }
    if (!s->calib) {
        s->calib = tri_calib_create(s->model);
        if (!s->calib) {
            return tri_session_fail(s, TRIATTN_ERR_OOM, "calib_begin: out of memory");
        }
    }
    tri_calib_clear(s->calib);
    s->fwd.calib = s->calib;
    return TRIATTN_OK;
}

enum triattn_status triattn_session_calib_get(const triattn_session * s, float * q_center_re, float * q_center_im,
                                              float * q_abs_mean, size_t n, uint64_t * n_tokens) {
    if (!s) {
        return TRIATTN_ERR_INVALID_ARG;
    }
    triattn_session * ms = (triattn_session *) s; /* only last_error is written */
    const tri_calib * c = s->calib;
    if (!c) {
        return tri_session_fail(ms, TRIATTN_ERR_INVALID_ARG, "calib_get: call triattn_session_calib_begin first");
    }
    const size_t cnt = (size_t) c->n_layer * c->n_head * c->freq_count;
    if (n != cnt) {
        return tri_session_fail(ms, TRIATTN_ERR_INVALID_ARG,
                                "calib_get: n must be n_layer * n_head * freq_count = %zu, got %zu", cnt, n);
    }
    if (n_tokens) {
        *n_tokens = c->n_tokens;
    }
    const double inv = c->n_tokens ? 1.0 / (double) c->n_tokens : 0.0;
    for (size_t i = 0; i < cnt; i++) {
        if (q_center_re) {
            q_center_re[i] = (float) (c->sum_re[i] * inv);
        }
        if (q_center_im) {
            q_center_im[i] = (float) (c->sum_im[i] * inv);
        }
        if (q_abs_mean) {
            q_abs_mean[i] = (float) (c->sum_abs[i] * inv);
        }
    }
    return TRIATTN_OK;
}

void triattn_session_calib_end(triattn_session * s) {
    if (s) {
        s->fwd.calib = NULL;
    }
}
