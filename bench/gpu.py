#!/usr/bin/env python3
"""The GPU benchmark in one run: random-weight models of real shapes written on the spot, then `triattn-cli --bench`
on the device for the table of docs/results.md "GPU".

  python bench/gpu.py --cli build/cuda/triattn-cli --out bench/out/gpu      # everything (about 6 minutes on an H200)
  python bench/gpu.py --cli ... --only 1b                                    # the 1.1B-shaped model only
  python bench/gpu.py --smoke --cli build/ctest/triattn-cli                  # a tiny model on whatever device (CI)

Models (random Q4_K blocks with set scales, output Q6_K, tokenizer of byte tokens and padding, synthetic
TriAttention centres: the weights carry no language, so this measures speed and memory, not quality):
  1b   Llama-shaped 1.1B: n_embd 2048, 32 / 8 heads of 64, 16 layers, n_ff 8192, vocab 32000
  32b  Qwen2.5-32B-shaped: n_embd 5120, 40 / 8 heads of 128, 64 layers, n_ff 27648, vocab 152064

Runs (each a triattn-cli process; JSON rows collected):
  32b under a 24 GiB device-memory cap, full and triattention (budget 2048): as many sessions as fit (-np fit) at
      16K, 32K and 64K context, tg32 each (full attention: refused at 32K and 64K); the 64K sessions decode to
      their n_ctx.
  1b: pp512 (also at depth) and tg64 at depths 0, 4096, 16384, 32768, full and triattention (budget 2048); tg32 at
      depth 4096 with 1, 8 and 16 sessions decoding together (-np), full and triattention; then the kernel choices
      measured in the same run (environment variables of the CUDA backend, docs/cuda.md): pp512 at depth 0 and 16384
      with the fp32 attention kernel (TRIATTN_CUDA_ATT_MMA_MIN=0), pp512 with the products on integer tensor cores
      (TRIATTN_CUDA_MQ_MAX=4096) with L1 prefetch hints in the fp16 products (TRIATTN_CUDA_TC_PREFETCH=1) and with
      smaller token tiles where a product has few blocks (TRIATTN_CUDA_TC_FILL=1), tg64 at depth 0 with plain
      launches (TRIATTN_CUDA_PDL=0), tg64 at depth 0 and 32768 with decode attention merged by a second kernel
      (TRIATTN_CUDA_ATT_FUSED=0), and the sessions rows with matrix-vector products only (TRIATTN_CUDA_MQ_MIN=33)
      and with integer tensor cores from 2 sessions (TRIATTN_CUDA_MQ_MIN=2); and where the time goes: device
      milliseconds per phase of the prefill and decode steps (TRIATTN_CUDA_PROFILE=1) at depth 0, at depth 16384,
      and for 16 sessions at depth 4096.
  llama.cpp on the same 1b file, when --peer holds its CUDA build (python bench/llamacpp.py cuda --out .peer):
      llama-bench -ngl 99 -fa 1 -p 512 -n 64 at the same depths, llama-batched-bench -npp 4096 -ntg 32 -npl 1,8,16.
Prints a markdown table, the targets' ratios (each of two medians of this run) and the profile table, and writes
results.json (and the raw outputs) to --out.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

SHAPES = {
    "1b": dict(arch="llama", n_embd=2048, n_head=32, n_head_kv=8, head_dim=64, n_layer=16, n_ff=8192,
               n_vocab=32000, rope_base=10000.0),
    "32b": dict(arch="qwen2", n_embd=5120, n_head=40, n_head_kv=8, head_dim=128, n_layer=64, n_ff=27648,
                n_vocab=152064, rope_base=1000000.0),
    "smoke": dict(arch="llama", n_embd=256, n_head=4, n_head_kv=2, head_dim=64, n_layer=2, n_ff=512,
                  n_vocab=512, rope_base=10000.0),
}

# GGUF value types and ggml tensor types used here
T_U32, T_F32, T_STR, T_ARR, T_I32 = 4, 6, 8, 9, 5
Q4_K, Q6_K, F32 = 12, 14, 0
BLOCK = {Q4_K: (256, 144), Q6_K: (256, 210), F32: (1, 4)}


def _s(x: str) -> bytes:
    b = x.encode()
    return struct.pack("<Q", len(b)) + b


def _kv(key: str, t: int, v) -> bytes:
    out = _s(key) + struct.pack("<I", t)
    if t == T_STR:
        return out + _s(v)
    if t == T_U32:
        return out + struct.pack("<I", v)
    if t == T_F32:
        return out + struct.pack("<f", v)
    et, vals = v
    out += struct.pack("<IQ", et, len(vals))
    if et == T_STR:
        return out + b"".join(_s(x) for x in vals)
    return out + np.asarray(vals, dtype="<f4" if et == T_F32 else "<i4").tobytes()


def _byte_chars() -> list[str]:
    """The 256 byte-level BPE characters (GPT-2's mapping: printable bytes as themselves, the rest from U+0100)."""
    keep = set(range(0x21, 0x7f)) | set(range(0xa1, 0xad)) | set(range(0xae, 0x100))
    out, extra = [], 0
    for b in range(256):
        if b in keep:
            out.append(chr(b))
        else:
            out.append(chr(256 + extra))
            extra += 1
    return out


def _pool(qtype: int, n_in: int, n_blocks: int, rng) -> np.ndarray:
    """Random blocks of qtype whose values have about std 1/sqrt(n_in) and mean 0 (scales set per block type)."""
    bs, ts = BLOCK[qtype]
    blocks = np.frombuffer(rng.bytes(n_blocks * ts), dtype=np.uint8).reshape(n_blocks, ts).copy()
    if qtype == Q4_K:   # d * sc * q - dmin * mn, sc, mn in 0..63, q in 0..15
        d = 1.0 / (np.sqrt(n_in) * 300.0)
        blocks[:, 0:2] = np.frombuffer(np.float16(d).tobytes(), np.uint8)
        blocks[:, 2:4] = np.frombuffer(np.float16(7.5 * d).tobytes(), np.uint8)
    else:               # Q6_K: d * sc * (q - 32), sc int8
        blocks[:, 208:210] = np.frombuffer(np.float16(1.0 / (np.sqrt(n_in) * 1400.0)).tobytes(), np.uint8)
    return blocks.reshape(-1)


def write_model(path: Path, shape: dict, seed: int = 0) -> Path:
    """A loadable GGUF of the shape with random Q4_K weights (output Q6_K) and synthetic centres, written fast:
    one pool of random blocks per scale, reused (the bytes' provenance does not matter to a speed test)."""
    rng = np.random.default_rng(seed)
    a, E, H, Hkv, D = shape["arch"], shape["n_embd"], shape["n_head"], shape["n_head_kv"], shape["head_dim"]
    L, FF, V = shape["n_layer"], shape["n_ff"], shape["n_vocab"]
    F = D // 2
    tokens = _byte_chars() + ["\u0120t", "<|endoftext|>"]
    tokens += [f"[PAD{i}]" for i in range(V - len(tokens))]
    types = [1] * 257 + [3] + [5] * (V - 258)
    c_re = rng.normal(0.0, 1.0, L * H * F).astype(np.float32)
    c_im = rng.normal(0.0, 1.0, L * H * F).astype(np.float32)
    kvs = [
        _kv("general.architecture", T_STR, a), _kv("general.name", T_STR, f"random-{a}-{L}x{E}"),
        _kv(f"{a}.context_length", T_U32, 131072), _kv(f"{a}.embedding_length", T_U32, E),
        _kv(f"{a}.block_count", T_U32, L), _kv(f"{a}.feed_forward_length", T_U32, FF),
        _kv(f"{a}.attention.head_count", T_U32, H), _kv(f"{a}.attention.head_count_kv", T_U32, Hkv),
        _kv(f"{a}.rope.dimension_count", T_U32, D), _kv(f"{a}.rope.freq_base", T_F32, shape["rope_base"]),
        _kv(f"{a}.attention.layer_norm_rms_epsilon", T_F32, 1e-6),
        _kv("tokenizer.ggml.model", T_STR, "gpt2"), _kv("tokenizer.ggml.pre", T_STR, "default"),
        _kv("tokenizer.ggml.tokens", T_ARR, (T_STR, tokens)), _kv("tokenizer.ggml.token_type", T_ARR, (T_I32, types)),
        _kv("tokenizer.ggml.merges", T_ARR, (T_STR, ["\u0120 t"])),
        _kv("tokenizer.ggml.bos_token_id", T_U32, 257), _kv("tokenizer.ggml.eos_token_id", T_U32, 257),
        # synthetic centres: enough for the triattention policy to run its rounds at full cost
        _kv("triattention.format_version", T_U32, 1), _kv("triattention.architecture", T_STR, a),
        _kv("triattention.n_layer", T_U32, L), _kv("triattention.n_head", T_U32, H),
        _kv("triattention.n_head_kv", T_U32, Hkv), _kv("triattention.rope_dim", T_U32, D),
        _kv("triattention.freq_count", T_U32, F),
        _kv("triattention.rope_pairing", T_STR, "adjacent" if a == "llama" else "half"),
        _kv("triattention.rope_freq_base", T_F32, shape["rope_base"]),
        _kv("triattention.q_center_re", T_ARR, (T_F32, c_re)), _kv("triattention.q_center_im", T_ARR, (T_F32, c_im)),
        _kv("triattention.q_abs_mean", T_ARR, (T_F32, np.hypot(c_re, c_im) + 0.5)),
    ]
    tensors = [("token_embd.weight", Q4_K, (E, V)), ("output_norm.weight", F32, (E,)),
               ("output.weight", Q6_K, (E, V))]
    for i in range(L):
        p = f"blk.{i}."
        tensors += [(p + "attn_norm.weight", F32, (E,)), (p + "attn_q.weight", Q4_K, (E, H * D)),
                    (p + "attn_k.weight", Q4_K, (E, Hkv * D)), (p + "attn_v.weight", Q4_K, (E, Hkv * D))]
        if a == "qwen2":
            tensors += [(p + "attn_q.bias", F32, (H * D,)), (p + "attn_k.bias", F32, (Hkv * D,)),
                        (p + "attn_v.bias", F32, (Hkv * D,))]
        tensors += [(p + "attn_output.weight", Q4_K, (H * D, E)), (p + "ffn_norm.weight", F32, (E,)),
                    (p + "ffn_gate.weight", Q4_K, (E, FF)), (p + "ffn_up.weight", Q4_K, (E, FF)),
                    (p + "ffn_down.weight", Q4_K, (FF, E))]
    align = 32
    infos, sizes, off = [], [], 0
    for name, t, dims in tensors:
        n = int(np.prod(dims))
        bs, ts = BLOCK[t]
        nbytes = n // bs * ts
        infos.append(_s(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
                     + struct.pack("<IQ", t, off))
        sizes.append(nbytes)
        off += nbytes + (-nbytes) % align
    head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kvs))
    meta = head + b"".join(kvs) + b"".join(infos)
    pools = {}
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(meta + b"\0" * ((-len(meta)) % align))
        for (name, t, dims), nbytes in zip(tensors, sizes):
            if t == F32:
                data = np.ones(dims, dtype="<f4").tobytes() if "norm" in name else \
                    rng.normal(0.0, 0.1, dims).astype("<f4").tobytes()
                f.write(data)
            else:
                key = (t, dims[0])
                if key not in pools:
                    bs, ts = BLOCK[t]
                    pools[key] = _pool(t, dims[0], min(1 << 20, nbytes // ts), rng)
                pool = pools[key]
                left = nbytes
                while left > 0:
                    k = min(left, pool.size)
                    f.write(pool[:k].data)
                    left -= k
            f.write(b"\0" * ((-nbytes) % align))
    tmp.replace(path)
    return path


def run_program(cmd: list[str], log, timeout: float, env: dict | None = None) -> tuple[str, str, int]:
    """A benchmark program's (stdout, stderr, exit code); past timeout it is interrupted (SIGINT) and given 30 s to
    print what it finished."""
    print("$", *(f"{k}={v}" for k, v in (env or {}).items()), " ".join(cmd), file=log, flush=True)
    t0 = time.time()
    try:
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, **(env or {})})
    except OSError as e:
        return "", f"{cmd[0]}: {e}", -1
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGINT)
        try:
            out, err = p.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
        err = f"{err}\ntimed out after {timeout:.0f} s"
    print(out, err[-4000:], f"  ({time.time() - t0:.1f} s, exit {p.returncode})", sep="\n", file=log, flush=True)
    return out, err, p.returncode


def run_cli(cli: Path, model: Path, args: list[str], log, timeout: float,
            env: dict | None = None) -> tuple[list[dict], str, int]:
    """triattn-cli --bench --json with args (and extra environment variables); (rows, stderr, exit code). An
    interrupted benchmark still prints the rows it finished."""
    out, err, rc = run_program([str(cli), "-m", str(model), "--bench", "--json", *args], log, timeout, env)
    try:
        rows = json.loads(out) if out.strip() else []
    except json.JSONDecodeError:
        rows = []
    return rows, err, rc


def peer_env(peer: Path) -> dict:
    """LD_LIBRARY_PATH for llama.cpp's programs in peer (bench/llamacpp.py cuda): their folder, then the first
    folder holding cuBLAS of this machine (CUBLAS_DIR, CUDA's lib64, or an nvidia-cublas Python package)."""
    dirs = [os.environ.get("CUBLAS_DIR", ""), "/usr/local/cuda/lib64", "/usr/local/cuda/targets/x86_64-linux/lib"]
    for base in sys.path:
        dirs += [str(d) for d in sorted(Path(base or ".").glob("nvidia/cu*/lib"))] + [f"{base}/nvidia/cublas/lib"]
    blas = next((d for d in dirs if d and any(Path(d).glob("libcublas.so.*"))), None)
    path = [str(peer.resolve())] + ([blas] if blas else []) + [os.environ.get("LD_LIBRARY_PATH", "")]
    return {"LD_LIBRARY_PATH": ":".join(x for x in path if x)}


def peer_rows(out: str, batched: bool, model_bytes: int) -> list[dict]:
    """llama-bench's JSON (-o json) or llama-batched-bench's JSON lines as rows shaped like triattn-cli's, named
    like them (pp512, pp512 @ d4096, tg64 @ d4096, tg32 @ d4096 x16), policy "llama.cpp". The objects are read one
    by one, so an interrupted run's finished tests count."""
    objs, dec = [], json.JSONDecoder()
    i = out.find("{")
    while i >= 0:
        try:
            obj, end = dec.raw_decode(out, i)
        except json.JSONDecodeError:
            break
        objs.append(obj)
        i = out.find("{", end)
    rows = []
    for r in objs:
        if batched:
            n = int(r["pl"])
            rows.append({"test": f"tg{r['tg']} @ d{r['pp']}" + (f" x{n}" if n > 1 else ""), "n_prompt": 0,
                         "n_gen": int(r["tg"]), "depth": int(r["pp"]), "parallel": n,
                         "tps_median": float(r["speed_tg"]), "samples_tps": [float(r["speed_tg"])]})
            continue
        p, n, d = int(r["n_prompt"]), int(r["n_gen"]), int(r["n_depth"])
        ts = [float(x) for x in r.get("samples_ts") or [r["avg_ts"]]]
        rows.append({"test": (f"pp{p}" + (f" @ d{d}" if d else "")) if p else f"tg{n} @ d{d}", "n_prompt": p,
                     "n_gen": n, "depth": d, "parallel": 1, "tps_median": statistics.median(ts), "samples_tps": ts,
                     "build_commit": r.get("build_commit", "")})
    for r in rows:
        r.update(policy="llama.cpp", model_bytes=model_bytes)
    return rows


def profiles(stderr: str) -> list[dict]:
    """The CUDA backend's per-phase sums (TRIATTN_CUDA_PROFILE=1), one dict per session, from the log lines."""
    out = []
    for line in stderr.splitlines():
        _, sep, tail = line.partition("CUDA profile: ")
        if sep:
            try:
                out.append(json.loads(tail)["cuda_profile"])
            except (json.JSONDecodeError, KeyError):
                pass
    return out


def profile_table(results: dict) -> str:
    """Device milliseconds per step row by phase, summed over a run's sessions: where a step's time goes."""
    lines = []
    for name, run in results["runs"].items():
        sums: dict = {}
        for prof in run.get("profile") or []:
            for kind, d in prof.items():
                acc = sums.setdefault(kind, {})
                for k, v in d.items():
                    acc[k] = acc.get(k, 0) + v
        for kind, d in sums.items():
            if not d.get("rows"):
                continue
            phases = [k[:-3] for k in d if k.endswith("_ms") and k != "wall_ms"]
            if not lines:
                lines = [f"| run | steps | rows | {' | '.join(phases)} | device sum | host wall |",
                         "| --- | ---: | ---: |" + " ---: |" * (len(phases) + 2)]
            dev = sum(d[p + "_ms"] for p in phases)
            cells = " | ".join(f"{d[p + '_ms'] / d['steps']:.3f}" for p in phases)
            lines.append(f"| {name} {kind} | {d['steps']} | {d['rows']} | {cells} | {dev / d['steps']:.3f} | "
                         f"{d['wall_ms'] / d['steps']:.3f} |")
    return "\n".join(["ms per step by phase (TRIATTN_CUDA_PROFILE=1):", *lines]) if lines else ""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cli", type=Path, default=ROOT / "build" / "cuda" / "triattn-cli", help="triattn-cli to run")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "gpu", help="results folder")
    ap.add_argument("--models", type=Path, default=None, help="where the random models go (default: --out)")
    ap.add_argument("--only", choices=["1b", "32b"], default=None, help="one model only")
    ap.add_argument("--smoke", action="store_true", help="a tiny model, tiny runs: checks the script (CPU is fine)")
    ap.add_argument("--mem-limit", default="24GiB", help="device-memory cap of the 32b runs (default 24GiB)")
    ap.add_argument("--timeout", type=float, default=600, help="seconds one triattn-cli run may take (default 600)")
    ap.add_argument("--write-only", choices=["1b", "32b"], default=None, help="write that model into --models, nothing else")
    ap.add_argument("--short", action="store_true",
                    help="fewer depths and repetitions, the 1b table before the 32b runs (a device-time budget)")
    ap.add_argument("--deadline", type=float, default=0,
                    help="seconds from the start after which no run starts; a run's timeout ends by then (0: none)")
    ap.add_argument("--peer", type=Path, default=ROOT / ".peer",
                    help="folder with llama.cpp's llama-bench and llama-batched-bench built with CUDA (python "
                         "bench/llamacpp.py cuda): run on the 1b model after the engine's 1b runs (default: .peer, "
                         "when there)")
    ap.add_argument("--plot", type=Path, nargs=2, metavar=("RESULTS", "PNG"), default=None,
                    help="draw t/s against depth and against sessions from a results.json; nothing else")
    args = ap.parse_args(argv)
    t_start = time.time()
    if args.plot:
        plot(json.loads(args.plot[0].read_text()), args.plot[1])
        return 0
    if not args.cli.is_file():
        print(f"gpu.py: {args.cli} not found (build with -DTRIATTN_CUDA=ON, or pass --cli)", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    models = args.models or args.out
    models.mkdir(parents=True, exist_ok=True)
    log = open(args.out / "gpu_bench.log", "a")
    # the backend's switches this whole run had (e.g. a fallback gpu_device.sh set after a failed device test)
    base_env = {k: v for k, v in sorted(os.environ.items())
                if k.startswith("TRIATTN_CUDA_") and k != "TRIATTN_CUDA_BUILD_DIR"}
    results: dict = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "device": device_name(), "env": base_env,
                     "runs": {}}

    grace = 35  # seconds an interrupted run may take to print its rows and end (run_cli)

    def out_of_time() -> bool:
        return bool(args.deadline) and args.deadline - (time.time() - t_start) < grace + 10

    def record(name: str, model: Path, extra: list[str], timeout: float | None = None,
               env: dict | None = None, run=None) -> list[dict]:
        """triattn-cli -m model -ngl -1 extra, or run(seconds) -> (rows, stderr, exit code) for another program
        (extra: its arguments), within the deadline; its rows, also written to results.json under name."""
        limit = min(timeout or args.timeout, args.timeout)
        # a variant whose switch the whole run's environment (a failed device test's fallback) sets otherwise, or
        # whose kernels it turns off (TRIATTN_CUDA_MQ_MIN=33: no integer tensor-core products, whatever MQ_MAX says)
        clash = [f"{k}={base_env[k]}" for k, v in (env or {}).items() if base_env.get(k, v) != v]
        if "TRIATTN_CUDA_MQ_MAX" in (env or {}) and "TRIATTN_CUDA_MQ_MIN" in base_env:
            clash.append(f"TRIATTN_CUDA_MQ_MIN={base_env['TRIATTN_CUDA_MQ_MIN']}")
        left = args.deadline - (time.time() - t_start) if args.deadline else limit + grace
        if clash:
            rows, err, rc = [], f"skipped: the run's environment sets {' '.join(clash)}", -1
        elif out_of_time():
            rows, err, rc = [], f"skipped: {left:.0f} s left before --deadline", -1
        elif run:
            rows, err, rc = run(min(limit, left - grace))
        else:
            rows, err, rc = run_cli(args.cli, model, ["-ngl", "-1", *extra], log, min(limit, left - grace), env)
        results["runs"][name] = {"args": extra, "env": env or {}, "rows": rows, "exit": rc, "stderr_tail": err[-1500:],
                                 "profile": profiles(err)}
        (args.out / "results.json").write_text(json.dumps(results, indent=1))
        return rows

    def model_of(key: str) -> Path:
        path = models / f"random-{key}.gguf"
        if not path.is_file():
            t0 = time.time()
            write_model(path, SHAPES[key])
            results[f"write_{key}_s"] = round(time.time() - t0, 1)
            print(f"wrote {path} ({path.stat().st_size / 2**30:.2f} GiB) in {time.time() - t0:.1f} s", file=log,
                  flush=True)
        results[f"bytes_{key}"] = path.stat().st_size
        return path

    if args.write_only:
        model_of(args.write_only)
        return 0
    if args.smoke:
        m = model_of("smoke")
        for pol in ("full", "triattention"):
            record(f"smoke_{pol}", m, ["-p", "64", "-n", "8", "-d", "0,96", "-r", "1", "-c", "256",
                                       "--kv-policy", pol, "--kv-budget", "64", "--kv-interval", "16"])
        record("smoke_np", m, ["-p", "0", "-n", "4", "-d", "32", "-np", "1,3", "-r", "1", "-c", "256"])

    def run_32b() -> None:
        # full attention: as many sessions as fit at 32K context (n_ctx 32800), then a 64K session (both refused under
        # the cap); TriAttention: as many sessions as fit, at 16K, 32K and 64K context (the 64K ones decode from
        # position 65504 to the end of their n_ctx, 65536); last, full attention at 16K, where one session fits
        if out_of_time():  # not even the model's writing
            return
        m = model_of("32b")
        cap = ["--gpu-mem-limit", args.mem_limit]
        record("32b_full", m, [*cap, "-p", "0", "-n", "32", "-d", "32768", "-np", "fit", "-r", "1", "-c", "32800",
                               "--kv-policy", "full"], timeout=120)
        record("32b_full_64k", m, [*cap, "-p", "0", "-n", "32", "-d", "65504", "-np", "fit", "-r", "1", "-c", "65536",
                                   "--kv-policy", "full"], timeout=120)
        record("32b_triattention", m, [*cap, "-p", "0", "-n", "32", "-d", "16384,32768,65504", "-np", "fit", "-r",
                                       "1", "-c", "65536", "--kv-policy", "triattention", "--kv-budget", "2048"])
        record("32b_full_16k", m, [*cap, "-p", "0", "-n", "32", "-d", "16384", "-np", "fit", "-r", "1", "-c", "16416",
                                   "--kv-policy", "full"], timeout=180)

    def run_1b() -> None:
        if out_of_time():
            return
        m = model_of("1b")
        reps = "2" if args.short else "3"
        depths = {"full": "0,16384" if args.short else "0,4096,16384,32768", "triattention": "0,16384,32768"
                  if args.short else "0,4096,16384,32768"}
        for pol in ("full", "triattention"):
            record(f"1b_{pol}", m, ["-p", "512", "-n", "64", "-d", depths[pol], "-r", reps, "-c", "33024",
                                    "--kv-policy", pol, "--kv-budget", "2048"])
        # prefill with the fp32 attention kernel instead of the tensor-core one, and with the products on integer
        # tensor cores (8-bit activations) instead of fp16 tiles, against the rows above
        record("1b_full_att32", m, ["-p", "512", "-n", "0", "-d", "0,16384", "-r", reps, "-c", "33024",
                                    "--kv-policy", "full"], env={"TRIATTN_CUDA_ATT_MMA_MIN": "0"})
        record("1b_full_mq", m, ["-p", "512", "-n", "0", "-d", "0", "-r", reps, "-c", "33024", "--kv-policy", "full"],
               env={"TRIATTN_CUDA_MQ_MAX": "4096"})
        record("1b_full_tcpf", m, ["-p", "512", "-n", "0", "-d", "0", "-r", reps, "-c", "33024", "--kv-policy",
                                   "full"], env={"TRIATTN_CUDA_TC_PREFETCH": "1"})
        record("1b_full_tcfill", m, ["-p", "512", "-n", "0", "-d", "0", "-r", reps, "-c", "33024", "--kv-policy",
                                     "full"], env={"TRIATTN_CUDA_TC_FILL": "1"})
        # where a step's time goes: device time per phase (events between phases, no graphs), prefill and decode
        prof = {"TRIATTN_CUDA_PROFILE": "1"}
        record("1b_profile_d0", m, ["-p", "512", "-n", "64", "-d", "0", "-r", "1", "-c", "33024", "--kv-policy",
                                    "triattention", "--kv-budget", "2048"], env=prof)
        record("1b_profile_d16384", m, ["-p", "0", "-n", "64", "-d", "16384", "-r", "1", "-c", "33024", "--kv-policy",
                                        "full"], env=prof)
        record("1b_profile_np16", m, ["-p", "0", "-n", "32", "-d", "4096", "-np", "16", "-r", "1", "-c", "4224",
                                      "--kv-policy", "triattention", "--kv-budget", "2048"], env=prof)
        # one-session decode at depth 0 with plain launches (no programmatic dependent launch), against the rows above
        record("1b_triattention_nopdl", m, ["-p", "0", "-n", "64", "-d", "0", "-r", reps, "-c", "33024",
                                            "--kv-policy", "triattention", "--kv-budget", "2048"],
               env={"TRIATTN_CUDA_PDL": "0"})
        # decode attention merging its parts in a second kernel, at depth 0 and 32768
        record("1b_triattention_unfused", m, ["-p", "0", "-n", "64", "-d", "0,32768", "-r", reps, "-c", "33024",
                                              "--kv-policy", "triattention", "--kv-budget", "2048"],
               env={"TRIATTN_CUDA_ATT_FUSED": "0"})
        np_args = ["-p", "0", "-n", "32", "-d", "4096", "-r", "2", "-c", "4224", "--kv-budget", "2048"]
        for pol in ("full", "triattention"):
            record(f"1b_np_{pol}", m, [*np_args, "-np", "16" if args.short else "1,8,16", "--kv-policy", pol])
        # the same steps with 8-bit matrix-vector products only (8 rows a launch), and with integer tensor cores
        # from 2 rows: which kernel serves a batch best
        record("1b_np_triattention_mv", m, [*np_args, "-np", "16" if args.short else "8,16", "--kv-policy",
                                            "triattention"], env={"TRIATTN_CUDA_MQ_MIN": "33"})
        record("1b_np_triattention_mq2", m, [*np_args, "-np", "4,8" if args.short else "2,4,8", "--kv-policy",
                                             "triattention"], env={"TRIATTN_CUDA_MQ_MIN": "2"})

    def run_peer(key: str, p: int, n: int, depths: str, reps: int, npp: int, ntg: int, npl: list[int]) -> None:
        # llama.cpp on the same file in the same run: llama-bench's prompt and decode rows at the engine's depths,
        # llama-batched-bench's sessions (each its own prompt of npp tokens), flash attention on, all layers on the GPU
        if not all((args.peer / t).is_file() for t in ("llama-bench", "llama-batched-bench", "BUILD.txt")) or \
                not results["device"] or out_of_time():
            return  # no CUDA build of llama.cpp, or no GPU for it (it would run on the CPU)
        sys.path.insert(0, str(ROOT / "bench"))
        import llamacpp

        peer = llamacpp.unpack(args.peer, models / "llamacpp-cuda")  # beside the models: not carried, not returned
        exe = {t: peer / t for t in ("llama-bench", "llama-batched-bench")}
        env = peer_env(peer)
        m = model_of(key)
        cmds = {f"{key}_llamacpp": [str(exe["llama-bench"]), "-m", str(m), "-ngl", "99", "-fa", "1", "-p", str(p),
                                    "-n", str(n), "-d", depths, "-r", str(reps), "-o", "json"],
                f"{key}_np_llamacpp": [str(exe["llama-batched-bench"]), "-m", str(m), "-ngl", "99", "-fa", "on", "-c",
                                       str(max(npl) * (npp + ntg) + 256), "-npp", str(npp), "-ntg", str(ntg), "-npl",
                                       ",".join(map(str, npl)), "--output-format", "jsonl"]}

        def peer_run(cmd: list[str], seconds: float) -> tuple[list[dict], str, int]:
            out, err, rc = run_program(cmd, log, seconds, env)
            try:
                return peer_rows(out, "batched" in Path(cmd[0]).name, results[f"bytes_{key}"]), err, rc
            except (json.JSONDecodeError, KeyError, ValueError) as e:
                return [], f"{err}\nunreadable output: {e}", rc

        for name, cmd in cmds.items():
            record(name, m, cmd[1:], run=lambda seconds, cmd=cmd: peer_run(cmd, seconds))

    if args.smoke:
        run_peer("smoke", 64, 8, "0,96", 1, 32, 4, [1, 3])
    else:
        # --short (a device budget): the 1b table first, the one to compare with earlier runs
        def run_1b_and_peer() -> None:
            run_1b()
            run_peer("1b", 512, 64, "0,16384,32768" if args.short else "0,4096,16384,32768", 2 if args.short else 3,
                     4096, 32, [16] if args.short else [1, 8, 16])

        order = {"1b": run_1b_and_peer, "32b": run_32b}
        for key in (["1b", "32b"] if args.short else ["32b", "1b"]):
            if args.only in (None, key):
                order[key]()
    results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    print(f"device: {results['device'] or 'no GPU found by nvidia-smi'}")
    if base_env:
        print("every run with " + " ".join(f"{k}={v}" for k, v in base_env.items()))
    print(markdown(results))
    print(ratios(results))
    print(profile_table(results))
    return 0


def device_name() -> str:
    """The first GPU's name as nvidia-smi reports it ("" without one): the plots and tables say which card ran."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip().splitlines()[0].strip() if out.returncode == 0 and out.stdout.strip() else ""


def plot(results: dict, png: Path) -> None:
    """Decode t/s against KV depth (one session) and aggregate t/s against sessions, full vs triattention."""
    sys.path.insert(0, str(ROOT / "python"))
    from pytriattn._plot import grid, line_chart, write_png

    depth, sess = {}, {}
    for key, run in results["runs"].items():
        if not key.startswith("1b_") or run.get("env"):
            continue  # the kernel-choice variants stay out of the plot
        for r in run["rows"]:
            if r["n_gen"] <= 0:
                continue
            name = r["policy"].upper()
            if "_np_" in key:
                sess.setdefault(name, {})[r.get("parallel", 1)] = r["tps_median"]
            else:
                depth.setdefault(name, {})[r["depth"]] = r["tps_median"]
    as_series = lambda d: {k: (sorted(v), [v[x] for x in sorted(v)]) for k, v in d.items()}  # noqa: E731
    card = results.get("device") or "H200"  # results written before the field: the H200 run
    a = line_chart(as_series(depth), title=f"1.1B Q4_K on {card}: decode, one session", xlabel="KV depth (tokens)",
                   ylabel="tokens/s")
    b = line_chart(as_series(sess), title="decode at depth 4096, sessions together", xlabel="sessions",
                   ylabel="tokens/s (all sessions)")
    write_png(png, grid([a, b], cols=2))


def markdown(results: dict) -> str:
    lines = ["| run | test | policy | sessions | t/s (median) | weights read (GB/s) | KV bytes |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: |"]
    for name, run in results["runs"].items():
        if not run["rows"]:
            why = run["stderr_tail"].strip().splitlines()[-1:] or [f"exit {run['exit']}"]
            lines.append(f"| {name} | — | — | — | refused or failed: {why[0][:160]} | — | — |")
        for r in run["rows"]:
            # decode steps read every weight once for all the sessions of the step
            steps = r["tps_median"] / r.get("parallel", 1) if r["n_gen"] > 0 else 0.0
            bw = f"{r['model_bytes'] * steps / 1e9:.0f}" if steps and r.get("model_bytes") else "—"
            kv = f"{r['kv_bytes'] / 2**20:.1f} MiB" if "kv_bytes" in r else "—"  # llama.cpp's rows: not reported
            lines.append(f"| {name} | {r['test']} | {r['policy']} | {r.get('parallel', 1)} | {r['tps_median']:.1f} | "
                         f"{bw} | {kv} |")
    return "\n".join(lines)


def _sessions(n: int) -> str:
    return f"{n} session" + ("" if n == 1 else "s")


def ratios(results: dict) -> str:
    """The targets' ratios from rows of this run: each a quotient of two measured medians (absent rows: left out)."""
    def tps(name: str, test: str) -> tuple[float, int] | None:
        for r in results["runs"].get(name, {}).get("rows", []):
            if r["test"] == test or r["test"].startswith(test + " x"):
                return r["tps_median"], r.get("parallel", 1)
        return None

    pairs = [("1b pp512: triattention / full", ("1b_triattention", "pp512"), ("1b_full", "pp512")),
             ("1b tg64, triattention: depth 32768 / depth 0", ("1b_triattention", "tg64 @ d32768"),
              ("1b_triattention", "tg64 @ d0")),
             ("1b tg32 @ 4096, 16 sessions: triattention / full", ("1b_np_triattention", "tg32 @ d4096 x16"),
              ("1b_np_full", "tg32 @ d4096 x16")),
             ("1b pp512: full / llama.cpp", ("1b_full", "pp512"), ("1b_llamacpp", "pp512")),
             ("1b tg64 @ d0: full / llama.cpp", ("1b_full", "tg64 @ d0"), ("1b_llamacpp", "tg64 @ d0")),
             ("1b tg64 @ d0: triattention / llama.cpp", ("1b_triattention", "tg64 @ d0"), ("1b_llamacpp", "tg64 @ d0")),
             ("1b tg64 @ d16384: triattention / llama.cpp", ("1b_triattention", "tg64 @ d16384"),
              ("1b_llamacpp", "tg64 @ d16384")),
             ("1b tg32 @ 4096, 16 sessions: triattention / llama.cpp", ("1b_np_triattention", "tg32 @ d4096 x16"),
              ("1b_np_llamacpp", "tg32 @ d4096 x16")),
             ("32b at 16K under the cap, all sessions that fit: triattention / full", ("32b_triattention",
                                                                                       "tg32 @ d16384"),
              ("32b_full_16k", "tg32 @ d16384"))]
    lines = []
    for what, a, b in pairs:
        x, y = tps(*a), tps(*b)
        if x and y and y[0] > 0:
            lines.append(f"- {what}: {x[0]:.1f} t/s ({_sessions(x[1])}) / {y[0]:.1f} t/s ({_sessions(y[1])}) = "
                         f"{x[0] / y[0]:.2f}x")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
