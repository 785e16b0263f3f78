"""TriAttention .pt statistics without torch (python/pytriattn/ptstats.py).

The container (torch's ZIP + pickle layout) round-trips random nested values; a hostile or damaged file is
a TriattnError, not code execution or a crash. Centres go GGUF -> .pt -> GGUF with byte-identical arrays
(random centres on a tiny model, fresh each run), through the Python API and the CLI (`export-pt`,
`import-stats`, `calibrate --export-pt`). With torch installed (the `torch` extra), torch.load reads our
files and our reader reads torch.save's, including strided views and bfloat16; without it those two tests
skip.
"""
from __future__ import annotations

import io
import pickle
import struct
import sys
import time
import zipfile

import numpy as np
import pytest

from pytriattn import TriattnError
from pytriattn import calibrate as cal
from pytriattn import cli
from pytriattn import ptstats as P
from tinymodels import write_tiny_model

gguf = pytest.importorskip("gguf")

SEED = int(time.time_ns()) & 0xFFFFFFFF
rng = np.random.default_rng(SEED)
TRI = ("q_center_re", "q_center_im", "q_abs_mean")


@pytest.fixture(autouse=True)
def _show_seed():
    print(f"test_ptstats seed {SEED}")
    yield


def _random_value(depth: int = 0):
    kind = rng.integers(0, 9 if depth < 3 else 6)
    if kind == 0:
        return int(rng.integers(-2**62, 2**62)) * int(rng.choice([1, 1 << 40]))
    if kind == 1:
        return float(rng.standard_normal()) * 10.0 ** int(rng.integers(-30, 30))
    if kind == 2:
        return "".join(rng.choice(list("abcxyz_ é∑🙂"), size=int(rng.integers(0, 12))))
    if kind == 3:
        return bool(rng.integers(0, 2))
    if kind == 4:
        return None
    if kind == 5:
        shape = tuple(int(s) for s in rng.integers(0, 5, size=rng.integers(0, 4)))
        dt = rng.choice(["<f4", "<f2", "<f8", "<i8", "<i4", "|b1", "|u1"])
        return np.asarray(rng.standard_normal(shape) * 100).astype(dt)
    if kind == 6:
        return {f"k{i}_{rng.integers(1000)}": _random_value(depth + 1) for i in range(rng.integers(0, 5))}
    if kind == 7:
        return [_random_value(depth + 1) for _ in range(rng.integers(0, 5))]
    return tuple(_random_value(depth + 1) for _ in range(rng.integers(0, 4)))


def _same(a, b) -> bool:
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def test_container_round_trip():
    for _ in range(20):
        obj = {"root": _random_value(), "more": [_random_value() for _ in range(3)]}
        data = P.dumps(obj)
        assert _same(obj, P.loads(data)), obj
        zf = zipfile.ZipFile(io.BytesIO(data))
        for zi in zf.infolist():  # storages (and every record) start 64-byte aligned, as torch writes them
            assert (zi.header_offset + 30 + len(zi.filename) + len(zi.extra)) % P.ALIGN == 0, zi.filename


def test_bfloat16():
    # values that bfloat16 holds exactly come back exactly; others round to nearest even
    bits = rng.integers(0, 1 << 16, size=4000).astype(np.uint16)
    exact = (bits.astype(np.uint32) << 16).view(np.float32)
    exact = exact[np.isfinite(exact)]
    got = P.loads(P.dumps({"x": P.BFloat16(exact)}))["x"]
    assert got.dtype == np.float32 and np.array_equal(got.view(np.uint32), exact.view(np.uint32))
    x = rng.standard_normal(4000).astype(np.float32)
    y = P.loads(P.dumps(P.BFloat16(x)))
    # independent rounding in float64: the nearest of the two bfloat16 neighbours, ties to even mantissa
    lo = (x.view(np.uint32) & 0xFFFF0000).view(np.float32).astype(np.float64)
    step = np.abs(lo) * 0 + 2.0 ** (np.floor(np.log2(np.abs(lo))) - 7)
    hi = lo + np.sign(lo) * step
    d_lo, d_hi = np.abs(x - lo), np.abs(x - hi)
    even_lo = ((x.view(np.uint32) >> 16) & 1) == 0
    want = np.where((d_lo < d_hi) | ((d_lo == d_hi) & even_lo), lo, hi)
    assert np.array_equal(y.astype(np.float64), want)


def _pkl_file(pkl: bytes, records: dict | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("x/data.pkl", pkl)
        for k, v in (records or {}).items():
            zf.writestr(f"x/{k}", v)
    return buf.getvalue()


def _tensor_pkl(offset: int, size: int, stride: int, numel: int) -> bytes:
    return (b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n((X\x07\x00\x00\x00storagectorch\nFloatStorage\n"
            b"X\x01\x00\x00\x000X\x03\x00\x00\x00cpuJ" + struct.pack("<i", numel) + b"tQJ" + struct.pack("<i", offset)
            + b"J" + struct.pack("<i", size) + b"\x85J" + struct.pack("<i", stride)
            + b"\x85\x89ccollections\nOrderedDict\n)RtR.")


def test_reader_rejects_bad_files():
    def bad(data, what):
        with pytest.raises(TriattnError) as e:
            P.loads(data, "f.pt")
        assert "f.pt" in str(e.value) and what in str(e.value), str(e.value)

    bad(rng.bytes(200), "not a torch .pt file")
    bad(_pkl_file(pickle.dumps(print, protocol=2)), "not allowed")                 # builtins.print
    bad(_pkl_file(b"\x80\x02cos\nsystem\nX\x02\x00\x00\x00lsR."), "not allowed")  # code execution attempt
    data = P.dumps({"a": rng.standard_normal(8).astype(np.float32)})
    bad(data[: len(data) // 2], "")                                                 # truncated archive
    ok = _tensor_pkl(2, 3, 2, 8)
    assert np.array_equal(P.loads(_pkl_file(ok, {"data/0": np.arange(8, dtype="<f4").tobytes()})), [2, 4, 6])
    bad(_pkl_file(_tensor_pkl(2, 4, 2, 8), {"data/0": np.arange(8, dtype="<f4").tobytes()}), "runs past")
    bad(_pkl_file(ok, {"data/0": np.arange(5, dtype="<f4").tobytes()}), "bytes")   # storage shorter than numel
    bad(_pkl_file(ok), "missing")


# ---- centres GGUF <-> .pt ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("ptstats")
    n_layer, n_head = int(rng.integers(2, 4)), int(rng.choice([4, 8]))
    path = write_tiny_model(d / "tiny.gguf", "llama", n_layer=n_layer, n_head=n_head, n_head_kv=n_head // 2,
                            seed=int(rng.integers(1 << 30)))
    from pytriattn import Llama
    with Llama(path, n_ctx=64, n_threads=2, kv_policy="full") as llm:
        info = llm.model_info
    return path, info


def _random_sidecar(path, info):
    n = info["n_layer"] * info["n_head"] * info["freq_count"]
    re_, im_ = rng.standard_normal((2, n)).astype(np.float32) * rng.uniform(0.1, 20)
    stats = {"q_center_re": re_, "q_center_im": im_,
             "q_abs_mean": (np.hypot(re_, im_) * rng.uniform(1, 3, n)).astype(np.float32),
             "n_tokens": int(rng.integers(1, 1 << 40))}
    cal.write_sidecar(path, cal.triattention_kvs(info, stats, f"text-{rng.integers(1000)}.txt", info["fingerprint"]))
    return stats


def _gguf_arrays(path) -> dict:
    r = gguf.GGUFReader(str(path))
    out = {}
    for k in TRI:
        f = r.fields[f"triattention.{k}"]
        out[k] = np.concatenate([f.parts[i] for i in f.data]).tobytes()
    out["n_tokens"] = int(r.fields["triattention.calib.n_tokens"].contents())
    out["source"] = r.fields["triattention.calib.source"].contents()
    return out


def test_centres_round_trip(tiny, tmp_path):
    model, info = tiny
    L, H, F = info["n_layer"], info["n_head"], info["freq_count"]
    stats = _random_sidecar(tmp_path / "a.tri-stats.gguf", info)
    before = _gguf_arrays(tmp_path / "a.tri-stats.gguf")
    assert before["q_center_re"] == stats["q_center_re"].tobytes()

    P.export_pt(tmp_path / "a.tri-stats.gguf", tmp_path / "a.pt")
    pt = P.load(tmp_path / "a.pt")
    # the official layout: one entry per (layer, query head), F float32 values per statistic
    assert set(pt["stats"]) == {f"layer{l:02d}_head{h:02d}" for l in range(L) for h in range(H)}
    l, h = int(rng.integers(L)), int(rng.integers(H))
    e = pt["stats"][f"layer{l:02d}_head{h:02d}"]
    i = (l * H + h) * F
    for name, k in (("q_mean_real", "q_center_re"), ("q_mean_imag", "q_center_im"), ("q_abs_mean", "q_abs_mean")):
        assert e[name].dtype == np.float32 and np.array_equal(e[name], stats[k][i:i + F])
    md = pt["metadata"]
    assert (md["head_dim"], md["rope_style"], md["num_layers"], md["num_attention_heads"]) == (2 * F, "half", L, H)
    assert md["sampled_heads"] == [[a, b] for a in range(L) for b in range(H)]

    P.import_pt(tmp_path / "a.pt", model, tmp_path / "b.tri-stats.gguf", sidecar=True, n_threads=2)
    assert _gguf_arrays(tmp_path / "b.tri-stats.gguf") == before

    # the CLI: export-pt then import-stats into an embedded copy that the engine loads
    assert cli.main(["export-pt", str(tmp_path / "b.tri-stats.gguf"), "-o", str(tmp_path / "c.pt")]) == 0
    assert cli.main(["import-stats", str(tmp_path / "c.pt"), "-m", str(model), "-o", str(tmp_path / "c.gguf"),
                     "-t", "2"]) == 0
    assert _gguf_arrays(tmp_path / "c.gguf") == before
    from pytriattn import Llama
    with Llama(tmp_path / "c.gguf", n_ctx=64, n_threads=2) as llm:
        assert llm.model_info["fingerprint"] == info["fingerprint"]


def test_import_rejects_mismatches(tiny, tmp_path):
    model, info = tiny
    _random_sidecar(tmp_path / "s.gguf", info)
    P.export_pt(tmp_path / "s.gguf", tmp_path / "s.pt")
    good = P.load(tmp_path / "s.pt")
    L, H, F = info["n_layer"], info["n_head"], info["freq_count"]
    victim = f"layer{int(rng.integers(L)):02d}_head{int(rng.integers(H)):02d}"

    def rejected(payload, what):
        P.save(payload, tmp_path / "x.pt")
        with pytest.raises(TriattnError) as e:
            P.import_pt(tmp_path / "x.pt", model, tmp_path / "x.gguf", sidecar=True, n_threads=2)
        assert what in str(e.value), str(e.value)
        assert not (tmp_path / "x.gguf").exists()

    p = P.load(tmp_path / "s.pt"); del p["stats"][victim]
    rejected(p, "missing")
    p = P.load(tmp_path / "s.pt"); p["stats"][victim]["q_abs_mean"] = np.ones(F + 1, np.float32)
    rejected(p, f"F = {F}")
    p = P.load(tmp_path / "s.pt"); p["stats"][victim]["q_mean_real"] = np.full(F, np.nan, np.float32)
    rejected(p, "non-finite")
    p = P.load(tmp_path / "s.pt"); p["metadata"]["rope_style"] = "interleaved"
    rejected(p, "rope_style")
    p = P.load(tmp_path / "s.pt"); p["stats"][f"layer{L:02d}_head00"] = good["stats"][victim]
    rejected(p, "outside")
    rejected({"metadata": good["metadata"], "layer_stats": {0: {}}}, "layer_stats")


def test_calibrate_export_pt(tiny, tmp_path):
    model, info = tiny
    words = rng.choice("the river light stone house learned quietly under morning seven city".split(), 3000)
    (tmp_path / "t.txt").write_text(" ".join(words))
    assert cli.main(["calibrate", str(model), "-o", str(tmp_path / "m.gguf"), "--text", str(tmp_path / "t.txt"),
                     "--tokens", "600", "--window", "256", "-t", "2", "-q", "--sidecar",
                     "--export-pt", str(tmp_path / "m.pt")]) == 0
    want = _gguf_arrays(tmp_path / "m.gguf")
    pt = P.load(tmp_path / "m.pt")
    assert pt["metadata"]["pytriattn"]["n_tokens"] == want["n_tokens"]
    got = P.centres_from_payload(pt, info["n_layer"], info["n_head"], info["freq_count"])
    for k in TRI:
        assert got[k].tobytes() == want[k]


# ---- interoperability with torch (optional extra) --------------------------------------------------------

def test_torch_loads_our_file(tiny, tmp_path):
    torch = pytest.importorskip("torch")
    model, info = tiny
    _random_sidecar(tmp_path / "s.gguf", info)
    P.export_pt(tmp_path / "s.gguf", tmp_path / "s.pt")
    ours = P.load(tmp_path / "s.pt")
    theirs = torch.load(tmp_path / "s.pt", map_location="cpu", weights_only=True)
    assert theirs["metadata"] == {k: v for k, v in ours["metadata"].items()}
    for key, e in ours["stats"].items():
        for name, a in e.items():
            t = theirs["stats"][key][name]
            assert t.dtype == torch.float32 and np.array_equal(t.numpy(), a)
    obj = {"h": rng.standard_normal((3, 5)).astype(np.float16), "i": rng.integers(-9, 9, (2, 2)),
           "b": P.BFloat16(rng.standard_normal(7)), "big": 1 << 50, "t": (1.5, None, "x")}
    P.save(obj, tmp_path / "o.pt")
    t = torch.load(tmp_path / "o.pt", weights_only=True)
    assert t["h"].dtype == torch.float16 and np.array_equal(t["h"].numpy(), obj["h"])
    assert t["i"].dtype == torch.int64 and np.array_equal(t["i"].numpy(), obj["i"])
    assert t["b"].dtype == torch.bfloat16
    assert torch.equal(t["b"], torch.from_numpy(obj["b"].array).to(torch.bfloat16))  # torch's own rounding
    assert (t["big"], t["t"]) == (1 << 50, (1.5, None, "x"))


def test_we_load_torch_save(tmp_path):
    torch = pytest.importorskip("torch")
    g = torch.Generator().manual_seed(SEED)
    c = torch.randn(16, dtype=torch.complex64, generator=g)
    m = torch.randn(6, 4, generator=g)
    payload = {"metadata": {"head_dim": 32, "sampled_heads": [[0, 1]], "rope_style": "half", "x": 2.5},
               "stats": {"layer00_head01": {"q_mean_real": c.real, "q_mean_imag": c.imag,   # views, stride 2
                                            "q_abs_mean": c.abs()}},
               "bf": m.to(torch.bfloat16), "half": m.half(), "t": m.t(), "slice": m[2:5, 1:3], "i": torch.arange(5)}
    torch.save(payload, tmp_path / "t.pt")
    got = P.load(tmp_path / "t.pt")
    assert got["metadata"] == payload["metadata"]
    e = got["stats"]["layer00_head01"]
    assert np.array_equal(e["q_mean_real"], c.real.numpy()) and np.array_equal(e["q_mean_imag"], c.imag.numpy())
    assert np.array_equal(e["q_abs_mean"], c.abs().numpy())
    assert np.array_equal(got["bf"], m.to(torch.bfloat16).float().numpy())
    for k in ("half", "t", "slice", "i"):
        assert np.array_equal(got[k], payload[k].numpy()), k
