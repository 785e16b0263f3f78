/* Tokenizer built from the GGUF vocabulary: byte-level BPE ("gpt2") and SentencePiece-style ("llama"). */
#ifndef TRI_VOCAB_H
#define TRI_VOCAB_H

#include "gguf.h"
#include "triattn.h"

typedef struct tri_vocab tri_vocab;

/* Builds the vocabulary from tokenizer.ggml.* keys. TRIATTN_ERR_UNSUPPORTED names an unknown
 * tokenizer.ggml.model or tokenizer.ggml.pre; TRIATTN_ERR_FORMAT a missing or inconsistent key.
 * Copies what it needs: the tri_gguf may be closed afterwards. */
enum triattn_status tri_vocab_load(const tri_gguf * g, tri_vocab ** out, char * err, size_t err_size);
void tri_vocab_free(tri_vocab * v);

int32_t       tri_vocab_n_tokens(const tri_vocab * v);
triattn_token tri_vocab_bos(const tri_vocab * v);  /* -1 if none */
triattn_token tri_vocab_eos(const tri_vocab * v);  /* -1 if none */
bool          tri_vocab_is_eog(const tri_vocab * v, triattn_token t);
/* Text of a token exactly as stored in the vocabulary (NUL-terminated), NULL when out of range. */
const char *  tri_vocab_token_text(const tri_vocab * v, triattn_token t);

/* Same contracts as triattn_tokenize / triattn_token_to_piece / triattn_detokenize in triattn.h. */
enum triattn_status tri_vocab_tokenize(const tri_vocab * v, const char * text, int32_t text_len, bool add_special,
                                       bool parse_special, triattn_token * out, int32_t capacity, int32_t * n_out);
enum triattn_status tri_vocab_token_to_piece(const tri_vocab * v, triattn_token t, bool special, char * buf,
                                             int32_t capacity, int32_t * n_out);
/* The rendered bytes of token t, pointing into the vocabulary (valid while it lives). */
enum triattn_status tri_vocab_piece(const tri_vocab * v, triattn_token t, bool special, const char ** piece,
                                    int32_t * n_out);
enum triattn_status tri_vocab_detokenize(const tri_vocab * v, const triattn_token * tokens, int32_t n_tokens,
                                         bool special, char * buf, int32_t capacity, int32_t * n_out);

#endif
