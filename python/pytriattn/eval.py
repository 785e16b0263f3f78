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
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from ._errors import ERR_INVALID_ARG, ERR_IO, TriattnError

COLUMNS = ["dataset", "context", "model", "method", "budget", "compression", "metric", "value"]
ALL_POLICIES = ["full", "triattention", "snapkv", "snapkv_prompt", "rkv", "h2o", "streaming", "random"]
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


# ---- eval needle ----------------------------------------------------------------------------------------

NEEDLE_HAYSTACKS = ("kjv", "jargon", "code")
JARGON_HINT = "the Jargon File (public domain) comes from Debian: apt-get install -y jargon-text"
JARGON_PATH = Path("/usr/share/doc/jargon-text/jargon.txt.gz")
# (name, needle line, question); {v} is the 5-digit value. Each needle stands on its own line.
NEEDLE_PHRASINGS = (
    ("passkey", "\nThe pass key is {v}. Remember it. {v} is the pass key.\n",
     "\nWhat is the pass key? The pass key is"),
    ("vault", "\nThe secret code of the vault is {v}.\n",
     "\nWhat is the secret code of the vault? The secret code of the vault is"),
    ("magic", "\nRemember this number: the magic number is {v}.\n",
     "\nWhat is the magic number? The magic number is"),
)
NEEDLE_HEAD = "A number is hidden in the text below. Find it and remember it.\n\n"
KV_NAMES = ("Alice", "Boris", "Chen", "Dana", "Emil", "Farah", "Gustav", "Hana", "Ivo", "Julia")
KV_FACT = "\nThe code for {name} is {v}.\n"
KV_HEAD = "Several codes are hidden in the text below, one per person. Remember them.\n\n"
KV_QUESTION = "\nWhat is the code for {name}? The code for {name} is"
NEEDLE_METRICS = ["hits", "n", "hit_rate", "ci_lo", "ci_hi", "survival", "survival_best_head"]


def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval (95% by default) of a binomial proportion k / n."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    den = 1.0 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return float(max(0.0, mid - half)), float(min(1.0, mid + half))


def mcnemar_p(b: int, c: int) -> float:
    """Exact two-sided McNemar test: p-value of b vs c discordant pairs under Binomial(b + c, 1/2)."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2.0 ** n
    return min(1.0, 2.0 * tail)


def haystack_text(name: str) -> str:
    """Real text for a haystack: KJV verses, the Jargon File (Debian jargon-text), or this package's C sources."""
    if name == "kjv":
        return kjv_text()
    if name == "jargon":
        import gzip
        if not JARGON_PATH.is_file():
            raise TriattnError(ERR_IO, f"{JARGON_PATH} is missing; {JARGON_HINT}")
        with gzip.open(JARGON_PATH, "rt", encoding="utf-8", errors="replace") as f:
            return f.read()
    if name == "code":
        roots = [Path(__file__).resolve().parents[2] / "src", Path(__file__).resolve().parent]
        files = [f for r in roots if r.is_dir() for f in sorted(r.rglob("*")) if f.suffix in (".c", ".h", ".py")]
        text = "\n".join(f.read_text(encoding="utf-8", errors="replace") for f in files)
        if len(text) < 100_000:
            raise TriattnError(ERR_IO, "not enough source code next to the package for the `code` haystack")
        return text
    raise TriattnError(ERR_INVALID_ARG, f"unknown haystack '{name}' (available: {', '.join(NEEDLE_HAYSTACKS)})")


def needle_cases(task: str, contexts, depths, seeds, haystacks, n_facts: int = 4) -> list[dict]:
    """The case grid: per context, seed and depth one case; haystack and phrasing rotate with the case so
    every cell mixes them; values, haystack offsets and (kvrecall) the other facts' depths come from the seed."""
    cases = []
    for ctx in contexts:
        for seed in seeds:
            for di, d in enumerate(depths):
                rng = np.random.default_rng([seed, di, ctx, 7 if task == "kvrecall" else 1])
                c = {"task": task, "context": int(ctx), "seed": int(seed), "depth": float(d),
                     "haystack": haystacks[(seed + di) % len(haystacks)],
                     "offset": float(rng.random()), "value": int(rng.integers(10000, 100000))}
                if task == "needle":
                    c["phrasing"] = NEEDLE_PHRASINGS[(seed * 2 + di) % len(NEEDLE_PHRASINGS)][0]
                else:
                    names = list(rng.choice(len(KV_NAMES), size=n_facts, replace=False))
                    c["names"] = [KV_NAMES[i] for i in names]
                    c["values"] = [int(rng.integers(10000, 100000)) for _ in names]
                    c["values"][0] = c["value"]
                    others = sorted(float(x) for x in rng.random(n_facts - 1))
                    c["depths"] = [float(d)] + others     # fact 0 (the one asked for) at the case's depth
                cases.append(c)
    return cases


def needle_prompt(llm, case: dict, text_cache: dict) -> tuple[list[int], tuple[int, int]]:
    """Token ids of the case's prompt and the [start, end) positions of the asked needle. Pieces are tokenized
    separately and joined, so the needle's positions are exact."""
    if case["haystack"] not in text_cache:
        text_cache[case["haystack"]] = haystack_text(case["haystack"])
    text = text_cache[case["haystack"]]
    if case["task"] == "needle":
        ph = {p[0]: p for p in NEEDLE_PHRASINGS}[case["phrasing"]]
        head, question = NEEDLE_HEAD, ph[2]
        facts = [(case["depth"], ph[1].format(v=case["value"]))]
    else:
        head, question = KV_HEAD, KV_QUESTION.format(name=case["names"][0])
        facts = [(d, KV_FACT.format(name=n, v=v)) for d, n, v in zip(case["depths"], case["names"], case["values"])]
    tok = lambda s: llm.tokenize(s, add_bos=False)  # noqa: E731
    head_t = llm.tokenize(head, add_bos=True)
    q_t = tok(question)
    fact_t = [tok(f) for _, f in facts]
    n_hay = case["context"] - len(head_t) - len(q_t) - sum(len(f) for f in fact_t)
    if n_hay < 16:
        raise TriattnError(ERR_INVALID_ARG, f"context {case['context']} is too short for the needle prompt")
    start = int(case["offset"] * max(0, len(text) - n_hay * 6))
    hay: list[int] = []
    for mult in (6, 12, 24):   # characters per token vary with the text: take more until it is enough
        chunk = text[start:start + n_hay * mult]
        chunk += text[:max(0, n_hay * mult - len(chunk))]
        hay = tok(chunk)
        if len(hay) >= n_hay:
            break
    if len(hay) < n_hay:
        raise TriattnError(ERR_INVALID_ARG, f"haystack '{case['haystack']}' is too short for {n_hay} tokens")
    hay = hay[:n_hay]
    order = sorted(range(len(facts)), key=lambda i: facts[i][0])
    toks, span, at = list(head_t), (0, 0), 0
    for i in order:
        cut = int(round(facts[i][0] * n_hay))
        toks += hay[at:cut]
        at = cut
        if i == 0:
            span = (len(toks), len(toks) + len(fact_t[i]))
        toks += fact_t[i]
    toks += hay[at:] + q_t
    return toks, span


def run_needle_case(llm, toks, span, value: int, max_tokens: int = 8) -> dict:
    """Prefills the prompt (one decode call: the prompt of the KV policy), records which needle positions
    every (layer, KV head) still holds, then answers greedily. Hit = the first 5-digit number is the value."""
    llm.reset()
    llm.decode(toks)
    pos = llm.kv_positions()
    need = np.arange(span[0], span[1])
    surv = np.isin(pos, need).sum(axis=2) / max(1, need.size)      # (n_layer, n_head_kv)
    out = []
    logits = llm.last_logits()
    for _ in range(max_tokens):
        t = int(np.argmax(logits))
        if llm.token_is_eog(t):
            break
        out.append(t)
        if len(out) == max_tokens:
            break
        logits = llm.eval([t])[0]
    answer = llm.detokenize(out).decode("utf-8", "replace")
    return {"hit": answer_key(answer) == value, "answer": answer, "survival": surv}


def eval_needle(setup: Setup, prefix: str, policies, budgets, contexts, depths, seeds, haystacks,
                task: str = "needle", n_facts: int = 4, progress: bool = True, log=None) -> Results:
    """The needle (or kvrecall) sweep. Cases run one after another, every (policy, budget) on each case, so
    an interrupted sweep stays balanced; each case is appended to PREFIX-<task>-cases.jsonl (kept: a later
    run skips the cases there) and PREFIX.csv/.json are rewritten at the end from every case in that file:
    per cell hits, Wilson 95% interval, needle survival. Returns those results."""
    log = log or (lambda s: print(s, file=sys.stderr))
    cases = needle_cases(task, contexts, depths, seeds, haystacks, n_facts)
    path = Path(prefix + f"-{task}-cases.jsonl")
    done = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            r = json.loads(line)
            done[_case_key(r)] = r
    runs = [(c, pol, b) for c in cases for pol in policies for b in ([c["context"]] if pol == "full" else budgets)]
    todo = [r for r in runs if _case_key({**r[0], "method": setup.method(r[1]), "budget": r[2]}) not in done]
    bar = Progress(sum(c["context"] for c, _, _ in todo), task, progress)
    sessions: dict = {}
    text_cache: dict = {}
    try:
        for c, pol, b in todo:
            m = setup.method(pol)
            key = (pol, b, c["context"])
            if key not in sessions:
                for old in sessions.values():
                    old.close()
                sessions = {key: setup.llama(pol, b, c["context"] + 16)}
            llm = sessions[key]
            bar.label(f"{m} budget {b} context {c['context']} depth {c['depth']}")
            toks, span = needle_prompt(llm, c, text_cache)
            r = run_needle_case(llm, toks, span, c["value"])
            rec = {**c, "method": m, "budget": int(b), "model": setup.model_name, "hit": bool(r["hit"]),
                   "answer": r["answer"], "span": list(span), "survival": np.round(r["survival"], 4).tolist()}
            with open(path, "a", encoding="utf-8") as f:
                f.write(json.dumps(rec) + "\n")
            done[_case_key(rec)] = rec
            bar.update(c["context"])
    finally:
        for llm in sessions.values():
            llm.close()
        bar.close()
    results = Results(prefix)
    for row in needle_summary(list(done.values()), task):
        results.add(row["dataset"], row["context"], row["model"], row["method"], row["budget"], row["metrics"])
    return results


def _case_key(r: dict) -> tuple:
    return (r["task"], r["context"], r["seed"], r["depth"], r["method"], int(r["budget"]))


def needle_summary(cases: list[dict], task: str) -> list[dict]:
    """Per (context, method, budget): hits, cases, hit rate with its Wilson 95% interval, mean needle
    survival over (layer, KV head) and in the best head."""
    cells: dict = {}
    for r in cases:
        if r["task"] == task:
            cells.setdefault((r["context"], r["model"], r["method"], r["budget"]), []).append(r)
    out = []
    for (ctx, model, m, b), rs in sorted(cells.items(), key=lambda kv: (kv[0][0], _method_order(kv[0][2]), kv[0][3])):
        k, n = sum(r["hit"] for r in rs), len(rs)
        lo, hi = wilson(k, n)
        surv = np.array([np.asarray(r["survival"], dtype=float) for r in rs])
        out.append({"dataset": task, "context": ctx, "model": model, "method": m, "budget": b,
                    "metrics": {"hits": k, "n": n, "hit_rate": k / n, "ci_lo": lo, "ci_hi": hi,
                                "survival": float(surv.mean()),
                                "survival_best_head": float(surv.reshape(n, -1).max(axis=1).mean())}})
    return out


def plot_needle(prefix: str, cases: list[dict]) -> list[str]:
    """Needle survival (mean over (layer, KV head)) and hit rate against depth, one line per method and
    budget, one chart per context."""
    from ._plot import grid, line_chart, write_png

    written = []
    for task in sorted({r["task"] for r in cases}):
        imgs = []
        for ctx in sorted({r["context"] for r in cases if r["task"] == task}):
            sel = [r for r in cases if r["task"] == task and r["context"] == ctx]
            for metric, title in (("survival", "needle tokens kept (mean over layer, KV head)"), ("hit", "hit rate")):
                series: dict = {}
                for name in sorted({(r["method"], r["budget"]) for r in sel}, key=lambda x: (_method_order(x[0]), x[1])):
                    rs = [r for r in sel if (r["method"], r["budget"]) == name]
                    ds = sorted({r["depth"] for r in rs})
                    ys = [float(np.mean([np.mean(r["survival"]) if metric == "survival" else float(r["hit"])
                                         for r in rs if r["depth"] == d])) for d in ds]
                    label = name[0] if name[0] == "full" else f"{name[0]} {name[1]}"
                    series[label] = (ds, ys)
                imgs.append(line_chart(series, title=f"{title}, {task} {ctx}", xlabel="needle depth",
                                       ylabel=metric, width=700))
        if imgs:
            p = f"{prefix}-{task}-survival.png"
            write_png(p, grid(imgs, 2))
            written.append(p)
    return written


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
    if args.task in ("needle", "kvrecall"):
        depths = parse_list(args.depths, float, "--depths")
        seeds = parse_list(args.seeds, int, "--seeds")
        hays = parse_list(args.haystacks, str, "--haystacks")
        if not depths or not all(0.0 <= d <= 1.0 for d in depths) or not seeds or not hays:
            raise TriattnError(ERR_INVALID_ARG, "--depths must be fractions in [0, 1]; --seeds and --haystacks "
                               "must not be empty")
        prefix = Results(args.out or f"eval-{args.task}", resume=args.resume).prefix
        if not args.resume:
            Path(prefix + f"-{args.task}-cases.jsonl").unlink(missing_ok=True)
        results = eval_needle(setup, prefix, policies, budgets, contexts, depths, seeds, hays, task=args.task,
                              n_facts=args.facts, progress=not quiet)
        tables = [summary_table(results, m, args.task) for m in ("hit_rate", "ci_lo", "ci_hi", "survival")]
        if not args.no_plot:
            path = Path(results.prefix + f"-{args.task}-cases.jsonl")
            cases = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]
            args.no_plot = True
            plots = plot_needle(results.prefix, cases) + plot_results(results)
        else:
            plots = []
        print("\n\n".join(t for t in tables if t))
        print(f"\nwrote {results.csv_path}, {results.json_path}" + "".join(f", {p}" for p in plots), file=sys.stderr)
        return 0
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
  needle     a 5-digit value hidden at --depths of real text (--haystacks: kjv = KJV verses, jargon = the
             Jargon File from Debian's jargon-text, code = this package's sources), one of several needle
             phrasings, --seeds per cell; the prompt (head, haystack with the needle, question) is one
             decode call, then a greedy answer. Per (context, policy, budget): hits, hit_rate with a Wilson
             95% interval (ci_lo, ci_hi), survival = fraction of the needle's tokens still in the cache after
             the prompt (mean over (layer, KV head)). Every case, with its (layer, KV head) survival, goes to
             OUT-needle-cases.jsonl (--resume runs only the cases missing there; OUT.csv is rebuilt from
             every case in it); plot OUT-needle-survival.png.
  kvrecall   the same with --facts "The code for NAME is VALUE." lines at random depths (the asked one at
             --depths); the question names one person.
  passkey    a 5-digit key at --depths of a filler haystack of --contexts tokens, streamed through the
             cache as the prompt; greedy answer; accuracy = exact matches / depths.
"""
