/* Token-level constraint: a trie of every token's bytes (built once per model, on first use) walked with the
 * grammar matcher to find the tokens that keep the output a valid prefix, and the sampling step that applies it. */
#ifndef TRI_GRAMMAR_MASK_H
#define TRI_GRAMMAR_MASK_H

#include "grammar.h"
#include "sampler.h"
#include "triattn.h"

struct triattn_model;

/* The byte trie of the model's tokens, in preorder: node i holds byte[i] at depth depth[i] (1-based), its
 * subtree ends before skip[i], and the tokens whose bytes end at node i are toks[tok_first[i] ..
 * tok_first[i] + tok_n[i]). Tokens that render no bytes (special and control tokens) are not in it; the
 * end-of-generation tokens among them are listed in eog. "Plain" bytes (printable ASCII but '"' and '\\') are
 * string content wherever a string allows more characters: plain_ids lists the tokens made only of them,
 * shortest first (plain_upto[L] of them have at most L bytes), and all_plain[i] says that node i's path and
 * subtree hold nothing else, so that inside a string the mask marks them by length and skips those subtrees. */
typedef struct tri_token_trie {
    int32_t   n_nodes;
    int32_t   max_depth;
    uint8_t * byte;
    int32_t * depth;
    int32_t * skip;
    int32_t * tok_first;
    int32_t * tok_n;
    int32_t * toks;
    int32_t * eog;
    int32_t   n_eog;
    uint8_t * all_plain;
    int32_t * plain_ids;
    int32_t * plain_upto;   /* max_depth + 1 entries */
} tri_token_trie;

/* The model's trie, built on the first call (thread-safe); NULL with a message in err when out of memory.
 * Freed by tri_token_trie_release when the model is freed. */
const tri_token_trie * tri_token_trie_get(const struct triattn_model * m, char * err, size_t err_size);
void tri_token_trie_release(struct triattn_model * m);

/* Marks in allow[n_vocab] (0/1) the tokens of the trie whose bytes g accepts; returns how many. Does not touch
 * entries of tokens outside the trie. scratch holds trie->max_depth + 1 states. */
int32_t tri_token_trie_mask(const tri_token_trie * t, const tri_schema * s, const tri_gstate * g,
                            tri_gstate * scratch, uint8_t * allow);

/* A generation's constraint: the compiled schema, the matcher state after the text so far, and the scratch
 * for masking, all allocated when generation begins. */
typedef struct tri_constraint {
    const struct triattn_model * model;
    const tri_token_trie * trie;
    tri_schema *  schema;
    tri_gstate    state;
    tri_gstate *  scratch;
    uint8_t *     allow;
    float *       masked;
    int64_t       n_masks;   /* full masks computed (the sampler's first pick was not allowed) */
} tri_constraint;

/* Compiles schema_text for model m. Errors as tri_schema_compile, plus TRIATTN_ERR_OOM. */
enum triattn_status tri_constraint_create(const struct triattn_model * m, const char * schema_text,
                                          tri_constraint ** out, char * err, size_t err_size);
void tri_constraint_free(tri_constraint * c);

/* Samples the next token under the constraint and advances it over that token's bytes. The sampler's own
 * pick is kept when the grammar allows it; otherwise the disallowed tokens' logits are set to -inf and the
 * sampler picks again. End-of-generation tokens are allowed only when the document is complete. *end is set
 * (and no token sampled) when the document is complete and cannot be extended. TRIATTN_ERR_INTERNAL when no
 * token can continue the document. */
enum triattn_status tri_constraint_sample(tri_constraint * c, tri_sampler * sampler, const float * logits,
                                          triattn_token * out, bool * end, char * err, size_t err_size);

#endif
