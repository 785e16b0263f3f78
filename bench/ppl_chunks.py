"""Perplexity the way llama.cpp's llama-perplexity computes it, for the engine (full attention), optionally
next to llama-perplexity itself on the same text file.

The text is tokenized whole (with BOS), cut into --chunks chunks of --ctx tokens; each chunk is a fresh
context whose first token is replaced by BOS, and the negative log-likelihood is averaged over the second
half of every chunk (positions ctx/2 .. ctx-2 predicting the next token), as llama-perplexity does.

    python bench/ppl_chunks.py -m gemma-3-270m-q4_k_m.gguf --text kjv.txt --ctx 512 --chunks 20 \
        --llama-perplexity /path/to/llama.cpp/build/bin/llama-perplexity -o bench/results/ppl_gemma3.json
"""
from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def engine_ppl(model: str, text: str, ctx: int, chunks: int, threads: int, n_batch: int = 64, skip: int = 0) -> dict:
    from pytriattn import Llama

    llm = Llama(model, n_ctx=ctx, n_batch=n_batch, n_threads=threads, kv_policy="full")
    try:
        toks = llm.tokenize(text.encode("utf-8"), add_bos=True)
        n_chunks = min(chunks, len(toks) // ctx)
        first = ctx // 2
        nll, count, per_chunk = 0.0, 0, []
        t0 = time.time()
        for c in range(skip, n_chunks):
            chunk = list(toks[c * ctx:(c + 1) * ctx])
            chunk[0] = llm.token_bos()
            llm.reset()
            llm.decode(chunk[:first])  # context half: no logits needed
            part = 0.0
            for s in range(first, ctx - 1, n_batch):  # logits of positions first .. ctx-2
                rows = llm.eval(chunk[s:min(s + n_batch, ctx - 1)]).astype(np.float64)
                m = rows.max(axis=1, keepdims=True)
                lse = (m[:, 0] + np.log(np.exp(rows - m).sum(axis=1)))
                nxt = np.array(chunk[s + 1:s + 1 + len(rows)])
                part += float((lse - rows[np.arange(len(rows)), nxt]).sum())
            nll += part
            count += ctx - 1 - first
            per_chunk.append(part)
            print(f"[engine] chunk {c + 1}/{n_chunks}: nll {part:.4f}, running ppl {math.exp(nll / count):.4f} "
                  f"({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
        return {"ppl": math.exp(nll / count), "tokens_scored": count, "chunks": n_chunks - skip,
                "chunk_nll": per_chunk, "seconds": time.time() - t0}
    finally:
        llm.close()


def llama_ppl(exe: str, model: str, text_path: str, ctx: int, chunks: int, threads: int) -> dict:
    cmd = [exe, "-m", model, "-f", text_path, "-c", str(ctx), "--chunks", str(chunks), "-t", str(threads),
           "-b", str(ctx)]
    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True)
    out = p.stdout + p.stderr
    m = re.search(r"Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+)", out)
    if p.returncode != 0 or not m:
        raise SystemExit(f"llama-perplexity failed (exit {p.returncode}):\n{out[-3000:]}")
    return {"ppl": float(m.group(1)), "stderr": float(m.group(2)), "cmd": " ".join(cmd),
            "seconds": time.time() - t0}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--model", required=True)
    ap.add_argument("--text", required=True, help="UTF-8 text file (the same file goes to llama-perplexity)")
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=20)
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--skip", type=int, default=0, help="start at this chunk (split a run over processes; "
                    "combine the chunk_nll lists)")
    ap.add_argument("--llama-perplexity", default=None, help="llama.cpp's llama-perplexity binary")
    ap.add_argument("-o", "--out", default=None, help="JSON result file")
    a = ap.parse_args(argv)
    text = Path(a.text).read_text(encoding="utf-8")
    res = {"model": Path(a.model).name, "text": Path(a.text).name, "ctx": a.ctx, "chunks": a.chunks,
           "engine": engine_ppl(a.model, text, a.ctx, a.chunks, a.threads, skip=a.skip)}
    if a.llama_perplexity:
        res["llama.cpp"] = llama_ppl(a.llama_perplexity, a.model, a.text, a.ctx, a.chunks, a.threads)
        res["ratio"] = res["engine"]["ppl"] / res["llama.cpp"]["ppl"]
    print(json.dumps(res, indent=1))
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
