"""TriAttention query statistics as a torch `.pt` file, read and written without torch.

The official TriAttention plugins for vLLM and SGLang read their calibration from a file made by
`torch.save`. This module writes and reads that file for the subset of Python objects the statistics
need, so `pytriattn calibrate --export-pt`, `pytriattn export-pt` and `pytriattn import-stats` work on a
machine without torch.

Container (what torch.save writes since torch 1.6; the subset implemented here)
  A ZIP archive, entries stored uncompressed, all under one top-level folder (`archive/` here; readers
  accept any single prefix):
    archive/data.pkl      the object, pickle protocol 2
    archive/byteorder     "little"
    archive/data/<key>    raw little-endian bytes of one storage (a flat buffer tensors view into)
    archive/version       "3\\n"
  Storage records start at 64-byte file offsets (padding in the local header's extra field), as torch
  writes them. Inside data.pkl, a tensor is
    torch._utils._rebuild_tensor_v2(<storage>, storage_offset, size, stride, False, OrderedDict())
  where <storage> is a persistent id, the tuple ("storage", torch.<Type>Storage, "<key>", "cpu", numel).
  Strides and offsets count elements; several tensors may view one storage (torch saves `c.real` of a
  complex tensor as the whole complex buffer with stride 2). Element types: FloatStorage (float32),
  HalfStorage (float16), BFloat16Storage (bfloat16; read as float32, which holds it exactly),
  DoubleStorage, LongStorage, IntStorage, ShortStorage, CharStorage, ByteStorage, BoolStorage.
  Other values: dict, list, tuple, str, int, float, bool, None. The reader resolves no global but
  `_rebuild_tensor_v2`, `collections.OrderedDict` and the storage types above, so a file cannot run code.

Statistics (the layout of the official calibration script)
  {"metadata": {"head_dim": 2F, "rope_style": "half", "rope_type": "default",
                "sampled_heads": [[layer, head], ...], "num_layers": L, "num_attention_heads": H,
                "num_kv_heads": H_kv, "rope_theta": base, "dtype": ..., "attn_implementation": ...,
                "use_chat_template": False, "system_prompt": "", "prompt_template": "", "kv_budget": 0,
                "num_traces": 1, "pytriattn": {...provenance...}},
   "stats": {"layer00_head00": {"q_mean_real": float32[F], "q_mean_imag": float32[F],
                                "q_abs_mean": float32[F]}, ...}}
  One entry per query head. q_mean_* is the mean of the pre-RoPE query as F complex numbers in the
  `half` pairing of the Hugging Face weights (re = q[f], im = q[f + F]); q_abs_mean is the mean of their
  moduli. These are exactly the engine's triattention.q_center_re / q_center_im / q_abs_mean at index
  (l·H + h)·F + f (docs/gguf-keys.md): a llama GGUF stores Q rows permuted to adjacent pairs, but pair f
  is the same frequency either way. dtype / attn_implementation / prompt fields are what the official
  loader compares with its runtime configuration; they default to its calibration script's defaults
  (bfloat16, flash_attention_2, no chat template) and can be overridden. No `inv_freq` is written: the
  plugin derives the rotary frequencies from the model's own configuration.
"""
from __future__ import annotations

import collections
import io
import os
import pickle
import re
import struct
import zipfile
from pathlib import Path

import numpy as np

from ._errors import ERR_FORMAT, ERR_INVALID_ARG, ERR_IO, TriattnError

ALIGN = 64
PREFIX = "archive"
_STORAGE_DTYPES = {
    "FloatStorage": np.dtype("<f4"), "HalfStorage": np.dtype("<f2"), "BFloat16Storage": np.dtype("<u2"),
    "DoubleStorage": np.dtype("<f8"), "LongStorage": np.dtype("<i8"), "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"), "CharStorage": np.dtype("i1"), "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}
_STORAGE_FOR = {np.dtype(np.float32): "FloatStorage", np.dtype(np.float16): "HalfStorage",
                np.dtype(np.float64): "DoubleStorage", np.dtype(np.int64): "LongStorage",
                np.dtype(np.int32): "IntStorage", np.dtype(np.int16): "ShortStorage",
                np.dtype(np.int8): "CharStorage", np.dtype(np.uint8): "ByteStorage", np.dtype(np.bool_): "BoolStorage"}
STAT_NAMES = ("q_mean_real", "q_mean_imag", "q_abs_mean")
GGUF_ARRAYS = {"q_mean_real": "triattention.q_center_re", "q_mean_imag": "triattention.q_center_im",
               "q_abs_mean": "triattention.q_abs_mean"}
_HEAD_KEY = re.compile(r"layer(\d+)_head(\d+)")


class BFloat16:
    """Marks an array to be written as a bfloat16 tensor (float32 rounded to nearest even)."""

    def __init__(self, array):
        self.array = np.asarray(array, dtype=np.float32)


def bf16_bits(a: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns, round to nearest even (NaN stays NaN)."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    return np.where(np.isnan(a), np.uint16(0x7FC0), r)


def bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


# ---- writing --------------------------------------------------------------------------------------------

class _Pickler:
    """Emits protocol-2 pickle opcodes for the supported values; tensors become persistent storages."""

    def __init__(self):
        self.out = io.BytesIO()
        self.storages: list[bytes] = []

    def _w(self, b: bytes) -> None:
        self.out.write(b)

    def _global(self, module: str, name: str) -> None:
        self._w(b"c" + module.encode() + b"\n" + name.encode() + b"\n")

    def _int(self, v: int) -> None:
        if 0 <= v < 256:
            self._w(b"K" + struct.pack("<B", v))
        elif -2**31 <= v < 2**31:
            self._w(b"J" + struct.pack("<i", v))
        else:
            n = (v.bit_length() + 8) // 8
            self._w(b"\x8a" + struct.pack("<B", n) + v.to_bytes(n, "little", signed=True))

    def _tensor(self, flat: np.ndarray, storage: str, shape: tuple) -> None:
        key = str(len(self.storages))
        self.storages.append(flat.tobytes())
        self._global("torch._utils", "_rebuild_tensor_v2")
        self._w(b"(")                                  # args
        self._w(b"(")                                  # persistent id
        self.save("storage")
        self._global("torch", storage)
        self.save(key)
        self.save("cpu")
        self._int(int(flat.size))
        self._w(b"tQ")                                 # TUPLE, BINPERSID
        self._int(0)
        self.save(tuple(int(d) for d in shape))
        strides, acc = [], 1
        for d in reversed(shape):
            strides.append(acc)
            acc *= int(d)
        self.save(tuple(reversed(strides)))
        self._w(b"\x89")                               # requires_grad = False
        self._global("collections", "OrderedDict")
        self._w(b")R")                                 # OrderedDict()
        self._w(b"tR")                                 # TUPLE, REDUCE

    def save(self, v) -> None:
        if v is None:
            self._w(b"N")
        elif isinstance(v, (bool, np.bool_)):
            self._w(b"\x88" if v else b"\x89")
        elif isinstance(v, (int, np.integer)):
            self._int(int(v))
        elif isinstance(v, (float, np.floating)):
            self._w(b"G" + struct.pack(">d", float(v)))
        elif isinstance(v, str):
            b = v.encode("utf-8")
            self._w(b"X" + struct.pack("<I", len(b)) + b)
        elif isinstance(v, dict):
            self._w(b"}")
            if v:
                self._w(b"(")
                for k, x in v.items():
                    self.save(k)
                    self.save(x)
                self._w(b"u")
        elif isinstance(v, list):
            self._w(b"]")
            if v:
                self._w(b"(")
                for x in v:
                    self.save(x)
                self._w(b"e")
        elif isinstance(v, tuple):
            if not v:
                self._w(b")")
            else:
                self._w(b"(")
                for x in v:
                    self.save(x)
                self._w(b"t")
        elif isinstance(v, BFloat16):
            self._tensor(bf16_bits(v.array).reshape(-1), "BFloat16Storage", v.array.shape)
        elif isinstance(v, np.ndarray):
            a = np.asarray(v)  # (np.ascontiguousarray would turn a 0-d array into 1-d)
            name = _STORAGE_FOR.get(a.dtype.newbyteorder("=") if a.dtype.byteorder not in "=|" else a.dtype)
            if name is None:
                raise TriattnError(ERR_INVALID_ARG, f"cannot store a {a.dtype} array in a .pt file")
            self._tensor(a.astype(_STORAGE_DTYPES[name]).reshape(-1), name, a.shape)
        else:
            raise TriattnError(ERR_INVALID_ARG, f"cannot store a {type(v).__name__} in a .pt file")

    def dumps(self, v) -> bytes:
        self._w(b"\x80\x02")
        self.save(v)
        self._w(b".")
        return self.out.getvalue()


def _aligned_record(zf: zipfile.ZipFile, name: str, data: bytes) -> None:
    """Writes one stored entry whose data starts at a multiple of ALIGN in the file."""
    zi = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    zi.compress_type = zipfile.ZIP_STORED
    start = zf.fp.tell() + 30 + len(name.encode("utf-8"))
    pad = (-start) % ALIGN
    if 0 < pad < 4:
        pad += ALIGN
    if pad:
        zi.extra = struct.pack("<HH", 0x4246, pad - 4) + b"Z" * (pad - 4)  # "FB" padding field
    zf.writestr(zi, data)


def dumps(obj) -> bytes:
    """The .pt file bytes for obj (dicts, lists, tuples, str, int, float, bool, None, numpy arrays,
    BFloat16)."""
    p = _Pickler()
    pkl = p.dumps(obj)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        _aligned_record(zf, f"{PREFIX}/data.pkl", pkl)
        _aligned_record(zf, f"{PREFIX}/byteorder", b"little")
        for i, data in enumerate(p.storages):
            _aligned_record(zf, f"{PREFIX}/data/{i}", data)
        _aligned_record(zf, f"{PREFIX}/version", b"3\n")
    return buf.getvalue()


def save(obj, path: str | os.PathLike) -> None:
    """Writes obj as a torch .pt file (atomically: temporary file, then rename)."""
    from .calibrate import _atomic_write

    path = Path(path)
    if not path.parent.is_dir():
        raise TriattnError(ERR_IO, f"{path.parent}: no such directory")
    _atomic_write(path, [dumps(obj)])


# ---- reading --------------------------------------------------------------------------------------------

class _StorageType:
    def __init__(self, name: str):
        self.name = name
        self.dtype = _STORAGE_DTYPES[name]


class _Storage:
    def __init__(self, kind: _StorageType, data: np.ndarray):
        self.kind, self.data = kind, data


def _rebuild_tensor(storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError("tensor without a storage")
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    offset = int(offset)
    if len(size) != len(stride) or offset < 0 or any(s < 0 for s in size) or any(s < 0 for s in stride):
        raise pickle.UnpicklingError(f"bad tensor geometry: offset {offset}, size {size}, stride {stride}")
    n = storage.data.size
    if all(size):
        last = offset + sum((d - 1) * s for d, s in zip(size, stride))
        if last >= n:
            raise pickle.UnpicklingError(f"tensor of size {size} stride {stride} at offset {offset} runs past "
                                         f"its storage of {n} elements")
    it = storage.data.itemsize
    a = np.lib.stride_tricks.as_strided(storage.data[offset:] if offset < n else storage.data[:0],
                                        shape=size, strides=tuple(s * it for s in stride)).copy()
    return bf16_to_f32(a) if storage.kind.name == "BFloat16Storage" else a


class _Unpickler(pickle.Unpickler):
    """Resolves only the globals a tensor needs; storages come from the archive."""

    def __init__(self, file, zf: zipfile.ZipFile, prefix: str, where: str):
        super().__init__(file)
        self.zf, self.prefix, self.where = zf, prefix, where
        self.loaded: dict[str, _Storage] = {}

    def find_class(self, module, name):
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a statistics file")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r:.80}")
        _, kind, key, _location, numel = pid
        key = str(key)
        if key not in self.loaded:
            name = f"{self.prefix}data/{key}"
            try:
                raw = self.zf.read(name)
            except KeyError:
                raise pickle.UnpicklingError(f"storage record {name} is missing") from None
            need = int(numel) * kind.dtype.itemsize
            if int(numel) < 0 or len(raw) < need:
                raise pickle.UnpicklingError(f"storage {name} holds {len(raw)} bytes, {need} needed")
            self.loaded[key] = _Storage(kind, np.frombuffer(raw[:need], dtype=kind.dtype))
        return self.loaded[key]


def loads(data: bytes, where: str = "<bytes>"):
    """The object in .pt file bytes; tensors come back as numpy arrays (bfloat16 as float32)."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise TriattnError(ERR_FORMAT, f"{where}: not a torch .pt file (not a ZIP archive; files from "
                                       "torch < 1.6 or torch.save(..., _use_new_zipfile_serialization=False) "
                                       "are not supported)") from None
    with zf:
        pkl = [n for n in zf.namelist() if n.endswith("data.pkl") and n.count("/") <= 1]
        if len(pkl) != 1:
            raise TriattnError(ERR_FORMAT, f"{where}: expected one data.pkl record, found {len(pkl)}")
        prefix = pkl[0][:-len("data.pkl")]
        names = set(zf.namelist())
        if f"{prefix}byteorder" in names and zf.read(f"{prefix}byteorder").strip() != b"little":
            raise TriattnError(ERR_FORMAT, f"{where}: big-endian .pt files are not supported")
        try:
            return _Unpickler(io.BytesIO(zf.read(pkl[0])), zf, prefix, where).load()
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError,
                zipfile.BadZipFile, struct.error) as e:
            raise TriattnError(ERR_FORMAT, f"{where}: {pkl[0]}: {e}") from None


def load(path: str | os.PathLike):
    path = Path(path)
    if not path.is_file():
        raise TriattnError(ERR_IO, f"{path}: no such file")
    return loads(path.read_bytes(), str(path))


# ---- statistics <-> .pt ----------------------------------------------------------------------------------

def stats_payload(arrays: dict, geometry: dict, provenance: dict | None = None, *, dtype: str = "bfloat16",
                  attn_implementation: str = "flash_attention_2") -> dict:
    """The official layout for centres given as flat L·H·F float32 arrays keyed like the GGUF keys
    (q_center_re, q_center_im, q_abs_mean). geometry: n_layer, n_head, n_head_kv, freq_count,
    rope_freq_base."""
    L, H, F = int(geometry["n_layer"]), int(geometry["n_head"]), int(geometry["freq_count"])
    flat = {}
    for stat, gkey in GGUF_ARRAYS.items():
        a = np.asarray(arrays[gkey.split(".", 1)[1]], dtype=np.float32).reshape(-1)
        if a.size != L * H * F:
            raise TriattnError(ERR_INVALID_ARG, f"{gkey} has {a.size} values, expected L·H·F = {L * H * F}")
        flat[stat] = a.reshape(L, H, F)
    stats = {f"layer{l:02d}_head{h:02d}": {s: flat[s][l, h].copy() for s in STAT_NAMES}
             for l in range(L) for h in range(H)}
    metadata = {
        "num_traces": 1, "head_dim": 2 * F, "dtype": dtype, "use_chat_template": False, "system_prompt": "",
        "prompt_template": "", "kv_budget": 0, "attn_implementation": attn_implementation,
        "rope_style": "half", "rope_type": "default",
        "sampled_heads": [[l, h] for l in range(L) for h in range(H)],
        "num_layers": L, "num_attention_heads": H, "num_kv_heads": int(geometry["n_head_kv"]),
        "rope_theta": float(geometry["rope_freq_base"]),
    }
    if provenance:
        metadata["pytriattn"] = dict(provenance)
    return {"metadata": metadata, "stats": stats}


def centres_from_payload(payload, n_layer: int, n_head: int, freq_count: int, where: str = "<stats>") -> dict:
    """Flat float32 arrays q_center_re / q_center_im / q_abs_mean (index (l·H+h)·F+f) from a loaded
    statistics file; every (layer, head) of the model must be present with F values each."""
    if not isinstance(payload, dict) or not isinstance(payload.get("stats"), dict):
        if isinstance(payload, dict) and "layer_stats" in payload:
            raise TriattnError(ERR_FORMAT, f"{where}: per-KV-head 'layer_stats' files are averaged over query "
                                           "heads and cannot be turned back into per-head centres; give the "
                                           "calibration script's per-head file ('stats': layerXX_headYY)")
        raise TriattnError(ERR_FORMAT, f"{where}: no 'stats' dict of layerXX_headYY entries")
    meta = payload.get("metadata") or {}
    style = str(meta.get("rope_style", "half"))
    if style != "half":
        raise TriattnError(ERR_FORMAT, f"{where}: metadata.rope_style is {style!r}; only 'half' statistics map "
                                       "onto GGUF centres")
    L, H, F = int(n_layer), int(n_head), int(freq_count)
    out = {s: np.empty((L, H, F), dtype=np.float32) for s in STAT_NAMES}
    seen = set()
    for key, entry in payload["stats"].items():
        m = _HEAD_KEY.fullmatch(str(key))
        if not m:
            continue
        l, h = int(m.group(1)), int(m.group(2))
        if l >= L or h >= H:
            raise TriattnError(ERR_FORMAT, f"{where}: stats['{key}'] is outside the model's {L} layers x {H} "
                                           "query heads")
        if not isinstance(entry, dict):
            raise TriattnError(ERR_FORMAT, f"{where}: stats['{key}'] is not a dict")
        for s in STAT_NAMES:
            a = entry.get(s)
            if not isinstance(a, np.ndarray):
                raise TriattnError(ERR_FORMAT, f"{where}: stats['{key}']['{s}'] is missing or not a tensor")
            if a.size != F:
                raise TriattnError(ERR_FORMAT, f"{where}: stats['{key}']['{s}'] has {a.size} values, the model "
                                               f"has F = {F} rotary frequency pairs per head")
            v = a.reshape(-1).astype(np.float32)
            if not np.all(np.isfinite(v)):
                raise TriattnError(ERR_FORMAT, f"{where}: stats['{key}']['{s}'] has non-finite values")
            out[s][l, h] = v
        seen.add((l, h))
    missing = [(l, h) for l in range(L) for h in range(H) if (l, h) not in seen]
    if missing:
        l, h = missing[0]
        raise TriattnError(ERR_FORMAT, f"{where}: {len(missing)} of {L * H} (layer, head) entries missing, "
                                       f"first layer{l:02d}_head{h:02d}")
    return {gkey.split(".", 1)[1]: out[s].reshape(-1) for s, gkey in GGUF_ARRAYS.items()}


def _gguf_centres(path: Path) -> tuple[dict, dict, dict]:
    """(arrays, geometry, provenance) from the triattention.* keys of a GGUF file."""
    from .calibrate import _read_gguf

    r = _read_gguf(path)

    def val(key, required=True):
        f = r.fields.get(key)
        if f is None:
            if required:
                raise TriattnError(ERR_FORMAT, f"{path}: no {key} (not a calibrated model or sidecar)")
            return None
        p = f.parts[f.data[0]]
        return bytes(p).decode("utf-8") if f.types[0] == 8 else p[0].item()

    geometry = {k: val(f"triattention.{k}") for k in ("n_layer", "n_head", "n_head_kv", "freq_count",
                                                      "rope_freq_base", "architecture", "rope_pairing")}
    arrays = {}
    for gkey in GGUF_ARRAYS.values():
        f = r.fields.get(gkey)
        if f is None:
            raise TriattnError(ERR_FORMAT, f"{path}: no {gkey} (not a calibrated model or sidecar)")
        if len(f.types) != 2 or f.types[0] != 9 or f.types[1] != 6:  # ARRAY of FLOAT32
            raise TriattnError(ERR_FORMAT, f"{path}: {gkey} is not an array of f32")
        arrays[gkey.split(".", 1)[1]] = (np.concatenate([f.parts[i] for i in f.data]).astype("<f4")
                                         if f.data else np.zeros(0, dtype="<f4"))
    provenance = {"tool": val("triattention.calib.tool", False), "source": val("triattention.calib.source", False),
                  "n_tokens": val("triattention.calib.n_tokens", False),
                  "architecture": geometry["architecture"], "rope_pairing": geometry["rope_pairing"],
                  "model_fingerprint": val("triattention.model_fingerprint", False)}
    return arrays, geometry, {k: v for k, v in provenance.items() if v is not None}


def export_pt(gguf_path: str | os.PathLike, out: str | os.PathLike, **meta) -> dict:
    """Writes the centres of a calibrated model or sidecar as a .pt statistics file; returns a summary."""
    arrays, geometry, provenance = _gguf_centres(Path(gguf_path))
    save(stats_payload(arrays, geometry, provenance, **meta), out)
    return {"output": str(out), "n_layer": int(geometry["n_layer"]), "n_head": int(geometry["n_head"]),
            "freq_count": int(geometry["freq_count"])}


def import_pt(pt_path: str | os.PathLike, model: str | os.PathLike, out: str | os.PathLike, *,
              sidecar: bool = False, n_threads: int | None = None) -> dict:
    """Reads a .pt statistics file and writes its centres for `model` (embedded copy or sidecar)."""
    from . import calibrate as cal
    from .llama import Llama

    pt_path, model = Path(pt_path), Path(model)
    if not model.is_file():
        raise TriattnError(ERR_IO, f"{model}: no such file")
    payload = load(pt_path)
    with Llama(model, n_ctx=64, n_threads=n_threads, kv_policy="full", calibration=None) as llm:
        info = llm.model_info
    meta = payload.get("metadata") if isinstance(payload, dict) else None
    meta = meta if isinstance(meta, dict) else {}
    for key, want in (("num_layers", info["n_layer"]), ("num_attention_heads", info["n_head"]),
                      ("head_dim", 2 * info["freq_count"])):
        if key in meta and int(meta[key]) != int(want):
            raise TriattnError(ERR_FORMAT, f"{pt_path}: metadata.{key} = {meta[key]}, the model has {want}")
    arrays = centres_from_payload(payload, info["n_layer"], info["n_head"], info["freq_count"], str(pt_path))
    prov = meta.get("pytriattn") if isinstance(meta.get("pytriattn"), dict) else {}
    n_tokens = int(prov.get("n_tokens", meta.get("n_tokens", 0)) or 0)
    source = str(prov.get("source") or pt_path.name)
    kvs = cal.triattention_kvs(info, {**arrays, "n_tokens": n_tokens}, source, info["fingerprint"])
    if sidecar:
        cal.write_sidecar(out, kvs, src=model)
    else:
        cal.write_embedded(model, out, kvs)
    return {"output": str(out), "sidecar": sidecar, "n_layer": info["n_layer"], "n_head": info["n_head"],
            "freq_count": info["freq_count"], "n_tokens": n_tokens, "source": source}
