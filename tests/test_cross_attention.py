"""cross_attention and cross_attention_varlen against the float64 reference: outputs, log-sum-exp and every
gradient under the tolerance rule; masks, GQA, odd head dims, NaN past lengths, empty rows, determinism,
dropout, varlen and bad input."""
import importlib

import pytest
import torch

import crossfuse
from crossfuse import reference
from harness import assert_within_rule, backend_cases, leaf_like

DEVICE_CASES = backend_cases(backends=("reference", "triton"))

# (Lq, Lk, D, masks): the length pairs and head dims the issue names, spread over the mask kinds.
CASES = [
    (1, 1, 1, "none"), (1, 257, 8, "kpm"), (77, 197, 40, "lengths"), (113, 203, 59, "segments"),
    (239, 1, 64, "none"), (799, 3, 80, "lengths"), (77, 197, 96, "segments_le"), (113, 203, 111, "kpm+lengths"),
    (37, 70, 128, "strided"), (77, 197, 256, "segments"),
]


def make_qkv(B, Hq, Hkv, Lq, Lk, D, dtype, device, strided=False):
    if strided:  # (B, L, H, 2D+1) buffers with NaN in the gaps, viewed as (B, H, L, D) with head-dim stride 2
        def mk(H, L):
            buf = torch.full((B, L, H, 2 * D + 1), float("nan"), dtype=dtype, device=device)
            view = buf[..., 1::2].transpose(1, 2)
            view.copy_(torch.randn(B, H, L, D, device=device).to(dtype))
            return view
        return mk(Hq, Lq), mk(Hkv, Lk), mk(Hkv, Lk)
    # views of (B, L, H, D) projections, as a layer makes them
    mk = lambda H, L: torch.randn(B, L, H, D, device=device).to(dtype).transpose(1, 2)  # noqa: E731
    return mk(Hq, Lq), mk(Hkv, Lk), mk(Hkv, Lk)


def make_masks(kind, B, Lq, Lk, device):
    kw = {}
    if "kpm" in kind:
        kpm = torch.rand(B, Lk, device=device) < 0.3
        kpm[0] = True  # batch 0 sees nothing: every row empty
        kw["key_padding_mask"] = kpm
    if "lengths" in kind:
        # batch 1 has no keys; batch 0 at least two (with one, p = 1 and the exact dk is 0, which fp32 PyTorch
        # hits exactly while any other summation order leaves ~1e-5)
        kw["kv_lengths"] = torch.tensor([max(Lk - 5, 2), 0][:B], device=device)
    if "segments" in kind:
        # sorted ids, so whole tiles get skipped, with a -1 run (sees nothing) in the queries
        qs = (torch.arange(Lq, device=device) * 4 // max(Lq, 1)).repeat(B, 1)
        qs[:, : Lq // 5] = -1
        ks = (torch.arange(Lk, device=device) * 4 // max(Lk, 1)).repeat(B, 1)
        kw.update(q_segment_ids=qs, kv_segment_ids=ks)
        if kind.endswith("_le"):
            kw["segment_match"] = "le"
    return kw


def attention_grads(impl, q, k, v, cot, **kw):
    leaves = [leaf_like(t) for t in (q, k, v)]
    out, lse = impl(*leaves, return_lse=True, **kw)
    grads = torch.autograd.grad((out.double() * cot).sum(), leaves)
    return out, lse, grads


def _ref(*a, **kw):
    kw.pop("backend", None)
    return reference.cross_attention(*a, **kw)


def assert_lse(got, ref64):
    fin = torch.isfinite(ref64)
    assert torch.equal(torch.isfinite(got.cpu()), fin.cpu()), "lse: -inf where the reference has a value, or back"
    assert torch.equal(got[~fin].cpu(), ref64[~fin].float().cpu()), "lse: empty rows must be -inf"
    if fin.any():
        assert (got[fin].double() - ref64[fin]).abs().max().item() <= 1e-4 * (1 + ref64[fin].abs().max().item())


@pytest.mark.parametrize("Lq,Lk,D,masks", CASES)
@pytest.mark.parametrize("backend,device,dtype", DEVICE_CASES)
def test_against_reference(backend, device, dtype, Lq, Lk, D, masks):
    B, Hq, Hkv = 2, 4, 2  # grouped-query attention throughout
    q, k, v = make_qkv(B, Hq, Hkv, Lq, Lk, D, dtype, device, strided=masks == "strided")
    kw = make_masks(masks, B, Lq, Lk, device)
    cot = torch.randn(B, Hq, Lq, D, dtype=torch.float64, device=device)
    up = lambda t: t.detach().double()  # noqa: E731
    ref_out, ref_lse, ref_g = attention_grads(_ref, up(q), up(k), up(v), cot, **kw)
    low_out, _, low_g = attention_grads(_ref, q, k, v, cot, **kw)
    out, lse, g = attention_grads(crossfuse.ops.cross_attention, q, k, v, cot, backend=backend, **kw)
    assert_within_rule("out", out, low_out, ref_out, dtype)
    assert_lse(lse, ref_lse)
    for name, a, lo, r in zip(("dq", "dk", "dv"), g, low_g, ref_g):
        assert_within_rule(name, a, lo, r, dtype)
    with torch.no_grad():  # the no-grad path gives the same values
        fast = crossfuse.ops.cross_attention(q, k, v, backend=backend, **kw)
    assert_within_rule("no-grad out", fast, low_out, ref_out, dtype)


@pytest.mark.parametrize("backend,device,dtype", backend_cases(backends=("reference", "triton"),
                                                               dtypes=(torch.float16,)))
def test_nan_past_lengths_is_never_read(backend, device, dtype):
    B, H, Lq, Lk, D = 2, 2, 33, 90, 24
    q, k, v = (t.contiguous() for t in make_qkv(B, H, H, Lq, Lk, D, dtype, device))
    lengths = torch.tensor([70, 17], device=device)
    clean = crossfuse.ops.cross_attention(q, k, v, kv_lengths=lengths, backend=backend)
    k2, v2 = k.clone(), v.clone()
    for b, n in enumerate(lengths.tolist()):
        k2[b, :, n:] = float("nan")
        v2[b, :, n:] = float("nan")
    leaves = [leaf_like(t) for t in (q, k2, v2)]
    out = crossfuse.ops.cross_attention(*leaves, kv_lengths=lengths, backend=backend)
    assert torch.isfinite(out).all() and torch.equal(out, clean)
    out.float().sum().backward()
    for t in leaves:
        assert torch.isfinite(t.grad).all()
    for b, n in enumerate(lengths.tolist()):
        assert (leaves[1].grad[b, :, n:] == 0).all() and (leaves[2].grad[b, :, n:] == 0).all()


@pytest.mark.parametrize("backend,device,dtype", DEVICE_CASES)
def test_fully_masked_rows_give_zero_and_zero_grad(backend, device, dtype):
    B, H, Lq, Lk, D = 3, 2, 20, 40, 16
    q, k, v = make_qkv(B, H, H, Lq, Lk, D, dtype, device)
    qs = torch.zeros(B, Lq, dtype=torch.long, device=device)
    qs[:, :7] = -1  # these queries see nothing
    ks = torch.zeros(B, Lk, dtype=torch.long, device=device)
    ks[1] = 5  # batch 1: no key matches any query
    lengths = torch.tensor([Lk, Lk, 0], device=device)  # batch 2: no keys at all
    leaves = [leaf_like(t) for t in (q, k, v)]
    out, lse = crossfuse.ops.cross_attention(*leaves, q_segment_ids=qs, kv_segment_ids=ks, kv_lengths=lengths,
                                             return_lse=True, backend=backend)
    out.float().pow(2).sum().backward()
    empty = torch.zeros(B, Lq, dtype=torch.bool, device=device)
    empty[:, :7] = True
    empty[1:] = True
    assert (out.transpose(1, 2)[empty] == 0).all() and torch.isinf(lse.transpose(1, 2)[empty]).all()
    assert torch.isfinite(out).all() and torch.isfinite(lse[~torch.isinf(lse)]).all()
    assert (leaves[0].grad.transpose(1, 2)[empty] == 0).all()
    assert (leaves[1].grad[1:] == 0).all() and (leaves[2].grad[1:] == 0).all()
    for t in leaves:
        assert torch.isfinite(t.grad).all()


@pytest.mark.parametrize("backend,device,dtype", backend_cases(backends=("triton",), dtypes=(torch.float16,)))
def test_deterministic_backward_is_bitwise_repeatable(backend, device, dtype):
    B, Hq, Hkv, Lq, Lk, D = 2, 4, 1, 45, 130, 32
    q, k, v = (leaf_like(t) for t in make_qkv(B, Hq, Hkv, Lq, Lk, D, dtype, device))
    out = crossfuse.ops.cross_attention(q, k, v, deterministic=True, backend=backend)
    cot = torch.randn_like(out)
    first = torch.autograd.grad(out, (q, k, v), cot, retain_graph=True)
    for _ in range(19):
        again = torch.autograd.grad(out, (q, k, v), cot, retain_graph=True)
        assert all(torch.equal(a, b) for a, b in zip(first, again))


def _next_seed(state):
    """The seed the op will draw after torch.manual_seed(state)."""
    torch.manual_seed(state)
    return int(torch.randint(0, 2 ** 31 - 1, (1,)).item())


@pytest.mark.parametrize("backend,device,dtype", backend_cases(backends=("triton",), dtypes=(torch.float32,)))
def test_dropout_mask_fraction_and_backward(backend, device, dtype):
    from crossfuse.kernels.cross_attention import dropout_mask
    p = 0.3
    keep = dropout_mask(2, 4, 256, 257, 1234, p, device)
    assert abs(keep.float().mean().item() - (1 - p)) < 0.01
    assert not torch.equal(keep, dropout_mask(2, 4, 256, 257, 1235, p, device))
    B, Hq, Hkv, Lq, Lk, D = 2, 2, 1, 29, 75, 24
    q, k, v = make_qkv(B, Hq, Hkv, Lq, Lk, D, dtype, device)
    lengths = torch.tensor([60, 75], device=device)
    mask = dropout_mask(B, Hq, Lq, Lk, _next_seed(7), p, device)
    cot = torch.randn(B, Hq, Lq, D, dtype=torch.float64, device=device)
    up = lambda t: t.detach().double()  # noqa: E731
    ref_out, _, ref_g = attention_grads(_ref, up(q), up(k), up(v), cot, dropout_p=p, dropout_mask=mask,
                                        kv_lengths=lengths)
    low_out, _, low_g = attention_grads(_ref, q, k, v, cot, dropout_p=p, dropout_mask=mask, kv_lengths=lengths)
    torch.manual_seed(7)
    out, _, g = attention_grads(crossfuse.ops.cross_attention, q, k, v, cot, dropout_p=p, kv_lengths=lengths,
                                backend=backend)
    assert_within_rule("out", out, low_out, ref_out, dtype)
    for name, a, lo, r in zip(("dq", "dk", "dv"), g, low_g, ref_g):
        assert_within_rule(name, a, lo, r, dtype)


@pytest.mark.parametrize("backend,device,dtype", DEVICE_CASES)
def test_varlen_matches_each_sequence_alone(backend, device, dtype):
    Hq, Hkv, D = 4, 2, 40
    lq, lk = [5, 1, 70, 0], [9, 33, 1, 4]
    cu_q = torch.tensor([0] + lq, device=device).cumsum(0).to(torch.int32)
    cu_k = torch.tensor([0] + lk, device=device).cumsum(0).to(torch.int32)
    q = leaf_like(torch.randn(sum(lq), Hq, D, device=device).to(dtype))
    k = leaf_like(torch.randn(sum(lk), Hkv, D, device=device).to(dtype))
    v = leaf_like(torch.randn(sum(lk), Hkv, D, device=device).to(dtype))
    out, lse = crossfuse.ops.cross_attention_varlen(q, k, v, cu_q, cu_k, max(lq), max(lk), return_lse=True,
                                                    backend=backend)
    cot = torch.randn(out.shape, dtype=torch.float64, device=device)
    dq, dk, dv = torch.autograd.grad((out.double() * cot).sum(), (q, k, v))
    assert out.shape == q.shape and lse.shape == (Hq, sum(lq))
    for b in range(len(lq)):
        sq, sk = slice(cu_q[b].item(), cu_q[b + 1].item()), slice(cu_k[b].item(), cu_k[b + 1].item())
        heads = lambda t, s: t[s].transpose(0, 1)[None]  # noqa: E731
        parts = [heads(t, s) for t, s in ((q, sq), (k, sk), (v, sk))]
        c = heads(cot, sq)
        ref_out, ref_lse, ref_g = attention_grads(_ref, *(p.detach().double() for p in parts), c)
        low_out, _, low_g = attention_grads(_ref, *parts, c)
        assert_within_rule(f"out[{b}]", heads(out, sq), low_out, ref_out, dtype)
        assert_lse(lse[:, sq][None], ref_lse)
        for name, got, lo, r in zip(("dq", "dk", "dv"), (heads(dq, sq), heads(dk, sk), heads(dv, sk)), low_g, ref_g):
            assert_within_rule(f"{name}[{b}]", got.to(dtype), lo, r, dtype)


def test_cpu_default_is_the_reference_and_it_has_no_nan():
    q, k, v = make_qkv(2, 2, 2, 5, 6, 8, torch.float32, "cpu")
    lengths = torch.tensor([0, 3])
    with crossfuse.use_backend(None):
        out = crossfuse.ops.cross_attention(q, k, v, kv_lengths=lengths)
    assert (out[0] == 0).all() and torch.isfinite(out).all()
    assert torch.allclose(out, reference.cross_attention(q, k, v, kv_lengths=lengths))


def test_zero_size_batch_and_length_one():
    for backend in ("reference", "triton"):
        q, k, v = make_qkv(0, 2, 2, 3, 4, 8, torch.float32, "cpu")
        assert crossfuse.ops.cross_attention(q, k, v, backend=backend).shape == (0, 2, 3, 8)
        q, k, v = (leaf_like(t) for t in make_qkv(1, 1, 1, 1, 1, 1, torch.float32, "cpu"))
        out = crossfuse.ops.cross_attention(q, k, v, backend=backend)
        assert torch.allclose(out, v)  # one key: the output is its value
        out.sum().backward()
        assert torch.isfinite(q.grad).all()


def test_bad_input_names_the_argument():
    f = crossfuse.ops.cross_attention
    q, k, v = make_qkv(2, 4, 2, 5, 6, 8, torch.float32, "cpu")
    with pytest.raises(TypeError, match="k to have dtype"):
        f(q, k.double(), v)
    with pytest.raises(ValueError, match="q to be 4-D"):
        f(q[0], k, v)
    with pytest.raises(ValueError, match="multiple of k's heads"):
        f(q[:, :3], k, v)
    with pytest.raises(ValueError, match="head dim from 1 to 256"):
        f(torch.randn(1, 1, 2, 300), torch.randn(1, 1, 2, 300), torch.randn(1, 1, 2, 300))
    with pytest.raises(ValueError, match="k's batch size"):
        f(q, k[:1], v[:1])
    with pytest.raises(TypeError, match="key_padding_mask of dtype torch.bool"):
        f(q, k, v, key_padding_mask=torch.zeros(2, 6))
    with pytest.raises(ValueError, match=r"key_padding_mask of shape \(2, 6\)"):
        f(q, k, v, key_padding_mask=torch.zeros(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="kv_lengths >= 0"):
        f(q, k, v, kv_lengths=torch.tensor([-1, 2]))
    with pytest.raises(TypeError, match="kv_lengths to have an integer dtype"):
        f(q, k, v, kv_lengths=torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="q_segment_ids and kv_segment_ids together"):
        f(q, k, v, q_segment_ids=torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="segment_match"):
        f(q, k, v, q_segment_ids=torch.zeros(2, 5, dtype=torch.long), kv_segment_ids=torch.zeros(2, 6, dtype=torch.long),
          segment_match="lt")
    with pytest.raises(ValueError, match="dropout_p in"):
        f(q, k, v, dropout_p=1.0)
    qp, kp = torch.randn(5, 4, 8), torch.randn(6, 2, 8)
    with pytest.raises(ValueError, match="cu_seqlens_q"):
        crossfuse.ops.cross_attention_varlen(qp, kp, kp, [0, 5], torch.tensor([0, 6]), 5, 6)
    with pytest.raises(TypeError, match="cu_seqlens_k to have an integer dtype"):
        crossfuse.ops.cross_attention_varlen(qp, kp, kp, torch.tensor([0, 5]), torch.tensor([0.0, 6.0]), 5, 6)
    with pytest.raises(RuntimeError, match="backend 'cuda' is not implemented for this op"):
        f(q, k, v, backend="cuda")


def test_custom_op_registered_for_compile():
    assert hasattr(torch.ops.crossfuse, "cross_attention") and hasattr(torch.ops.crossfuse, "cross_attention_backward")
    assert importlib.import_module("crossfuse.ops.cross_attention").OP in crossfuse._backend.ops()
