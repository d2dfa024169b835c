"""contrastive_loss: CLIP's symmetric InfoNCE and SigLIP's pairwise sigmoid loss without the (B, B) logits.

The unit is a direction: rows of A against all rows of B, giving a loss per row of A (kernels/
contrastive_loss.py on the `triton` backend; on `cpu`, the same tiling with crossfuse's GEMM on row chunks). CLIP
is two directions (images against texts, texts against images), computed as a pair so that the backward forms both
directions' dS at once (and the forward both directions' statistics from one pass over S); SigLIP is one.
Extra memory is O(rows) plus a capped dS chunk, never O(B^2).
Rectangular directions serve the distributed losses of crossfuse.nn.
"""
from __future__ import annotations

import importlib

import torch

from crossfuse import _backend
from crossfuse.ops import _gemm

OP = "contrastive_loss"
_backend.register_op(OP, ("reference", "triton", "cpu"))
STATS = 6  # columns of a direction's row statistics (kernels/contrastive_loss.py's _fold_kernel)
KINDS = ("clip", "siglip")
REDUCTIONS = ("mean", "sum", "none")
def _chunk(Nb):
    """Rows of A per torch GEMM on the cpu path: about 2^20 scores at a time, whatever B."""
    return max(16, min(1024, (1 << 20) // max(Nb, 1)))


def _kernels():
    return importlib.import_module("crossfuse.kernels.contrastive_loss")


# ---- the cpu path: the kernels' tiling with torch GEMMs on chunks of rows ----------------------------------
def _dterm_cpu(s, same, lse, cnt, w, eps, n, siglip):
    """One direction's d loss / d S times its row weights; lse, cnt, w broadcast along the other axis."""
    if siglip:
        sig = torch.sigmoid(torch.where(same, -s, s))
        ds = torch.where(same, -sig, sig)
    else:
        ds = torch.exp(s - lse) - (torch.where(same, (1 - eps) / cnt.clamp_min(1), 0) + eps / max(n, 1))
    return ds.mul_(w)


def _clip_row_stats(st, s, on_same):
    """A CLIP direction's statistics (columns 0, 1, 3, 4) of a chunk of its rows of S; on_same: S at positives."""
    st[:, 0] = torch.logsumexp(s, 1)
    st[:, 1] = on_same.sum(1)
    st[:, 3] = s.sum(1)
    st[:, 4] = (torch.softmax(s, 1) * s).sum(1)


def _rows_cpu(a, b, la, lb, scale, bias, siglip):
    Ma, Nb = a.shape[0], b.shape[0]
    stats = torch.zeros((Ma, STATS), dtype=torch.float32, device=a.device)
    if _fused(a):
        _fused_forward(siglip, a, b, la, lb, scale, bias, stats, None)
        return stats
    bf, chunk = b.float(), _chunk(Nb)
    for r0 in range(0, Ma, chunk):
        s = _gemm.mm(a[r0:r0 + chunk].float(), bf.t()).mul_(scale).add_(bias)
        same = la[r0:r0 + chunk, None] == lb[None, :]
        st = stats[r0:r0 + chunk]
        st[:, 2] = same.sum(1)
        if siglip:
            st[:, 0] = torch.nn.functional.softplus(torch.where(same, -s, s)).sum(1)
            ds = _dterm_cpu(s, same, None, None, 1.0, 0.0, Nb, True)
            st[:, 4] = (ds * (s - bias)).sum(1)
            st[:, 5] = ds.sum(1)
        elif Nb:
            _clip_row_stats(st, s, torch.where(same, s, 0))
        else:
            st[:, 0] = float("-inf")
    return stats


def _chunk_stats(siglip, s, r0, la, lb, scale, bias, row, col):
    """The fused C++ forward pass over a chunk s of raw scores (rows r0...; la, lb int64): its rows' statistics
    into row, CLIP's pair's running column statistics into col (or None)."""
    _backend.ext.cpu.contrastive_chunk_forward(siglip, s.shape[0], s.shape[1], s.stride(0), scale, bias,
                                               s.data_ptr(), la[r0:].data_ptr(), lb.data_ptr(), row[r0:].data_ptr(),
                                               0 if col is None else col.data_ptr(), torch.get_num_threads())


def _chunk_dscores(siglip, s, r0, la, lb, scale, bias, sa, wa, sb, wb, Ma, eps):
    """dS in place over a chunk s of raw scores (rows r0...): the rows' terms times wa, with sb the columns'."""
    Nb = s.shape[1]
    _backend.ext.cpu.contrastive_chunk_dscores(
        siglip, s.shape[0], Nb, s.stride(0), scale, bias, s.data_ptr(), la[r0:].data_ptr(), lb.data_ptr(),
        s.data_ptr(), sa[r0:].data_ptr(), wa[r0:].data_ptr(), Nb, 0 if sb is None else sb.data_ptr(),
        0 if wb is None else wb.data_ptr(), Ma, eps, torch.get_num_threads())


def _chunk_grads(ds, af, bf, rows, da, db):
    """A chunk of rows' dS into dA (its rows) and dB (accumulated), both before the scale."""
    _gemm.mm(ds, bf, out=da[rows])
    _gemm.mm(ds.t(), af[rows], out=db, beta=1.0)


def _fused_forward(siglip, a, b, la, lb, scale, bias, row, col):
    """The fused C++ forward over S's row chunks (fp32): the rows' statistics into row (Ma, 6) and, for CLIP's
    pair, the columns' running statistics into col (6, Nb), else None."""
    bf, chunk = b.float(), _chunk(b.shape[0])
    la, lb = la.to(torch.int64).contiguous(), lb.to(torch.int64).contiguous()
    for r0 in range(0, a.shape[0], chunk):
        _chunk_stats(siglip, _gemm.mm(a[r0:r0 + chunk], bf.t()), r0, la, lb, scale, bias, row, col)


def _siglip_with_grads_cpu(a, b, la, lb, scale, bias):
    """SigLIP's row statistics and, from the same chunks of S, the gradients of A and B for unit row weights
    (a sum of the row losses): three GEMMs over S, where a forward and a backward apart take four (the backward
    computes S again). fp32 on the fused C++ passes."""
    Ma, D = a.shape
    Nb = b.shape[0]
    stats = torch.zeros((Ma, STATS), dtype=torch.float32)
    da, db = torch.empty((Ma, D), dtype=torch.float32), torch.zeros((Nb, D), dtype=torch.float32)
    ones = torch.ones(Ma, dtype=torch.float32)
    la, lb = la.to(torch.int64).contiguous(), lb.to(torch.int64).contiguous()
    chunk = _chunk(Nb)
    for r0 in range(0, Ma, chunk):
        rows = slice(r0, r0 + chunk)
        s = _gemm.mm(a[rows], b.t())
        _chunk_stats(True, s, r0, la, lb, scale, bias, stats, None)
        _chunk_dscores(True, s, r0, la, lb, scale, bias, stats, ones, None, None, Ma, 0.0)
        _chunk_grads(s, a, b, rows, da, db)
    return stats, da.mul_(scale), db.mul_(scale)


def _fused(a):
    """The fused C++ passes over S's chunks (csrc/cpu/contrastive_loss.cpp) apply: fp32, the extension built."""
    return a.dtype == torch.float32 and _backend.ext is not None and hasattr(_backend.ext.cpu,
                                                                            "contrastive_chunk_forward")


def _rows_both_cpu(a, b, la, lb, scale, bias):
    """CLIP's two directions' statistics from one pass over S's row chunks: each chunk's rows are finished on the
    spot, its columns are folded into running column statistics (an online logsumexp, and the softmax-weighted
    sum of S rescaled with it), so S is computed once, not once per direction. fp32 runs the fused C++ passes;
    other dtypes the same math as torch operations."""
    Ma, Nb = a.shape[0], b.shape[0]
    sa = torch.zeros((Ma, STATS), dtype=torch.float32, device=a.device)
    sb = torch.zeros((Nb, STATS), dtype=torch.float32, device=a.device)
    col = torch.zeros((6, Nb), dtype=torch.float32, device=a.device)  # max, sum exp, sum exp S, pos, count, sum
    col[0] = float("-inf")
    m, l, t = col[0], col[1], col[2]
    bf, chunk = b.float(), _chunk(Nb)
    fused = _fused(a)
    if fused:
        _fused_forward(False, a, b, la, lb, scale, bias, sa, col)
    for r0 in range(0, 0 if fused else Ma, chunk):  # the same math as torch operations
        s = _gemm.mm(a[r0:r0 + chunk].float(), bf.t()).mul_(scale).add_(bias)
        same = la[r0:r0 + chunk, None] == lb[None, :]
        on_same = torch.where(same, s, 0)
        st = sa[r0:r0 + chunk]
        st[:, 2] = same.sum(1)
        col[4] += same.sum(0)
        if not Nb:
            st[:, 0] = float("-inf")
            continue
        _clip_row_stats(st, s, on_same)
        col[3] += on_same.sum(0)
        col[5] += s.sum(0)
        new_m = torch.maximum(m, s.amax(0))
        rescale = torch.exp(m - new_m)  # the first chunk: exp(-inf) = 0 for the empty sums
        e = torch.exp(s - new_m)
        l.mul_(rescale).add_(e.sum(0))
        t.mul_(rescale).add_((e * s).sum(0))
        m.copy_(new_m)
    sb[:, 0] = m + torch.log(l)  # -inf for a column with no rows (Ma == 0)
    sb[:, 1:4] = col[3:6].t()
    sb[:, 4] = torch.where(l > 0, t / l.clamp_min(torch.finfo(torch.float32).tiny), 0)
    return sa, sb


def _grads_cpu(a, b, la, lb, sa, wa, sb, wb, scale, bias, eps, siglip):
    Ma, D = a.shape
    Nb = b.shape[0]
    af, bf = a.float(), b.float()
    da = torch.empty((Ma, D), dtype=torch.float32, device=a.device)
    db = torch.zeros((Nb, D), dtype=torch.float32, device=a.device)
    chunk = _chunk(Nb)
    fused = _fused(a)
    if fused:
        la, lb = la.to(torch.int64).contiguous(), lb.to(torch.int64).contiguous()
        sa, wa = sa.contiguous(), wa.contiguous()
        sb, wb = (None, None) if sb is None else (sb.contiguous(), wb.contiguous())
    for r0 in range(0, Ma, chunk):
        rows = slice(r0, r0 + chunk)
        if fused:  # dS in place over the raw scores, both directions' terms in one pass
            ds = _gemm.mm(af[rows], bf.t())
            _chunk_dscores(siglip, ds, r0, la, lb, scale, bias, sa, wa, sb, wb, Ma, eps)
        else:
            s = _gemm.mm(af[rows], bf.t()).mul_(scale).add_(bias)
            same = la[rows, None] == lb[None, :]
            ds = _dterm_cpu(s, same, sa[rows, 0:1], sa[rows, 2:3], wa[rows, None], eps, Nb, siglip)
            if sb is not None:
                ds += _dterm_cpu(s, same, sb[None, :, 0], sb[None, :, 2], wb[None, :], eps, Ma, siglip)
        _chunk_grads(ds, af, bf, rows, da, db)
    return da.mul_(scale), db.mul_(scale)


def _row_losses(stats, Nb, eps, siglip):
    if siglip:
        return stats[:, 0].clone()  # not a view: a custom op's outputs must not alias
    pos = torch.where(stats[:, 2] > 0, stats[:, 1] / stats[:, 2].clamp_min(1), torch.zeros_like(stats[:, 1]))
    return stats[:, 0] - (1 - eps) * pos - (eps / Nb) * stats[:, 3] if Nb else stats[:, 0].clone()


def _scale_bias_sums(stats, Nb, bias, eps, siglip):
    """Per row of a direction, sum_j G_ij (S_ij - bias) and sum_j G_ij with G = d loss_i / d S_ij, from the
    forward's statistics (the backward multiplies them by the row weights)."""
    if siglip or Nb == 0:
        return stats[:, 4], stats[:, 5]
    has = (stats[:, 2] > 0).float()
    t_sum = (1 - eps) * has + eps
    t_dot_s = (1 - eps) * has * stats[:, 1] / stats[:, 2].clamp_min(1) + (eps / Nb) * stats[:, 3]
    g2 = 1 - t_sum
    return stats[:, 4] - t_dot_s - bias * g2, g2


def _with_grads(kind, backend, both, pre, a):
    """Whether the forward also makes the gradients (see _rows_op): asked for, SigLIP on the fused CPU passes."""
    return pre and kind == "siglip" and not both and backend == "cpu" and _fused(a)


def _forward(kind, backend, eps, both, pre, a, b, la, lb, scale, bias):
    siglip = kind == "siglip"
    Ma, Nb = a.shape[0], b.shape[0]
    if _with_grads(kind, backend, both, pre, a):
        sa, da, db = _siglip_with_grads_cpu(a, b, la, lb, scale, bias)
        return _row_losses(sa, Nb, eps, True), sa.new_empty((0,)), sa, sa.new_empty((0, STATS)), da, db
    if backend == "triton":
        la, lb = la.to(torch.int32), lb.to(torch.int32)  # 32-bit ids: fewer registers in the kernels
        sa, sb = _kernels().stats(a, b, la, lb, scale, bias, siglip, both)
    elif both and not siglip:
        sa, sb = _rows_both_cpu(a, b, la, lb, scale, bias)
    else:
        sa = _rows_cpu(a, b, la, lb, scale, bias, siglip)
        sb = _rows_cpu(b, a, lb, la, scale, bias, siglip) if both else None
    if not both:
        sb = sa.new_empty((0, STATS))
    none = [sa.new_empty((0,)) for _ in range(3)]  # distinct tensors: a custom op's outputs must not alias
    return _row_losses(sa, Nb, eps, siglip), _row_losses(sb, Ma, eps, siglip) if both else none[0], sa, sb, *none[1:]


def _scale_bias_grads(siglip, eps, wa, wb, Ma, Nb, scale, bias, sa, sb):
    """d loss / d scale and d bias from the rows' statistics and weights (wb, sb: the columns', or None)."""
    g1, g2 = _scale_bias_sums(sa, Nb, bias, eps, siglip)
    dscale, dbias = (wa * g1).sum(), (wa * g2).sum()
    if sb is not None:
        g1, g2 = _scale_bias_sums(sb, Ma, bias, eps, siglip)
        dscale, dbias = dscale + (wb * g1).sum(), dbias + (wb * g2).sum()
    dscale = dscale / scale if scale != 0 else dscale * 0
    return dscale.reshape(()), dbias.reshape(())


def _backward_impl(kind, backend, eps, both, ga, gb, a, b, la, lb, scale, bias, sa, sb):
    siglip = kind == "siglip"
    wa = ga.float().contiguous()
    wb = gb.float().contiguous() if both else None
    sb = sb if both else None
    if backend == "triton":
        la, lb = la.to(torch.int32), lb.to(torch.int32)
        da, db = _kernels().grads(a, b, la, lb, sa, wa, sb, wb, scale, bias, eps, siglip)
    else:
        da, db = _grads_cpu(a, b, la, lb, sa, wa, sb, wb, scale, bias, eps, siglip)
    dscale, dbias = _scale_bias_grads(siglip, eps, wa, wb, a.shape[0], b.shape[0], scale, bias, sa, sb)
    return da.to(a.dtype), db.to(b.dtype), dscale, dbias


# One direction (rows of A against all of B) or both (also rows of B against all of A: CLIP's symmetric loss,
# whose backward then forms both directions' dS in one pass) as a torch.library custom op (eager autograd and
# torch.compile both run it): per-row losses, differentiable in A, B, scale and bias. scale and bias travel as
# 0-d tensors, read once on the host. `pre` (the caller's word that a backward will follow with the same weight
# on every row, as a sum or mean of the losses gives): where _with_grads, the forward also makes the gradients of
# A and B for unit row weights from the chunks of S it has anyway (the last two outputs, else empty), and a
# backward with equal row weights scales them instead of computing S again.
@torch.library.custom_op("crossfuse::contrastive_rows", mutates_args=())
def _rows_op(kind: str, backend: str, eps: float, both: bool, pre: bool, a: torch.Tensor, b: torch.Tensor,
             la: torch.Tensor, lb: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return _forward(kind, backend, eps, both, pre, a, b, la, lb, float(scale), float(bias))


@_rows_op.register_fake
def _(kind, backend, eps, both, pre, a, b, la, lb, scale, bias):
    Nb = b.shape[0] if both else 0
    f32 = dict(dtype=torch.float32)
    grads = ((a.shape, b.shape) if _with_grads(kind, backend, both, pre, a) else ((0,), (0,)))
    return (a.new_empty((a.shape[0],), **f32), a.new_empty((Nb,), **f32), a.new_empty((a.shape[0], STATS), **f32),
            a.new_empty((Nb, STATS), **f32), a.new_empty(grads[0], **f32), a.new_empty(grads[1], **f32))


@torch.library.custom_op("crossfuse::contrastive_rows_backward", mutates_args=())
def _rows_backward_op(kind: str, backend: str, eps: float, both: bool, ga: torch.Tensor, gb: torch.Tensor,
                      a: torch.Tensor, b: torch.Tensor, la: torch.Tensor, lb: torch.Tensor, scale: torch.Tensor,
                      bias: torch.Tensor, sa: torch.Tensor, sb: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return _backward_impl(kind, backend, eps, both, ga, gb, a, b, la, lb, float(scale), float(bias), sa, sb)


@_rows_backward_op.register_fake
def _(kind, backend, eps, both, ga, gb, a, b, la, lb, scale, bias, sa, sb):
    return torch.empty_like(a), torch.empty_like(b), scale.new_empty(()), scale.new_empty(())


def _setup_context(ctx, inputs, output):
    kind, backend, eps, both, _, a, b, la, lb, scale, bias = inputs
    ctx.args = (kind, backend, eps, both)
    ctx.save_for_backward(a, b, la, lb, scale, bias, output[2], output[3], output[4], output[5])


def _backward(ctx, ga, gb, _dsa, _dsb, _dda, _ddb):
    a, b, la, lb, scale, bias, sa, sb, da1, db1 = ctx.saved_tensors
    if gb is None:
        gb = sb.new_zeros((sb.shape[0],))
    if ga is None:
        ga = sa.new_zeros((sa.shape[0],))
    w = ga[:1].float()
    if da1.dim() == 2 and bool((ga == w).all()):  # the forward's gradients, for equal row weights w
        kind, _, eps, _ = ctx.args
        dscale, dbias = _scale_bias_grads(kind == "siglip", eps, ga.float(), None, a.shape[0], b.shape[0],
                                          float(scale), float(bias), sa, None)
        w = w.reshape(()) if w.numel() else w.new_zeros(())
        da, db = (da1 * w).to(a.dtype), (db1 * w).to(b.dtype)
    else:
        da, db, dscale, dbias = _rows_backward_op(*ctx.args, ga, gb, a, b, la, lb, scale, bias, sa, sb)
    return None, None, None, None, None, da, db, None, None, dscale.to(scale.dtype), dbias.to(bias.dtype)


_rows_op.register_autograd(_backward, setup_context=_setup_context)


def direction_losses(kind, a, b, la, lb, scale, bias, eps, backend, summed=False):
    """The per-row losses of one direction (rows of a against all of b); scale / bias are 0-d fp32 tensors.
    summed: the caller sums or averages them (every row's loss then gets the same gradient weight)."""
    pre = summed and torch.is_grad_enabled() and (a.requires_grad or b.requires_grad) \
        and not torch.compiler.is_compiling()
    return _rows_op(kind, backend, float(eps), False, pre, a, b, la, lb, scale, bias)[0]


def pair_losses(kind, a, b, la, lb, scale, bias, eps, backend):
    """The per-row losses of both directions, (rows of a against b, rows of b against a), in one op."""
    out = _rows_op(kind, backend, float(eps), True, False, a, b, la, lb, scale, bias)
    return out[0], out[1]


def _as_scalar(op, name, v, device):
    if isinstance(v, torch.Tensor):
        if v.numel() != 1:
            raise ValueError(f"{op}: expected {name} to be a scalar (one element), got shape {tuple(v.shape)}")
        if v.device != device and v.device.type != "cpu":
            raise ValueError(f"{op}: expected {name} on device {device} or the CPU, got {v.device}")
        return v.reshape(()).float()
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return torch.tensor(float(v))
    raise TypeError(f"{op}: expected {name} to be a float or a one-element tensor, got {type(v).__name__}")


def check(op, image_emb, text_emb, labels, kind, label_smoothing, reduction, same_batch=True):
    for name, t in (("image_emb", image_emb), ("text_emb", text_emb)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: expected {name} to be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 2:
            raise ValueError(f"{op}: expected {name} of shape (batch, dim), got {tuple(t.shape)}")
    if image_emb.dtype not in _backend.DTYPE_CODES:
        raise TypeError(f"{op}: expected image_emb of dtype float32, float16 or bfloat16, got {image_emb.dtype}")
    if text_emb.dtype != image_emb.dtype:
        raise TypeError(f"{op}: expected text_emb to have dtype {image_emb.dtype} (image_emb's), got {text_emb.dtype}")
    if text_emb.device != image_emb.device:
        raise ValueError(f"{op}: expected text_emb on device {image_emb.device}, got {text_emb.device}")
    if text_emb.shape[1] != image_emb.shape[1] or (same_batch and text_emb.shape[0] != image_emb.shape[0]):
        raise ValueError(f"{op}: expected text_emb of shape {tuple(image_emb.shape)} (image_emb's), got "
                         f"{tuple(text_emb.shape)}")
    if kind not in KINDS:
        raise ValueError(f"{op}: expected kind in {KINDS}, got {kind!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"{op}: expected reduction in {REDUCTIONS}, got {reduction!r}")
    if not isinstance(label_smoothing, (int, float)) or not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"{op}: expected label_smoothing in [0, 1), got {label_smoothing!r}")
    if labels is not None:
        if not isinstance(labels, torch.Tensor) or labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise TypeError(f"{op}: expected labels to be an integer tensor, got "
                            f"{labels.dtype if isinstance(labels, torch.Tensor) else type(labels).__name__}")
        if tuple(labels.shape) != (image_emb.shape[0],):
            raise ValueError(f"{op}: expected labels of shape {(image_emb.shape[0],)}, got {tuple(labels.shape)}")


def contrastive_loss(image_emb, text_emb, logit_scale, *, logit_bias=None, kind="clip", labels=None,
                     label_smoothing=0.0, reduction="mean", backend=None):
    """CLIP (kind="clip") or SigLIP (kind="siglip") loss of matching embeddings (B, D), without the (B, B) logits.

    logit_scale multiplies the similarities (pass open_clip's logit_scale.exp()); logit_bias is SigLIP's bias.
    labels (B,) integers: pairs with equal labels are positives (default: i with i). reduction "mean" (CLIP: the
    average of both directions' mean cross entropy; SigLIP: the sum over pairs / B, as open_clip), "sum" or "none"
    (per sample). Gradients flow to both embeddings, logit_scale and logit_bias.
    """
    op = OP
    check(op, image_emb, text_emb, labels, kind, label_smoothing, reduction)
    device = image_emb.device
    if kind == "siglip" and logit_bias is None:
        raise ValueError(f"{op}: kind='siglip' needs logit_bias")
    scale = _as_scalar(op, "logit_scale", logit_scale, device).to(device)
    bias = _as_scalar(op, "logit_bias", logit_bias, device).to(device) if logit_bias is not None else None
    chosen = _backend.choose(op, device, backend)
    if chosen == "reference":
        from crossfuse.reference.contrastive_loss import contrastive_loss as ref
        return ref(image_emb, text_emb, scale, bias, kind, labels, float(label_smoothing), reduction)
    B = image_emb.shape[0]
    lab = (torch.arange(B, device=device) if labels is None else labels.to(device)).to(torch.int64).contiguous()
    zero = torch.zeros((), device=device)
    b = bias if bias is not None else zero
    eps = float(label_smoothing)
    if kind == "clip":
        i2t, t2i = pair_losses(kind, image_emb, text_emb, lab, lab, scale, b, eps, chosen)
        rows = 0.5 * (i2t + t2i)
    else:
        rows = direction_losses(kind, image_emb, text_emb, lab, lab, scale, b, eps, chosen, reduction != "none")
    if reduction == "none":
        return rows.to(image_emb.dtype)
    return (rows.sum() if reduction == "sum" else rows.mean()).to(image_emb.dtype)
