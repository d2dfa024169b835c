"""Verification machinery every op's tests use: the tolerance rule, NaN-guarded strided inputs, device cases."""
import pytest
import torch

HAS_GPU = torch.cuda.is_available()
# Small absolute floors under the "2 x PyTorch's own error" rule (FlashAttention's rule).
FLOOR = {torch.float32: 1e-5, torch.float16: 1e-4, torch.bfloat16: 1e-3}
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


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


def assert_within_rule(name, got, torch_lowp, ref64, dtype):
    """max|got - ref64| <= 2 * max|torch_lowp - ref64| + floor * max(1, max|ref64|), and got is finite."""
    if got is None or ref64 is None:
        assert got is None and ref64 is None, f"{name}: one of kernel/reference has no value"
        return
    assert got.shape == ref64.shape, f"{name}: shape {tuple(got.shape)} != reference {tuple(ref64.shape)}"
    assert got.dtype == dtype, f"{name}: dtype {got.dtype}, expected {dtype}"
    if got.numel() == 0:
        return
    got64, low64, ref = got.double().cpu(), torch_lowp.double().cpu(), ref64.cpu()
    assert torch.isfinite(got64).all(), f"{name}: non-finite values"
    err = (got64 - ref).abs().max().item()
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
