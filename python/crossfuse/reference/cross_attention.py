"""Naive PyTorch cross-attention with padding, length and segment masks: the oracle for cross_attention.

It materialises the (B, Hq, Lq, Lk) scores. A query that sees no key gets 0 output, 0 gradient and a
log-sum-exp of -inf, never NaN.
"""
import torch


def visibility(B, Lq, Lk, device, key_padding_mask=None, kv_lengths=None, q_segment_ids=None, kv_segment_ids=None,
               segment_match="equal"):
    """(B, 1, Lq, Lk) bool: which key each query may see; None when everything is visible."""
    vis = None

    def both(a, m):
        return m if a is None else a & m

    if key_padding_mask is not None:
        vis = both(vis, ~key_padding_mask.bool()[:, None, None, :])
    if kv_lengths is not None:
        pos = torch.arange(Lk, device=device)
        vis = both(vis, (pos[None, :] < kv_lengths.to(device).long()[:, None])[:, None, None, :])
    if q_segment_ids is not None:
        qs = q_segment_ids.long()[:, None, :, None]
        ks = kv_segment_ids.long()[:, None, None, :]
        match = (ks <= qs) if segment_match == "le" else (ks == qs)
        vis = both(vis, match & (qs >= 0) & (ks >= 0))
    if vis is not None:
        vis = vis.expand(B, 1, Lq, Lk)
    return vis


def cross_attention(q, k, v, key_padding_mask=None, kv_lengths=None, q_segment_ids=None, kv_segment_ids=None,
                    segment_match="equal", scale=None, dropout_p=0.0, dropout_mask=None, return_lse=False):
    """q (B, Hq, Lq, D), k and v (B, Hkv, Lk, D), Hq a multiple of Hkv. `dropout_mask` (B, Hq, Lq, Lk) bool of
    kept entries; without it, dropout_p > 0 draws one with torch's generator."""
    B, Hq, Lq, D = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    if Hq != Hkv:
        k = k.repeat_interleave(Hq // Hkv, dim=1)
        v = v.repeat_interleave(Hq // Hkv, dim=1)
    scale = D ** -0.5 if scale is None else scale
    key_ok = None  # keys no query may see (padding, past the length) are zeroed: whatever they hold stays out
    if key_padding_mask is not None:
        key_ok = ~key_padding_mask.bool()
    if kv_lengths is not None:
        in_len = torch.arange(Lk, device=k.device)[None, :] < kv_lengths.to(k.device).long()[:, None]
        key_ok = in_len if key_ok is None else key_ok & in_len
    if key_ok is not None:
        k = k.masked_fill(~key_ok[:, None, :, None], 0)
        v = v.masked_fill(~key_ok[:, None, :, None], 0)
    s = (q @ k.transpose(-1, -2)) * scale
    vis = visibility(B, Lq, Lk, q.device, key_padding_mask, kv_lengths, q_segment_ids, kv_segment_ids, segment_match)
    if vis is not None:
        s = s.masked_fill(~vis, float("-inf"))
    m = s.detach().amax(-1, keepdim=True) if Lk else s.new_zeros(B, Hq, Lq, 1)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))  # the shift cancels; detached, it has no gradient
    e = torch.exp(s - m)
    lsum = e.sum(-1, keepdim=True)
    p = e / torch.where(lsum > 0, lsum, torch.ones_like(lsum))
    if dropout_p > 0.0:
        if dropout_mask is None:
            dropout_mask = torch.rand(p.shape, device=p.device) >= dropout_p
        p = p * dropout_mask.to(p.dtype) / (1.0 - dropout_p)
    out = p @ v
    if not return_lse:
        return out
    lse = torch.where(lsum > 0, m + torch.log(torch.where(lsum > 0, lsum, torch.ones_like(lsum))),
                      torch.full_like(lsum, float("-inf")))
    return out, lse.squeeze(-1).float()
