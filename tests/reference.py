"""Independent float64 numpy forward pass of llama / qwen2 / qwen3 / gemma3 GGUF models (the test oracle).

Written from the architecture definitions (RMSNorm, RoPE, causal GQA attention, SwiGLU FFN; for Gemma 3:
embeddings scaled by sqrt(n_embd), pre- and post-norms around attention and FFN, q/k norms, GeGLU with
tanh GELU, sliding-window attention with its own RoPE base on five of every six layers), reading
tensors with gguf.GGUFReader and decoding every ggml type with gguf.quants.dequantize. Weights are
dequantized once per instance and cached as float64; all arithmetic is float64.

    ref = Reference("model.gguf")
    logits = ref.logits([1, 2, 3])          # (3, n_vocab) float64, a fresh context
    new = ref.greedy([1, 2, 3], 32)         # 32 argmax tokens, with an incremental KV cache
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import gguf

ARCHS = ("llama", "qwen2", "qwen3", "gemma3")
GEMMA3_SWA_PERIOD = 6          # layer i is global iff (i + 1) % 6 == 0
GEMMA3_SWA_ROPE_BASE = 10000.0  # RoPE base of the sliding-window layers


@dataclass
class HParams:
    arch: str
    n_vocab: int
    n_embd: int
    n_layer: int
    n_ff: int
    n_head: int
    n_head_kv: int
    head_dim: int
    rope_dim: int
    rope_base: float
    eps: float
    n_ctx_train: int
    neox: bool  # RoPE pairs (i, i + d/2) instead of (2i, 2i+1)
    embd_scale: float = 1.0
    n_swa: int = 0          # sliding window of the local layers (0: none)
    attn_scale: float = 0.0  # q.k multiplier; 0 = 1/sqrt(head_dim)

    def window(self, il: int) -> int:
        """Sliding window of layer il (0 = global)."""
        if self.n_swa > 0 and (il + 1) % GEMMA3_SWA_PERIOD != 0:
            return self.n_swa
        return 0


def _field(reader: gguf.GGUFReader, key: str, default=None):
    f = reader.fields.get(key)
    if f is None:
        if default is None:
            raise KeyError(f"GGUF key {key!r} is missing")
        return default
    return f.contents()


class _Cache:
    """Per-layer post-RoPE K and V, (n_head_kv, n_past, head_dim) each."""

    def __init__(self, n_layer: int):
        self.k = [None] * n_layer
        self.v = [None] * n_layer
        self.n_past = 0


class Reference:
    def __init__(self, path):
        self.path = str(path)
        r = gguf.GGUFReader(self.path)
        arch = _field(r, "general.architecture")
        if arch not in ARCHS:
            raise ValueError(f"unsupported architecture {arch!r}")
        self._tensors = {t.name: t for t in r.tensors}
        n_embd = int(_field(r, f"{arch}.embedding_length"))
        n_head = int(_field(r, f"{arch}.attention.head_count"))
        head_dim = int(_field(r, f"{arch}.attention.key_length", n_embd // n_head))
        self.hp = HParams(
            arch=arch,
            n_vocab=int(self._tensors["token_embd.weight"].shape[1]),
            n_embd=n_embd,
            n_layer=int(_field(r, f"{arch}.block_count")),
            n_ff=int(_field(r, f"{arch}.feed_forward_length")),
            n_head=n_head,
            n_head_kv=int(_field(r, f"{arch}.attention.head_count_kv", n_head)),
            head_dim=head_dim,
            rope_dim=int(_field(r, f"{arch}.rope.dimension_count", head_dim)),
            rope_base=float(_field(r, f"{arch}.rope.freq_base", 10000.0)),
            eps=float(_field(r, f"{arch}.attention.layer_norm_rms_epsilon")),
            n_ctx_train=int(_field(r, f"{arch}.context_length")),
            neox=arch in ("qwen2", "qwen3", "gemma3"),
        )
        if arch == "gemma3":
            self.hp.embd_scale = float(np.sqrt(n_embd))
            self.hp.n_swa = int(_field(r, "gemma3.attention.sliding_window", 0))
        self._w: dict[str, np.ndarray] = {}
        self._reader = r
        hp = self.hp
        # Inverse frequencies theta_i = base^(-2i/rope_dim), divided by rope_freqs when present.
        i = np.arange(hp.rope_dim // 2, dtype=np.float64)
        self._inv_freq = hp.rope_base ** (-2.0 * i / hp.rope_dim)
        self._inv_freq_swa = GEMMA3_SWA_ROPE_BASE ** (-2.0 * i / hp.rope_dim)
        if "rope_freqs.weight" in self._tensors:
            self._inv_freq = self._inv_freq / self.w("rope_freqs.weight").astype(np.float64)
        self._out = "output.weight" if "output.weight" in self._tensors else "token_embd.weight"

    # ---- weights

    def has(self, name: str) -> bool:
        return name in self._tensors

    def w(self, name: str) -> np.ndarray:
        """Dequantized tensor (float64) in numpy order: 2-D weights are (out, in)."""
        a = self._w.get(name)
        if a is None:
            t = self._tensors[name]
            a = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float64)
            shape = tuple(int(n) for n in reversed(t.shape))
            a = a.reshape(shape)
            self._w[name] = a
        return a

    # ---- building blocks

    def _rmsnorm(self, x: np.ndarray, w: np.ndarray) -> np.ndarray:
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.hp.eps) * w

    def _linear(self, x: np.ndarray, name: str) -> np.ndarray:
        """x @ W^T for the weight tensor called name; x: (n, in) -> (n, out)."""
        return x @ self.w(name).T

    def _kv_store(self, a: np.ndarray) -> np.ndarray:
        """How K and V are kept in the cache: exactly (a hook for precision emulation in tests)."""
        return a

    def _q_store(self, q: np.ndarray) -> np.ndarray:
        """How Q enters the Q.K product: exactly (precision-emulation hook)."""
        return q

    def _probs_store(self, a: np.ndarray) -> np.ndarray:
        """How the softmax weights enter the product with V: exactly (precision-emulation hook)."""
        return a

    def _gelu(self, g: np.ndarray) -> np.ndarray:
        """GELU in its tanh approximation, exactly (precision-emulation hook)."""
        return 0.5 * g * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (g + 0.044715 * g ** 3)))

    def _rope(self, x: np.ndarray, pos: np.ndarray, inv_freq: np.ndarray | None = None) -> np.ndarray:
        """x: (n_heads, n_tok, head_dim); rotates the first rope_dim dims of each head by pos."""
        d = self.hp.rope_dim
        inv_freq = self._inv_freq if inv_freq is None else inv_freq
        ang = pos[:, None].astype(np.float64) * inv_freq[None, :]  # (n_tok, d/2)
        cos, sin = np.cos(ang), np.sin(ang)
        out = x.copy()
        if self.hp.neox:
            a, b = x[..., : d // 2], x[..., d // 2: d]
            out[..., : d // 2] = a * cos - b * sin
            out[..., d // 2: d] = a * sin + b * cos
        else:
            a, b = x[..., 0:d:2], x[..., 1:d:2]
            out[..., 0:d:2] = a * cos - b * sin
            out[..., 1:d:2] = a * sin + b * cos
        return out

    def _attention(self, il: int, x: np.ndarray, pos: np.ndarray, cache: _Cache) -> np.ndarray:
        hp = self.hp
        n, hd = x.shape[0], hp.head_dim
        p = f"blk.{il}."
        q = self._linear(x, p + "attn_q.weight")
        k = self._linear(x, p + "attn_k.weight")
        v = self._linear(x, p + "attn_v.weight")
        if self.has(p + "attn_q.bias"):
            q = q + self.w(p + "attn_q.bias")
            k = k + self.w(p + "attn_k.bias")
            v = v + self.w(p + "attn_v.bias")
        q = q.reshape(n, hp.n_head, hd).transpose(1, 0, 2)      # (n_head, n, hd)
        k = k.reshape(n, hp.n_head_kv, hd).transpose(1, 0, 2)   # (n_head_kv, n, hd)
        v = v.reshape(n, hp.n_head_kv, hd).transpose(1, 0, 2)
        if self.has(p + "attn_q_norm.weight"):
            q = self._rmsnorm(q, self.w(p + "attn_q_norm.weight"))
            k = self._rmsnorm(k, self.w(p + "attn_k_norm.weight"))
        window = hp.window(il)
        inv_freq = self._inv_freq_swa if window else self._inv_freq
        q = self._rope(q, pos, inv_freq)
        k = self._kv_store(self._rope(k, pos, inv_freq))
        v = self._kv_store(v)
        if cache.k[il] is not None:
            k = np.concatenate([cache.k[il], k], axis=1)
            v = np.concatenate([cache.v[il], v], axis=1)
        cache.k[il], cache.v[il] = k, v
        n_kv = k.shape[1]
        group = hp.n_head // hp.n_head_kv
        kh = np.repeat(k, group, axis=0)                          # (n_head, n_kv, hd)
        vh = np.repeat(v, group, axis=0)
        scale = hp.attn_scale or 1.0 / np.sqrt(hd)
        s = self._q_store(q * scale) @ kh.transpose(0, 2, 1)      # (n_head, n, n_kv)
        kv_pos = np.arange(n_kv)
        seen = kv_pos[None, None, :] <= pos[None, :, None]
        if window:
            seen &= kv_pos[None, None, :] > pos[None, :, None] - window
        s = np.where(seen, s, -np.inf)
        s = s - s.max(axis=-1, keepdims=True)
        a = np.exp(s)
        a /= a.sum(axis=-1, keepdims=True)
        o = (self._probs_store(a) @ vh).transpose(1, 0, 2).reshape(n, hp.n_head * hd)
        return self._linear(o, p + "attn_output.weight")

    def _ffn(self, il: int, x: np.ndarray) -> np.ndarray:
        p = f"blk.{il}."
        g = self._linear(x, p + "ffn_gate.weight")
        u = self._linear(x, p + "ffn_up.weight")
        if self.hp.arch == "gemma3":  # GeGLU, GELU in its tanh approximation
            act = self._gelu(g)
        else:                          # SwiGLU
            act = g / (1.0 + np.exp(-g))
        return self._linear(act * u, p + "ffn_down.weight")

    def _post(self, il: int, name: str, y: np.ndarray) -> np.ndarray:
        """Gemma 3's norm of a block's output before the residual add (identity for other archs)."""
        full = f"blk.{il}.{name}.weight"
        return self._rmsnorm(y, self.w(full)) if self.has(full) else y

    def _forward(self, tokens, cache: _Cache) -> np.ndarray:
        """Appends tokens after cache.n_past; returns their logits (n, n_vocab)."""
        return self._linear(self._hidden(tokens, cache), self._out)

    def _hidden(self, tokens, cache: _Cache) -> np.ndarray:
        """Appends tokens after cache.n_past; returns their final normed hidden states (n, n_embd)."""
        hp = self.hp
        tokens = np.asarray(tokens, dtype=np.int64)
        if tokens.ndim != 1 or len(tokens) == 0:
            raise ValueError("tokens must be a non-empty 1-D sequence")
        if tokens.min() < 0 or tokens.max() >= hp.n_vocab:
            raise ValueError("token id out of range")
        pos = np.arange(cache.n_past, cache.n_past + len(tokens))
        x = self.w("token_embd.weight")[tokens] * hp.embd_scale  # (n, n_embd)
        for il in range(hp.n_layer):
            p = f"blk.{il}."
            a = self._attention(il, self._rmsnorm(x, self.w(p + "attn_norm.weight")), pos, cache)
            x = x + self._post(il, "post_attention_norm", a)
            f = self._ffn(il, self._rmsnorm(x, self.w(p + "ffn_norm.weight")))
            x = x + self._post(il, "post_ffw_norm", f)
        cache.n_past += len(tokens)
        return self._rmsnorm(x, self.w("output_norm.weight"))

    # ---- public

    def hidden(self, tokens) -> np.ndarray:
        """Final normed hidden states (n, n_embd) of tokens from position 0."""
        return self._hidden(tokens, _Cache(self.hp.n_layer))

    def pick_prompt(self, n: int, rng: np.random.Generator, min_margin: float, rel_margin: float = 0.0,
                    max_tries: int = 500) -> list[int]:
        """n random token ids such that at every position the top-1 logit leads the runner-up by at
        least max(min_margin, rel_margin * std of that row's logits), so an engine with small, legitimate
        rounding errors keeps the same top-1 (rounding errors grow with the logits' spread)."""
        cache, out = _Cache(self.hp.n_layer), []
        for _ in range(n):
            for _ in range(max_tries):
                t = int(rng.integers(self.hp.n_vocab))
                trial = _Cache(self.hp.n_layer)
                trial.k, trial.v, trial.n_past = list(cache.k), list(cache.v), cache.n_past
                row = self._forward([t], trial)[-1]
                if top_margin(row) >= max(min_margin, rel_margin * float(row.std())):
                    break
            else:
                raise RuntimeError(f"no token gives a top-1 margin >= {min_margin} after {out}")
            cache = trial
            out.append(t)
        return out

    def logits(self, tokens) -> np.ndarray:
        """Logits (len(tokens), n_vocab) float64 at every position of a fresh context."""
        return self._forward(tokens, _Cache(self.hp.n_layer))

    def greedy(self, tokens, n_new: int, return_logits: bool = False):
        """Argmax continuation of n_new tokens after the prompt (incremental KV cache).

        With return_logits, also returns the logits (n_new, n_vocab) each new token was chosen from.
        """
        cache = _Cache(self.hp.n_layer)
        last = self._forward(tokens, cache)[-1]
        out, rows = [], []
        for i in range(n_new):
            rows.append(last)
            t = int(np.argmax(last))
            out.append(t)
            if i + 1 < n_new:
                last = self._forward([t], cache)[-1]
        return (out, np.array(rows)) if return_logits else out


def top_margin(row: np.ndarray) -> float:
    """Gap between the largest and second-largest entry of a logits row."""
    two = np.partition(row, -2)[-2:]
    return float(two[1] - two[0])


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of corresponding rows."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def compare_logits(ref: np.ndarray, eng: np.ndarray, *, min_cos: float = 0.999,
                   tie_tol: float = 0.0, cos_excused: np.ndarray | None = None) -> tuple[list[str], int]:
    """Checks engine logits against reference logits, row by row (one row per position).

    A row fails when its cosine is below min_cos, or when the engine's top-1 token is not the
    reference's and the reference ranks it more than tie_tol below its own top-1 (tie_tol = 0: top-1
    must be identical). Rows where cos_excused is True may fall below min_cos (the caller has checked them
    against another yardstick). Returns (failure messages, number of rows accepted as near ties).
    """
    ref, eng = np.asarray(ref, np.float64), np.asarray(eng, np.float64)
    if ref.shape != eng.shape:
        return [f"shape {eng.shape} != reference {ref.shape}"], 0
    if not np.isfinite(eng).all():
        return [f"non-finite engine logits at rows {np.where(~np.isfinite(eng).all(1))[0].tolist()}"], 0
    bad, ties = [], 0
    cos = cosine_rows(ref, eng)
    for i in range(len(ref)):
        rt, et = int(ref[i].argmax()), int(eng[i].argmax())
        gap = ref[i, rt] - ref[i, et]
        if cos[i] < min_cos and not (cos_excused is not None and cos_excused[i]):
            bad.append(f"pos {i}: cosine {cos[i]:.6f} < {min_cos}")
        if rt != et:
            if gap > tie_tol:
                bad.append(f"pos {i}: top-1 {et} (ref logit {ref[i, et]:.3f}) != ref top-1 {rt} "
                           f"({ref[i, rt]:.3f}), ref margin {top_margin(ref[i]):.3f}")
            else:
                ties += 1
    return bad, ties


class Q8Emulation(Reference):
    """The reference with a ggml-style engine's rounding: activations quantized to 8 bits per block
    (32, or 256 for K-quant weights) before quantized matmuls, f16 activations for F16/BF16 weights,
    float32 products, K/V stored as f16. Used to check that test tolerances are attainable, and as the
    error yardstick for the real model."""

    def __init__(self, path):
        self._w32: dict[str, np.ndarray] = {}
        super().__init__(path)

    def _linear(self, x: np.ndarray, name: str) -> np.ndarray:
        tt = self._tensors[name].tensor_type.name
        if tt in ("F16", "BF16"):
            x = x.astype(np.float16)
        elif tt != "F32":
            bs = 256 if tt.endswith("_K") else 32
            b = x.reshape(x.shape[0], -1, bs)
            d = (np.abs(b).max(-1, keepdims=True) / 127.0).astype(np.float16).astype(np.float64)
            q = np.round(np.divide(b, d, out=np.zeros_like(b), where=d > 0))
            x = (q * d).reshape(x.shape)
        w32 = self._w32.get(name)
        if w32 is None:
            w32 = self._w32[name] = self.w(name).astype(np.float32)
        return (x.astype(np.float32) @ w32.T).astype(np.float64)

    def _kv_store(self, a: np.ndarray) -> np.ndarray:
        return a.astype(np.float16).astype(np.float64)
