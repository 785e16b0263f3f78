/* The platform interface of platform.h: POSIX (Linux, macOS) and Windows (MinGW-w64), one definition each. */
#if defined(_WIN32)
#  define _CRT_RAND_S /* rand_s */
#else
#  define _POSIX_C_SOURCE 200809L /* mmap, fstat, O_CLOEXEC */
#endif

#include "platform.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>

#if defined(_WIN32)
#  define WIN32_LEAN_AND_MEAN
#  include <io.h>
#  include <process.h>
#  include <windows.h>
#else
#  include <sys/mman.h>
#  include <unistd.h>
#endif

#if defined(_WIN32)

int tri_cpu_count(void) {
    const DWORD n = GetActiveProcessorCount(ALL_PROCESSOR_GROUPS);
    return n > 0 ? (int) n : 1;
}

/* path (UTF-8) as a new UTF-16 string; NULL with errno set */
static wchar_t * tri_wide(const char * path) {
    const int n = MultiByteToWideChar(CP_UTF8, MB_ERR_INVALID_CHARS, path, -1, NULL, 0);
    wchar_t * w = n > 0 ? malloc(sizeof(wchar_t) * (size_t) n) : NULL;
    if (!w || MultiByteToWideChar(CP_UTF8, MB_ERR_INVALID_CHARS, path, -1, w, n) != n) {
        free(w);
        errno = n > 0 ? ENOMEM : EINVAL;
        return NULL;
    }
    return w;
}

FILE * tri_fopen(const char * path, const char * mode) {
    wchar_t * wp = tri_wide(path);
    wchar_t * wm = wp ? tri_wide(mode) : NULL;
    FILE *    f  = wm ? _wfopen(wp, wm) : NULL;
    free(wp);
    free(wm);
    return f;
}

int tri_rename_replace(const char * from, const char * to) {
    wchar_t * wf = tri_wide(from);
    wchar_t * wt = wf ? tri_wide(to) : NULL;
    const BOOL ok = wt && MoveFileExW(wf, wt, MOVEFILE_REPLACE_EXISTING | MOVEFILE_WRITE_THROUGH);
    if (wt && !ok) {
        errno = EACCES;
    }
    free(wf);
    free(wt);
    return ok ? 0 : -1;
}

int tri_open_read(const char * path, uint64_t * size, bool * regular) {
    *regular = false;
    wchar_t * wp = tri_wide(path);
    const int fd = wp ? _wopen(wp, _O_RDONLY | _O_BINARY | _O_NOINHERIT) : -1;
    free(wp);
    struct _stat64 sb;
    if (fd >= 0 && _fstat64(fd, &sb) == 0) {
        *regular = (sb.st_mode & _S_IFMT) == _S_IFREG;
        *size    = (uint64_t) sb.st_size;
    }
    return fd;
}

void * tri_map_file(int fd, size_t size) {
    const HANDLE h  = (HANDLE) _get_osfhandle(fd);
    const HANDLE hm = h == INVALID_HANDLE_VALUE ? NULL : CreateFileMappingW(h, NULL, PAGE_WRITECOPY, 0, 0, NULL);
    void *       p  = hm ? MapViewOfFile(hm, FILE_MAP_COPY, 0, 0, size) : NULL;
    if (hm) {
        CloseHandle(hm); /* the view keeps the mapping */
    }
    DWORD old;
    if (p && !VirtualProtect(p, size, PAGE_READONLY, &old)) {
        UnmapViewOfFile(p);
        p = NULL;
    }
    if (!p) {
        errno = ENOMEM;
    }
    return p;
}

void tri_unmap_file(void * addr, size_t size) {
    (void) size;
    UnmapViewOfFile(addr);
}

bool tri_map_make_writable(void * p, size_t n) {
    DWORD old;
    return VirtualProtect(p, n, PAGE_WRITECOPY, &old) != 0;
}

bool tri_os_random(void * out, size_t n) {
    unsigned char * b = out;
    for (size_t i = 0; i < n; i++) {
        unsigned int r;
        if (rand_s(&r) != 0) {
            return false;
        }
        b[i] = (unsigned char) r;
    }
    return true;
}

uint64_t tri_process_id(void) {
    return (uint64_t) GetCurrentProcessId();
}

#else

int tri_cpu_count(void) {
    const long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int) (n < INT32_MAX ? n : INT32_MAX) : 1;
}

FILE * tri_fopen(const char * path, const char * mode) {
    return fopen(path, mode);
}

int tri_rename_replace(const char * from, const char * to) {
    return rename(from, to);
}

int tri_open_read(const char * path, uint64_t * size, bool * regular) {
    *regular = false;
    const int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat sb;
    if (fd >= 0 && fstat(fd, &sb) == 0) {
        *regular = S_ISREG(sb.st_mode);
        *size    = (uint64_t) sb.st_size;
    }
    return fd;
}

void * tri_map_file(int fd, size_t size) {
    void * p = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    return p == MAP_FAILED ? NULL : p;
}

void tri_unmap_file(void * addr, size_t size) {
    munmap(addr, size);
}

bool tri_map_make_writable(void * p, size_t n) {
    const uintptr_t pg = (uintptr_t) sysconf(_SC_PAGESIZE);
    const uintptr_t lo = (uintptr_t) p / pg * pg;
    return mprotect((void *) lo, (uintptr_t) p + n - lo, PROT_READ | PROT_WRITE) == 0;
}

bool tri_os_random(void * out, size_t n) {
    FILE * f = fopen("/dev/urandom", "rb");
    if (!f) {
        return false;
    }
    const bool ok = fread(out, 1, n, f) == n;
    fclose(f);
    return ok;
}

uint64_t tri_process_id(void) {
    return (uint64_t) getpid();
}

#endif
