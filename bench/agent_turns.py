#!/usr/bin/env python3
"""A 20-turn chat against triattn-server with the prompt cache on and off: time per turn vs turn number.

Each turn sends the whole conversation (the openai-client way): the previous turns, the model's replies and
~100 new tokens of English prose, and asks for 64 generated tokens (greedy, ignore_eos). With the cache on, a
slot continues from what it holds and prefills only the new turn; with "cache_prompt": false it prefills the
whole conversation every time. Runs `full` and `triattention` (budget 512) on the default model.

  python bench/agent_turns.py                    # 20 turns, both policies, cache on and off
  python bench/agent_turns.py --turns 10 --policies full

Writes bench/results/agent_turns.csv, docs/img/agent_turns.png and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import csv
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.append(str(ROOT / "python"))  # an installed pytriattn comes first

from server_load import SIDECAR, Server  # noqa: E402


def prose_turns(n: int, words_per_turn: int = 75) -> list[str]:
    """n consecutive pieces of the project's documentation prose, ~100 tokens each."""
    text = " ".join((ROOT / "docs" / f).read_text() for f in ("engine.md", "triattention-engine.md", "results.md"))
    words = re.findall(r"[A-Za-z][A-Za-z,.;:'()-]*", text)
    return [" ".join(words[i * words_per_turn:(i + 1) * words_per_turn]) for i in range(n)]


def run(policy: str, cache: bool, turns: list[str], gen: int, threads: int) -> list[dict]:
    args = ["--parallel", "1", "--ctx-size", "8192", "--threads", str(threads)]
    if policy == "triattention":
        args += ["--kv-policy", "triattention", "--calibration", str(SIDECAR), "--kv-budget", "512"]
    else:
        args += ["--kv-policy", "full"]
    srv = Server(*args)
    rows = []
    try:
        msgs = [{"role": "system", "content": "You are a careful technical reader. Answer briefly."}]
        for k, text in enumerate(turns, 1):
            msgs.append({"role": "user", "content": f"Summarise this passage: {text}"})
            t0 = time.perf_counter()
            st, r = srv.post("/v1/chat/completions", {"messages": msgs, "max_tokens": gen, "temperature": 0,
                                                       "ignore_eos": True, "cache_prompt": cache})
            wall = (time.perf_counter() - t0) * 1e3
            if st != 200:
                raise SystemExit(f"turn {k}: HTTP {st}: {r}")
            msgs.append({"role": "assistant", "content": r["choices"][0]["message"]["content"]})
            u, tm = r["usage"], r["timings"]
            rows.append({"policy": policy, "cache": "on" if cache else "off", "turn": k,
                         "prompt_tokens": u["prompt_tokens"], "cached_tokens": u["prompt_tokens_details"]["cached_tokens"],
                         "completion_tokens": u["completion_tokens"], "prefill_ms": round(tm["prompt_ms"], 1),
                         "decode_ms": round(tm["decode_ms"], 1), "turn_ms": round(wall, 1), "reuse": tm.get("cache")})
            print(f"{policy:12s} cache {rows[-1]['cache']:3s} turn {k:2d}: prompt {u['prompt_tokens']:5d} "
                  f"cached {rows[-1]['cached_tokens']:5d} prefill {tm['prompt_ms']:8.1f} ms  turn {wall:8.1f} ms",
                  flush=True)
    finally:
        srv.close()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--turns", type=int, default=20)
    ap.add_argument("--gen", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--policies", default="full,triattention")
    ap.add_argument("--csv", default=str(ROOT / "bench" / "results" / "agent_turns.csv"))
    ap.add_argument("--png", default=str(ROOT / "docs" / "img" / "agent_turns.png"))
    ap.add_argument("--report", action="store_true", help="only redraw the plot and table from --csv")
    a = ap.parse_args()
    if a.report:
        with open(a.csv, newline="") as f:
            rows = [{k: (float(v) if k.endswith("_ms") else int(v) if k.endswith(("turn", "tokens")) else v)
                     for k, v in r.items()} for r in csv.DictReader(f)]
    else:
        turns = prose_turns(a.turns)
        rows = []
        for policy in a.policies.split(","):
            for cache in (True, False):
                rows += run(policy, cache, turns, a.gen, a.threads)
                with open(a.csv, "w", newline="") as f:  # after every run, so a long run leaves its results
                    w = csv.DictWriter(f, fieldnames=list(rows[0]))
                    w.writeheader()
                    w.writerows(rows)
    report(rows, a)


def report(rows: list[dict], a) -> None:
    policies = list(dict.fromkeys(r["policy"] for r in rows))

    from pytriattn._plot import grid, line_chart, write_png
    charts = []
    for key, label in (("prefill_ms", "PREFILL MS"), ("turn_ms", "TURN MS")):
        series = {}
        for policy in policies:
            for cache in ("on", "off"):
                sel = [r for r in rows if r["policy"] == policy and r["cache"] == cache]
                series[f"{policy} cache {cache}"] = ([r["turn"] for r in sel], [r[key] for r in sel])
        charts.append(line_chart(series, title=f"{label} PER TURN", xlabel="TURN", ylabel=label))
    write_png(a.png, grid(charts, cols=2))

    n = max(r["turn"] for r in rows)
    at = (1, max(1, n // 2), n)
    turns = " / ".join(str(t) for t in at)
    print(f"\n| policy | prompt cache | prefill ms, turn {turns} | turn ms, turn {turns} | total s, {n} turns | "
          "cached tokens, last turn |")
    print("|---|---|---|---|---|---|")
    for policy in policies:
        for cache in ("on", "off"):
            sel = [r for r in rows if r["policy"] == policy and r["cache"] == cache]
            if not sel:
                continue
            pick = [sel[i - 1] for i in at]
            pre = " / ".join("%.0f" % r["prefill_ms"] for r in pick)
            per = " / ".join("%.0f" % r["turn_ms"] for r in pick)
            total = sum(r["turn_ms"] for r in sel) / 1e3
            print(f"| {policy} | {cache} | {pre} | {per} | {total:.1f} | "
                  f"{sel[-1]['cached_tokens']} of {sel[-1]['prompt_tokens']} |")
    print(f"\nwrote {a.csv} and {a.png}")


if __name__ == "__main__":
    main()
