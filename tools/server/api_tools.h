/* api_tools.h - the tool-calling fields of a chat request (tools, tool_choice, parallel_tool_calls), the
 * tool turns of its messages, and the reply's tool calls. */
#ifndef TRI_SRV_API_TOOLS_H
#define TRI_SRV_API_TOOLS_H

#include <stdbool.h>
#include <stddef.h>

#include "json.h"
#include "triattn.h"

struct tool_req {
    char *                      tools;        /* the "tools" array as JSON text, or NULL */
    char *                      choice;       /* "tool_choice" as JSON text, or NULL */
    struct triattn_tool_options opts;
    char *                      schema;       /* the forced call's JSON Schema, or NULL */
    triattn_tool_parser *       parser;       /* output → tool calls (requests with tools) */
};

/* A request error: the message, the offending parameter and the HTTP status. */
struct tool_err {
    char         msg[400];
    const char * param;
    int          status;
};

/* Fills e (message from fmt, the parameter, the HTTP status) and returns false. */
bool tool_err_set(struct tool_err * e, int status, const char * param, const char * fmt, ...) JSON_PRINTF(4, 5);

/* Reads tools, tool_choice and parallel_tool_calls from a chat request body; strict: read calls only in the chat
 * format's own syntax (--strict-tool-calls). */
bool api_tools_parse(const json_value * body, bool strict, struct tool_req * t, struct tool_err * e);

/* Renders "messages" (including assistant tool_calls and role "tool" turns) with the request's tools into
 * *prompt (malloc'd). */
bool api_tools_prompt(const triattn_model * model, const char * chat_format, const json_value * body,
                      struct tool_req * t, char ** prompt, struct tool_err * e);

/* The one place a forced tool call is wired to constrained sampling: builds the call's schema and sets
 * gp->json_schema (unchanged when tool_choice forces nothing). */
bool api_tools_constrain(const triattn_model * model, const char * chat_format, struct tool_req * t,
                         struct triattn_generate_params * gp, struct tool_err * e);

/* Creates the output parser of a chat request that has tools (t->parser stays NULL otherwise). */
bool api_tools_parser(const triattn_model * model, const char * chat_format, struct tool_req * t,
                      struct tool_err * e);

void api_tools_free(struct tool_req * t);

#endif
