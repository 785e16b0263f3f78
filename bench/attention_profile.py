"""Where the real queries of a model's global layers attend, and how well the TriAttention score and plain
recency rank the keys those queries use.

One full-attention pass over the first --context tokens of a text; the last --queries tokens are decoded one
at a time with the calibration hook on, which gives each one's pre-RoPE query (bench/retrieval_sim.py:
last_queries). Per global layer (no sliding window) and query head, the queries are rotated to their positions
(the engine's pairing and the layer's RoPE frequencies) and their softmax attention over every cached key is
computed. Reported, averaged over layers, heads and queries:

- the share of attention on keys by distance from the query (buckets);
- for the keys outside the protected window (distance >= --window from the first of those queries), the
  share of the queries' attention kept by the budget's worth of keys (budget - window - sink) chosen by the
  TriAttention score of the model's centres at t0 = the first query's position (per (layer, head): the score,
  z-scored, max over the group; the same per_head rule as the engine: mean over the global layers), by
  recency (the most recent), and by the oracle (the keys the queries attend to most).

    python bench/attention_profile.py -m gemma-3-270m-q4_k_m.gguf --calibration gemma3.tri-stats.gguf \\
        --text kjv.txt --context 4096 --queries 64 --budget 512
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from retrieval_sim import centres_of, last_queries  # noqa: E402


def pairs(x: np.ndarray, pairing: str):
    """(a, b) index arrays of the F rotary pairs."""
    F = x // 2
    if pairing == "half":
        return np.arange(F), np.arange(F) + F
    return np.arange(0, x, 2), np.arange(1, x, 2)


def layer_keys(llm, il: int, h: int) -> np.ndarray:
    """Post-RoPE keys [n, D] cached by (layer il, KV head h), slot order."""
    ffi, lib = llm._ffi, llm._lib
    n = ffi.new("int32_t *")
    lib.triattn_session_kv_keys(llm._s(), il, h, ffi.NULL, 0, n)
    buf = np.empty((n[0], llm.model_info["head_dim"]), dtype=np.float32)
    assert lib.triattn_session_kv_keys(llm._s(), il, h, ffi.from_buffer("float[]", buf), n[0], n) == 0
    return buf


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--model", required=True)
    ap.add_argument("--calibration", required=True)
    ap.add_argument("--text", default=None, help="UTF-8 text (default: the King James Bible via `bible`)")
    ap.add_argument("--context", type=int, default=4096)
    ap.add_argument("--queries", type=int, default=64)
    ap.add_argument("--budget", type=int, default=512)
    ap.add_argument("--window", type=int, default=128)
    ap.add_argument("--sink", type=int, default=4)
    ap.add_argument("-t", "--threads", type=int, default=2)
    a = ap.parse_args(argv)

    from pytriattn import Llama
    from pytriattn.eval import kjv_text, text_tokens

    text = Path(a.text).read_text(encoding="utf-8") if a.text else kjv_text()
    llm = Llama(a.model, n_ctx=a.context + 8, n_threads=a.threads, kv_policy="full", calibration=a.calibration)
    info = llm.model_info
    toks = text_tokens(llm, text, a.context, "attention_profile")
    nq = a.queries
    Q = last_queries(llm, toks[:-nq], toks[-nq:])            # [nq, L, H, F] complex, pre-RoPE
    qc, qabs = centres_of(llm)
    L, Hkv, D, n = info["n_layer"], info["n_head_kv"], info["head_dim"], a.context
    H = Q.shape[2]
    G = H // Hkv
    R = info["rope_dim"]
    F = R // 2
    ia, ib = pairs(R, info["rope_pairing"])
    # Gemma 3: every sixth layer is global (the others attend over a 512-token window); other models: all.
    glob = [il for il in range(L) if (il + 1) % 6 == 0] if info["arch"] == "gemma3" else list(range(L))
    omega = float(info["rope_freq_base"]) ** (-np.arange(F) * 2.0 / R)   # global layers' base (no freq factors)
    t_first = n - nq
    pos = np.arange(n)
    dist_edges = [0, 128, 512, 1024, 2048, n + 1]
    share = np.zeros(len(dist_edges) - 1)
    k_out = a.budget - a.window - a.sink
    kept = {"triattention": [], "recency": [], "oracle": []}
    offs = 2.0 ** np.arange(17)
    phase = np.exp(1j * omega[:, None] * (t_first + offs[None, :])).mean(1)
    tri_layers = []
    att_layers = []
    for il in glob:
        kh = np.array([layer_keys(llm, il, h) for h in range(Hkv)], dtype=np.float64)   # [Hkv, n, D]
        assert kh.shape[1] == n, f"layer {il} holds {kh.shape[1]} keys, not {n}: not a global layer"
        kc = kh[..., ia] + 1j * kh[..., ib]                   # [Hkv, n, F] post-RoPE pairs
        for h in range(H):
            hk = h // G
            qrot = Q[:, il, h, :].astype(np.complex128) * np.exp(1j * omega[None, :] * (t_first + np.arange(nq))[:, None])
            logits = (qrot[:, None, :] * np.conj(kc[hk][None, :, :])).real.sum(-1) / np.sqrt(D)   # [nq, n]
            mask = pos[None, :] <= (t_first + np.arange(nq))[:, None]
            logits = np.where(mask, logits, -np.inf)
            p = np.exp(logits - logits.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            d = (t_first + np.arange(nq))[:, None] - pos[None, :]
            for b in range(len(share)):
                share[b] += (p * ((d >= dist_edges[b]) & (d < dist_edges[b + 1]))).sum(1).mean()
            att_layers.append(p.mean(0))
        w = qc[il] * phase[None, :]                           # [H, F]
        s = (w[:, None, :] * np.conj(kc[np.arange(H) // G])).real.sum(-1) + \
            ((qabs[il] - np.abs(qc[il]))[:, None, :] * np.abs(kc[np.arange(H) // G])).sum(-1)   # [H, n]
        tri_layers.append(s)
    share /= len(glob) * H
    cand = np.arange(a.sink, t_first - a.window)               # keys outside sink and window at t_first
    att = np.mean(att_layers, axis=0)                          # mean attention per key over layers, heads, queries
    tri = np.zeros(len(cand))
    for s in tri_layers:
        z = s[:, cand]
        z = (z - z.mean(1, keepdims=True)) / np.maximum(z.std(1, keepdims=True), 1e-6)
        tri += z.reshape(Hkv, G, -1).max(1).mean(0)
    sel = {"triattention": cand[np.argsort(-tri)[:k_out]], "recency": cand[-k_out:],
           "oracle": cand[np.argsort(-att[cand])[:k_out]]}
    out = {"model": Path(a.model).name, "context": n, "queries": nq, "global_layers": glob,
           "attention_share_by_distance": {f"[{dist_edges[b]},{dist_edges[b + 1]})": round(float(share[b]), 4)
                                           for b in range(len(share))},
           "candidates": int(len(cand)), "kept": int(k_out),
           "attention_on_candidates": round(float(att[cand].sum()), 4),
           "kept_share_of_candidate_attention": {k: round(float(att[v].sum() / max(att[cand].sum(), 1e-12)), 4)
                                                 for k, v in sel.items()},
           "median_distance_of_kept": {k: int(np.median(t_first - v)) for k, v in sel.items()}}
    print(json.dumps(out, indent=1))
    llm.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
