"""pytest-benchmark of the CPU rnn_cell forward step: `pytest benchmarks/bench_rnn_cell.py`."""
from conftest import forward_step_benchmark

test_forward_step = forward_step_benchmark("rnn")
