"""KV memory and TriAttention overhead against context length, on the default model.

For each (policy, context): a fresh process prefills `context` tokens of real text (the King James Bible
through Debian's `bible`, else any --text file), then decodes --decode tokens, and reports the KV bytes
the session allocated, peak RSS, decode tok/s and, for compressing policies, the compression rounds and
the scoring + compaction time per round (and its share of decode time).

    python bench/kv_memory.py --contexts 2048,8192,32768 --policies full,triattention --out bench/out/kv.csv
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path


def _text_tokens(llm, path: str | None, n: int) -> list[int]:
    if path:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    else:
        text = subprocess.run(["bible", "-f", "Genesis 1:1-Revelation 22:21"], capture_output=True,
                              text=True, check=True).stdout
    toks = llm.tokenize(text, add_bos=False)
    while len(toks) < n:  # repeat the text if it is short
        toks = toks + toks
    return toks[:n]


def run_one(policy: str, context: int, budget: int, decode: int, threads: int, text: str | None) -> dict:
    from pytriattn import Llama

    kw = dict(n_threads=threads, kv_policy=policy, n_ctx=context + decode + 8)
    if policy != "full":
        kw.update(kv_budget=budget)
    with Llama(**kw) as llm:
        toks = _text_tokens(llm, text, context)
        t0 = time.perf_counter()
        for i in range(0, len(toks), 512):
            llm.decode(toks[i:i + 512])
        prefill_s = time.perf_counter() - t0
        before = llm.kv_stats()
        t0 = time.perf_counter()
        tok = toks[-1]
        for _ in range(decode):  # greedy decode continuing the text
            tok = int(llm.eval([tok])[0].argmax())
        decode_s = time.perf_counter() - t0
        st = llm.kv_stats()
    rounds = st["n_compressions"] - before["n_compressions"]
    score_ms = st["score_ms"] - before["score_ms"]
    return {
        "policy": policy, "context": context, "budget": budget if policy != "full" else None,
        "kv_bytes": st["kv_bytes"], "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "prefill_tok_s": context / prefill_s, "decode_tok_s": decode / decode_s,
        "decode_rounds": rounds, "ms_per_round": score_ms / rounds if rounds else None,
        "round_share_of_decode": score_ms / 1e3 / decode_s if rounds else None,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--contexts", default="2048,8192,32768")
    ap.add_argument("--policies", default="full,triattention")
    ap.add_argument("--budget", type=int, default=2048)
    ap.add_argument("--decode", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--text", help="text file (default: the King James Bible via `bible`)")
    ap.add_argument("--out", default="bench/out/kv_memory.csv")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one config, print JSON
    a = ap.parse_args()
    if a.one:
        policy, context = a.one.split(":")
        print(json.dumps(run_one(policy, int(context), a.budget, a.decode, a.threads, a.text)))
        return 0
    rows = []
    for context in [int(c) for c in a.contexts.split(",")]:
        for policy in a.policies.split(","):
            cmd = [sys.executable, __file__, "--one", f"{policy}:{context}", "--budget", str(a.budget),
                   "--decode", str(a.decode), "--threads", str(a.threads)] + (["--text", a.text] if a.text else [])
            p = subprocess.run(cmd, capture_output=True, text=True)
            if p.returncode != 0:
                print(f"{policy} @ {context}: failed\n{p.stderr[-2000:]}", file=sys.stderr)
                continue
            row = json.loads(p.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(json.dumps(row), flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    with open(a.out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["policy"])
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
