"""`pytriattn eval reasoning`: the answer rule, the statistics, and batched runs on the default model
(batched = one at a time, a run that never compresses = full attention, resume)."""
from __future__ import annotations

import json
import math
import random
import subprocess
import sys
import time
from fractions import Fraction

import pytest

from pytriattn import eval_reasoning as er

SEED = int(time.time_ns()) & 0xFFFFFFFF
RNG = random.Random(SEED)


def _msg(text: str) -> str:
    return f"{text} (seed {SEED})"


def test_boxed_and_numbers():
    for _ in range(50):
        a, b = RNG.randint(-9999, 99999), RNG.randint(1, 99)
        inner = f"\\frac{{{a}}}{{{b}}}"
        text = f"first \\boxed{{{RNG.randint(0, 9)}}} then {{noise}} \\boxed{{{inner}}} done {RNG.randint(0, 9)}."
        assert er.last_boxed(text) == inner, _msg(text)
        n = RNG.randint(1000, 10**7)
        text = f"So {RNG.randint(0, 50)} apples ... total is {n:,}. "
        assert er.extract_answer(text, "number") == str(n), _msg(text)
        assert er.is_correct(er.extract_answer(text, "number"), f"work\n#### {n}", "number"), _msg(text)
    assert er.last_boxed("no box here") is None
    assert er.extract_answer("answer: \\boxed{42} and then 7 more words 9", "number") == "42"
    assert er.extract_answer("no answer", "math") is None
    assert er.last_number("it costs $-3.50.") == "-3.50"


@pytest.mark.parametrize("pred,ref", [
    ("\\boxed{\\dfrac{1}{2}}", "\\frac{1}{2}"), ("\\boxed{0.5}", "\\frac12"), ("\\boxed{x = 5}", "5"),
    ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "\\left( 3, \\frac{\\pi}{2} \\right)"),
    ("\\boxed{90^\\circ}", "90"), ("\\boxed{\\text{Evelyn}}", "\\text{Evelyn}"), ("\\boxed{\\$18.00}", "18"),
    ("\\boxed{\\sqrt3}", "\\sqrt{3}"), ("\\boxed{3/4}", "\\frac{3}{4}"), ("\\boxed{.25}", "0.25"),
])
def test_math_equivalent(pred, ref):
    assert er.is_correct(er.extract_answer(pred, "math"), ref, "math")


@pytest.mark.parametrize("pred,ref", [("\\boxed{\\frac{1}{3}}", "\\frac{1}{2}"), ("\\boxed{6-9i}", "6+9i"),
                                      ("\\boxed{2\\sqrt{3}}", "\\sqrt{3}"), ("42", "42")])
def test_math_different(pred, ref):
    assert not er.is_correct(er.extract_answer(pred, "math"), ref, "math")


def test_math_fractions_random():
    for _ in range(100):
        a, b = RNG.randint(-500, 500), RNG.randint(1, 64)
        f = Fraction(a, b)
        pred = er.extract_answer(f"\\boxed{{\\dfrac{{{a}}}{{{b}}}}}", "math")
        ref = f"{f.numerator}/{f.denominator}" if f.denominator != 1 else str(f.numerator)
        assert er.is_correct(pred, ref, "math"), _msg(f"{pred} vs {ref}")


def test_mcnemar_oracle():
    """Exact binomial p-value against the sum written out with floats and symmetric in its arguments."""
    for _ in range(30):
        b, c = RNG.randint(0, 40), RNG.randint(0, 40)
        n = b + c
        want = 1.0 if n == 0 else min(1.0, 2 * sum(math.comb(n, i) * 0.5 ** n for i in range(min(b, c) + 1)))
        assert er.mcnemar_p(b, c) == pytest.approx(want, rel=1e-12), _msg(f"{b},{c}")
        assert er.mcnemar_p(b, c) == er.mcnemar_p(c, b)
    assert er.mcnemar_p(10, 2) == pytest.approx(2 * (1 + 12 + 66) / 4096)


def test_summary_pairs_by_problem():
    recs = []
    truth = {}
    for i in range(40):
        f, t = RNG.random() < 0.6, RNG.random() < 0.5
        truth[i] = (f, t)
        for m, b, c in (("full", 0, f), ("triattention", 128, t)):
            recs.append({"dataset": "d", "id": i, "method": m, "budget": b, "correct": c, "generated_tokens": 200,
                         "compressions": 1 if b else 0, "kv_bytes_peak": 100})
    rows = {r["method"]: r for r in er.summary(recs)}
    lost = sum(f and not t for f, t in truth.values())
    gained = sum(t and not f for f, t in truth.values())
    assert (rows["triattention"]["full_only"], rows["triattention"]["policy_only"]) == (lost, gained), _msg("")
    assert rows["full"]["correct"] == sum(f for f, _ in truth.values())
    t = er.paired(recs, "d", ("triattention", 128), ("full", 0))
    assert (t["n"], t["a_only"], t["b_only"]) == (40, gained, lost), _msg("")
    lo, hi = rows["full"]["ci_lo"], rows["full"]["ci_hi"]
    assert lo < rows["full"]["accuracy"] < hi


def test_report_keeps_complete_problems(tmp_path, capsys):
    """A run stopped part way: only problems with every cell count, so the cells hold the same problems."""
    cells = [("full", 0), ("triattention", 128), ("streaming", 128), ("triattention", 256)]
    recs, complete, capped = [], set(), {}
    for ds in ("a", "b"):
        for i in range(RNG.randint(5, 30)):
            have = cells if RNG.random() < 0.7 else RNG.sample(cells, RNG.randint(1, len(cells) - 1))
            if len(have) == len(cells):
                complete.add((ds, i))
            for m, b in have:
                stop = "length" if RNG.random() < 0.3 else "eog"
                if len(have) == len(cells):
                    capped.setdefault((ds, m, b), []).append(stop == "length")
                recs.append({"dataset": ds, "id": i, "method": m, "budget": b, "correct": RNG.random() < 0.5,
                             "generated_tokens": RNG.randint(1, 768), "prompt_tokens": 60 + i, "stop": stop,
                             "compressions": int(b > 0),
                             "kv_bytes_peak": 100})
    kept, dropped = er.complete_only(recs)
    assert {(r["dataset"], r["id"]) for r in kept} == complete, _msg("")
    assert dropped == len({(r["dataset"], r["id"]) for r in recs}) - len(complete)
    for row in er.summary(kept):
        flags = capped[(row["dataset"], row["method"], row["budget"])]
        assert row["n"] == len(flags) and row["share_at_cap"] == pytest.approx(sum(flags) / len(flags)), _msg("")
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert er.report(path) == 0
    text = capsys.readouterr().out
    assert (f"{dropped} problem(s) without every configuration" in text) == (dropped > 0)
    assert "at the cap" in text
    assert "prompt < median" in text


def test_accuracy_by_prompt_length():
    """Split at the median of full attention's prompt counts, against a count written out per problem."""
    recs, plen = [], {}
    for i in range(RNG.randint(10, 40)):
        plen[i] = RNG.randint(40, 200)
        for m, b in (("full", 0), ("triattention", 128)):
            recs.append({"dataset": "d", "id": i, "method": m, "budget": b, "correct": RNG.random() < 0.5,
                         "prompt_tokens": plen[i] if m == "full" else 0})
    med = sorted(plen.values())[len(plen) // 2]
    for row in er.by_prompt_length(recs):
        mine = [r for r in recs if r["method"] == row["method"]]
        short = [r["correct"] for r in mine if plen[r["id"]] < med]
        long_ = [r["correct"] for r in mine if plen[r["id"]] >= med]
        assert row["median_prompt"] == med and (row["n_short"], row["n_long"]) == (len(short), len(long_))
        assert row["acc_long"] == pytest.approx(sum(long_) / len(long_)), _msg("")
        if short:
            assert row["acc_short"] == pytest.approx(sum(short) / len(short)), _msg("")


def _problems(tmp_path, n):
    path = tmp_path / "probs.jsonl"
    with open(path, "w") as f:
        for _ in range(n):
            a, b = RNG.randint(2, 60), RNG.randint(2, 60)
            f.write(json.dumps({"q": f"Tom has {a} apples and buys {b} more. How many apples does he have?",
                                "a": str(a + b)}) + "\n")
    return path


def _run(tmp_path, data, out, *extra):
    cmd = [sys.executable, "-m", "pytriattn", "eval", "reasoning", "--data", str(data), "--question-field", "q",
           "--answer-field", "a", "--max-tokens", "40", "--kv-interval", "16", "--kv-window", "16",
           "--policies", "full,triattention,streaming", "--small-budget-only", "", "-c", "2048", "-o", str(out),
           *extra]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-2000:]
    return p


def test_batched_runs_match_single(tmp_path, default_model):
    data = _problems(tmp_path, 3)
    out1, out4 = tmp_path / "one.jsonl", tmp_path / "four.jsonl"
    # Budget 48 compresses inside the 40 generated tokens (prompts are ~60 tokens); 1000 never compresses.
    _run(tmp_path, data, out1, "--budgets", "48,1000", "--slots", "1", "-q")
    p = _run(tmp_path, data, out4, "--budgets", "48,1000", "--slots", "4", "-q")
    one = {er.job_key(r): r for r in er.read_records(out1)}
    four = {er.job_key(r): r for r in er.read_records(out4)}
    assert len(one) == 3 * 5 and set(one) == set(four)
    for k, r in one.items():
        assert r["text"] == four[k]["text"], f"batched differs from alone: {k}"
        full = one[(k[0], k[1], "full", 0)]
        if k[3] == 1000:
            assert r["compressions"] == 0 and r["text"] == full["text"], k
        if k[3] == 48:
            assert r["compressions"] > 0 and r["evictions"] > 0, k
            assert r["kv_bytes_peak"] < full["kv_bytes_peak"], k
    assert "| full |" in p.stdout
    # --resume finds everything done and adds nothing.
    n_lines = len(out4.read_text().splitlines())
    _run(tmp_path, data, out4, "--budgets", "48,1000", "--slots", "4", "-q", "--resume")
    assert len(out4.read_text().splitlines()) == n_lines
