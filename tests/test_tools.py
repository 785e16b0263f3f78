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
        "parameters": {"type": "object", "properties": {"expression": {"type": "string", "maxLength": 40}},
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
        alts = [schema] if isinstance(choice, dict) else schema["anyOf"]  # one call object per allowed tool
        names = [n for a in alts for n in a["properties"]["name"]["enum"]]
        assert names == (["clock"] if isinstance(choice, dict) else [t["function"]["name"] for t in TOOLS])
        jsonschema.validate({"name": "clock", "arguments": {}}, schema)
        if not isinstance(choice, dict):  # each name takes its own tool's arguments
            jsonschema.validate({"name": "calculator", "arguments": {"expression": "1+1"}}, schema)
            with pytest.raises(jsonschema.ValidationError):
                jsonschema.validate({"name": "calculator", "arguments": {}}, schema)
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


# ---- the shapes small models write (lenient parsing) against an oracle built with the text --------------

def _args_for(rng, name):
    if name == "calculator":
        return {"expression": rng.choice(["17*23", "2**10", "(4+5)*6", "1/3", "é+1"])}
    if name == "read_file":
        return {"name": rng.choice(list(FILES))}
    return {}


def _dump(rng, obj):
    return json.dumps(obj, ensure_ascii=rng.random() < 0.5, indent=rng.choice([None, None, 2]))


def _call_obj(rng, name, key="arguments"):
    args = _args_for(rng, name)
    return {"name": name, key: json.dumps(args) if key == "arguments" and rng.random() < 0.2 else args}, args


def _call_segment(rng):
    """A reply piece in one of the shapes small models write: (text, [(name, args)], kind)."""
    kind = rng.choice(["hermes", "hermes", "fence", "bare", "llama3", "python_tag", "mistral", "hermes_array"])
    names = [rng.choice(list(SCHEMAS)) for _ in range(rng.choice([1, 1, 2]))]
    key = "parameters" if kind in ("llama3", "python_tag") else "arguments"
    objs, calls = [], []
    for n in names[:1] if kind in ("hermes", "llama3", "python_tag") else names:
        o, a = _call_obj(rng, n, key)
        objs.append(o)
        calls.append((n, a))
    one = kind in ("hermes", "llama3", "python_tag") or (len(objs) == 1 and rng.random() < 0.7)
    body = _dump(rng, objs[0] if one else objs)
    if kind == "hermes":
        return "<tool_call>\n" + body + "\n</tool_call>", calls, kind
    if kind == "hermes_array":
        return "<tool_call>" + _dump(rng, objs) + "</tool_call>", calls, kind
    if kind == "fence":
        if len(objs) > 1 and rng.random() < 0.5:  # one object per line
            body = "\n".join(json.dumps(o) for o in objs)
        return "```" + rng.choice(["json", "JSON", ""]) + "\n" + body + "\n```", calls, kind
    if kind == "python_tag":
        return "<|python_tag|>" + body, calls, kind
    if kind == "mistral":
        return "[TOOL_CALLS] " + _dump(rng, objs), calls, kind
    return body, calls, kind  # bare, llama3


def _near_miss_segment(rng):
    """A reply piece that looks like a call and is not one: it stays content."""
    good, _ = _call_obj(rng, "calculator")
    return rng.choice([
        "```json\n" + json.dumps({"name": "get_stock", "arguments": {"symbol": "X"}}) + "\n```",
        json.dumps({"name": "calculator", "arguments": {"expression": 42}}),
        json.dumps({"name": "read_file", "arguments": {"name": "secrets.txt"}}),
        "```json\n" + json.dumps({"name": "calculator", "arguments": {}}) + "\n```",
        json.dumps({"result": 42}),
        "[1, 2, 3]",
        "```python\n" + json.dumps(good) + "\nprint(1)\n```",
        "<tool_call>" + json.dumps({"name": "rm_rf", "arguments": {}}) + "</tool_call>",
        "[" + json.dumps(good) + ", " + json.dumps({"name": "nope", "arguments": {}}) + "]",
        "[TOOL_CALLS] maybe later",
    ])


def _prose_segment(rng):
    words = ["hello", "wörld", "中文", "ok.", "see {\"a\": 1}", "[x]", "`code`", "a<b", "x;y",
             json.dumps({"name": "clock", "arguments": {}}), "```"]
    return rng.choice(["Sure", "The", "Done.", "Résumé", "OK"]) + "".join(
        " " + rng.choice(words) for _ in range(rng.randint(0, 6)))


def _segment_reply(rng):
    """Random reply text and what each of its pieces is: [(text, calls or None, kind)] and the separators."""
    segs = []
    for _ in range(rng.randint(1, 5)):
        r = rng.random()
        segs.append(_call_segment(rng) if r < 0.45 else (_near_miss_segment(rng), None, "near") if r < 0.7
                    else (_prose_segment(rng), None, "prose"))
    seps = [rng.choice(["\n", "\n\n", "\n  \n"]) for _ in segs[1:]]
    return segs, seps


def _expected_reply(segs, seps, strict):
    """What the parser must return: the calls in order, and the content (the other pieces and the blank text
    between them; blanks with nothing but blanks since the start or the last call are dropped before a call)."""
    content, calls, pending, fresh = "", [], "", True
    for i, (text, seg_calls, kind) in enumerate(segs):
        pending += seps[i - 1] if i else ""
        if seg_calls is not None and (not strict or kind == "hermes"):
            content += "" if fresh else pending
            calls += seg_calls
            fresh = True
        else:
            content += pending + text
            fresh = False
        pending = ""
    return calls, (None if calls and not content.strip() else content)


@pytest.mark.parametrize("strict", [False, True], ids=["lenient", "strict"])
def test_parser_shapes_against_oracle(llm, strict):
    from pytriattn._tools import ToolRequest
    rng = random.Random()
    seed = rng.randrange(1 << 30)
    rng.seed(seed)
    req = ToolRequest(llm._m(), None, TOOLS, None, strict=strict)
    n_calls = 0
    for _ in range(150):
        segs, seps = _segment_reply(rng)
        text = "".join(seg[0] + (seps[i] if i < len(seps) else "") for i, seg in enumerate(segs))
        want_calls, want_content = _expected_reply(segs, seps, strict)
        for split in (False, True):
            p = req.parser()
            deltas, i = [], 0
            while split and i < len(text):
                k = rng.randint(1, 6)
                deltas += p.feed(text[i:i + k])
                i += k
            deltas += p.feed("" if split else text, final=True)
            msg = p.message()
            got = [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in msg.get("tool_calls", [])]
            where = f"seed {seed}, split {split}: {text!r}"
            assert got == want_calls, where
            assert msg["content"] == want_content, where
            streamed = "".join(d.get("content", "") for d in deltas)
            assert streamed == (want_content or "") or (want_content is None and not streamed.strip()), where
        n_calls += len(want_calls)
    assert n_calls > 20  # the draw holds calls


def _rand_schema(rng, depth=0):
    kind = rng.choice(["string", "integer", "number", "boolean", "array", "object", "enum", "anyOf", "untyped"]
                      if depth < 2 else ["string", "integer", "number", "boolean", "enum"])
    if kind == "string":
        s = {"type": "string"}
        if rng.random() < 0.4:
            s["minLength"] = rng.randint(0, 3)
        if rng.random() < 0.4:
            s["maxLength"] = rng.randint(1, 6)
        return s
    if kind in ("integer", "number"):
        s = {"type": kind}
        for k in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
            if rng.random() < 0.25:
                s[k] = rng.choice([-2, 0, 1.5, 3, 10])
        return s
    if kind == "boolean":
        return {"type": "boolean"}
    if kind == "enum":
        return {"enum": rng.sample(["C", "F", 1, 2.0, None, True, [1], {"a": 1}], rng.randint(1, 3))}
    if kind == "anyOf":
        return {"anyOf": [_rand_schema(rng, depth + 1) for _ in range(2)]}
    if kind == "untyped":
        return {"description": "anything", "format": "date"} if rng.random() < 0.5 else {}
    if kind == "array":
        s = {"type": "array", "items": _rand_schema(rng, depth + 1)}
        if rng.random() < 0.4:
            s["minItems"] = rng.randint(0, 2)
        if rng.random() < 0.4:
            s["maxItems"] = rng.randint(1, 3)
        return s
    return _rand_object(rng, depth + 1)


def _rand_object(rng, depth=0):
    props = {f"p{i}": _rand_schema(rng, depth) for i in range(rng.randint(0, 4))}
    s = {"type": "object", "properties": props}
    if props and rng.random() < 0.6:
        s["required"] = rng.sample(list(props), rng.randint(1, len(props)))
    if rng.random() < 0.3:
        s["additionalProperties"] = rng.choice([False, True, {"type": "integer"}])
    return s


def _rand_value(rng, depth=0):
    kind = rng.choice(["str", "int", "float", "bool", "null", "list", "dict"] if depth < 3
                      else ["str", "int", "float", "bool", "null"])
    if kind == "str":
        return rng.choice(["", "a", "héllo", "中文字", "Fahrenheit", "C", "F", "x" * 7])
    if kind == "int":
        return rng.choice([-3, 0, 1, 2, 3, 10, 11])
    if kind == "float":
        return rng.choice([-2.5, 0.0, 1.5, 2.0, 3.25, 10.0])
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "null":
        return None
    if kind == "list":
        return [_rand_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {rng.choice(["p0", "p1", "p2", "p3", "q"]): _rand_value(rng, depth + 1) for _ in range(rng.randint(0, 4))}


def _fit(rng, schema, value):
    """Nudges a random object toward a schema (so both outcomes occur): properties get values of their type."""
    for k, sub in schema.get("properties", {}).items() if isinstance(value, dict) else ():
        if rng.random() < 0.8:
            t = sub.get("type")
            pool = {"string": ["ab", "F", "xyz"], "integer": [1, 2, 3], "number": [1.5, 2, 3],
                    "boolean": [True, False], "array": [[], [1], ["a", "b"]], "object": [{}]}.get(t)
            value[k] = rng.choice(pool) if pool else (rng.choice(sub["enum"]) if "enum" in sub else _rand_value(rng, 2))
    return value


def test_argument_validation_matches_jsonschema(llm):
    """Bare calls count only when their arguments satisfy the tool's parameters: jsonschema is the oracle."""
    from pytriattn._tools import ToolRequest
    rng = random.Random()
    seed = rng.randrange(1 << 30)
    rng.seed(seed)
    outcomes = set()
    for _ in range(300):
        schema = _rand_object(rng)
        value = _fit(rng, schema, _rand_value(rng, 3) if rng.random() < 0.1 else {})
        want = jsonschema.Draft202012Validator(schema).is_valid(value) and isinstance(value, dict)
        tools = [{"type": "function", "function": {"name": "probe", "parameters": schema}}]
        p = ToolRequest(llm._m(), None, tools, None).parser()
        p.feed(json.dumps({"name": "probe", "arguments": value}, ensure_ascii=rng.random() < 0.5), final=True)
        assert (p.n_calls == 1) == want, f"seed {seed}: {value!r} against {schema!r}"
        outcomes.add(want)
    assert outcomes == {True, False}


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


def _collect_stream(stream, index=0):
    """Assembles choice `index` of a streamed reply the way OpenAI clients do; returns (choice-like dict, usage)."""
    content, calls, finish, usage, first = "", {}, None, None, True
    for chunk in stream:
        if not chunk.choices:
            usage = chunk.usage
            continue
        if chunk.choices[0].index != index:
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


def _feed_back(msgs, msg, calls, turn):
    """Appends the reply and the results of its calls (role "tool"), or the next question when it made none;
    returns the number of results."""
    if not calls:
        msgs.append({"role": "assistant", "content": msg["content"]})
        msgs.append({"role": "user", "content": QUESTIONS[(turn + 1) % len(QUESTIONS)]})
        return 0
    msgs.append({"role": "assistant", "content": msg.get("content"), "tool_calls": calls})
    for c in calls:
        result = run_tool(c["function"]["name"], json.loads(c["function"]["arguments"]))
        msgs.append({"role": "tool", "tool_call_id": c["id"], "content": result})
    return len(calls)


def _agent_loop(client):
    msgs = [{"role": "system", "content": "You are a helpful assistant with tools."},
            {"role": "user", "content": QUESTIONS[0]}]
    n_calls = n_results = 0
    for turn, (choice, stream) in enumerate(PLAN):
        tool_choice = {"type": "function", "function": choice} if isinstance(choice, dict) else choice
        # 64 tokens hold any forced call: the longest is calculator's, whose expression has at most 40 characters
        kw = dict(model="smol", messages=msgs, tools=TOOLS, max_tokens=64, temperature=0.7, seed=turn)
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
        n_calls += len(calls)
        n_results += _feed_back(msgs, reply["message"], calls, turn)
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


# ---- auto mode: calls in the shape small models write ------------------------------------------------------

def _call_format(name):
    """A response_format under which the model writes a bare JSON call to `name` (a shape small models use instead
    of their template's tags), choosing the arguments itself within the tool's parameters."""
    params = {"type": "object", "properties": {}, "additionalProperties": False}
    if name == "calculator":
        params = {"type": "object", "properties": {"expression": {"type": "string", "maxLength": 12}},
                  "required": ["expression"], "additionalProperties": False}
    elif name == "read_file":
        params = {**SCHEMAS[name], "additionalProperties": False}
    schema = {"type": "object", "properties": {"name": {"enum": [name]}, "arguments": params},
              "required": ["name", "arguments"], "additionalProperties": False}
    return {"type": "json_schema", "json_schema": {"name": "call", "schema": schema}}


# (tool whose call the model writes as bare JSON, or None: the model is free; streamed)
AUTO_PLAN = [("calculator", False), (None, False), ("read_file", True), (None, True), ("clock", False),
             (None, False), ("calculator", True), (None, True), ("read_file", False), (None, False)]


def _auto_loop(client, strict):
    """tool_choice "auto" throughout; tool results are fed back. On the shaped turns the reply is a bare JSON call:
    a tool call (lenient parsing, streamed as tool-call deltas with no content) or, with strict parsing, that JSON
    as content."""
    msgs = [{"role": "system", "content": "You are a helpful assistant with tools."},
            {"role": "user", "content": QUESTIONS[0]}]
    n_shaped = n_results = 0
    for turn, (shape, stream) in enumerate(AUTO_PLAN):
        kw = dict(model="smol", messages=msgs, tools=TOOLS, tool_choice="auto", max_tokens=64, temperature=0.7,
                  seed=turn)
        if shape:
            kw["response_format"] = _call_format(shape)
        if stream:
            reply, _ = _collect_stream(client.chat.completions.create(stream=True, **kw))
        else:
            reply = _plain(client.chat.completions.create(**kw).choices[0])
        calls = _check_choice(reply, None)
        msg = reply["message"]
        if shape and not strict:
            assert len(calls) == 1 and calls[0]["function"]["name"] == shape and msg["content"] is None, reply
            jsonschema.validate(json.loads(calls[0]["function"]["arguments"]), SCHEMAS[shape])
            n_shaped += 1
        elif shape:
            written = json.loads(msg["content"])
            assert not calls and written["name"] == shape and reply["finish_reason"] == "stop", reply
            jsonschema.validate(written["arguments"], SCHEMAS[shape])
            n_shaped += 1
        n_results += _feed_back(msgs, msg, calls, turn)
    assert n_shaped == sum(1 for s, _ in AUTO_PLAN if s)
    assert n_results >= (0 if strict else n_shaped)
    return msgs


@pytest.mark.parametrize("strict", [False, True], ids=["lenient", "strict"])
def test_auto_agent_loop_openai_client(server_bin, default_model, strict):
    s = Server(server_bin, default_model, "--parallel", "1", "--ctx-size", "4096",
               *(["--strict-tool-calls"] if strict else []))
    try:
        _auto_loop(openai.OpenAI(base_url=s.base + "/v1", api_key="x", timeout=300, max_retries=0), strict)
    finally:
        s.close()


def test_python_api_auto_call_shapes(llm, default_model):
    from pytriattn.llama import Llama
    msgs = [{"role": "user", "content": "What time is it?"}]
    kw = dict(tools=TOOLS, response_format=_call_format("clock"), max_tokens=32, temperature=0)
    r = llm.create_chat_completion(msgs, **kw)
    calls = _check_choice(r["choices"][0], None)
    assert [c["function"]["name"] for c in calls] == ["clock"] and r["choices"][0]["message"]["content"] is None
    chunks = list(llm.create_chat_completion(msgs, stream=True, **kw))
    assert all(not c["choices"][0]["delta"].get("content") for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert [d["function"]["name"] for c in chunks for d in c["choices"][0]["delta"].get("tool_calls") or []
            if d.get("id")] == ["clock"]
    strict = Llama(str(default_model), n_ctx=1024, seed=1, strict_tool_calls=True)
    r = strict.create_chat_completion(msgs, **kw)
    choice = r["choices"][0]
    assert choice["finish_reason"] == "stop" and not choice["message"].get("tool_calls")
    assert json.loads(choice["message"]["content"]) == {"name": "clock", "arguments": {}}


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


def test_n_choices_with_tools(srv):
    """n with tools: every choice is parsed on its own (its own calls, ids unique across choices), whole or
    streamed."""
    client = openai.OpenAI(base_url=srv.base + "/v1", api_key="x", timeout=120, max_retries=0)
    msgs = [{"role": "user", "content": "What time is it?"}]
    forced = {"type": "function", "function": {"name": "clock"}}
    kw = dict(model="smol", messages=msgs, tools=TOOLS, tool_choice=forced, max_tokens=48, temperature=0.8,
              seed=random.randint(0, 2**31), n=2)
    r = client.chat.completions.create(**kw)
    assert [c.index for c in r.choices] == [0, 1]
    calls = [_check_choice(c, "clock") for c in r.choices]
    ids = [c["id"] for cs in calls for c in cs]
    assert len(set(ids)) == len(ids), ids
    chunks = list(client.chat.completions.create(stream=True, **kw))
    for k in range(2):
        reply, _ = _collect_stream(chunks, k)
        assert _check_choice(reply, "clock")


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
