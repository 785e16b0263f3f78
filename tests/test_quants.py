"""Quant formats against the numpy oracle (gguf.quants): the C scalar dequantizers must match
gguf.quants.dequantize bit for bit on random blocks and on real tensors of the default model; the
reference quantizers of the 32-value formats must match gguf.quants.quantize byte for byte; the
SIMD matmul must agree with a float64 numpy matmul of the dequantized weights."""
from __future__ import annotations

import subprocess

import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT
from gguf import GGUFReader
from gguf.constants import GGML_QUANT_SIZES
from gguf.quants import dequantize, quantize

# fp16 scale fields inside one block: byte offsets (see ggml_ops/quants.h)
SCALE_OFFSETS = {
    QT.Q4_0: [0], QT.Q4_1: [0, 2], QT.Q5_0: [0], QT.Q5_1: [0, 2], QT.Q8_0: [0],
    QT.Q2_K: [80, 82], QT.Q3_K: [108], QT.Q4_K: [0, 2], QT.Q5_K: [0, 2], QT.Q6_K: [208],
}
BLOCK_TYPES = list(SCALE_OFFSETS)


def _rng(request):
    seed = int.from_bytes(np.random.SeedSequence().entropy.to_bytes(16, "little")[:4], "little")
    request.node.user_properties.append(("seed", seed))
    print(f"seed {seed}")
    return np.random.default_rng(seed), seed


def _random_finite_f16(rng, n):
    """Random fp16 bit patterns, any finite value (normals, subnormals, zeros, both signs)."""
    bits = rng.integers(0, 1 << 16, size=n, dtype=np.uint16)
    bad = (bits & 0x7C00) == 0x7C00              # inf / nan exponent
    bits[bad] &= 0xBFFF                          # clear the top exponent bit -> finite
    return bits


def _run(tool, *args):
    r = subprocess.run([str(tool), *map(str, args)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def _c_dequant(tool, tmp_path, qtype: QT, raw: np.ndarray) -> np.ndarray:
    src, dst = tmp_path / "in.bin", tmp_path / "out.f32"
    raw.tofile(src)
    _run(tool, "dequant", qtype.name, src, dst)
    return np.fromfile(dst, dtype=np.float32)


def _random_blocks(rng, qtype: QT, n_blocks: int) -> np.ndarray:
    block, size = GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)
    for off in SCALE_OFFSETS[qtype]:
        raw[:, off:off + 2] = _random_finite_f16(rng, n_blocks).view(np.uint8).reshape(n_blocks, 2)
    return raw


@pytest.mark.parametrize("qtype", BLOCK_TYPES, ids=lambda t: t.name)
def test_dequant_random_blocks_bitwise(c_tool, tmp_path, request, qtype):
    rng, seed = _rng(request)
    raw = _random_blocks(rng, qtype, 200)
    got = _c_dequant(c_tool("tool_quants"), tmp_path, qtype, raw)
    want = dequantize(raw, qtype).reshape(-1)
    assert got.shape == want.shape
    assert np.isfinite(want).all()
    mism = np.flatnonzero(got.view(np.uint32) != want.view(np.uint32))
    assert mism.size == 0, f"seed {seed}: {mism.size} values differ, first at {mism[0]}: {got[mism[0]]} vs {want[mism[0]]}"


@pytest.mark.parametrize("qtype", [QT.F16, QT.BF16, QT.F32], ids=lambda t: t.name)
def test_dequant_float_types_bitwise(c_tool, tmp_path, request, qtype):
    rng, seed = _rng(request)
    if qtype == QT.F16:
        raw = _random_finite_f16(rng, 4096).view(np.uint8)
        want = raw.view(np.float16).astype(np.float32)
    elif qtype == QT.BF16:
        bits = rng.integers(0, 1 << 16, size=4096, dtype=np.uint16)
        bits[(bits & 0x7F80) == 0x7F80] &= 0xBFFF
        raw = bits.view(np.uint8)
        want = dequantize(raw, qtype).reshape(-1)
    else:
        want = rng.standard_normal(4096).astype(np.float32)
        raw = want.view(np.uint8)
    got = _c_dequant(c_tool("tool_quants"), tmp_path, qtype, raw)
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), f"seed {seed}"


@pytest.mark.parametrize("qtype", [QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1, QT.Q8_0, QT.BF16], ids=lambda t: t.name)
def test_quantize_matches_gguf(c_tool, tmp_path, request, qtype):
    """The C reference quantizers use ggml's rounding, so their bytes equal gguf.quants.quantize."""
    rng, seed = _rng(request)
    x = (rng.standard_normal((64, 256)) * rng.uniform(0.01, 10.0, size=(64, 1))).astype(np.float32)
    src, dst = tmp_path / "x.f32", tmp_path / "q.bin"
    x.tofile(src)
    _run(c_tool("tool_quants"), "quantize", qtype.name, src, dst)
    got = np.fromfile(dst, dtype=np.uint8)
    want = quantize(x, qtype).reshape(-1)
    assert got.shape == want.shape
    assert np.array_equal(got, want), f"seed {seed}: {np.count_nonzero(got != want)} bytes differ"


@pytest.fixture(scope="module")
def model_reader(default_model) -> GGUFReader:
    """The default model opened once (GGUFReader parses every tensor header)."""
    return GGUFReader(str(default_model))


def _tensor(reader: GGUFReader, name: str):
    for t in reader.tensors:
        if t.name == name:
            return t
    raise KeyError(name)


@pytest.mark.parametrize("name,rows", [("blk.0.attn_q.weight", None), ("blk.7.ffn_down.weight", None),
                                       ("token_embd.weight", 1024)])
def test_dequant_real_tensors(c_tool, tmp_path, model_reader, name, rows):
    t = _tensor(model_reader, name)
    data = np.asarray(t.data)
    if rows is not None:  # a random slice of rows of the 49152 x 576 embedding
        start = np.random.default_rng().integers(0, data.shape[0] - rows)
        data = data[start:start + rows]
    raw = np.ascontiguousarray(data).view(np.uint8)
    got = _c_dequant(c_tool("tool_quants"), tmp_path, t.tensor_type, raw)
    want = dequantize(raw, t.tensor_type).reshape(-1)
    assert got.size == want.size and got.size > 0
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), f"{name}: dequantized values differ"


def test_matmul_real_weights_vs_numpy(c_tool, tmp_path, model_reader, request):
    """SIMD matmul (activations quantized to Q8_1 / Q8_0) vs float64 numpy on the dequantized weights.
    Activation quantization to 8 bits costs <= ~0.5% of sum|w*x| per output; allow 1%."""
    rng, seed = _rng(request)
    for name in ("blk.3.ffn_gate.weight", "blk.3.ffn_down.weight", "token_embd.weight"):
        t = _tensor(model_reader, name)
        data = np.ascontiguousarray(np.asarray(t.data)[:512])
        w = dequantize(data, t.tensor_type).astype(np.float64)       # (rows, n_in)
        n_in = w.shape[1]
        x = rng.standard_normal((7, n_in)).astype(np.float32)
        (tmp_path / "w.bin").write_bytes(data.tobytes())
        x.tofile(tmp_path / "x.f32")
        _run(c_tool("tool_quants"), "matmul", t.tensor_type.name, n_in, tmp_path / "w.bin", tmp_path / "x.f32",
             tmp_path / "y.f32")
        y = np.fromfile(tmp_path / "y.f32", dtype=np.float32).reshape(7, -1)
        want = x.astype(np.float64) @ w.T
        scale = np.abs(x).astype(np.float64) @ np.abs(w).T
        err = np.abs(y - want) / scale
        assert err.max() < 1e-2, f"seed {seed} {name}: worst error {err.max():.3g} of sum|w*x|"
        assert err.max() > 0, "activations were not quantized?"
