/* tool_gguf_fuzz FILE N SEED: mutates the header region of a real GGUF N times and parses every mutated
 * copy with tri_gguf_open_buffer. Each case must return OK or a format-type error (never crash, never an
 * unexpected status), and an OK parse must only point inside the buffer. Prints counts and
 * "N passed, F failed"; exits non-zero on any failure.
 * Every copy that parses is then loaded as a model (hyperparameters, vocabulary, tensor binding), and a
 * model that loads runs a few tokens through a small session: all must succeed or fail with a message. */
#include "gguf.h"
#include "model.h"
#include "gguf_check.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test_util.h"


static uint64_t huge_value(void) {
    static const uint64_t v[] = { UINT64_MAX, 1ull << 63, 1ull << 60, 1ull << 32, 0xFFFFFFFFull, 0x7FFFFFFFFFFFFFFFull };
    return tu_below(3) == 0 ? tu_u64() : v[tu_below(sizeof v / sizeof v[0])];
}

static long n_models;

/* Loads a model from a parsed GGUF (taking ownership) and decodes a few tokens if it loads.
 * Returns false on a contract violation (error without message, unexpected status). */
static bool model_level(tri_gguf * g, long c, int kind) {
    triattn_model * model = NULL;
    char err[512] = "";
    enum triattn_status st = tri_model_load_gguf(g, "fuzz", &model, err, sizeof err);
    if (st != TRIATTN_OK) {
        if (model || err[0] == '\0' || st == TRIATTN_OK) {
            fprintf(stderr, "case %ld (kind %d): model load status %d without a clean error: %s\n", c, kind, st, err);
            return false;
        }
        return true;
    }
    n_models++;
    const char * broken = tri_gguf_run_small(model);
    if (broken) fprintf(stderr, "case %ld (kind %d): %s\n", c, kind, broken);
    triattn_model_free(model);
    return !broken;
}

int main(int argc, char ** argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s FILE N SEED\n", argv[0]);
        return 2;
    }
    long n_cases = strtol(argv[2], NULL, 10);
    tu_seed(strtoull(argv[3], NULL, 10));
    FILE * f = fopen(argv[1], "rb");
    if (!f) {
        fprintf(stderr, "cannot open %s\n", argv[1]);
        return 2;
    }
    fseek(f, 0, SEEK_END);
    long fsize = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t * buf = fsize > 0 ? malloc((size_t) fsize) : NULL;
    if (!buf || fread(buf, 1, (size_t) fsize, f) != (size_t) fsize) {
        fprintf(stderr, "cannot read %s\n", argv[1]);
        return 2;
    }
    fclose(f);
    size_t size = (size_t) fsize;

    char err[512];
    tri_gguf * g = NULL;
    if (tri_gguf_open_buffer(buf, size, &g, err, sizeof err) != TRIATTN_OK) {
        fprintf(stderr, "the unmodified file does not parse: %s\n", err);
        return 1;
    }
    size_t region = g->data_offset > 65536 ? (size_t) g->data_offset : 65536;
    if (region > size) region = size;
    if (region < 64) {
        fprintf(stderr, "file too small to fuzz\n");
        return 2;
    }
    /* Field positions of the original file to aim structured mutations at. */
    uint64_t n_kv = g->n_kv;
    uint64_t * kv_off = malloc((size_t) (n_kv ? n_kv : 1) * sizeof *kv_off);
    for (uint64_t i = 0; i < n_kv; i++) kv_off[i] = g->kv[i].offset;
    tri_gguf_close(g);
    uint8_t * orig = malloc(region);
    memcpy(orig, buf, region);

    long n_ok = 0, n_err = 0, n_fail = 0;
    long by_status[16] = { 0 };
    for (long c = 0; c < n_cases; c++) {
        size_t len = size;
        int kind = (int) tu_below(6);
        switch (kind) {
            case 0: /* truncate inside the header region */
                len = tu_below(region);
                break;
            case 1: { /* flip 1-8 random bytes */
                int k = 1 + (int) tu_below(8);
                for (int i = 0; i < k; i++) buf[tu_below(region)] ^= (uint8_t) (1 + tu_below(255));
                break;
            }
            case 2: { /* a random u64 becomes huge */
                uint64_t v = huge_value();
                memcpy(buf + tu_below(region - 8), &v, 8);
                break;
            }
            case 3: { /* a random u32 becomes a small id (value types, tensor types, n_dims) */
                uint32_t v = (uint32_t) tu_below(48);
                memcpy(buf + tu_below(region - 4), &v, 4);
                break;
            }
            case 4: { /* a kv field: key length, value type, or (arrays) element type / count */
                if (!n_kv) break;
                uint64_t at = kv_off[tu_below(n_kv)];
                uint64_t klen;
                memcpy(&klen, buf + at, 8);
                uint64_t tpos = at + 8 + klen;
                int which = (int) tu_below(4);
                if (which == 0) {
                    uint64_t v = tu_below(2) ? huge_value() : klen + tu_below(16) - 8;
                    memcpy(buf + at, &v, 8);
                } else if (tpos + 16 <= region) {
                    uint32_t t;
                    memcpy(&t, buf + tpos, 4);
                    if (which == 1) {
                        uint32_t v = (uint32_t) tu_below(14);
                        memcpy(buf + tpos, &v, 4);
                    } else if (t == TRI_GGUF_ARRAY && which == 2) {
                        uint32_t v = (uint32_t) tu_below(14);
                        memcpy(buf + tpos + 4, &v, 4);
                    } else if (t == TRI_GGUF_ARRAY) {
                        uint64_t cnt;
                        memcpy(&cnt, buf + tpos + 8, 8);
                        uint64_t v = tu_below(2) ? huge_value() : cnt + tu_below(5) - 2;
                        memcpy(buf + tpos + 8, &v, 8);
                    }
                }
                break;
            }
            default: { /* copy a random chunk over another place */
                size_t n = 1 + tu_below(64);
                if (n < region) memmove(buf + tu_below(region - n), buf + tu_below(region - n), n);
                break;
            }
        }
        tri_gguf * m = NULL;
        err[0] = '\0';
        enum triattn_status st = tri_gguf_open_buffer(buf, len, &m, err, sizeof err);
        by_status[st & 15]++;
        if (st == TRIATTN_OK) {
            if (!m || !tri_gguf_inside(m, buf, len)) {
                n_fail++;
                fprintf(stderr, "case %ld (kind %d): OK parse points outside the buffer\n", c, kind);
            }
            n_ok++;
            if (!model_level(m, c, kind)) {
                n_fail++;
            }
            m = NULL; /* owned (and closed) by model_level */
        } else {
            n_err++;
            if (m || (st != TRIATTN_ERR_FORMAT && st != TRIATTN_ERR_UNSUPPORTED && st != TRIATTN_ERR_OOM) ||
                err[0] == '\0') {
                n_fail++;
                fprintf(stderr, "case %ld (kind %d): unexpected status %d or empty message: %s\n", c, kind, st, err);
            }
        }
        tri_gguf_close(m);
        memcpy(buf, orig, region);
    }
    printf("cases %ld: ok %ld, errors %ld (format %ld, unsupported %ld, oom %ld)\n", n_cases, n_ok, n_err,
           by_status[TRIATTN_ERR_FORMAT], by_status[TRIATTN_ERR_UNSUPPORTED], by_status[TRIATTN_ERR_OOM]);
    printf("models loaded and run: %ld\n", n_models);
    printf("%ld passed, %ld failed\n", n_cases - n_fail, n_fail);
    free(orig);
    free(kv_off);
    free(buf);
    return n_fail != 0;
}
