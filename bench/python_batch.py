#!/usr/bin/env python3
"""Llama.generate_batch against generate() one prompt after another, on the same prompts and seeds.

  python bench/python_batch.py --prompts 8 --tokens 64 --parallel 1,2,4,8
  python bench/python_batch.py --start-chars 4000     # every prompt starts with the same 4,000 characters

Every run completes the same prompts (short story openings, `ignore_eos`, temperature 1.0, prompt k with seed
+ k); the texts of every batched run are checked equal to the one-at-a-time texts. Prints a markdown table and
writes JSON (bench/out/python_batch.json): wall seconds, medians of --repeat, and generated tokens per second.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OPENINGS = ["Once upon a time", "The old lighthouse keeper", "In the year 2300,", "She opened the letter and",
            "The recipe calls for", "Deep in the forest", "The train was late because", "Dear diary, today",
            "The robot looked at", "At the edge of the map", "My grandfather used to say", "The last bus home"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=64, help="tokens generated per prompt (default 64)")
    ap.add_argument("--parallel", default="1,2,4,8", help="n_parallel values (default 1,2,4,8)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("-m", "--model", default=None, help="GGUF (default: the default model)")
    ap.add_argument("--kv-policy", default=None)
    ap.add_argument("-c", "--ctx", type=int, default=2048)
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--start-chars", type=int, default=0, help="a start every prompt shares: this many characters "
                    "of the repository's README.md (default 0)")
    a = ap.parse_args(argv)
    sys.path.append(str(ROOT / "python"))  # an installed pytriattn comes first
    from pytriattn import Llama

    start = (ROOT / "README.md").read_text(encoding="utf-8")[:a.start_chars] + "\n\n" if a.start_chars else ""
    prompts = [start + OPENINGS[k % len(OPENINGS)] + ("" if k < len(OPENINGS) else f" ({k})")
               for k in range(a.prompts)]
    kw = dict(max_tokens=a.tokens, temperature=1.0, ignore_eos=True)
    rows = []
    with Llama(a.model, n_ctx=a.ctx, n_threads=a.threads, kv_policy=a.kv_policy) as llm:
        llm.generate(prompts[0], max_tokens=4)  # warm up
        seq, want = [], None
        for _ in range(a.repeat):
            t0 = time.perf_counter()
            texts = [llm.generate(p, seed=7 + k, **kw) for k, p in enumerate(prompts)]
            seq.append(time.perf_counter() - t0)
            want = texts
        gen = sum(len(llm.tokenize(t, add_bos=False)) for t in want)
        rows.append({"mode": "generate, one after another", "n_parallel": 1, "wall_s": statistics.median(seq)})
        for n in [int(x) for x in a.parallel.split(",")]:
            times = []
            for _ in range(a.repeat):
                t0 = time.perf_counter()
                got = llm.generate_batch(prompts, seed=7, n_parallel=n, **kw)
                times.append(time.perf_counter() - t0)
                if got != want:
                    raise SystemExit(f"n_parallel {n}: the texts differ from generate()'s")
            gen = sum(r["completion_tokens"] for r in llm.last_batch_results)
            rows.append({"mode": "generate_batch", "n_parallel": n, "wall_s": statistics.median(times)})
    base = rows[0]["wall_s"]
    print(f"| mode | n_parallel | wall s | generated tok/s | speed-up |\n|---|---:|---:|---:|---:|")
    for r in rows:
        r["tok_s"] = round(gen / r["wall_s"], 1)
        r["speedup"] = round(base / r["wall_s"], 2)
        r["wall_s"] = round(r["wall_s"], 3)
        print(f"| {r['mode']} | {r['n_parallel']} | {r['wall_s']} | {r['tok_s']} | {r['speedup']}x |")
    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    res = {"prompts": a.prompts, "tokens": a.tokens, "start_chars": a.start_chars, "threads": a.threads, "repeat": a.repeat,
           "kv_policy": a.kv_policy or "auto", "generated_tokens": gen, "rows": rows}
    (out / "python_batch.json").write_text(json.dumps(res, indent=1))
    print(f"wrote {out / 'python_batch.json'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
