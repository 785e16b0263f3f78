"""The tiny-model writer and the numpy reference on their own (no engine needed).

Checks that write_tiny_model produces well-formed GGUFs, that the reference is internally consistent
(causal, incremental == full recompute, GQA/RoPE conventions), that it reproduces the real default
model's obvious continuations, and that an emulation of a ggml-style engine's rounding passes the
tolerances test_forward.py applies (so those tolerances are attainable, yet tight).
"""
from __future__ import annotations

import os
import time
import zlib

import numpy as np
import pytest
import gguf

from reference import Q8Emulation, Reference, compare_logits, cosine_rows, top_margin
from tinymodels import ARCHS, LOGIT_STD, WRITABLE_TYPES, block_size, bytes_to_unicode, write_tiny_model

BASE_SEED = int(os.environ.get("TRIATTN_TEST_SEED", time.time_ns() % 2**31))
PROMPT_MARGIN = 1.5  # must match test_forward.py
PROMPT_REL_MARGIN = 0.2


def seed_for(name: str) -> int:
    return (BASE_SEED + zlib.crc32(name.encode())) % 2**31


def ctx(name: str) -> str:
    return f"[{name}, seed {seed_for(name)}; rerun with TRIATTN_TEST_SEED={BASE_SEED}]"


# ---- the writer ---------------------------------------------------------------------------------

@pytest.mark.parametrize("wtype", WRITABLE_TYPES)
@pytest.mark.parametrize("arch", ARCHS)
def test_writer_roundtrip(tmp_path, arch, wtype):
    name = f"writer-{arch}-{wtype}"
    n_embd, n_head, n_kv, hd, n_ff, n_vocab = 256, 4, 2, 64, 512, 300
    path = write_tiny_model(tmp_path / "m.gguf", arch, n_embd=n_embd, n_head=n_head, n_head_kv=n_kv,
                            head_dim=hd, n_layer=2, n_ff=n_ff, n_vocab=n_vocab, wtype=wtype,
                            tied=(wtype.endswith("_K")), rope_freqs=(arch == "llama"), seed=seed_for(name))
    r = gguf.GGUFReader(str(path))
    f = {k: v.contents() for k, v in r.fields.items()}
    assert f["general.architecture"] == arch
    assert f[f"{arch}.embedding_length"] == n_embd
    assert f[f"{arch}.attention.head_count_kv"] == n_kv
    assert f[f"{arch}.attention.key_length"] == hd
    assert f["tokenizer.ggml.model"] == "gpt2"
    toks, types = f["tokenizer.ggml.tokens"], f["tokenizer.ggml.token_type"]
    assert len(toks) == len(types) == n_vocab and len(set(toks)) == n_vocab
    assert toks[:256] == bytes_to_unicode()
    for m in f["tokenizer.ggml.merges"]:  # every merge joins two tokens into a third one
        a, b = m.split(" ")
        assert a in toks and b in toks and a + b in toks, m
    eot = toks.index("<|endoftext|>")
    assert types[eot] == gguf.TokenType.CONTROL and f["tokenizer.ggml.eos_token_id"] == eot

    tensors = {t.name: t for t in r.tensors}
    assert ("output.weight" in tensors) != wtype.endswith("_K")
    assert ("rope_freqs.weight" in tensors) == (arch == "llama")
    assert ("blk.1.attn_q.bias" in tensors) == (arch == "qwen2")
    assert ("blk.1.attn_k_norm.weight" in tensors) == (arch in ("qwen3", "gemma3"))
    assert ("blk.1.post_ffw_norm.weight" in tensors) == (arch == "gemma3")
    assert (f.get("gemma3.attention.sliding_window") == 8) == (arch == "gemma3")
    ref = Reference(path)
    for tname, t in tensors.items():
        w = ref.w(tname)
        assert np.isfinite(w).all() and w.std() > 0, tname
        if len(t.shape) == 1:
            assert t.tensor_type == gguf.GGMLQuantizationType.F32, tname
            continue
        assert t.tensor_type.name == wtype, tname
        n_in = int(t.shape[0])
        assert n_in % block_size(wtype) == 0
        want = {"token_embd.weight": 1.0, "output.weight": LOGIT_STD / np.sqrt(n_in)}.get(tname, 1 / np.sqrt(n_in))
        assert 0.7 * want < w.std() < 1.4 * want, (tname, w.std(), want, ctx(name))
        assert abs(w.mean()) < 0.1 * want, (tname, w.mean(), ctx(name))
    assert ref.w("blk.0.attn_q.weight").shape == (n_head * hd, n_embd)
    assert ref.w("blk.0.ffn_down.weight").shape == (n_embd, n_ff)


def test_writer_rejects_bad_shapes(tmp_path):
    with pytest.raises(ValueError):
        write_tiny_model(tmp_path / "a.gguf", "llama", n_embd=128, wtype="Q4_K")  # not a multiple of 256
    with pytest.raises(ValueError):
        write_tiny_model(tmp_path / "b.gguf", "llama", n_head=4, n_head_kv=3)
    with pytest.raises(ValueError):
        write_tiny_model(tmp_path / "c.gguf", "gemma9")


# ---- the reference, internally --------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_refs(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    out = {}
    for arch in ARCHS:
        name = f"ref-{arch}"
        p = write_tiny_model(d / f"{arch}.gguf", arch, wtype="F32", n_layer=2, rope_freqs=(arch == "llama"),
                             seed=seed_for(name), sliding_window=64)
        out[arch] = Reference(p)
    return out


@pytest.mark.parametrize("arch", ARCHS)
def test_reference_causal_and_incremental(tiny_refs, arch):
    ref = tiny_refs[arch]
    rng = np.random.default_rng(seed_for(f"inc-{arch}"))
    toks = rng.integers(0, ref.hp.n_vocab, 20).tolist()
    full = ref.logits(toks)
    assert full.shape == (20, ref.hp.n_vocab) and full.dtype == np.float64
    assert full.std(axis=1).min() > 3.0, "logits are not spread out"
    # Causal: a prefix's logits do not depend on what follows it.
    np.testing.assert_allclose(ref.logits(toks[:7]), full[:7], rtol=0, atol=1e-9)
    # Changing an early token changes every later position.
    other = list(toks)
    other[2] = (other[2] + 1) % ref.hp.n_vocab
    changed = np.abs(ref.logits(other) - full).max(axis=1)
    assert changed[:2].max() < 1e-9 and changed[2:].min() > 1e-6
    # Greedy with an incremental cache == argmax over full recomputation.
    gen, rows = ref.greedy(toks[:10], 6, return_logits=True)
    again = ref.logits(toks[:10] + gen)
    np.testing.assert_allclose(rows, again[9:15], rtol=0, atol=1e-9)
    assert gen == [int(r.argmax()) for r in again[9:15]]


def test_reference_rope_pairing_matches_converter_permutation(tiny_refs):
    """llama GGUFs carry Q/K rows permuted by the converter so that adjacent-pair RoPE equals the
    original model's half-split RoPE: undoing the permutation and switching to half-split pairs must
    give the same logits."""
    ref = tiny_refs["llama"]
    hp = ref.hp
    base = ref.logits(list(range(40, 56)))
    neox = Reference(ref.path)
    neox.hp.neox = True
    for il in range(hp.n_layer):
        for name, nh in (("attn_q", hp.n_head), ("attn_k", hp.n_head_kv)):
            w = ref.w(f"blk.{il}.{name}.weight")  # (nh*hd, n_embd), rows in (head, i, pair) order
            # converter: rows (head, pair, i) -> (head, i, pair); undo it.
            neox._w[f"blk.{il}.{name}.weight"] = (
                w.reshape(nh, hp.head_dim // 2, 2, -1).swapaxes(1, 2).reshape(w.shape))
    np.testing.assert_allclose(neox.logits(list(range(40, 56))), base, rtol=0, atol=1e-8)
    # And the pairing matters: half-split pairs on the permuted weights give different logits.
    neox._w.clear()
    assert np.abs(neox.logits(list(range(40, 56))) - base).max() > 1e-3


def test_reference_gqa_equals_repeated_kv_heads(tmp_path):
    """A GQA model equals the MHA model whose K/V heads are the GQA heads repeated per group."""
    name = "gqa"
    p = write_tiny_model(tmp_path / "g.gguf", "qwen3", n_head=4, n_head_kv=2, wtype="F32", seed=seed_for(name))
    gqa = Reference(p)
    mha = Reference(p)
    hd = gqa.hp.head_dim
    mha.hp.n_head_kv = 4
    for il in range(gqa.hp.n_layer):
        for n in ("attn_k", "attn_v"):
            w = gqa.w(f"blk.{il}.{n}.weight").reshape(2, hd, -1)
            mha._w[f"blk.{il}.{n}.weight"] = np.repeat(w, 2, axis=0).reshape(4 * hd, -1)
    toks = list(range(100, 118))
    np.testing.assert_allclose(mha.logits(toks), gqa.logits(toks), rtol=0, atol=1e-9)
    # The mapping is h // group, not h % n_head_kv: interleaving instead must differ.
    for il in range(gqa.hp.n_layer):
        for n in ("attn_k", "attn_v"):
            w = gqa.w(f"blk.{il}.{n}.weight").reshape(2, hd, -1)
            mha._w[f"blk.{il}.{n}.weight"] = np.concatenate([w, w]).reshape(4 * hd, -1)
    assert np.abs(mha.logits(toks) - gqa.logits(toks)).max() > 1e-3, ctx(name)


def test_reference_gemma3_sliding_window(tmp_path):
    """Two sliding-window layers of window w: position p sees tokens >= p - 2 (w - 1) and no earlier."""
    name, w = "gemma3-window", 4
    p = write_tiny_model(tmp_path / "g.gguf", "gemma3", n_layer=2, sliding_window=w, wtype="F32",
                         seed=seed_for(name))
    ref = Reference(p)
    assert [ref.hp.window(i) for i in range(12)] == [w] * 5 + [0] + [w] * 5 + [0]
    rng = np.random.default_rng(seed_for(name))
    toks = rng.integers(0, ref.hp.n_vocab, 16).tolist()
    other = list(toks)
    other[2] = (other[2] + 1) % ref.hp.n_vocab
    changed = np.abs(ref.logits(other) - ref.logits(toks)).max(axis=1)
    reach = 2 + 2 * (w - 1)
    assert changed[:2].max() < 1e-9 and changed[2:reach + 1].min() > 1e-6, (changed, ctx(name))
    assert changed[reach + 1:].max() < 1e-9, (changed, ctx(name))


def test_reference_gemma3_layer_pattern_and_rope_bases(tmp_path):
    """Layer 5 of six is global (sees the whole context, global RoPE base); the local layers use base 10000."""
    name = "gemma3-pattern"
    p = write_tiny_model(tmp_path / "g.gguf", "gemma3", n_layer=6, sliding_window=3, rope_base=1e6, wtype="F32",
                         seed=seed_for(name))
    ref = Reference(p)
    rng = np.random.default_rng(seed_for(name))
    toks = rng.integers(0, ref.hp.n_vocab, 24).tolist()
    base = ref.logits(toks)
    other = list(toks)
    other[0] = (other[0] + 1) % ref.hp.n_vocab
    assert np.abs(ref.logits(other) - base).max(axis=1).min() > 1e-6, ctx(name)  # the global layer reaches back
    swapped = Reference(p)
    swapped._inv_freq_swa = swapped._inv_freq  # local layers with the global base instead
    assert np.abs(swapped.logits(toks) - base).max() > 1e-3, ctx(name)


def test_reference_rope_freqs_used(tmp_path):
    name = "ropefreqs"
    p = write_tiny_model(tmp_path / "r.gguf", "llama", rope_freqs=True, wtype="F32", seed=seed_for(name))
    ref = Reference(p)
    toks = list(range(60, 80))
    with_f = ref.logits(toks)
    ref._inv_freq = ref._inv_freq * ref.w("rope_freqs.weight")  # drop the divisors
    assert np.abs(ref.logits(toks) - with_f).max() > 1e-3, ctx(name)


def test_pick_prompt_margins(tiny_refs):
    ref = tiny_refs["qwen2"]
    rng = np.random.default_rng(seed_for("pick"))
    toks = ref.pick_prompt(24, rng, PROMPT_MARGIN, PROMPT_REL_MARGIN)
    L = ref.logits(toks)
    assert min(top_margin(r) - max(PROMPT_MARGIN, PROMPT_REL_MARGIN * r.std()) for r in L) >= -1e-9


def test_compare_logits_can_fail():
    rng = np.random.default_rng(seed_for("cmp"))
    a = rng.normal(0, 8, (5, 64))
    assert compare_logits(a, a) == ([], 0)
    b = a.copy()
    i = int(a[3].argmax())
    b[3, i] -= 50.0  # top-1 moves
    bad, _ = compare_logits(a, b)
    assert any("pos 3" in m for m in bad)
    bad, _ = compare_logits(a, a + rng.normal(0, 1.0, a.shape))
    assert any("cosine" in m for m in bad)
    c = a.copy()
    c[0, 0] = np.nan
    assert compare_logits(a, c)[0]


# ---- the reference on the real model --------------------------------------------------------------

@pytest.fixture(scope="module")
def real_ref(default_model):
    return Reference(default_model)


def _vocab(ref):
    return ref._reader.fields["tokenizer.ggml.tokens"].contents()


def _text(vocab, ids):
    inv = {c: b for b, c in enumerate(bytes_to_unicode())}
    return b"".join(bytes(inv[c] for c in vocab[i]) for i in ids).decode("utf-8", "replace")


@pytest.mark.long
def test_reference_real_model_continues_sensibly(real_ref):
    vocab = _vocab(real_ref)
    assert real_ref.hp.n_head == 9 and real_ref.hp.n_head_kv == 3 and real_ref.hp.n_layer == 30
    # "1, 2, 3, 4, 5," in SmolLM2's tokenizer (digits are single tokens, "Ġ" is the space).
    ids = [vocab.index(t) for t in "1 , Ġ 2 , Ġ 3 , Ġ 4 , Ġ 5 ,".split()]
    gen = real_ref.greedy(ids, 10)
    assert _text(vocab, gen).startswith(" 6, 7, 8"), _text(vocab, gen)
    chat = [vocab.index("<|im_start|>"), vocab.index("user"), vocab.index("Ċ")]
    q = [vocab.index(t) for t in "What Ġis Ġthe Ġcapital Ġof ĠFrance ?".split()]
    ids = chat + q + [vocab.index("<|im_end|>"), vocab.index("Ċ"), vocab.index("<|im_start|>"),
                      vocab.index("ass"), vocab.index("istant"), vocab.index("Ċ")]
    gen = real_ref.greedy(ids, 8)
    assert "Paris" in _text(vocab, gen), _text(vocab, gen)


# ---- the tolerances test_forward applies are attainable -------------------------------------------

@pytest.mark.parametrize("arch,wtype", [("llama", "Q4_0"), ("qwen2", "Q8_0"), ("qwen3", "Q4_1"),
                                        ("llama", "Q3_K"), ("qwen2", "Q6_K"), ("qwen3", "Q4_K"),
                                        ("llama", "F16"), ("gemma3", "Q5_0")])
def test_emulated_engine_rounding_meets_tolerances(tmp_path, arch, wtype):
    name = f"emul-{arch}-{wtype}"
    p = write_tiny_model(tmp_path / "e.gguf", arch, wtype=wtype, rope_freqs=(arch == "llama"), seed=seed_for(name))
    ref, emu = Reference(p), Q8Emulation(p)
    toks = ref.pick_prompt(24, np.random.default_rng(seed_for(name)), PROMPT_MARGIN, PROMPT_REL_MARGIN)
    R, E = ref.logits(toks), emu.logits(toks)
    bad, ties = compare_logits(R, E)
    assert not bad, (bad, ctx(name))
    assert cosine_rows(R, E).min() < 1 - 1e-9, "emulation did not perturb anything"
