"""`pytriattn eval` / `pytriattn bench`: exactness against full attention and a plain prefill, and smoke
runs of every command with a tiny sweep (CSV/JSON columns, resume, valid PNGs)."""
from __future__ import annotations

import csv
import gzip
import json
import os
import random
import re
import shutil
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

from pytriattn import eval as ev
from pytriattn._errors import TriattnError

SEED = int(time.time_ns()) & 0xFFFFFFFF
RNG = random.Random(SEED)
ROOT = Path(__file__).resolve().parent.parent
COLUMNS = ["dataset", "context", "model", "method", "budget", "compression", "metric", "value"]


def _msg(text: str) -> str:
    return f"{text} (seed {SEED})"


@pytest.fixture(scope="module")
def setup(default_model):
    from pytriattn.llama import default_calibration
    return ev.Setup(default_model, default_calibration(), threads=2)


@pytest.fixture(scope="module")
def text() -> str:
    """Real prose at a random offset: the repository's own documentation."""
    parts = [p.read_text(encoding="utf-8") for p in sorted((ROOT / "docs").glob("*.md"))]
    parts.append((ROOT / "README.md").read_text(encoding="utf-8"))
    whole = "\n\n".join(parts)
    start = RNG.randrange(0, max(1, len(whole) - 12000))
    return whole[start:start + 12000]


@pytest.fixture(scope="module")
def text_file(tmp_path_factory, text) -> Path:
    p = tmp_path_factory.mktemp("evaltext") / "docs.txt"
    p.write_text(text, encoding="utf-8")
    return p


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> dict:
    """One context length and one full-attention cache for the exactness tests of every policy."""
    return {"ctx": RNG.randint(200, 300), "cache": tmp_path_factory.mktemp("fullcache")}


def run_cli(*args, timeout=300):
    p = subprocess.run([sys.executable, "-m", "pytriattn", *map(str, args)], capture_output=True, text=True,
                       timeout=timeout)
    assert p.returncode == 0, _msg(f"pytriattn {' '.join(map(str, args))} failed:\n{p.stderr[-3000:]}")
    return p


def read_rows(prefix: Path) -> list[dict]:
    with open(f"{prefix}.csv", newline="") as f:
        r = csv.DictReader(f)
        assert r.fieldnames == COLUMNS
        rows = list(r)
    js = json.loads(Path(f"{prefix}.json").read_text())
    assert len(js) == len(rows) and all(list(j) == COLUMNS for j in js)
    for a, b in zip(rows, js):
        assert a["method"] == b["method"] and float(a["value"]) == pytest.approx(b["value"], rel=1e-9, abs=1e-12)
    return rows


def check_png(path) -> tuple[int, int]:
    """Parses a PNG fully (signature, chunk CRCs, IHDR, inflated scanlines); returns (width, height)."""
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    pos, chunks = 8, {}
    idat = b""
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        (crc,) = struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])
        assert zlib.crc32(kind + body) & 0xFFFFFFFF == crc, f"{path}: bad CRC in {kind}"
        chunks[kind] = body
        idat += body if kind == b"IDAT" else b""
        pos += 12 + n
    assert b"IHDR" in chunks and b"IEND" in chunks
    w, h, depth, colour = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    assert depth == 8 and colour == 2 and w > 100 and h > 100
    raw = zlib.decompress(idat)
    assert len(raw) == h * (1 + 3 * w)
    img = np.frombuffer(raw, dtype=np.uint8).reshape(h, 1 + 3 * w)[:, 1:]
    assert len(np.unique(img)) > 3, f"{path}: the image is blank"
    return w, h


# ---- exactness ----------------------------------------------------------------------------------------------

def test_full_ppl_matches_one_prefill(setup, text):
    """The chunked teacher-forcing path of `full` equals one logits_all pass over the same tokens."""
    n = RNG.randint(260, 420)
    llm = setup.llama("full", n, n + 8)
    try:
        toks = ev.text_tokens(llm, text, n, "test")
        res = ev.run_context(llm, toks, setup.kv_interval, logits=True)
    finally:
        llm.close()
    from pytriattn import Llama
    plain = Llama(setup.model, n_ctx=n + 8, n_threads=2, n_batch=n, kv_policy="full")
    try:
        lg = plain.eval(toks)
    finally:
        plain.close()
    x = lg[:-1].astype(np.float64)
    lse = np.log(np.exp(x - x.max(1, keepdims=True)).sum(1)) + x.max(1)
    nll = lse - x[np.arange(n - 1), toks[1:]]
    assert nll.mean() > 0.1, _msg("implausible NLL")
    assert abs(res["nll"].mean() - nll.mean()) <= 1e-6 * nll.mean(), _msg(f"{res['nll'].mean()} vs {nll.mean()}")
    np.testing.assert_allclose(res["nll"], nll, rtol=1e-5, atol=1e-5, err_msg=_msg("per-token NLL"))
    assert (res["argmax"] == lg[:-1].argmax(1)).all()


def test_library_has_the_core_policies(setup):
    have = ev.available_policies(setup)
    assert {"full", "triattention"} <= set(have), have


@pytest.mark.parametrize("policy", ev.ALL_POLICIES)
def test_budget_over_context_equals_full(setup, text, tmp_path, shared, policy):
    """With budget >= context nothing is ever evicted: every policy must reproduce full attention exactly
    (log-probs, greedy continuation)."""
    assert policy in ev.available_policies(setup, [policy]), f"the library has no '{policy}' policy"
    ctx = shared["ctx"]
    budget = ctx + RNG.randint(0, 200)
    res = ev.Results(tmp_path / "r")
    ev.eval_text(setup, res, "docs", text, [policy], [budget], [ctx], ppl=True, gen=6,
                 cache_dir=shared["cache"], progress=False)
    b = ctx if policy == "full" else budget
    get = lambda m, ds="docs": res.value(ds, ctx, setup.method(policy), b, m)  # noqa: E731
    assert get("kl") == 0.0 and get("delta_nll") == 0.0 and get("top1_agree") == 1.0, _msg(policy)
    assert get("n_scored") == ctx - 1 and get("ppl") == get("ppl_full") == get("ppl_all") > 1.0
    assert get("first_divergence", "docs-gen") == 6 and get("token_agreement", "docs-gen") == 1.0


def test_compression_is_measured_after_first_compression(setup, text, tmp_path):
    """A small budget must evict, score only the tokens after the first compression, and differ from full."""
    ctx = RNG.randint(330, 420)
    budget = RNG.choice([48, 64, 96])
    res = ev.Results(tmp_path / "r")
    ev.eval_text(setup, res, "docs", text, ["triattention"], [budget], [ctx], ppl=True,
                 cache_dir=tmp_path / "cache", progress=False)
    get = lambda m: res.value("docs", ctx, "triattention", budget, m)  # noqa: E731
    # the first compression fires when live slots reach budget + interval, at a call end
    assert get("n_scored") == ctx - 1 - (budget + setup.kv_interval), _msg("scored span")
    assert get("kl") > 1e-4 and get("top1_agree") < 1.0, _msg("compression changed nothing")
    assert get("ppl") == pytest.approx(get("ppl_full") * np.exp(get("delta_nll")), rel=1e-6)


def test_passkey_prompt_places_the_key(setup):
    llm = setup.llama("full", 512, 1200)
    try:
        length = RNG.choice([600, 800, 1000])
        depth = RNG.random()
        key = RNG.randint(10000, 99999)
        prompt, n = ev.passkey_prompt(llm, length, depth, key, ev.NEUTRAL_FILLER)
    finally:
        llm.close()
    assert abs(n - length) <= 24 and prompt.count(str(key)) == 2, _msg(f"{n} tokens for {length}")
    at = prompt.index(str(key)) / len(prompt)
    assert abs(at - depth) < 0.1, _msg(f"needle at {at:.2f}, asked {depth:.2f}")
    assert ev.answer_key(f" {key}. ") == key and ev.answer_key(" the pass key") is None


def test_wilson_interval():
    """Known values (5/20: 0.1119..0.4687; 0/10: 0..0.2775) and the interval's shape on random counts."""
    lo, hi = ev.wilson(5, 20)
    assert lo == pytest.approx(0.11186, abs=2e-4) and hi == pytest.approx(0.46871, abs=2e-4)
    lo, hi = ev.wilson(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.27753, abs=2e-4)
    n = RNG.randint(1, 400)
    k = RNG.randint(0, n)
    lo, hi = ev.wilson(k, n)
    assert 0.0 <= lo <= k / n <= hi <= 1.0, _msg(f"{k}/{n}: {lo}, {hi}")
    lo4, hi4 = ev.wilson(4 * k, 4 * n)
    assert hi4 - lo4 < hi - lo, _msg("more cases must narrow the interval")


def _check_needle_prompt(llm, task: str, haystack: str, text_cache: dict) -> None:
    """One case on one haystack: the prompt has the asked context length, the recorded span decodes to the
    needle (or the asked fact) and sits at the asked depth of the haystack."""
    ctx = RNG.choice([600, 800, 1000])
    case = ev.needle_cases(task, [ctx], [RNG.random()], [RNG.randint(0, 999)], [haystack])[0]
    toks, (a, b) = ev.needle_prompt(llm, case, text_cache)
    assert len(toks) == ctx, _msg(f"{haystack}: {len(toks)} tokens for {ctx}")
    text = llm.detokenize(toks[a:b]).decode("utf-8", "replace")
    assert str(case["value"]) in text, _msg(f"{haystack}: span {a}:{b} is {text!r}")
    if task == "kvrecall":
        assert case["names"][0] in text and len(case["names"]) == 4
        assert all(str(v) in llm.detokenize(toks).decode("utf-8", "replace") for v in case["values"])
    assert abs(a / ctx - case["depth"]) < 0.12, _msg(f"{haystack}: needle at {a / ctx:.2f}, asked {case['depth']:.2f}")


@pytest.fixture(scope="module")
def needle_llm(setup):
    llm = setup.llama("full", 512, 1200)
    yield llm
    llm.close()


@pytest.mark.parametrize("task", ["needle", "kvrecall"])
def test_needle_prompt_places_the_needle(needle_llm, text, task):
    """The package's own sources (the `code` haystack) and prose the test supplies."""
    cache = {"docs": text}
    for hay in ("code", "docs"):
        _check_needle_prompt(needle_llm, task, hay, cache)


def _need_debian_text(present: bool, why: str) -> None:
    """Skips where the Debian package is not installed; fails under CI, which installs it (.ci/run)."""
    if not present:
        if os.environ.get("CI"):
            pytest.fail(f"{why} (CI installs it: .ci/run)")
        pytest.skip(why)


def test_kjv_text(needle_llm):
    """Debian's `bible` program: the whole King James Bible without verse labels, as `eval ppl --kjv`, the
    passkey filler and the `kjv` needle haystack read it."""
    _need_debian_text(shutil.which("bible") is not None, f"`bible` not found: {ev.KJV_HINT}")
    dataset, t = ev.load_text(None, kjv=True)
    assert dataset == "kjv" and len(t) > 3_000_000, len(t)
    assert "In the beginning God created the heaven and the earth" in t[:300], t[:300]
    assert "Amen" in t[-300:], t[-300:]
    labelled = [ln for ln in t[:200_000].splitlines() if re.match(r"[1-3]?\s?[A-Za-z]+\s?\d+:\d+", ln)]
    assert not labelled, labelled[:3]
    fill = ev.kjv_filler()
    assert fill.endswith(" ") and " ".join(fill.split()) in " ".join(t.split())
    _check_needle_prompt(needle_llm, "needle", "kjv", {})


def test_jargon_haystack(needle_llm):
    """The Jargon File from Debian's jargon-text as the `jargon` needle haystack."""
    _need_debian_text(ev.JARGON_PATH.is_file(), f"{ev.JARGON_PATH} not found: {ev.JARGON_HINT}")
    t = ev.haystack_text("jargon")
    assert len(t) > 500_000 and "hacker" in t, len(t)
    _check_needle_prompt(needle_llm, "kvrecall", "jargon", {})


def test_missing_text_names_the_package(tmp_path, monkeypatch):
    """Without the Debian text each reader fails with an error naming the package to install; with a stand-in
    (a `bible` that prints labelled verses, a gzipped file) it reads that."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setattr(ev, "JARGON_PATH", tmp_path / "jargon.txt.gz")
    with pytest.raises(TriattnError, match="bible-kjv bible-kjv-text"):
        ev.kjv_text()
    with pytest.raises(TriattnError, match="jargon-text"):
        ev.haystack_text("jargon")
    verses = [f"Verse {RNG.randint(0, 10**6)} of the stand-in text." for _ in range(4000)]
    listing = tmp_path / "verses.txt"
    listing.write_text("".join(f"Gen{i // 50 + 1}:{i % 50 + 1} {v}\n" for i, v in enumerate(verses)))
    script = f"#!{sys.executable}\nimport sys\nsys.stdout.write(open({str(listing)!r}).read())\n"
    (bin_dir / "bible").write_text(script)
    (bin_dir / "bible").chmod(0o755)
    assert ev.kjv_text() == "".join(v + "\n" for v in verses)
    with gzip.open(ev.JARGON_PATH, "wt", encoding="utf-8") as f:
        f.write("\n".join(verses))
    assert ev.haystack_text("jargon") == "\n".join(verses)


def test_eval_needle_cli(tmp_path):
    """A tiny sweep: per-cell rows with a Wilson interval around the hit rate, per-case survival of every
    (layer, KV head) — 1 for full attention, 0 for streaming once the needle is far behind its recent window —
    resume, and the survival plot."""
    out = tmp_path / "nd"
    seed = RNG.randint(0, 999)
    args = ["eval", "needle", "--contexts", "400", "--budgets", "128", "--policies", "full,streaming",
            "--depths", "0.15", "--seeds", seed, "--haystacks", "code", "-o", out, "-q"]
    run_cli(*args)
    rows = read_rows(out)
    for key in (("full", "400"), ("streaming", "128")):
        sel = {r["metric"]: float(r["value"]) for r in rows if (r["method"], r["budget"]) == key}
        assert set(sel) == set(ev.NEEDLE_METRICS), key
        assert sel["n"] == 1 and sel["hit_rate"] == sel["hits"]
        assert sel["ci_lo"] <= sel["hit_rate"] <= sel["ci_hi"]
    cases = [json.loads(x) for x in Path(f"{out}-needle-cases.jsonl").read_text().splitlines()]
    assert len(cases) == 2
    for c in cases:
        surv = np.asarray(c["survival"])
        assert surv.ndim == 2 and surv.shape[0] > 1
        want = 1.0 if c["method"] == "full" else 0.0
        assert np.all(surv == want), _msg(f"{c['method']}: survival {surv.min()}..{surv.max()}")
    check_png(f"{out}-needle-survival.png")
    run_cli(*args, "--resume")    # nothing left to run: the cases file is kept, rows unchanged
    assert len(Path(f"{out}-needle-cases.jsonl").read_text().splitlines()) == 2
    assert len(read_rows(out)) == len(rows)
    # a second seed on --resume: only its cases run, and the cells are recounted over both seeds
    args[args.index("--seeds") + 1] = f"{seed},{seed + 1}"
    run_cli(*args[:args.index("--policies") + 1], "streaming", *args[args.index("--policies") + 2:], "--resume")
    assert len(Path(f"{out}-needle-cases.jsonl").read_text().splitlines()) == 3
    sel = {r["metric"]: float(r["value"]) for r in read_rows(out) if r["method"] == "streaming"}
    assert sel["n"] == 2


def test_results_resume(tmp_path):
    r = ev.Results(tmp_path / "x")
    vals = {m: RNG.random() for m in ("a", "b")}
    r.add("ds", 512, "m", "triattention", 128, vals)
    r2 = ev.Results(tmp_path / "x.csv", resume=True)
    assert r2.done("ds", 512, "m", "triattention", 128, ["a", "b"])
    assert not r2.done("ds", 512, "m", "triattention", 128, ["a", "c"])
    assert r2.value("ds", 512, "triattention", 128, "b") == pytest.approx(vals["b"], rel=1e-9)
    ev.Results(tmp_path / "x")                                               # no --resume: starts over
    assert not ev.Results(tmp_path / "x", resume=True).rows


# ---- smoke runs of the commands ----------------------------------------------------------------------------

def test_eval_ppl_cli(tmp_path, text_file):
    out = tmp_path / "ppl"
    args = ["eval", "ppl", "--text", text_file, "--contexts", "384", "--budgets", "64,128", "--policies",
            "full,triattention", "--gen-tokens", "8", "-o", out, "--cache-dir", tmp_path / "cache", "-q"]
    p = run_cli(*args)
    assert "kl" in p.stdout and "triattention" in p.stdout
    rows = read_rows(out)
    methods = {(r["dataset"], r["method"], r["budget"]) for r in rows}
    assert methods == {(ds, m, b) for ds in ("docs", "docs-gen")
                       for m, b in (("full", "384"), ("triattention", "64"), ("triattention", "128"))}
    for r in rows:
        assert r["context"] == "384" and r["model"] == "SmolLM2-135M-Instruct.Q4_1"
        if r["metric"] == "kl":
            assert float(r["value"]) >= 0 and (float(r["value"]) > 0) == (r["method"] != "full")
    for png in (f"{out}-docs-384.png", f"{out}-docs-gen-384.png"):
        check_png(png)
    before = Path(f"{out}.csv").read_text()
    t0 = time.time()
    run_cli(*args, "--resume")
    assert Path(f"{out}.csv").read_text() == before and time.time() - t0 < 30


def test_eval_agreement_cli(tmp_path, text_file):
    out = tmp_path / "agree"
    run_cli("eval", "agreement", "--text", text_file, "--contexts", "320", "--budgets", "64", "--policies",
            "full,triattention", "--gen-tokens", "24", "-o", out, "--cache-dir", tmp_path / "cache", "-q")
    rows = read_rows(out)
    got = {(r["method"], r["metric"]): float(r["value"]) for r in rows}
    assert set(m for _, m in got) == {"first_divergence", "token_agreement", "n_generated"}
    assert got[("full", "first_divergence")] == 24 and got[("full", "token_agreement")] == 1.0
    assert 0 <= got[("triattention", "first_divergence")] <= 24
    check_png(f"{out}-docs-320.png")


def test_eval_passkey_cli(tmp_path):
    out = tmp_path / "pk"
    depths = [RNG.choice([0.1, 0.3, 0.5, 0.7, 0.9])]
    run_cli("eval", "passkey", "--contexts", "320", "--budgets", "64,128", "--policies", "full,triattention",
            "--depths", ",".join(map(str, depths)), "--seed", RNG.randint(0, 999), "-o", out, "-q")
    rows = read_rows(out)
    names = {"accuracy"} | {f"hit_d{round(d * 100)}" for d in depths}
    for key in (("full", "320"), ("triattention", "64"), ("triattention", "128")):
        sel = {r["metric"]: float(r["value"]) for r in rows if (r["method"], r["budget"]) == key}
        assert set(sel) == names, key
        assert sel["accuracy"] == pytest.approx(np.mean([sel[n] for n in names - {"accuracy"}]))
    check_png(f"{out}-passkey.png")


def test_bench_cli(tmp_path, cli):
    out = tmp_path / "bench"
    budget = RNG.choice([32, 64])
    p = subprocess.run([sys.executable, "-m", "pytriattn", "bench", "-p", "64", "-n", "8", "-d", "0,256", "-r", "1",
                        "--policies", "full,triattention", "--budgets", str(budget), "--cli", str(cli),
                        "-o", str(out), "-q"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    rows = read_rows(out)
    v = {(r["dataset"], r["context"], r["method"], r["metric"]): float(r["value"]) for r in rows}
    for m in ("full", "triattention"):
        assert v[("prefill", "64", m, "tps")] > 0 and v[("decode", "0", m, "tps")] > 0
        assert v[("decode", "256", m, "peak_rss_mb")] > 50            # the model is mapped: ~100 MB
    assert v[("decode", "256", "full", "kv_live_max")] == 256 + 8
    assert v[("decode", "256", "triattention", "kv_live_max")] <= budget + 128
    assert v[("decode", "256", "triattention", "kv_bytes")] < v[("decode", "256", "full", "kv_bytes")]
    check_png(f"{out}.png")
    assert "| full |" in p.stdout and "tg @ d256" in p.stdout


def test_bench_parses_llama_bench_json():
    from pytriattn.bench import parse_llama_bench
    s = [RNG.uniform(50, 200) for _ in range(3)]
    rows = [{"n_prompt": 512, "n_gen": 0, "n_depth": 0, "avg_ts": float(np.mean(s)), "samples_ts": s},
            {"n_prompt": 0, "n_gen": 64, "n_depth": 4096, "avg_ts": 20.5, "samples_ts": [20.0, 21.0]}]
    got = parse_llama_bench(rows)
    assert got[("prefill", 512)] == (sorted(s)[1], min(s), max(s))
    assert got[("decode", 4096)] == (20.5, 20.0, 21.0)


def test_eval_errors(tmp_path):
    p = subprocess.run([sys.executable, "-m", "pytriattn", "eval", "ppl", "--contexts", "512", "-q"],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert p.returncode == 1 and "--text FILE or --kjv" in p.stderr
    assert not list(tmp_path.iterdir()), "a failed command must not leave output files"
    with pytest.raises(TriattnError):
        ev.parse_list("12,x", int, "--budgets")
    assert ev.parse_list("4k,8K,300", int) == [4096, 8192, 300]
