"""pytest-benchmark of the CPU lstm_cell forward step: `pytest benchmarks/bench_lstm_cell.py`."""
from conftest import forward_step_benchmark

test_forward_step = forward_step_benchmark("lstm")
