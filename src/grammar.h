/* Byte-level matcher for JSON documents constrained by a compiled schema (src/json_schema.h): a pushdown
 * automaton whose state is a small stack of frames (one per open container or scalar). Feeding a byte either
 * advances the state or rejects the byte, leaving the state untouched; every accepted prefix can still be
 * completed into a document that matches the schema (the automaton never walks into a dead end). */
#ifndef TRI_GRAMMAR_H
#define TRI_GRAMMAR_H

#include "json_schema.h"

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

typedef struct tri_gframe {
    uint8_t  kind;      /* enum tri_gkind (grammar.c) */
    uint8_t  st;        /* sub-state of the kind */
    uint8_t  flags;
    uint8_t  n;         /* string: UTF-8 continuation bytes still due, or \u digits read */
    uint8_t  lo, hi;    /* string: the range of the next continuation byte */
    uint16_t hex;       /* string: value of the \u digits so far */
    int32_t  node;      /* schema node */
    int32_t  a, b, c, d;
    uint64_t seen;      /* object: keys seen so far */
} tri_gframe;

typedef struct tri_gstate {
    int32_t    depth;   /* frames in use */
    tri_gframe f[TRI_SCHEMA_MAX_DEPTH];
} tri_gstate;

/* The state before the first byte of a document matching s. */
void tri_gstate_init(const tri_schema * s, tri_gstate * g);
/* Copies the frames in use only. */
static inline void tri_gstate_copy(tri_gstate * dst, const tri_gstate * src) {
    dst->depth = src->depth;
    memcpy(dst->f, src->f, (size_t) src->depth * sizeof src->f[0]);
}
/* Feeds one byte in place: true and g advanced, or false and g left in an unspecified state (callers that need
 * it back work on a copy, as tri_gstate_feed does). */
bool tri_gstate_step(const tri_schema * s, tri_gstate * g, uint8_t byte);
/* Feeds one byte: true and g advanced, or false and g unchanged. */
bool tri_gstate_feed(const tri_schema * s, tri_gstate * g, uint8_t byte);
/* Feeds n bytes into a copy: true when all are accepted (g is then advanced; on false g is unchanged). */
bool tri_gstate_feed_bytes(const tri_schema * s, tri_gstate * g, const char * bytes, int32_t n);
/* Inside a string that takes any character: how many more plain bytes (printable ASCII but '"' and '\\') it
 * accepts, each of them one character; -1 elsewhere. */
int32_t tri_gstate_plain_room(const tri_schema * s, const tri_gstate * g);
/* True when the bytes so far form a complete document. */
bool tri_gstate_complete(const tri_schema * s, const tri_gstate * g);
/* True when some byte can still follow (false only after a document that cannot be extended). */
bool tri_gstate_can_continue(const tri_schema * s, const tri_gstate * g);

#endif
