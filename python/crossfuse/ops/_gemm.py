"""fp32 matrix products for the cpu backend's ops (csrc/cpu/gemm.cpp): a packed register-tile GEMM (AVX-512 or
AVX2) that takes any strides, so transposed operands are never copied. On a 2-core AMD EPYC VM it ran nine of the
fusions' and layers' projection shapes 1.10-1.51x as fast as torch.mm (MKL) in interleaved runs; on a 2-core
Intel Xeon with AVX-512 torch.mm beat it on every shape tried (seven layer and fusion shapes: ours at 0.79-0.95x
of MKL's speed), so there (an Intel CPU with AVX-512) these products go to torch: CROSSFUSE_CPU_GEMM=own|torch
overrides the choice. Anything it does not cover (other dtypes or devices, an output without unit column stride,
GEMV-like shapes) goes to torch too. `linear` puts F.linear's forward and backward on it (the fusion modules'
projections on the cpu backend)."""
from __future__ import annotations

import os

import torch
from torch.autograd.function import once_differentiable
import torch.nn.functional as F

from crossfuse import _backend

_F32 = torch.float32
_MIN_ROWS = 16


def _own_gemm() -> bool:
    choice = os.environ.get("CROSSFUSE_CPU_GEMM", "auto")
    if choice in ("own", "torch"):
        return choice == "own"
    cpu = _backend.ext.cpu if _backend.ext is not None else None
    return cpu is not None and not (cpu.is_intel() and cpu.isa_detected() >= 4)


OWN = _own_gemm()  # crossfuse's GEMM (True) or torch's for the products below; the tests set it both ways


def _covered(t: torch.Tensor) -> bool:
    return t.dtype is _F32 and t.is_cpu


def mm(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None = None, *, beta: float = 0.0,
       bias: torch.Tensor | None = None) -> torch.Tensor:
    """a @ b (+ beta * out when beta != 0) (+ bias, a vector, on every row), written into `out` (a new tensor
    when None). For the kernels' own products only: no autograd runs through it."""
    M, K = a.shape
    N = b.shape[1]
    if out is None:
        if not OWN or M < _MIN_ROWS:  # torch's product, without first allocating its output here
            return torch.mm(a, b) if bias is None else torch.addmm(bias, a, b)
        out = _backend.empty((M, N), dtype=a.dtype, device=a.device)
    ext = _backend.ext
    # Packing costs a pass over each operand: below about 16 rows of C (a GEMV) that is as much as the product.
    if (OWN and M >= _MIN_ROWS and ext is not None and _covered(a) and _covered(b) and _covered(out)
            and (out.stride(1) == 1 or N <= 1) and (bias is None or (_covered(bias) and bias.stride(0) == 1))):
        # torch's thread count, as every CPU kernel takes it: torch.set_num_threads governs crossfuse too
        ext.cpu.sgemm(M, N, K, 1.0, a.data_ptr(), a.stride(0), a.stride(1), b.data_ptr(), b.stride(0), b.stride(1),
                      float(beta), out.data_ptr(), out.stride(0), 0 if bias is None else bias.data_ptr(),
                      torch.get_num_threads(), False)
    elif beta == 0.0:
        torch.mm(a, b, out=out) if bias is None else torch.addmm(bias, a, b, out=out)
    else:
        out.addmm_(a, b, beta=beta)
        if bias is not None:
            out.add_(bias)
    return out


class _Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return mm(x, weight.t(), bias=bias)

    @staticmethod
    @once_differentiable  # the kernels record no graph: a second derivative raises, never comes out wrong
    def backward(ctx, dy):
        x, weight = ctx.saved_tensors
        need = ctx.needs_input_grad
        dx = mm(dy, weight) if need[0] else None
        dw = mm(dy.t(), x) if need[1] else None
        db = dy.sum(0) if ctx.has_bias and need[2] else None
        return dx, dw, db


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear, forward and backward on the GEMM above for fp32 CPU tensors; F.linear itself otherwise and
    under torch.compile."""
    if (not OWN or torch.compiler.is_compiling() or _backend.ext is None or not (_covered(x) and _covered(weight))
            or (bias is not None and not _covered(bias)) or x.dim() < 2 or weight.dim() != 2
            or x.shape[-1] != weight.shape[1] or (bias is not None and bias.shape != (weight.shape[0],))):
        return F.linear(x, weight, bias)  # its own errors for malformed arguments
    x2 = x.reshape(-1, x.shape[-1])
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias)):
        y = _Linear.apply(x2, weight, bias)
    else:
        y = mm(x2, weight.t(), bias=bias)
    return y.view(*x.shape[:-1], weight.shape[0])
