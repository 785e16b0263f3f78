"""pytriattn.Llama: a llama-cpp-python-shaped front end over one libtriattn model + session."""
from __future__ import annotations

import json
import os
import random
import sys
import time
import uuid
from pathlib import Path
from typing import Iterator, Sequence

from . import _lib, _logprobs, _tools
from ._errors import ERR_INVALID_ARG, ERR_OOM, ERR_UNSUPPORTED, TriattnError

_SEED_RANDOM = 0xFFFFFFFFFFFFFFFF
_FINISH = {0: None, 1: "stop", 2: "length", 3: "stop", 4: "stop", 5: "length"}
_STOP_NAMES = {0: "none", 1: "eog", 2: "length", 3: "stop_string", 4: "callback", 5: "context"}
_log_callback = None  # keeps the cffi callback alive (process-wide, like the C setting)


def _int_arg(name: str, value, lo: int | None = None, hi: int = 2**31 - 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int,)) and not hasattr(value, "__index__"):
        raise TriattnError(ERR_INVALID_ARG, f"{name} must be an integer, got {value!r}")
    value = int(value)
    if (lo is not None and value < lo) or value > hi:
        bound = f">= {lo}" if hi == 2**31 - 1 else f"in [{lo}, {hi}]"
        raise TriattnError(ERR_INVALID_ARG, f"{name} must be {bound}, got {value}")
    return value


def _bytes_arg(lib, ffi, name: str, value) -> int:
    """A byte count: an int, or a string with a unit ("24GiB", "512M") parsed by the library."""
    if value is None:
        return 0
    if isinstance(value, str):
        out = ffi.new("uint64_t *")
        if not lib.triattn_parse_bytes(value.encode(), out):
            raise TriattnError(ERR_INVALID_ARG, f"{name} must be a byte count such as 24GiB or 512M, got {value!r}")
        return int(out[0])
    return _int_arg(name, value, 0, 2**64 - 1)


def _float_arg(name: str, value) -> float:
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise TriattnError(ERR_INVALID_ARG, f"{name} must be a number, got {value!r}") from None
    if f != f:
        raise TriattnError(ERR_INVALID_ARG, f"{name} must not be NaN")
    return f


def _logit_bias_arg(bias) -> list[tuple[int, float]]:
    """{token id (int or decimal string, as in the OpenAI API): bias} as (id, bias) pairs; ids and values are
    checked by the library (in range, not NaN or +inf)."""
    if bias is None:
        return []
    if not isinstance(bias, dict):
        raise TriattnError(ERR_INVALID_ARG, f"logit_bias must be a dict of token id -> bias, got {bias!r}")
    pairs = []
    for k, v in bias.items():
        try:
            tok = int(k) if isinstance(k, str) else _int_arg("logit_bias token id", k, -(2**31))
        except ValueError:
            raise TriattnError(ERR_INVALID_ARG, f"logit_bias keys must be token ids, got {k!r}") from None
        try:
            pairs.append((tok, float(v)))
        except (TypeError, ValueError):
            raise TriattnError(ERR_INVALID_ARG, f"logit_bias[{k!r}] must be a number, got {v!r}") from None
    return pairs


def _seed_arg(seed) -> int:
    if seed is None or seed == -1:
        return _SEED_RANDOM
    return _int_arg("seed", seed, 0, _SEED_RANDOM)


def _set_verbose_logging(verbose: bool) -> None:
    global _log_callback
    ffi, lib = _lib.load()
    if not verbose:
        return
    if _log_callback is None:
        names = {0: "debug", 1: "info", 2: "warn", 3: "error"}

        @ffi.callback("triattn_log_fn")
        def _cb(level, message, user_data):
            try:
                text = ffi.string(message).decode("utf-8", "replace")
                print(f"triattn {names.get(int(level), level)}: {text}", file=sys.stderr, flush=True)
            except Exception:  # never let an exception cross the C boundary
                pass

        _log_callback = _cb
    lib.triattn_log_set(_log_callback, ffi.NULL, lib.TRIATTN_LOG_INFO)


class Llama:
    """One GGUF model and one inference session (KV cache, sampler).

    Defaults differ from llama-cpp-python on purpose: ``n_ctx=0`` uses the model's training context
    (not 512) and ``max_tokens=512`` (not 16). ``generate``/``create_completion`` start from an empty
    context on every call; the chat methods render the whole conversation with the model's chat template.

    KV cache: ``kv_policy=None`` ("auto") uses TriAttention when the model carries calibration centres,
    otherwise ``"full"``; ``kv_budget``/``kv_interval``/``kv_window``/``kv_sink``/``kv_mode`` configure
    eviction; ``calibration`` names a sidecar GGUF with ``triattention.*`` centres. ``kv_recall=R`` (default 0,
    off) keeps every evicted row in a second tier in host memory (8-bit) and, once a prompt has been read,
    brings back up to R of them per (layer, KV head) that its last queries attend to, in place of the cache's
    least attended rows (the cache stays within its budget); ``kv_recall_max_mib`` caps that tier (0 = no cap). With ``model_path=None``
    (the default model) the sidecar shipped in the package is used unless ``calibration`` is given.

    GPU: ``n_gpu_layers=-1`` runs the whole model, its KV cache and the TriAttention rounds on one CUDA device
    when the library was built with CUDA and a device is present (else the CPU, with a warning); ``backend``
    says which ("cpu" or "cuda"). Partial offload is refused. ``gpu_mem_limit`` (bytes, or a string such as
    ``"24GiB"``) caps the device memory of the weights and every session of the model: a session that would not
    fit is refused with a message saying what it needs; ``gpu_memory()`` reports the use.

    Tool calls: ``strict_tool_calls=True`` reads calls only in the chat format's own syntax (``<tool_call>``
    tags, Llama 3's JSON reply), like ``triattn-server --strict-tool-calls``; by default the shapes small
    models write instead (```json fences, bare JSON calls, ``<|python_tag|>``, ``[TOOL_CALLS]``) are calls
    too when they name a declared tool (see ``create_chat_completion``).
    """

    def __init__(self, model_path: str | os.PathLike | None = None, *, n_ctx: int = 0,
                 n_threads: int | None = None, n_batch: int = 512, seed: int | None = None,
                 chat_format: str | None = None, kv_policy: str | None = None, kv_budget: int = 2048,
                 kv_interval: int = 128, kv_window: int | None = None, kv_sink: int = 4,
                 kv_mode: str | None = None, calibration: str | os.PathLike | None = None,
                 use_mmap: bool = True, verbose: bool = False, n_gpu_layers: int = 0,
                 gpu_mem_limit: int | str | None = None, strict_tool_calls: bool = False,
                 kv_recall: int = 0, kv_recall_max_mib: int = 0, embedding: bool = True,
                 logits_all: bool = True):
        # embedding / logits_all: llama-cpp-python's switches; embed() and eval()'s every row are always on here
        del embedding, logits_all
        self._session = None
        self._model = None
        self._gen_id = 0
        self.verbose = bool(verbose)
        # Python-side checks give messages that name the argument; the library checks again.
        n_ctx = _int_arg("n_ctx", n_ctx, 0)
        n_batch = _int_arg("n_batch", n_batch, 1)
        n_threads = 0 if n_threads is None else _int_arg("n_threads", n_threads, 0, 4096)
        kv_budget = _int_arg("kv_budget", kv_budget, 1)
        kv_interval = _int_arg("kv_interval", kv_interval, 1)
        kv_window = -1 if kv_window is None else _int_arg("kv_window", kv_window, -1)
        kv_sink = _int_arg("kv_sink", kv_sink, 0)
        kv_recall = _int_arg("kv_recall", kv_recall, 0)
        kv_recall_max_mib = _int_arg("kv_recall_max_mib", kv_recall_max_mib, 0)
        n_gpu_layers = _int_arg("n_gpu_layers", n_gpu_layers, -1)
        seed = _seed_arg(seed)
        for name, v in (("kv_policy", kv_policy), ("kv_mode", kv_mode), ("chat_format", chat_format)):
            if v is not None and not isinstance(v, str):
                raise TriattnError(ERR_INVALID_ARG, f"{name} must be a string or None, got {v!r}")

        if model_path is None:
            from ._fetch import ensure_default_model
            model_path = ensure_default_model(progress=True)
            if calibration is None:  # the statistics shipped for the default model (see README)
                calibration = default_calibration()
        self.model_path = os.fspath(model_path)
        self.chat_format = chat_format
        self.strict_tool_calls = bool(strict_tool_calls)
        self.n_batch = n_batch

        ffi, lib = _lib.load()
        self._ffi, self._lib = ffi, lib
        _set_verbose_logging(self.verbose)
        err = ffi.new("char[]", 1024)

        mp = ffi.new("struct triattn_model_params *")
        lib.triattn_model_params_init(mp)
        mp.use_mmap = bool(use_mmap)
        mp.n_gpu_layers = n_gpu_layers
        mp.gpu_mem_limit = _bytes_arg(lib, ffi, "gpu_mem_limit", gpu_mem_limit)
        self._keep = []  # C strings that must outlive the calls that take them
        if calibration is not None:
            mp.calibration_path = self._cstr(os.fspath(calibration))
        out = ffi.new("triattn_model **")
        st = lib.triattn_model_load(self._cstr(self.model_path), mp, out, err, len(err))
        _lib.check(st, ffi.string(err).decode("utf-8", "replace") or f"{self.model_path}: cannot load model")
        self._model = ffi.gc(out[0], lib.triattn_model_free)
        if kv_policy == "triattention" and not self.model_info["has_calibration"]:
            self.close()
            raise TriattnError(ERR_INVALID_ARG, f"kv_policy='triattention' needs query centres, and "
                               f"{self.model_path} has none: pass calibration='FILE' with a sidecar written by "
                               f"`pytriattn calibrate MODEL --self-generate --sidecar -o FILE` (or --text TEXT.txt), "
                               f"or load a model calibrated with `pytriattn calibrate`")

        self._sp = dict(n_ctx=n_ctx, n_batch=n_batch, n_threads=n_threads, seed=seed, kv_policy=kv_policy,
                        kv_mode=kv_mode, kv_budget=kv_budget, kv_interval=kv_interval, kv_window=kv_window,
                        kv_sink=kv_sink, kv_recall=kv_recall, kv_recall_max_mib=kv_recall_max_mib)
        try:
            self._session = self._new_session()
        except TriattnError:
            self.close()
            raise
        self.backend = ffi.string(lib.triattn_backend_name(self._session)).decode()
        self._n_vocab = int(lib.triattn_vocab_size(self._model))
        self._n_embd = int(self.model_info["n_embd"])
        self._metadata = None
        # Reused per call: no allocation per token in the generation loop.
        self._text_p = ffi.new("const char **")
        self._len_p = ffi.new("size_t *")
        self._done_p = ffi.new("bool *")

    def _new_session(self, seed: int | None = None):
        """A session over this model with this Llama's session parameters (seed: another seed)."""
        ffi, lib, p = self._ffi, self._lib, self._sp
        sp = ffi.new("struct triattn_session_params *")
        lib.triattn_session_params_init(sp)
        sp.n_ctx, sp.n_batch, sp.n_threads = p["n_ctx"], p["n_batch"], p["n_threads"]
        sp.seed = p["seed"] if seed is None else seed
        if p["kv_policy"] is not None:
            sp.kv_policy = self._cstr(p["kv_policy"])
        if p["kv_mode"] is not None:
            sp.kv_mode = self._cstr(p["kv_mode"])
        sp.kv_budget, sp.kv_interval, sp.kv_window, sp.kv_sink = (p["kv_budget"], p["kv_interval"], p["kv_window"],
                                                                  p["kv_sink"])
        sp.kv_recall, sp.kv_recall_max_mib = p["kv_recall"], p["kv_recall_max_mib"]
        err = ffi.new("char[]", 1024)
        sout = ffi.new("triattn_session **")
        st = lib.triattn_session_create(self._m(), sp, sout, err, len(err))
        if st != 0:
            msg = ffi.string(err).decode("utf-8", "replace") or "cannot create session"
            if st == ERR_OOM:
                msg += (f" (n_ctx={p['n_ctx'] or 'model default'}, kv_policy={p['kv_policy'] or 'auto'}: use a "
                        f"smaller n_ctx)")
            _lib.check(st, msg)
        return ffi.gc(sout[0], lib.triattn_session_free)

    # ---- lifetime -------------------------------------------------------------------------------

    def close(self) -> None:
        """Frees the session and the model. Safe to call more than once."""
        s, self._session = self._session, None
        m, self._model = self._model, None
        if s is not None:
            self._ffi.release(s)   # the session first: it refers to the model
        if m is not None:
            self._ffi.release(m)

    def __enter__(self) -> "Llama":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def _cstr(self, s: str):
        c = self._ffi.new("char[]", s.encode("utf-8"))
        self._keep.append(c)
        return c

    def _s(self):
        if self._session is None:
            raise TriattnError(ERR_INVALID_ARG, "this Llama is closed")
        return self._session

    def _m(self):
        if self._model is None:
            raise TriattnError(ERR_INVALID_ARG, "this Llama is closed")
        return self._model

    def _check_s(self, status: int) -> None:
        if status != 0:
            msg = self._ffi.string(self._lib.triattn_session_last_error(self._session)).decode("utf-8", "replace")
            _lib.check(status, msg or None)

    # ---- model facts ----------------------------------------------------------------------------

    def n_ctx(self) -> int:
        return int(self._lib.triattn_session_n_ctx(self._s()))

    def n_threads(self) -> int:
        """Worker threads each forward step runs on (n_threads=None resolves to the CPU cores, at most 64)."""
        return int(self._lib.triattn_session_n_threads(self._s()))

    def n_vocab(self) -> int:
        return self._n_vocab

    def n_past(self) -> int:
        return int(self._lib.triattn_session_n_past(self._s()))

    def token_bos(self) -> int:
        return int(self._lib.triattn_token_bos(self._m()))

    def token_eos(self) -> int:
        return int(self._lib.triattn_token_eos(self._m()))

    def token_is_eog(self, token: int) -> bool:
        return bool(self._lib.triattn_token_is_eog(self._m(), int(token)))

    @property
    def model_info(self) -> dict:
        ffi = self._ffi
        info = ffi.new("struct triattn_model_info *")
        self._lib.triattn_model_get_info(self._m(), info)
        out = {}
        for name, _ in ffi.typeof("struct triattn_model_info").fields:
            v = getattr(info, name)
            out[name] = ffi.string(v).decode("utf-8", "replace") if isinstance(v, ffi.CData) else v
        return out

    @property
    def metadata(self) -> dict[str, str]:
        """GGUF metadata as text (arrays are summarised), in file order."""
        if self._metadata is None:
            ffi, lib, m = self._ffi, self._lib, self._m()
            md = {}
            cap = 4096
            buf = ffi.new("char[]", cap)
            n = ffi.new("size_t *")
            for i in range(int(lib.triattn_model_meta_count(m))):
                key = lib.triattn_model_meta_key(m, i)
                if key == ffi.NULL:
                    continue
                _lib.check(lib.triattn_model_meta_value(m, i, buf, cap, n))
                if n[0] >= cap:
                    cap = n[0] + 1
                    buf = ffi.new("char[]", cap)
                    _lib.check(lib.triattn_model_meta_value(m, i, buf, cap, n))
                md[ffi.string(key).decode("utf-8", "replace")] = ffi.string(buf, n[0]).decode("utf-8", "replace")
            self._metadata = md
        return self._metadata

    # ---- tokens ---------------------------------------------------------------------------------

    def tokenize(self, text: str | bytes, add_bos: bool = True, special: bool = False) -> list[int]:
        """Text → token ids. add_bos adds BOS when the model asks for one; special parses
        special-token text such as "<|im_start|>"."""
        ffi, lib, m = self._ffi, self._lib, self._m()
        data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        n = ffi.new("int32_t *")
        cap = len(data) + 8
        for _ in range(2):
            buf = ffi.new("triattn_token[]", cap)
            _lib.check(lib.triattn_tokenize(m, data, len(data), bool(add_bos), bool(special), buf, cap, n))
            if n[0] <= cap:
                return list(ffi.unpack(buf, n[0]))
            cap = n[0]
        raise TriattnError(ERR_INVALID_ARG, "tokenize: token count changed between calls")

    def detokenize(self, tokens: Sequence[int], special: bool = False) -> bytes:
        """Token ids → UTF-8 bytes (as llama-cpp-python; `.decode()` for text)."""
        ffi, lib, m = self._ffi, self._lib, self._m()
        toks = [int(t) for t in tokens]
        for t in toks:
            if not 0 <= t < self._n_vocab:
                raise TriattnError(ERR_INVALID_ARG, f"token id {t} is out of range [0, {self._n_vocab})")
        arr = ffi.new("triattn_token[]", toks) if toks else ffi.new("triattn_token[]", 1)
        n = ffi.new("int32_t *")
        cap = 8 * len(toks) + 16
        for _ in range(2):
            buf = ffi.new("char[]", cap)
            _lib.check(lib.triattn_detokenize(m, arr, len(toks), bool(special), buf, cap, n))
            if n[0] < cap:
                return ffi.unpack(buf, n[0])
            cap = n[0] + 1
        raise TriattnError(ERR_INVALID_ARG, "detokenize: length changed between calls")

    def token_to_piece(self, token: int, special: bool = False) -> bytes:
        ffi = self._ffi
        buf = ffi.new("char[]", 256)
        n = ffi.new("int32_t *")
        _lib.check(self._lib.triattn_token_to_piece(self._m(), int(token), bool(special), buf, 256, n))
        if n[0] > 256:
            buf = ffi.new("char[]", n[0])
            _lib.check(self._lib.triattn_token_to_piece(self._m(), int(token), bool(special), buf, n[0], n))
        return ffi.unpack(buf, n[0])

    # ---- low level ------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forgets every token (empty KV cache, position 0)."""
        self._gen_id += 1
        self._lib.triattn_session_reset(self._s())

    def eval(self, tokens: Sequence[int]):
        """Decodes tokens after the current state; returns float32 logits of shape (len(tokens), n_vocab)."""
        import numpy as np

        ffi, lib, s = self._ffi, self._lib, self._s()
        self._gen_id += 1
        toks = np.ascontiguousarray(np.asarray(tokens, dtype=np.int64).reshape(-1))
        if toks.size and (toks.min() < 0 or toks.max() >= self._n_vocab):
            raise TriattnError(ERR_INVALID_ARG, f"token ids must be in [0, {self._n_vocab})")
        toks = toks.astype(np.int32)
        out = np.empty((toks.size, self._n_vocab), dtype=np.float32)
        nbytes = self._n_vocab * 4
        for start in range(0, toks.size, self.n_batch):
            chunk = toks[start:start + self.n_batch]
            self._check_s(lib.triattn_session_decode(s, ffi.from_buffer("triattn_token[]", chunk), chunk.size, True))
            for i in range(chunk.size):
                p = lib.triattn_session_logits(s, i)
                if p == ffi.NULL:
                    raise TriattnError(ERR_INVALID_ARG, f"no logits for position {start + i}")
                out[start + i] = np.frombuffer(ffi.buffer(p, nbytes), dtype=np.float32)
        return out

    def last_logits(self):
        """float32 logits (n_vocab,) of the last token of the last decode()/eval() call."""
        import numpy as np

        p = self._lib.triattn_session_logits(self._s(), -1)
        if p == self._ffi.NULL:
            raise TriattnError(ERR_INVALID_ARG, "no logits: decode tokens first")
        return np.frombuffer(self._ffi.buffer(p, self._n_vocab * 4), dtype=np.float32).copy()

    _POOLING = {"mean": 0, "last": 1, "none": 2}

    def _embed_inputs(self, input) -> tuple[list[list[int]], bool]:
        """The token lists of an embedding input, and whether it was one item (str or one list of ids)."""
        if isinstance(input, (str, bytes)):
            return [self.tokenize(input)], True
        items = list(input)
        if items and all(isinstance(t, int) for t in items):
            return [items], True
        if not items:
            raise TriattnError(ERR_INVALID_ARG, "embed: input is empty")
        out = []
        for i, x in enumerate(items):
            if isinstance(x, (str, bytes)):
                out.append(self.tokenize(x))
            elif isinstance(x, (list, tuple)) and all(isinstance(t, int) for t in x):
                out.append(list(x))
            else:
                raise TriattnError(ERR_INVALID_ARG, f"embed: input[{i}] is not a string or a list of token ids")
        return out, False

    def embed(self, input, *, pooling: str = "mean", normalize: bool = True, truncate: bool = False):
        """Embeddings of text or token ids: the model's final normalised hidden states (the input of its output
        matrix), pooled: ``"mean"`` over the tokens, ``"last"`` token, or ``"none"`` (a vector per token); unit
        length when ``normalize``. A string or one list of ids gives one result, a list of them a list of results.
        Text gets the model's BOS. Inputs longer than n_ctx are refused unless ``truncate`` keeps their first n_ctx
        tokens. The session forgets its tokens (as ``reset``). Runs on the CPU."""
        lists, single = self._embed_inputs(input)
        results = [self._embed_tokens(t, pooling, normalize, truncate) for t in lists]
        return results[0] if single else results

    def _embed_tokens(self, toks: list[int], pooling: str, normalize: bool, truncate: bool):
        if pooling not in self._POOLING:
            raise TriattnError(ERR_INVALID_ARG, f"embed: pooling must be one of {sorted(self._POOLING)}, "
                               f"got {pooling!r}")
        ffi, lib, s = self._ffi, self._lib, self._s()
        self._gen_id += 1
        if truncate:
            toks = toks[:self.n_ctx()]
        n_embd = self._n_embd
        n_vec = len(toks) if pooling == "none" else 1
        arr = ffi.new("triattn_token[]", toks) if toks else ffi.NULL
        out = ffi.new("float[]", max(n_vec, 1) * n_embd)
        self._check_s(lib.triattn_session_embed(s, arr, len(toks), self._POOLING[pooling], bool(normalize), out,
                                                len(out)))
        flat = ffi.unpack(out, n_vec * n_embd)
        if pooling != "none":
            return flat
        return [flat[i * n_embd:(i + 1) * n_embd] for i in range(n_vec)]

    def create_embedding(self, input, model: str | None = None, *, pooling: str = "mean", normalize: bool = True):
        """OpenAI-shaped embeddings (``{"object": "list", "data": [{"object": "embedding", "embedding": [...],
        "index": i}], "model", "usage"}``) of a string, a list of strings, or token ids; see ``embed``."""
        lists, _ = self._embed_inputs(input)
        data = [{"object": "embedding", "embedding": self._embed_tokens(t, pooling, normalize, False), "index": i}
                for i, t in enumerate(lists)]
        n = sum(len(t) for t in lists)
        return {"object": "list", "data": data, "model": model or self.model_path,
                "usage": {"prompt_tokens": n, "total_tokens": n}}

    def gpu_memory(self) -> dict:
        """Device memory of the model on the GPU: {"used": bytes of weights and live sessions, "limit": bytes or 0};
        both 0 on the CPU."""
        used = self._ffi.new("uint64_t *")
        limit = self._ffi.new("uint64_t *")
        self._lib.triattn_model_gpu_memory(self._model, used, limit)
        return {"used": int(used[0]), "limit": int(limit[0])}

    def kv_stats(self) -> dict:
        """Live slots, KV bytes, compressions and evicted tokens of the session's cache."""
        ffi = self._ffi
        st = ffi.new("struct triattn_kv_stats *")
        self._lib.triattn_session_kv_stats(self._s(), st)
        return {
            "n_past": int(st.n_past), "capacity": int(st.capacity),
            "live_min": int(st.live_min), "live_max": int(st.live_max),
            "kv_bytes": int(st.kv_bytes), "kv_bytes_live": int(st.kv_bytes_live),
            "n_compressions": int(st.n_compressions), "n_evicted": int(st.n_evicted),
            "score_ms": float(st.score_ms), "policy": ffi.string(st.policy).decode(),
            "t2_rows": int(st.t2_rows), "t2_bytes": int(st.t2_bytes), "t2_dropped": int(st.t2_dropped),
            "n_recalls": int(st.n_recalls), "n_recalled": int(st.n_recalled), "recall_ms": float(st.recall_ms),
        }

    def kv_recall(self) -> None:
        """Recalls from the second tier now, with the queries of the last tokens decoded (the library does this
        by itself when a prompt has been read); needs ``kv_recall > 0``."""
        self._check_s(self._lib.triattn_session_kv_recall(self._s()))

    def kv_positions(self):
        """Original (absolute) positions held by every (layer, KV head) of the cache: int32 array
        (n_layer, n_head_kv, max_live), slot order (increasing), padded with -1."""
        import numpy as np

        ffi, lib, s = self._ffi, self._lib, self._s()
        info = self.model_info
        n_layer, n_kv = info["n_layer"], info["n_head_kv"]
        cap = max(1, self.kv_stats()["live_max"])
        buf = np.empty(cap, dtype=np.int32)
        n = ffi.new("int32_t *")
        rows = []
        for il in range(n_layer):
            for h in range(n_kv):
                for _ in range(2):
                    self._check_s(lib.triattn_session_kv_positions(s, il, h, ffi.from_buffer("int32_t[]", buf),
                                                                   buf.size, n))
                    if n[0] <= buf.size:
                        break
                    buf = np.empty(n[0], dtype=np.int32)
                rows.append(buf[:n[0]].copy())
        width = max((r.size for r in rows), default=0)
        out = np.full((n_layer, n_kv, width), -1, dtype=np.int32)
        for i, r in enumerate(rows):
            out[i // n_kv, i % n_kv, :r.size] = r
        return out

    def kv_scores(self) -> dict:
        """The last compression round of the `triattention` policy, per (layer, KV head) and slot live when it
        ran (slot order): dict of arrays shaped (n_layer, n_head_kv, n_max) — "position" (int32, -1 = padding),
        "raw" (max over the KV head's query heads of the §3 score), "agg" (the ranking value: z-scored, GQA
        max, layer aggregate), both NaN for protected slots and padding, "kept" (bool). Empty (n_max 0)
        before the first round."""
        import numpy as np

        ffi, lib, s = self._ffi, self._lib, self._s()
        info = self.model_info
        L, Hkv = info["n_layer"], info["n_head_kv"]
        n = ffi.new("int32_t *")
        counts = np.zeros((L, Hkv), dtype=np.int64)
        for il in range(L):
            for h in range(Hkv):
                self._check_s(lib.triattn_session_kv_scores(s, il, h, ffi.NULL, ffi.NULL, ffi.NULL, ffi.NULL, 0, n))
                counts[il, h] = n[0]
        w = int(counts.max()) if counts.size else 0
        out = {"position": np.full((L, Hkv, w), -1, dtype=np.int32), "raw": np.full((L, Hkv, w), np.nan, np.float32),
               "agg": np.full((L, Hkv, w), np.nan, np.float32), "kept": np.zeros((L, Hkv, w), dtype=bool)}
        pos, raw, agg = (np.empty(max(w, 1), dtype=t) for t in (np.int32, np.float32, np.float32))
        kept = np.empty(max(w, 1), dtype=np.uint8)
        for il in range(L):
            for h in range(Hkv):
                self._check_s(lib.triattn_session_kv_scores(
                    s, il, h, ffi.from_buffer("int32_t[]", pos), ffi.from_buffer("float[]", raw),
                    ffi.from_buffer("float[]", agg), ffi.from_buffer("uint8_t[]", kept), pos.size, n))
                m = n[0]
                out["position"][il, h, :m] = pos[:m]
                out["raw"][il, h, :m] = raw[:m]
                out["agg"][il, h, :m] = agg[:m]
                out["kept"][il, h, :m] = kept[:m] != 0
        return out

    # ---- calibration ----------------------------------------------------------------------------

    def decode(self, tokens: Sequence[int]) -> None:
        """Appends tokens to the context without copying logits out (the fast path for prefill and
        calibration); chunked by n_batch inside the library."""
        import numpy as np

        toks = np.ascontiguousarray(np.asarray(tokens, dtype=np.int64).reshape(-1))
        if toks.size == 0:
            return
        if toks.min() < 0 or toks.max() >= self._n_vocab:
            raise TriattnError(ERR_INVALID_ARG, f"token ids must be in [0, {self._n_vocab})")
        toks = toks.astype(np.int32)
        self._gen_id += 1
        self._check_s(self._lib.triattn_session_decode(self._s(), self._ffi.from_buffer("triattn_token[]", toks),
                                                       toks.size, False))

    def calib_begin(self) -> None:
        """Starts (or restarts from zero) accumulating pre-RoPE query statistics over every token decoded
        afterwards. reset() does not clear them."""
        self._check_s(self._lib.triattn_session_calib_begin(self._s()))

    def calib_end(self) -> None:
        """Stops accumulating; calib_get() still works."""
        self._lib.triattn_session_calib_end(self._s())

    def calib_get(self) -> dict:
        """Statistics so far: q_center_re, q_center_im, q_abs_mean as float32 arrays (n_layer, n_head,
        freq_count) (flattened in C order = the triattention.* GGUF layout) and n_tokens."""
        import numpy as np

        info = self.model_info
        shape = (info["n_layer"], info["n_head"], info["freq_count"])
        n = shape[0] * shape[1] * shape[2]
        arrs = [np.empty(shape, dtype=np.float32) for _ in range(3)]
        nt = self._ffi.new("uint64_t *")
        fb = [self._ffi.from_buffer("float[]", a) for a in arrs]
        self._check_s(self._lib.triattn_session_calib_get(self._s(), fb[0], fb[1], fb[2], n, nt))
        return {"q_center_re": arrs[0], "q_center_im": arrs[1], "q_abs_mean": arrs[2], "n_tokens": int(nt[0])}

    # ---- generation -----------------------------------------------------------------------------

    def _gen_params(self, max_tokens, temperature, top_p, top_k, min_p, repeat_penalty, stop, seed,
                    frequency_penalty, presence_penalty, ignore_eos, add_special, json_schema=None,
                    logit_bias=None, logprobs=0):
        ffi, lib = self._ffi, self._lib
        gp = ffi.new("struct triattn_generate_params *")
        lib.triattn_generate_params_init(gp)
        gp.max_tokens = -1 if max_tokens is None or max_tokens < 0 else _int_arg("max_tokens", max_tokens, 0)
        sp = gp.sampling
        sp.temperature = _float_arg("temperature", temperature)
        sp.top_p = _float_arg("top_p", top_p)
        sp.top_k = _int_arg("top_k", top_k, -(2**31))
        sp.min_p = _float_arg("min_p", min_p)
        sp.repeat_penalty = _float_arg("repeat_penalty", repeat_penalty)
        sp.frequency_penalty = _float_arg("frequency_penalty", frequency_penalty)
        sp.presence_penalty = _float_arg("presence_penalty", presence_penalty)
        if sp.repeat_penalty <= 0:
            raise TriattnError(ERR_INVALID_ARG, f"repeat_penalty must be > 0, got {repeat_penalty}")
        sp.seed = _seed_arg(seed)
        bias = _logit_bias_arg(logit_bias)
        if bias:
            ids = ffi.new("triattn_token[]", [t for t, _ in bias])
            vals = ffi.new("float[]", [b for _, b in bias])
            sp.logit_bias_tokens, sp.logit_bias, sp.n_logit_bias = ids, vals, len(bias)
        gp.ignore_eos = bool(ignore_eos)
        gp.add_special = bool(add_special)
        gp.logprobs = logprobs
        if isinstance(stop, str):
            stop = [stop]
        stop = [s for s in (stop or []) if s]
        keep = [ffi.new("char[]", s.encode("utf-8")) for s in stop]
        arr = ffi.new("const char *[]", keep) if keep else ffi.NULL
        gp.stop, gp.n_stop = arr, len(keep)
        if json_schema is not None:
            keep.append(ffi.new("char[]", json_schema.encode("utf-8")))
            gp.json_schema = keep[-1]
        if bias:
            keep += [ids, vals]
        return gp, (keep, arr)

    def _stream(self, prompt: str | bytes, gp, keep, result: dict, cached: bool = False,
                lps: list | None = None) -> Iterator[str]:
        """Begins generation now (errors raise here) and returns an iterator over text pieces. cached: the
        prompt is the whole context and the longest reusable prefix of the session's tokens is kept. lps (with
        gp.logprobs > 0) receives each sampled token's _logprobs.Entry as generation goes."""
        ffi, lib, s = self._ffi, self._lib, self._s()
        data = prompt.encode("utf-8") if isinstance(prompt, str) else bytes(prompt)
        if cached:
            self._gen_id += 1
            self._check_s(lib.triattn_generate_begin_cached(s, data, gp))
            result.update(self._reuse_info())
        else:
            self.reset()
            self._check_s(lib.triattn_generate_begin(s, data, gp))
        gen_id = self._gen_id
        del keep  # the library copied the stop strings

        def pieces() -> Iterator[str]:
            text_p, len_p, done_p = self._text_p, self._len_p, self._done_p
            lp = ffi.new("struct triattn_token_logprobs *") if lps is not None else None
            res = ffi.new("struct triattn_generate_result *")
            pending = b""
            released = 0  # characters yielded so far
            n_gen = 0     # tokens generated so far (an end-of-generation token that stops the run is not one)
            while True:
                if self._gen_id != gen_id or self._session is None:
                    raise TriattnError(ERR_INVALID_ARG, "generation was interrupted by another call on this Llama")
                self._check_s(lib.triattn_generate_next(s, text_p, len_p, done_p))
                done = bool(done_p[0])
                if lp is not None:
                    lib.triattn_generate_get_result(s, res)
                    if res.n_generated > n_gen and lib.triattn_generate_last_logprobs(s, lp) == 0:
                        tops = [(int(lp.top_tokens[i]), float(lp.top_logprobs[i])) for i in range(lp.n_top)]
                        lps.append((int(lp.token), float(lp.logprob), tops, released))
                    n_gen = res.n_generated
                if len_p[0]:
                    pending += ffi.unpack(text_p[0], len_p[0])
                    try:
                        text, pending = pending.decode("utf-8"), b""
                    except UnicodeDecodeError:  # the library sends whole characters; be safe anyway
                        text = ""
                    if text:
                        released += len(text)
                        yield text
                if done:
                    break
            if pending:
                yield pending.decode("utf-8", "replace")
            r = ffi.new("struct triattn_generate_result *")
            lib.triattn_generate_get_result(s, r)
            result.update(prompt_tokens=int(r.n_prompt_tokens), completion_tokens=int(r.n_generated),
                          stop_reason=_STOP_NAMES.get(int(r.stop_reason), str(int(r.stop_reason))),
                          finish_reason=_FINISH.get(int(r.stop_reason), "stop"),
                          prompt_ms=float(r.prompt_ms), decode_ms=float(r.decode_ms))

        return pieces()

    def generate(self, prompt: str, max_tokens: int | None = 512, temperature: float = 0.8,
                 top_p: float = 0.95, top_k: int = 40, min_p: float = 0.05, repeat_penalty: float = 1.0,
                 stop: str | Sequence[str] | None = None, seed: int | None = None, stream: bool = False,
                 frequency_penalty: float = 0.0, presence_penalty: float = 0.0, ignore_eos: bool = False,
                 add_special: bool = True, logit_bias: dict | None = None):
        """Completes `prompt` (raw text, from an empty context). Returns the text, or with stream=True an
        iterator of text pieces. temperature <= 0 is greedy; max_tokens=None runs until n_ctx. logit_bias
        ({token id: bias}, as in the OpenAI API) is added to those tokens' logits before sampling (greedy
        included); float("-inf") bans a token."""
        gp, keep = self._gen_params(max_tokens, temperature, top_p, top_k, min_p, repeat_penalty, stop, seed,
                                    frequency_penalty, presence_penalty, ignore_eos, add_special,
                                    logit_bias=logit_bias)
        self.last_result = {}
        it = self._stream(prompt, gp, keep, self.last_result)
        return it if stream else "".join(it)

    def generate_batch(self, prompts: Sequence[str], max_tokens: int | None = 512, temperature: float = 0.8,
                       top_p: float = 0.95, top_k: int = 40, min_p: float = 0.05, repeat_penalty: float = 1.0,
                       stop: str | Sequence[str] | None = None, seed: int | None = None,
                       frequency_penalty: float = 0.0, presence_penalty: float = 0.0, ignore_eos: bool = False,
                       add_special: bool = True, logit_bias: dict | None = None,
                       n_parallel: int | None = None, on_done=None) -> list[str]:
        """Completes every prompt (raw text, each from an empty context) and returns the texts in order.

        Up to ``n_parallel`` prompts (default ``min(len(prompts), 8)``) run at once, each in a session of its own
        over this model with this Llama's n_ctx and KV policy (this Llama's own session is left as it is); they
        decode together, every forward step multiplying each weight matrix once for all of them, new prompts
        prefilled in chunks between those steps, and a session whose prompt has finished takes the next one.
        A start that every prompt shares (a few-shot preamble, a document) of at least 64 tokens is prefilled
        once, and the sessions start from copies of that cache; each prompt then continues from its session's
        cache as far as it can (``triattn_generate_begin_cached``: the same logits as a fresh prefill).
        Prompt k samples with ``seed + k``: it gets the text ``generate(prompts[k], seed=seed + k)`` gets (on
        the CPU bit for bit); ``seed=None`` draws the seed at random. The other arguments are generate()'s, for
        every prompt. ``on_done(k, text)``, when given, is called as prompt k finishes (in finishing order).
        ``last_batch_results`` then holds, per prompt, its token counts (``cached_tokens``: prompt tokens taken from
        a cache) and finish reason. The extra sessions are
        freed before it returns."""
        if isinstance(prompts, (str, bytes)):
            raise TriattnError(ERR_INVALID_ARG, "prompts must be a list of strings (one prompt: use generate())")
        prompts = list(prompts)
        for k, p in enumerate(prompts):
            if not isinstance(p, str):
                raise TriattnError(ERR_INVALID_ARG, f"prompts[{k}] must be a string, got {type(p).__name__}")
        n_par = min(len(prompts), 8) if n_parallel is None else _int_arg("n_parallel", n_parallel, 1, 1024)
        base = random.getrandbits(62) if seed is None else _int_arg("seed", seed, 0, 2**63 - 1)
        self._m()
        ffi, lib = self._ffi, self._lib
        self.last_batch_results = [None] * len(prompts)
        out: list[bytearray] = [bytearray() for _ in prompts]
        n_par = min(n_par, len(prompts))
        sessions = [self._new_session(seed=(base + k) % 2**63) for k in range(n_par)]
        free = list(sessions)
        live: list[tuple[int, object]] = []  # (prompt index, session)
        arr_s = ffi.new("triattn_session *[]", max(1, n_par))
        arr_t = ffi.new("const char *[]", max(1, n_par))
        arr_l = ffi.new("size_t[]", max(1, n_par))
        arr_d = ffi.new("bool[]", max(1, n_par))
        arr_st = ffi.new("enum triattn_status[]", max(1, n_par))
        res = ffi.new("struct triattn_generate_result *")
        nxt = 0

        def fail(k, s, st):
            msg = ffi.string(lib.triattn_session_last_error(s)).decode("utf-8", "replace")
            _lib.check(st, f"prompts[{k}]: {msg}" if msg else f"prompts[{k}]")

        reuse = ffi.new("struct triattn_reuse_info *")
        try:
            start, n_start, toks = self._prefill_shared_start(prompts, sessions, add_special, fail)
            if start is not None:
                sessions.append(start)   # freed with the others
            while True:
                while free and nxt < len(prompts):
                    s = free.pop()
                    if start is not None and lib.triattn_session_reusable(
                            s, ffi.new("triattn_token[]", toks[nxt]), len(toks[nxt])) < n_start:
                        st = lib.triattn_session_copy(s, start)
                        if st != 0:
                            fail(nxt, s, st)
                    gp, keep = self._gen_params(max_tokens, temperature, top_p, top_k, min_p, repeat_penalty, stop,
                                                (base + nxt) % 2**63, frequency_penalty, presence_penalty,
                                                ignore_eos, add_special, logit_bias=logit_bias)
                    st = lib.triattn_generate_begin_cached(s, prompts[nxt].encode("utf-8"), gp)
                    del keep  # the library copied the stop strings
                    if st != 0:
                        fail(nxt, s, st)
                    live.append((nxt, s))
                    nxt += 1
                if not live:
                    break
                for i, (_, s) in enumerate(live):
                    arr_s[i] = s
                st = lib.triattn_generate_next_batch(arr_s, len(live), arr_t, arr_l, arr_d, arr_st)
                if st != 0:
                    fail(live[0][0], live[0][1], st)
                still = []
                for i, (k, s) in enumerate(live):
                    if arr_st[i] != 0:
                        fail(k, s, arr_st[i])
                    if arr_l[i]:
                        out[k] += ffi.unpack(arr_t[i], arr_l[i])
                    if not arr_d[i]:
                        still.append((k, s))
                        continue
                    lib.triattn_generate_get_result(s, res)
                    lib.triattn_generate_get_reuse(s, reuse)
                    self.last_batch_results[k] = dict(
                        prompt_tokens=int(res.n_prompt_tokens), completion_tokens=int(res.n_generated),
                        cached_tokens=int(reuse.n_cached),
                        stop_reason=_STOP_NAMES.get(int(res.stop_reason), str(int(res.stop_reason))),
                        finish_reason=_FINISH.get(int(res.stop_reason), "stop"))
                    free.append(s)
                    if on_done is not None:
                        on_done(k, out[k].decode("utf-8", "replace"))
                live = still
        finally:
            for s in sessions:
                ffi.release(s)
        return [b.decode("utf-8", "replace") for b in out]

    def _prefill_shared_start(self, prompts, sessions, add_special, fail):
        """With several sessions: the start all prompts share, when 64 tokens or more (one token of the shortest
        left to decode), decoded once and copied into every session. With more prompts than sessions it is decoded
        in a session of its own, kept to start the later prompts from when a session's cache can no longer be cut
        back to it (a compressed one). Returns (that session or None, its token count, the prompts' tokens)."""
        if len(sessions) < 2:
            return None, 0, None
        ffi, lib = self._ffi, self._lib
        toks = [self.tokenize(p, add_bos=add_special, special=True) for p in prompts]
        first = toks[0]
        shared = min(len(t) for t in toks) - 1
        for t in toks[1:]:
            k = 0
            while k < shared and t[k] == first[k]:
                k += 1
            shared = k
        if shared < 64:
            return None, 0, None
        keep = self._new_session() if len(prompts) > len(sessions) else None
        src = keep if keep is not None else sessions[0]
        st = lib.triattn_session_decode(src, ffi.new("triattn_token[]", first[:shared]), shared, False)
        if st != 0:
            fail(0, src, st)
        for s in sessions:
            st = lib.triattn_session_copy(s, src) if s is not src else 0
            if st != 0:
                fail(0, s, st)
        return keep, shared, toks

    # ---- OpenAI-shaped API ----------------------------------------------------------------------

    def __call__(self, prompt: str, **kwargs):
        """llm(prompt, ...) is create_completion(prompt, ...), as in llama-cpp-python."""
        return self.create_completion(prompt, **kwargs)

    def create_completion(self, prompt: str, max_tokens: int | None = 512, temperature: float = 0.8,
                          top_p: float = 0.95, top_k: int = 40, min_p: float = 0.05,
                          repeat_penalty: float = 1.0, stop: str | Sequence[str] | None = None,
                          seed: int | None = None, stream: bool = False, frequency_penalty: float = 0.0,
                          presence_penalty: float = 0.0, echo: bool = False, response_format: dict | None = None,
                          logit_bias: dict | None = None, logprobs: int | None = None, **_ignored):
        """OpenAI text_completion dict, or an iterator of chunks with stream=True. response_format constrains
        the output and logit_bias shifts tokens' logits as in create_chat_completion. logprobs=k (0 to 20):
        each generated token's log-probability under the model and its k most likely alternatives, in
        choices[0]["logprobs"] ({"tokens", "token_logprobs", "top_logprobs", "text_offset"})."""
        k = None if logprobs is None else _int_arg("logprobs", logprobs, 0, self._lib.TRIATTN_MAX_TOP_LOGPROBS)
        return self._completion(prompt, "cmpl", max_tokens, temperature, top_p, top_k, min_p, repeat_penalty,
                                stop, seed, stream, frequency_penalty, presence_penalty, echo, chat=False,
                                json_schema=response_format_schema(response_format), logit_bias=logit_bias,
                                top_logprobs=k)

    def create_chat_completion(self, messages: Sequence[dict], max_tokens: int | None = 512,
                               temperature: float = 0.8, top_p: float = 0.95, top_k: int = 40,
                               min_p: float = 0.05, repeat_penalty: float = 1.0,
                               stop: str | Sequence[str] | None = None, seed: int | None = None,
                               stream: bool = False, frequency_penalty: float = 0.0,
                               presence_penalty: float = 0.0, tools: Sequence[dict] | None = None,
                               tool_choice: str | dict | None = None, parallel_tool_calls: bool = True,
                               response_format: dict | None = None, logit_bias: dict | None = None,
                               logprobs: bool = False, top_logprobs: int | None = None, **_ignored):
        """OpenAI chat.completion dict (the prompt rendered with the model's chat template), or an
        iterator of chat.completion.chunk dicts with stream=True.

        tools / tool_choice ("auto", "none", "required" or {"type": "function", "function": {"name": ...}})
        work as in the OpenAI API: the reply's calls come back as message["tool_calls"] (streamed as
        tool-call deltas) with finish_reason "tool_calls"; messages may hold assistant tool_calls and
        role "tool" results. Besides the chat format's own call syntax, calls that small models write in
        other shapes are read for declared tools: a ```json fenced or bare (line-opening) call object or
        array whose arguments satisfy the tool's parameters schema, a Llama 3 {"name", "parameters"} object,
        <|python_tag|> and [TOOL_CALLS] calls; everything else stays content (strict_tool_calls=True turns
        this off).

        response_format (as in llama-cpp-python and OpenAI): {"type": "json_object"} for any JSON object,
        {"type": "json_object", "schema": {...}} or {"type": "json_schema", "json_schema": {"schema": {...}}}
        for output matching a JSON Schema; sampling is constrained so the content is such a document (README,
        "Constrained output"). A tool_choice that forces a call takes precedence over response_format.

        logit_bias ({token id: bias}, ids as ints or decimal strings as in the OpenAI API) is added to those
        tokens' logits before sampling, greedy included (-100 all but bans a token, float("-inf") bans it).

        logprobs=True: each generated token's log-probability under the model (before logit_bias and
        penalties) in choices[0]["logprobs"]["content"], with its top_logprobs (0 to 20) most likely
        alternatives."""
        if top_logprobs is not None and not logprobs:
            raise TriattnError(ERR_INVALID_ARG, "top_logprobs needs logprobs=True")
        k = None
        if logprobs:
            k = 0 if top_logprobs is None else _int_arg("top_logprobs", top_logprobs, 0,
                                                        self._lib.TRIATTN_MAX_TOP_LOGPROBS)
        json_schema = response_format_schema(response_format)
        req = None
        if _tools.wants_tools(messages, tools, tool_choice):
            req = _tools.ToolRequest(self._m(), self.chat_format, tools, tool_choice, parallel_tool_calls,
                                     strict=self.strict_tool_calls)
            prompt = req.prompt(messages)
        else:
            prompt = self.apply_chat_template(messages)
        return self._completion(prompt, "chatcmpl", max_tokens, temperature, top_p, top_k, min_p,
                                repeat_penalty, stop, seed, stream, frequency_penalty, presence_penalty,
                                False, chat=True, tools=req, json_schema=json_schema, logit_bias=logit_bias,
                                top_logprobs=k)

    def _completion(self, prompt, kind, max_tokens, temperature, top_p, top_k, min_p, repeat_penalty,
                    stop, seed, stream, frequency_penalty, presence_penalty, echo, chat, tools=None,
                    json_schema=None, logit_bias=None, top_logprobs=None):
        """top_logprobs: None, no logprobs; k >= 0, every token's log-probability and k alternatives."""
        add_special = not (chat and self._starts_with_bos_text(prompt))
        gp, keep = self._gen_params(max_tokens, temperature, top_p, top_k, min_p, repeat_penalty, stop, seed,
                                    frequency_penalty, presence_penalty, False, add_special, json_schema,
                                    logit_bias, 0 if top_logprobs is None else max(top_logprobs, 1))
        if tools is not None:
            tools.constrain(gp, keep[0])
        result: dict = {}
        self.last_result = result
        lps: list | None = None if top_logprobs is None else []
        pieces = self._stream(prompt, gp, keep, result, cached=self.cache_prompt, lps=lps)
        base = len(prompt) if echo else 0

        def logprobs(entries):
            if lps is None:
                return None
            if chat:
                return _logprobs.chat(self._piece, entries, top_logprobs)
            return _logprobs.completion(self._piece, entries, top_logprobs, base)

        ident = f"{kind}-{uuid.uuid4().hex}"
        created = int(time.time())
        head = {"id": ident, "object": "chat.completion" if chat else "text_completion", "created": created,
                "model": self.model_path}

        def usage():
            p, c = result.get("prompt_tokens", 0), result.get("completion_tokens", 0)
            return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c,
                    "prompt_tokens_details": {"cached_tokens": result.get("cached_tokens", 0)}}

        if stream and tools is not None:
            return self._tool_chunks(tools, pieces, head, result, usage)
        if stream:
            return self._chunks(pieces, head, result, chat, usage, prompt if echo else "",
                                lps if lps is not None else [], logprobs)
        text = (prompt if echo else "") + "".join(pieces)
        if tools is not None:
            message, called = _tools.reply_message(tools, text)
            finish = "tool_calls" if called else result.get("finish_reason")
            choice = {"index": 0, "message": message, "logprobs": logprobs(lps), "finish_reason": finish}
        elif chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": logprobs(lps),
                      "finish_reason": result.get("finish_reason")}
        else:
            choice = {"index": 0, "text": text, "logprobs": logprobs(lps),
                      "finish_reason": result.get("finish_reason")}
        return {**head, "choices": [choice], "usage": usage()}

    def _piece(self, token: int) -> bytes:
        """A token's text as bytes (special tokens empty), as the logprobs objects name tokens."""
        return self.detokenize([token])

    @staticmethod
    def _chunks(pieces, head, result, chat, usage, echo_text, lps, logprobs):
        """Chunks of a stream; each carries the logprobs of the tokens sampled since the previous one."""
        obj = "chat.completion.chunk" if chat else "text_completion"
        seen = 0

        def chunk(delta_or_text, finish, with_logprobs=True):
            nonlocal seen
            lp = logprobs(lps[seen:]) if with_logprobs and (finish is None or len(lps) > seen) else None
            seen = len(lps)
            if chat:
                c = {"index": 0, "delta": delta_or_text, "logprobs": lp, "finish_reason": finish}
            else:
                c = {"index": 0, "text": delta_or_text, "logprobs": lp, "finish_reason": finish}
            return {**head, "object": obj, "choices": [c]}

        if chat:
            yield chunk({"role": "assistant"}, None, False)
        elif echo_text:
            yield chunk(echo_text, None, False)
        for piece in pieces:
            yield chunk({"content": piece} if chat else piece, None)
        last = chunk({} if chat else "", result.get("finish_reason"))
        last["usage"] = usage()
        yield last

    @staticmethod
    def _tool_chunks(tools, pieces, head, result, usage):
        def chunk(delta, finish):
            return {**head, "object": "chat.completion.chunk",
                    "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}

        yield chunk({"role": "assistant"}, None)
        state: dict = {}
        for delta in _tools.reply_deltas(tools, pieces, state):
            yield chunk(delta, None)
        last = chunk({}, "tool_calls" if state.get("tool_calls") else result.get("finish_reason"))
        last["usage"] = usage()
        yield last

    # ---- prefix reuse and saved state ------------------------------------------------------------

    #: create_completion / create_chat_completion continue from the session's cache when the new prompt
    #: starts with the tokens it holds (the previous prompt and reply); False prefills every prompt afresh.
    cache_prompt: bool = True

    _REUSE_KINDS = {0: "fresh", 1: "continue", 2: "rollback", 3: "restart"}

    def _reuse_info(self) -> dict:
        r = self._ffi.new("struct triattn_reuse_info *")
        self._lib.triattn_generate_get_reuse(self._s(), r)
        return {"cached_tokens": int(r.n_cached), "reuse": self._REUSE_KINDS.get(int(r.kind), str(int(r.kind)))}

    def session_tokens(self) -> list[int]:
        """The token ids the session holds (prompt and generated so far, evicted ones included)."""
        ffi, lib, s = self._ffi, self._lib, self._s()
        n = ffi.new("int32_t *")
        self._check_s(lib.triattn_session_tokens(s, ffi.NULL, 0, n))
        buf = ffi.new("triattn_token[]", max(1, n[0]))
        self._check_s(lib.triattn_session_tokens(s, buf, n[0], n))
        return list(buf[0:n[0]])

    def save_state(self, path: str | os.PathLike) -> None:
        """Writes the session (tokens, KV cache, policy state) to path; load_state continues from it exactly."""
        self._check_s(self._lib.triattn_session_save(self._s(), os.fsencode(path)))

    def load_state(self, path: str | os.PathLike) -> None:
        """Replaces the session with one saved by save_state (same model and KV policy). A corrupt, truncated
        or foreign file raises TriattnError and leaves the session as it was."""
        self._gen_id += 1
        self._check_s(self._lib.triattn_session_load(self._s(), os.fsencode(path)))

    def copy_state_from(self, other: "Llama") -> None:
        """Makes this session hold what other's holds (tokens, KV cache, policy state), as save_state followed by
        load_state without a file, so both continue alike from there. Same model and KV policy; otherwise
        TriattnError, and this session stays as it was."""
        if not isinstance(other, Llama):
            raise TypeError(f"copy_state_from takes a Llama, not {type(other).__name__}")
        self._gen_id += 1
        self._check_s(self._lib.triattn_session_copy(self._s(), other._s()))

    # ---- chat templates -------------------------------------------------------------------------

    def apply_chat_template(self, messages: Sequence[dict], add_generation_prompt: bool = True) -> str:
        """Renders messages with chat_format (None: detected from the model's template)."""
        ffi, lib, m = self._ffi, self._lib, self._m()
        msgs = [_message(x) for x in messages]
        if not msgs:
            raise TriattnError(ERR_INVALID_ARG, "messages must not be empty")
        keep = []
        arr = ffi.new("struct triattn_chat_message[]", len(msgs))
        for i, (role, content) in enumerate(msgs):
            r, c = ffi.new("char[]", role.encode()), ffi.new("char[]", content.encode("utf-8"))
            keep += [r, c]
            arr[i].role, arr[i].content = r, c
        fmt = ffi.new("char[]", self.chat_format.encode()) if self.chat_format else ffi.NULL
        n = ffi.new("size_t *")
        cap = sum(len(c) + len(r) for r, c in msgs) * 2 + 1024
        for _ in range(2):
            buf = ffi.new("char[]", cap)
            st = lib.triattn_chat_apply(m, fmt, arr, len(msgs), bool(add_generation_prompt), buf, cap, n)
            if st == ERR_UNSUPPORTED and not self.chat_format:
                rendered = self._jinja_fallback(msgs, add_generation_prompt)
                if rendered is not None:
                    return rendered
            _lib.check(st, None if st == 0 else "chat template: the model's tokenizer.chat_template is not "
                       "recognised and jinja2 is not installed; pass chat_format= (chatml, llama3, llama2, "
                       "mistral, gemma, qwen, deepseek-r1)" if st == ERR_UNSUPPORTED else None)
            if n[0] < cap:
                return ffi.string(buf, n[0]).decode("utf-8", "replace")
            cap = n[0] + 1
        raise TriattnError(ERR_INVALID_ARG, "chat template output changed length between calls")

    def detected_chat_format(self) -> str | None:
        p = self._lib.triattn_chat_detect(self._m())
        return None if p == self._ffi.NULL else self._ffi.string(p).decode()

    def _jinja_fallback(self, msgs, add_generation_prompt):
        tmpl = self.metadata.get("tokenizer.chat_template")
        if not tmpl:
            return None
        try:
            from jinja2.sandbox import ImmutableSandboxedEnvironment
        except ImportError:
            return None
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

        def raise_exception(msg):
            raise TriattnError(ERR_INVALID_ARG, f"chat template: {msg}")

        bos = self.token_to_piece(self.token_bos(), special=True).decode() if self.token_bos() >= 0 else ""
        eos = self.token_to_piece(self.token_eos(), special=True).decode() if self.token_eos() >= 0 else ""
        return env.from_string(tmpl).render(messages=[{"role": r, "content": c} for r, c in msgs],
                                            add_generation_prompt=add_generation_prompt, bos_token=bos,
                                            eos_token=eos, raise_exception=raise_exception)

    def _starts_with_bos_text(self, prompt: str) -> bool:
        bos = self.token_bos()
        if bos < 0:
            return False
        text = self.token_to_piece(bos, special=True)
        return bool(text) and prompt.encode("utf-8").startswith(text)


def default_calibration() -> str | None:
    """The sidecar shipped in the package for the default model, or None when it is not installed."""
    from importlib import resources

    try:
        p = resources.files(__package__) / "data" / DEFAULT_CALIBRATION
    except (ModuleNotFoundError, TypeError):
        return None
    return str(p) if p.is_file() else None


DEFAULT_CALIBRATION = "SmolLM2-135M-Instruct.Q4_1.tri-stats.gguf"


def response_format_schema(response_format) -> str | None:
    """The JSON Schema text that an OpenAI / llama-cpp-python `response_format` asks for, or None (plain text)."""
    if response_format is None:
        return None
    if not isinstance(response_format, dict):
        raise TriattnError(ERR_INVALID_ARG, f"response_format must be a dict, got {type(response_format).__name__}")
    kind = response_format.get("type", "text")
    if kind == "text":
        return None
    if kind == "json_object":
        schema = response_format.get("schema")
        if schema is None:
            return '{"type":"object"}'
    elif kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if schema is None:
            raise TriattnError(ERR_INVALID_ARG, "response_format json_schema needs json_schema.schema")
    else:
        raise TriattnError(ERR_INVALID_ARG, f"response_format type must be text, json_object or json_schema, "
                                            f"got {kind!r}")
    if isinstance(schema, str):
        return schema
    if not isinstance(schema, (dict, bool)):
        raise TriattnError(ERR_INVALID_ARG, "response_format schema must be a JSON object")
    return json.dumps(schema)


def _message(x) -> tuple[str, str]:
    if not isinstance(x, dict) or "role" not in x:
        raise TriattnError(ERR_INVALID_ARG, f"each message must be a dict with 'role' and 'content', got {x!r}")
    content = x.get("content")
    if content is None:
        content = ""
    elif isinstance(content, list):  # OpenAI content parts
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    elif not isinstance(content, str):
        raise TriattnError(ERR_INVALID_ARG, f"message content must be a string, got {type(content).__name__}")
    return str(x["role"]), content
