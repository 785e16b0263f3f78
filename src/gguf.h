/* GGUF v2/v3 reader: maps a file (or wraps a caller buffer) and parses metadata and the tensor table.
 * Every offset, count and length is checked against the file size; nothing is trusted. */
#ifndef TRI_GGUF_H
#define TRI_GGUF_H

#include "triattn.h"
#include "../ggml_ops/types.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum tri_gguf_type {
    TRI_GGUF_UINT8   = 0,
    TRI_GGUF_INT8    = 1,
    TRI_GGUF_UINT16  = 2,
    TRI_GGUF_INT16   = 3,
    TRI_GGUF_UINT32  = 4,
    TRI_GGUF_INT32   = 5,
    TRI_GGUF_FLOAT32 = 6,
    TRI_GGUF_BOOL    = 7,
    TRI_GGUF_STRING  = 8,
    TRI_GGUF_ARRAY   = 9,
    TRI_GGUF_UINT64  = 10,
    TRI_GGUF_INT64   = 11,
    TRI_GGUF_FLOAT64 = 12,
    TRI_GGUF_TYPE_COUNT,
};

/* A string inside the mapping: not NUL-terminated, may contain any bytes. */
typedef struct tri_gguf_str {
    const char * ptr;
    uint64_t     len;
} tri_gguf_str;

typedef struct tri_gguf_kv {
    char *             key;       /* NUL-terminated copy */
    enum tri_gguf_type type;      /* value type */
    enum tri_gguf_type arr_type;  /* element type when type == TRI_GGUF_ARRAY */
    uint64_t           n;         /* element count (1 for a scalar or a single string) */
    const void *       data;      /* numeric/bool scalars and arrays: packed little-endian values in the
                                     mapping, possibly unaligned (read with memcpy) */
    tri_gguf_str *     strs;      /* STRING: 1 entry; ARRAY of STRING: n entries; else NULL */
    uint64_t           offset;    /* byte offset of the key in the file */
} tri_gguf_kv;

typedef struct tri_gguf_tensor {
    char *        name;     /* NUL-terminated copy */
    uint32_t      n_dims;   /* 1..4 */
    int64_t       ne[4];    /* elements per dimension, ne[0] innermost (contiguous); unused dims = 1 */
    enum tri_type type;
    uint64_t      offset;   /* offset within the data section */
    uint64_t      nbytes;
    const void *  data;     /* pointer into the mapping */
} tri_gguf_tensor;

typedef struct tri_gguf {
    uint32_t          version;
    uint64_t          n_kv;
    tri_gguf_kv *     kv;
    uint64_t          n_tensors;
    tri_gguf_tensor * tensors;
    uint32_t          alignment;    /* general.alignment or 32 */
    uint64_t          data_offset;  /* start of the tensor data section */
    const uint8_t *   base;         /* the whole file */
    uint64_t          size;
    /* private */
    void *            map;          /* mmap'd region or malloc'd copy, NULL for a caller buffer */
    int               map_kind;     /* 0 none, 1 mmap, 2 malloc */
} tri_gguf;

/* Opens and parses a file. use_mmap false reads it into memory. On failure returns TRIATTN_ERR_IO,
 * TRIATTN_ERR_FORMAT (message names the key or tensor and the byte offset), TRIATTN_ERR_UNSUPPORTED
 * (unknown tensor type, named) or TRIATTN_ERR_OOM, writes err, and sets *out = NULL.
 * A file with no tensors (a metadata-only sidecar) is valid. */
enum triattn_status tri_gguf_open_file(const char * path, bool use_mmap, tri_gguf ** out, char * err, size_t err_size);
/* Parses a caller buffer (not copied: it must outlive the tri_gguf). Same checks as above. */
enum triattn_status tri_gguf_open_buffer(const void * buf, size_t size, tri_gguf ** out, char * err, size_t err_size);
void tri_gguf_close(tri_gguf * g);
/* Lets the caller rewrite n bytes of tensor data at p in this process only (a mapped file is private: the
 * file is never changed). False for a caller buffer, or when the pages cannot be made writable. */
bool tri_gguf_make_writable(tri_gguf * g, const void * p, size_t n);

const tri_gguf_kv *     tri_gguf_find(const tri_gguf * g, const char * key);
const tri_gguf_tensor * tri_gguf_find_tensor(const tri_gguf * g, const char * name);

/* Typed getters. Return TRIATTN_OK and *out; TRIATTN_ERR_FORMAT when the key holds another type or a
 * value out of range (message names the key); when the key is missing they return TRIATTN_ERR_FORMAT
 * too, but leave *out untouched if `optional` is true and return TRIATTN_OK.
 * Integer getters accept any integer type whose value fits; float getters accept F32 and F64. */
enum triattn_status tri_gguf_get_u32(const tri_gguf * g, const char * key, bool optional, uint32_t * out, char * err, size_t err_size);
enum triattn_status tri_gguf_get_i32(const tri_gguf * g, const char * key, bool optional, int32_t * out, char * err, size_t err_size);
enum triattn_status tri_gguf_get_u64(const tri_gguf * g, const char * key, bool optional, uint64_t * out, char * err, size_t err_size);
enum triattn_status tri_gguf_get_f32(const tri_gguf * g, const char * key, bool optional, float * out, char * err, size_t err_size);
enum triattn_status tri_gguf_get_bool(const tri_gguf * g, const char * key, bool optional, bool * out, char * err, size_t err_size);
/* *out points into the mapping (not NUL-terminated). */
enum triattn_status tri_gguf_get_str(const tri_gguf * g, const char * key, bool optional, tri_gguf_str * out, char * err, size_t err_size);
/* Element i of a numeric array converted to double / int64 (no bounds or type errors: caller checks kv->n
 * and kv->arr_type). */
double  tri_gguf_arr_f64(const tri_gguf_kv * kv, uint64_t i);
int64_t tri_gguf_arr_i64(const tri_gguf_kv * kv, uint64_t i);
/* Size in bytes of one element of a fixed-size type, 0 for STRING/ARRAY. */
size_t tri_gguf_type_size(enum tri_gguf_type t);
const char * tri_gguf_type_name(enum tri_gguf_type t);

#endif
