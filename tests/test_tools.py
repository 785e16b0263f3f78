"""Tool calls: prompt rendering against a Jinja oracle, the output parser on synthetic replies, the Python API,
and the acceptance agent loop with the unchanged openai client against triattn-server (full and TriAttention
caches). The loop asserts the protocol, not the model's judgement: a 135M model often answers in prose when it
may choose; turns with tool_choice "required" or a named function must always come back as a well-formed call
matching the tool's schema (constrained sampling)."""
from __future__ import annotations

import ast
import json
import operator
import random
from pathlib import Path

import pytest

openai = pytest.importorskip("openai")
jsonschema = pytest.importorskip("jsonschema")
jinja2 = pytest.importorskip("jinja2")

from test_server import Server  # noqa: E402  (the server fixture's process wrapper)

SIDECAR = Path(__file__).resolve().parents[1] / "python" / "pytriattn" / "data" / \
    "SmolLM2-135M-Instruct.Q4_1.tri-stats.gguf"

TOOLS = [
    {"type": "function", "function": {
        "name": "calculator", "description": "Evaluate an arithmetic expression such as 12*(3+4).",
        "parameters": {"type": "object", "properties": {"expression": {"type": "string"}},
                       "required": ["expression"]}}},
    {"type": "function", "function": {
        "name": "read_file", "description": "Return the text of a file by name.",
        "parameters": {"type": "object", "properties": {"name": {"type": "string", "enum": ["notes.txt", "todo.txt"]}},
                       "required": ["name"]}}},
    {"type": "function", "function": {
        "name": "clock", "description": "The current date and time.",
        "parameters": {"type": "object", "properties": {}}}},
]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
FILES = {"notes.txt": "Meeting moved to 3pm.", "todo.txt": "1. buy milk\n2. call Ann"}


# ---- the three tools the agent runs ------------------------------------------------------------------

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
        ast.USub: operator.neg, ast.Pow: operator.pow}


def _calc(node):
    if isinstance(node, ast.Expression):
        return _calc(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_calc(node.left), _calc(node.right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_calc(node.operand))
    raise ValueError("not arithmetic")


def run_tool(name: str, args: dict) -> str:
    try:
        if name == "calculator":
            return str(_calc(ast.parse(str(args.get("expression", "")), mode="eval")))
        if name == "read_file":
            return FILES.get(str(args.get("name")), "error: no such file")
        if name == "clock":
            return "2026-12-02 13:00 UTC"
    except (ValueError, SyntaxError, ZeroDivisionError, OverflowError, TypeError) as e:
        return f"error: {e}"
    return "error: unknown tool"


# ---- a Jinja oracle of the Hermes/ChatML tool format ------------------------------------------------

HERMES_TEMPLATE = """
{%- if tools %}
{{- '<|im_start|>system\\n' }}
{%- if messages[0].role == 'system' %}{{- messages[0].content }}{%- else %}{{- default_system }}{%- endif %}
{{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
{%- for tool in tools %}{{- "\\n" }}{{- tool | tojson }}{%- endfor %}
{{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
{%- if messages[0].role == 'system' %}{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
{%- else %}{{- '<|im_start|>system\\n' + default_system + '<|im_end|>\\n' }}{%- endif %}
{%- endif %}
{%- for message in messages %}
{%- if message.role == 'user' or (message.role == 'system' and not loop.first) or (message.role == 'assistant' and not message.tool_calls) %}
{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}
{%- elif message.role == 'assistant' %}
{{- '<|im_start|>' + message.role }}
{%- if message.content %}{{- '\\n' + message.content }}{%- endif %}
{%- for tool_call in message.tool_calls %}
{%- set tool_call = tool_call.function %}
{{- '\\n<tool_call>\\n{"name": "' }}{{- tool_call.name }}{{- '", "arguments": ' }}{{- tool_call.arguments | fromjson | tojson }}{{- '}\\n</tool_call>' }}
{%- endfor %}
{{- '<|im_end|>\\n' }}
{%- elif message.role == 'tool' %}
{%- if loop.index0 == 0 or messages[loop.index0 - 1].role != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}
{{- '\\n<tool_response>\\n' }}{{- message.content }}{{- '\\n</tool_response>' }}
{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}{{- '<|im_end|>\\n' }}{%- endif %}
{%- endif %}
{%- endfor %}
{{- '<|im_start|>assistant\\n' }}
"""


def _oracle(messages, tools, default_system):
    env = jinja2.Environment()
    env.filters["tojson"] = lambda v: json.dumps(v, ensure_ascii=False)
    env.filters["fromjson"] = json.loads
    return env.from_string(HERMES_TEMPLATE).render(messages=messages, tools=tools, default_system=default_system)


def _rand_text(rng):
    words = ["hello", "wörld", "中文", "12*7", "a\nb", "{x}", "\"q\"", "tab\t", "ok"]
    return " ".join(rng.choice(words) for _ in range(rng.randint(1, 5)))


def _rand_call(rng, i):
    name = rng.choice(list(SCHEMAS))
    args = {"expression": _rand_text(rng)} if name == "calculator" else \
        {"name": rng.choice(list(FILES))} if name == "read_file" else {}
    return {"id": f"call_{i}", "type": "function",
            "function": {"name": name, "arguments": json.dumps(args, ensure_ascii=False)}}


def _rand_conversation(rng):
    msgs = [{"role": "system", "content": _rand_text(rng)}] if rng.random() < 0.5 else []
    for t in range(rng.randint(1, 4)):
        msgs.append({"role": "user", "content": _rand_text(rng)})
        if rng.random() < 0.6:
            calls = [_rand_call(rng, f"{t}_{k}") for k in range(rng.randint(1, 2))]
            msgs.append({"role": "assistant", "content": _rand_text(rng) if rng.random() < 0.3 else None,
                         "tool_calls": calls})
            msgs += [{"role": "tool", "tool_call_id": c["id"], "content": _rand_text(rng)} for c in calls]
        msgs.append({"role": "assistant", "content": _rand_text(rng)})
    msgs.append({"role": "user", "content": _rand_text(rng)})
    return msgs


@pytest.fixture(scope="module")
def llm(default_model):
    from pytriattn.llama import Llama
    return Llama(str(default_model), n_ctx=1024, seed=1)


def _default_system(llm):
    text = llm.apply_chat_template([{"role": "user", "content": "x"}])
    assert text.startswith("<|im_start|>system\n"), text
    return text[len("<|im_start|>system\n"):text.index("<|im_end|>")]


def test_chatml_rendering_matches_jinja_oracle(llm):
    from pytriattn._tools import ToolRequest
    rng = random.Random()
    default_system = _default_system(llm)
    for _ in range(40):
        msgs = _rand_conversation(rng)
        tools = rng.sample(TOOLS, rng.randint(0, 3)) or None
        got = ToolRequest(llm._m(), None, tools, None).prompt(msgs)
        want = _oracle([{**m, "content": m.get("content") or ""} for m in msgs], tools, default_system)
        assert got == want


def test_forced_prompt_ends_with_the_call_opening(llm):
    from pytriattn._tools import ToolRequest
    msgs = [{"role": "user", "content": "time?"}]
    for choice in ("required", {"type": "function", "function": {"name": "clock"}}):
        req = ToolRequest(llm._m(), None, TOOLS, choice)
        assert req.prompt(msgs).endswith("<|im_start|>assistant\n<tool_call>\n")
        schema = json.loads(req.schema())
        enum = schema["properties"]["name"]["enum"]
        assert enum == (["clock"] if isinstance(choice, dict) else [t["function"]["name"] for t in TOOLS])
        jsonschema.validate({"name": "clock", "arguments": {}}, schema)
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({"name": "nope", "arguments": {}}, schema)
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({"name": "clock"}, schema)
    assert ToolRequest(llm._m(), None, TOOLS, "auto").schema() is None


@pytest.mark.parametrize("fmt", [None, "llama3", "mistral"])
def test_parser_round_trips_calls_and_keeps_malformed_text(llm, fmt):
    from pytriattn._tools import ToolRequest
    rng = random.Random()
    req = ToolRequest(llm._m(), fmt, TOOLS, None)
    for _ in range(30):
        call = _rand_call(rng, 0)["function"]
        args = json.loads(call["arguments"])
        if fmt == "llama3":
            text = json.dumps({"name": call["name"], "parameters": args})
        else:
            text = rng.choice(["", "Let me check. "]) + "<tool_call>\n" + \
                json.dumps({"name": call["name"], "arguments": args}) + "\n</tool_call>"
        p = req.parser()
        deltas = []
        i = 0
        while i < len(text):  # random pieces, like tokens
            k = rng.randint(1, 6)
            deltas += p.feed(text[i:i + k])
            i += k
        deltas += p.feed("", final=True)
        msg = p.message()
        assert p.n_calls == 1 and len(msg["tool_calls"]) == 1
        tc = msg["tool_calls"][0]
        assert tc["type"] == "function" and tc["id"].startswith("call_") and tc["function"]["name"] == call["name"]
        assert json.loads(tc["function"]["arguments"]) == args
        # the streamed deltas assemble to the same call
        first = [d for d in deltas if "tool_calls" in d][0]["tool_calls"][0]
        assert first["index"] == 0 and first["id"] == tc["id"] and first["function"]["arguments"] == ""
        assembled = "".join(d["tool_calls"][0]["function"].get("arguments", "") for d in deltas if "tool_calls" in d)
        assert json.loads(assembled) == args
    for bad in ["<tool_call>{\"name\": \"calculator\", \"arguments\": {\"expression\": ",
                "<tool_call>{\"name\": \"rm_rf\", \"arguments\": {}}</tool_call>",
                "<tool_call>not json</tool_call> and more", "{\"name\": 3}", "plain answer {",
                "<tool_call>\n[1, 2]\n</tool_call>", "\xff\x00<tool_"]:
        p = req.parser()
        text = "".join(d.get("content", "") for d in p.feed(bad) + p.feed("", final=True))
        assert p.n_calls == 0 and text == bad and p.message() == {"content": bad}


def test_python_api_tool_round_trip(llm):
    msgs = [{"role": "user", "content": "What is 6*7? Use the calculator."},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_x", "type": "function",
                 "function": {"name": "calculator", "arguments": "{\"expression\": \"6*7\"}"}}]},
            {"role": "tool", "tool_call_id": "call_x", "content": "42"}]
    r = llm.create_chat_completion(msgs, tools=TOOLS, max_tokens=24, temperature=0)
    _check_choice(r["choices"][0], forced=None)
    chunks = list(llm.create_chat_completion(msgs, tools=TOOLS, max_tokens=24, temperature=0, stream=True))
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length", "tool_calls")
    streamed = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert streamed == (r["choices"][0]["message"]["content"] or "") or r["choices"][0]["finish_reason"] == "tool_calls"
    from pytriattn import TriattnError
    with pytest.raises(TriattnError, match="not in 'tools'"):
        llm.create_chat_completion(msgs, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "x"}})


# ---- the protocol checks -------------------------------------------------------------------------------

def _plain(o):
    return o if isinstance(o, dict) else o.model_dump()


def _check_choice(choice, forced):
    """One reply obeys the OpenAI protocol; forced = None, "required" or a function name."""
    choice = _plain(choice)
    msg, finish = choice["message"], choice["finish_reason"]
    assert msg["role"] == "assistant"
    calls = msg.get("tool_calls") or []
    assert finish in ("stop", "length", "tool_calls")
    assert (finish == "tool_calls") == bool(calls), choice
    if forced is not None:
        assert len(calls) >= 1, f"tool_choice {forced!r} gave no call: {choice}"
    for c in calls:
        assert c["type"] == "function" and c["id"].startswith("call_") and len(c["id"]) > 8
        name = c["function"]["name"]
        assert name in SCHEMAS
        if forced not in (None, "required"):
            assert name == forced
        args = json.loads(c["function"]["arguments"])
        assert isinstance(args, dict)
        if forced not in (None, "required"):
            # a named function: the arguments match its parameters (with "required" and tools whose
            # parameters differ the schema only asks for a tool's name and an object of arguments)
            jsonschema.validate(args, SCHEMAS[name])
    if not calls:
        assert isinstance(msg["content"], str)
    return calls


def _collect_stream(stream):
    """Assembles a streamed reply the way OpenAI clients do; returns (choice-like dict, usage)."""
    content, calls, finish, usage, first = "", {}, None, None, True
    for chunk in stream:
        if not chunk.choices:
            usage = chunk.usage
            continue
        ch = chunk.choices[0]
        if first:
            assert ch.delta.role == "assistant"
            first = False
        content += ch.delta.content or ""
        for tc in ch.delta.tool_calls or []:
            slot = calls.setdefault(tc.index, {"id": None, "type": None, "function": {"name": None, "arguments": ""}})
            if tc.id:
                assert slot["id"] is None, "an id arrives once per call"
                slot["id"], slot["type"], slot["function"]["name"] = tc.id, tc.type, tc.function.name
            slot["function"]["arguments"] += tc.function.arguments or ""
        if ch.finish_reason:
            finish = ch.finish_reason
    msg = {"role": "assistant", "content": content or None, "tool_calls": [calls[k] for k in sorted(calls)] or None}
    if not msg["tool_calls"]:
        msg["content"] = content
    return {"message": msg, "finish_reason": finish}, usage


# turn plan: the tool_choice of each turn (None = auto) and whether it streams
PLAN = [(None, False), ({"name": "calculator"}, False), (None, True), ("required", False),
        ({"name": "read_file"}, True), (None, False), ({"name": "clock"}, False), ("required", True),
        (None, False), ({"name": "calculator"}, True), (None, False)]
QUESTIONS = ["What is 17*23?", "Read notes.txt for me.", "What time is it?", "Compute (4+5)*6.",
             "What is in todo.txt?", "And 2**10?"]


def _agent_loop(client):
    msgs = [{"role": "system", "content": "You are a helpful assistant with tools."},
            {"role": "user", "content": QUESTIONS[0]}]
    n_calls = n_results = 0
    for turn, (choice, stream) in enumerate(PLAN):
        tool_choice = {"type": "function", "function": choice} if isinstance(choice, dict) else choice
        kw = dict(model="smol", messages=msgs, tools=TOOLS, max_tokens=48, temperature=0.7, seed=turn)
        if tool_choice is not None:
            kw["tool_choice"] = tool_choice
        if stream:
            reply, usage = _collect_stream(client.chat.completions.create(
                stream=True, stream_options={"include_usage": True}, **kw))
            assert usage is not None and usage.completion_tokens > 0
        else:
            r = client.chat.completions.create(**kw)
            assert r.object == "chat.completion" and r.usage.prompt_tokens > 0
            reply = _plain(r.choices[0])
        forced = None if choice is None else "required" if choice == "required" else choice["name"]
        calls = _check_choice(reply, forced)
        msg = reply["message"]
        if calls:
            n_calls += len(calls)
            msgs.append({"role": "assistant", "content": msg.get("content"), "tool_calls": calls})
            for c in calls:  # results go back as role "tool"
                result = run_tool(c["function"]["name"], json.loads(c["function"]["arguments"]))
                msgs.append({"role": "tool", "tool_call_id": c["id"], "content": result})
                n_results += 1
        else:
            msgs.append({"role": "assistant", "content": msg["content"]})
            msgs.append({"role": "user", "content": QUESTIONS[(turn + 1) % len(QUESTIONS)]})
    assert len(PLAN) >= 10 and n_calls >= 6 and n_results == n_calls
    return msgs


@pytest.mark.parametrize("policy", [[], ["--kv-policy", "triattention", "--kv-budget", "512", "--kv-interval", "64",
                                         "--calibration", str(SIDECAR)]], ids=["full", "triattention-512"])
def test_agent_loop_openai_client(server_bin, default_model, policy):
    s = Server(server_bin, default_model, "--parallel", "1", "--ctx-size", "4096", *policy)
    try:
        client = openai.OpenAI(base_url=s.base + "/v1", api_key="x", timeout=300, max_retries=0)
        _agent_loop(client)
        if policy:
            slots = json.loads(s.request("GET", "/slots")[1])
            assert any(x["kv"]["n_compressions"] > 0 for x in slots), slots
    finally:
        s.close()


# ---- small API gaps ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def srv(server_bin, default_model):
    s = Server(server_bin, default_model, "--parallel", "1")
    yield s
    s.close()


def test_tool_turns_and_deltas_over_http(srv):
    """Auto tool choice with a scripted earlier call: the tool turn renders, every reply parses."""
    client = openai.OpenAI(base_url=srv.base + "/v1", api_key="x", timeout=120, max_retries=0)
    msgs = [{"role": "user", "content": "What is 6*7?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_a", "type": "function",
                 "function": {"name": "calculator", "arguments": "{\"expression\": \"6*7\"}"}}]},
            {"role": "tool", "tool_call_id": "call_a", "content": "42"}]
    r = client.chat.completions.create(model="smol", messages=msgs, tools=TOOLS, max_tokens=24, temperature=0,
                                       parallel_tool_calls=False)
    _check_choice(r.choices[0], None)
    reply, usage = _collect_stream(client.chat.completions.create(
        model="smol", messages=msgs, tools=TOOLS, max_tokens=24, temperature=0, stream=True,
        stream_options={"include_usage": True}))
    _check_choice(reply, None)
    if reply["finish_reason"] != "tool_calls":  # greedy: the stream says what the whole reply said
        assert reply["message"]["content"] == r.choices[0].message.content
    assert usage.prompt_tokens == r.usage.prompt_tokens and usage.completion_tokens == r.usage.completion_tokens
    none = client.chat.completions.create(model="smol", messages=msgs, tools=TOOLS, tool_choice="none",
                                          max_tokens=8, temperature=0)
    assert none.choices[0].finish_reason in ("stop", "length") and not none.choices[0].message.tool_calls


def test_include_usage_on_completions(srv):
    client = openai.OpenAI(base_url=srv.base + "/v1", api_key="x", timeout=120, max_retries=0)
    chunks = list(client.completions.create(model="smol", prompt="Hello", max_tokens=5, temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 5
    assert all(c.choices for c in chunks[:-1])
    plain = list(client.completions.create(model="smol", prompt="Hello", max_tokens=5, temperature=0, stream=True))
    assert all(c.choices for c in plain)


def test_model_by_id_and_error_param(srv):
    client = openai.OpenAI(base_url=srv.base + "/v1", api_key="x", timeout=60, max_retries=0)
    m = client.models.retrieve("smol")
    assert m.id == "smol" and m.object == "model"
    st, raw = srv.request("GET", "/v1/models/" + Path(str(srv.proc.args[2])).name)
    assert st == 200 and json.loads(raw)["id"] == "smol"
    with pytest.raises(openai.NotFoundError) as e:
        client.models.retrieve("no-such-model")
    assert e.value.body["param"] == "model" and e.value.body["code"] == "model_not_found"
    cases = [({"temperature": "hot"}, "temperature"), ({"tools": {"a": 1}}, "tools"),
             ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
             ({"tools": [{"type": "function"}]}, "tools"), ({"tool_choice": "required"}, "tool_choice"),
             ({"stream_options": 3}, "stream_options"), ({"parallel_tool_calls": "yes"}, "parallel_tool_calls"),
             ({"messages": [{"role": "robot", "content": "x"}]}, "messages")]
    for extra, param in cases:
        body = {"model": "smol", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2, **extra}
        st, raw = srv.request("POST", "/v1/chat/completions", body)
        err = json.loads(raw)["error"]
        assert st == 400 and err["param"] == param, (extra, raw)
    st, raw = srv.request("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}],
                                                           "max_tokens": 1})
    assert st == 200
    st, raw = srv.request("GET", "/v1/nothing")
    assert st == 404 and json.loads(raw)["error"]["param"] is None
