/* fuzz.h - shared by the fuzz targets: FUZZ_CHECK aborts with a message when a property fails (libFuzzer and
 * replay.c report the abort with the input). */
#ifndef TRI_FUZZ_H
#define TRI_FUZZ_H

#include <stdio.h>
#include <stdlib.h>

#define FUZZ_CHECK(cond, ...) do { if (!(cond)) { fprintf(stderr, __VA_ARGS__); fputc('\n', stderr); abort(); } } while (0)

#endif
