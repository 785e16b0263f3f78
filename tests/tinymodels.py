"""Tiny random-weight GGUF models (llama / qwen2 / qwen3 / gemma3) for forward-pass tests.

write_tiny_model() writes a complete, loadable GGUF: hyperparameters, a minimal GPT-2 byte-level BPE
tokenizer and random weights quantized to the requested ggml type. Formats that gguf.quants can
quantize go through it; the K-quants (which gguf 0.19 can only dequantize) are written as random
block bytes whose f16 super-block scales are then set so the dequantized weights have the wanted
spread and roughly zero mean. Either way the reference reads the exact weights back with
gguf.quants.dequantize, so no quantizer accuracy is assumed anywhere.
"""
from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import gguf
from gguf import GGMLQuantizationType as QT

ARCHS = ("llama", "qwen2", "qwen3", "gemma3")

# Types gguf.quants.quantize handles (F32/F16 directly, the rest through its block quantizers).
QUANTIZABLE = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1")
# K-quants: byte offsets of the f16 super-block scale d and min scale dmin (None: no dmin).
KQUANT_SCALE_OFFSETS = {
    "Q2_K": (80, 82),
    "Q3_K": (108, None),
    "Q4_K": (0, 2),
    "Q5_K": (0, 2),
    "Q6_K": (208, None),
}
WRITABLE_TYPES = QUANTIZABLE + tuple(KQUANT_SCALE_OFFSETS)

MERGES = [("Ġ", "t"), ("h", "e"), ("i", "n"), ("e", "r"), ("Ġt", "he"), ("a", "n")]
LOGIT_STD = 8.0  # target spread of the output logits, so the top-1 token is well separated


FILE_TYPES = {
    "F32": gguf.LlamaFileType.ALL_F32, "F16": gguf.LlamaFileType.MOSTLY_F16,
    "BF16": gguf.LlamaFileType.MOSTLY_BF16, "Q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    "Q4_0": gguf.LlamaFileType.MOSTLY_Q4_0, "Q4_1": gguf.LlamaFileType.MOSTLY_Q4_1,
    "Q5_0": gguf.LlamaFileType.MOSTLY_Q5_0, "Q5_1": gguf.LlamaFileType.MOSTLY_Q5_1,
    "Q2_K": gguf.LlamaFileType.MOSTLY_Q2_K, "Q3_K": gguf.LlamaFileType.MOSTLY_Q3_K_M,
    "Q4_K": gguf.LlamaFileType.MOSTLY_Q4_K_M, "Q5_K": gguf.LlamaFileType.MOSTLY_Q5_K_M,
    "Q6_K": gguf.LlamaFileType.MOSTLY_Q6_K,
}


def block_size(wtype: str) -> int:
    return gguf.GGML_QUANT_SIZES[QT[wtype]][0]


def bytes_to_unicode() -> list[str]:
    """The 256 GPT-2 byte-level characters, indexed by byte value."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    table = {}
    extra = 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]


def _quantize(w: np.ndarray, wtype: str, rng: np.random.Generator) -> np.ndarray:
    """w: (out, in) float32 -> array for GGUFWriter.add_tensor with raw_dtype=QT[wtype]."""
    if wtype in QUANTIZABLE:
        return gguf.quants.quantize(w.astype(np.float32), QT[wtype])
    return _random_kquant(w.shape, wtype, float(w.std()), rng)


def _random_kquant(shape: tuple[int, int], wtype: str, std: float, rng: np.random.Generator) -> np.ndarray:
    """Random K-quant blocks whose dequantized values have about the given std and zero mean."""
    qt = QT[wtype]
    bs, ts = gguf.GGML_QUANT_SIZES[qt]
    n_out, n_in = shape
    assert n_in % bs == 0, f"{wtype}: row length {n_in} is not a multiple of {bs}"
    n_blocks = n_out * n_in // bs
    blocks = rng.integers(0, 256, size=(n_blocks, ts), dtype=np.uint8)
    d_off, m_off = KQUANT_SCALE_OFFSETS[wtype]

    def set_f16(off: int, vals: np.ndarray) -> None:
        blocks[:, off:off + 2] = vals.astype(np.float16).reshape(-1, 1).view(np.uint8)

    def deq() -> np.ndarray:
        return gguf.quants.dequantize(blocks, qt).astype(np.float64)

    # x = d * a - dmin * b per block: measure the two parts separately, then pick dmin/d and d.
    one, zero = np.ones(n_blocks), np.zeros(n_blocks)
    set_f16(d_off, one)
    if m_off is not None:
        set_f16(m_off, zero)
    a = deq()
    if m_off is not None:
        set_f16(d_off, zero)
        set_f16(m_off, one)
        b = deq()  # = -dmin * m parts
        ratio = -a.mean() / b.mean()
        x = a + ratio * b
    else:
        ratio, x = 0.0, a
    scale = std / x.std()
    jitter = rng.uniform(0.5, 1.5, n_blocks)  # differing per-block scales catch block-indexing bugs
    set_f16(d_off, scale * jitter)
    if m_off is not None:
        set_f16(m_off, scale * ratio * jitter)
    return blocks.reshape(n_out, n_in // bs * ts)


def write_tiny_model(path, arch: str, *, n_embd: int = 256, n_head: int = 4, n_head_kv: int = 2,
                     head_dim: int = 64, n_layer: int = 2, n_ff: int = 512, n_vocab: int = 320,
                     wtype: str = "F32", tied: bool = False, rope_freqs: bool = False,
                     rope_base: float = 10000.0, eps: float = 1e-5, seed: int = 0,
                     sliding_window: int = 8) -> Path:
    """Writes a tiny random model to path and returns it.

    gemma3 models get q/k norms, post-attention and post-FFN norms (stored as the converter does, with
    Gemma's "1 +" folded in) and gemma3.attention.sliding_window = sliding_window; their layers
    i with (i + 1) % 6 != 0 attend over that window (so n_layer >= 6 has a global layer).
    Every 2-D weight is stored as wtype (token_embd included); norms, biases and rope_freqs are F32.
    Row lengths (n_embd, n_ff, n_head*head_dim) must be multiples of wtype's block size.
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}")
    if wtype not in WRITABLE_TYPES:
        raise ValueError(f"cannot write weight type {wtype!r}")
    bs = block_size(wtype)
    for what, n in (("n_embd", n_embd), ("n_ff", n_ff), ("n_head*head_dim", n_head * head_dim)):
        if n % bs:
            raise ValueError(f"{what}={n} is not a multiple of the {wtype} block size {bs}")
    if n_head % n_head_kv:
        raise ValueError("n_head must be a multiple of n_head_kv")
    byte_chars = bytes_to_unicode()
    n_fixed = 256 + len(MERGES) + 1
    if n_vocab < n_fixed:
        raise ValueError(f"n_vocab must be >= {n_fixed}")

    rng = np.random.default_rng(seed)
    path = Path(path)
    w = gguf.GGUFWriter(str(path), arch)

    # ---- hyperparameters
    w.add_name(f"tiny-{arch}-{wtype}")
    w.add_context_length(2048)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(rope_base)
    w.add_layer_norm_rms_eps(eps)
    w.add_vocab_size(n_vocab)
    if arch == "gemma3":
        w.add_sliding_window(sliding_window)
    w.add_file_type(int(FILE_TYPES[wtype]))

    # ---- tokenizer: 256 byte tokens, a few merges, <|endoftext|>, padding
    tokens = list(byte_chars) + [a + b for a, b in MERGES] + ["<|endoftext|>"]
    types = [gguf.TokenType.NORMAL] * (256 + len(MERGES)) + [gguf.TokenType.CONTROL]
    eot = len(tokens) - 1
    for i in range(n_vocab - len(tokens)):
        tokens.append(f"[PAD{i}]")
        types.append(gguf.TokenType.UNUSED)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([int(t) for t in types])
    w.add_token_merges([f"{a} {b}" for a, b in MERGES])
    w.add_bos_token_id(eot)
    w.add_eos_token_id(eot)
    w.add_add_bos_token(False)

    # ---- weights; shapes in comments are numpy (out, in) = GGUF [in, out]
    def mat(name: str, n_out: int, n_in: int, std: float | None = None) -> None:
        std = 1.0 / np.sqrt(n_in) if std is None else std
        m = rng.normal(0.0, std, size=(n_out, n_in)).astype(np.float32)
        w.add_tensor(name, _quantize(m, wtype, rng), raw_dtype=QT[wtype])

    def vec(name: str, data: np.ndarray) -> None:
        w.add_tensor(name, data.astype(np.float32))

    def norm(name: str, n: int) -> None:
        vec(name, 1.0 + rng.uniform(-0.1, 0.1, n))

    q_dim, kv_dim = n_head * head_dim, n_head_kv * head_dim
    mat("token_embd.weight", n_vocab, n_embd, std=1.0)              # (n_vocab, n_embd)
    norm("output_norm.weight", n_embd)                                # (n_embd,)
    if not tied:
        mat("output.weight", n_vocab, n_embd, std=LOGIT_STD / np.sqrt(n_embd))  # (n_vocab, n_embd)
    if rope_freqs:
        # Llama-3.1-style divisors: 1 for high frequencies, up to 8 for low ones, smooth in between.
        f = np.linspace(0.0, 1.0, head_dim // 2)
        vec("rope_freqs.weight", 1.0 + 7.0 * np.clip((f - 0.3) / 0.5, 0.0, 1.0))  # (head_dim/2,)
    for i in range(n_layer):
        p = f"blk.{i}."
        norm(p + "attn_norm.weight", n_embd)
        mat(p + "attn_q.weight", q_dim, n_embd)                       # (n_head*head_dim, n_embd)
        mat(p + "attn_k.weight", kv_dim, n_embd)                      # (n_head_kv*head_dim, n_embd)
        mat(p + "attn_v.weight", kv_dim, n_embd)                      # (n_head_kv*head_dim, n_embd)
        if arch == "qwen2":
            vec(p + "attn_q.bias", rng.normal(0.0, 0.1, q_dim))
            vec(p + "attn_k.bias", rng.normal(0.0, 0.1, kv_dim))
            vec(p + "attn_v.bias", rng.normal(0.0, 0.1, kv_dim))
        if arch in ("qwen3", "gemma3"):
            norm(p + "attn_q_norm.weight", head_dim)
            norm(p + "attn_k_norm.weight", head_dim)
        if arch == "gemma3":
            norm(p + "post_attention_norm.weight", n_embd)
            norm(p + "post_ffw_norm.weight", n_embd)
        mat(p + "attn_output.weight", n_embd, q_dim)                  # (n_embd, n_head*head_dim)
        norm(p + "ffn_norm.weight", n_embd)
        mat(p + "ffn_gate.weight", n_ff, n_embd)                      # (n_ff, n_embd)
        mat(p + "ffn_up.weight", n_ff, n_embd)                        # (n_ff, n_embd)
        mat(p + "ffn_down.weight", n_embd, n_ff)                      # (n_embd, n_ff)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def cut_model(src, dst, n_layer: int, calibration=None) -> Path:
    """Writes the first n_layer layers of the GGUF model src to dst: every key/value byte for byte but
    {arch}.block_count; token embedding, output norm and output and blocks 0..n_layer-1 with their tensor bytes
    unchanged (real weights, a small file). With calibration (a GGUF holding triattention.* keys), the centres of
    the first n_layer layers are embedded too."""
    from pytriattn.calibrate import T_ARR, T_F32, T_U32, _raw_span, encode_kv

    r = gguf.GGUFReader(str(src))
    arch = bytes(r.fields["general.architecture"].parts[-1]).decode()
    block_key = f"{arch}.block_count"
    old = int(r.fields[block_key].parts[-1][0])
    if not 0 < n_layer <= old:
        raise ValueError(f"n_layer must be in [1, {old}]")
    mm = r.data
    kvs = []
    for k, f in r.fields.items():
        if k.startswith("GGUF.") or k.startswith("triattention."):
            continue
        kvs.append(encode_kv(k, T_U32, n_layer) if k == block_key else bytes(mm[slice(*_raw_span(f))]))
    if calibration is not None:
        c = gguf.GGUFReader(str(calibration))
        n_head = int(c.fields["triattention.n_head"].parts[-1][0])
        n_freq = int(c.fields["triattention.freq_count"].parts[-1][0])
        keep = n_layer * n_head * n_freq
        for k, f in c.fields.items():
            if not k.startswith("triattention."):
                continue
            if k == "triattention.n_layer":
                kvs.append(encode_kv(k, T_U32, n_layer))
            elif k in ("triattention.q_center_re", "triattention.q_center_im", "triattention.q_abs_mean"):
                kvs.append(encode_kv(k, (T_ARR, T_F32), np.asarray(f.contents(), dtype=np.float32)[:keep]))
            else:
                kvs.append(bytes(c.data[slice(*_raw_span(f))]))

    def kept(name: str) -> bool:
        return not name.startswith("blk.") or int(name.split(".")[1]) < n_layer

    align = int(r.alignment)
    tensors = [t for t in r.tensors if kept(t.name)]
    infos, blobs, off = [], [], 0
    for t in tensors:
        dims = [int(d) for d in t.field.parts[3]]  # the tensor directory's own dims (ggml order)
        info = struct.pack("<Q", len(t.name.encode())) + t.name.encode() + struct.pack("<I", len(dims))
        info += b"".join(struct.pack("<Q", d) for d in dims) + struct.pack("<IQ", int(t.tensor_type), off)
        infos.append(info)
        raw = bytes(mm[int(t.data_offset):int(t.data_offset) + int(t.n_bytes)])
        pad = (-len(raw)) % align
        blobs.append(raw + b"\0" * pad)
        off += len(raw) + pad
    head = b"GGUF" + struct.pack("<IQQ", 3, len(infos), len(kvs))
    meta = head + b"".join(kvs) + b"".join(infos)
    dst = Path(dst)
    tmp = dst.with_name(f"{dst.name}.{os.getpid()}.tmp")  # several test processes may write it at once
    with open(tmp, "wb") as out:
        out.write(meta + b"\0" * ((-len(meta)) % align))
        for b in blobs:
            out.write(b)
    tmp.replace(dst)
    return dst
