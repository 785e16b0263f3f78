"""triattn-server end to end: the real binary on a free loopback port, driven by the official openai client
and by raw sockets for the bad-input suite."""
from __future__ import annotations

import concurrent.futures as cf
import http.client
import json
import os
import random
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

openai = pytest.importorskip("openai")

SEED = int(os.environ.get("TRIATTN_TEST_SEED", time.time_ns() % 2**31))
RNG = random.Random(SEED)
PROMPTS = ["The capital of France is", "Once upon a time", "def fibonacci(n):", "The three primary colors are",
           "My favourite food is", "In 1969, astronauts", "Water boils at", "The quick brown fox"]


@pytest.fixture(scope="module")
def model_path(request) -> Path:
    env = os.environ.get("TRIATTN_TEST_MODEL")
    if env:
        return Path(env)
    try:
        return request.getfixturevalue("default_model")
    except Exception:  # pytriattn._fetch not importable yet
        p = Path.home() / ".cache" / "pytriattn" / "SmolLM2-135M-Instruct.Q4_1.gguf"
        if not p.exists():
            pytest.skip("default model not available")
        return p


class Server:
    def __init__(self, binary: Path, model: Path | None, *extra: str, env: dict | None = None):
        """model None: no -m (the server opens the default model from pytriattn's cache)."""
        model_args = ["-m", str(model)] if model is not None else []
        self.proc = subprocess.Popen([str(binary), *model_args, "--port", "0", "--parallel", "4",
                                      "--ctx-size", "1024", "--alias", "smol", *extra],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        deadline = time.time() + 60
        line = ""
        while time.time() < deadline:
            line = self.proc.stdout.readline()
            if line.startswith("listening on http://") or not line:
                break
        assert line.startswith("listening on http://"), f"server did not start: {line!r} {self.proc.stderr.read()}"
        self.host, port = line.strip().rsplit("/", 1)[1].rsplit(":", 1)
        self.port = int(port)
        self.base = f"http://{self.host}:{self.port}"

    def close(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def request(self, method, path, body=None, headers=None, timeout=60):
        c = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
            c.request(method, path, body=data, headers=headers or {})
            r = c.getresponse()
            raw = r.read()
            return r.status, raw
        finally:
            c.close()

    def healthy(self):
        st, raw = self.request("GET", "/health", timeout=10)
        return st == 200 and json.loads(raw) == {"status": "ok"}


@pytest.fixture(scope="module")
def srv(server_bin, model_path):
    s = Server(server_bin, model_path, "--timeout", "3", "--max-body", "65536")
    yield s
    s.close()
    assert s.proc.returncode == 0, f"server exited with {s.proc.returncode}"


@pytest.fixture(scope="module")
def client(srv):
    return openai.OpenAI(base_url=srv.base + "/v1", api_key="unused", timeout=120, max_retries=0)


def _complete(client, prompt, **kw):
    kw.setdefault("max_tokens", 12)
    return client.completions.create(model="smol", prompt=prompt, **kw)


# ---- API ---------------------------------------------------------------------------------------------

def test_models_health_and_metrics(srv, client):
    assert srv.healthy()
    models = client.models.list()
    assert [m.id for m in models.data] == ["smol"]
    st, raw = srv.request("GET", "/metrics")
    assert st == 200 and b"triattn_requests_total" in raw and b"triattn_kv_bytes" in raw
    st, raw = srv.request("GET", "/slots")
    slots = json.loads(raw)
    assert st == 200 and len(slots) == 4 and all(s["kv"]["kv_bytes"] > 0 for s in slots)


def test_completion_usage_matches_tokenizer(srv, client):
    prompt = RNG.choice(PROMPTS) + " " + str(RNG.randint(0, 10**6))
    r = _complete(client, prompt, temperature=0, max_tokens=6)
    assert r.choices[0].finish_reason in ("length", "stop")
    st, raw = srv.request("POST", "/tokenize", {"content": prompt})
    toks = json.loads(raw)["tokens"]
    assert r.usage.prompt_tokens == len(toks) > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert 1 <= r.usage.completion_tokens <= 6
    st, raw = srv.request("POST", "/detokenize", {"tokens": toks})
    assert st == 200 and json.loads(raw)["content"].strip() == prompt.strip()


def test_stream_equals_non_stream(client):
    prompt = RNG.choice(PROMPTS)
    full = _complete(client, prompt, temperature=0, max_tokens=16).choices[0].text
    parts = [ch.choices[0].text for ch in _complete(client, prompt, temperature=0, max_tokens=16, stream=True)]
    assert "".join(parts) == full and len(parts) > 1


def test_chat_and_chat_stream(client):
    msgs = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": RNG.choice(PROMPTS)}]
    r = client.chat.completions.create(model="smol", messages=msgs, max_tokens=10, temperature=0)
    text = r.choices[0].message.content
    assert r.choices[0].message.role == "assistant" and text
    chunks = list(client.chat.completions.create(model="smol", messages=msgs, max_tokens=10, temperature=0, stream=True))
    joined = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert joined == text
    assert chunks[-1].choices[0].finish_reason in ("length", "stop")


def test_seed_reproducible(client):
    prompt = RNG.choice(PROMPTS)
    seed = RNG.randint(1, 2**31)
    a = _complete(client, prompt, temperature=1.0, seed=seed, max_tokens=12).choices[0].text
    b = _complete(client, prompt, temperature=1.0, seed=seed, max_tokens=12).choices[0].text
    assert a == b
    others = {_complete(client, prompt, temperature=1.5, top_p=1.0, seed=seed + k, max_tokens=12).choices[0].text
              for k in range(1, 4)}
    assert len(others | {a}) > 1, "different seeds never differ"


def test_stop_string(client):
    prompt = RNG.choice(PROMPTS)
    full = _complete(client, prompt, temperature=0, max_tokens=16).choices[0].text
    words = [w for w in full.split(" ") if len(w) >= 2]
    if len(words) < 2:
        pytest.skip("greedy output too short to pick a stop string")
    stop = words[len(words) // 2]
    r = _complete(client, prompt, temperature=0, max_tokens=16, stop=[stop, "zzzqqq"])
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].text == full[:full.index(stop)]


def test_concurrency_matches_sequential(client):
    prompts = [p + f" ({k})" for k, p in enumerate(PROMPTS)]
    solo = [_complete(client, p, temperature=0, max_tokens=8).choices[0].text for p in prompts]
    with cf.ThreadPoolExecutor(8) as ex:
        together = list(ex.map(lambda p: _complete(client, p, temperature=0, max_tokens=8).choices[0].text, prompts))
    assert together == solo


# ---- errors ------------------------------------------------------------------------------------------

def _err(srv, method, path, body, headers=None):
    st, raw = srv.request(method, path, body, headers)
    if st >= 400 and raw:
        e = json.loads(raw)["error"]
        assert {"message", "type", "code"} <= set(e)
    return st


@pytest.mark.parametrize("body,status", [
    (b'{"prompt": "hi", "max_tokens": 4', 400),        # truncated
    (b'{"prompt": "hi",}', 400),                         # invalid
    (b'[1, 2]', 400),                                    # not an object
    (b'{"prompt": 5}', 400),                             # wrong type
    (b'{"prompt": "hi", "max_tokens": "4"}', 400),
    (b'{"prompt": "hi", "max_tokens": -3}', 400),        # negative
    (b'{"prompt": "hi", "max_tokens": 2.5}', 400),
    (b'{"prompt": "hi", "n": 17}', 400),
    (b'{"prompt": "hi", "n": 0}', 400),
    (b'{"prompt": "hi", "n": "2"}', 400),
    (b'{"prompt": "hi", "temperature": "hot"}', 400),
    (b'{"prompt": "hi", "stop": [1]}', 400),
    (b'{"prompt": "\xff\xfe hi"}', 400),                 # invalid UTF-8
    (b'{"prompt": "\xed\xa0\x80"}', 400),                # encoded surrogate
    (b'{"prompt": "\\ud800"}', 400),                     # lone surrogate escape
])
def test_bad_bodies(srv, body, status):
    assert _err(srv, "POST", "/v1/completions", body, {"Content-Type": "application/json"}) == status
    assert srv.healthy()


def test_bad_routes_and_chat_fields(srv):
    assert _err(srv, "GET", "/nope", None) == 404
    assert _err(srv, "GET", "/v1/completions", None) == 405
    assert _err(srv, "POST", "/v1/chat/completions", {"messages": "hi"}) == 400
    assert _err(srv, "POST", "/v1/chat/completions", {"messages": [{"role": 1, "content": "x"}]}) == 400
    assert _err(srv, "POST", "/detokenize", {"tokens": [-1]}) == 400
    assert srv.healthy()


def test_prompt_over_context(srv):
    prompt = " ".join(RNG.choice(["alpha", "beta", "gamma", "delta"]) for _ in range(3000))
    assert _err(srv, "POST", "/v1/completions", {"prompt": prompt, "max_tokens": 4}) == 400
    assert srv.healthy()


def _raw(srv, data: bytes, timeout=10.0) -> bytes:
    s = socket.create_connection((srv.host, srv.port), timeout=timeout)
    try:
        s.sendall(data)
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except (ConnectionResetError, socket.timeout):
                break
            if not chunk:
                break
            out += chunk
        return out
    finally:
        s.close()


def test_huge_body_and_header_limits(srv):
    body = b'{"prompt": "' + b"a" * 70000 + b'"}'
    out = _raw(srv, b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    assert out.startswith(b"HTTP/1.1 413")
    many = b"".join(b"X-H%d: v\r\n" % k for k in range(100))
    assert _raw(srv, b"GET /health HTTP/1.1\r\n" + many + b"\r\n").startswith(b"HTTP/1.1 431")
    assert _raw(srv, b"GET /health HTTP/1.1\r\nX: " + b"v" * 20000 + b"\r\n\r\n").startswith(b"HTTP/1.1 431")
    assert _raw(srv, b"POST /tokenize HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")[:12] in (
        b"HTTP/1.1 411", b"HTTP/1.1 400")
    assert srv.healthy()


def test_keep_alive_and_pipelining(srv):
    req = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    out = _raw(srv, req * 3 + b"GET /health HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert out.count(b"HTTP/1.1 200") == 4


@pytest.mark.long
def test_request_parser_fuzz(srv):
    """Random mutations of valid requests: each gets a response or a closed connection, never a hang."""
    base = [b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            b'POST /tokenize HTTP/1.1\r\nContent-Length: 15\r\nConnection: close\r\n\r\n{"content":"a"}']
    for _ in range(60):
        data = bytearray(RNG.choice(base))
        for _ in range(RNG.randint(1, 4)):
            pos = RNG.randrange(len(data))
            op = RNG.randrange(3)
            if op == 0:
                data[pos] = RNG.randrange(256)
            elif op == 1:
                data.insert(pos, RNG.choice(b" :\r\n\x00\xff/"))
            else:
                del data[pos]
        t0 = time.time()
        out = _raw(srv, bytes(data), timeout=8)
        assert time.time() - t0 < 7.5, f"seed {SEED}: request hung: {bytes(data)!r}"
        assert out == b"" or out.startswith(b"HTTP/1.1 "), f"seed {SEED}: {out[:80]!r}"
    assert srv.healthy()


def test_slow_loris_is_cut(srv):
    s = socket.create_connection((srv.host, srv.port), timeout=10)
    t0 = time.time()
    closed = False
    try:
        s.sendall(b"GET /health HTTP/1.1\r\n")
        for _ in range(12):
            time.sleep(0.5)
            try:
                s.sendall(b"X-Slow: 1\r\n")
            except OSError:
                closed = True
                break
        if not closed:
            s.settimeout(5)
            try:
                closed = s.recv(100) == b""
            except ConnectionResetError:
                closed = True
    finally:
        s.close()
    assert closed and time.time() - t0 < 8   # --timeout 3
    assert srv.healthy()


def test_disconnect_mid_stream_frees_slot(srv, client):
    base = {"prompt": "Tell me a long story.", "max_tokens": 400, "stream": True, "temperature": 0, "ignore_eos": True}
    for k in range(4):   # more than --parallel would block if slots leaked (the n=3 streams hold three each)
        body = json.dumps({**base, "n": 3} if k % 2 else base).encode()
        s = socket.create_connection((srv.host, srv.port), timeout=30)
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        assert s.recv(64).startswith(b"HTTP/1.1 200")
        s.close()
    time.sleep(0.5)
    deadline = time.time() + 20
    while time.time() < deadline:
        st, raw = srv.request("GET", "/slots")
        if all(x["state"] == "idle" for x in json.loads(raw)):
            break
        time.sleep(0.2)
    assert all(x["state"] == "idle" for x in json.loads(raw)), raw
    assert _complete(client, "Hello", temperature=0, max_tokens=2).choices[0].text is not None


def test_api_key_and_cors(server_bin, model_path):
    s = Server(server_bin, model_path, "--api-key", "sekret", "--cors", "--parallel", "1")
    try:
        assert s.healthy()
        st, _ = s.request("GET", "/v1/models")
        assert st == 401
        st, _ = s.request("GET", "/v1/models", headers={"Authorization": "Bearer wrong"})
        assert st == 401
        c = openai.OpenAI(base_url=s.base + "/v1", api_key="sekret", timeout=60, max_retries=0)
        assert c.models.list().data[0].id == "smol"
        conn = http.client.HTTPConnection(s.host, s.port, timeout=10)
        conn.request("OPTIONS", "/v1/completions", headers={"Origin": "http://x"})
        r = conn.getresponse()
        r.read()
        assert r.status == 204 and r.getheader("Access-Control-Allow-Origin") == "*"
        conn.close()
    finally:
        s.close()
    assert s.proc.returncode == 0


# ---- batching, logprobs, per-request KV budget, model names ------------------------------------------------

def _metric(srv, name):
    st, raw = srv.request("GET", "/metrics")
    for line in raw.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def test_continuous_batching_shares_steps(srv, client):
    """4 long generations at once advance together: the engine's mean batch is well above one slot."""
    steps0, rows0 = _metric(srv, "triattn_engine_steps_total"), _metric(srv, "triattn_engine_slot_steps_total")
    with cf.ThreadPoolExecutor(4) as ex:
        outs = list(ex.map(lambda p: _complete(client, p, temperature=0, max_tokens=40, extra_body={"ignore_eos": True}),
                           PROMPTS[:4]))
    assert all(o.usage.completion_tokens == 40 for o in outs)
    steps = _metric(srv, "triattn_engine_steps_total") - steps0
    rows = _metric(srv, "triattn_engine_slot_steps_total") - rows0
    assert steps > 0 and rows / steps > 2.0, (rows, steps)


def test_unknown_model_is_404(srv, client):
    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model="no-such-model", prompt="Hi", max_tokens=2)
    assert "no-such-model" in str(e.value)
    # the model file's name works too
    name = Path(srv.proc.args[2]).name
    for alias in (name, name.removesuffix(".gguf")):
        assert client.completions.create(model=alias, prompt="Hi", max_tokens=1).usage.completion_tokens == 1


def test_logprobs_chat_and_completions(srv, client):
    k = RNG.randint(1, 5)
    r = client.chat.completions.create(model="smol", messages=[{"role": "user", "content": "Name a colour."}],
                                       max_tokens=8, temperature=0, logprobs=True, top_logprobs=k)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    text = "".join(c.token for c in content)
    assert r.choices[0].message.content.startswith(text.strip()[:3])
    for c in content:
        assert c.logprob <= 0 and len(c.top_logprobs) == k
        tops = [t.logprob for t in c.top_logprobs]
        assert tops == sorted(tops, reverse=True)
        # greedy: the chosen token is the most likely one
        assert c.logprob == pytest.approx(tops[0], abs=1e-5) and c.token == c.top_logprobs[0].token
        assert bytes(c.bytes).decode("utf-8", "replace") == c.token or not c.token.isprintable()
    # sampled tokens: logprob <= the top one, and the probabilities of the top list sum to <= 1
    r = _complete(client, "Once upon a time", max_tokens=10, temperature=1.0, seed=RNG.randint(0, 10**6), logprobs=3)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 10
    import math
    for tok_lp, top in zip(lp.token_logprobs, lp.top_logprobs):
        assert len(top) <= 3 and sum(math.exp(v) for v in top.values()) <= 1.0 + 1e-5
        assert tok_lp <= max(top.values()) + 1e-6
    assert lp.text_offset == sorted(lp.text_offset)
    # without logprobs: null
    assert _complete(client, "Hi", max_tokens=2).choices[0].logprobs is None


def test_logprobs_bad_values(srv):
    st, _ = srv.request("POST", "/v1/completions", {"prompt": "x", "logprobs": 99})
    assert st == 400
    st, _ = srv.request("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}],
                                                        "top_logprobs": 2})
    assert st == 400


def test_logit_bias(srv, client):
    """logit_bias (OpenAI's {"token id": bias}): +100 makes a token the greedy choice at every step in completions
    and chat, the logprobs stay the model's own, the next request is unaffected, and bad maps are 400s."""
    word = RNG.choice([" banana", " river", " purple", " engine", " castle", " window"])
    st, raw = srv.request("POST", "/tokenize", {"content": word})
    boost = json.loads(raw)["tokens"][-1]
    st, raw = srv.request("POST", "/detokenize", {"tokens": [boost] * 3})
    want = json.loads(raw)["content"]
    prompt = RNG.choice(PROMPTS)
    plain = _complete(client, prompt, max_tokens=3, temperature=0)
    r = _complete(client, prompt, max_tokens=3, temperature=0, logit_bias={str(boost): 100}, logprobs=1)
    assert r.choices[0].text == want, (r.choices[0].text, want)
    lp = r.choices[0].logprobs
    # the model's own logprobs: the boosted token is not its first choice at every step
    assert all(t <= max(top.values()) + 1e-6 for t, top in zip(lp.token_logprobs, lp.top_logprobs))
    assert any(t < max(top.values()) - 1e-3 for t, top in zip(lp.token_logprobs, lp.top_logprobs)), lp
    c = client.chat.completions.create(model="smol", messages=[{"role": "user", "content": prompt}], max_tokens=3,
                                       temperature=0, logit_bias={str(boost): 100})
    assert c.choices[0].message.content.strip() == want.strip()
    assert _complete(client, prompt, max_tokens=3, temperature=0).choices[0].text == plain.choices[0].text
    for lb in ([1, 2], {"abc": 1}, {"-1": 1}, {"1.5": 1}, {"99999999": 1}, {"1": 101}, {"1": "x"}, {"": 1},
               "1:2"):
        st, raw = srv.request("POST", "/v1/completions", {"prompt": "x", "logit_bias": lb})
        assert st == 400 and json.loads(raw)["error"]["param"] == "logit_bias", (lb, st, raw)
    assert srv.healthy()


def test_completion_echo(client):
    """echo: the prompt comes back before the completion, whole or as the stream's first chunk, and logprobs'
    text_offset counts from the prompt's end."""
    prompt = RNG.choice(PROMPTS) + " " + str(RNG.randint(0, 10**6))
    plain = _complete(client, prompt, max_tokens=5, temperature=0).choices[0].text
    r = _complete(client, prompt, max_tokens=5, temperature=0, echo=True, logprobs=1)
    assert r.choices[0].text == prompt + plain
    assert r.choices[0].logprobs.text_offset[0] == len(prompt.encode())
    chunks = list(_complete(client, prompt, max_tokens=5, temperature=0, echo=True, stream=True))
    assert chunks[0].choices[0].text == prompt and "".join(c.choices[0].text for c in chunks) == prompt + plain
    assert _complete(client, prompt, max_tokens=5, temperature=0, echo=False).choices[0].text == plain


def test_n_choices(srv, client):
    """n: several choices of one prompt, streamed or whole; with a seed, choice k samples as a lone request with
    seed + k; the usage counts the prompt once and the tokens of every choice."""
    prompt = RNG.choice(PROMPTS) + " " + str(RNG.randint(0, 10**6))
    seed, n = RNG.randint(1, 2**31), RNG.randint(2, 4)
    kw = dict(temperature=1.5, top_p=1.0, max_tokens=8)
    before = [x["n_requests"] for x in json.loads(srv.request("GET", "/slots")[1])]
    processed = _metric(srv, "triattn_prompt_tokens_total")
    r = _complete(client, prompt, n=n, seed=seed, logprobs=1, **kw)
    after = [x["n_requests"] for x in json.loads(srv.request("GET", "/slots")[1])]
    processed = _metric(srv, "triattn_prompt_tokens_total") - processed
    assert [c.index for c in r.choices] == list(range(n))
    # an idle server runs the choices side by side, one slot each, the others from copies of the first's cache:
    # the prompt is prefilled once (each copy decodes its last token again)
    assert sum(a > b for a, b in zip(after, before)) == n, (before, after)
    assert processed <= r.usage.prompt_tokens + 2 * (n - 1), (processed, r.usage.prompt_tokens)
    solo = [_complete(client, prompt, seed=seed + k, **kw).choices[0].text for k in range(n)]
    assert [c.text for c in r.choices] == solo
    assert len(set(solo)) > 1, "the choices are all the same"
    st, raw = srv.request("POST", "/tokenize", {"content": prompt})
    assert r.usage.prompt_tokens == len(json.loads(raw)["tokens"])
    assert r.usage.completion_tokens == sum(len(c.logprobs.tokens) for c in r.choices)
    # streamed: the same texts, each choice's own finish event, then the usage
    chunks = list(_complete(client, prompt, n=n, seed=seed, stream=True, stream_options={"include_usage": True}, **kw))
    texts, finishes = [""] * n, [0] * n
    for ch in chunks:
        for c in ch.choices:
            texts[c.index] += c.text
            finishes[c.index] += c.finish_reason is not None
    assert texts == solo and finishes == [1] * n
    assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens
    # chat, greedy: every choice is the lone greedy reply; each streamed choice starts with the role
    msgs = [{"role": "user", "content": RNG.choice(PROMPTS)}]
    one = client.chat.completions.create(model="smol", messages=msgs, max_tokens=6, temperature=0)
    two = client.chat.completions.create(model="smol", messages=msgs, max_tokens=6, temperature=0, n=2)
    assert [c.message.content for c in two.choices] == [one.choices[0].message.content] * 2
    deltas = [[], []]
    for ch in client.chat.completions.create(model="smol", messages=msgs, max_tokens=6, temperature=0, n=2, stream=True):
        for c in ch.choices:
            deltas[c.index].append(c.delta)
    assert all(d[0].role == "assistant" for d in deltas)
    assert ["".join(x.content or "" for x in d) for d in deltas] == [one.choices[0].message.content] * 2
    st, raw = srv.request("POST", "/v1/completions", {"prompt": "x", "n": 17})
    assert st == 400 and json.loads(raw)["error"]["param"] == "n"


WORDS = ("river mountain lantern copper whisper orchard harbor meadow ember quartz violet thunder cedar falcon "
         "marble saffron glacier pepper canyon willow").split()


def _notes(n_words):
    """A fresh shared start for several prompts (a system prompt, a document)."""
    return "Background notes: " + " ".join(RNG.choice(WORDS) for _ in range(n_words)) + ".\n"


def _gen(s, prompt, **kw):
    st, raw = s.request("POST", "/v1/completions", {"prompt": prompt, "max_tokens": 6, "temperature": 0, **kw},
                        timeout=120)
    assert st == 200, raw
    return json.loads(raw)


def test_prefix_shared_between_slots(server_bin, model_path):
    """A prompt whose start another slot holds (busy or idle) starts from a copy of that slot's cache, and one whose
    start another slot is prefilling waits for it and copies it: the shared part is prefilled once, and every reply
    equals the one prefilled from scratch ("cache_prompt": false). --prefix-share 0 turns it off."""
    s = Server(server_bin, model_path, "--parallel", "3", "--ctx-size", "1024")
    try:
        notes = _notes(RNG.randint(160, 240))
        prompts = [notes + f"Question {k}: {RNG.choice(PROMPTS)}" for k in range(3)]
        n_notes = len(json.loads(s.request("POST", "/tokenize", {"content": notes})[1])["tokens"])
        assert n_notes > 150
        # three at once on empty slots: one prefills the notes, the others wait for them and copy them
        with cf.ThreadPoolExecutor(3) as ex:
            burst = list(ex.map(lambda p: _gen(s, p), prompts))
        filled = sum(r["timings"]["prompt_n"] for r in burst)
        assert filled < n_notes + 3 * 40, [r["timings"] for r in burst]
        shared = [r for r in burst if "cache_from_slot" in r["timings"]]
        assert len(shared) >= 2 and all(r["timings"]["cache_shared_n"] >= n_notes - 2 for r in shared), burst
        assert _metric(s, "triattn_prefix_shares_total") == len(shared)
        assert _metric(s, "triattn_prefix_shared_tokens_total") == sum(r["timings"]["cache_shared_n"] for r in shared)
        # from a busy slot: a long stream holds the new notes; a request with the same notes copies its cache
        notes2 = _notes(RNG.randint(160, 240))
        c = openai.OpenAI(base_url=s.base + "/v1", api_key="x", timeout=120, max_retries=0)
        stream = c.completions.create(model="smol", prompt=notes2 + "Tell me a long story.", max_tokens=300,
                                      temperature=0, stream=True, extra_body={"ignore_eos": True})
        next(iter(stream))
        busy = [x["id"] for x in json.loads(s.request("GET", "/slots")[1]) if x["state"] == "busy"]
        late_prompt = notes2 + "Question: " + RNG.choice(PROMPTS)
        late = _gen(s, late_prompt)
        assert late["timings"].get("cache_from_slot") in busy and late["timings"]["prompt_n"] < 40, late["timings"]
        assert json.loads(s.request("GET", "/slots")[1])[busy[0]]["state"] == "busy"   # it is still generating
        stream.close()
        # the same replies as from scratch
        for p, r in zip(prompts + [late_prompt], burst + [late]):
            assert _gen(s, p, cache_prompt=False)["choices"][0]["text"] == r["choices"][0]["text"]
    finally:
        s.close()
    s = Server(server_bin, model_path, "--parallel", "2", "--ctx-size", "1024", "--prefix-share", "0")
    try:
        with cf.ThreadPoolExecutor(2) as ex:
            off = list(ex.map(lambda p: _gen(s, p), prompts[:2]))
        assert all("cache_from_slot" not in r["timings"] for r in off)
        assert sum(r["timings"]["prompt_n"] for r in off) > 2 * n_notes
        assert [r["choices"][0]["text"] for r in off] == [r["choices"][0]["text"] for r in burst[:2]]
        assert _metric(s, "triattn_prefix_shares_total") == 0
    finally:
        s.close()


@pytest.fixture(scope="module")
def sidecar():
    p = Path(__file__).resolve().parents[1] / "python" / "pytriattn" / "data" / "SmolLM2-135M-Instruct.Q4_1.tri-stats.gguf"
    assert p.exists(), p
    return p


def test_per_request_kv_budget(server_bin, model_path, sidecar, srv):
    s = Server(server_bin, model_path, "--calibration", str(sidecar), "--kv-policy", "triattention",
               "--kv-budget", "256", "--kv-interval", "32", "--parallel", "2")
    try:
        c = openai.OpenAI(base_url=s.base + "/v1", api_key="x", timeout=120, max_retries=0)
        prompt = " ".join(PROMPTS) * 12
        for budget in (64, 200):
            r = c.completions.create(model="smol", prompt=prompt, max_tokens=8, temperature=0,
                                     extra_body={"kv_budget": budget})
            assert r.usage.prompt_tokens > 256
            slots = json.loads(s.request("GET", "/slots")[1])
            used = [x for x in slots if x["n_requests"] > 0 and x["n_prompt_tokens"] == r.usage.prompt_tokens]
            assert used and any(x["kv"]["live_max"] <= budget + 32 and x["kv"]["n_compressions"] > 0 for x in used), slots
        st, raw = s.request("POST", "/v1/completions", {"prompt": "x", "kv_budget": 10**6})
        assert st == 400 and b"kv_budget" in raw
        # n choices of a prompt the cache compressed: each after the first starts over, as a lone request would
        seed = RNG.randint(1, 2**31)
        kw = dict(model="smol", prompt=prompt, max_tokens=40, temperature=1.2, extra_body={"kv_budget": 64})
        r = c.completions.create(n=3, seed=seed, **kw)
        assert [ch.text for ch in r.choices] == [c.completions.create(seed=seed + k, **kw).choices[0].text
                                                 for k in range(3)]
    finally:
        s.close()
    # a full-attention server has no budget to lower
    st, raw = srv.request("POST", "/v1/completions", {"prompt": "x", "kv_budget": 64})
    assert st == 400 and b"kv_budget" in raw


def test_prefix_shared_with_triattention(server_bin, model_path, sidecar):
    """TriAttention slots share a start their caches hold uncompressed, only between equal budgets; a start that a
    compression round ran after is not shared (its cache cannot be cut back to it). Replies equal the ones
    prefilled from scratch."""
    s = Server(server_bin, model_path, "--calibration", str(sidecar), "--kv-policy", "triattention",
               "--kv-budget", "512", "--kv-interval", "64", "--parallel", "3", "--ctx-size", "1024")
    try:
        notes = _notes(RNG.randint(120, 200))
        prompts = [notes + f"Question {k}: {RNG.choice(PROMPTS)}" for k in range(3)]
        with cf.ThreadPoolExecutor(3) as ex:
            burst = list(ex.map(lambda p: _gen(s, p), prompts))
        assert sum("cache_from_slot" in r["timings"] for r in burst) >= 2, [r["timings"] for r in burst]
        # another budget: the caches under 512 are not copied
        other = _gen(s, notes + "Question: " + RNG.choice(PROMPTS), kv_budget=300)
        assert "cache_from_slot" not in other["timings"]
        # budget 64: every cache holding the notes was compressed after them
        small = [_gen(s, notes + f"Note {k}.", kv_budget=64) for k in range(2)]
        assert all("cache_from_slot" not in r["timings"] for r in small)
        assert all(r["usage"]["prompt_tokens"] > 128 for r in small)
        for p, r, kw in [(p, r, {}) for p, r in zip(prompts, burst)] + [
                (notes + f"Note {k}.", small[k], {"kv_budget": 64}) for k in range(2)]:
            assert _gen(s, p, cache_prompt=False, **kw)["choices"][0]["text"] == r["choices"][0]["text"]
    finally:
        s.close()


def test_default_model_and_its_centres_without_m(server_bin, model_path, sidecar, tmp_path):
    """No -m: the default model from pytriattn's cache and its query centres found by name beside it, so
    --kv-policy triattention runs; without them the error names the server's own flags."""
    name = "SmolLM2-135M-Instruct.Q4_1.gguf"
    if model_path.name != name:
        pytest.skip("the test model is not the default model")
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / name).symlink_to(model_path)
    shutil.copy(sidecar, cache / sidecar.name)
    env = {**os.environ, "PYTRIATTN_CACHE": str(cache)}
    s = Server(server_bin, None, "--kv-policy", "triattention", "--kv-budget", str(RNG.choice([256, 512])), env=env)
    try:
        c = openai.OpenAI(base_url=s.base + "/v1", api_key="x", timeout=120, max_retries=0)
        r = c.completions.create(model="smol", prompt=RNG.choice(PROMPTS), max_tokens=4, temperature=0)
        assert r.usage.completion_tokens > 0
        slots = json.loads(s.request("GET", "/slots")[1])
        assert all(x["kv"]["policy"] == "triattention" for x in slots), slots
    finally:
        s.close()
    err = s.proc.stderr.read()
    assert "model smol (llama" in err and f"query centres: {cache / sidecar.name}" in err, err
    (cache / sidecar.name).unlink()
    p = subprocess.run([str(server_bin), "--kv-policy", "triattention", "--port", "0"], capture_output=True,
                       text=True, env=env, timeout=120)
    assert p.returncode == 1 and "listening" not in p.stdout, (p.stdout, p.stderr)
    assert "error: --kv-policy triattention needs query centres" in p.stderr and "--calibration FILE" in p.stderr
    assert "pytriattn calibrate" in p.stderr and sidecar.name in p.stderr and "calibration_path" not in p.stderr
    empty = tmp_path / f"empty{RNG.randrange(1000)}"
    p = subprocess.run([str(server_bin), "--port", "0"], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTRIATTN_CACHE": str(empty)})
    assert p.returncode == 2 and str(empty / name) in p.stderr and "pytriattn fetch" in p.stderr, p.stderr


# ---- embeddings ----------------------------------------------------------------------------------------

def test_embeddings_openai_client(srv, client, model_path):
    """The openai client (base64 by default) and "float" give the vectors pytriattn's Llama.embed gives."""
    import numpy as np
    from pytriattn import Llama
    texts = RNG.sample(PROMPTS, 3)
    r = client.embeddings.create(model="smol", input=texts)
    assert [d.index for d in r.data] == [0, 1, 2] and r.model == "smol"
    with Llama(str(model_path), n_ctx=1024, n_threads=2, kv_policy="full") as llm:
        want = llm.embed(texts)
        assert r.usage.prompt_tokens == r.usage.total_tokens == sum(len(llm.tokenize(t)) for t in texts)
        ids = llm.tokenize(texts[0])
        last = llm.embed(ids, pooling="last", normalize=False)
    for d, w in zip(r.data, want):
        np.testing.assert_allclose(d.embedding, w, rtol=0, atol=1e-6)
    as_float = client.embeddings.create(model="smol", input=texts[1], encoding_format="float")
    assert len(as_float.data) == 1
    np.testing.assert_allclose(as_float.data[0].embedding, want[1], rtol=0, atol=1e-6)
    st, raw = srv.request("POST", "/v1/embeddings", {"input": [ids], "pooling": "last", "normalize": False})
    assert st == 200
    np.testing.assert_allclose(json.loads(raw)["data"][0]["embedding"], last, rtol=0, atol=1e-6)


def test_embeddings_while_generating(srv, client):
    """Embedding requests take a free slot while the engine generates in the others: neither changes the other."""
    prompts = RNG.sample(PROMPTS, 3)
    solo = [_complete(client, p, temperature=0, max_tokens=16).choices[0].text for p in prompts]
    text = "Embeddings of this sentence do not depend on what the other slots do."
    alone = client.embeddings.create(model="smol", input=text).data[0].embedding
    with cf.ThreadPoolExecutor(6) as ex:
        gens = [ex.submit(_complete, client, p, temperature=0, max_tokens=16) for p in prompts]
        embs = [ex.submit(client.embeddings.create, model="smol", input=text) for _ in range(3)]
        assert [g.result().choices[0].text for g in gens] == solo
        for e in embs:
            assert e.result().data[0].embedding == alone
    assert srv.healthy()


@pytest.mark.parametrize("body,status", [
    ({}, 400),
    ({"input": []}, 400),
    ({"input": ""}, 400),
    ({"input": [[]]}, 400),
    ({"input": 5}, 400),
    ({"input": ["ok", 5]}, 400),
    ({"input": [1, 2, 10**9]}, 400),                    # token id out of range
    ({"input": [1, -2]}, 400),
    ({"input": "x", "encoding_format": "hex"}, 400),
    ({"input": "x", "dimensions": 7}, 400),
    ({"input": "x", "pooling": "max"}, 400),
    ({"input": "x", "normalize": "yes"}, 400),
    ({"input": "x", "model": "other"}, 404),
    ({"input": ["x"] * 2049}, 400),
    ({"input": " ".join(["alpha", "beta"] * 1500)}, 400),  # over n_ctx
])
def test_embeddings_bad_requests(srv, body, status):
    assert _err(srv, "POST", "/v1/embeddings", body) == status
    assert srv.healthy()


def test_embeddings_with_compressing_slots(server_bin, model_path, sidecar):
    """On TriAttention slots an embedding evicts as a prefill does, at the server's budget even when the slot's last
    request lowered its own: the vector is the one Llama.embed gives with the same policy."""
    import numpy as np
    from pytriattn import Llama
    s = Server(server_bin, model_path, "--calibration", str(sidecar), "--kv-policy", "triattention",
               "--kv-budget", "64", "--kv-interval", "16", "--parallel", "1")
    try:
        c = openai.OpenAI(base_url=s.base + "/v1", api_key="x", timeout=120, max_retries=0)
        prompt = " ".join(RNG.sample(PROMPTS, len(PROMPTS))) * 6
        c.completions.create(model="smol", prompt=prompt, max_tokens=4, temperature=0, extra_body={"kv_budget": 16})
        got = c.embeddings.create(model="smol", input=prompt).data[0].embedding
        with Llama(str(model_path), n_ctx=1024, n_threads=2, kv_policy="triattention", kv_budget=64, kv_interval=16,
                   calibration=str(sidecar)) as llm:
            assert len(llm.tokenize(prompt)) > 64 + 16
            want = llm.embed(prompt)
        with Llama(str(model_path), n_ctx=1024, n_threads=2, kv_policy="full") as llm:
            full = llm.embed(prompt)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
        assert float(np.dot(got, full)) < 1 - 1e-6   # tokens were evicted
    finally:
        s.close()
