"""contrastive_loss: CLIP's symmetric InfoNCE and SigLIP's pairwise sigmoid loss without the (B, B) logits.

The unit is one direction: rows of A against all rows of B, giving a loss per row of A (kernels/
contrastive_loss.py on the `triton` backend; on `cpu`, the same tiling with torch GEMMs on row chunks). CLIP is
two directions (images against texts, texts against images), SigLIP one. Extra memory is O(rows) (plus O(rows x D)
for the fp32 gradients), never O(B^2). Rectangular directions serve the distributed losses of crossfuse.nn.
"""
from __future__ import annotations

import importlib

import torch

from crossfuse import _backend

OP = "contrastive_loss"
_backend.register_op(OP, ("reference", "triton", "cpu"))
KINDS = ("clip", "siglip")
REDUCTIONS = ("mean", "sum", "none")
def _chunk(Nb):
    """Rows of A per torch GEMM on the cpu path: about 2^20 scores at a time, whatever B."""
    return max(16, min(1024, (1 << 20) // max(Nb, 1)))


def _kernels():
    return importlib.import_module("crossfuse.kernels.contrastive_loss")


# ---- the cpu path: the kernels' tiling with torch GEMMs on chunks of rows ----------------------------------
def _rows_cpu(a, b, la, lb, scale, bias, siglip):
    Ma, Nb = a.shape[0], b.shape[0]
    stats = torch.zeros((Ma, 4), dtype=torch.float32, device=a.device)
    bf, chunk = b.float(), _chunk(Nb)
    for r0 in range(0, Ma, chunk):
        s = torch.mm(a[r0:r0 + chunk].float(), bf.t()).mul_(scale).add_(bias)
        same = la[r0:r0 + chunk, None] == lb[None, :]
        st = stats[r0:r0 + chunk]
        st[:, 2] = same.sum(1)
        if siglip:
            st[:, 0] = torch.nn.functional.softplus(torch.where(same, -s, s)).sum(1)
        else:
            st[:, 0] = torch.logsumexp(s, 1) if Nb else float("-inf")
            st[:, 1] = torch.where(same, s, 0).sum(1)
            st[:, 3] = s.sum(1)
    return stats


def _dscores_cpu(s, same, lse, cnt, w, eps, Nb, siglip):
    if siglip:
        sig = torch.sigmoid(torch.where(same, -s, s))
        ds = torch.where(same, -sig, sig)
    else:
        ds = torch.exp(s - lse[:, None]) - (torch.where(same, (1 - eps) / cnt.clamp_min(1)[:, None], 0) + eps / Nb)
    return ds.mul_(w[:, None])


def _grads_cpu(a, b, la, lb, stats, w, scale, bias, eps, siglip):
    Ma, D = a.shape
    Nb = b.shape[0]
    af, bf = a.float(), b.float()
    da = torch.empty((Ma, D), dtype=torch.float32, device=a.device)
    db = torch.zeros((Nb, D), dtype=torch.float32, device=a.device)
    dss = torch.zeros((Ma, 2), dtype=torch.float32, device=a.device)
    chunk = _chunk(Nb)
    for r0 in range(0, Ma, chunk):
        rows = slice(r0, r0 + chunk)
        raw = torch.mm(af[rows], bf.t())
        s = raw * scale + bias
        same = la[rows, None] == lb[None, :]
        ds = _dscores_cpu(s, same, stats[rows, 0], stats[rows, 2], w[rows], eps, Nb, siglip)
        dss[rows, 0] = (ds * raw).sum(1) * scale
        dss[rows, 1] = ds.sum(1)
        da[rows] = torch.mm(ds, bf).mul_(scale)
        db.addmm_(ds.t(), af[rows], alpha=scale)
    return da, db, dss


def _row_losses(stats, Nb, eps, siglip):
    if siglip:
        return stats[:, 0].clone()  # not a view: a custom op's outputs must not alias
    pos = torch.where(stats[:, 2] > 0, stats[:, 1] / stats[:, 2].clamp_min(1), torch.zeros_like(stats[:, 1]))
    return stats[:, 0] - (1 - eps) * pos - (eps / Nb) * stats[:, 3] if Nb else stats[:, 0].clone()


def _direction_forward(kind, backend, eps, a, b, la, lb, scale, bias):
    siglip = kind == "siglip"
    if backend == "triton":
        la, lb = la.to(torch.int32), lb.to(torch.int32)  # 32-bit ids: fewer registers in the kernels
        stats = _kernels().rows(a, b, la, lb, scale, bias, siglip)
    else:
        stats = _rows_cpu(a, b, la, lb, scale, bias, siglip)
    return _row_losses(stats, b.shape[0], eps, siglip), stats


def _direction_backward(kind, backend, eps, g, a, b, la, lb, scale, bias, stats):
    siglip = kind == "siglip"
    w = g.float().contiguous()
    if backend == "triton":
        la, lb = la.to(torch.int32), lb.to(torch.int32)
        da, db, dss = _kernels().grads(a, b, la, lb, stats, w, scale, bias, eps, siglip)
    else:
        da, db, dss = _grads_cpu(a, b, la, lb, stats, w, scale, bias, eps, siglip)
    dscale = dss[:, 0].sum() / scale if scale != 0 else dss[:, 0].sum() * 0
    return da.to(a.dtype), db.to(b.dtype), dscale.reshape(()), dss[:, 1].sum().reshape(())


# One direction as a torch.library custom op (eager autograd and torch.compile both run it): per-row losses,
# differentiable in A, B, scale and bias. scale and bias travel as 0-d tensors, read once on the host.
@torch.library.custom_op("crossfuse::contrastive_direction", mutates_args=())
def _direction_op(kind: str, backend: str, eps: float, a: torch.Tensor, b: torch.Tensor, la: torch.Tensor,
                  lb: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return _direction_forward(kind, backend, eps, a, b, la, lb, float(scale), float(bias))


@_direction_op.register_fake
def _(kind, backend, eps, a, b, la, lb, scale, bias):
    return a.new_empty((a.shape[0],), dtype=torch.float32), a.new_empty((a.shape[0], 4), dtype=torch.float32)


@torch.library.custom_op("crossfuse::contrastive_direction_backward", mutates_args=())
def _direction_backward_op(kind: str, backend: str, eps: float, g: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                           la: torch.Tensor, lb: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor,
                           stats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return _direction_backward(kind, backend, eps, g, a, b, la, lb, float(scale), float(bias), stats)


@_direction_backward_op.register_fake
def _(kind, backend, eps, g, a, b, la, lb, scale, bias, stats):
    return torch.empty_like(a), torch.empty_like(b), scale.new_empty(()), scale.new_empty(())


def _setup_context(ctx, inputs, output):
    kind, backend, eps, a, b, la, lb, scale, bias = inputs
    ctx.args = (kind, backend, eps)
    ctx.save_for_backward(a, b, la, lb, scale, bias, output[1])


def _backward(ctx, g, _dstats):
    a, b, la, lb, scale, bias, stats = ctx.saved_tensors
    da, db, dscale, dbias = _direction_backward_op(*ctx.args, g, a, b, la, lb, scale, bias, stats)
    return None, None, None, da, db, None, None, dscale.to(scale.dtype), dbias.to(bias.dtype)


_direction_op.register_autograd(_backward, setup_context=_setup_context)


def direction_losses(kind, a, b, la, lb, scale, bias, eps, backend):
    """The per-row losses of one direction; scale / bias are 0-d fp32 tensors."""
    return _direction_op(kind, backend, float(eps), a, b, la, lb, scale, bias)[0]


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
    rows = direction_losses(kind, image_emb, text_emb, lab, lab, scale, b, eps, chosen)
    if kind == "clip":
        rows = 0.5 * (rows + direction_losses(kind, text_emb, image_emb, lab, lab, scale, b, eps, chosen))
    if reduction == "none":
        return rows.to(image_emb.dtype)
    return (rows.sum() if reduction == "sum" else rows.mean()).to(image_emb.dtype)
