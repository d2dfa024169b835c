"""pytest-benchmark of the CPU lstm_cell forward step: `pytest benchmarks/bench_lstm_cell.py`."""
import pytest

from conftest import cell_pair

SHAPES = [(1, 128), (8, 256), (64, 1024)]


@pytest.mark.parametrize("B,H", SHAPES)
@pytest.mark.parametrize("impl", ["torch.nn", "crossfuse-cpu"])
def test_forward_step(benchmark, no_grad, impl, B, H):
    peer, ours, x, state = cell_pair("lstm", B, H)
    cell = peer if impl == "torch.nn" else ours
    benchmark(cell, x, state)
