"""`pytriattn eval`: how close a KV policy stays to full attention (docs/results.md, measure.md §Quality).

Three tasks, each a sweep over policies × budgets × contexts, written row by row as CSV + JSON in the
kvpress leaderboard shape (`dataset, context, model, method, budget, compression, metric, value`):

- ppl: teacher-force a long text in chunks of kv_interval tokens (the policy runs between chunks, exactly
  as token-by-token decoding with the slack trigger would) and compare every next-token distribution
  with full attention's: perplexity, ΔNLL, KL(full ‖ policy) and top-1 agreement over the tokens after
  the first compression (`ppl_all`: over every token).
- agreement: after the same context, generate greedily and count the tokens until the first divergence
  from full attention and the fraction of positions where both agree.
- passkey: a 5-digit key hidden at several depths of a filler haystack streamed through the cache as a
  prompt (so it is compressed while it is read), greedy answer, exact match.

Full attention's per-token log-probabilities are cached on disk per (model, tokens) so a sweep computes
them once.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from ._errors import ERR_INVALID_ARG, ERR_IO, TriattnError

COLUMNS = ["dataset", "context", "model", "method", "budget", "compression", "metric", "value"]
ALL_POLICIES = ["full", "triattention", "snapkv", "rkv", "h2o", "streaming", "random"]
PPL_METRICS = ["ppl", "delta_nll", "kl", "top1_agree", "ppl_full", "ppl_all", "n_scored"]
GEN_METRICS = ["first_divergence", "token_agreement", "n_generated"]
KJV_RANGE = "Genesis 1:1-Revelation 22:21"
KJV_HINT = ("the King James Bible comes from Debian's `bible` program: "
            "apt-get install -y bible-kjv bible-kjv-text")


# ---- inputs -------------------------------------------------------------------------------------------

def kjv_text() -> str:
    """The whole King James Bible as plain text: one verse per line, without the verse labels."""
    exe = shutil.which("bible")
    if exe is None:
        raise TriattnError(ERR_IO, f"`bible` was not found; {KJV_HINT}")
    try:
        p = subprocess.run([exe, "-f", KJV_RANGE], capture_output=True, timeout=120)
    except (OSError, subprocess.SubprocessError) as e:
        raise TriattnError(ERR_IO, f"`bible` failed ({e}); {KJV_HINT}") from None
    out = p.stdout.decode("utf-8", "replace")
    if p.returncode != 0 or len(out) < 100_000:
        raise TriattnError(ERR_IO, f"`bible -f '{KJV_RANGE}'` gave {len(out)} characters "
                           f"(exit {p.returncode}); {KJV_HINT}")
    return re.sub(r"^\S+?\d+:\d+ ", "", out, flags=re.M)


def load_text(path: str | os.PathLike | None, kjv: bool) -> tuple[str, str]:
    """(dataset name, text) from --text FILE or --kjv."""
    if kjv:
        return "kjv", kjv_text()
    if path is None:
        raise TriattnError(ERR_INVALID_ARG, "give --text FILE or --kjv")
    from .calibrate import read_text
    return Path(path).stem, read_text(path)


def text_tokens(llm, text: str, n: int, what: str) -> list[int]:
    """BOS (when the model uses one) + the first tokens of text, n in all."""
    toks: list[int] = []
    for n_chars in (n * 8, len(text)):
        toks = llm.tokenize(text[:n_chars], add_bos=True)
        if len(toks) >= n or n_chars >= len(text):
            break
    if len(toks) < n:
        raise TriattnError(ERR_INVALID_ARG, f"{what}: the text has only {len(toks)} tokens, fewer than the "
                           f"context {n}")
    return toks[:n]


def parse_list(s: str | None, kind=int, what: str = "list") -> list:
    if s is None:
        return []
    out = []
    for part in str(s).split(","):
        part = part.strip().lower()
        if not part:
            continue
        try:
            if kind is int:
                mult = 1024 if part.endswith("k") else 1
                out.append(int(part[:-1] if mult > 1 else part) * mult)
            else:
                out.append(kind(part))
        except ValueError:
            raise TriattnError(ERR_INVALID_ARG, f"{what}: cannot read '{part}'") from None
    return out


# ---- results: CSV + JSON, appended per configuration, resumable ---------------------------------------

class Results:
    """Rows in the kvpress shape. Each finished configuration is appended to the CSV at once and the JSON
    is rewritten; with resume=True the rows already in the CSV are kept and their configurations skipped."""

    def __init__(self, prefix: str | os.PathLike, resume: bool = False):
        prefix = os.fspath(prefix)
        for ext in (".csv", ".json"):
            if prefix.endswith(ext):
                prefix = prefix[:-len(ext)]
        self.csv_path, self.json_path = Path(prefix + ".csv"), Path(prefix + ".json")
        self.prefix = prefix
        self.rows: list[dict] = []
        if resume and self.csv_path.is_file():
            with open(self.csv_path, newline="", encoding="utf-8") as f:
                r = csv.DictReader(f)
                if r.fieldnames != COLUMNS:
                    raise TriattnError(ERR_INVALID_ARG, f"{self.csv_path}: columns {r.fieldnames} are not {COLUMNS}; "
                                       "cannot resume")
                self.rows = [_typed(row) for row in r]
        else:
            self.csv_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.csv_path, "w", newline="", encoding="utf-8") as f:
                csv.writer(f).writerow(COLUMNS)
        self._done = {self._key(r) + (r["metric"],) for r in self.rows}
        self._write_json()

    @staticmethod
    def _key(r: dict) -> tuple:
        return (str(r["dataset"]), int(r["context"]), str(r["model"]), str(r["method"]), int(r["budget"]))

    def done(self, dataset, context, model, method, budget, metrics) -> bool:
        k = (str(dataset), int(context), str(model), str(method), int(budget))
        return all(k + (m,) in self._done for m in metrics)

    def add(self, dataset, context, model, method, budget, metrics: dict) -> list[dict]:
        comp = 0.0 if method.split("/")[0] == "full" else max(0.0, 1.0 - budget / max(context, 1))
        rows = [{"dataset": dataset, "context": int(context), "model": model, "method": method,
                 "budget": int(budget), "compression": round(comp, 6), "metric": m, "value": float(v)}
                for m, v in metrics.items()]
        with open(self.csv_path, "a", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            for r in rows:
                w.writerow([r[c] if c != "value" else f"{r['value']:.10g}" for c in COLUMNS])
        self.rows += rows
        self._done |= {self._key(r) + (r["metric"],) for r in rows}
        self._write_json()
        return rows

    def _write_json(self) -> None:
        tmp = self.json_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.rows, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, self.json_path)

    def value(self, dataset, context, method, budget, metric):
        for r in self.rows:
            if (r["dataset"], r["context"], r["method"], r["budget"], r["metric"]) == \
                    (dataset, context, method, budget, metric):
                return r["value"]
        return None


def _typed(row: dict) -> dict:
    return {"dataset": row["dataset"], "context": int(row["context"]), "model": row["model"],
            "method": row["method"], "budget": int(row["budget"]), "compression": float(row["compression"]),
            "metric": row["metric"], "value": float(row["value"])}


# ---- sessions -----------------------------------------------------------------------------------------

class Setup:
    """Model + session knobs shared by every configuration of a sweep."""

    def __init__(self, model=None, calibration=None, threads: int = 2, kv_interval: int = 128,
                 kv_window: int | None = None, kv_sink: int = 4, kv_mode: str | None = None):
        if model is None:
            from ._fetch import ensure_default_model
            from .llama import default_calibration
            model = ensure_default_model(progress=True)
            if calibration is None:
                calibration = default_calibration()
        self.model = os.fspath(model)
        self.calibration = None if calibration is None else os.fspath(calibration)
        self.threads, self.kv_interval, self.kv_window = threads, kv_interval, kv_window
        self.kv_sink, self.kv_mode = kv_sink, kv_mode
        self.model_name = Path(self.model).name.removesuffix(".gguf")

    def llama(self, policy: str, budget: int, n_ctx: int):
        from .llama import Llama
        return Llama(self.model, n_ctx=n_ctx, n_threads=self.threads, n_batch=512, kv_policy=policy,
                     kv_budget=max(1, budget), kv_interval=self.kv_interval, kv_window=self.kv_window,
                     kv_sink=self.kv_sink, kv_mode=self.kv_mode, calibration=self.calibration)

    def method(self, policy: str) -> str:
        """The CSV method: the policy, plus the knobs that differ from the defaults."""
        if policy == "full":
            return "full"
        tags = []
        if self.kv_mode and policy == "triattention":
            tags.append(self.kv_mode)
        if self.kv_window is not None:
            tags.append(f"w{self.kv_window}")
        if self.kv_sink != 4:
            tags.append(f"s{self.kv_sink}")
        if self.kv_interval != 128:
            tags.append(f"i{self.kv_interval}")
        return "/".join([policy] + tags)


def available_policies(setup: Setup, names=ALL_POLICIES) -> list[str]:
    """The names in `names` that the library accepts for this model (each tried by creating a session)."""
    out = []
    for name in names:
        try:
            setup.llama(name, 256, 512).close()
            out.append(name)
        except TriattnError:
            pass
    return out


# ---- teacher forcing ----------------------------------------------------------------------------------

def log_softmax32(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x -= x.max(axis=1, keepdims=True)
    x -= np.log(np.exp(x).sum(axis=1, keepdims=True))
    return x.astype(np.float32)


def run_context(llm, toks, interval: int, logits: bool, gen: int = 0, full_lp=None, lp_out=None,
                on_tokens=None, budget: int | None = None) -> dict:
    """Teacher-forces toks through llm, then (gen > 0) generates greedily.

    The first token is decoded alone (it is the 'prompt'); every later call ends exactly when the live
    slots reach budget + interval (at most `interval` tokens per call), so the slack trigger fires at the
    end of a call, where token-by-token decoding would fire it: the logits equal token-by-token decoding's.
    budget=None (full attention): calls of `interval` tokens.

    Returns per predicting position i < n-1 (the distribution for toks[i+1]): nll, argmax, compressed
    (the cache had evicted tokens before position i was decoded), kl vs full_lp (a (n-1, V) float32
    log-prob array) when given, and `gen`: the greedy continuation. lp_out, a (n-1, V) array, receives
    the log-probs themselves."""
    n = len(toks)
    toks = np.asarray(toks, dtype=np.int32)
    nll = np.zeros(max(n - 1, 0))
    argmax = np.zeros(max(n - 1, 0), dtype=np.int64)
    compressed = np.zeros(max(n - 1, 0), dtype=bool)
    kl = np.zeros(max(n - 1, 0)) if full_lp is not None else None
    llm.reset()
    last = None
    a = 0
    while a < n:
        st = llm.kv_stats()
        evicted = st["n_evicted"] > 0 or st["live_max"] < st["n_past"]
        room = interval if budget is None else budget + interval - st["live_max"]
        b = 1 if a == 0 else min(n, a + max(1, min(interval, room)))
        if logits or b == n:
            lg = llm.eval(toks[a:b])
            last = lg[-1]
        else:
            llm.decode(toks[a:b])
        if logits:
            hi = min(b, n - 1)
            if hi > a:
                lp = log_softmax32(lg[:hi - a])
                rows = np.arange(hi - a)
                nll[a:hi] = -lp[rows, toks[a + 1:hi + 1]].astype(np.float64)
                argmax[a:hi] = lp.argmax(axis=1)
                compressed[a:hi] = evicted
                if full_lp is not None:
                    f = np.asarray(full_lp[a:hi], dtype=np.float64)
                    kl[a:hi] = (np.exp(f) * (f - lp.astype(np.float64))).sum(axis=1)
                if lp_out is not None:
                    lp_out[a:hi] = lp
        if on_tokens:
            on_tokens(b - a)
        a = b
    out_gen = []
    if gen > 0 and last is not None:
        t = int(np.argmax(last))
        for g in range(gen):
            out_gen.append(t)
            if g + 1 < gen:
                t = int(np.argmax(llm.eval([t])[0]))
            if on_tokens:
                on_tokens(1)
    return {"nll": nll, "argmax": argmax, "compressed": compressed, "kl": kl,
            "gen": np.asarray(out_gen, dtype=np.int64), "kv": llm.kv_stats()}


def ppl_metrics(res: dict, full: dict) -> dict:
    """Metrics over the tokens predicted after the first compression (all tokens when none happened);
    ppl_full is full attention's perplexity on those same tokens, ppl_all the policy's over every token."""
    mask = res["compressed"] if res["compressed"].any() else np.ones_like(res["compressed"])
    nll, fnll = res["nll"][mask], full["nll"][mask]
    out = {"ppl": float(np.exp(nll.mean())) if nll.size else float("nan"),
           "delta_nll": float(nll.mean() - fnll.mean()) if nll.size else float("nan"),
           "kl": float(res["kl"][mask].mean()) if (res["kl"] is not None and nll.size) else float("nan"),
           "top1_agree": float((res["argmax"][mask] == full["argmax"][mask]).mean()) if nll.size else float("nan"),
           "ppl_full": float(np.exp(fnll.mean())) if nll.size else float("nan"),
           "ppl_all": float(np.exp(res["nll"].mean())) if res["nll"].size else float("nan"),
           "n_scored": int(mask.sum())}
    return out


def gen_metrics(gen: np.ndarray, full_gen: np.ndarray) -> dict:
    n = min(gen.size, full_gen.size)
    diff = np.nonzero(gen[:n] != full_gen[:n])[0]
    return {"first_divergence": int(diff[0]) if diff.size else n,
            "token_agreement": float((gen[:n] == full_gen[:n]).mean()) if n else float("nan"),
            "n_generated": n}


class FullCache:
    """Full attention's results per (model, tokens): log-probs (float32 .npy, memory-mapped), nll, argmax,
    greedy continuations. Files are written whole and renamed, so an interrupted run leaves none."""

    def __init__(self, root: str | os.PathLike | None, setup: Setup, toks):
        if root is None:
            from ._fetch import cache_dir
            root = cache_dir() / "eval"
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        h = hashlib.sha256()
        st = os.stat(setup.model)
        h.update(f"{Path(setup.model).name}:{st.st_size}:{setup.kv_interval}".encode())
        h.update(np.asarray(toks, dtype=np.int32).tobytes())
        self.key = h.hexdigest()[:24]

    def _p(self, what: str) -> Path:
        return self.root / f"full-{self.key}.{what}"

    def load(self, need_lp: bool, gen: int) -> dict | None:
        meta = self._p("meta.npz")
        if not meta.is_file() or (need_lp and not self._p("lp.npy").is_file()):
            return None
        with np.load(meta) as z:
            d = {k: z[k] for k in z.files}
        if gen > 0:
            g = self._p(f"gen{gen}.npy")
            if not g.is_file():
                return None
            d["gen"] = np.load(g)
        if need_lp:
            d["lp"] = np.load(self._p("lp.npy"), mmap_mode="r")
        return d

    def lp_writer(self, n: int, n_vocab: int):
        """A (n, n_vocab) float32 memory-mapped array to fill; save() publishes it."""
        return np.lib.format.open_memmap(self._p("lp.tmp.npy"), mode="w+", dtype=np.float32,
                                         shape=(max(n, 0), n_vocab))

    def save(self, res: dict, gen: int, lp=None) -> None:
        def put(what, fn):
            tmp = self._p(what + ".tmp")
            with open(tmp, "wb") as f:
                fn(f)
            os.replace(tmp, self._p(what))

        if lp is not None:
            lp.flush()
            del lp
            os.replace(self._p("lp.tmp.npy"), self._p("lp.npy"))
        put("meta.npz", lambda f: np.savez(f, nll=res["nll"], argmax=res["argmax"]))
        if gen > 0:
            put(f"gen{gen}.npy", lambda f: np.save(f, res["gen"]))


# ---- progress ------------------------------------------------------------------------------------------

class Progress:
    """One tqdm bar over the whole sweep (stderr), or nothing with quiet=True / without tqdm."""

    def __init__(self, total: int, desc: str, enabled: bool, unit: str = "tok"):
        from .calibrate import _progress
        self.bar = _progress(max(int(total), 1), desc, enabled)
        if self.bar is not None:
            self.bar.unit = unit

    def label(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=True)

    def update(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ---- eval ppl / agreement ------------------------------------------------------------------------------

def eval_text(setup: Setup, results: Results, dataset: str, text: str, policies, budgets, contexts,
              ppl: bool = True, gen: int = 0, cache_dir=None, progress: bool = True, log=None) -> None:
    """The ppl and/or agreement sweep; appends rows to results."""
    log = log or (lambda s: print(s, file=sys.stderr))
    want = (PPL_METRICS if ppl else []) + (GEN_METRICS if gen > 0 else [])
    if not want:
        raise TriattnError(ERR_INVALID_ARG, "nothing to measure: --gen-tokens must be > 0 without ppl")
    gen_ds = dataset + "-gen" if ppl else dataset
    configs = []
    for ctx in contexts:
        for pol in policies:
            for b in ([ctx] if pol == "full" else budgets):
                m = setup.method(pol)
                done = (not ppl or results.done(dataset, ctx, setup.model_name, m, b, PPL_METRICS)) and \
                       (gen <= 0 or results.done(gen_ds, ctx, setup.model_name, m, b, GEN_METRICS))
                if not done:
                    configs.append((ctx, pol, b))
    bar = Progress(sum(c[0] + gen for c in configs), "eval", progress)
    tok_cache: dict[int, list[int]] = {}
    try:
        for ctx, pol, b in configs:
            m = setup.method(pol)
            bar.label(f"{m} budget {b} context {ctx}")
            n_ctx = ctx + gen + 8
            ref = setup.llama("full", ctx, n_ctx)
            try:
                if ctx not in tok_cache:
                    tok_cache[ctx] = text_tokens(ref, text, ctx, dataset)
                toks = tok_cache[ctx]
                cache = FullCache(cache_dir, setup, toks)
                full = cache.load(ppl, gen)
                if full is None:
                    bar.label(f"full reference, context {ctx}")
                    lp = cache.lp_writer(len(toks) - 1, ref.n_vocab()) if ppl else None
                    full = run_context(ref, toks, setup.kv_interval, logits=ppl, gen=gen, lp_out=lp,
                                       on_tokens=bar.update)
                    cache.save(full, gen, lp)
                    del lp
                    full = cache.load(ppl, gen)
            finally:
                ref.close()
            if pol == "full":
                res = {**full, "compressed": np.zeros(len(full["nll"]), dtype=bool),
                       "kl": np.zeros(len(full["nll"]))}
                bar.update(ctx + gen)
            else:
                llm = setup.llama(pol, b, n_ctx)
                try:
                    res = run_context(llm, toks, setup.kv_interval, logits=ppl, gen=gen,
                                      full_lp=full.get("lp") if ppl else None, on_tokens=bar.update, budget=b)
                finally:
                    llm.close()
            if ppl:
                results.add(dataset, ctx, setup.model_name, m, b, ppl_metrics(res, full))
            if gen > 0:
                results.add(gen_ds, ctx, setup.model_name, m, b, gen_metrics(res["gen"], full["gen"]))
    finally:
        bar.close()


# ---- eval passkey --------------------------------------------------------------------------------------

NEUTRAL_FILLER = ("The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. ")
PASSKEY_HEAD = "There is a pass key hidden in the text. Remember it.\n\n"
# The needle on its own line: with the key inline in the filler SmolLM2-135M-Instruct often misses it
# even at 2K tokens with full attention; on its own line full attention finds it (docs/results.md).
PASSKEY_NEEDLE = "\nThe pass key is {key}. Remember it. {key} is the pass key.\n"
PASSKEY_TAIL = "\nWhat is the pass key? The pass key is"


def passkey_prompt(llm, length: int, depth: float, key: int, filler: str) -> tuple[str, int]:
    """(prompt text, its token count): head, filler up to about `length` tokens with the needle at
    fraction `depth` of the filler, then the question."""
    needle = PASSKEY_NEEDLE.format(key=key)
    fixed = len(llm.tokenize(PASSKEY_HEAD + needle + PASSKEY_TAIL))
    unit = len(llm.tokenize(filler, add_bos=False))
    if unit <= 0:
        raise TriattnError(ERR_INVALID_ARG, "passkey filler is empty")

    def build(n):
        k = int(round(n * depth))
        text = PASSKEY_HEAD + filler * k + needle + filler * (n - k) + PASSKEY_TAIL
        return text, len(llm.tokenize(text))

    n = max(1, round((length - fixed) / unit))
    text, got = build(n)
    n2 = max(1, n + round((length - got) / unit))   # units joined tokenize a little differently
    return build(n2) if n2 != n else (text, got)


def kjv_filler(n_chars: int = 1200) -> str:
    """A stretch of KJV prose used as one filler unit."""
    t = kjv_text()
    return " ".join(t[300_000:300_000 + n_chars].split()) + " "


def answer_key(text: str) -> int | None:
    m = re.search(r"\d{5}", text)
    return int(m.group()) if m else None


def eval_passkey(setup: Setup, results: Results, policies, budgets, lengths, depths, seed: int = 0,
                 filler: str = "neutral", progress: bool = True) -> None:
    """The passkey sweep; one configuration = (length, method, budget), all depths; appends rows."""
    fill = NEUTRAL_FILLER if filler == "neutral" else kjv_filler()
    rng = np.random.default_rng(seed)
    keys = {(L, d): int(rng.integers(10000, 100000)) for L in lengths for d in depths}
    names = ["accuracy"] + [f"hit_d{round(d * 100)}" for d in depths]
    configs = [(L, pol, b) for L in lengths for pol in policies for b in ([L] if pol == "full" else budgets)
               if not results.done("passkey", L, setup.model_name, setup.method(pol), b, names)]
    bar = Progress(sum(c[0] * len(depths) for c in configs), "passkey", progress)
    try:
        for L, pol, b in configs:
            m = setup.method(pol)
            bar.label(f"{m} budget {b} length {L}")
            llm = setup.llama(pol, b, L + 64)
            try:
                hits = {}
                for d in depths:
                    key = keys[(L, d)]
                    prompt, _ = passkey_prompt(llm, L, d, key, fill)
                    out = llm.generate(prompt, max_tokens=8, temperature=0.0, ignore_eos=False)
                    hits[f"hit_d{round(d * 100)}"] = float(answer_key(out) == key)
                    bar.update(L)
            finally:
                llm.close()
            results.add("passkey", L, setup.model_name, m, b,
                        {"accuracy": float(np.mean(list(hits.values()))), **hits})
    finally:
        bar.close()


# ---- plots ---------------------------------------------------------------------------------------------

def _series(rows, dataset, context, metric, x="budget"):
    """method -> (xs, ys) for one dataset/context/metric ('full' spread over the other methods' budgets)."""
    sel = [r for r in rows if r["dataset"] == dataset and r["context"] == context and r["metric"] == metric]
    out: dict = {}
    for r in sel:
        if r["method"] != "full":
            out.setdefault(r["method"], {})[r[x]] = r["value"]
    xs = sorted({b for d in out.values() for b in d})
    full = [r["value"] for r in sel if r["method"] == "full"]
    series = {}
    if full and xs:
        series["full"] = (xs, [full[0]] * len(xs))
    for name in sorted(out, key=_method_order):
        d = out[name]
        series[name] = (sorted(d), [d[k] for k in sorted(d)])
    return series


def _method_order(name: str):
    base = name.split("/")[0]
    return (ALL_POLICIES.index(base) if base in ALL_POLICIES else len(ALL_POLICIES), name)


def plot_results(results: Results) -> list[str]:
    """PNG charts for every dataset/context in results; returns the paths written."""
    from ._plot import grid, line_chart, write_png

    rows = results.rows
    written = []
    for ds in sorted({r["dataset"] for r in rows}):
        for ctx in sorted({r["context"] for r in rows if r["dataset"] == ds}):
            if ds == "passkey":
                continue
            metrics = [m for m in ("delta_nll", "kl", "top1_agree", "ppl_all", "first_divergence", "token_agreement")
                       if any(r["metric"] == m and r["dataset"] == ds and r["context"] == ctx for r in rows)]
            titles = {"delta_nll": "delta NLL vs full (nats/token)", "kl": "KL(full || policy) per token",
                      "top1_agree": "top-1 agreement with full", "ppl_all": "perplexity over every token",
                      "first_divergence": "tokens to first divergence", "token_agreement": "greedy token agreement"}
            imgs = []
            for met in metrics:
                s = _series(rows, ds, ctx, met)
                if s:
                    imgs.append(line_chart(s, title=f"{titles[met]}, {ds} {ctx}", xlabel="budget (tokens)",
                                           ylabel=met, logx=True))
            if imgs:
                p = f"{results.prefix}-{ds}-{ctx}.png"
                write_png(p, grid(imgs, 2))
                written.append(p)
    pk = [r for r in rows if r["dataset"] == "passkey" and r["metric"] == "accuracy"]
    if pk:
        series: dict = {}
        for r in sorted(pk, key=lambda r: (_method_order(r["method"]), r["budget"], r["context"])):
            name = "full" if r["method"] == "full" else f"{r['method']} {r['budget']}"
            xs, ys = series.setdefault(name, ([], []))
            xs.append(r["context"])
            ys.append(r["value"])
        p = f"{results.prefix}-passkey.png"
        write_png(p, line_chart(series, title="passkey accuracy", xlabel="haystack length (tokens)",
                                ylabel="accuracy", logx=True, width=760))
        written.append(p)
    return written


def summary_table(results: Results, metric: str, dataset: str) -> str:
    """Markdown table method x budget (one column per context) of one metric."""
    rows = [r for r in results.rows if r["dataset"] == dataset and r["metric"] == metric]
    if not rows:
        return ""
    ctxs = sorted({r["context"] for r in rows})
    budgets = sorted({r["budget"] for r in rows if r["method"] != "full"})
    methods = sorted({r["method"] for r in rows}, key=_method_order)
    head = "| method | " + " | ".join(f"{c} @ {b}" for c in ctxs for b in budgets) + " |"
    lines = [f"{metric} ({dataset})", "", head, "|---|" + "---:|" * (len(ctxs) * len(budgets))]
    for m in methods:
        cells = []
        for c in ctxs:
            for b in budgets:
                v = results.value(dataset, c, m, c if m == "full" else b, metric)
                cells.append("" if v is None else f"{v:.4g}")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---- command line ----------------------------------------------------------------------------------------

def main_eval(args) -> int:
    setup = Setup(args.model, args.calibration, args.threads, args.kv_interval, args.kv_window, args.kv_sink,
                  args.kv_mode)
    policies = parse_list(args.policies, str, "--policies") or available_policies(setup)
    bad = sorted(set(policies) - set(available_policies(setup, policies)))
    if bad:
        raise TriattnError(ERR_INVALID_ARG, f"--policies: the library does not accept {', '.join(bad)}")
    budgets = parse_list(args.budgets, int, "--budgets")
    contexts = parse_list(args.contexts, int, "--contexts")
    if not budgets or not contexts or min(budgets + contexts) <= 0:
        raise TriattnError(ERR_INVALID_ARG, "--budgets and --contexts need positive values")
    quiet = args.quiet
    if args.task == "passkey":
        depths = parse_list(args.depths, float, "--depths")
        if not depths or not all(0.0 <= d <= 1.0 for d in depths):
            raise TriattnError(ERR_INVALID_ARG, "--depths must be fractions in [0, 1]")
        results = Results(args.out or "eval-passkey", resume=args.resume)
        eval_passkey(setup, results, policies, budgets, contexts, depths, seed=args.seed, filler=args.filler,
                     progress=not quiet)
        tables = [summary_table(results, "accuracy", "passkey")]
    else:
        dataset, text = load_text(args.text, args.kjv)
        ppl = args.task == "ppl"
        gen = args.gen_tokens
        if gen < 0:
            raise TriattnError(ERR_INVALID_ARG, "--gen-tokens must be >= 0")
        results = Results(args.out or f"eval-{args.task}", resume=args.resume)
        eval_text(setup, results, dataset, text, policies, budgets, contexts, ppl=ppl, gen=gen,
                  cache_dir=args.cache_dir, progress=not quiet)
        gen_ds = dataset + "-gen" if ppl else dataset
        tables = [summary_table(results, m, dataset) for m in (PPL_METRICS[:4] if ppl else [])]
        tables += [summary_table(results, m, gen_ds) for m in (GEN_METRICS[:2] if gen > 0 else [])]
    plots = [] if args.no_plot else plot_results(results)
    print("\n\n".join(t for t in tables if t))
    print(f"\nwrote {results.csv_path}, {results.json_path}" + "".join(f", {p}" for p in plots), file=sys.stderr)
    return 0


EVAL_HELP = """\
Measure how close KV-cache policies stay to full attention, as a sweep over --policies x --budgets x
--contexts. Each finished configuration is appended to OUT.csv (and OUT.json is rewritten) in the kvpress
shape: dataset, context, model, method, budget, compression, metric, value; --resume skips the
configurations already there. PNG plots OUT-<dataset>-<context>.png are redrawn at the end.

tasks:
  ppl        teacher-force a long text (--text FILE, or --kjv: the King James Bible from Debian's `bible`)
             in chunks of --kv-interval tokens, the policy running between chunks (= token-by-token
             decoding). Metrics over the tokens after the first compression: ppl, delta_nll (vs full, nats
             per token), kl (mean KL(full || policy) of the next-token distributions), top1_agree; ppl_all
             over every token. Full attention's log-probs are cached (--cache-dir) per model and text.
             --gen-tokens N also runs `agreement` on the same pass (dataset <name>-gen).
  agreement  after the same context, generate --gen-tokens greedily (end-of-text ignored): tokens until
             the first divergence from full attention, and the fraction of positions that agree.
  passkey    a 5-digit key at --depths of a filler haystack of --contexts tokens, streamed through the
             cache as the prompt; greedy answer; accuracy = exact matches / depths.
"""
