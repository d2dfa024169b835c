#!/usr/bin/env bash
# The one prepared script for a machine with one GPU and no network (Python 3.12, torch 2.11, triton 3.6,
# nvcc 13, scikit-build-core, pybind11, pytest preinstalled). Builds in place, runs the gpu tests and the
# quick benchmark, copies logs and results to $OUT when set. Budget: under 8 minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TRITON_DEFAULT_FP_FUSION=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
start=$(date +%s)
timeout 240 pip install --no-build-isolation --no-deps -q . 2>&1 | tail -20 | tee "$OUT/build.log"
python -m crossfuse info 2>&1 | tee "$OUT/info.txt"
timeout 240 python -m pytest -q -ra -m gpu -p no:cacheprovider tests 2>&1 | tee "$OUT/gpu_tests.log" | tail -30
timeout 90 python -m crossfuse.bench --quick --out "$OUT" 2>&1 | tee "$OUT/bench.log" | tail -40
echo "gpu_check done in $(( $(date +%s) - start )) s"
