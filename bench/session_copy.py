#!/usr/bin/env python3
"""Time of Llama.copy_state_from (triattn_session_copy) against the tokens a session holds.

  python bench/session_copy.py --tokens 500,2000,6000
  python bench/session_copy.py --ngl -1          # GPU sessions: copied device to device; --to-cpu: into a CPU one

A session reads the first N tokens of the repository's README.md repeated (full attention), then another session
copies it; median of --repeat copies per N, printed with the prefill time and written as JSON
(--out, default bench/out/session_copy.json).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", default="500,2000,6000")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("-m", "--model", default=None, help="GGUF file (default: the default model)")
    ap.add_argument("--ngl", type=int, default=0, help="n_gpu_layers of both sessions (-1: all on the GPU)")
    ap.add_argument("--to-cpu", action="store_true", help="the copy is a CPU session (--ngl -1: through the host)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "session_copy.json", help="JSON written here")
    a = ap.parse_args(argv)
    sys.path.append(str(ROOT / "python"))  # an installed pytriattn comes first
    from pytriattn import Llama

    sizes = [int(x) for x in a.tokens.split(",")]
    ctx = max(sizes) + 64
    rows = []
    kw = dict(n_ctx=ctx, n_threads=a.threads, kv_policy="full")
    with Llama(a.model, n_gpu_layers=a.ngl, **kw) as src, \
            Llama(a.model, n_gpu_layers=0 if a.to_cpu else a.ngl, **kw) as dst:
        text = (ROOT / "README.md").read_text(encoding="utf-8")
        ids = src.tokenize(text)
        while len(ids) < max(sizes):
            ids += ids[1:]
        for n in sizes:
            src.reset()
            t0 = time.perf_counter()
            src.decode(ids[:n])
            prefill = time.perf_counter() - t0
            times = []
            for _ in range(a.repeat):
                t0 = time.perf_counter()
                dst.copy_state_from(src)
                times.append(time.perf_counter() - t0)
            rows.append({"tokens": n, "copy_ms": round(1e3 * statistics.median(times), 1),
                         "prefill_s": round(prefill, 2)})
            print(json.dumps(rows[-1]), flush=True)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"threads": a.threads, "ngl": a.ngl, "to_cpu": a.to_cpu, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
