"""Prefix reuse and saved state: the Python Llama continuing a chat from its cache equals a fresh session given
the whole conversation (logits bit for bit, full and a compressing TriAttention cache, with and without recall
from tier 2), save_state/load_state;
the server's slot cache (longest common prefix, cache_prompt: false, /slots) and slot save/restore into a fresh
server, with truncated and bit-flipped files refused."""
from __future__ import annotations

import json
import os
import random
import re
import time
from pathlib import Path

import numpy as np
import pytest

from pytriattn import Llama, TriattnError

SEED = int(os.environ.get("TRIATTN_TEST_SEED", time.time_ns() % 2**31))
RNG = random.Random(SEED)
ROOT = Path(__file__).resolve().parents[1]
SIDECAR = ROOT / "python" / "pytriattn" / "data" / "SmolLM2-135M-Instruct.Q4_1.tri-stats.gguf"


def _sentences(n: int) -> str:
    """n random sentences of real English prose from the project's documentation."""
    text = " ".join((ROOT / "docs" / f).read_text() for f in ("engine.md", "triattention-engine.md"))
    words = re.findall(r"[A-Za-z][A-Za-z,.'-]*", text)
    out = []
    for _ in range(n):
        i = RNG.randrange(len(words) - 20)
        out.append(" ".join(words[i:i + RNG.randrange(6, 16)]).rstrip(",.") + ".")
    return " ".join(out)


def _llama(model, policy, **kw):
    extra = {"kv_budget": 64, "kv_interval": 16, "calibration": str(SIDECAR)} if policy == "triattention" else {}
    return Llama(str(model), n_ctx=1024, n_threads=2, kv_policy=policy, n_batch=RNG.randrange(16, 80),
                 **extra, **kw)


def _chat(llm, messages, **kw):
    return llm.create_chat_completion(messages, max_tokens=kw.pop("max_tokens", 24), temperature=0, **kw)


@pytest.mark.parametrize("policy,recall", [("full", 0), ("triattention", 0), ("triattention", 16)])
def test_chat_continuation_equals_one_request(default_model, policy, recall):
    llm = _llama(default_model, policy, kv_recall=recall)
    msgs = [{"role": "user", "content": _sentences(4)}]
    r1 = _chat(llm, msgs)
    assert r1["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    msgs += [{"role": "assistant", "content": r1["choices"][0]["message"]["content"]},
             {"role": "user", "content": _sentences(6)}]
    held = len(llm.session_tokens())
    r2 = _chat(llm, msgs)
    cached = r2["usage"]["prompt_tokens_details"]["cached_tokens"]
    # The re-rendered reply may tokenize differently from the sampled tokens; a TriAttention cache cannot be
    # cut back behind a compression round, so there (only) the session starts over.
    if llm.last_result["reuse"] == "restart":
        assert policy == "triattention" and cached == 0, llm.last_result
    else:
        assert llm.last_result["reuse"] in ("continue", "rollback"), llm.last_result
        assert 0 < cached <= held and cached > r1["usage"]["prompt_tokens"], (cached, held, r1["usage"])
    if policy == "triattention":
        assert llm.kv_stats()["n_compressions"] > 0
    if recall:  # a recall after each turn's prompt; the one request recalls at the same places
        assert llm.kv_stats()["n_recalls"] >= 2 and llm.kv_stats()["t2_rows"] > 0, llm.kv_stats()

    fresh = _llama(default_model, policy, kv_recall=recall)
    fresh.cache_prompt = False
    f2 = _chat(fresh, msgs)
    assert f2["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    assert f2["choices"][0]["message"]["content"] == r2["choices"][0]["message"]["content"]
    assert llm.session_tokens() == fresh.session_tokens()
    assert np.array_equal(llm.kv_positions(), fresh.kv_positions())
    a, b = llm.kv_stats(), fresh.kv_stats()
    assert [a[k] for k in ("t2_rows", "n_recalls", "n_recalled")] == [b[k] for k in ("t2_rows", "n_recalls", "n_recalled")]
    probe = [RNG.randrange(1000, llm.n_vocab())]
    assert np.array_equal(llm.eval(probe), fresh.eval(probe)), "logits differ after the continued turn"
    llm.close()
    fresh.close()


def test_completion_rollback_and_restart(default_model):
    llm = _llama(default_model, "full")
    base = _sentences(5)
    llm.create_completion(base, max_tokens=8, temperature=0)
    n_base = len(llm.tokenize(base))
    # the same text, then a different ending: the shared prompt comes from the cache
    r = llm.create_completion(base + " " + _sentences(1), max_tokens=4, temperature=0)
    assert llm.last_result["reuse"] in ("continue", "rollback")
    assert r["usage"]["prompt_tokens_details"]["cached_tokens"] >= n_base - 2
    other = llm.create_completion("Zebra " + base, max_tokens=4, temperature=0)
    assert other["usage"]["prompt_tokens_details"]["cached_tokens"] <= 1


@pytest.mark.parametrize("policy,recall", [("full", 0), ("triattention", 0), ("triattention", 16)])
def test_save_and_load_state(default_model, policy, recall, tmp_path):
    llm = _llama(default_model, policy, kv_recall=recall)
    msgs = [{"role": "user", "content": _sentences(8)}]
    r1 = _chat(llm, msgs, max_tokens=40)
    path = tmp_path / "s.state"
    llm.save_state(path)
    llm_t2_rows = llm.kv_stats()["t2_rows"]
    assert (llm_t2_rows > 0) == (recall > 0)
    msgs += [{"role": "assistant", "content": r1["choices"][0]["message"]["content"]},
             {"role": "user", "content": _sentences(2)}]
    want = _chat(llm, msgs)

    other = _llama(default_model, policy, kv_recall=recall)
    other.load_state(path)
    assert other.kv_stats()["t2_rows"] == llm_t2_rows
    # a copy of the loaded session (no file) continues as it does
    twin = _llama(default_model, policy, kv_recall=recall)
    twin.copy_state_from(other)
    assert twin.session_tokens() == other.session_tokens() and twin.kv_stats()["t2_rows"] == llm_t2_rows
    got = _chat(other, msgs)
    assert _chat(twin, msgs)["choices"] == got["choices"]
    cached = want["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert got["usage"]["prompt_tokens_details"]["cached_tokens"] == cached
    # as in the continuation test: a re-rendered reply that tokenizes differently restarts a compressed session
    assert cached > 0 or (policy == "triattention" and llm.last_result["reuse"] == "restart"), llm.last_result
    assert got["choices"][0]["message"]["content"] == want["choices"][0]["message"]["content"]

    raw = path.read_bytes()
    before = other.session_tokens()
    bad = tmp_path / "bad.state"
    for data in (raw[:RNG.randrange(len(raw))], _flip(raw)):
        bad.write_bytes(data)
        with pytest.raises(TriattnError, match="session_load"):
            other.load_state(bad)
        assert other.session_tokens() == before
    with pytest.raises(TriattnError):
        other.load_state(tmp_path / "missing.state")
    foreign = _llama(default_model, "triattention" if policy == "full" else "full")
    with pytest.raises(TriattnError, match="session_load"):
        foreign.load_state(path)
    before = foreign.session_tokens()
    with pytest.raises(TriattnError, match="session_copy"):
        foreign.copy_state_from(other)
    with pytest.raises(TypeError):
        foreign.copy_state_from(path)
    assert foreign.session_tokens() == before
    if recall:  # tier-2 rows need a session that keeps a tier 2
        plain = _llama(default_model, policy)
        with pytest.raises(TriattnError, match="kv_recall"):
            plain.load_state(path)
        plain.close()
    for x in (llm, other, twin, foreign):
        x.close()


def _flip(raw: bytes) -> bytes:
    b = bytearray(raw)
    b[RNG.randrange(len(b))] ^= 1 << RNG.randrange(8)
    return bytes(b)


# ---- server ------------------------------------------------------------------------------------------------

openai = pytest.importorskip("openai")


@pytest.fixture(scope="module")
def server_factory(server_bin, default_model):
    from test_server import Server
    started = []

    def start(*extra):
        s = Server(server_bin, default_model, *extra)
        started.append(s)
        return s

    yield start
    for s in started:
        s.close()


def _client(s):
    return openai.OpenAI(base_url=s.base + "/v1", api_key="unused", timeout=300, max_retries=0)


def _turn(c, msgs, **extra):
    r = c.chat.completions.create(model="smol", messages=msgs, max_tokens=16, temperature=0,
                                  extra_body=extra or None)
    return r.choices[0].message.content, r.usage


def test_server_longest_prefix_slot(server_factory):
    s = server_factory("--parallel", "2")
    c = _client(s)
    conv = [{"role": "user", "content": _sentences(5)}]
    other = [{"role": "user", "content": _sentences(5)}]
    text, u1 = _turn(c, conv)
    assert u1.prompt_tokens_details.cached_tokens == 0
    # another conversation shares only the system prompt: it goes to the least recently used slot
    text_o, _ = _turn(c, other)
    other += [{"role": "assistant", "content": text_o}, {"role": "user", "content": _sentences(1)}]
    _, uo = _turn(c, other)
    assert uo.prompt_tokens_details.cached_tokens > 0
    conv += [{"role": "assistant", "content": text}, {"role": "user", "content": _sentences(2)}]
    st, raw = s.request("GET", "/slots")
    held = max(x["n_cached_tokens"] for x in json.loads(raw))
    text2, u2 = _turn(c, conv)
    assert 0 < u2.prompt_tokens_details.cached_tokens <= held
    assert u2.prompt_tokens_details.cached_tokens > u1.prompt_tokens
    slots = json.loads(s.request("GET", "/slots")[1])
    assert any(x["n_cached_tokens"] >= u2.prompt_tokens for x in slots), slots
    # opting out prefills everything and gives the same greedy text
    text3, u3 = _turn(c, conv, cache_prompt=False)
    assert u3.prompt_tokens_details.cached_tokens == 0 and text3 == text2
    st, raw = s.request("POST", "/v1/chat/completions", {"messages": conv, "max_tokens": 4, "cache_prompt": 1})
    assert st == 400 and b"cache_prompt" in raw


def test_server_slot_save_restore(server_factory, tmp_path):
    args = ("--parallel", "1", "--kv-policy", "triattention", "--calibration", str(SIDECAR), "--kv-budget", "64",
            "--kv-interval", "16", "--slot-save-path", str(tmp_path))
    a = server_factory(*args)
    ca = _client(a)
    conv = [{"role": "user", "content": _sentences(6)}]
    text, _ = _turn(ca, conv)
    st, raw = a.request("POST", "/slots/0?action=save", {"filename": "conv.state"})
    assert st == 200, raw
    assert json.loads(raw)["n_saved"] > 64
    conv += [{"role": "assistant", "content": text}, {"role": "user", "content": _sentences(2)}]
    want, uw = _turn(ca, conv)

    b = server_factory(*args)
    st, raw = b.request("POST", "/slots/0?action=restore", {"filename": "conv.state"})
    assert st == 200, raw
    slots = json.loads(b.request("GET", "/slots")[1])
    assert slots[0]["n_cached_tokens"] == json.loads(raw)["n_restored"] > 0
    got, ug = _turn(_client(b), conv)
    assert got == want
    assert ug.prompt_tokens_details.cached_tokens == uw.prompt_tokens_details.cached_tokens > 0

    data = (tmp_path / "conv.state").read_bytes()
    (tmp_path / "cut.state").write_bytes(data[:RNG.randrange(len(data))])
    (tmp_path / "flip.state").write_bytes(_flip(data))
    for name in ("cut.state", "flip.state"):
        st, raw = b.request("POST", "/slots/0?action=restore", {"filename": name})
        assert st == 400 and b"session_load" in raw, (name, st, raw)
    # the refused files left the restored slot as it was
    again, _ = _turn(_client(b), conv)
    assert again == want
    for bad in ("../conv.state", "/etc/passwd", "", ".hidden", "a/b"):
        st, raw = b.request("POST", "/slots/0?action=restore", {"filename": bad})
        assert st == 400 and b"filename" in raw, (bad, st, raw)
    st, _ = b.request("POST", "/slots/0?action=restore", {"filename": "missing.state"})
    assert st == 404
    st, _ = b.request("POST", "/slots/7?action=save", {"filename": "x"})
    assert st == 404
    st, _ = b.request("POST", "/slots/0?action=drop", {"filename": "x"})
    assert st == 400


def test_server_slot_save_needs_path(server_factory):
    s = server_factory("--parallel", "1")
    st, raw = s.request("POST", "/slots/0?action=save", {"filename": "x.state"})
    assert st == 501 and b"slot-save-path" in raw


def _fnv1a64(data: bytes) -> int:
    h = 0xcbf29ce484222325
    for b in data:
        h = ((h ^ b) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return h


@pytest.mark.parametrize("version", [1, 2])
def test_older_state_versions_load(default_model, tmp_path, version):
    """Files of format version 1 (no policy-state section) and 2 (no tier-2 section) still load: the same file
    rewritten as such gives the same continuation."""
    llm = _llama(default_model, "full")
    prompt = llm.tokenize(_sentences(3))
    llm.decode(prompt)
    path = tmp_path / "s.state"
    llm.save_state(path)
    raw = path.read_bytes()
    assert raw[:8] == b"TRIATTNS" and int.from_bytes(raw[8:12], "little") == 4
    # a full cache keeps no policy state (n_policy = 0) and no tier 2 (flag 0)
    assert raw[-16:-8] == b"\0" * 8
    body = raw[:8] + version.to_bytes(4, "little") + raw[12:-16 if version == 1 else -12]
    old = tmp_path / "old.state"
    old.write_bytes(body + _fnv1a64(body).to_bytes(8, "little"))
    other = _llama(default_model, "full")
    other.load_state(old)
    assert other.session_tokens() == llm.session_tokens()
    assert np.array_equal(other.last_logits(), llm.last_logits())
    for x in (llm, other):
        x.close()


def _state_tier2(raw: bytes):
    """Offsets of a state file's tier-2 rows: (row offset, head_dim, version) of every row, walking the layout of
    src/session_state.c."""
    version = int.from_bytes(raw[8:12], "little")
    hdr = np.frombuffer(raw[212:264], dtype="<i4")
    n_layer, n_head_kv, d, n_vocab, n_past, n_logits = hdr[5], hdr[6], hdr[7], hdr[8], hdr[9], hdr[12]
    lk, o = int(n_layer * n_head_kv), 280 + 4 * int(n_past)
    n_live = np.frombuffer(raw[o:o + 4 * lk], dtype="<i4")
    o += 4 * lk + int(n_live.sum()) * (4 + 4 * int(d)) + 4 * int(n_vocab) * int(n_logits)
    o += 4 + int.from_bytes(raw[o:o + 4], "little")            # the policy's state
    assert int.from_bytes(raw[o:o + 4], "little") == 1           # a tier 2
    o += 4 + 4 + 16
    nq, q_dim = np.frombuffer(raw[o:o + 8], dtype="<i4")
    o += 8 + int(n_layer) * int(nq) * (4 + 4 * int(q_dim))
    vb = (7 * int(d) + 7) // 8 if version >= 4 else int(d)
    rows = []
    for _ in range(lk):
        n_rows = int.from_bytes(raw[o + 8:o + 12], "little")
        o += 12
        rows += [o + j * (8 + int(d) + vb) for j in range(n_rows)]
        o += n_rows * (8 + int(d) + vb)
    assert o == len(raw) - 8
    return rows, int(d), version


def _unpack7(b: bytes, d: int) -> np.ndarray:
    bits = np.unpackbits(np.frombuffer(b, dtype=np.uint8), bitorder="little")[:7 * d].reshape(d, 7)
    c = (bits.astype(np.int32) << np.arange(7)).sum(axis=1)
    return np.where(c >= 64, c - 128, c)


def test_version3_tier2_loads(default_model, tmp_path):
    """A version-3 file kept V at 8 bits: it loads, its V rows become the 7-bit rows of today within the
    quantisation step, positions and K unchanged."""
    llm = _llama(default_model, "triattention", kv_recall=16)
    _chat(llm, [{"role": "user", "content": _sentences(8)}], max_tokens=8)
    path = tmp_path / "s.state"
    llm.save_state(path)
    raw = path.read_bytes()
    rows, d, version = _state_tier2(raw)
    assert version == 4 and len(rows) == llm.kv_stats()["t2_rows"] > 0
    # the same file as version 3: each V as its int8 codes (the 7-bit codes, |q| <= 63 <= 127) with the same scale
    vb, parts, last = (7 * d + 7) // 8, [raw[:8], (3).to_bytes(4, "little")], 12
    for o in rows:
        codes = _unpack7(raw[o + 8 + d:o + 8 + d + vb], d).astype(np.int8)
        parts += [raw[last:o + 8 + d], codes.tobytes()]
        last = o + 8 + d + vb
    body = b"".join(parts) + raw[last:-8]
    old = tmp_path / "v3.state"
    old.write_bytes(body + _fnv1a64(body).to_bytes(8, "little"))
    assert _state_tier2(old.read_bytes())[2] == 3

    other = _llama(default_model, "triattention", kv_recall=16)
    other.load_state(old)
    assert other.kv_stats()["t2_rows"] == len(rows) and other.session_tokens() == llm.session_tokens()
    again = tmp_path / "again.state"
    other.save_state(again)
    new = again.read_bytes()
    rows2, _, version2 = _state_tier2(new)
    assert version2 == 4 and len(rows2) == len(rows)
    worst = 0.0
    for o, o2 in zip(rows, rows2):
        assert raw[o:o + 6] == new[o2:o2 + 6] and raw[o + 8:o + 8 + d] == new[o2 + 8:o2 + 8 + d]   # position, K
        vs, vs2 = (np.frombuffer(x, dtype="<f2").astype(np.float64)[0] for x in (raw[o + 6:o + 8], new[o2 + 6:o2 + 8]))
        a = _unpack7(raw[o + 8 + d:o + 8 + d + vb], d) * vs
        b = _unpack7(new[o2 + 8 + d:o2 + 8 + d + vb], d) * vs2
        worst = max(worst, float(np.max(np.abs(a - b) - (0.5 * vs2 + np.abs(a) * 2 ** -10))))
    assert worst <= 1e-7, worst
    for x in (llm, other):
        x.close()
