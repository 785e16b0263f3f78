/* api_embed.h - POST /v1/embeddings: the request's inputs as token lists, and the response from a session. */
#ifndef TRI_SRV_API_EMBED_H
#define TRI_SRV_API_EMBED_H

#include <stdbool.h>
#include <stddef.h>

#include "api_tools.h"
#include "json.h"
#include "triattn.h"

#define API_EMBED_MAX_INPUTS 2048

struct embed_req {
    triattn_token **     toks;      /* one token list per input */
    int32_t *            n;
    size_t               n_inputs;
    int64_t              n_tokens;  /* all inputs */
    bool                 base64;    /* encoding_format "base64": little-endian float32 bytes */
    bool                 normalize; /* unit L2 norm (extension "normalize", default true) */
    enum triattn_pooling pooling;   /* extension "pooling": "mean" (default) or "last" */
};

/* Reads input (a string, an array of strings, an array of token ids or an array of those), encoding_format,
 * dimensions and the extensions from the body; strings are tokenized with the model's BOS, special-token text read
 * as text. Inputs longer than n_ctx are refused; dimensions, when given, must be n_embd (the model's). */
bool api_embed_parse(const triattn_model * model, int32_t n_embd, int32_t n_ctx, const json_value * body,
                     struct embed_req * r, struct tool_err * e);
/* Embeds every input on session s (which forgets its tokens; n_embd: the model's) and writes the OpenAI response
 * into b. On failure the status, with the session's message in err. */
enum triattn_status api_embed_run(triattn_session * s, int32_t n_embd, const struct embed_req * r,
                                  const char * model_name, jbuf * b, char * err, size_t err_size);
void api_embed_free(struct embed_req * r);

#endif
