"""Fusion operators benchmark: Block, Mutan, MFB and MFH on crossfuse's product-pool kernel against the eager
implementation of the same math (block.bootstrap's, crossfuse.reference.fusions: Block's Python loop over chunks,
the (rows, rank*S) products in memory, a broadcast side expanded), forward (inference) and forward+backward;
input_dims [2048, 2048], mm_dim 1600, chunks 20, rank 15 (factor 2), output 3000; B rows, or B questions against
36 image regions each."""
import torch

from crossfuse import _backend, use_backend
from crossfuse import nn as cnn
from crossfuse.bench.runner import Case
from crossfuse.reference import fusions as ref

DIMS, MM, OUT, REGIONS = (2048, 2048), 1600, 3000, 36
# (name, B, regions?)
GPU_SHAPES = [(n, B, r) for n in ("Block", "Mutan", "MFB", "MFH") for B, r in ((256, False), (1024, False),
                                                                                (256, True))]
QUICK_GPU = [(n, B, r) for n in ("Block", "Mutan", "MFB") for B, r in ((1024, False), (256, True))]
CPU_SHAPES = [(n, B, r) for n in ("Block", "Mutan", "MFB", "MFH") for B, r in ((256, False), (1024, False),
                                                                                (16, True))]
QUICK_CPU = [(n, B, r) for n in ("Block", "Mutan", "MFB") for B, r in ((256, False), (16, True))]


def make(name):
    if name == "Block":
        return cnn.Block(list(DIMS), OUT, mm_dim=MM, chunks=20, rank=15)
    if name == "Mutan":
        return cnn.Mutan(list(DIMS), OUT, mm_dim=MM, rank=15)
    return getattr(cnn, name)(list(DIMS), OUT, mm_dim=MM, factor=2)


def _flops(name, rows_q, rows):
    """Forward FLOPs: the input projections on their own rows, the pooling projections, linear_out."""
    d0, d1 = DIMS
    if name == "Block":
        proj, pool, out = 2 * MM * (d0 * rows_q + d1 * rows), 2 * 15 * MM * (MM // 20) * (rows_q + rows), MM
    elif name == "Mutan":
        proj, pool, out = 2 * MM * (d0 * rows_q + d1 * rows), 2 * 15 * MM * MM * (rows_q + rows), MM
    else:
        stages = 2 if name == "MFH" else 1
        proj, pool, out = 0, stages * 2 * 2 * MM * (d0 * rows_q + d1 * rows), stages * MM
    return proj + pool + 2 * rows * out * OUT


def cases(device, quick):
    if device.type == "cuda":
        shapes, dtypes = (QUICK_GPU if quick else GPU_SHAPES), [torch.bfloat16]
        ours = [b for b in ("triton",) if _backend.unavailable_reason(b, "cuda") is None]
    else:
        shapes, dtypes, ours = (QUICK_CPU if quick else CPU_SHAPES), [torch.float32], ["cpu"]
    out = []
    for dtype in dtypes:
        for name, B, regions in shapes:
            torch.manual_seed(0)
            m = make(name).to(device=device, dtype=dtype)
            x0 = torch.randn(B, DIMS[0], device=device, dtype=dtype).requires_grad_()
            x1 = torch.randn(*((B, REGIONS) if regions else (B,)), DIMS[1], device=device, dtype=dtype).requires_grad_()
            params = list(m.parameters())
            rows = B * (REGIONS if regions else 1)
            shape = f"{name} B={B}" + (f"x{REGIONS} regions" if regions else "")
            eager = lambda m=m, x0=x0, x1=x1: ref.forward(m, [x0, x1])  # noqa: E731 (bound now, not late)
            fwd, both = {"eager": _fwd(eager)}, {"eager": _fwd_bwd(eager, [x0, x1] + params)}
            for b in ours:
                fn = lambda b=b, m=m, x0=x0, x1=x1: _on(b, m, x0, x1)  # noqa: E731
                fwd[b], both[b] = _fwd(fn), _fwd_bwd(fn, [x0, x1] + params)
            flops = _flops(name, B, rows)
            nbytes = (x0.numel() + x1.numel() + sum(p.numel() for p in params) + rows * OUT) * x0.element_size()
            meta = {"module": name, "B": B, "regions": REGIONS if regions else 1}
            d = str(dtype).replace("torch.", "")
            out.append(Case(op="fusions", shape=shape, mode="fwd", dtype=d, impls=fwd, peer="eager", flops=flops,
                            bytes=nbytes, meta=meta))
            out.append(Case(op="fusions", shape=shape, mode="fwd+bwd", dtype=d, impls=both, peer="eager",
                            flops=3 * flops, bytes=2 * nbytes, meta=meta))
    return out


def _on(backend, m, x0, x1):
    with use_backend(backend):
        return m([x0, x1])


def _fwd(fn):
    def run():
        with torch.no_grad():
            fn()
    return run


def _fwd_bwd(fn, leaves):
    def run():
        torch.autograd.grad(fn().float().sum(), leaves)
    return run
