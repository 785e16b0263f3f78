"""llama.cpp for comparisons, built from the `llama-cpp-python` 0.3.36 source package (its vendor/llama.cpp,
commit 0c1e570) into a cache folder. Never a dependency of the engine, never part of the repository.

Two trees, never mixed: bench/parity.py builds one for numerics with the graph-building code at -O0 (fast to
build; the numerics run in ggml at -O3), bench/cpu_parity.py builds a clean Release tree for speed.

A third, for the GPU peer: `python bench/llamacpp.py cuda --archs 90 --out .peer` builds llama-bench and
llama-batched-bench with CUDA on a machine without a GPU (nvcc, cuBLAS's headers and libraries from the
`nvidia-cublas` wheel of nvcc's CUDA version) and copies them with their libraries into --out, for
bench/gpu.py to run on the device in the same run as the engine (a CUDA build of llama.cpp takes most of a device
lease). cuBLAS and the driver come from the device at run time."""
from __future__ import annotations

import argparse
import os
import re
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


PEER_TOOLS = ("llama-bench", "llama-batched-bench")


def nvcc_path() -> Path:
    found = shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"
    if not Path(found).is_file():
        raise SystemExit("llamacpp.py cuda: nvcc not found (PATH or /usr/local/cuda/bin)")
    return Path(found)


def cuda_version(nvcc: Path) -> tuple[int, int]:
    out = subprocess.run([str(nvcc), "--version"], capture_output=True, text=True).stdout
    m = re.search(r"release (\d+)\.(\d+)", out)
    if not m:
        raise SystemExit(f"llamacpp.py cuda: cannot read the CUDA version from `{nvcc} --version`")
    return int(m.group(1)), int(m.group(2))


def cublas_dev(cache: Path, major: int, minor: int) -> Path:
    """cuBLAS headers and libraries of CUDA major.minor from the nvidia-cublas wheel, unpacked once into cache;
    returns the folder holding include/ and lib/ (with the unversioned names the linker looks for)."""
    root = cache / f"cublas-{major}.{minor}"
    base = root / "nvidia" / f"cu{major}"
    if not (base / "include" / "cublas_v2.h").is_file():
        wheels = cache / "wheels"
        run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", wheels,
             f"nvidia-cublas=={major}.{minor}.*"])
        whl = sorted(wheels.glob(f"nvidia_cublas-{major}.{minor}.*.whl"))[-1]
        shutil.rmtree(root, ignore_errors=True)
        import zipfile
        with zipfile.ZipFile(whl) as z:
            z.extractall(root)
    for name in ("libcublas", "libcublasLt"):
        link = base / "lib" / f"{name}.so"
        if not link.exists():
            link.symlink_to(f"{name}.so.{major}")
    return base


def driver_stub(cache: Path) -> Path:
    """An empty libcuda.so with the driver's soname, to link against where no driver is installed; the device's
    own libcuda.so.1 is the one loaded at run time."""
    stub = cache / "stub" / "libcuda.so"
    if not stub.is_file():
        stub.parent.mkdir(parents=True, exist_ok=True)
        c = stub.with_suffix(".c")
        c.write_text("void tri_driver_stub(void) {}\n")
        run([os.environ.get("CC", "cc"), "-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o", stub, c])
    return stub


def cuda_build(archs: str, out: Path, jobs: int) -> Path:
    """llama-bench and llama-batched-bench with CUDA for archs (e.g. 90), their shared libraries and CUDA's
    runtime beside them in out (RPATH $ORIGIN), stripped."""
    nvcc = nvcc_path()
    major, minor = cuda_version(nvcc)
    cache = CACHE_ROOT / "llamacpp-cuda"
    src = source(cache)
    blas = cublas_dev(cache, major, minor)
    build_dir = cache / f"build-sm{archs.replace(';', '-')}"
    if not (build_dir / "CMakeCache.txt").exists():
        gen = ["-G", "Ninja"] if shutil.which("ninja") else []
        inc = f"-I{blas / 'include'}"
        run(["cmake", "-S", src, "-B", build_dir, *gen, "-DCMAKE_BUILD_TYPE=Release", "-DGGML_CUDA=ON",
             f"-DCMAKE_CUDA_COMPILER={nvcc}", f"-DCMAKE_CUDA_ARCHITECTURES={archs}", "-DGGML_CUDA_NCCL=OFF",
             # the device's CPU is not this one's: no -march=native
             "-DGGML_NATIVE=OFF", "-DGGML_AVX2=ON", "-DGGML_FMA=ON", "-DGGML_F16C=ON",
             "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
             "-DBUILD_SHARED_LIBS=ON", f"-DCUDA_cublas_LIBRARY={blas / 'lib' / 'libcublas.so'}",
             f"-DCUDA_cublasLt_LIBRARY={blas / 'lib' / 'libcublasLt.so'}",
             f"-DCUDA_cuda_driver_LIBRARY={driver_stub(cache)}", f"-DCMAKE_CXX_FLAGS={inc}",
             f"-DCMAKE_CUDA_FLAGS={inc}",
             # the executables link libraries whose driver symbols only the device's libcuda.so.1 has
             "-DCMAKE_EXE_LINKER_FLAGS=-Wl,--allow-shlib-undefined",
             "-DCMAKE_BUILD_WITH_INSTALL_RPATH=ON", "-DCMAKE_INSTALL_RPATH=$ORIGIN"])
    run(["cmake", "--build", build_dir, "-j", str(jobs), "--target", *PEER_TOOLS])
    cache_txt = (build_dir / "CMakeCache.txt").read_text()
    m = re.search(r"^CUDA_cudart_LIBRARY:\w+=(.+)$", cache_txt, re.M)  # the runtime the build linked
    return pack(build_dir / "bin", Path(m.group(1)).parent if m else nvcc.parent.parent / "lib64", out,
                f"llama.cpp from {SDIST} (vendor/llama.cpp), CUDA {major}.{minor}, architectures {archs}, cuBLAS "
                f"{blas.parent.parent.name}")


def needed(elf: Path) -> list[str]:
    """The shared libraries an ELF file names (readelf -d)."""
    out = subprocess.run(["readelf", "-d", str(elf)], capture_output=True, text=True, check=True).stdout
    return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out)


def pack(bin_dir: Path, cuda_lib: Path, out: Path, what: str) -> Path:
    """The programs and the libraries they need from bin_dir and CUDA's runtime from cuda_lib (cuBLAS and the driver
    stay the GPU machine's), under the names they are asked for, stripped; those over 1 MiB xz-compressed (NAME.xz,
    which bench/gpu.py unpacks), so that the folder travels to a GPU machine within its limit."""
    import lzma
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    todo, done = list(PEER_TOOLS), set()
    while todo:
        name = todo.pop()
        src = bin_dir / name if (bin_dir / name).exists() else cuda_lib / name
        if name in done or not src.exists() or name.startswith(("libcublas", "libcuda.")):
            continue
        done.add(name)
        dst = out / name
        shutil.copyfile(src.resolve(), dst)
        dst.chmod(0o755)
        subprocess.run(["strip", "--strip-unneeded", str(dst)], check=False)
        if src.parent == bin_dir:
            todo += needed(dst)
        if dst.stat().st_size > 1 << 20:
            with open(dst, "rb") as f, lzma.open(dst.with_name(name + ".xz"), "wb", preset=6) as z:
                shutil.copyfileobj(f, z, 1 << 20)
            dst.unlink()
    (out / "BUILD.txt").write_text(what + "\n")
    size = sum(f.stat().st_size for f in out.iterdir())
    log(f"{out}: {', '.join(sorted(f.name for f in out.iterdir()))}: {size / 2**20:.1f} MiB")
    return out


def unpack(peer: Path, dest: Path) -> Path:
    """pack's folder made runnable in dest (emptied first): its NAME.xz files unpacked, the rest copied; returns
    dest. The packed folder stays as it travels."""
    import lzma
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for f in peer.iterdir():
        name = f.name.removesuffix(".xz")
        with (lzma.open(f) if f.suffix == ".xz" else open(f, "rb")) as src, open(dest / name, "wb") as o:
            shutil.copyfileobj(src, o, 1 << 20)
        (dest / name).chmod(0o755)
    return dest


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Builds llama.cpp for comparisons (see the module's docstring).")
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("cuda", help="llama-bench and llama-batched-bench with CUDA, for a GPU machine")
    c.add_argument("--archs", default="90", help="CUDA architectures (CMAKE_CUDA_ARCHITECTURES; default 90)")
    c.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / ".peer",
                   help="where the programs and their libraries go (default: .peer in the repository)")
    c.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 2, help="build jobs")
    args = ap.parse_args(argv)
    cuda_build(args.archs, args.out, args.jobs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
