/* Streaming text filter for generation: turns raw token pieces into text that is safe to show (whole UTF-8
 * characters, never the start of a stop string) and detects stop strings across token boundaries. */
#ifndef TRI_TEXTSTREAM_H
#define TRI_TEXTSTREAM_H

#include "triattn.h"

typedef struct tri_textstream tri_textstream;

/* Copies the stop strings (empty or NULL ones are ignored). NULL on OOM. */
tri_textstream * tri_textstream_create(const char * const * stop, int32_t n_stop);
void tri_textstream_free(tri_textstream * ts);
void tri_textstream_reset(tri_textstream * ts);   /* forget held-back text, keep stop strings */

/* Feeds the raw bytes of one token piece. Emits through fn the text that is now safe to show: only whole
 * UTF-8 characters, never (a possible prefix of) a stop string. Returns TRI_TS_CONTINUE, TRI_TS_STOP (a stop
 * string matched: text before it was emitted, the rest is dropped) or TRI_TS_ABORT (fn returned false).
 * fn may be NULL. Invalid UTF-8 bytes become U+FFFD. After STOP or ABORT every push returns the same value
 * until tri_textstream_reset. Never allocates: a large piece is processed in buffer-sized chunks. */
enum tri_ts_result { TRI_TS_CONTINUE = 0, TRI_TS_STOP = 1, TRI_TS_ABORT = 2 };
enum tri_ts_result tri_textstream_push(tri_textstream * ts, const char * bytes, int32_t n, triattn_piece_fn fn,
                                       void * user_data);
/* End of generation: emits what is held back (an incomplete UTF-8 tail becomes U+FFFD). */
enum tri_ts_result tri_textstream_flush(tri_textstream * ts, triattn_piece_fn fn, void * user_data);

#endif
