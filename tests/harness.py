"""Verification machinery every op's tests use: the tolerance rule, NaN-guarded strided inputs, device cases,
the CPU instruction-set levels."""
import contextlib
import importlib

import pytest
import torch

# The module, not the function of the same name that crossfuse.reference exports.
_ref_rnn_cell = importlib.import_module("crossfuse.reference.rnn_cell")

HAS_GPU = torch.cuda.is_available()
# Small floors under the "2 x PyTorch's own error" rule (FlashAttention's rule), in units of max(1, max|ref|).
# For fp16/bf16 one unit of the dtype's resolution: on tiny or lucky cases PyTorch's own error can be a
# fraction of an ulp, and a kernel that rounds once more in another place must not fail on that alone.
FLOOR = {torch.float32: 1e-5, torch.float16: torch.finfo(torch.float16).eps,
         torch.bfloat16: torch.finfo(torch.bfloat16).eps}
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


# The levels of the cpu backend's hand-written kernels (csrc/include/crossfuse/cpu_isa.h): each runs on a CPU
# that has its instructions, so one machine with AVX-512 tests all three.
ISA_LEVELS = {"avx512": 4, "avx2": 3, "baseline": 0}


@contextlib.contextmanager
def cpu_isa(level: int):
    """The cpu backend's kernels capped at `level` for the block."""
    from crossfuse import _backend
    cpu = _backend.ext.cpu
    before = cpu.isa()
    cpu.set_isa_cap(level)
    try:
        yield
    finally:
        cpu.set_isa_cap(before)


@contextlib.contextmanager
def c_kernel_products(torch_blas: bool):
    """The C++ kernels' one-thread products on torch's BLAS (skipped, with the reason, where this torch exports no
    working one) or on crossfuse's GEMM for the block; the default choice afterwards."""
    from crossfuse.ops import _gemm
    if torch_blas and _gemm.torch_blas_sgemm() is None:
        pytest.skip("this torch exports no working sgemm_ (BLAS) from libtorch_cpu")
    try:
        _gemm.share_torch_blas(torch_blas)
        yield
    finally:
        _gemm.share_torch_blas(not _gemm._own_gemm())


def isa_cases():
    """One case per level; a level above this CPU's is skipped with the reason (nothing could run it)."""
    from crossfuse import _backend
    have = _backend.ext.cpu.isa_detected() if _backend.ext is not None else 0
    return [pytest.param(level, id=name, marks=() if level <= have else pytest.mark.skip(
        reason=f"this CPU lacks the {name} instructions")) for name, level in ISA_LEVELS.items()]


def backend_cases(backends=("reference", "cpu", "triton", "cuda"), dtypes=DTYPES):
    """(backend, device, dtype) cases: CPU ones here (triton interpreted), CUDA ones marked gpu.
    The reference runs in fp32 only: in low precision it is the yardstick itself."""
    cases = []
    for b in backends:
        for dt in dtypes if b != "reference" else (torch.float32,):
            name = str(dt).replace("torch.", "")
            if b in ("reference", "cpu") or (b == "triton" and not HAS_GPU):
                cases.append(pytest.param(b, "cpu", dt, id=f"{b}-cpu-{name}"))
            if b in ("reference", "triton", "cuda"):
                cases.append(pytest.param(b, "cuda", dt, id=f"{b}-cuda-{name}", marks=pytest.mark.gpu))
    return cases


def assert_within_rule(name, got, torch_lowp, ref64, dtype, allowance=None):
    """max|got - ref64| <= 2 * max|torch_lowp - ref64| + floor * max(1, max|ref64|), and got is finite.
    `allowance` (a tensor like ref64, or None) is subtracted from |got - ref64| element by element first."""
    if got is None or ref64 is None:
        assert got is None and ref64 is None, f"{name}: one of kernel/reference has no value"
        return
    assert got.shape == ref64.shape, f"{name}: shape {tuple(got.shape)} != reference {tuple(ref64.shape)}"
    assert got.dtype == dtype, f"{name}: dtype {got.dtype}, expected {dtype}"
    if got.numel() == 0:
        return
    got64, low64, ref = got.double().cpu(), torch_lowp.double().cpu(), ref64.cpu()
    assert torch.isfinite(got64).all(), f"{name}: non-finite values"
    diff = (got64 - ref).abs()
    if allowance is not None:
        diff = (diff - allowance.cpu()).clamp_min(0)
    err = diff.max().item()
    base = (low64 - ref).abs().max().item()
    # The floor is in units of the values' scale: a gradient summed over hundreds of rows can be ~100, and an
    # absolute 1e-5 there is below fp32's resolution (PyTorch can hit 0 error by luck, e.g. a softmax of one key).
    floor = FLOOR[dtype] * max(1.0, ref.abs().max().item())
    bound = 2 * base + floor
    assert err <= bound, f"{name}: max error {err:.3e} > 2 x PyTorch's {base:.3e} + {floor:.1e}"


def strided(shape, dtype, device, gen_scale=1.0):
    """A non-contiguous view (every other column of a wider buffer) whose gaps hold NaN:
    a kernel that reads outside the view's elements produces NaN."""
    *lead, last = shape
    buf = torch.full((*lead, 2 * last + 1), float("nan"), dtype=dtype, device=device)
    view = buf[..., 1::2]
    view.copy_(torch.randn(shape, device=device).mul_(gen_scale).to(dtype))
    return view


def leaf_like(v):
    """A grad-requiring leaf with v's values and v's strides (NaN in any gaps), unlike clone(),
    which makes non-dense views contiguous."""
    with torch.no_grad():
        leaf = torch.empty_strided(v.shape, v.stride(), dtype=v.dtype, device=v.device)
        if leaf.numel():
            span = 1 + sum((n - 1) * s for n, s in zip(v.shape, v.stride()))
            leaf.as_strided((span,), (1,)).fill_(float("nan"))
        leaf.copy_(v)
    return leaf.requires_grad_()


class _KinkAt(torch.autograd.Function):
    """relu whose derivative switches at `at` instead of 0 (the values are relu's)."""

    @staticmethod
    def forward(ctx, x, at):
        ctx.save_for_backward(x)
        ctx.at = at
        return x.clamp_min(0)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * (x > ctx.at), None


def relu_kink_allowance(run_reference, ref_grads, dtype):
    """relu's derivative jumps at 0, so a pre-activation within rounding of 0 may take either side in any
    low-precision implementation (PyTorch's own included, by luck or not). Returns, per gradient name, how far
    each element of the float64 reference's gradient moves when the kink is shifted by +-eps(dtype)/2 times the
    pre-activations' scale (about 1 here): nonzero only in rows that such an element feeds. None for fp32.
    run_reference() -> dict of float64 gradients."""
    if dtype == torch.float32:
        return {k: None for k in ref_grads}
    d = torch.finfo(dtype).eps / 2
    acts = _ref_rnn_cell.ACTIVATIONS
    moved = {k: None for k in ref_grads}
    for at in (d, -d):
        acts["relu"] = lambda x, at=at: _KinkAt.apply(x, at)  # noqa: E731
        try:
            shifted = run_reference()
        finally:
            acts["relu"] = torch.relu
        for k, g in shifted.items():
            if g is not None and ref_grads[k] is not None:
                m = (g - ref_grads[k]).abs()
                moved[k] = m if moved[k] is None else moved[k] + m
    return moved
