"""cross_attention / cross_attention_varlen: masked, variable-length, grouped-head attention with backward.

Backends: `triton` (CUDA tensors; CPU tensors under TRITON_INTERPRET=1) and `reference` (any device; the
default on CPU). The Triton backward is deterministic by construction (no atomics), so `deterministic=True`
costs nothing.
"""
from __future__ import annotations

import importlib

import torch

from crossfuse import _backend
from crossfuse._autograd import once_differentiable

OP = "cross_attention"
_backend.register_op(OP, ("reference", "triton"))
_SEGMENT_MATCH = ("equal", "le")
_kernels = None


def _k():
    global _kernels
    if _kernels is None:
        _kernels = importlib.import_module("crossfuse.kernels.cross_attention")
    return _kernels


def _new(shape, dtype, device):
    return _backend.empty(shape, dtype=dtype, device=device)


def _alloc_like_heads(t, varlen, new=_new):
    """A (B, H, L, D) result stored as (B, L, H, D), the layout the projections around attention want (so a
    caller's transpose + reshape is free); packed (total, H, D) results are plain."""
    if varlen:
        return new(t.shape, t.dtype, t.device)
    B, H, L, D = t.shape
    return new((B, L, H, D), t.dtype, t.device).transpose(1, 2)


def _fake_new(shape, dtype, device):
    return torch.empty(shape, dtype=dtype, device=device)


def _problem(q, k, masks, scale, dropout_p, seed, varlen):
    kpm, kv_len, q_seg, kv_seg, seg_le, cu_q, cu_k, max_q, max_k = masks
    return _k().Problem(q, k, cu_q=cu_q, cu_k=cu_k, max_q=max_q, max_k=max_k, kv_lengths=kv_len,
                        key_padding_mask=kpm, q_segment_ids=q_seg, kv_segment_ids=kv_seg, segment_le=seg_le,
                        scale=scale, dropout_p=dropout_p, seed=seed)


def _triton_forward(q, k, v, masks, scale, dropout_p, seed):
    varlen = masks[5] is not None
    out = _alloc_like_heads(q, varlen)
    lse_shape = (q.shape[1], q.shape[0]) if varlen else q.shape[:3]
    lse = _new(lse_shape, torch.float32, q.device)
    _k().forward(_problem(q, k, masks, scale, dropout_p, seed, varlen), q, k, v, out, lse)
    return out, lse


def _triton_backward(do, q, k, v, out, lse, masks, scale, dropout_p, seed):
    varlen = masks[5] is not None
    dq, dk, dv = (_alloc_like_heads(t, varlen) for t in (q, k, v))
    _k().backward(_problem(q, k, masks, scale, dropout_p, seed, varlen), q, k, v, out, lse, do, dq, dk, dv)
    return dq, dk, dv


class _AttentionFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, masks, scale, dropout_p, seed):
        out, lse = _triton_forward(q, k, v, masks, scale, dropout_p, seed)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.args = (masks, scale, dropout_p, seed)
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    @once_differentiable  # the kernels record no graph: a second derivative raises, never comes out wrong
    def backward(ctx, do, dlse):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = _triton_backward(do, q, k, v, out, lse, *ctx.args)
        return dq, dk, dv, None, None, None, None


# ---- torch.library custom op (what torch.compile traces) -------------------------------------------------
@torch.library.custom_op("crossfuse::cross_attention", mutates_args=())
def _attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_padding_mask: torch.Tensor | None,
                  kv_lengths: torch.Tensor | None, q_segment_ids: torch.Tensor | None,
                  kv_segment_ids: torch.Tensor | None, segment_le: bool, cu_q: torch.Tensor | None,
                  cu_k: torch.Tensor | None, max_q: int, max_k: int, scale: float, dropout_p: float,
                  seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    masks = (key_padding_mask, kv_lengths, q_segment_ids, kv_segment_ids, segment_le, cu_q, cu_k, max_q, max_k)
    return _triton_forward(q, k, v, masks, scale, dropout_p, seed)


@_attention_op.register_fake
def _(q, k, v, key_padding_mask, kv_lengths, q_segment_ids, kv_segment_ids, segment_le, cu_q, cu_k, max_q, max_k,
      scale, dropout_p, seed):
    varlen = cu_q is not None
    lse_shape = (q.shape[1], q.shape[0]) if varlen else q.shape[:3]
    return _alloc_like_heads(q, varlen, _fake_new), q.new_empty(lse_shape, dtype=torch.float32)


@torch.library.custom_op("crossfuse::cross_attention_backward", mutates_args=())
def _attention_backward_op(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                           lse: torch.Tensor, key_padding_mask: torch.Tensor | None, kv_lengths: torch.Tensor | None,
                           q_segment_ids: torch.Tensor | None, kv_segment_ids: torch.Tensor | None,
                           segment_le: bool, cu_q: torch.Tensor | None, cu_k: torch.Tensor | None, max_q: int,
                           max_k: int, scale: float, dropout_p: float, seed: int
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    masks = (key_padding_mask, kv_lengths, q_segment_ids, kv_segment_ids, segment_le, cu_q, cu_k, max_q, max_k)
    return _triton_backward(do, q, k, v, out, lse, masks, scale, dropout_p, seed)


@_attention_backward_op.register_fake
def _(do, q, k, v, out, lse, key_padding_mask, kv_lengths, q_segment_ids, kv_segment_ids, segment_le, cu_q, *rest):
    return tuple(_alloc_like_heads(t, cu_q is not None, _fake_new) for t in (q, k, v))


def _setup_context(ctx, inputs, output):
    q, k, v, *rest = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.rest = rest
    ctx.mark_non_differentiable(lse)


def _backward(ctx, do, dlse):
    q, k, v, out, lse = ctx.saved_tensors
    dq, dk, dv = _attention_backward_op(do, q, k, v, out, lse, *ctx.rest)
    return (dq, dk, dv) + (None,) * len(ctx.rest)


_attention_op.register_autograd(_backward, setup_context=_setup_context)


# ---- validation ------------------------------------------------------------------------------------------
def _check_qkv(op, q, k, v, ndim, layout):
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: expected {name} to be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != ndim:
            raise ValueError(f"{op}: expected {name} to be {ndim}-D {layout}, got shape {tuple(t.shape)}")
    if q.dtype not in _backend.DTYPE_CODES:
        raise TypeError(f"{op}: expected q of dtype float32, float16 or bfloat16, got {q.dtype}")
    for name, t in (("k", k), ("v", v)):
        if t.dtype != q.dtype:
            raise TypeError(f"{op}: expected {name} to have dtype {q.dtype} (the dtype of q), got {t.dtype}")
        if t.device != q.device:
            raise ValueError(f"{op}: expected {name} on device {q.device} (the device of q), got {t.device}")
    if k.shape != v.shape:
        raise ValueError(f"{op}: expected k and v of the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    D = q.shape[-1]
    if k.shape[-1] != D:
        raise ValueError(f"{op}: expected k's head dim {D} (q's), got {k.shape[-1]}")
    if not 1 <= D <= 256:
        raise ValueError(f"{op}: expected a head dim from 1 to 256, got {D}")
    hq, hkv = q.shape[1], k.shape[1]  # (B, H, L, D) and packed (total, H, D) both keep heads at dim 1
    if hkv == 0 or hq % hkv:
        raise ValueError(f"{op}: expected q's heads ({hq}) to be a multiple of k's heads ({hkv})")


def _int_tensor(op, name, t, shape, device):
    if t is None:
        return None
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: expected {name} to be a torch.Tensor, got {type(t).__name__}")
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise TypeError(f"{op}: expected {name} to have an integer dtype, got {t.dtype}")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{op}: expected {name} of shape {tuple(shape)}, got {tuple(t.shape)}")
    if t.device != device:
        raise ValueError(f"{op}: expected {name} on device {device} (the device of q), got {t.device}")
    return t.to(torch.int32)


def _seed(dropout_p):
    return int(torch.randint(0, 2 ** 31 - 1, (1,)).item()) if dropout_p > 0.0 else 0


def _check_common(op, scale, dropout_p):
    if scale is not None and not isinstance(scale, (int, float)):
        raise TypeError(f"{op}: expected scale to be a float or None, got {type(scale).__name__}")
    if not isinstance(dropout_p, (int, float)) or not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"{op}: expected dropout_p in [0, 1), got {dropout_p!r}")


_INTERPRETED = _backend.interpreter_on()


def _choose(q, backend):
    if torch.compiler.is_compiling():
        # traced: a static choice (use_backend's thread-local is not consulted inside a compiled region); the
        # reference is plain torch ops that compile as they are, the Triton path is the custom op
        return backend or ("triton" if q.is_cuda or _INTERPRETED else "reference")
    return _backend.choose(OP, q.device, backend)


def _run(q, k, v, masks, scale, dropout_p):
    seed = _seed(dropout_p)
    if torch.compiler.is_compiling():
        return _attention_op(q, k, v, *masks, scale, float(dropout_p), seed)
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        return _AttentionFunction.apply(q, k, v, masks, scale, float(dropout_p), seed)
    return _triton_forward(q, k, v, masks, scale, float(dropout_p), seed)


def cross_attention(q, k, v, *, key_padding_mask=None, kv_lengths=None, q_segment_ids=None, kv_segment_ids=None,
                    segment_match="equal", scale=None, dropout_p=0.0, deterministic=False, return_lse=False,
                    backend=None):
    """Attention of q (B, Hq, Lq, D) over k, v (B, Hkv, Lk, D) (SDPA's layout, any strides; Hq a multiple of Hkv).

    key_padding_mask (B, Lk) bool, True = ignore; kv_lengths (B,) ints: keys at positions >= length are
    ignored; q_segment_ids (B, Lq) / kv_segment_ids (B, Lk) ints: a query sees a key only where the ids match
    (segment_match "equal") or the key's id is <= the query's ("le"); a negative id sees / is seen by nothing.
    A query with no visible key returns 0 (and gets 0 gradient). dropout_p: attention dropout (apply it in
    training only, as F.scaled_dot_product_attention). Returns out (B, Hq, Lq, D), and with return_lse=True
    also the log-sum-exp (B, Hq, Lq) in fp32 (-inf for a query that sees nothing). The backward is
    deterministic with either value of `deterministic`.
    """
    op = OP
    _check_qkv(op, q, k, v, 4, "(batch, heads, length, head_dim)")
    B, Hq, Lq, D = q.shape
    Lk = k.shape[2]
    if k.shape[0] != B:
        raise ValueError(f"{op}: expected k's batch size {B} (q's), got {k.shape[0]}")
    if segment_match not in _SEGMENT_MATCH:
        raise ValueError(f"{op}: expected segment_match in {_SEGMENT_MATCH}, got {segment_match!r}")
    _check_common(op, scale, dropout_p)
    if not isinstance(deterministic, bool):
        raise TypeError(f"{op}: expected deterministic to be a bool, got {type(deterministic).__name__}")
    kpm = key_padding_mask
    if kpm is not None:
        if not isinstance(kpm, torch.Tensor):
            raise TypeError(f"{op}: expected key_padding_mask to be a torch.Tensor, got {type(kpm).__name__}")
        if kpm.dtype != torch.bool:
            raise TypeError(f"{op}: expected key_padding_mask of dtype torch.bool (True = ignore), got {kpm.dtype}")
        if tuple(kpm.shape) != (B, Lk):
            raise ValueError(f"{op}: expected key_padding_mask of shape {(B, Lk)}, got {tuple(kpm.shape)}")
        if kpm.device != q.device:
            raise ValueError(f"{op}: expected key_padding_mask on device {q.device}, got {kpm.device}")
    if (q_segment_ids is None) != (kv_segment_ids is None):
        raise ValueError(f"{op}: expected q_segment_ids and kv_segment_ids together, got only one of them")
    kv_len = _int_tensor(op, "kv_lengths", kv_lengths, (B,), q.device)
    qs = _int_tensor(op, "q_segment_ids", q_segment_ids, (B, Lq), q.device)
    ks = _int_tensor(op, "kv_segment_ids", kv_segment_ids, (B, Lk), q.device)
    # Checked where it costs no device sync (CPU tensors); on the GPU the kernels read a negative length as 0.
    if kv_len is not None and kv_len.is_cpu and kv_len.numel() and not torch.compiler.is_compiling() \
            and bool((kv_len < 0).any()):
        raise ValueError(f"{op}: expected kv_lengths >= 0, got {kv_lengths.min().item()}")
    scale = float(D ** -0.5 if scale is None else scale)

    chosen = _choose(q, backend)
    if chosen == "reference":
        from crossfuse.reference.cross_attention import cross_attention as ref
        res = ref(q, k, v, key_padding_mask=kpm, kv_lengths=kv_len, q_segment_ids=qs, kv_segment_ids=ks,
                  segment_match=segment_match, scale=scale, dropout_p=float(dropout_p), return_lse=return_lse)
        return res
    masks = (None if kpm is None else kpm.view(torch.uint8), kv_len, qs, ks, segment_match == "le", None, None,
             Lq, Lk)
    out, lse = _run(q, k, v, masks, scale, dropout_p)
    return (out, lse) if return_lse else out


def cross_attention_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *, scale=None,
                           dropout_p=0.0, deterministic=False, return_lse=False, backend=None):
    """Packed variable-length attention, FlashAttention's varlen convention: q (total_q, Hq, D), k and v
    (total_k, Hkv, D); sequence b spans rows cu_seqlens[b]:cu_seqlens[b + 1] (int32, length batch + 1).
    Returns out (total_q, Hq, D), and with return_lse=True the log-sum-exp (Hq, total_q) in fp32."""
    op = "cross_attention_varlen"
    _check_qkv(op, q, k, v, 3, "(total, heads, head_dim)")
    _check_common(op, scale, dropout_p)
    cu = []
    for name, c, total in (("cu_seqlens_q", cu_seqlens_q, q.shape[0]), ("cu_seqlens_k", cu_seqlens_k, k.shape[0])):
        if not isinstance(c, torch.Tensor) or c.dim() != 1 or c.numel() < 1:
            raise ValueError(f"{op}: expected {name} to be a 1-D tensor of batch + 1 offsets, got "
                             f"{type(c).__name__ if not isinstance(c, torch.Tensor) else tuple(c.shape)}")
        if c.dtype.is_floating_point or c.dtype == torch.bool:
            raise TypeError(f"{op}: expected {name} to have an integer dtype, got {c.dtype}")
        if c.device != q.device:
            raise ValueError(f"{op}: expected {name} on device {q.device}, got {c.device}")
        cu.append(c.to(torch.int32).contiguous())
    if cu[0].numel() != cu[1].numel():
        raise ValueError(f"{op}: expected cu_seqlens_q and cu_seqlens_k of the same length, got "
                         f"{cu[0].numel()} and {cu[1].numel()}")
    scale = float(q.shape[-1] ** -0.5 if scale is None else scale)
    chosen = _choose(q, backend)
    if chosen == "reference":
        return _varlen_reference(q, k, v, cu[0], cu[1], scale, float(dropout_p), return_lse)
    masks = (None, None, None, None, False, cu[0], cu[1], int(max_seqlen_q), int(max_seqlen_k))
    out, lse = _run(q, k, v, masks, scale, dropout_p)
    return (out, lse) if return_lse else out


def _varlen_reference(q, k, v, cu_q, cu_k, scale, dropout_p, return_lse):
    from crossfuse.reference.cross_attention import cross_attention as ref
    outs, lses = [], []
    bq, bk = cu_q.tolist(), cu_k.tolist()
    for b in range(len(bq) - 1):
        qb = q[bq[b]:bq[b + 1]].transpose(0, 1)[None]
        kb = k[bk[b]:bk[b + 1]].transpose(0, 1)[None]
        vb = v[bk[b]:bk[b + 1]].transpose(0, 1)[None]
        o, lse = ref(qb, kb, vb, scale=scale, dropout_p=dropout_p, return_lse=True)
        outs.append(o[0].transpose(0, 1))
        lses.append(lse[0])
    out = torch.cat(outs) if outs else q.new_empty(q.shape)
    lse = torch.cat(lses, dim=1) if lses else q.new_empty((q.shape[1], 0), dtype=torch.float32)
    return (out, lse) if return_lse else out
