"""Gemma 3 270M Q4_K_M, the real model (fetched once into the cache: `pytriattn fetch gemma3-270m`).

Correctness of every Gemma 3 block is tested on tiny random models against the float64 reference
(test_forward.py); here the real file: its tensor types load, greedy text is the obvious continuation,
batching does not change what a prompt longer than the sliding window computes, sliding-window layers hold
no more than window + n_batch slots, and TriAttention compresses only the global layers, scoring them as
the float64 formula does with the global RoPE base.
"""
from __future__ import annotations

import re

import numpy as np
import pytest

N_THREADS = 2


@pytest.fixture(scope="module")
def gemma3_model():
    from pytriattn._fetch import ensure_model
    return ensure_model("gemma3-270m")


@pytest.fixture(scope="module")
def Llama():
    from pytriattn import Llama as cls
    return cls


def _last_logits(llm, toks):
    """Decodes toks in one C call (the engine chunks by n_batch) and returns the last position's logits."""
    ffi, lib = llm._ffi, llm._lib
    arr = ffi.new("triattn_token[]", [int(t) for t in toks])
    assert lib.triattn_session_decode(llm._s(), arr, len(toks), False) == 0, ffi.string(
        lib.triattn_session_last_error(llm._s())).decode()
    n_vocab = llm._n_vocab
    return np.frombuffer(ffi.buffer(lib.triattn_session_logits(llm._s(), -1), 4 * n_vocab), dtype=np.float32).copy()


def test_gemma3_greedy_counting(gemma3_model, Llama):
    llm = Llama(str(gemma3_model), n_ctx=128, n_threads=N_THREADS, kv_policy="full")
    try:
        out = llm.create_completion("1, 2, 3, 4, 5,", max_tokens=8, temperature=0.0)["choices"][0]["text"]
        assert out.startswith(" 6, 7, 8"), repr(out)
    finally:
        llm.close()


def _x8_matrices(path):
    """Matrices of the file the CPU repacks: layer and output weights of a type with an x8 layout and a row
    count that is a multiple of 8 (the token embeddings when the output is tied to them)."""
    import gguf
    Q = gguf.GGMLQuantizationType
    kinds = {Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0, Q.Q4_K, Q.Q5_K, Q.Q6_K}
    names = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
    tensors = {t.name: t for t in gguf.GGUFReader(str(path)).tensors}
    out = tensors.get("output.weight", tensors["token_embd.weight"])
    mats = [t for name, t in tensors.items() if name.startswith("blk.") and name.split(".")[2] in names] + [out]
    return sum(1 for t in mats if t.tensor_type in kinds and int(t.shape[1]) % 8 == 0)


def test_gemma3_repacked_weights_give_the_same_bits(gemma3_model, Llama, monkeypatch, capsys):
    """Its matrices (Q4_K, Q6_K, Q5_0, Q8_0 and the Q8_0 output tied to the token embeddings) are repacked at load into groups of 8 rows for the
    CPU kernels: the logits of a prompt (prefill kernels) and of greedy steps after it (decode kernels, the
    embedding lookup from the repacked output) equal, bit for bit, those from the GGUF layout
    (TRIATTN_REPACK=0)."""
    rng = np.random.default_rng()
    text = " ".join(str(int(x)) for x in rng.integers(0, 10**6, 80))
    out = {}
    for mode in ("1", "0"):
        monkeypatch.setenv("TRIATTN_REPACK", mode)
        llm = Llama(str(gemma3_model), n_ctx=256, n_threads=N_THREADS, kv_policy="full", verbose=True)
        try:
            toks = llm.tokenize(text.encode())[:150]
            rows = [_last_logits(llm, toks)]
            for _ in range(6):
                rows.append(_last_logits(llm, [int(np.argmax(rows[-1]))]))
            out[mode] = np.stack(rows)
        finally:
            llm.close()
        log = capsys.readouterr().err
        m = re.search(r"repacked (\d+) weight matrices", log)
        if mode == "1":
            assert m and int(m.group(1)) == _x8_matrices(gemma3_model) > 0, log[-2000:]
        else:
            assert m is None, log[-2000:]
    assert np.isfinite(out["1"]).all()
    assert np.array_equal(out["1"], out["0"])


def test_gemma3_window_bounded_and_batching_invariant(gemma3_model, Llama):
    """700 tokens (> the 512-token window): the same last logits with n_batch 512 and 64, and the local
    layers' caches sized window + n_batch while the global ones hold every token."""
    rng = np.random.default_rng()
    n_ctx, n = 1024, 700
    outs, stats = [], []
    for n_batch in (512, 64):
        llm = Llama(str(gemma3_model), n_ctx=n_ctx, n_batch=n_batch, n_threads=N_THREADS, kv_policy="full")
        try:
            if not outs:
                text = " ".join(str(int(x)) for x in rng.integers(0, 10**6, 400))
                toks = llm.tokenize(text.encode())[:n]
                assert len(toks) == n
            outs.append(_last_logits(llm, toks))
            stats.append(llm.kv_stats())
            pos = llm.kv_positions()  # (n_layer, n_head_kv, max_live), -1 padded
        finally:
            llm.close()
        n_layer, window, slot = 18, 512, 2 * 256 * 2 + 4  # K and V in f16 (head_dim 256), int32 position
        local = [i for i in range(n_layer) if (i + 1) % 6]
        assert stats[-1]["kv_bytes"] == slot * (3 * n_ctx + 15 * min(n_ctx, window + n_batch)), stats[-1]
        for il in range(n_layer):
            held = pos[il, 0][pos[il, 0] >= 0]
            if il in local:  # at least the window, never more than window + n_batch
                assert window <= len(held) <= window + n_batch and held[-1] == n - 1, (il, len(held))
            else:
                assert np.array_equal(held, np.arange(n)), il
    assert np.array_equal(outs[0], outs[1]), float(np.abs(outs[0] - outs[1]).max())


def test_gemma3_triattention_compresses_global_layers_only(gemma3_model, Llama, tmp_path):
    """Without centres the budget policies still bound the global layers; snapkv is used here (triattention
    needs a calibration), the local layers keep their window."""
    llm = Llama(str(gemma3_model), n_ctx=2048, n_batch=128, n_threads=N_THREADS, kv_policy="snapkv",
                kv_budget=256, kv_interval=64)
    try:
        text = " ".join(str(i) for i in range(300))
        toks = llm.tokenize(text.encode())[:900]
        _last_logits(llm, toks)
        st = llm.kv_stats()
        pos = llm.kv_positions()
        assert st["n_compressions"] > 0 and st["live_max"] <= 256 + 64, st
        for il in range(18):
            held = pos[il, 0][pos[il, 0] >= 0]
            if (il + 1) % 6 == 0:
                assert len(held) <= 256 + 64, (il, len(held))
            else:
                assert held[0] > len(toks) - 1 - 512 - 128 and len(held) >= 512, (il, len(held))
    finally:
        llm.close()


def test_gemma3_global_layer_scores_match_float64_oracle(gemma3_model, Llama, tmp_path):
    """On the real model, the TriAttention scores of the global layers (RoPE base 1e6) equal the float64
    per-offset formula on the engine's own keys, the local layers are not scored, and the kept tokens are
    numpy's §4 selection (z-score, max over the 4 query heads, mean over the 3 global layers)."""
    from test_triattention import (kv_keys, kv_positions, model_centres, omega_of, oracle_keep, oracle_scores,
                                   pairs_of, write_sidecar, zscore)

    rng = np.random.default_rng()
    text = " ".join(f"{w}{rng.integers(1000)}" for w in rng.choice(["verse", "line", "the", "and"], 1500))
    cal = Llama(str(gemma3_model), kv_policy="full", n_ctx=1024, n_threads=N_THREADS)
    try:
        toks = cal.tokenize(text)
        cal.calib_begin()
        cal.decode(toks[:400])
        cal.calib_end()
        stats, info = cal.calib_get(), cal.model_info
    finally:
        cal.close()
    side = tmp_path / "g3.tri.gguf"
    write_sidecar(side, info, stats)
    B, I, sink, window = 192, 64, 4, 32
    llm = Llama(str(gemma3_model), calibration=str(side), kv_policy="triattention", kv_budget=B, kv_interval=I,
                kv_window=window, n_ctx=2048, n_threads=N_THREADS)
    try:
        info = llm.model_info
        L, H, R = info["n_layer"], info["n_head"], info["rope_dim"]
        assert info["n_head_kv"] == 1 and info["rope_freq_base"] == 1e6
        omega = omega_of(info)                            # the global layers' base, no scaling
        omega_local = omega_of({**info, "rope_freq_base": 1e4})  # the sliding-window layers' base: for the report
        worst, local_dev = 0.0, []
        glob = [il for il in range(L) if (il + 1) % 6 == 0]
        qc, qabs = model_centres(llm)
        stream = iter(toks[400:])
        prompt_len = 24                                   # shorter than B - window: protected whole
        llm.decode([next(stream) for _ in range(prompt_len)])
        for rnd in range(2):
            llm.decode([next(stream) for _ in range(B + I - 1 - llm.kv_stats()["live_max"])])
            keys = {il: kv_keys(llm, il, 0) for il in glob}
            pos = kv_positions(llm, glob[0], 0)
            llm.decode([next(stream)])                    # reaches B + I: compresses
            assert llm.kv_stats()["n_compressions"] == rnd + 1
            t0, live, rec = llm.n_past(), B + I, llm.kv_scores()
            lo, hi = max(sink, int(np.searchsorted(pos, prompt_len))), live - window
            k_keep = B - (lo + live - hi)
            agg = np.zeros(hi - lo)
            for il in range(L):
                raw = rec["raw"][il, 0, :live]
                if il not in glob:
                    assert np.all(np.isnan(raw)), il
                    continue
                kpre = pairs_of(keys[il][lo:hi, :R], info["rope_pairing"]) * np.exp(-1j * omega * pos[lo:hi, None])
                sc = oracle_scores(qc[il], qabs[il], kpre, pos[lo:hi].astype(np.float64), float(t0), omega)
                scale = np.einsum("gf,nf->n", qabs[il], np.abs(kpre)).max()
                assert np.all(np.isnan(raw[:lo])) and np.all(np.isnan(raw[hi:])), il
                err = np.max(np.abs(raw[lo:hi] - sc.max(0))) / scale
                assert err < 1e-5, (rnd, il, err)
                worst = max(worst, err)
                wrong = oracle_scores(qc[il], qabs[il], kpre, pos[lo:hi].astype(np.float64), float(t0), omega_local)
                local_dev.append(np.max(np.abs(raw[lo:hi] - wrong.max(0))) / scale)
                agg += zscore(sc).max(0)
            agg /= len(glob)
            want, kth = oracle_keep(pos, agg, lo, hi, k_keep, t0)
            got = kv_positions(llm, glob[0], 0)
            diff = np.setxor1d(got, want)                 # only float32-vs-float64 near-ties at the k-th score
            assert np.all(np.abs(agg[np.searchsorted(pos[lo:hi], diff)] - kth) < 1e-4), (rnd, diff)
        print(f"gemma3 global-layer scores vs float64 (base 1e6): max rel err {worst:.2g} of the score scale; "
              f"the same keys scored with base 1e4 would differ by {min(local_dev):.2g}-{max(local_dev):.2g}")
    finally:
        llm.close()


@pytest.mark.parametrize("mode", ["per_head", "global", "per_layer_per_head"])
def test_tiny_gemma3_triattention_keeps_the_budget_on_global_layers(tmp_path, Llama, mode):
    """Layer 0 is a sliding-window layer: the shared keep sets must take their size from the global layers
    (a budget of scored slots kept, not only sink + window), and the local layers keep their window."""
    import subprocess
    import sys

    from tinymodels import write_tiny_model

    path = write_tiny_model(tmp_path / "g.gguf", "gemma3", n_layer=12, sliding_window=24, wtype="F32",
                            seed=int(np.random.default_rng().integers(1 << 30)))
    side = tmp_path / "g.tri.gguf"
    subprocess.run([sys.executable, "-m", "pytriattn", "calibrate", str(path), "--self-generate", "--tokens", "256",
                    "--sidecar", "-o", str(side), "-q", "-t", "1"], check=True)
    B, I, W = 96, 16, 8
    llm = Llama(str(path), n_ctx=600, n_batch=I, n_threads=1, kv_policy="triattention", kv_budget=B, kv_interval=I,
                kv_window=W, kv_mode=mode, calibration=str(side))
    try:
        toks = np.random.default_rng().integers(0, 300, 400).tolist()
        lows = []
        for a in range(0, len(toks), I):
            llm.decode(toks[a:a + I])
            st = llm.kv_stats()
            if st["n_compressions"] > 0:
                lows.append(st["live_min"])
        assert st["n_compressions"] >= (len(toks) - B - I) // I, st
        # right after a round the global layers hold the budget (then grow by one chunk): never far below it
        assert min(lows) >= B, (mode, min(lows), st)
        pos = llm.kv_positions()
        for il in range(12):
            held = pos[il, 0][pos[il, 0] >= 0]
            if (il + 1) % 6:
                assert held[-1] == len(toks) - 1 and len(held) >= 24, (il, len(held))
            else:
                assert B <= len(held) <= B + I, (il, len(held))
    finally:
        llm.close()


def test_tiny_gemma3_rollback_respects_the_sliding_window(tmp_path, Llama):
    """A prompt that diverges behind the sliding window of a local layer cannot be cut back (those slots were
    dropped): the session restarts, and the logits equal a fresh session's; one that diverges inside the window
    is cut back, with the same logits as a fresh session too."""
    from tinymodels import write_tiny_model

    rng = np.random.default_rng()
    path = write_tiny_model(tmp_path / "g.gguf", "gemma3", n_layer=6, sliding_window=8, wtype="F32",
                            seed=int(rng.integers(1 << 30)))
    llm = Llama(str(path), n_ctx=256, n_batch=16, n_threads=1)
    fresh = Llama(str(path), n_ctx=256, n_batch=16, n_threads=1)
    ffi, lib = llm._ffi, llm._lib
    try:
        base = rng.integers(0, 300, 60).tolist()
        for at, kind in ((20, "restart"), (57, "rollback")):
            llm.reset()
            _last_logits(llm, base)
            new = base[:at] + rng.integers(0, 300, 10).tolist()
            new[at] = (base[at] + 1) % 300
            arr = ffi.new("triattn_token[]", new)
            info = ffi.new("struct triattn_reuse_info *")
            assert lib.triattn_session_reuse_prefix(llm._s(), arr, len(new), info) == 0
            assert {2: "rollback", 3: "restart"}[int(info.kind)] == kind, (at, int(info.kind))
            got = _last_logits(llm, new[int(info.n_cached):])
            fresh.reset()
            want = _last_logits(fresh, new)
            np.testing.assert_array_equal(got, want)
    finally:
        llm.close()
        fresh.close()
