/* Helper for tests/test_quants.py: runs the C kernels on raw files so numpy/gguf can judge them.
 *
 *   tool_quants dequant  TYPE in.bin out.f32          scalar dequantizer (blocks -> float32)
 *   tool_quants quantize TYPE in.f32 out.bin          reference quantizer (float32 -> blocks)
 *   tool_quants matmul   TYPE N_IN w.bin x.f32 y.f32  y[t, r] = dot(row r of W, x[t] converted to the
 *                                                     vec_dot_type), best kernels for this CPU
 *   tool_quants isa                                   prints the CPU features in use
 * TYPE is a ggml type name (Q4_1) or id (3). Exit status 0 on success, 1 with a message otherwise. */
#include "matmul.h"
#include "types.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static int fail(const char * msg, const char * arg) {
    fprintf(stderr, "tool_quants: %s%s%s\n", msg, arg ? ": " : "", arg ? arg : "");
    return 1;
}

static const tri_type_traits * parse_type(const char * s) {
    char * end = NULL;
    long id = strtol(s, &end, 10);
    if (end && *end == '\0') {
        return (id >= 0 && id < TRI_TYPE_COUNT) ? tri_type_traits_get((enum tri_type)id) : NULL;
    }
    for (int t = 0; t < TRI_TYPE_COUNT; t++) {
        const tri_type_traits * tt = tri_type_traits_get((enum tri_type)t);
        if (tt && strcasecmp(tt->name, s) == 0) {
            return tt;
        }
    }
    return NULL;
}

static enum tri_type type_id(const tri_type_traits * tt) {
    for (int t = 0; t < TRI_TYPE_COUNT; t++) {
        if (tri_type_traits_get((enum tri_type)t) == tt) {
            return (enum tri_type)t;
        }
    }
    return TRI_TYPE_COUNT;
}

static void * read_all(const char * path, size_t * n) {
    FILE * f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    void * buf = malloc(len > 0 ? (size_t)len : 1);
    if (buf && len > 0 && fread(buf, 1, (size_t)len, f) != (size_t)len) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    *n = len > 0 ? (size_t)len : 0;
    return buf;
}

static int write_all(const char * path, const void * buf, size_t n) {
    FILE * f = fopen(path, "wb");
    if (!f) return 1;
    const int bad = fwrite(buf, 1, n, f) != n;
    return fclose(f) != 0 || bad;
}

int main(int argc, char ** argv) {
    if (argc == 2 && strcmp(argv[1], "isa") == 0) {
        printf("%s\n", tri_cpu_features());
        return 0;
    }
    if (argc < 5) {
        return fail("usage: tool_quants dequant|quantize TYPE in out | matmul TYPE N_IN w x y | isa", NULL);
    }
    const tri_type_traits * tt = parse_type(argv[2]);
    if (!tt) return fail("unknown type", argv[2]);
    const bool is_matmul = strcmp(argv[1], "matmul") == 0;
    size_t nin = 0;
    void * in = read_all(argv[is_matmul ? 4 : 3], &nin);
    if (!in) return fail("cannot read", argv[is_matmul ? 4 : 3]);
    int rc = 0;

    if (strcmp(argv[1], "dequant") == 0) {
        if (nin % tt->type_size != 0) return fail("input is not a whole number of blocks", argv[3]);
        const int64_t k = (int64_t)(nin / tt->type_size) * tt->blck_size;
        float * out = malloc((size_t)k * sizeof(float) + 1);
        tt->to_float(in, out, k);
        rc = write_all(argv[4], out, (size_t)k * sizeof(float)) ? fail("cannot write", argv[4]) : 0;
        free(out);
    } else if (strcmp(argv[1], "quantize") == 0) {
        if (!tt->from_float) return fail("type cannot be quantized", argv[2]);
        const int64_t k = (int64_t)(nin / sizeof(float));
        if (k % tt->blck_size != 0 || nin % sizeof(float)) return fail("input is not whole blocks of float32", argv[3]);
        const size_t no = (size_t)(k / tt->blck_size) * tt->type_size;
        void * out = malloc(no + 1);
        tt->from_float(in, out, k);
        rc = write_all(argv[4], out, no) ? fail("cannot write", argv[4]) : 0;
        free(out);
    } else if (is_matmul && argc == 7) {
        const int64_t n_in = strtoll(argv[3], NULL, 10);
        size_t nx = 0;
        float * x = read_all(argv[5], &nx);
        const enum tri_type wt = type_id(tt);
        const size_t rs = tri_row_size(wt, n_in);
        const size_t xs = tri_matmul_xrow_size(tt->vec_dot_type, n_in);
        if (!x || n_in <= 0 || rs == 0 || !tt->vec_dot || nin % rs || nx % (n_in * sizeof(float))) {
            return fail("bad matmul inputs", NULL);
        }
        const int64_t rows = (int64_t)(nin / rs), ntok = (int64_t)(nx / (n_in * sizeof(float)));
        void *  xq = malloc((size_t)ntok * xs + 1);
        void *  sc = malloc(tri_matmul_scratch_size(n_in));
        float * y  = malloc((size_t)(ntok * rows) * sizeof(float) + 1);
        tri_quantize_rows(x, n_in, xq, tt->vec_dot_type, n_in, 0, ntok);
        tri_matmul_rows(in, wt, TRI_WLAYOUT_ROWS, n_in, 0, rows, xq, ntok, y, rows, sc);
        rc = write_all(argv[6], y, (size_t)(ntok * rows) * sizeof(float)) ? fail("cannot write", argv[6]) : 0;
        free(xq); free(y); free(x); free(sc);
    } else {
        rc = fail("unknown command", argv[1]);
    }
    free(in);
    return rc;
}
