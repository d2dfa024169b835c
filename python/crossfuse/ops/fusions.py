"""Fusion operators' kernels: product pooling (the core of Block, Mutan, MFB and MFH), the signed square root with
L2 normalisation around it, and compact bilinear pooling (MCB).

product_pool, with G groups of S outputs, rank (or factor) R and weights (G, R*S, K):
    z[n, g*S + j] = sum_r act(x0[n0] W0[g, row(r, j)] + b0) * act(x1[n1] W1[g, row(r, j)] + b1)
over the group's K input columns, row(r, j) = r*S + j (rank_major) or j*R + r. A second stage (MFH) adds
    z[n, (G + g)*S + j] = sum_r act(x0 V0 + c0) * act(x1 V1 + c1) * act(x0 W0 + b0) * act(x1 W1 + b1).
Backends: `triton` for CUDA tensors, in one of two ways by the projections' input width K: up to FUSED_MAX_K (Block's
chunks) one kernel does the grouped GEMM with the pooling in its epilogue, so the (rows, R*S) projections never
reach memory and nothing of that size is kept for the backward, which recomputes them; above it (Mutan, MFB, MFH)
cuBLAS's GEMMs beat that kernel (measured on an H200), so torch computes the projections and one Triton pass pools
them (one pass back too). `cpu`: the CPU GEMM (crossfuse's csrc/cpu/gemm.cpp, or torch's BLAS where that is the
faster: ops/_gemm) and one C++ pooling pass each way;
with many groups (Block's chunks) one C++ call runs whole groups per thread, else the groups go one by one with
each GEMM split over the threads. `reference`: plain torch.
"""
from __future__ import annotations

import importlib

import torch
import torch.nn.functional as F

from crossfuse import _backend
from crossfuse._autograd import once_differentiable
from crossfuse.ops import _gemm

OP = "product_pool"
_backend.register_op(OP, ("reference", "triton", "cpu"))
FUSED_MAX_K = 256  # triton: the fused grouped-GEMM kernel up to this input width per group, cuBLAS + pooling above


def _fused(backend, w0, w1):
    return backend == "triton" and max(w0.shape[2], w1.shape[2]) <= FUSED_MAX_K
ACTIVATIONS = (None, "relu")


def _kernels():
    return importlib.import_module("crossfuse.kernels.fusions")


def _input_grads(x, w, du, need_x, need_w, need_b):
    """dx (rows, G*K), dw (G, R*S, K), db (G, R*S) of u = x w^T + b, from du (G, rows, R*S)."""
    G, _, K = w.shape
    dx = torch.bmm(du, w).transpose(0, 1).reshape(x.shape[0], G * K) if need_x else None
    dw = torch.bmm(du.transpose(1, 2), x.reshape(x.shape[0], G, K).transpose(0, 1)) if need_w else None
    db = du.sum(1) if need_b else None
    return dx, dw, db


def _reps(x0, x1):
    N = max(x0.shape[0], x1.shape[0])
    return N, N // x0.shape[0] if x0.shape[0] else 1, N // x1.shape[0] if x1.shape[0] else 1


# ---- the cpu path: the C++ GEMM for the projections, the pooling in one C++ pass -------------------------
def _f32(t):
    return None if t is None else t.float().contiguous()


def _ptr(t):
    return 0 if t is None else t.data_ptr()


def _cpu_weights(x0, x1, w0, b0, w1, b1, v0, c0, v1, c1):
    """fp32 contiguous (x0, x1), projections' weights (w0, w1, v0, v1) and biases (b0, b1, c0, c1)."""
    return (_f32(x0), _f32(x1)), [_f32(w) for w in (w0, w1, v0, v1)], [_f32(b) for b in (b0, b1, c0, c1)]


def _pool_pointers(g, S, P, us, z=None, dz=None, dus=(), bs=()):
    """product_pool's 14 pointers for group g: u0, u1, v0, v1, z, dz, du0, du1, dv0, dv1, b0, b1, c0, c1."""
    def four(ts):
        return [_ptr(t) for t in ts] + [0] * (4 - len(ts))
    return four(us) + [0 if z is None else z.data_ptr() + 4 * g * S, 0 if dz is None else dz.data_ptr() + 4 * g * S] \
        + four(dus) + [0 if b is None else b[g].data_ptr() for b in bs]


def _grouped(G, threads):
    """Whole groups per thread (ext.cpu.product_pool_grouped: single-threaded GEMMs, the pooling on projections
    still in the thread's cache, one parallel region a call) where the groups keep at least 80% of the threads
    busy, e.g. Block's 20 chunks on 2 or 4 threads; otherwise each GEMM is split over all threads."""
    return G > 1 and G >= 0.8 * threads * -(-G // threads)


def _grouped_pool(backward, ws, N, R, reps, rank_major, relu, ptrs, threads):
    G, RS, K0 = ws[0].shape
    S, P = RS // R, 2 if ws[2] is not None else 1
    _backend.ext.cpu.product_pool_grouped(G, N, S, R, *reps, K0, ws[1].shape[2], rank_major, relu, backward,
                                          P * G * S, G * S, ptrs, threads)


def _forward_cpu(x0, x1, w0, b0, w1, b1, v0, c0, v1, c1, R, rank_major, relu, keep=True):
    """(z fp32, [U0, U1(, V0, V1)] (G, rows, R*S) without their biases, which the C++ pass adds). Group by group,
    like the eager loop. With `keep` (for the backward) the projections go into one buffer per side, which
    _backend.empty backs with huge pages when it is large; without, each group's buffers are freed before the next
    group's are taken, so one heap block, hot in cache, serves them all (in the grouped kernel: the thread's
    scratch)."""
    xs, ws, bs = _cpu_weights(x0, x1, w0, b0, w1, b1, v0, c0, v1, c1)
    G, RS, _ = w0.shape
    S, P = RS // R, 2 if v0 is not None else 1
    N, rep0, rep1 = _reps(*xs)
    threads = torch.get_num_threads()
    z = torch.empty((N, P * G * S), dtype=torch.float32, device=x0.device)
    us = [_backend.empty((G, xs[k % 2].shape[0], RS), dtype=torch.float32, device=x0.device)
          for k in range(2 * P)] if keep else []
    if _grouped(G, threads) and N * RS:
        ptrs = [_ptr(t) for t in (*xs, *ws, *(us + [None] * (4 - len(us))), z)] + [0] * 11 + [_ptr(b) for b in bs]
        _grouped_pool(False, ws, N, R, (rep0, rep1), rank_major, relu, ptrs, threads)
        return z, us
    for g in range(G):
        ug = [_gemm.mm(xs[k % 2][:, g * w.shape[2]:(g + 1) * w.shape[2]], w[g].t(), out=us[k][g] if keep else None)
              for k, w in enumerate(ws[:2 * P])]
        _backend.ext.cpu.product_pool(1, N, S, R, rep0, rep1, rank_major, relu, False, P * G * S, G * S,
                                      _pool_pointers(g, S, P, ug, z=z, bs=bs), threads)
    return z, us


def _backward_cpu(dz, us, tensors, R, rank_major, relu, needs):
    """Gradients of (x0, x1, w0, b0, w1, b1, v0, c0, v1, c1) in fp32 (None where not needed)."""
    xs, ws, bs = _cpu_weights(*tensors)
    G, RS, _ = ws[0].shape
    S, P = RS // R, 2 if ws[2] is not None else 1
    N, rep0, rep1 = _reps(*xs)
    threads = torch.get_num_threads()
    grouped = _grouped(G, threads) and N * RS  # an empty side: the loop below writes the zero gradients
    dz = dz.float().contiguous()
    grads = [None] * 10
    for side, x in enumerate(xs):
        if needs[side]:  # the grouped kernel writes every column; the loop below adds group by group
            grads[side] = (torch.empty if grouped else torch.zeros)(x.shape, dtype=torch.float32, device=x.device)
    slots = [(2, 3), (4, 5), (6, 7), (8, 9)]  # (weight, bias) indices of u0, u1, v0, v1
    for k, (wi, bi) in enumerate(slots[:2 * P]):
        if needs[wi]:
            grads[wi] = _backend.empty(ws[k].shape, dtype=torch.float32, device=dz.device)
        if needs[bi]:
            grads[bi] = torch.empty(bs[k].shape, dtype=torch.float32, device=dz.device)
    if grouped:
        ptrs = [_ptr(t) for t in (*xs, *ws, *(us + [None] * (4 - len(us))), None, dz, *grads[:2], *grads[2::2],
                                  *grads[3::2], *bs)]
        _grouped_pool(True, ws, N, R, (rep0, rep1), rank_major, relu, ptrs, threads)
        return grads
    for g in range(G):
        ug = [u[g] for u in us]
        dug = [torch.empty_like(u) for u in ug]
        _backend.ext.cpu.product_pool(1, N, S, R, rep0, rep1, rank_major, relu, True, P * G * S, G * S,
                                      _pool_pointers(g, S, P, ug, dz=dz, dus=dug, bs=bs), threads)
        for k, du in enumerate(dug):
            side, (wi, bi) = k % 2, slots[k]
            K = ws[k].shape[2]
            cols = slice(g * K, (g + 1) * K)
            if grads[side] is not None:
                _gemm.mm(du, ws[k][g], out=grads[side][:, cols], beta=1.0)
            if grads[wi] is not None:
                _gemm.mm(du.t(), xs[side][:, cols], out=grads[wi][g])
            if grads[bi] is not None:
                torch.sum(du, 0, out=grads[bi][g])
    return grads


# ---- the triton path ----------------------------------------------------------------------------------------
def _gemm_projection(x, w):
    """(G, rows, R*S) = x (rows, G*K) against w (G, R*S, K), one batched GEMM also for one group (on the H200
    Mutan's B=1024 forward took 306 us so, 400 us with a plain mm: cuBLAS picks another kernel)."""
    G, _, K = w.shape
    return torch.bmm(x.reshape(x.shape[0], G, K).transpose(0, 1), w.transpose(1, 2))


def _forward_triton(fused, x0, x1, ws, R, rank_major, relu):
    """(z, the projections the backward reads): `fused`, one kernel and nothing kept; otherwise the projections
    U0, U1(, V0, V1) (G, rows, R*S) by torch's GEMMs, without biases, pooled by one Triton pass. ws = (w0, b0, w1,
    b1, v0, c0, v1, c1)."""
    G, RS = ws[0].shape[0], ws[0].shape[1]
    N, two = max(x0.shape[0], x1.shape[0]), ws[4] is not None
    z = _backend.empty((N, (2 if two else 1) * G * (RS // R)), dtype=x0.dtype, device=x0.device)
    if fused:
        _kernels().forward(x0, x1, *ws, z, RS // R, R, rank_major, relu)
        return z, []
    us = [_gemm_projection((x0, x1)[k % 2], w) for k, w in enumerate(ws[0::2]) if w is not None]
    _kernels().pool_forward(us, list(ws[1::2]), z, N, RS // R, R, rank_major, relu)
    return z, us


def _backward_triton(dz, x0, x1, ws, us, R, rank_major, relu):
    """[dU0, dU1(, dV0, dV1)] (G, rows of each side, R*S): recomputed by the fused kernel when `us` is empty, else
    from the saved projections; a broadcast side's rows summed over the rows that read each (fp32 accumulation)."""
    G, RS = ws[0].shape[0], ws[0].shape[1]
    N, rep0, rep1 = _reps(x0, x1)
    dus = [_backend.empty((G, N, RS), dtype=x0.dtype, device=x0.device) for _ in range(4 if ws[4] is not None else 2)]
    dz = dz.to(x0.dtype)
    if dz.stride(-1) != 1:
        dz = dz.contiguous()
    if us:
        _kernels().pool_backward(us, list(ws[1::2]), dz, dus, N, RS // R, R, rank_major, relu)
    else:
        _kernels().backward(x0, x1, *ws, dz, *dus, *([None, None] if len(dus) == 2 else []), RS // R, R, rank_major,
                            relu)
    for i, rep in ((0, rep0), (1, rep1)):
        if rep > 1:
            for k in range(i, len(dus), 2):
                dus[k] = dus[k].view(G, N // rep, rep, RS).sum(2, dtype=torch.float32).to(x0.dtype)
    return dus


# ---- the custom ops ---------------------------------------------------------------------------------------------
def _pool_impl(backend, rank, rank_major, relu, x0, x1, w0, b0, w1, b1, v0, c0, v1, c1, keep=True):
    """[z, then the projections the backward reads: none for the fused kernel; U0, U1(, V0, V1) (G, rows, R*S) for
    triton above FUSED_MAX_K and (in fp32) on cpu]."""
    if backend == "triton":
        z, us = _forward_triton(_fused(backend, w0, w1), x0, x1, (w0, b0, w1, b1, v0, c0, v1, c1), rank, rank_major,
                                relu)
        return [z] + us
    z, us = _forward_cpu(x0, x1, w0, b0, w1, b1, v0, c0, v1, c1, rank, rank_major, relu, keep)
    return [z.to(x0.dtype)] + us


# Custom ops for torch.compile (eager calls skip their dispatch, about 100 us of host time a call: _PoolFunction).
@torch.library.custom_op("crossfuse::product_pool", mutates_args=())
def _pool_op(backend: str, rank: int, rank_major: bool, relu: bool, x0: torch.Tensor, x1: torch.Tensor,
             w0: torch.Tensor, b0: torch.Tensor | None, w1: torch.Tensor, b1: torch.Tensor | None,
             v0: torch.Tensor | None, c0: torch.Tensor | None, v1: torch.Tensor | None, c1: torch.Tensor | None
             ) -> list[torch.Tensor]:
    return _pool_impl(backend, rank, rank_major, relu, x0, x1, w0, b0, w1, b1, v0, c0, v1, c1)


@_pool_op.register_fake
def _(backend, rank, rank_major, relu, x0, x1, w0, b0, w1, b1, v0, c0, v1, c1):
    G, RS = w0.shape[0], w0.shape[1]
    P = 2 if v0 is not None else 1
    N = max(x0.shape[0], x1.shape[0])
    out = [x0.new_empty((N, P * G * (RS // rank)))]
    # distinct tensors: outputs must not alias each other
    if backend == "triton" and not _fused(backend, w0, w1):
        out += [x0.new_empty((G, x.shape[0], RS)) for x in (x0, x1) * P]
    elif backend != "triton":  # U0, U1(, V0, V1) in fp32
        out += [x0.new_empty((G, x.shape[0], RS), dtype=torch.float32) for x in (x0, x1) * P]
    return out


def _pool_backward_impl(backend, rank, rank_major, relu, needs, dz, x0, x1, w0, b0, w1, b1, v0, c0, v1, c1, us):
    """Gradients of (x0, x1, w0, b0, w1, b1, v0, c0, v1, c1); an empty tensor where not needed or absent."""
    ref = (x0, x1, w0, b0, w1, b1, v0, c0, v1, c1)
    if backend == "triton":
        dus = _backward_triton(dz, x0, x1, (w0, b0, w1, b1, v0, c0, v1, c1), us, rank, rank_major, relu)
        grads = [None] * 10
        for k, du in enumerate(dus):  # k: 0 = (x0, w0, b0), 1 = (x1, w1, b1), 2 = (x0, v0, c0), 3 = (x1, v1, c1)
            side = k % 2
            wi, bi = 2 + 2 * k, 3 + 2 * k
            dx, dw, db = _input_grads(ref[side], ref[wi], du, needs[side], needs[wi], needs[bi])
            if dx is not None:
                grads[side] = dx if grads[side] is None else grads[side] + dx
            grads[wi], grads[bi] = dw, db
    else:
        grads = _backward_cpu(dz, us, ref, rank, rank_major, relu, needs)
    return [x0.new_empty(0) if g is None else g.to(ref[i].dtype) for i, g in enumerate(grads)]


@torch.library.custom_op("crossfuse::product_pool_backward", mutates_args=())
def _pool_backward_op(backend: str, rank: int, rank_major: bool, relu: bool, needs: list[bool], dz: torch.Tensor,
                      x0: torch.Tensor, x1: torch.Tensor, w0: torch.Tensor, b0: torch.Tensor | None, w1: torch.Tensor,
                      b1: torch.Tensor | None, v0: torch.Tensor | None, c0: torch.Tensor | None,
                      v1: torch.Tensor | None, c1: torch.Tensor | None, us: list[torch.Tensor]) -> list[torch.Tensor]:
    return _pool_backward_impl(backend, rank, rank_major, relu, needs, dz, x0, x1, w0, b0, w1, b1, v0, c0, v1, c1,
                               us)


@_pool_backward_op.register_fake
def _(backend, rank, rank_major, relu, needs, dz, x0, x1, w0, b0, w1, b1, v0, c0, v1, c1, us):
    ref = (x0, x1, w0, b0, w1, b1, v0, c0, v1, c1)
    return [torch.empty_like(t) if need and t is not None else x0.new_empty(0) for need, t in zip(needs, ref)]


def _setup_context(ctx, inputs, output):
    backend, rank, rank_major, relu, *tensors = inputs
    ctx.args = (backend, rank, rank_major, relu)
    ctx.present = [t is not None for t in tensors]
    ctx.save_for_backward(*tensors, *output[1:])
    # The saved projections take no gradient: no zero tensors of their (large) size for the backward.
    ctx.set_materialize_grads(False)


def _backward(ctx, grads):
    saved = ctx.saved_tensors
    tensors, us = list(saved[:10]), list(saved[10:])
    needs = [bool(n) and p for n, p in zip(ctx.needs_input_grad[4:], ctx.present)]
    if not any(needs) or grads[0] is None:
        return (None,) * 14
    g = _pool_backward_op(*ctx.args, needs, grads[0], *tensors, us)
    return (None,) * 4 + tuple(t if need else None for t, need in zip(g, needs))


_pool_op.register_autograd(_backward, setup_context=_setup_context)


class _PoolFunction(torch.autograd.Function):
    """The eager path: the same forward and backward as the custom ops, without their dispatch."""

    @staticmethod
    def forward(ctx, backend, rank, rank_major, relu, *tensors):
        out = _pool_impl(backend, rank, rank_major, relu, *tensors)
        ctx.args = (backend, rank, rank_major, relu)
        ctx.present = [t is not None for t in tensors]
        ctx.save_for_backward(*tensors, *out[1:])
        return out[0]

    @staticmethod
    @once_differentiable  # the kernels record no graph: a second derivative raises, never comes out wrong
    def backward(ctx, dz):
        saved = ctx.saved_tensors
        needs = [bool(n) and p for n, p in zip(ctx.needs_input_grad[4:], ctx.present)]
        if not any(needs):
            return (None,) * 14
        g = _pool_backward_impl(*ctx.args, needs, dz, *saved[:10], list(saved[10:]))
        return (None,) * 4 + tuple(t if need else None for t, need in zip(g, needs))


# ---- the public functions -------------------------------------------------------------------------------------
def _check_weight(name, w, b, G, K, dtype, device):
    if not isinstance(w, torch.Tensor) or w.dim() != 3:
        raise ValueError(f"product_pool: expected {name} to be a 3-D tensor (groups, rank*size, in_features), got "
                         f"{type(w).__name__ if not isinstance(w, torch.Tensor) else f'{w.dim()}-D'}")
    if w.dtype != dtype or w.device != device:
        raise TypeError(f"product_pool: expected {name} with the dtype and device of x0 ({dtype}, {device}), got "
                        f"({w.dtype}, {w.device})")
    if w.shape[0] != G or (K is not None and w.shape[2] != K):
        raise ValueError(f"product_pool: expected {name} of shape ({G}, rank*size, {K}), got {tuple(w.shape)}")
    if b is not None and (not isinstance(b, torch.Tensor) or tuple(b.shape) != tuple(w.shape[:2])
                          or b.dtype != dtype or b.device != device):
        raise ValueError(f"product_pool: expected the bias of {name} of shape {tuple(w.shape[:2])}, dtype {dtype}, "
                         f"got {tuple(b.shape) if isinstance(b, torch.Tensor) else type(b).__name__}")


def broadcast_lead(s0, s1):
    """torch.broadcast_shapes for two shapes of plain ints, without its symbolic-shape machinery (about 60 us a call
    on a small CPU); None when they do not broadcast."""
    n = max(len(s0), len(s1))
    s0, s1 = (1,) * (n - len(s0)) + tuple(s0), (1,) * (n - len(s1)) + tuple(s1)
    out = []
    for a, b in zip(s0, s1):
        if a != b and a != 1 and b != 1:
            return None
        out.append(b if a == 1 else a)
    return tuple(out)


def _rows(x0, x1):
    """Flattened rows of x0, x1 and the output's leading shape. The lead shapes must be equal, or one must be the
    other with its trailing dimensions set to 1 (a question (B, 1, d) against regions (B, R, d)), which is read
    without being expanded; any other broadcast is expanded."""
    l0, l1 = tuple(x0.shape[:-1]), tuple(x1.shape[:-1])
    lead = broadcast_lead(l0, l1)
    if lead is None:
        raise ValueError(f"product_pool: the leading dimensions of x0 {l0} and x1 {l1} do not broadcast")

    def flat(x):  # rows with unit column stride, as the kernels read them
        return (x if x.stride(-1) == 1 else x.contiguous()).reshape(-1, x.shape[-1])

    def tiles(l):  # l == lead with a run of trailing 1s
        k = len(l)
        while k and l[k - 1] == 1:
            k -= 1
        return len(l) == len(lead) and l[:k] == lead[:k]
    if l0 != lead and not tiles(l0):
        x0 = x0.expand(*lead, x0.shape[-1])
    if l1 != lead and not tiles(l1):
        x1 = x1.expand(*lead, x1.shape[-1])
    return flat(x0), flat(x1), lead


def product_pool(x0, x1, weight0, weight1, bias0=None, bias1=None, *, rank, rank_major=True, activation=None,
                 weight0_2=None, weight1_2=None, bias0_2=None, bias1_2=None, backend=None):
    """Grouped product pooling (see the module docstring). x0 (..., G*K0), x1 (..., G*K1) with broadcastable
    leading dimensions; weight0 (G, rank*S, K0), weight1 (G, rank*S, K1), biases (G, rank*S). With the second-
    stage weights (MFH) the output has 2*G*S columns. Returns (..., P*G*S) in the inputs' dtype."""
    for name, t in (("x0", x0), ("x1", x1)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"product_pool: expected {name} to be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in _backend.DTYPE_CODES:
            raise TypeError(f"product_pool: expected {name} of dtype float32, float16 or bfloat16, got {t.dtype}")
        if t.dim() < 1:
            raise ValueError(f"product_pool: expected {name} with a feature dimension, got a scalar")
    if x1.dtype != x0.dtype or x1.device != x0.device:
        raise TypeError(f"product_pool: expected x1 with the dtype and device of x0 ({x0.dtype}, {x0.device}), got "
                        f"({x1.dtype}, {x1.device})")
    if not isinstance(rank, int) or rank < 1:
        raise ValueError(f"product_pool: expected rank to be a positive int, got {rank!r}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"product_pool: expected activation in {ACTIVATIONS}, got {activation!r}")
    G = weight0.shape[0] if isinstance(weight0, torch.Tensor) and weight0.dim() == 3 else None
    if G is None or G < 1:
        raise ValueError("product_pool: expected weight0 to be a 3-D tensor (groups, rank*size, in_features)")
    for name, x in (("x0", x0), ("x1", x1)):
        if x.shape[-1] % G:
            raise ValueError(f"product_pool: expected the last dimension of {name} to be a multiple of the {G} "
                             f"groups, got {x.shape[-1]}")
    K0, K1 = x0.shape[-1] // G, x1.shape[-1] // G
    dtype, device = x0.dtype, x0.device
    _check_weight("weight0", weight0, bias0, G, K0, dtype, device)
    _check_weight("weight1", weight1, bias1, G, K1, dtype, device)
    if weight1.shape[1] != weight0.shape[1] or weight0.shape[1] % rank:
        raise ValueError(f"product_pool: expected weight0 and weight1 with the same rows, a multiple of rank {rank}, "
                         f"got {weight0.shape[1]} and {weight1.shape[1]}")
    two = weight0_2 is not None or weight1_2 is not None
    if two:
        if weight0_2 is None or weight1_2 is None:
            raise ValueError("product_pool: the second stage needs both weight0_2 and weight1_2")
        _check_weight("weight0_2", weight0_2, bias0_2, G, K0, dtype, device)
        _check_weight("weight1_2", weight1_2, bias1_2, G, K1, dtype, device)
        if weight0_2.shape != weight0.shape or weight1_2.shape != weight1.shape:
            raise ValueError("product_pool: expected the second stage's weights shaped like the first's")
    if (bias0 is None) != (bias1 is None) or (two and ((bias0_2 is None) != (bias0 is None)
                                                      or (bias1_2 is None) != (bias0 is None))):
        raise ValueError("product_pool: expected all of the biases or none")
    a, b, lead = _rows(x0, x1)
    if torch.compiler.is_compiling():  # a static choice: use_backend's thread-local is not read in a trace
        chosen = backend or ("triton" if x0.is_cuda else "cpu" if _backend.ext is not None else "reference")
    else:
        chosen = _backend.choose(OP, device, backend)
    if chosen == "reference":
        from crossfuse.reference.fusions import product_pool as ref
        z = ref(a, b, weight0, weight1, bias0, bias1, rank=rank, rank_major=rank_major, activation=activation,
                weight0_2=weight0_2, weight1_2=weight1_2, bias0_2=bias0_2, bias1_2=bias1_2)
    else:
        c = lambda t: None if t is None else t.contiguous()  # noqa: E731
        args = (chosen, rank, rank_major, activation == "relu", a, b, c(weight0), c(bias0), c(weight1), c(bias1),
                c(weight0_2), c(bias0_2), c(weight1_2), c(bias1_2))
        if torch.compiler.is_compiling():
            z = _pool_op(*args)[0]
        elif torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in args[4:]):
            z = _PoolFunction.apply(*args)
        else:  # no backward: nothing to keep
            z = _pool_impl(*args, keep=False)[0]
    return z.reshape(*lead, z.shape[-1])


def signed_sqrt_normalize(z, groups=1, eps=1e-12, *, backend=None):
    """sign(z) sqrt|z| (as sqrt(relu(z)) - sqrt(relu(-z)), whose gradient at 0 is 0), then L2-normalised over
    each of `groups` equal slices of the last dimension (F.normalize's eps). fp16/bf16 run it in fp32: there eps
    would round to 0 and an all-zero row give 0/0. Where product_pool runs on the `cpu` backend (`backend` as
    product_pool's), one C++ pass each way: torch's sqrt of the zeros relu leaves ran 25x slower than of positive
    values on the Intel Xeon dev VM (1.5 ms for 256 x 1600)."""
    if not isinstance(z, torch.Tensor) or not z.is_floating_point():
        raise TypeError(f"signed_sqrt_normalize: expected z to be a floating-point tensor, got "
                        f"{z.dtype if isinstance(z, torch.Tensor) else type(z).__name__}")
    if z.dim() == 0 or not isinstance(groups, int) or groups < 1 or z.shape[-1] % groups:
        raise ValueError(f"signed_sqrt_normalize: expected a positive integer groups dividing z's last dimension, "
                         f"got groups={groups!r} for z of shape {tuple(z.shape)}")
    dtype = z.dtype
    if z.is_cpu and dtype in _SSN_DTYPES and _backend.ext is not None and not torch.compiler.is_compiling():
        try:
            cpu = _backend.choose(OP, z.device, backend) == "cpu"
        except RuntimeError:  # a backend product_pool lacks or cannot run here: plain torch, as for the modules' Linears
            cpu = False
        if cpu:
            return _SignedSqrtNormalize.apply(z, groups, float(eps)).to(dtype)
    z = z.float() if dtype in (torch.float16, torch.bfloat16) else z
    z = torch.sqrt(F.relu(z)) - torch.sqrt(F.relu(-z))
    if groups == 1:
        return F.normalize(z, p=2, dim=-1, eps=eps).to(dtype)
    return F.normalize(z.unflatten(-1, (groups, -1)), p=2, dim=-1, eps=eps).flatten(-2).to(dtype)


_SSN_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class _SignedSqrtNormalize(torch.autograd.Function):
    """signed_sqrt_normalize in fp32 on the C++ passes; keeps z (fp32) for the backward, which recomputes the rest."""

    @staticmethod
    def forward(ctx, z, groups, eps):
        z32 = z.detach().float().contiguous()
        y = torch.empty_like(z32)
        C = z32.shape[-1]
        _backend.ext.cpu.signed_sqrt_normalize(z32.numel() // max(C, 1), C, groups, eps, z32.data_ptr(),
                                               y.data_ptr(), torch.get_num_threads())
        ctx.groups, ctx.eps, ctx.dtype = groups, eps, z.dtype
        ctx.save_for_backward(z32)
        return y

    @staticmethod
    @once_differentiable  # the kernels record no graph: a second derivative raises, never comes out wrong
    def backward(ctx, dy):
        (z32,) = ctx.saved_tensors
        dy = dy.float().contiguous()
        dz = torch.empty_like(z32)
        C = z32.shape[-1]
        _backend.ext.cpu.signed_sqrt_normalize_backward(z32.numel() // max(C, 1), C, ctx.groups, ctx.eps,
                                                        z32.data_ptr(), dy.data_ptr(), dz.data_ptr(),
                                                        torch.get_num_threads())
        return dz.to(ctx.dtype), None, None


# ---- compact bilinear pooling ----------------------------------------------------------------------------------
def count_sketch(x, h, s, output_size):
    """out[..., k] = sum over i with h[i] == k of s[i] x[..., i]."""
    out = x.new_zeros((*x.shape[:-1], output_size))
    return out.index_add_(-1, h, x * s)


def compact_bilinear_pooling(x0, x1, h0, s0, h1, s1, output_size):
    """MCB (Fukui et al. 2016): the count sketch of the outer product x0 x1^T, as the circular convolution of the
    two inputs' count sketches, through the FFT. h*: bucket per input feature (int64), s*: signs (+-1)."""
    for name, t in (("x0", x0), ("x1", x1)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise TypeError(f"compact_bilinear_pooling: expected {name} to be a floating-point tensor")
    for name, h, s, x in (("0", h0, s0, x0), ("1", h1, s1, x1)):
        if h.shape != (x.shape[-1],) or s.shape != (x.shape[-1],):
            raise ValueError(f"compact_bilinear_pooling: expected h{name} and s{name} of shape ({x.shape[-1]},), got "
                             f"{tuple(h.shape)} and {tuple(s.shape)}")
    # The FFT runs in fp32 at least: half-precision FFTs need power-of-two sizes and lose the sketch's accuracy.
    ft = torch.promote_types(x0.dtype, torch.float32)
    p0 = count_sketch(x0.to(ft), h0, s0.to(ft), output_size)
    p1 = count_sketch(x1.to(ft), h1, s1.to(ft), output_size)
    if p0.numel() == 0 or p1.numel() == 0:  # an empty batch (MKL's FFT refuses one); keeps the autograd graph
        return (p0 * p1).to(x0.dtype)
    z = torch.fft.irfft(torch.fft.rfft(p0, dim=-1) * torch.fft.rfft(p1, dim=-1), n=output_size, dim=-1)
    return z.to(x0.dtype)
