"""The cpu backend's fp32 GEMM (csrc/cpu/gemm.cpp, crossfuse.ops._gemm.mm) against float64 under the tolerance
rule: every operand layout, edge tiles, several cache blocks, both thread splits, the baseline kernels."""
import pytest
import torch

from crossfuse import _backend
from crossfuse.ops import _gemm
from harness import assert_within_rule, c_kernel_products, cpu_isa, isa_cases

ext = _backend.ext


@pytest.fixture(autouse=True)
def own_gemm(monkeypatch):
    """These tests are about crossfuse's GEMM: it runs even where the products go to torch.mm by default."""
    monkeypatch.setattr(_gemm, "OWN", True)


# (M, K, N): empty, single, odd and prime sizes, and ones past a cache block in each dimension (KC 256,
# MC 96, NC 2048) with edge tiles (MR 6, NR 16).
SHAPES = [(0, 5, 7), (16, 0, 7), (16, 7, 0), (1, 1, 1), (16, 1, 1), (17, 63, 113), (23, 257, 37), (97, 300, 50),
          (20, 40, 2100), (257, 7, 3)]


def _operand(rows, cols, layout):
    """(rows, cols) fp32 with the given layout; the gaps of a strided view hold NaN (read = NaN result)."""
    if layout == "rows":
        return torch.randn(rows, cols)
    if layout == "cols":
        return torch.randn(cols, rows).t()
    buf = torch.full((rows, 2 * cols + 1), float("nan"))
    view = buf[:, 1::2][:, :cols]
    view.copy_(torch.randn(rows, cols))
    return view


def _expected(a, b, c, beta):
    ref = a.double() @ b.double()
    low = a @ b
    if beta:
        ref = ref + beta * c.double()
        low = low + beta * c
    return ref, low


@pytest.mark.parametrize("M,K,N", SHAPES)
@pytest.mark.parametrize("la,lb", [("rows", "rows"), ("rows", "cols"), ("cols", "rows"), ("strided", "strided")])
def test_mm_against_float64(M, K, N, la, lb):
    a, b = _operand(M, K, la), _operand(K, N, lb)
    ref, low = _expected(a, b, None, 0.0)
    out = _gemm.mm(a, b)  # a NaN-filled output (tests): beta == 0 must not read it
    assert_within_rule("a @ b", out, low, ref, torch.float32)


@pytest.mark.parametrize("beta", [1.0, 0.5])
@pytest.mark.parametrize("M,K,N", [(17, 63, 113), (97, 300, 50), (0, 3, 4), (16, 0, 4)])
def test_mm_accumulates_into_a_strided_output(M, K, N, beta):
    a, b = torch.randn(M, K), torch.randn(K, N)
    buf = torch.full((M, N + 5), float("nan"))
    out = buf[:, 2:2 + N]  # row stride N + 5: the columns around it must stay untouched
    out.copy_(torch.randn(M, N))
    c = out.clone()
    ref, low = _expected(a, b, c, beta)
    assert _gemm.mm(a, b, out=out, beta=beta) is out
    assert_within_rule("a @ b + beta c", out, low, ref, torch.float32)
    assert torch.isnan(buf[:, :2]).all() and torch.isnan(buf[:, 2 + N:]).all()


@pytest.mark.parametrize("nthreads", [1, 2, 3])
@pytest.mark.parametrize("isa", isa_cases())
@pytest.mark.parametrize("M,K,N", [(300, 70, 40), (30, 70, 400), (5, 300, 2100), (13, 9, 17), (7, 20, 48)],
                         ids=["rows", "cols", "blocks", "edge", "panels"])
def test_thread_splits_and_each_isa_level(M, K, N, nthreads, isa):
    """Rows split when there are more row panels than column panels, columns otherwise; each instruction-set
    level's tiles (AVX-512's pairs of 16-column panels, with one panel or a partial one at the edge)."""
    a, b = torch.randn(K, M).t(), torch.randn(N, K).t()
    bias = torch.randn(N)
    for beta in (0.0, 0.5):
        out = torch.randn(M, N) if beta else torch.full((M, N), float("nan"))
        c = out.clone()
        with cpu_isa(isa):
            ext.cpu.sgemm(M, N, K, 1.0, a.data_ptr(), a.stride(0), a.stride(1), b.data_ptr(), b.stride(0),
                          b.stride(1), beta, out.data_ptr(), out.stride(0), bias.data_ptr(), nthreads=nthreads)
        ref, low = _expected(a, b, c, beta)
        assert_within_rule("a @ b + beta c + bias", out, low + bias, ref + bias.double(), torch.float32)


def test_generic_flag_runs_the_baseline_kernels():
    a, b = torch.randn(30, 70), torch.randn(70, 40)
    out = torch.full((30, 40), float("nan"))
    ext.cpu.sgemm(30, 40, 70, 1.0, a.data_ptr(), 70, 1, b.data_ptr(), 40, 1, 0.0, out.data_ptr(), 40, generic=True)
    ref, low = _expected(a, b, None, 0.0)
    assert_within_rule("a @ b", out, low, ref, torch.float32)


def test_outside_its_cover_torch_computes_it():
    a, b = torch.randn(5, 7, dtype=torch.bfloat16), torch.randn(7, 3, dtype=torch.bfloat16)
    torch.testing.assert_close(_gemm.mm(a, b), a @ b, rtol=0, atol=0)
    out = torch.zeros(3, 5).t()  # no unit column stride
    a, b = torch.randn(5, 7), torch.randn(7, 3)
    _gemm.mm(a, b, out=out)
    torch.testing.assert_close(out, a @ b)


@pytest.mark.parametrize("choice", ["own", "torch", "auto"])
def test_the_choice_between_crossfuse_and_torch(choice, monkeypatch):
    """CROSSFUSE_CPU_GEMM picks; by default crossfuse's GEMM except on an Intel CPU with AVX-512, where MKL won on
    every shape measured. Either way mm and linear give the product."""
    monkeypatch.setenv("CROSSFUSE_CPU_GEMM", choice)
    intel512 = ext.cpu.is_intel() and ext.cpu.isa_detected() >= 4
    own = {"own": True, "torch": False}.get(choice, not intel512)
    assert _gemm._own_gemm() is own
    monkeypatch.setattr(_gemm, "OWN", own)
    calls = []
    real = ext.cpu.sgemm
    monkeypatch.setattr(ext.cpu, "sgemm", lambda *a: calls.append(a[0]) or real(*a))
    a, b = torch.randn(30, 70), torch.randn(70, 40)
    ref, low = _expected(a, b, None, 0.0)
    assert_within_rule("mm", _gemm.mm(a, b), low, ref, torch.float32)
    w = torch.randn(40, 70, requires_grad=True)
    y = _gemm.linear(a, w)
    y.sum().backward()
    assert_within_rule("linear", y, a @ w.t(), a.double() @ w.double().t(), torch.float32)
    assert (len(calls) > 0) is own


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="negative size"):
        ext.cpu.sgemm(-1, 2, 2, 1.0, 0, 0, 0, 0, 0, 0, 0.0, 0, 0)
    with pytest.raises(ValueError, match="missing pointer"):
        ext.cpu.sgemm(2, 2, 2, 1.0, 0, 2, 1, 0, 2, 1, 0.0, 0, 2)


@pytest.mark.parametrize("lead", [(40,), (5, 7), (0,)], ids=["2d", "3d", "empty"])
@pytest.mark.parametrize("with_bias", [True, False])
def test_linear_forward_and_gradients_against_float64(lead, with_bias):
    """ops._gemm.linear (the fusion modules' projections on the cpu backend): output and the gradients of input,
    weight and bias under the tolerance rule, against F.linear in float64 and in fp32."""
    x = torch.randn(*lead, 37)
    w, b = torch.randn(29, 37), (torch.randn(29) if with_bias else None)
    dy = torch.randn(*lead, 29)

    def run(fn, dtype):
        leaves = [t.detach().to(dtype).clone().requires_grad_() if t is not None else None for t in (x, w, b)]
        y = fn(*leaves)
        y.backward(dy.to(dtype))
        return [y.detach()] + [t.grad if t is not None else None for t in leaves]

    got = run(_gemm.linear, torch.float32)
    low = run(torch.nn.functional.linear, torch.float32)
    ref = run(torch.nn.functional.linear, torch.float64)
    for name, g, lo, r in zip(("y", "dx", "dw", "db"), got, low, ref):
        if r is None:
            assert g is None
            continue
        assert_within_rule(name, g, lo, r, torch.float32)


def test_fusion_modules_keep_torch_linear_semantics_where_it_shows():
    """A hook on a projection sees it called (the module runs as torch.nn.Linear); the reference backend runs
    torch's own Linear; both agree with the cpu backend's GEMM path."""
    import crossfuse
    torch.manual_seed(0)
    m = crossfuse.nn.MFB([24, 20], 16, mm_dim=32, factor=2)
    x = [torch.randn(19, 24), torch.randn(19, 20)]
    fast = m(x)
    with crossfuse.use_backend("reference"):
        plain = m(x)
    # fp32 both ways, products summed in another order: a few ulps apart (their values against float64 are
    # test_linear_forward_and_gradients_against_float64's and test_fusions.py's)
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5)
    seen = []
    handle = m.linear_out.register_forward_hook(lambda mod, args, out: seen.append(out.shape))
    hooked = m(x)
    handle.remove()
    assert seen == [hooked.shape]
    # the hooked projection is torch's Linear, the fast one crossfuse's GEMM: the same few ulps as above
    torch.testing.assert_close(hooked, fast, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("through", ["torch-blas", "crossfuse"])
@pytest.mark.parametrize("M,K,N", [(1, 1, 1), (17, 63, 113), (256, 80, 120), (5, 0, 3)])
@pytest.mark.parametrize("la,lb", [("rows", "rows"), ("rows", "cols"), ("cols", "rows"), ("cols", "cols"),
                                   ("strided", "rows"), ("rows", "strided")])
def test_one_thread_products(M, K, N, la, lb, through):
    """What the whole-group fusion kernels call on each thread (sgemm_one_thread): through torch's BLAS (a
    row-major product passed as the column-major one of the transposes) or crossfuse's GEMM, every layout; an
    operand with no unit stride (strided) always takes crossfuse's. beta 0 leaves a NaN output unread."""
    with c_kernel_products(through == "torch-blas"):
        assert ext.cpu.has_blas_sgemm() is (through == "torch-blas")
        a, b = _operand(M, K, la), _operand(K, N, lb)
        for beta in (0.0, 0.5):
            out = torch.randn(M, N) if beta else torch.full((M, N), float("nan"))
            c = out.clone()
            _gemm.one_thread_mm(a, b, out, beta=beta)
            ref, low = _expected(a, b, c, beta)
            assert_within_rule("a @ b + beta c", out, low, ref, torch.float32)


def test_the_c_kernels_follow_the_gemm_choice(monkeypatch):
    """Where torch's GEMM is chosen (an Intel CPU with AVX-512, or CROSSFUSE_CPU_GEMM=torch) the single-threaded
    products of the C++ kernels go to torch's BLAS too; CROSSFUSE_CPU_GEMM=own keeps them on crossfuse's."""
    assert ext.cpu.has_blas_sgemm() is (not _gemm._own_gemm() and _gemm.torch_blas_sgemm() is not None)
    try:
        assert _gemm.share_torch_blas(False) is False and not ext.cpu.has_blas_sgemm()
    finally:
        _gemm.share_torch_blas(not _gemm._own_gemm())
