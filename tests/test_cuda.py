"""The CUDA backend (docs/cuda.md).

Always: the n_gpu_layers contract of a build without CUDA (CPU with a warning, partial offload refused).
With nvcc: the CUDA build in build/cuda (sm_80 + sm_90; .ci/run builds it first, here it is only brought up to
date), its shape (static CUDA runtime, nothing but triattn_* exported), and the CPU fallback of that build when
no device is present. With a device: op-by-op parity against the CPU reference (tool_cuda parity), greedy text
of every weight type on tiny random models equal to the CPU's, the default model with full attention and with
TriAttention rounds on the device, and a per-op micro-benchmark. GPU tests skip with "no CUDA device".
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tinymodels import write_tiny_model

ROOT = Path(__file__).resolve().parent.parent
CUDA_BUILD = ROOT / "build" / "cuda"
CUDA_ARCHS = "80;90"

SEED = int(os.environ.get("TRI_TEST_SEED", time.time_ns() % 2**31))


def _nvcc() -> str | None:
    found = shutil.which("nvcc")
    if found:
        return found
    for p in ("/usr/local/cuda/bin/nvcc",):
        if os.access(p, os.X_OK):
            return p
    return None


@pytest.fixture(scope="session")
def cuda_build() -> Path:
    """build/cuda with -DTRIATTN_CUDA=ON (incremental: .ci/run has usually built it already)."""
    nvcc = _nvcc()
    if not nvcc:
        pytest.skip("nvcc not found: the CUDA backend cannot be compiled on this machine")
    CUDA_BUILD.mkdir(parents=True, exist_ok=True)
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    extra = [] if shutil.which("nvcc") else [f"-DCMAKE_CUDA_COMPILER={nvcc}"]
    subprocess.run(["cmake", "-S", str(ROOT), "-B", str(CUDA_BUILD), *gen, "-DCMAKE_BUILD_TYPE=Release",
                    "-DTRIATTN_BUILD_TESTS=ON", "-DTRIATTN_CUDA=ON", f"-DTRIATTN_CUDA_ARCHS={CUDA_ARCHS}", *extra],
                   check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["cmake", "--build", str(CUDA_BUILD), "-j", str(os.cpu_count() or 2)], check=True)
    return CUDA_BUILD


def _tool_info(build: Path) -> dict:
    p = subprocess.run([str(build / "tool_cuda"), "info"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    return json.loads(p.stdout)


@pytest.fixture(scope="session")
def cuda_device(cuda_build) -> dict:
    info = _tool_info(cuda_build)
    if info["devices"] <= 0:
        pytest.skip(f"no CUDA device ({info['reason']})")
    return info


def _run_py(lib: Path, code: str, *args, timeout: int = 600) -> tuple[dict, str]:
    """Runs code in a fresh interpreter on library lib; returns (its last stdout line as JSON, stderr)."""
    env = dict(os.environ, PYTRIATTN_LIB=str(lib), TRI_TEST_SEED=str(SEED))
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "python"), env.get("PYTHONPATH", "")])
    p = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, env=env,
                       timeout=timeout)
    assert p.returncode == 0, f"seed {SEED}\n{p.stdout}\n{p.stderr}"
    return json.loads(p.stdout.strip().splitlines()[-1]), p.stderr


# Greedy continuation of a random prompt with n_gpu_layers = 0 and then = ngl, in one process.
GREEDY = r"""
import json, random, sys
import numpy as np
from pytriattn import Llama, TriattnError
path, ngl, n_gen, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
out = {}
for name, layers in (("cpu", 0), ("req", ngl)):
    try:
        llm = Llama(path, n_ctx=512, n_batch=64, kv_policy="full", n_gpu_layers=layers)
    except TriattnError as e:
        out[name] = {"error": e.code, "message": e.message}
        continue
    rng = random.Random(seed)
    prompt = [rng.randrange(llm.n_vocab()) for _ in range(40)]
    logits = llm.eval(prompt)
    toks, rows = [], [logits[-1]]
    for _ in range(n_gen):
        t = int(np.argmax(rows[-1]))
        toks.append(t)
        rows.append(llm.eval([t])[0])
    out[name] = {"backend": llm.backend, "tokens": toks, "prefill": logits.tolist(), "last": rows[-1].tolist()}
    llm.close()
print(json.dumps(out))
"""


def _tiny(tmp_path: Path, arch: str, wtype: str, **kw) -> Path:
    return write_tiny_model(tmp_path / f"{arch}-{wtype}.gguf", arch, wtype=wtype, seed=SEED % 1000, **kw)


def _cos(a, b) -> float:
    import numpy as np
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(a.ravel() @ b.ravel() / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))


# ---- always: the contract of a library built without CUDA ---------------------------------------------------

def test_cpu_build_gpu_request_runs_on_cpu_and_refuses_partial_offload(c_build_dir, tmp_path):
    model = _tiny(tmp_path, "llama", "Q8_0", n_layer=3)
    lib = c_build_dir / "libtriattn.so"
    res, err = _run_py(lib, GREEDY, model, -1, 6, SEED)
    assert res["req"]["backend"] == "cpu" and res["cpu"]["backend"] == "cpu"
    assert "built without CUDA" in err, err
    assert res["req"]["tokens"] == res["cpu"]["tokens"]
    res, _ = _run_py(lib, GREEDY, model, 3, 2, SEED)       # >= n_layer: the whole model, so allowed
    assert res["req"]["backend"] == "cpu"
    res, _ = _run_py(lib, GREEDY, model, 2, 2, SEED)       # partial offload
    assert res["req"]["error"] == 3 and "partial offload is not supported" in res["req"]["message"]
    res, _ = _run_py(lib, GREEDY, model, -2, 2, SEED)
    assert res["req"]["error"] == 4


# ---- with nvcc: the CUDA build ------------------------------------------------------------------------------

def test_cuda_build_compiles_for_sm80_and_sm90(cuda_build):
    lib = cuda_build / "libtriattn.so"
    assert lib.is_file() and (cuda_build / "tool_cuda").is_file()
    ninja = cuda_build / "build.ninja"
    rules = ninja.read_text() if ninja.is_file() else ""
    if rules:
        assert "compute_80" in rules and "compute_90" in rules
    # The static CUDA runtime: the library loads on machines without libcudart (and without a driver).
    dyn = subprocess.run(["readelf", "-d", str(lib)], capture_output=True, text=True, check=True).stdout
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", dyn)
    assert needed and not any("cudart" in n or n.startswith("libcuda.") for n in needed), needed
    syms = subprocess.run(["nm", "-D", "--defined-only", str(lib)], capture_output=True, text=True, check=True).stdout
    exported = [line.split()[-1] for line in syms.splitlines() if " T " in line]
    assert "triattn_cuda_available" in exported and "triattn_backend_name" in exported
    assert not [s for s in exported if s.startswith("tri_")], "internal symbols leak out of libtriattn"


def test_tool_cuda_info(cuda_build):
    info = _tool_info(cuda_build)
    assert info["devices"] >= 0
    assert info["cuda_available"] == (info["devices"] > 0)
    if info["devices"] == 0:
        assert info["reason"], "a missing device must say why"
    else:
        assert info["device0"]


def test_cuda_build_gpu_request(cuda_build, tmp_path):
    """Without a device: the CPU with one warning and the CPU's exact tokens. With one: the GPU."""
    info = _tool_info(cuda_build)
    model = _tiny(tmp_path, "qwen2", "Q4_1")
    res, err = _run_py(cuda_build / "libtriattn.so", GREEDY, model, -1, 8, SEED)
    assert res["cpu"]["backend"] == "cpu"
    if info["devices"] == 0:
        assert res["req"]["backend"] == "cpu"
        assert "no CUDA device is usable" in err, err
        assert res["req"]["tokens"] == res["cpu"]["tokens"]
    else:
        assert res["req"]["backend"] == "cuda"


# ---- with a device ------------------------------------------------------------------------------------------

def test_cuda_op_parity(cuda_build, cuda_device):
    env = dict(os.environ, TRI_TEST_SEED=str(SEED))
    p = subprocess.run([str(cuda_build / "tool_cuda"), "parity"], capture_output=True, text=True, timeout=600, env=env)
    print(p.stdout)
    assert p.returncode == 0 and re.search(r"^\d+ passed, 0 failed$", p.stdout, re.M), p.stdout + p.stderr
    ops = {json.loads(line)["op"] for line in p.stdout.splitlines() if line.startswith("{")}
    for op in ("dequantize", "matmul_vec", "matmul_tiled", "get_rows", "rmsnorm", "rope", "softmax", "attention",
               "kv_append", "kv_gather", "triattn_score", "triattn_zscore", "triattn_gqa_max", "triattn_layer_mean",
               "topk"):
        assert op in ops, f"{op} was not checked"


E2E_CASES = [
    ("llama", "Q4_1"), ("qwen2", "Q8_0"), ("qwen3", "Q4_K"), ("llama", "Q6_K"), ("qwen2", "F16"), ("llama", "Q5_0"),
    ("qwen3", "BF16"), ("llama", "Q2_K"), ("qwen2", "Q3_K"), ("llama", "Q5_K"), ("qwen3", "Q4_0"), ("qwen2", "Q5_1"),
    ("llama", "F32"),
]


@pytest.mark.parametrize("arch,wtype", E2E_CASES, ids=[f"{a}-{w}" for a, w in E2E_CASES])
def test_cuda_greedy_matches_cpu_tiny(cuda_build, cuda_device, tmp_path, arch, wtype):
    model = _tiny(tmp_path, arch, wtype, tied=wtype in ("Q8_0", "Q6_K"), rope_freqs=wtype == "Q4_K")
    res, _ = _run_py(cuda_build / "libtriattn.so", GREEDY, model, -1, 24, SEED)
    cpu, gpu = res["cpu"], res["req"]
    assert gpu["backend"] == "cuda"
    assert _cos(cpu["prefill"], gpu["prefill"]) > 0.995, f"seed {SEED}"
    assert gpu["tokens"] == cpu["tokens"], f"seed {SEED}"
    assert _cos(cpu["last"], gpu["last"]) > 0.995, f"seed {SEED}"


# The default model, teacher-forced on the CPU's greedy text so one near-tie cannot derail the comparison; with
# TriAttention a small budget makes the rounds run on the device while the prompt is prefilled and generated.
DEFAULT_E2E = r"""
import json, sys
import numpy as np
from pytriattn import Llama
policy, n_gen = sys.argv[1], int(sys.argv[2])
kw = dict(n_ctx=4096, n_batch=128, kv_policy=policy)
if policy == "triattention":
    kw.update(kv_budget=96, kv_interval=32, kv_window=16, kv_sink=4)
text = ("The old lighthouse keeper climbed the spiral stairs every evening to light the lamp. "
        "Ships passing the rocky coast relied on its beam, and for forty years it never failed. ") * 3
res = {}
ref_tokens = None
for name, ngl in (("cpu", 0), ("gpu", -1)):
    llm = Llama(None, n_gpu_layers=ngl, **kw)
    prompt = llm.tokenize(text)
    llm.decode(prompt[:-1])                # chunked prefill (with rounds between chunks under a small budget)
    rows = [llm.eval(prompt[-1:])[0]]
    toks = []
    for i in range(n_gen):
        t = int(np.argmax(rows[-1])) if ref_tokens is None else ref_tokens[i]
        toks.append(t)
        rows.append(llm.eval([t])[0])
    ref_tokens = ref_tokens or toks
    pos = llm.kv_positions()
    res[name] = {"backend": llm.backend, "rows": np.array(rows).tolist(), "stats": llm.kv_stats(),
                 "positions": pos.tolist()}
    llm.close()
print(json.dumps(res))
"""


def _agreement(cpu_rows, gpu_rows, margin: float) -> tuple[float, list[float]]:
    """Top-1 agreement, and the CPU's logit gap at every disagreement (a near-tie when below margin)."""
    import numpy as np
    c, g = np.asarray(cpu_rows), np.asarray(gpu_rows)
    ca, ga = c.argmax(1), g.argmax(1)
    gaps = [float(c[i, ca[i]] - c[i, ga[i]]) for i in range(len(ca)) if ca[i] != ga[i]]
    return float((ca == ga).mean()), [x for x in gaps if x >= margin]


@pytest.mark.parametrize("policy", ["full", "triattention"])
def test_cuda_default_model(cuda_build, cuda_device, default_model, policy):
    res, _ = _run_py(cuda_build / "libtriattn.so", DEFAULT_E2E, policy, 80)
    cpu, gpu = res["cpu"], res["gpu"]
    assert gpu["backend"] == "cuda"
    agree, big_gaps = _agreement(cpu["rows"], gpu["rows"], margin=1.0)
    print(f"default model, {policy}: top-1 agreement {agree:.3f}, stats cpu {cpu['stats']} gpu {gpu['stats']}")
    assert _cos(cpu["rows"], gpu["rows"]) > 0.98
    assert agree >= 0.9 and not big_gaps, (agree, big_gaps)
    for key in ("n_past", "capacity", "live_min", "live_max", "n_compressions"):
        assert cpu["stats"][key] == gpu["stats"][key], key
    if policy == "triattention":
        assert gpu["stats"]["n_compressions"] >= 2
        # Same protections and budget; the ranking may differ only near ties of the scores.
        overlaps = []
        for cl, gl in zip(cpu["positions"], gpu["positions"]):
            for ch, gh in zip(cl, gl):
                a, b = {p for p in ch if p >= 0}, {p for p in gh if p >= 0}
                overlaps.append(len(a & b) / max(1, len(a | b)))
        assert sum(overlaps) / len(overlaps) > 0.8


def test_cuda_bench(cuda_build, cuda_device):
    p = subprocess.run([str(cuda_build / "tool_cuda"), "bench", "7"], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    rows = [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]
    print(f"\n{cuda_device['device0']}")
    for r in rows:
        print(f"  {r['op']:<20} {r['shape']:<56} {r['us']:9.2f} us")
    assert {r["op"] for r in rows} >= {"matmul_vec", "matmul_tiled", "attention", "triattn_score", "topk"}
    assert all(r["us"] > 0 for r in rows)
