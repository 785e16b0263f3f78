/* Chat formats at the C level: detection, the buffer contract (truncation, *n_out), errors, and ChatML /
 * Llama 3 rendering of random messages against a direct concatenation. The Jinja comparisons of every
 * family live in tests/test_chat.py. */
#define _POSIX_C_SOURCE 200809L
#include "chat.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define TU_FAIL_PRINT_LIMIT 20
#include "test_util.h"

/* Random text without leading/trailing whitespace (so Llama 3's trim leaves it alone). */
static void rand_text(char * o, size_t cap) {
    static const char * words[] = { "hello", "wörld", "中文", "😀", "a\nb", "x\ty", "<|im_end|>", "{{x}}", "\\", "'" };
    size_t n = 0, k = 1 + (uint32_t) tu_below(8);
    o[0] = '\0';
    for (size_t i = 0; i < k; i++) {
        const char * w = words[(uint32_t) tu_below(10)];
        if (n + strlen(w) + 2 >= cap) break;
        if (i) o[n++] = ' ';
        strcpy(o + n, w);
        n += strlen(w);
    }
}

static const char * const k_roles[] = { "system", "user", "assistant" };

static void test_detect(void) {
    static const struct { const char * marker; const char * name; } cases[] = {
        { "{{ '<|im_start|>' + message['role'] }}", "chatml" },
        { "<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud.", "qwen" },
        { "<|im_start|>assistant\\n<think>\\n", "qwen3" },
        { "'<|start_header_id|>' + message['role'] + '<|end_header_id|>", "llama3" },
        { "'[INST] ' + '<<SYS>>\\n' + system_message", "llama2" },
        { "'[INST] ' + message['content'] + ' [/INST]'", "mistral" },
        { "'<start_of_turn>' + role + '\\n'", "gemma" },
        { "'<\xEF\xBD\x9C" "User\xEF\xBD\x9C>' + message['content']", "deepseek-r1" },
    };
    for (int rep = 0; rep < 20; rep++) {
        for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
            char junk1[128], junk2[128], t[512];
            rand_text(junk1, sizeof junk1);
            rand_text(junk2, sizeof junk2);
            snprintf(t, sizeof t, "{%% for m in messages %%}%s%s%s{%% endfor %%}", junk1, cases[i].marker, junk2);
            const char * got = tri_chat_detect(t);
            CHECK(got && strcmp(got, cases[i].name) == 0, "detect %s: got %s", cases[i].name, got ? got : "NULL");
        }
        char junk[128];
        rand_text(junk, sizeof junk);
        CHECK(tri_chat_detect(junk) == NULL, "junk template must not be recognised: %s", junk);
    }
    CHECK(tri_chat_detect(NULL) == NULL && tri_chat_detect("") == NULL, "NULL / empty template");
}

/* ChatML with random messages equals the plain concatenation; every capacity obeys the buffer contract. */
static void test_chatml_and_truncation(void) {
    static char contents[8][256], expect[4096], buf[4096];
    struct triattn_chat_message m[8];
    for (int rep = 0; rep < 200; rep++) {
        size_t n = 1 + (uint32_t) tu_below(8), e = 0;
        for (size_t i = 0; i < n; i++) {
            rand_text(contents[i], sizeof contents[i]);
            m[i].role    = k_roles[i == 0 ? (uint32_t) tu_below(3) : 1 + (uint32_t) tu_below(2)];
            m[i].content = contents[i];
            e += (size_t) snprintf(expect + e, sizeof expect - e, "<|im_start|>%s\n%s<|im_end|>\n", m[i].role, m[i].content);
        }
        bool gen = (uint32_t) tu_below(2);
        if (gen) e += (size_t) snprintf(expect + e, sizeof expect - e, "<|im_start|>assistant\n");
        size_t need = 12345;
        char   err[256];
        enum triattn_status st = tri_chat_apply(NULL, "chatml", NULL, m, n, gen, NULL, 0, &need, err, sizeof err);
        CHECK(st == TRIATTN_OK && need == e, "size query: status %d, need %zu, expected %zu", st, need, e);
        size_t cap = (uint32_t) tu_below(4) == 0 ? sizeof buf : (uint32_t) tu_below((uint32_t) e + 3);
        memset(buf, 'Z', sizeof buf);
        size_t got = 0;
        st = tri_chat_apply(NULL, "chatml", NULL, m, n, gen, buf, cap, &got, err, sizeof err);
        size_t written = cap == 0 ? 0 : (e < cap ? e : cap - 1);
        CHECK(st == TRIATTN_OK && got == e, "n_out %zu, expected %zu (cap %zu)", got, e, cap);
        CHECK(memcmp(buf, expect, written) == 0, "prefix differs (cap %zu)", cap);
        CHECK(cap == 0 ? buf[0] == 'Z' : buf[written] == '\0', "NUL terminator (cap %zu)", cap);
        CHECK(cap >= sizeof buf || buf[cap] == 'Z', "wrote past capacity %zu", cap);
    }
}

/* Llama 3: BOS once, contents trimmed; Llama 3.2-style templates stamp today's date. */
static void test_llama3(void) {
    static char a[256], b[256], expect[2048], buf[2048];
    for (int rep = 0; rep < 50; rep++) {
        rand_text(a, sizeof a);
        rand_text(b, sizeof b);
        char pa[300];
        snprintf(pa, sizeof pa, " \n%s\t ", a);  /* surrounding whitespace must be trimmed */
        struct triattn_chat_message m[2] = { { "user", pa }, { "assistant", b } };
        snprintf(expect, sizeof expect,
                 "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n%s<|eot_id|>"
                 "<|start_header_id|>assistant<|end_header_id|>\n\n%s<|eot_id|>"
                 "<|start_header_id|>assistant<|end_header_id|>\n\n", a, b);
        size_t n = 0;
        enum triattn_status st = tri_chat_apply("<|start_header_id|>", NULL, "<|begin_of_text|>", m, 2, true, buf,
                                                sizeof buf, &n, NULL, 0);
        CHECK(st == TRIATTN_OK && strcmp(buf, expect) == 0, "llama3 render:\n%s\nexpected:\n%s", buf, expect);
    }
    char today[32];
    time_t now = time(NULL);
    struct tm tmv;
    localtime_r(&now, &tmv);
    strftime(today, sizeof today, "Today Date: %d %b %Y\n\n", &tmv);
    struct triattn_chat_message m[1] = { { "user", "hi" } };
    size_t n = 0;
    tri_chat_apply("<|start_header_id|> Cutting Knowledge Date {{ strftime_now('%d %b %Y') }}", "auto", "", m, 1,
                   true, buf, sizeof buf, &n, NULL, 0);
    CHECK(strstr(buf, today) != NULL, "llama 3.2 date: %s", buf);
}

/* A default system prompt written with Jinja escapes in the template is unescaped. */
static void test_default_system(void) {
    char word[64], tmpl[512], want[512], buf[1024];
    for (int rep = 0; rep < 20; rep++) {
        snprintf(word, sizeof word, "Bot%u", tu_u32());
        snprintf(tmpl, sizeof tmpl, "{%% if messages[0]['role'] != 'system' %%}{{ '<|im_start|>system\\nYou are \\'%s\\'."
                 "\\tOK<|im_end|>\\n' }}{%% endif %%}{{ '<|im_start|>system\\n' + messages[0]['content'] }}", word);
        struct triattn_chat_message m[1] = { { "user", word } };
        size_t n = 0;
        enum triattn_status st = tri_chat_apply(tmpl, "auto", NULL, m, 1, false, buf, sizeof buf, &n, NULL, 0);
        snprintf(want, sizeof want, "<|im_start|>system\nYou are '%s'.\tOK<|im_end|>\n<|im_start|>user\n%s<|im_end|>\n",
                 word, word);
        CHECK(st == TRIATTN_OK && strcmp(buf, want) == 0, "default system:\n%s\nexpected:\n%s", buf, want);
    }
}

static void test_errors(void) {
    char err[512], buf[256];
    size_t n = 0;
    char role[32];
    snprintf(role, sizeof role, "wizard%u", (uint32_t) tu_below(1000));
    struct triattn_chat_message bad_role[2] = { { "user", "hi" }, { role, "x" } };
    enum triattn_status st = tri_chat_apply(NULL, "chatml", NULL, bad_role, 2, true, buf, sizeof buf, &n, err, sizeof err);
    CHECK(st == TRIATTN_ERR_INVALID_ARG && strstr(err, role), "unknown role: %d %s", st, err);
    struct triattn_chat_message null_content[1] = { { "user", NULL } };
    st = tri_chat_apply(NULL, "chatml", NULL, null_content, 1, true, buf, sizeof buf, &n, err, sizeof err);
    CHECK(st == TRIATTN_ERR_INVALID_ARG && strstr(err, "NULL content"), "NULL content: %d %s", st, err);
    struct triattn_chat_message null_role[1] = { { NULL, "x" } };
    st = tri_chat_apply(NULL, "chatml", NULL, null_role, 1, true, buf, sizeof buf, &n, err, sizeof err);
    CHECK(st == TRIATTN_ERR_INVALID_ARG, "NULL role: %d", st);
    struct triattn_chat_message ok[1] = { { "user", "hi" } };
    st = tri_chat_apply(NULL, "vicuna", NULL, ok, 1, true, buf, sizeof buf, &n, err, sizeof err);
    CHECK(st == TRIATTN_ERR_UNSUPPORTED && strstr(err, "vicuna") && strstr(err, "llama3"), "unknown format: %d %s", st, err);
    st = tri_chat_apply("{{ messages }}", "auto", NULL, ok, 1, true, buf, sizeof buf, &n, err, sizeof err);
    CHECK(st == TRIATTN_ERR_UNSUPPORTED && strstr(err, "chatml") && strstr(err, "deepseek-r1"), "unknown template: %d %s", st, err);
    st = tri_chat_apply(NULL, NULL, NULL, ok, 1, true, buf, sizeof buf, &n, err, sizeof err);
    CHECK(st == TRIATTN_ERR_UNSUPPORTED, "no template, auto: %d", st);
    struct triattn_chat_message twice[2] = { { "user", "a" }, { "user", "b" } };
    for (int f = 0; f < 3; f++) {
        const char * fmt = f == 0 ? "gemma" : f == 1 ? "llama2" : "mistral";
        st = tri_chat_apply(NULL, fmt, "<s>", twice, 2, true, buf, sizeof buf, &n, err, sizeof err);
        CHECK(st == TRIATTN_ERR_INVALID_ARG && strstr(err, "alternate"), "%s alternation: %d %s", fmt, st, err);
    }
}

int main(void) {
    tu_seed_init("TRI_TEST_SEED");
    test_detect();
    test_chatml_and_truncation();
    test_llama3();
    test_default_system();
    test_errors();
    return tu_finish();
}
