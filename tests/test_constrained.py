"""Constrained output (response_format / json_schema): the grammar matcher against the jsonschema package on
random schemas and documents, sampled outputs of the default model, and the server's response_format."""
from __future__ import annotations

import json
import os
import random
import subprocess

import pytest

jsonschema = pytest.importorskip("jsonschema")

SEED = int(os.environ.get("TRI_TEST_SEED", random.SystemRandom().randrange(2**32)))

# ---- random schemas and documents ------------------------------------------------------------------

NAMES = ["a", "ab", "abc", "b", "name", "nam", "x1", "é"]


def random_schema(rng: random.Random, depth: int = 0) -> dict:
    kinds = ["string", "integer", "number", "boolean", "null", "enum", "const", "union", "any"]
    if depth < 3:
        kinds += ["object", "object", "array", "tagged"]
    k = rng.choice(kinds)
    if k == "tagged":  # anyOf told apart by a required discriminator, as a call to one of several tools
        tag = rng.choice(NAMES)
        values = rng.sample(["ab", "abc", "a", "b\"c", 1, 12, None, True], rng.randint(1, 4))
        alts = []
        for i, v in enumerate(values):
            props = {f"{n}{i}": random_schema(rng, 3) for n in rng.sample(NAMES, rng.randint(0, 3))}
            alt = {"type": "object", "properties": {**props, tag: {"const": v} if i % 2 else {"enum": [v]}},
                   "required": sorted(rng.sample(sorted(props), rng.randint(0, len(props)))) + [tag]}
            r = rng.random()
            if r < 0.3:
                alt["additionalProperties"] = False
            elif r < 0.5:
                alt["additionalProperties"] = {"type": "integer"}
            alts.append(alt)
        return {"anyOf": alts, "description": "tagged"}
    if k == "string":
        s = {"type": "string"}
        if rng.random() < 0.5:
            s["maxLength"] = rng.randint(0, 6)
        if rng.random() < 0.3:
            s["minLength"] = rng.randint(0, s.get("maxLength", 3))
        return s
    if k in ("integer", "number", "boolean", "null"):
        return {"type": k}
    if k == "enum":
        return {"enum": rng.sample(["ab", "abc", "a\"b", 1, 12, 2.5, None, True, [1, "x"], {"k": 1}],
                                   rng.randint(1, 4))}
    if k == "const":
        return {"const": rng.choice(["é", 0, False, {"a": [1]}])}
    if k == "union":
        return {"type": rng.sample(["string", "integer", "number", "boolean", "null", "object", "array"],
                                   rng.randint(1, 3))}
    if k == "any":
        return {}
    if k == "array":
        s = {"type": "array", "items": random_schema(rng, depth + 1)}
        if rng.random() < 0.5:
            s["minItems"] = rng.randint(0, 2)
        if rng.random() < 0.5:
            s["maxItems"] = s.get("minItems", 0) + rng.randint(0, 3)
        return s
    props = {n: random_schema(rng, depth + 1) for n in rng.sample(NAMES, rng.randint(0, 4))}
    s = {"type": "object"}
    if props or rng.random() < 0.5:
        s["properties"] = props
    if props and rng.random() < 0.7:
        s["required"] = rng.sample(sorted(props), rng.randint(0, len(props)))
    r = rng.random()
    if r < 0.25:
        s["additionalProperties"] = False
    elif r < 0.5:
        s["additionalProperties"] = True
    elif r < 0.6:
        s["additionalProperties"] = {"type": "integer"}
    return s


def _dump(v) -> str:
    return json.dumps(v, ensure_ascii=False, separators=(",", ":"))


def _sep(rng, s):
    return s + (" " if rng.random() < 0.3 else "")


def _any_value(rng, depth):
    c = rng.randrange(7 if depth < 3 else 5)
    return [lambda: "null", lambda: "true", lambda: str(rng.randint(-99, 99)), lambda: '"v"',
            lambda: "1.5e2", lambda: "[" + _sep(rng, ",").join(_any_value(rng, depth + 1) for _ in range(2)) + "]",
            lambda: '{"q":' + _any_value(rng, depth + 1) + "}"][c]()


def valid_doc(rng: random.Random, s: dict, depth: int = 0) -> str:
    """A document in the generation form (compact, one optional space after ':' and ',') that s accepts."""
    if "anyOf" in s:  # the discriminator (the key every alternative holds as const / enum) comes first
        alt = rng.choice(s["anyOf"])
        tags = set.intersection(*({k for k, v in a["properties"].items() if k in a["required"] and
                                   ("const" in v or "enum" in v)} for a in s["anyOf"]))
        tag = min(tags, key=lambda k: _dump(k).encode())  # the first in byte order when several qualify
        rest = {**alt, "properties": {k: v for k, v in alt["properties"].items() if k != tag},
                "required": [r for r in alt["required"] if r != tag]}
        body = valid_doc(rng, rest, depth)
        first = _sep(rng, _dump(tag) + ":") + valid_doc(rng, alt["properties"][tag], depth + 1)
        return "{" + first + ("}" if body == "{}" else _sep(rng, ",") + body[1:])
    if "const" in s:
        return _dump(s["const"])
    if "enum" in s:
        return _dump(rng.choice(s["enum"]))
    t = s.get("type")
    if t is None:
        return _any_value(rng, depth)
    if isinstance(t, list):
        t = rng.choice(t)
    if t == "string":
        lo, hi = s.get("minLength", 0), s.get("maxLength", 8)
        return _dump("".join(rng.choice("az é\"\\\n€😀") for _ in range(rng.randint(lo, hi))))
    if t == "integer":
        return str(rng.randint(-10**6, 10**6))
    if t == "number":
        return rng.choice([str(rng.randint(-50, 50)), f"{rng.uniform(-1e3, 1e3):.4f}", f"{rng.uniform(-9, 9):.3e}"])
    if t == "boolean":
        return rng.choice(["true", "false"])
    if t == "null":
        return "null"
    if t == "array":
        items = s.get("items", {})
        lo = s.get("minItems", 0)
        hi = s.get("maxItems", lo + 3)
        return "[" + _sep(rng, ",").join(valid_doc(rng, items, depth + 1) for _ in range(rng.randint(lo, hi))) + "]"
    props = s.get("properties", {})
    req = set(s.get("required", []))
    keys = [k for k in props if k in req or rng.random() < 0.5]
    members = [(k, valid_doc(rng, props[k], depth + 1)) for k in keys]
    add = s.get("additionalProperties", "properties" not in s)
    if add is not False and rng.random() < 0.5:
        extra = "zz" + str(rng.randint(0, 9))
        members.append((extra, valid_doc(rng, add if isinstance(add, dict) else {}, depth + 1)))
    rng.shuffle(members)
    return "{" + _sep(rng, ",").join(_sep(rng, _dump(k) + ":") + v for k, v in members) + "}"


def mutate(rng: random.Random, doc: bytes) -> bytes:
    b = bytearray(doc)
    for _ in range(rng.randint(1, 2)):
        op = rng.randrange(3)
        i = rng.randrange(len(b) + 1)
        ch = rng.choice(b'{}[]",: 0123456789.eE-+tfnulrasbc\\\x01\xc3\xa9')
        if op == 0 and i < len(b):
            del b[i]
        elif op == 1:
            b.insert(i, ch)
        elif i < len(b):
            b[i] = ch
    return bytes(b)


def jsonschema_accepts(schema: dict, doc: bytes) -> bool:
    """The oracle: strict UTF-8, strict JSON (no NaN/Infinity, no control characters in strings), then
    jsonschema's validation."""
    try:
        text = doc.decode("utf-8")
        value = json.loads(text, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
    except (UnicodeDecodeError, ValueError):
        return False
    return jsonschema.Draft202012Validator(schema).is_valid(value)


@pytest.fixture(scope="module")
def grammar_tool(c_tool, tmp_path_factory):
    tool = c_tool("tool_grammar")
    d = tmp_path_factory.mktemp("schemas")

    def run(schema, mode, docs=None, n=0, seed=0):
        p = d / "schema.json"
        p.write_text(schema if isinstance(schema, str) else json.dumps(schema))
        args = [str(tool), mode, str(p)] + ([str(n), str(seed)] if mode == "walk" else [])
        inp = "".join(doc.hex() + "\n" for doc in docs or [])
        r = subprocess.run(args, input=inp, capture_output=True, text=True, timeout=120)
        return r.returncode, r.stdout.splitlines()
    return run


def test_matcher_against_jsonschema(grammar_tool):
    """Random schemas: every document the matcher accepts (random walks over its accepted bytes, mutations of
    valid documents) validates with jsonschema; every valid document in the generation form is accepted."""
    rng = random.Random(SEED)
    n_walk = n_valid = n_mut_ok = 0
    for _ in range(60):
        schema = random_schema(rng)
        msg = f"seed {SEED} schema {json.dumps(schema)}"
        rc, walks = grammar_tool(schema, "walk", n=20, seed=rng.randrange(2**63))
        assert rc == 0, f"{msg}: {walks}"
        for w in walks:
            hexdoc, done = w.split(" ")
            doc = bytes.fromhex(hexdoc)
            # a walk may stop before the document is complete; those that are complete must validate
            if done == "1":
                n_walk += 1
                assert jsonschema_accepts(schema, doc), f"{msg}: matcher accepted {doc!r}"
        valid = [valid_doc(rng, schema).encode() for _ in range(15)]
        for doc in valid:
            assert jsonschema_accepts(schema, doc), f"{msg}: the test's own document {doc!r} is invalid"
        mutants = [mutate(rng, d) for d in valid for _ in range(4)]
        rc, got = grammar_tool(schema, "check", valid + mutants)
        assert rc == 0 and len(got) == len(valid) + len(mutants), f"{msg}: {got[:3]}"
        for doc, g in zip(valid, got):
            n_valid += 1
            assert g == "1", f"{msg}: matcher rejected the valid document {doc!r}"
        for doc, g in zip(mutants, got[len(valid):]):
            ok = jsonschema_accepts(schema, doc)
            n_mut_ok += g == "1"
            assert g == "0" or ok, f"{msg}: matcher accepted {doc!r}, which jsonschema rejects"
    assert n_walk > 100 and n_valid == 60 * 15 and n_mut_ok > 0, (n_walk, n_valid, n_mut_ok)


@pytest.mark.parametrize("schema, keyword, path", [
    ({"type": "object", "properties": {"x": {"type": "string", "pattern": "^a"}}}, "pattern", "$.properties.x"),
    ({"type": "array", "items": {"anyOf": [{"type": "string"}]}}, "anyOf", "$.items"),
    ({"$defs": {}, "type": "object"}, "$defs", "$"),
    ({"type": "integer", "minimum": 3}, "minimum", "$"),
])
def test_unsupported_keyword_named(grammar_tool, schema, keyword, path):
    rc, out = grammar_tool(schema, "check", [b"{}"])
    assert rc == 2 and len(out) == 1
    want = f"error TRIATTN_ERR_UNSUPPORTED: json_schema: unsupported keyword '{keyword}' at {path}"
    assert out[0] == want or (keyword == "anyOf" and out[0].startswith(want + " (")), out


@pytest.mark.parametrize("alts, why", [
    ([{"type": "object", "properties": {"t": {"const": 1}}, "required": ["t"]}, {"type": "string"}], "not an object"),
    ([{"type": "object", "properties": {"t": {"const": 1}}}, {"type": "object", "properties": {"t": {"const": 2}}}],
     "requires"),
    ([{"type": "object", "properties": {"t": {"enum": [1, 2]}}, "required": ["t"]},
      {"type": "object", "properties": {"t": {"const": 2}}, "required": ["t"]}], "share"),
])
def test_unsupported_unions_say_why(grammar_tool, alts, why):
    rc, out = grammar_tool({"anyOf": alts}, "check", [b"{}"])
    assert rc == 2 and out[0].startswith("error TRIATTN_ERR_UNSUPPORTED: json_schema: unsupported keyword 'anyOf' at $")
    assert why in out[0], out


# ---- the default model ------------------------------------------------------------------------------

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 16},
        "age": {"type": "integer"},
        "role": {"enum": ["admin", "user", "guest"]},
        "active": {"type": "boolean"},
    },
    "required": ["name", "age", "role"],
    "additionalProperties": False,
}
PERSON_MSGS = [{"role": "system", "content": "Reply with JSON only."},
               {"role": "user", "content": "Describe a user of a web shop as a JSON object."}]


@pytest.fixture(scope="module")
def llm(default_model):
    from pytriattn import Llama
    m = Llama(str(default_model), n_ctx=512, n_threads=2, verbose=False)
    yield m
    m.close()


@pytest.mark.parametrize("n", [10, pytest.param(50, marks=pytest.mark.long)])
def test_chat_json_schema_samples_validate(llm, n):
    """n outputs sampled at temperature 1.0 all validate against the schema. The schema bounds the name, not the
    integer's digits, which at temperature 1.0 can run to a few dozen: room for them."""
    rf = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}
    rng = random.Random(SEED + n)
    validator = jsonschema.Draft202012Validator(PERSON)
    for i in range(n):
        r = llm.create_chat_completion(PERSON_MSGS, response_format=rf, temperature=1.0, top_k=0, top_p=1.0,
                                       min_p=0.0, max_tokens=256, seed=rng.randrange(2**32))
        choice = r["choices"][0]
        text = choice["message"]["content"]
        assert choice["finish_reason"] == "stop", f"sample {i} (seed {SEED}) did not finish: {text!r}"
        validator.validate(json.loads(text))


def test_json_object_and_llama_cpp_forms(llm):
    """json_object: any object (free keys and values can run long at temperature 1, so greedy here)."""
    rng = random.Random(SEED + 1)
    for msgs in (PERSON_MSGS, [{"role": "user", "content": "List three fruits and their colours in JSON."}]):
        r = llm.create_chat_completion(msgs, response_format={"type": "json_object"}, temperature=0, max_tokens=200)
        text = r["choices"][0]["message"]["content"]
        assert r["choices"][0]["finish_reason"] == "stop", text
        assert isinstance(json.loads(text), dict)
    # llama-cpp-python's form: json_object with a schema; and plain completions
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    r = llm.create_chat_completion(PERSON_MSGS, response_format={"type": "json_object", "schema": schema},
                                   temperature=1.0, max_tokens=40, seed=rng.randrange(2**32))
    assert json.loads(r["choices"][0]["message"]["content"]) in ({"ok": True}, {"ok": False})
    r = llm.create_completion("Colour of the sky as JSON:", max_tokens=40, temperature=1.0, seed=7,
                              response_format={"type": "json_schema", "json_schema": {"schema": {
                                  "type": "object", "properties": {"colour": {"enum": ["blue", "grey"]}},
                                  "required": ["colour"], "additionalProperties": False}}})
    assert json.loads(r["choices"][0]["text"]) in ({"colour": "blue"}, {"colour": "grey"})
    assert r["choices"][0]["finish_reason"] == "stop"


def test_tool_call_shape_schema(llm):
    """The schema a tool_choice naming a function builds: name const + arguments object."""
    schema = {"type": "object", "properties": {
        "name": {"const": "get_weather"},
        "arguments": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30},
                                                       "unit": {"enum": ["celsius", "fahrenheit"]}},
                      "required": ["city", "unit"]}},
        "required": ["name", "arguments"]}
    msgs = [{"role": "user", "content": "What is the weather in Paris?"}]
    for seed in range(3):
        r = llm.create_chat_completion(msgs, response_format={"type": "json_schema", "json_schema": {"schema": schema}},
                                       temperature=1.0, max_tokens=80, seed=seed)
        out = json.loads(r["choices"][0]["message"]["content"])
        jsonschema.validate(out, schema)
        assert out["name"] == "get_weather"


def test_python_errors(llm):
    from pytriattn import TriattnError
    with pytest.raises(TriattnError) as e:
        llm.create_chat_completion(PERSON_MSGS, max_tokens=8, response_format={
            "type": "json_schema", "json_schema": {"schema": {"type": "object", "properties": {
                "x": {"type": "string", "format": "email"}}}}})
    assert e.value.code_name == "TRIATTN_ERR_UNSUPPORTED"
    assert "unsupported keyword 'format' at $.properties.x" in e.value.message
    with pytest.raises(TriattnError):
        llm.create_chat_completion(PERSON_MSGS, max_tokens=8, response_format={"type": "xml"})
    with pytest.raises(TriattnError):
        llm.create_chat_completion(PERSON_MSGS, max_tokens=8, response_format={"type": "json_schema"})
    # text is unconstrained
    r = llm.create_chat_completion(PERSON_MSGS, max_tokens=4, response_format={"type": "text"}, temperature=0)
    assert r["choices"][0]["message"]["content"]


# ---- the server ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def srv(server_bin, default_model):
    from test_server import Server
    s = Server(server_bin, default_model)
    yield s
    s.close()


@pytest.fixture(scope="module")
def client(srv):
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=srv.base + "/v1", api_key="unused", timeout=120, max_retries=0)


def test_server_response_format(client):
    rng = random.Random(SEED + 2)
    rf = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}
    for _ in range(3):
        r = client.chat.completions.create(model="smol", messages=PERSON_MSGS, response_format=rf, temperature=1.0,
                                           max_tokens=256, seed=rng.randrange(2**31))  # room for long integers
        assert r.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(r.choices[0].message.content), PERSON)
    # streamed: the pieces join into a valid document
    parts = client.chat.completions.create(model="smol", messages=PERSON_MSGS, response_format=rf, temperature=1.0,
                                           max_tokens=256, seed=5, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in parts if c.choices)
    jsonschema.validate(json.loads(text), PERSON)
    # completions, json_object
    r = client.completions.create(model="smol", prompt="A JSON object with a name:", max_tokens=120, temperature=0,
                                  extra_body={"response_format": {"type": "json_object"}})
    assert r.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(r.choices[0].text), dict)


def test_server_unsupported_keyword_is_400(client, srv):
    import openai
    rf = {"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "object", "properties": {"x": {"type": "string", "pattern": "^[a-z]+$"}}}}}
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="smol", messages=PERSON_MSGS, response_format=rf, max_tokens=8)
    err = e.value.body if isinstance(e.value.body, dict) and "message" in e.value.body else e.value.body["error"]
    assert err["param"] == "response_format"
    assert "unsupported keyword 'pattern' at $.properties.x" in err["message"]
    for bad in ({"type": "yaml"}, {"type": "json_schema"}, "json", {"type": "json_schema", "json_schema": {
            "schema": {"type": "strin"}}}):
        st, raw = srv.request("POST", "/v1/chat/completions", {"messages": PERSON_MSGS, "response_format": bad})
        assert st == 400, raw
        assert json.loads(raw)["error"]["param"] == "response_format"
    assert srv.healthy()
