/* tool_chat TEMPLATE_FILE [FORMAT [BOS [ADD_ASSISTANT]]]
 * Renders a conversation with tri_chat_apply for tests/test_chat.py. Messages come from stdin, one per line
 * as "role<TAB>content" with \n, \t and \\ escaped in content. TEMPLATE_FILE "-" means no template; FORMAT
 * "auto" (default) detects it, "detect" only prints the detected name ("none" when unrecognised); BOS is the
 * BOS token text (default ""); ADD_ASSISTANT is 1 (default) or 0. Prints the rendered text without a
 * trailing newline; on error prints "error <status>: <message>" to stderr and exits 1. */
#include "chat.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char * read_all(FILE * f, size_t * n_out) {
    size_t cap = 1 << 16, n = 0;
    char * buf = malloc(cap);
    for (size_t r; buf && (r = fread(buf + n, 1, cap - n - 1, f)) > 0;) {
        n += r;
        if (cap - n - 1 == 0) {
            char * nb = realloc(buf, cap * 2);
            if (!nb) { free(buf); return NULL; }
            buf = nb;
            cap *= 2;
        }
    }
    if (buf) buf[n] = '\0';
    *n_out = n;
    return buf;
}

/* Unescapes \n, \t, \\ in place. */
static void unescape(char * s) {
    char * o = s;
    for (; *s; s++) {
        if (*s == '\\' && s[1]) {
            s++;
            *o++ = *s == 'n' ? '\n' : *s == 't' ? '\t' : *s;
        } else {
            *o++ = *s;
        }
    }
    *o = '\0';
}

int main(int argc, char ** argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: tool_chat TEMPLATE_FILE [FORMAT [BOS [ADD_ASSISTANT]]] < messages\n");
        return 2;
    }
    char * tmpl = NULL;
    size_t n = 0;
    if (strcmp(argv[1], "-") != 0) {
        FILE * f = fopen(argv[1], "rb");
        if (!f || !(tmpl = read_all(f, &n))) {
            fprintf(stderr, "cannot read %s\n", argv[1]);
            return 1;
        }
        fclose(f);
    }
    const char * format = argc > 2 ? argv[2] : "auto";
    const char * bos    = argc > 3 ? argv[3] : "";
    bool         gen    = argc > 4 ? strcmp(argv[4], "0") != 0 : true;
    if (strcmp(format, "detect") == 0) {
        const char * name = tri_chat_detect(tmpl);
        fputs(name ? name : "none", stdout);
        free(tmpl);
        return 0;
    }

    char * input = read_all(stdin, &n);
    if (!input) return 1;
    struct triattn_chat_message msgs[256];
    size_t n_msgs = 0;
    for (char * line = strtok(input, "\n"); line && n_msgs < 256; line = strtok(NULL, "\n")) {
        char * tab = strchr(line, '\t');
        if (!tab) continue;
        *tab = '\0';
        unescape(line);
        unescape(tab + 1);
        msgs[n_msgs].role    = strcmp(line, "(null)") == 0 ? NULL : line;
        msgs[n_msgs].content = strcmp(tab + 1, "(null)") == 0 ? NULL : tab + 1;
        n_msgs++;
    }

    char   err[512] = "";
    size_t need = 0;
    enum triattn_status st = tri_chat_apply(tmpl, format, bos, msgs, n_msgs, gen, NULL, 0, &need, err, sizeof err);
    char * out = NULL;
    if (st == TRIATTN_OK) {
        out = malloc(need + 1);
        size_t n2 = 0;
        st = out ? tri_chat_apply(tmpl, format, bos, msgs, n_msgs, gen, out, need + 1, &n2, err, sizeof err)
                 : TRIATTN_ERR_OOM;
        if (st == TRIATTN_OK && n2 != need) {
            snprintf(err, sizeof err, "length changed between calls: %zu then %zu", need, n2);
            st = TRIATTN_ERR_INTERNAL;
        }
    }
    if (st != TRIATTN_OK) {
        fprintf(stderr, "error %d: %s\n", (int) st, err);
        return 1;
    }
    fwrite(out, 1, need, stdout);
    free(out);
    free(input);
    free(tmpl);
    return 0;
}
