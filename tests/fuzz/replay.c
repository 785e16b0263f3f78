/* replay.c - main() for the fuzz targets in builds without libFuzzer: runs inputs through the target's
 * LLVMFuzzerTestOneInput once each: every input of a corpus file NAME.b64 (one base64 input per line, '#' lines are
 * comments; tests/fuzz/corpus.py writes them), every other file named as one input, and every file in a folder
 * named, in name order.
 * A target reports a broken property by aborting; sanitizer builds report memory errors. Exits 1 when no input
 * was found, so an empty or missing corpus fails instead of passing. */
#define _GNU_SOURCE
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t * data, size_t size);
int LLVMFuzzerInitialize(int * argc, char *** argv) __attribute__((weak));

static int replay_file(const char * path) {
    FILE * f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "replay: cannot open %s\n", path);
        return -1;
    }
    size_t cap = 4096, n = 0;
    uint8_t * buf = malloc(cap);
    size_t got;
    while (buf && (got = fread(buf + n, 1, cap - n, f)) > 0) {
        n += got;
        if (n == cap) {
            uint8_t * grown = realloc(buf, cap * 2);
            if (!grown) { free(buf); buf = NULL; break; }
            buf = grown;
            cap *= 2;
        }
    }
    fclose(f);
    if (!buf) {
        fprintf(stderr, "replay: out of memory reading %s\n", path);
        return -1;
    }
    /* An exact-size copy, so that reads past the input's end are caught by ASan. */
    uint8_t * exact = malloc(n ? n : 1);
    if (!exact) { free(buf); return -1; }
    memcpy(exact, buf, n);
    free(buf);
    LLVMFuzzerTestOneInput(exact, n);
    free(exact);
    return 1;
}

static int b64_value(int c) {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    return c == '+' ? 62 : c == '/' ? 63 : -1;
}

/* Decodes one line of base64 in place; returns the byte count, or -1 when the line is not base64. */
static long b64_decode(char * line, size_t n) {
    while (n && (line[n - 1] == '\r' || line[n - 1] == ' ')) n--;
    while (n && line[n - 1] == '=') n--;
    uint8_t * out = (uint8_t *) line;
    uint32_t acc = 0;
    int bits = 0;
    long len = 0;
    for (size_t i = 0; i < n; i++) {
        const int v = b64_value((unsigned char) line[i]);
        if (v < 0) return -1;
        acc = acc << 6 | (uint32_t) v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[len++] = (uint8_t) (acc >> bits);
        }
    }
    return len;
}

/* Runs every input of a .b64 corpus file; returns the count or -1. */
static int replay_b64(const char * path) {
    FILE * f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "replay: cannot open %s\n", path);
        return -1;
    }
    int count = 0;
    char * line = NULL;
    size_t cap = 0;
    ssize_t got;
    for (long no = 1; (got = getline(&line, &cap, f)) > 0; no++) {
        if (line[got - 1] == '\n') got--;
        if (got == 0 || line[0] == '#') continue;
        const long n = b64_decode(line, (size_t) got);
        if (n < 0) {
            fprintf(stderr, "replay: %s:%ld is not base64\n", path, no);
            count = -1;
            break;
        }
        uint8_t * exact = malloc(n ? (size_t) n : 1);  /* exact size: reads past the input's end are caught */
        if (!exact) { count = -1; break; }
        memcpy(exact, line, (size_t) n);
        LLVMFuzzerTestOneInput(exact, (size_t) n);
        free(exact);
        count++;
    }
    free(line);
    fclose(f);
    return count;
}

static int by_name(const void * a, const void * b) { return strcmp(*(char * const *) a, *(char * const *) b); }

static int replay_dir(const char * dir) {
    DIR * d = opendir(dir);
    if (!d) {
        fprintf(stderr, "replay: cannot open folder %s\n", dir);
        return -1;
    }
    char ** names = NULL;
    size_t n = 0, cap = 0;
    for (struct dirent * e; (e = readdir(d));) {
        if (e->d_name[0] == '.') continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 64;
            char ** grown = realloc(names, cap * sizeof *names);
            if (!grown) break;
            names = grown;
        }
        names[n++] = strdup(e->d_name);
    }
    closedir(d);
    qsort(names, n, sizeof *names, by_name);
    int count = 0;
    for (size_t i = 0; i < n; i++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        struct stat st;
        if (stat(path, &st) == 0 && S_ISREG(st.st_mode)) {
            int r = replay_file(path);
            if (r < 0) count = -1;
            else if (count >= 0) count += r;
        }
        free(names[i]);
    }
    free(names);
    return count;
}

int main(int argc, char ** argv) {
    if (LLVMFuzzerInitialize) LLVMFuzzerInitialize(&argc, &argv);
    int total = 0;
    for (int i = 1; i < argc; i++) {
        struct stat st;
        if (stat(argv[i], &st) != 0) {
            fprintf(stderr, "replay: %s does not exist\n", argv[i]);
            return 1;
        }
        const size_t len = strlen(argv[i]);
        int r = S_ISDIR(st.st_mode) ? replay_dir(argv[i])
              : len > 4 && strcmp(argv[i] + len - 4, ".b64") == 0 ? replay_b64(argv[i]) : replay_file(argv[i]);
        if (r < 0) return 1;
        total += r;
    }
    printf("%s: %d inputs replayed\n", argv[0], total);
    return total > 0 ? 0 : 1;
}
