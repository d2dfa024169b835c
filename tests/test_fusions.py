"""Fusion operators: crossfuse.ops.product_pool on every backend against its float64 reference (value and every
gradient, one and two stages, both layouts, broadcast rows, empty batch), the 13 crossfuse.nn fusions against
their plain-PyTorch math (block.bootstrap's), MCB against the explicit outer-product sketch, block.bootstrap's
state_dict keys, dropout while training, bad input."""
import pytest
import torch

import crossfuse
from crossfuse import nn as cnn
from crossfuse.ops.fusions import compact_bilinear_pooling, product_pool, signed_sqrt_normalize
from crossfuse.reference import fusions as ref
from harness import HAS_GPU, assert_within_rule, backend_cases, c_kernel_products, leaf_like

# (G, R, S, K0, K1, lead0, lead1): equal rows, a question against regions both ways, an empty batch, and a shape
# with several column blocks and a K loop (S > BLOCK_J, K > BLOCK_K)
POOL_SHAPES = [(3, 4, 5, 7, 6, (5,), (5,)), (2, 3, 4, 5, 3, (3, 1), (3, 4)), (1, 2, 6, 4, 9, (2, 3), (2, 1)),
               (2, 3, 5, 4, 4, (0,), (0,)), (2, 3, 70, 40, 33, (3,), (3,)), (1, 2, 6, 300, 260, (2, 3), (2, 1))]
POOL_KINDS = [(False, True, None), (False, False, "relu"), (True, False, "relu"), (True, True, None)]


def _pool_inputs(G, R, S, K0, K1, lead0, lead1, two, dtype, device):
    r = lambda *s, k=1.0: (torch.randn(*s, device=device) * k).to(dtype)  # noqa: E731
    t = {"x0": r(*lead0, G * K0), "x1": r(*lead1, G * K1), "weight0": r(G, R * S, K0, k=K0 ** -0.5),
         "weight1": r(G, R * S, K1, k=K1 ** -0.5), "bias0": r(G, R * S, k=0.3), "bias1": r(G, R * S, k=0.3)}
    if two:
        t.update(weight0_2=r(G, R * S, K0, k=K0 ** -0.5), weight1_2=r(G, R * S, K1, k=K1 ** -0.5),
                 bias0_2=r(G, R * S, k=0.3), bias1_2=r(G, R * S, k=0.3))
    return t


def _pool_run(fn, t, cot, **kw):
    leaves = {k: leaf_like(v) for k, v in t.items()}
    z = fn(**leaves, **kw)
    grads = torch.autograd.grad((z.double() * cot).sum(), list(leaves.values()), allow_unused=True)
    return z, dict(zip(leaves, grads))


def _reference_pool(x0, x1, weight0, weight1, bias0, bias1, **kw):
    lead = torch.broadcast_shapes(x0.shape[:-1], x1.shape[:-1])
    z = ref.product_pool(x0.reshape(-1, x0.shape[-1]), x1.reshape(-1, x1.shape[-1]), weight0, weight1, bias0, bias1,
                         **kw)
    return z.reshape(*lead, z.shape[-1])


@pytest.mark.parametrize("G,R,S,K0,K1,lead0,lead1", POOL_SHAPES)
@pytest.mark.parametrize("two,rank_major,activation", POOL_KINDS)
@pytest.mark.parametrize("backend,device,dtype", backend_cases(backends=("reference", "cpu", "triton")))
def test_product_pool_against_reference(backend, device, dtype, two, rank_major, activation, G, R, S, K0, K1, lead0,
                                        lead1):
    t = _pool_inputs(G, R, S, K0, K1, lead0, lead1, two, dtype, device)
    t64 = {k: v.double() for k, v in t.items()}
    lead = torch.broadcast_shapes(lead0, lead1)
    cot = torch.randn(*lead, (2 if two else 1) * G * S, dtype=torch.float64, device=device)
    kw = dict(rank=R, rank_major=rank_major, activation=activation)
    ref_z, ref_g = _pool_run(_reference_pool, t64, cot, **kw)
    low_z, low_g = _pool_run(_reference_pool, t, cot, **kw)
    z, g = _pool_run(product_pool, t, cot, backend=backend, **kw)
    assert_within_rule("z", z, low_z, ref_z, dtype)
    for name in ref_g:
        assert_within_rule("d" + name, g[name], low_g[name], ref_g[name], dtype)


@pytest.mark.parametrize("G,R,S,K0,K1,lead0,lead1", [POOL_SHAPES[1], POOL_SHAPES[2], POOL_SHAPES[3]])
@pytest.mark.parametrize("two,rank_major,activation", POOL_KINDS)
@pytest.mark.parametrize("backend,device,dtype", backend_cases(backends=("triton",),
                                                               dtypes=(torch.float32, torch.bfloat16)))
def test_product_pool_triton_gemm_strategy(backend, device, dtype, two, rank_major, activation, G, R, S, K0, K1, lead0,
                                           lead1, monkeypatch):
    """The triton backend's other way (torch's GEMMs, then the Triton pooling), forced at small K."""
    monkeypatch.setattr(crossfuse.ops.fusions, "FUSED_MAX_K", 0)
    test_product_pool_against_reference(backend, device, dtype, two, rank_major, activation, G, R, S, K0, K1, lead0,
                                        lead1)


@pytest.mark.parametrize("G,R,S,K0,K1,lead0,lead1", POOL_SHAPES)
@pytest.mark.parametrize("two,rank_major,activation", POOL_KINDS)
@pytest.mark.parametrize("grouped", ["groups-torch-blas", "groups-crossfuse-gemm", "loop"])
def test_product_pool_cpu_strategies(grouped, two, rank_major, activation, G, R, S, K0, K1, lead0, lead1, monkeypatch):
    """The cpu backend's two ways, each forced whatever the thread count: whole groups per thread (one C++ call
    with the GEMMs inside, on torch's BLAS or on crossfuse's GEMM) and the group loop with each GEMM split over
    the threads."""
    monkeypatch.setattr(crossfuse.ops.fusions, "_grouped", lambda G, threads: grouped != "loop")
    with c_kernel_products(grouped == "groups-torch-blas"):
        test_product_pool_against_reference("cpu", "cpu", torch.float32, two, rank_major, activation, G, R, S, K0,
                                            K1, lead0, lead1)


def test_product_pool_cpu_grouped_past_the_kept_scratch(monkeypatch):
    """Whole groups per thread with more rows than the per-thread scratch keeps between calls (4M floats): the
    dU of a group then live in a buffer of its own."""
    monkeypatch.setattr(crossfuse.ops.fusions, "_grouped", lambda G, threads: True)
    test_product_pool_against_reference("cpu", "cpu", torch.float32, True, True, "relu", 2, 2, 300, 3, 5, (1800,),
                                        (1800,))


def _ssn_input(shape, dtype, layout):
    """Values with exact zeros (sqrt's kink) and, in the first row, an all-zero first slice (the eps branch)."""
    z = torch.randn(*shape) * 3
    z[..., ::5] = 0
    if z.numel():
        z.view(-1, shape[-1])[0, :2] = 0
    z = z.to(dtype)
    if layout == "strided":
        buf = torch.full((*shape[:-1], 2 * shape[-1]), float("nan"), dtype=dtype)
        buf[..., ::2] = z
        z = buf[..., ::2]
    return z


@pytest.mark.parametrize("layout", ["contiguous", "strided"])
@pytest.mark.parametrize("shape,groups", [((6, 20), 10), ((6, 20), 1), ((2, 3, 12), 4), ((1, 2), 2), ((3, 5), 5),
                                          ((0, 8), 2)])
@pytest.mark.parametrize("backend,dtype", [(b, d) for b in ("reference", "cpu")
                                           for d in (torch.float32, torch.float16, torch.bfloat16)])
def test_signed_sqrt_normalize_against_float64(backend, dtype, shape, groups, layout):
    """Block's and the normalize=True fusions' signed square root and L2 normalisation (the cpu backend's C++
    passes): value and gradient against float64, with zeros, an all-zero slice and one-value slices (a zero
    gradient, which a rounding residue times 1 / (2 sqrt|z|) would spoil), fp32 and half precision."""
    torch.manual_seed(0)
    z = _ssn_input(shape, dtype, layout)
    cot = torch.randn(shape, dtype=torch.float64)

    def run(v, b):
        leaf = leaf_like(v)
        y = signed_sqrt_normalize(leaf, groups, backend=b)
        return y, torch.autograd.grad((y.double() * cot).sum(), leaf)[0]

    ref_y, ref_g = run(z.double(), "reference")
    low_y, low_g = run(z, "reference")
    y, g = run(z, backend)
    assert_within_rule("y", y, low_y, ref_y, dtype)
    assert_within_rule("dz", g, low_g, ref_g, dtype)


def test_signed_sqrt_normalize_under_a_backend_product_pool_lacks():
    """Inside use_backend("cuda") (which product_pool has not) CPU tensors still normalise, on torch's math."""
    z = torch.randn(3, 8)
    with crossfuse.use_backend("cuda"):
        y = signed_sqrt_normalize(z, 2)
    with crossfuse.use_backend("reference"):
        torch.testing.assert_close(y, signed_sqrt_normalize(z, 2))


def test_signed_sqrt_normalize_bad_input():
    with pytest.raises(ValueError, match="groups dividing"):
        signed_sqrt_normalize(torch.randn(2, 10), groups=3)
    with pytest.raises(TypeError, match="floating-point"):
        signed_sqrt_normalize(torch.ones(2, 4, dtype=torch.int64))


# ---- the modules --------------------------------------------------------------------------------------------
D0, D1, OUT = 12, 10, 7
MODULES = {
    "LinearSum": lambda: cnn.LinearSum([D0, D1], OUT, mm_dim=16, normalize=True),
    "ConcatMLP": lambda: cnn.ConcatMLP([D0, D1], OUT, dimensions=[16, 9]),
    "MLB": lambda: cnn.MLB([D0, D1], OUT, mm_dim=16, normalize=True),
    "MFB": lambda: cnn.MFB([D0, D1], OUT, mm_dim=9, factor=3, normalize=True),
    "MFH": lambda: cnn.MFH([D0, D1], OUT, mm_dim=9, factor=2, normalize=True),
    "Mutan": lambda: cnn.Mutan([D0, D1], OUT, mm_dim=11, rank=3, normalize=True),
    "Tucker": lambda: cnn.Tucker([D0, D1], OUT, mm_dim=8, normalize=True),
    "Block": lambda: cnn.Block([D0, D1], OUT, mm_dim=20, chunks=4, rank=3),
    "Block-uneven-after_cat": lambda: cnn.Block([D0, D1], OUT, mm_dim=20, chunks=3, rank=2, pos_norm="after_cat"),
    "Block-shared": lambda: cnn.Block([D0, D0], OUT, mm_dim=12, chunks=3, rank=2, shared=True),
    "BlockTucker": lambda: cnn.BlockTucker([D0, D1], OUT, mm_dim=12, chunks=3),
    "MCB": lambda: cnn.MCB([D0, D1], OUT, mm_dim=32),
    "GMU": lambda: cnn.GMU([D0, D1], OUT),
    "FiLM": lambda: cnn.FiLM([D0, D1], OUT),
    "GatedTanh": lambda: cnn.GatedTanh([D0, D1], OUT, mm_dim=16),
}
# B rows each, or a question against 4 regions either way
LAYOUTS = {"2d": ((5,), (5,)), "question-regions": ((5,), (5, 4)), "regions-question": ((5, 4), (5, 1))}


def _module_inputs(name, layout, dtype):
    s0, s1 = LAYOUTS[layout]
    d1 = D0 if name == "Block-shared" else D1
    return [torch.randn(*s0, D0).to(dtype), torch.randn(*s1, d1).to(dtype)]


def _module_run(m, x, forward, cot):
    leaves = [leaf_like(v) for v in x]
    params = [p for p in m.parameters()]
    out = forward(m, leaves)
    grads = torch.autograd.grad((out.double() * cot).sum(), leaves + params)
    return out, grads


def _assert_module_close(names, got, low, ref64, dtype):
    """The rule for whole modules. Their signed square root is ill-conditioned near 0 (slope 1 / (2 sqrt|z|)), so
    single elements of any finite-precision implementation, PyTorch's included, carry errors set by luck: the rule
    is applied to the summed relative (Frobenius) errors of the output and all gradients, and each tensor must be
    within 10% of the float64 value or 4 x PyTorch's error. (The kernels pass the strict per-element rule in
    test_product_pool_against_reference.)"""
    ours = theirs = 0.0
    for n, a, lo, r in zip(names, got, low, ref64):
        assert a.dtype == dtype and torch.isfinite(a).all(), n
        scale = r.norm().item() + 1e-30
        e, e_torch = (a.double() - r).norm().item() / scale, (lo.double() - r).norm().item() / scale
        assert e <= max(0.1, 4 * e_torch), f"{n}: relative error {e:.2e} (PyTorch's {e_torch:.2e})"
        ours, theirs = ours + e, theirs + e_torch
    floor = torch.finfo(dtype).eps * len(names)
    assert ours <= 2 * theirs + floor, f"summed relative error {ours:.3e} > 2 x PyTorch's {theirs:.3e} + {floor:.1e}"


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", MODULES)
def test_module_against_reference(name, layout):
    torch.manual_seed(0)
    m = MODULES[name]()
    x = _module_inputs(name, layout, torch.float32)
    m64 = MODULES[name]().double()
    m64.load_state_dict(m.state_dict())
    x64 = [v.double() for v in x]
    out = ref.forward(m64, x64)
    cot = torch.randn_like(out)
    ref_out, ref_g = _module_run(m64, x64, ref.forward, cot)
    low_out, low_g = _module_run(m, x, ref.forward, cot)
    got, g = _module_run(m, x, lambda mod, xs: mod(xs), cot)
    names = ["out", "x0", "x1"] + [n for n, _ in m.named_parameters()]
    _assert_module_close(names, [got, *g], [low_out, *low_g], [ref_out, *ref_g], torch.float32)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("backend,device", [("cpu", "cpu"), pytest.param("triton", "cuda", marks=pytest.mark.gpu)]
                         + ([] if HAS_GPU else [("triton", "cpu")]))
@pytest.mark.parametrize("name", ["Block", "Mutan", "MFB", "MFH"])
def test_product_pool_modules_low_precision(name, backend, device, dtype):
    """The four product-pool modules on each backend in fp16 / bf16, broadcast regions, every gradient. No input
    activation for MFB / MFH: with relu a row can pool to all zeros, which block.bootstrap's normalisation turns
    into 0/0 in half precision (its eps rounds to 0), leaving no yardstick."""
    torch.manual_seed(1)
    make = MODULES[name] if name not in ("MFB", "MFH") else (
        lambda: getattr(cnn, name)([D0, D1], OUT, mm_dim=9, factor=2, normalize=True, activ_input=None))
    ml = make().to(dtype=dtype, device=device)
    xl = [v.to(device) for v in _module_inputs(name, "question-regions", dtype)]
    m64 = make().double().to(device)
    m64.load_state_dict(ml.state_dict())  # the yardstick sees exactly the rounded inputs and parameters
    x64 = [v.double() for v in xl]
    cot = torch.randn_like(ref.forward(m64, x64))
    ref_out, ref_g = _module_run(m64, x64, ref.forward, cot)
    low_out, low_g = _module_run(ml, xl, ref.forward, cot)
    with crossfuse.use_backend(backend):
        got, g = _module_run(ml, xl, lambda mod, xs: mod(xs), cot)
    names = ["out", "x0", "x1"] + [n for n, _ in ml.named_parameters()]
    _assert_module_close(names, [got, *g], [low_out, *low_g], [ref_out, *ref_g], dtype)


def test_block_hands_its_chunk_weights_over_without_a_copy():
    """Block keeps each side's chunk weights (and biases) as consecutive slices of one buffer, so the kernel gets
    them stacked without torch.stack's copy: after construction, after .to(), while an optimiser trains it (the
    same steps as a Block whose parameters lie apart, which copies), and after load_state_dict."""
    from crossfuse.nn.fusions import _stack
    torch.manual_seed(0)

    def stacked_in_place(m):
        for linears in (m.merge_linears0, m.merge_linears1):
            for name in ("weight", "bias"):
                ps = [getattr(lin, name) for lin in linears]
                st = _stack(ps)
                if st.data_ptr() != ps[0].data_ptr() or not torch.equal(st, torch.stack(ps)):
                    return False
        return True

    m = cnn.Block([D0, D1], OUT, mm_dim=16, chunks=4, rank=3)
    assert stacked_in_place(m)
    apart = cnn.Block([D0, D1], OUT, mm_dim=16, chunks=4, rank=3)
    apart.load_state_dict(m.state_dict())
    assert stacked_in_place(apart)
    for lin in list(apart.merge_linears0) + list(apart.merge_linears1):
        lin.weight.data, lin.bias.data = lin.weight.data.clone(), lin.bias.data.clone()
    assert not stacked_in_place(apart)
    x = [torch.randn(5, D0), torch.randn(5, D1)]
    for mod in (m, apart):
        opt = torch.optim.Adam(mod.parameters(), lr=0.05)
        for _ in range(3):
            opt.zero_grad()
            mod(x).pow(2).sum().backward()
            opt.step()
    assert stacked_in_place(m)
    for (name, a), b in zip(m.named_parameters(), apart.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    params = list(m.parameters())
    m.to(torch.bfloat16)
    assert stacked_in_place(m) and all(a is b for a, b in zip(params, m.parameters()))


def test_zero_batch_modules():
    for name, make in MODULES.items():
        m = make()
        x = [torch.randn(0, D0), torch.randn(0, D0 if name == "Block-shared" else D1)]
        out = m(x)
        assert out.shape == (0, OUT), name
        out.sum().backward()


# ---- MCB -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("d0,d1,D", [(5, 7, 11), (8, 8, 16), (3, 4, 64)])
def test_mcb_is_the_sketch_of_the_outer_product(d0, d1, D):
    g = torch.Generator().manual_seed(d0 * 100 + D)
    h0, h1 = torch.randint(0, D, (d0,), generator=g), torch.randint(0, D, (d1,), generator=g)
    s0 = torch.randint(0, 2, (d0,), generator=g).double() * 2 - 1
    s1 = torch.randint(0, 2, (d1,), generator=g).double() * 2 - 1
    x0 = torch.randn(4, d0, dtype=torch.float64, requires_grad=True)
    x1 = torch.randn(4, 3, d1, dtype=torch.float64, requires_grad=True)
    got = compact_bilinear_pooling(x0.unsqueeze(1), x1, h0, s0, h1, s1, D)
    want = ref.sketch_outer(x0.unsqueeze(1), x1, h0, s0, h1, s1, D)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    assert torch.autograd.gradcheck(lambda a, b: compact_bilinear_pooling(a.unsqueeze(1), b, h0, s0, h1, s1, D),
                                    (x0, x1))
    # fp32 inputs give fp32 outputs computed by an fp32 FFT
    got32 = compact_bilinear_pooling(x0.float().unsqueeze(1), x1.float(), h0, s0.float(), h1, s1.float(), D)
    assert got32.dtype == torch.float32
    torch.testing.assert_close(got32.double(), want, rtol=1e-4, atol=1e-4)


# ---- compatibility, training paths, bad input ------------------------------------------------------------------
def test_state_dict_keys_are_block_bootstraps():
    keys = lambda m: sorted(m.state_dict())  # noqa: E731
    b = cnn.Block([6, 5], 3, mm_dim=8, chunks=2, rank=2)
    assert keys(b) == sorted(["linear0.weight", "linear0.bias", "linear1.weight", "linear1.bias", "linear_out.weight",
                              "linear_out.bias"] + [f"merge_linears{s}.{c}.{p}" for s in (0, 1) for c in (0, 1)
                                                    for p in ("weight", "bias")])
    assert b.merge_linears0[1].weight.shape == (8, 4)
    m = cnn.Mutan([6, 5], 3, mm_dim=4, rank=2)
    assert m.merge_linear0.weight.shape == (8, 4) and "merge_linear1.bias" in m.state_dict()
    h = cnn.MFH([6, 5], 3, mm_dim=4, factor=2)
    assert {"linear0_0.weight", "linear1_1.bias", "linear_out.weight"} <= set(h.state_dict())
    assert h.linear_out.weight.shape == (3, 8)
    c = cnn.ConcatMLP([6, 5], 3, dimensions=[7])
    assert keys(c) == ["mlp.linears.0.bias", "mlp.linears.0.weight", "mlp.linears.1.bias", "mlp.linears.1.weight"]
    mcb = cnn.MCB([6, 5], 3, mm_dim=16)
    assert {"mcb.sketch1.h", "mcb.sketch1.s", "mcb.sketch2.h", "mcb.sketch2.s"} <= set(mcb.state_dict())
    assert cnn.BlockTucker([6, 5], 3, mm_dim=6, chunks=2).bilinears[0].weight.shape == (3, 3, 3)
    assert cnn.Block([4, 4], 2, mm_dim=1600).sizes_list == [80] * 20
    assert cnn.Block([4, 4], 2, mm_dim=10, chunks=4).sizes_list == [3, 3, 3, 1]
    assert cnn.fusions.chunk_sizes(7, 5) == [2, 2, 1, 1, 1]
    with pytest.raises(ValueError, match="chunks"):
        cnn.fusions.chunk_sizes(10, 6)


@pytest.mark.parametrize("name", ["MFB", "MFH"])
def test_dropout_inside_the_pooling(name):
    torch.manual_seed(0)
    kw = dict(dropout_input=0.3, **({"dropout_pre_norm": 0.2} if name == "MFB" else {"dropout_pre_lin": 0.2}))
    m = getattr(cnn, name)([D0, D1], OUT, mm_dim=6, factor=2, **kw)
    x = [torch.randn(4, D0), torch.randn(4, D1)]
    m.train()
    torch.manual_seed(3)
    a = m(x)
    torch.manual_seed(3)
    b = ref.forward(m, x)
    torch.testing.assert_close(a, b)  # the same random masks: the plain math ran
    m.eval()
    torch.testing.assert_close(m(x), ref.forward(m, x), rtol=1e-5, atol=1e-5)


def test_bad_input():
    m = cnn.Block([6, 5], 3, mm_dim=8, chunks=2, rank=2)
    with pytest.raises(TypeError, match="list"):
        m(torch.randn(2, 6))
    with pytest.raises(ValueError, match=r"x\[1\] of shape"):
        m([torch.randn(2, 6), torch.randn(2, 4)])
    with pytest.raises(ValueError, match="broadcast"):
        m([torch.randn(2, 3, 6), torch.randn(4, 5, 5)])
    with pytest.raises(ValueError, match="input_dims"):
        cnn.Mutan([6], 3)
    with pytest.raises(ValueError, match="pos_norm"):
        cnn.Block([6, 5], 3, pos_norm="middle")
    with pytest.raises(ValueError, match="activ_input"):
        cnn.MLB([6, 5], 3, activ_input="no_such_activation")
    w = torch.randn(1, 6, 4)
    with pytest.raises(TypeError, match="x0"):
        product_pool([1.0], torch.randn(2, 4), w, w, rank=2)
    with pytest.raises(TypeError, match="dtype"):
        product_pool(torch.randn(2, 4), torch.randn(2, 4).double(), w, w, rank=2)
    with pytest.raises(ValueError, match="rank"):
        product_pool(torch.randn(2, 4), torch.randn(2, 4), w, w, rank=4)
    with pytest.raises(ValueError, match="weight1 of shape"):
        product_pool(torch.randn(2, 4), torch.randn(2, 4), w, torch.randn(2, 6, 4), rank=2)
    with pytest.raises(ValueError, match="activation"):
        product_pool(torch.randn(2, 4), torch.randn(2, 4), w, w, rank=2, activation="gelu")
    with pytest.raises(ValueError, match="biases"):
        product_pool(torch.randn(2, 4), torch.randn(2, 4), w, w, torch.randn(1, 6), rank=2)


@pytest.mark.parametrize("backend", ["cpu", "triton"] if not torch.cuda.is_available() else ["cpu"])
@pytest.mark.parametrize("two", [False, True])
def test_product_pool_custom_op_passes_opcheck(backend, two):
    """Schema, fake tensors (no aliasing outputs), autograd registration and AOT dispatch of the custom op."""
    from crossfuse.ops.fusions import _pool_op
    torch.manual_seed(0)
    x0, x1 = torch.randn(3, 6, requires_grad=True), torch.randn(6, 5, requires_grad=True)
    w = [torch.randn(1, 10, k, requires_grad=True) for k in (6, 5, 6, 5)]
    b = [torch.randn(1, 10, requires_grad=True) for _ in range(4)]
    second = (w[2], b[2], w[3], b[3]) if two else (None,) * 4
    torch.library.opcheck(_pool_op, (backend, 2, False, True, x0, x1, w[0], b[0], w[1], b[1], *second))
