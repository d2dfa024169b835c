#!/usr/bin/env bash
# Nsight Compute on the cuda backend's cooperative recurrence (one forward and one backward launch of the smoke
# run's LSTM, T=20 B=8 H=256): where its ~14 us per step goes (barrier waits, L2 round trips, issue). Needs ncu
# (on Firecracker GPU machines it reads the counters; clocks left alone). Run after building in place; writes
# ncu_rnn.txt to $OUT (or benchmarks/results). About a minute.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
timeout 240 ncu --clock-control none -k regex:persistent_ -c 2 \
  --section LaunchStats --section Occupancy --section SchedulerStats --section WarpStateStats \
  --section MemoryWorkloadAnalysis python3 benchmarks/smoke_persistent.py >"$OUT/ncu_rnn.txt" 2>&1
echo "ncu rc=$?"; grep -E "Duration|Stall|Warp Cycles|Issued|Achieved Occupancy|L2 Hit|Block Limit" "$OUT/ncu_rnn.txt" | head -40
