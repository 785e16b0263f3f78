"""kv_policy auto and the calibration's policy check: triattention.auto_policy is honoured and validated,
`pytriattn info` says what auto uses and why, and the KL rule holds on the cheap cells: on the default model
(its shipped centres, auto = triattention) and on Gemma 3 270M (centres and check from `pytriattn calibrate`),
the policy auto picks has KL(full || policy) <= streaming's and <= SnapKV's."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pytriattn import calibrate as cal
from pytriattn import policy_check as pc
from pytriattn._errors import TriattnError


def _sidecar(tmp_path: Path, model: Path, auto: str, offmax: int | None = None) -> Path:
    """The shipped centres of the default model, rewritten with triattention.auto_policy = auto (and
    triattention.offmax when given)."""
    from gguf import GGUFReader

    from pytriattn import Llama
    from pytriattn.llama import default_calibration

    r = GGUFReader(default_calibration())
    arr = {k: np.asarray(r.fields[f"triattention.{k}"].contents(), dtype=np.float32)
           for k in ("q_center_re", "q_center_im", "q_abs_mean")}
    with Llama(model, n_ctx=64, kv_policy="full") as llm:
        info = llm.model_info
    kvs = cal.triattention_kvs(info, {**arr, "n_tokens": 1000}, "test", info["fingerprint"])
    kvs += pc.check_kvs({"auto_policy": auto, "context": 2048, "budgets": [256, 512],
                         "policies": list(pc.CANDIDATES), "kl": [0.3, 0.2, 0.1, 0.05, 0.2, 0.1]})
    if offmax is not None:
        kvs += [("triattention.offmax", cal.T_U32, offmax)]
    path = tmp_path / f"{auto}-{offmax}.tri-stats.gguf"
    cal.write_sidecar(path, kvs, src=model)
    return path


def test_auto_policy_is_honoured_and_overridable(tmp_path, default_model):
    from pytriattn import Llama
    from pytriattn.llama import default_calibration

    path = _sidecar(tmp_path, default_model, "streaming")
    with Llama(default_model, n_ctx=512, kv_budget=128, calibration=path) as llm:
        assert llm.kv_stats()["policy"] == "streaming"
    with Llama(default_model, n_ctx=512, kv_budget=128, kv_policy="triattention", calibration=path) as llm:
        assert llm.kv_stats()["policy"] == "triattention"
    with Llama(default_model, n_ctx=512, kv_budget=128, calibration=default_calibration()) as llm:  # no check keys
        assert llm.kv_stats()["policy"] == "triattention"
    out = subprocess.run([sys.executable, "-m", "pytriattn", "info", str(default_model), "--calibration", str(path)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "kv_policy auto = streaming, falling back from triattention" in out.stdout
    assert "streaming 0.1000 / 0.0500" in out.stdout


def test_auto_policy_value_is_checked(tmp_path, default_model):
    from pytriattn import Llama

    path = _sidecar(tmp_path, default_model, "h2o_typo")
    with pytest.raises(TriattnError, match="triattention.auto_policy"):
        Llama(default_model, n_ctx=256, calibration=path)


def test_offmax_key_sets_the_horizon(tmp_path, default_model):
    """triattention.offmax is the score's default horizon: a session with it compresses exactly as kv_mode
    per_head,offmax=N with the plain centres, a kv_mode offmax= overrides it, a bad value is refused, and
    `pytriattn info` says so."""
    from pytriattn import Llama

    plain, short = _sidecar(tmp_path, default_model, "triattention"), _sidecar(tmp_path, default_model,
                                                                            "triattention", 128)
    with Llama(default_model, n_ctx=64, kv_policy="full") as llm:
        toks = llm.tokenize(" ".join(f"Line {i}: the {['red', 'blue', 'green'][i % 3]} box holds {i * 7 % 13} "
                                     "stones." for i in range(60)))[:600]

    def run(calibration, mode=None):
        kw = {"kv_mode": mode} if mode else {}
        with Llama(default_model, n_ctx=1024, n_threads=2, kv_policy="triattention", kv_budget=64, kv_interval=32,
                   kv_window=8, calibration=calibration, **kw) as llm:
            llm.decode(toks[:-1])
            logits = llm.eval(toks[-1:])[-1]
            return logits, llm.kv_positions()

    a, pa = run(short)
    b, pb = run(plain, "per_head,offmax=128")
    c, pc_ = run(plain)
    d, pd = run(short, "per_head,offmax=65536")
    assert np.array_equal(a, b) and np.array_equal(pa, pb)
    assert np.array_equal(c, d) and np.array_equal(pc_, pd)
    assert not np.array_equal(pa, pc_)            # the horizon changes what is kept
    bad = _sidecar(tmp_path, default_model, "triattention", 100)
    with pytest.raises(TriattnError, match="triattention.offmax"):
        Llama(default_model, n_ctx=256, calibration=bad)
    out = subprocess.run([sys.executable, "-m", "pytriattn", "info", str(default_model), "--calibration", str(short)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "future offsets up to 128" in out.stdout


def _kl_cells(model, calibration, toks, budgets, tail, policies):
    from pytriattn import Llama

    kw = dict(n_ctx=len(toks) + 8, n_batch=128, n_threads=2, kv_interval=128)
    with Llama(model, kv_policy="full", **kw) as llm:
        full = pc.tail_logprobs(llm, toks, tail, 128, None)
    out = {}
    for pol in policies:
        for b in budgets:
            with Llama(model, kv_policy=pol, kv_budget=b, calibration=calibration, **kw) as llm:
                out[(llm.kv_stats()["policy"], b)] = pc.mean_kl(full, pc.tail_logprobs(llm, toks, tail, 128, b))
    return out


def _assert_rule(kl, auto, budgets):
    for b in budgets:
        for other in ("streaming", "snapkv"):
            assert kl[(auto, b)] <= kl[(other, b)], f"budget {b}: {auto} KL {kl[(auto, b)]:.4f} > {other} " \
                                                    f"{kl[(other, b)]:.4f} ({kl})"


@pytest.mark.long  # minutes of teacher-forcing on 2 cores, and the KJV text (Debian bible-kjv)
def test_kl_rule_default_model(default_model):
    """The default model at 4K tokens of the KJV (the quality tables' span), tail 256, budgets 256 / 512."""
    from pytriattn import Llama
    from pytriattn.eval import kjv_text, text_tokens
    from pytriattn.llama import default_calibration

    with Llama(default_model, n_ctx=64, kv_policy="full") as llm:
        toks = text_tokens(llm, kjv_text(), 4096, "kjv")
    budgets = [256, 512]
    kl = _kl_cells(default_model, default_calibration(), toks, budgets, 256, ["auto", "streaming", "snapkv"])
    _assert_rule(kl, "triattention", budgets)


@pytest.mark.long  # a Gemma 3 calibration with its policy check, and the KJV text (Debian bible-kjv)
def test_kl_rule_gemma3(tmp_path):
    """Gemma 3 270M: calibrate with the policy check (2,048 KJV tokens, the check on the next 2,048), then the
    policy auto picks is <= streaming and SnapKV on the first 2,048 tokens at budgets 256 / 512."""
    from pytriattn import Llama
    from pytriattn._fetch import ensure_model
    from pytriattn.eval import kjv_text, text_tokens

    model = ensure_model("gemma3-270m", progress=False)
    text = tmp_path / "kjv.txt"
    text.write_text(kjv_text()[:400_000], encoding="utf-8")
    side = tmp_path / "g.tri-stats.gguf"
    s = cal.calibrate(model, side, text=text, n_tokens=2048, sidecar=True, n_threads=2, progress=False,
                      check_context=2048)
    assert s["policy_check"] is not None and s["policy_check"]["context"] == 2048
    with Llama(model, n_ctx=64, kv_policy="full") as llm:
        toks = [llm.token_bos()] + text_tokens(llm, text.read_text(encoding="utf-8"), 2047, "kjv")
    budgets = [256, 512]
    kl = _kl_cells(model, side, toks, budgets, 256, ["auto", "streaming", "snapkv"])
    auto = s["policy_check"]["auto_policy"]
    assert (auto, 256) in kl
    _assert_rule(kl, auto, budgets)
