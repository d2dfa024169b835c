"""Fusion operators for two modalities: forward(x) with x = [x0, x1], each (B, d_i), or one of them (B, 1, d) against
the other's (B, R, d) (a question against R image regions, broadcast without expanding the smaller side).

The constructors take block.bootstrap's argument names and defaults (input_dims, output_dim, mm_dim, chunks, rank,
factor, shared, normalize, activ_input, activ_output, dropout_*), and the parameter names match its modules'
(linear0, linear1, merge_linears0.<c>, linear_out, ...), so its checkpoints load. GMU, FiLM and GatedTanh follow
their papers. The product-pool core of Block, Mutan, MFB and MFH runs on crossfuse.ops.product_pool (one fused
kernel on a GPU); dropout inside that core (MFB's, MFH's) runs the plain PyTorch math while training. Where that op
runs on the cpu backend, the torch.nn.Linear projections around it run on the same C++ GEMM (ops/_gemm.linear).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from crossfuse import _backend
from crossfuse.ops import _gemm
from crossfuse.ops.fusions import OP, broadcast_lead, compact_bilinear_pooling, product_pool, signed_sqrt_normalize

__all__ = ["LinearSum", "ConcatMLP", "MLB", "MFB", "MFH", "Mutan", "Tucker", "Block", "BlockTucker", "MCB", "GMU",
           "FiLM", "GatedTanh", "chunk_sizes"]


def chunk_sizes(dim, chunks):
    """block.bootstrap's split of dim into `chunks` sizes: equal ceil(dim / chunks) parts with the excess taken from
    the end, one unit at a time from the last parts when the last would be negative."""
    size = -(-dim // chunks)
    sizes = [size] * chunks
    sizes[-1] -= sum(sizes) - dim
    if sizes[-1] < 0:
        missing = sizes[-2] - sizes[-1]
        sizes[-1] = sizes[-2]
        for k in range(missing):
            sizes[-1 - k] -= 1
    if sum(sizes) != dim or min(sizes) <= 0:
        raise ValueError(f"cannot split {dim} features into {chunks} chunks")
    return sizes


def _activation(name, arg):
    if name in (None, "", False):
        return None
    fn = getattr(F, name, None)
    if not callable(fn):
        raise ValueError(f"{arg}: expected the name of a torch.nn.functional activation or None, got {name!r}")
    return fn


def _check_dims(cls, input_dims):
    if not isinstance(input_dims, (list, tuple)) or len(input_dims) != 2 or not all(
            isinstance(d, int) and d > 0 for d in input_dims):
        raise ValueError(f"{cls}: expected input_dims to be two positive ints, got {input_dims!r}")


def _inputs(cls, x, input_dims):
    if not isinstance(x, (list, tuple)) or len(x) != 2:
        raise TypeError(f"{cls}.forward: expected x to be a list [x0, x1] of two tensors, got {type(x).__name__}")
    x0, x1 = x
    for i, (t, d) in enumerate(zip((x0, x1), input_dims)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{cls}.forward: expected x[{i}] to be a torch.Tensor, got {type(t).__name__}")
        if t.dim() not in (2, 3) or t.shape[-1] != d:
            raise ValueError(f"{cls}.forward: expected x[{i}] of shape (B, {d}) or (B, R, {d}), got {tuple(t.shape)}")
    if x0.dim() != x1.dim() and not (x0.dim() == 2 or x1.dim() == 2):
        raise ValueError(f"{cls}.forward: x[0] {tuple(x0.shape)} and x[1] {tuple(x1.shape)} do not broadcast")
    # (B, d) against (B, R, d): the 2-D side is read as (B, 1, d)
    if x0.dim() == 2 and x1.dim() == 3:
        x0 = x0.unsqueeze(1)
    elif x1.dim() == 2 and x0.dim() == 3:
        x1 = x1.unsqueeze(1)
    if broadcast_lead(x0.shape[:-1], x1.shape[:-1]) is None:
        raise ValueError(f"{cls}.forward: x[0] {tuple(x0.shape)} and x[1] {tuple(x1.shape)} do not broadcast")
    return x0, x1


def _linear(module, x):
    """module(x) for the fusions' torch.nn.Linear layers; where the product pool runs on the cpu backend, on its C++
    GEMM (ops/_gemm.linear) instead, unless hooks or a subclass would see the difference."""
    if (type(module) is not nn.Linear or module._forward_hooks or module._forward_pre_hooks
            or nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks):
        return module(x)
    try:
        cpu = _backend.choose(OP, x.device) == "cpu"
    except RuntimeError:  # a backend product_pool lacks (GMU, FiLM, GatedTanh have no pool): plain torch
        cpu = False
    return _gemm.linear(x, module.weight, module.bias) if cpu else module(x)


def _dropout(module, z, p):
    return F.dropout(z, p=p, training=module.training) if p > 0 else z


class _Fusion(nn.Module):
    def __init__(self, input_dims, output_dim):
        super().__init__()
        _check_dims(type(self).__name__, input_dims)
        if not isinstance(output_dim, int) or output_dim <= 0:
            raise ValueError(f"{type(self).__name__}: expected output_dim to be a positive int, got {output_dim!r}")
        self.input_dims = list(input_dims)
        self.output_dim = output_dim

    def _x(self, x):
        return _inputs(type(self).__name__, x, self.input_dims)

    def _finish(self, z):
        """dropout_pre_lin, linear_out, activ_output, dropout_output."""
        z = _dropout(self, z, getattr(self, "dropout_pre_lin", 0.0))
        z = _linear(self.linear_out, z)
        act = getattr(self, "_activ_output", None)
        if act is not None:
            z = act(z)
        return _dropout(self, z, getattr(self, "dropout_output", 0.0))

    @property
    def n_params(self):
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


class _Elementwise(_Fusion):
    """LinearSum and MLB: two projections to mm_dim, an activation, then a sum or a product."""

    def __init__(self, input_dims, output_dim, mm_dim=1200, activ_input="relu", activ_output="relu", normalize=False,
                 dropout_input=0.0, dropout_pre_lin=0.0, dropout_output=0.0):
        super().__init__(input_dims, output_dim)
        self.mm_dim, self.normalize = mm_dim, normalize
        self.activ_input, self.activ_output = activ_input, activ_output
        self._activ_input = _activation(activ_input, "activ_input")
        self._activ_output = _activation(activ_output, "activ_output")
        self.dropout_input, self.dropout_pre_lin, self.dropout_output = dropout_input, dropout_pre_lin, dropout_output
        self.linear0 = nn.Linear(input_dims[0], mm_dim)
        self.linear1 = nn.Linear(input_dims[1], mm_dim)
        self.linear_out = nn.Linear(mm_dim, output_dim)

    def forward(self, x):
        x0, x1 = self._x(x)
        x0, x1 = _linear(self.linear0, x0), _linear(self.linear1, x1)
        if self._activ_input is not None:
            x0, x1 = self._activ_input(x0), self._activ_input(x1)
        x0, x1 = _dropout(self, x0, self.dropout_input), _dropout(self, x1, self.dropout_input)
        z = self._combine(x0, x1)
        if self.normalize:
            z = signed_sqrt_normalize(z)
        return self._finish(z)


class LinearSum(_Elementwise):
    """z = act(W0 x0) + act(W1 x1), then linear_out."""

    def _combine(self, x0, x1):
        return x0 + x1


class MLB(_Elementwise):
    """Multimodal low-rank bilinear pooling (Kim et al. 2017): z = act(W0 x0) * act(W1 x1), then linear_out."""

    def _combine(self, x0, x1):
        return x0 * x1


class ConcatMLP(_Fusion):
    """An MLP on [x0, x1]. The first layer's weight is split by input, W [x0; x1] = W_0 x0 + W_1 x1, so a broadcast
    side is never expanded; the parameters are block.bootstrap's (mlp.linears.<i>)."""

    def __init__(self, input_dims, output_dim, dimensions=(500, 500), activation="relu", dropout=0.0):
        super().__init__(input_dims, output_dim)
        self.input_dim = sum(input_dims)
        self.dimensions = list(dimensions) + [output_dim]
        self.activation, self.dropout = activation, dropout
        self._act = _activation(activation, "activation")
        self.mlp = nn.Module()
        dims = [self.input_dim] + self.dimensions
        self.mlp.linears = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x):
        x0, x1 = self._x(x)
        first = self.mlp.linears[0]
        d0 = self.input_dims[0]
        z = F.linear(x0, first.weight[:, :d0]) + F.linear(x1, first.weight[:, d0:], first.bias)
        for lin in self.mlp.linears[1:]:
            if self._act is not None:
                z = self._act(z)
            z = lin(_dropout(self, z, self.dropout))
        return z


class Mutan(_Fusion):
    """MUTAN (Ben-younes et al. 2017): a rank-`rank` Tucker core, z = sum_r (M0_r x0') * (M1_r x1') with
    x_i' = W_i x_i, on one product-pool kernel."""

    def __init__(self, input_dims, output_dim, mm_dim=1600, rank=15, shared=False, normalize=False,
                 dropout_input=0.0, dropout_pre_lin=0.0, dropout_output=0.0):
        super().__init__(input_dims, output_dim)
        self.mm_dim, self.rank, self.shared, self.normalize = mm_dim, rank, shared, normalize
        self.dropout_input, self.dropout_pre_lin, self.dropout_output = dropout_input, dropout_pre_lin, dropout_output
        self.linear0 = nn.Linear(input_dims[0], mm_dim)
        self.merge_linear0 = nn.Linear(mm_dim, mm_dim * rank)
        if shared:
            self.linear1, self.merge_linear1 = self.linear0, self.merge_linear0
        else:
            self.linear1 = nn.Linear(input_dims[1], mm_dim)
            self.merge_linear1 = nn.Linear(mm_dim, mm_dim * rank)
        self.linear_out = nn.Linear(mm_dim, output_dim)

    def forward(self, x):
        x0, x1 = self._x(x)
        x0, x1 = _linear(self.linear0, x0), _linear(self.linear1, x1)
        x0, x1 = _dropout(self, x0, self.dropout_input), _dropout(self, x1, self.dropout_input)
        m0, m1 = self.merge_linear0, self.merge_linear1
        z = product_pool(x0, x1, m0.weight.unsqueeze(0), m1.weight.unsqueeze(0), m0.bias.unsqueeze(0),
                         m1.bias.unsqueeze(0), rank=self.rank)
        if self.normalize:
            z = signed_sqrt_normalize(z)
        return self._finish(z)


def _share_storage(linears):
    """Make the linears' weights (and biases) consecutive slices of one buffer each, so that _stack hands them to
    the kernels as one tensor without a copy. The parameters stay the same separate leaves (names, state_dict,
    optimisers unchanged); whatever re-homes one later without Block._apply (load_state_dict(assign=True)) only
    brings back the copy."""
    with torch.no_grad():
        for name in ("weight", "bias"):
            ps = [getattr(m, name) for m in linears]
            if any(p is None for p in ps) or len({(p.shape, p.dtype, p.device) for p in ps}) != 1:
                continue
            for p, slot in zip(ps, torch.stack(ps)):
                p.data = slot


class _SliceStack(torch.autograd.Function):
    """torch.stack of tensors that already lie one after another in one storage: a view of it, stack's gradient."""

    @staticmethod
    def forward(ctx, *ts):
        t0 = ts[0]
        return t0.detach().as_strided((len(ts), *t0.shape), (t0.numel(), *t0.stride()), t0.storage_offset())

    @staticmethod
    def backward(ctx, g):
        return g.unbind(0)


def _stack(ts):
    """torch.stack(ts); without its copy where ts are consecutive contiguous slices of one storage."""
    t0 = ts[0]
    step = t0.numel() * t0.element_size()
    if (not torch.compiler.is_compiling() and t0.is_contiguous() and step
            and all(t.shape == t0.shape and t.dtype == t0.dtype and t.device == t0.device and t.is_contiguous()
                    and t.untyped_storage().data_ptr() == t0.untyped_storage().data_ptr()
                    and t.data_ptr() == t0.data_ptr() + i * step for i, t in enumerate(ts))):
        return _SliceStack.apply(*ts)
    return torch.stack(ts)


class Block(_Fusion):
    """BLOCK (Ben-younes et al. 2019): block-term decomposition, `chunks` Mutan-like blocks of rank `rank` on
    slices of the projected inputs, all of them on one product-pool kernel (block.bootstrap runs a Python loop)."""

    def __init__(self, input_dims, output_dim, mm_dim=1600, chunks=20, rank=15, shared=False, dropout_input=0.0,
                 dropout_pre_lin=0.0, dropout_output=0.0, pos_norm="before_cat"):
        super().__init__(input_dims, output_dim)
        if pos_norm not in ("before_cat", "after_cat"):
            raise ValueError(f"Block: expected pos_norm 'before_cat' or 'after_cat', got {pos_norm!r}")
        self.mm_dim, self.chunks, self.rank, self.shared, self.pos_norm = mm_dim, chunks, rank, shared, pos_norm
        self.dropout_input, self.dropout_pre_lin, self.dropout_output = dropout_input, dropout_pre_lin, dropout_output
        self.linear0 = nn.Linear(input_dims[0], mm_dim)
        self.linear1 = self.linear0 if shared else nn.Linear(input_dims[1], mm_dim)
        self.sizes_list = chunk_sizes(mm_dim, chunks)
        self.merge_linears0 = nn.ModuleList(nn.Linear(s, s * rank) for s in self.sizes_list)
        self.merge_linears1 = self.merge_linears0 if shared else nn.ModuleList(
            nn.Linear(s, s * rank) for s in self.sizes_list)
        self.linear_out = nn.Linear(mm_dim, output_dim)
        self._share_merge_storage()

    def _share_merge_storage(self):
        if all(s == self.sizes_list[0] for s in self.sizes_list):
            for linears in {id(m): m for m in (self.merge_linears0, self.merge_linears1)}.values():
                _share_storage(linears)

    def _apply(self, fn, recurse=True):  # .to(), .cuda(), .half() give each parameter its own storage again
        out = super()._apply(fn, recurse)
        self._share_merge_storage()
        return out

    def _stacked(self, linears):
        """(chunks, rank*S, S) weights and (chunks, rank*S) biases, S the largest chunk; a smaller chunk's weight
        is zero-padded in both its rows (per rank) and its columns, which adds zeros and leaves the padded outputs
        out."""
        S, R = max(self.sizes_list), self.rank
        if all(s == S for s in self.sizes_list):
            return _stack([m.weight for m in linears]), _stack([m.bias for m in linears])
        ws = [F.pad(m.weight.view(R, s, s), (0, S - s, 0, S - s)).reshape(R * S, S)
              for m, s in zip(linears, self.sizes_list)]
        bs = [F.pad(m.bias.view(R, s), (0, S - s)).reshape(R * S) for m, s in zip(linears, self.sizes_list)]
        return torch.stack(ws), torch.stack(bs)

    def _pad(self, x):
        S = max(self.sizes_list)
        if all(s == S for s in self.sizes_list):
            return x
        return torch.cat([F.pad(c, (0, S - c.shape[-1])) for c in x.split(self.sizes_list, -1)], -1)

    def forward(self, x):
        x0, x1 = self._x(x)
        x0, x1 = _linear(self.linear0, x0), _linear(self.linear1, x1)
        x0, x1 = _dropout(self, x0, self.dropout_input), _dropout(self, x1, self.dropout_input)
        w0, b0 = self._stacked(self.merge_linears0)
        w1, b1 = (w0, b0) if self.shared else self._stacked(self.merge_linears1)
        z = product_pool(self._pad(x0), self._pad(x1), w0, w1, b0, b1, rank=self.rank)
        S = max(self.sizes_list)
        uniform = all(s == S for s in self.sizes_list)
        if not uniform:
            z = torch.cat([c[..., :s] for c, s in zip(z.split(S, -1), self.sizes_list)], -1)
        if self.pos_norm == "after_cat":
            z = signed_sqrt_normalize(z)
        elif uniform:
            z = signed_sqrt_normalize(z, groups=self.chunks)
        else:
            z = torch.cat([signed_sqrt_normalize(c) for c in z.split(self.sizes_list, -1)], -1)
        return self._finish(z)


class MFB(_Fusion):
    """Multimodal factorised bilinear pooling (Yu et al. 2017): z_j = sum_k act(W0 x0)_{j,k} act(W1 x1)_{j,k} over
    `factor` k, on one product-pool kernel (the factor projections are linear0 and linear1)."""

    def __init__(self, input_dims, output_dim, mm_dim=1200, factor=2, activ_input="relu", activ_output="relu",
                 normalize=False, dropout_input=0.0, dropout_pre_norm=0.0, dropout_output=0.0):
        self._factorised(input_dims, output_dim, mm_dim, factor, activ_input, activ_output, normalize)
        self.dropout_input, self.dropout_pre_norm, self.dropout_output = dropout_input, dropout_pre_norm, dropout_output
        self.linear0 = nn.Linear(input_dims[0], mm_dim * factor)
        self.linear1 = nn.Linear(input_dims[1], mm_dim * factor)
        self.linear_out = nn.Linear(mm_dim, output_dim)

    def _factorised(self, input_dims, output_dim, mm_dim, factor, activ_input, activ_output, normalize):
        """The settings MFB and MFH share."""
        _Fusion.__init__(self, input_dims, output_dim)
        self.mm_dim, self.factor, self.normalize = mm_dim, factor, normalize
        self.activ_input, self.activ_output = activ_input, activ_output
        self._activ_input = _activation(activ_input, "activ_input")
        self._activ_output = _activation(activ_output, "activ_output")

    def _fused_ok(self, dropouts):
        return self.activ_input in (None, "", False, "relu") and not (self.training and any(p > 0 for p in dropouts))

    def forward(self, x):
        x0, x1 = self._x(x)
        if not self._fused_ok((self.dropout_input, self.dropout_pre_norm)):
            from crossfuse.reference.fusions import mfb_pool
            z = mfb_pool(self, x0, x1)
        else:
            z = product_pool(x0, x1, self.linear0.weight.unsqueeze(0), self.linear1.weight.unsqueeze(0),
                             self.linear0.bias.unsqueeze(0), self.linear1.bias.unsqueeze(0), rank=self.factor,
                             rank_major=False, activation="relu" if self.activ_input == "relu" else None)
        if self.normalize:
            z = signed_sqrt_normalize(z)
        return self._finish(z)


class MFH(MFB):
    """Multimodal factorised high-order pooling (Yu et al. 2018): two MFB stages, the second multiplied by the
    first's unpooled product, their pooled outputs concatenated; both stages on one product-pool kernel."""

    def __init__(self, input_dims, output_dim, mm_dim=1200, factor=2, activ_input="relu", activ_output="relu",
                 normalize=False, dropout_input=0.0, dropout_pre_lin=0.0, dropout_output=0.0):
        self._factorised(input_dims, output_dim, mm_dim, factor, activ_input, activ_output, normalize)
        self.dropout_input, self.dropout_pre_lin, self.dropout_output = dropout_input, dropout_pre_lin, dropout_output
        self.linear0_0 = nn.Linear(input_dims[0], mm_dim * factor)
        self.linear1_0 = nn.Linear(input_dims[1], mm_dim * factor)
        self.linear0_1 = nn.Linear(input_dims[0], mm_dim * factor)
        self.linear1_1 = nn.Linear(input_dims[1], mm_dim * factor)
        self.linear_out = nn.Linear(mm_dim * 2, output_dim)

    def forward(self, x):
        x0, x1 = self._x(x)
        if not self._fused_ok((self.dropout_input, self.dropout_pre_lin)):
            from crossfuse.reference.fusions import mfh_pool
            z0, z1 = mfh_pool(self, x0, x1)
        else:
            u = lambda m: m.weight.unsqueeze(0)  # noqa: E731
            b = lambda m: m.bias.unsqueeze(0)  # noqa: E731
            z = product_pool(x0, x1, u(self.linear0_0), u(self.linear1_0), b(self.linear0_0), b(self.linear1_0),
                             rank=self.factor, rank_major=False,
                             activation="relu" if self.activ_input == "relu" else None,
                             weight0_2=u(self.linear0_1), weight1_2=u(self.linear1_1), bias0_2=b(self.linear0_1),
                             bias1_2=b(self.linear1_1))
            z0, z1 = z.chunk(2, -1)
        if self.normalize:
            z0, z1 = signed_sqrt_normalize(z0), signed_sqrt_normalize(z1)
        z = torch.cat([z0, z1], -1)
        # MFH has no dropout before linear_out beyond the ones inside the stages
        z = _linear(self.linear_out, z)
        if self._activ_output is not None:
            z = self._activ_output(z)
        return _dropout(self, z, self.dropout_output)


class Tucker(_Fusion):
    """Tucker fusion: a full bilinear core (nn.Bilinear) between the projected inputs."""

    def __init__(self, input_dims, output_dim, mm_dim=1600, shared=False, normalize=False, dropout_input=0.0,
                 dropout_pre_lin=0.0, dropout_output=0.0):
        super().__init__(input_dims, output_dim)
        self.mm_dim, self.shared, self.normalize = mm_dim, shared, normalize
        self.dropout_input, self.dropout_pre_lin, self.dropout_output = dropout_input, dropout_pre_lin, dropout_output
        self.linear0 = nn.Linear(input_dims[0], mm_dim)
        self.linear1 = self.linear0 if shared else nn.Linear(input_dims[1], mm_dim)
        self.bilinear = nn.Bilinear(mm_dim, mm_dim, mm_dim)
        self.linear_out = nn.Linear(mm_dim, output_dim)

    def forward(self, x):
        x0, x1 = self._x(x)
        x0, x1 = _linear(self.linear0, x0), _linear(self.linear1, x1)
        x0, x1 = _dropout(self, x0, self.dropout_input), _dropout(self, x1, self.dropout_input)
        z = _bilinear(x0, x1, self.bilinear.weight.unsqueeze(0), self.bilinear.bias)
        if self.normalize:
            z = signed_sqrt_normalize(z)
        return self._finish(z)


def _bilinear(x0, x1, w, b):
    """z[..., g, j] = x0_g W_gj x1_g + b, for G groups of x's last dimension; w (G, S, S, S). The (x0 W) product is
    taken on the smaller side's rows, so a broadcast side is never expanded."""
    G, S = w.shape[0], w.shape[1]
    a = x0.unflatten(-1, (G, S))
    c = x1.unflatten(-1, (G, S))
    t = torch.einsum("...gk,gjkl->...gjl", a, w)  # on x0's rows
    z = (t * c.unsqueeze(-2)).sum(-1)
    return (z + b.view(G, S)).flatten(-2)


class BlockTucker(_Fusion):
    """Block-superdiagonal Tucker fusion: `chunks` full bilinear cores on slices of the projected inputs."""

    def __init__(self, input_dims, output_dim, mm_dim=1600, chunks=20, shared=False, dropout_input=0.0,
                 dropout_pre_lin=0.0, dropout_output=0.0, pos_norm="before_cat"):
        super().__init__(input_dims, output_dim)
        if pos_norm not in ("before_cat", "after_cat"):
            raise ValueError(f"BlockTucker: expected pos_norm 'before_cat' or 'after_cat', got {pos_norm!r}")
        self.mm_dim, self.chunks, self.shared, self.pos_norm = mm_dim, chunks, shared, pos_norm
        self.dropout_input, self.dropout_pre_lin, self.dropout_output = dropout_input, dropout_pre_lin, dropout_output
        self.linear0 = nn.Linear(input_dims[0], mm_dim)
        self.linear1 = self.linear0 if shared else nn.Linear(input_dims[1], mm_dim)
        self.sizes_list = chunk_sizes(mm_dim, chunks)
        self.bilinears = nn.ModuleList(nn.Bilinear(s, s, s) for s in self.sizes_list)
        self.linear_out = nn.Linear(mm_dim, output_dim)

    def forward(self, x):
        x0, x1 = self._x(x)
        x0, x1 = _linear(self.linear0, x0), _linear(self.linear1, x1)
        x0, x1 = _dropout(self, x0, self.dropout_input), _dropout(self, x1, self.dropout_input)
        if all(s == self.sizes_list[0] for s in self.sizes_list):
            w = torch.stack([m.weight for m in self.bilinears])
            b = torch.cat([m.bias for m in self.bilinears])
            z = _bilinear(x0, x1, w, b)
        else:
            z = torch.cat([_bilinear(a, c, m.weight.unsqueeze(0), m.bias) for a, c, m in
                           zip(x0.split(self.sizes_list, -1), x1.split(self.sizes_list, -1), self.bilinears)], -1)
        if self.pos_norm == "after_cat":
            z = signed_sqrt_normalize(z)
        elif all(s == self.sizes_list[0] for s in self.sizes_list):
            z = signed_sqrt_normalize(z, groups=self.chunks)
        else:
            z = torch.cat([signed_sqrt_normalize(c) for c in z.split(self.sizes_list, -1)], -1)
        return self._finish(z)


class MCB(_Fusion):
    """Multimodal compact bilinear pooling (Fukui et al. 2016): the count sketch of x0 x1^T in mm_dim buckets via
    the FFT of the inputs' sketches, then linear_out. The hashes are buffers (sketch0.h / .s, sketch1.h / .s) drawn
    from torch's generator at construction, as in block.bootstrap."""

    def __init__(self, input_dims, output_dim, mm_dim=16000, activ_output="relu", dropout_output=0.0):
        super().__init__(input_dims, output_dim)
        self.mm_dim, self.activ_output, self.dropout_output = mm_dim, activ_output, dropout_output
        self._activ_output = _activation(activ_output, "activ_output")
        self.mcb = nn.Module()
        for name, d in (("sketch1", input_dims[0]), ("sketch2", input_dims[1])):
            sk = nn.Module()
            sk.register_buffer("h", torch.randint(0, mm_dim, (d,)))
            sk.register_buffer("s", torch.randint(0, 2, (d,)).float() * 2 - 1)
            self.mcb.add_module(name, sk)
        self.linear_out = nn.Linear(mm_dim, output_dim)

    def forward(self, x):
        x0, x1 = self._x(x)
        s1, s2 = self.mcb.sketch1, self.mcb.sketch2
        z = compact_bilinear_pooling(x0, x1, s1.h, s1.s, s2.h, s2.s, self.mm_dim)
        return self._finish(z)


class GMU(_Fusion):
    """Gated multimodal unit (Arevalo et al. 2017): h = g * tanh(W0 x0) + (1 - g) * tanh(W1 x1), with the gate
    g = sigmoid(Wg [x0; x1]) (its weight split by input, so a broadcast side is not expanded)."""

    def __init__(self, input_dims, output_dim, activation="tanh", dropout_output=0.0):
        super().__init__(input_dims, output_dim)
        self.activation, self.dropout_output = activation, dropout_output
        self._act = _activation(activation, "activation")
        self.linear0 = nn.Linear(input_dims[0], output_dim, bias=False)
        self.linear1 = nn.Linear(input_dims[1], output_dim, bias=False)
        self.gate0 = nn.Linear(input_dims[0], output_dim)
        self.gate1 = nn.Linear(input_dims[1], output_dim, bias=False)

    def forward(self, x):
        x0, x1 = self._x(x)
        h0, h1 = _linear(self.linear0, x0), _linear(self.linear1, x1)
        if self._act is not None:
            h0, h1 = self._act(h0), self._act(h1)
        g = torch.sigmoid(self.gate0(x0) + self.gate1(x1))
        return _dropout(self, h1 + g * (h0 - h1), self.dropout_output)


class FiLM(_Fusion):
    """Feature-wise linear modulation (Perez et al. 2018): x0 conditions x1, z = act(gamma(x0) * x1 + beta(x0)),
    then linear_out (d1 -> output_dim)."""

    def __init__(self, input_dims, output_dim, activation="relu", dropout_output=0.0):
        super().__init__(input_dims, output_dim)
        self.activation, self.dropout_output = activation, dropout_output
        self._act = _activation(activation, "activation")
        self.film = nn.Linear(input_dims[0], 2 * input_dims[1])
        self.linear_out = nn.Linear(input_dims[1], output_dim)

    def forward(self, x):
        x0, x1 = self._x(x)
        gamma, beta = self.film(x0).chunk(2, -1)
        z = gamma * x1 + beta
        if self._act is not None:
            z = self._act(z)
        return _dropout(self, _linear(self.linear_out, z), self.dropout_output)


class GatedTanh(_Fusion):
    """Gated-tanh fusion (Anderson et al. 2018, Teney et al. 2018): each input through a gated tanh layer,
    y_i = tanh(W_i x_i) * sigmoid(W_i' x_i), then z = y_0 * y_1 and linear_out."""

    def __init__(self, input_dims, output_dim, mm_dim=1200, dropout_output=0.0):
        super().__init__(input_dims, output_dim)
        self.mm_dim, self.dropout_output = mm_dim, dropout_output
        self.linear0 = nn.Linear(input_dims[0], 2 * mm_dim)
        self.linear1 = nn.Linear(input_dims[1], 2 * mm_dim)
        self.linear_out = nn.Linear(mm_dim, output_dim)

    def forward(self, x):
        x0, x1 = self._x(x)
        t0, s0 = _linear(self.linear0, x0).chunk(2, -1)
        t1, s1 = _linear(self.linear1, x1).chunk(2, -1)
        z = torch.tanh(t0) * torch.sigmoid(s0) * torch.tanh(t1) * torch.sigmoid(s1)
        return _dropout(self, _linear(self.linear_out, z), self.dropout_output)
