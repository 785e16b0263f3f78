/* Internal helpers shared by the engine: status formatting, logging, small utilities. */
#ifndef TRI_COMMON_H
#define TRI_COMMON_H

#include "triattn.h"

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#if defined(__GNUC__)
#  define TRI_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#  define TRI_PRINTF(a, b)
#endif

/* Writes a formatted message into err (if err && n > 0) and returns status. */
enum triattn_status tri_fail(char * err, size_t n, enum triattn_status status, const char * fmt, ...) TRI_PRINTF(4, 5);

/* Process-wide logging through the callback installed by triattn_log_set. */
void tri_log(enum triattn_log_level level, const char * fmt, ...) TRI_PRINTF(2, 3);

/* Monotonic wall clock in milliseconds. */
double tri_time_ms(void);

#define TRI_MIN(a, b) ((a) < (b) ? (a) : (b))
#define TRI_MAX(a, b) ((a) > (b) ? (a) : (b))

#endif
