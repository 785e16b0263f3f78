"""The C unit tests (tests/c/test_*.c) under ctest: a Release build and an ASan+UBSan build."""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT, _cmake_build, sanitizer_reports

LSAN_BROKEN = ("LeakSanitizer has encountered a fatal error", "LeakSanitizer does not work under ptrace")


def _registered_tests(build: Path) -> list[str]:
    out = subprocess.run(["ctest", "-N"], cwd=build, capture_output=True, text=True, check=True).stdout
    return re.findall(r"Test\s+#\d+:\s+(\S+)", out)


def _ctest(build: Path, env: dict | None = None, timeout: int = 1500) -> subprocess.CompletedProcess:
    jobs = str(os.cpu_count() or 2)
    return subprocess.run(["ctest", "--output-on-failure", "--timeout", "900", "-j", jobs], cwd=build,
                          env=env, capture_output=True, text=True, timeout=timeout)


def _failure_report(p: subprocess.CompletedProcess, what: str) -> str:
    out = p.stdout + p.stderr
    failed = re.findall(r"\d+ - (\S+) \(([^)]*)\)", out)
    sanitizer = sanitizer_reports(out)
    head = f"{what}: ctest exit {p.returncode}; failed: {failed or '?'}"
    if sanitizer:
        head += "\nsanitizer reports:\n  " + "\n  ".join(sanitizer[:20])
    return head + "\n---- ctest output (tail) ----\n" + out[-12000:]


def test_c_unit_tests_release(c_build_dir, default_model):
    names = _registered_tests(c_build_dir)
    assert names, "no C unit tests are registered with ctest (tests/c/test_*.c)"
    # each fuzz target replays its corpus (tests/fuzz/corpus/<name>) as a ctest
    targets = sorted(p.stem for p in (ROOT / "tests" / "fuzz").glob("fuzz_*.c"))
    assert targets and set(targets) <= set(names), f"fuzz targets without a ctest: {set(targets) - set(names)}"
    # The Release run also exercises the C tests' real-model parts (TriAttention end to end).
    p = _ctest(c_build_dir, env={**os.environ, "TRI_DEFAULT_MODEL": str(default_model)})
    assert p.returncode == 0, _failure_report(p, "Release build")
    assert re.search(r"100% tests passed", p.stdout), p.stdout[-2000:]


@pytest.mark.long
@pytest.mark.timeout(3000)
def test_c_unit_tests_sanitized(default_model):
    """ASan + UBSan (RelWithDebInfo) build of the same tests; leak checking where the sandbox allows it."""
    build = _cmake_build(ROOT / "build" / "asan", "-DTRIATTN_SANITIZE=ON", "-DCMAKE_BUILD_TYPE=RelWithDebInfo")
    assert _registered_tests(build), "no C unit tests are registered with ctest"
    base = {**os.environ,
            "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1",
            "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0:halt_on_error=1:strict_string_checks=1"}
    p = _ctest(build, env=base, timeout=2800)
    note = ""
    if p.returncode != 0 and any(s in p.stdout + p.stderr for s in LSAN_BROKEN):
        # LeakSanitizer cannot run in some sandboxes (ptrace restrictions): keep ASan/UBSan, drop leaks.
        note = " (LeakSanitizer unavailable here; leak checks off)"
        base["ASAN_OPTIONS"] = base["ASAN_OPTIONS"].replace("detect_leaks=1", "detect_leaks=0")
        p = _ctest(build, env=base, timeout=2800)
    assert p.returncode == 0, _failure_report(p, "ASan+UBSan build" + note)
    # the tokenizer's fuzz corpus needs the real model, which the ctest run above leaves out
    p = subprocess.run([str(build / "fuzz_tokenize"), str(ROOT / "tests" / "fuzz" / "corpus" / "tokenize.b64")],
                       env={**base, "TRI_DEFAULT_MODEL": str(default_model)}, capture_output=True, text=True,
                       timeout=600)
    out = p.stdout + p.stderr
    assert p.returncode == 0 and "inputs replayed" in out and "skip" not in out, (
        "fuzz_tokenize under ASan+UBSan:\n" + "\n".join(sanitizer_reports(out)[:20]) + "\n" + out[-4000:])
