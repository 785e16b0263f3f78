/* What the operating system provides, behind one interface: files (UTF-8 paths), read-only private mappings,
 * the CPU count, randomness. POSIX systems and Windows (MinGW-w64) each have one implementation (platform.c). */
#ifndef TRI_PLATFORM_H
#define TRI_PLATFORM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#if defined(_WIN32)
#  include <malloc.h>
#endif

/* Memory aligned to align bytes (a power of two; n a multiple of it), freed by tri_aligned_free; NULL when out of
 * memory. Inline, so each call is its own site (tests/c/test_alloc_fail.c fails allocations by call site). */
#if defined(_WIN32)
static inline void * tri_aligned_alloc(size_t align, size_t n) {
    return _aligned_malloc(n, align);
}
static inline void tri_aligned_free(void * p) {
    _aligned_free(p);
}
#else
static inline __attribute__((always_inline)) void * tri_aligned_alloc(size_t align, size_t n) {
    return aligned_alloc(align, n);
}
static inline void tri_aligned_free(void * p) {
    free(p);
}
#endif

/* Online logical CPUs (at least 1). */
int tri_cpu_count(void);

/* fopen with a UTF-8 path (binary modes read and write bytes unchanged on every system). */
FILE * tri_fopen(const char * path, const char * mode);

/* Renames from to to, replacing to when it exists (in one step where the system allows). 0 on success, else
 * -1 with errno set. */
int tri_rename_replace(const char * from, const char * to);

/* Opens a file for reading (UTF-8 path): its descriptor, with *size and *regular (false when it is not a regular
 * file or cannot be queried; the caller closes it), or -1 with errno set. */
int tri_open_read(const char * path, uint64_t * size, bool * regular);

/* The whole file of descriptor fd (size bytes) mapped read-only and private: written pages (after
 * tri_map_make_writable) become private copies, the file never changes. NULL with errno set on failure. */
void * tri_map_file(int fd, size_t size);
void   tri_unmap_file(void * addr, size_t size);

/* Makes [p, p + n) of a mapping from tri_map_file writable (copy on write). */
bool tri_map_make_writable(void * p, size_t n);

/* n bytes from the system's random source; false when it has none. */
bool tri_os_random(void * out, size_t n);

/* A number that differs between processes (the process id). */
uint64_t tri_process_id(void);

#endif
