/* Chat formats: detect the family of a GGUF tokenizer.chat_template and render messages with it. */
#ifndef TRI_CHAT_H
#define TRI_CHAT_H

#include "triattn.h"

/* Format name recognised from template text ("chatml", "llama3", "llama2", "mistral", "gemma", "qwen",
 * "deepseek-r1"), or NULL. tmpl may be NULL. Static string. */
const char * tri_chat_detect(const char * tmpl);

/* Renders messages. format NULL/"auto" uses tri_chat_detect(tmpl). bos_text is the model's BOS token text
 * (or NULL) for formats that spell it out. Output contract as triattn_chat_apply. */
enum triattn_status tri_chat_apply(const char * tmpl, const char * format, const char * bos_text,
                                   const struct triattn_chat_message * messages, size_t n_messages,
                                   bool add_assistant, char * buf, size_t capacity, size_t * n_out,
                                   char * err, size_t err_size);

/* Start of a call rendering n_messages messages into a caller buffer: *n_out = 0 and buf emptied; refuses a NULL
 * buf with capacity > 0 and NULL messages with n_messages > 0. */
enum triattn_status tri_chat_begin(char * buf, size_t capacity, size_t * n_out, const void * messages,
                                   size_t n_messages, char * err, size_t err_size);

#endif
