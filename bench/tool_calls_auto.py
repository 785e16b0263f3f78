#!/usr/bin/env python3
"""Tool calls in `tool_choice: "auto"`: the share of turns whose intended call arrives as `tool_calls`, with the
server's strict parsing (--strict-tool-calls: only the chat format's own <tool_call> syntax) and with the default
lenient parsing (also the fenced / bare JSON calls, Llama 3 objects, <|python_tag|> and [TOOL_CALLS] that small
models write instead).

An agent loop with the unchanged `openai` client against triattn-server on 127.0.0.1: five conversations of two
questions, each needing one of the tools get_weather(city) and add(a, b). When calls arrive as tool_calls their
results are fed back (role "tool") and the model answers (at most two such turns, which may call again);
otherwise the reply stays in the conversation as it came and the next question follows. The share counts the
question turns only. Greedy decoding; every other question is streamed. Both modes run the same
conversations, so their first turns see the same prompt.

  python bench/tool_calls_auto.py                                  # default model and Qwen2.5-Coder-1.5B
  python bench/tool_calls_auto.py --models smollm2-135m --max-tokens 48

Writes bench/results/tool_calls_auto.json (every turn: question, reply, calls) and prints a Markdown table.
Slow on 2 cores: the 1.5B model takes several seconds a turn.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.append(str(ROOT / "python"))  # an installed pytriattn comes first

from server_load import server_binary  # noqa: E402

TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Get the current weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "City name"}},
                       "required": ["city"]}}},
    {"type": "function", "function": {
        "name": "add", "description": "Add two numbers.",
        "parameters": {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
                       "required": ["a", "b"]}}},
]

ANSWER_TURNS = 2  # turns after a call's results at most, before the next question

# conversations of (question, intended tool, the arguments that answer it)
CONVERSATIONS = [
    [("What's the weather in Paris right now?", "get_weather", {"city": "Paris"}),
     ("And what is 17 plus 25?", "add", {"a": 17, "b": 25})],
    [("How warm is it in Tokyo today?", "get_weather", {"city": "Tokyo"}),
     ("Add 3.5 and 4.25 for me.", "add", {"a": 3.5, "b": 4.25})],
    [("What is 1234 + 4321?", "add", {"a": 1234, "b": 4321}),
     ("Is it raining in London?", "get_weather", {"city": "London"})],
    [("Weather in Berlin, please.", "get_weather", {"city": "Berlin"}),
     ("What's the sum of 99 and 1?", "add", {"a": 99, "b": 1})],
    [("Can you add 250 and 750?", "add", {"a": 250, "b": 750}),
     ("What's the weather like in New York?", "get_weather", {"city": "New York"})],
]


def run_tool(name: str, args: dict) -> str:
    if name == "get_weather":
        city = str(args.get("city", ""))
        return json.dumps({"city": city, "temperature_c": 12 + len(city) % 9, "sky": "partly cloudy"})
    try:
        return str(float(args["a"]) + float(args["b"]))
    except (KeyError, TypeError, ValueError):
        return "error: add needs numbers a and b"


def args_match(name: str, got: dict, want: dict) -> bool:
    if name == "get_weather":
        return want["city"].lower() in str(got.get("city", "")).lower()
    try:
        return sorted(float(got[k]) for k in ("a", "b")) == sorted(float(want[k]) for k in ("a", "b"))
    except (KeyError, TypeError, ValueError):
        return False


def shape_of(text: str | None) -> str:
    """How a reply that carries no tool_calls is written (for the failure table)."""
    t = (text or "").strip()
    if "<tool_call>" in t:
        return "<tool_call> tag"
    if re.search(r"```(json|JSON)?\s*[\[{]", t):
        return "fenced JSON"
    if t[:1] in "{[" and t:
        return "bare JSON"
    if '"name"' in t:
        return "JSON in prose"
    return "prose"


class Server:
    def __init__(self, model: Path, strict: bool, threads: int):
        args = [server_binary(), "-m", str(model), "--port", "0", "--alias", "m", "--parallel", "1",
                "--ctx-size", "4096", "--threads", str(threads)] + (["--strict-tool-calls"] if strict else [])
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("listening on http://"):
            raise SystemExit(f"server did not start: {line!r}")
        self.base = line.strip().split(" ", 2)[2]

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def collect_stream(stream) -> tuple[str, list[dict], str]:
    """Content, calls and finish_reason of a streamed reply, assembled as OpenAI clients do."""
    content, calls, finish = "", {}, None
    for chunk in stream:
        if not chunk.choices:
            continue
        ch = chunk.choices[0]
        content += ch.delta.content or ""
        for tc in ch.delta.tool_calls or []:
            slot = calls.setdefault(tc.index, {"id": None, "name": None, "arguments": ""})
            if tc.id:
                slot["id"], slot["name"] = tc.id, tc.function.name
            slot["arguments"] += tc.function.arguments or ""
        finish = ch.finish_reason or finish
    return content, [calls[k] for k in sorted(calls)], finish


def ask(client, msgs: list[dict], stream: bool, max_tokens: int) -> dict:
    kw = dict(model="m", messages=msgs, tools=TOOLS, tool_choice="auto", max_tokens=max_tokens, temperature=0)
    t0 = time.perf_counter()
    if stream:
        content, calls, finish = collect_stream(client.chat.completions.create(stream=True, **kw))
    else:
        r = client.chat.completions.create(**kw)
        m, finish = r.choices[0].message, r.choices[0].finish_reason
        content = m.content or ""
        calls = [{"id": c.id, "name": c.function.name, "arguments": c.function.arguments} for c in m.tool_calls or []]
    return {"content": content or None, "calls": calls, "finish_reason": finish, "stream": stream,
            "seconds": round(time.perf_counter() - t0, 2)}


def feed_back(msgs: list[dict], r: dict) -> None:
    """Appends a reply, and the results of its calls as role "tool" messages."""
    if not r["calls"]:
        msgs.append({"role": "assistant", "content": r["content"] or ""})
        return
    msgs.append({"role": "assistant", "content": r["content"], "tool_calls": [
        {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
        for c in r["calls"]]})
    for c in r["calls"]:
        msgs.append({"role": "tool", "tool_call_id": c["id"], "content": run_tool(c["name"], json.loads(c["arguments"]))})


def run_mode(model: Path, strict: bool, threads: int, max_tokens: int) -> list[dict]:
    import openai
    srv = Server(model, strict, threads)
    turns = []
    try:
        client = openai.OpenAI(base_url=srv.base + "/v1", api_key="x", timeout=900, max_retries=0)
        q_index = 0
        for ci, conv in enumerate(CONVERSATIONS):
            msgs: list[dict] = []
            for question, tool, want in conv:
                msgs.append({"role": "user", "content": question})
                r = ask(client, msgs, stream=q_index % 2 == 1, max_tokens=max_tokens)
                q_index += 1
                hit = [c for c in r["calls"] if c["name"] == tool]
                args = json.loads(hit[0]["arguments"]) if hit else None
                turns.append({"conversation": ci, "kind": "question", "question": question, "intended": tool,
                              "called": bool(hit), "args_ok": bool(hit) and args_match(tool, args, want),
                              "shape": None if r["calls"] else shape_of(r["content"]), **r})
                print(f"  {'strict' if strict else 'lenient'} {question!r}: "
                      f"{[c['name'] for c in r['calls']] or shape_of(r['content'])} ({r['seconds']} s)", flush=True)
                for follow in range(ANSWER_TURNS + 1):  # results go back until the model answers in words
                    feed_back(msgs, r)
                    if not r["calls"] or follow == ANSWER_TURNS:
                        break
                    r = ask(client, msgs, stream=False, max_tokens=max_tokens)
                    turns.append({"conversation": ci, "kind": "answer", "question": question, **r})
    finally:
        srv.close()
    return turns


def summary(turns: list[dict]) -> dict:
    q = [t for t in turns if t["kind"] == "question"]
    shapes: dict[str, int] = {}
    for t in q:
        if not t["called"]:
            shapes[t["shape"] or "another tool"] = shapes.get(t["shape"] or "another tool", 0) + 1
    return {"questions": len(q), "intended_call_as_tool_calls": sum(t["called"] for t in q),
            "share": round(sum(t["called"] for t in q) / len(q), 3), "args_ok": sum(t["args_ok"] for t in q),
            "answer_turns": sum(t["kind"] == "answer" for t in turns),
            "answer_turns_with_calls": sum(t["kind"] == "answer" and bool(t["calls"]) for t in turns),
            "missed_by_shape": shapes, "turns": len(turns),
            "seconds": round(sum(t["seconds"] for t in turns), 1)}


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["smollm2-135m", "qwen2.5-coder-1.5b"],
                    help="names known to `pytriattn fetch` (fetched when missing)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "tool_calls_auto.json")
    args = ap.parse_args()
    from pytriattn._fetch import DEFAULT_NAME, ensure_default_model, ensure_model
    result = {"commit": git_commit(), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
              "threads": args.threads, "max_tokens": args.max_tokens, "temperature": 0,
              "tools": [t["function"]["name"] for t in TOOLS], "models": {}}
    for name in args.models:
        path = ensure_default_model() if name == DEFAULT_NAME else ensure_model(name)
        print(f"{name}: {path}", flush=True)
        result["models"][name] = {"file": path.name}
        for mode in ("strict", "lenient"):
            turns = run_mode(path, mode == "strict", args.threads, args.max_tokens)
            result["models"][name][mode] = {"summary": summary(turns), "turns": turns}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    print(f"\nwrote {args.out}\n")
    print("| model | parsing | intended call as `tool_calls` | arguments right | missed calls written as |")
    print("|---|---|---|---|---|")
    for name, r in result["models"].items():
        for mode in ("strict", "lenient"):
            s = r[mode]["summary"]
            missed = ", ".join(f"{k} {v}" for k, v in sorted(s["missed_by_shape"].items())) or "—"
            print(f"| {name} | {mode} | {s['intended_call_as_tool_calls']}/{s['questions']} ({s['share']:.0%}) | "
                  f"{s['args_ok']}/{s['questions']} | {missed} |")


if __name__ == "__main__":
    main()
