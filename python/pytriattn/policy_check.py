"""The policy check of `pytriattn calibrate`: which KV policy stays closest to full attention on this model.

After the centres are measured, a held-out stretch of the calibration text (up to CONTEXT tokens that follow
the calibrated ones, 4,096 by default: the shortest context of the quality tables; no check when fewer than
MIN_CONTEXT follow) is teacher-forced with `pytriattn eval ppl`'s schedule (the
first token alone, then calls that end exactly where the live slots reach budget + interval, so each round
happens where token-by-token decoding would do it) under full attention, `triattention`, `streaming` and
`snapkv` at budgets of 1/8 and 1/4 of the check context. TriAttention runs twice: with its default
future-distance average (offsets 2^0..2^16) and with the offsets bounded at the compression interval (the
score is recomputed every interval; on RoPE bases of 10^6 the long offsets average the distance-dependent
part away). KL(full || policy) is averaged over the last `tail` predicted positions. The better TriAttention
horizon is kept (`triattention.offmax` when it is the short one: the score's default for this model).
TriAttention becomes `triattention.auto_policy`, what kv_policy "auto" uses for this model, when its KL is no
higher than every other candidate's at every budget; otherwise the other candidate with the lowest mean KL over
the budgets does. Results are written next to it (`triattention.check.*`,
docs/gguf-keys.md) so `pytriattn info` can say why.
"""
from __future__ import annotations

import numpy as np

CANDIDATES = ("triattention", "streaming", "snapkv")
CONTEXT = 4096
TAIL = 256
MIN_CONTEXT = 512


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=1, keepdims=True)
    return x - (m + np.log(np.exp(x - m).sum(axis=1, keepdims=True)))


def tail_logprobs(llm, toks, tail: int, interval: int, budget: int | None, prompt: bool = False,
                  recall: bool = False) -> np.ndarray:
    """Log-probs (tail, V) of the successors of the last `tail` predicting positions of toks, teacher-forced
    through llm (its policy) with calls ending where the live slots reach budget + interval (budget None:
    calls of `interval` tokens). prompt: the text before the tail is one decode call; recall: then recall from
    tier 2, as a generation does once its prompt has been read."""
    n = len(toks)
    first = n - 1 - tail
    out = np.empty((tail, llm.n_vocab()), dtype=np.float32)
    llm.reset()
    a = 0
    if prompt:
        llm.decode(toks[:first])
        if recall:
            llm.kv_recall()
        a = first
    while a < n - 1:
        st = llm.kv_stats()
        room = interval if budget is None else budget + interval - st["live_max"]
        b = 1 if a == 0 else min(n - 1, a + max(1, min(interval, room)))
        if b > first:
            lo = max(a, first)
            if lo > a:
                llm.decode(toks[a:lo])
            out[lo - first:b - first] = log_softmax(llm.eval(toks[lo:b]))
        else:
            llm.decode(toks[a:b])
        a = b
    return out


def mean_kl(full: np.ndarray, lp: np.ndarray) -> float:
    total = 0.0
    for a in range(0, full.shape[0], 64):
        f = full[a:a + 64].astype(np.float64)
        total += float((np.exp(f) * (f - lp[a:a + 64].astype(np.float64))).sum())
    return total / max(1, full.shape[0])


def run_check(model, calibration, toks, interval: int = 128, threads: int | None = None, tail: int = TAIL,
              progress: bool = False, context: int = CONTEXT) -> dict | None:
    """KL per (candidate, budget) on the first `context` tokens of toks; None when there are fewer than
    MIN_CONTEXT."""
    from .llama import Llama

    n = min(len(toks), context)
    if n < MIN_CONTEXT:
        return None
    toks = list(toks[:n])
    tail = min(tail, n // 4)
    budgets = [n // 8, n // 4]
    kw = dict(n_ctx=n + 8, n_batch=interval, n_threads=threads, kv_interval=interval)
    with Llama(model, kv_policy="full", **kw) as llm:
        full = tail_logprobs(llm, toks, tail, interval, None)
    short = f"offmax={interval}" if 1 <= interval <= 65536 and interval & (interval - 1) == 0 else None
    runs = [(p, None) for p in CANDIDATES] + ([("triattention", short)] if short else [])
    labels = [p if mode is None else f"{p},{mode}" for p, mode in runs]
    kl = {}
    for (pol, mode), label in zip(runs, labels):
        for b in budgets:
            extra = {"kv_mode": f"per_head,{mode}"} if mode else {}
            with Llama(model, kv_policy=pol, kv_budget=b, calibration=calibration, **extra, **kw) as llm:
                kl[(label, b)] = mean_kl(full, tail_logprobs(llm, toks, tail, interval, b))
            if progress:
                import sys
                print(f"pytriattn: policy check, {label} at budget {b}: KL {kl[(label, b)]:.4f}", file=sys.stderr)
    means = {p: sum(kl[(p, b)] for b in budgets) / len(budgets) for p in labels}
    ta = min((p for p in labels if p.startswith("triattention")), key=lambda p: (means[p], p != "triattention"))
    # the rule auto must keep: triattention only where it is at least as close as every baseline at every budget;
    # otherwise the baseline with the lowest mean
    baselines = [p for p in CANDIDATES if p != "triattention"]
    wins = all(kl[(ta, b)] <= kl[(p, b)] for p in baselines for b in budgets)
    best = "triattention" if wins else min(baselines, key=lambda p: means[p])
    return {"auto_policy": best, "offmax": interval if ta != "triattention" else None, "context": n, "tail": tail,
            "budgets": budgets, "policies": labels, "kl": [kl[(p, b)] for p in labels for b in budgets]}


def check_kvs(check: dict) -> list[tuple[str, object, object]]:
    from .calibrate import T_ARR, T_F32, T_STR, T_U32
    horizon = [("triattention.offmax", T_U32, int(check["offmax"]))] if check.get("offmax") else []
    return horizon + [
        ("triattention.auto_policy", T_STR, check["auto_policy"]),
        ("triattention.check.context", T_U32, int(check["context"])),
        ("triattention.check.budgets", (T_ARR, T_U32), [int(b) for b in check["budgets"]]),
        ("triattention.check.policies", (T_ARR, T_STR), list(check["policies"])),
        ("triattention.check.kl", (T_ARR, T_F32), [float(x) for x in check["kl"]]),
    ]


def describe(md: dict) -> str | None:
    """One line for `pytriattn info` from a file's metadata (key -> value), or None without a check."""
    pol = md.get("triattention.auto_policy")
    if pol is None:
        return None
    pols, budgets = md.get("triattention.check.policies"), md.get("triattention.check.budgets")
    kl = md.get("triattention.check.kl")
    detail = ""
    if pols is not None and budgets is not None and kl is not None and len(kl) == len(pols) * len(budgets):
        parts = [f"{p} " + " / ".join(f"{kl[i * len(budgets) + j]:.4f}" for j in range(len(budgets)))
                 for i, p in enumerate(pols)]
        detail = (f" (policy check, KL(full || policy) at {md.get('triattention.check.context')} tokens, budgets "
                  f"{' / '.join(str(int(b)) for b in budgets)}: {'; '.join(parts)})")
    why = "" if pol == "triattention" else ", falling back from triattention"
    off = md.get("triattention.offmax")
    horizon = f"; triattention's future offsets up to {int(off)} (the check's choice)" if off is not None else ""
    return f"kv_policy auto = {pol}{why}{horizon}{detail}"
