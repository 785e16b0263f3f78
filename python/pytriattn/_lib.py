"""Loads libtriattn with cffi (out-of-line ABI mode: no compiler needed at import) and checks the ABI.

The cffi module `_triattn_ffi.py` and `_triattn_cdef.h` are generated from include/triattn.h at build
time (tools/gen_cdef.py). In a source checkout without them, the same generator runs on the header here.
The library is found with importlib.resources inside the package; $PYTRIATTN_LIB overrides it.
"""
from __future__ import annotations

import os
import threading
from importlib import resources
from pathlib import Path

from ._errors import ERR_INVALID_ARG, TriattnError

_LIB_NAMES = ("libtriattn.so", "libtriattn.dylib", "libtriattn.dll", "triattn.dll")  # Linux, macOS, MinGW, MSVC
_lock = threading.Lock()
_state: dict = {}


def _package_file(name: str) -> Path | None:
    try:
        p = resources.files(__package__) / name
    except (ModuleNotFoundError, TypeError):
        return None
    return Path(str(p)) if p.is_file() else None


def _source_header() -> Path | None:
    """include/triattn.h next to python/pytriattn in a source checkout, or the copy in the wheel."""
    installed = _package_file("include/triattn.h")
    if installed:
        return installed
    p = Path(__file__).resolve().parent.parent.parent / "include" / "triattn.h"
    return p if p.is_file() else None


def _make_ffi():
    try:
        from ._triattn_ffi import ffi  # generated at build time
        return ffi, "generated module"
    except ImportError:
        pass
    import cffi
    from ._cdefgen import generate_cdef

    header = _source_header()
    if header is None:
        raise TriattnError(ERR_INVALID_ARG, "pytriattn is not built: neither _triattn_ffi.py nor "
                           "include/triattn.h was found; install with `pip install .`")
    ffi = cffi.FFI()
    ffi.cdef(generate_cdef(header.read_text()))
    return ffi, f"cdef generated from {header}"


def library_path() -> Path:
    """Path of the shared library that will be loaded."""
    env = os.environ.get("PYTRIATTN_LIB")
    if env:
        p = Path(env)
        if not p.is_file():
            raise TriattnError(ERR_INVALID_ARG, f"PYTRIATTN_LIB={env}: no such file")
        return p
    for name in _LIB_NAMES:
        p = _package_file(name)
        if p:
            return p
    raise TriattnError(ERR_INVALID_ARG, "libtriattn was not found inside the pytriattn package; install it "
                       "with `pip install .` or point $PYTRIATTN_LIB at a built libtriattn.so")


def binary_path(name: str) -> Path:
    """Path of a program shipped in the wheel (pytriattn/bin/triattn-cli, triattn-server)."""
    p = _package_file(f"bin/{name}")
    if p is None:
        raise TriattnError(ERR_INVALID_ARG, f"{name} is not part of this pytriattn installation")
    return p


def check_abi(lib_abi: int, header_abi: int, path: object = "") -> None:
    if lib_abi != header_abi:
        raise TriattnError(ERR_INVALID_ARG, f"{path}: library ABI version {lib_abi} does not match the "
                           f"bindings' TRIATTN_ABI_VERSION {header_abi}; rebuild/reinstall pytriattn")


def load():
    """(ffi, lib), loaded once per process, ABI-checked."""
    if "lib" in _state:
        return _state["ffi"], _state["lib"]
    with _lock:
        if "lib" not in _state:
            ffi, _ = _make_ffi()
            path = library_path()
            try:
                lib = ffi.dlopen(str(path))
            except OSError as e:
                raise TriattnError(ERR_INVALID_ARG, f"cannot load {path}: {e}") from None
            check_abi(int(lib.triattn_abi_version()), int(lib.TRIATTN_ABI_VERSION), path)
            _state["ffi"], _state["path"], _state["lib"] = ffi, path, lib
    return _state["ffi"], _state["lib"]


def check(status: int, message: str | None = None) -> None:
    """Turns a triattn_status into TriattnError (the single place where that happens)."""
    status = int(status)
    if status != 0:
        if not message:
            ffi, lib = load()
            message = ffi.string(lib.triattn_status_name(status)).decode("utf-8", "replace")
        raise TriattnError(status, message)


def version() -> str:
    ffi, lib = load()
    return ffi.string(lib.triattn_version()).decode()


def system_info() -> str:
    ffi, lib = load()
    return ffi.string(lib.triattn_system_info()).decode()
