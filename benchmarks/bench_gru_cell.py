"""pytest-benchmark of the CPU gru_cell forward step: `pytest benchmarks/bench_gru_cell.py`."""
from conftest import forward_step_benchmark

test_forward_step = forward_step_benchmark("gru")
