/* The grammar matcher for tests/test_constrained.py (compared there with the jsonschema package).
 *   tool_grammar check SCHEMA_FILE       stdin: one hex-encoded document per line; prints 1 (a complete
 *                                        document the matcher accepts) or 0 per line
 *   tool_grammar walk SCHEMA_FILE N SEED prints N lines "<hex> <0|1>": a random walk over accepted bytes, hex-
 *                                        encoded, and whether it ended on a complete document
 *   tool_grammar mask SCHEMA_FILE MODEL  stdin: hex-encoded documents; for the state after every byte prefix of
 *                                        each, times the full token mask over the model's vocabulary and one
 *                                        token check; prints "masks <n> mask_ms <mean> <max> check_us <mean>
 *                                        allowed <mean tokens> trie_nodes <n> trie_ms <build time>"
 * A schema the compiler refuses: prints "error <status name>: <message>" and exits 2. */
#include "triattn.h"

#include "grammar.h"
#include "grammar_mask.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int hexv(int c) {
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* The mask benchmark of bench/grammar_mask.py. */
static int mask_bench(const tri_schema * s, const char * model_path) {
    triattn_model * m = NULL;
    char err[512];
    if (triattn_model_load(model_path, NULL, &m, err, sizeof err) != TRIATTN_OK) {
        printf("error %s\n", err);
        return 2;
    }
    double t0 = now_ms();
    const tri_token_trie * t = tri_token_trie_get(m, err, sizeof err);
    const double trie_ms = now_ms() - t0;
    const int32_t nv = triattn_vocab_size(m);
    uint8_t * allow = malloc((size_t) nv);
    tri_gstate * scratch = t ? malloc((size_t) (t->max_depth + 1) * sizeof *scratch) : NULL;
    if (!t || !allow || !scratch) {
        printf("error out of memory\n");
        return 2;
    }
    long n = 0;
    double sum = 0, mx = 0, check = 0, allowed = 0;
    char line[65536];
    while (fgets(line, sizeof line, stdin)) {
        tri_gstate g;
        tri_gstate_init(s, &g);
        for (size_t i = 0;; i += 2) {
            memset(allow, 0, (size_t) nv);
            t0 = now_ms();
            allowed += tri_token_trie_mask(t, s, &g, scratch, allow);
            const double ms = now_ms() - t0;
            t0 = now_ms();
            for (triattn_token id = 0; id < 1000; id++) { /* one token check, averaged over 1000 tokens */
                char piece[256];
                int32_t len = 0;
                triattn_token_to_piece(m, id * (nv / 1000), false, piece, sizeof piece, &len);
                tri_gstate c;
                tri_gstate_copy(&c, &g);
                tri_gstate_feed_bytes(s, &c, piece, len > 256 ? 0 : len);
            }
            check += (now_ms() - t0) / 1000.0;
            sum += ms;
            mx = ms > mx ? ms : mx;
            n++;
            if (hexv(line[i]) < 0 || hexv(line[i + 1]) < 0 ||
                !tri_gstate_feed(s, &g, (uint8_t) (hexv(line[i]) * 16 + hexv(line[i + 1])))) {
                break;
            }
        }
    }
    printf("masks %ld mask_ms %.4f %.4f check_us %.3f allowed %.1f trie_nodes %d trie_ms %.1f\n", n, sum / n, mx,
           1e3 * check / n, allowed / n, t->n_nodes, trie_ms);
    free(allow);
    free(scratch);
    triattn_model_free(m);
    return 0;
}

static char * read_file(const char * path, size_t * n) {
    FILE * f = fopen(path, "rb");
    if (!f) return NULL;
    char * buf = NULL;
    size_t cap = 0, len = 0, r;
    do {
        if (len + 4096 > cap) {
            cap = cap * 2 + 4096;
            char * b = realloc(buf, cap);
            if (!b) break;
            buf = b;
        }
        r = fread(buf + len, 1, cap - len, f);
        len += r;
    } while (r > 0);
    fclose(f);
    *n = len;
    return buf;
}


static uint64_t rng_state;
static uint64_t rng(void) { /* splitmix64 */
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static void walk(const tri_schema * s) {
    tri_gstate g;
    tri_gstate_init(s, &g);
    uint8_t ok[256];
    for (int n = 0; n < 3000; n++) {
        int m = 0;
        for (int c = 0; c < 256; c++) {
            tri_gstate t;
            tri_gstate_copy(&t, &g);
            if (tri_gstate_step(s, &t, (uint8_t) c)) ok[m++] = (uint8_t) c;
        }
        const int complete = tri_gstate_complete(s, &g);
        if (m == 0 || (complete && rng() % 3 == 0)) break;
        uint8_t c = ok[rng() % (uint64_t) m];
        /* bias towards structure so that walks end: closing bytes, quotes, digits */
        if (rng() % 2 == 0) {
            for (int k = 0; k < m; k++) {
                if (strchr("\"]}", ok[k]) && rng() % 2 == 0) c = ok[k];
            }
        }
        tri_gstate_feed(s, &g, c);
        printf("%02x", c);
    }
    printf(" %d\n", tri_gstate_complete(s, &g));
}

int main(int argc, char ** argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: tool_grammar check|walk SCHEMA_FILE [N SEED]\n");
        return 1;
    }
    size_t n = 0;
    char * text = read_file(argv[2], &n);
    if (!text) {
        fprintf(stderr, "cannot read %s\n", argv[2]);
        return 1;
    }
    tri_schema * s = NULL;
    char err[512] = "";
    enum triattn_status st = tri_schema_compile(text, n, &s, err, sizeof err);
    free(text);
    if (st != TRIATTN_OK) {
        printf("error %s: %s\n", triattn_status_name(st), err);
        return 2;
    }
    if (strcmp(argv[1], "mask") == 0 && argc >= 4) {
        int rc = mask_bench(s, argv[3]);
        tri_schema_free(s);
        return rc;
    }
    if (strcmp(argv[1], "walk") == 0 && argc >= 5) {
        rng_state = strtoull(argv[4], NULL, 10);
        for (long i = strtol(argv[3], NULL, 10); i > 0; i--) walk(s);
    } else {
        char line[65536];
        while (fgets(line, sizeof line, stdin)) {
            tri_gstate g;
            tri_gstate_init(s, &g);
            int ok = 1;
            for (size_t i = 0; ok && hexv(line[i]) >= 0 && hexv(line[i + 1]) >= 0; i += 2) {
                ok = tri_gstate_feed(s, &g, (uint8_t) (hexv(line[i]) * 16 + hexv(line[i + 1])));
            }
            printf("%d\n", ok && tri_gstate_complete(s, &g));
        }
    }
    tri_schema_free(s);
    return 0;
}
