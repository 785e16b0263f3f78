"""Stand-in programs for the benchmark scripts' tests: small Python scripts written as executables."""
from __future__ import annotations

import sys
from pathlib import Path


def write_program(path: Path, source: str) -> Path:
    """An executable at path running source (a template whose {py} is replaced by this Python)."""
    path.write_text(source.replace("{py}", sys.executable, 1))
    path.chmod(0o755)
    return path
