"""triattn-server under hostile or unusual clients: slow and vanished clients, memory per request, connection
limits and HTTP edge cases. The real binary on 127.0.0.1, with counts scaled down so the file stays short
(bench/server_load.py measures the full-size scenarios)."""
from __future__ import annotations

import concurrent.futures as cf
import json
import os
import random
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

SEED = int(os.environ.get("TRIATTN_TEST_SEED", time.time_ns() % 2**31))
RNG = random.Random(SEED)
MAX_CONNS = 10   # --max-conns of the shared server
WORDS = ["river", "stone", "lantern", "orchard", "meadow", "harbour", "violin", "pepper", "comet", "glacier"]


@pytest.fixture(scope="module")
def model_path(request) -> Path:
    env = os.environ.get("TRIATTN_TEST_MODEL")
    return Path(env) if env else request.getfixturevalue("default_model")


class Server:
    def __init__(self, binary: Path, model: Path, *extra: str, env: dict | None = None):
        self.proc = subprocess.Popen([str(binary), "-m", str(model), "--port", "0", "--ctx-size", "1024",
                                      "--alias", "smol", *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env={**os.environ, **(env or {})})
        line = self.proc.stdout.readline()
        assert line.startswith("listening on http://"), f"server did not start: {line!r} {self.proc.stderr.read()}"
        self.port = int(line.strip().rsplit(":", 1)[1])
        self.host = "127.0.0.1"
        # stderr is read continuously (request log), so a full pipe never blocks the server
        self.log: list[str] = []
        threading.Thread(target=lambda: self.log.extend(self.proc.stderr), daemon=True).start()

    def close(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def connect(self, timeout: float = 10) -> socket.socket:
        return socket.create_connection((self.host, self.port), timeout=timeout)

    def raw(self, data: bytes, timeout: float = 10, half_close: bool = False) -> bytes:
        """Sends data and reads until the server closes the connection."""
        s = self.connect(timeout)
        try:
            s.sendall(data)
            if half_close:
                s.shutdown(socket.SHUT_WR)
            out = b""
            while chunk := s.recv(65536):
                out += chunk
            return out
        except ConnectionResetError:
            return out
        finally:
            s.close()

    def get(self, path: str, headers: str = "") -> bytes:
        return self.raw(f"GET {path} HTTP/1.1\r\nHost: x\r\n{headers}Connection: close\r\n\r\n".encode())

    def metric(self, name: str) -> float:
        for line in self.get("/metrics").split(b"\r\n\r\n", 1)[1].decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        raise AssertionError(f"{name} not in /metrics")

    def slots(self) -> list:
        return json.loads(self.get("/slots").split(b"\r\n\r\n", 1)[1])


def post(path: str, body: dict | bytes, version: str = "1.1", close: bool = True) -> bytes:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    conn = "Connection: close\r\n" if close else ""
    return (f"POST {path} HTTP/{version}\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n{conn}\r\n").encode() + data


def final_status(out: bytes) -> int:
    """The status of the final response (interim 1xx responses skipped)."""
    while out.startswith(b"HTTP/1.1 1"):
        out = out.split(b"\r\n\r\n", 1)[1]
    assert out.startswith(b"HTTP/1."), out[:120]
    return int(out[9:12])


def words(n: int) -> str:
    return " ".join(RNG.choice(WORDS) for _ in range(n))


@pytest.fixture(scope="module")
def srv(server_bin, model_path):
    s = Server(server_bin, model_path, "--parallel", "1", "--timeout", "2", "--max-conns", str(MAX_CONNS))
    yield s
    assert s.close() == 0, "".join(s.log[-20:])


# ---- 1. slow clients: one deadline per connection, 408, bare LF, /health at the limit --------------------

def _trickle(s: socket.socket, stop: threading.Event, step: float = 0.25) -> float | None:
    """Sends a byte every step seconds until the server has closed the connection (a send or receive
    then fails: the reset); the seconds that took, or None when stop came first. The server's half-close
    after its error response (EOF) is not the end: it may still be reading."""
    t0 = time.time()
    s.settimeout(step)
    while not stop.is_set():
        try:
            s.sendall(b"x")
            if s.recv(65536) == b"":
                time.sleep(step)
        except (TimeoutError, socket.timeout):
            continue
        except OSError:
            return time.time() - t0
    return None


def test_slow_drain_is_bounded_and_health_stays_up(srv):
    """Malformed requests followed by a byte every 0.25 s on every connection place: each connection is
    closed within ~1 s of its 400 (it used to be held as long as the bytes kept coming), /health answers
    200 all the while, and the places are free again for other requests."""
    stop = threading.Event()
    socks = [srv.connect() for _ in range(MAX_CONNS)]
    for s in socks:
        s.sendall(b"G@T / HTTP/1.1\r\n\r\n")
    with cf.ThreadPoolExecutor(len(socks)) as ex:
        futs = [ex.submit(_trickle, s, stop) for s in socks]
        health = [srv.get("/health")[:12] for _ in range(3)]
        cf.wait(futs, timeout=6)
        models = srv.get("/v1/models")[:12]   # the places were given back while the trickle goes on
        stop.set()
    for s in socks:
        s.close()
    closed = [f.result() for f in futs]
    assert all(h == b"HTTP/1.1 200" for h in health), health
    assert all(t is not None and t < 4 for t in closed), closed
    assert models == b"HTTP/1.1 200", models


def test_slow_header_gets_408_and_health_is_served_at_the_limit(srv):
    """--max-conns slow header senders: each gets a 408 at the deadline (--timeout 2), and /health is
    answered 200 through a reserved place while they hold every connection."""
    socks = [srv.connect() for _ in range(MAX_CONNS)]
    for s in socks:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
    time.sleep(0.3)
    assert srv.get("/health")[:12] == b"HTTP/1.1 200"
    busy = srv.get("/v1/models")
    assert busy.startswith(b"HTTP/1.1 503") and b"Retry-After: 1" in busy, busy[:200]
    t0 = time.time()
    outs = []
    for s in socks:
        out = b""
        try:
            while time.time() - t0 < 6:
                s.sendall(b"X-Slow: 1\r\n")
                s.settimeout(0.3)
                try:
                    chunk = s.recv(4096)
                except (TimeoutError, socket.timeout):
                    continue
                out += chunk
                if not chunk or out.count(b"\r\n\r\n") and out.endswith(b"}"):
                    break
        except OSError:
            pass
        outs.append(out)
        s.close()
    assert all(o.startswith(b"HTTP/1.1 408") for o in outs), [o[:40] for o in outs]
    assert time.time() - t0 < 6


def test_bare_lf_is_refused_at_once(srv):
    t0 = time.time()
    out = srv.raw(b"GET /health HTTP/1.1\nHost: x\n\n", timeout=10)
    assert out.startswith(b"HTTP/1.1 400") and time.time() - t0 < 1.5, (out[:40], time.time() - t0)


def test_per_address_connection_cap(server_bin, model_path):
    s = Server(server_bin, model_path, "--parallel", "1", "--max-conns-per-ip", "2", "--timeout", "5")
    try:
        held = [s.connect(), s.connect()]
        time.sleep(0.2)
        out = s.get("/v1/models")
        assert out.startswith(b"HTTP/1.1 429") and b"Retry-After" in out, out[:120]
        assert s.get("/health").startswith(b"HTTP/1.1 200")
        for h in held:
            h.close()
        time.sleep(0.3)
        assert s.get("/v1/models").startswith(b"HTTP/1.1 200")
    finally:
        assert s.close() == 0


# ---- 2. vanished queued clients cost no work ---------------------------------------------------------

def test_vanished_queued_clients_are_dropped(srv):
    """With the only slot busy, clients that queue a ~600-token prompt and go away leave the queue: their
    connections close while the slot is still busy, and none of them ever takes the slot."""
    long = srv.connect(60)
    long.sendall(post("/v1/completions", {"prompt": "Once upon a time", "max_tokens": 1000, "stream": True,
                                          "temperature": 0, "ignore_eos": True}))
    assert long.recv(64).startswith(b"HTTP/1.1 200")
    base_conns = srv.metric("triattn_connections_open")
    base_requests = sum(x["n_requests"] for x in srv.slots())
    vanished = []
    for _ in range(6):
        v = srv.connect()
        v.sendall(post("/v1/completions", {"prompt": words(600), "max_tokens": 1}))
        vanished.append(v)
    deadline = time.time() + 10
    while time.time() < deadline and srv.metric("triattn_requests_waiting") < 6:
        time.sleep(0.1)
    assert srv.metric("triattn_requests_waiting") == 6
    for v in vanished:
        v.close()
    deadline = time.time() + 5
    while time.time() < deadline and srv.metric("triattn_connections_open") > base_conns:
        time.sleep(0.1)
    assert srv.metric("triattn_connections_open") == base_conns
    assert srv.metric("triattn_requests_waiting") == 0
    assert srv.slots()[0]["state"] == "busy"   # the long request is still generating
    long.close()
    out = srv.raw(post("/v1/completions", {"prompt": "Hello", "max_tokens": 1}), timeout=60)
    assert final_status(out) == 200
    assert sum(x["n_requests"] for x in srv.slots()) == base_requests + 1


# ---- 3. memory per request ---------------------------------------------------------------------------

def test_request_memory_is_bounded(srv):
    """A 512 KB body of tiny values would cost ~40x its size as a tree: refused with 413; a real 512 KB
    prompt is fine (here it exceeds the context: 400)."""
    junk = b'{"prompt": "hi", "max_tokens": 1, "x": [' + b",".join([b"0"] * 250000) + b"]}"
    out = srv.raw(post("/v1/completions", junk), timeout=30)
    assert final_status(out) == 413 and b"request_too_complex" in out, out[:300]
    ok = srv.raw(post("/v1/completions", {"prompt": words(80000)[:500000], "max_tokens": 1}), timeout=60)
    assert final_status(ok) == 400 and b"context_length_exceeded" in ok, ok[:300]
    assert srv.metric("triattn_request_bytes_held") == 0


def test_global_cap_on_held_request_bytes(server_bin, model_path):
    s = Server(server_bin, model_path, "--parallel", "1", "--max-queued-bytes", "4000")
    try:
        big = s.raw(post("/v1/completions", {"prompt": words(1000), "max_tokens": 1}))
        assert big.startswith(b"HTTP/1.1 503") and b"Retry-After: 1" in big, big[:200]
        assert final_status(s.raw(post("/v1/completions", {"prompt": "Hi", "max_tokens": 1}))) == 200
    finally:
        assert s.close() == 0


# ---- 4/5. HTTP and OpenAI protocol -------------------------------------------------------------------

def test_head_has_no_body_and_keeps_the_connection_usable(srv):
    out = srv.raw(b"HEAD /health HTTP/1.1\r\nHost: x\r\n\r\nGET /health HTTP/1.1\r\nConnection: close\r\n\r\n")
    first, rest = out.split(b"\r\n\r\n", 1)
    assert first.startswith(b"HTTP/1.1 200") and b"Content-Length: 15" in first
    assert rest.startswith(b"HTTP/1.1 200") and rest.endswith(b'{"status":"ok"}'), out


def test_half_close_after_request_is_answered(srv):
    out = srv.raw(post("/v1/completions", {"prompt": "The sky is", "max_tokens": 2, "temperature": 0}),
                  timeout=60, half_close=True)
    assert final_status(out) == 200 and b'"completion_tokens":2' in out, out[:300]


def test_http10_stream_is_not_chunked(srv):
    out = srv.raw(post("/v1/completions", {"prompt": "Hello", "max_tokens": 3, "stream": True}, version="1.0",
                       close=False), timeout=60)
    head, body = out.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200") and b"chunked" not in head.lower() and b"Connection: close" in head
    assert body.startswith(b"data: {") and body.endswith(b"data: [DONE]\n\n"), body[-80:]


def test_model_name_with_embedded_nul_is_404(srv):
    body = b'{"model": "smol\\u0000junk", "prompt": "Hi", "max_tokens": 1}'
    out = srv.raw(post("/v1/completions", body))
    assert final_status(out) == 404 and b"model_not_found" in out
    assert final_status(srv.raw(post("/v1/completions", {"model": "smol", "prompt": "Hi", "max_tokens": 1}))) == 200


@pytest.mark.parametrize("how", ["file", "env"])
def test_api_key_from_file_or_env_and_checked_first(server_bin, model_path, tmp_path, how):
    key = "k-%08x" % RNG.getrandbits(32)
    if how == "file":
        (tmp_path / "key").write_text(key + "\n")
        s = Server(server_bin, model_path, "--parallel", "1", "--api-key-file", str(tmp_path / "key"))
    else:
        s = Server(server_bin, model_path, "--parallel", "1", env={"TRIATTN_API_KEY": key})
    try:
        assert s.get("/health").startswith(b"HTTP/1.1 200")
        for path, method in (("/nowhere", "GET"), ("/v1/completions", "GET"), ("/v1/models", "GET")):
            out = s.raw(f"{method} {path} HTTP/1.1\r\nConnection: close\r\n\r\n".encode())
            assert out.startswith(b"HTTP/1.1 401"), (path, out[:60])
        auth = f"Authorization: Bearer {key}\r\n"
        assert s.get("/nowhere", auth).startswith(b"HTTP/1.1 404")
        assert s.get("/v1/completions", auth).startswith(b"HTTP/1.1 405")
        assert s.get("/v1/models", auth).startswith(b"HTTP/1.1 200")
        assert key not in " ".join(s.proc.args)
    finally:
        assert s.close() == 0


def test_warning_when_open_without_key(server_bin, model_path):
    s = Server(server_bin, model_path, "--parallel", "1", "--host", "0.0.0.0")
    try:
        assert s.get("/health").startswith(b"HTTP/1.1 200")
    finally:
        s.close()
    time.sleep(0.2)
    assert any("warning" in line and "API key" in line for line in s.log), s.log[:5]
    quiet = Server(server_bin, model_path, "--parallel", "1")
    quiet.close()
    time.sleep(0.2)
    assert not any("warning" in line for line in quiet.log), quiet.log[:5]
