#!/usr/bin/env python3
"""Needle-suite cases side by side, with a paired test of each policy against a reference policy.

Reads the per-case files `pytriattn eval needle` writes (OUT-needle-cases.jsonl, any number of them, from
separate runs) and prints one markdown table per (task, context, budget): hits, Wilson 95% interval, needle
survival and hits per depth for every method; then, on the cases both methods ran (same seed, depth,
haystack and phrasing, hence the same prompt), the paired comparison with --reference:

  wins / losses   cases only this method / only the reference answered;
  McNemar p       exact two-sided p of the sign test on those discordant cases (is the difference noise?);
  ratio [CI]      hit-rate ratio method / reference with a 95% paired-bootstrap interval over the cases.

    python bench/needle_compare.py /tmp/n4/*-needle-cases.jsonl --reference streaming
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.append(str(Path(__file__).resolve().parent.parent / "python"))  # an installed pytriattn comes first
from pytriattn.eval import mcnemar_p as mcnemar_exact, wilson  # noqa: E402


def case_id(r: dict) -> tuple:
    return (r["seed"], round(r["depth"], 4), r.get("haystack"), r.get("phrasing"), r.get("value"))


def load(paths) -> dict:
    """(task, context, budget) -> method -> case id -> case (a later file replaces an earlier duplicate)."""
    cells: dict = defaultdict(lambda: defaultdict(dict))
    for p in paths:
        for line in Path(p).read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                cells[(r["task"], r["context"], r["budget"])][r["method"]][case_id(r)] = r
    return cells


def ratio_ci(a: np.ndarray, b: np.ndarray, n_boot: int = 20000, seed: int = 0) -> tuple[float, float, float]:
    """Hit-rate ratio mean(a)/mean(b) and its 95% percentile interval, resampling cases (pairs kept)."""
    ratio = a.mean() / b.mean() if b.sum() else (math.inf if a.sum() else math.nan)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, a.size, size=(n_boot, a.size))
    sa, sb = a[idx].sum(axis=1), b[idx].sum(axis=1)
    keep = (sa > 0) | (sb > 0)                       # 0/0 resamples say nothing about the ratio
    r = np.where(sb > 0, sa / np.maximum(sb, 1), np.inf)[keep]
    if r.size == 0:
        return float(ratio), math.nan, math.nan
    lo, hi = np.quantile(r, [0.025, 0.975], method="inverted_cdf")  # no interpolation across ∞
    return float(ratio), float(lo), float(hi)


def survival(r: dict) -> float:
    s = np.asarray(r["survival"], dtype=float)
    return float(s.mean()) if s.size else float("nan")


def fmt(x: float) -> str:
    return "∞" if math.isinf(x) else "–" if math.isnan(x) else f"{x:.2f}"


def report(cells: dict, reference: str | None) -> str:
    out = []
    for (task, ctx, budget), methods in sorted(cells.items()):
        depths = sorted({cid[1] for m in methods.values() for cid in m})
        out.append(f"\n### {task}, context {ctx}, budget {budget}\n")
        out.append("| method | hits | Wilson 95% | needle kept | hits per depth " + " / ".join(map(str, depths)) + " |")
        out.append("|---|---:|---:|---:|---|")
        rows = sorted(methods.items(), key=lambda kv: -sum(r["hit"] for r in kv[1].values()) / len(kv[1]))
        for m, cases in rows:
            k, n = sum(r["hit"] for r in cases.values()), len(cases)
            lo, hi = wilson(k, n)
            per = []
            for d in depths:
                dc = [r for cid, r in cases.items() if cid[1] == d]
                per.append(f"{sum(r['hit'] for r in dc)}/{len(dc)}")
            surv = np.mean([survival(r) for r in cases.values()])
            out.append(f"| {m} | {k}/{n} | {lo:.2f}–{hi:.2f} | {surv:.2f} | {' / '.join(per)} |")
        if reference and reference in methods:
            ref = methods[reference]
            out.append(f"\npaired against {reference} (same prompts):\n")
            out.append("| method | cases | hits / ref hits | wins / losses | McNemar p | ratio [95% CI] |")
            out.append("|---|---:|---:|---:|---:|---|")
            for m, cases in rows:
                if m == reference:
                    continue
                common = sorted(set(cases) & set(ref))
                if not common:
                    continue
                a = np.array([cases[c]["hit"] for c in common], dtype=float)
                b = np.array([ref[c]["hit"] for c in common], dtype=float)
                wins, losses = int(((a == 1) & (b == 0)).sum()), int(((a == 0) & (b == 1)).sum())
                r, lo, hi = ratio_ci(a, b)
                out.append(f"| {m} | {len(common)} | {int(a.sum())} / {int(b.sum())} | {wins} / {losses} | "
                           f"{mcnemar_exact(wins, losses):.3g} | {fmt(r)} [{fmt(lo)}, {fmt(hi)}] |")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cases", nargs="+", help="OUT-needle-cases.jsonl files")
    ap.add_argument("--reference", default="streaming", help="method to pair every other against")
    args = ap.parse_args()
    missing = [p for p in args.cases if not Path(p).is_file()]
    if missing:
        ap.error(f"no such file: {', '.join(missing)}")
    print(report(load(args.cases), args.reference))
    return 0


if __name__ == "__main__":
    sys.exit(main())
