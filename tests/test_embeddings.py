"""Embeddings (triattn_session_embed, Llama.embed / create_embedding) against the float64 reference's final normed
hidden states, on tiny random models of every architecture and on the real default model; pooling, normalisation,
chunking, the session state around a call, and the errors."""
from __future__ import annotations

import math
import os
import random
import time
import zlib

import numpy as np
import pytest

from reference import Q8Emulation, Reference, cosine_rows
from tinymodels import write_tiny_model

BASE_SEED = int(os.environ.get("TRIATTN_TEST_SEED", time.time_ns() % 2**31))
MIN_COS = 0.999  # per token, engine (8-bit activations) vs float64

TINY = [
    ("llama-Q8_0", "llama", dict(wtype="Q8_0")),
    ("qwen2-Q4_1-tied", "qwen2", dict(wtype="Q4_1", tied=True)),
    ("qwen3-Q4_K", "qwen3", dict(wtype="Q4_K")),
    ("gemma3-6layers-Q6_K-swa8", "gemma3", dict(wtype="Q6_K", n_layer=6, sliding_window=8, rope_base=1e6)),
]


def seed_for(name: str) -> int:
    return (BASE_SEED + zlib.crc32(name.encode())) % 2**31


def ctx(name: str) -> str:
    return f"[{name}: seed {seed_for(name)}; rerun with TRIATTN_TEST_SEED={BASE_SEED}]"


def _unit(v):
    v = np.asarray(v, np.float64)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


@pytest.mark.parametrize("name,arch,kw", TINY, ids=[c[0] for c in TINY])
def test_tiny_embeddings_match_reference(tmp_path, name, arch, kw):
    from pytriattn import Llama
    path = write_tiny_model(tmp_path / f"{name}.gguf", arch, seed=seed_for(name), **kw)
    ref = Reference(path)
    rng = np.random.default_rng(seed_for(name))
    toks = [int(t) for t in rng.integers(0, ref.hp.n_vocab, size=int(rng.integers(20, 40)))]
    want = ref.hidden(toks)
    # n_batch below the prompt: the pass runs in several steps
    with Llama(str(path), n_ctx=64, n_batch=int(rng.integers(5, 16)), n_threads=2, kv_policy="full") as llm:
        rows = np.array(llm.embed(toks, pooling="none", normalize=False), np.float64)
        assert rows.shape == want.shape, ctx(name)
        cos = cosine_rows(want, rows)
        assert cos.min() >= MIN_COS, f"per-token cosine {cos.min():.6f} {ctx(name)}"
        mean = np.array(llm.embed(toks, normalize=False))
        last = np.array(llm.embed(toks, pooling="last", normalize=False))
        # pooled forms are the per-token rows pooled (the same pass each time)
        np.testing.assert_allclose(mean, rows.mean(axis=0), rtol=1e-5, atol=1e-5 * np.abs(rows).max())
        np.testing.assert_array_equal(last, rows[-1].astype(np.float32))
        unit = np.array(llm.embed(toks))
        assert abs(np.linalg.norm(unit) - 1.0) < 1e-5
        np.testing.assert_allclose(unit, _unit(mean), atol=1e-6)
        assert float(_unit(want.mean(axis=0)) @ unit) >= MIN_COS, ctx(name)
        assert llm.n_past() == 0


@pytest.fixture(scope="module")
def llm(default_model):
    from pytriattn import Llama
    with Llama(str(default_model), n_ctx=512, n_threads=2, kv_policy="full") as m:
        yield m


def test_real_model_matches_reference(llm, default_model):
    """Per token: cosine to float64 at least that of the logits check (test_forward.py), and an rms error no larger
    than 1.5 times that of the emulated 8-bit engine (reference.Q8Emulation) on the same tokens (up to 1.27 seen on
    32-token prompts, where its logits are 1.74 times the emulation's too)."""
    text = random.choice(["The first law of thermodynamics states that energy is conserved.",
                          "def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)",
                          "In the beginning God created the heaven and the earth."])
    toks = llm.tokenize(text)
    ref = Reference(default_model)
    emu = Q8Emulation(default_model)
    emu._w = ref._w  # share the dequantized weights
    want, emulated = ref.hidden(toks), emu.hidden(toks)
    rows = np.array(llm.embed(toks, pooling="none", normalize=False), np.float64)
    cos = cosine_rows(want, rows)
    assert cos.min() >= 0.98 and cos.mean() >= 0.998, f"{text!r}: cosine min {cos.min():.6f} mean {cos.mean():.6f}"
    err, err_emu = np.sqrt(np.mean((rows - want) ** 2)), np.sqrt(np.mean((emulated - want) ** 2))
    assert err <= 1.5 * err_emu, f"{text!r}: rms error {err:.5f} > 1.5 x emulated 8-bit engine's {err_emu:.5f}"
    # they are the rows the engine's logits come from: the output matrix maps them to its logits
    llm.reset()
    logits = llm.eval(toks)
    cos_l = cosine_rows(emu._linear(rows, emu._out), logits)  # with the 8-bit activations of the output matmul
    assert cos_l.min() >= 0.99995, f"{text!r}: hidden rows x output vs the engine's logits: cosine {cos_l.min():.6f}"
    assert float(_unit(want.mean(axis=0)) @ np.array(llm.embed(text))) >= MIN_COS
    assert float(_unit(want[-1]) @ np.array(llm.embed(text, pooling="last"))) >= 0.995


def test_similar_sentences_are_closer(llm):
    a, b, c = llm.embed(["The cat sat quietly on the warm mat.", "A cat was sitting on the mat, warm and quiet.",
                         "Quarterly revenue fell as interest rates rose."])
    ab, ac = float(np.dot(a, b)), float(np.dot(a, c))
    assert ab > ac, f"cos(paraphrase) {ab:.4f} <= cos(unrelated) {ac:.4f}"


def test_create_embedding_shape(llm):
    texts = ["hello world", "a second, longer input text"]
    r = llm.create_embedding(texts, model="m")
    assert r["object"] == "list" and r["model"] == "m" and len(r["data"]) == 2
    n_embd = llm.model_info["n_embd"]
    for i, d in enumerate(r["data"]):
        assert d["object"] == "embedding" and d["index"] == i and len(d["embedding"]) == n_embd
        assert abs(math.fsum(x * x for x in d["embedding"]) - 1.0) < 1e-5
    assert r["usage"]["prompt_tokens"] == sum(len(llm.tokenize(t)) for t in texts) == r["usage"]["total_tokens"]
    # ids and text give the same vector; one item gives one vector
    assert llm.embed(llm.tokenize(texts[0])) == llm.embed(texts[0]) == r["data"][0]["embedding"]


def test_session_state_around_embed(llm):
    prompt = "The capital of France is"
    want = llm.generate(prompt, max_tokens=8, temperature=0.0)
    llm.eval(llm.tokenize("Some earlier context that the embedding call must forget."))
    llm.embed("An unrelated sentence to embed first.")
    assert llm.n_past() == 0
    assert llm.generate(prompt, max_tokens=8, temperature=0.0) == want


def test_compressing_policy_embeds(default_model):
    """A TriAttention session evicts while it reads the input, as in a prefill: the result differs from full
    attention's once the input passes budget + interval, and stays close to it."""
    from pytriattn import Llama
    from pytriattn.llama import default_calibration
    text = " ".join(["The quick brown fox jumps over the lazy dog while the farmer counts his sheep."] * 16)
    with Llama(str(default_model), n_ctx=512, n_threads=2, kv_policy="full") as full:
        toks = full.tokenize(text)
        assert len(toks) > 64 + 16
        e_full = np.array(full.embed(toks))
    with Llama(str(default_model), n_ctx=512, n_threads=2, kv_policy="triattention", kv_budget=64,
               kv_interval=16, calibration=default_calibration()) as ta:
        e_ta = np.array(ta.embed(toks))
        assert ta.kv_stats()["n_past"] == 0
    assert np.isfinite(e_ta).all() and abs(np.linalg.norm(e_ta) - 1) < 1e-5
    assert 0.9 < float(e_full @ e_ta) < 1.0 - 1e-7


def test_errors(llm):
    from pytriattn import TriattnError
    with pytest.raises(TriattnError, match="pooling"):
        llm.embed("x", pooling="max")
    with pytest.raises(TriattnError, match="pooling"):
        llm.create_embedding("x", pooling="max")
    with pytest.raises(TriattnError, match="empty"):
        llm.embed([])
    with pytest.raises(TriattnError, match="at least one token"):
        llm.embed([[1, 2], []])
    with pytest.raises(TriattnError, match="out of range"):
        llm.embed([1, llm.n_vocab()])
    with pytest.raises(TriattnError, match="input\\[1\\]"):
        llm.embed(["ok", 3.5])
    long = [random.randrange(100, 1000) for _ in range(llm.n_ctx() + 5)]
    with pytest.raises(TriattnError, match="exceed n_ctx"):
        llm.embed(long)
    assert len(llm.embed(long, truncate=True)) == llm.model_info["n_embd"]
    # the session works after the failures
    assert llm.n_past() == 0 and len(llm.embed("fine")) == llm.model_info["n_embd"]
