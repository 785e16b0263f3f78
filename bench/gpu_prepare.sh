#!/usr/bin/env bash
# Prepares, on a machine with network, what a GPU machine without one needs for bench/gpu_device.sh: the Python
# wheels its image lacks (cffi, pycparser, gguf in .whl/; the openai client and its needs in .whl-test/), and the
# default model cut to its first 3 layers in .cache/pytriattn/ (the real-weights tests), all ignored by git and
# carried with the device calls; with --peer
# also llama.cpp's llama-bench and llama-batched-bench built with CUDA for sm_90 in .peer/ (bench/llamacpp.py cuda:
# about 35 minutes on 2 cores, once), which bench/gpu.py runs on the same model in the same run. Prints the calls.
#
#   bash bench/gpu_prepare.sh [--peer]
set -eu
cd "$(dirname "$0")/.."
for d in /.whl/ /.whl-test/ /.peer/; do
    grep -qx "$d" .git/info/exclude 2>/dev/null || echo "$d" >>.git/info/exclude
done
if [ "${1:-}" = --peer ]; then
    python3 bench/llamacpp.py cuda --archs 90 --out .peer
fi
# the versions installed here: what bench/gpu_device.sh needs in .whl/, the server test's openai client and what it
# needs (the GPU image lacks them or holds other versions) in .whl-test/, carried by the tests call only
fetch_wheels() {
    local dir=$1 pkg ver
    shift
    mkdir -p "$dir"
    for pkg in "$@"; do
        ver=$(python3 -c "import importlib.metadata as m; print(m.version('$pkg'))")
        ls "$dir/$pkg-$ver"-*.whl >/dev/null 2>&1 && continue
        rm -f "$dir/$pkg"-*.whl  # one version of each
        python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
            -d "$dir" "$pkg==$ver"
    done
}
fetch_wheels .whl cffi pycparser gguf
fetch_wheels .whl-test openai pydantic pydantic_core typing_inspection annotated_types typing_extensions jiter sniffio \
    anyio idna httpx2 httpcore2 h11 truststore
# the cut model, written where the tests' fixture writes it, then copied into the tree
PYTHONPATH=python:tests python3 - <<'EOF'
import shutil
from pathlib import Path

from pytriattn._fetch import cache_dir, default_model_path, ensure_default_model
from pytriattn.llama import default_calibration
from tinymodels import cut_model

name = "SmolLM2-135M-Instruct.Q4_1.first3.gguf"
src = cache_dir() / name
if not src.is_file():
    model = default_model_path() if default_model_path().is_file() else ensure_default_model()
    cut_model(model, src, 3, calibration=default_calibration())
dst = Path(".cache/pytriattn") / name
dst.parent.mkdir(parents=True, exist_ok=True)
if not dst.is_file() or dst.stat().st_size != src.stat().st_size:
    shutil.copyfile(src, dst)
print(f"{dst}: {dst.stat().st_size / 2**20:.1f} MiB")
EOF
ls -la .whl .whl-test
tree=$(du -sm --exclude=.git --exclude=build --exclude=bench/out --exclude=.cache --exclude=.peer . | cut -f1)
echo "tree ${tree} MiB, .whl $(du -sm .whl | cut -f1) MiB, .whl-test $(du -sm .whl-test | cut -f1) MiB and .cache \
$(du -sm .cache | cut -f1) MiB (the tests call), .peer $(du -sm .peer 2>/dev/null |
    cut -f1) MiB (the bench call; limit 64 MiB a call)"
bench_carry='".whl"'
[ -x .peer/llama-bench ] && bench_carry='".whl", ".peer"'
cat <<EOF
device calls on one warm machine, within about 15 minutes of device time, start included:
  CALL_BUDGET=370 TEST_TIMEOUT=260 bash bench/gpu_device.sh tests
      (carry [".whl", ".whl-test", ".cache"], timeout_s 380)
  CALL_BUDGET=<device time left - 30> bash bench/gpu_device.sh bench --short   (carry [$bench_carry],
      timeout_s: CALL_BUDGET + 10)
EOF
