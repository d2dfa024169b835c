"""fp32 matrix products for the cpu backend's ops (csrc/cpu/gemm.cpp): a packed register-tile GEMM (AVX-512 or
AVX2) that takes any strides, so transposed operands are never copied. On a 2-core AMD EPYC VM it ran nine of the
fusions' and layers' projection shapes 1.10-1.51x as fast as torch.mm (MKL) in interleaved runs; on a 2-core
Intel Xeon with AVX-512 torch.mm beat it on every shape tried (seven layer and fusion shapes: ours at 0.79-0.95x
of MKL's speed), so there (an Intel CPU with AVX-512) these products go to torch: CROSSFUSE_CPU_GEMM=own|torch
overrides the choice. Anything it does not cover (other dtypes or devices, an output without unit column stride,
GEMV-like shapes) goes to torch too. `linear` puts F.linear's forward and backward on it (the fusion modules'
projections on the cpu backend). The C++ kernels that run one product per thread follow the same choice: where
torch's GEMM wins they call the BLAS inside torch (share_torch_blas)."""
from __future__ import annotations

import ctypes
import os

import torch
import torch.nn.functional as F

from crossfuse import _backend
from crossfuse._autograd import once_differentiable

_F32 = torch.float32
_MIN_ROWS = 16


def _own_gemm() -> bool:
    choice = os.environ.get("CROSSFUSE_CPU_GEMM", "auto")
    if choice in ("own", "torch"):
        return choice == "own"
    cpu = _backend.ext.cpu if _backend.ext is not None else None
    return cpu is not None and not (cpu.is_intel() and cpu.isa_detected() >= 4)


OWN = _own_gemm()  # crossfuse's GEMM (True) or torch's for the products below; the tests set it both ways


def torch_blas_sgemm() -> int | None:
    """The address of the BLAS sgemm_ (Fortran interface) inside torch's libtorch_cpu, where it exports one (MKL
    on x86 builds), checked on a small product of every layout; None where absent or wrong. The C++ kernels that
    run one product per thread (the fusions' whole groups) call it where torch's GEMM is the faster one: a torch
    call cannot run on one OpenMP thread of theirs."""
    ext = _backend.ext
    if ext is None or not hasattr(ext.cpu, "set_blas_sgemm"):
        return None
    try:
        lib = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so"))
        address = ctypes.cast(lib.sgemm_, ctypes.c_void_p).value
    except (OSError, AttributeError):
        return None
    if not address:
        return None
    was = ext.cpu.has_blas_sgemm()
    ext.cpu.set_blas_sgemm(address)
    try:
        good = all(_one_thread_product_is_right(ta, tb) for ta in (False, True) for tb in (False, True))
    finally:
        if not was:
            ext.cpu.set_blas_sgemm(0)
    return address if good else None


def _one_thread_product_is_right(ta, tb):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(3, 5, generator=g).t() if ta else torch.randn(5, 3, generator=g)
    b = torch.randn(4, 3, generator=g).t() if tb else torch.randn(3, 4, generator=g)
    c = torch.randn(5, 4, generator=g)
    want = a.double() @ b.double() + 0.5 * c.double()
    one_thread_mm(a, b, c, beta=0.5)
    return torch.allclose(c.double(), want, rtol=1e-5, atol=1e-5)


def one_thread_mm(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor, *, beta: float = 0.0) -> torch.Tensor:
    """out = a @ b + beta * out on the calling thread, fp32 CPU, through the BLAS set by share_torch_blas where
    there is one (for tests of what the C++ kernels call)."""
    _backend.ext.cpu.sgemm_one_thread(a.shape[0], b.shape[1], a.shape[1], 1.0, a.data_ptr(), a.stride(0),
                                      a.stride(1), b.data_ptr(), b.stride(0), b.stride(1), float(beta),
                                      out.data_ptr(), out.stride(0))
    return out


_TORCH_BLAS: int | None = None


def share_torch_blas(on: bool) -> bool:
    """Point the C++ kernels' single-threaded products at torch's BLAS (on) or at crossfuse's GEMM (off); True
    when torch's is in use after the call."""
    global _TORCH_BLAS
    ext = _backend.ext
    if ext is None or not hasattr(ext.cpu, "set_blas_sgemm"):
        return False
    if on and _TORCH_BLAS is None:
        _TORCH_BLAS = torch_blas_sgemm() or 0
    ext.cpu.set_blas_sgemm(_TORCH_BLAS if on else 0)
    return ext.cpu.has_blas_sgemm()


share_torch_blas(not OWN)


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
