/* fuzz.h - shared by the fuzz targets: FUZZ_CHECK aborts with a message when a property fails (libFuzzer and
 * replay.c report the abort with the input). */
#ifndef TRI_FUZZ_H
#define TRI_FUZZ_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FUZZ_CHECK(cond, ...) do { if (!(cond)) { fprintf(stderr, __VA_ARGS__); fputc('\n', stderr); abort(); } } while (0)

/* s[0..n) and a NUL (a fuzz input is not NUL-terminated: no strndup, which may read on under ASan's strict
 * string checks). */
static inline char * fuzz_text(const void * s, size_t n) {
    char * t = malloc(n + 1);
    FUZZ_CHECK(t, "out of memory");
    memcpy(t, s, n);
    t[n] = '\0';
    return t;
}

#endif
