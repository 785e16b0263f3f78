/* test_session_state.c - prefix reuse and session save/load on the real model (TRI_DEFAULT_MODEL):
 * a session continued with a longer prompt, cut back at a divergence, or restored from a file gives the same
 * logits bit for bit (and the same KV positions) as a fresh session given the whole prompt at once, with full
 * attention and a compressing TriAttention cache; corrupt, truncated and foreign files are refused and leave
 * the session unchanged. Random tokens and splits, fresh seed each run (TRI_TEST_SEED reproduces). */
#include "triattn.h"
#include "calibration.h"
#include "model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "test_util.h"

#define MAXT 400
#define MAXPOS 1024

static struct triattn_model_info g_info;
static char g_dir[256];

/* A session with a random n_batch: chunking must not matter. */
static triattn_session * session_mode(triattn_model * m, const char * policy, const char * mode, int budget, int interval) {
    /* with a mode the protected window is short, so the score (and the question's queries) decide what stays */
    return tu_session_mode(m, policy, mode, mode ? 16 : -1, budget, interval, 1024, (int) tu_int(24, 96));
}

static triattn_session * session_of(triattn_model * m, const char * policy, int budget, int interval) {
    return session_mode(m, policy, NULL, budget, interval);
}

static void random_tokens(triattn_token * t, int n) {
    for (int i = 0; i < n; i++) {
        t[i] = (triattn_token) tu_int(1000, g_info.n_vocab - 1);
    }
}

/* Decodes t[0..n) in random pieces. */
static bool decode_split(triattn_session * s, const triattn_token * t, int n) {
    for (int i = 0; i < n;) {
        const int k = (int) tu_int(1, n - i < 70 ? n - i : 70);
        if (triattn_session_decode(s, t + i, k, false) != TRIATTN_OK) {
            CHECK(0, "decode: %s", triattn_session_last_error(s));
            return false;
        }
        i += k;
    }
    return true;
}

/* Same logits of the last token and the same KV positions everywhere. */
static bool same_state(const triattn_session * a, const triattn_session * b) {
    static int32_t pa[MAXPOS], pb[MAXPOS];
    const float * la = triattn_session_logits(a, -1), * lb = triattn_session_logits(b, -1);
    if (!la || !lb || memcmp(la, lb, sizeof(float) * (size_t) g_info.n_vocab) != 0 ||
        triattn_session_n_past(a) != triattn_session_n_past(b)) {
        return false;
    }
    for (int l = 0; l < g_info.n_layer; l++) {
        for (int h = 0; h < g_info.n_head_kv; h++) {
            int32_t na = 0, nb = 0;
            triattn_session_kv_positions(a, l, h, pa, MAXPOS, &na);
            triattn_session_kv_positions(b, l, h, pb, MAXPOS, &nb);
            if (na != nb || memcmp(pa, pb, sizeof(int32_t) * (size_t) na) != 0) {
                return false;
            }
        }
    }
    return true;
}

/* n greedy steps on each of a and c. */
static void decode_greedy_both(triattn_session * a, triattn_session * c, int n) {
    for (int i = 0; i < n; i++) {
        triattn_token ta = tu_argmax(triattn_session_logits(a, -1), g_info.n_vocab);
        triattn_token tc = tu_argmax(triattn_session_logits(c, -1), g_info.n_vocab);
        triattn_session_decode(a, &ta, 1, false);
        triattn_session_decode(c, &tc, 1, false);
    }
}

/* triattn_session_reuse_prefix, after triattn_session_reusable has foretold its n_cached without changing the
 * session (its tokens and KV positions). */
static enum triattn_status reuse_checked(triattn_session * s, const triattn_token * t, int n,
                                         struct triattn_reuse_info * ri) {
    static triattn_token before[MAXPOS + 8], after[MAXPOS + 8];
    static int32_t pos_before[MAXPOS], pos_after[MAXPOS];
    int32_t nb = 0, na = 0, pb = 0, pa = 0;
    triattn_session_tokens(s, before, MAXPOS + 8, &nb);
    triattn_session_kv_positions(s, 0, 0, pos_before, MAXPOS, &pb);
    const int32_t foretold = triattn_session_reusable(s, t, n);
    triattn_session_tokens(s, after, MAXPOS + 8, &na);
    triattn_session_kv_positions(s, 0, 0, pos_after, MAXPOS, &pa);
    CHECK(na == nb && memcmp(before, after, sizeof(triattn_token) * (size_t) na) == 0 && pa == pb &&
              memcmp(pos_before, pos_after, sizeof(int32_t) * (size_t) pa) == 0,
          "reusable changed the session (%d -> %d tokens, %d -> %d slots)", nb, na, pb, pa);
    const enum triattn_status st = triattn_session_reuse_prefix(s, t, n, ri);
    CHECK(st != TRIATTN_OK || ri->n_cached == foretold, "reusable foretold %d cached tokens, reuse_prefix kept %d (kind %d)",
          foretold, ri->n_cached, ri->kind);
    return st;
}

/* A fresh session given t[0..n) in one call. */
static triattn_session * one_shot(triattn_model * m, const char * policy, int budget, int interval,
                                  const triattn_token * t, int n) {
    triattn_session * s = session_of(m, policy, budget, interval);
    if (s && triattn_session_decode(s, t, n, false) != TRIATTN_OK) {
        CHECK(0, "one-shot decode: %s", triattn_session_last_error(s));
    }
    return s;
}

/* Turn 1 (prompt + greedy tokens, the last one sampled but not decoded), then the whole conversation with turn 2
 * appended as a new prompt: only the suffix is decoded, and the result equals the one-shot session. Then a
 * divergence: cut back (full; triattention after its last round) or restart (triattention before it). */
static void test_reuse(triattn_model * m, const char * policy, int budget, int interval) {
    static triattn_token conv[MAXT];
    const int n1 = (int) tu_int(30, 120), ng = (int) tu_int(5, 40);
    /* a compressing policy's conversation outgrows budget + interval, so that its cache compresses */
    const int fill = strcmp(policy, "full") != 0 ? budget + interval + 1 - (n1 + ng) : 0;
    const int n2 = (int) tu_int(fill > 20 ? fill : 20, 150);
    random_tokens(conv, n1);
    triattn_session * a = session_of(m, policy, budget, interval);
    if (!a) {
        return;
    }
    struct triattn_reuse_info ri;
    CHECK(reuse_checked(a, conv, n1, &ri) == TRIATTN_OK && ri.kind == TRIATTN_REUSE_FRESH &&
              ri.n_cached == 0, "%s: first prompt: kind %d, cached %d", policy, ri.kind, ri.n_cached);
    decode_split(a, conv, n1);
    int n = n1;
    for (int i = 0; i < ng; i++) {
        conv[n] = tu_argmax(triattn_session_logits(a, -1), g_info.n_vocab);
        if (i + 1 < ng) {
            triattn_session_decode(a, conv + n, 1, false);
        }
        n++;
    }
    random_tokens(conv + n, n2);
    const int total = n + n2;
    CHECK(reuse_checked(a, conv, total, &ri) == TRIATTN_OK, "%s: reuse", policy);
    CHECK(ri.kind == TRIATTN_REUSE_CONTINUE && ri.n_cached == n - 1 && ri.n_common == n - 1,
          "%s: turn 2: kind %d, cached %d (want continue, %d)", policy, ri.kind, ri.n_cached, n - 1);
    decode_split(a, conv + ri.n_cached, total - ri.n_cached);
    triattn_session * b = one_shot(m, policy, budget, interval, conv, total);
    CHECK(same_state(a, b), "%s (budget %d): turn 1 + continued turn 2 differs from one request of %d tokens", policy,
          budget, total);
    struct triattn_kv_stats st;
    triattn_session_kv_stats(a, &st);
    if (strcmp(policy, "full") != 0) {
        CHECK(st.n_compressions > 0, "%s: the cache never compressed (%d tokens, budget %d)", policy, total, budget);
    }
    int32_t nt = 0;
    static triattn_token held[MAXT];
    CHECK(triattn_session_tokens(a, held, MAXT, &nt) == TRIATTN_OK && nt == total &&
              memcmp(held, conv, sizeof(triattn_token) * (size_t) total) == 0, "%s: token history", policy);

    /* The same prompt again: the last logits are current, nothing to decode. */
    CHECK(reuse_checked(a, conv, total, &ri) == TRIATTN_OK && ri.kind == TRIATTN_REUSE_CONTINUE &&
              ri.n_cached == total && same_state(a, b), "%s: same prompt again: kind %d cached %d", policy, ri.kind,
          ri.n_cached);

    /* Divergence at d: a different tail. */
    const int d = (int) tu_int(1, total - 2);
    static triattn_token alt[MAXT];
    memcpy(alt, conv, sizeof(triattn_token) * (size_t) d);
    const int n3 = (int) tu_int(1, 60);
    random_tokens(alt + d, n3);
    alt[d] = conv[d] == 1000 ? 1001 : 1000;
    CHECK(reuse_checked(a, alt, d + n3, &ri) == TRIATTN_OK, "%s: reuse after divergence", policy);
    /* Rounds run when live slots reach budget + interval: at budget + interval, then every interval. */
    const int trigger = budget + interval;
    const int last_round = strcmp(policy, "full") == 0 || total < trigger ? -1
                                                                          : trigger + (total - trigger) / interval * interval;
    if (d >= last_round) {
        CHECK(ri.kind == TRIATTN_REUSE_ROLLBACK && ri.n_cached == d, "%s: divergence at %d (last round %d): kind %d, "
              "cached %d (want rollback)", policy, d, last_round, ri.kind, ri.n_cached);
    } else {
        CHECK(ri.kind == TRIATTN_REUSE_RESTART && ri.n_cached == 0 && triattn_session_n_past(a) == 0,
              "%s: divergence at %d before the round at %d: kind %d cached %d", policy, d, last_round, ri.kind,
              ri.n_cached);
    }
    decode_split(a, alt + ri.n_cached, d + n3 - ri.n_cached);
    triattn_session * c = one_shot(m, policy, budget, interval, alt, d + n3);
    CHECK(same_state(a, c), "%s: after divergence at %d (%s) differs from one request", policy, d,
          ri.kind == TRIATTN_REUSE_ROLLBACK ? "rollback" : "restart");
    triattn_session_free(c);

    /* A changed KV budget: the cache no longer follows from the tokens alone. */
    if (strcmp(policy, "full") != 0) {
        CHECK(triattn_session_set_kv_budget(a, budget - 8) == TRIATTN_OK, "set_kv_budget");
        CHECK(reuse_checked(a, alt, d + n3, &ri) == TRIATTN_OK && ri.kind == TRIATTN_REUSE_RESTART,
              "%s: budget changed: kind %d", policy, ri.kind);
    }
    triattn_session_free(a);
    triattn_session_free(b);
}

/* A triattention session compressed once, cut back exactly after its round: rollback; before it: restart. */
static void test_rollback_rounds(triattn_model * m, int budget, int interval) {
    static triattn_token t[MAXT];
    const int n = budget + interval + (int) tu_int(1, interval - 1);
    random_tokens(t, n);
    triattn_session * a = one_shot(m, "triattention", budget, interval, t, n);
    if (!a) {
        return;
    }
    struct triattn_kv_stats st;
    triattn_session_kv_stats(a, &st);
    CHECK(st.n_compressions == 1, "one round expected, got %lld", (long long) st.n_compressions);
    const int round = budget + interval; /* the round ran when live slots reached budget + interval */
    struct triattn_reuse_info ri;
    triattn_token alt[MAXT];
    memcpy(alt, t, sizeof(triattn_token) * (size_t) n);
    const int after = (int) tu_int(round, n - 1);
    alt[after] = t[after] == 1000 ? 1001 : 1000;
    CHECK(reuse_checked(a, alt, n, &ri) == TRIATTN_OK && ri.kind == TRIATTN_REUSE_ROLLBACK &&
              ri.n_cached == after, "divergence at %d after the round at %d: kind %d cached %d", after, round, ri.kind,
          ri.n_cached);
    decode_split(a, alt + after, n - after);
    triattn_session * b = one_shot(m, "triattention", budget, interval, alt, n);
    CHECK(same_state(a, b), "rollback to %d after the round at %d differs from one request", after, round);
    const int before = (int) tu_int(1, round - 1);
    alt[before] = t[before] == 1000 ? 1001 : 1000;
    CHECK(reuse_checked(a, alt, n, &ri) == TRIATTN_OK && ri.kind == TRIATTN_REUSE_RESTART,
          "divergence at %d before the round at %d: kind %d", before, round, ri.kind);
    triattn_session_free(a);
    triattn_session_free(b);
}

static long file_size(const char * path) {
    FILE * f = fopen(path, "rb");
    if (!f) {
        return -1;
    }
    fseek(f, 0, SEEK_END);
    const long n = ftell(f);
    fclose(f);
    return n;
}

static bool write_file(const char * path, const unsigned char * data, long n) {
    FILE * f = fopen(path, "wb");
    if (!f) {
        return false;
    }
    const bool ok = fwrite(data, 1, (size_t) n, f) == (size_t) n;
    return fclose(f) == 0 && ok;
}

/* A loaded session must behave exactly as the saved one: greedy continuation, logits, positions. */
/* mode: a kv_mode whose policy keeps state outside the cache (look=: the question's queries, learnt from one
 * long first call, so the prompt goes in whole); NULL = the default, prompt in random pieces. */
static void test_save_load(triattn_model * m, const char * policy, const char * mode, int budget, int interval,
                           const char * other) {
    static triattn_token t[MAXT];
    const int n = strcmp(policy, "full") == 0 ? (int) tu_int(100, MAXT - 60)
                                              : (int) tu_int(budget + interval + 10, MAXT - 60);
    random_tokens(t, n);
    triattn_session * a = session_mode(m, policy, mode, budget, interval);
    if (!a) {
        return;
    }
    if (mode) {
        CHECK(triattn_session_decode(a, t, n, false) == TRIATTN_OK, "%s: %s", mode, triattn_session_last_error(a));
    } else {
        decode_split(a, t, n);
    }
    char path[512], bad[512];
    snprintf(path, sizeof path, "%s/%s.state", g_dir, policy);
    snprintf(bad, sizeof bad, "%s/%s.bad", g_dir, policy);
    CHECK(triattn_session_save(a, path) == TRIATTN_OK, "%s: save: %s", policy, triattn_session_last_error(a));
    const long size = file_size(path);
    const long per_slot = 4 + 4L * g_info.head_dim;
    const long slots = strcmp(policy, "full") == 0 ? n : budget + interval;
    const long queries = mode ? 8L * g_info.n_layer * g_info.n_head * g_info.head_dim * 4 : 0; /* look=: [L][8][H*D] */
    CHECK(size > 0 && size <= 4096 + 4L * n + (long) g_info.n_vocab * 4 + queries +
                                  (long) g_info.n_layer * g_info.n_head_kv * (4 + slots * per_slot),
          "%s: state file of %ld bytes for %d tokens", policy, size, n);

    triattn_session * c = session_mode(m, policy, mode, budget, interval);
    if (!c) {
        return;
    }
    /* c holds something else first: every refused load must leave it as it was */
    static triattn_token own[64];
    random_tokens(own, 64);
    decode_split(c, own, 64);
    static float before[65536];
    memcpy(before, triattn_session_logits(c, -1), sizeof(float) * (size_t) g_info.n_vocab);
    unsigned char * img = malloc((size_t) size);
    FILE * f = fopen(path, "rb");
    CHECK(f && fread(img, 1, (size_t) size, f) == (size_t) size, "read back %s", path);
    if (f) {
        fclose(f);
    }
    struct { const char * what; long n; long flip; } cases[] = {
        { "truncated", tu_int(0, size - 1), -1 },
        { "truncated by 1", size - 1, -1 },
        { "bit flip", size, tu_int(0, size - 1) },
        { "bit flip in the header", size, tu_int(0, 200) },
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        f = fopen(path, "rb");
        if (f) {
            CHECK(fread(img, 1, (size_t) size, f) == (size_t) size, "re-read %s", path);
            fclose(f);
        }
        if (cases[k].flip >= 0) {
            img[cases[k].flip] ^= (unsigned char) (1u << tu_int(0, 7));
        }
        write_file(bad, img, cases[k].n);
        const enum triattn_status st = triattn_session_load(c, bad);
        CHECK(st == TRIATTN_ERR_FORMAT || st == TRIATTN_ERR_INVALID_ARG, "%s: %s file accepted (%d)", policy,
              cases[k].what, st);
        CHECK(triattn_session_last_error(c)[0] != '\0', "%s: %s file: no message", policy, cases[k].what);
    }
    CHECK(triattn_session_load(c, "/nonexistent/dir/state") == TRIATTN_ERR_IO, "%s: missing file", policy);
    /* a state of another policy */
    triattn_session * o = session_of(m, other, budget, interval);
    if (o) {
        decode_split(o, t, 20);
        snprintf(bad, sizeof bad, "%s/%s.other", g_dir, policy);
        CHECK(triattn_session_save(o, bad) == TRIATTN_OK, "save other: %s", triattn_session_last_error(o));
        CHECK(triattn_session_load(c, bad) == TRIATTN_ERR_INVALID_ARG, "%s: a '%s' state was accepted", policy, other);
        triattn_session_free(o);
    }
    CHECK(triattn_session_n_past(c) == 64 &&
              memcmp(before, triattn_session_logits(c, -1), sizeof(float) * (size_t) g_info.n_vocab) == 0,
          "%s: a refused load changed the session", policy);

    CHECK(triattn_session_load(c, path) == TRIATTN_OK, "%s: load: %s", policy, triattn_session_last_error(c));
    CHECK(same_state(a, c), "%s: loaded state differs", policy);
    decode_greedy_both(a, c, 40);
    CHECK(same_state(a, c), "%s: continuation after load differs", policy);
    struct triattn_reuse_info ri;
    static triattn_token held[MAXT];
    int32_t nh = 0;
    triattn_session_tokens(c, held, MAXT, &nh);
    held[nh] = 1234;
    CHECK(reuse_checked(c, held, nh + 1, &ri) == TRIATTN_OK && ri.kind == TRIATTN_REUSE_CONTINUE &&
              ri.n_cached == nh, "%s: prefix reuse after load: kind %d", policy, ri.kind);
    free(img);
    triattn_session_free(a);
    triattn_session_free(c);
    remove(path);
    remove(bad);
    snprintf(bad, sizeof bad, "%s/%s.bad", g_dir, policy);
    remove(bad);
}

/* triattn_session_copy: the copy equals the source and both decode on alike; the source is unchanged; a copy
 * across policies is refused and leaves the target as it was. */
static void test_copy(triattn_model * m, const char * policy, const char * mode, int budget, int interval,
                      const char * other) {
    static triattn_token t[MAXT], own[64];
    static float before[65536];
    const int n = (int) tu_int(strcmp(policy, "full") == 0 ? 50 : budget + interval + 10, MAXT - 60);
    random_tokens(t, n);
    random_tokens(own, 64);
    triattn_session * a = session_mode(m, policy, mode, budget, interval);
    triattn_session * c = session_mode(m, policy, mode, budget, interval);
    triattn_session * o = session_of(m, other, budget, interval);
    if (!a || !c || !o) {
        CHECK(0, "%s: sessions", policy);
        return;
    }
    decode_split(a, t, n);
    decode_split(c, own, 64);
    decode_split(o, t, 20);
    memcpy(before, triattn_session_logits(c, -1), sizeof(float) * (size_t) g_info.n_vocab);
    CHECK(triattn_session_copy(c, o) == TRIATTN_ERR_INVALID_ARG && strstr(triattn_session_last_error(c), other),
          "%s: a '%s' session was copied in: %s", policy, other, triattn_session_last_error(c));
    CHECK(triattn_session_n_past(c) == 64 &&
              memcmp(before, triattn_session_logits(c, -1), sizeof(float) * (size_t) g_info.n_vocab) == 0,
          "%s: a refused copy changed the session", policy);
    memcpy(before, triattn_session_logits(a, -1), sizeof(float) * (size_t) g_info.n_vocab);
    CHECK(triattn_session_copy(c, a) == TRIATTN_OK, "%s: copy: %s", policy, triattn_session_last_error(c));
    CHECK(triattn_session_copy(a, a) == TRIATTN_OK && triattn_session_n_past(a) == n &&
              memcmp(before, triattn_session_logits(a, -1), sizeof(float) * (size_t) g_info.n_vocab) == 0,
          "%s: the source changed", policy);
    CHECK(same_state(a, c), "%s: the copy differs", policy);
    decode_greedy_both(a, c, 40);
    CHECK(same_state(a, c), "%s: the copy decodes on differently", policy);
    triattn_session_free(a);
    triattn_session_free(c);
    triattn_session_free(o);
}

int main(void) {
    tu_seed_init("TRI_TEST_SEED");
    triattn_model * m = tu_load_default_model("session state");
    if (!m) {
        return tu_finish();
    }
    triattn_model_get_info(m, &g_info);
    if (!tu_mkdtemp(g_dir, sizeof g_dir, "tri_state_")) {
        CHECK(0, "mkdtemp");
        return tu_finish();
    }
    test_reuse(m, "full", 2048, 128);
    if (tu_inject_random_centres(m)) {
        test_reuse(m, "triattention", 64, 16);
        test_rollback_rounds(m, 64, 16);
        test_save_load(m, "triattention", NULL, 64, 16, "full");
        test_save_load(m, "triattention", "per_head,look=48,lookw=16", 64, 16, "full");
        test_copy(m, "triattention", NULL, 64, 16, "full");
        test_copy(m, "triattention", "per_head,look=48,lookw=16", 64, 16, "full");
    }
    test_save_load(m, "full", NULL, 2048, 128, "triattention");
    test_copy(m, "full", NULL, 2048, 128, "triattention");
    rmdir(g_dir);
    triattn_model_free(m);
    return tu_finish();
}
