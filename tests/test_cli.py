"""The `pytriattn` command: help, info, fetch, generate, chat (history, /reset, Ctrl-C), errors."""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

SEED = int(time.time_ns()) & 0xFFFFFFFF
rng = random.Random(SEED)


def run(*args, input=None, timeout=300, env=None):
    return subprocess.run([sys.executable, "-m", "pytriattn", *map(str, args)], input=input, capture_output=True,
                          text=True, timeout=timeout, env=env)


@pytest.mark.parametrize("sub", [None, "generate", "chat", "fetch", "info"])
def test_help_everywhere(sub):
    p = run(*([sub] if sub else []), "--help")
    assert p.returncode == 0 and "usage: pytriattn" in p.stdout
    if sub is None:
        for s in ("generate", "chat", "fetch", "info"):
            assert s in p.stdout
    if sub in ("generate", "chat"):
        assert "--kv-budget" in p.stdout and "--temp" in p.stdout and "--model" in p.stdout


def test_console_script_installed():
    exe = shutil.which("pytriattn")
    if exe is None:
        pytest.skip("pytriattn is not installed as a console script (source checkout)")
    p = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stdout.startswith("pytriattn ")


def test_info_text_and_json(default_model):
    p = run("info", default_model)
    assert p.returncode == 0, p.stderr
    for want in ("llama", "Q4_1", "Q8_0", "gpt2", "chatml", "TriAttention", "not calibrated", "49152"):
        assert want in p.stdout, (want, p.stdout)
    j = json.loads(run("info", "--json", default_model).stdout)
    assert j["architecture"] == "llama" and j["hparams"]["block_count"] == 30
    assert j["quant_types"]["Q4_1"]["tensors"] > 100 and j["file_bytes"] == default_model.stat().st_size
    assert j["tokenizer"]["n_tokens"] == 49152 and j["tokenizer"]["eos"]["text"] == "<|im_end|>"
    assert j["chat_template"]["present"] and j["chat_template"]["family"] == "chatml"
    assert j["triattention"] == {"present": False, "keys": {}}


def test_info_shows_triattention_keys(tmp_path):
    gguf = pytest.importorskip("gguf")
    path = tmp_path / "tiny.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    n_layer = rng.randint(1, 4)
    w.add_uint32("llama.block_count", n_layer)
    w.add_uint32("triattention.format_version", 1)
    w.add_array("triattention.q_center_re", [rng.random() for _ in range(n_layer * 32)])
    w.add_tensor("token_embd.weight", __import__("numpy").ones((4, 8), dtype="float32"))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    j = json.loads(run("info", "--json", path).stdout)
    assert j["triattention"]["present"] and "triattention.q_center_re" in j["triattention"]["keys"]
    assert j["hparams"]["block_count"] == n_layer and j["quant_types"]["F32"]["tensors"] == 1
    assert "calibrated: 2 triattention.* keys" in run("info", path).stdout


def test_info_errors(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(rng.randbytes(rng.randint(10, 5000)))
    p = run("info", bad)
    assert p.returncode == 1 and "bad.gguf" in p.stderr and "GGUF" in p.stderr and "Traceback" not in p.stderr
    p = run("info", tmp_path / "missing.gguf")
    assert p.returncode == 1 and "missing.gguf" in p.stderr and "Traceback" not in p.stderr


def test_fetch_uses_the_cache(default_model):
    env = {**os.environ, "PYTRIATTN_CACHE": str(default_model.parent)}
    p = run("fetch", "--json", env=env)
    assert p.returncode == 0, p.stderr
    j = json.loads(p.stdout)
    assert Path(j["path"]) == default_model and j["size"] == default_model.stat().st_size


def test_fetch_offline_error(tmp_path):
    env = {**os.environ, "PYTRIATTN_CACHE": str(tmp_path), "PIP_CONFIG_FILE": os.devnull, "PIP_NO_INDEX": "1",
           "PIP_FIND_LINKS": str(tmp_path / "nowhere")}
    p = run("fetch", "-q", env=env)
    assert p.returncode == 1 and "-m model.gguf" in p.stderr and "Traceback" not in p.stderr, p.stderr


def test_generate_answers_the_readme_question(default_model):
    p = run("generate", "-m", default_model, "-n", "48", "What is the largest ocean on Earth?")
    assert p.returncode == 0, p.stderr
    assert "Pacific" in p.stdout, p.stdout


def test_generate_stdin_json_and_raw(default_model):
    prompt = rng.choice(["The capital of France is", "Water boils at", "The largest planet is"])
    n = rng.randint(4, 16)
    a = run("generate", "-m", default_model, "--raw", "-n", n, input=prompt + "\n")
    b = run("generate", "-m", default_model, "--raw", "-n", n, prompt)
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    assert a.stdout == b.stdout and a.stdout.strip()
    j = json.loads(run("generate", "-m", default_model, "--raw", "-n", n, "--json", prompt).stdout)
    assert j["object"] == "text_completion" and j["choices"][0]["text"] + "\n" == a.stdout
    assert 0 < j["usage"]["completion_tokens"] <= n
    j = json.loads(run("generate", "-m", default_model, "-n", n, "--json", prompt).stdout)
    assert j["object"] == "chat.completion"
    v = run("generate", "-m", default_model, "-n", n, "-v", "--seed", rng.randrange(99), "--temp", "0.8", prompt)
    assert v.returncode == 0 and "tok/s" in v.stderr


def test_generate_errors(tmp_path, default_model):
    p = run("generate", "-m", tmp_path / "nope.gguf", "hi")
    assert p.returncode == 1 and "nope.gguf" in p.stderr and "Traceback" not in p.stderr
    p = run("generate", "-m", default_model, "--kv-budget", "-4", "hi")
    assert p.returncode == 1 and "kv_budget" in p.stderr and "Traceback" not in p.stderr


def test_chat_keeps_history_and_resets(default_model):
    script = "My name is Zorblax.\nWhat is my name?\n/reset\nWhat is my name?\n"
    p = run("chat", "-m", default_model, "--temp", "0", "-n", "40", input=script)
    assert p.returncode == 0, p.stderr
    replies = [r for r in p.stdout.split("\n") if r.strip()]
    assert len(replies) >= 3, p.stdout
    assert "conversation reset" in p.stderr
    assert "Zorblax" in p.stdout.split("\n", 1)[1] or "Zorblax" in p.stdout, p.stdout


def _sigint_default() -> None:
    """A job started in the background without job control inherits SIGINT ignored (and Python then
    never raises KeyboardInterrupt); a user at a terminal has the default."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_chat_ctrl_c_stops_a_reply_not_the_session(default_model):
    proc = subprocess.Popen([sys.executable, "-m", "pytriattn", "chat", "-m", str(default_model), "--temp", "0",
                             "-n", "300", "--ctx", "2048"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, bufsize=1, preexec_fn=_sigint_default)
    try:
        proc.stdin.write("Write a very long story about a dragon, with many chapters.\n")
        proc.stdin.flush()
        first = proc.stdout.read(1)  # the reply has started streaming
        assert first, proc.stderr.read()
        time.sleep(rng.uniform(0.1, 0.5))
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(input="Say hello.\n", timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "reply stopped" in err and "Traceback" not in err, err
    lines = (first + out).rstrip("\n").split("\n")
    assert len(lines) >= 2 and lines[-1].strip(), f"no reply after the interrupted one: {first + out!r}"


def test_info_shows_sliding_window_layers(tmp_path):
    from tinymodels import write_tiny_model

    path = write_tiny_model(tmp_path / "g.gguf", "gemma3", n_layer=13, sliding_window=7, wtype="F32")
    out = run("info", path).stdout
    assert "sliding window of 7 tokens on 11 of 13 layers (local RoPE base 10000); global layers 5, 11" in out, out
    assert "chat template  none in the file; the gemma format is used" in out, out
    j = json.loads(run("info", "--json", path).stdout)["sliding_window"]
    assert j["global_layers"] == [5, 11] and j["local_layers"] == [0, 1, 2, 3, 4, 6, 7, 8, 9, 10, 12]
    assert json.loads(run("info", "--json", write_tiny_model(tmp_path / "l.gguf", "llama")).stdout)[
        "sliding_window"] is None
