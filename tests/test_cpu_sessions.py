"""bench/cpu_sessions.py end to end with stand-in programs: a llama-batched-bench that prints JSONL rows and a
triattn-cli that prints --bench JSON rows, at speeds per session count chosen fresh each run (each call logged), so
the per-session ratios, the medians over rounds, the rotating order and the JSON record can be checked exactly."""
from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

from stand_ins import write_program

ROOT = Path(__file__).resolve().parent.parent
SEED = int(os.environ.get("TRI_TEST_SEED", time.time_ns() & 0xFFFFFFFF))
rng = random.Random(SEED)

# speeds[round][program][sessions]: the stand-ins read the round from their own call count
FAKE = r'''#!{py}
import json, sys
a = sys.argv[1:]
def opt(name):
    return a[a.index(name) + 1]
log = {log!r}
calls = open(log).read().split() if __import__("os").path.exists(log) else []
me = {name!r} if {name!r} == "llama" else "tri" if "triattention" in a else "full"
rnd = calls.count(me)
open(log, "a").write(me + "\n")
speeds = {speeds!r}[rnd][me]
if me == "llama":
    pp, tg = int(opt("-npp")), int(opt("-ntg"))
    print("main: some log line")
    for pl in [x for x in opt("-npl").split(",") if x in speeds]:
        print(json.dumps({{"pp": pp, "tg": tg, "pl": int(pl), "speed_tg": speeds[pl], "speed_pp": 1.0}}))
else:
    d, n = int(opt("-d")), int(opt("-n"))
    print(json.dumps([{{"n_prompt": 0, "n_gen": n, "depth": d, "parallel": int(pl), "tps_median": speeds[pl]}}
                      for pl in opt("-np").split(",") if pl in speeds]))
'''


def _fake(path: Path, name: str, log: Path, speeds: list) -> Path:
    return write_program(path, FAKE.format(py="{py}", log=str(log), name=name, speeds=speeds))


def test_sessions_table_ratios_rotation_and_record(tmp_path):
    print(f"test_cpu_sessions seed {SEED} (TRI_TEST_SEED={SEED} reproduces)")
    log = tmp_path / "calls.log"
    sessions = ["1", "2", "4"]
    rounds = rng.randint(2, 4)
    speeds = [{who: {n: round(rng.uniform(10, 400), 2) for n in sessions} for who in ("llama", "full", "tri")}
              for _ in range(rounds)]
    llama = _fake(tmp_path / "llama-batched-bench", "llama", log, speeds)
    cli = _fake(tmp_path / "triattn-cli", "cli", log, speeds)
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    out = tmp_path / "out.json"
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "cpu_sessions.py"), "--model", str(model),
                        "--sessions", ",".join(sessions), "--depth", "64", "--gen", "8", "--rounds", str(rounds),
                        "--triattention", "--kv-budget", "32", "--llama-batched-bench", str(llama), "--cli", str(cli),
                        "--json", str(out)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    rows = {ln.split("|")[1].strip(): [c.strip() for c in ln.split("|")[2:-1]]
            for ln in p.stdout.splitlines() if ln.startswith("| ") and ln.split("|")[1].strip().isdigit()}
    assert sorted(rows, key=int) == sessions
    for n in sessions:
        llama_med = statistics.median(r["llama"][n] for r in speeds)
        cells = rows[n]
        assert cells[0] == f"{llama_med:.1f}"
        for col, who in ((1, "full"), (3, "tri")):
            assert cells[col] == f"{statistics.median(r[who][n] for r in speeds):.1f}"
            ratio = statistics.median(r[who][n] / r["llama"][n] for r in speeds)
            assert cells[col + 1] == f"**{ratio:.2f}x**", (cells, ratio)
    calls = log.read_text().split()
    assert len(calls) == 3 * rounds and {calls.count(w) for w in ("llama", "full", "tri")} == {rounds}
    assert len({calls[i] for i in range(0, len(calls), 3)}) > 1  # the first program rotates
    rec = json.loads(out.read_text())
    assert rec["depth"] == 64 and rec["gen"] == 8 and rec["rounds"] == rounds
    assert "--kv-budget" in rec["policies"]["triattention 32"]
    got = {(s["round"], s["program"], s["sessions"]): s["tps"] for s in rec["samples"]}
    names = {"llama": "llama.cpp", "full": "full", "tri": "triattention 32"}
    for i, r in enumerate(speeds):
        for who, per in r.items():
            for n, tps in per.items():
                assert got[(i, names[who], int(n))] == tps


def test_missing_session_rows_fail_with_a_message(tmp_path):
    log = tmp_path / "calls.log"
    speeds = [{who: {"1": 10.0} for who in ("llama", "full", "tri")}]
    llama = _fake(tmp_path / "llama-batched-bench", "llama", log, speeds)
    cli = _fake(tmp_path / "triattn-cli", "cli", log, speeds)
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "cpu_sessions.py"), "--model", str(model),
                        "--sessions", "1,2", "--rounds", "1", "--llama-batched-bench", str(llama), "--cli", str(cli),
                        "--json", str(tmp_path / "o.json")], capture_output=True, text=True, timeout=120)
    assert p.returncode != 0
    assert "gave no row for [2] sessions" in p.stderr, p.stderr[-800:]
