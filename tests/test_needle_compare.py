"""bench/needle_compare.py: the paired statistics behind the needle-suite verdicts."""
from __future__ import annotations

import itertools
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))
import needle_compare as nc  # noqa: E402

rng = random.Random()


def test_mcnemar_exact_matches_enumeration():
    """Two-sided sign test: the probability, under fair coin flips, of a split at least as uneven."""
    for _ in range(20):
        n = rng.randrange(1, 15)
        wins = rng.randrange(0, n + 1)
        observed = abs(2 * wins - n)
        extreme = sum(1 for signs in itertools.product((0, 1), repeat=n) if abs(2 * sum(signs) - n) >= observed)
        assert abs(nc.mcnemar_exact(wins, n - wins) - extreme / 2 ** n) < 1e-12, (wins, n)
    assert nc.mcnemar_exact(0, 0) == 1.0


def test_ratio_interval_covers_the_ratio_and_pairs_cases():
    n = rng.randrange(30, 60)
    b = np.array([rng.random() < 0.3 for _ in range(n)], dtype=float)
    b[0] = 1
    a = np.maximum(b, np.array([rng.random() < 0.4 for _ in range(n)], dtype=float))  # a hits wherever b does
    r, lo, hi = nc.ratio_ci(a, b)
    assert r == a.mean() / b.mean()
    assert 1.0 <= lo <= r <= hi, (lo, r, hi)     # pairs kept: a resample can never favour b
    r, lo, hi = nc.ratio_ci(b, b)
    assert r == lo == hi == 1.0


def _case(method, seed, depth, hit):
    return {"task": "needle", "context": 4096, "budget": 1024, "method": method, "seed": seed, "depth": depth,
            "haystack": "kjv", "phrasing": "passkey", "value": 10000 + seed, "hit": hit,
            "survival": [[rng.random()] * 3] * 2}


def test_report_pairs_by_prompt(tmp_path):
    depths = [0.1, 0.5, 0.9]
    ref = {(s, d): rng.random() < 0.3 for s in range(6) for d in depths}
    other = {k: rng.random() < 0.6 for k in ref}
    del other[(5, 0.9)]                                   # a case only the reference ran
    f1, f2 = tmp_path / "a-needle-cases.jsonl", tmp_path / "b-needle-cases.jsonl"
    f1.write_text("".join(json.dumps(_case("streaming", s, d, h)) + "\n" for (s, d), h in ref.items()))
    f2.write_text("".join(json.dumps(_case("triattention", s, d, h)) + "\n" for (s, d), h in other.items()))
    out = subprocess.run([sys.executable, str(BENCH / "needle_compare.py"), str(f1), str(f2)],
                         capture_output=True, text=True, check=True).stdout
    wins = sum(1 for k, h in other.items() if h and not ref[k])
    losses = sum(1 for k, h in other.items() if not h and ref[k])
    row = next(line for line in out.splitlines() if line.startswith("| triattention | 17 |"))
    assert f"| {wins} / {losses} |" in row, out
    assert f"| {sum(other.values())}/17 |" in out and f"| {sum(ref.values())}/18 |" in out, out
