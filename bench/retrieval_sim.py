"""Why TriAttention's kept tokens are recent, and which score variant keeps needles: a numpy replay of the
`triattention` policy's prefill rounds (docs/triattention.md §3-§5, adjacent pairing as in the default model)
on the keys of one full-attention prefill.

A prompt of --context tokens holds 5 key-value facts at depths 0.1 .. 0.9 of a haystack (pytriattn eval's
kvrecall prompt). One full-attention prefill gives every key; the script then replays the chunked prefill
(chunks of 128, a round whenever the next chunk would not fit in budget + 128) for each score variant and
reports, per depth, the fraction of the fact's tokens still held after the prompt (mean over KV heads), the
share of kept tokens in the last third of the prompt and their median age. The keys of a compressed run
differ a little from full attention's (later layers see a smaller cache), so this screens variants cheaply;
`--check` runs the engine's policy on the same prompt and prints the Jaccard overlap of the kept sets.

    python bench/retrieval_sim.py --context 2048 --haystack kjv --seed 0 --budget 512 [--check]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from pytriattn import eval as ev

OFFSETS = 2.0 ** np.arange(17)
VARIANTS = {
    "default": {},
    "trig=0 (norm only)": {"trig": 0.0},
    "norm=0 (trig only)": {"norm": 0.0},
    "trig=0.5": {"trig": 0.5},
    "trig=2": {"trig": 2.0},
    "agg=max": {"agg": "max"},
    "trig=0.5,agg=max": {"trig": 0.5, "agg": "max"},
    "kv_window=32": {"window": 32},
    "offsets 2^10..2^16 only": {"offsets": 2.0 ** np.arange(10, 17)},
}


def prompt(llm, ctx: int, haystack: str, seed: int):
    """Token ids and the [start, end) span of each of the 5 facts."""
    case = ev.needle_cases("kvrecall", [ctx], [0.1], [seed], [haystack], n_facts=5)[0]
    case["depths"] = [0.1, 0.3, 0.5, 0.7, 0.9]
    spans, toks = [], None
    for i in range(5):
        order = [i] + [j for j in range(5) if j != i]
        c = {**case, **{k: [case[k][j] for j in order] for k in ("names", "values", "depths")}}
        toks, span = ev.needle_prompt(llm, c, {})
        spans.append(span)
    return toks, spans


def keys_of(llm) -> np.ndarray:
    """Cached post-RoPE keys [L, Hkv, n, D] (float32)."""
    ffi, lib = llm._ffi, llm._lib
    info = llm.model_info
    L, Hkv, D = info["n_layer"], info["n_head_kv"], info["head_dim"]
    n = ffi.new("int32_t *")
    lib.triattn_session_kv_keys(llm._s(), 0, 0, ffi.NULL, 0, n)
    out = np.empty((L, Hkv, n[0], D), dtype=np.float32)
    for il in range(L):
        for h in range(Hkv):
            buf = np.empty((n[0], D), dtype=np.float32)
            assert lib.triattn_session_kv_keys(llm._s(), il, h, ffi.from_buffer("float[]", buf), n[0], n) == 0
            out[il, h] = buf
    return out


def centres_of(llm):
    ffi, lib = llm._ffi, llm._lib
    info = llm.model_info
    shape = (info["n_layer"], info["n_head"], info["freq_count"])
    arrs = [np.empty(shape, dtype=np.float32) for _ in range(3)]
    assert lib.triattn_model_get_centres(llm._m(), *[ffi.from_buffer("float[]", a) for a in arrs],
                                         int(np.prod(shape))) == 0, "the model has no centres"
    return arrs[0] + 1j * arrs[1].astype(np.float64), arrs[2].astype(np.float64)


def dump(setup, ctx, haystack, seed, path: Path) -> dict:
    if path.is_file():
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    llm = setup.llama("full", ctx, ctx + 16)
    try:
        toks, spans = prompt(llm, ctx, haystack, seed)
        llm.reset()
        llm.decode(toks)
        info = llm.model_info
        qc, qabs = centres_of(llm)
        d = {"K": keys_of(llm), "spans": np.array(spans), "qc": qc, "qabs": qabs, "P": len(toks),
             "base": float(info["rope_freq_base"]), "R": info["rope_dim"]}
    finally:
        llm.close()
    np.savez(path, **d)
    return d


def simulate(d, B=512, I=128, sink=4, window=128, trig=1.0, norm=1.0, agg="mean", offsets=OFFSETS):
    """Kept positions per KV head after the prompt (per_head mode: one set per KV head)."""
    K = d["K"].astype(np.float64)
    L, Hkv, P, _ = K.shape
    R = int(d["R"])
    F = R // 2
    omega = float(d["base"]) ** (-np.arange(F) * 2.0 / R)
    qc, qabs = d["qc"], d["qabs"]
    G = qc.shape[1] // Hkv
    kz = K[..., 0:R:2] + 1j * K[..., 1:R:2]          # adjacent pairing
    kabs = np.abs(kz)
    c = qabs - np.abs(qc)
    live = [[] for _ in range(Hkv)]

    def compress(t0):
        a = np.exp(1j * omega[:, None] * (t0 + offsets[None, :])).mean(1)
        W = qc * a[None, None, :]
        for h in range(Hkv):
            lv = np.array(live[h])
            n = len(lv)
            lo = min(sink, n)
            hi = max(lo, n - min(window, B - sink))
            k = max(0, B - (lo + n - hi))
            if hi - lo <= k:
                continue
            cand = lv[lo:hi]
            acc = None
            for il in range(L):
                sl = slice(h * G, (h + 1) * G)
                s = trig * (W[il, sl][:, None, :] * np.conj(kz[il, h, cand])[None]).real.sum(-1) \
                    + norm * (c[il, sl] @ kabs[il, h, cand].T)
                s = (s - s.mean(1, keepdims=True)) / np.maximum(s.std(1, keepdims=True), 1e-6)
                z = s.max(0)
                acc = z if acc is None else (np.maximum(acc, z) if agg == "max" else acc + z)
            order = np.lexsort((-np.arange(len(cand)), -acc))
            live[h] = list(lv[:lo]) + list(np.sort(cand[order[:k]])) + list(lv[hi:])

    n_past = 0
    for start in range(0, P, I):
        n = min(I, P - start)
        if len(live[0]) + n > B + I:
            compress(n_past)
        for h in range(Hkv):
            live[h] += list(range(start, start + n))
        n_past += n
    if len(live[0]) >= B + I:
        compress(n_past)
    return live


def report(d, live) -> dict:
    P = int(d["P"])
    surv = [float(np.mean([np.isin(np.arange(a, b), lv).mean() for lv in live])) for a, b in d["spans"]]
    allk = np.concatenate([np.asarray(lv) for lv in live])
    return {"survival_by_depth": np.round(surv, 2).tolist(), "mean": round(float(np.mean(surv)), 3),
            "kept_in_last_third": round(float((allk > P * 2 / 3).mean()), 3), "median_age": int(np.median(P - allk))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--context", type=int, default=2048)
    ap.add_argument("--haystack", default="kjv", choices=ev.NEEDLE_HAYSTACKS)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--budget", default="512", help="comma list")
    ap.add_argument("--cache", default="retrieval-sim", help="folder for the key dumps")
    ap.add_argument("--check", action="store_true", help="also run the engine's policy and compare kept sets")
    args = ap.parse_args()
    setup = ev.Setup(None, None, threads=2)
    Path(args.cache).mkdir(parents=True, exist_ok=True)
    d = dump(setup, args.context, args.haystack, args.seed,
             Path(args.cache) / f"{args.haystack}-{args.context}-s{args.seed}.npz")
    for B in ev.parse_list(args.budget):
        for name, kw in VARIANTS.items():
            live = simulate(d, B=B, **kw)
            print(json.dumps({"context": args.context, "haystack": args.haystack, "seed": args.seed, "budget": B,
                              "variant": name, **report(d, live)}), flush=True)
        if args.check:
            llm = setup.llama("triattention", B, args.context + 16)
            try:
                toks, _ = prompt(llm, args.context, args.haystack, args.seed)
                llm.reset()
                llm.decode(toks)
                pos = llm.kv_positions()
            finally:
                llm.close()
            live = simulate(d, B=B)
            jac = [len(set(pos[0, h][pos[0, h] >= 0]) & set(lv)) / len(set(pos[0, h][pos[0, h] >= 0]) | set(lv))
                   for h, lv in enumerate(live)]
            print(json.dumps({"budget": B, "engine_vs_replay_jaccard": np.round(jac, 3).tolist()}), flush=True)


if __name__ == "__main__":
    main()
