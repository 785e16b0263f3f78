"""Where does a perplexity difference between the engine and llama.cpp come from? Per-chunk NLL of the same
token ids under several numerics: the engine, llama.cpp (bench/parity_top2.c's ppl mode, any attention path
and KV type), and the float64 numpy reference (tests/reference.py) with ggml's CPU roundings switched on
one at a time.

Scoring is llama-perplexity's rule (bench/parity.py): chunk i = tokens[i·ctx, (i+1)·ctx), first token
replaced by BOS when the vocabulary adds one, fresh context, logits at positions ctx/2 … ctx-2 score the next
token. Numpy variants (names joined with "+"):

    f64      exact float64 everywhere (tests/reference.py)
    act8     matmul activations rounded as ggml's CPU backend does (Q8_0 blocks of 32 with an F16 scale
             for Q4_0/Q5_0/Q8_0 weights, Q8_K blocks of 256 with an F32 scale for K-quants), float32 products
    kv16     K and V stored as F16
    gelu16   GELU through ggml's F16 table: input rounded to F16, result rounded to F16 (|x| < 10)
    attn16   Q rounded to F16 before Q.K, softmax weights rounded to F16 before the product with V (llama.cpp's
             non-flash graph with an F16 KV cache: both products run as F16 x F16)

    python bench/ppl_numerics.py -m gemma-3-270m-q4_k_m.gguf --tokens gemma-tokens.i32 --chunks 4 \\
        --parity-top2 /path/to/parity_top2 --llama fa0-f16,fa0-f32 \\
        --variants f64,act8+kv16,act8+kv16+gelu16,act8+kv16+attn16,act8+kv16+gelu16+attn16 -o out.json

Without --tokens the text (--text, default the first 80,000 characters of the KJV) is tokenized by the
engine with its BOS rule (identical ids to llama.cpp's for the supported models; bench/parity.py checks).
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.append(str(ROOT / "python"))  # an installed pytriattn comes first

from parity import log_softmax_at  # noqa: E402
from reference import Reference, _Cache  # noqa: E402

FLAGS = ("f64", "act8", "kv16", "gelu16", "attn16")
Q8_0_WEIGHTS = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0")


def f16(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float16).astype(np.float64)


def gelu_f32(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32)
    k = np.float32(0.7978845608028654)
    return np.float32(0.5) * x * (np.float32(1.0) + np.tanh(k * x * (np.float32(1.0) + np.float32(0.044715) * x * x)))


def act8(x: np.ndarray, wtype: str) -> np.ndarray:
    """x (n, k) as ggml's CPU backend hands it to a matmul with weights of type wtype (a name): 8-bit blocks
    (Q8_0: 32 values, F16 scale; Q8_K: 256 values, F32 scale), F16 for F16/BF16 weights, as is for F32."""
    if wtype in ("F16", "BF16"):
        return f16(x)
    if wtype == "F32":
        return x
    k_quant = wtype not in Q8_0_WEIGHTS
    b = x.astype(np.float32).reshape(x.shape[0], -1, 256 if k_quant else 32)
    amax = np.abs(b).max(-1, keepdims=True)
    with np.errstate(divide="ignore"):
        iscale = np.where(amax > 0, np.float32(127.0) / amax, np.float32(0.0)).astype(np.float32)
    q = np.rint(b * iscale)
    d = (amax / np.float32(127.0)).astype(np.float32)
    if not k_quant:
        d = d.astype(np.float16)  # block_q8_0 keeps its scale in F16
    return (q.astype(np.float64) * d.astype(np.float64)).reshape(x.shape)


class GgmlEmulation(Reference):
    """tests/reference.py with ggml's CPU roundings as switches (module docstring); all off = float64."""

    def __init__(self, path):
        super().__init__(path)
        self._w32: dict[str, np.ndarray] = {}
        self.set_variant("f64")

    def set_variant(self, name: str) -> None:
        parts = set(name.split("+"))
        unknown = parts - set(FLAGS)
        if unknown:
            raise ValueError(f"unknown numerics {sorted(unknown)}; known: {', '.join(FLAGS)}")
        self.act8, self.kv16 = "act8" in parts, "kv16" in parts
        self.gelu16, self.attn16 = "gelu16" in parts, "attn16" in parts

    def _linear(self, x: np.ndarray, name: str) -> np.ndarray:
        if not self.act8:
            return super()._linear(x, name)
        x = act8(x, self._tensors[name].tensor_type.name)
        w32 = self._w32.get(name)
        if w32 is None:
            w32 = self._w32[name] = self.w(name).astype(np.float32)
        return (x.astype(np.float32) @ w32.T).astype(np.float64)

    def _kv_store(self, a: np.ndarray) -> np.ndarray:
        return f16(a) if self.kv16 else a

    def _q_store(self, q: np.ndarray) -> np.ndarray:
        return f16(q) if self.attn16 else q

    def _probs_store(self, a: np.ndarray) -> np.ndarray:
        return f16(a) if self.attn16 else a

    def _gelu(self, g: np.ndarray) -> np.ndarray:
        if not self.gelu16:
            return super()._gelu(g)
        table = f16(gelu_f32(f16(g)))
        return np.where(g <= -10.0, 0.0, np.where(g >= 10.0, g, table))

    def chunk_nll(self, chunk: np.ndarray, first: int, rows: int = 64) -> np.ndarray:
        """nll of chunk[first+1:] from the logits at first .. len-2 of one fresh context."""
        h = self._hidden(chunk, _Cache(self.hp.n_layer))[first:len(chunk) - 1]
        out = []
        for r in range(0, len(h), rows):
            logits = self._linear(h[r:r + rows], self._out)
            out.append(-log_softmax_at(logits, chunk[first + 1 + r:first + 1 + r + len(logits)]))
        return np.concatenate(out)


def chunks_of(tokens: np.ndarray, ctx: int, n: int, bos: int | None) -> list[np.ndarray]:
    out = []
    for i in range(n):
        c = tokens[i * ctx:(i + 1) * ctx].astype(np.int64).copy()
        if bos is not None:
            c[0] = bos
        out.append(c)
    return out


def engine_nll(model: str, chunks: list[np.ndarray], first: int, threads: int) -> list[np.ndarray]:
    from pytriattn import Llama

    ctx = len(chunks[0])
    out = []
    with Llama(model, n_ctx=ctx, n_threads=threads, kv_policy="full", n_batch=ctx) as llm:
        for c in chunks:
            llm.reset()
            logits = llm.eval([int(t) for t in c])
            out.append(-log_softmax_at(logits[first:ctx - 1], c[first + 1:ctx]))
    return out


def llama_nll(exe: str, model: str, tokens: np.ndarray, ctx: int, n: int, threads: int, cfg: str) -> list[np.ndarray]:
    """cfg: fa0-f16, fa1-f16, fa0-f32, fa1-f32 (flash attention off/on, KV cache type)."""
    fa, kv = cfg.split("-")
    if fa not in ("fa0", "fa1") or kv not in ("f16", "f32"):
        raise ValueError(f"llama.cpp configuration {cfg!r}: expected fa0|fa1 - f16|f32")
    with tempfile.TemporaryDirectory() as tmp:
        tok_path, nll_path = Path(tmp) / "tokens.i32", Path(tmp) / "nll.txt"
        tokens[:ctx * n].astype("<i4").tofile(tok_path)
        subprocess.run([exe, "ppl", model, str(tok_path), str(ctx), str(n), str(threads), fa[-1], kv, str(nll_path)],
                       check=True, capture_output=True, text=True)
        nll = np.loadtxt(nll_path, dtype=np.float64)
    per = ctx - 1 - ctx // 2
    if nll.size != per * n:
        raise RuntimeError(f"parity_top2 wrote {nll.size} values, expected {per * n}")
    return [nll[i * per:(i + 1) * per] for i in range(n)]


def summary(results: dict[str, list[np.ndarray]], base: str) -> dict:
    """Per source: PPL over the chunks and per-chunk sums; against the base source: the relative PPL
    difference, the rms of the per-token nll differences, the standard deviation of the per-chunk nll
    differences and what it implies for the relative PPL difference of this many chunks (chunks are
    independent contexts: sd · sqrt(chunks) / tokens)."""
    out = {}
    b = results.get(base)
    for name, per in results.items():
        allv = np.concatenate(per)
        row = {"ppl": math.exp(float(allv.mean())), "chunk_nll": [float(p.sum()) for p in per]}
        if b is not None and name != base:
            d = [p - q for p, q in zip(per, b)]
            dc = np.array([x.sum() for x in d])
            sd = float(dc.std(ddof=1)) if len(dc) > 1 else float("nan")
            row.update({"rel_ppl_vs_base": math.exp(float(np.concatenate(d).mean())) - 1.0,
                        "token_nll_rms_diff_vs_base": float(np.sqrt((np.concatenate(d) ** 2).mean())),
                        "chunk_nll_diff_sd_vs_base": sd,
                        "rel_ppl_sd_vs_base": sd * math.sqrt(len(dc)) / allv.size})
        out[name] = row
    return out


def table(summ: dict, base: str) -> str:
    lines = [f"| numerics | PPL | vs {base} | per-token nll rms diff | sd of that difference (from chunks) |",
             "|---|---:|---:|---:|---:|"]
    for name, r in summ.items():
        if name == base:
            lines.append(f"| {name} | {r['ppl']:.4f} | | | |")
        else:
            lines.append(f"| {name} | {r['ppl']:.4f} | {100 * r['rel_ppl_vs_base']:+.3f}% | "
                         f"{r['token_nll_rms_diff_vs_base']:.3f} | {100 * r['rel_ppl_sd_vs_base']:.2f}% |")
    return "\n".join(lines)


def probe(ref: GgmlEmulation, tokens: np.ndarray, variants: list[str]) -> dict:
    """rms difference of the logits of every pair of numpy numerics on one short prompt: how much each
    rounding alone moves the output, and how much 8-bit activations amplify a small perturbation."""
    logits = {}
    for v in variants:
        ref.set_variant(v)
        logits[v] = ref.logits(tokens)
    out = {}
    for i, u in enumerate(variants):
        for v in variants[i + 1:]:
            out[f"{u} vs {v}"] = float(np.sqrt(((logits[u] - logits[v]) ** 2).mean()))
            print(f"logits rms diff {u} vs {v}: {out[f'{u} vs {v}']:.4f}", file=sys.stderr, flush=True)
    return {"tokens": int(len(tokens)), "logit_std": float(logits[variants[0]].std()), "rms_diff": out}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--model", required=True)
    ap.add_argument("--tokens", default=None, help="int32 token file (e.g. from llama-perplexity's ids)")
    ap.add_argument("--text", default=None, help="UTF-8 text tokenized by the engine (default: KJV, 80,000 chars)")
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=4, help="chunks to score (0: none, e.g. with --probe)")
    ap.add_argument("--skip", type=int, default=0, help="start at this chunk (split a run over processes)")
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--variants", default="f64,act8+kv16,act8+kv16+gelu16,act8+kv16+attn16,act8+kv16+gelu16+attn16",
                    help="numpy numerics, comma-separated (module docstring); '' for none")
    ap.add_argument("--no-engine", action="store_true")
    ap.add_argument("--probe", type=int, default=0, metavar="N",
                    help="also compare the variants' logits pairwise on the first N tokens of the first chunk")
    ap.add_argument("--parity-top2", default=None, help="bench/parity_top2.c built against llama.cpp")
    ap.add_argument("--llama", default="fa0-f16", help="llama.cpp configurations: fa0|fa1-f16|f32, comma-separated")
    ap.add_argument("--base", default="f64",
                    help="sources the others are compared with, comma-separated (default f64)")
    ap.add_argument("-o", "--out", default=None, help="JSON result file")
    ap.add_argument("--npz", default=None, help="also save every source's per-token nll (arrays, one per source)")
    ap.add_argument("--add", action="append", default=[], metavar="FILE|NAME=FILE",
                    help="sources computed earlier over the same chunks: an --npz file (all its sources), or "
                         "NAME=FILE with one nll per line (parity_top2's NLL_OUT); repeatable")
    a = ap.parse_args(argv)

    ref = GgmlEmulation(a.model)
    from pytriattn import Llama
    with Llama(a.model, n_ctx=64, n_threads=1, kv_policy="full") as llm:
        add_bos = llm.tokenize("", add_bos=True) == [llm.token_bos()]
        bos = llm.token_bos() if add_bos else None
        if a.tokens:
            tokens = np.fromfile(a.tokens, dtype="<i4")
        else:
            if a.text:
                text = Path(a.text).read_text(encoding="utf-8")
            else:
                from pytriattn.eval import kjv_text
                text = kjv_text()[:80000]
            tokens = np.asarray(llm.tokenize(text, add_bos=True), dtype=np.int32)
    tokens = tokens[a.skip * a.ctx:]
    n = min(a.chunks, len(tokens) // a.ctx)
    chunks = chunks_of(tokens, a.ctx, n, bos)
    first = a.ctx // 2
    results: dict[str, list[np.ndarray]] = {}
    seconds: dict[str, float] = {}

    def note(name: str, t0: float) -> None:
        seconds[name] = time.time() - t0
        ppl = math.exp(float(np.concatenate(results[name]).mean()))
        print(f"{name:32s} ppl {ppl:.4f}  chunks " + " ".join(f"{p.sum():.3f}" for p in results[name])
              + f"  ({seconds[name]:.0f} s)", file=sys.stderr, flush=True)

    per = a.ctx - 1 - first
    for spec in a.add:
        name, _, path = spec.rpartition("=")
        loaded = dict(np.load(path)) if path.endswith(".npz") else {name or Path(path).stem: np.loadtxt(path)}
        for k, v in loaded.items():
            if v.size != per * n:
                raise SystemExit(f"{path}: {k} has {v.size} values, expected {per * n} ({n} chunks)")
            results[k] = [v[i * per:(i + 1) * per] for i in range(n)]
    if not a.no_engine and n > 0:
        t0 = time.time()
        results["engine"] = engine_nll(a.model, chunks, first, a.threads)
        note("engine", t0)
    if a.parity_top2 and n > 0:
        for cfg in [c for c in a.llama.split(",") if c]:
            t0 = time.time()
            results[f"llama.cpp {cfg}"] = llama_nll(a.parity_top2, a.model, tokens, a.ctx, n, a.threads, cfg)
            note(f"llama.cpp {cfg}", t0)
    for v in [v for v in a.variants.split(",") if v and n > 0]:
        t0 = time.time()
        ref.set_variant(v)
        results[v] = [ref.chunk_nll(c, first) for c in chunks]
        note(v, t0)

    probed = None
    if a.probe:
        probed = probe(ref, chunks_of(tokens, a.ctx, 1, bos)[0][:a.probe], [v for v in a.variants.split(",") if v])
    res = {"model": Path(a.model).name, "ctx": a.ctx, "first_chunk": a.skip, "chunks": n, "tokens_scored": n * per,
           "seconds": seconds, "against": {b: summary(results, b) for b in a.base.split(",") if b in results}}
    if probed:
        res["probe"] = probed
    for b, summ in res["against"].items():
        print(table(summ, b) + "\n")
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1) + "\n")
    if a.npz:
        np.savez(a.npz, **{k: np.concatenate(v) for k, v in results.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
