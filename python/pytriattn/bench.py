"""`pytriattn bench`: prefill and decode speed, KV bytes and peak RSS per KV policy and budget.

Every measurement is one `triattn-cli --bench` process (so its peak RSS is its own): one for prefill
(-p), one per KV depth (-d) for decode. `--llama-bench PATH` also runs llama.cpp's llama-bench on the same
GGUF with the same -p/-n/-d/-r/-t, and every speed gets a ratio against it. Rows go to CSV + JSON in the
kvpress shape: dataset `prefill` (context = prompt length) or `decode` (context = KV depth).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from ._errors import ERR_INVALID_ARG, TriattnError
from .eval import Progress, Results, _method_order

SPEED_METRICS = ["tps", "tps_min", "tps_max", "kv_bytes", "kv_live_max", "peak_rss_mb"]


def find_cli(explicit: str | os.PathLike | None = None) -> Path:
    """triattn-cli: explicit path, $TRIATTN_CLI_BIN, the one in the installed wheel, or next to the
    library named by $PYTRIATTN_LIB (a build directory)."""
    cands = []
    if explicit:
        cands.append(Path(explicit))
    if os.environ.get("TRIATTN_CLI_BIN"):
        cands.append(Path(os.environ["TRIATTN_CLI_BIN"]))
    try:
        from ._lib import binary_path
        cands.append(binary_path("triattn-cli"))
    except TriattnError:
        pass
    if os.environ.get("PYTRIATTN_LIB"):
        cands.append(Path(os.environ["PYTRIATTN_LIB"]).resolve().parent / "triattn-cli")
    for p in cands:
        if p.is_file() and os.access(p, os.X_OK):
            return p
    raise TriattnError(ERR_INVALID_ARG, "triattn-cli was not found: pass --cli PATH, set TRIATTN_CLI_BIN, or "
                       "install pytriattn with `pip install .`" + (f" (tried {', '.join(map(str, cands))})"
                                                                    if cands else ""))


def run_measured(cmd: list[str], timeout: float | None = None) -> tuple[int, str, str, float]:
    """Runs cmd; returns (exit code, stdout, stderr, peak RSS of that process in MiB)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        p = subprocess.Popen(cmd, stdout=out, stderr=err)
        try:
            _, status, ru = os.wait4(p.pid, 0)
        except KeyboardInterrupt:
            p.kill()
            p.wait()
            raise
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return (p.returncode, out.read().decode("utf-8", "replace"), err.read().decode("utf-8", "replace"),
                ru.ru_maxrss / 1024.0)


def _cli_rows(cli, model, calibration, policy, budget, args: dict) -> tuple[list[dict], float]:
    cmd = [str(cli), "-m", str(model), "--bench", "--json", "-p", str(args["p"]), "-n", str(args["n"]),
           "-d", str(args["d"]), "-r", str(args["r"]), "-t", str(args["t"]), "--kv-policy", policy]
    if policy != "full":
        cmd += ["--kv-budget", str(budget)]
    if calibration:
        cmd += ["--calibration", str(calibration)]
    for k in ("kv_interval", "kv_window", "kv_sink", "kv_mode"):
        if args.get(k) is not None:
            cmd += [f"--{k.replace('_', '-')}", str(args[k])]
    rc, out, err, rss = run_measured(cmd)
    if rc != 0:
        raise TriattnError(ERR_INVALID_ARG, f"{' '.join(cmd)} failed (exit {rc}): {err.strip()[-800:]}")
    try:
        return json.loads(out), rss
    except json.JSONDecodeError:
        raise TriattnError(ERR_INVALID_ARG, f"triattn-cli printed no JSON: {out[:300]!r}") from None


def unoptimized_build(exe) -> str | None:
    """Why the llama.cpp tree that built exe is no speed reference (a build type other than Release, or -O0
    parts such as bench/parity.py's numerics build), or None when nothing says so."""
    for d in Path(exe).resolve().parents:
        cache = d / "CMakeCache.txt"
        if not cache.is_file():
            continue
        text = cache.read_text(errors="replace")
        bt = re.search(r"^CMAKE_BUILD_TYPE:\w+=(.*)$", text, re.M)
        if bt and bt.group(1).strip() not in ("Release", "RelWithDebInfo"):
            return f"{cache}: CMAKE_BUILD_TYPE={bt.group(1).strip() or '(none)'}"
        if (d / "NUMERICS-ONLY-O0.txt").is_file():
            return f"{d / 'NUMERICS-ONLY-O0.txt'}: built by bench/parity.py for numerics"
        src = re.search(r"^CMAKE_HOME_DIRECTORY:INTERNAL=(.*)$", text, re.M)
        for sub in ("src", "common", "ggml/src"):
            cm = Path(src.group(1)) / sub / "CMakeLists.txt" if src else None
            if cm and cm.is_file() and re.search(r"target_compile_options\([^)]*-O0", cm.read_text(errors="replace")):
                return f"{cm} compiles a target at -O0"
        return None
    return None


def run_llama_bench(exe, model, p: int, n: int, depths: list[int], r: int, t: int) -> tuple[list[dict], float]:
    """llama.cpp's llama-bench -o json on the same settings; returns its rows and peak RSS (MiB)."""
    why = unoptimized_build(exe)
    if why:
        raise TriattnError(ERR_INVALID_ARG, f"{exe} comes from a llama.cpp build that is no speed reference ({why}): "
                           "build a clean -O3 (Release) tree for speed comparisons")
    cmd = [str(exe), "-m", str(model), "-p", str(p), "-n", str(n), "-d", ",".join(map(str, depths)),
           "-r", str(r), "-t", str(t), "-o", "json"]
    rc, out, err, rss = run_measured(cmd)
    if rc != 0:
        raise TriattnError(ERR_INVALID_ARG, f"{' '.join(cmd)} failed (exit {rc}): {err.strip()[-800:]}")
    start = out.find("[")
    try:
        rows = json.loads(out[start:]) if start >= 0 else []
    except json.JSONDecodeError:
        raise TriattnError(ERR_INVALID_ARG, f"llama-bench printed no JSON: {out[:300]!r}") from None
    return rows, rss


def parse_llama_bench(rows: list[dict]) -> dict:
    """{('prefill', n_prompt) | ('decode', depth): (median t/s, min, max)} from llama-bench JSON rows
    (prefill from an empty context only)."""
    out = {}
    for r in rows:
        samples = r.get("samples_ts") or [r.get("avg_ts", 0.0)]
        avg = float(r.get("avg_ts", sum(samples) / max(len(samples), 1)))
        ss = sorted(float(x) for x in samples)
        med = ss[len(ss) // 2] if len(ss) % 2 else 0.5 * (ss[len(ss) // 2 - 1] + ss[len(ss) // 2])
        depth = int(r.get("n_depth", 0))
        if int(r.get("n_prompt", 0)) > 0 and int(r.get("n_gen", 0)) == 0:
            if depth == 0:  # prefill at depth (both tools time it) is not part of this sweep
                out[("prefill", int(r["n_prompt"]))] = (med or avg, ss[0], ss[-1])
        elif int(r.get("n_gen", 0)) > 0 and int(r.get("n_prompt", 0)) == 0:
            out[("decode", depth)] = (med or avg, ss[0], ss[-1])
    return out


def bench(setup, results: Results, policies, budgets, p: int = 512, n: int = 64, depths=(0, 1024, 4096, 8000),
          r: int = 3, cli=None, llama_bench=None, progress: bool = True) -> None:
    """The speed sweep; appends rows (and ratios against llama.cpp when llama_bench is given)."""
    cli = find_cli(cli)
    knobs = {"kv_interval": setup.kv_interval if setup.kv_interval != 128 else None,
             "kv_window": setup.kv_window, "kv_sink": setup.kv_sink if setup.kv_sink != 4 else None,
             "kv_mode": setup.kv_mode}
    jobs = []
    for pol in policies:
        for b in ([0] if pol == "full" else budgets):
            m = setup.method(pol)
            if p > 0 and not results.done("prefill", p, setup.model_name, m, b, SPEED_METRICS):
                jobs.append(("prefill", p, pol, b))
            for d in depths:
                if n > 0 and not results.done("decode", d, setup.model_name, m, b, SPEED_METRICS):
                    jobs.append(("decode", d, pol, b))
    ref = {}
    lb_p, lb_depths = 0, []
    if llama_bench:  # only what the CSV lacks (--resume)
        ref_rows = [x for x in results.rows if x["method"] == "llama.cpp" and x["metric"] == "tps"]
        ref = {(x["dataset"], x["context"]): (x["value"],) for x in ref_rows}
        lb_depths = [d for d in depths if n > 0 and ("decode", d) not in ref]
        lb_p = p if p > 0 and ("prefill", p) not in ref else 0
        if lb_depths or lb_p:
            jobs.insert(0, ("llama.cpp", 0, "llama.cpp", 0))
    bar = Progress(len(jobs), "bench", progress, unit="run")
    try:
        for kind, ctx, pol, b in jobs:
            bar.label(f"{pol} {b or ''} {kind} {ctx}".replace("  ", " "))
            if kind == "llama.cpp":
                lrows, rss = run_llama_bench(llama_bench, setup.model, lb_p, n if lb_depths else 0,
                                             lb_depths or [0], r, setup.threads)
                Path(f"{results.prefix}-llama-bench.json").write_text(json.dumps(lrows, indent=1) + "\n")
                new = parse_llama_bench(lrows)
                ref.update(new)
                for (ds, c), (med, lo, hi) in sorted(new.items()):
                    results.add(ds, c, setup.model_name, "llama.cpp", 0,
                                {"tps": med, "tps_min": lo, "tps_max": hi, "peak_rss_mb": rss})
                bar.update(1)
                continue
            a = {"p": p if kind == "prefill" else 0, "n": n if kind == "decode" else 0,
                 "d": ctx if kind == "decode" else 0, "r": r, "t": setup.threads, **knobs}
            rows, rss = _cli_rows(cli, setup.model, setup.calibration, pol, b, a)
            if not rows:
                raise TriattnError(ERR_INVALID_ARG, f"triattn-cli gave no rows for {pol} {kind} {ctx}")
            x = rows[-1]
            met = {"tps": x["tps_median"], "tps_min": x["tps_min"], "tps_max": x["tps_max"],
                   "kv_bytes": x["kv_bytes"], "kv_live_max": x["kv_live_max"], "peak_rss_mb": rss}
            if (kind, ctx) in ref:
                met["vs_llamacpp"] = x["tps_median"] / ref[(kind, ctx)][0]
            results.add(kind, ctx, setup.model_name, setup.method(pol), b, met)
            bar.update(1)
    finally:
        bar.close()


def plot_bench(results: Results) -> list[str]:
    """decode tok/s vs depth, KV bytes vs context, peak RSS vs context: one PNG next to the CSV."""
    from ._plot import grid, line_chart, write_png

    def series(ds, metric, scale=1.0, xshift=0):
        out: dict = {}
        for x in sorted(results.rows, key=lambda x: (_method_order(x["method"]), x["budget"], x["context"])):
            if x["dataset"] == ds and x["metric"] == metric and not (metric == "peak_rss_mb" and
                                                                         x["method"] == "llama.cpp"):
                name = x["method"] if x["budget"] == 0 else f"{x['method']} {x['budget']}"
                xs, ys = out.setdefault(name, ([], []))
                xs.append(x["context"] + xshift)
                ys.append(x["value"] * scale)
        return out

    imgs = []
    s = series("decode", "tps")
    if s:
        imgs.append(line_chart(s, title="decode tok/s vs KV depth", xlabel="depth (tokens)", ylabel="tok/s"))
    s = {k: v for k, v in series("decode", "kv_bytes", 1 / 2**20).items()}
    if s:
        imgs.append(line_chart(s, title="KV cache MiB vs context", xlabel="context (tokens)", ylabel="MiB"))
    s = series("decode", "peak_rss_mb")  # per process; llama-bench's is one number for its whole run
    if s:
        imgs.append(line_chart(s, title="peak RSS MiB vs context", xlabel="context (tokens)", ylabel="MiB"))
    if not imgs:
        return []
    path = f"{results.prefix}.png"
    write_png(path, grid(imgs, 3 if len(imgs) >= 3 else len(imgs)))
    return [path]


def bench_table(results: Results) -> str:
    """Markdown: one row per method/budget, prefill and decode tok/s per depth (+ ratio vs llama.cpp)."""
    rows = results.rows
    depths = sorted({x["context"] for x in rows if x["dataset"] == "decode"})
    pps = sorted({x["context"] for x in rows if x["dataset"] == "prefill"})
    keys = sorted({(x["method"], x["budget"]) for x in rows if x["dataset"] in ("prefill", "decode")},
                  key=lambda k: (_method_order(k[0]) if k[0] != "llama.cpp" else (-1, ""), k[1]))
    head = ["method", "budget"] + [f"pp{p} t/s" for p in pps] + [f"tg @ d{d} t/s" for d in depths] + \
           [f"KV MiB @ d{depths[-1]}" if depths else "KV MiB", "peak RSS MiB"]
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]

    def get(ds, c, m, b, met):
        for x in rows:
            if (x["dataset"], x["context"], x["method"], x["budget"], x["metric"]) == (ds, c, m, b, met):
                return x["value"]
        return None

    for m, b in keys:
        cells = [m, str(b) if b else "-"]
        for ds, cs in (("prefill", pps), ("decode", depths)):
            for c in cs:
                v, ratio = get(ds, c, m, b, "tps"), get(ds, c, m, b, "vs_llamacpp")
                cells.append("" if v is None else f"{v:.1f}" + (f" ({ratio:.2f}x)" if ratio is not None else ""))
        kv = get("decode", depths[-1], m, b, "kv_bytes") if depths else None
        cells.append("" if kv is None else f"{kv / 2**20:.1f}")
        rss = max((x["value"] for x in rows if x["method"] == m and x["budget"] == b
                   and x["metric"] == "peak_rss_mb"), default=None)
        cells.append("" if rss is None else f"{rss:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main_bench(args) -> int:
    from .eval import Setup, available_policies, parse_list

    setup = Setup(args.model, args.calibration, args.threads, args.kv_interval, args.kv_window, args.kv_sink,
                  args.kv_mode)
    policies = parse_list(args.policies, str, "--policies") or ["full", "triattention"]
    bad = sorted(set(policies) - set(available_policies(setup, policies)))
    if bad:
        raise TriattnError(ERR_INVALID_ARG, f"--policies: the library does not accept {', '.join(bad)}")
    results = Results(args.out, resume=args.resume)
    bench(setup, results, policies, parse_list(args.budgets, int, "--budgets"), p=args.p, n=args.n,
          depths=parse_list(args.depths, int, "-d"), r=args.r, cli=args.cli, llama_bench=args.llama_bench,
          progress=not args.quiet)
    plots = [] if args.no_plot else plot_bench(results)
    print(bench_table(results))
    print(f"\nwrote {results.csv_path}, {results.json_path}" + "".join(f", {p}" for p in plots), file=sys.stderr)
    return 0
