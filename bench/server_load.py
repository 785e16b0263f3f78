#!/usr/bin/env python3
"""Long-running checks of triattn-server (outside CI): fuzz, soak and the slot-concurrency benchmark.

  python bench/server_load.py fuzz  --minutes 10            # mutated HTTP requests and JSON bodies
  python bench/server_load.py soak  --requests 500 -c 8     # zero errors, RSS sampled over the run
  python bench/server_load.py bench --slots 1,2,4,8 --tokens 256 --policies full,triattention
  python bench/server_load.py lockout --clients 256      # slow-drain clients; /health must stay 200
  python bench/server_load.py vanished --clients 60      # 1-token latency behind vanished queued clients
  python bench/server_load.py memory --clients 64        # peak RSS under 64 concurrent ~512 KB requests
  python bench/server_load.py choices -n 4               # n choices in one request against n requests
  python bench/server_load.py shared --requests 8        # requests sharing a long prompt start, --prefix-share on/off

Each starts the server binary (TRIATTN_SERVER_BIN, else build/triattn-server, else the wheel's) on a free
loopback port with the default model, prints a summary and writes JSON next to it (bench/out/).
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
SIDECAR = ROOT / "python" / "pytriattn" / "data" / "SmolLM2-135M-Instruct.Q4_1.tri-stats.gguf"


def server_binary() -> str:
    env = os.environ.get("TRIATTN_SERVER_BIN")
    if env:
        return env
    for p in (ROOT / "build" / "triattn-server", ROOT / "build" / "ctest" / "triattn-server"):
        if p.exists():
            return str(p)
    sys.path.append(str(ROOT / "python"))  # an installed pytriattn comes first
    from pytriattn import _lib  # noqa: E402
    return str(Path(_lib.library_path()).parent / "triattn-server")


def default_model() -> str:
    sys.path.append(str(ROOT / "python"))  # an installed pytriattn comes first
    from pytriattn._fetch import ensure_default_model  # noqa: E402
    return str(ensure_default_model())


class Server:
    def __init__(self, *args: str):
        self.proc = subprocess.Popen([server_binary(), "-m", default_model(), "--port", "0", "--alias", "smol", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("listening on http://"):
            raise SystemExit(f"server did not start: {line!r}")
        host, port = line.strip().rsplit("/", 1)[1].rsplit(":", 1)
        self.host, self.port = host, int(port)

    def rss_mib(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
        return float("nan")

    def raw(self, data: bytes, timeout: float = 10.0, half_close: bool = True) -> bytes:
        """Sends data and reads until the server closes. half_close=False keeps our side open, as HTTP
        clients do (the server takes a half-closed connection for a client that went away)."""
        s = socket.create_connection((self.host, self.port), timeout=timeout)
        try:
            s.sendall(data)
            if half_close:
                s.shutdown(socket.SHUT_WR)
            out = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    return out
                out += chunk
        except OSError:
            return b""
        finally:
            s.close()

    def post(self, path: str, body: dict, timeout: float = 600.0) -> tuple[int, dict]:
        import http.client
        c = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            c.request("POST", path, body=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
            r = c.getresponse()
            raw = r.read()
            return r.status, (json.loads(raw) if raw else {})
        finally:
            c.close()

    def healthy(self) -> bool:
        return self.raw(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.1 200")

    def close(self) -> int:
        self.proc.terminate()
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return -9


# ---- fuzz ----------------------------------------------------------------------------------------

def _mutate(rng: random.Random, data: bytes, alphabet: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        if not b:
            break
        pos = rng.randrange(len(b))
        op = rng.randrange(4)
        if op == 0:
            b[pos] = rng.randrange(256)
        elif op == 1:
            b.insert(pos, rng.choice(alphabet))
        elif op == 2:
            del b[pos]
        else:
            b[pos:pos] = b[pos:pos + rng.randint(1, 16)]
    return bytes(b)


def _request(path: str, body: bytes) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body


def _read_answer(s: socket.socket, timeout: float) -> bytes:
    """Reads until the server closes, or until a complete answer has been followed by a pause (a kept-alive
    connection); interim 100 responses are kept in the bytes."""
    out = b""
    t_end = time.time() + timeout
    s.settimeout(0.5)
    while time.time() < t_end:
        try:
            chunk = s.recv(65536)
        except (TimeoutError, socket.timeout):
            if out and (not out.startswith(b"HTTP/1.1 1") or out.count(b"\r\n\r\n") > 1):
                break
            continue
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    return out


def _final_status(out: bytes) -> str:
    while out.startswith(b"HTTP/1.1 1") and b"\r\n\r\n" in out:
        out = out.split(b"\r\n\r\n", 1)[1]
    return out[9:12].decode(errors="replace") if out.startswith(b"HTTP/1.1 ") else ("closed" if not out else "junk")


def fuzz(a) -> dict:
    """Valid, JSON-mutated and HTTP-mutated requests from a few concurrent clients that wait for the answer
    (no half-close): generation and streaming run, as do the parser's error paths. Some clients cut a
    stream short or vanish after sending, for the cancellation paths."""
    srv = Server("--parallel", "2", "--timeout", "2", "--max-body", "65536", "--ctx-size", "512")
    bodies = [
        {"model": "smol", "prompt": "Hello there", "max_tokens": 3, "temperature": 0.5, "stop": ["\n"]},
        {"model": "smol", "messages": [{"role": "user", "content": "Hi \u00e9\u4e2d"}], "max_tokens": 2, "stream": True},
        {"model": "smol", "prompt": "x", "max_tokens": 2, "logprobs": 2, "seed": 7},
        {"model": "smol", "prompt": "Once upon a time", "max_tokens": 4, "stream": True},
        {"model": "smol", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}],
         "max_tokens": 3, "logprobs": True, "top_logprobs": 2},
        {"content": "tokenize me \u2603"}, {"tokens": [1, 2, 3, 400]},
    ]
    paths = ["/v1/completions", "/v1/chat/completions", "/v1/completions", "/v1/completions",
             "/v1/chat/completions", "/tokenize", "/detokenize"]
    json_alpha = b'"\\{}[],:0123456789.eE+-truefalsnul \xc3\xa9\xff\x00u'
    http_alpha = b" :\r\n\x00\xff/?%HTTP1.GETPOST"
    t_end = time.time() + a.minutes * 60
    lock = __import__("threading").Lock()
    counts = {"requests": 0, "hung": 0, "not_http": 0, "valid": 0, "json_mutated": 0, "http_mutated": 0,
              "cut": 0, "vanished": 0}
    statuses: dict[str, int] = {}

    def client(seed: int):
        rng = random.Random(seed)
        while time.time() < t_end and srv.proc.poll() is None:
            k = rng.randrange(len(bodies))
            body = json.dumps(bodies[k], ensure_ascii=rng.random() < 0.5).encode()
            r = rng.random()
            kind = "valid" if r < 0.4 else "json_mutated" if r < 0.75 else "http_mutated"
            if kind == "valid":
                data = _request(paths[k], body)
            elif kind == "json_mutated":
                data = _request(paths[k], _mutate(rng, body, json_alpha))
            else:
                data = _mutate(rng, _request(paths[k], body), http_alpha)
            how = rng.random()
            t0 = time.time()
            out = b""
            try:
                with socket.create_connection((srv.host, srv.port), timeout=a.hang_seconds) as s:
                    s.sendall(data)
                    if how < 0.05:
                        kind2 = "vanished"          # gone right after sending
                    elif how < 0.12:
                        kind2 = "cut"               # reads a little, then goes
                        s.settimeout(a.hang_seconds)
                        out = s.recv(rng.randint(1, 300))
                    else:
                        kind2 = None
                        out = _read_answer(s, a.hang_seconds)
            except OSError:
                kind2 = None
            wall = time.time() - t0
            code = _final_status(out) if kind2 is None else kind2
            with lock:
                counts["requests"] += 1
                counts[kind] += 1
                if kind2:
                    counts[kind2] += 1
                if wall > a.hang_seconds - 1:
                    counts["hung"] += 1
                    print(f"hung ({wall:.1f} s): {data[:200]!r}", flush=True)
                if kind2 is None and code == "junk":
                    counts["not_http"] += 1
                    print(f"not HTTP: {out[:100]!r} for {data[:200]!r}", flush=True)
                statuses[code] = statuses.get(code, 0) + 1
                n = counts["requests"]
            if n % 500 == 0:
                print(f"{n} requests, {statuses}", file=sys.stderr, flush=True)

    with cf.ThreadPoolExecutor(a.clients) as ex:
        list(ex.map(client, [a.seed + i for i in range(a.clients)]))
    alive = srv.proc.poll() is None and srv.healthy()
    rc = srv.close()
    res = {**counts, "minutes": a.minutes, "seed": a.seed, "clients": a.clients, "statuses": statuses,
           "alive_at_end": alive, "exit_code": rc}
    print(json.dumps(res, indent=1))
    return res


# ---- soak ----------------------------------------------------------------------------------------

PROMPTS = ["Write a short story about a lighthouse keeper.", "Explain how a bicycle works.",
           "List five uses of a paperclip.", "What is the largest ocean on Earth?",
           "Describe the water cycle.", "Give me a recipe for pancakes.", "Why is the sky blue?",
           "Summarise the plot of Hamlet."]


def soak(a) -> dict:
    rng = random.Random(a.seed)
    srv = Server("--parallel", str(a.concurrency), "--ctx-size", "2048", *a.server_args)
    rss: list[tuple[int, float]] = []
    errors: list[str] = []
    done = 0
    t0 = time.time()

    def one(i: int):
        body = {"model": "smol", "max_tokens": rng.randint(16, a.max_tokens), "temperature": 0.8,
                "seed": rng.randint(0, 10**9), "stream": i % 3 == 0}
        if i % 2:
            body["messages"] = [{"role": "user", "content": rng.choice(PROMPTS)}]
            path = "/v1/chat/completions"
        else:
            body["prompt"] = rng.choice(PROMPTS)
            path = "/v1/completions"
        if body["stream"]:
            out = srv.raw(_request(path, json.dumps(body).encode()), timeout=600, half_close=False)
            ok = out.startswith(b"HTTP/1.1 200") and b"data: [DONE]" in out and out.endswith(b"0\r\n\r\n")
            return None if ok else f"stream {i}: {out[-160:]!r}"
        st, js = srv.post(path, body)
        usage = js.get("usage", {}) if st == 200 else {}
        ok = usage.get("completion_tokens", -1) >= 0 and js["choices"][0]["finish_reason"] in ("stop", "length")
        return None if ok else f"{i}: {st} {js}"

    with cf.ThreadPoolExecutor(a.concurrency) as ex:
        futs = [ex.submit(one, i) for i in range(a.requests)]
        for f in cf.as_completed(futs):
            err = f.result()
            if err:
                errors.append(err)
            done += 1
            if done % 25 == 0:
                rss.append((done, srv.rss_mib()))
                print(f"{done}/{a.requests} requests, RSS {rss[-1][1]:.1f} MiB, {len(errors)} errors",
                      file=sys.stderr, flush=True)
    wall = time.time() - t0
    rc = srv.close()
    warm = [r for d, r in rss if d >= a.requests // 5]
    res = {"requests": a.requests, "concurrency": a.concurrency, "errors": len(errors), "first_errors": errors[:5],
           "wall_s": round(wall, 1), "rss_mib": rss,
           "rss_after_warmup_min_max": [round(min(warm), 1), round(max(warm), 1)] if warm else None,
           "exit_code": rc}
    print(json.dumps({k: v for k, v in res.items() if k != "rss_mib"}, indent=1))
    return res


# ---- hostile clients: slow drains, vanished queued clients, big bodies -----------------------------------

def lockout(a) -> dict:
    """a.clients connections each send a malformed request and then a byte every 0.5 s (the slow drain), with
    --max-conns a.clients; /health is polled meanwhile. Reports the share of 200s and when the slow
    connections were closed by the server."""
    import threading
    srv = Server("--max-conns", str(a.clients), "--parallel", "1")
    stop = threading.Event()
    closed_after: list[float] = []

    def slow():
        """Reconnects as soon as the server lets go, so the places stay taken."""
        while not stop.is_set():
            try:
                s = socket.create_connection((srv.host, srv.port), timeout=5)
            except OSError:
                time.sleep(0.5)
                continue
            t0 = time.time()
            s.settimeout(0.5)
            try:
                s.sendall(b"G@T / HTTP/1.1\r\n\r\n")
                while not stop.is_set():
                    s.sendall(b"x")
                    try:
                        if s.recv(65536) == b"":
                            time.sleep(0.5)
                    except (TimeoutError, socket.timeout):
                        pass
            except OSError:
                closed_after.append(time.time() - t0)
            finally:
                s.close()

    threads = [threading.Thread(target=slow, daemon=True) for _ in range(a.clients)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    codes: dict[str, int] = {}
    t_end = time.time() + a.seconds
    while time.time() < t_end:
        out = srv.raw(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", timeout=5, half_close=False)
        code = _final_status(out)
        codes[code] = codes.get(code, 0) + 1
        time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join(timeout=5)
    srv.close()
    res = {"slow_clients": a.clients, "seconds": a.seconds, "health_codes": codes,
           "slow_connections_closed_by_server": len(closed_after),
           "closed_after_s_max": round(max(closed_after), 2) if closed_after else None}
    print(json.dumps(res, indent=1))
    return res


def _timed_post(srv: Server, path: str, body: dict) -> tuple[int, float]:
    t0 = time.time()
    st, _ = srv.post(path, body)
    return st, time.time() - t0


def vanished(a) -> dict:
    """The 1-token request's latency on an idle server, then right behind a.clients clients that each
    send a ~600-token prompt and vanish (close right after sending)."""
    texts = _kjv(3000, a.clients)   # ~600 tokens each
    srv = Server("--parallel", str(a.parallel))
    # without the prompt cache every timed request prefills its prompt, as the first one would
    one = {"model": "smol", "prompt": "Hello", "max_tokens": 1, "temperature": 0, "cache_prompt": False}
    srv.post("/v1/completions", one)   # warm-up
    idle = sorted(_timed_post(srv, "/v1/completions", one)[1] for _ in range(5))[2]
    for t in texts:
        with socket.create_connection((srv.host, srv.port), timeout=10) as s:
            s.sendall(_request("/v1/completions", json.dumps({"model": "smol", "prompt": t, "max_tokens": 64}).encode()))
    st, behind = _timed_post(srv, "/v1/completions", one)
    slots = json.loads(srv.raw(b"GET /slots HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                               half_close=False).split(b"\r\n\r\n", 1)[1])
    srv.close()
    res = {"vanished_clients": a.clients, "parallel": a.parallel, "idle_latency_s": round(idle, 3),
           "latency_behind_vanished_s": round(behind, 3), "status": st, "ratio": round(behind / idle, 2),
           "slot_acquisitions": sum(x["n_requests"] for x in slots)}
    print(json.dumps(res, indent=1))
    return res


def memory(a) -> dict:
    """a.clients concurrent requests of ~512 KB each, per body shape, with peak RSS sampled every 20 ms:
    a 512 KB string in an ignored field (answered), a chat of many short messages (longer than the
    context: 400) and an array of tiny numbers (refused: 413)."""
    import threading
    size = 512 * 1024
    pad = "lorem ipsum dolor sit amet " * (size // 27)
    n_msgs = size // 42
    shapes = {
        "big_string": {"model": "smol", "prompt": "Hello", "max_tokens": 1, "user": pad[:size]},
        "many_messages": {"model": "smol", "max_tokens": 1,
                          "messages": [{"role": "user", "content": "hi there %d" % i} for i in range(n_msgs)]},
        "tiny_numbers": {"model": "smol", "prompt": "Hello", "max_tokens": 1, "x": [0] * (size // 2 - 64)},
    }
    out = {}
    for name, body in shapes.items():
        srv = Server("--max-body", str(2 << 20), "--parallel", "4")
        base = srv.rss_mib()
        peak = [base]
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                peak[0] = max(peak[0], srv.rss_mib())
                time.sleep(0.02)

        th = threading.Thread(target=sample, daemon=True)
        th.start()
        data = json.dumps(body, separators=(",", ":")).encode()
        with cf.ThreadPoolExecutor(a.clients) as ex:
            codes = list(ex.map(lambda _: _final_status(srv.raw(_request("/v1/chat/completions" if "messages" in body
                                                                         else "/v1/completions", data),
                                                                timeout=600, half_close=False)), range(a.clients)))
        stop.set()
        th.join()
        end = srv.rss_mib()
        srv.close()
        out[name] = {"body_bytes": len(data), "codes": {c: codes.count(c) for c in set(codes)},
                     "rss_base_mib": round(base, 1), "rss_peak_mib": round(peak[0], 1), "rss_end_mib": round(end, 1)}
        print(name, json.dumps(out[name]), flush=True)
    res = {"clients": a.clients, "shapes": out}
    print(json.dumps(res, indent=1))
    return res


# ---- concurrency benchmark --------------------------------------------------------------------------

def _kjv(chars: int, n: int) -> list[str]:
    """n different passages of the King James Bible (Debian's `bible`), chars characters each."""
    try:
        out = subprocess.run(["bible", "-f", "Genesis 1:1-Revelation 22:21"], capture_output=True, text=True,
                             check=True, stdin=subprocess.DEVNULL).stdout
    except (OSError, subprocess.CalledProcessError):
        raise SystemExit("bench needs the `bible` command: apt-get install bible-kjv bible-kjv-text")
    step = max(1, (len(out) - chars) // max(1, n))
    return [out[i * step:i * step + chars] for i in range(n)]


def bench(a) -> dict:
    rows = []
    texts = _kjv(a.prompt_chars, max(int(x) for x in a.slots.split(",")))
    for policy in a.policies.split(","):
        for n in [int(x) for x in a.slots.split(",")]:
            extra = ["--parallel", str(n), "--ctx-size", str(a.ctx), "--kv-policy", policy, "-t", str(a.threads)]
            if policy != "full":
                extra += ["--calibration", str(SIDECAR), "--kv-budget", str(a.budget)]
            srv = Server(*extra)
            def one(i):
                return srv.post("/v1/completions", {"model": "smol", "prompt": texts[i], "max_tokens": a.tokens,
                                                    "temperature": 0, "ignore_eos": True})
            t0 = time.time()
            with cf.ThreadPoolExecutor(n) as ex:
                outs = list(ex.map(one, range(n)))
            wall = time.time() - t0
            gen = sum(js["usage"]["completion_tokens"] for st, js in outs if st == 200)
            prompt = sum(js["usage"]["prompt_tokens"] for st, js in outs if st == 200)
            decode_s = max(js["timings"]["decode_ms"] for st, js in outs if st == 200) / 1e3
            slots = json.loads(srv.raw(b"GET /slots HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").split(b"\r\n\r\n", 1)[1])
            kv_slot = slots[0]["kv"]["kv_bytes"]
            cap = slots[0]["kv"]["capacity"]
            srv.close()
            row = {"policy": policy, "slots": n, "ok": sum(st == 200 for st, _ in outs), "prompt_tokens": prompt,
                   "generated": gen, "wall_s": round(wall, 2), "tok_s_wall": round((prompt + gen) / wall, 1),
                   "gen_tok_s": round(gen / decode_s, 1), "kv_bytes_per_slot": kv_slot, "capacity": cap}
            rows.append(row)
            print(json.dumps(row), flush=True)
    # sequences of a.seq_len tokens that fit in 1 GiB of KV: full needs seq_len slots each, a compressing
    # policy budget + interval whatever the length
    per_slot = {r["policy"]: r["kv_bytes_per_slot"] / r["capacity"] for r in rows}
    fit = {}
    for p, b in per_slot.items():
        slots_needed = a.seq_len if p == "full" else a.budget + 128
        fit[p] = int((1 << 30) // (b * slots_needed))
    res = {"rows": rows, "fits_in_1GiB_at_seq_len": {"seq_len": a.seq_len, **fit}}
    print(json.dumps(res["fits_in_1GiB_at_seq_len"]))
    return res


# ---- n choices ------------------------------------------------------------------------------------

def choices(a) -> dict:
    """One request with n choices against n requests in a row and n concurrent ones, per (prompt, max_tokens) case,
    on a server with --parallel n (the choices may run side by side) and on one with --parallel 1 (they follow one
    another in one slot). Every request has a KJV passage of its own, so no cache helps; medians of --repeat."""
    cases = [tuple(int(v) for v in c.split(":")) for c in a.cases.split(",")]
    per_case = a.repeat * (1 + 2 * a.n)
    texts = iter(_kjv(max(c for c, _ in cases), 2 * len(cases) * per_case))
    rows = []
    for parallel in (a.n, 1):
        srv = Server("--parallel", str(parallel), "--ctx-size", str(a.ctx), "-t", str(a.threads))
        srv.post("/v1/completions", {"prompt": "warm up", "max_tokens": 4})
        for chars, max_tokens in cases:
            base = {"model": "smol", "max_tokens": max_tokens, "temperature": 0.8, "ignore_eos": True}
            times = {"n": [], "in_a_row": [], "concurrent": []}
            for rep in range(a.repeat):
                t0 = time.perf_counter()
                st, js = srv.post("/v1/completions", {**base, "prompt": next(texts)[:chars], "n": a.n, "seed": rep})
                times["n"].append(time.perf_counter() - t0)
                assert st == 200 and len(js["choices"]) == a.n, (st, js)
                n_prompt = js["usage"]["prompt_tokens"]
                if parallel == 1:
                    continue
                prompts = [next(texts)[:chars] for _ in range(2 * a.n)]
                t0 = time.perf_counter()
                for k in range(a.n):
                    srv.post("/v1/completions", {**base, "prompt": prompts[k], "seed": k})
                times["in_a_row"].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                with cf.ThreadPoolExecutor(a.n) as ex:
                    list(ex.map(lambda k: srv.post("/v1/completions", {**base, "seed": k, "prompt": prompts[a.n + k]}),
                                range(a.n)))
                times["concurrent"].append(time.perf_counter() - t0)
            row = {"parallel": parallel, "n": a.n, "prompt_tokens": n_prompt, "max_tokens": max_tokens,
                   **{f"{k}_s": round(statistics.median(v), 3) for k, v in times.items() if v}}
            rows.append(row)
            print(json.dumps(row), flush=True)
        srv.close()
    return {"threads": a.threads, "repeat": a.repeat, "rows": rows}


# ---- shared prompt starts ---------------------------------------------------------------------------

def _first_token_stream(srv: Server, body: dict) -> tuple[float, dict]:
    """Streams a completion; returns the seconds to its first text and the usage chunk."""
    import http.client
    c = http.client.HTTPConnection(srv.host, srv.port, timeout=600)
    t0 = time.perf_counter()
    first, usage = None, {}
    try:
        c.request("POST", "/v1/completions", body=json.dumps({**body, "stream": True,
                  "stream_options": {"include_usage": True}}).encode(), headers={"Content-Type": "application/json"})
        r = c.getresponse()
        assert r.status == 200, r.read()
        for line in r:
            if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                continue
            ev = json.loads(line[6:])
            if first is None and any(ch.get("text") for ch in ev.get("choices", [])):
                first = time.perf_counter() - t0
            if ev.get("usage"):
                usage = ev["usage"]
    finally:
        c.close()
    return first if first is not None else float("nan"), usage


def shared(a) -> dict:
    """Requests that start with the same document (a system prompt, a shared file) and end with their own question,
    on servers with --prefix-share on and off: all sent at once, and one every --gap seconds (each arriving while
    the earlier ones run). Per request the time to its first token (streamed) and the prompt tokens prefilled; the
    wall time of all. Every round has a document of its own (KJV text), so no earlier cache helps; medians of the
    rounds' figures over --repeat rounds."""
    policies = a.policies.split(",")
    rounds = len(policies) * 2 * 2 * a.repeat
    docs = iter(_kjv(a.doc_chars, rounds + 1))
    questions = [q[:a.question_chars] for q in _kjv(a.question_chars, 50 * a.requests)[::50]]
    rows = []
    for policy in policies:
        for share in (a.share, 0):
            extra = ["--parallel", str(a.parallel), "--ctx-size", str(a.ctx), "-t", str(a.threads),
                     "--kv-policy", policy, "--prefix-share", str(share)]
            if policy != "full":
                extra += ["--calibration", str(SIDECAR), "--kv-budget", str(a.budget)]
            srv = Server(*extra)
            srv.post("/v1/completions", {"prompt": "warm up", "max_tokens": 4})
            for pattern in ("burst", "staggered"):
                per = {"ttft_median_s": [], "ttft_max_s": [], "wall_s": [], "prefilled": [], "prompt_tokens": []}
                for rep in range(a.repeat):
                    doc = next(docs)
                    bodies = [{"model": "smol", "prompt": f"{doc}\n\nQuestion: {q}\nAnswer:", "max_tokens": a.tokens,
                               "temperature": 0, "ignore_eos": True} for q in questions]
                    t0 = time.perf_counter()

                    def one(k):
                        if pattern == "staggered":
                            time.sleep(max(0.0, t0 + k * a.gap - time.perf_counter()))
                        return _first_token_stream(srv, bodies[k])
                    with cf.ThreadPoolExecutor(a.requests) as ex:
                        outs = list(ex.map(one, range(a.requests)))
                    per["wall_s"].append(time.perf_counter() - t0)
                    ttft = [t for t, _ in outs]
                    per["ttft_median_s"].append(statistics.median(ttft))
                    per["ttft_max_s"].append(max(ttft))
                    per["prefilled"].append(sum(u["prompt_tokens"] - u["prompt_tokens_details"]["cached_tokens"]
                                                for _, u in outs))
                    per["prompt_tokens"].append(statistics.median(u["prompt_tokens"] for _, u in outs))
                row = {"policy": policy, "prefix_share": share, "pattern": pattern, "requests": a.requests,
                       "parallel": a.parallel, **{k: round(statistics.median(v), 3) for k, v in per.items()}}
                rows.append(row)
                print(json.dumps(row), flush=True)
            srv.close()
    return {"threads": a.threads, "repeat": a.repeat, "gap_s": a.gap, "max_tokens": a.tokens, "rows": rows}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fuzz", help="mutated requests against a live server")
    f.add_argument("--minutes", type=float, default=10)
    f.add_argument("--seed", type=int, default=time.time_ns() % 2**31)
    f.add_argument("--clients", type=int, default=4, help="concurrent clients (default 4)")
    f.add_argument("--hang-seconds", type=float, default=60, help="an answer slower than this counts as hung")
    s = sub.add_parser("soak", help="many requests at a fixed concurrency, RSS over time")
    s.add_argument("--requests", type=int, default=500)
    s.add_argument("-c", "--concurrency", type=int, default=8)
    s.add_argument("--max-tokens", type=int, default=64)
    s.add_argument("--seed", type=int, default=time.time_ns() % 2**31)
    s.add_argument("--server-args", nargs="*", default=[])
    lo = sub.add_parser("lockout", help="slow-drain clients on every connection place; /health polled")
    lo.add_argument("--clients", type=int, default=256)
    lo.add_argument("--seconds", type=float, default=20)
    va = sub.add_parser("vanished", help="a 1-token request behind clients that queued a long prompt and left")
    va.add_argument("--clients", type=int, default=60)
    va.add_argument("--parallel", type=int, default=4)
    me = sub.add_parser("memory", help="peak RSS under concurrent ~512 KB requests, per body shape")
    me.add_argument("--clients", type=int, default=64)
    b = sub.add_parser("bench", help="aggregate tokens/s against the number of slots, per policy")
    b.add_argument("--slots", default="1,2,4,8")
    b.add_argument("--policies", default="full,triattention")
    b.add_argument("--tokens", type=int, default=256, help="tokens generated per request (default 256)")
    b.add_argument("--prompt-chars", type=int, default=10000, help="characters of KJV text per prompt "
                   "(default 10000, about 2.5K tokens)")
    b.add_argument("--budget", type=int, default=1024)
    b.add_argument("--ctx", type=int, default=8192)
    b.add_argument("--seq-len", type=int, default=8192)
    b.add_argument("-t", "--threads", type=int, default=2)
    ch = sub.add_parser("choices", help="one request with n choices against n requests, in a row and at once")
    ch.add_argument("-n", type=int, default=4, help="choices per request (default 4)")
    ch.add_argument("--cases", default="600:64,2400:32,2400:110,2400:160,2400:300",
                    help="PROMPT_CHARS:MAX_TOKENS,... (default 600:64,2400:32,2400:110,2400:160,2400:300)")
    ch.add_argument("--repeat", type=int, default=3)
    ch.add_argument("--ctx", type=int, default=4096)
    ch.add_argument("-t", "--threads", type=int, default=2)
    sh = sub.add_parser("shared", help="requests sharing a long prompt start, with --prefix-share on and off")
    sh.add_argument("--requests", type=int, default=8)
    sh.add_argument("--parallel", type=int, default=4)
    sh.add_argument("--doc-chars", type=int, default=6000, help="characters of the shared document (default 6000, "
                    "about 1.5K tokens)")
    sh.add_argument("--question-chars", type=int, default=120)
    sh.add_argument("--tokens", type=int, default=32, help="tokens generated per request (default 32)")
    sh.add_argument("--gap", type=float, default=0.5, help="seconds between arrivals, staggered (default 0.5)")
    sh.add_argument("--share", type=int, default=64, help="--prefix-share of the 'on' server (default 64)")
    sh.add_argument("--policies", default="full,triattention")
    sh.add_argument("--budget", type=int, default=2048)
    sh.add_argument("--repeat", type=int, default=3)
    sh.add_argument("--ctx", type=int, default=4096)
    sh.add_argument("-t", "--threads", type=int, default=2)
    a = ap.parse_args(argv)
    res = {"fuzz": fuzz, "soak": soak, "bench": bench, "lockout": lockout, "vanished": vanished,
           "memory": memory, "choices": choices, "shared": shared}[a.cmd](a)
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"server_{a.cmd}.json"
    path.write_text(json.dumps(res, indent=1))
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
