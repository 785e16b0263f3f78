"""Several sessions decoding together on the CPU, against llama.cpp on the same GGUF file in the same run.

`triattn-cli --bench -p 0 -n N -d D -np LIST` (every session's next token in one forward step) and llama.cpp's
`llama-batched-bench -npp D -ntg N -npl LIST` (one sequence per session, each with its own prompt of D tokens,
decoding together) run one after the other, in alternating order, for --rounds rounds. Compared: the aggregate
decode tokens/s of all sessions at each session count, as the median of the per-round ratios (both programs saw
the same machine state within a round). pytriattn runs with full attention and, with --triattention, with
TriAttention at --kv-budget (the default model's shipped centres); llama.cpp keeps its full cache and its defaults
otherwise (flash attention "auto"; --llama-args adds more). Both use -t THREADS (default 2).

llama-batched-bench: --llama-batched-bench PATH, $LLAMA_BATCHED_BENCH, or the clean -O3 Release tree in the cache
(~/.cache/pytriattn/llamacpp-O3, as bench/cpu_parity.py), built there when missing. The JSON (every sample) goes to
bench/results/cpu_sessions-COMMIT.json unless --json says otherwise.

    python bench/cpu_sessions.py                               # default model, -d 2048 -n 64, 1,2,4,8 sessions
    python bench/cpu_sessions.py --triattention --rounds 3
    python bench/cpu_sessions.py --model qwen2.5-coder-1.5b --sessions 1,2,4 --depth 512
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cpu_parity  # noqa: E402
from llamacpp import log  # noqa: E402

TOOL = "llama-batched-bench"


def batched_bench(explicit: str | None, jobs: int) -> Path:
    exe = explicit or os.environ.get("LLAMA_BATCHED_BENCH")
    if exe:
        return Path(exe).expanduser()
    return cpu_parity.release_build((TOOL,), jobs) / "bin" / TOOL


def llama_rates(exe: Path, model: Path, depth: int, gen: int, sessions: list[int], threads: int,
                extra: list[str]) -> dict[int, float]:
    """Aggregate decode t/s per session count (speed_tg of each JSONL row)."""
    ctx = max(sessions) * (depth + gen) + 256
    out = cpu_parity.run_out([str(exe), "-m", str(model), "-c", str(ctx), "-npp", str(depth), "-ntg", str(gen),
                              "-npl", ",".join(map(str, sessions)), "-t", str(threads), "--output-format", "jsonl",
                              *extra])
    got = {}
    for line in out.splitlines():
        if line.startswith("{"):
            r = json.loads(line)
            if int(r.get("pp", -1)) == depth and int(r.get("tg", -1)) == gen:
                got[int(r["pl"])] = float(r["speed_tg"])
    missing = [n for n in sessions if n not in got]
    if missing:
        raise SystemExit(f"{TOOL} gave no row for {missing} sessions: {out[-800:]}")
    return got


def cli_rates(cli: Path, model: Path, depth: int, gen: int, sessions: list[int], threads: int,
              policy: list[str]) -> dict[int, float]:
    """Aggregate decode t/s per session count (the -np rows of triattn-cli --bench)."""
    rows = cpu_parity.run_json([str(cli), "-m", str(model), "--bench", "--json", "-p", "0", "-n", str(gen), "-d",
                                str(depth), "-np", ",".join(map(str, sessions)), "-r", "1", "-t", str(threads),
                                *policy])
    got = {int(r.get("parallel", 1)): float(r["tps_median"]) for r in rows
           if int(r.get("n_gen", 0)) == gen and int(r.get("depth", -1)) == depth}
    missing = [n for n in sessions if n not in got]
    if missing:
        raise SystemExit(f"triattn-cli gave no row for {missing} sessions: {rows}")
    return got


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m", help="a name (as `pytriattn fetch`) or a GGUF path")
    ap.add_argument("--depth", type=int, default=2048, help="prompt tokens of every session (default 2048)")
    ap.add_argument("--gen", type=int, default=64, help="tokens each session decodes (default 64)")
    ap.add_argument("--sessions", default="1,2,4,8", help="session counts (default 1,2,4,8)")
    ap.add_argument("--triattention", action="store_true", help="also pytriattn with TriAttention at --kv-budget")
    ap.add_argument("--kv-budget", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--llama-batched-bench", default=None, help=f"{TOOL} (default $LLAMA_BATCHED_BENCH, else built)")
    ap.add_argument("--llama-args", default="", help=f"extra {TOOL} arguments, e.g. '-fa on'")
    ap.add_argument("--cli", default=None, help="triattn-cli (default $TRIATTN_CLI_BIN, the installed one)")
    ap.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 2, help="build jobs")
    ap.add_argument("--json", default=None, help="every sample to this file (default "
                                                 "bench/results/cpu_sessions-COMMIT.json)")
    args = ap.parse_args()
    sessions = [int(x) for x in args.sessions.split(",")]
    if not sessions or min(sessions) < 1 or args.depth < 1 or args.gen < 1 or args.rounds < 1:
        raise SystemExit("--sessions, --depth, --gen and --rounds must be positive")
    exe = batched_bench(args.llama_batched_bench, args.jobs)
    if not exe.is_file():
        raise SystemExit(f"{TOOL}: no such file {exe}")
    cpu_parity.check_speed_reference(exe)
    cli = cpu_parity.find_cli(args.cli)
    model = Path(args.model).expanduser() if args.model.endswith(".gguf") else cpu_parity.model_file(
        args.model, None, args.jobs)
    if not model.is_file():
        raise SystemExit(f"{args.model}: no such file {model}")
    policies = {"full": ["--kv-policy", "full"]}
    if args.triattention:
        tri = ["--kv-policy", "triattention", "--kv-budget", str(args.kv_budget)]
        centres = cpu_parity.shipped_centres()
        if centres and args.model == "smollm2-135m":
            tri += ["--calibration", str(centres)]
        policies[f"triattention {args.kv_budget}"] = tri
    extra = args.llama_args.split()
    runners = [("llama.cpp", lambda: llama_rates(exe, model, args.depth, args.gen, sessions, args.threads, extra))]
    runners += [(pol, lambda flags=flags: cli_rates(cli, model, args.depth, args.gen, sessions, args.threads, flags))
                for pol, flags in policies.items()]
    samples: list[dict[str, dict[int, float]]] = []
    t0 = time.time()
    for rnd in range(args.rounds):
        got = {}
        for k in range(len(runners)):  # rotating order: each program goes first as often as the others
            name, run = runners[(rnd + k) % len(runners)]
            got[name] = run()
        samples.append(got)
        log(f"round {rnd + 1}/{args.rounds}: " + "; ".join(
            f"{name} " + " / ".join(f"{got[name][n]:.1f}" for n in sessions) for name, _ in runners) +
            f" t/s for {'/'.join(map(str, sessions))} sessions  ({time.time() - t0:.0f} s)")

    print(f"pytriattn {cpu_parity.commit()} vs llama.cpp ({TOOL} {' '.join(extra) or 'defaults'}), "
          f"{args.model}, prompt {args.depth} + {args.gen} decoded tokens per session, -t {args.threads}, "
          f"{args.rounds} round(s); aggregate decode t/s (medians), ratios = median of per-round ratios")
    print(f"machine: {cpu_parity.machine()}\n")
    print("| sessions | llama.cpp | " + " | ".join(f"pytriattn {p} | ratio" for p in policies) + " |")
    print("|---:|---:|" + "---:|---:|" * len(policies))
    for n in sessions:
        cells = [f"{statistics.median(s['llama.cpp'][n] for s in samples):.1f}"]
        for p in policies:
            cells.append(f"{statistics.median(s[p][n] for s in samples):.1f}")
            cells.append(f"**{statistics.median(s[p][n] / s['llama.cpp'][n] for s in samples):.2f}x**")
        print(f"| {n} | " + " | ".join(cells) + " |")
    out = Path(args.json) if args.json else cpu_parity.ROOT / "bench" / "results" / \
        f"cpu_sessions-{cpu_parity.commit()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "commit": cpu_parity.commit(), "cli": str(cli), "llama_batched_bench": str(exe), "model": str(model),
        "machine": cpu_parity.machine(), "threads": args.threads, "depth": args.depth, "gen": args.gen,
        "llama_args": extra, "rounds": args.rounds, "policies": policies,
        "samples": [{"round": i, "program": name, "sessions": n, "tps": tps}
                    for i, s in enumerate(samples) for name, per in s.items() for n, tps in per.items()]}, indent=1))
    log(f"samples written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
