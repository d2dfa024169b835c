"""Layers on crossfuse.ops.cross_attention: a drop-in multi-head cross-attention, Flamingo's gated
cross-attention block and a bidirectional cross-attention. Masks reach the kernel as lengths, padding bits or
segment ids; no (Lq x Lk) mask tensor is ever built on the kernel path."""
import torch
import torch.nn.functional as F

from crossfuse.ops.cross_attention import cross_attention
from crossfuse.reference.cross_attention import visibility


def _heads(t, H):
    """(B, L, H*D) -> (B, H, L, D) as a view (the kernel takes the strides)."""
    B, L, _ = t.shape
    return t.view(B, L, H, -1).transpose(1, 2)


def _merge(t):
    """(B, H, L, D) -> (B, L, H*D); free when t is stored as (B, L, H, D), as the kernel's outputs are."""
    B, H, L, D = t.shape
    return t.transpose(1, 2).reshape(B, L, H * D)


class MultiheadCrossAttention(torch.nn.MultiheadAttention):
    """``nn.MultiheadAttention`` for cross-attention on the fused kernel.

    With ``num_kv_heads=None`` the parameters and state_dict keys are nn.MultiheadAttention's for the same
    arguments, so weights load both ways. ``num_kv_heads`` < ``num_heads`` gives grouped-query attention (k and v
    projections of num_kv_heads heads). ``forward(query, key, value=None, key_padding_mask=None,
    need_weights=False, kv_lengths=None)`` returns ``(output, None)``, or ``(output, head-averaged weights)`` with
    need_weights=True (computed on the reference path, as nn.MultiheadAttention computes them). A query that
    sees no key gets 0, where nn.MultiheadAttention gives NaN.
    """

    def __init__(self, embed_dim, num_heads, kdim=None, vdim=None, bias=True, dropout=0.0, batch_first=True,
                 num_kv_heads=None, *, device=None, dtype=None, backend=None):
        if embed_dim % num_heads:
            raise ValueError(f"MultiheadCrossAttention: embed_dim ({embed_dim}) must be divisible by num_heads "
                             f"({num_heads})")
        if num_kv_heads is not None and (num_kv_heads < 1 or num_heads % num_kv_heads):
            raise ValueError(f"MultiheadCrossAttention: num_heads ({num_heads}) must be a multiple of num_kv_heads "
                             f"({num_kv_heads})")
        gqa = num_kv_heads is not None and num_kv_heads != num_heads
        super().__init__(embed_dim, num_heads, dropout=dropout, bias=bias, kdim=kdim, vdim=vdim,
                         batch_first=batch_first, device=device, dtype=dtype)
        self.num_kv_heads = num_kv_heads or num_heads
        self.backend = backend
        if gqa:  # separate projections, k and v of num_kv_heads heads
            kv = self.num_kv_heads * self.head_dim
            fk = dict(device=device, dtype=dtype)
            self._qkv_same_embed_dim = False
            self.in_proj_weight = None
            self.q_proj_weight = torch.nn.Parameter(torch.empty(embed_dim, embed_dim, **fk))
            self.k_proj_weight = torch.nn.Parameter(torch.empty(kv, self.kdim, **fk))
            self.v_proj_weight = torch.nn.Parameter(torch.empty(kv, self.vdim, **fk))
            if bias:
                self.in_proj_bias = torch.nn.Parameter(torch.empty(embed_dim + 2 * kv, **fk))
            self._reset_parameters()

    def _projections(self):
        E, kv = self.embed_dim, self.num_kv_heads * self.head_dim
        if self._qkv_same_embed_dim:
            wq, wk, wv = self.in_proj_weight.split((E, kv, kv))
        else:
            wq, wk, wv = self.q_proj_weight, self.k_proj_weight, self.v_proj_weight
        bq = bk = bv = None
        if self.in_proj_bias is not None:
            bq, bk, bv = self.in_proj_bias.split((E, kv, kv))
        return (wq, bq), (wk, bk), (wv, bv)

    def forward(self, query, key, value=None, key_padding_mask=None, need_weights=False, kv_lengths=None):
        value = key if value is None else value
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
            if kv_lengths is not None:
                kv_lengths = kv_lengths.reshape(1)
            if self.batch_first:
                query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        if not self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        if key_padding_mask is not None and key_padding_mask.dtype != torch.bool:
            raise TypeError(f"MultiheadCrossAttention: expected key_padding_mask of dtype torch.bool (True = ignore), "
                            f"got {key_padding_mask.dtype}")
        (wq, bq), (wk, bk), (wv, bv) = self._projections()
        q = _heads(F.linear(query, wq, bq), self.num_heads)
        k = _heads(F.linear(key, wk, bk), self.num_kv_heads)
        v = _heads(F.linear(value, wv, bv), self.num_kv_heads)
        p = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            out, weights = _attention_with_weights(q, k, v, key_padding_mask, kv_lengths, p)
        else:
            out = cross_attention(q, k, v, key_padding_mask=key_padding_mask, kv_lengths=kv_lengths, dropout_p=p,
                                  backend=self.backend)
        out = self.out_proj(_merge(out))
        if not self.batch_first:
            out = out.transpose(0, 1)
        if unbatched:
            out = out.squeeze(1 if not self.batch_first else 0)
            weights = None if weights is None else weights.squeeze(0)
        return out, weights


def _attention_with_weights(q, k, v, key_padding_mask, kv_lengths, dropout_p):
    """The reference path with the probabilities kept: (output, probabilities averaged over heads)."""
    B, Hq, Lq, D = q.shape
    group = Hq // k.shape[1]
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    s = (q @ k.transpose(-1, -2)) * D ** -0.5
    vis = visibility(B, Lq, k.shape[2], q.device, key_padding_mask, kv_lengths)
    if vis is not None:
        s = s.masked_fill(~vis, float("-inf"))
    attn = torch.softmax(s, -1)
    if vis is not None:
        attn = attn.masked_fill(~vis.any(-1, keepdim=True), 0.0)  # a query that sees nothing: 0, not NaN
    out = F.dropout(attn, dropout_p) @ v
    return out, attn.mean(1)


class _MaskedCrossAttention(torch.nn.Module):
    """OpenFlamingo's MaskedCrossAttention (norm, to_q, to_kv, to_out), the mask given to the kernel as ids."""

    def __init__(self, dim, dim_visual, dim_head, heads, only_attend_immediate_media, backend):
        super().__init__()
        self.heads, self.only_immediate, self.backend = heads, only_attend_immediate_media, backend
        inner = dim_head * heads
        self.norm = torch.nn.LayerNorm(dim)
        self.to_q = torch.nn.Linear(dim, inner, bias=False)
        self.to_kv = torch.nn.Linear(dim_visual, inner * 2, bias=False)
        self.to_out = torch.nn.Linear(inner, dim, bias=False)

    def forward(self, x, media, media_locations=None):
        B, T_img, n, _ = media.shape
        q = _heads(self.to_q(self.norm(x)), self.heads)
        k, v = self.to_kv(media.reshape(B, T_img * n, -1)).chunk(2, dim=-1)
        k, v = _heads(k, self.heads), _heads(v, self.heads)
        kw = {}
        if media_locations is not None:
            if media_locations.shape != x.shape[:2]:
                raise ValueError(f"GatedCrossAttentionBlock: expected media_locations of shape {tuple(x.shape[:2])}, "
                                 f"got {tuple(media_locations.shape)}")
            # a text token's id is the index of the latest image at or before it (-1: none, sees nothing);
            # a latent's id is its image's index
            text_time = media_locations.to(torch.int32).cumsum(-1) - 1
            media_id = torch.arange(T_img, device=x.device, dtype=torch.int32).repeat_interleave(n)
            kw = dict(q_segment_ids=text_time, kv_segment_ids=media_id.expand(B, T_img * n),
                      segment_match="equal" if self.only_immediate else "le")
        out = cross_attention(q, k, v, backend=self.backend, **kw)
        return self.to_out(_merge(out))


class GatedCrossAttentionBlock(torch.nn.Module):
    """Flamingo's gated cross-attention block with OpenFlamingo's semantics and state_dict keys.

    forward(x (B, T_txt, dim), media (B, T_img, n, dim_visual), media_locations (B, T_txt) bool marking where each
    image appears): a text token attends to the latents of the latest image at or before it (all earlier images
    with only_attend_immediate_media=False); text before the first image gets 0 from the attention. Then
    x + tanh(attn_gate) * attn, x + tanh(ff_gate) * FFN; both gates start at 0.
    """

    def __init__(self, dim, dim_visual, dim_head=64, heads=8, ff_mult=4, only_attend_immediate_media=True, *,
                 backend=None):
        super().__init__()
        self.attn = _MaskedCrossAttention(dim, dim_visual, dim_head, heads, only_attend_immediate_media, backend)
        self.attn_gate = torch.nn.Parameter(torch.tensor([0.0]))
        inner = int(dim * ff_mult)
        self.ff = torch.nn.Sequential(torch.nn.LayerNorm(dim), torch.nn.Linear(dim, inner, bias=False),
                                      torch.nn.GELU(), torch.nn.Linear(inner, dim, bias=False))
        self.ff_gate = torch.nn.Parameter(torch.tensor([0.0]))

    def forward(self, x, media, media_locations=None):
        x = self.attn(x, media, media_locations) * self.attn_gate.tanh() + x
        return self.ff(x) * self.ff_gate.tanh() + x


class BidirectionalCrossAttention(torch.nn.Module):
    """x attends to context with a softmax over the rows of one similarity S = (x Wqk)(c Wcqk)^T, and context
    attends to x with a softmax over S's columns; both outputs are returned. S is never materialised: the
    kernel runs twice with the roles swapped. mask (B, Lx) / context_mask (B, Lc): True = keep; a position
    that keeps nothing on the other side gets 0."""

    def __init__(self, dim, context_dim=None, heads=8, dim_head=64, *, backend=None):
        super().__init__()
        context_dim = dim if context_dim is None else context_dim
        inner = heads * dim_head
        self.heads, self.scale, self.backend = heads, dim_head ** -0.5, backend
        self.to_qk = torch.nn.Linear(dim, inner, bias=False)
        self.context_to_qk = torch.nn.Linear(context_dim, inner, bias=False)
        self.to_v = torch.nn.Linear(dim, inner, bias=False)
        self.context_to_v = torch.nn.Linear(context_dim, inner, bias=False)
        self.to_out = torch.nn.Linear(inner, dim)
        self.context_to_out = torch.nn.Linear(inner, context_dim)

    def forward(self, x, context, mask=None, context_mask=None):
        h = self.heads
        qk, v = _heads(self.to_qk(x), h), _heads(self.to_v(x), h)
        cqk, cv = _heads(self.context_to_qk(context), h), _heads(self.context_to_v(context), h)
        kw_x = kw_c = {}
        if mask is not None or context_mask is not None:
            ids = lambda m, t: (torch.zeros(t.shape[:2], dtype=torch.int32, device=t.device) if m is None  # noqa: E731
                                else torch.where(m.bool(), 0, -1).to(torch.int32))
            xs, cs = ids(mask, x), ids(context_mask, context)
            kw_x = dict(q_segment_ids=xs, kv_segment_ids=cs)
            kw_c = dict(q_segment_ids=cs, kv_segment_ids=xs)
        out = cross_attention(qk, cqk, cv, scale=self.scale, backend=self.backend, **kw_x)
        context_out = cross_attention(cqk, qk, v, scale=self.scale, backend=self.backend, **kw_c)
        return self.to_out(_merge(out)), self.context_to_out(_merge(context_out))
