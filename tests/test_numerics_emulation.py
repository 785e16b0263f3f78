"""bench/ppl_numerics.py explains perplexity differences with numpy variants of the float64 reference; its
8-bit activation rounding must be the engine's (reference quantizers Q8_0 and Q8_K, read back through the
C dequantizers), or its variants would not stand for the engine."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from ppl_numerics import act8  # noqa: E402


def _tool(tool, *args):
    r = subprocess.run([str(tool), *map(str, args)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("wtype,act,block", [("Q5_0", "Q8_0", 32), ("Q4_K", "Q8_K", 256)])
def test_act8_is_the_engines_rounding(c_tool, tmp_path, wtype, act, block):
    seed = int(np.random.SeedSequence().entropy % (1 << 32))
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((16, 1024)) * rng.uniform(0.01, 100.0, size=(16, 1))).astype(np.float32)
    x[rng.integers(0, 16, 8), rng.integers(0, 1024, 8)] *= 50.0   # outliers, as in Gemma's activations
    x.tofile(tmp_path / "x.f32")
    _tool(c_tool("tool_quants"), "quantize", act, tmp_path / "x.f32", tmp_path / "q.bin")
    _tool(c_tool("tool_quants"), "dequant", act, tmp_path / "q.bin", tmp_path / "y.f32")
    want = np.fromfile(tmp_path / "y.f32", dtype=np.float32).reshape(x.shape)
    got = act8(x.astype(np.float64), wtype).astype(np.float32)
    step = np.repeat(np.abs(x.reshape(16, -1, block)).max(-1) / 127.0, block, axis=1)
    bad = got != want
    # 127/amax here, 1/(amax/127) in C: the products can differ in the last bit, so a value lying within
    # that of a rounding midpoint may round the other way (about one in 10^7)
    assert bad.mean() <= 1e-4, f"seed {seed}: {bad.sum()} of {bad.size} values differ"
    assert np.all(np.abs(got - want)[bad] <= step[bad] * 1.01), f"seed {seed}"
    assert np.abs(got - x).max() > 0, "no rounding happened"
