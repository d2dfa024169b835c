#!/usr/bin/env bash
# The one prepared script for a machine with one GPU and no network (Python 3.12, torch 2.11, triton 3.6,
# nvcc 13, scikit-build-core, pybind11, pytest, pytest-xdist preinstalled). Builds in place (sm_90 only, all
# cores), runs the gpu tests in parallel and the quick benchmark, copies logs and results to $OUT when set.
# Budget: about 6 minutes; TEST_S / BENCH_S override the parts.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TRITON_DEFAULT_FP_FUSION=1 CMAKE_BUILD_PARALLEL_LEVEL=$(nproc)
PY=python3
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv | tee "$OUT/gpu.txt"
start=$(date +%s)
timeout 200 $PY -m pip install --no-build-isolation --no-deps -q -C cmake.define.CROSSFUSE_CUDA_ARCHS=90 . \
  >"$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; echo "BUILD FAILED"; exit 1; }
echo "built in $(( $(date +%s) - start )) s"
cd /tmp && $PY -m crossfuse info 2>&1 | tee "$OUT/info.txt"; cd - >/dev/null
# The cuda backend's cooperative recurrence first ran untested on a GPU: a short smoke run (LSTM and GRU, forward
# and backward against the reference) so that a hang costs 60 s, not the test budget. If it fails, the rest runs
# with the kernel switched off (its own gpu tests then fail and say so).
if ! timeout 60 $PY benchmarks/smoke_persistent.py >"$OUT/persistent_smoke.log" 2>&1; then
  echo "cooperative recurrence smoke run FAILED: the rest runs with CROSSFUSE_CUDA_PERSISTENT=0"
  export CROSSFUSE_CUDA_PERSISTENT=0
fi
tail -4 "$OUT/persistent_smoke.log"
# Host time per small launch (the triton cells' steps are host-bound): a few seconds.
timeout 60 $PY benchmarks/launch_overhead.py 2>&1 | tee "$OUT/launch_overhead.txt"
# Tests import the installed package, not the source tree (the compiled _C lives there).
xdist=""; $PY -c "import xdist" 2>/dev/null && xdist="-n 8"
timeout "${TEST_S:-210}" $PY -m pytest -q -ra -m gpu -p no:cacheprovider $xdist ${TESTS:-tests} \
  >"$OUT/gpu_tests.log" 2>&1
echo "tests rc=$? after $(( $(date +%s) - start )) s"; grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/gpu_tests.log" | tail -25
timeout "${BENCH_S:-150}" $PY -m crossfuse.bench --quick --out "$OUT" ${BENCH_ARGS:-} >"$OUT/bench.log" 2>&1
echo "bench rc=$?"; tail -45 "$OUT/bench.log"
echo "gpu_check done in $(( $(date +%s) - start )) s"
