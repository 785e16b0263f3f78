"""llama.cpp for comparisons, built from the `llama-cpp-python` 0.3.36 source package (its vendor/llama.cpp,
commit 0c1e570) into a cache folder. Never a dependency of the engine, never part of the repository.

Two trees, never mixed: bench/parity.py builds one for numerics with the graph-building code at -O0 (fast to
build; the numerics run in ggml at -O3), bench/cpu_parity.py builds a clean Release tree for speed."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

SDIST = "llama-cpp-python==0.3.36"
SDIST_DIR = "llama_cpp_python-0.3.36"
CACHE_ROOT = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pytriattn"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run(cmd, **kw) -> subprocess.CompletedProcess:
    log("$ " + " ".join(str(c) for c in cmd))
    return subprocess.run([str(c) for c in cmd], check=True, **kw)


def source(cache: Path) -> Path:
    """Downloads the sdist into cache (once) and unpacks it; returns its vendor/llama.cpp folder."""
    cache.mkdir(parents=True, exist_ok=True)
    src = cache / SDIST_DIR / "vendor" / "llama.cpp"
    if not src.is_dir():
        tgz = next(cache.glob(f"{SDIST_DIR}.tar.gz"), None)
        if tgz is None:
            # only this package from source; its build requirements may come as wheels
            run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", "llama-cpp-python",
                 SDIST, "-d", cache])
            tgz = next(cache.glob(f"{SDIST_DIR}.tar.gz"))
        with tarfile.open(tgz) as tf:
            tf.extractall(cache, filter="data") if hasattr(tarfile, "data_filter") else tf.extractall(cache)
    return src


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def build(src: Path, build_dir: Path, targets, jobs: int) -> Path:
    """CPU-only Release build (-O3, -march=native) of the given targets (incremental); returns build_dir.
    On CPUs with AMX, llama.cpp 0c1e570's AMX matrix kernels stop with an illegal instruction (seen on a
    2-core Xeon VM: `tilezero` in its Q4_1 prompt kernel), so they are compiled out (-mno-amx-*)."""
    if not (build_dir / "CMakeCache.txt").exists():
        gen = ["-G", "Ninja"] if shutil.which("ninja") else []
        extra = []
        if "amx_tile" in _cpu_flags():
            flags = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
            extra = [f"-DCMAKE_C_FLAGS={flags}", f"-DCMAKE_CXX_FLAGS={flags}"]
            log(f"llama.cpp: AMX compiled out ({flags})")
        run(["cmake", "-S", src, "-B", build_dir, *gen, "-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON",
             "-DLLAMA_CURL=OFF", "-DGGML_CUDA=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_SERVER=OFF",
             "-DBUILD_SHARED_LIBS=ON", *extra])
    run(["cmake", "--build", build_dir, "-j", str(jobs), "--target", *targets])
    return build_dir
