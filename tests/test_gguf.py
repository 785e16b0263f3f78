"""The C GGUF reader against the gguf package's GGUFReader: small files written with GGUFWriter (every
value type, string arrays, tensors of several types, custom alignment) and the real default model must be
seen identically (keys, types, raw values, offsets; tensor names, shapes, types, data offsets, sizes).
Plus a mutation fuzz of the real model's header region through tests/c/tool_gguf_fuzz."""
from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT
from gguf import GGUFReader, GGUFValueType, GGUFWriter
from gguf.quants import quantize

TYPE_NAMES = {
    GGUFValueType.UINT8: "u8", GGUFValueType.INT8: "i8", GGUFValueType.UINT16: "u16",
    GGUFValueType.INT16: "i16", GGUFValueType.UINT32: "u32", GGUFValueType.INT32: "i32",
    GGUFValueType.FLOAT32: "f32", GGUFValueType.BOOL: "bool", GGUFValueType.STRING: "string",
    GGUFValueType.ARRAY: "array", GGUFValueType.UINT64: "u64", GGUFValueType.INT64: "i64",
    GGUFValueType.FLOAT64: "f64",
}


def _seed() -> int:
    seed = int(np.random.SeedSequence().entropy % (1 << 32))
    print(f"seed {seed}")
    return seed


def _dump(tool, path):
    out = subprocess.run([str(tool), str(path)], capture_output=True, text=True, timeout=300)
    lines = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
    return out.returncode, lines


def _compare(lines, path, n_keys=None, n_tensors=None):
    """Asserts that the dump lines describe exactly what GGUFReader reads from path."""
    r = GGUFReader(str(path))
    head, rest = lines[0], lines[1:]
    fields = [f for f in r.fields.values() if not f.name.startswith("GGUF.")]
    assert head["version"] == int(r.fields["GGUF.version"].parts[-1][0])
    assert head["n_kv"] == len(fields)
    assert head["n_tensors"] == len(r.tensors)
    assert head["alignment"] == r.alignment
    if r.tensors:
        assert head["data_offset"] == r.data_offset
    if n_keys is not None:
        assert head["n_kv"] == n_keys
    if n_tensors is not None:
        assert head["n_tensors"] == n_tensors
    kvs = [x for x in rest if "key" in x]
    tensors = [x for x in rest if "tensor" in x]
    assert len(kvs) == len(fields) and len(tensors) == len(r.tensors)
    for kv, f in zip(kvs, fields):
        assert kv["key"] == f.name
        assert kv["offset"] == f.offset, f.name
        assert kv["type"] == TYPE_NAMES[f.types[0]], f.name
        if f.types[0] == GGUFValueType.ARRAY:
            assert kv["n"] == len(f.data), f.name
            if len(f.types) > 1:
                assert kv["arr_type"] == TYPE_NAMES[f.types[1]], f.name
        elem = f.types[-1]
        if elem == GGUFValueType.STRING:
            want = [bytes(f.parts[i]).hex() for i in f.data]
            assert kv["strs"] == want, f.name
        elif f.types[0] != GGUFValueType.ARRAY or len(f.data):
            raw = b"".join(bytes(f.parts[i]) for i in f.data)
            assert kv["hex"] == raw.hex(), f.name
            v0 = f.parts[f.data[0]][0]
            if kv.get("v0") is not None:
                assert kv["v0"] == pytest.approx(float(v0), rel=0, abs=0), f.name
    for t, rt in zip(tensors, r.tensors):
        assert t["tensor"] == rt.name
        assert t["ne"] == [int(x) for x in rt.shape], rt.name
        assert t["type"] == int(rt.tensor_type), rt.name
        assert t["abs_offset"] == rt.data_offset, rt.name
        assert t["nbytes"] == rt.n_bytes, rt.name
    return r


def test_fuzz_default_model(c_tool, default_model):
    seed = _seed()
    out = subprocess.run([str(c_tool("tool_gguf_fuzz")), str(default_model), "1000", str(seed)],
                         capture_output=True, text=True, timeout=600)
    print(out.stdout, out.stderr)
    assert out.returncode == 0
    assert "1000 passed, 0 failed" in out.stdout


def test_default_model_matches_gguf_reader(c_tool, default_model):
    rc, lines = _dump(c_tool("tool_gguf_dump"), default_model)
    assert rc == 0, lines
    _compare(lines, default_model, n_keys=33, n_tensors=272)


def _write_random(path, rng, alignment=None):
    w = GGUFWriter(str(path), "llama")
    w.add_uint8("t.u8", int(rng.integers(0, 256)))
    w.add_int8("t.i8", int(rng.integers(-128, 128)))
    w.add_uint16("t.u16", int(rng.integers(0, 1 << 16)))
    w.add_int16("t.i16", int(rng.integers(-(1 << 15), 1 << 15)))
    w.add_uint32("t.u32", int(rng.integers(0, 1 << 32)))
    w.add_int32("t.i32", int(rng.integers(-(1 << 31), 1 << 31)))
    w.add_float32("t.f32", float(rng.normal()))
    w.add_uint64("t.u64", int(rng.integers(0, 1 << 63)) * 2 + 1)
    w.add_int64("t.i64", int(rng.integers(-(1 << 62), 1 << 62)))
    w.add_float64("t.f64", float(rng.normal() * 1e10))
    w.add_bool("t.bool", bool(rng.integers(0, 2)))
    w.add_string("t.str", "".join(chr(int(c)) for c in rng.integers(32, 0x3000, 12)))
    w.add_string("t.empty", "")
    w.add_array("t.arr_i32", [int(x) for x in rng.integers(-1000, 1000, int(rng.integers(1, 50)))])
    w.add_array("t.arr_f32", [float(x) for x in rng.normal(size=int(rng.integers(1, 50)))])
    w.add_array("t.arr_str", ["".join(chr(int(c)) for c in rng.integers(33, 127, int(rng.integers(0, 9))))
                              for _ in range(int(rng.integers(1, 20)))])
    w.add_array("t.arr_bool", [bool(x) for x in rng.integers(0, 2, 7)])
    if alignment:
        w.add_custom_alignment(alignment)
    w.add_tensor("a.f32", rng.normal(size=(3, 5)).astype(np.float32))
    w.add_tensor("b.f16", rng.normal(size=(7,)).astype(np.float16))
    q = quantize(rng.normal(size=(4, 64)).astype(np.float32), QT.Q8_0)
    w.add_tensor("c.q8_0", q, raw_dtype=QT.Q8_0)
    q = quantize(rng.normal(size=(2, 3, 32)).astype(np.float32), QT.Q4_0)
    w.add_tensor("d.q4_0", q, raw_dtype=QT.Q4_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.parametrize("alignment", [None, 64, 256])
def test_writer_files_match_gguf_reader(c_tool, tmp_path, alignment):
    rng = np.random.default_rng(_seed())
    path = tmp_path / "w.gguf"
    _write_random(path, rng, alignment)
    rc, lines = _dump(c_tool("tool_gguf_dump"), path)
    assert rc == 0, lines
    r = _compare(lines, path, n_tensors=4)
    assert lines[0]["alignment"] == (alignment or 32)
    assert any(x.get("key") == "t.arr_str" for x in lines)
    assert r.alignment == (alignment or 32)


def test_metadata_only_file(c_tool, tmp_path):
    path = tmp_path / "side.gguf"
    w = GGUFWriter(str(path), "llama")
    w.add_string("general.type", "triattention-calibration")
    w.add_array("triattention.q_center_re", [float(x) for x in np.random.default_rng(_seed()).normal(size=40)])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    rc, lines = _dump(c_tool("tool_gguf_dump"), path)
    assert rc == 0, lines
    _compare(lines, path, n_keys=3, n_tensors=0)


def test_truncated_and_corrupt_files_are_errors(c_tool, tmp_path):
    rng = np.random.default_rng(_seed())
    path = tmp_path / "w.gguf"
    _write_random(path, rng)
    data = path.read_bytes()
    bad = tmp_path / "bad.gguf"
    for cut in sorted(set(int(x) for x in rng.integers(0, len(data) - 64, 20))):
        bad.write_bytes(data[:cut])
        rc, lines = _dump(c_tool("tool_gguf_dump"), bad)
        assert rc == 1 and lines[0]["error"] in (1, 2), (cut, lines)
    bad.write_bytes(data[:4] + (1).to_bytes(4, "little") + data[8:])
    rc, lines = _dump(c_tool("tool_gguf_dump"), bad)
    assert rc == 1 and lines[0]["error"] == 3 and "version 1" in lines[0]["message"]
