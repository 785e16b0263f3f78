"""Shared pytest fixtures: the C test build and the real default model."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _cmake_build(build_dir: Path, *extra: str, targets: tuple[str, ...] = ()) -> Path:
    """Configure and build the C project with its tests into build_dir (incremental); only targets if given."""
    build_dir.mkdir(parents=True, exist_ok=True)
    gen = ["-G", "Ninja"] if _have("ninja") else []
    subprocess.run(
        ["cmake", "-S", str(ROOT), "-B", str(build_dir), *gen,
         "-DCMAKE_BUILD_TYPE=Release", "-DTRIATTN_BUILD_TESTS=ON", *extra],
        check=True, stdout=subprocess.DEVNULL)
    jobs = str(os.cpu_count() or 2)
    subprocess.run(["cmake", "--build", str(build_dir), "-j", jobs, *(["--target", *targets] if targets else [])],
                   check=True)
    return build_dir


def sanitizer_reports(text: str) -> list[str]:
    """The ASan / UBSan report lines in a program's output."""
    return re.findall(r"^(?:==\d+==ERROR: \w+Sanitizer.*|\S+:\d+:\d+: runtime error: .*|SUMMARY: .*)$", text, re.M)


def _have(prog: str) -> bool:
    from shutil import which
    return which(prog) is not None


@pytest.fixture(scope="session")
def c_build_dir() -> Path:
    """Release build of libtriattn + C unit tests + tool_* helper programs."""
    return _cmake_build(ROOT / "build" / "ctest")


@pytest.fixture(scope="session")
def c_tool(c_build_dir):
    """Path of a tests/c/tool_*.c program built by c_build_dir."""
    def get(name: str) -> Path:
        p = c_build_dir / name
        assert p.exists(), f"{name} was not built"
        return p
    return get


def _built_binary(request, name: str, env: str) -> Path:
    """A program of the C build: the path in $env when set (a build elsewhere), else c_build_dir's."""
    override = os.environ.get(env)
    if override:
        return Path(override)
    p = request.getfixturevalue("c_build_dir") / name
    assert p.exists(), f"{name} was not built"
    return p


@pytest.fixture(scope="module")
def cli(request) -> Path:
    """triattn-cli ($TRIATTN_CLI_BIN, else the test build's)."""
    return _built_binary(request, "triattn-cli", "TRIATTN_CLI_BIN")


@pytest.fixture(scope="module")
def server_bin(request) -> Path:
    """triattn-server ($TRIATTN_SERVER_BIN, else the test build's)."""
    return _built_binary(request, "triattn-server", "TRIATTN_SERVER_BIN")


@pytest.fixture(scope="session")
def default_model() -> Path:
    """The real default model (SmolLM2-135M-Instruct Q4_1), fetched once into the cache."""
    from pytriattn._fetch import ensure_default_model
    return ensure_default_model()
