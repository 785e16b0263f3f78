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


@pytest.mark.parametrize("sub", [None, "generate", "chat", "embed", "fetch", "info"])
def test_help_everywhere(sub):
    p = run(*([sub] if sub else []), "--help")
    assert p.returncode == 0 and "usage: pytriattn" in p.stdout
    if sub is None:
        for s in ("generate", "chat", "embed", "fetch", "info"):
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


def test_generate_file_of_prompts(tmp_path, default_model):
    """generate --file: every non-empty line is a prompt, completed together; one JSON line per prompt, in order,
    equal to generate's own answer for that prompt (greedy; with --seed S and a temperature, prompt k samples as
    generate --seed S+k does)."""
    prompts = rng.sample(["The capital of France is", "Water boils at", "The largest planet is", "Name a colour.",
                          "What is 2+2?", "Say hello in French."], rng.randint(3, 5))
    f = tmp_path / "prompts.txt"
    f.write_text("\n".join(prompts[:2]) + "\n\n" + "\n".join(prompts[2:]) + "\n", encoding="utf-8")
    n = rng.randint(4, 12)
    p = run("generate", "-m", default_model, "-n", n, "-f", f, "--parallel", rng.randint(1, 3))
    assert p.returncode == 0, p.stderr
    rows = [json.loads(line) for line in p.stdout.splitlines()]
    assert [r["index"] for r in rows] == list(range(len(prompts))) and [r["prompt"] for r in rows] == prompts
    assert f"{len(prompts)}/{len(prompts)} prompts done" in p.stderr
    k = rng.randrange(len(prompts))
    assert run("generate", "-m", default_model, "-n", n, prompts[k]).stdout == rows[k]["text"] + "\n"
    assert all(0 < r["completion_tokens"] <= n and r["finish_reason"] in ("stop", "length") for r in rows)
    seed = rng.randrange(1000)
    q = run("generate", "-m", default_model, "--raw", "-n", n, "--temp", "1.0", "--seed", seed, "-f", "-", "-q",
            input="\n".join(prompts) + "\n")
    assert q.returncode == 0 and q.stderr == "", q.stderr
    k = rng.randrange(len(prompts))
    lone = run("generate", "-m", default_model, "--raw", "-n", n, "--temp", "1.0", "--seed", seed + k, prompts[k])
    assert json.loads(q.stdout.splitlines()[k])["text"] + "\n" == lone.stdout
    p = run("generate", "-m", default_model, "-f", f, "a prompt too")
    assert p.returncode == 2 and "not both" in p.stderr
    p = run("generate", "-m", default_model, "-f", tmp_path / "missing.txt")
    assert p.returncode == 2 and "missing.txt" in p.stderr and "Traceback" not in p.stderr
    (tmp_path / "empty.txt").write_text("\n\n")
    p = run("generate", "-m", default_model, "-f", tmp_path / "empty.txt")
    assert p.returncode == 2 and "no prompts" in p.stderr


def test_generate_errors(tmp_path, default_model):
    p = run("generate", "-m", tmp_path / "nope.gguf", "hi")
    assert p.returncode == 1 and "nope.gguf" in p.stderr and "Traceback" not in p.stderr
    p = run("generate", "-m", default_model, "--kv-budget", "-4", "hi")
    assert p.returncode == 1 and "kv_budget" in p.stderr and "Traceback" not in p.stderr


def test_generate_logit_bias(default_model):
    """--logit-bias ID=BIAS (repeatable; a token given twice gets both): +100 makes the token every greedy
    choice; a malformed pair is a usage error."""
    from pytriattn import Llama
    with Llama(str(default_model), n_ctx=64) as llm:
        boost = llm.tokenize(rng.choice([" banana", " river", " purple", " castle"]), add_bos=False)[0]
        want = llm.detokenize([boost] * 3).decode()
    p = run("generate", "-m", default_model, "--raw", "--temp", "0", "-n", "3", "--logit-bias", f"{boost}=60",
            "--logit-bias", f"{boost}=40", "The capital of France is")
    assert p.returncode == 0 and p.stdout == want + "\n", (p.stdout, want, p.stderr)
    p = run("generate", "-m", default_model, "--logit-bias", "12:5", "hi")
    assert p.returncode == 2 and "TOKEN_ID=BIAS" in p.stderr and "Traceback" not in p.stderr, p.stderr


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


# ---- triattn-cli: the default model, its query centres found by name, error wording ---------------------

SIDECAR_NAME = "SmolLM2-135M-Instruct.Q4_1.tri-stats.gguf"
SHIPPED_SIDECAR = Path(__file__).resolve().parents[1] / "python" / "pytriattn" / "data" / SIDECAR_NAME


def _triattn(cli, *args, env=None, timeout=300):
    return subprocess.run([str(cli), *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def _linked_model(default_model, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    m = folder / default_model.name
    m.symlink_to(default_model)
    return m


def assert_names_program_flags(err: str, prefix: str):
    """The missing-centres error of a C program: its own flags and the sidecar name, not the C field."""
    assert f"{prefix}error: --kv-policy triattention needs query centres" in err, err
    assert "--calibration FILE" in err and "pytriattn calibrate" in err and SIDECAR_NAME in err, err
    assert "calibration_path" not in err, err


def test_triattn_cli_without_centres_names_its_flags(cli, default_model, tmp_path):
    model = _linked_model(default_model, tmp_path / "m")
    n = rng.randint(2, 6)
    p = _triattn(cli, "-m", model, "--kv-policy", "triattention", "-p", "hi", "-n", n, "-t", 1)
    assert p.returncode == 1 and p.stdout == "", p.stderr
    assert_names_program_flags(p.stderr, "triattn-cli: ")
    p = _triattn(cli, "-m", model, "--kv-policy", "triattention", "--bench", "-p", 8, "-n", 0, "-r", 1)
    assert p.returncode == 1 and "--calibration FILE" in p.stderr, p.stderr
    # auto: full attention, no error
    p = _triattn(cli, "-m", model, "-p", "hi", "-n", n, "-t", 1, "--temp", 0)
    assert p.returncode == 0 and "policy full" in p.stderr, p.stderr


def test_python_without_centres_names_the_calibration_argument(default_model):
    from pytriattn import Llama, TriattnError

    with pytest.raises(TriattnError) as e:
        Llama(str(default_model), kv_policy="triattention", n_ctx=64)
    msg = str(e.value)
    assert "calibration='FILE'" in msg and "pytriattn calibrate" in msg and "calibration_path" not in msg, msg


def test_triattn_cli_finds_the_sidecar_by_name(cli, default_model, tmp_path):
    """MODEL.tri-stats.gguf beside MODEL.gguf is loaded like --calibration; auto then means triattention."""
    model = _linked_model(default_model, tmp_path / "m")
    shutil.copy(SHIPPED_SIDECAR, model.parent / SIDECAR_NAME)
    n = rng.randint(2, 8)
    p = _triattn(cli, "-m", model, "--kv-policy", "triattention", "-p", "hi", "-n", n, "-t", 1, "--temp", 0, "-v")
    assert p.returncode == 0, p.stderr
    assert f"calibration: {model.parent / SIDECAR_NAME}" in p.stderr and "policy triattention" in p.stderr
    assert f"decode: {n} tokens" in p.stderr, p.stderr
    p = _triattn(cli, "-m", model, "-p", "hi", "-n", 2, "-t", 1)
    assert p.returncode == 0 and "policy triattention" in p.stderr, p.stderr
    # a damaged sidecar found by name is skipped with a warning; the model still loads (auto: full)
    (model.parent / SIDECAR_NAME).write_bytes(rng.randbytes(rng.randrange(64, 4096)))
    p = _triattn(cli, "-m", model, "-p", "hi", "-n", 2, "-t", 1)
    assert p.returncode == 0, p.stderr
    assert f"warning: ignoring the query centres found by name: {model.parent / SIDECAR_NAME}" in p.stderr, p.stderr
    assert "policy full" in p.stderr, p.stderr
    # an explicit --calibration wins over the one found by name
    p = _triattn(cli, "-m", model, "--calibration", SHIPPED_SIDECAR, "--kv-policy", "triattention", "-p", "hi",
                 "-n", 2, "-t", 1, "-v")
    assert p.returncode == 0 and f"calibration: {SHIPPED_SIDECAR}" in p.stderr, p.stderr


def test_triattn_cli_finds_the_package_data_folder(cli, default_model, tmp_path):
    """Installed as pytriattn/bin/triattn-cli, the program finds pytriattn/data/MODEL.tri-stats.gguf."""
    pkg = tmp_path / "pytriattn"
    (pkg / "bin").mkdir(parents=True)
    (pkg / "data").mkdir()
    exe = pkg / "bin" / "triattn-cli"
    shutil.copy(cli, exe)
    shutil.copy(SHIPPED_SIDECAR, pkg / "data" / SIDECAR_NAME)
    model = _linked_model(default_model, tmp_path / "models")
    p = _triattn(exe, "-m", model, "--kv-policy", "triattention", "-p", "hi", "-n", 3, "-t", 1, "-v")
    found = Path(os.path.realpath(pkg)) / "bin" / ".." / "data" / SIDECAR_NAME
    assert p.returncode == 0 and f"calibration: {found}" in p.stderr, p.stderr
    # another model's name finds nothing there
    other = tmp_path / "models" / f"other{rng.randrange(1000)}.gguf"
    other.symlink_to(default_model)
    p = _triattn(exe, "-m", other, "--kv-policy", "triattention", "-p", "hi", "-n", 3, "-t", 1)
    assert p.returncode == 1 and f"as {other.stem}.tri-stats.gguf" in p.stderr, p.stderr


def test_triattn_cli_default_model_from_the_cache(cli, default_model, tmp_path):
    """No -m: the default model in pytriattn's cache ($PYTRIATTN_CACHE), with its centres beside it."""
    cache = tmp_path / "cache"
    _linked_model(default_model, cache)
    shutil.copy(SHIPPED_SIDECAR, cache / SIDECAR_NAME)
    n = rng.randint(2, 8)
    p = _triattn(cli, "--kv-policy", "triattention", "-p", "hi", "-n", n, "-t", 1, "-v",
                 env={"PYTRIATTN_CACHE": str(cache)})
    assert p.returncode == 0, p.stderr
    assert f"calibration: {cache / SIDECAR_NAME}" in p.stderr and f"decode: {n} tokens" in p.stderr, p.stderr
    empty = tmp_path / f"empty{rng.randrange(1000)}"
    p = _triattn(cli, "-p", "hi", env={"PYTRIATTN_CACHE": str(empty)})
    assert p.returncode == 2 and str(empty / default_model.name) in p.stderr and "pytriattn fetch" in p.stderr
    p = _triattn(cli, "-p", "hi", env={"PYTRIATTN_CACHE": "", "XDG_CACHE_HOME": str(empty)})
    assert p.returncode == 2 and str(empty / "pytriattn" / default_model.name) in p.stderr, p.stderr


def test_triattn_cli_logit_bias(cli, default_model):
    """-l ID+X / ID-X / ID=X: +100 on a random word's token makes it every greedy choice, -inf on the greedy
    choice changes the text; malformed pairs are usage errors, an id past the vocabulary the library's error."""
    from pytriattn import Llama
    prompt = rng.choice(["The capital of France is", "Water boils at", "My favourite animal is the"])
    with Llama(str(default_model), n_ctx=64) as llm:
        boost = llm.tokenize(rng.choice([" banana", " river", " purple", " castle"]), add_bos=False)[0]
        want = llm.detokenize([boost] * 3).decode()
        first = int(llm.eval(llm.tokenize(prompt))[-1].argmax())
    gen = ["-m", default_model, "-p", prompt, "-n", 3, "--temp", 0]
    for pair in (f"{boost}+100", f"{boost}=100", f"{boost}+60"):
        p = _triattn(cli, *gen, "-l", pair, "-l", f"{boost}+40" if pair.endswith("60") else f"{boost}+0")
        assert p.returncode == 0 and p.stdout.strip() == want.strip(), (pair, p.stdout, want, p.stderr[-500:])
    plain = _triattn(cli, *gen).stdout
    banned = _triattn(cli, *gen, "-l", f"{first}-inf").stdout
    assert plain and banned and banned != plain, (plain, banned)
    for bad in ("12:3", "x+1", "12+", "12+nan", "12+inf", "-3+1"):
        p = _triattn(cli, *gen, "-l", bad)
        assert p.returncode == 2 and "-l" in p.stderr, (bad, p.stderr)
    p = _triattn(cli, *gen, "-l", "99999999+1")
    assert p.returncode == 1 and "out of range" in p.stderr, p.stderr


# ---- triattn-cli --bench: prefill at depth, each depth prefilled once -----------------------------------

def _bench(cli, model, *args):
    p = _triattn(cli, "-m", model, "--bench", "--json", "-t", 1, *args, timeout=900)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def test_triattn_cli_bench_prefill_at_depth(cli, default_model):
    depth, n_p, n_g, reps = rng.choice([24, 40, 56]), rng.choice([8, 16]), rng.choice([3, 4]), rng.choice([2, 3])
    rows = _bench(cli, default_model, "-p", n_p, "-n", n_g, "-d", f"0,{depth}", "-r", reps, "--kv-policy", "full")
    assert [r["test"] for r in rows] == [f"pp{n_p}", f"tg{n_g} @ d0", f"pp{n_p} @ d{depth}", f"tg{n_g} @ d{depth}"]
    assert [r["depth"] for r in rows] == [0, 0, depth, depth]
    assert [r["n_prompt"] for r in rows] == [n_p, 0, n_p, 0] and [r["n_gen"] for r in rows] == [0, n_g, 0, n_g]
    # the restored context is the prefilled one: the KV holds the depth plus what the row added
    assert [r["kv_live_max"] for r in rows] == [n_p, n_g, depth + n_p, depth + n_g]
    for r in rows:
        assert r["reps"] == reps == len(r["samples_tps"]) and r["tps_min"] <= r["tps_median"] <= r["tps_max"]
        assert r["tps_min"] > 0
    # the depth was prefilled once for both rows at it; every other repetition restored it
    assert [r["depth_prefills"] for r in rows] == [0, 0, 1, 0]


def test_triattn_cli_bench_restore_keeps_the_rows(cli, default_model, tmp_path):
    """A policy whose session cannot be saved prefills for every repetition: the same rows and fields; and
    triattention (saved with its policy state) restores a compressed context."""
    depth, reps = rng.choice([40, 48]), 2
    args = ["-p", 8, "-n", 3, "-d", f"0,{depth}", "-r", reps, "-np", "1,2"]
    saved = _bench(cli, default_model, *args, "--kv-policy", "full")
    again = _bench(cli, default_model, *args, "--kv-policy", "streaming", "--kv-budget", 1024)
    assert [r["test"] for r in saved] == [r["test"] for r in again] == [
        "pp8", "tg3 @ d0", "tg3 @ d0 x2", f"pp8 @ d{depth}", f"tg3 @ d{depth}", f"tg3 @ d{depth} x2"]
    for a, b in zip(saved, again):
        assert a.keys() == b.keys() and (a["reps"], a["depth"], a["parallel"]) == (b["reps"], b["depth"], b["parallel"])
        assert a["kv_live_max"] == b["kv_live_max"]
    assert [r["depth_prefills"] for r in saved] == [0, 0, 0, 1, 0, 0]
    assert [r["depth_prefills"] for r in again] == [0, 0, 0, reps, reps, 2 * reps]
    model = _linked_model(default_model, tmp_path / "m")
    shutil.copy(SHIPPED_SIDECAR, model.parent / SIDECAR_NAME)
    budget, interval = rng.choice([16, 24]), 8
    tri = _bench(cli, model, "-p", 0, "-n", 4, "-d", depth, "-r", 3, "--kv-policy", "triattention",
                 "--kv-budget", budget, "--kv-interval", interval)
    assert [r["test"] for r in tri] == [f"tg4 @ d{depth}"] and tri[0]["depth_prefills"] == 1
    assert tri[0]["policy"] == "triattention" and tri[0]["kv_live_max"] <= budget + interval


def test_bench_refuses_an_unoptimized_llamacpp_build(tmp_path):
    """`pytriattn bench --llama-bench` takes no speed from a llama.cpp tree with -O0 parts (bench/parity.py's
    numerics build) or a non-Release build; a clean Release tree runs."""
    from pytriattn import TriattnError
    from pytriattn.bench import run_llama_bench, unoptimized_build

    src, build = tmp_path / "llama.cpp", tmp_path / "build"
    for sub in ("src", "common"):
        (src / sub).mkdir(parents=True)
        (src / sub / "CMakeLists.txt").write_text(f"add_library({sub} x.c)\n")
    (build / "bin").mkdir(parents=True)
    exe = build / "bin" / "llama-bench"
    tps = round(rng.uniform(10, 500), 3)
    exe.write_text("#!/bin/sh\necho '[{\"n_prompt\": 0, \"n_gen\": 4, \"n_depth\": 0, \"avg_ts\": %s}]'\n" % tps)
    exe.chmod(0o755)
    cache = build / "CMakeCache.txt"
    cache.write_text(f"CMAKE_BUILD_TYPE:STRING=Release\nCMAKE_HOME_DIRECTORY:INTERNAL={src}\n")
    assert unoptimized_build(exe) is None
    rows, _ = run_llama_bench(exe, tmp_path / "m.gguf", 0, 4, [0], 1, 1)
    assert rows[0]["avg_ts"] == tps
    sub = rng.choice(["src", "common"])
    with open(src / sub / "CMakeLists.txt", "a") as f:
        f.write(f"\n# pytriattn parity build: graph-building code at -O0\ntarget_compile_options({sub} PRIVATE -O0)\n")
    assert "-O0" in unoptimized_build(exe)
    with pytest.raises(TriattnError, match="no speed reference"):
        run_llama_bench(exe, tmp_path / "m.gguf", 0, 4, [0], 1, 1)
    (src / sub / "CMakeLists.txt").write_text("")
    (build / "NUMERICS-ONLY-O0.txt").write_text("numerics only\n")
    assert "numerics" in unoptimized_build(exe)
    (build / "NUMERICS-ONLY-O0.txt").unlink()
    cache.write_text(f"CMAKE_BUILD_TYPE:STRING={rng.choice(['Debug', ''])}\nCMAKE_HOME_DIRECTORY:INTERNAL={src}\n")
    assert "CMAKE_BUILD_TYPE" in unoptimized_build(exe)


def test_embed_command(default_model):
    """`pytriattn embed` prints one JSON line per text, the vectors Llama.embed gives; stdin lines work too."""
    from pytriattn import Llama
    texts = random.sample(["Water boils at one hundred degrees.", "The quick brown fox", "def add(a, b):",
                           "Paris is the capital of France."], 2)
    p = run("embed", *texts, "-m", default_model, "-t", 2)
    assert p.returncode == 0, p.stderr
    rows = [json.loads(line) for line in p.stdout.splitlines()]
    with Llama(str(default_model), n_threads=2) as llm:
        want = llm.embed(texts)
        last = llm.embed(texts[1], pooling="last", normalize=False)
    assert [r["text"] for r in rows] == texts
    for r, w in zip(rows, want):
        assert max(abs(a - b) for a, b in zip(r["embedding"], w)) < 1e-6
    p = run("embed", "--pooling", "last", "--no-normalize", "-m", default_model, "-t", 2, input=f"\n{texts[1]}\n\n")
    assert p.returncode == 0, p.stderr
    (row,) = [json.loads(line) for line in p.stdout.splitlines()]
    assert max(abs(a - b) for a, b in zip(row["embedding"], last)) < 1e-6
    p = run("embed", "-m", default_model, input="")
    assert p.returncode == 2 and "no text" in p.stderr
