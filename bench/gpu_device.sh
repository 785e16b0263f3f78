#!/usr/bin/env bash
# Every GPU check in one run, for a machine with a CUDA device and no network: the CUDA tests (tests/test_cuda.py,
# the real-weights ones from the cut default model in $PYTRIATTN_CACHE), the per-op micro-benchmark, session copies
# (bench/session_copy.py) and the benchmark table (bench/gpu.py). Logs and JSON go to $OUT (default bench/out/gpu).
#
#   bash bench/gpu_device.sh [tests|bench|all|final] [gpu.py options...]
#
# final: for a short device budget: the 32b model is written while the GPU tests run, then the 32b runs, then a
# shorter 1b table (--short). tests also writes the 32b model while the tests run, so that a device budget of two
# calls can run `tests`, then `bench --short` on the same machine (the models stay in $MODELS, inside the tree).
#
# CALL_BUDGET=S: the seconds this call may take (the device tool's timeout): the fallback search and the per-op
# benchmark shorten or skip to end in time, so the logs come back whole.
# Environment: TRIATTN_CUDA_BUILD_DIR = a folder with libtriattn.so, tool_cuda and triattn-cli built with
# -DTRIATTN_CUDA=ON (else this script builds build/cuda90 for sm_90); .whl/ and .whl-test/ wheels (cffi, pycparser,
# gguf; openai and its needs) are installed into /tmp/site when present; PYTRIATTN_CACHE (default: .cache/pytriattn
# in the tree when there, a path the device call carries) should hold SmolLM2-135M-Instruct.Q4_1.first3.gguf
# (written by tests/test_cuda.py's cut_model fixture where the default model is cached). TRI_TEST_SEED is drawn once, so reruns repeat the draws.
# .peer/ (bash bench/gpu_prepare.sh --peer), when carried: llama.cpp's CUDA build, which bench/gpu.py runs on the
# same model right after the engine's 1b rows (unpacked into $MODELS/llamacpp-cuda).
# A dry run without a GPU, on the backend over its host emulation with no-op kernels (docs/cuda.md): the steps and
# their plans, no speeds: TRIATTN_CUDA_EMU_NOOP=2 TRIATTN_CUDA_EMU_GIB=80 TRIATTN_CUDA_BUILD_DIR=build/cuda-emu
# bash bench/gpu_device.sh bench --short (the tests step: TRIATTN_CUDA_BUILD_DIR=build/cuda-emu alone).
set -u
cd "$(dirname "$0")/.."
what=${1:-all}
shift || true
OUT=${OUT:-bench/out/gpu}
MODELS=${MODELS:-bench/out/gpu-models}  # not under $OUT: the 32b model is 17 GiB
mkdir -p "$OUT" "$MODELS"
wheels=$(ls .whl/*.whl .whl-test/*.whl 2>/dev/null)
if [ -n "$wheels" ]; then
    # shellcheck disable=SC2086
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $wheels \
        && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
left() {  # seconds left of CALL_BUDGET, less a margin for the lines after (at least 1: 0 means no limit to timeout)
    local s=$(( ${CALL_BUDGET:-100000} - SECONDS - 15 ))
    echo $(( s > 1 ? s : 1 ))
}
within() {  # $1 seconds, or fewer if CALL_BUDGET has fewer left
    local l
    l=$(left)
    echo $(( $1 < l ? $1 : l ))
}
STATE=${STATE:-bench/out/gpu-state}  # kept between calls on one machine, like $MODELS
mkdir -p "$STATE"

# After failed device tests: which of the backend's newer kernel choices, turned off, makes the failed tests pass
# (all of them off first, then one at a time while FALLBACK_TIMEOUT seconds last). The set kept, a single switch when
# one suffices, else all of them, goes to $STATE/fallback.env, which later bench runs on this machine use (and
# bench/gpu.py records in results.json).
find_fallback() {
    local failed t_end sets set
    failed=$(grep -oE '^(FAILED|ERROR) tests/test_cuda\.py::[^ ]+' "$OUT/test_cuda.log" |
             sed -E 's/^(FAILED|ERROR) //' | sort -u)
    [ -n "$failed" ] || { echo "fallback: no FAILED or ERROR lines to rerun"; return; }
    local all="TRIATTN_CUDA_ATT_MMA_MIN=0 TRIATTN_CUDA_ATT_FUSED=0 TRIATTN_CUDA_MQ_MIN=33 TRIATTN_CUDA_PDL=0"
    all="$all TRIATTN_CUDA_TC_PREFETCH=0 TRIATTN_CUDA_TC_FILL=0 TRIATTN_CUDA_GRAPHS=0"
    sets=("$all" "TRIATTN_CUDA_ATT_MMA_MIN=0" "TRIATTN_CUDA_ATT_FUSED=0" "TRIATTN_CUDA_MQ_MIN=33" "TRIATTN_CUDA_PDL=0"
          "TRIATTN_CUDA_GRAPHS=0" "TRIATTN_CUDA_TC_PREFETCH=0")
    t_end=$((SECONDS + $(within "${FALLBACK_TIMEOUT:-120}")))
    for set in "${sets[@]}"; do
        [ $((t_end - SECONDS)) -ge 10 ] || { echo "fallback: out of time"; break; }
        # shellcheck disable=SC2086
        if env $set timeout $((t_end - SECONDS)) python3 -m pytest -q -x -p no:cacheprovider $failed \
                >>"$OUT/fallback.log" 2>&1; then
            echo "fallback: the failed tests pass with $set"
            printf '%s\n' $set >"$STATE/fallback.env"
            [ "$set" = "$all" ] || return  # one switch suffices
        else
            echo "fallback: still failing with $set"
            [ "$set" = "$all" ] && return  # not the newer kernels
        fi
    done
}
BUILD=${TRIATTN_CUDA_BUILD_DIR:-build/cuda90}
if [ ! -x "$BUILD/tool_cuda" ]; then
    t0=$SECONDS
    cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DTRIATTN_BUILD_TESTS=ON -DTRIATTN_CUDA=ON \
        -DTRIATTN_CUDA_ARCHS=90 >/dev/null && cmake --build "$BUILD" -j "$(nproc)" >"$OUT/build.log" 2>&1 \
        || { tail -30 "$OUT/build.log"; exit 1; }
    echo "built $BUILD in $((SECONDS - t0)) s"
fi
export TRIATTN_CUDA_BUILD_DIR=$BUILD PYTHONPATH=$PWD/python${PYTHONPATH:+:$PYTHONPATH}
# no network on the device: nothing may try to download; the tests' random draws are the same in their reruns
export PIP_NO_INDEX=1 TRI_TEST_SEED=${TRI_TEST_SEED:-$((RANDOM * 32768 + RANDOM))}
[ -z "${PYTRIATTN_CACHE:-}" ] && [ -d .cache/pytriattn ] && export PYTRIATTN_CACHE=$PWD/.cache/pytriattn
echo "seed $TRI_TEST_SEED; model cache ${PYTRIATTN_CACHE:-(default)}; $(df -h --output=avail . | tail -1) free"
python3 -c 'import numpy' 2>/dev/null || { echo "numpy is missing: bench/gpu.py and the tests need it"; exit 1; }
if [ "$what" != bench ]; then
    python3 -c 'import cffi, pycparser, gguf' 2>/dev/null \
        || { echo "cffi, pycparser or gguf is missing (wheels in .whl/): the tests cannot run"; exit 1; }
fi
cut=$(python3 -c 'import sys; sys.path.insert(0, "python")
from pytriattn._fetch import cache_dir
print(cache_dir() / "SmolLM2-135M-Instruct.Q4_1.first3.gguf")')
if [ "$what" != bench ] && [ ! -f "$cut" ]; then
    echo "warning: no cut model in the model cache: the real-weights tests will error (no download here)"
fi
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv >"$OUT/device.txt" 2>&1
writer=
if [ "$what" = final ] || [ "$what" = tests ]; then
    PYTHONUNBUFFERED=1 python3 bench/gpu.py --write-only 32b --out "$OUT/write" --models "$MODELS" \
        --cli "$BUILD/triattn-cli" &
    writer=$!
fi
if [ "$what" = tests ] || [ "$what" = all ] || [ "$what" = final ]; then
    t0=$SECONDS
    rm -f "$STATE/fallback.env"
    tt=$(within "${TEST_TIMEOUT:-300}")
    # several test processes share the device where pytest-xdist is there (the GPU image has it): TEST_JOBS=1 for one
    jobs=()
    python3 -c 'import xdist' 2>/dev/null && [ "${TEST_JOBS:-4}" -gt 1 ] && jobs=(-n "${TEST_JOBS:-4}")
    # left to CI: the CPU-build tests, the benchmark script's, the sm_80 + sm_90 build's (this one is sm_90), the
    # host emulation's and the kernel simulator's (the "emu" and "sim" variants: host work, minutes of it)
    sel="not cpu_build_gpu_request and not mem_limit_parse and not test_gpu_bench and not test_cuda_bench"
    sel="$sel and not sm80_and_sm90 and not emu and not sim"
    PYTHONUNBUFFERED=1 timeout "$tt" python3 -m pytest -q -s -rfE "${jobs[@]}" tests/test_cuda.py -p no:cacheprovider \
        -k "${TEST_SELECT:-$sel}" >"$OUT/test_cuda.log" 2>&1
    rc=$?
    tail -25 "$OUT/test_cuda.log"
    echo "tests: exit $rc, $((SECONDS - t0)) s"
    [ "$rc" != 0 ] && find_fallback
    opt=$(within 120)
    if [ "$what" != final ] && [ "$opt" -gt 20 ]; then  # per-op timings (final: left out, for the device budget)
        t0=$SECONDS
        timeout "$opt" "$BUILD/tool_cuda" bench 7 >"$OUT/tool_cuda_bench.jsonl" 2>&1
        echo "tool_cuda bench: exit $?, $((SECONDS - t0)) s"
        grep -E '"(mm_vec|mm_q|attention)"' "$OUT/tool_cuda_bench.jsonl" | head -50
    fi
    # session copies on the cut model: GPU to GPU (on the device) and GPU to CPU (through the host)
    for to in gpu cpu; do
        [ -f "$cut" ] && [ "$(left)" -gt 30 ] || break
        PYTRIATTN_LIB=$BUILD/libtriattn.so timeout "$(within 40)" python3 bench/session_copy.py -m "$cut" --ngl -1 \
            --tokens 2000,6000 --out "$OUT/session_copy_$to.json" $([ $to = cpu ] && echo --to-cpu) \
            2>>"$OUT/session_copy.log" | sed "s/^/session copy to $to: /"
    done
fi
if [ -n "$writer" ]; then
    t0=$SECONDS
    while kill -0 "$writer" 2>/dev/null && [ "$(left)" -gt 1 ]; do
        sleep 2
    done
    kill -0 "$writer" 2>/dev/null && { kill "$writer"; echo "the 32b writer stopped: out of time"; }
    if wait "$writer" && [ -s "$MODELS/random-32b.gguf" ]; then
        echo "32b model written (waited $((SECONDS - t0)) s more): $(du -h "$MODELS/random-32b.gguf" | cut -f1)"
    else
        echo "writing the 32b model failed: see $OUT/write/gpu_bench.log"
    fi
fi
if [ "$what" != tests ] && [ -s "$STATE/fallback.env" ]; then
    set -a
    . "$STATE/fallback.env"
    set +a
    echo "benchmark with the fallback of the failed device tests: $(tr '\n' ' ' <"$STATE/fallback.env")"
fi
if [ "$what" = final ]; then
    t0=$SECONDS
    PYTHONUNBUFFERED=1 python3 bench/gpu.py --cli "$BUILD/triattn-cli" --out "$OUT" --models "$MODELS" --short \
        ${CALL_BUDGET:+--deadline "$(left)"} "$@"
    echo "bench: $((SECONDS - t0)) s"
fi
if [ "$what" = bench ] || [ "$what" = all ]; then
    t0=$SECONDS
    PYTHONUNBUFFERED=1 python3 bench/gpu.py --cli "$BUILD/triattn-cli" --out "$OUT" --models "$MODELS" \
        ${CALL_BUDGET:+--deadline "$(left)"} "$@"
    echo "bench: $((SECONDS - t0)) s"
fi
