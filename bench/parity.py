"""Numerics parity with llama.cpp: perplexity on the same tokens, and greedy first divergences.

Builds llama.cpp from the `llama-cpp-python` 0.3.36 source package (its vendor/llama.cpp, commit 0c1e570)
into a cache folder (CPU only, -DGGML_NATIVE=ON, only llama-perplexity, llama-tokenize and libllama; the
graph-building code of libllama and common is compiled at -O0 to save most of the build time: the
numerics all run in ggml, which keeps -O3), plus bench/parity_top2.c against its llama.h. Not part of CI.
That build is for numerics only: never take a speed figure from it (its graph building runs unoptimized).
Speed comparisons build a clean -O3 llama.cpp tree of their own (bench/cpu_parity.py), and
`pytriattn bench --llama-bench` refuses a llama-bench from a tree with -O0 parts.

Perplexity (the rule of llama-perplexity, replicated exactly for the engine): the text is tokenized once
with the vocabulary's BOS rule; chunk i is tokens[i·n_ctx, (i+1)·n_ctx), its first token replaced by BOS
when the vocabulary adds one; each chunk is a fresh context; only the second half is scored: the logits at
positions j = n_ctx/2 … n_ctx-2 predict token j+1, nll = -log softmax(logits_j)[token j+1] (float64),
PPL = exp(mean nll over all chunks). Both programs see the same token ids: they are read back from the
--kl-divergence-base file llama-perplexity writes (its header holds n_ctx, n_vocab, n_chunk and the
tokens), and the engine's own tokenization of the text is compared with them.

Greedy: for each prompt, N greedy tokens from both programs (one token per step after the prompt); the
first step where the chosen tokens differ is reported with both programs' top-2 logits. A divergence is a
"tie" when at that step the two candidates are within --tie-eps logits of each other in both programs;
otherwise it is a real difference.

    python bench/parity.py                          # default model, both parts
    python bench/parity.py -m gemma-3-270m.gguf --skip-greedy
    python bench/parity.py --flash-attn on          # llama.cpp's flash-attention path instead

Output: a Markdown report on stdout (and --json FILE).
"""
from __future__ import annotations

import argparse
import json
import math
import re
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import llamacpp  # noqa: E402
from llamacpp import log, run  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CACHE = llamacpp.CACHE_ROOT / "llamacpp-0.3.36"
TARGETS = ("llama-perplexity", "llama-tokenize")
O0_MARK = "# pytriattn parity build: graph-building code at -O0"

# chat prompts are rendered with the model's own chat format (user turn + generation prompt)
CHAT_PROMPTS = ["What is the capital of France?", "Write a haiku about the sea."]
TEXT_PROMPTS = [
    "def fibonacci(n):",
    "The first law of thermodynamics states that",
    "1, 2, 3, 4, 5,",
    "Once upon a time, in a small village by the river,",
]


# ---- building llama.cpp ------------------------------------------------------------------------------------

def build_llamacpp(cache: Path, jobs: int) -> Path:
    """Downloads the sdist (once), builds the needed targets (incremental); returns the build folder.

    NUMERICS ONLY: libllama and common are compiled at -O0 here (the O0_MARK lines below). Nothing may take
    speed from this build; a speed comparison builds its own clean -O3 tree (docs/measure.md)."""
    src = llamacpp.source(cache)
    for sub, target in (("src", "llama"), ("common", "${TARGET}")):
        cm = src / sub / "CMakeLists.txt"
        text = cm.read_text()
        if O0_MARK not in text:
            cm.write_text(text + f"\n{O0_MARK}\ntarget_compile_options({target} PRIVATE -O0)\n")
    build = cache / "build"
    log(f"building llama.cpp into {build} for numerics only: libllama and common at -O0, never a speed reference")
    build.mkdir(parents=True, exist_ok=True)
    (build / "NUMERICS-ONLY-O0.txt").write_text(
        "bench/parity.py built this llama.cpp tree with libllama and common at -O0 to compare numerics.\n"
        "Never take speed from it: build a clean -O3 tree for benchmarks.\n")
    return llamacpp.build(src, build, ("llama", *TARGETS), jobs)


def build_parity_tool(build: Path, dest: Path) -> Path:
    """bench/parity_top2.c compiled against the llama.cpp build (its sources found in the CMake cache), into
    dest unless dest is newer than the C file; returns dest."""
    c_src = ROOT / "bench" / "parity_top2.c"
    if dest.exists() and dest.stat().st_mtime >= c_src.stat().st_mtime:
        return dest
    m = re.search(r"^CMAKE_HOME_DIRECTORY:INTERNAL=(.*)$", (build / "CMakeCache.txt").read_text(), re.M)
    if not m:
        raise RuntimeError(f"{build}: no CMAKE_HOME_DIRECTORY in CMakeCache.txt (not a llama.cpp build folder?)")
    src = Path(m.group(1))
    dest.parent.mkdir(parents=True, exist_ok=True)
    run(["cc", "-O2", "-std=c11", "-o", dest, c_src, "-I", src / "include", "-I", src / "ggml" / "include",
         "-L", build / "bin", "-lllama", "-lggml", "-lggml-base", "-lm", f"-Wl,-rpath,{build / 'bin'}"])
    return dest


# ---- perplexity --------------------------------------------------------------------------------------------

def read_kld_tokens(path: Path) -> tuple[int, int, int, np.ndarray]:
    """(n_ctx, n_vocab, n_chunk, tokens) from llama-perplexity's --kl-divergence-base file header:
    "_logits_", int32 n_ctx, int32 n_vocab, int32 n_chunk, int32 tokens[n_chunk·n_ctx], then log-probs."""
    with open(path, "rb") as f:
        magic = f.read(8)
        if magic != b"_logits_":
            raise ValueError(f"{path}: not a llama-perplexity logits file")
        n_ctx, n_vocab, n_chunk = struct.unpack("<iii", f.read(12))
        toks = np.frombuffer(f.read(4 * n_ctx * n_chunk), dtype="<i4").copy()
    return n_ctx, n_vocab, n_chunk, toks


def llamacpp_ppl(build: Path, model: Path, text: Path, n_ctx: int, n_chunks: int, threads: int, fa: str,
                 work: Path) -> dict:
    kld = work / "llamacpp.kld"
    p = run([build / "bin" / "llama-perplexity", "-m", model, "-f", text, "-c", n_ctx, "-b", n_ctx,
             "--chunks", n_chunks, "-t", threads, "-fa", fa, "--kl-divergence-base", kld],
            capture_output=True, text=True)
    out = p.stdout + p.stderr
    m = re.search(r"Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+)", out)
    if not m:
        raise RuntimeError("llama-perplexity printed no final estimate:\n" + out[-3000:])
    c, v, n, toks = read_kld_tokens(kld)
    kld.unlink()
    return {"ppl": float(m.group(1)), "ppl_err": float(m.group(2)), "n_ctx": c, "n_vocab": v, "n_chunk": n,
            "tokens": toks}  # no timing: this llama.cpp build is not a speed reference


def libllama_ppl(tool: Path, model: Path, tokens: np.ndarray, n_ctx: int, n_chunk: int, threads: int, fa: str,
                 work: Path) -> dict:
    """The same rule through bench/parity_top2.c's `ppl` mode (libllama only, no llama-perplexity)."""
    path = work / "tokens.i32"
    tokens[:n_ctx * n_chunk].astype("<i4").tofile(path)
    p = run([tool, "ppl", model, path, n_ctx, n_chunk, threads, int(fa == "on")], capture_output=True, text=True)
    _, s, c = p.stdout.splitlines()[-1].split()  # "chunk i sum" lines, then "nll sum count"
    return {"ppl": math.exp(float(s) / int(c)), "n_scored": int(c)}


def log_softmax_at(logits: np.ndarray, idx: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    mx = x.max(axis=1, keepdims=True)
    lse = mx[:, 0] + np.log(np.exp(x - mx).sum(axis=1))
    return x[np.arange(len(idx)), idx] - lse


def engine_ppl(model: Path, tokens: np.ndarray, n_ctx: int, n_chunk: int, threads: int) -> dict:
    """llama-perplexity's rule (module docstring) on the engine with full attention."""
    from pytriattn import Llama

    t0 = time.time()
    first = n_ctx // 2
    nll = []
    with Llama(str(model), n_ctx=n_ctx, n_threads=threads, kv_policy="full", n_batch=n_ctx) as llm:
        add_bos = llm.tokenize("", add_bos=True) == [llm.token_bos()]
        for i in range(n_chunk):
            chunk = tokens[i * n_ctx:(i + 1) * n_ctx].copy()
            if add_bos:
                chunk[0] = llm.token_bos()
            llm.reset()
            logits = llm.eval(chunk)
            nll.append(-log_softmax_at(logits[first:n_ctx - 1], chunk[first + 1:n_ctx]))
    nll = np.concatenate(nll)
    mean = float(nll.mean())
    err = float(np.sqrt(max(float((nll ** 2).mean()) - mean ** 2, 0.0) / (len(nll) - 1)))
    return {"ppl": math.exp(mean), "ppl_err": math.exp(mean) * err, "n_scored": int(nll.size),
            "seconds": time.time() - t0}


def tokenization_check(model: Path, text: str, want: np.ndarray) -> dict:
    from pytriattn import Llama

    with Llama(str(model), n_ctx=64, n_threads=1, kv_policy="full") as llm:
        got = np.asarray(llm.tokenize(text, add_bos=True), dtype=np.int64)
    n = min(len(got), len(want))
    diff = np.nonzero(got[:n] != want[:n])[0]
    return {"compared": int(n), "first_mismatch": int(diff[0]) if diff.size else None}


def kjv_text(n_chars: int) -> str:
    sys.path.append(str(ROOT / "python"))  # an installed pytriattn comes first
    from pytriattn.eval import kjv_text as full
    return full()[:n_chars]


# ---- greedy ------------------------------------------------------------------------------------------------

def llamacpp_greedy(tool: Path, model: Path, prompt: str, n: int, threads: int, fa: bool) -> dict:
    p = subprocess.run([str(tool), str(model), str(n), str(threads), str(int(fa)),
                        prompt], capture_output=True, text=True, check=True)
    prompt_ids, steps = None, []
    for line in p.stdout.splitlines():
        f = line.split()
        if f[0] == "prompt":
            prompt_ids = [int(x) for x in f[1:]]
        elif f[0] == "step":
            steps.append((int(f[2]), float(f[3]), int(f[4]), float(f[5])))
    return {"prompt_ids": prompt_ids, "steps": steps}


def engine_greedy(llm, prompt_ids: list[int], n: int) -> list[tuple]:
    llm.reset()
    last = llm.eval(prompt_ids)[-1]
    steps = []
    for i in range(n):
        o = np.argsort(-last, kind="stable")[:2]
        steps.append((int(o[0]), float(last[o[0]]), int(o[1]), float(last[o[1]]), last))
        if i + 1 < n:
            last = llm.eval([int(o[0])])[0]
    return steps


def greedy_report(tool: Path, model: Path, n: int, threads: int, fa: bool, eps: float) -> list[dict]:
    from pytriattn import Llama

    rows = []
    with Llama(str(model), n_ctx=512, n_threads=threads, kv_policy="full") as llm:
        # a BOS written by a template is left to both tokenizers' BOS rule when the vocabulary adds one
        adds_bos = llm.tokenize("a", add_bos=True) != llm.tokenize("a", add_bos=False)
        bos = llm.token_to_piece(llm.token_bos(), special=True).decode() if adds_bos else ""
        chats = [llm.apply_chat_template([{"role": "user", "content": q}]) for q in CHAT_PROMPTS]
        chats = [c[len(bos):] if bos and c.startswith(bos) else c for c in chats]
        for prompt in chats + TEXT_PROMPTS:
            ref = llamacpp_greedy(tool, model, prompt, n, threads, fa)
            ours_ids = llm.tokenize(prompt, add_bos=True, special=True)
            same_prompt = ours_ids == ref["prompt_ids"]
            eng = engine_greedy(llm, ref["prompt_ids"], n)
            k = next((i for i, (a, b) in enumerate(zip(eng, ref["steps"])) if a[0] != b[0]), None)
            row = {"prompt": prompt, "prompt_tokens_equal": same_prompt, "n": n, "first_divergence": k,
                   "text_llamacpp": llm.detokenize([s[0] for s in ref["steps"]]).decode("utf-8", "replace"),
                   "text_engine": llm.detokenize([s[0] for s in eng]).decode("utf-8", "replace")}
            if k is not None:
                e, r = eng[k], ref["steps"][k]
                logits = e[4]
                # the engine's logits for llama.cpp's two candidates, and the gaps each program sees
                row.update({
                    "llamacpp_top2": [[r[0], r[1]], [r[2], r[3]]],
                    "engine_top2": [[e[0], e[1]], [e[2], e[3]]],
                    "engine_on_llamacpp_top2": [float(logits[r[0]]), float(logits[r[2]])],
                    "gap_llamacpp": r[1] - r[3], "gap_engine": e[1] - e[3],
                })
                row["tie"] = bool(abs(row["gap_llamacpp"]) < eps and abs(row["gap_engine"]) < eps)
            # logit agreement before the divergence: the engine's top-1 logit vs llama.cpp's
            upto = k if k is not None else n
            d = [abs(eng[i][1] - ref["steps"][i][1]) for i in range(upto)]
            row["max_top1_logit_diff_before"] = max(d) if d else None
            rows.append(row)
    return rows


# ---- report ------------------------------------------------------------------------------------------------

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--model", default=None, help="GGUF model (default: the default model)")
    ap.add_argument("--cache", default=str(DEFAULT_CACHE), help=f"llama.cpp sdist + build (default {DEFAULT_CACHE})")
    ap.add_argument("--llama-build", default=None, help="an existing llama.cpp build folder (skip building)")
    ap.add_argument("-j", "--jobs", type=int, default=2, help="build jobs (default 2)")
    ap.add_argument("-t", "--threads", type=int, default=2, help="threads for both programs (default 2)")
    ap.add_argument("--text", default=None, help="UTF-8 text (default: the King James Bible, --kjv-chars)")
    ap.add_argument("--kjv-chars", type=int, default=80000, help="characters of the KJV to use (default 80000)")
    ap.add_argument("-c", "--ctx", type=int, default=512, help="chunk length (default 512)")
    ap.add_argument("--chunks", type=int, default=20, help="chunks (default 20)")
    ap.add_argument("--flash-attn", choices=("on", "off"), default="off",
                    help="llama.cpp's attention path (default off: the classic KQ/softmax/KQV graph)")
    ap.add_argument("--greedy-tokens", type=int, default=48, help="greedy tokens per prompt (default 48)")
    ap.add_argument("--tie-eps", type=float, default=0.25, help="top-2 gap counted as a tie (default 0.25 logits)")
    ap.add_argument("--check-libllama", action="store_true",
                    help="also score the same tokens with parity_top2's ppl mode (must equal llama-perplexity)")
    ap.add_argument("--skip-ppl", action="store_true")
    ap.add_argument("--skip-greedy", action="store_true")
    ap.add_argument("--json", default=None, help="also write the results as JSON")
    args = ap.parse_args()

    sys.path.append(str(ROOT / "python"))  # an installed pytriattn comes first
    if args.model is None:
        from pytriattn._fetch import ensure_default_model
        args.model = str(ensure_default_model(progress=False))
    model = Path(args.model)
    build = Path(args.llama_build) if args.llama_build else build_llamacpp(Path(args.cache), args.jobs)
    work = Path(args.cache)
    work.mkdir(parents=True, exist_ok=True)
    # a given build folder is not written to: the tool then lives in the cache folder
    tool = build_parity_tool(build, build / "bin" / "parity_top2" if not args.llama_build else work / "parity_top2")
    res = {"model": model.name, "llama_build": str(build), "flash_attn": args.flash_attn,
           "llama_build_use": "numerics only (libllama and common at -O0 when built here): no speed figures"}

    if not args.skip_ppl:
        if args.text:
            text_path = Path(args.text)
            text = text_path.read_text(encoding="utf-8")
        else:
            text = kjv_text(args.kjv_chars)
            text_path = work / f"kjv-{args.kjv_chars}.txt"
            text_path.write_text(text, encoding="utf-8")
        if (build / "bin" / "llama-perplexity").exists():
            ref = llamacpp_ppl(build, model, text_path, args.ctx, args.chunks, args.threads, args.flash_attn, work)
        else:  # a build with libllama only: llama.cpp's own tokenization, the same rule through parity_top2
            log("no llama-perplexity in the build: scoring with parity_top2's ppl mode")
            toks = np.asarray(llamacpp_greedy(tool, model, text, 0, args.threads, False)["prompt_ids"], np.int32)
            n_chunk = min(args.chunks, len(toks) // args.ctx)
            ref = libllama_ppl(tool, model, toks, args.ctx, n_chunk, args.threads, args.flash_attn, work)
            ref.update(ppl_err=float("nan"), n_ctx=args.ctx, n_chunk=n_chunk, tokens=toks)
            res["llamacpp_scorer"] = "parity_top2 ppl"
        tok = tokenization_check(model, text, ref["tokens"])
        eng = engine_ppl(model, ref["tokens"], ref["n_ctx"], ref["n_chunk"], args.threads)
        if args.check_libllama:
            lib = libllama_ppl(tool, model, ref["tokens"], ref["n_ctx"], ref["n_chunk"], args.threads,
                               args.flash_attn, work)
            res["ppl_libllama"] = lib["ppl"]
        rel = eng["ppl"] / ref["ppl"] - 1.0
        res["ppl"] = {"text": str(text_path), "n_ctx": ref["n_ctx"], "n_chunk": ref["n_chunk"],
                      "n_scored": eng["n_scored"], "llamacpp": ref["ppl"], "llamacpp_err": ref["ppl_err"],
                      "engine": eng["ppl"], "engine_err": eng["ppl_err"], "rel_diff": rel, "tokenization": tok}
        print(f"## Perplexity: {model.name}, {ref['n_chunk']} x {ref['n_ctx']} tokens, second half of each "
              f"chunk scored ({eng['n_scored']} tokens)\n")
        print("| program | PPL | ± |\n|---|---:|---:|")
        print(f"| llama.cpp llama-perplexity (-fa {args.flash_attn}) | {ref['ppl']:.4f} | {ref['ppl_err']:.4f} |")
        if "ppl_libllama" in res:
            print(f"| libllama, same rule (bench/parity_top2.c) | {res['ppl_libllama']:.4f} | |")
        print(f"| pytriattn, full attention | {eng['ppl']:.4f} | {eng['ppl_err']:.4f} |")
        print(f"\nrelative difference {100 * rel:+.3f}%; engine tokenization of the text "
              + ("identical" if tok["first_mismatch"] is None else f"differs first at token {tok['first_mismatch']}")
              + f" over {tok['compared']} tokens\n")

    if not args.skip_greedy:
        rows = greedy_report(tool, model, args.greedy_tokens, args.threads, args.flash_attn == "on", args.tie_eps)
        res["greedy"] = rows
        print(f"## Greedy first divergence ({args.greedy_tokens} tokens, tie: top-2 gap < {args.tie_eps} in both)\n")
        print("| prompt | first divergence | llama.cpp top-2 (id: logit) | pytriattn top-2 (id: logit) | verdict |")
        print("|---|---:|---|---|---|")
        for r in rows:
            p = r["prompt"].replace("\n", "\\n").replace("|", "\\|")
            if r["first_divergence"] is None:
                print(f"| `{p}` | none | | | identical |")
                continue
            lt, et = r["llamacpp_top2"], r["engine_top2"]
            print(f"| `{p}` | {r['first_divergence']} | {lt[0][0]}: {lt[0][1]:.3f}, {lt[1][0]}: {lt[1][1]:.3f} "
                  f"| {et[0][0]}: {et[0][1]:.3f}, {et[1][0]}: {et[1][1]:.3f} | "
                  f"{'tie' if r['tie'] else 'real difference'} |")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2, default=lambda o: o.tolist()
                                              if isinstance(o, np.ndarray) else str(o)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
