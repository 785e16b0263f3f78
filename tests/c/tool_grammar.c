/* The grammar matcher for tests/test_constrained.py (compared there with the jsonschema package).
 *   tool_grammar check SCHEMA_FILE       stdin: one hex-encoded document per line; prints 1 (a complete
 *                                        document the matcher accepts) or 0 per line
 *   tool_grammar walk SCHEMA_FILE N SEED prints N lines "<hex> <0|1>": a random walk over accepted bytes, hex-
 *                                        encoded, and whether it ended on a complete document
 * A schema the compiler refuses: prints "error <status name>: <message>" and exits 2. */
#include "triattn.h"

#include "grammar.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

static int hexv(int c) {
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
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
