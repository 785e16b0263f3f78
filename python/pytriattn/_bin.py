"""`triattn-cli` and `triattn-server` on PATH: console entry points that replace their own process with the
program shipped in the package (pytriattn/bin/), so arguments, exit status and signals are the program's own.

Without -m the programs open the default model from pytriattn's cache themselves; the entry point only
downloads it first when the cache lacks it (what `Llama()` does). The programs find the default model's
query centres by name in the package's data folder (tools/common/model_files.c), with no Python involved.
"""
from __future__ import annotations

import os
import sys

from ._errors import TriattnError

_NO_MODEL_NEEDED = ("-m", "--model", "-h", "--help")


def exec_program(name: str, args: list[str], prog: str | None = None) -> int:
    """Replaces this process with the packaged program `name` run with args; returns 1 after a printed error."""
    from ._lib import binary_path

    prog = prog or name
    try:
        exe = str(binary_path(name))
        if not any(a in _NO_MODEL_NEEDED for a in args):
            from ._fetch import ensure_default_model
            ensure_default_model(progress=True)
    except TriattnError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(exe, [exe, *args])
    return 1  # not reached


def cli_main() -> int:
    return exec_program("triattn-cli", sys.argv[1:])


def server_main() -> int:
    return exec_program("triattn-server", sys.argv[1:])
