"""CPU speed against llama.cpp on the same GGUF files: the ratio table (pytriattn t/s / llama.cpp t/s).

For every model and test, llama.cpp's llama-bench and `triattn-cli --bench` run one after the other, one
repetition each, in alternating order, for --rounds rounds; a test's ratio is the median of its rounds'
ratios (both programs saw the same machine state within a round). Both use -t THREADS (default 2) and
full attention; llama-bench keeps its defaults otherwise (flash attention "auto"; --llama-args adds more).

Tests: ppN (prompt of N tokens from an empty context) and tgN@D (N decoded tokens after D tokens of
context). Models: the default model (SmolLM2-135M-Instruct Q4_1), Gemma 3 270M and Qwen2.5-Coder-1.5B
Q4_K_M (fetched like `pytriattn fetch`); --mix adds that Qwen re-quantized by llama.cpp's llama-quantize
to mostly Q5_0 and Q8_0 (the mix llama.cpp's converter gives small Qwen2.5 models at Q4_K_M), written to
the cache, never to the repository; --pure TYPES adds it re-quantized with every tensor of one type (`llama-quantize
--pure`), one file per type, to compare the kernels type by type. --triattention adds tg128@8192 of the default model with a
TriAttention budget of 1024 and its shipped centres, against llama.cpp's full cache. --base-cli PATH adds a
second triattn-cli (an earlier build) to every round, in rotating order with the other two, and a column of
new / base ratios: a before/after comparison of the engine measured in the same run as llama.cpp.

llama-bench (and llama-quantize): --llama-bench PATH, $LLAMA_BENCH, or the clean -O3 Release tree in the cache
(~/.cache/pytriattn/llamacpp-O3), built once from the llama-cpp-python 0.3.36 source package when missing
(~10 min on 2 cores). A llama-bench from a tree with -O0 parts (bench/parity.py's) or a non-Release build is
refused. A model is a name (as `pytriattn fetch`) or a GGUF path; the JSON (every sample) goes to
bench/results/cpu_parity-COMMIT.json unless --json says otherwise.

    python bench/cpu_parity.py                 # 3 models x pp512, pp4096, tg128@0, tg128@4096, tg128@8192
    python bench/cpu_parity.py --quick         # pp512 and tg128@0, one round
    python bench/cpu_parity.py --mix --triattention --json parity.json
    python bench/cpu_parity.py --models smollm2-135m,~/.cache/pytriattn/qwen2.5-coder-1.5b-q5_0-q8_0-mix.gguf
    python bench/cpu_parity.py --pure all --tests pp512,tg128@0 --rounds 1   # one weight type per file
    python bench/cpu_parity.py --pure Q3_K_S --tests tg128@0 --cli build/triattn-cli --base-cli old/triattn-cli
"""
from __future__ import annotations

import argparse
import importlib.resources
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import llamacpp  # noqa: E402
from llamacpp import log  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RELEASE_CACHE = llamacpp.CACHE_ROOT / "llamacpp-O3"
TESTS = ["pp512", "pp4096", "tg128@0", "tg128@4096", "tg128@8192"]
QUICK_TESTS = ["pp512", "tg128@0"]
MODELS = ["smollm2-135m", "gemma3-270m", "qwen2.5-coder-1.5b"]
MIX_NAME = "qwen2.5-coder-1.5b-q5_0-mix"
PURE_PREFIX = "qwen2.5-coder-1.5b-pure-"   # + a llama-quantize type: every tensor of that type (--pure)
PURE_TYPES = ["Q2_K", "Q3_K_S", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K_S", "Q5_K_S", "Q6_K", "Q8_0"]
TRI_TEST = "tg128@8192 triattention 1024"


def parse_test(t: str) -> tuple[int, int, int]:
    """'pp512' -> (512, 0, 0); 'tg128@4096' -> (0, 128, 4096)."""
    m = re.fullmatch(r"pp(\d+)|tg(\d+)@(\d+)", t)
    if not m:
        raise SystemExit(f"bad test {t!r}: use ppN or tgN@DEPTH")
    return (int(m[1]), 0, 0) if m[1] else (0, int(m[2]), int(m[3]))


# ---- the programs ------------------------------------------------------------------------------------------

def llama_tools(args) -> tuple[Path, Path | None]:
    """llama-bench (and llama-quantize when found next to it, or built)."""
    exe = args.llama_bench or os.environ.get("LLAMA_BENCH")
    if exe:
        exe = Path(exe)
        q = exe.parent / "llama-quantize"
        return exe, q if q.exists() else None
    build = release_build(("llama-bench", "llama-quantize"), args.jobs)
    q = build / "bin" / "llama-quantize"
    return build / "bin" / "llama-bench", q if q.exists() else None


def release_build(targets: tuple[str, ...], jobs: int) -> Path:
    """The clean -O3 Release llama.cpp tree holding bin/targets[0]: ours in the cache, or one built inside the
    sources; built (all targets) into the cache when neither has it."""
    src = llamacpp.source(RELEASE_CACHE)
    for build in (RELEASE_CACHE / "build", src / "build"):
        if (build / "bin" / targets[0]).is_file():
            return build
    return llamacpp.build(src, RELEASE_CACHE / "build", targets, jobs)


def check_speed_reference(exe: Path) -> None:
    try:
        from pytriattn.bench import unoptimized_build
    except ImportError:
        return
    why = unoptimized_build(exe)
    if why:
        raise SystemExit(f"{exe} is no speed reference ({why}): use a clean -O3 Release llama.cpp tree")


def find_cli(explicit) -> Path:
    try:
        from pytriattn.bench import find_cli as find
    except ImportError:  # a checkout without the package installed: the CMake build folder
        cand = Path(explicit) if explicit else ROOT / "build" / "triattn-cli"
        if cand.is_file():
            return cand
        raise SystemExit("triattn-cli not found: pass --cli PATH or install pytriattn")
    return find(explicit)


def model_file(name: str, quantize: Path | None, jobs: int) -> Path:
    from pytriattn._fetch import cache_dir, ensure_default_model, ensure_model, DEFAULT_NAME
    if name == DEFAULT_NAME:
        return ensure_default_model(progress=True)
    if name != MIX_NAME and not name.startswith(PURE_PREFIX):
        return ensure_model(name, progress=True)
    out = cache_dir() / f"{name}.gguf"
    if not out.exists():
        if quantize is None or not quantize.exists():
            raise SystemExit(f"{name} needs llama-quantize (next to --llama-bench, or the built tree)")
        src = ensure_model("qwen2.5-coder-1.5b", progress=True)
        tmp = out.with_suffix(".tmp")
        if name == MIX_NAME:
            # Q5_0 everywhere, Q8_0 for attn_v and ffn_down, some Q4_K, Q8_0 embeddings, Q6_K output
            args = ["--token-embedding-type", "q8_0", "--output-tensor-type", "q6_k", "--tensor-type", "attn_v=q8_0",
                    "--tensor-type", "ffn_down=q8_0", "--tensor-type", "attn_output=q4_k", str(src), str(tmp), "Q5_0"]
        else:
            args = ["--pure", str(src), str(tmp), name[len(PURE_PREFIX):].upper()]
        subprocess.run([str(quantize), "--allow-requantize", *args, str(jobs)], check=True, stdout=subprocess.DEVNULL)
        tmp.rename(out)
    return out


def shipped_centres() -> Path | None:
    name = "SmolLM2-135M-Instruct.Q4_1.tri-stats.gguf"
    for cand in (ROOT / "python" / "pytriattn" / "data" / name,):
        if cand.exists():
            return cand
    try:
        p = importlib.resources.files("pytriattn") / "data" / name
        return Path(str(p)) if p.is_file() else None
    except ModuleNotFoundError:
        return None


def run_out(cmd: list[str]) -> str:
    """A program's standard output; a failure ends the script with its exit code and the end of its stderr."""
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed (exit {p.returncode}): {p.stderr.strip()[-800:]}")
    return p.stdout


def run_json(cmd: list[str]) -> list[dict]:
    out = run_out(cmd)
    start = out.find("[")
    return json.loads(out[start:]) if start >= 0 else []


def llama_tps(exe: Path, model: Path, test: str, threads: int, extra: list[str]) -> tuple[float, str]:
    p, n, d = parse_test(test)
    rows = run_json([str(exe), "-m", str(model), "-p", str(p), "-n", str(n), "-d", str(d), "-r", "1", "-t",
                     str(threads), "-o", "json", *extra])
    for r in rows:
        if int(r.get("n_prompt", 0)) == p and int(r.get("n_gen", 0)) == n and int(r.get("n_depth", 0)) == d:
            return float(r["avg_ts"]), str(r.get("build_commit", "?"))
    raise SystemExit(f"llama-bench gave no row for {test}: {rows}")


def cli_tps(cli: Path, model: Path, test: str, threads: int, policy: list[str]) -> float:
    p, n, d = parse_test(test)
    rows = run_json([str(cli), "-m", str(model), "--bench", "--json", "-p", str(p), "-n", str(n), "-d", str(d),
                     "-r", "1", "-t", str(threads), *policy])
    for r in rows:
        if int(r.get("n_prompt", 0)) == p and int(r.get("n_gen", 0)) == n and int(r.get("depth", 0)) == d:
            return float(r["tps_median"])
    raise SystemExit(f"triattn-cli gave no row for {test}: {rows}")


# ---- the table ---------------------------------------------------------------------------------------------

def machine() -> str:
    name, flags = platform.processor() or "?", ""
    try:
        info = Path("/proc/cpuinfo").read_text()
        name = re.search(r"model name\s*:\s*(.*)", info)[1].strip()
        fl = set(re.search(r"flags\s*:\s*(.*)", info)[1].split())
        flags = " ".join(f for f in ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni")
                         if f in fl)
    except (OSError, TypeError):
        pass
    return f"{name}, {os.cpu_count()} logical CPUs, {flags}"


def commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help=f"tests {','.join(QUICK_TESTS)}, one round")
    ap.add_argument("--tests", default=None, help=f"comma list (default {','.join(TESTS)})")
    ap.add_argument("--models", default=None, help=f"comma list of names or GGUF paths (default {','.join(MODELS)})")
    ap.add_argument("--mix", action="store_true", help=f"also {MIX_NAME} (made with llama-quantize)")
    ap.add_argument("--pure", default=None, metavar="TYPES",
                    help=f"also the Qwen re-quantized with every tensor of one type, for each llama-quantize type "
                         f"in this comma list ('all': {','.join(PURE_TYPES)}; ~1 GB each in the cache)"),
    ap.add_argument("--triattention", action="store_true", help=f"also '{TRI_TEST}' for the default model")
    ap.add_argument("--rounds", type=int, default=None, help="alternating rounds (default 3; 1 with --quick)")
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--llama-bench", default=None, help="llama-bench binary (default $LLAMA_BENCH, else built)")
    ap.add_argument("--llama-args", default="", help="extra llama-bench arguments, e.g. '-fa on'")
    ap.add_argument("--cli", default=None, help="triattn-cli (default $TRIATTN_CLI_BIN, the installed one)")
    ap.add_argument("--base-cli", default=None, help="an earlier triattn-cli to compare --cli with, in the same rounds")
    ap.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 2, help="build jobs")
    ap.add_argument("--json", default=None, help="every sample to this file (default bench/results/cpu_parity-COMMIT.json)")
    args = ap.parse_args()

    tests = args.tests.split(",") if args.tests else QUICK_TESTS if args.quick else TESTS
    for t in tests:
        parse_test(t)
    rounds = args.rounds or (1 if args.quick else 3)
    names = args.models.split(",") if args.models else MODELS + ([MIX_NAME] if args.mix else [])
    if args.pure:
        pure = PURE_TYPES if args.pure == "all" else args.pure.split(",")
        names = (names if args.models or args.mix else []) + [PURE_PREFIX + t.lower() for t in pure]
    exe, quantize = llama_tools(args)
    check_speed_reference(exe)
    cli = find_cli(args.cli)
    files = {nm: Path(nm).expanduser() if nm.endswith(".gguf") else model_file(nm, quantize, args.jobs)
             for nm in names}
    for nm, f in files.items():
        if not f.is_file():
            raise SystemExit(f"{nm}: no such file {f}")
    jobs = [(nm, t, ["--kv-policy", "full"]) for nm in names for t in tests]
    centres = shipped_centres()
    if args.triattention and centres and "smollm2-135m" in files:
        jobs.append(("smollm2-135m", TRI_TEST, ["--kv-policy", "triattention", "--kv-budget", "1024",
                                                "--calibration", str(centres)]))
    extra = args.llama_args.split()
    base = Path(args.base_cli).expanduser() if args.base_cli else None
    if base and not base.is_file():
        raise SystemExit(f"--base-cli: no such file {base}")
    runners = [lambda nm, lt, pol: llama_tps(exe, files[nm], lt, args.threads, extra),
               lambda nm, lt, pol: (cli_tps(cli, files[nm], lt, args.threads, pol), None)]
    if base:
        runners.append(lambda nm, lt, pol: (cli_tps(base, files[nm], lt, args.threads, pol), None))
    samples: dict[tuple[str, str], list[tuple[float, ...]]] = {}
    build = "?"
    t_start = time.time()
    for rnd in range(rounds):
        for i, (nm, test, policy) in enumerate(jobs):
            ltest = test.split()[0]
            got = [0.0] * len(runners)
            for k in range(len(runners)):  # rotating order: each program goes first as often as the others
                who = (rnd + i + k) % len(runners)
                got[who], b = runners[who](nm, ltest, policy)
                build = b or build
            samples.setdefault((nm, test), []).append(tuple(got))
            vs_base = f", base {got[2]:.2f} t/s, new / base {got[1] / got[2]:.2f}" if base else ""
            log(f"round {rnd + 1}/{rounds} {nm} {test}: llama.cpp {got[0]:.2f} t/s, pytriattn {got[1]:.2f} t/s, "
                f"ratio {got[1] / got[0]:.2f}{vs_base}  ({time.time() - t_start:.0f} s)")

    print(f"pytriattn {commit()} vs llama.cpp {build} (llama-bench {' '.join(extra) or 'defaults'}), "
          f"-t {args.threads}, {rounds} round(s), median of per-round ratios (t/s medians in brackets)")
    if base:
        print(f"second line of each cell: new / base, base = {base}")
    print(f"machine: {machine()}\n")
    shown = list(dict.fromkeys(t for _, t, _ in jobs))
    print("| test | " + " | ".join(Path(nm).stem if nm.endswith(".gguf") else nm for nm in names) + " |")
    print("|---|" + "---|" * len(names))
    for t in shown:
        cells = []
        for nm in names:
            s = samples.get((nm, t))
            if not s:
                cells.append("")
                continue
            ratio = statistics.median(g[1] / g[0] for g in s)
            cell = (f"**{ratio:.2f}x** ({statistics.median(g[1] for g in s):.1f} / "
                    f"{statistics.median(g[0] for g in s):.1f})")
            if base:
                cell += (f"<br>new / base {statistics.median(g[1] / g[2] for g in s):.2f}x "
                         f"({statistics.median(g[2] for g in s):.1f})")
            cells.append(cell)
        print(f"| {t} | " + " | ".join(cells) + " |")
    out = Path(args.json) if args.json else ROOT / "bench" / "results" / f"cpu_parity-{commit()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "commit": commit(), "cli": str(cli), "base_cli": str(base) if base else None, "llama_cpp": build, "machine": machine(), "threads": args.threads,
        "llama_args": extra, "rounds": rounds,
        "samples": [{"model": nm, "file": str(files[nm]), "test": t, "llama_tps": g[0], "pytriattn_tps": g[1],
                     **({"base_tps": g[2]} if base else {})}
                    for (nm, t), s in samples.items() for g in s]}, indent=1))
    log(f"samples written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
