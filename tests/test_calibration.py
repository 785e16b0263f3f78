"""`pytriattn calibrate`, triattention.* keys in GGUF (embedded and sidecar), centres on load, kv_positions,
--kv-map PNG, the shipped default sidecar; statistics checked against a float64 numpy recomputation."""
from __future__ import annotations

import hashlib
import json
import shutil
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

from pytriattn import Llama, TriattnError
from pytriattn import calibrate as cal

gguf = pytest.importorskip("gguf")

SEED = int(time.time_ns()) & 0xFFFFFFFF
rng = np.random.default_rng(SEED)
N_TOK = 2048
TRI_ARRAYS = ("triattention.q_center_re", "triattention.q_center_im", "triattention.q_abs_mean")

_WORDS = ("the river light stone house learned quietly under morning seven city garden music old number "
          "because window across paper bright winter market silver road question answer forest sleep "
          "build simple thought green letter mountain ocean careful listen remember machine").split()


@pytest.fixture(autouse=True)
def _show_seed():
    print(f"test_calibration seed {SEED}")  # pytest shows captured output of failing tests
    yield


def run(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "pytriattn", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def _random_text(n_chars: int) -> str:
    """A random passage of the King James Bible when the `bible` program is installed, else random words."""
    if shutil.which("bible"):
        book = rng.choice(["Genesis", "Exodus", "Psalms", "Isaiah", "Matthew", "Luke", "John", "Acts"])
        p = subprocess.run(["bible", "-f", f"{book} 1:1-{book} 40:1"], capture_output=True, text=True, timeout=60)
        if p.returncode == 0 and len(p.stdout) > n_chars + 1000:
            start = int(rng.integers(0, len(p.stdout) - n_chars))
            return p.stdout[start:start + n_chars]
    words = rng.choice(_WORDS, size=n_chars // 5)
    return " ".join(f"{w}." if rng.random() < 0.1 else w for w in words)


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("calib") / "text.txt"
    p.write_text(_random_text(8 * N_TOK + 4000))
    return p


@pytest.fixture(scope="module")
def embedded(default_model, text_file):
    out = text_file.parent / "model.tri.gguf"
    p = run("calibrate", default_model, "--text", text_file, "--tokens", N_TOK, "--window", 700, "-o", out, "--json")
    assert p.returncode == 0, p.stderr
    assert "tok/s" in p.stderr  # the progress bar
    return out, json.loads(p.stdout)


@pytest.fixture(scope="module")
def sidecar(default_model, text_file):
    out = text_file.parent / "model.tri-stats.gguf"
    p = run("calibrate", default_model, "--text", text_file, "--tokens", N_TOK, "--window", 700, "--sidecar",
            "-o", out, "-q", "--no-policy-check")  # the embedded fixture runs the check
    assert p.returncode == 0, p.stderr
    assert "wrote sidecar" in p.stdout
    return out


@pytest.fixture(scope="module")
def src_reader(default_model):
    return gguf.GGUFReader(str(default_model))


@pytest.fixture(scope="module")
def info(default_model):
    with Llama(default_model, n_ctx=64, kv_policy="full") as llm:
        return llm.model_info


def _kv(reader, key):
    f = reader.fields[key]
    v = f.contents()
    return v


def _arr(reader, key):
    f = reader.fields[key]
    assert f.types == [gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.FLOAT32], (key, f.types)
    return np.asarray(f.contents(), dtype=np.float32)


# ---- the written files ------------------------------------------------------------------------------

def test_embedded_keeps_every_key_and_tensor_byte_for_byte(embedded, src_reader):
    path, summary = embedded
    r = gguf.GGUFReader(str(path))
    src_keys = [k for k in src_reader.fields if not k.startswith("GGUF.")]
    out_keys = [k for k in r.fields if not k.startswith("GGUF.")]
    assert out_keys[:len(src_keys)] == src_keys, "original keys must come first, in the same order"
    for k in src_keys:
        a, b = src_reader.fields[k], r.fields[k]
        assert a.types == b.types, k
        assert [bytes(p) for p in a.parts] == [bytes(p) for p in b.parts], k
    assert all(k.startswith("triattention.") for k in out_keys[len(src_keys):])
    assert len(r.tensors) == len(src_reader.tensors)
    assert r.alignment == src_reader.alignment and r.data_offset % r.alignment == 0
    for ta, tb in zip(src_reader.tensors, r.tensors):
        assert (ta.name, ta.tensor_type, list(ta.shape)) == (tb.name, tb.tensor_type, list(tb.shape))
        assert ta.data_offset - src_reader.data_offset == tb.data_offset - r.data_offset, ta.name
        assert tb.data_offset % r.alignment == 0
        ha = hashlib.sha256(np.asarray(ta.data).tobytes()).digest()
        hb = hashlib.sha256(np.asarray(tb.data).tobytes()).digest()
        assert ha == hb, ta.name
    assert summary["n_tokens"] == N_TOK and summary["tokens_per_s"] > 0


def test_triattention_keys(embedded, info):
    path, summary = embedded
    r = gguf.GGUFReader(str(path))
    L, H, F = info["n_layer"], info["n_head"], info["freq_count"]
    want = {"triattention.format_version": 1, "triattention.architecture": "llama", "triattention.n_layer": L,
            "triattention.n_head": H, "triattention.n_head_kv": info["n_head_kv"],
            "triattention.rope_dim": info["rope_dim"], "triattention.freq_count": F,
            "triattention.rope_pairing": info["rope_pairing"], "triattention.calib.n_tokens": N_TOK,
            "triattention.model_fingerprint": info["fingerprint"], "triattention.calib.source": "text.txt"}
    for k, v in want.items():
        assert _kv(r, k) == v, k
    types = gguf.GGUFValueType
    assert r.fields["triattention.format_version"].types == [types.UINT32]
    assert r.fields["triattention.calib.n_tokens"].types == [types.UINT64]
    assert r.fields["triattention.rope_freq_base"].types == [types.FLOAT32]
    assert abs(_kv(r, "triattention.rope_freq_base") - info["rope_freq_base"]) < 1e-3
    assert _kv(r, "triattention.calib.tool").startswith("pytriattn ")
    arrs = [_arr(r, k) for k in TRI_ARRAYS]
    for a in arrs:
        assert a.size == L * H * F and np.all(np.isfinite(a))
    re, im, ab = arrs
    assert np.all(ab >= np.hypot(re, im) * (1 - 1e-5) - 1e-6), "E|q| >= |E q| must hold"
    assert np.abs(re).max() > 1e-3 and np.abs(im).max() > 1e-3 and ab.min() > 0


def test_sidecar_has_no_tensors_and_same_statistics(sidecar, embedded):
    r = gguf.GGUFReader(str(sidecar))
    e = gguf.GGUFReader(str(embedded[0]))
    assert len(r.tensors) == 0
    assert _kv(r, "general.type") == "triattention-calibration"
    # only the embedded fixture runs the check (and may write the horizon it chose)
    checked = ("triattention.auto_policy", "triattention.check.", "triattention.offmax")
    assert sorted(k for k in r.fields if k.startswith("triattention.")) == \
        sorted(k for k in e.fields if k.startswith("triattention.") and not k.startswith(checked))
    assert _kv(e, "triattention.auto_policy") in ("triattention", "streaming", "snapkv")
    kl = _arr(e, "triattention.check.kl")
    assert kl.size == 8 and np.all(np.isfinite(kl)) and np.all(kl > 0)   # 4 policies (TriAttention at 2 horizons) x 2
    pols = [str(x) for x in e.fields["triattention.check.policies"].contents()]
    assert pols == ["triattention", "streaming", "snapkv", "triattention,offmax=128"]
    short = kl[6:].mean() < kl[:2].mean()
    assert ("triattention.offmax" in e.fields) == short
    if short:
        assert _kv(e, "triattention.offmax") == 128
    assert _kv(e, "triattention.auto_policy") == embedded[1]["policy_check"]["auto_policy"]
    for k in TRI_ARRAYS:  # re-calibrating on the same text gives the same numbers
        np.testing.assert_array_equal(_arr(r, k), _arr(e, k))
    assert sidecar.stat().st_size < 200_000


def test_written_values_equal_calib_get(default_model, text_file, tmp_path, info):
    with Llama(default_model, n_ctx=300, kv_policy="full") as llm:
        toks = llm.tokenize(text_file.read_text(), add_bos=False)
        n = int(rng.integers(200, 400))
        stats = cal.collect_stats(llm, toks[:n], window=256, progress=False)
        again = llm.calib_get()  # readable after calib_end
    assert stats["n_tokens"] == n
    for k in ("q_center_re", "q_center_im", "q_abs_mean"):
        assert stats[k].shape == (info["n_layer"], info["n_head"], info["freq_count"])
        np.testing.assert_array_equal(stats[k], again[k])
    out = tmp_path / "s.gguf"
    cal.write_sidecar(out, cal.triattention_kvs(info, stats, "unit", info["fingerprint"]))
    r = gguf.GGUFReader(str(out))
    for k in ("q_center_re", "q_center_im", "q_abs_mean"):
        np.testing.assert_array_equal(_arr(r, "triattention." + k), stats[k].reshape(-1))
    assert _kv(r, "triattention.calib.n_tokens") == n


def test_calibrated_files_load_with_triattention(embedded, sidecar, default_model):
    with Llama(embedded[0], n_ctx=256) as llm:  # auto: what the file's policy check chose
        assert llm.model_info["has_calibration"] is True
        check = embedded[1]["policy_check"]
        assert llm.kv_stats()["policy"] == (check["auto_policy"] if check else "triattention"), check
    with Llama(default_model, n_ctx=256, calibration=sidecar) as llm:
        assert llm.model_info["has_calibration"] is True
        assert llm.kv_stats()["policy"] == "triattention"
    with Llama(default_model, n_ctx=256) as llm:  # an explicit path gets no automatic sidecar
        assert llm.model_info["has_calibration"] is False and llm.kv_stats()["policy"] == "full"
        toks = [int(t) for t in rng.integers(0, llm.n_vocab(), size=int(rng.integers(8, 40)))]
        want = llm.eval(toks)
    # The written model is the same model: with full attention its logits are identical.
    with Llama(embedded[0], n_ctx=256, kv_policy="full") as llm:
        assert np.array_equal(llm.eval(toks), want)


def _bad_sidecar(path, info, stats, change):
    kvs = cal.triattention_kvs(info, stats, "bad", info["fingerprint"])
    kvs = [change(k, t, v) for k, t, v in kvs]
    cal.write_sidecar(path, kvs)


@pytest.mark.parametrize("key,change", [
    ("triattention.n_layer", lambda k, t, v: (k, t, v - 1) if k == "triattention.n_layer" else (k, t, v)),
    ("triattention.q_center_im", lambda k, t, v: (k, t, v[:-1]) if k == "triattention.q_center_im" else (k, t, v)),
    ("triattention.rope_pairing",
     lambda k, t, v: (k, t, "half") if k == "triattention.rope_pairing" else (k, t, v)),
    ("triattention.rope_freq_base",
     lambda k, t, v: (k, t, v * 2) if k == "triattention.rope_freq_base" else (k, t, v)),
])
def test_mismatching_sidecar_is_refused(default_model, tmp_path, info, key, change):
    L, H, F = info["n_layer"], info["n_head"], info["freq_count"]
    re = rng.normal(size=(L, H, F)).astype(np.float32)
    im = rng.normal(size=(L, H, F)).astype(np.float32)
    stats = {"q_center_re": re, "q_center_im": im, "q_abs_mean": np.hypot(re, im) + 0.5, "n_tokens": 10}
    good = tmp_path / "good.gguf"
    _bad_sidecar(good, info, stats, lambda k, t, v: (k, t, v))
    with Llama(default_model, n_ctx=64, calibration=good) as llm:  # the random centres themselves are valid
        assert llm.model_info["has_calibration"]
    bad = tmp_path / "bad.gguf"
    _bad_sidecar(bad, info, stats, change)
    with pytest.raises(TriattnError) as e:
        Llama(default_model, n_ctx=64, calibration=bad)
    assert key in e.value.message, (key, e.value.message)


# ---- statistics against a float64 recomputation -------------------------------------------------------

def test_centres_match_numpy_reference(default_model, text_file, info):
    sys.path.insert(0, str(Path(__file__).parent))
    from reference import Reference

    class Capture(Reference):
        """Records the pre-RoPE queries (the only _rope call with n_head heads) of every layer."""

        def __init__(self, path):
            super().__init__(path)
            self.q = []

        def _rope(self, x, pos, inv_freq=None):
            if x.shape[0] == self.hp.n_head:
                self.q.append(x.copy())
            return super()._rope(x, pos, inv_freq)

    ref = Capture(default_model)
    with Llama(default_model, n_ctx=128, kv_policy="full") as llm:
        toks = llm.tokenize(text_file.read_text()[:2000], add_bos=False)
        start = int(rng.integers(0, len(toks) - 48))
        toks = toks[start:start + 40]
        llm.calib_begin()
        llm.decode(toks)
        llm.calib_end()
        eng = llm.calib_get()
    assert eng["n_tokens"] == len(toks)
    ref.logits(toks)
    q = np.stack(ref.q)                               # (L, H, n_tok, D), adjacent pairing for llama GGUFs
    assert info["rope_pairing"] == "adjacent"
    D = info["rope_dim"]
    qc = q[..., 0:D:2] + 1j * q[..., 1:D:2]           # (L, H, n_tok, F)
    centre = qc.mean(axis=2)
    absmean = np.abs(qc).mean(axis=2)
    got = eng["q_center_re"] + 1j * eng["q_center_im"]
    norm = np.linalg.norm(centre, axis=-1)            # per (layer, head)
    err = np.linalg.norm(got - centre, axis=-1)
    decent = norm > 0.1 * np.median(norm)
    rel = err[decent] / norm[decent]
    assert decent.sum() > 0.8 * norm.size
    assert rel.max() < 5e-2, f"seed {SEED}: worst relative centre error {rel.max():.3g}"
    rel_abs = np.abs(eng["q_abs_mean"] - absmean).max(axis=-1) / absmean.max(axis=-1)
    assert rel_abs.max() < 5e-2, f"seed {SEED}: worst relative E|q| error {rel_abs.max():.3g}"


# ---- introspection --------------------------------------------------------------------------------------

def test_kv_positions_full_and_triattention(default_model, sidecar):
    with Llama(default_model, n_ctx=512, kv_policy="full") as llm:
        n = int(rng.integers(20, 60))
        llm.decode(rng.integers(100, 20000, size=n))
        pos = llm.kv_positions()
        assert pos.dtype == np.int32 and pos.shape == (30, 3, n)
        assert np.all(pos == np.arange(n, dtype=np.int32))
    budget, interval = 32, 8
    with Llama(default_model, n_ctx=4096, calibration=sidecar, kv_budget=budget, kv_interval=interval,
               kv_window=4, kv_sink=2) as llm:
        n = int(rng.integers(150, 300))
        llm.decode(rng.integers(100, 20000, size=n))
        st = llm.kv_stats()
        assert st["policy"] == "triattention" and st["n_compressions"] > 0
        pos = llm.kv_positions()
        assert pos.shape[:2] == (30, 3) and pos.shape[2] == st["live_max"] <= budget + interval
        for row in pos.reshape(90, -1):
            live = row[row >= 0]
            assert np.all(row[live.size:] == -1), "padding is -1 after the live slots"
            assert np.all(np.diff(live) > 0) and live[-1] < n and live.size >= budget - interval
            assert np.all(live[:2] == [0, 1]), "sink tokens are kept"
            assert n - 1 in live, "the most recent token is kept"
        for h in range(3):  # per_head mode: the same token set in every layer of a KV head
            assert np.all(pos[:, h] == pos[0, h])


def _png_info(data: bytes):
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    w, h, depth, colour = struct.unpack(">IIBB", data[16:26])
    assert zlib.crc32(data[12:29]) & 0xFFFFFFFF == struct.unpack(">I", data[29:33])[0]
    idat, i = b"", 8
    while i < len(data):
        n, k = struct.unpack(">I4s", data[i:i + 8])
        if k == b"IDAT":
            idat += data[i + 8:i + 8 + n]
        i += 12 + n
    return w, h, depth, colour, zlib.decompress(idat)


def test_png_encoder_round_trip():
    from pytriattn._png import encode_png

    h, w = int(rng.integers(1, 40)), int(rng.integers(1, 40))
    img = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    pw, ph, depth, colour, raw = _png_info(encode_png(img))
    assert (pw, ph, depth, colour) == (w, h, 8, 2)
    rows = np.frombuffer(raw, dtype=np.uint8).reshape(h, 1 + 3 * w)
    assert np.all(rows[:, 0] == 0) and np.array_equal(rows[:, 1:].reshape(h, w, 3), img)


def test_generate_kv_map(default_model, sidecar, tmp_path):
    out = tmp_path / "map.png"
    n = int(rng.integers(60, 120))
    p = run("generate", "-m", default_model, "--calibration", sidecar, "--kv-budget", 32, "--kv-interval", 8,
            "--kv-window", 4, "--raw", "--temp", 0, "-n", n, "--kv-map", out, "Once upon a time")
    assert p.returncode == 0, p.stderr
    assert "kv map" in p.stderr and "triattention" in p.stderr
    w, h, depth, colour, raw = _png_info(out.read_bytes())
    assert h == 30 * 3 * 3 and depth == 8 and colour == 2 and 5 < w <= n + 8
    assert len(raw) == h * (1 + 3 * w)


# ---- CLI ------------------------------------------------------------------------------------------------

def test_calibrate_help():
    p = run("calibrate", "--help")
    assert p.returncode == 0
    for opt in ("--text", "--self-generate", "--tokens", "--sidecar", "-o"):
        assert opt in p.stdout


def test_calibrate_errors(default_model, text_file, tmp_path):
    p = run("calibrate", default_model, "--text", text_file)
    assert p.returncode == 2 and "--output" in p.stderr
    missing = tmp_path / f"nope{rng.integers(1000)}.txt"
    p = run("calibrate", default_model, "--text", missing, "-o", tmp_path / "x.gguf")
    assert p.returncode == 1 and "no such file" in p.stderr and str(missing.name) in p.stderr
    p = run("calibrate", default_model, "-o", tmp_path / "x.gguf")
    assert p.returncode == 2 and "--self-generate" in p.stderr
    p = run("calibrate", default_model, "--text", text_file, "-o", default_model)
    assert p.returncode == 1 and "refusing to overwrite" in p.stderr
    short = tmp_path / "short.txt"
    short.write_text(" ".join(rng.choice(_WORDS, size=20)))
    p = run("calibrate", default_model, "--text", short, "-o", tmp_path / "x.gguf", "-q")
    assert p.returncode == 1 and "fewer than --tokens" in p.stderr
    p = run("calibrate", tmp_path / "nomodel.gguf", "--text", text_file, "-o", tmp_path / "x.gguf")
    assert p.returncode == 1 and "no such file" in p.stderr
    assert not (tmp_path / "x.gguf").exists() and not list(tmp_path.glob(".x.gguf*"))


def test_calibrate_self_generate(default_model, tmp_path):
    out = tmp_path / "self.gguf"
    n = int(rng.integers(200, 300))
    p = run("calibrate", default_model, "--self-generate", "--tokens", n, "--sidecar", "--seed",
            int(rng.integers(1 << 30)), "-o", out, "--json")
    assert p.returncode == 0, p.stderr
    r = gguf.GGUFReader(str(out))
    assert _kv(r, "triattention.calib.source") == "self-generated"
    assert 0 < _kv(r, "triattention.calib.n_tokens") <= n


def test_info_shows_calibration(embedded, sidecar, default_model, info):
    p = run("info", embedded[0])
    assert p.returncode == 0, p.stderr
    assert "centres embedded" in p.stdout and f"{N_TOK} tokens" in p.stdout
    assert "fingerprint matches" in p.stdout and "text.txt" in p.stdout
    p = run("info", default_model, "--calibration", sidecar)
    assert "not calibrated" in p.stdout and "; sidecar, " in p.stdout and "fingerprint matches" in p.stdout
    j = json.loads(run("info", "--json", embedded[0]).stdout)
    assert j["triattention"]["present"] and j["calibration"]["centres"]
    assert j["calibration"]["fingerprint_match"] is True and j["calibration"]["n_tokens"] == N_TOK
    assert j["calibration"]["model_fingerprint"] == info["fingerprint"]  # Python and C agree
    j = json.loads(run("info", "--json", default_model).stdout)
    assert not j["calibration"]["centres"] and j["calibration"]["fingerprint_match"] is None


def test_default_model_uses_shipped_sidecar():
    from pytriattn.llama import default_calibration

    path = default_calibration()
    assert path is not None, "python/pytriattn/data/ must ship the default model's sidecar"
    r = gguf.GGUFReader(path)
    assert len(r.tensors) == 0 and _kv(r, "triattention.calib.n_tokens") >= 32768
    with Llama(n_ctx=256) as llm:
        assert llm.model_info["has_calibration"] and llm.kv_stats()["policy"] == "triattention"
        assert _kv(r, "triattention.model_fingerprint") == llm.model_info["fingerprint"]
