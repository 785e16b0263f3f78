"""Embeddings: pytriattn's against llama.cpp's on the same GGUF file, both against the float64 reference.

For each text, three mean-pooled unit vectors: `Llama.embed(text)`, llama.cpp's `llama-embedding --pooling mean
--embd-normalize 2` and the float64 numpy forward pass of tests/reference.py (the mean of its final normed hidden
states, normalised). Printed: the cosine of each engine to the reference and to each other, per text and as min /
median; then the time of one embedding of --tokens tokens against a prefill of the same tokens (medians of
--repeat runs, in this process). llama-embedding: --llama-embedding PATH, $LLAMA_EMBEDDING, or the clean -O3
Release tree in the cache (as bench/cpu_parity.py), built there when missing. The JSON goes to --json.

    python bench/embeddings.py                      # default model, the built-in texts
    python bench/embeddings.py --model other.gguf --json bench/results/embeddings.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))

TEXTS = [
    "The first law of thermodynamics states that energy is conserved.",
    "In the beginning God created the heaven and the earth.",
    "def fibonacci(n): return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)",
    "The quick brown fox jumps over the lazy dog while the farmer counts his sheep.",
    "Paris is the capital of France; Berlin is the capital of Germany.",
    "Quarterly revenue fell by 12 percent as interest rates rose for the third time this year.",
    "Le chat dort sur le canapé pendant que la pluie tombe.",
    "SELECT name, COUNT(*) FROM orders GROUP BY name HAVING COUNT(*) > 3;",
]
SEP = "<|sep|>"


def unit(v) -> np.ndarray:
    v = np.asarray(v, np.float64)
    return v / np.linalg.norm(v)


def llama_embedding(exe: Path, model: Path, texts: list[str], threads: int) -> list[np.ndarray]:
    cmd = [str(exe), "-m", str(model), "-p", SEP.join(texts), "--embd-separator", SEP, "--pooling", "mean",
           "--embd-normalize", "2", "--embd-output-format", "json", "-t", str(threads), "-c", "2048", "-b", "2048",
           "-ub", "2048"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        raise SystemExit(f"llama-embedding failed ({p.returncode}):\n{p.stderr[-3000:]}")
    start = p.stdout.index("{")
    data = json.loads(p.stdout[start:])["data"]
    return [unit(d["embedding"]) for d in sorted(data, key=lambda d: d["index"])]


def find_llama_embedding(explicit, jobs: int) -> Path:
    exe = explicit or os.environ.get("LLAMA_EMBEDDING")
    if exe:
        return Path(exe)
    import cpu_parity
    return cpu_parity.release_build(("llama-embedding",), jobs) / "bin" / "llama-embedding"


def timing(llm, tokens: list[int], repeat: int) -> dict:
    emb, pre = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        llm.embed(tokens)
        emb.append(time.perf_counter() - t0)
        llm.reset()
        t0 = time.perf_counter()
        llm.decode(tokens)
        pre.append(time.perf_counter() - t0)
    e, p = statistics.median(emb), statistics.median(pre)
    return {"tokens": len(tokens), "embed_ms": 1e3 * e, "prefill_ms": 1e3 * p, "embed_tps": len(tokens) / e,
            "prefill_tps": len(tokens) / p}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="GGUF file (default: the default model)")
    ap.add_argument("--llama-embedding", default=None, help="llama-embedding binary (default: built)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--jobs", type=int, default=2, help="build jobs for llama.cpp")
    ap.add_argument("--tokens", type=int, default=512, help="tokens of the timed embedding (default 512)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args()

    from pytriattn import Llama
    from pytriattn._fetch import ensure_default_model
    from reference import Reference

    model = Path(args.model) if args.model else ensure_default_model()
    exe = find_llama_embedding(args.llama_embedding, args.jobs)
    ref = Reference(model)
    rows = []
    with Llama(str(model), n_ctx=2048, n_threads=args.threads, kv_policy="full") as llm:
        ours = [unit(v) for v in llm.embed(TEXTS)]
        theirs = llama_embedding(exe, model, TEXTS, args.threads)
        for text, a, b in zip(TEXTS, ours, theirs):
            toks = llm.tokenize(text)
            r = unit(ref.hidden(toks).mean(axis=0))
            rows.append({"text": text, "tokens": len(toks), "ours_ref": float(a @ r), "llama_ref": float(b @ r),
                         "ours_llama": float(a @ b)})
        words = (ROOT / "README.md").read_text().split()
        long = llm.tokenize(" ".join(words))[:args.tokens]
        t = timing(llm, long, args.repeat)

    print(f"model {model.name}; llama-embedding {exe}")
    print("| text | tokens | pytriattn vs float64 | llama.cpp vs float64 | pytriattn vs llama.cpp |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['text'][:40]} | {r['tokens']} | {r['ours_ref']:.6f} | {r['llama_ref']:.6f} | {r['ours_llama']:.6f} |")
    summary = {k: {"min": min(r[k] for r in rows), "median": statistics.median(r[k] for r in rows)}
               for k in ("ours_ref", "llama_ref", "ours_llama")}
    for k, v in summary.items():
        print(f"{k}: min {v['min']:.6f}, median {v['median']:.6f}")
    print(f"{t['tokens']} tokens: embed {t['embed_ms']:.1f} ms ({t['embed_tps']:.0f} tok/s), prefill "
          f"{t['prefill_ms']:.1f} ms ({t['prefill_tps']:.0f} tok/s), medians of {args.repeat}, {args.threads} threads")
    if args.json:
        Path(args.json).write_text(json.dumps({"model": model.name, "rows": rows, "summary": summary, "timing": t},
                                              indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
