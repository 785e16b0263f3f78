"""`pytriattn calibrate`: measure TriAttention query centres and write them as GGUF metadata.

The engine accumulates pre-RoPE query statistics (docs/triattention.md §2) while it reads a text; this
module feeds the text in windows, reads the means back and writes either
  * an embedded copy of the model: every original key/value and tensor byte for byte (the raw bytes of
    the key/value section and tensor directory are copied, tensor offsets are relative to the data
    section, so the data keeps its alignment), plus the triattention.* keys; or
  * a sidecar: a metadata-only GGUF with general.type = triattention-calibration.
Keys and layout: docs/gguf-keys.md. Output is written to a temporary file and renamed into place.
"""
from __future__ import annotations

import os
import struct
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ._errors import ERR_FORMAT, ERR_INVALID_ARG, ERR_IO, TriattnError

DEFAULT_TEXT_TOKENS = 32768
DEFAULT_SELF_TOKENS = 8192
SIDECAR_TYPE = "triattention-calibration"

# GGUF value types (gguf spec).
T_U8, T_I8, T_U16, T_I16, T_U32, T_I32, T_F32, T_BOOL, T_STR, T_ARR, T_U64, T_I64, T_F64 = range(13)
_SCALAR = {T_U8: "<B", T_I8: "<b", T_U16: "<H", T_I16: "<h", T_U32: "<I", T_I32: "<i", T_F32: "<f",
           T_BOOL: "<?", T_U64: "<Q", T_I64: "<q", T_F64: "<d"}
_NP = {T_U32: "<u4", T_I32: "<i4", T_F32: "<f4", T_U64: "<u8", T_I64: "<i8", T_F64: "<f8"}

# Prompts for --self-generate: varied registers so the statistics do not lean on one kind of text.
SELF_PROMPTS = (
    "Write a long story about a lighthouse keeper who finds a message in a bottle.",
    "Explain step by step how a computer executes a program, from source code to machine instructions.",
    "Describe the history of bread making across different cultures.",
    "Solve this: a train leaves at 3 pm travelling 80 km/h; another leaves at 4 pm at 100 km/h. "
    "When does the second catch up? Show your reasoning.",
    "Write a Python function that merges two sorted lists, and explain how it works.",
    "What are the main causes of climate change and what can individuals do about them?",
    "Write a letter to a friend describing a trip to the mountains.",
    "Summarise the plot of a detective novel you invent, with three suspects and a twist.",
    "Explain photosynthesis to a ten-year-old, then to a university student.",
    "Give advice to someone starting to learn the piano as an adult.",
    "Describe how the immune system fights a viral infection.",
    "Write a dialogue between a robot and a gardener about the meaning of growth.",
)


# ---- GGUF encoding -------------------------------------------------------------------------------------

def _gstr(s: str | bytes) -> bytes:
    b = s.encode("utf-8") if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def encode_kv(key: str, vtype: int, value) -> bytes:
    """One GGUF key/value pair. Arrays: vtype = (T_ARR, elem_type)."""
    out = _gstr(key)
    if isinstance(vtype, tuple):
        _, et = vtype
        out += struct.pack("<IIQ", T_ARR, et, len(value))
        if et == T_STR:
            return out + b"".join(_gstr(v) for v in value)
        return out + np.ascontiguousarray(np.asarray(value, dtype=_NP[et])).tobytes()
    out += struct.pack("<I", vtype)
    if vtype == T_STR:
        return out + _gstr(value)
    return out + struct.pack(_SCALAR[vtype], value)


def triattention_kvs(info: dict, stats: dict, source: str, fingerprint: str) -> list[tuple[str, object, object]]:
    """The triattention.* keys (docs/gguf-keys.md) for a model_info dict and calib_get() statistics."""
    from . import __version__

    n = info["n_layer"] * info["n_head"] * info["freq_count"]
    arrs = {k: np.asarray(stats[k], dtype=np.float32).reshape(-1) for k in ("q_center_re", "q_center_im", "q_abs_mean")}
    for k, a in arrs.items():
        if a.size != n:
            raise TriattnError(ERR_INVALID_ARG, f"{k} has {a.size} values, expected {n}")
    return [
        ("triattention.format_version", T_U32, 1),
        ("triattention.architecture", T_STR, info["arch"]),
        ("triattention.n_layer", T_U32, info["n_layer"]),
        ("triattention.n_head", T_U32, info["n_head"]),
        ("triattention.n_head_kv", T_U32, info["n_head_kv"]),
        ("triattention.rope_dim", T_U32, info["rope_dim"]),
        ("triattention.freq_count", T_U32, info["freq_count"]),
        ("triattention.rope_pairing", T_STR, info["rope_pairing"]),
        ("triattention.rope_freq_base", T_F32, float(info["rope_freq_base"])),
        ("triattention.q_center_re", (T_ARR, T_F32), arrs["q_center_re"]),
        ("triattention.q_center_im", (T_ARR, T_F32), arrs["q_center_im"]),
        ("triattention.q_abs_mean", (T_ARR, T_F32), arrs["q_abs_mean"]),
        ("triattention.calib.n_tokens", T_U64, int(stats["n_tokens"])),
        ("triattention.calib.source", T_STR, source),
        ("triattention.calib.tool", T_STR, f"pytriattn {__version__}"),
        ("triattention.model_fingerprint", T_STR, fingerprint),
    ]


def _read_gguf(path: Path):
    try:
        from gguf import GGUFReader
        return GGUFReader(str(path))
    except Exception as e:
        raise TriattnError(ERR_FORMAT, f"{path}: not a readable GGUF file ({type(e).__name__}: {e})") from None


def _raw_span(field) -> tuple[int, int]:
    """(start, end) file offsets of a reader field (a key/value pair or a tensor-directory entry)."""
    return int(field.offset), int(field.offset) + sum(int(p.nbytes) for p in field.parts)


def _atomic_write(dst: Path, chunks) -> None:
    """Writes the byte chunks to a temporary file next to dst, fsyncs and renames it into place."""
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=str(dst.parent))
    try:
        with os.fdopen(fd, "wb") as f:
            for c in chunks:
                f.write(c)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file ordinary permissions
        os.replace(tmp, dst)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _check_output(src: Path | None, dst: Path) -> None:
    if dst.exists() and dst.is_dir():
        raise TriattnError(ERR_INVALID_ARG, f"{dst}: is a directory")
    if not dst.parent.is_dir():
        raise TriattnError(ERR_IO, f"{dst.parent}: no such directory")
    if src is not None and (dst.resolve() == src.resolve() or (dst.exists() and os.path.samefile(dst, src))):
        raise TriattnError(ERR_INVALID_ARG, f"{dst}: refusing to overwrite the input model; choose another -o")


def write_embedded(src: str | os.PathLike, dst: str | os.PathLike, kvs) -> None:
    """dst = src's header, original key/values (raw bytes, same order; old triattention.* keys dropped),
    the new keys, src's tensor directory (raw), padding to the same alignment, src's data section."""
    src, dst = Path(src), Path(dst)
    _check_output(src, dst)
    r = _read_gguf(src)
    mm = r.data  # the reader's memory map of the whole file
    version = int(r.fields["GGUF.version"].parts[-1][0])
    old = [f for k, f in r.fields.items() if not k.startswith("GGUF.") and not k.startswith("triattention.")]
    new = [encode_kv(k, t, v) for k, t, v in kvs]
    kv_bytes = [bytes(mm[slice(*_raw_span(f))]) for f in old] + new
    ti_bytes = [bytes(mm[slice(*_raw_span(t.field))]) for t in r.tensors]
    head = b"GGUF" + struct.pack("<IQQ", version, len(r.tensors), len(kv_bytes))
    meta_len = len(head) + sum(map(len, kv_bytes)) + sum(map(len, ti_bytes))
    align = int(r.alignment)
    pad = b"\0" * ((-meta_len) % align)
    data_start = int(r.data_offset)
    data = memoryview(mm)[data_start:] if r.tensors else b""

    def chunks():
        yield head
        yield from kv_bytes
        yield from ti_bytes
        if r.tensors:
            yield pad
            step = 1 << 24
            for i in range(0, len(data), step):
                yield data[i:i + step]

    _atomic_write(dst, chunks())


def write_sidecar(dst: str | os.PathLike, kvs, src: str | os.PathLike | None = None) -> None:
    """A metadata-only GGUF: general.type = triattention-calibration + the triattention.* keys."""
    dst = Path(dst)
    _check_output(Path(src) if src else None, dst)
    body = [encode_kv("general.type", T_STR, SIDECAR_TYPE)] + [encode_kv(k, t, v) for k, t, v in kvs]
    head = b"GGUF" + struct.pack("<IQQ", 3, 0, len(body))
    _atomic_write(dst, [head, *body])


# ---- fingerprint (docs/triattention-engine.md) ------------------------------------------------------

_FNV_OFFSET, _FNV_PRIME, _M64 = 0xCBF29CE484222325, 0x100000001B3, (1 << 64) - 1


def _fnv1a(h: int, data: bytes) -> int:
    for b in data:
        h = ((h ^ b) * _FNV_PRIME) & _M64
    return h


def model_fingerprint(path_or_reader) -> str | None:
    """The engine's model fingerprint computed from the file; None for a file without tensors."""
    r = path_or_reader if not isinstance(path_or_reader, (str, os.PathLike)) else _read_gguf(Path(path_or_reader))
    if not r.tensors:
        return None
    h = _FNV_OFFSET
    for t in r.tensors:
        dims = [int(d) for d in t.shape]
        rec = t.name.encode("utf-8") + b"\0" + struct.pack("<I", len(dims))
        rec += b"".join(struct.pack("<Q", d) for d in dims) + struct.pack("<I", int(t.tensor_type))
        h = _fnv1a(h, rec)
    by_name = {t.name: t for t in r.tensors}
    for name in ("blk.0.attn_q.weight", "blk.0.attn_k.weight"):
        t = by_name.get(name)
        if t is not None:
            start = int(t.data_offset)  # the reader's offsets are absolute
            h = _fnv1a(h, bytes(r.data[start:start + min(4096, int(t.n_bytes))]))
    return f"fnv1a64:{h:016x}"


# ---- statistics ------------------------------------------------------------------------------------

def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="tok", unit_scale=True, dynamic_ncols=True, file=sys.stderr,
                smoothing=0.1)


def collect_stats(llm, tokens, window: int = 1024, bos: list[int] | None = None, progress: bool = True) -> dict:
    """Feeds tokens through llm in windows of `window` tokens (each one a fresh context, starting with
    `bos`), accumulating the engine's query statistics; returns calib_get()."""
    tokens = np.asarray(tokens, dtype=np.int32)
    bos = list(bos or [])
    step = window - len(bos)
    if step <= 0:
        raise TriattnError(ERR_INVALID_ARG, f"window must be > {len(bos)}, got {window}")
    bar = _progress(int(tokens.size), "calibrating", progress)
    llm.calib_begin()
    try:
        for start in range(0, tokens.size, step):
            chunk = tokens[start:start + step]
            llm.reset()
            llm.decode(np.concatenate([np.asarray(bos, dtype=np.int32), chunk]) if bos else chunk)
            if bar is not None:
                bar.update(int(chunk.size))
    finally:
        llm.calib_end()
        if bar is not None:
            bar.close()
    return llm.calib_get()


def read_text(path: str | os.PathLike) -> str:
    p = Path(path)
    if not p.is_file():
        raise TriattnError(ERR_IO, f"{p}: no such file")
    try:
        data = p.read_bytes()
    except OSError as e:
        raise TriattnError(ERR_IO, f"{p}: cannot read ({e.strerror})") from None
    if b"\0" in data[:65536]:
        raise TriattnError(ERR_FORMAT, f"{p}: looks binary, not text")
    return data.decode("utf-8", "replace")


def text_tokens(llm, text: str, n_tokens: int, what: str) -> list[int]:
    """The first n_tokens tokens of text (no BOS); an error naming `what` when there are fewer."""
    # Tokenize a prefix that is surely long enough (< 1 char per token never happens in practice).
    toks: list[int] = []
    for n_chars in (n_tokens * 8, len(text)):
        toks = llm.tokenize(text[:n_chars], add_bos=False)
        if len(toks) >= n_tokens or n_chars >= len(text):
            break
    if len(toks) < n_tokens:
        raise TriattnError(ERR_INVALID_ARG, f"{what}: only {len(toks)} tokens of text, fewer than --tokens "
                           f"{n_tokens}; give more text or a smaller --tokens (>= 32768 is recommended)")
    return toks[:n_tokens]


def self_generate(llm, n_tokens: int, seed: int | None = None, max_reply: int = 768,
                  progress: bool = True) -> str:
    """Text written by the model itself: replies to SELF_PROMPTS (chat template, temperature 0.8),
    rendered as whole conversations, until about n_tokens tokens."""
    rng = np.random.default_rng(seed)
    parts: list[str] = []
    total = 0
    bar = _progress(n_tokens, "generating", progress)
    i = int(rng.integers(len(SELF_PROMPTS)))
    try:
        while total < n_tokens:
            msgs = [{"role": "user", "content": SELF_PROMPTS[i % len(SELF_PROMPTS)]}]
            i += 1
            prompt = llm.apply_chat_template(msgs)
            reply = llm.generate(prompt, max_tokens=min(max_reply, n_tokens - total + 16), temperature=0.8,
                                 top_p=0.95, top_k=40, min_p=0.05, repeat_penalty=1.1,
                                 seed=int(rng.integers(1 << 31)), add_special=False)
            res = getattr(llm, "last_result", {}) or {}
            n_new = int(res.get("prompt_tokens", 0)) + int(res.get("completion_tokens", 0))
            parts.append(prompt + reply)
            total += n_new
            if bar is not None:
                bar.update(n_new)
    finally:
        if bar is not None:
            bar.close()
    return "\n".join(parts)


def calibrate(model: str | os.PathLike, output: str | os.PathLike, *, text: str | os.PathLike | None = None,
              self_gen: bool = False, n_tokens: int | None = None, sidecar: bool = False, window: int = 1024,
              n_threads: int | None = None, seed: int | None = None, progress: bool = True,
              policy_check: bool = True, check_context: int | None = None) -> dict:
    """Measures the centres of `model` and writes `output`; returns a summary dict."""
    from .llama import Llama

    model, output = Path(model), Path(output)
    if not model.is_file():
        raise TriattnError(ERR_IO, f"{model}: no such file")
    if (text is None) == (not self_gen):
        raise TriattnError(ERR_INVALID_ARG, "give exactly one of --text FILE or --self-generate")
    _check_output(model, output)
    if n_tokens is None:
        n_tokens = DEFAULT_SELF_TOKENS if self_gen else DEFAULT_TEXT_TOKENS
    if n_tokens < 1:
        raise TriattnError(ERR_INVALID_ARG, f"--tokens must be >= 1, got {n_tokens}")
    if window < 16:
        raise TriattnError(ERR_INVALID_ARG, f"--window must be >= 16, got {window}")
    body = read_text(text) if text is not None else None

    t0 = time.perf_counter()
    with Llama(model, n_ctx=max(window, 1024 if self_gen else 0) + 8, n_threads=n_threads, kv_policy="full",
               seed=seed, calibration=None) as llm:
        info = llm.model_info
        if self_gen:
            body = self_generate(llm, n_tokens, seed=seed, progress=progress)
            toks = llm.tokenize(body, add_bos=False, special=True)[:n_tokens]
            source = "self-generated"
        else:
            toks = text_tokens(llm, body, n_tokens, str(text))
            source = Path(text).name
        bos = llm.tokenize("", add_bos=True)[:1]
        t1 = time.perf_counter()
        stats = collect_stats(llm, toks, window=window, bos=bos, progress=progress)
        t_stats = time.perf_counter() - t1
        check_toks = _check_tokens(llm, body, toks, bos, check_context) if policy_check else []
    fp = info["fingerprint"]
    kvs = triattention_kvs(info, stats, source, fp)
    if sidecar:
        write_sidecar(output, kvs, src=model)
    else:
        write_embedded(model, output, kvs)
    check = None
    if check_toks:
        from .policy_check import check_kvs, run_check
        check = run_check(output if not sidecar else model, output if sidecar else None, check_toks,
                          threads=n_threads, progress=progress, context=len(check_toks))
        if check is not None:
            kvs += check_kvs(check)
            if sidecar:
                write_sidecar(output, kvs, src=model)
            else:
                write_embedded(model, output, kvs)
    ab, cr, ci = stats["q_abs_mean"], stats["q_center_re"], stats["q_center_im"]
    conc = np.hypot(cr, ci) / np.maximum(ab, 1e-12)
    return {"output": str(output), "sidecar": sidecar, "source": source, "n_tokens": stats["n_tokens"],
            "text_tokens": len(toks), "seconds": time.perf_counter() - t0,
            "tokens_per_s": len(toks) / max(t_stats, 1e-9), "fingerprint": fp,
            "mean_concentration": float(conc.mean()),
            "policy_check": check}


def _check_tokens(llm, body: str, toks: list[int], bos: list[int], context: int | None) -> list[int]:
    """Tokens for the policy check: BOS + up to `context` (default policy_check.CONTEXT) tokens of the text that
    follows the calibrated ones; none (no check) when fewer than MIN_CONTEXT follow."""
    from .policy_check import CONTEXT, MIN_CONTEXT
    context = context or CONTEXT
    n = len(toks)
    try:
        more = text_tokens(llm, body, n + context, "policy check")[n:]
    except TriattnError:
        more = llm.tokenize(body, add_bos=False)[n:n + context]
    return (bos + more)[:context] if len(more) >= MIN_CONTEXT else []
