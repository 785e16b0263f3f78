"""Why TriAttention's kept tokens are recent, and which change keeps needles: a numpy replay of the
`triattention` policy's prefill rounds (docs/triattention.md §3-§5, adjacent pairing as in the default model)
on the keys of full-attention prefills.

A prompt of --context tokens holds 5 key-value facts at depths 0.1 .. 0.9 of a haystack (pytriattn eval's
kvrecall prompt); there are 5 prompts, prompt i asking for the fact at depth i (they differ only in the
question, and by a token of haystack). One full-attention prefill of each gives every key, and the last
8 pre-RoPE queries (the question's, from the engine's calibration hook, one token at a time). The script
then replays the chunked prefill (chunks of 128, a round whenever the next chunk would not fit in
budget + 128) for each variant and reports, per depth, the fraction of the asked fact's tokens still held
after prompt i (mean over the units: KV heads, or (layer, KV head) pairs), the share of kept tokens in the
last third of the prompt and their median age (mean over the 5 prompts). The keys of a compressed run
differ a little from full attention's (later layers see a smaller cache), so this screens variants
cheaply; --check runs the engine on the same prompt and prints the Jaccard overlap of the kept sets.

Variant suites (--suite, comma list):
  base       score variants of the §3 score: trig / norm weights, layer max, offsets, protected window.
  ref        the default and trig only rows of `base` (the reference rows for the other suites).
  alloc      budgets per unit from the calibration's concentration R (weighted over the dominant
             frequencies: sum_f |E q_f| / sum_f E|q_f|, mean over the unit's query heads): unit u gets
             total * (1 - R_u)^g / sum (1 - R)^g slots, clipped to [B/4, 4B], total over all units unchanged.
             `per_head` (the engine's default: one keep set per KV head for all layers, R averaged over
             layers) and `per_layer` (each (layer, KV head) its own keep set and budget, z-score per layer:
             the engine's per_layer_per_head) with g = 1, 2, 4 and the control g = -1 (more slots to the
             concentrated heads); `per_layer uniform` is the per_layer mode's own reference.
  calib      the default score (and trig only) with centres from other calibration text: every sidecar
             under the cache folder named *.tri-stats.gguf (see --make-centres).
  lookahead  upper bound of a question-aware score: each round adds beta * z-score of the SnapKV signal
             (softmax attention of the prompt's last 8 queries, post-RoPE at their true positions, over the
             round's live keys: GQA max of the logits, softmax, mean over the 8, max-pool 7 in slot order)
             to each (layer, KV head)'s z-scored TriAttention value before the layer mean; beta in --betas.
             Query sources: `full` (the full prefill's queries), `tail` (the last 256 tokens run as a fresh
             sequence, as is: the default model adds no BOS; pre-RoPE queries depend only on relative
             positions, so rotating them by the true positions is exact for RoPE), `two-pass` (the queries
             of a first, default `triattention` prefill of the whole prompt at the same budget: an engine
             could record them, then prefill again); --sources picks them. `snap only` ranks by the SnapKV
             signal alone.

    python bench/retrieval_sim.py --context 2048 --haystack kjv --seed 0 --budget 512,1024 [--check]
    python bench/retrieval_sim.py --context 4096 --haystack code --seed 2 --budget 1024 --suite lookahead
    python bench/retrieval_sim.py --make-centres chat      # writes CACHE/chat.tri-stats.gguf
    python bench/retrieval_sim.py --table OUT.jsonl        # markdown tables of a results file
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np

from pytriattn import eval as ev

OFFSETS = 2.0 ** np.arange(17)
DEPTHS = [0.1, 0.3, 0.5, 0.7, 0.9]
NQ = 8          # question queries: SnapKV's observation window
TAIL = 256      # tokens of the cheap approximation of the question's queries
POOL = 7        # SnapKV max-pool kernel
BASE = {
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
REF = ("default", "norm=0 (trig only)")
GAMMAS = (1.0, 2.0, 4.0, -1.0)
CHAT_QUESTIONS = ("What is this passage about?", "Summarize the passage in a few sentences.",
                  "Which names or terms appear in the passage, and what does it say about them?",
                  "Explain the passage in plain words.")


def prompts(llm, ctx: int, haystack: str, seed: int):
    """The 5 prompts as (token ids, [start, end) of the asked fact), prompt i asking for DEPTHS[i]."""
    case = ev.needle_cases("kvrecall", [ctx], [0.1], [seed], [haystack], n_facts=5)[0]
    case["depths"] = list(DEPTHS)
    out = []
    for i in range(5):
        order = [i] + [j for j in range(5) if j != i]
        c = {**case, **{k: [case[k][j] for j in order] for k in ("names", "values", "depths")}}
        out.append(ev.needle_prompt(llm, c, {}))
    return out


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


def last_queries(llm, prefix, last) -> np.ndarray:
    """Pre-RoPE queries [len(last), L, H, F] (complex) of the tokens `last` read after `prefix` from an empty
    cache: the calibration statistics restarted before each token are that token's query."""
    llm.reset()
    llm.decode(prefix)
    out = []
    for t in last:
        llm.calib_begin()
        llm.decode([t])
        g = llm.calib_get()
        assert g["n_tokens"] == 1
        out.append(g["q_center_re"] + 1j * g["q_center_im"].astype(np.complex64))
    llm.calib_end()
    return np.array(out, dtype=np.complex64)


def dump(setup, ctx, haystack, seed, path: Path) -> dict:
    if path.is_file():
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    llm = setup.llama("full", ctx, ctx + 16)
    try:
        ps = prompts(llm, ctx, haystack, seed)
        assert all(len(t) == ctx for t, _ in ps)
        K, Q = [], {"full": [], "tail": []}
        for toks, _ in ps:
            Q["full"].append(last_queries(llm, toks[:-NQ], toks[-NQ:]))
            K.append(keys_of(llm).astype(np.float16))   # the whole prompt; F16 as the engine caches: lossless
            Q["tail"].append(last_queries(llm, toks[-TAIL:-NQ], toks[-NQ:]))
        info = llm.model_info
        qc, qabs = centres_of(llm)
        d = {"K": np.array(K), "spans": np.array([s for _, s in ps]), "qc": qc, "qabs": qabs, "P": ctx,
             "base": float(info["rope_freq_base"]), "R": info["rope_dim"],
             **{"Q_" + k: np.array(v) for k, v in Q.items()}}
    finally:
        llm.close()
    np.savez(path, **d)
    return d


def rotate(Q, pos, omega) -> np.ndarray:
    """Pre-RoPE queries [n, ..., F] (complex) at positions pos [n] -> post-RoPE real [n, ..., 2F], adjacent pairs."""
    z = Q * np.exp(1j * omega * pos.reshape((-1,) + (1,) * (Q.ndim - 1)))
    out = np.empty(Q.shape[:-1] + (2 * Q.shape[-1],), dtype=np.float32)
    out[..., 0::2], out[..., 1::2] = z.real, z.imag
    return out


def zscore(s):
    return (s - s.mean(-1, keepdims=True)) / np.maximum(s.std(-1, keepdims=True), 1e-6)


def question_logits(Q, K) -> np.ndarray:
    """GQA max of the logits of queries Q [NQ, L, H, D] over every key K [L, Hkv, P, D]: [L, Hkv, NQ, P]."""
    L, Hkv, P, D = K.shape
    G = Q.shape[2] // Hkv
    Qg = Q.transpose(1, 2, 0, 3).reshape(L, Hkv, G * Q.shape[0], D)
    s = (Qg @ K.transpose(0, 1, 3, 2)) / np.sqrt(D)            # [L, Hkv, G * NQ, P], rows (g, query)
    return s.reshape(L, Hkv, G, Q.shape[0], P).max(2)


def snap_signal(s) -> np.ndarray:
    """SnapKV signal of n keys from their GQA-max logits s [NQ, n]: softmax over the keys, mean over the
    queries, max-pool POOL over the key order."""
    s = np.exp(s - s.max(1, keepdims=True))
    a = (s / s.sum(1, keepdims=True)).mean(0)
    r = POOL // 2
    pad = np.concatenate([np.full(r, -np.inf), a, np.full(r, -np.inf)])
    return np.lib.stride_tricks.sliding_window_view(pad, POOL).max(1)


def simulate(d, i, B=512, I=128, sink=4, window=128, trig=1.0, norm=1.0, agg="mean", offsets=OFFSETS,
             mode="per_head", budgets=None, beta=0.0, queries=None, centres=None):
    """Kept positions per unit after prompt i: units are KV heads (`per_head`: one set for every layer) or
    (layer, KV head) pairs (`per_layer`); budgets: slots per unit (default B each); queries: post-RoPE
    question queries [NQ, L, H, D] whose SnapKV signal, times beta, joins each layer's value."""
    K = d["K"][i].astype(np.float32)
    L, Hkv, P, D = K.shape
    R = int(d["R"])
    F = R // 2
    omega = float(d["base"]) ** (-np.arange(F) * 2.0 / R)
    qc, qabs = centres if centres is not None else (d["qc"], d["qabs"])
    G = qc.shape[1] // Hkv
    kabs = np.hypot(K[..., 0:R:2], K[..., 1:R:2])
    c = (qabs - np.abs(qc)).astype(np.float32)
    units = [(None, h) for h in range(Hkv)] if mode == "per_head" else [(il, h) for il in range(L) for h in range(Hkv)]
    budgets = [B] * len(units) if budgets is None else list(budgets)
    live = [[] for _ in units]
    qlog = question_logits(queries, K) if beta else None

    def compress(u, t0):
        Bu = budgets[u]
        lv = np.array(live[u])
        n = len(lv)
        lo = min(sink, n)
        hi = max(lo, n - min(window, Bu - sink))
        k = max(0, Bu - (lo + n - hi))
        if hi - lo <= k:
            return
        a = np.exp(1j * omega[:, None] * (t0 + offsets[None, :])).mean(1)
        W = qc * a[None, None, :]
        Wd = np.empty(W.shape[:-1] + (R,), dtype=np.float32)
        Wd[..., 0::2], Wd[..., 1::2] = W.real, W.imag
        cand = lv[lo:hi]
        il0, h = units[u]
        acc = None
        for il in (range(L) if il0 is None else [il0]):
            sl = slice(h * G, (h + 1) * G)
            s = trig * (Wd[il, sl] @ K[il, h, cand].T) + norm * (c[il, sl] @ kabs[il, h, cand].T)
            z = zscore(s).max(0)
            if beta:
                z = z + beta * zscore(snap_signal(qlog[il, h][:, lv])[lo:hi])
            acc = z if acc is None else (np.maximum(acc, z) if agg == "max" else acc + z)
        order = np.lexsort((-np.arange(len(cand)), -acc))
        live[u] = list(lv[:lo]) + list(np.sort(cand[order[:k]])) + list(lv[hi:])

    n_past = 0
    for start in range(0, P, I):
        n = min(I, P - start)
        for u in range(len(units)):
            if len(live[u]) + n > budgets[u] + I:
                compress(u, n_past)
            live[u] += list(range(start, start + n))
        n_past += n
    for u in range(len(units)):
        if len(live[u]) >= budgets[u] + I:
            compress(u, n_past)
    return live


def concentration(qc, qabs, Hkv: int, mode: str) -> np.ndarray:
    """R per unit: sum_f |E q_f| / sum_f E|q_f| (the E|q|-weighted mean of R_f, i.e. dominated by the
    frequencies that carry the query), mean over the unit's query heads (and layers for per_head)."""
    r = np.abs(qc).sum(-1) / np.maximum(qabs.sum(-1), 1e-12)             # [L, H]
    r = r.reshape(r.shape[0], Hkv, -1).mean(-1)                           # [L, Hkv]
    return r.mean(0) if mode == "per_head" else r.reshape(-1)


def allocate(weights, total: int, lo: int, hi: int) -> list[int]:
    """Integer budgets proportional to weights, clipped to [lo, hi], summing to total."""
    w = np.asarray(weights, dtype=np.float64)
    b = np.full(w.size, np.nan)
    free = np.ones(w.size, dtype=bool)
    for _ in range(w.size):
        share = (total - np.nansum(np.where(free, 0, b))) * w / w[free].sum()
        b = np.where(free, share, b)
        over, under = free & (b > hi), free & (b < lo)
        if not (over.any() or under.any()):
            break
        b[over], b[under] = hi, lo
        free &= ~(over | under)
    out = np.floor(b).astype(int)
    for j in np.argsort(-(b - out))[:total - out.sum()]:
        out[j] += 1
    return out.tolist()


def report(d, runs) -> dict:
    """runs[i] = the kept sets (one per unit) after prompt i; survival of prompt i's asked fact."""
    P = int(d["P"])
    surv, last, age = [], [], []
    for (a, b), live in zip(d["spans"], runs):
        surv.append(float(np.mean([np.isin(np.arange(a, b), lv).mean() for lv in live])))
        allk = np.concatenate([np.asarray(lv) for lv in live])
        last.append((allk > P * 2 / 3).mean())
        age.append(np.median(P - allk))
    return {"survival_by_depth": np.round(surv, 2).tolist(), "mean": round(float(np.mean(surv)), 3),
            "kept_in_last_third": round(float(np.mean(last)), 3), "median_age": int(round(np.mean(age)))}


def two_pass_queries(setup, d, B: int, cache: Path) -> np.ndarray:
    """Pre-RoPE question queries [5, NQ, L, H, F] of a first pass: the default `triattention` prefill of each
    prompt at budget B (what an engine could record before prefilling the prompt a second time)."""
    path = cache / f"{d['name']}-twopass-b{B}.npy"
    if path.is_file():
        return np.load(path)
    ctx, hs, seed = d["name"].split("-")
    llm = setup.llama("triattention", B, int(ctx) + 16)
    try:
        q = np.array([last_queries(llm, t[:-NQ], t[-NQ:]) for t, _ in prompts(llm, int(ctx), hs, int(seed))])
    finally:
        llm.close()
    np.save(path, q)
    return q


def variants(d, B: int, suites, cache: Path, setup, betas, sources=("full", "tail")):
    """(suite, name, kwargs per prompt i) for the requested suites."""
    L, Hkv = d["K"].shape[1:3]
    same = lambda kw: (lambda i: kw)  # noqa: E731
    if "base" in suites or "ref" in suites:
        for name, kw in (BASE.items() if "base" in suites else [(k, BASE[k]) for k in REF]):
            yield "base", name, same(kw)
    if "alloc" in suites:
        yield "alloc", "per_layer uniform", same({"mode": "per_layer"})
        for mode, n_units in (("per_head", Hkv), ("per_layer", L * Hkv)):
            r = concentration(d["qc"], d["qabs"], Hkv, mode)
            for g in GAMMAS:
                bud = allocate((1.0 - r) ** g, n_units * B, B // 4, 4 * B)
                yield "alloc", f"{mode} alloc (1-R)^{g:g}", same({"mode": mode, "budgets": bud})
    if "calib" in suites:
        for path in sorted(cache.glob("*.tri-stats.gguf")):
            llm = ev.Setup(setup.model, path, threads=setup.threads).llama("full", 64, 80)
            try:
                cen = centres_of(llm)
            finally:
                llm.close()
            tag = path.name.removesuffix(".tri-stats.gguf")
            yield "calib", f"centres {tag}", same({"centres": cen})
            yield "calib", f"centres {tag}, norm=0", same({"centres": cen, "norm": 0.0})
    if "lookahead" in suites:
        R = int(d["R"])
        omega = float(d["base"]) ** (-np.arange(R // 2) * 2.0 / R)
        pos = np.arange(int(d["P"]) - NQ, int(d["P"]))
        rot = {src: [rotate(q, pos, omega) for q in (two_pass_queries(setup, d, B, cache) if src == "two-pass"
                                                    else d["Q_" + src])] for src in sources}
        for src in rot:
            for beta in betas:
                yield "lookahead", f"lookahead {src}, beta={beta:g}", \
                    (lambda i, s=src, b=beta: {"beta": b, "queries": rot[s][i]})
        for src in rot:
            yield "lookahead", f"snap only ({src} queries)", \
                (lambda i, s=src: {"beta": 1.0, "trig": 0.0, "norm": 0.0, "queries": rot[s][i]})


def check_engine(setup, d, args, B: int) -> dict:
    """Jaccard of the engine's kept sets against the replay's on the prompt asking for depth 0.9:
    `triattention` (default score) and `snapkv_prompt` (the question queries' own selection: sink 4 and the
    last 8 tokens protected, the rest by the SnapKV signal; checks the extracted queries and their RoPE)."""
    i = len(DEPTHS) - 1
    out = {"budget": B}
    for policy in ("triattention", "snapkv_prompt"):
        llm = setup.llama(policy, B, args.context + 16)
        try:
            toks, _ = prompts(llm, args.context, args.haystack, args.seed)[i]
            llm.reset()
            llm.decode(toks)
            pos = llm.kv_positions()
        finally:
            llm.close()
        if policy == "triattention":
            live = simulate(d, i, B=B)
            jac = [jaccard(pos[0, h], lv) for h, lv in enumerate(live)]
        else:
            live = snapkv_prompt(d, i, B)
            jac = [jaccard(pos[il, h], live[il][h]) for il in range(pos.shape[0]) for h in range(pos.shape[1])]
        out[f"{policy}_jaccard"] = np.round(jac, 3).tolist() if len(jac) <= 3 else round(float(np.mean(jac)), 3)
    return out


def jaccard(engine_pos, kept) -> float:
    a, b = set(engine_pos[engine_pos >= 0].tolist()), set(int(x) for x in kept)
    return len(a & b) / max(1, len(a | b))


def snapkv_prompt(d, i, B, sink=4):
    """The engine's snapkv_prompt selection on prompt i, with the full prefill's question queries."""
    K = d["K"][i].astype(np.float32)
    L, Hkv, P, D = K.shape
    R = int(d["R"])
    omega = float(d["base"]) ** (-np.arange(R // 2) * 2.0 / R)
    qlog = question_logits(rotate(d["Q_full"][i], np.arange(P - NQ, P), omega), K)
    out = []
    for il in range(L):
        row = []
        for h in range(Hkv):
            a = snap_signal(qlog[il, h][:, :P - NQ])[sink:]
            top = np.lexsort((-np.arange(a.size), -a))[:B - sink - NQ] + sink
            row.append(list(range(sink)) + sorted(top.tolist()) + list(range(P - NQ, P)))
        out.append(row)
    return out


def chat_centres(setup, out: Path, n_tokens: int, seed: int = 0) -> dict:
    """Centres from chat-formatted text: KJV and Jargon File passages as user turns, each followed by the
    model's own sampled answer (temperature 0.8), rendered with the model's chat template."""
    from pytriattn import calibrate as cal
    rng = np.random.default_rng(seed)
    texts = {name: ev.haystack_text(name) for name in ("kjv", "jargon")}
    llm = setup.llama("full", 2048, 2048 + 8)
    try:
        parts, total, k = [], 0, 0
        while total < n_tokens:
            text = texts[("kjv", "jargon")[k % 2]]
            a = text.find("\n", int(rng.integers(len(text) - 4000))) + 1
            b = text.rfind("\n", a, a + 1500)
            msgs = [{"role": "user", "content": text[a:b].strip() + "\n\n" + CHAT_QUESTIONS[k % len(CHAT_QUESTIONS)]}]
            reply = llm.generate(llm.apply_chat_template(msgs), max_tokens=160, temperature=0.8, top_p=0.95,
                                 top_k=40, min_p=0.05, repeat_penalty=1.1, seed=int(rng.integers(1 << 31)),
                                 add_special=False)
            conv = llm.apply_chat_template(msgs + [{"role": "assistant", "content": reply}],
                                           add_generation_prompt=False)
            parts.append(conv)
            total += len(llm.tokenize(conv, add_bos=False, special=True))
            k += 1
        toks = llm.tokenize("".join(parts), add_bos=False, special=True)[:n_tokens]
        stats = cal.collect_stats(llm, toks, window=1024, bos=llm.tokenize("", add_bos=True)[:1], progress=False)
        info = llm.model_info
    finally:
        llm.close()
    cal.write_sidecar(out, cal.triattention_kvs(info, stats, "chat: kjv + jargon user turns, own answers",
                                                info["fingerprint"]), src=setup.model)
    return {"output": str(out), "conversations": k, "n_tokens": stats["n_tokens"]}


def natural(name: str):
    """Sort key: the default first, then by name with numbers compared as numbers."""
    parts = re.split(r"(-?\d+(?:\.\d+)?)", name)
    return (name != "default", [(0, float(x), "") if i % 2 else (1, 0.0, x) for i, x in enumerate(parts)])


def table(path: Path, suite: str | None = None) -> str:
    """Markdown tables of a results file: one per (context, budget), rows = variants (of `suite` and
    `base`), means over haystacks."""
    rows = [json.loads(x) for x in path.read_text().splitlines() if '"variant"' in x]
    rows = [r for r in rows if suite is None or r.get("suite") in (suite, "base")]
    cells: dict = {}
    for r in rows:
        cells.setdefault((r["context"], r["budget"]), {}).setdefault(r["variant"], []).append(r)
    out = []
    for (ctx, B), vs in cells.items():
        hs = sorted({r["haystack"] for v in vs.values() for r in v})
        out.append(f"Context {ctx}, budget {B} ({' + '.join(hs)}{', mean of the prompts' if len(hs) > 1 else ''}):\n")
        out.append("| variant | kept per depth 0.1 / 0.3 / 0.5 / 0.7 / 0.9 | mean | kept tokens in last third "
                   "| median age |")
        out.append("|---|---|---:|---:|---:|")
        for name, rs in sorted(vs.items(), key=lambda kv: natural(kv[0])):
            own = sorted(r["haystack"] for r in rs)
            name += f" ({' + '.join(own)} only)" if own != hs else ""
            s = np.mean([r["survival_by_depth"] for r in rs], axis=0)
            out.append(f"| {name} | {' / '.join(f'{x:.2f}' for x in s)} | {np.mean([r['mean'] for r in rs]):.2f} | "
                       f"{100 * np.mean([r['kept_in_last_third'] for r in rs]):.0f}% | "
                       f"{np.mean([r['median_age'] for r in rs]):.0f} |")
        out.append("")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--context", type=int, default=2048)
    ap.add_argument("--haystack", default="kjv", choices=ev.NEEDLE_HAYSTACKS)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--budget", default="512", help="comma list")
    ap.add_argument("--suite", default="base", help="comma list of base, ref, alloc, calib, lookahead (see above); "
                    "with --table one suite or all")
    ap.add_argument("--betas", default="0.5,1,2,4,8", help="lookahead weights, comma list")
    ap.add_argument("--cache", default="bench/out/retrieval-sim",
                    help="folder for the key dumps and the calibration sidecars of the calib suite")
    ap.add_argument("--sources", default="full,tail", help="lookahead query sources: full, tail, two-pass")
    ap.add_argument("--check", action="store_true", help="also run the engine's policies and compare kept sets")
    ap.add_argument("--make-centres", choices=("chat",), help="write CACHE/chat.tri-stats.gguf and exit "
                    "(self-generated centres: pytriattn calibrate --self-generate --sidecar "
                    "-o CACHE/NAME.tri-stats.gguf)")
    ap.add_argument("--tokens", type=int, default=16384, help="tokens for --make-centres")
    ap.add_argument("--table", type=Path, help="print the markdown tables of this results file (rows of the "
                    "first --suite and of base) and exit")
    ap.add_argument("-t", "--threads", type=int, default=2)
    args = ap.parse_args()
    if args.table:
        print(table(args.table, None if args.suite == "all" else args.suite.split(",")[0]))
        return
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    setup = ev.Setup(None, None, threads=args.threads)
    if args.make_centres:
        print(json.dumps(chat_centres(setup, cache / "chat.tri-stats.gguf", args.tokens)), flush=True)
        return
    suites = set(args.suite.split(","))
    d = dump(setup, args.context, args.haystack, args.seed,
             cache / f"{args.haystack}-{args.context}-s{args.seed}-q.npz")
    d["name"] = f"{args.context}-{args.haystack}-{args.seed}"
    n = len(d["spans"])
    betas = [float(x) for x in args.betas.split(",") if x]
    for B in ev.parse_list(args.budget):
        for suite, name, kw in variants(d, B, suites, cache, setup, betas, args.sources.split(",")):
            runs = [simulate(d, i, B=B, **kw(i)) for i in range(n)]
            print(json.dumps({"context": args.context, "haystack": args.haystack, "seed": args.seed, "budget": B,
                              "suite": suite, "variant": name, **report(d, runs)}), flush=True)
        if args.check:
            print(json.dumps(check_engine(setup, d, args, B)), flush=True)


if __name__ == "__main__":
    main()
