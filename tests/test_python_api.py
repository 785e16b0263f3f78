"""pytriattn.Llama on the real default model: determinism, streaming, chat template, tokens, KV stats, errors."""
from __future__ import annotations

import gc
import os
import random
import string
import subprocess
import sys
import time

import numpy as np
import pytest

from pytriattn import Llama, TriattnError
from pytriattn.llama import default_calibration
from pytriattn._errors import ERR_FORMAT, ERR_INVALID_ARG, ERR_IO
from pytriattn.policy_check import log_softmax

SEED = int(time.time_ns()) & 0xFFFFFFFF
rng = random.Random(SEED)
PROMPTS = ["The capital of France is", "Once upon a time, in a small village,", "The three primary colours are",
           "def fibonacci(n):", "Water boils at", "My favourite animal is the"]


@pytest.fixture(scope="module")
def llm(default_model):
    with Llama(default_model, n_ctx=2048, seed=rng.randrange(2**32)) as m:
        yield m


def _prompt() -> str:
    return rng.choice(PROMPTS)


def _random_text(n: int) -> str:
    alphabet = string.ascii_letters + string.digits + string.punctuation + " \n\t" + "éüßçñ中文日本語🙂€"
    words = ["the", " model", " cache", "Hello", " world", "  ", "\n\n", "1234", " naïve", " über"]
    parts = []
    while sum(map(len, parts)) < n:
        parts.append(rng.choice(words) if rng.random() < 0.4 else "".join(rng.choices(alphabet, k=rng.randint(1, 6))))
    return "".join(parts)


def test_greedy_is_deterministic(llm, default_model):
    p = _prompt()
    n = rng.randint(12, 40)
    a = llm.generate(p, max_tokens=n, temperature=0)
    b = llm.generate(p, max_tokens=n, temperature=0)
    assert a == b and a.strip(), f"seed {SEED}: {a!r} != {b!r}"
    with Llama(default_model, n_ctx=512, n_threads=1) as other:  # another session, other thread count
        assert other.generate(p, max_tokens=n, temperature=0) == a, f"seed {SEED}"


def test_same_seed_same_text(llm):
    p, seed = _prompt(), rng.randrange(2**31)
    kw = dict(max_tokens=32, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)
    a = llm.generate(p, seed=seed, **kw)
    b = llm.generate(p, seed=seed, **kw)
    assert a == b, f"seed {SEED}/{seed}"
    others = {llm.generate(p, seed=seed + k, **kw) for k in range(1, 4)}
    assert others != {a}, "different seeds always gave the same text: the seed is ignored"


def test_streamed_pieces_join_to_the_text(llm):
    p, seed = _prompt(), rng.randrange(2**31)
    for temp in (0.0, 0.9):
        full = llm.generate(p, max_tokens=48, temperature=temp, seed=seed, ignore_eos=True)
        pieces = list(llm.generate(p, max_tokens=48, temperature=temp, seed=seed, ignore_eos=True, stream=True))
        assert len(pieces) > 1 and all(isinstance(x, str) and x for x in pieces)
        assert "".join(pieces) == full, f"seed {SEED}"


def test_stop_strings_are_not_returned(llm):
    p = _prompt()
    text = llm.generate(p, max_tokens=40, temperature=0)
    cut = rng.randint(3, max(3, len(text) - 3))
    stop = text[cut:cut + 3]
    if not stop.strip():
        stop = text.strip()[-3:]
    out = llm.generate(p, max_tokens=40, temperature=0, stop=[stop])
    assert stop not in out and text.startswith(out), (stop, out, text)
    assert llm.last_result["stop_reason"] == "stop_string"


def test_completion_dict_and_chunks(llm):
    p, seed = _prompt(), rng.randrange(2**31)
    n = rng.randint(5, 20)
    out = llm.create_completion(p, max_tokens=n, temperature=0.7, seed=seed)
    assert out["object"] == "text_completion" and out["id"].startswith("cmpl-")
    ch = out["choices"][0]
    assert ch["finish_reason"] in ("stop", "length") and isinstance(ch["text"], str)
    u = out["usage"]
    assert u["prompt_tokens"] == len(llm.tokenize(p)) and 0 < u["completion_tokens"] <= n
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
    if ch["finish_reason"] == "length":
        assert u["completion_tokens"] == n
    chunks = list(llm.create_completion(p, max_tokens=n, temperature=0.7, seed=seed, stream=True))
    assert "".join(c["choices"][0]["text"] for c in chunks) == ch["text"]
    assert chunks[-1]["choices"][0]["finish_reason"] == ch["finish_reason"]
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])


def test_chat_completion_uses_the_models_template(llm):
    jinja2 = pytest.importorskip("jinja2")
    msgs = [{"role": "user", "content": rng.choice(["What is the capital of Japan?",
                                                     "What is the capital city of Japan?"])}]
    if rng.random() < 0.5:
        msgs.insert(0, {"role": "system", "content": "You are a concise geography assistant."})
    tmpl = llm.metadata["tokenizer.chat_template"]
    want = jinja2.Environment().from_string(tmpl).render(messages=msgs, add_generation_prompt=True)
    assert llm.apply_chat_template(msgs) == want
    out = llm.create_chat_completion(msgs, max_tokens=48, temperature=0)
    assert out["object"] == "chat.completion"
    msg = out["choices"][0]["message"]
    assert msg["role"] == "assistant" and "Tokyo" in msg["content"], msg
    assert "<|im_end|>" not in msg["content"] and "<|im_start|>" not in msg["content"]
    assert out["usage"]["prompt_tokens"] == len(llm.tokenize(want, special=True))
    chunks = list(llm.create_chat_completion(msgs, max_tokens=48, temperature=0, stream=True))
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == msg["content"]
    assert chunks[-1]["object"] == "chat.completion.chunk" and chunks[-1]["choices"][0]["finish_reason"]


def test_tokenize_detokenize_round_trip(llm):
    for _ in range(20):
        text = _random_text(rng.randint(1, 300))
        ids = llm.tokenize(text, add_bos=False)
        assert ids and all(0 <= t < llm.n_vocab() for t in ids)
        assert llm.detokenize(ids) == text.encode("utf-8"), f"seed {SEED}: {text!r}"
    assert llm.tokenize(b"Hello", add_bos=False) == llm.tokenize("Hello", add_bos=False)
    im = llm.tokenize("<|im_start|>", add_bos=False, special=True)
    assert len(im) == 1 and llm.token_to_piece(im[0], special=True) == b"<|im_start|>"
    assert len(llm.tokenize("<|im_start|>", add_bos=False, special=False)) > 1
    with pytest.raises(TriattnError):
        llm.detokenize([llm.n_vocab() + rng.randrange(100)])


def test_eval_logits_and_kv_stats(llm):
    llm.reset()
    ids = llm.tokenize(_random_text(rng.randint(40, 120)), add_bos=False)
    logits = llm.eval(ids)
    assert logits.shape == (len(ids), llm.n_vocab()) and logits.dtype == np.float32
    assert np.isfinite(logits).all() and logits.std() > 0.1
    st = llm.kv_stats()
    assert st["n_past"] == len(ids) == llm.n_past()
    assert st["policy"] == "full" and st["capacity"] == llm.n_ctx()
    assert st["live_min"] == st["live_max"] == len(ids)
    assert st["n_compressions"] == 0 and st["n_evicted"] == 0
    assert 0 < st["kv_bytes_live"] < st["kv_bytes"]
    ratio = st["kv_bytes_live"] / st["kv_bytes"]
    assert abs(ratio - len(ids) / st["capacity"]) < 0.01, st
    # Incremental eval continues the same sequence: the last row equals a one-shot eval's.
    extra = llm.tokenize(" and then", add_bos=False)
    more = llm.eval(extra)
    llm.reset()
    assert llm.kv_stats()["n_past"] == 0 and llm.kv_stats()["live_max"] == 0
    whole = llm.eval(ids + extra)
    assert np.array_equal(more[-1], whole[-1]), np.abs(more[-1] - whole[-1]).max()
    # Prefill in one batch equals feeding the same tokens in random-sized pieces (down to one token).
    llm.reset()
    pieces, i = [], 0
    while i < len(ids):
        k = rng.choice([1, 1, 2, 3, rng.randint(1, 40)])
        pieces.append(llm.eval(ids[i:i + k]))
        i += k
    # Batched kernels sum in the same order as one-token kernels and attention uses fixed slot chunks,
    # so how the prompt is split into calls does not change a single bit.
    piecewise = np.concatenate(pieces)
    assert np.array_equal(piecewise, logits), (
        f"seed {SEED}: batched prefill differs from piecewise decoding by {np.abs(piecewise - logits).max()}")
    # Greedy generation's first token is the argmax of the prompt's last logits.
    p = _prompt()
    pids = llm.tokenize(p)
    llm.reset()
    first = int(np.argmax(llm.eval(pids)[-1]))
    text = llm.generate(p, max_tokens=1, temperature=0)
    assert text.encode() == llm.detokenize([first]) or llm.token_is_eog(first)


def test_kv_stats_after_generation(llm):
    p = _prompt()
    n = rng.randint(8, 30)
    llm.generate(p, max_tokens=n, temperature=0, ignore_eos=True)
    r = llm.last_result
    st = llm.kv_stats()
    assert r["completion_tokens"] == n and r["prompt_tokens"] == len(llm.tokenize(p))
    # The last sampled token may or may not have been decoded yet.
    assert st["n_past"] in (r["prompt_tokens"] + n - 1, r["prompt_tokens"] + n), (st, r)
    assert st["live_max"] == st["n_past"]


def test_interrupted_stream_leaves_session_usable(llm):
    p = _prompt()  # some prompts end in two tokens: EOS is ignored so the stream has pieces to interrupt
    want = llm.generate(p, max_tokens=24, temperature=0, ignore_eos=True)
    it = llm.generate(p, max_tokens=200, temperature=0, ignore_eos=True, stream=True)
    for _ in range(rng.randint(1, 3)):
        next(it)
    with pytest.raises(KeyboardInterrupt):
        it.throw(KeyboardInterrupt)  # what Ctrl-C does between two pieces
    assert llm.generate(p, max_tokens=24, temperature=0, ignore_eos=True) == want
    stale = llm.generate(p, max_tokens=50, temperature=0, ignore_eos=True, stream=True)
    next(stale)
    llm.generate(p, max_tokens=4, temperature=0)
    with pytest.raises(TriattnError, match="interrupted"):
        list(stale)


def test_metadata_and_info(llm):
    md = llm.metadata
    assert md["general.architecture"] == "llama" and md["llama.block_count"] == "30"
    info = llm.model_info
    assert info["arch"] == "llama" and info["n_layer"] == 30 and info["n_head_kv"] == 3 and info["head_dim"] == 64
    assert info["n_vocab"] == llm.n_vocab() == 49152 and not info["has_calibration"]
    assert Llama.n_ctx(llm) == 2048


def test_default_context_is_the_models(default_model):
    with Llama(default_model) as m:
        assert m.n_ctx() == 8192
        assert m.n_threads() == min(os.cpu_count(), 64)
    n = random.randint(1, 5)
    with Llama(default_model, n_ctx=256, n_threads=n) as m:
        assert m.n_threads() == n


# ---- errors ---------------------------------------------------------------------------------------

def test_missing_file(tmp_path):
    path = tmp_path / f"missing-{rng.randrange(10**6)}.gguf"
    with pytest.raises(TriattnError) as e:
        Llama(path)
    assert e.value.code == ERR_IO and path.name in e.value.message


def test_not_a_gguf_file(tmp_path):
    path = tmp_path / "random.gguf"
    path.write_bytes(rng.randbytes(rng.randint(1, 100_000)))
    with pytest.raises(TriattnError) as e:
        Llama(path)
    assert e.value.code == ERR_FORMAT and "random.gguf" in e.value.message


def test_truncated_gguf(tmp_path, default_model):
    data = default_model.read_bytes()
    for cut in (rng.randint(8, 4096), rng.randint(4096, 2_000_000), rng.randint(2_000_000, len(data) - 1)):
        path = tmp_path / f"truncated-{cut}.gguf"
        path.write_bytes(data[:cut])
        with pytest.raises(TriattnError) as e:
            Llama(path)
        assert e.value.code in (ERR_FORMAT, ERR_IO), e.value
        assert path.name in e.value.message, e.value.message


@pytest.mark.parametrize("kwargs, name", [
    (dict(kv_budget=-1), "kv_budget"), (dict(kv_budget=0), "kv_budget"), (dict(kv_interval=-5), "kv_interval"),
    (dict(kv_sink=-2), "kv_sink"), (dict(n_ctx=-1), "n_ctx"), (dict(n_batch=0), "n_batch"),
    (dict(kv_window=-7), "kv_window"), (dict(kv_budget="big"), "kv_budget"),
])
def test_bad_parameters(default_model, kwargs, name):
    with pytest.raises(TriattnError) as e:
        Llama(default_model, **kwargs)
    assert e.value.code == ERR_INVALID_ARG and name in e.value.message


def test_bad_policy_name(default_model):
    with pytest.raises(TriattnError) as e:
        Llama(default_model, kv_policy=f"nonsense{rng.randrange(99)}")
    assert "nonsense" in e.value.message or "kv_policy" in e.value.message


def test_context_too_large_for_memory(default_model):
    with pytest.raises(TriattnError) as e:
        Llama(default_model, n_ctx=2**31 - 1 - rng.randrange(1000), kv_policy="full")
    assert "n_ctx" in e.value.message or "memory" in e.value.message.lower(), e.value.message


def test_llama_cpp_python_switches(default_model):
    """Llama(path, embedding=True, logits_all=True), as llama-cpp-python code writes it, embeds and evaluates."""
    with Llama(default_model, n_ctx=64, embedding=True, logits_all=True) as m:
        assert len(m.embed("hello")) == m.model_info["n_embd"]
        assert m.eval(m.tokenize("hello there")).shape[0] == len(m.tokenize("hello there"))


def test_bad_call_arguments(llm):
    with pytest.raises(TriattnError):
        llm.generate("x", max_tokens=4, temperature="hot")
    with pytest.raises(TriattnError):
        llm.eval([-1 - rng.randrange(10)])
    with pytest.raises(TriattnError):
        llm.create_chat_completion([])
    with pytest.raises(TriattnError):
        llm.create_chat_completion(["not a dict"])
    # The session still works afterwards.
    assert llm.generate(_prompt(), max_tokens=3, temperature=0)


BIAS_WORDS = [" banana", " river", " purple", " engine", " castle", " seven", " window", " garden"]


def test_logit_bias(llm):
    """logit_bias shifts tokens' logits before sampling: banning the greedy choice gives the runner-up, a +100
    bias makes a token the greedy choice at every step (completions and chat, OpenAI's string keys), sampled
    draws never return a banned token, the next call without a bias is unaffected, and bad biases raise."""
    prompt = _prompt()
    llm.reset()
    row = llm.eval(llm.tokenize(prompt))[-1]
    order = np.argsort(-row, kind="stable")
    first, second, third = (int(t) for t in order[:3])
    piece = lambda *ids: llm.detokenize(list(ids)).decode("utf-8", "replace")  # noqa: E731
    plain = llm.generate(prompt, max_tokens=1, temperature=0)
    assert plain == piece(first)
    assert llm.generate(prompt, max_tokens=1, temperature=0, logit_bias={first: float("-inf")}) == piece(second)
    out = llm.create_completion(prompt, max_tokens=1, temperature=0, logit_bias={str(first): -100})
    assert out["choices"][0]["text"] == piece(second)
    assert llm.generate(prompt, max_tokens=1, temperature=0) == plain   # the bias was this call's only
    seeds = [rng.randrange(2**31) for _ in range(12)]
    drawn = {llm.generate(prompt, max_tokens=1, temperature=1.5, top_k=2, top_p=1.0, min_p=0.0, seed=sd,
                          logit_bias={first: float("-inf")}) for sd in seeds}
    assert drawn <= {piece(second), piece(third)}, (drawn, piece(second), piece(third))

    boost = llm.tokenize(rng.choice(BIAS_WORDS), add_bos=False)[0]
    assert llm.generate(prompt, max_tokens=3, temperature=0, logit_bias={boost: 100.0}) == piece(boost, boost, boost)
    msgs = [{"role": "user", "content": prompt}]
    chat = llm.create_chat_completion(msgs, max_tokens=3, temperature=0, logit_bias={str(boost): 100})
    assert chat["choices"][0]["message"]["content"] == piece(boost, boost, boost).strip() or \
        chat["choices"][0]["message"]["content"] == piece(boost, boost, boost)

    for bad, what in [({llm.n_vocab(): 1.0}, "out of range"), ({-1: 1.0}, "out of range"), ({"x1": 1}, "token id"),
                      ({1: float("nan")}, "logit bias"), ({1: float("inf")}, "logit bias"), ({1: "big"}, "number"),
                      ([1, 2], "dict")]:
        with pytest.raises(TriattnError) as e:
            llm.generate(prompt, max_tokens=2, temperature=0, logit_bias=bad)
        assert e.value.code == ERR_INVALID_ARG and what in e.value.message, (bad, e.value.message)
    assert llm.generate(prompt, max_tokens=1, temperature=0) == plain


def test_logprobs(llm):
    """logprobs in OpenAI's shapes, computed by the model (the float64 log-softmax of eval's logits): completions
    {"tokens", "token_logprobs", "top_logprobs", "text_offset"}, chat {"content": [...]}, the stream's chunks
    carrying the same entries, the model's own values under a logit_bias, and bad values refused."""
    prompt = _prompt()
    k = rng.randint(1, 5)
    n = rng.randint(3, 8)
    out = llm(prompt, max_tokens=n, temperature=0, logprobs=k)   # __call__ is create_completion
    ch = out["choices"][0]
    lp = ch["logprobs"]
    assert set(lp) == {"tokens", "token_logprobs", "top_logprobs", "text_offset"}
    n_gen = out["usage"]["completion_tokens"]   # n, or fewer where the model ends the text itself
    assert len(lp["tokens"]) == n_gen and (n_gen == n or ch["finish_reason"] == "stop") and n_gen > 0
    if not any("\ufffd" in t for t in lp["tokens"]):   # no character split across tokens
        assert "".join(lp["tokens"]) == ch["text"]
        assert lp["text_offset"] == [len("".join(lp["tokens"][:i])) for i in range(n_gen)]
    for t, v, top in zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"]):
        assert len(top) <= k and v <= 0 and top[t] == v == max(top.values())   # greedy: the top alternative
    llm.reset()
    ref = log_softmax(llm.eval(llm.tokenize(prompt))[-1:])[0]
    first = int(ref.argmax())
    assert lp["tokens"][0] == llm.detokenize([first]).decode()
    assert lp["token_logprobs"][0] == pytest.approx(ref[first], abs=2e-4)
    alts = sorted(ref, reverse=True)[:k]
    assert sorted(lp["top_logprobs"][0].values(), reverse=True) == pytest.approx(alts[:len(lp["top_logprobs"][0])],
                                                                               abs=2e-4)
    # the stream's chunks carry the same entries, each with the text it released
    chunks = list(llm.create_completion(prompt, max_tokens=n, temperature=0, logprobs=k, stream=True))
    streamed = [c["choices"][0]["logprobs"] for c in chunks if c["choices"][0]["logprobs"]]
    assert sum((c["tokens"] for c in streamed), []) == lp["tokens"]
    assert sum((c["token_logprobs"] for c in streamed), []) == lp["token_logprobs"]
    assert sum((c["text_offset"] for c in streamed), []) == lp["text_offset"]
    # echo: offsets count from the prompt's end
    echoed = llm(prompt, max_tokens=2, temperature=0, logprobs=0, echo=True)["choices"][0]
    assert echoed["logprobs"]["text_offset"][0] == len(prompt) and echoed["logprobs"]["top_logprobs"][0] == {}
    # chat
    msgs = [{"role": "user", "content": prompt}]
    r = llm.create_chat_completion(msgs, max_tokens=n, temperature=0, logprobs=True, top_logprobs=k)
    content = r["choices"][0]["logprobs"]["content"]
    assert len(content) == r["usage"]["completion_tokens"]
    for c in content:
        assert bytes(c["bytes"]).decode("utf-8", "replace") == c["token"] and len(c["top_logprobs"]) == k
        assert c["top_logprobs"][0]["logprob"] == c["logprob"] and c["top_logprobs"][0]["token"] == c["token"]
        tops = [t["logprob"] for t in c["top_logprobs"]]
        assert tops == sorted(tops, reverse=True)
    plain = llm.create_chat_completion(msgs, max_tokens=2, temperature=0, logprobs=True)["choices"][0]
    assert all(c["top_logprobs"] == [] for c in plain["logprobs"]["content"])
    # a reply that ends itself: one entry per generated token, the end-of-generation token not among them
    short = llm.create_chat_completion([{"role": "user", "content": "Say hi."}], max_tokens=200, temperature=0,
                                       logprobs=True)
    assert short["choices"][0]["finish_reason"] == "stop"
    assert len(short["choices"][0]["logprobs"]["content"]) == short["usage"]["completion_tokens"]
    assert llm.create_chat_completion(msgs, max_tokens=2, temperature=0)["choices"][0]["logprobs"] is None
    assert llm(prompt, max_tokens=2, temperature=0)["choices"][0]["logprobs"] is None
    # a logit_bias choice keeps the model's logprob, below its favourite's
    boost = llm.tokenize(rng.choice(BIAS_WORDS), add_bos=False)[0]
    b = llm(prompt, max_tokens=1, temperature=0, logprobs=1, logit_bias={boost: 100})["choices"][0]["logprobs"]
    assert b["tokens"][0] == llm.detokenize([boost]).decode() and b["token_logprobs"][0] == pytest.approx(ref[boost],
                                                                                                           abs=2e-4)
    for call, what in [(lambda: llm(prompt, logprobs=21), "logprobs"), (lambda: llm(prompt, logprobs=-1), "logprobs"),
                       (lambda: llm.create_chat_completion(msgs, top_logprobs=2), "top_logprobs needs"),
                       (lambda: llm.create_chat_completion(msgs, logprobs=True, top_logprobs=99), "top_logprobs")]:
        with pytest.raises(TriattnError) as e:
            call()
        assert what in e.value.message, e.value.message


def test_prompt_longer_than_context(default_model):
    with Llama(default_model, n_ctx=64) as m:
        with pytest.raises(TriattnError) as e:
            m.generate(" ".join(["word"] * rng.randint(100, 300)), max_tokens=4)
        assert e.value.code in (6, 4)
        assert m.generate(_prompt(), max_tokens=3, temperature=0)  # usable afterwards


def test_generate_batch_equals_one_at_a_time(llm, default_model):
    """generate_batch: prompt k gets generate(prompt, seed=seed + k)'s text bit for bit, however many run at once
    (more prompts than sessions: finished sessions take the next), with stop strings, greedy and sampled, full
    attention and TriAttention rounds; the Llama's own session is left as it was."""
    prompts = [rng.choice(PROMPTS) + " " + _random_text(rng.randint(0, 40)) for _ in range(rng.randint(5, 9))]
    seed, n_par = rng.randrange(2**31), rng.randint(2, 4)
    kw = dict(max_tokens=rng.randint(8, 24), temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)
    llm.generate(PROMPTS[0], max_tokens=3, temperature=0)
    held = llm.session_tokens()
    got = llm.generate_batch(prompts, seed=seed, n_parallel=n_par, **kw)
    assert llm.session_tokens() == held
    batch_results = llm.last_batch_results
    want, lone = [], []
    for k, p in enumerate(prompts):
        want.append(llm.generate(p, seed=seed + k, **kw))
        lone.append({key: llm.last_result[key] for key in ("prompt_tokens", "completion_tokens", "stop_reason",
                                                            "finish_reason")})
    assert got == want, f"seed {SEED}/{seed}"
    assert len(set(got)) > 1
    assert [{key: r[key] for key in lone[0]} for r in batch_results] == lone
    stop = rng.choice([".", ",", " the", "\n"])
    greedy = llm.generate_batch(prompts, max_tokens=30, temperature=0, stop=stop)
    assert greedy == [llm.generate(p, max_tokens=30, temperature=0, stop=stop) for p in prompts]
    assert not any(stop in t for t in greedy)
    # a start every prompt shares is prefilled once and copied: the same texts, its tokens cached everywhere
    start = _random_text(rng.randint(300, 600))
    n_start = len(llm.tokenize(start))
    shared = [start + p for p in prompts]
    got = llm.generate_batch(shared, seed=seed, n_parallel=n_par, **kw)
    assert got == [llm.generate(p, seed=seed + k, **kw) for k, p in enumerate(shared)], f"seed {SEED}/{seed}"
    assert all(r["cached_tokens"] >= n_start - 8 for r in llm.last_batch_results), llm.last_batch_results
    # TriAttention with a small budget: every session runs its own compression rounds inside the shared steps,
    # and the shared start itself is compressed before the copies
    with Llama(default_model, n_ctx=1024, kv_policy="triattention", kv_budget=64, kv_interval=16,
               calibration=default_calibration()) as tri:
        # (more prompts than sessions: a compressed session starts its next prompt from a kept copy of the start)
        for long, n in (([p + " " + _random_text(rng.randint(150, 300)) for p in prompts[:3]], None), (shared, 2)):
            got = tri.generate_batch(long, seed=seed, max_tokens=24, temperature=0.7, n_parallel=n)
            assert got == [tri.generate(p, seed=seed + k, max_tokens=24, temperature=0.7) for k, p in enumerate(long)]
            assert all(r["prompt_tokens"] > 80 for r in tri.last_batch_results)
        assert all(r["cached_tokens"] >= n_start - 8 for r in tri.last_batch_results), tri.last_batch_results
    assert llm.generate_batch([]) == []


def test_generate_batch_bad_arguments(llm):
    with pytest.raises(TriattnError, match="list of strings"):
        llm.generate_batch("one prompt")
    with pytest.raises(TriattnError, match=r"prompts\[1\]"):
        llm.generate_batch(["a", 2])
    with pytest.raises(TriattnError, match="n_parallel"):
        llm.generate_batch(["a"], n_parallel=0)
    with pytest.raises(TriattnError, match=r"prompts\[1\]"):   # longer than the context
        llm.generate_batch(["a", " ".join(["word"] * 3000)], max_tokens=2)
    assert llm.generate_batch(["a", "b"], max_tokens=2, temperature=0) == [
        llm.generate(p, max_tokens=2, temperature=0) for p in ("a", "b")]


def test_close_twice_and_use_after_close(default_model):
    m = Llama(default_model, n_ctx=256)
    m.close()
    m.close()
    with pytest.raises(TriattnError, match="closed"):
        m.generate("x")
    with pytest.raises(TriattnError, match="closed"):
        m.tokenize("x")
    with Llama(default_model, n_ctx=256) as m2:
        pass
    m2.close()
    # Dropping an open Llama frees it through its finaliser.
    m3 = Llama(default_model, n_ctx=256)
    del m3
    gc.collect()


def test_errors_never_crash_the_interpreter(tmp_path, default_model):
    """The error paths in a child process: it must finish normally (no signal, no abort)."""
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + rng.randbytes(200))
    code = f"""
import pytriattn
for path, kw in [({str(bad)!r}, {{}}), ({str(default_model)!r}, dict(kv_budget=-3)),
                 ({str(default_model)!r}, dict(n_ctx=2**31 - 1)), ({str(tmp_path / 'none.gguf')!r}, {{}})]:
    try:
        pytriattn.Llama(path, **kw)
    except pytriattn.TriattnError as e:
        print("ok", e.code)
m = pytriattn.Llama({str(default_model)!r}, n_ctx=128)
m.close(); m.close()
print("done")
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.count("ok") == 4 and p.stdout.strip().endswith("done"), p.stdout
