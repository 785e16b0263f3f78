"""Baseline KV policies end to end on the real default model (docs/triattention.md §6,
docs/triattention-engine.md "Baseline policies"): `streaming`, `random`, `h2o`, `snapkv`, `rkv`.

- bounded: with a small budget every policy generates past 600 tokens of context with live slots
  <= budget + interval, compressions > 0, sink tokens and the newest token kept, positions increasing;
- each keep rule leaves its mark on the real cache (streaming = sink + most recent; the others differ from
  it and from each other; random is a function of the seed);
- exact: with a budget >= the whole context every policy gives bit-identical logits to `full`.

The keep rules on hand-built caches and the float64 oracles of the SnapKV / R-KV / H2O scores are in
tests/c/test_baselines.c. Random text offsets, budgets and seeds, fresh each run (TRI_TEST_SEED reproduces)."""
from __future__ import annotations

import os
import random
import time
from pathlib import Path

import numpy as np
import pytest

from pytriattn import Llama

ROOT = Path(__file__).resolve().parent.parent
SEED = int(os.environ.get("TRI_TEST_SEED", time.time_ns() & 0xFFFFFFFF))
rng = random.Random(SEED)
THREADS = int(os.environ.get("TRI_TEST_THREADS", "1"))
POLICIES = ["streaming", "random", "h2o", "snapkv", "rkv"]
SINK = 4


@pytest.fixture(autouse=True)
def _show_seed():
    print(f"test_baselines seed {SEED} (TRI_TEST_SEED={SEED} reproduces)")
    yield


def _text() -> str:
    docs = [ROOT / "docs" / "engine.md", ROOT / "docs" / "triattention-engine.md", ROOT / "README.md"]
    return "\n\n".join(p.read_text(encoding="utf-8") for p in docs if p.exists())


@pytest.fixture(scope="module")
def tokens(default_model):
    with Llama(default_model, kv_policy="full", n_ctx=4096, n_threads=THREADS) as m:
        toks = m.tokenize(_text().encode())
    assert len(toks) > 1500
    return toks


def _window(tokens, n):
    start = rng.randrange(0, len(tokens) - n)
    return tokens[start:start + n]


def _check_positions(pos: np.ndarray, n_past: int, budget: int, interval: int, what: str):
    for il in range(pos.shape[0]):
        for h in range(pos.shape[1]):
            row = pos[il, h][pos[il, h] >= 0]
            assert budget <= row.size <= budget + interval, (what, il, h, row.size)
            assert np.all(np.diff(row) > 0), (what, il, h, "positions not increasing")
            assert list(row[:SINK]) == list(range(SINK)), (what, il, h, "sink evicted")
            assert row[-1] == n_past - 1, (what, il, h, "newest token evicted")


@pytest.mark.parametrize("policy", POLICIES)
def test_generation_stays_bounded(default_model, tokens, policy):
    """A 300+ token prompt (chunked, compressed between chunks) then 300+ sampled tokens with the slack trigger."""
    budget, interval = rng.choice([96, 128]), 32
    prompt_toks = _window(tokens, rng.randrange(300, 360))
    with Llama(default_model, kv_policy=policy, kv_budget=budget, kv_interval=interval, kv_window=16,
               n_ctx=4096, n_threads=THREADS, seed=rng.randrange(2**32)) as llm:
        prompt = llm.detokenize(prompt_toks).decode("utf-8", "replace")
        # generate() parses special-token text (the docs quote ChatML's "<|im_start|>"), and re-tokenizing the
        # decoded window may merge a few tokens: count the prompt the way generate() does
        n_prompt = len(llm.tokenize(prompt, special=True))
        assert n_prompt >= 270, n_prompt
        llm.generate(prompt, max_tokens=300, temperature=0.8, ignore_eos=True, seed=rng.randrange(2**32))
        assert llm.last_result["prompt_tokens"] == n_prompt, llm.last_result
        st = llm.kv_stats()
        assert st["policy"] == policy
        # every prompt token and every sampled token but the last one went through the cache
        assert st["n_past"] == n_prompt + 299, (n_prompt, st)
        assert st["live_max"] <= budget + interval, st
        assert st["capacity"] == budget + interval, st
        assert st["n_compressions"] > 0 and st["n_evicted"] > 0, st
        _check_positions(llm.kv_positions(), st["n_past"], budget, interval, policy)


def _kept_after(default_model, policy, toks, budget, interval, seed=1):
    with Llama(default_model, kv_policy=policy, kv_budget=budget, kv_interval=interval, kv_window=16,
               n_ctx=4096, n_threads=THREADS, seed=seed) as llm:
        llm.decode(toks)
        st = llm.kv_stats()
        assert st["n_compressions"] > 0 and st["live_max"] <= budget + interval, (policy, st)
        pos = llm.kv_positions()
        _check_positions(pos, len(toks), budget, interval, policy)
        return pos


def test_keep_rules_differ(default_model, tokens):
    """Teacher-forced text through every policy: streaming keeps exactly sink + most recent; every other policy
    keeps other tokens, each its own set; random depends only on its seed."""
    budget, interval = 64, 16
    toks = _window(tokens, rng.randrange(600, 700))
    kept = {p: _kept_after(default_model, p, toks, budget, interval) for p in POLICIES}
    n = len(toks)
    for row in kept["streaming"].reshape(-1, kept["streaming"].shape[-1]):
        row = row[row >= 0]
        assert list(row) == list(range(SINK)) + list(range(n - (row.size - SINK), n)), "streaming: sink + recent"
    for a in POLICIES:
        for b in POLICIES:
            if a < b:
                assert not np.array_equal(kept[a], kept[b]), (a, b, "kept the same tokens")
    # the attention-based policies keep different sets in different KV heads (per-head selection)
    for p in ("h2o", "snapkv", "rkv", "random"):
        assert any(not np.array_equal(kept[p][il, 0], kept[p][il, 1]) for il in range(kept[p].shape[0])), p
    s = rng.randrange(2**32)
    again = _kept_after(default_model, "random", toks, budget, interval, seed=s)
    assert np.array_equal(again, _kept_after(default_model, "random", toks, budget, interval, seed=s))
    assert not np.array_equal(again, _kept_after(default_model, "random", toks, budget, interval, seed=s + 1))


@pytest.mark.parametrize("policy", POLICIES)
def test_budget_above_context_is_exact(default_model, tokens, policy):
    """Never reaching budget + interval means never compressing: logits identical to full attention."""
    interval = 32
    toks = _window(tokens, rng.randrange(150, 260))
    budget = len(toks) + rng.randrange(0, 64)
    with Llama(default_model, kv_policy="full", n_ctx=4096, n_batch=interval, n_threads=THREADS) as ref:
        want = ref.eval(toks)
    with Llama(default_model, kv_policy=policy, kv_budget=budget, kv_interval=interval, n_ctx=4096,
               n_batch=interval, n_threads=THREADS, seed=rng.randrange(2**32)) as llm:
        got = llm.eval(toks)
        st = llm.kv_stats()
        assert st["n_compressions"] == 0 and st["capacity"] == budget + interval, st
    assert np.isfinite(want).all()
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("policy", ["snapkv", "rkv"])
def test_observation_window_is_the_only_default_protection(default_model, tokens, policy):
    """SnapKV and R-KV as their papers run them: with the default kv_window only the last w = 8 tokens are
    protected, so tokens just before them are scored and some are evicted; streaming keeps its 128."""
    budget, interval = 160, 32
    toks = _window(tokens, rng.randrange(400, 500))
    with Llama(default_model, kv_policy=policy, kv_budget=budget, kv_interval=interval, n_ctx=4096,
               n_threads=THREADS) as llm:
        llm.decode(toks)
        pos = llm.kv_positions()
    n = len(toks)
    recent = set(range(n - 128, n))
    evicted_recent = 0
    for row in pos.reshape(-1, pos.shape[-1]):
        row = row[row >= 0]
        assert list(row[-8:]) == list(range(n - 8, n)), (policy, "observation window evicted")
        evicted_recent += len(recent - set(row.tolist()))
    assert evicted_recent > 0, f"{policy}: the last 128 tokens were all kept: still protected by a 128 window"


def test_snapkv_prompt_scores_with_the_final_prompt_queries(default_model, tokens):
    """snapkv_prompt prefills the whole prompt (capacity n_ctx, no round before its last token), then keeps what
    the prompt's last 8 queries attend to: the same tokens as snapkv whose only round falls exactly at the end
    of the prompt (budget + interval = prompt length)."""
    budget = rng.randrange(96, 160)
    toks = _window(tokens, rng.randrange(400, 520))
    n, n_ctx = len(toks), 1024
    with Llama(default_model, kv_policy="snapkv_prompt", kv_budget=budget, kv_interval=32, n_ctx=n_ctx,
               n_threads=THREADS) as llm:
        st = llm.kv_stats()
        assert st["capacity"] == n_ctx, st
        llm.decode(toks)
        st = llm.kv_stats()
        assert st["n_compressions"] == 1 and st["live_max"] == budget, st
        got = llm.kv_positions()
    with Llama(default_model, kv_policy="snapkv", kv_budget=budget, kv_interval=n - budget, n_ctx=n_ctx,
               n_threads=THREADS) as ref:
        ref.decode(toks)
        assert ref.kv_stats()["n_compressions"] == 1
        want = ref.kv_positions()
    assert np.array_equal(got, want), "snapkv_prompt kept other tokens than snapkv's single end-of-prompt round"
    _check_positions(got, n, budget, 0, "snapkv_prompt")
