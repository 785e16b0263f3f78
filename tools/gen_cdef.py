#!/usr/bin/env python3
"""Build step: generate the cffi cdef (and the out-of-line ABI-mode module) from include/triattn.h.

    python tools/gen_cdef.py include/triattn.h --cdef out/_triattn_cdef.h --ffi-module out/_triattn_ffi.py

The transformation itself lives in python/pytriattn/_cdefgen.py so that a source checkout can run the
same code at import time; this script loads it by path (the package needs no building to do that).
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _load_cdefgen():
    path = ROOT / "python" / "pytriattn" / "_cdefgen.py"
    spec = importlib.util.spec_from_file_location("_pytriattn_cdefgen", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _write_if_changed(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text() != text:
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("header", type=Path, help="path of include/triattn.h")
    ap.add_argument("--cdef", type=Path, help="write the cdef text here")
    ap.add_argument("--ffi-module", type=Path, help="write the cffi out-of-line ABI module here")
    args = ap.parse_args(argv)

    gen = _load_cdefgen()
    cdef = gen.generate_cdef(args.header.read_text())
    if args.cdef:
        _write_if_changed(args.cdef, cdef)
    if args.ffi_module:
        import cffi  # build requirement

        builder = cffi.FFI()
        builder.cdef(cdef)  # also validates the generated cdef
        builder.set_source("pytriattn._triattn_ffi", None)
        args.ffi_module.parent.mkdir(parents=True, exist_ok=True)
        builder.emit_python_code(str(args.ffi_module))
    if not args.cdef and not args.ffi_module:
        sys.stdout.write(cdef)
    return 0


if __name__ == "__main__":
    sys.exit(main())
