"""fp32 matrix products for the cpu backend's ops (csrc/cpu/gemm.cpp): a packed 6x16 register-tile GEMM that
takes any strides, so transposed operands are never copied. On the 2-core AMD EPYC dev VM it ran the fusions'
and layers' projection shapes 0.9-2.0x as fast as torch.mm (MKL) in paired runs, mostly 1.1-1.3x. Anything it
does not cover (other dtypes or devices, an output without unit column stride, GEMV-like shapes) goes to torch."""
from __future__ import annotations

import torch

from crossfuse import _backend

_F32 = torch.float32
_MIN_ROWS = 16


def _covered(t: torch.Tensor) -> bool:
    return t.dtype is _F32 and t.is_cpu


def mm(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None = None, *, beta: float = 0.0) -> torch.Tensor:
    """a @ b, or a @ b + beta * out when beta != 0, written into `out` (a new tensor when None). For the
    kernels' own products only: no autograd runs through it."""
    M, K = a.shape
    N = b.shape[1]
    if out is None:
        out = _backend.empty((M, N), dtype=a.dtype, device=a.device)
    ext = _backend.ext
    # Packing costs a pass over each operand: below about 16 rows of C (a GEMV) that is as much as the product.
    if (M >= _MIN_ROWS and ext is not None and _covered(a) and _covered(b) and _covered(out)
            and (out.stride(1) == 1 or N <= 1)):
        # torch's thread count, which the extension's OpenMP runtime (not torch's copy) does not see
        ext.cpu.sgemm(M, N, K, 1.0, a.data_ptr(), a.stride(0), a.stride(1), b.data_ptr(), b.stride(0), b.stride(1),
                      float(beta), out.data_ptr(), out.stride(0), torch.get_num_threads(), False)
    elif beta == 0.0:
        torch.mm(a, b, out=out)
    else:
        out.addmm_(a, b, beta=beta)
    return out
