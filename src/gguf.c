/* GGUF v2/v3 reader. The file is treated as hostile: every count, length and offset is checked against
 * the bytes that remain before anything is allocated or dereferenced, and all arithmetic on sizes is
 * overflow-checked. Layout (little-endian):
 *   "GGUF" | u32 version | u64 n_tensors | u64 n_kv
 *   n_kv x  { str key | u32 type | value }          str = u64 len + bytes; array = u32 type + u64 n + elems
 *   n_tensors x { str name | u32 n_dims | u64 ne[n_dims] | u32 ggml type | u64 offset }
 *   padding to general.alignment | tensor data (each tensor at an aligned offset from the section start) */
#include "gguf.h"

#include "common.h"
#include "platform.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define TRI_GGUF_MAGIC             0x46554747u /* "GGUF" read as a little-endian u32 */
#define TRI_GGUF_DEFAULT_ALIGNMENT 32u
#define TRI_GGUF_MIN_KV_BYTES      13u /* u64 key length + u32 type + 1-byte value */
#define TRI_GGUF_MIN_TENSOR_BYTES  32u /* u64 name length + u32 n_dims + one u64 ne + u32 type + u64 offset */

/* tri_gguf plus the lookup tables; every tri_gguf handed out is the first member of one of these. */
typedef struct tri_gguf_impl {
    tri_gguf  pub;
    uint32_t * kv_hash;      /* open addressing: index + 1, 0 = empty */
    uint64_t   kv_mask;
    uint32_t * tensor_hash;
    uint64_t   tensor_mask;
} tri_gguf_impl;

/* Parsing cursor over the file. */
typedef struct tri_cursor {
    const uint8_t * base;
    uint64_t        size;
    uint64_t        pos;
    char *          err;
    size_t          err_size;
} tri_cursor;

static uint64_t cur_left(const tri_cursor * c) {
    return c->size - c->pos;
}

static void rd_u32(tri_cursor * c, uint32_t * v) { /* caller checked 4 bytes remain */
    memcpy(v, c->base + c->pos, 4);
    c->pos += 4;
}

static void rd_u64(tri_cursor * c, uint64_t * v) {
    memcpy(v, c->base + c->pos, 8);
    c->pos += 8;
}

/* ---- type tables ------------------------------------------------------------------------------- */

size_t tri_gguf_type_size(enum tri_gguf_type t) {
    switch (t) {
        case TRI_GGUF_UINT8:   case TRI_GGUF_INT8:  case TRI_GGUF_BOOL:    return 1;
        case TRI_GGUF_UINT16:  case TRI_GGUF_INT16:                        return 2;
        case TRI_GGUF_UINT32:  case TRI_GGUF_INT32: case TRI_GGUF_FLOAT32: return 4;
        case TRI_GGUF_UINT64:  case TRI_GGUF_INT64: case TRI_GGUF_FLOAT64: return 8;
        default:                                                           return 0;
    }
}

const char * tri_gguf_type_name(enum tri_gguf_type t) {
    static const char * names[TRI_GGUF_TYPE_COUNT] = {
        "u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "string", "array", "u64", "i64", "f64",
    };
    return (unsigned) t < TRI_GGUF_TYPE_COUNT ? names[t] : "unknown";
}

/* Names of ggml type ids, including ones we do not implement, so errors can say what a file holds. */
static const char * ggml_type_name(uint32_t id) {
    static const char * names[] = {
        "F32", "F16", "Q4_0", "Q4_1", "Q4_2", "Q4_3", "Q5_0", "Q5_1", "Q8_0", "Q8_1",
        "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K", "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S",
        "IQ4_NL", "IQ3_S", "IQ2_S", "IQ4_XS", "I8", "I16", "I32", "I64", "F64", "IQ1_M",
        "BF16", "Q4_0_4_4", "Q4_0_4_8", "Q4_0_8_8", "TQ1_0", "TQ2_0", "IQ4_NL_4_4", "IQ4_NL_4_8",
        "IQ4_NL_8_8", "MXFP4",
    };
    return id < sizeof names / sizeof names[0] ? names[id] : NULL;
}

/* ---- small helpers ----------------------------------------------------------------------------- */

static uint64_t hash_bytes(const char * s, size_t n) { /* FNV-1a */
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) {
        h ^= (uint8_t) s[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

/* Copies a printable, shortened form of a name for error messages. */
static const char * printable(const char * s, size_t n, char * buf, size_t cap) {
    size_t o = 0;
    for (size_t i = 0; i < n && o + 4 < cap; i++) {
        unsigned char ch = (unsigned char) s[i];
        buf[o++] = (ch >= 0x20 && ch < 0x7f && ch != '\'') ? (char) ch : '?';
    }
    if (n > 0 && o + 4 >= cap) {
        memcpy(buf + o, "...", 3);
        o += 3;
    }
    buf[o] = '\0';
    return buf;
}

/* Reads a gguf string (u64 len + bytes) without copying. `what` names the item for errors. */
static enum triattn_status rd_str(tri_cursor * c, const char * what, tri_gguf_str * out) {
    uint64_t at = c->pos;
    if (cur_left(c) < 8) {
        return tri_fail(c->err, c->err_size, TRIATTN_ERR_FORMAT,
                        "GGUF: %s at byte %llu: string length runs past end of file (size %llu)",
                        what, (unsigned long long) at, (unsigned long long) c->size);
    }
    uint64_t len;
    rd_u64(c, &len);
    if (len > cur_left(c)) {
        return tri_fail(c->err, c->err_size, TRIATTN_ERR_FORMAT,
                        "GGUF: %s at byte %llu: string length %llu runs past end of file (size %llu)",
                        what, (unsigned long long) at, (unsigned long long) len, (unsigned long long) c->size);
    }
    out->ptr = (const char *) c->base + c->pos;
    out->len = len;
    c->pos += len;
    return TRIATTN_OK;
}

/* NUL-terminated copy of a key or tensor name; a NUL inside it is a format error. */
static enum triattn_status copy_name(tri_cursor * c, const char * what, uint64_t at, tri_gguf_str s, char ** out) {
    if (memchr(s.ptr, '\0', s.len) != NULL) {
        char pb[80];
        return tri_fail(c->err, c->err_size, TRIATTN_ERR_FORMAT, "GGUF: %s '%s' at byte %llu contains a NUL byte",
                        what, printable(s.ptr, s.len, pb, sizeof pb), (unsigned long long) at);
    }
    char * p = malloc(s.len + 1);
    if (!p) {
        return tri_fail(c->err, c->err_size, TRIATTN_ERR_OOM, "GGUF: out of memory copying a %s of %llu bytes",
                        what, (unsigned long long) s.len);
    }
    memcpy(p, s.ptr, s.len);
    p[s.len] = '\0';
    *out = p;
    return TRIATTN_OK;
}

/* Grows *arr (elements of elem bytes) so that index n fits. */
static bool grow(void ** arr, uint64_t * cap, uint64_t n, size_t elem) {
    if (n < *cap) {
        return true;
    }
    uint64_t nc = *cap ? *cap * 2 : 64;
    if (nc > SIZE_MAX / elem) {
        return false;
    }
    void * p = realloc(*arr, (size_t) nc * elem);
    if (!p) {
        return false;
    }
    memset((char *) p + *cap * elem, 0, (size_t) (nc - *cap) * elem);
    *arr = p;
    *cap = nc;
    return true;
}

/* ---- key/value section ------------------------------------------------------------------------- */

/* Parses one value of type t (scalar, string or array) for kv. */
static enum triattn_status rd_value(tri_cursor * c, tri_gguf_kv * kv, uint32_t t) {
    char kb[96];
    const char * key = printable(kv->key, strlen(kv->key), kb, sizeof kb);
    uint64_t at = c->pos;
    if (t >= TRI_GGUF_TYPE_COUNT) {
        return tri_fail(c->err, c->err_size, TRIATTN_ERR_FORMAT, "GGUF: key '%s' at byte %llu: unknown value type %u",
                        key, (unsigned long long) kv->offset, t);
    }
    kv->type = (enum tri_gguf_type) t;
    kv->arr_type = (enum tri_gguf_type) t; /* scalars: the element type is the type itself */
    kv->n = 1;
    char what[160];
    snprintf(what, sizeof what, "key '%s'", key);
    if (t == TRI_GGUF_STRING) {
        kv->strs = malloc(sizeof *kv->strs);
        if (!kv->strs) {
            return tri_fail(c->err, c->err_size, TRIATTN_ERR_OOM, "GGUF: out of memory");
        }
        return rd_str(c, what, kv->strs);
    }
    if (t != TRI_GGUF_ARRAY) {
        size_t sz = tri_gguf_type_size(kv->type);
        if (cur_left(c) < sz) {
            return tri_fail(c->err, c->err_size, TRIATTN_ERR_FORMAT,
                            "GGUF: key '%s' at byte %llu: %s value runs past end of file (size %llu)",
                            key, (unsigned long long) at, tri_gguf_type_name(kv->type), (unsigned long long) c->size);
        }
        kv->data = c->base + c->pos;
        c->pos += sz;
        return TRIATTN_OK;
    }
    if (cur_left(c) < 12) {
        return tri_fail(c->err, c->err_size, TRIATTN_ERR_FORMAT,
                        "GGUF: key '%s' at byte %llu: array header runs past end of file (size %llu)",
                        key, (unsigned long long) at, (unsigned long long) c->size);
    }
    uint32_t et;
    uint64_t n;
    rd_u32(c, &et);
    rd_u64(c, &n);
    if (et == TRI_GGUF_ARRAY) {
        return tri_fail(c->err, c->err_size, TRIATTN_ERR_UNSUPPORTED,
                        "GGUF: key '%s' at byte %llu: arrays of arrays are not supported", key, (unsigned long long) at);
    }
    if (et >= TRI_GGUF_TYPE_COUNT) {
        return tri_fail(c->err, c->err_size, TRIATTN_ERR_FORMAT,
                        "GGUF: key '%s' at byte %llu: unknown array element type %u", key, (unsigned long long) at, et);
    }
    kv->arr_type = (enum tri_gguf_type) et;
    kv->n = n;
    size_t esz = tri_gguf_type_size(kv->arr_type);
    uint64_t min_elem = esz ? esz : 8; /* a string is at least its u64 length */
    if (n > cur_left(c) / min_elem) {
        return tri_fail(c->err, c->err_size, TRIATTN_ERR_FORMAT,
                        "GGUF: key '%s' at byte %llu: array of %llu %s runs past end of file (size %llu)",
                        key, (unsigned long long) at, (unsigned long long) n, tri_gguf_type_name(kv->arr_type),
                        (unsigned long long) c->size);
    }
    if (esz) {
        kv->data = c->base + c->pos;
        c->pos += n * esz;
        return TRIATTN_OK;
    }
    /* array of strings: n is bounded by the remaining bytes / 8, so this allocation is at most 2x the file */
    kv->strs = malloc((size_t) (n ? n : 1) * sizeof *kv->strs);
    if (!kv->strs) {
        return tri_fail(c->err, c->err_size, TRIATTN_ERR_OOM, "GGUF: key '%s': out of memory for %llu strings",
                        key, (unsigned long long) n);
    }
    for (uint64_t i = 0; i < n; i++) {
        uint64_t len = 0;
        if (cur_left(c) >= 8) {
            memcpy(&len, c->base + c->pos, 8);
        }
        if (cur_left(c) < 8 || len > cur_left(c) - 8) { /* let rd_str write the message */
            snprintf(what, sizeof what, "key '%s' element %llu", key, (unsigned long long) i);
            return rd_str(c, what, &kv->strs[i]);
        }
        kv->strs[i].ptr = (const char *) c->base + c->pos + 8;
        kv->strs[i].len = len;
        c->pos += 8 + len;
    }
    return TRIATTN_OK;
}

static enum triattn_status rd_kvs(tri_cursor * c, tri_gguf * g, uint64_t n_kv) {
    uint64_t cap = 0;
    for (uint64_t i = 0; i < n_kv; i++) {
        if (!grow((void **) &g->kv, &cap, i, sizeof *g->kv)) {
            return tri_fail(c->err, c->err_size, TRIATTN_ERR_OOM, "GGUF: out of memory for %llu keys",
                            (unsigned long long) n_kv);
        }
        tri_gguf_kv * kv = &g->kv[i];
        uint64_t at = c->pos;
        kv->offset = at;
        char what[64];
        snprintf(what, sizeof what, "key #%llu", (unsigned long long) i);
        tri_gguf_str ks;
        enum triattn_status st = rd_str(c, what, &ks);
        if (st == TRIATTN_OK) {
            st = copy_name(c, "key", at, ks, &kv->key);
        }
        if (st != TRIATTN_OK) {
            return st;
        }
        g->n_kv = i + 1; /* from here kv->key is owned by g */
        if (cur_left(c) < 4) {
            char kb[96];
            return tri_fail(c->err, c->err_size, TRIATTN_ERR_FORMAT,
                            "GGUF: key '%s' at byte %llu: value type runs past end of file (size %llu)",
                            printable(kv->key, ks.len, kb, sizeof kb), (unsigned long long) at,
                            (unsigned long long) c->size);
        }
        uint32_t t;
        rd_u32(c, &t);
        st = rd_value(c, kv, t);
        if (st != TRIATTN_OK) {
            return st;
        }
    }
    return TRIATTN_OK;
}

/* ---- tensor infos ------------------------------------------------------------------------------ */

static enum triattn_status rd_tensor_info(tri_cursor * c, tri_gguf_tensor * t, uint64_t i) {
    uint64_t at = c->pos;
    char what[64];
    snprintf(what, sizeof what, "tensor #%llu name", (unsigned long long) i);
    tri_gguf_str ns;
    enum triattn_status st = rd_str(c, what, &ns);
    if (st == TRIATTN_OK) {
        st = copy_name(c, "tensor", at, ns, &t->name);
    }
    if (st != TRIATTN_OK) {
        return st;
    }
    char nb[96];
    const char * name = printable(t->name, ns.len, nb, sizeof nb);
    if (cur_left(c) < 4) {
        goto truncated;
    }
    uint32_t n_dims;
    rd_u32(c, &n_dims);
    if (n_dims < 1 || n_dims > 4) {
        return tri_fail(c->err, c->err_size, TRIATTN_ERR_FORMAT,
                        "GGUF: tensor '%s' at byte %llu: n_dims %u is not in 1..4", name, (unsigned long long) at, n_dims);
    }
    t->n_dims = n_dims;
    if (cur_left(c) < 8ull * n_dims + 12) {
        goto truncated;
    }
    int64_t nelem = 1; /* product of max(ne, 1): bounds every partial product even when a dim is 0 */
    for (int d = 0; d < 4; d++) {
        t->ne[d] = 1;
    }
    for (uint32_t d = 0; d < n_dims; d++) {
        uint64_t ne;
        rd_u64(c, &ne);
        if (ne > (uint64_t) INT64_MAX) {
            return tri_fail(c->err, c->err_size, TRIATTN_ERR_FORMAT,
                            "GGUF: tensor '%s' at byte %llu: ne[%u] = %llu is out of range",
                            name, (unsigned long long) at, d, (unsigned long long) ne);
        }
        t->ne[d] = (int64_t) ne;
        if (ne != 0 && nelem > INT64_MAX / (int64_t) ne) {
            return tri_fail(c->err, c->err_size, TRIATTN_ERR_FORMAT,
                            "GGUF: tensor '%s' at byte %llu: element count overflows", name, (unsigned long long) at);
        }
        nelem *= ne != 0 ? (int64_t) ne : 1;
    }
    uint32_t type;
    rd_u32(c, &type);
    rd_u64(c, &t->offset);
    const tri_type_traits * tt = type < TRI_TYPE_COUNT ? tri_type_traits_get((enum tri_type) type) : NULL;
    if (!tt) {
        const char * tn = ggml_type_name(type);
        return tri_fail(c->err, c->err_size, TRIATTN_ERR_UNSUPPORTED,
                        "GGUF: tensor '%s' at byte %llu: tensor type %u (%s) is not supported",
                        name, (unsigned long long) at, type, tn ? tn : "unknown");
    }
    t->type = (enum tri_type) type;
    if (tt->blck_size <= 0 || t->ne[0] % tt->blck_size != 0) {
        return tri_fail(c->err, c->err_size, TRIATTN_ERR_FORMAT,
                        "GGUF: tensor '%s' at byte %llu: ne[0] = %lld is not a multiple of the %s block size %lld",
                        name, (unsigned long long) at, (long long) t->ne[0], tt->name, (long long) tt->blck_size);
    }
    uint64_t nblocks = (uint64_t) (t->ne[0] / tt->blck_size);
    if (tt->type_size && nblocks > UINT64_MAX / tt->type_size) {
        goto too_big;
    }
    uint64_t row = (uint64_t) tri_row_size(t->type, t->ne[0]);
    uint64_t nrows = (uint64_t) (t->ne[1] * t->ne[2] * t->ne[3]); /* bounded by nelem */
    if (row != nblocks * tt->type_size || (nrows && row > UINT64_MAX / nrows)) {
        goto too_big;
    }
    t->nbytes = row * nrows;
    return TRIATTN_OK;
too_big:
    return tri_fail(c->err, c->err_size, TRIATTN_ERR_FORMAT, "GGUF: tensor '%s' at byte %llu: byte size overflows",
                    name, (unsigned long long) at);
truncated:
    return tri_fail(c->err, c->err_size, TRIATTN_ERR_FORMAT,
                    "GGUF: tensor '%s' at byte %llu: tensor info runs past end of file (size %llu)",
                    name, (unsigned long long) at, (unsigned long long) c->size);
}

static int cmp_by_offset(const void * a, const void * b, void * ctx) {
    const tri_gguf_tensor * ts = ctx;
    uint64_t oa = ts[*(const uint32_t *) a].offset, ob = ts[*(const uint32_t *) b].offset;
    return oa < ob ? -1 : oa > ob;
}

/* Sorts idx[0..n) by tensor offset (heap sort: no recursion, no context-less qsort). */
static void sort_by_offset(uint32_t * idx, uint64_t n, const tri_gguf_tensor * ts) {
    for (uint64_t k = n / 2; k-- > 0;) {
        for (uint64_t r = k;;) {
            uint64_t ch = 2 * r + 1;
            if (ch >= n) break;
            if (ch + 1 < n && cmp_by_offset(&idx[ch], &idx[ch + 1], (void *) ts) < 0) ch++;
            if (cmp_by_offset(&idx[r], &idx[ch], (void *) ts) >= 0) break;
            uint32_t tmp = idx[r]; idx[r] = idx[ch]; idx[ch] = tmp;
            r = ch;
        }
    }
    for (uint64_t end = n; end-- > 1;) {
        uint32_t tmp = idx[0]; idx[0] = idx[end]; idx[end] = tmp;
        for (uint64_t r = 0;;) {
            uint64_t ch = 2 * r + 1;
            if (ch >= end) break;
            if (ch + 1 < end && cmp_by_offset(&idx[ch], &idx[ch + 1], (void *) ts) < 0) ch++;
            if (cmp_by_offset(&idx[r], &idx[ch], (void *) ts) >= 0) break;
            tmp = idx[r]; idx[r] = idx[ch]; idx[ch] = tmp;
            r = ch;
        }
    }
}

/* Checks alignment, file bounds and overlaps of the tensor data; sets each tensor's data pointer. */
static enum triattn_status check_tensor_data(tri_cursor * c, tri_gguf * g) {
    uint64_t avail = g->data_offset <= g->size ? g->size - g->data_offset : 0;
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        tri_gguf_tensor * t = &g->tensors[i];
        if (t->offset % g->alignment != 0) {
            return tri_fail(c->err, c->err_size, TRIATTN_ERR_FORMAT,
                            "GGUF: tensor '%s': data offset %llu is not a multiple of the alignment %u",
                            t->name, (unsigned long long) t->offset, g->alignment);
        }
        if (g->data_offset > g->size || t->offset > avail || t->nbytes > avail - t->offset) {
            return tri_fail(c->err, c->err_size, TRIATTN_ERR_FORMAT,
                            "GGUF: tensor '%s': data at byte %llu + %llu bytes runs past end of file (size %llu)",
                            t->name, (unsigned long long) (g->data_offset + t->offset),
                            (unsigned long long) t->nbytes, (unsigned long long) g->size);
        }
        t->data = g->base + g->data_offset + t->offset;
    }
    if (g->n_tensors < 2) {
        return TRIATTN_OK;
    }
    uint32_t * idx = malloc((size_t) g->n_tensors * sizeof *idx);
    if (!idx) {
        return tri_fail(c->err, c->err_size, TRIATTN_ERR_OOM, "GGUF: out of memory");
    }
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        idx[i] = (uint32_t) i;
    }
    sort_by_offset(idx, g->n_tensors, g->tensors);
    enum triattn_status st = TRIATTN_OK;
    const tri_gguf_tensor * prev = NULL;
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const tri_gguf_tensor * t = &g->tensors[idx[i]];
        if (t->nbytes == 0) {
            continue;
        }
        if (prev && t->offset < prev->offset + prev->nbytes) {
            st = tri_fail(c->err, c->err_size, TRIATTN_ERR_FORMAT,
                          "GGUF: tensor '%s' (data offset %llu) overlaps tensor '%s' (data offset %llu, %llu bytes)",
                          t->name, (unsigned long long) t->offset, prev->name, (unsigned long long) prev->offset,
                          (unsigned long long) prev->nbytes);
            break;
        }
        prev = t;
    }
    free(idx);
    return st;
}

/* ---- lookup tables ----------------------------------------------------------------------------- */

static bool build_hash(uint64_t n, uint32_t ** table, uint64_t * mask) {
    uint64_t cap = 16;
    while (cap < 2 * n) {
        cap *= 2;
    }
    *table = calloc((size_t) cap, sizeof **table);
    *mask = cap - 1;
    return *table != NULL;
}

/* Inserts name index i (names(i) gives the string); returns the index of an equal earlier name or -1. */
static int64_t hash_insert(uint32_t * table, uint64_t mask, const char * name, uint32_t i,
                           const char * (*get)(const tri_gguf *, uint32_t), const tri_gguf * g) {
    size_t len = strlen(name);
    for (uint64_t h = hash_bytes(name, len) & mask;; h = (h + 1) & mask) {
        if (table[h] == 0) {
            table[h] = i + 1;
            return -1;
        }
        if (strcmp(get(g, table[h] - 1), name) == 0) {
            return table[h] - 1;
        }
    }
}

static int64_t hash_find(const uint32_t * table, uint64_t mask, const char * name,
                         const char * (*get)(const tri_gguf *, uint32_t), const tri_gguf * g) {
    if (!table) {
        return -1;
    }
    for (uint64_t h = hash_bytes(name, strlen(name)) & mask;; h = (h + 1) & mask) {
        if (table[h] == 0) {
            return -1;
        }
        if (strcmp(get(g, table[h] - 1), name) == 0) {
            return table[h] - 1;
        }
    }
}

static const char * kv_name(const tri_gguf * g, uint32_t i) { return g->kv[i].key; }
static const char * tensor_name(const tri_gguf * g, uint32_t i) { return g->tensors[i].name; }

/* ---- top level --------------------------------------------------------------------------------- */

static enum triattn_status parse(tri_gguf_impl * gi, char * err, size_t err_size) {
    tri_gguf * g = &gi->pub;
    tri_cursor cur = { g->base, g->size, 0, err, err_size };
    tri_cursor * c = &cur;
    if (g->size < 24) {
        return tri_fail(err, err_size, TRIATTN_ERR_FORMAT, "GGUF: file of %llu bytes is too small for a GGUF header",
                        (unsigned long long) g->size);
    }
    uint32_t magic, version;
    rd_u32(c, &magic);
    rd_u32(c, &version);
    if (magic != TRI_GGUF_MAGIC) {
        return tri_fail(err, err_size, TRIATTN_ERR_FORMAT, "GGUF: bad magic (not a GGUF file)");
    }
    uint32_t swapped = __builtin_bswap32(version);
    if ((version & 0xffffu) == 0 && swapped >= 1 && swapped <= 3) {
        return tri_fail(err, err_size, TRIATTN_ERR_UNSUPPORTED,
                        "GGUF: big-endian GGUF (version %u byte-swapped) is not supported", swapped);
    }
    if (version != 2 && version != 3) {
        return tri_fail(err, err_size, TRIATTN_ERR_UNSUPPORTED, "GGUF: version %u is not supported (only 2 and 3)",
                        version);
    }
    g->version = version;
    uint64_t n_tensors, n_kv;
    rd_u64(c, &n_tensors);
    rd_u64(c, &n_kv);
    if (n_kv > cur_left(c) / TRI_GGUF_MIN_KV_BYTES || n_kv >= UINT32_MAX) {
        return tri_fail(err, err_size, TRIATTN_ERR_FORMAT,
                        "GGUF: header at byte 16: %llu keys cannot fit in a file of %llu bytes",
                        (unsigned long long) n_kv, (unsigned long long) g->size);
    }
    enum triattn_status st = rd_kvs(c, g, n_kv);
    if (st != TRIATTN_OK) {
        return st;
    }
    if (n_tensors > cur_left(c) / TRI_GGUF_MIN_TENSOR_BYTES || n_tensors >= UINT32_MAX) {
        return tri_fail(err, err_size, TRIATTN_ERR_FORMAT,
                        "GGUF: header at byte 8: %llu tensors cannot fit in the %llu bytes after the metadata",
                        (unsigned long long) n_tensors, (unsigned long long) cur_left(c));
    }
    uint64_t cap = 0;
    for (uint64_t i = 0; i < n_tensors; i++) {
        if (!grow((void **) &g->tensors, &cap, i, sizeof *g->tensors)) {
            return tri_fail(err, err_size, TRIATTN_ERR_OOM, "GGUF: out of memory for %llu tensors",
                            (unsigned long long) n_tensors);
        }
        g->n_tensors = i + 1; /* owned from here: the name (if copied) is freed by close */
        st = rd_tensor_info(c, &g->tensors[i], i);
        if (st != TRIATTN_OK) {
            return st;
        }
    }

    /* Unique keys and tensor names. */
    if (!build_hash(g->n_kv, &gi->kv_hash, &gi->kv_mask) ||
        !build_hash(g->n_tensors, &gi->tensor_hash, &gi->tensor_mask)) {
        return tri_fail(err, err_size, TRIATTN_ERR_OOM, "GGUF: out of memory");
    }
    for (uint64_t i = 0; i < g->n_kv; i++) {
        if (hash_insert(gi->kv_hash, gi->kv_mask, g->kv[i].key, (uint32_t) i, kv_name, g) >= 0) {
            char kb[96];
            return tri_fail(err, err_size, TRIATTN_ERR_FORMAT, "GGUF: key '%s' at byte %llu: duplicate key",
                            printable(g->kv[i].key, strlen(g->kv[i].key), kb, sizeof kb),
                            (unsigned long long) g->kv[i].offset);
        }
    }
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        if (hash_insert(gi->tensor_hash, gi->tensor_mask, g->tensors[i].name, (uint32_t) i, tensor_name, g) >= 0) {
            char nb[96];
            return tri_fail(err, err_size, TRIATTN_ERR_FORMAT, "GGUF: tensor '%s': duplicate tensor name",
                            printable(g->tensors[i].name, strlen(g->tensors[i].name), nb, sizeof nb));
        }
    }

    /* Alignment, then the data section. */
    g->alignment = TRI_GGUF_DEFAULT_ALIGNMENT;
    const tri_gguf_kv * akv = tri_gguf_find(g, "general.alignment");
    if (akv) {
        uint32_t a = 0;
        st = tri_gguf_get_u32(g, "general.alignment", false, &a, err, err_size);
        if (st != TRIATTN_OK) {
            return st;
        }
        if (a == 0 || (a & (a - 1)) != 0) {
            return tri_fail(err, err_size, TRIATTN_ERR_FORMAT,
                            "GGUF: key 'general.alignment' at byte %llu: alignment %u is not a non-zero power of two",
                            (unsigned long long) akv->offset, a);
        }
        g->alignment = a;
    }
    uint64_t end = c->pos;
    uint64_t rem = end % g->alignment;
    g->data_offset = end + (rem ? g->alignment - rem : 0); /* cannot overflow: end <= size < 2^63 */
    /* With no tensors the padding may be absent (GGUFWriter omits it); data_offset may then pass the end. */
    return check_tensor_data(c, g);
}

static enum triattn_status finish_open(tri_gguf_impl * gi, tri_gguf ** out, char * err, size_t err_size) {
    enum triattn_status st = parse(gi, err, err_size);
    if (st != TRIATTN_OK) {
        tri_gguf_close(&gi->pub);
        return st;
    }
    *out = &gi->pub;
    return TRIATTN_OK;
}

enum triattn_status tri_gguf_open_buffer(const void * buf, size_t size, tri_gguf ** out, char * err, size_t err_size) {
    if (out) {
        *out = NULL;
    }
    if (!out || (!buf && size)) {
        return tri_fail(err, err_size, TRIATTN_ERR_INVALID_ARG, "GGUF: NULL buffer or output");
    }
    if ((uint64_t) size > (uint64_t) INT64_MAX) {
        return tri_fail(err, err_size, TRIATTN_ERR_INVALID_ARG, "GGUF: buffer too large");
    }
    tri_gguf_impl * gi = calloc(1, sizeof *gi);
    if (!gi) {
        return tri_fail(err, err_size, TRIATTN_ERR_OOM, "GGUF: out of memory");
    }
    gi->pub.base = buf;
    gi->pub.size = size;
    return finish_open(gi, out, err, err_size);
}

bool tri_gguf_make_writable(tri_gguf * g, const void * p, size_t n) {
    const uint8_t * b = p;
    if (!g || !g->map || b < g->base || n > g->size || (size_t) (b - g->base) > g->size - n) {
        return false;
    }
    if (g->map_kind != 1) {
        return g->map_kind == 2;
    }
    return tri_map_make_writable((void *) b, n);
}

enum triattn_status tri_gguf_open_file(const char * path, bool use_mmap, tri_gguf ** out, char * err, size_t err_size) {
    if (out) {
        *out = NULL;
    }
    if (!path || !out) {
        return tri_fail(err, err_size, TRIATTN_ERR_INVALID_ARG, "GGUF: NULL path or output");
    }
    uint64_t  fsize   = 0;
    bool      regular = false;
    const int fd      = tri_open_read(path, &fsize, &regular);
    if (fd < 0) {
        return tri_fail(err, err_size, TRIATTN_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    }
    if (!regular) {
        close(fd);
        return tri_fail(err, err_size, TRIATTN_ERR_IO, "%s: not a regular file", path);
    }
    if (fsize < 24) {
        close(fd);
        return tri_fail(err, err_size, TRIATTN_ERR_FORMAT, "%s: file of %llu bytes is too small for a GGUF header",
                        path, (unsigned long long) fsize);
    }
    if (fsize > SIZE_MAX) {
        close(fd);
        return tri_fail(err, err_size, TRIATTN_ERR_IO, "%s: file too large to map", path);
    }
    size_t size = (size_t) fsize;
    tri_gguf_impl * gi = calloc(1, sizeof *gi);
    if (!gi) {
        close(fd);
        return tri_fail(err, err_size, TRIATTN_ERR_OOM, "GGUF: out of memory");
    }
    if (use_mmap) {
        void * m = tri_map_file(fd, size);
        if (!m) {
            int e = errno;
            close(fd);
            free(gi);
            return tri_fail(err, err_size, TRIATTN_ERR_IO, "%s: mmap failed: %s", path, strerror(e));
        }
        gi->pub.map = m;
        gi->pub.map_kind = 1;
    } else {
        uint8_t * m = malloc(size);
        if (!m) {
            close(fd);
            free(gi);
            return tri_fail(err, err_size, TRIATTN_ERR_OOM, "%s: out of memory reading %zu bytes", path, size);
        }
        size_t got = 0;
        while (got < size) {
            const size_t want = size - got < (1u << 30) ? size - got : (1u << 30); /* read's count is 32-bit on Windows */
            const long   r    = (long) read(fd, m + got, want);
            if (r < 0 && errno == EINTR) {
                continue;
            }
            if (r <= 0) {
                int e = r < 0 ? errno : EIO;
                close(fd);
                free(m);
                free(gi);
                return tri_fail(err, err_size, TRIATTN_ERR_IO, "%s: read failed at byte %zu: %s", path, got,
                                r < 0 ? strerror(e) : "unexpected end of file");
            }
            got += (size_t) r;
        }
        gi->pub.map = m;
        gi->pub.map_kind = 2;
    }
    close(fd);
    gi->pub.base = gi->pub.map;
    gi->pub.size = size;
    return finish_open(gi, out, err, err_size);
}

void tri_gguf_close(tri_gguf * g) {
    if (!g) {
        return;
    }
    tri_gguf_impl * gi = (tri_gguf_impl *) g;
    for (uint64_t i = 0; i < g->n_kv; i++) {
        free(g->kv[i].key);
        free(g->kv[i].strs);
    }
    free(g->kv);
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        free(g->tensors[i].name);
    }
    free(g->tensors);
    free(gi->kv_hash);
    free(gi->tensor_hash);
    if (g->map_kind == 1) {
        tri_unmap_file(g->map, g->size);
    } else if (g->map_kind == 2) {
        free(g->map);
    }
    free(gi);
}

/* ---- lookups and getters ----------------------------------------------------------------------- */

const tri_gguf_kv * tri_gguf_find(const tri_gguf * g, const char * key) {
    if (!g || !key) {
        return NULL;
    }
    const tri_gguf_impl * gi = (const tri_gguf_impl *) g;
    int64_t i = hash_find(gi->kv_hash, gi->kv_mask, key, kv_name, g);
    return i >= 0 ? &g->kv[i] : NULL;
}

const tri_gguf_tensor * tri_gguf_find_tensor(const tri_gguf * g, const char * name) {
    if (!g || !name) {
        return NULL;
    }
    const tri_gguf_impl * gi = (const tri_gguf_impl *) g;
    int64_t i = hash_find(gi->tensor_hash, gi->tensor_mask, name, tensor_name, g);
    return i >= 0 ? &g->tensors[i] : NULL;
}

static bool is_int_type(enum tri_gguf_type t) {
    return t == TRI_GGUF_UINT8 || t == TRI_GGUF_INT8 || t == TRI_GGUF_UINT16 || t == TRI_GGUF_INT16 ||
           t == TRI_GGUF_UINT32 || t == TRI_GGUF_INT32 || t == TRI_GGUF_UINT64 || t == TRI_GGUF_INT64;
}

static enum tri_gguf_type elem_type(const tri_gguf_kv * kv) {
    return kv->type == TRI_GGUF_ARRAY ? kv->arr_type : kv->type;
}

double tri_gguf_arr_f64(const tri_gguf_kv * kv, uint64_t i) {
    const uint8_t * p = (const uint8_t *) kv->data + i * tri_gguf_type_size(elem_type(kv));
    switch (elem_type(kv)) {
        case TRI_GGUF_FLOAT32: { float v; memcpy(&v, p, 4); return v; }
        case TRI_GGUF_FLOAT64: { double v; memcpy(&v, p, 8); return v; }
        case TRI_GGUF_UINT64:  { uint64_t v; memcpy(&v, p, 8); return (double) v; }
        default:               return (double) tri_gguf_arr_i64(kv, i);
    }
}

int64_t tri_gguf_arr_i64(const tri_gguf_kv * kv, uint64_t i) {
    const uint8_t * p = (const uint8_t *) kv->data + i * tri_gguf_type_size(elem_type(kv));
    switch (elem_type(kv)) {
        case TRI_GGUF_UINT8:   return *p;
        case TRI_GGUF_BOOL:    return *p != 0;
        case TRI_GGUF_INT8:    return (int8_t) *p;
        case TRI_GGUF_UINT16:  { uint16_t v; memcpy(&v, p, 2); return v; }
        case TRI_GGUF_INT16:   { int16_t v; memcpy(&v, p, 2); return v; }
        case TRI_GGUF_UINT32:  { uint32_t v; memcpy(&v, p, 4); return v; }
        case TRI_GGUF_INT32:   { int32_t v; memcpy(&v, p, 4); return v; }
        case TRI_GGUF_UINT64:  { uint64_t v; memcpy(&v, p, 8); return v > INT64_MAX ? INT64_MAX : (int64_t) v; }
        case TRI_GGUF_INT64:   { int64_t v; memcpy(&v, p, 8); return v; }
        case TRI_GGUF_FLOAT32: { float v; memcpy(&v, p, 4); return (int64_t) v; }
        case TRI_GGUF_FLOAT64: { double v; memcpy(&v, p, 8); return (int64_t) v; }
        default:               return 0;
    }
}

/* Finds key for a getter; *kv = NULL with OK means "optional and missing". */
static enum triattn_status get_kv(const tri_gguf * g, const char * key, bool optional, const tri_gguf_kv ** kv,
                                  char * err, size_t err_size) {
    *kv = tri_gguf_find(g, key);
    if (*kv || optional) {
        return TRIATTN_OK;
    }
    return tri_fail(err, err_size, TRIATTN_ERR_FORMAT, "GGUF: required key '%s' is missing", key ? key : "(null)");
}

static enum triattn_status wrong_type(const tri_gguf_kv * kv, const char * want, char * err, size_t err_size) {
    return tri_fail(err, err_size, TRIATTN_ERR_FORMAT, "GGUF: key '%s' at byte %llu holds %s%s%s, expected %s",
                    kv->key, (unsigned long long) kv->offset, tri_gguf_type_name(kv->type),
                    kv->type == TRI_GGUF_ARRAY ? " of " : "",
                    kv->type == TRI_GGUF_ARRAY ? tri_gguf_type_name(kv->arr_type) : "", want);
}

/* Reads an integer scalar as a sign flag + magnitude so every integer type compares exactly. */
static enum triattn_status get_int(const tri_gguf * g, const char * key, bool optional, bool * found, bool * neg,
                                   uint64_t * mag, const tri_gguf_kv ** kvo, char * err, size_t err_size) {
    const tri_gguf_kv * kv;
    *found = false;
    enum triattn_status st = get_kv(g, key, optional, &kv, err, err_size);
    if (st != TRIATTN_OK || !kv) {
        return st;
    }
    *kvo = kv;
    if (!is_int_type(kv->type)) {
        return wrong_type(kv, "an integer", err, err_size);
    }
    *found = true;
    if (kv->type == TRI_GGUF_UINT64) {
        memcpy(mag, kv->data, 8);
        *neg = false;
    } else {
        int64_t v = tri_gguf_arr_i64(kv, 0);
        *neg = v < 0;
        *mag = v < 0 ? (uint64_t) 0 - (uint64_t) v : (uint64_t) v;
    }
    return TRIATTN_OK;
}

static enum triattn_status out_of_range(const tri_gguf_kv * kv, bool neg, uint64_t mag, const char * want,
                                        char * err, size_t err_size) {
    return tri_fail(err, err_size, TRIATTN_ERR_FORMAT, "GGUF: key '%s' at byte %llu: value %s%llu does not fit %s",
                    kv->key, (unsigned long long) kv->offset, neg ? "-" : "", (unsigned long long) mag, want);
}

enum triattn_status tri_gguf_get_u32(const tri_gguf * g, const char * key, bool optional, uint32_t * out, char * err,
                                     size_t err_size) {
    bool found, neg = false;
    uint64_t mag = 0;
    const tri_gguf_kv * kv = NULL;
    enum triattn_status st = get_int(g, key, optional, &found, &neg, &mag, &kv, err, err_size);
    if (st != TRIATTN_OK || !found) {
        return st;
    }
    if (neg || mag > UINT32_MAX) {
        return out_of_range(kv, neg, mag, "u32", err, err_size);
    }
    *out = (uint32_t) mag;
    return TRIATTN_OK;
}

enum triattn_status tri_gguf_get_i32(const tri_gguf * g, const char * key, bool optional, int32_t * out, char * err,
                                     size_t err_size) {
    bool found, neg = false;
    uint64_t mag = 0;
    const tri_gguf_kv * kv = NULL;
    enum triattn_status st = get_int(g, key, optional, &found, &neg, &mag, &kv, err, err_size);
    if (st != TRIATTN_OK || !found) {
        return st;
    }
    if (neg ? mag > (uint64_t) INT32_MAX + 1 : mag > INT32_MAX) {
        return out_of_range(kv, neg, mag, "i32", err, err_size);
    }
    *out = neg ? (int32_t) (-(int64_t) mag) : (int32_t) mag;
    return TRIATTN_OK;
}

enum triattn_status tri_gguf_get_u64(const tri_gguf * g, const char * key, bool optional, uint64_t * out, char * err,
                                     size_t err_size) {
    bool found, neg = false;
    uint64_t mag = 0;
    const tri_gguf_kv * kv = NULL;
    enum triattn_status st = get_int(g, key, optional, &found, &neg, &mag, &kv, err, err_size);
    if (st != TRIATTN_OK || !found) {
        return st;
    }
    if (neg) {
        return out_of_range(kv, neg, mag, "u64", err, err_size);
    }
    *out = mag;
    return TRIATTN_OK;
}

enum triattn_status tri_gguf_get_f32(const tri_gguf * g, const char * key, bool optional, float * out, char * err,
                                     size_t err_size) {
    const tri_gguf_kv * kv;
    enum triattn_status st = get_kv(g, key, optional, &kv, err, err_size);
    if (st != TRIATTN_OK || !kv) {
        return st;
    }
    if (kv->type == TRI_GGUF_FLOAT32) {
        memcpy(out, kv->data, 4);
        return TRIATTN_OK;
    }
    if (kv->type != TRI_GGUF_FLOAT64) {
        return wrong_type(kv, "f32 or f64", err, err_size);
    }
    double v;
    memcpy(&v, kv->data, 8);
    if (v == v && (v > 3.4028234663852886e38 || v < -3.4028234663852886e38) && v - v == 0) {
        return tri_fail(err, err_size, TRIATTN_ERR_FORMAT, "GGUF: key '%s' at byte %llu: value %g does not fit f32",
                        kv->key, (unsigned long long) kv->offset, v);
    }
    *out = (float) v;
    return TRIATTN_OK;
}

enum triattn_status tri_gguf_get_bool(const tri_gguf * g, const char * key, bool optional, bool * out, char * err,
                                      size_t err_size) {
    const tri_gguf_kv * kv;
    enum triattn_status st = get_kv(g, key, optional, &kv, err, err_size);
    if (st != TRIATTN_OK || !kv) {
        return st;
    }
    if (kv->type != TRI_GGUF_BOOL) {
        return wrong_type(kv, "bool", err, err_size);
    }
    *out = *(const uint8_t *) kv->data != 0;
    return TRIATTN_OK;
}

enum triattn_status tri_gguf_get_str(const tri_gguf * g, const char * key, bool optional, tri_gguf_str * out,
                                     char * err, size_t err_size) {
    const tri_gguf_kv * kv;
    enum triattn_status st = get_kv(g, key, optional, &kv, err, err_size);
    if (st != TRIATTN_OK || !kv) {
        return st;
    }
    if (kv->type != TRI_GGUF_STRING) {
        return wrong_type(kv, "string", err, err_size);
    }
    *out = kv->strs[0];
    return TRIATTN_OK;
}
