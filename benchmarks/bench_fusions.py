"""pytest-benchmark of the product-pool fusions on CPU (`pytest benchmarks/bench_fusions.py`): forward+backward of
crossfuse's Block / Mutan / MFB against the eager block.bootstrap math on the same module, B questions against 36
image regions (a smaller mm_dim than crossfuse.bench's so a round takes seconds, not minutes)."""
import pytest
import torch

from crossfuse import nn as cnn
from crossfuse.reference import fusions as ref

MAKE = {"Block": lambda: cnn.Block([512, 512], 100, mm_dim=400, chunks=10, rank=10),
        "Mutan": lambda: cnn.Mutan([512, 512], 100, mm_dim=400, rank=10),
        "MFB": lambda: cnn.MFB([512, 512], 100, mm_dim=400, factor=2)}


@pytest.mark.parametrize("impl", ["eager", "crossfuse-cpu"])
@pytest.mark.parametrize("name", list(MAKE))
def test_fwd_bwd_question_regions(benchmark, name, impl):
    torch.manual_seed(0)
    m = MAKE[name]()
    x = [torch.randn(16, 512, requires_grad=True), torch.randn(16, 36, 512, requires_grad=True)]
    leaves = x + list(m.parameters())
    fwd = (lambda: ref.forward(m, x)) if impl == "eager" else (lambda: m(x))
    benchmark(lambda: torch.autograd.grad(fwd().sum(), leaves))
