/* Tokenizer driver for tests/test_tokenizer.py; loads only the vocabulary of a GGUF.
 *   tool_tokenize MODEL.gguf [--special] [--no-add-special] [--repeat N]   stdin text -> ids on one line
 *   tool_tokenize MODEL.gguf --detok [--special]                           stdin ids -> text (raw bytes)
 *   tool_tokenize MODEL.gguf --info                                        bos eos n_tokens and EOG ids
 * --batch: tokenize reads records (u32 little-endian length, then the bytes) and prints one line of ids per
 * record; --detok reads one line of ids per text and prints "<length>\n<bytes>" for each.
 * --repeat N tokenizes N times and prints the load time and throughput on stderr. */
#include "common.h"
#include "gguf.h"
#include "vocab.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char * read_all(FILE * f, size_t * n) {
    size_t cap = 1 << 16, len = 0;
    char * buf = malloc(cap + 1);
    while (buf) {
        size_t got = fread(buf + len, 1, cap - len, f);
        len += got;
        if (len < cap) {
            break;
        }
        cap *= 2;
        char * nb = realloc(buf, cap + 1);
        if (!nb) {
            free(buf);
            return NULL;
        }
        buf = nb;
    }
    if (buf) {
        buf[len] = '\0';
    }
    *n = len;
    return buf;
}

/* Tokenizes one text and prints its ids on one line; repeat > 0 also times it. */
static int tok_one(const tri_vocab * v, const char * in, size_t n_in, bool add_special, bool special, int repeat,
                   double t_load) {
    int32_t need = 0, n = 0;
    enum triattn_status st = tri_vocab_tokenize(v, in, (int32_t) n_in, add_special, special, NULL, 0, &need);
    triattn_token * ids = malloc(((size_t) need + 1) * sizeof *ids);
    if (st == TRIATTN_OK && ids) {
        st = tri_vocab_tokenize(v, in, (int32_t) n_in, add_special, special, ids, need, &n);
    }
    if (st != TRIATTN_OK || !ids || n != need) {
        fprintf(stderr, "error: tokenize failed (%d)\n", (int) st);
        free(ids);
        return 1;
    }
    for (int32_t i = 0; i < n; i++) {
        printf(i ? " %d" : "%d", ids[i]);
    }
    printf("\n");
    if (repeat > 0) {
        double t0 = tri_time_ms();
        for (int r = 0; r < repeat; r++) {
            tri_vocab_tokenize(v, in, (int32_t) n_in, add_special, special, ids, need, &n);
        }
        double ms = (tri_time_ms() - t0) / repeat;
        fprintf(stderr, "load_ms %.2f tokenize_ms %.3f bytes %zu tokens %d MB/s %.2f tokens/s %.0f\n", t_load, ms,
                n_in, n, n_in / ms / 1e3, n / ms * 1e3);
    }
    free(ids);
    return 0;
}

/* Parses ids from [p, end) and prints their text; batch prefixes it with its length and a newline. */
static int detok_one(const tri_vocab * v, const char * p, const char * end, bool special, bool batch) {
    int32_t cap = 1024, n = 0;
    triattn_token * ids = malloc((size_t) cap * sizeof *ids);
    while (ids && p < end) {
        char * e;
        long x = strtol(p, &e, 10);
        if (e == p || e > end) {
            break;
        }
        if (n == cap) {
            cap *= 2;
            triattn_token * nid = realloc(ids, (size_t) cap * sizeof *ids);
            if (!nid) {
                break;
            }
            ids = nid;
        }
        ids[n++] = (triattn_token) x;
        p = e;
    }
    int32_t need = 0;
    enum triattn_status st = ids ? tri_vocab_detokenize(v, ids, n, special, NULL, 0, &need) : TRIATTN_ERR_OOM;
    char * out = st == TRIATTN_OK ? malloc((size_t) need + 1) : NULL;
    if (out) {
        st = tri_vocab_detokenize(v, ids, n, special, out, need + 1, &need);
    }
    int rc = 0;
    if (st == TRIATTN_OK && out) {
        if (batch) {
            printf("%d\n", need);
        }
        fwrite(out, 1, (size_t) need, stdout);
    } else {
        fprintf(stderr, "error: detokenize failed (%d)\n", (int) st);
        rc = 1;
    }
    free(out);
    free(ids);
    return rc;
}

int main(int argc, char ** argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s MODEL.gguf [--special] [--no-add-special] [--detok] [--batch] [--info] [--repeat N]\n", argv[0]);
        return 2;
    }
    bool special = false, add_special = true, detok = false, info = false, batch = false;
    int repeat = 0;
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "--special")) special = true;
        else if (!strcmp(argv[i], "--no-add-special")) add_special = false;
        else if (!strcmp(argv[i], "--detok")) detok = true;
        else if (!strcmp(argv[i], "--info")) info = true;
        else if (!strcmp(argv[i], "--batch")) batch = true;
        else if (!strcmp(argv[i], "--repeat") && i + 1 < argc) repeat = atoi(argv[++i]);
        else {
            fprintf(stderr, "unknown argument %s\n", argv[i]);
            return 2;
        }
    }
    char err[512] = "";
    tri_gguf * g = NULL;
    if (tri_gguf_open_file(argv[1], true, &g, err, sizeof err) != TRIATTN_OK) {
        fprintf(stderr, "error: %s\n", err);
        return 1;
    }
    tri_vocab * v = NULL;
    double t0 = tri_time_ms();
    enum triattn_status st = tri_vocab_load(g, &v, err, sizeof err);
    double t_load = tri_time_ms() - t0;
    tri_gguf_close(g);
    if (st != TRIATTN_OK) {
        fprintf(stderr, "error (%d): %s\n", (int) st, err);
        return 1;
    }
    int rc = 0;
    size_t n_in = 0;
    char * in = info ? NULL : read_all(stdin, &n_in);
    if (info) {
        printf("%d %d %d", tri_vocab_bos(v), tri_vocab_eos(v), tri_vocab_n_tokens(v));
        for (int32_t t = 0; t < tri_vocab_n_tokens(v); t++) {
            if (tri_vocab_is_eog(v, t)) printf(" %d", t);
        }
        printf("\n");
    } else if (!in) {
        fprintf(stderr, "error: cannot read stdin\n");
        rc = 1;
    } else if (detok) {
        for (char * p = in, * e = in + n_in; p < e && rc == 0;) {
            char * nl = batch ? memchr(p, '\n', (size_t) (e - p)) : NULL;
            char * stop = nl ? nl : e;
            rc = detok_one(v, p, stop, special, batch);
            p = stop + 1;
        }
    } else if (batch) {
        for (size_t p = 0; p + 4 <= n_in && rc == 0;) {
            uint32_t len = (uint32_t) (uint8_t) in[p] | (uint32_t) (uint8_t) in[p + 1] << 8 |
                           (uint32_t) (uint8_t) in[p + 2] << 16 | (uint32_t) (uint8_t) in[p + 3] << 24;
            p += 4;
            if (len > n_in - p) {
                fprintf(stderr, "error: truncated batch record\n");
                rc = 1;
                break;
            }
            rc = tok_one(v, in + p, len, add_special, special, 0, t_load);
            p += len;
        }
    } else {
        rc = tok_one(v, in, n_in, add_special, special, repeat, t_load);
    }
    free(in);
    tri_vocab_free(v);
    return rc;
}
