/* Evicted KV slots are poisoned with NaN (tri_kv_cache.poison: debug builds, or TRIATTN_KV_POISON=1), and
 * nothing reads them: a compressing generation on the real model (TRI_DEFAULT_MODEL) keeps finite logits.
 * Random inputs, fresh seed each run (TRI_TEST_SEED reproduces one). */
#include "calibration.h"
#include "kv_cache.h"
#include "model.h"
#include "session.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "test_util.h"

#if defined(NDEBUG) && !defined(__SANITIZE_ADDRESS__)
static const bool k_debug = false;
#else
static const bool k_debug = true;
#endif

static bool row_is_nan(const tri_fp16 * r, int D) {
    for (int d = 0; d < D; d++) {
        if (!isnan(tri_fp16_to_fp32(r[d]))) {
            return false;
        }
    }
    return true;
}

/* Compaction on a random cache: kept rows move down intact; evicted slots are NaN exactly when poisoning. */
static void test_compact_poison(bool poison) {
    tri_kv_cache c;
    char err[256];
    const int L = 2, Hkv = 2, D = 16, cap = 40;
    if (tri_kv_cache_init(&c, L, Hkv, D, cap, err, sizeof err) != TRIATTN_OK) {
        CHECK(0, "init: %s", err);
        return;
    }
    c.poison = poison;
    tri_fp16 * orig = malloc(sizeof(tri_fp16) * cap * D);
    int32_t keep[40];
    for (int il = 0; il < L; il++) {
        for (int h = 0; h < Hkv; h++) {
            const int live = 20 + (int) (tu_uniform() * 20);
            tri_fp16 * k = tri_kv_k(&c, il, h), * v = tri_kv_v(&c, il, h);
            for (int i = 0; i < live * D; i++) {
                k[i] = tri_fp32_to_fp16((float) (tu_uniform() * 4 - 2));
                v[i] = tri_fp32_to_fp16((float) (tu_uniform() * 4 - 2) + 0.25f);
            }
            for (int i = 0; i < live; i++) {
                tri_kv_pos(&c, il, h)[i] = 3 * i + 1;
            }
            c.n_live[tri_kv_index(&c, il, h)] = live;
            memcpy(orig, k, sizeof(tri_fp16) * live * D);
            int n_keep = 0;
            for (int i = 0; i < live; i++) {
                if (tu_uniform() < 0.5) {
                    keep[n_keep++] = i;
                }
            }
            tri_kv_compact(&c, il, h, keep, n_keep);
            bool moved = c.n_live[tri_kv_index(&c, il, h)] == n_keep, nan_ok = true;
            for (int i = 0; i < n_keep; i++) {
                moved = moved && memcmp(k + i * D, orig + keep[i] * D, sizeof(tri_fp16) * D) == 0 &&
                        tri_kv_pos(&c, il, h)[i] == 3 * keep[i] + 1;
            }
            for (int i = n_keep; i < live; i++) {
                const bool nan_row = row_is_nan(k + i * D, D) && row_is_nan(v + i * D, D);
                nan_ok = nan_ok && (poison ? nan_row && tri_kv_pos(&c, il, h)[i] == INT32_MIN
                                           : !nan_row && memcmp(k + i * D, orig + i * D, sizeof(tri_fp16) * D) == 0);
            }
            CHECK(moved, "poison=%d (%d, %d): kept rows must move down intact", poison, il, h);
            CHECK(nan_ok, "poison=%d (%d, %d): evicted slots %s", poison, il, h,
                  poison ? "must be NaN" : "must be left alone");
        }
    }
    free(orig);
    tri_kv_cache_free(&c);
}

/* TRIATTN_KV_POISON=1 turns poisoning on at cache creation; debug and sanitizer builds have it on regardless. */
static void test_env_switch(void) {
    tri_kv_cache c;
    char err[256];
    tu_setenv("TRIATTN_KV_POISON", NULL);
    tri_kv_cache_init(&c, 1, 1, 8, 4, err, sizeof err);
    CHECK(c.poison == k_debug, "default poison %d, want %d (debug or sanitizer build)", c.poison, k_debug);
    tri_kv_cache_free(&c);
    tu_setenv("TRIATTN_KV_POISON", "1");
    tri_kv_cache_init(&c, 1, 1, 8, 4, err, sizeof err);
    CHECK(c.poison, "TRIATTN_KV_POISON=1 must turn poisoning on");
    tri_kv_cache_free(&c);
    tu_setenv("TRIATTN_KV_POISON", NULL);
}

static const char * k_text =
    "The lighthouse keeper climbed the spiral stairs every evening, counting the steps as his father had "
    "taught him. Two hundred and twelve, always the same, though on stormy nights the tower seemed to sway "
    "and the count felt longer. At the top he trimmed the wick, polished the great lens, and watched the beam "
    "sweep across the black water. Ships he would never meet passed safely because of that light. In the "
    "morning he wrote in the log: wind from the north-east, sea rough, visibility poor, lamp lit at dusk.";

/* A compressing generation (budget 128, interval 32, ~600 tokens) with poisoned evictions: every logit
 * stays finite, and right after each round the freed slots hold NaN. */
static void test_real_model(void) {
    triattn_model * m = tu_load_default_model("real-model poisoning test");
    if (!m) {
        return;
    }
    char err[1024];
    struct triattn_model_info info;
    triattn_model_get_info(m, &info);
    triattn_token toks[512];
    int32_t nt = 0;
    triattn_tokenize(m, k_text, -1, true, false, toks, 512, &nt);

    /* Centres from this text through a full-attention session. */
    struct triattn_session_params sp;
    triattn_session_params_init(&sp);
    sp.n_threads = 2;
    sp.n_ctx = 4096;
    sp.kv_policy = "full";
    triattn_session * s = NULL;
    enum triattn_status st = triattn_session_create(m, &sp, &s, err, sizeof err);
    CHECK(st == TRIATTN_OK, "full session: %s", err);
    if (st != TRIATTN_OK) {
        triattn_model_free(m);
        return;
    }
    const size_t n = (size_t) info.n_layer * info.n_head * info.freq_count;
    float * re = malloc(n * 4), * im = malloc(n * 4), * ab = malloc(n * 4);
    uint64_t ntok = 0;
    triattn_session_calib_begin(s);
    triattn_session_decode(s, toks, nt, false);
    triattn_session_calib_end(s);
    triattn_session_calib_get(s, re, im, ab, n, &ntok);
    triattn_session_free(s);
    s = NULL;
    st = tri_model_set_centres(m, re, im, ab, n, ntok, err, sizeof err);
    CHECK(st == TRIATTN_OK, "set_centres: %s", err);
    free(re);
    free(im);
    free(ab);

    tu_setenv("TRIATTN_KV_POISON", "1");
    sp.kv_policy = "triattention";
    sp.kv_budget = 128;
    sp.kv_interval = 32;
    st = triattn_session_create(m, &sp, &s, err, sizeof err);
    tu_setenv("TRIATTN_KV_POISON", NULL);
    CHECK(st == TRIATTN_OK, "triattention session: %s", err);
    if (st != TRIATTN_OK) {
        triattn_model_free(m);
        return;
    }
    CHECK(s->kv.poison, "TRIATTN_KV_POISON=1 at session creation must poison");
    const int p_len = 20 + (int) (tu_uniform() * 40);
    st = triattn_session_decode(s, toks, p_len < nt ? p_len : nt, false);
    int64_t rounds = 0, bad_logits = 0, bad_nan = 0, steps = 0;
    const int D = s->kv.head_dim;
    for (int i = 0; i < 600 && st == TRIATTN_OK; i++) {
        const float * lg = triattn_session_logits(s, -1);
        for (int v = 0; v < info.n_vocab; v++) {
            if (!isfinite(lg[v])) {
                bad_logits++;
                break;
            }
        }
        triattn_token t = i % 53 == 7 ? (triattn_token) (100 + tu_uniform() * 30000) : tu_argmax(lg, info.n_vocab);
        st = triattn_session_decode(s, &t, 1, false);
        steps++;
        struct triattn_kv_stats ks;
        triattn_session_kv_stats(s, &ks);
        if (ks.n_compressions > rounds) {
            rounds = ks.n_compressions;
            /* The slots just freed (from live up to budget + interval) hold NaN in every (layer, KV head). */
            for (int il = 0; il < s->kv.n_layer; il++) {
                for (int h = 0; h < s->kv.n_head_kv; h++) {
                    const int32_t live = s->kv.n_live[tri_kv_index(&s->kv, il, h)];
                    for (int32_t j = live; j < s->kv.capacity; j++) {
                        bad_nan += !row_is_nan(tri_kv_k(&s->kv, il, h) + (size_t) j * D, D) ||
                                   tri_kv_pos(&s->kv, il, h)[j] != INT32_MIN;
                    }
                }
            }
        }
    }
    CHECK(st == TRIATTN_OK, "decode: %s", triattn_session_last_error(s));
    CHECK(rounds >= 10, "%lld compressions in %lld steps (want >= 10)", (long long) rounds, (long long) steps);
    CHECK(bad_nan == 0, "%lld freed slots not poisoned", (long long) bad_nan);
    CHECK(bad_logits == 0, "%lld steps with non-finite logits: a kernel read an evicted slot", (long long) bad_logits);
    printf("poisoned generation: %lld steps, %lld compressions, logits finite\n", (long long) steps,
           (long long) rounds);
    triattn_session_free(s);
    triattn_model_free(m);
}

int main(void) {
    tu_seed_init("TRI_TEST_SEED");
    test_compact_poison(true);
    test_compact_poison(false);
    test_env_switch();
    test_real_model();
    return tu_finish();
}
