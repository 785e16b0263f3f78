"""Recall from tier 2 through Python and the server: arguments checked, the cache's memory bound unchanged with
recall on (live slots, KV bytes), nothing evicted lost (every position in one tier or the other), recall with every
evicting policy and with question-aware prefill, the manual call, and triattn-server with --kv-recall answering the
same text whether the prompt comes from the slot's cache or is prefilled afresh. The identities of prefix reuse and
save/restore with recall are in test_prefix_cache.py; the mechanics against float64 oracles in tests/c/test_recall.c."""
from __future__ import annotations

import os
import random
import re
import time
from pathlib import Path

import numpy as np
import pytest

from pytriattn import Llama, TriattnError

SEED = int(os.environ.get("TRIATTN_TEST_SEED", time.time_ns() % 2**31))
RNG = random.Random(SEED)
ROOT = Path(__file__).resolve().parents[1]
SIDECAR = ROOT / "python" / "pytriattn" / "data" / "SmolLM2-135M-Instruct.Q4_1.tri-stats.gguf"


def _text(n_words: int) -> str:
    words = re.findall(r"[A-Za-z][A-Za-z,.'-]*", (ROOT / "docs" / "engine.md").read_text())
    i = RNG.randrange(len(words) - n_words)
    return " ".join(words[i:i + n_words])


def _llama(model, policy="triattention", **kw):
    extra = {"calibration": str(SIDECAR)} if policy == "triattention" else {}
    return Llama(str(model), n_ctx=2048, n_threads=2, kv_policy=policy, kv_budget=kw.pop("kv_budget", 64),
                 kv_interval=16, kv_window=16, **extra, **kw)


def test_arguments(default_model):
    for bad in ({"kv_recall": -1}, {"kv_recall_max_mib": -2}, {"kv_recall": "8"}):
        with pytest.raises(TriattnError, match="kv_recall"):
            _llama(default_model, **bad)
    plain = _llama(default_model)
    with pytest.raises(TriattnError, match="kv_recall"):
        plain.kv_recall()
    st = plain.kv_stats()
    assert st["t2_rows"] == st["n_recalls"] == 0
    plain.close()


def test_bound_unchanged_and_nothing_lost(default_model):
    msgs = [{"role": "user", "content": _text(RNG.randrange(300, 500)) + " What was this about?"}]
    plain, rec = _llama(default_model), _llama(default_model, kv_recall=RNG.randrange(4, 32))
    for llm in (plain, rec):
        llm.create_chat_completion(msgs, max_tokens=24, temperature=0)
    a, b = plain.kv_stats(), rec.kv_stats()
    assert b["n_recalls"] >= 1 and b["n_recalled"] > 0 and b["t2_rows"] > 0, b
    # tier 1: the same allocation and the same bound as without recall
    assert a["kv_bytes"] == b["kv_bytes"] and a["capacity"] == b["capacity"] == 64 + 16
    assert b["live_max"] <= 64 + 16
    # every position is in the cache or in tier 2 (which also keeps its copy of each recalled row)
    pos = rec.kv_positions()
    n = b["n_past"]
    held = sum(int(((row >= 0) & (row < n)).sum()) for row in pos.reshape(-1, pos.shape[-1]))
    missing = pos.shape[0] * pos.shape[1] * n - held
    assert missing <= b["t2_rows"] <= missing + b["n_recalled"], (b["t2_rows"], missing, b["n_recalled"])
    # rows of 8-bit K and 7-bit V: head_dim + ceil(7 head_dim / 8) + 6 bytes each (and a partly filled last page per
    # layer and KV head, the bitmaps), under half of full attention's F16 K and V row at head_dim >= 64
    info = rec.model_info
    lk, d = info["n_layer"] * info["n_head_kv"], info["head_dim"]
    row = d + (7 * d + 7) // 8 + 6
    assert row <= 2 * d
    assert b["t2_rows"] * row <= b["t2_bytes"] <= (b["t2_rows"] + 128 * lk) * (row + 2) + lk * 2048 // 8 + 65536
    for llm in (plain, rec):
        llm.close()


@pytest.mark.parametrize("policy", ["streaming", "snapkv", "h2o", "rkv", "random"])
def test_recall_composes_with_baselines(default_model, policy):
    llm = _llama(default_model, policy, kv_recall=16)
    llm.create_chat_completion([{"role": "user", "content": _text(400)}], max_tokens=8, temperature=0)
    st = llm.kv_stats()
    assert st["n_recalls"] == 1 and st["t2_rows"] > 0 and st["live_max"] <= 80, st
    pos = llm.kv_positions()
    for row in pos.reshape(-1, pos.shape[-1]):
        live = row[row >= 0]
        assert np.all(np.diff(live) > 0)
    llm.close()


def test_manual_recall_and_look(default_model):
    llm = _llama(default_model, kv_recall=8, kv_mode="per_head,look=64")
    toks = llm.tokenize(_text(400))
    llm.decode(toks)
    before = llm.kv_stats()
    llm.kv_recall()
    after = llm.kv_stats()
    assert after["n_recalls"] == before["n_recalls"] + 1 and after["live_max"] == before["live_max"]
    assert llm.last_logits() is not None
    llm.close()


openai = pytest.importorskip("openai")


def test_server_recall(server_bin, default_model):
    from test_server import Server
    s = Server(server_bin, default_model, "--parallel", "1", "--kv-policy", "triattention", "--calibration",
               str(SIDECAR), "--kv-budget", "64", "--kv-interval", "16", "--kv-recall", "16")
    try:
        c = openai.OpenAI(base_url=s.base + "/v1", api_key="unused", timeout=300, max_retries=0)
        conv = [{"role": "user", "content": _text(300)}]

        def turn(**extra):
            r = c.chat.completions.create(model="smol", messages=conv, max_tokens=12, temperature=0,
                                          extra_body=extra or None)
            return r.choices[0].message.content, r.usage

        text, _ = turn()
        conv += [{"role": "assistant", "content": text}, {"role": "user", "content": _text(60)}]
        cached, u = turn()
        fresh, uf = turn(cache_prompt=False)
        assert uf.prompt_tokens_details.cached_tokens == 0
        assert cached == fresh
    finally:
        s.close()


def test_cli_flags(cli, default_model):
    import subprocess
    base = [str(cli), "-m", str(default_model), "--calibration", str(SIDECAR), "--kv-policy", "triattention",
            "--kv-budget", "64", "--kv-interval", "16", "-t", "2", "--temp", "0", "-n", "4"]
    p = subprocess.run(base + ["--kv-recall", "16", "--kv-recall-max-mib", "64", "-p", _text(200)],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    p = subprocess.run(base + ["--kv-recall", "-1", "-p", "hi"], capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and "--kv-recall" in p.stderr, p.stderr
    assert "--kv-recall" in subprocess.run([str(cli), "--help"], capture_output=True, text=True).stdout
