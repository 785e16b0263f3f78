/* test_batch.c - several sessions in one forward step: triattn_batch_decode and triattn_generate_next_batch
 * give exactly what each session computes alone (logits bit for bit, KV positions, generated text), with
 * full attention and with a compressing TriAttention cache (also with recalls from tier 2 at chat markers inside
 * the prompts); logprobs; per-session KV budgets.
 * Needs the real model (TRI_DEFAULT_MODEL). Random prompts, fresh seed each run (TRI_TEST_SEED reproduces). */
#include "triattn.h"
#include "calibration.h"
#include "model.h"
#include "session.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test_util.h"

#include <time.h>

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

#define NS 4          /* sessions */
#define MAXP 160      /* prompt tokens at most */

static struct triattn_model_info g_info;

/* Same KV positions in every (layer, KV head) of a and b. */
static bool same_positions(const triattn_session * a, const triattn_session * b) {
    static int32_t pa[4096], pb[4096];
    for (int l = 0; l < g_info.n_layer; l++) {
        for (int h = 0; h < g_info.n_head_kv; h++) {
            int32_t na = 0, nb = 0;
            triattn_session_kv_positions(a, l, h, pa, 4096, &na);
            triattn_session_kv_positions(b, l, h, pb, 4096, &nb);
            if (na != nb || memcmp(pa, pb, sizeof(int32_t) * (size_t) na) != 0) {
                return false;
            }
        }
    }
    return true;
}

/* NS sessions alone vs the same sessions advanced together: staggered prompts fed in chunks of `chunk` tokens
 * alongside other sessions' one-token decodes, then greedy decoding of all of them in one step each. */
static void test_batch_decode(triattn_model * m, const char * policy, int budget, int interval, int chunk, int recall) {
    triattn_token prompt[NS][MAXP];
    int np[NS];
    triattn_session * probe = tu_session_recall(m, policy, NULL, -1, budget, interval, 2048, 0, recall);
    if (!probe) {
        return;
    }
    const int nm = probe->n_recall_marker;
    CHECK(recall == 0 || nm > 0, "no recall marker");
    for (int i = 0; i < NS; i++) {
        np[i] = (int) tu_int(20 + nm, MAXP);
        for (int t = 0; t < np[i]; t++) {
            prompt[i][t] = (triattn_token) tu_int(1000, g_info.n_vocab - 1);
        }
        for (int k = 0; recall > 0 && k < 2; k++) { /* recalls where the chat marker ends, mid-chunk or not */
            memcpy(prompt[i] + tu_int(0, np[i] - nm), probe->recall_marker, sizeof(triattn_token) * (size_t) nm);
        }
    }
    triattn_session_free(probe);
    const int n_steps = 40;
    const size_t V = (size_t) g_info.n_vocab;
    /* reference: each session alone, prompt in one call, then greedy one token at a time */
    float * ref = malloc(sizeof(float) * V * NS * (size_t) (n_steps + 1));
    int32_t ref_past[NS];
    triattn_session * alone[NS];
    for (int i = 0; i < NS; i++) {
        alone[i] = tu_session_recall(m, policy, NULL, -1, budget, interval, 2048, 0, recall);
        if (!alone[i]) {
            return;
        }
        CHECK(triattn_session_decode(alone[i], prompt[i], np[i], false) == TRIATTN_OK, "%s: decode alone: %s", policy,
              triattn_session_last_error(alone[i]));
        for (int k = 0; k <= n_steps; k++) {
            const float * lg = triattn_session_logits(alone[i], -1);
            memcpy(ref + ((size_t) k * NS + i) * V, lg, V * sizeof(float));
            if (k < n_steps) {
                triattn_token t = tu_argmax(lg, (int) V);
                triattn_session_decode(alone[i], &t, 1, false);
            }
        }
        ref_past[i] = triattn_session_n_past(alone[i]);
    }
    /* batched: session i starts its prompt at step 2*i; a session decodes once its prompt is in */
    triattn_session * ss[NS];
    int fed[NS] = { 0 }, steps_done[NS] = { 0 };
    triattn_token next[NS];
    for (int i = 0; i < NS; i++) {
        ss[i] = tu_session_recall(m, policy, NULL, -1, budget, interval, 2048, 0, recall);
        if (!ss[i]) {
            return;
        }
    }
    bool exact = true, all_done = false;
    int first_bad = -1;
    for (int step = 0; !all_done && step < 10000; step++) {
        triattn_session * who[NS];
        triattn_token toks[NS * MAXP];
        int32_t cnt[NS];
        int nw = 0, nt = 0;
        for (int i = 0; i < NS; i++) {
            if (step < 2 * i || steps_done[i] >= n_steps) {
                continue;
            }
            int c;
            if (fed[i] < np[i]) {
                c = np[i] - fed[i] < chunk ? np[i] - fed[i] : chunk;
                memcpy(toks + nt, prompt[i] + fed[i], sizeof(triattn_token) * (size_t) c);
            } else {
                c = 1;
                toks[nt] = next[i];
            }
            who[nw] = ss[i];
            cnt[nw++] = c;
            nt += c;
        }
        if (nw == 0) {
            all_done = true;
            break;
        }
        char err[512];
        if (triattn_batch_decode(who, nw, toks, cnt, err, sizeof err) != TRIATTN_OK) {
            CHECK(0, "%s: batch_decode: %s", policy, err);
            break;
        }
        for (int i = 0, w = 0; i < NS; i++) {
            if (w < nw && who[w] == ss[i]) {
                const int c = cnt[w++];
                int k = -1;
                if (fed[i] < np[i]) {
                    fed[i] += c;
                    k = fed[i] == np[i] ? 0 : -1;
                } else {
                    k = ++steps_done[i];
                }
                if (k >= 0) {
                    const float * lg = triattn_session_logits(ss[i], -1);
                    if (exact && memcmp(lg, ref + ((size_t) k * NS + i) * V, V * sizeof(float)) != 0) {
                        exact = false;
                        first_bad = k;
                    }
                    next[i] = tu_argmax(lg, (int) V);
                }
            }
        }
    }
    CHECK(exact, "%s (budget %d): batched logits differ from the session alone (first at step %d)", policy, budget,
          first_bad);
    struct triattn_kv_stats a, b;
    for (int i = 0; i < NS; i++) {
        triattn_session_kv_stats(alone[i], &a);
        triattn_session_kv_stats(ss[i], &b);
        CHECK(triattn_session_n_past(ss[i]) == ref_past[i], "%s: session %d n_past %d vs %d", policy, i,
              triattn_session_n_past(ss[i]), ref_past[i]);
        CHECK(a.n_compressions == b.n_compressions && same_positions(alone[i], ss[i]) && a.n_recalls == b.n_recalls &&
                  a.n_recalled == b.n_recalled && a.t2_rows == b.t2_rows,
              "%s: session %d: KV differs (compressions %lld vs %lld, recalls %lld vs %lld)", policy, i,
              (long long) a.n_compressions, (long long) b.n_compressions, (long long) a.n_recalls,
              (long long) b.n_recalls);
        CHECK(recall == 0 || a.n_recalls > 0, "%s: session %d: no recall", policy, i);
        if (strcmp(policy, "full") != 0 && b.n_past > budget + interval) {
            CHECK(b.n_compressions > 0, "%s: session %d never compressed (n_past %lld)", policy, i, (long long) b.n_past);
        }
        triattn_session_free(alone[i]);
        triattn_session_free(ss[i]);
    }
    free(ref);
}

static const char * k_prompts[NS] = {
    "The lighthouse keeper climbed the spiral stairs every evening and",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "In the beginning God created the heaven and the earth. And the earth was",
    /* the end asks for what the start said: with a tiny budget, recall has rows worth bringing back */
    "Remember: the boat is called Marigold. The weather was fine and the sea calm all day. The boat is called",
};

/* Generation step by step alone vs NS sessions through triattn_generate_next_batch: same texts. */
static void test_generate_batch(triattn_model * m, const char * policy, int budget, int interval, int recall) {
    struct triattn_generate_params gp;
    triattn_generate_params_init(&gp);
    gp.max_tokens = 48;
    gp.ignore_eos = true;
    gp.sampling.temperature = 0.0f;
    char want[NS][4096], got[NS][4096];
    int64_t rows = 0;
    for (int i = 0; i < NS; i++) {
        triattn_session * s = tu_session_recall(m, policy, NULL, -1, budget, interval, 2048, 0, recall);
        if (!s) {
            return;
        }
        gp.prefill_chunk = 0;
        want[i][0] = '\0';
        bool done = false;
        enum triattn_status st = triattn_generate_begin(s, k_prompts[i], &gp);
        while (st == TRIATTN_OK && !done) {
            const char * t;
            size_t n;
            st = triattn_generate_next(s, &t, &n, &done);
            strncat(want[i], t, n);
        }
        CHECK(st == TRIATTN_OK, "%s: generate alone: %s", policy, triattn_session_last_error(s));
        triattn_session_free(s);
    }
    triattn_session * ss[NS];
    for (int i = 0; i < NS; i++) {
        ss[i] = tu_session_recall(m, policy, NULL, -1, budget, interval, 2048, 0, recall);
        if (!ss[i]) {
            return;
        }
        gp.prefill_chunk = interval;
        got[i][0] = '\0';
        CHECK(triattn_generate_begin(ss[i], k_prompts[i], &gp) == TRIATTN_OK, "begin: %s", triattn_session_last_error(ss[i]));
    }
    bool all = false;
    for (int step = 0; !all && step < 1000; step++) {
        const char * text[NS];
        size_t len[NS];
        bool done[NS];
        enum triattn_status st[NS];
        CHECK(triattn_generate_next_batch(ss, NS, text, len, done, st) == TRIATTN_OK, "next_batch");
        all = true;
        for (int i = 0; i < NS; i++) {
            CHECK(st[i] == TRIATTN_OK, "%s: session %d: %s", policy, i, triattn_session_last_error(ss[i]));
            strncat(got[i], text[i], len[i]);
            all = all && done[i];
        }
    }
    for (int i = 0; i < NS; i++) {
        CHECK(strcmp(want[i], got[i]) == 0, "%s: prompt %d: batched text differs:\n  alone  : %s\n  batched: %s", policy, i,
              want[i], got[i]);
        struct triattn_generate_result r;
        triattn_generate_get_result(ss[i], &r);
        CHECK(r.n_generated == 48 && r.stop_reason == TRIATTN_STOP_LENGTH, "%s: %d generated, stop %d", policy,
              r.n_generated, r.stop_reason);
        struct triattn_kv_stats st;
        triattn_session_kv_stats(ss[i], &st);
        CHECK(recall == 0 || st.n_recalls == 1, "%s: prompt %d: %lld recalls", policy, i, (long long) st.n_recalls);
        rows += st.n_recalled;
        triattn_session_free(ss[i]);
    }
    CHECK(recall == 0 || rows > 0, "%s: no row recalled", policy);
}

/* Logprobs: the sampled token's log-probability and the top list agree with a double log-softmax. */
static void test_logprobs(triattn_model * m) {
    triattn_session * s = tu_session(m, "full", 2048, 128, 2048, 0);
    if (!s) {
        return;
    }
    struct triattn_generate_params gp;
    triattn_generate_params_init(&gp);
    gp.max_tokens = 12;
    gp.ignore_eos = true;
    gp.sampling.temperature = 0.9f;
    gp.sampling.seed = tu_u64() >> 1;
    gp.logprobs = (int32_t) tu_int(1, TRIATTN_MAX_TOP_LOGPROBS);
    const size_t V = (size_t) g_info.n_vocab;
    float * logits = malloc(V * sizeof(float));
    CHECK(triattn_generate_begin(s, k_prompts[2], &gp) == TRIATTN_OK, "begin");
    bool done = false;
    int n_checked = 0;
    while (!done) {
        memcpy(logits, triattn_session_logits(s, -1), V * sizeof(float));
        const char * t;
        size_t n;
        if (triattn_generate_next(s, &t, &n, &done) != TRIATTN_OK) {
            CHECK(0, "next: %s", triattn_session_last_error(s));
            break;
        }
        struct triattn_token_logprobs lp;
        if (triattn_generate_last_logprobs(s, &lp) != TRIATTN_OK) {
            continue;
        }
        double mx = -INFINITY, sum = 0.0;
        for (size_t v = 0; v < V; v++) {
            mx = tu_max(mx, logits[v]);
        }
        for (size_t v = 0; v < V; v++) {
            sum += exp(logits[v] - mx);
        }
        const double lse = mx + log(sum);
        CHECK(fabs(lp.logprob - (logits[lp.token] - lse)) < 1e-4, "logprob %g vs %g", lp.logprob, logits[lp.token] - lse);
        CHECK(lp.n_top == gp.logprobs, "n_top %d vs %d", lp.n_top, gp.logprobs);
        bool sorted = true, right = true;
        int better = 0;
        for (int j = 0; j < lp.n_top; j++) {
            sorted = sorted && (j == 0 || lp.top_logprobs[j] <= lp.top_logprobs[j - 1]);
            right = right && fabs(lp.top_logprobs[j] - (logits[lp.top_tokens[j]] - lse)) < 1e-4;
        }
        for (size_t v = 0; v < V; v++) {
            better += logits[v] > logits[lp.top_tokens[lp.n_top - 1]];
        }
        CHECK(sorted && right && better <= lp.n_top - 1, "top list: sorted %d right %d, %d tokens above the last", sorted,
              right, better);
        n_checked++;
    }
    CHECK(n_checked == 12, "logprobs for %d of 12 tokens", n_checked);
    gp.logprobs = 0;
    triattn_generate_begin(s, "Hello", &gp);
    const char * t;
    size_t n;
    struct triattn_token_logprobs lp;
    triattn_generate_next(s, &t, &n, &done);
    CHECK(triattn_generate_last_logprobs(s, &lp) == TRIATTN_ERR_INVALID_ARG, "logprobs off must report none");
    gp.logprobs = TRIATTN_MAX_TOP_LOGPROBS + 1;
    CHECK(triattn_generate_begin(s, "Hello", &gp) == TRIATTN_ERR_INVALID_ARG, "logprobs > max must be refused");
    free(logits);
    triattn_session_free(s);
}

static void test_kv_budget(triattn_model * m) {
    triattn_session * f = tu_session(m, "full", 2048, 128, 2048, 0);
    triattn_session * t = tu_session(m, "triattention", 256, 32, 2048, 0);
    if (!f || !t) {
        return;
    }
    CHECK(triattn_session_set_kv_budget(f, 128) == TRIATTN_ERR_INVALID_ARG, "full has no budget");
    CHECK(triattn_session_set_kv_budget(t, 0) == TRIATTN_ERR_INVALID_ARG, "budget 0");
    CHECK(triattn_session_set_kv_budget(t, 257) == TRIATTN_ERR_INVALID_ARG, "budget over the allocation");
    const int b = (int) tu_int(40, 256);
    CHECK(triattn_session_set_kv_budget(t, b) == TRIATTN_OK, "budget %d: %s", b, triattn_session_last_error(t));
    triattn_token toks[600];
    for (int i = 0; i < 600; i++) {
        toks[i] = (triattn_token) tu_int(1000, g_info.n_vocab - 1);
    }
    CHECK(triattn_session_decode(t, toks, 600, false) == TRIATTN_OK, "decode: %s", triattn_session_last_error(t));
    struct triattn_kv_stats ks;
    triattn_session_kv_stats(t, &ks);
    CHECK(ks.n_compressions > 0 && ks.live_max <= b + 32, "budget %d: live max %d after %lld rounds", b, ks.live_max,
          (long long) ks.n_compressions);
    triattn_session_free(f);
    triattn_session_free(t);
}

int main(void) {
    tu_seed_init("TRI_TEST_SEED");
    triattn_model * m = tu_load_default_model("batched decoding");
    if (!m) {
        return tu_finish();
    }
    triattn_model_get_info(m, &g_info);
    double t = now_s();
    test_batch_decode(m, "full", 2048, 128, (int) tu_int(5, 64), 0);
    printf("batch_decode full: %.1f s\n", now_s() - t);
    if (tu_inject_random_centres(m)) {
        t = now_s();
        test_batch_decode(m, "triattention", 64, 16, 16, 0);
        printf("batch_decode triattention: %.1f s\n", now_s() - t);
        t = now_s();
        test_batch_decode(m, "triattention", 32, 8, (int) tu_int(5, 40), 8);
        printf("batch_decode triattention + recall: %.1f s\n", now_s() - t);
        t = now_s();
        test_generate_batch(m, "triattention", 48, 16, 0);
        printf("generate_next_batch triattention: %.1f s\n", now_s() - t);
        t = now_s();
        test_generate_batch(m, "triattention", 10, 4, 8);
        printf("generate_next_batch triattention + recall: %.1f s\n", now_s() - t);
        t = now_s();
        test_kv_budget(m);
        printf("kv_budget: %.1f s\n", now_s() - t);
    }
    t = now_s();
    test_generate_batch(m, "full", 2048, 128, 0);
    printf("generate_next_batch full: %.1f s\n", now_s() - t);
    t = now_s();
    test_logprobs(m);
    printf("logprobs: %.1f s\n", now_s() - t);
    triattn_model_free(m);
    return tu_finish();
}
