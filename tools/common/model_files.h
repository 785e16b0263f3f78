/* Finding the files a program needs when the user names none: the default model in pytriattn's cache, and
 * a model's TriAttention query centres in a sidecar found by name. Shared by triattn-cli and triattn-server;
 * built only on include/triattn.h, no Python involved. */
#ifndef TRIATTN_TOOLS_MODEL_FILES_H
#define TRIATTN_TOOLS_MODEL_FILES_H

#include "triattn.h"

#include <stdbool.h>
#include <stddef.h>

/* The default model's file name (SmolLM2-135M-Instruct Q4_1, what `pytriattn fetch` downloads). */
#define MODEL_FILES_DEFAULT_NAME "SmolLM2-135M-Instruct.Q4_1.gguf"

/* Path of the default model in the cache pytriattn uses: $PYTRIATTN_CACHE, else $XDG_CACHE_HOME/pytriattn,
 * else $HOME/.cache/pytriattn. Written whether or not the file exists; false when no variable names a folder
 * or out is too small. */
bool model_files_default_model(char * out, size_t n);

/* The query-centre sidecar of a model, found by name: the model's file name with ".gguf" replaced by
 * ".tri-stats.gguf", first beside the model, then in the data folders of an installation: ../data beside
 * this program's folder (pytriattn/bin/ in the Python wheel) and ../share/pytriattn (`cmake --install`).
 * false when none exists. */
bool model_files_find_sidecar(const char * model_path, char * out, size_t n);

/* Loads the model with params `base` (GPU layers and memory limit) and the centres of `calibration` when given,
 * else with a sidecar found by model_files_find_sidecar; one that does not load is skipped with a warning on
 * stderr. *sidecar_out (may be NULL) receives the sidecar used, "" for none. Errors are printed to stderr after
 * `prefix`. */
enum triattn_status model_files_load(const char * prefix, const char * model_path, const char * calibration,
                                     const struct triattn_model_params * base, triattn_model ** out,
                                     char * sidecar_out, size_t n);

/* When kv_policy asks for TriAttention and the model has no centres: prints an error after `prefix` that
 * says how to give them to this program (--calibration FILE, a sidecar by name, `pytriattn calibrate`) and
 * returns true. False (nothing printed) otherwise. */
bool model_files_centres_missing(const char * prefix, const triattn_model * model, const char * model_path,
                                 const char * kv_policy);

#endif
