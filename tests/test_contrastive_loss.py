"""contrastive_loss against the float64 reference that materialises the logits (value and every gradient under
the tolerance rule), its peak memory (linear in B), ClipLoss / SigLipLoss with open_clip's semantics, over two
gloo processes too, and bad input."""
import os
import sys

import pytest
import torch
import torch.multiprocessing as mp

import crossfuse
from crossfuse.reference import contrastive_loss as ref_loss
from harness import HAS_GPU, assert_within_rule, backend_cases, leaf_like

DEVICE_CASES = backend_cases(backends=("reference", "cpu", "triton"))
# the triton backend's devices: CUDA where there is a GPU (marked gpu), else the CPU under the interpreter
TRITON_DEVICES = [pytest.param("cuda", marks=pytest.mark.gpu)] + ([] if HAS_GPU else ["cpu"])
# (B, D, labels, label_smoothing, reduction, scale)
CASES = [(1, 3, None, 0.0, "mean", 10.0), (37, 59, None, 0.0, "mean", 100.0), (70, 130, "dup", 0.1, "sum", 30.0),
         (33, 16, "dup", 0.0, "none", 100.0)]


def _embeddings(B, D, dtype, device):
    e = torch.randn(2, B, D, device=device)
    e = e / e.norm(dim=-1, keepdim=True)
    return e[0].to(dtype), e[1].to(dtype)


def _run(fn, I, T, scale, bias, cot, **kw):
    leaves = [leaf_like(I), leaf_like(T), scale.detach().clone().requires_grad_()]
    if bias is not None:
        leaves.append(bias.detach().clone().requires_grad_())
    loss = fn(leaves[0], leaves[1], leaves[2], logit_bias=leaves[3] if bias is not None else None, **kw)
    grads = torch.autograd.grad((loss.double() * cot).sum(), leaves)
    return loss, grads


@pytest.mark.parametrize("B,D,labels,eps,reduction,scale", CASES)
@pytest.mark.parametrize("backend,device,dtype", DEVICE_CASES)
@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_against_reference(kind, backend, device, dtype, B, D, labels, eps, reduction, scale):
    I, T = _embeddings(B, D, dtype, device)
    lab = torch.randint(0, max(1, B // 3), (B,), device=device) if labels == "dup" else None
    sc = torch.tensor(scale, device=device)
    bias = torch.tensor(-10.0, device=device) if kind == "siglip" else None
    kw = dict(kind=kind, labels=lab, label_smoothing=eps if kind == "clip" else 0.0, reduction=reduction)
    cot = torch.randn(B if reduction == "none" else (), dtype=torch.float64, device=device)
    _check_against_reference(I, T, sc, bias, cot, dtype, backend, **kw)


def _check_against_reference(I, T, sc, bias, cot, dtype, backend, **kw):
    """The loss and every gradient against the float64 reference, by the harness's tolerance rule."""
    def reference(i, t, s, logit_bias=None, **k):
        return ref_loss(i, t, s, logit_bias, **k)
    up = lambda t: t.double()  # noqa: E731
    ref, ref_g = _run(reference, up(I), up(T), up(sc), None if bias is None else up(bias), cot, **kw)
    low, low_g = _run(reference, I, T, sc.to(dtype), None if bias is None else bias.to(dtype), cot, **kw)
    got, g = _run(crossfuse.ops.contrastive_loss, I, T, sc, bias, cot, backend=backend, **kw)
    assert_within_rule("loss", got, low, ref, dtype)
    names = ["d image_emb", "d text_emb", "d logit_scale", "d logit_bias"]
    for name, a, lo, r in zip(names, g, low_g, ref_g):
        assert_within_rule(name, a.to(dtype) if a.dim() == 0 else a, lo.to(dtype) if lo.dim() == 0 else lo, r, dtype)


def _triton_path(monkeypatch, from_cublas):
    """The triton backend's forward from cuBLAS fp32 blocks of S (the default) or from its own tl.dot tiles, with
    the folds in 3 slices of the reduced axis, in several blocks (the last ones partial): one row tile per block,
    16 columns per forward block."""
    from crossfuse.kernels import contrastive_loss as kernels
    monkeypatch.setattr(kernels, "S_FROM_CUBLAS", from_cublas)
    monkeypatch.setattr(kernels, "FOLD_SPLITS", 3)
    monkeypatch.setattr(kernels, "DS_CHUNK_BYTES", 1)
    monkeypatch.setattr(kernels, "S_BLOCK_COLS", 16)
    return kernels


@pytest.mark.parametrize("device", TRITON_DEVICES)
@pytest.mark.parametrize("from_cublas", [True, False], ids=["cublas-blocks", "dot-tiles"])
@pytest.mark.parametrize("kind", ["clip", "siglip"])
@pytest.mark.parametrize("dtype,B", [(torch.float32, 70), (torch.float16, 150)])
def test_triton_backward_in_chunks_with_tiny_upstream_gradients(monkeypatch, device, from_cublas, kind, dtype, B):
    """The forward and backward in several blocks / dS bands, and upstream gradients so small that dS times
    them would underflow fp16 if the kernel did not normalise the row weights first."""
    _triton_path(monkeypatch, from_cublas)
    I, T = _embeddings(B, 24, dtype, device)
    sc, bias = torch.tensor(20.0, device=device), (torch.tensor(-5.0, device=device) if kind == "siglip" else None)
    cot = 1e-5 * torch.randn(B, dtype=torch.float64, device=device)
    kw = dict(kind=kind, reduction="none")
    ref_g = _run(lambda i, t, s, logit_bias=None, **k: ref_loss(i, t, s, logit_bias, **k), I.double(), T.double(),
                 sc.double(), None if bias is None else bias.double(), cot, **kw)[1]
    ref = ref_loss(I.double(), T.double(), sc.double(), None if bias is None else bias.double(), **kw)
    loss, g = _run(crossfuse.ops.contrastive_loss, I, T, sc, bias, cot, backend="triton", **kw)
    # the per-row losses come back in the inputs' dtype: a few of its ulps of the largest
    torch.testing.assert_close(loss.double(), ref, rtol=0, atol=8 * torch.finfo(dtype).eps * ref.abs().max().item())
    for name, a, r in zip(["d image_emb", "d text_emb", "d logit_scale", "d logit_bias"], g, ref_g):
        err = (a.double() - r).norm() / r.norm()
        assert err < 0.3 * torch.finfo(dtype).eps ** 0.5, f"{name}: relative error {err:.2e}"


def test_large_scale_fp16_does_not_overflow():
    for backend in ("cpu", "triton"):
        I, T = _embeddings(40, 24, torch.float16, "cpu")
        loss = crossfuse.ops.contrastive_loss(I * 4, T * 4, 100.0, backend=backend)  # logits up to 1600
        assert torch.isfinite(loss)
        want = ref_loss(I.double() * 4, T.double() * 4, 100.0)
        assert abs(loss.double() - want).item() < 1e-2 * max(1.0, want.abs().item())


_PEAK = """
import sys, torch, crossfuse
B, impl = int(sys.argv[1]), sys.argv[2]
def f(n):
    I, T = (torch.randn(n, 32).requires_grad_() for _ in range(2))
    if impl == "fused":
        return crossfuse.ops.contrastive_loss(I, T, 10.0, backend="cpu")
    return crossfuse.reference.contrastive_loss(I, T, 10.0)
def status(field):
    return int(next(l for l in open("/proc/self/status") if l.startswith(field)).split()[1]) * 1024
f(8).backward()  # lazy imports and one-time set-up happen here, not in the measurement
open("/proc/self/clear_refs", "w").write("5")  # the peak RSS (VmHWM) restarts from the current RSS
base = status("VmRSS:")
f(B).backward()
print(max(0, status("VmHWM:") - base))
"""


def _first_call_peak(B, impl):
    """Bytes one forward+backward adds to the peak RSS of a fresh process (CPU torch keeps no allocator
    statistics); with a fixed mmap threshold every large block is mapped and unmapped, so RSS follows live bytes."""
    script = _PEAK
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["MALLOC_MMAP_THRESHOLD_"] = "65536"  # a fixed threshold: big blocks are mapped and unmapped, RSS = live
    out = subprocess.run([sys.executable, "-c", script, str(B), impl], capture_output=True, text=True, env=env,
                         check=True, timeout=300).stdout
    return int(out.strip().splitlines()[-1])


def test_peak_memory_grows_linearly_with_batch():
    fused = {B: _first_call_peak(B, "fused") for B in (4096, 8192)}
    eager = {B: _first_call_peak(B, "eager") for B in (4096, 8192)}
    logits = 8192 * 8192 * 4
    assert eager[8192] > 2 * logits and eager[8192] > 3.5 * eager[4096], eager  # several (B, B) tensors
    assert fused[8192] < 0.25 * logits, fused  # chunks of about 2^20 scores and O(B x D) gradients
    assert fused[8192] < 2.5 * max(fused[4096], 2 ** 20), fused  # at most linear in B


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
def test_modules_match_open_clip_math(backend):
    I, T = _embeddings(21, 16, torch.float32, "cpu")
    scale = torch.tensor(20.0)
    clip = crossfuse.nn.ClipLoss(backend=backend)
    torch.testing.assert_close(clip(I, T, scale), ref_loss(I, T, scale))
    assert set(clip(I, T, scale, output_dict=True)) == {"contrastive_loss"}
    sig = crossfuse.nn.SigLipLoss(backend=backend)
    bias = torch.tensor(-5.0)
    torch.testing.assert_close(sig(I, T, scale, bias), ref_loss(I, T, scale, bias, kind="siglip"))


def _dist_worker(rank, world, init_file, I, T, results):
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    B = I.shape[0] // world
    rows = slice(rank * B, (rank + 1) * B)
    scale, bias = torch.tensor(15.0), torch.tensor(-3.0)
    out = {}
    for name, module, args in (
            ("clip_local_grad", crossfuse.nn.ClipLoss(local_loss=True, gather_with_grad=True, rank=rank,
                                                      world_size=world), (scale,)),
            ("clip_global", crossfuse.nn.ClipLoss(local_loss=False, gather_with_grad=False, rank=rank,
                                                  world_size=world), (scale,)),
            ("siglip", crossfuse.nn.SigLipLoss(rank=rank, world_size=world), (scale, bias))):
        i, t = I[rows].clone().requires_grad_(), T[rows].clone().requires_grad_()
        loss = module(i, t, *args)
        loss.backward()
        out[name] = (loss.detach(), i.grad, t.grad)
    results[rank] = out
    dist.destroy_process_group()


def test_distributed_losses_equal_the_single_process_loss(tmp_path):
    world, B, D = 2, 6, 8
    I, T = _embeddings(world * B, D, torch.float32, "cpu")
    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(_dist_worker, args=(world, str(tmp_path / "init"), I, T, results), nprocs=world, join=True)
    scale, bias = torch.tensor(15.0), torch.tensor(-3.0)

    def single(kind):
        i, t = I.clone().requires_grad_(), T.clone().requires_grad_()
        loss = ref_loss(i, t, scale, bias if kind == "siglip" else None, kind=kind)
        loss.backward()
        return loss, i.grad, t.grad

    full_clip, full_sig = single("clip"), single("siglip")
    for r in range(world):
        rows = slice(r * B, (r + 1) * B)
        loss, gi, gt = results[r]["clip_local_grad"]
        # the ranks' mean of local losses is the full loss; gradients summed over ranks by the gather's backward
        torch.testing.assert_close(gi / world, full_clip[1][rows], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(gt / world, full_clip[2][rows], atol=1e-6, rtol=1e-5)
        loss_g, gi_g, _ = results[r]["clip_global"]
        torch.testing.assert_close(loss_g, full_clip[0], atol=1e-6, rtol=1e-5)  # every rank: the whole batch
        torch.testing.assert_close(gi_g, full_clip[1][rows], atol=1e-6, rtol=1e-5)
    mean_local = sum(results[r]["clip_local_grad"][0] for r in range(world)) / world
    torch.testing.assert_close(mean_local, full_clip[0], atol=1e-6, rtol=1e-5)
    mean_sig = sum(results[r]["siglip"][0] for r in range(world)) / world
    torch.testing.assert_close(mean_sig, full_sig[0], atol=1e-6, rtol=1e-5)
    for r in range(world):
        rows = slice(r * B, (r + 1) * B)
        torch.testing.assert_close(results[r]["siglip"][1] / world, full_sig[1][rows], atol=1e-6, rtol=1e-5)


def test_bad_input_names_the_argument():
    f = crossfuse.ops.contrastive_loss
    I, T = _embeddings(4, 8, torch.float32, "cpu")
    with pytest.raises(TypeError, match="text_emb to have dtype"):
        f(I, T.double(), 1.0)
    with pytest.raises(ValueError, match="text_emb of shape"):
        f(I, T[:3], 1.0)
    with pytest.raises(ValueError, match="image_emb of shape"):
        f(I[0], T, 1.0)
    with pytest.raises(ValueError, match="needs logit_bias"):
        f(I, T, 1.0, kind="siglip")
    with pytest.raises(ValueError, match="logit_scale to be a scalar"):
        f(I, T, torch.ones(2))
    with pytest.raises(TypeError, match="labels to be an integer tensor"):
        f(I, T, 1.0, labels=torch.zeros(4))
    with pytest.raises(ValueError, match="label_smoothing"):
        f(I, T, 1.0, label_smoothing=1.0)
    with pytest.raises(ValueError, match="reduction"):
        f(I, T, 1.0, reduction="avg")
    assert f(I[:0], T[:0], 1.0, reduction="none").shape == (0,)
    assert os.environ.get("TRITON_INTERPRET") == "1" or torch.cuda.is_available()


@pytest.mark.parametrize("Ma,Nb,D,scale", [(0, 5, 3, 1.0), (5, 0, 3, 1.0), (0, 0, 4, 1.0), (1, 1, 7, 100.0),
                                           (37, 29, 13, 100.0), (1100, 9, 5, 14.3)])
def test_clip_cpu_one_pass_statistics_are_the_two_directions(Ma, Nb, D, scale):
    """The cpu forward's one pass (rows finished per chunk, columns folded into an online logsumexp) gives each
    direction's statistics as a pass of its own would: empty sides, rectangular, a large scale, row chunks."""
    C = sys.modules["crossfuse.ops.contrastive_loss"]  # the module (crossfuse.ops.contrastive_loss is its function)
    torch.manual_seed(0)
    a, b = torch.randn(Ma, D), torch.randn(Nb, D)
    la, lb = torch.randint(0, 3, (Ma,)), torch.randint(0, 3, (Nb,))
    sa, sb = C._rows_both_cpu(a, b, la, lb, scale, 0.25)
    for got, want in ((sa, C._rows_cpu(a, b, la, lb, scale, 0.25, False)),
                      (sb, C._rows_cpu(b, a, lb, la, scale, 0.25, False))):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4 * max(1, Ma, Nb))


@pytest.mark.parametrize("device", TRITON_DEVICES)
@pytest.mark.parametrize("from_cublas", [True, False], ids=["cublas-blocks", "dot-tiles"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("Ma,Nb", [(70, 45), (3, 50), (40, 0), (0, 17)])
def test_triton_statistics_equal_the_cpu_ones(monkeypatch, device, from_cublas, dtype, Ma, Nb):
    """Both directions' statistics (CLIP: online logsumexp over blocks in both directions; SigLIP: sums), with
    rectangular and empty sides and many blocks each way, equal the cpu path's on the same values (16-bit
    products are exact in fp32): the folds merge in any order."""
    kernels = _triton_path(monkeypatch, from_cublas)
    C = sys.modules["crossfuse.ops.contrastive_loss"]
    torch.manual_seed(0)
    a, b = torch.randn(Ma, 24).to(dtype).float(), torch.randn(Nb, 24).to(dtype).float()  # exact in dtype
    la, lb = torch.randint(0, 3, (Ma,)), torch.randint(0, 3, (Nb,))
    dev = lambda t: t.to(device, dtype if t.is_floating_point() else t.dtype)  # noqa: E731
    for siglip in (False, True):
        sa, sb = (st.cpu() for st in kernels.stats(dev(a), dev(b), dev(la).int(), dev(lb).int(), 30.0, -2.0,
                                                   siglip, True))
        for got, want in ((sa, C._rows_cpu(a, b, la, lb, 30.0, -2.0, siglip)),
                          (sb, C._rows_cpu(b, a, lb, la, 30.0, -2.0, siglip))):
            # fp32 sums of up to max(Ma, Nb) terms, added in another order: rounding grows with their count
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4 * max(1, Ma, Nb))


@pytest.mark.parametrize("Ma,Nb", [(70, 45), (1, 1), (40, 0), (0, 17), (1100, 9)])
@pytest.mark.parametrize("both", [True, False])
@pytest.mark.parametrize("siglip", [False, True], ids=["clip", "siglip"])
def test_cpu_fused_passes_equal_the_torch_ones(monkeypatch, Ma, Nb, both, siglip):
    """fp32 on cpu runs fused C++ passes over each chunk of S (statistics, CLIP's column logsumexp, dS in place):
    they give the torch operations' statistics and gradients, one direction or both, with labels that repeat."""
    C = sys.modules["crossfuse.ops.contrastive_loss"]
    torch.manual_seed(0)
    a, b = torch.randn(Ma, 13), torch.randn(Nb, 13)
    la, lb = torch.randint(0, 4, (Ma,)), torch.randint(0, 4, (Nb,))
    wa, wb = torch.randn(Ma), torch.randn(Nb)
    out = []
    for fused in (True, False):
        monkeypatch.setattr(C, "_fused", lambda a, fused=fused: fused)
        if siglip:
            sa, sb = C._rows_cpu(a, b, la, lb, 30.0, -2.0, True), C._rows_cpu(b, a, lb, la, 30.0, -2.0, True)
        else:
            sa, sb = C._rows_both_cpu(a, b, la, lb, 30.0, 0.5)
        grads = C._grads_cpu(a, b, la, lb, sa, wa, sb if both else None, wb if both else None, 30.0,
                             -2.0 if siglip else 0.5, 0.1, siglip)
        out.append((sa, sb, *grads))
    for name, got, want in zip(("row statistics", "column statistics", "dA", "dB"), *out):
        finite = want[torch.isfinite(want)].abs()  # sums of up to ~1e3: fp32 rounding, per magnitude
        atol = 1e-5 * max(finite.max().item() if finite.numel() else 1.0, 1.0)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=atol, msg=name)


@pytest.mark.parametrize("Ma,Nb", [(70, 45), (1, 1), (40, 0), (0, 17), (1100, 9)])
def test_siglip_cpu_forward_gradients_equal_the_backward_ones(Ma, Nb):
    """SigLIP on the fused CPU passes, summed: the forward makes dA and dB for unit row weights from its own chunks
    of S (two chunks of rows at Ma = 1100): the statistics and gradients of the separate forward and backward."""
    C = sys.modules["crossfuse.ops.contrastive_loss"]
    torch.manual_seed(0)
    a, b = torch.randn(Ma, 13), torch.randn(Nb, 13)
    la, lb = torch.randint(0, 4, (Ma,)), torch.randint(0, 4, (Nb,))
    sa, da, db = C._siglip_with_grads_cpu(a, b, la, lb, 30.0, -2.0)
    want_sa = C._rows_cpu(a, b, la, lb, 30.0, -2.0, True)
    want = C._grads_cpu(a, b, la, lb, want_sa, torch.ones(Ma), None, None, 30.0, -2.0, 0.0, True)
    torch.testing.assert_close(sa, want_sa)
    # the same fp32 products, dB summed over the chunks in another order of GEMM calls: rounding, per magnitude
    for name, got, w in zip(("dA", "dB"), (da, db), want):
        torch.testing.assert_close(got, w, rtol=1e-5, atol=1e-5 * max(1.0, w.abs().max().item() if w.numel() else 1),
                                   msg=name)


def test_siglip_cpu_uses_the_forward_gradients_only_for_equal_row_weights(monkeypatch):
    """A summed or averaged SigLIP loss (the module's too) takes the gradients its forward made: no second pass over
    S. Per-sample losses with unequal weights, and no-grad calls, do not make them; values match the reference."""
    C = sys.modules["crossfuse.ops.contrastive_loss"]
    made, recomputed = [], []
    real_pre, real_bwd = C._siglip_with_grads_cpu, C._grads_cpu
    monkeypatch.setattr(C, "_siglip_with_grads_cpu", lambda *a: made.append(1) or real_pre(*a))
    monkeypatch.setattr(C, "_grads_cpu", lambda *a: recomputed.append(1) or real_bwd(*a))
    I, T = _embeddings(9, 5, torch.float32, "cpu")
    sc, bias = torch.tensor(10.0), torch.tensor(-5.0)
    for reduction, cot, pre in (("mean", torch.tensor(0.7), True), ("sum", torch.tensor(-2.0), True),
                                ("none", torch.randn(9), False), ("none", torch.full((9,), 0.3), False)):
        made.clear(), recomputed.clear()
        _check_against_reference(I, T, sc, bias, cot.double(), torch.float32, "cpu", kind="siglip",
                                 reduction=reduction)
        assert (made, recomputed) == (([1], []) if pre else ([], [1])), reduction
    made.clear()
    with torch.no_grad():
        crossfuse.ops.contrastive_loss(I, T, sc, logit_bias=bias, kind="siglip", backend="cpu")
    loss = crossfuse.nn.SigLipLoss()(leaf_like(I), leaf_like(T), sc, bias)
    loss.backward()
    assert made == [1]  # the module's sum, not the no-grad call
