"""KL(full ‖ policy) over the last --tail positions of a --context-token text, for models whose vocabulary
makes full-context logits expensive (Gemma 3: 262,144 tokens).

The schedule is `pytriattn eval ppl`'s (python/pytriattn/eval.py: run_context): the first token alone,
then calls that end exactly when the live slots reach budget + interval, so every compression happens where
token-by-token decoding would do it. Only the last --tail positions compute logits; with budgets below
context - tail every one of them comes after the first compression. Metrics over those positions, against
full attention on the same tokens: mean KL(full ‖ policy) (nats/token), ΔNLL, top-1 agreement, perplexity,
plus the policy's KV bytes.

With --prompt the text before the tail is one decode call (a long prompt, as a document or a conversation
is sent), then the tail is teacher-forced the same way: the setting where kv_mode look= (question-aware
prefill) acts; --kv-mode sets triattention's kv_mode (the label becomes triattention/MODE); --kv-recall R adds a
recall from tier 2 once the prompt is read (label POLICY+recallR).

    python bench/kl_tail.py -m gemma-3-270m-q4_k_m.gguf --calibration gemma3.tri-stats.gguf \
        --context 4096 --tail 512 --budgets 512,1024 --policies triattention,snapkv -o bench/results/kl_gemma3.csv
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np

from pytriattn.policy_check import mean_kl, tail_logprobs


def run(model: str, toks, tail: int, policy: str, budget: int | None, interval: int, threads: int,
        calibration: str | None, prompt: bool = False, kv_mode: str | None = None,
        kv_window: int | None = None, kv_recall: int = 0) -> tuple[np.ndarray, dict]:
    """Log-probs (tail, V) of the last `tail` predicting positions (distributions of toks[n-tail..n-1]'s
    successors: positions n-tail-1 .. n-2), and the final KV stats."""
    from pytriattn import Llama

    n = len(toks)
    kw = dict(n_ctx=n + 8, n_batch=interval, n_threads=threads, kv_policy=policy, kv_interval=interval)
    if budget is not None:
        kw["kv_budget"] = budget
    if calibration:
        kw["calibration"] = calibration
    if kv_mode:
        kw["kv_mode"] = kv_mode
    if kv_window is not None:
        kw["kv_window"] = kv_window
    if kv_recall:
        kw["kv_recall"] = kv_recall
    llm = Llama(model, **kw)
    try:
        return tail_logprobs(llm, toks, tail, interval, budget, prompt, recall=bool(kv_recall)), llm.kv_stats()
    finally:
        llm.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--model", required=True)
    ap.add_argument("--calibration", default=None)
    ap.add_argument("--text", default=None, help="UTF-8 text (default: the King James Bible via `bible`)")
    ap.add_argument("--context", type=int, default=4096)
    ap.add_argument("--tail", type=int, default=512)
    ap.add_argument("--budgets", default="512,1024")
    ap.add_argument("--policies", default="triattention,snapkv")
    ap.add_argument("--kv-interval", type=int, default=128)
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("-o", "--out", default=None, help="CSV (kvpress shape) to append to")
    ap.add_argument("--full-cache", default=None, help=".npy of full attention's tail log-probs (reused when it exists)")
    ap.add_argument("--lp-dir", default=None, help="keep each policy's tail log-probs here as <policy>-<budget>.npy "
                    "and reuse them (so configurations can run as separate processes)")
    ap.add_argument("--prompt", action="store_true", help="decode the text before the tail as one call (a prompt)")
    ap.add_argument("--kv-mode", default=None, help="kv_mode of triattention (e.g. per_head,look=256,lookw=3)")
    ap.add_argument("--kv-recall", type=int, default=0, help="kv_recall of every policy; with --prompt a recall "
                    "runs once the prompt is read (label +recallN)")
    ap.add_argument("--kv-window", type=int, default=None,
                    help="protected recent window of every policy (default: each policy's own)")
    ap.add_argument("--no-full", action="store_true", help="only compute and keep the policies' log-probs "
                    "(with --lp-dir); metrics come from a later run that has full attention's")
    a = ap.parse_args(argv)

    from pytriattn import Llama
    from pytriattn.eval import kjv_text, text_tokens

    text = Path(a.text).read_text(encoding="utf-8") if a.text else kjv_text()
    probe = Llama(a.model, n_ctx=16, n_threads=1, kv_policy="full")
    try:
        toks = text_tokens(probe, text, a.context, "kl_tail")
    finally:
        probe.close()
    nxt = np.asarray(toks[a.context - a.tail:], dtype=np.int64)
    rows = np.arange(a.tail)
    def label(policy: str) -> str:
        name = f"{policy}/{a.kv_mode}" if policy == "triattention" and a.kv_mode else policy
        name = name if a.kv_window is None else f"{name}/w{a.kv_window}"
        return name + (f"+recall{a.kv_recall}" if a.kv_recall else "")

    def policy_lp(policy: str, budget: int):
        tag = label(policy).replace("/", "_").replace(",", "_").replace("=", "") + ("-prompt" if a.prompt else "")
        path = Path(a.lp_dir) / f"{tag}-{budget}.npy" if a.lp_dir else None
        if path is not None and path.is_file():
            return np.load(path), json.loads(Path(str(path) + ".json").read_text())
        lp, kv = run(a.model, toks, a.tail, policy, budget, a.kv_interval, a.threads,
                     a.calibration if policy == "triattention" else None, a.prompt,
                     a.kv_mode if policy == "triattention" else None, a.kv_window, a.kv_recall)
        if path is not None:
            np.save(path, lp)
            Path(str(path) + ".json").write_text(json.dumps(kv))
        return lp, kv

    policies = [p for p in a.policies.split(",") if p]
    budgets = [int(b) for b in a.budgets.split(",") if b]
    if a.no_full:
        for policy in policies:
            for budget in budgets:
                policy_lp(policy, budget)
        return 0
    t0 = time.time()
    if a.full_cache and Path(a.full_cache).is_file():
        full = np.load(a.full_cache)
    else:
        full, _ = run(a.model, toks, a.tail, "full", None, a.kv_interval, a.threads, None)
        if a.full_cache:
            np.save(a.full_cache, full)
    f_nll = -full[rows, nxt]
    print(f"full: ppl {np.exp(f_nll.mean()):.4f} ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
    results = [("full", None, {"ppl": float(np.exp(f_nll.mean())), "kl": 0.0, "delta_nll": 0.0, "top1_agree": 1.0})]
    for policy in policies:
        for budget in budgets:
            t0 = time.time()
            lp, kv = policy_lp(policy, budget)
            nll = -lp[rows, nxt]
            m = {"ppl": float(np.exp(nll.mean())),
                 "kl": mean_kl(full, lp),
                 "delta_nll": float(nll.mean() - f_nll.mean()),
                 "top1_agree": float((lp.argmax(axis=1) == full.argmax(axis=1)).mean()),
                 "kv_bytes": kv["kv_bytes"], "n_compressions": kv["n_compressions"]}
            results.append((label(policy), budget, m))
            print(f"{label(policy)} @ {budget}: " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                                       for k, v in m.items()) + f" ({time.time() - t0:.0f} s)",
                  file=sys.stderr, flush=True)
    if a.out:
        new = not Path(a.out).exists()
        with open(a.out, "a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(["dataset", "context", "model", "method", "budget", "compression", "metric", "value"])
            for policy, budget, m in results:
                for k, v in m.items():
                    w.writerow([f"kjv-tail{a.tail}" + ("-prompt" if a.prompt else ""), a.context, Path(a.model).name, policy, budget or "",
                                f"{budget / a.context:.4f}" if budget else "", k, v])
    return 0


if __name__ == "__main__":
    sys.exit(main())
