/* tool_gguf_dump FILE: parses a GGUF with tri_gguf_open_file and prints what it saw as JSON lines, for
 * comparison with the gguf Python package's GGUFReader:
 *   {"version":3,"n_kv":..,"n_tensors":..,"alignment":..,"data_offset":..}
 *   {"key":"..","type":"u32","arr_type":"u32","n":1,"offset":..,"hex":"<raw little-endian bytes>","v0":<elem 0>}
 *   {"key":"..","type":"string",...,"strs":["<hex of bytes>",...]}
 *   {"tensor":"..","n_dims":2,"ne":[..],"type":3,"offset":..,"nbytes":..,"abs_offset":..}
 * On failure prints {"error":<status>,"message":".."} and exits 1. */
#include "gguf.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

static void put_json_str(const char * s) {
    putchar('"');
    for (; *s; s++) {
        unsigned char c = (unsigned char) *s;
        if (c == '"' || c == '\\') printf("\\%c", c);
        else if (c < 0x20 || c >= 0x7f) printf("\\u%04x", c); /* bytes, not code points: names are ASCII */
        else putchar(c);
    }
    putchar('"');
}

static void put_hex(const void * p, uint64_t n) {
    const uint8_t * b = p;
    putchar('"');
    for (uint64_t i = 0; i < n; i++) printf("%02x", b[i]);
    putchar('"');
}

int main(int argc, char ** argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s FILE\n", argv[0]);
        return 2;
    }
    char err[1024] = "";
    tri_gguf * g = NULL;
    enum triattn_status st = tri_gguf_open_file(argv[1], true, &g, err, sizeof err);
    if (st != TRIATTN_OK) {
        printf("{\"error\":%d,\"message\":", (int) st);
        put_json_str(err);
        printf("}\n");
        return 1;
    }
    printf("{\"version\":%u,\"n_kv\":%" PRIu64 ",\"n_tensors\":%" PRIu64 ",\"alignment\":%u,\"data_offset\":%" PRIu64
           "}\n", g->version, g->n_kv, g->n_tensors, g->alignment, g->data_offset);
    for (uint64_t i = 0; i < g->n_kv; i++) {
        const tri_gguf_kv * kv = &g->kv[i];
        printf("{\"key\":");
        put_json_str(kv->key);
        printf(",\"type\":\"%s\",\"arr_type\":\"%s\",\"n\":%" PRIu64 ",\"offset\":%" PRIu64,
               tri_gguf_type_name(kv->type), tri_gguf_type_name(kv->arr_type), kv->n, kv->offset);
        if (kv->strs) {
            printf(",\"strs\":[");
            for (uint64_t j = 0; j < kv->n; j++) {
                if (j) putchar(',');
                put_hex(kv->strs[j].ptr, kv->strs[j].len);
            }
            putchar(']');
        } else {
            enum tri_gguf_type et = kv->type == TRI_GGUF_ARRAY ? kv->arr_type : kv->type;
            printf(",\"hex\":");
            put_hex(kv->data, kv->n * tri_gguf_type_size(et));
            if (kv->n > 0) {
                double v = tri_gguf_arr_f64(kv, 0);
                if (isfinite(v)) printf(",\"v0\":%.17g", v);
                else printf(",\"v0\":null");
            }
        }
        printf("}\n");
    }
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const tri_gguf_tensor * t = &g->tensors[i];
        printf("{\"tensor\":");
        put_json_str(t->name);
        printf(",\"n_dims\":%u,\"ne\":[", t->n_dims);
        for (uint32_t d = 0; d < t->n_dims; d++) printf(d ? ",%" PRId64 : "%" PRId64, t->ne[d]);
        printf("],\"type\":%d,\"offset\":%" PRIu64 ",\"nbytes\":%" PRIu64 ",\"abs_offset\":%" PRIu64 "}\n",
               (int) t->type, t->offset, t->nbytes, g->data_offset + t->offset);
    }
    tri_gguf_close(g);
    return 0;
}
