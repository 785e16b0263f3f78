"""`pytriattn info`: a readable summary of a GGUF file, read with the `gguf` package (no model load)."""
from __future__ import annotations

import os
from pathlib import Path

from ._errors import ERR_FORMAT, ERR_IO, TriattnError

_HPARAMS = ("context_length", "embedding_length", "block_count", "feed_forward_length",
            "attention.head_count", "attention.head_count_kv", "attention.key_length", "attention.value_length",
            "rope.dimension_count", "rope.freq_base", "attention.layer_norm_rms_epsilon", "vocab_size")

_CHAT_MARKERS = (("<|im_start|>", "chatml"), ("<|start_header_id|>", "llama3"), ("<start_of_turn>", "gemma"),
                 ("<｜Assistant｜>", "deepseek-r1"), ("[INST]", "llama2/mistral"))


# Architectures with interleaved sliding-window layers: (layers per period; the last of each period is global,
# local RoPE base, chat format used when the file has no template), as src/models/ implements them.
_SWA_ARCHS = {"gemma3": (6, 10000.0, "gemma")}


def sliding_window_layers(arch: str, n_layer: int | None, window: int | None) -> dict | None:
    """Which layers attend over a sliding window (and its length), or None when the model has none."""
    if arch not in _SWA_ARCHS or not window or not n_layer:
        return None
    period, local_base, _ = _SWA_ARCHS[arch]
    local = [i for i in range(n_layer) if (i + 1) % period != 0]
    return {"window": int(window), "local_layers": local,
            "global_layers": [i for i in range(n_layer) if (i + 1) % period == 0], "local_rope_base": local_base}


def _value(field):
    try:
        v = field.contents()
    except Exception:
        return None
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return v


def gguf_summary(path: str | os.PathLike) -> dict:
    """Summary dict of a GGUF file; raises TriattnError naming the file when it cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise TriattnError(ERR_IO, f"{path}: no such file")
    try:
        from gguf import GGUFReader

        r = GGUFReader(str(path))
    except Exception as e:  # the reader raises ValueError/IndexError/struct errors on bad files
        raise TriattnError(ERR_FORMAT, f"{path}: not a readable GGUF file ({type(e).__name__}: {e})") from None

    fields = r.fields
    md = {k: f for k, f in fields.items() if not k.startswith("GGUF.")}
    get = lambda k, d=None: _value(md[k]) if k in md else d  # noqa: E731
    arch = get("general.architecture", "?")

    quant: dict[str, dict] = {}
    n_params = n_bytes = 0
    for t in r.tensors:
        q = quant.setdefault(t.tensor_type.name, {"tensors": 0, "params": 0, "bytes": 0})
        q["tensors"] += 1
        q["params"] += int(t.n_elements)
        q["bytes"] += int(t.n_bytes)
        n_params += int(t.n_elements)
        n_bytes += int(t.n_bytes)

    tokens = md.get("tokenizer.ggml.tokens")
    n_tokens = len(tokens.data) if tokens is not None else None
    merges = md.get("tokenizer.ggml.merges")

    def token_text(key):
        i = get(key)
        if i is None or tokens is None or not 0 <= int(i) < n_tokens:
            return None
        return bytes(tokens.parts[tokens.data[int(i)]]).decode("utf-8", "replace")

    template = get("tokenizer.chat_template")
    family = next((name for marker, name in _CHAT_MARKERS if template and marker in template), None)
    tri_keys = {k: (_value(f) if len(f.data) <= 16 else f"[{len(f.data)} values]")
                for k, f in md.items() if k.startswith("triattention.")}
    from .calibrate import SIDECAR_TYPE, model_fingerprint

    fp = model_fingerprint(r)
    calib = {"centres": "triattention.q_center_re" in md,
           "sidecar": get("general.type") == SIDECAR_TYPE,
           "n_tokens": get("triattention.calib.n_tokens"), "source": get("triattention.calib.source"),
           "tool": get("triattention.calib.tool"), "fingerprint": get("triattention.model_fingerprint"),
           "model_fingerprint": fp,
           "fingerprint_match": (None if fp is None or get("triattention.model_fingerprint") is None
                                 else get("triattention.model_fingerprint") == fp)}
    from .policy_check import describe
    calib["auto"] = describe({k: _value(f) for k, f in md.items()
                              if k in ("triattention.auto_policy", "triattention.offmax")
                              or k.startswith("triattention.check.")})

    return {
        "file": str(path),
        "file_bytes": path.stat().st_size,
        "gguf_version": _value(fields["GGUF.version"]) if "GGUF.version" in fields else None,
        "architecture": arch,
        "name": get("general.name"),
        "size_label": get("general.size_label"),
        "file_type": get("general.file_type"),
        "n_tensors": len(r.tensors),
        "n_params": n_params,
        "tensor_bytes": n_bytes,
        "bits_per_weight": round(8 * n_bytes / n_params, 3) if n_params else None,
        "quant_types": dict(sorted(quant.items(), key=lambda kv: -kv[1]["bytes"])),
        "hparams": {k: get(f"{arch}.{k}") for k in _HPARAMS if f"{arch}.{k}" in md},
        "tokenizer": {
            "model": get("tokenizer.ggml.model"),
            "pre": get("tokenizer.ggml.pre"),
            "n_tokens": n_tokens,
            "n_merges": len(merges.data) if merges is not None else None,
            "bos": {"id": get("tokenizer.ggml.bos_token_id"), "text": token_text("tokenizer.ggml.bos_token_id")},
            "eos": {"id": get("tokenizer.ggml.eos_token_id"), "text": token_text("tokenizer.ggml.eos_token_id")},
            "add_bos_token": get("tokenizer.ggml.add_bos_token"),
        },
        "sliding_window": sliding_window_layers(arch, get(f"{arch}.block_count"),
                                                get(f"{arch}.attention.sliding_window")),
        "chat_template": {"present": template is not None, "family": family,
                          "chars": len(template) if template else 0, "text": template},
        "triattention": {"present": bool(tri_keys), "keys": tri_keys},
        "calibration": calib,
        "n_metadata": len(md),
    }


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def render_summary(s: dict, show_template: bool = False) -> str:
    out = []
    add = out.append
    add(f"{s['file']}  ({_size(s['file_bytes'])}, GGUF v{s['gguf_version']}, {s['n_metadata']} metadata keys)")
    add(f"  architecture   {s['architecture']}" + (f"  ({s['name']})" if s["name"] else ""))
    add(f"  parameters     {s['n_params'] / 1e6:.1f} M in {s['n_tensors']} tensors, {_size(s['tensor_bytes'])}"
        + (f", {s['bits_per_weight']} bits/weight" if s["bits_per_weight"] else ""))
    add("  quant types    " + ", ".join(f"{k} x{v['tensors']} ({_size(v['bytes'])})"
                                        for k, v in s["quant_types"].items()))
    if s["hparams"]:
        add("  hyperparams    " + ", ".join(f"{k}={v}" for k, v in s["hparams"].items()))
    t = s["tokenizer"]
    add(f"  tokenizer      {t['model']} (pre {t['pre']}), {t['n_tokens']} tokens"
        + (f", {t['n_merges']} merges" if t["n_merges"] else "")
        + f"; bos {t['bos']['id']} {t['bos']['text']!r}, eos {t['eos']['id']} {t['eos']['text']!r}"
        + f", add_bos={t['add_bos_token']}")
    sw = s.get("sliding_window")
    if sw:
        add(f"  attention      sliding window of {sw['window']} tokens on {len(sw['local_layers'])} of "
            f"{len(sw['local_layers']) + len(sw['global_layers'])} layers (local RoPE base {sw['local_rope_base']:g}); "
            f"global layers {', '.join(map(str, sw['global_layers']))}")
    c = s["chat_template"]
    if c["present"]:
        add(f"  chat template  {c['family'] or 'unrecognised family'} ({c['chars']} chars)")
        if show_template:
            add("    " + c["text"].replace("\n", "\n    "))
    elif s["architecture"] in _SWA_ARCHS:
        add(f"  chat template  none in the file; the {_SWA_ARCHS[s['architecture']][2]} format is used")
    else:
        add("  chat template  none")
    add(render_calibration(s["triattention"], s["calibration"]))
    return "\n".join(out)


def _match_text(c: dict) -> str:
    if c.get("fingerprint_match") is None:
        return f"fingerprint {c.get('fingerprint')}"
    if c["fingerprint_match"]:
        return "fingerprint matches this model"
    return (f"fingerprint MISMATCH: made for {c.get('fingerprint')}, this model is {c.get('model_fingerprint')} "
            "(same geometry, other weights?)")


def render_calibration(tri: dict, calib: dict, label: str = "TriAttention") -> str:
    """Lines about the triattention.* keys: centres present or not, tokens, source, fingerprint match."""
    out = []
    if tri["present"]:
        line = f"  {label:<14} calibrated: {len(tri['keys'])} triattention.* keys"
        if calib["centres"]:
            kind = "sidecar" if calib.get("sidecar") else "centres embedded"
            line += (f"; {kind}, {calib.get('n_tokens')} tokens from {calib.get('source')!r} by "
                     f"{calib.get('tool')}; {_match_text(calib)}")
        else:
            line += "; no centres (q_center_re missing)"
        out.append(line)
        if calib.get("auto"):
            out.append(f"  {'':<14} {calib['auto']}")
        for k, v in tri["keys"].items():
            out.append(f"    {k} = {v}")
    else:
        out.append(f"  {label:<14} no triattention.* keys (not calibrated; kv_policy auto = full)")
    return "\n".join(out)


def check_sidecar(summary: dict, sidecar_summary: dict) -> dict:
    """The sidecar's keys and calibration facts, its fingerprint compared against the model's."""
    calib = dict(sidecar_summary["calibration"])
    fp = summary["calibration"]["model_fingerprint"]
    calib["model_fingerprint"] = fp
    calib["fingerprint_match"] = None if fp is None or calib.get("fingerprint") is None else calib["fingerprint"] == fp
    return {"file": sidecar_summary["file"], "triattention": sidecar_summary["triattention"], "calibration": calib}
