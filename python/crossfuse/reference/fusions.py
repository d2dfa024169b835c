"""Naive PyTorch fusion operators: the oracles for crossfuse.ops.product_pool and crossfuse.nn's fusions.

`forward(module, x)` runs a crossfuse.nn fusion module's math the plain way, as block.bootstrap writes it (a Python
loop over Block's chunks, the (rows, rank*S) products materialised, inputs expanded for concatenation), reading
the module's own parameters; in float64 it is the tests' yardstick, in the module's dtype the benchmarks' eager
peer. mfb_pool / mfh_pool are also the modules' path for dropout inside the pooling while training.
"""
import torch
import torch.nn.functional as F


def product_pool(x0, x1, weight0, weight1, bias0=None, bias1=None, *, rank, rank_major=True, activation=None,
                 weight0_2=None, weight1_2=None, bias0_2=None, bias1_2=None):
    """x0 (N0, G*K0), x1 (N1, G*K1), N0 and N1 dividing N = max(N0, N1) (row n reads n // (N / Ni))."""
    N = max(x0.shape[0], x1.shape[0])
    x0 = x0.repeat_interleave(N // max(x0.shape[0], 1), 0)
    x1 = x1.repeat_interleave(N // max(x1.shape[0], 1), 0)
    G, RS, _ = weight0.shape
    S = RS // rank

    def proj(x, w, b):
        u = torch.einsum("ngk,grk->ngr", x.reshape(N, G, w.shape[2]), w)
        if b is not None:
            u = u + b
        if activation == "relu":
            u = torch.relu(u)
        return u.view(N, G, rank, S) if rank_major else u.view(N, G, S, rank).transpose(2, 3)

    p = proj(x0, weight0, bias0) * proj(x1, weight1, bias1)
    z = p.sum(2).reshape(N, G * S)
    if weight0_2 is None:
        return z
    q = proj(x0, weight0_2, bias0_2) * proj(x1, weight1_2, bias1_2) * p
    return torch.cat([z, q.sum(2).reshape(N, G * S)], -1)


def _signed_sqrt_l2(z):
    z = torch.sqrt(F.relu(z)) - torch.sqrt(F.relu(-z))
    return F.normalize(z, p=2, dim=-1)


def _drop(m, z, p):
    return F.dropout(z, p=p, training=m.training) if p > 0 else z


def _act(name):
    return (lambda t: t) if name in (None, "", False) else getattr(F, name)


def _out(m, z, pre_lin=True):
    if pre_lin:
        z = _drop(m, z, getattr(m, "dropout_pre_lin", 0.0))
    z = m.linear_out(z)
    z = _act(getattr(m, "activ_output", None))(z)
    return _drop(m, z, getattr(m, "dropout_output", 0.0))


def _expand(x0, x1):
    """Both inputs at the broadcast rows, as block.bootstrap's models feed its fusions (a question repeated for
    every region before the fusion, which then runs on 2-D rows)."""
    if x0.dim() != x1.dim():
        x0, x1 = (x0.unsqueeze(1), x1) if x0.dim() == 2 else (x0, x1.unsqueeze(1))
    shape = torch.broadcast_shapes(x0.shape[:-1], x1.shape[:-1])
    return x0.expand(*shape, x0.shape[-1]), x1.expand(*shape, x1.shape[-1])


def _factor_product(m, lin0, lin1, x0, x1):
    """act(lin0 x0) * act(lin1 x1), each factor through dropout_input: one MFB-style stage before pooling."""
    a = _act(m.activ_input)
    u0, u1 = a(lin0(x0)), a(lin1(x1))
    return _drop(m, u0, m.dropout_input) * _drop(m, u1, m.dropout_input)


def _factor_sum(m, z):
    return z.view(*z.shape[:-1], m.mm_dim, m.factor).sum(-1)


def mfb_pool(m, x0, x1):
    """MFB's pooled product with its dropouts (activ_input, dropout_input, dropout_pre_norm)."""
    x0, x1 = _expand(x0, x1)
    return _factor_sum(m, _drop(m, _factor_product(m, m.linear0, m.linear1, x0, x1), m.dropout_pre_norm))


def mfh_pool(m, x0, x1):
    """MFH's two pooled stages (z_0, z_1) with its dropouts."""
    x0, x1 = _expand(x0, x1)
    skip = _drop(m, _factor_product(m, m.linear0_0, m.linear1_0, x0, x1), m.dropout_pre_lin)
    z1 = _drop(m, _factor_product(m, m.linear0_1, m.linear1_1, x0, x1) * skip, m.dropout_pre_lin)
    return _factor_sum(m, skip), _factor_sum(m, z1)


def _projected(m, x0, x1):
    """linear0 / linear1 and dropout_input, on the broadcast rows."""
    x0, x1 = _expand(x0, x1)
    return _drop(m, m.linear0(x0), m.dropout_input), _drop(m, m.linear1(x1), m.dropout_input)


def _chunked(m, x0, x1, per_chunk):
    """Block / BlockTucker: per_chunk(c0, c1, c) on each chunk of the projected inputs, then the signed square root
    and L2 normalisation before or after the concatenation (pos_norm), then the output layers."""
    x0, x1 = _projected(m, x0, x1)
    zs = []
    for c, (c0, c1) in enumerate(zip(x0.split(m.sizes_list, -1), x1.split(m.sizes_list, -1))):
        z = per_chunk(c0, c1, c)
        zs.append(_signed_sqrt_l2(z) if m.pos_norm == "before_cat" else z)
    z = torch.cat(zs, -1)
    return _out(m, _signed_sqrt_l2(z) if m.pos_norm == "after_cat" else z)


def _block(m, x0, x1):
    def chunk(c0, c1, c):
        p = m.merge_linears0[c](c0) * m.merge_linears1[c](c1)
        return p.view(*p.shape[:-1], m.rank, -1).sum(-2)
    return _chunked(m, x0, x1, chunk)


def _block_tucker(m, x0, x1):
    def chunk(c0, c1, c):
        bil = m.bilinears[c]
        return torch.einsum("...k,jkl,...l->...j", c0, bil.weight, c1) + bil.bias
    return _chunked(m, x0, x1, chunk)


def _mutan(m, x0, x1):
    x0, x1 = _projected(m, x0, x1)
    p = m.merge_linear0(x0) * m.merge_linear1(x1)
    z = p.view(*p.shape[:-1], m.rank, m.mm_dim).sum(-2)
    return _out(m, _signed_sqrt_l2(z) if m.normalize else z)


def _tucker(m, x0, x1):
    x0, x1 = _projected(m, x0, x1)
    z = torch.einsum("...k,jkl,...l->...j", x0, m.bilinear.weight, x1) + m.bilinear.bias
    return _out(m, _signed_sqrt_l2(z) if m.normalize else z)


def _elementwise(m, x0, x1, combine):
    a = _act(m.activ_input)
    x0, x1 = _expand(x0, x1)
    x0, x1 = a(m.linear0(x0)), a(m.linear1(x1))
    z = combine(_drop(m, x0, m.dropout_input), _drop(m, x1, m.dropout_input))
    return _out(m, _signed_sqrt_l2(z) if m.normalize else z)


def _mfb(m, x0, x1):
    z = mfb_pool(m, x0, x1)
    return _out(m, _signed_sqrt_l2(z) if m.normalize else z, pre_lin=False)


def _mfh(m, x0, x1):
    z0, z1 = mfh_pool(m, x0, x1)
    if m.normalize:
        z0, z1 = _signed_sqrt_l2(z0), _signed_sqrt_l2(z1)
    return _out(m, torch.cat([z0, z1], -1), pre_lin=False)


def _concat_mlp(m, x0, x1):
    z = torch.cat(_expand(x0, x1), -1)
    for i, lin in enumerate(m.mlp.linears):
        z = lin(z)
        if i < len(m.mlp.linears) - 1:
            z = _drop(m, _act(m.activation)(z), m.dropout)
    return z


def sketch_outer(x0, x1, h0, s0, h1, s1, output_size):
    """MCB by its definition: the count sketch of the flattened outer product, whose (i, j) entry goes to bucket
    (h0[i] + h1[j]) mod output_size with sign s0[i] s1[j]. O(d0 d1) memory per row: for small sizes."""
    x0, x1 = _expand(x0, x1)
    outer = (x0.unsqueeze(-1) * x1.unsqueeze(-2)) * (s0[:, None] * s1[None, :])
    idx = ((h0[:, None] + h1[None, :]) % output_size).reshape(-1)
    out = outer.new_zeros((*outer.shape[:-2], output_size))
    return out.index_add_(-1, idx, outer.flatten(-2))


def _mcb(m, x0, x1):
    s1, s2 = m.mcb.sketch1, m.mcb.sketch2
    return _out(m, sketch_outer(x0, x1, s1.h, s1.s.to(x0.dtype), s2.h, s2.s.to(x0.dtype), m.mm_dim), pre_lin=False)


def _gmu(m, x0, x1):
    a = _act(m.activation)
    x0, x1 = _expand(x0, x1)
    h0, h1 = a(m.linear0(x0)), a(m.linear1(x1))
    wg = torch.cat([m.gate0.weight, m.gate1.weight], 1)
    g = torch.sigmoid(F.linear(torch.cat([x0, x1], -1), wg, m.gate0.bias))
    return _drop(m, g * h0 + (1 - g) * h1, m.dropout_output)


def _film(m, x0, x1):
    x0, x1 = _expand(x0, x1)
    gamma, beta = m.film(x0).chunk(2, -1)
    return _drop(m, m.linear_out(_act(m.activation)(gamma * x1 + beta)), m.dropout_output)


def _gated_tanh(m, x0, x1):
    def gt(lin, x):
        t, s = lin(x).chunk(2, -1)
        return torch.tanh(t) * torch.sigmoid(s)
    x0, x1 = _expand(x0, x1)
    return _drop(m, m.linear_out(gt(m.linear0, x0) * gt(m.linear1, x1)), m.dropout_output)


_FORWARD = {"Block": _block, "BlockTucker": _block_tucker, "Mutan": _mutan, "Tucker": _tucker,
            "LinearSum": lambda m, a, b: _elementwise(m, a, b, torch.add),
            "MLB": lambda m, a, b: _elementwise(m, a, b, torch.mul), "MFB": _mfb, "MFH": _mfh,
            "ConcatMLP": _concat_mlp, "MCB": _mcb, "GMU": _gmu, "FiLM": _film, "GatedTanh": _gated_tanh}


def forward(module, x):
    """The plain-PyTorch forward of a crossfuse.nn fusion module on x = [x0, x1]."""
    return _FORWARD[type(module).__name__](module, x[0], x[1])
