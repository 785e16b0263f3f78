/* fuzz_chat: chat templates and conversations through the chat renderer. Input: one byte choosing the format
 * (a name, "auto" detection from the template, or an unknown name), one byte of flags (generation prompt, a BOS
 * text), then NUL-separated fields: the template's text, then one field per message, its first byte choosing the
 * role (system, user, assistant, or one the renderer must refuse) and the rest its content.
 * Properties: detection names a known format or nothing; a refusal empties the buffer and says why; an accepted
 * conversation renders the same text twice, a buffer too small for it holds its prefix and reports its whole
 * length, every user message's stripped content appears in it, and valid UTF-8 in (template, contents) gives
 * valid UTF-8 out. */
#define _GNU_SOURCE  /* memmem */
#include "chat.h"
#include "unicode.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"

#define MAX_MESSAGES 16
#define OUT_CAP      (1 << 16)

static const char * const formats[] = { "chatml", "qwen", "qwen3", "llama3", "llama2", "mistral", "gemma",
                                        "deepseek-r1", "auto", "vicuna" };
static const char * const roles[]   = { "system", "user", "assistant", "tool" };

/* Bytes the renderers' strip may take from either end of a content (Python's str.strip(): ASCII whitespace,
 * 0x1C-0x1F, and non-ASCII spaces); what is left between them appears in any stripped rendering. */
static bool maybe_stripped(unsigned char c) { return c <= ' ' || c >= 0x80; }

static bool valid_utf8(const char * s, size_t n) {
    for (size_t i = 0; i < n;) {
        size_t len;
        if (tri_utf8_decode((const unsigned char *) s + i, n - i, &len) == TRI_CP_INVALID) return false;
        i += len;
    }
    return true;
}

int LLVMFuzzerTestOneInput(const uint8_t * data, size_t size) {
    if (size < 2) return 0;
    const char * format = formats[data[0] % (sizeof formats / sizeof *formats)];
    const bool   gen    = data[1] & 1;
    const char * bos    = data[1] & 2 ? "<s>" : NULL;

    /* Fields: the template, then the messages; content stops at the next NUL (C strings). */
    const char * p   = (const char *) data + 2;
    const char * end = (const char *) data + size;
    const char * nul = memchr(p, '\0', (size_t) (end - p));
    char *       tmpl = fuzz_text(p, (size_t) ((nul ? nul : end) - p));
    bool         utf8 = valid_utf8(tmpl, strlen(tmpl));
    p = nul ? nul + 1 : end;

    char *                      contents[MAX_MESSAGES];
    struct triattn_chat_message msgs[MAX_MESSAGES];
    size_t                      n = 0;
    while (p < end && n < MAX_MESSAGES) {
        nul = memchr(p, '\0', (size_t) (end - p));
        const char * e = nul ? nul : end;
        msgs[n].role = roles[(unsigned char) *p % 4];
        contents[n] = fuzz_text(p + 1, e > p ? (size_t) (e - p - 1) : 0);
        msgs[n].content = contents[n];
        utf8 = utf8 && valid_utf8(contents[n], strlen(contents[n]));
        n++;
        p = nul ? nul + 1 : end;
    }

    const char * detected = tri_chat_detect(tmpl);
    if (detected) {
        bool known = false;
        for (size_t i = 0; i + 2 < sizeof formats / sizeof *formats; i++) known = known || !strcmp(detected, formats[i]);
        FUZZ_CHECK(known, "detected an unknown format '%s'", detected);
    }

    static char out[OUT_CAP], again[OUT_CAP], small[OUT_CAP];
    char   err[512] = "";
    size_t len = 0;
    out[0] = 'x';
    enum triattn_status st = tri_chat_apply(tmpl, format, bos, msgs, n, gen, out, sizeof out, &len, err, sizeof err);
    if (st != TRIATTN_OK) {
        FUZZ_CHECK(err[0] && out[0] == '\0' && len == 0, "a refusal (status %d) without a message or with output", st);
    } else if (len < sizeof out) {  /* longer outputs (past 64 KiB) are only rendered */
        FUZZ_CHECK(strlen(out) == len, "the output holds a NUL before its end (%zu of %zu)", strlen(out), len);

        size_t len2 = 0;
        FUZZ_CHECK(tri_chat_apply(tmpl, format, bos, msgs, n, gen, again, sizeof again, &len2, err, sizeof err) ==
                           TRIATTN_OK && len2 == len && memcmp(out, again, len) == 0,
                   "a second render differs");

        const size_t cap = len / 2 + 1;
        size_t       len3 = 0;
        FUZZ_CHECK(tri_chat_apply(tmpl, format, bos, msgs, n, gen, small, cap, &len3, err, sizeof err) == TRIATTN_OK,
                   "a small buffer refused: %s", err);
        FUZZ_CHECK(len3 == len && strlen(small) == cap - 1 && memcmp(small, out, cap - 1) == 0,
                   "a buffer of %zu bytes does not hold the prefix or the length (%zu, want %zu)", cap, len3, len);
        size_t len4 = 0;
        FUZZ_CHECK(tri_chat_apply(tmpl, format, bos, msgs, n, gen, NULL, 0, &len4, err, sizeof err) == TRIATTN_OK &&
                           len4 == len,
                   "measuring without a buffer gives %zu, not %zu", len4, len);

        for (size_t i = 0; i < n; i++) {
            if (strcmp(msgs[i].role, "user") != 0) continue;
            const char * c = msgs[i].content;
            size_t       cn = strlen(c);
            while (cn > 0 && maybe_stripped((unsigned char) c[cn - 1])) cn--;
            while (cn > 0 && maybe_stripped((unsigned char) *c)) c++, cn--;
            FUZZ_CHECK(cn == 0 || memmem(out, len, c, cn), "user message %zu's content is not in the output", i);
        }
        FUZZ_CHECK(!utf8 || valid_utf8(out, len), "valid UTF-8 in, invalid UTF-8 out");
    }

    for (size_t i = 0; i < n; i++) free(contents[i]);
    free(tmpl);
    return 0;
}
