/* The default model's path in the cache and a model's sidecar found by name (see model_files.h). */
#define _POSIX_C_SOURCE 200809L
#include "model_files.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>
#if defined(_WIN32)
#  define WIN32_LEAN_AND_MEAN
#  include <windows.h>
#endif

#define SIDECAR_SUFFIX ".tri-stats.gguf"

/* The system's side, one definition per system: paths and environment values are UTF-8 strings (Windows keeps
 * them as UTF-16, so they are converted there). */
#if defined(_WIN32)
/* The last path separator of path ('/' or '\\'), or NULL. */
static const char * last_sep(const char * path) {
    const char * a = strrchr(path, '/');
    const char * b = strrchr(path, '\\');
    return !a ? b : !b ? a : a > b ? a : b;
}

static bool utf8_of(const wchar_t * w, char * out, size_t n) {
    return WideCharToMultiByte(CP_UTF8, 0, w, -1, out, (int) n, NULL, NULL) > 0;
}

/* The value of environment variable name (UTF-8, in buf), or NULL. */
static const char * env_utf8(const char * name, char * buf, size_t n) {
    wchar_t wname[64];
    if (!MultiByteToWideChar(CP_UTF8, 0, name, -1, wname, 64)) {
        return NULL;
    }
    const wchar_t * v = _wgetenv(wname);
    return v && utf8_of(v, buf, n) ? buf : NULL;
}

static bool is_file(const char * path) {
    wchar_t         w[4096];
    struct _stat64 st;
    return MultiByteToWideChar(CP_UTF8, MB_ERR_INVALID_CHARS, path, -1, w, 4096) > 0 && _wstat64(w, &st) == 0 &&
           (st.st_mode & _S_IFMT) == _S_IFREG;
}

/* The folder of the running program (no trailing separator). */
static bool program_dir(char * out, size_t n) {
    wchar_t     w[4096];
    const DWORD k = GetModuleFileNameW(NULL, w, 4096);
    if (k == 0 || k >= 4096 || !utf8_of(w, out, n)) {
        return false;
    }
    char * last = (char *) last_sep(out);
    if (!last) {
        return false;
    }
    *last = '\0';
    return true;
}
#else
static const char * last_sep(const char * path) {
    return strrchr(path, '/');
}

static const char * env_utf8(const char * name, char * buf, size_t n) {
    (void) buf;
    (void) n;
    return getenv(name);
}

static bool is_file(const char * path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* The folder of the running program (no trailing slash), from /proc/self/exe. */
static bool program_dir(char * out, size_t n) {
    ssize_t k = readlink("/proc/self/exe", out, n - 1);
    if (k <= 0 || (size_t) k >= n - 1) {
        return false;
    }
    out[k]      = '\0';
    char * last = strrchr(out, '/');
    if (!last) {
        return false;
    }
    *last = '\0';
    return true;
}
#endif

/* snprintf that reports truncation as false. */
static bool join(char * out, size_t n, const char * a, const char * b, const char * c) {
    int k = snprintf(out, n, "%s%s%s", a, b, c);
    return k >= 0 && (size_t) k < n;
}

bool model_files_default_model(char * out, size_t n) {
    char         buf[4096];
    const char * cache = env_utf8("PYTRIATTN_CACHE", buf, sizeof buf);
    if (cache && *cache) {
        return join(out, n, cache, "/", MODEL_FILES_DEFAULT_NAME);
    }
    const char * xdg = env_utf8("XDG_CACHE_HOME", buf, sizeof buf);
    if (xdg && *xdg) {
        return join(out, n, xdg, "/pytriattn/", MODEL_FILES_DEFAULT_NAME);
    }
    const char * home = env_utf8("HOME", buf, sizeof buf);
    if (!home || !*home) {
        home = env_utf8("USERPROFILE", buf, sizeof buf); /* Windows: the folder Python's ~ names */
    }
    if (home && *home) {
        return join(out, n, home, "/.cache/pytriattn/", MODEL_FILES_DEFAULT_NAME);
    }
    return false;
}

/* The sidecar's file name for a model path: its last component, ".gguf" replaced by SIDECAR_SUFFIX. */
static bool sidecar_name(const char * model_path, char * out, size_t n) {
    const char * base = last_sep(model_path);
    base              = base ? base + 1 : model_path;
    size_t len        = strlen(base);
    if (len > 5 && strcasecmp(base + len - 5, ".gguf") == 0) {
        len -= 5;
    }
    int k = snprintf(out, n, "%.*s%s", (int) len, base, SIDECAR_SUFFIX);
    return len > 0 && k >= 0 && (size_t) k < n;
}

bool model_files_find_sidecar(const char * model_path, char * out, size_t n) {
    char name[512], dir[4096];
    if (!model_path || !sidecar_name(model_path, name, sizeof name)) {
        return false;
    }
    const char * slash = last_sep(model_path);
    int          dlen  = slash ? (int) (slash - model_path) : 0;
    int          k     = snprintf(out, n, "%.*s%s%s", dlen, model_path, slash ? "/" : "", name);
    if (k >= 0 && (size_t) k < n && is_file(out)) {
        return true;
    }
    if (!program_dir(dir, sizeof dir)) {
        return false;
    }
    static const char * const data_dirs[] = { "/../data/", "/../share/pytriattn/" };
    for (size_t i = 0; i < sizeof data_dirs / sizeof data_dirs[0]; i++) {
        if (join(out, n, dir, data_dirs[i], name) && is_file(out)) {
            return true;
        }
    }
    return false;
}

enum triattn_status model_files_load(const char * prefix, const char * model_path, const char * calibration,
                                     const struct triattn_model_params * base, triattn_model ** out,
                                     char * sidecar_out, size_t n) {
    char found[4096] = "", err[1024] = "";
    if (!calibration && model_files_find_sidecar(model_path, found, sizeof found)) {
        calibration = found;
    }
    struct triattn_model_params mp = *base;
    mp.calibration_path = calibration;
    enum triattn_status st = triattn_model_load(model_path, &mp, out, err, sizeof err);
    if (st != TRIATTN_OK && calibration == found) {
        /* a sidecar nobody asked for must not stop the model: load it without, if the model itself loads */
        char err2[1024] = "";
        mp.calibration_path = NULL;
        if (triattn_model_load(model_path, &mp, out, err2, sizeof err2) == TRIATTN_OK) {
            fprintf(stderr, "%swarning: ignoring the query centres found by name: %s\n", prefix, err);
            calibration = NULL;
            st          = TRIATTN_OK;
        }
    }
    if (st != TRIATTN_OK) {
        fprintf(stderr, "%serror: cannot load model (%s): %s\n", prefix, triattn_status_name(st), err);
        return st;
    }
    if (sidecar_out && n > 0) {
        snprintf(sidecar_out, n, "%s", calibration ? calibration : "");
    }
    return TRIATTN_OK;
}

bool model_files_centres_missing(const char * prefix, const triattn_model * model, const char * model_path,
                                 const char * kv_policy) {
    struct triattn_model_info mi;
    triattn_model_get_info(model, &mi);
    if (!kv_policy || strcmp(kv_policy, "triattention") != 0 || mi.has_calibration) {
        return false;
    }
    char name[512] = "MODEL" SIDECAR_SUFFIX;
    sidecar_name(model_path, name, sizeof name);
    fprintf(stderr,
            "%serror: --kv-policy triattention needs query centres, and %s has none: pass --calibration FILE with "
            "a sidecar written by `pytriattn calibrate %s --self-generate --sidecar -o FILE` (or --text TEXT.txt), "
            "or place that file beside the model as %s (it is then found by name)\n",
            prefix, model_path, model_path, name);
    return true;
}
