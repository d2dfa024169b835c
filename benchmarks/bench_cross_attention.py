"""pytest-benchmark of cross_attention on CPU, where it runs on the reference path, against SDPA with a boolean
mask (`pytest benchmarks/bench_cross_attention.py`). The GPU numbers come from `python -m crossfuse.bench`."""
import pytest
import torch
import torch.nn.functional as F

import crossfuse


@pytest.mark.parametrize("impl", ["sdpa", "crossfuse-reference"])
def test_text_to_image_padded(benchmark, no_grad, impl):
    B, H, Lq, Lk, D = 4, 12, 77, 257, 64
    q, k, v = torch.randn(B, H, Lq, D), torch.randn(B, H, Lk, D), torch.randn(B, H, Lk, D)
    lengths = torch.randint(Lk // 4, Lk + 1, (B,))
    if impl == "sdpa":
        keep = (torch.arange(Lk)[None, :] < lengths[:, None])[:, None, None, :]
        benchmark(F.scaled_dot_product_attention, q, k, v, attn_mask=keep)
    else:
        benchmark(crossfuse.ops.cross_attention, q, k, v, kv_lengths=lengths)
