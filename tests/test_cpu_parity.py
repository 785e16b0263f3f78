"""bench/cpu_parity.py end to end with stand-in programs: a llama-bench and two triattn-cli builds that print
JSON rows at speeds chosen fresh each run (and log each call), so the ratios, the medians, the rotating order
and the JSON record of a --base-cli run can be checked exactly."""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

from stand_ins import write_program

ROOT = Path(__file__).resolve().parent.parent
SEED = int(os.environ.get("TRI_TEST_SEED", time.time_ns() & 0xFFFFFFFF))
rng = random.Random(SEED)

# A stand-in program: answers with one JSON row per call, at a speed that depends on the test, and logs its name.
FAKE = r'''#!{py}
import json, sys
a = sys.argv[1:]
def opt(*names, default="0"):
    for n in names:
        if n in a:
            return a[a.index(n) + 1]
    return default
p, n, d = int(opt("-p")), int(opt("-n")), int(opt("-d"))
open({log!r}, "a").write({name!r} + "\n")
tps = {speed!r}[("pp" if p else "tg")]
if {name!r} == "llama":
    print(json.dumps([{{"n_prompt": p, "n_gen": n, "n_depth": d, "avg_ts": tps, "build_commit": "fake0"}}]))
else:
    print("log line before the JSON")
    print(json.dumps([{{"n_prompt": p, "n_gen": n, "depth": d, "tps_median": tps}}]))
'''


def _fake(path: Path, name: str, log: Path, speed: dict) -> Path:
    return write_program(path, FAKE.format(py="{py}", log=str(log), name=name, speed=speed))


def test_base_cli_adds_a_same_run_before_after_column(tmp_path):
    print(f"test_cpu_parity seed {SEED} (TRI_TEST_SEED={SEED} reproduces)")
    log = tmp_path / "calls.log"
    speeds = {who: {"pp": round(rng.uniform(50, 500), 2), "tg": round(rng.uniform(5, 50), 2)}
              for who in ("llama", "new", "base")}
    llama = _fake(tmp_path / "llama-bench", "llama", log, speeds["llama"])
    new = _fake(tmp_path / "cli-new", "new", log, speeds["new"])
    base = _fake(tmp_path / "cli-base", "base", log, speeds["base"])
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    rounds = rng.randint(2, 4)
    out = tmp_path / "out.json"
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "cpu_parity.py"), "--models", str(model),
                        "--tests", "pp64,tg16@0", "--rounds", str(rounds), "--llama-bench", str(llama),
                        "--cli", str(new), "--base-cli", str(base), "--json", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    rows = {ln.split("|")[1].strip(): ln for ln in p.stdout.splitlines() if ln.startswith("| pp64") or
            ln.startswith("| tg16@0")}
    for test, k in (("pp64", "pp"), ("tg16@0", "tg")):
        want = speeds["new"][k] / speeds["llama"][k]
        want_base = speeds["new"][k] / speeds["base"][k]
        assert f"**{want:.2f}x**" in rows[test], (rows[test], want)
        assert f"new / base {want_base:.2f}x" in rows[test], (rows[test], want_base)
    calls = log.read_text().split()
    assert len(calls) == 3 * 2 * rounds and {calls.count(w) for w in ("llama", "new", "base")} == {2 * rounds}
    firsts = [calls[i] for i in range(0, len(calls), 3)]
    assert len(set(firsts)) > 1, firsts  # the order rotates
    rec = json.loads(out.read_text())
    assert rec["base_cli"] == str(base) and rec["llama_cpp"] == "fake0" and len(rec["samples"]) == 2 * rounds
    for s in rec["samples"]:
        k = "pp" if s["test"].startswith("pp") else "tg"
        assert (s["llama_tps"], s["pytriattn_tps"], s["base_tps"]) == (
            speeds["llama"][k], speeds["new"][k], speeds["base"][k])


def test_without_base_cli_the_table_keeps_its_form(tmp_path):
    log = tmp_path / "calls.log"
    sp = {"pp": round(rng.uniform(50, 500), 2), "tg": round(rng.uniform(5, 50), 2)}
    llama = _fake(tmp_path / "llama-bench", "llama", log, sp)
    new = _fake(tmp_path / "cli-new", "new", log, {k: v * 2 for k, v in sp.items()})
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    out = tmp_path / "out.json"
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "cpu_parity.py"), "--models", str(model),
                        "--tests", "tg8@0", "--rounds", "1", "--llama-bench", str(llama), "--cli", str(new),
                        "--json", str(out)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    row = next(ln for ln in p.stdout.splitlines() if ln.startswith("| tg8@0"))
    assert "**2.00x**" in row and "base" not in row
    rec = json.loads(out.read_text())
    assert rec["base_cli"] is None and "base_tps" not in rec["samples"][0]
    bad = subprocess.run([sys.executable, str(ROOT / "bench" / "cpu_parity.py"), "--models", str(model),
                          "--tests", "tg8@0", "--llama-bench", str(llama), "--cli", str(new), "--base-cli",
                          str(tmp_path / "missing"), "--json", str(out)], capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "--base-cli" in bad.stderr
