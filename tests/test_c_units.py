"""The C unit tests (tests/c/test_*.c) under ctest: a Release build and an ASan+UBSan build."""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT, _cmake_build, _have, sanitizer_reports
from pytriattn.llama import default_calibration

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


AARCH64_TOOLS = ("aarch64-linux-gnu-gcc", "qemu-aarch64")
AARCH64_RUN = ("qemu-aarch64", "-L", "/usr/aarch64-linux-gnu")  # as cmake/aarch64-linux-gnu.cmake runs the tests
# Minutes each under qemu, and nothing ARM-specific in them: every allocation failed in turn, the emulated CUDA tiles.
AARCH64_SLOW = ("test_alloc_fail", "test_cuda_atile")


def _elf_machine(path: Path) -> int:
    """e_machine of an ELF file (183: AArch64, 62: x86-64)."""
    with path.open("rb") as f:
        head = f.read(20)
    assert head[:4] == b"\x7fELF", f"{path} is not an ELF file"
    return int.from_bytes(head[18:20], "little")


@pytest.mark.long
@pytest.mark.timeout(1800)
def test_c_unit_tests_aarch64(default_model):
    """The library, the CLI and the C unit tests cross-compiled for 64-bit ARM Linux (GCC, Release) and run under
    qemu-user: the portable kernels, parsers and char-signedness-sensitive code off x86 (ARM's char is unsigned).
    The unit tests without the real model (their model parts skip: minutes under emulation), then TriAttention end
    to end through the CLI on the default model."""
    missing = [t for t in AARCH64_TOOLS if not _have(t)]
    if missing:
        why = f"{', '.join(missing)} not found (Debian: gcc-aarch64-linux-gnu, qemu-user)"
        if os.environ.get("CI"):
            pytest.fail(f"{why}; CI installs them (.ci/run)")
        pytest.skip(why)
    build = ROOT / "build" / "aarch64"
    names_all = _registered_tests(_cmake_build(
        build, f"-DCMAKE_TOOLCHAIN_FILE={ROOT / 'cmake' / 'aarch64-linux-gnu.cmake'}", targets=("triattn-cli",)))
    names = [n for n in names_all if n not in AARCH64_SLOW]
    assert "test_quants" in names and "test_ops" in names, names_all
    _cmake_build(build, targets=tuple(sorted(set(names))))
    assert _elf_machine(build / "test_quants") == 183, "the cross build did not produce AArch64 binaries"

    env = {k: v for k, v in os.environ.items() if k != "TRI_DEFAULT_MODEL"}
    p = subprocess.run(["ctest", "--output-on-failure", "--timeout", "600", "-j", str(os.cpu_count() or 2),
                        "-R", "^(" + "|".join(names) + ")$"], cwd=build, env=env, capture_output=True, text=True,
                       timeout=1500)
    assert p.returncode == 0, _failure_report(p, "AArch64 build under qemu-user")
    assert re.search(rf"100% tests passed(, 0 tests failed)? out of {len(names)}\b", p.stdout), p.stdout[-3000:]

    # The kernels each CPU gets: ARMv8.0 NEON (Cortex-A53), NEON with the dot product instructions (qemu's max,
    # where test_quants also checks the ARMv8.0 kernels against them), and the scalar ones when capped.
    runs = (("cortex-a53", None, "[neon]"), ("max", None, "[neon+dotprod]"), ("max", "scalar", "[scalar]"))
    for cpu, cap, want in runs:
        run_env = {**env, "QEMU_CPU": cpu}
        if cap:
            run_env["TRIATTN_ISA"] = cap
        p = subprocess.run([*AARCH64_RUN, str(build / "test_quants")], env=run_env, capture_output=True, text=True,
                           timeout=600)
        assert p.returncode == 0 and want in p.stdout.splitlines()[0], (cpu, cap, p.stdout[-3000:] + p.stderr[-2000:])

    # TriAttention end to end: a 49-token prompt into a budget of 24 slots, a round every 8 tokens, during the
    # prefill and the decode; on qemu's max CPU (dot product instructions) the weights are repacked into groups of
    # 8 rows for the x8 kernels, and the same run with the GGUF layout (TRIATTN_REPACK=0, the vec_dot row by row)
    # must give the same tokens.
    prompt = ("Paris is the capital and largest city of France. The city stands on the Seine, in the north of the "
              "country, at the heart of the Ile-de-France region. Question: what is the capital of France? Answer:")
    outs = {}
    for repack in ("1", "0"):
        p = subprocess.run([*AARCH64_RUN, str(build / "triattn-cli"), "-m", str(default_model), "-p", prompt, "-n", "24",
                            "--temp", "0", "--ignore-eos", "--kv-policy", "triattention", "--kv-budget", "24",
                            "--kv-interval", "8", "--kv-window", "8", "--calibration", str(default_calibration()), "-v"],
                           env={**env, "QEMU_CPU": "max", "TRIATTN_REPACK": repack}, capture_output=True, text=True,
                           timeout=600)
        assert p.returncode == 0, p.stderr[-3000:]
        assert "Paris" in p.stdout, p.stdout
        assert "[neon+dotprod]" in p.stderr, p.stderr[-2000:]
        assert ("repacked" in p.stderr) == (repack == "1"), p.stderr[-2000:]
        rounds = re.search(r"(\d+) compressions, (\d+) evicted", p.stderr)
        assert rounds and int(rounds[1]) > 0 and int(rounds[2]) > 0, p.stderr[-2000:]
        outs[repack] = p.stdout
    assert outs["1"] == outs["0"], outs


MINGW_TOOLS = ("x86_64-w64-mingw32-gcc-posix", "x86_64-w64-mingw32-objdump")


def _wine() -> str | None:
    """Wine's 64-bit loader (Debian's wine64 puts it outside PATH), with its wineserver beside it."""
    from shutil import which
    for cand in ("wine64", "/usr/lib/wine/wine64", "wine"):
        found = which(cand)
        if found and Path(found).with_name("wineserver").exists():
            return found
    return None


@pytest.mark.long
@pytest.mark.timeout(1800)
def test_c_unit_tests_windows(default_model, c_build_dir, tmp_path):
    """The library (a DLL exporting exactly triattn.h's functions and needing no MinGW runtime DLL), the CLI and the C
    unit tests cross-compiled for 64-bit Windows with MinGW-w64 (`cmake/x86_64-w64-mingw32.cmake`) and run under
    Wine: every unit test, real-model parts included (session files saved over older ones, mapped GGUF files), then
    a TriAttention generation through the CLI from a model under a non-ASCII path (the arguments reach the library as
    UTF-8, the query centres are found by name beside it), with the same tokens as the native CLI's; then
    triattn-server.exe (Winsock) with the openai client: a chat answer streamed and not, clients vanishing mid-stream
    (every slot freed), a half-closed client answered."""
    wine = _wine()
    missing = [t for t in MINGW_TOOLS if not _have(t)] + ([] if wine else ["wine64"])
    if missing:
        why = f"{', '.join(missing)} not found (Debian: gcc-mingw-w64-x86-64, wine64)"
        if os.environ.get("CI"):
            pytest.fail(f"{why}; CI installs them (.ci/run)")
        pytest.skip(why)
    build = _cmake_build(ROOT / "build" / "mingw",
                         f"-DCMAKE_TOOLCHAIN_FILE={ROOT / 'cmake' / 'x86_64-w64-mingw32.cmake'}")
    names = _registered_tests(build)
    assert "test_quants" in names and "test_session_state" in names, names

    env = {**os.environ, "WINEPREFIX": str(build / "wineprefix"), "WINEDEBUG": "-all", "LC_ALL": "C.UTF-8",
           "TRI_DEFAULT_MODEL": str(default_model)}
    # the prefix is made once, before the tests run in parallel (Wine processes starting together on a new prefix
    # race for its server)
    subprocess.run([wine, "wineboot", "--init"], env=env, capture_output=True, timeout=300, check=True)
    subprocess.run([str(Path(wine).with_name("wineserver")), "-w"], env=env, capture_output=True, timeout=300)
    p = _ctest(build, env=env, timeout=1500)
    assert p.returncode == 0, _failure_report(p, "Windows build under Wine")
    assert re.search(rf"100% tests passed(, 0 tests failed)? out of {len(names)}\b", p.stdout), p.stdout[-3000:]
    log = (build / "Testing" / "Temporary" / "LastTest.log").read_text(errors="replace")
    assert "skip: real model" not in log and "real vocab:" in log, log[-3000:]

    dll = subprocess.run(["x86_64-w64-mingw32-objdump", "-p", str(build / "libtriattn.dll")], capture_output=True,
                         text=True, check=True).stdout
    imports = {d.lower() for d in re.findall(r"DLL Name: (\S+)", dll)}
    assert imports <= {"kernel32.dll", "msvcrt.dll"}, imports
    exports = set(re.findall(r"^\s*\[\s*\d+\]\s+(\w+)\s*$", dll.split("[Ordinal/Name Pointer] Table", 1)[1], re.M))
    header = (ROOT / "include" / "triattn.h").read_text()
    api = set(re.findall(r"^TRIATTN_API\b[^;(]*?\b(triattn_\w+)\s*\(", header, re.M))
    assert api and exports == api, (sorted(exports - api), sorted(api - exports))

    # the model and its query centres (found by name beside it) under a folder whose name is not ASCII
    folder = tmp_path / "modèles ü"
    folder.mkdir()
    model, centres = folder / "m.gguf", folder / "m.tri-stats.gguf"
    for src, dst in ((default_model, model), (default_calibration(), centres)):
        try:
            os.link(src, dst)
        except OSError:
            import shutil
            shutil.copyfile(src, dst)
    prompt = ("Paris is the capital and largest city of France. The city stands on the Seine, in the north of the "
              "country, at the heart of the Ile-de-France region. Question: what is the capital of France? Answer:")
    args = ["-p", prompt, "-n", "24", "--temp", "0", "--ignore-eos", "--kv-policy", "triattention", "--kv-budget", "24",
            "--kv-interval", "8", "--kv-window", "8", "-v"]
    win = subprocess.run([wine, str(build / "triattn-cli.exe"), "-m", str(model), *args], env=env,
                         capture_output=True, text=True, encoding="utf-8", timeout=600)
    assert win.returncode == 0, win.stderr[-3000:]
    assert f"calibration: {folder}/m.tri-stats.gguf" in win.stderr, win.stderr[-3000:]
    rounds = re.search(r"(\d+) compressions, (\d+) evicted", win.stderr)
    assert rounds and int(rounds[1]) > 0 and int(rounds[2]) > 0, win.stderr[-2000:]
    native = subprocess.run([str(c_build_dir / "triattn-cli"), "-m", str(default_model), *args, "--calibration",
                             str(default_calibration())], capture_output=True, text=True, timeout=600)
    assert native.returncode == 0, native.stderr[-3000:]
    assert "Paris" in native.stdout and win.stdout.replace("\r\n", "\n") == native.stdout, (win.stdout, native.stdout)

    # triattn-server.exe under Wine (Winsock), driven by the openai client and raw sockets as on Linux
    import json
    import socket
    import time

    import openai
    from test_server import Server

    launcher = tmp_path / "triattn-server-wine"
    launcher.write_text(f'#!/bin/sh\nexec "{wine}" "{build / "triattn-server.exe"}" "$@"\n')
    launcher.chmod(0o755)
    srv = Server(launcher, default_model, "--timeout", "3", env=env)
    try:
        client = openai.OpenAI(base_url=srv.base + "/v1", api_key="unused", timeout=120, max_retries=0)
        assert srv.healthy() and [m.id for m in client.models.list().data] == ["smol"]
        msgs = [{"role": "user", "content": "What is the largest ocean on Earth?"}]
        whole = client.chat.completions.create(model="smol", messages=msgs, temperature=0, max_tokens=32)
        text = whole.choices[0].message.content
        streamed = client.chat.completions.create(model="smol", messages=msgs, temperature=0, max_tokens=32,
                                                  stream=True)
        assert "Pacific" in text and "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == text
        # clients that vanish mid-stream, more of them than --parallel 4: every slot comes back
        body = json.dumps({"prompt": "Tell me a long story.", "max_tokens": 400, "stream": True, "temperature": 0,
                           "ignore_eos": True}).encode()
        for _ in range(5):
            with socket.create_connection((srv.host, srv.port), timeout=30) as sock:
                sock.sendall(b"POST /v1/completions HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
                assert sock.recv(64).startswith(b"HTTP/1.1 200")
        deadline, slots = time.time() + 30, []
        while time.time() < deadline:
            slots = json.loads(srv.request("GET", "/slots")[1])
            if all(x["state"] == "idle" for x in slots):
                break
            time.sleep(0.2)
        assert slots and all(x["state"] == "idle" for x in slots), slots
        # a client that half-closes after its request still gets the answer
        req = json.dumps({"prompt": "The sky is", "max_tokens": 2, "temperature": 0}).encode()
        with socket.create_connection((srv.host, srv.port), timeout=60) as sock:
            sock.sendall(b"POST /v1/completions HTTP/1.1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n"
                         % len(req) + req)
            sock.shutdown(socket.SHUT_WR)
            out = b""
            while chunk := sock.recv(65536):
                out += chunk
        assert b"HTTP/1.1 200" in out and b'"completion_tokens":2' in out, out[:300]
    finally:
        srv.close()
