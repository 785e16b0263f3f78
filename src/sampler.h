/* Token sampler: penalties, top-k, top-p, min-p, temperature, seeded RNG. All scratch allocated at creation. */
#ifndef TRI_SAMPLER_H
#define TRI_SAMPLER_H

#include "triattn.h"

typedef struct tri_sampler tri_sampler;

/* history_cap: how many past tokens the penalties can look at (ring buffer). NULL on OOM. */
tri_sampler * tri_sampler_create(int32_t n_vocab, int32_t history_cap, uint64_t seed);
void          tri_sampler_free(tri_sampler * s);
/* Validates and copies p (TRIATTN_ERR_INVALID_ARG names a bad field); reseeds when p->seed != UINT64_MAX. */
enum triattn_status tri_sampler_set_params(tri_sampler * s, const struct triattn_sampler_params * p,
                                           char * err, size_t err_size);
void          tri_sampler_seed(tri_sampler * s, uint64_t seed);
/* Records a token (prompt or generated) in the penalty history. */
void          tri_sampler_accept(tri_sampler * s, triattn_token t);
/* Clears the history (keeps params and RNG state). */
void          tri_sampler_reset(tri_sampler * s);
/* Picks a token from n_vocab logits. Does not modify logits and does not call accept. */
triattn_token tri_sampler_sample(tri_sampler * s, const float * logits);

#endif
