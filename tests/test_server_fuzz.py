"""In-process fuzzing of triattn-server under ASan+UBSan: the HTTP parser, JSON, the endpoints (request
parsing, chat formatting, streaming) and cancellation (clients that cut the answer or vanish), over the
real model, for a bounded time with a fresh seed each run (printed; TRIATTN_FUZZ_SECONDS sets the time)."""
from __future__ import annotations

import os
import re
import subprocess

import pytest

from conftest import ROOT, _cmake_build
from test_c_units import LSAN_BROKEN

SECONDS = float(os.environ.get("TRIATTN_FUZZ_SECONDS", "60"))
SUMMARY = re.compile(r"connections (\d+), responses (\d+) \(1xx (\d+), 2xx (\d+), 3xx (\d+), 4xx (\d+), 5xx (\d+), "
                     r"none (\d+)\); completions answered (\d+), streams finished (\d+); clients: half-closed (\d+), "
                     r"cut mid-answer (\d+), vanished (\d+)")


def _run(binary, model, env):
    return subprocess.run([str(binary), "--model", str(model), "--seconds", str(SECONDS)], capture_output=True,
                          text=True, env=env, timeout=SECONDS + 600)


@pytest.mark.long
@pytest.mark.timeout(3000)
def test_server_fuzz_sanitized(default_model):
    build = _cmake_build(ROOT / "build" / "asan", "-DTRIATTN_SANITIZE=ON", "-DCMAKE_BUILD_TYPE=RelWithDebInfo")
    env = {**os.environ, "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1",
           "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0:halt_on_error=1"}
    p = _run(build / "tool_fuzz_server", default_model, env)
    if p.returncode != 0 and any(s in p.stdout + p.stderr for s in LSAN_BROKEN):
        env["ASAN_OPTIONS"] = env["ASAN_OPTIONS"].replace("detect_leaks=1", "detect_leaks=0")
        p = _run(build / "tool_fuzz_server", default_model, env)
    reports = re.findall(r"^(?:==\d+==ERROR: .*|.*runtime error: .*|SUMMARY: .*|violation: .*)$", p.stderr, re.M)
    assert p.returncode == 0, f"exit {p.returncode}\n{p.stdout[-3000:]}\n" + "\n".join(reports[:20]) + p.stderr[-6000:]
    m = SUMMARY.search(p.stdout)
    assert m, p.stdout[-2000:]
    conns, _, _, ok2, _, bad4, _, _, gen, streams, half, cut, vanished = map(int, m.groups())
    print(p.stdout)
    # every kind of traffic happened: answers and refusals, whole completions and streams, every client kind
    assert conns >= 50 and ok2 > 0 and bad4 > 0, m.group(0)
    assert gen > 0 and streams > 0 and half > 0 and cut > 0 and vanished > 0, m.group(0)
