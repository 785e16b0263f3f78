"""Markdown tables for docs/results.md from the CSVs of `pytriattn eval` / `pytriattn bench`.

    python bench/quality_report.py --quality Q.csv --passkey P.csv --bench B.csv
"""
from __future__ import annotations

import argparse
import csv
from collections import defaultdict

ORDER = ["full", "triattention", "snapkv", "rkv", "h2o", "streaming", "random"]


def load(path):
    if not path:
        return []
    with open(path, newline="") as f:
        return [dict(r, context=int(r["context"]), budget=int(r["budget"]), value=float(r["value"]))
                for r in csv.DictReader(f)]


def order(m):
    base = m.split("/")[0]
    return (ORDER.index(base) if base in ORDER else len(ORDER), m)


def table(rows, dataset, metric, fmt, ctx):
    """method x budget for one context."""
    sel = [r for r in rows if r["dataset"] == dataset and r["metric"] == metric and r["context"] == ctx]
    budgets = sorted({r["budget"] for r in sel if r["method"] != "full"})
    val = {(r["method"], r["budget"]): r["value"] for r in sel}
    full = next((r["value"] for r in sel if r["method"] == "full"), None)
    out = ["| method | " + " | ".join(str(b) for b in budgets) + " |", "|---|" + "---:|" * len(budgets)]
    if metric == "ppl":  # each cell: the policy's ppl / full attention's on the same tokens
        ref = {(r["method"], r["budget"]): r["value"] for r in rows if r["dataset"] == dataset
               and r["metric"] == "ppl_full" and r["context"] == ctx}
        val = {k: (v, ref.get(k, float("nan"))) for k, v in val.items()}
        fmt, full = (lambda v: f"{v[0]:.2f} / {v[1]:.2f}"), None
    if full is not None:
        out.append("| full | " + " | ".join(fmt(full) for _ in budgets) + " |")
    for m in sorted({r["method"] for r in sel if r["method"] != "full"}, key=order):
        cells = [fmt(val[(m, b)]) if (m, b) in val else "" for b in budgets]
        out.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def ranking(rows, dataset, metric, ctx, higher_better):
    """Per budget, the methods sorted best first."""
    sel = [r for r in rows if r["dataset"] == dataset and r["metric"] == metric and r["context"] == ctx
           and r["method"] != "full"]
    by = defaultdict(list)
    for r in sel:
        by[r["budget"]].append((r["value"], r["method"]))
    lines = []
    for b in sorted(by):
        s = sorted(by[b], reverse=higher_better)
        lines.append(f"- budget {b}: " + " > ".join(f"{m} ({v:.3g})" for v, m in s))
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quality")
    ap.add_argument("--passkey")
    ap.add_argument("--bench")
    ap.add_argument("--dataset", default="kjv")
    a = ap.parse_args()
    q = load(a.quality)
    for ctx in sorted({r["context"] for r in q}):
        for ds, metric, title, fmt in (
                (a.dataset, "kl", "mean KL(full ‖ policy), nats/token", lambda v: f"{v:.3f}"),
                (a.dataset, "delta_nll", "ΔNLL vs full, nats/token", lambda v: f"{v:+.3f}"),
                (a.dataset, "ppl", "perplexity after the first compression: policy / full attention on the same tokens",
                 lambda v: f"{v:.2f}"),
                (a.dataset, "top1_agree", "top-1 agreement with full", lambda v: f"{100 * v:.1f}%"),
                (a.dataset + "-gen", "first_divergence", "greedy tokens until the first divergence",
                 lambda v: f"{v:.0f}"),
                (a.dataset + "-gen", "token_agreement", "greedy token agreement", lambda v: f"{100 * v:.1f}%")):
            if any(r["dataset"] == ds and r["metric"] == metric and r["context"] == ctx for r in q):
                print(f"#### {title}, context {ctx}\n")
                print(table(q, ds, metric, fmt, ctx) + "\n")
        print(f"#### ranking by KL, context {ctx} (lower is better)\n")
        print(ranking(q, a.dataset, "kl", ctx, higher_better=False) + "\n")
    p = load(a.passkey)
    if p:
        sel = [r for r in p if r["metric"] == "accuracy"]
        lens = sorted({r["context"] for r in sel})
        keys = sorted({(r["method"], 0 if r["method"] == "full" else r["budget"]) for r in sel},
                      key=lambda k: (order(k[0]), k[1]))
        print("#### passkey accuracy (exact match over the depths)\n")
        print("| method | budget | " + " | ".join(f"{n} tokens" for n in lens) + " |")
        print("|---|---:|" + "---:|" * len(lens))
        for m, b in keys:
            cells = []
            for n in lens:
                v = [r["value"] for r in sel if (r["method"], r["context"]) == (m, n)
                     and (m == "full" or r["budget"] == b)]
                cells.append(f"{100 * v[0]:.0f}%" if v else "")
            print(f"| {m} | {'-' if m == 'full' else b} | " + " | ".join(cells) + " |")
        print()
    bch = load(a.bench)
    if bch:
        import sys
        from pathlib import Path
        sys.path.append(str(Path(__file__).resolve().parent.parent / "python"))  # an installed pytriattn comes first
        from pytriattn.bench import bench_table

        class R:
            rows = bch
        print(bench_table(R))


if __name__ == "__main__":
    main()
