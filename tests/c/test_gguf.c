/* GGUF reader tests: files are built in memory by a small writer below, parsed back and compared value
 * by value; then malformed variants (every truncation, random byte flips, huge counts, bad offsets,
 * unknown types, duplicates) must fail cleanly with the right status. Random inputs, seed printed. */
#include "gguf.h"

#include "common.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "test_util.h"

/* ---- a minimal GGUF writer --------------------------------------------------------------------- */

typedef struct {
    char     key[48];
    uint32_t type, arr_type;
    uint64_t n;
    uint8_t  data[8 * 40];      /* numeric payload (scalar or array) */
    char     strs[8][24];        /* string payloads (may contain NUL bytes) */
    size_t   lens[8];
} kv_spec;

typedef struct {
    char     name[48];
    uint32_t n_dims;
    int64_t  ne[4];
    uint32_t type;
    uint64_t offset;             /* UINT64_MAX: placed automatically */
    uint64_t nbytes;             /* filled by build() */
} t_spec;

static size_t type_size_of(uint32_t t) {
    static const size_t s[13] = { 1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8 };
    return t < 13 ? s[t] : 0;
}

/* Block size / bytes per block of the tensor types the tests use (ggml facts). */
static void block_of(uint32_t type, int64_t * blck, size_t * bytes) {
    switch (type) {
        case TRI_TYPE_F32:  *blck = 1;  *bytes = 4;  break;
        case TRI_TYPE_F16:  *blck = 1;  *bytes = 2;  break;
        case TRI_TYPE_Q4_0: *blck = 32; *bytes = 18; break;
        case TRI_TYPE_Q4_1: *blck = 32; *bytes = 20; break;
        default:            *blck = 32; *bytes = 34; break; /* Q8_0 */
    }
}

/* Writes a whole file; tensor data bytes are random. Records the offset of each tensor's offset field. */
static tu_buf build(uint32_t version, const kv_spec * kvs, int nkv, t_spec * ts, int nt, uint32_t align,
                   size_t * t_offset_field) {
    tu_buf b = { 0 };
    tu_put(&b, "GGUF", 4);
    tu_put_u32(&b, version);
    tu_put_u64(&b, (uint64_t) nt);
    tu_put_u64(&b, (uint64_t) nkv);
    for (int i = 0; i < nkv; i++) {
        const kv_spec * kv = &kvs[i];
        tu_put_str(&b, kv->key, strlen(kv->key));
        tu_put_u32(&b, kv->type);
        if (kv->type == TRI_GGUF_STRING) {
            tu_put_str(&b, kv->strs[0], kv->lens[0]);
        } else if (kv->type == TRI_GGUF_ARRAY) {
            tu_put_u32(&b, kv->arr_type);
            tu_put_u64(&b, kv->n);
            if (kv->arr_type == TRI_GGUF_STRING) {
                for (uint64_t j = 0; j < kv->n; j++) {
                    tu_put_str(&b, kv->strs[j], kv->lens[j]);
                }
            } else {
                tu_put(&b, kv->data, kv->n * type_size_of(kv->arr_type));
            }
        } else {
            tu_put(&b, kv->data, type_size_of(kv->type));
        }
    }
    uint64_t next = 0;
    for (int i = 0; i < nt; i++) {
        t_spec * t = &ts[i];
        int64_t blck; size_t bb;
        block_of(t->type, &blck, &bb);
        t->nbytes = (uint64_t) (t->ne[0] / blck) * bb;
        for (uint32_t d = 1; d < t->n_dims; d++) {
            t->nbytes *= (uint64_t) t->ne[d];
        }
        if (t->offset == UINT64_MAX) {
            t->offset = next;
        }
        next = (t->offset + t->nbytes + align - 1) / align * align;
        tu_put_str(&b, t->name, strlen(t->name));
        tu_put_u32(&b, t->n_dims);
        for (uint32_t d = 0; d < t->n_dims; d++) {
            tu_put_u64(&b, (uint64_t) t->ne[d]);
        }
        tu_put_u32(&b, t->type);
        if (t_offset_field) {
            t_offset_field[i] = b.n;
        }
        tu_put_u64(&b, t->offset);
    }
    if (nt > 0) {
        while (b.n % align) {
            uint8_t z = 0;
            tu_put(&b, &z, 1);
        }
        for (uint64_t i = 0; i < next; i++) {
            uint8_t r = (uint8_t) tu_u64();
            tu_put(&b, &r, 1);
        }
    }
    return b;
}

/* ---- random specs ------------------------------------------------------------------------------ */

static void rand_numeric(uint8_t * p, uint32_t type, uint64_t n) {
    size_t sz = type_size_of(type);
    for (uint64_t i = 0; i < n; i++) {
        uint64_t v = tu_u64();
        if (type == TRI_GGUF_FLOAT32) {
            float f = (float) ((double) (int64_t) v / 9.2e18 * 1000.0);
            memcpy(p + i * sz, &f, 4);
        } else if (type == TRI_GGUF_FLOAT64) {
            double f = (double) (int64_t) v / 9.2e18 * 1e6;
            memcpy(p + i * sz, &f, 8);
        } else if (type == TRI_GGUF_BOOL) {
            p[i] = (uint8_t) (v & 1);
        } else {
            memcpy(p + i * sz, &v, sz);
        }
    }
}

static void rand_str(char * s, size_t * len) {
    *len = tu_below(20);
    for (size_t i = 0; i < *len; i++) {
        s[i] = (char) tu_u64(); /* any byte, NUL included */
    }
}

/* One kv of every scalar type, an array of every numeric type and a string array, in random order. */
static int rand_kvs(kv_spec * kvs, int cap) {
    int n = 0;
    for (uint32_t t = 0; t < TRI_GGUF_TYPE_COUNT && n < cap; t++) {
        if (t == TRI_GGUF_ARRAY) continue;
        kv_spec * kv = &kvs[n];
        memset(kv, 0, sizeof *kv);
        snprintf(kv->key, sizeof kv->key, "test.scalar.%s.%u", tri_gguf_type_name(t), (unsigned) tu_below(1000));
        kv->type = t;
        kv->n = 1;
        if (t == TRI_GGUF_STRING) rand_str(kv->strs[0], &kv->lens[0]);
        else rand_numeric(kv->data, t, 1);
        n++;
    }
    for (uint32_t t = 0; t < TRI_GGUF_TYPE_COUNT && n < cap; t++) {
        if (t == TRI_GGUF_ARRAY) continue;
        kv_spec * kv = &kvs[n];
        memset(kv, 0, sizeof *kv);
        snprintf(kv->key, sizeof kv->key, "test.array.%s", tri_gguf_type_name(t));
        kv->type = TRI_GGUF_ARRAY;
        kv->arr_type = t;
        if (t == TRI_GGUF_STRING) {
            kv->n = tu_below(9);
            for (uint64_t j = 0; j < kv->n; j++) rand_str(kv->strs[j], &kv->lens[j]);
        } else {
            kv->n = tu_below(41); /* 0 included */
            rand_numeric(kv->data, t, kv->n);
        }
        n++;
    }
    for (int i = n - 1; i > 0; i--) { /* shuffle */
        int j = (int) tu_below((uint64_t) i + 1);
        kv_spec tmp = kvs[i]; kvs[i] = kvs[j]; kvs[j] = tmp;
    }
    return n;
}

static int rand_tensors(t_spec * ts, int nt) {
    static const uint32_t types[] = { TRI_TYPE_F32, TRI_TYPE_F16, TRI_TYPE_Q4_0, TRI_TYPE_Q4_1, TRI_TYPE_Q8_0 };
    for (int i = 0; i < nt; i++) {
        t_spec * t = &ts[i];
        memset(t, 0, sizeof *t);
        snprintf(t->name, sizeof t->name, "blk.%d.w%u", i, (unsigned) tu_below(100));
        t->type = types[tu_below(5)];
        t->n_dims = 1 + (uint32_t) tu_below(4);
        int64_t blck; size_t bb;
        block_of(t->type, &blck, &bb);
        for (int d = 0; d < 4; d++) t->ne[d] = 1;
        t->ne[0] = blck * (1 + (int64_t) tu_below(3));
        for (uint32_t d = 1; d < t->n_dims; d++) t->ne[d] = 1 + (int64_t) tu_below(3);
        t->offset = UINT64_MAX;
    }
    return nt;
}

static kv_spec make_u32(const char * key, uint32_t v) {
    kv_spec kv;
    memset(&kv, 0, sizeof kv);
    snprintf(kv.key, sizeof kv.key, "%s", key);
    kv.type = TRI_GGUF_UINT32;
    kv.n = 1;
    memcpy(kv.data, &v, 4);
    return kv;
}

/* ---- checks ------------------------------------------------------------------------------------ */

static void check_same(const tri_gguf * g, const tu_buf * b, uint32_t version, const kv_spec * kvs, int nkv,
                       const t_spec * ts, int nt, uint32_t align) {
    CHECK(g->version == version, "version %u", g->version);
    CHECK(g->n_kv == (uint64_t) nkv, "n_kv %" PRIu64 " != %d", g->n_kv, nkv);
    CHECK(g->n_tensors == (uint64_t) nt, "n_tensors %" PRIu64 " != %d", g->n_tensors, nt);
    CHECK(g->alignment == align, "alignment %u != %u", g->alignment, align);
    if (g->n_kv != (uint64_t) nkv || g->n_tensors != (uint64_t) nt) return;
    for (int i = 0; i < nkv; i++) {
        const kv_spec * e = &kvs[i];
        const tri_gguf_kv * kv = &g->kv[i];
        CHECK(strcmp(kv->key, e->key) == 0, "key %d '%s' != '%s'", i, kv->key, e->key);
        CHECK(tri_gguf_find(g, e->key) == kv, "find '%s'", e->key);
        CHECK(kv->type == e->type, "key '%s' type %d != %u", e->key, kv->type, e->type);
        if (kv->type != e->type) continue;
        if (e->type == TRI_GGUF_STRING) {
            CHECK(kv->strs && kv->strs[0].len == e->lens[0] && memcmp(kv->strs[0].ptr, e->strs[0], e->lens[0]) == 0,
                  "string '%s'", e->key);
        } else if (e->type == TRI_GGUF_ARRAY) {
            CHECK(kv->arr_type == e->arr_type && kv->n == e->n, "array '%s' header", e->key);
            if (kv->arr_type != e->arr_type || kv->n != e->n) continue;
            if (e->arr_type == TRI_GGUF_STRING) {
                for (uint64_t j = 0; j < e->n; j++)
                    CHECK(kv->strs[j].len == e->lens[j] && memcmp(kv->strs[j].ptr, e->strs[j], e->lens[j]) == 0,
                          "'%s'[%" PRIu64 "]", e->key, j);
            } else {
                size_t sz = type_size_of(e->arr_type);
                CHECK(e->n == 0 || memcmp(kv->data, e->data, e->n * sz) == 0, "array '%s' bytes", e->key);
                for (uint64_t j = 0; j < e->n; j++) {
                    double want = 0;
                    const uint8_t * p = e->data + j * sz;
                    switch (e->arr_type) {
                        case TRI_GGUF_UINT8: want = *p; break;
                        case TRI_GGUF_INT8: want = (int8_t) *p; break;
                        case TRI_GGUF_BOOL: want = *p != 0; break;
                        case TRI_GGUF_UINT16: { uint16_t v; memcpy(&v, p, 2); want = v; break; }
                        case TRI_GGUF_INT16: { int16_t v; memcpy(&v, p, 2); want = v; break; }
                        case TRI_GGUF_UINT32: { uint32_t v; memcpy(&v, p, 4); want = v; break; }
                        case TRI_GGUF_INT32: { int32_t v; memcpy(&v, p, 4); want = v; break; }
                        case TRI_GGUF_FLOAT32: { float v; memcpy(&v, p, 4); want = v; break; }
                        case TRI_GGUF_UINT64: { uint64_t v; memcpy(&v, p, 8); want = (double) v; break; }
                        case TRI_GGUF_INT64: { int64_t v; memcpy(&v, p, 8); want = (double) v; break; }
                        case TRI_GGUF_FLOAT64: { double v; memcpy(&v, p, 8); want = v; break; }
                        default: break;
                    }
                    CHECK(tri_gguf_arr_f64(kv, j) == want, "'%s'[%" PRIu64 "] = %g, want %g", e->key, j,
                          tri_gguf_arr_f64(kv, j), want);
                }
            }
        } else {
            CHECK(memcmp(kv->data, e->data, type_size_of(e->type)) == 0, "scalar '%s' bytes", e->key);
        }
    }
    for (int i = 0; i < nt; i++) {
        const tri_gguf_tensor * t = &g->tensors[i];
        const t_spec * e = &ts[i];
        CHECK(strcmp(t->name, e->name) == 0, "tensor %d name", i);
        CHECK(tri_gguf_find_tensor(g, e->name) == t, "find tensor '%s'", e->name);
        CHECK(t->n_dims == e->n_dims && (uint32_t) t->type == e->type, "tensor '%s' dims/type", e->name);
        for (int d = 0; d < 4; d++) CHECK(t->ne[d] == e->ne[d], "tensor '%s' ne[%d]", e->name, d);
        CHECK(t->offset == e->offset && t->nbytes == e->nbytes, "tensor '%s' offset %" PRIu64 "/%" PRIu64
              " nbytes %" PRIu64 "/%" PRIu64, e->name, t->offset, e->offset, t->nbytes, e->nbytes);
        CHECK(t->data == b->p + g->data_offset + e->offset, "tensor '%s' data pointer", e->name);
    }
    CHECK(g->data_offset % align == 0, "data_offset %" PRIu64 " not aligned", g->data_offset);
    CHECK(tri_gguf_find(g, "no.such.key") == NULL && tri_gguf_find_tensor(g, "no.such.tensor") == NULL, "find missing");
}

static enum triattn_status parse_buf(const tu_buf * b, size_t size, char * err, size_t n) {
    tri_gguf * g = NULL;
    enum triattn_status st = tri_gguf_open_buffer(b->p, size, &g, err, n);
    if ((st == TRIATTN_OK) != (g != NULL)) {
        CHECK(0, "status %d but handle %p", st, (void *) g);
    }
    tri_gguf_close(g);
    return st;
}

/* A random valid file: every value type, tensors, alignment chosen by the caller. */
static tu_buf rand_file(uint32_t version, uint32_t align, int nt, kv_spec * kvs, int * nkv, t_spec * ts) {
    *nkv = rand_kvs(kvs, 30);
    if (align != 32 || tu_below(2)) {
        kvs[(*nkv)++] = make_u32("general.alignment", align);
    }
    rand_tensors(ts, nt);
    return build(version, kvs, *nkv, ts, nt, align, NULL);
}

static void test_roundtrip(void) {
    kv_spec kvs[32];
    t_spec ts[8];
    for (int rep = 0; rep < 40; rep++) {
        uint32_t version = 2 + (uint32_t) (rep & 1);
        uint32_t align = rep % 4 == 0 ? 32 : 1u << tu_below(9); /* 1 .. 256 */
        int nt = (int) tu_below(7);
        int nkv;
        tu_buf b = rand_file(version, align, nt, kvs, &nkv, ts);
        tri_gguf * g = NULL;
        char err[256] = "";
        enum triattn_status st = tri_gguf_open_buffer(b.p, b.n, &g, err, sizeof err);
        CHECK(st == TRIATTN_OK, "roundtrip v%u align %u: %s", version, align, err);
        if (g) {
            check_same(g, &b, version, kvs, nkv, ts, nt, align);
            tri_gguf_close(g);
        }
        free(b.p);
    }
}

static void test_zero_tensors_and_files(void) {
    kv_spec kvs[32];
    t_spec ts[4];
    int nkv;
    tu_buf b = rand_file(3, 32, 0, kvs, &nkv, ts);
    char err[256] = "";
    CHECK(parse_buf(&b, b.n, err, sizeof err) == TRIATTN_OK, "metadata-only file: %s", err);
    free(b.p);

    /* the same file through open_file, mapped and read */
    b = rand_file(3, 64, 3, kvs, &nkv, ts);
    char path[512];
    tu_tmp_file(path, sizeof path, "test_gguf.gguf");
    FILE * tf = fopen(path, "wb");
    CHECK(tf && fwrite(b.p, 1, b.n, tf) == b.n, "temp file %s", path);
    if (tf) fclose(tf);
    for (int mm = 0; mm < 2; mm++) {
        tri_gguf * g = NULL;
        enum triattn_status st = tri_gguf_open_file(path, mm == 1, &g, err, sizeof err);
        CHECK(st == TRIATTN_OK && g, "open_file mmap=%d: %s", mm, err);
        if (g) {
            CHECK(g->n_kv == (uint64_t) nkv && g->n_tensors == 3, "open_file counts");
            for (int i = 0; i < 3 && g->n_tensors == 3; i++)
                CHECK(memcmp(g->tensors[i].data, b.p + g->data_offset + ts[i].offset, ts[i].nbytes) == 0,
                      "tensor data bytes mmap=%d", mm);
            tri_gguf_close(g);
        }
    }
    remove(path);
    tri_gguf * g = (tri_gguf *) 1;
    CHECK(tri_gguf_open_file("/nonexistent/x.gguf", true, &g, err, sizeof err) == TRIATTN_ERR_IO && g == NULL,
          "missing file -> IO");
    free(b.p);
}

static void test_getters(void) {
    kv_spec kvs[8];
    int n = 0;
    int32_t neg = -5 - (int32_t) tu_below(100);
    uint64_t big = (1ull << 40) + tu_below(1000);
    double dv = 1.5 + (double) tu_below(1000);
    uint8_t u8 = (uint8_t) (1 + tu_below(200));
    kvs[n] = make_u32("a.u8", 0); kvs[n].type = TRI_GGUF_UINT8; memcpy(kvs[n++].data, &u8, 1);
    kvs[n] = make_u32("a.neg", 0); kvs[n].type = TRI_GGUF_INT32; memcpy(kvs[n++].data, &neg, 4);
    kvs[n] = make_u32("a.big", 0); kvs[n].type = TRI_GGUF_UINT64; memcpy(kvs[n++].data, &big, 8);
    kvs[n] = make_u32("a.f64", 0); kvs[n].type = TRI_GGUF_FLOAT64; memcpy(kvs[n++].data, &dv, 8);
    kvs[n] = make_u32("a.bool", 0); kvs[n].type = TRI_GGUF_BOOL; kvs[n++].data[0] = 1;
    kvs[n] = make_u32("a.str", 0); kvs[n].type = TRI_GGUF_STRING; memcpy(kvs[n].strs[0], "hi", 2); kvs[n++].lens[0] = 2;
    kvs[n] = make_u32("a.arr", 0); kvs[n].type = TRI_GGUF_ARRAY; kvs[n].arr_type = TRI_GGUF_INT32; kvs[n].n = 3;
    rand_numeric(kvs[n++].data, TRI_GGUF_INT32, 3);
    tu_buf b = build(3, kvs, n, NULL, 0, 32, NULL);
    tri_gguf * g = NULL;
    char err[256] = "";
    CHECK(tri_gguf_open_buffer(b.p, b.n, &g, err, sizeof err) == TRIATTN_OK, "getters file: %s", err);
    if (!g) { free(b.p); return; }
    uint32_t u32 = 0; int32_t i32 = 0; uint64_t u64 = 0; float f = 0; bool bo = false; tri_gguf_str s = { 0 };
    CHECK(tri_gguf_get_u32(g, "a.u8", false, &u32, err, sizeof err) == TRIATTN_OK && u32 == u8, "u32 from u8");
    CHECK(tri_gguf_get_i32(g, "a.u8", false, &i32, err, sizeof err) == TRIATTN_OK && i32 == u8, "i32 from u8");
    CHECK(tri_gguf_get_i32(g, "a.neg", false, &i32, err, sizeof err) == TRIATTN_OK && i32 == neg, "i32");
    CHECK(tri_gguf_get_u32(g, "a.neg", false, &u32, err, sizeof err) == TRIATTN_ERR_FORMAT && strstr(err, "a.neg"),
          "u32 from negative: %s", err);
    CHECK(tri_gguf_get_u64(g, "a.neg", false, &u64, err, sizeof err) == TRIATTN_ERR_FORMAT, "u64 from negative");
    CHECK(tri_gguf_get_u64(g, "a.big", false, &u64, err, sizeof err) == TRIATTN_OK && u64 == big, "u64");
    CHECK(tri_gguf_get_u32(g, "a.big", false, &u32, err, sizeof err) == TRIATTN_ERR_FORMAT, "u32 from 2^40");
    CHECK(tri_gguf_get_i32(g, "a.big", false, &i32, err, sizeof err) == TRIATTN_ERR_FORMAT, "i32 from 2^40");
    CHECK(tri_gguf_get_f32(g, "a.f64", false, &f, err, sizeof err) == TRIATTN_OK && f == (float) dv, "f32 from f64");
    CHECK(tri_gguf_get_f32(g, "a.u8", false, &f, err, sizeof err) == TRIATTN_ERR_FORMAT, "f32 from u8");
    CHECK(tri_gguf_get_u32(g, "a.f64", false, &u32, err, sizeof err) == TRIATTN_ERR_FORMAT, "u32 from f64");
    CHECK(tri_gguf_get_bool(g, "a.bool", false, &bo, err, sizeof err) == TRIATTN_OK && bo, "bool");
    CHECK(tri_gguf_get_bool(g, "a.u8", false, &bo, err, sizeof err) == TRIATTN_ERR_FORMAT, "bool from u8");
    CHECK(tri_gguf_get_str(g, "a.str", false, &s, err, sizeof err) == TRIATTN_OK && s.len == 2 &&
          memcmp(s.ptr, "hi", 2) == 0, "str");
    CHECK(tri_gguf_get_str(g, "a.arr", false, &s, err, sizeof err) == TRIATTN_ERR_FORMAT, "str from array");
    CHECK(tri_gguf_get_u32(g, "a.arr", false, &u32, err, sizeof err) == TRIATTN_ERR_FORMAT, "u32 from array");
    u32 = 77;
    CHECK(tri_gguf_get_u32(g, "missing", true, &u32, err, sizeof err) == TRIATTN_OK && u32 == 77, "optional missing");
    CHECK(tri_gguf_get_u32(g, "missing", false, &u32, err, sizeof err) == TRIATTN_ERR_FORMAT && strstr(err, "missing"),
          "required missing: %s", err);
    const tri_gguf_kv * kv = tri_gguf_find(g, "a.arr");
    for (int j = 0; kv && j < 3; j++) {
        int32_t v;
        memcpy(&v, kvs[6].data + 4 * j, 4);
        CHECK(tri_gguf_arr_i64(kv, (uint64_t) j) == v, "arr_i64[%d]", j);
    }
    CHECK(tri_gguf_type_size(TRI_GGUF_FLOAT64) == 8 && tri_gguf_type_size(TRI_GGUF_STRING) == 0 &&
          strcmp(tri_gguf_type_name(TRI_GGUF_UINT16), "u16") == 0, "type size/name");
    tri_gguf_close(g);
    free(b.p);
}

/* Every prefix of a valid file with tensors must be refused, never crash. */
static void test_truncation(void) {
    kv_spec kvs[32];
    t_spec ts[4];
    int nkv;
    tu_buf b = rand_file(3, 32, 3, kvs, &nkv, ts);
    char err[256];
    /* the trailing padding after the last tensor is optional: prefixes that keep all data are valid */
    tri_gguf * g = NULL;
    size_t need = b.n;
    if (tri_gguf_open_buffer(b.p, b.n, &g, err, sizeof err) == TRIATTN_OK) {
        need = 0;
        for (uint64_t i = 0; i < g->n_tensors; i++)
            need = TRI_MAX(need, (size_t) (g->data_offset + g->tensors[i].offset + g->tensors[i].nbytes));
        tri_gguf_close(g);
    }
    CHECK(need > b.n - 32 && need <= b.n, "data end %zu of %zu", need, b.n);
    int bad = 0;
    for (size_t n = 0; n < b.n; n++) {
        if (n >= need) {
            CHECK(parse_buf(&b, n, err, sizeof err) == TRIATTN_OK, "prefix %zu keeping all data: %s", n, err);
            continue;
        }
        tu_buf c = { malloc(n ? n : 1), n, n };
        memcpy(c.p, b.p, n); /* exact-size copy so ASan sees any over-read */
        if (parse_buf(&c, n, err, sizeof err) == TRIATTN_OK) bad++;
        free(c.p);
    }
    CHECK(bad == 0, "%d of %zu truncations parsed OK", bad, b.n);
    CHECK(parse_buf(&b, b.n, err, sizeof err) == TRIATTN_OK, "untruncated file: %s", err);
    free(b.p);
}

static void test_flips(void) {
    kv_spec kvs[32];
    t_spec ts[4];
    int nkv;
    tu_buf b = rand_file(3, 32, 3, kvs, &nkv, ts);
    tu_buf c = { malloc(b.n), b.n, b.n };
    char err[256];
    int ok = 0, bad_status = 0;
    for (int rep = 0; rep < 5000; rep++) {
        memcpy(c.p, b.p, b.n);
        int nflip = 1 + (int) tu_below(8);
        for (int k = 0; k < nflip; k++) c.p[tu_below(b.n)] ^= (uint8_t) (1 + tu_below(255));
        enum triattn_status st = parse_buf(&c, c.n, err, sizeof err);
        if (st == TRIATTN_OK) ok++;
        else if (st != TRIATTN_ERR_FORMAT && st != TRIATTN_ERR_UNSUPPORTED && st != TRIATTN_ERR_OOM) bad_status++;
    }
    CHECK(bad_status == 0, "%d flips returned an unexpected status", bad_status);
    CHECK(ok < 5000, "every flipped file parsed OK");
    free(b.p);
    free(c.p);
}

/* Expects status and that the message mentions `needle`. */
static void expect(const tu_buf * b, enum triattn_status want, const char * needle, const char * what) {
    char err[512] = "";
    enum triattn_status st = parse_buf(b, b->n, err, sizeof err);
    CHECK(st == want && (!needle || strstr(err, needle)), "%s: status %d (want %d), message '%s' (want '%s')",
          what, st, want, err, needle ? needle : "");
}

static void patch_u64(tu_buf * b, size_t at, uint64_t v) { memcpy(b->p + at, &v, 8); }
static void patch_u32(tu_buf * b, size_t at, uint32_t v) { memcpy(b->p + at, &v, 4); }

static void test_malformed(void) {
    t_spec ts[3];
    size_t off_field[3];
    kv_spec kvs[4];
    int nkv = 0;
    kvs[nkv++] = make_u32("llama.block_count", 30);
    kvs[nkv] = make_u32("tok.list", 0); kvs[nkv].type = TRI_GGUF_ARRAY; kvs[nkv].arr_type = TRI_GGUF_STRING;
    kvs[nkv].n = 2; memcpy(kvs[nkv].strs[0], "ab", 2); kvs[nkv].lens[0] = 2; kvs[nkv].lens[1] = 0; nkv++;
    rand_tensors(ts, 3);
    for (int i = 0; i < 3; i++) { ts[i].type = TRI_TYPE_F32; ts[i].n_dims = 2; ts[i].ne[0] = 8; ts[i].ne[1] = 2; }
    tu_buf good = build(3, kvs, nkv, ts, 3, 32, off_field);
    expect(&good, TRIATTN_OK, NULL, "base file");
    tu_buf b = { malloc(good.n + 64), good.n, good.n + 64 };
#define RESET() memcpy(b.p, good.p, good.n), b.n = good.n

    /* header */
    RESET(); b.p[0] = 'X'; expect(&b, TRIATTN_ERR_FORMAT, "magic", "bad magic");
    RESET(); patch_u32(&b, 4, 1); expect(&b, TRIATTN_ERR_UNSUPPORTED, "version 1", "v1");
    RESET(); patch_u32(&b, 4, 0x03000000u); expect(&b, TRIATTN_ERR_UNSUPPORTED, "big-endian", "big-endian");
    RESET(); patch_u32(&b, 4, 4); expect(&b, TRIATTN_ERR_UNSUPPORTED, "version 4", "v4");
    /* huge counts */
    RESET(); patch_u64(&b, 16, 1ull << 60); expect(&b, TRIATTN_ERR_FORMAT, "keys", "n_kv 2^60");
    RESET(); patch_u64(&b, 8, 1ull << 60); expect(&b, TRIATTN_ERR_FORMAT, "tensors", "n_tensors 2^60");
    RESET(); patch_u64(&b, 24, 1ull << 60); expect(&b, TRIATTN_ERR_FORMAT, "past end of file", "key length 2^60");
    size_t v0 = 24 + 8 + strlen("llama.block_count") + 4; /* the u32 value of the first key */
    size_t a0 = v0 + 4 + 8 + strlen("tok.list") + 4;      /* array elem type of the second */
    RESET(); patch_u32(&b, v0 - 4, TRI_GGUF_STRING); expect(&b, TRIATTN_ERR_FORMAT, "llama.block_count", "value str len");
    RESET(); patch_u64(&b, a0 + 4, 1ull << 60); expect(&b, TRIATTN_ERR_FORMAT, "tok.list", "array count 2^60");
    RESET(); patch_u64(&b, a0 + 4, UINT64_MAX); expect(&b, TRIATTN_ERR_FORMAT, "tok.list", "array count 2^64-1");
    RESET(); patch_u64(&b, a0 + 12, (1ull << 60) + 3); expect(&b, TRIATTN_ERR_FORMAT, "element 0", "array str len");
    RESET(); patch_u32(&b, a0, TRI_GGUF_ARRAY); expect(&b, TRIATTN_ERR_UNSUPPORTED, "arrays of arrays", "nested array");
    RESET(); patch_u32(&b, a0, 13); expect(&b, TRIATTN_ERR_FORMAT, "element type", "bad elem type");
    RESET(); patch_u32(&b, v0 - 4, 99); expect(&b, TRIATTN_ERR_FORMAT, "value type", "bad value type");
    RESET(); b.p[24 + 8 + 3] = 0; expect(&b, TRIATTN_ERR_FORMAT, "NUL", "NUL in key");
    /* duplicate key: rename the second key to the first (same length prefix trick: build a new file) */
    {
        kv_spec d[2] = { make_u32("dup.key", 1), make_u32("dup.key", 2) };
        tu_buf x = build(3, d, 2, NULL, 0, 32, NULL);
        expect(&x, TRIATTN_ERR_FORMAT, "duplicate key", "duplicate key");
        free(x.p);
    }
    /* tensor infos */
    size_t t0 = off_field[0] - 4 - 16 - 4 - 8 - strlen(ts[0].name); /* start of tensor 0's info */
    size_t nd0 = t0 + 8 + strlen(ts[0].name);
    RESET(); patch_u32(&b, nd0, 0); expect(&b, TRIATTN_ERR_FORMAT, "n_dims", "n_dims 0");
    RESET(); patch_u32(&b, nd0, 5); expect(&b, TRIATTN_ERR_FORMAT, "n_dims", "n_dims 5");
    RESET(); patch_u64(&b, nd0 + 4, 1ull << 63); expect(&b, TRIATTN_ERR_FORMAT, ts[0].name, "ne negative");
    RESET(); patch_u64(&b, nd0 + 4, 1ull << 62); patch_u64(&b, nd0 + 12, 1ull << 62);
    expect(&b, TRIATTN_ERR_FORMAT, "overflows", "ne product overflow");
    RESET(); patch_u64(&b, nd0 + 4, 0); patch_u64(&b, nd0 + 12, (1ull << 62) + 1);
    expect(&b, TRIATTN_OK, NULL, "zero dim (0 bytes)");
    RESET(); patch_u32(&b, off_field[0] - 4, TRI_TYPE_Q8_0); expect(&b, TRIATTN_ERR_FORMAT, "block size", "ne0 % blck");
    RESET(); patch_u32(&b, off_field[1] - 4, 16); expect(&b, TRIATTN_ERR_UNSUPPORTED, "IQ2_XXS", "IQ2_XXS");
    RESET(); patch_u32(&b, off_field[1] - 4, 1000); expect(&b, TRIATTN_ERR_UNSUPPORTED, ts[1].name, "type 1000");
    RESET(); patch_u64(&b, off_field[2], ts[2].offset + 4); expect(&b, TRIATTN_ERR_FORMAT, "alignment", "misaligned");
    RESET(); patch_u64(&b, off_field[2], ts[1].offset); expect(&b, TRIATTN_ERR_FORMAT, "overlaps", "overlap");
    RESET(); patch_u64(&b, off_field[2], 1ull << 40); expect(&b, TRIATTN_ERR_FORMAT, "past end", "out of file");
    RESET(); patch_u64(&b, off_field[2], UINT64_MAX - 31); expect(&b, TRIATTN_ERR_FORMAT, "past end", "offset wrap");
    RESET(); b.n -= 4; expect(&b, TRIATTN_ERR_FORMAT, "past end", "last tensor cut");
    {
        t_spec d[2];
        rand_tensors(d, 2);
        strcpy(d[1].name, d[0].name);
        tu_buf x = build(3, NULL, 0, d, 2, 32, NULL);
        expect(&x, TRIATTN_ERR_FORMAT, "duplicate tensor", "duplicate tensor");
        free(x.p);
    }
    /* alignment values */
    static const uint32_t bad_align[] = { 0, 3, 48, 0x80000001u };
    for (int i = 0; i < 4; i++) {
        kv_spec a = make_u32("general.alignment", bad_align[i]);
        tu_buf x = build(3, &a, 1, NULL, 0, 32, NULL);
        expect(&x, TRIATTN_ERR_FORMAT, "general.alignment", "bad alignment");
        free(x.p);
    }
    {
        kv_spec a = make_u32("general.alignment", 0);
        a.type = TRI_GGUF_STRING; a.lens[0] = 1; a.strs[0][0] = '8';
        tu_buf x = build(3, &a, 1, NULL, 0, 32, NULL);
        expect(&x, TRIATTN_ERR_FORMAT, "general.alignment", "string alignment");
        free(x.p);
    }
#undef RESET
    free(b.p);
    free(good.p);
}

int main(void) {
    tu_seed_init("TRI_TEST_SEED");
    test_roundtrip();
    test_zero_tensors_and_files();
    test_getters();
    test_truncation();
    test_flips();
    test_malformed();
    return tu_finish();
}
