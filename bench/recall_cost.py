#!/usr/bin/env python3
"""What recall from tier 2 costs: time, memory, decode speed.

For each --contexts length: a prompt of that many King James Bible tokens, then --gen greedy tokens, with the
same policy and budget, without and with kv_recall (interleaved, --reps each). Reported per context (medians):

  prefill ms without / with recall   the prompt's time (with recall: + the recall + the replay of 32 tokens)
  recall ms                          the recall itself (kv_stats recall_ms: scoring both tiers and swapping)
  replay ms                          prefill with - prefill without - recall (32 tokens decoded again)
  share                              (recall + replay) / prefill without recall
  decode tok/s without / with        the --gen tokens after the prompt (no tier-2 work between recalls)
  tier 2                             rows, MiB, and its size against full attention's F16 K and V at that context

  nice -n 10 python bench/recall_cost.py --contexts 8192,32768 --budget 1024 --recall 256 -o bench/results/recall-cost.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT / "python"))  # an installed pytriattn comes first


def one(model, calibration, toks, policy: str, budget: int, recall: int, gen: int, threads: int) -> dict:
    from pytriattn import Llama

    kw = dict(n_ctx=len(toks) + gen + 64, n_threads=threads, kv_policy=policy, kv_budget=budget, kv_recall=recall)
    if calibration and policy == "triattention":
        kw["calibration"] = calibration
    llm = Llama(model, **kw)
    try:
        text = llm.detokenize(toks).decode("utf-8", "replace")
        t0 = time.perf_counter()
        llm.generate(text, max_tokens=gen, temperature=0, ignore_eos=True)
        wall = time.perf_counter() - t0
        lr, st, info = llm.last_result, llm.kv_stats(), llm.model_info
        n = lr["prompt_tokens"]
        full_f16 = n * info["n_layer"] * info["n_head_kv"] * info["head_dim"] * 2 * 2
        return {"recall": recall, "prompt_tokens": n, "prefill_ms": lr["prompt_ms"], "decode_ms": lr["decode_ms"],
                "generated": lr["completion_tokens"], "wall_s": wall, "recall_ms": st["recall_ms"],
                "n_recalls": st["n_recalls"], "n_recalled": st["n_recalled"], "t2_rows": st["t2_rows"],
                "t2_bytes": st["t2_bytes"], "kv_bytes": st["kv_bytes"], "full_f16_kv_bytes": full_f16}
    finally:
        llm.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--model", default=None)
    ap.add_argument("--calibration", default=None)
    ap.add_argument("--contexts", default="8192,32768")
    ap.add_argument("--policy", default="triattention")
    ap.add_argument("--budget", type=int, default=1024)
    ap.add_argument("--recall", type=int, default=256)
    ap.add_argument("--gen", type=int, default=64)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("-o", "--out", default=None, help="JSON file of every run")
    a = ap.parse_args(argv)

    from pytriattn import Llama
    from pytriattn._fetch import ensure_default_model
    from pytriattn.eval import kjv_text, text_tokens
    from pytriattn.llama import default_calibration

    model = a.model or str(ensure_default_model())
    calibration = a.calibration or (None if a.model else default_calibration())
    probe = Llama(model, n_ctx=16, n_threads=1, kv_policy="full")
    text = kjv_text()
    runs = []
    print("| context | prefill ms (no recall / recall) | recall ms | replay ms | share | decode tok/s (no recall / recall) "
          "| tier 2 rows | tier 2 MiB | / full F16 KV |")
    print("|---:|---|---:|---:|---:|---|---:|---:|---:|")
    for ctx in [int(c) for c in a.contexts.split(",")]:
        toks = text_tokens(probe, text, ctx, "recall_cost")
        res = {0: [], a.recall: []}
        for _ in range(a.reps):
            for r in (0, a.recall):
                x = one(model, calibration, toks, a.policy, a.budget, r, a.gen, a.threads)
                x["context"] = ctx
                res[r].append(x)
                runs.append(x)
                print(f"  {ctx} recall {r}: prefill {x['prefill_ms']:.0f} ms, recall {x['recall_ms']:.0f} ms, "
                      f"decode {x['generated'] / x['decode_ms'] * 1e3:.1f} tok/s", file=sys.stderr, flush=True)
        med = lambda r, k: statistics.median(x[k] for x in res[r])  # noqa: E731
        tps = lambda r: statistics.median(x["generated"] / x["decode_ms"] * 1e3 for x in res[r])  # noqa: E731
        p0, p1, rc = med(0, "prefill_ms"), med(a.recall, "prefill_ms"), med(a.recall, "recall_ms")
        last = res[a.recall][-1]
        print(f"| {ctx} | {p0:.0f} / {p1:.0f} | {rc:.0f} | {p1 - p0 - rc:.0f} | {(p1 - p0) / p0:.1%} | "
              f"{tps(0):.1f} / {tps(a.recall):.1f} | {last['t2_rows']} | {last['t2_bytes'] / 2**20:.1f} | "
              f"{last['t2_bytes'] / last['full_f16_kv_bytes']:.1%} |", flush=True)
    probe.close()
    if a.out:
        Path(a.out).write_text(json.dumps(runs, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
