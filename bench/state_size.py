#!/usr/bin/env python3
"""Size of a saved session (triattn_session_save) after an N-token conversation: full attention vs TriAttention.

  python bench/state_size.py --tokens 8192 --budget 512

The conversation is English prose from the project's documentation, repeated as needed; prints a Markdown table.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT / "python"))  # an installed pytriattn comes first

from pytriattn import Llama  # noqa: E402
from pytriattn._fetch import ensure_default_model  # noqa: E402

SIDECAR = ROOT / "python" / "pytriattn" / "data" / "SmolLM2-135M-Instruct.Q4_1.tri-stats.gguf"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--budget", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    model = str(ensure_default_model())
    text = " ".join((ROOT / "docs" / f).read_text() for f in ("engine.md", "triattention-engine.md", "results.md"))
    rows = []
    for policy in ("full", "triattention"):
        extra = {"kv_budget": a.budget, "calibration": str(SIDECAR)} if policy == "triattention" else {}
        llm = Llama(model, n_ctx=a.tokens + 64, n_threads=a.threads, kv_policy=policy, **extra)
        toks = []
        while len(toks) < a.tokens:
            toks += llm.tokenize(text, add_bos=not toks)
        t0 = time.perf_counter()
        llm.decode(toks[:a.tokens])
        prefill = time.perf_counter() - t0
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "s.state")
            t0 = time.perf_counter()
            llm.save_state(path)
            save_ms = (time.perf_counter() - t0) * 1e3
            size = os.path.getsize(path)
            t0 = time.perf_counter()
            llm.load_state(path)
            load_ms = (time.perf_counter() - t0) * 1e3
        st = llm.kv_stats()
        rows.append((policy, a.tokens, st["live_max"], size, save_ms, load_ms, prefill))
        llm.close()
    print("| policy | tokens | live KV slots | state file | save ms | load ms | prefill s |")
    print("|---|---|---|---|---|---|---|")
    for p, n, live, size, sv, ld, pf in rows:
        print(f"| {p} | {n} | {live} | {size / 2**20:.2f} MiB | {sv:.0f} | {ld:.0f} | {pf:.0f} |")


if __name__ == "__main__":
    main()
