"""Product pooling, the core of Block, Mutan, MFB and MFH, as one grouped GEMM with the pooling in its epilogue.

For group g (a Block chunk; Mutan and MFB have one), rank index r and output column j, with n the output row:
    u0 = x0[n // REP0, g*K0:(g+1)*K0] . W0[g, row(r, j)] + b0[g, row(r, j)]      (u1 likewise from x1, W1, b1)
    z[n, g*S + j] = sum_r act(u0) * act(u1)
row(r, j) = r*S + j ("rank-major": Block and Mutan view the projection as (rank, S)) or j*R + r (MFB and MFH view
it as (S, factor)). TWO adds MFH's second stage from V0/V1 (biases C0/C1):
    z[n, G*S + g*S + j] = sum_r act(v0) * act(v1) * act(u0) * act(u1).
The (rows, R*S) projections never reach memory in the forward. The backward kernel recomputes them tile by tile
and writes dU = dL/du for each projection, (G, N, R*S), from which torch's batched GEMMs give dx, dW and db.
"""
import inspect

import torch
import triton
import triton.language as tl

from crossfuse.kernels._common import dot_flags, store  # store: bf16 rounded to nearest even

_TL = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
BLOCK_K = 32
# (BLOCK_M, num_warps, num_stages) per (fp32?, two stages?, backward?, BLOCK_J): the largest tiles that compile
# without spills for sm_80 and sm_90 (the AOT check). BLOCK_J is 32 or 64, whichever wastes fewer columns.
CONFIGS = {
    (False, False, False, 32): (64, 8, 2), (False, False, False, 64): (64, 8, 2),
    (False, False, True, 32): (64, 8, 2), (False, False, True, 64): (32, 8, 2),
    (False, True, False, 32): (64, 8, 2), (False, True, False, 64): (32, 8, 2),
    (False, True, True, 32): (32, 4, 1), (False, True, True, 64): (32, 8, 2),
    (True, False, False, 32): (64, 4, 1), (True, False, False, 64): (32, 8, 2),
    (True, False, True, 32): (32, 4, 1), (True, False, True, 64): (16, 8, 2),
    (True, True, False, 32): (64, 8, 2), (True, True, False, 64): (32, 8, 2),
    (True, True, True, 32): (32, 8, 1), (True, True, True, 64): (16, 8, 1),
}


@triton.jit
def _proj(X, s_x, xrows, mrows, W, wrows, mcols, K, DOT_F32: tl.constexpr, PREC: tl.constexpr,
          BM: tl.constexpr, BJ: tl.constexpr, BK: tl.constexpr):
    """(BM, BJ) fp32: X[xrows, k] . W[wrows, k] summed over k < K (X's columns and W's rows unit-stride)."""
    acc = tl.zeros((BM, BJ), tl.float32)
    for k0 in range(0, K, BK):
        ks = k0 + tl.arange(0, BK)
        mk = ks < K
        x = tl.load(X + xrows[:, None] * s_x + ks[None, :], mask=mrows[:, None] & mk[None, :], other=0.0)
        w = tl.load(W + wrows[None, :] * K + ks[:, None], mask=mk[:, None] & mcols[None, :], other=0.0)
        if DOT_F32:  # the interpreter multiplies bf16 dot operands as raw bits (triton#11584)
            x = x.to(tl.float32)
            w = w.to(tl.float32)
        acc += tl.dot(x, w, input_precision=PREC)
    return acc


@triton.jit
def _act(u, RELU: tl.constexpr):
    if RELU:
        return tl.maximum(u, 0.0)
    else:
        return u


@triton.jit
def _both(X0, X1, W0, B0, W1, B1, g, RS, r0, r1, mn, wrows, mj, s_x0, s_x1, K0, K1, HAS_B: tl.constexpr,
          DOT_F32: tl.constexpr, PREC: tl.constexpr, BM: tl.constexpr, BJ: tl.constexpr, BK: tl.constexpr):
    """The pre-activations (u0, u1) of one rank index for this tile."""
    u0 = _proj(X0 + g * K0, s_x0, r0, mn, W0 + g * RS * K0, wrows, mj, K0, DOT_F32, PREC, BM, BJ, BK)
    u1 = _proj(X1 + g * K1, s_x1, r1, mn, W1 + g * RS * K1, wrows, mj, K1, DOT_F32, PREC, BM, BJ, BK)
    if HAS_B:
        u0 += tl.load(B0 + g * RS + wrows, mask=mj, other=0.0).to(tl.float32)[None, :]
        u1 += tl.load(B1 + g * RS + wrows, mask=mj, other=0.0).to(tl.float32)[None, :]
    return u0, u1


@triton.jit
def _tile(N, G, S, R, REP0, REP1, BM: tl.constexpr, BJ: tl.constexpr):
    pid = tl.program_id(1)
    n_j = tl.cdiv(S, BJ)
    g = (pid // n_j).to(tl.int64)
    n = tl.program_id(0).to(tl.int64) * BM + tl.arange(0, BM)
    j = (pid % n_j) * BJ + tl.arange(0, BJ)
    return g, n, n < N, n // REP0, n // REP1, j, j < S


@triton.jit
def _load_dz(DZ, s_dz, n, g, j, G, S, m2, TWO: tl.constexpr):
    """This tile's gradient of the pooled output (and of the second stage's, or the first again)."""
    dz = tl.load(DZ + n[:, None] * s_dz + (g * S + j)[None, :], mask=m2, other=0.0).to(tl.float32)
    dz2 = dz
    if TWO:
        dz2 = tl.load(DZ + n[:, None] * s_dz + (G * S + g * S + j)[None, :], mask=m2, other=0.0).to(tl.float32)
    return dz, dz2


@triton.jit
def _store_pair(x0, x1, a0, a1, d, D0, D1, wrows, m2, RELU: tl.constexpr):
    """The gradients of the pre-activations x0, x1 of a product a0 * a1 whose gradient is d."""
    g0 = d * a1
    g1 = d * a0
    if RELU:
        g0 = tl.where(x0 > 0, g0, 0.0)
        g1 = tl.where(x1 > 0, g1, 0.0)
    store(D0, 1, 1, 0, wrows[None, :], m2, g0)
    store(D1, 1, 1, 0, wrows[None, :], m2, g1)


@triton.jit
def _store_grads(u0, u1, v0, v1, dz, dz2, DU0, DU1, DV0, DV1, wrows, m2, TWO: tl.constexpr, RELU: tl.constexpr):
    """dL/d(pre-activation) of each projection for one rank index, from the pre-activations u (and the second
    stage's v) and the pooled outputs' gradients, stored at columns wrows of the dU rows DU* point to."""
    a0 = _act(u0, RELU)
    a1 = _act(u1, RELU)
    dp = dz
    if TWO:
        c0 = _act(v0, RELU)
        c1 = _act(v1, RELU)
        dp = dz + dz2 * c0 * c1
        _store_pair(v0, v1, c0, c1, dz2 * a0 * a1, DV0, DV1, wrows, m2, RELU)
    _store_pair(u0, u1, a0, a1, dp, DU0, DU1, wrows, m2, RELU)


@triton.jit
def _pool_fwd_kernel(X0, X1, W0, B0, W1, B1, V0, C0, V1, C1, Z, N, G, S, R, K0, K1, REP0, REP1, s_x0, s_x1, s_z,
                     HAS_B: tl.constexpr, TWO: tl.constexpr, RANK_MAJOR: tl.constexpr, RELU: tl.constexpr,
                     DOT_F32: tl.constexpr, PREC: tl.constexpr, BM: tl.constexpr, BJ: tl.constexpr,
                     BK: tl.constexpr):
    g, n, mn, r0, r1, j, mj = _tile(N, G, S, R, REP0, REP1, BM, BJ)
    RS = R * S
    z = tl.zeros((BM, BJ), tl.float32)
    z2 = tl.zeros((BM, BJ), tl.float32)
    for r in range(R):
        wrows = r * S + j if RANK_MAJOR else j * R + r
        u0, u1 = _both(X0, X1, W0, B0, W1, B1, g, RS, r0, r1, mn, wrows, mj, s_x0, s_x1, K0, K1, HAS_B, DOT_F32,
                       PREC, BM, BJ, BK)
        p = _act(u0, RELU) * _act(u1, RELU)
        z += p
        if TWO:
            v0, v1 = _both(X0, X1, V0, C0, V1, C1, g, RS, r0, r1, mn, wrows, mj, s_x0, s_x1, K0, K1, HAS_B, DOT_F32,
                           PREC, BM, BJ, BK)
            z2 += _act(v0, RELU) * _act(v1, RELU) * p
    m2 = mn[:, None] & mj[None, :]
    store(Z, s_z, 1, n[:, None], (g * S + j)[None, :], m2, z)
    if TWO:
        store(Z, s_z, 1, n[:, None], (G * S + g * S + j)[None, :], m2, z2)


@triton.jit
def _pool_bwd_kernel(X0, X1, W0, B0, W1, B1, V0, C0, V1, C1, DZ, DU0, DU1, DV0, DV1, N, G, S, R, K0, K1, REP0,
                     REP1, s_x0, s_x1, s_dz, HAS_B: tl.constexpr, TWO: tl.constexpr, RANK_MAJOR: tl.constexpr,
                     RELU: tl.constexpr, DOT_F32: tl.constexpr, PREC: tl.constexpr, BM: tl.constexpr,
                     BJ: tl.constexpr, BK: tl.constexpr):
    g, n, mn, r0, r1, j, mj = _tile(N, G, S, R, REP0, REP1, BM, BJ)
    RS = R * S
    m2 = mn[:, None] & mj[None, :]
    dz, dz2 = _load_dz(DZ, s_dz, n, g, j, G, S, m2, TWO)
    out = g * N * RS + n[:, None] * RS  # dU rows: (G, N, R*S)
    for r in range(R):
        wrows = r * S + j if RANK_MAJOR else j * R + r
        u0, u1 = _both(X0, X1, W0, B0, W1, B1, g, RS, r0, r1, mn, wrows, mj, s_x0, s_x1, K0, K1, HAS_B, DOT_F32,
                       PREC, BM, BJ, BK)
        v0, v1 = u0, u1
        if TWO:
            v0, v1 = _both(X0, X1, V0, C0, V1, C1, g, RS, r0, r1, mn, wrows, mj, s_x0, s_x1, K0, K1, HAS_B, DOT_F32,
                           PREC, BM, BJ, BK)
        _store_grads(u0, u1, v0, v1, dz, dz2, DU0 + out, DU1 + out, DV0 + out, DV1 + out, wrows, m2, TWO, RELU)


# ---- the pooling alone, on projections computed by cuBLAS (large K, where torch's GEMMs beat _proj) -----------
@triton.jit
def _ld(U, B, g, RS, rows, mn, wrows, mj, HAS_B: tl.constexpr):
    """(BM, BJ) fp32 of U[g, rows, wrows] (+ B[g, wrows])."""
    m2 = mn[:, None] & mj[None, :]
    u = tl.load(U + rows[:, None] * RS + wrows[None, :], mask=m2, other=0.0).to(tl.float32)
    if HAS_B:
        u += tl.load(B + g * RS + wrows, mask=mj, other=0.0).to(tl.float32)[None, :]
    return u


@triton.jit
def _pool_ew_fwd_kernel(U0, U1, B0, B1, V0, V1, C0, C1, Z, N, G, S, R, REP0, REP1, s_z,
                        HAS_B: tl.constexpr, TWO: tl.constexpr, RANK_MAJOR: tl.constexpr, RELU: tl.constexpr,
                        BM: tl.constexpr, BJ: tl.constexpr):
    g, n, mn, r0, r1, j, mj = _tile(N, G, S, R, REP0, REP1, BM, BJ)
    RS = R * S
    N0 = N // REP0
    N1 = N // REP1
    rows0 = g * N0 + r0  # U (G, rows, R*S)
    rows1 = g * N1 + r1
    z = tl.zeros((BM, BJ), tl.float32)
    z2 = tl.zeros((BM, BJ), tl.float32)
    for r in range(R):
        wrows = r * S + j if RANK_MAJOR else j * R + r
        p = _act(_ld(U0, B0, g, RS, rows0, mn, wrows, mj, HAS_B), RELU) * \
            _act(_ld(U1, B1, g, RS, rows1, mn, wrows, mj, HAS_B), RELU)
        z += p
        if TWO:
            z2 += _act(_ld(V0, C0, g, RS, rows0, mn, wrows, mj, HAS_B), RELU) * \
                _act(_ld(V1, C1, g, RS, rows1, mn, wrows, mj, HAS_B), RELU) * p
    m2 = mn[:, None] & mj[None, :]
    store(Z, s_z, 1, n[:, None], (g * S + j)[None, :], m2, z)
    if TWO:
        store(Z, s_z, 1, n[:, None], (G * S + g * S + j)[None, :], m2, z2)


@triton.jit
def _pool_ew_bwd_kernel(U0, U1, B0, B1, V0, V1, C0, C1, DZ, DU0, DU1, DV0, DV1, N, G, S, R, REP0, REP1, s_dz,
                        HAS_B: tl.constexpr, TWO: tl.constexpr, RANK_MAJOR: tl.constexpr, RELU: tl.constexpr,
                        BM: tl.constexpr, BJ: tl.constexpr):
    g, n, mn, r0, r1, j, mj = _tile(N, G, S, R, REP0, REP1, BM, BJ)
    RS = R * S
    rows0 = g * (N // REP0) + r0
    rows1 = g * (N // REP1) + r1
    m2 = mn[:, None] & mj[None, :]
    dz, dz2 = _load_dz(DZ, s_dz, n, g, j, G, S, m2, TWO)
    out = g * N * RS + n[:, None] * RS  # dU rows: (G, N, R*S), every output row (the host sums a broadcast side)
    for r in range(R):
        wrows = r * S + j if RANK_MAJOR else j * R + r
        u0 = _ld(U0, B0, g, RS, rows0, mn, wrows, mj, HAS_B)
        u1 = _ld(U1, B1, g, RS, rows1, mn, wrows, mj, HAS_B)
        v0, v1 = u0, u1
        if TWO:
            v0 = _ld(V0, C0, g, RS, rows0, mn, wrows, mj, HAS_B)
            v1 = _ld(V1, C1, g, RS, rows1, mn, wrows, mj, HAS_B)
        _store_grads(u0, u1, v0, v1, dz, dz2, DU0 + out, DU1 + out, DV0 + out, DV1 + out, wrows, m2, TWO, RELU)


# ---- launchers ------------------------------------------------------------------------------------------
def block_j(S):
    return 32 if 0 < S % 64 <= 32 else 64


def config(dtype, two, backward, BJ):
    return CONFIGS[(dtype == torch.float32, bool(two), bool(backward), BJ)]


def _fused(kernel, backward, x0, x1, ws, outs, S, R, rank_major, relu):
    """One launch of the fused kernel: ws = (w0, b0, w1, b1, v0, c0, v1, c1), outs = (z,) or (dz, du0, du1, dv0,
    dv1); an absent pointer gets w0 in its place, never read (HAS_B / TWO off)."""
    w0, w1 = ws[0], ws[2]
    N, G, two = max(x0.shape[0], x1.shape[0]), w0.shape[0], ws[4] is not None
    if N == 0 or S == 0:
        return
    BJ = block_j(S)
    BM, warps, stages = config(x0.dtype, two, backward, BJ)
    ptrs = [w0 if t is None else t for t in (*ws, *outs)]
    kernel[(triton.cdiv(N, BM), G * triton.cdiv(S, BJ))](
        x0, x1, *ptrs, N, G, S, R, w0.shape[2], w1.shape[2], N // x0.shape[0], N // x1.shape[0], x0.stride(0),
        x1.stride(0), outs[0].stride(0), HAS_B=ws[1] is not None, TWO=two, RANK_MAJOR=rank_major, RELU=relu,
        **dot_flags(x0.dtype), BM=BM, BJ=BJ, BK=BLOCK_K, num_warps=warps, num_stages=stages)


def forward(x0, x1, w0, b0, w1, b1, v0, c0, v1, c1, z, S, R, rank_major, relu):
    """z (N, P*G*S) <- product pooling; x rows and all weights unit-stride in their last dimension, weights and
    biases contiguous (G, R*S, K) / (G, R*S)."""
    _fused(_pool_fwd_kernel, False, x0, x1, (w0, b0, w1, b1, v0, c0, v1, c1), (z,), S, R, rank_major, relu)


def backward(x0, x1, w0, b0, w1, b1, v0, c0, v1, c1, dz, du0, du1, dv0, dv1, S, R, rank_major, relu):
    """dU buffers (G, N, R*S) <- the gradients of the projections' pre-activations (recomputed here)."""
    _fused(_pool_bwd_kernel, True, x0, x1, (w0, b0, w1, b1, v0, c0, v1, c1), (dz, du0, du1, dv0, dv1), S, R,
           rank_major, relu)


EW_BM, EW_WARPS = 16, 4  # the elementwise pooling: (16, BLOCK_J) tiles


def _elementwise(kernel, us, bs, outs, N, S, R, rank_major, relu):
    """One launch of a pooling-only kernel: us = [U0, U1(, V0, V1)] (G, rows, R*S), bs their biases (G, R*S) or
    None, outs = (z,) or (dz, dU0, dU1(, dV0, dV1)); an absent pointer gets U0 in its place, never read."""
    if N == 0 or S == 0:
        return
    G, two = us[0].shape[0], len(us) == 4
    BJ = block_j(S)
    u = list(us) + [None] * (4 - len(us))
    o = list(outs) + [None] * (5 - len(outs) if len(outs) > 1 else 0)
    ptrs = [us[0] if t is None else t for t in (u[0], u[1], bs[0], bs[1], u[2], u[3], bs[2], bs[3], *o)]
    kernel[(triton.cdiv(N, EW_BM), G * triton.cdiv(S, BJ))](
        *ptrs, N, G, S, R, N // us[0].shape[1], N // us[1].shape[1], outs[0].stride(0), HAS_B=bs[0] is not None,
        TWO=two, RANK_MAJOR=rank_major, RELU=relu, BM=EW_BM, BJ=BJ, num_warps=EW_WARPS)


def pool_forward(us, bs, z, N, S, R, rank_major, relu):
    """z <- the pooling of projections us = [U0, U1(, V0, V1)] (G, rows, R*S), biases bs (G, R*S) or None."""
    _elementwise(_pool_ew_fwd_kernel, us, bs, (z,), N, S, R, rank_major, relu)


def pool_backward(us, bs, dz, dus, N, S, R, rank_major, relu):
    """dus (G, N, R*S) <- the gradients of the projections' pre-activations."""
    _elementwise(_pool_ew_bwd_kernel, us, bs, (dz, *dus), N, S, R, rank_major, relu)


def _aot_specs():
    specs = []
    for dtype, t in _TL.items():
        for two in (False, True):
            for BJ in (32, 64):
                for name, kernel in (("product_pool_fwd", _pool_fwd_kernel), ("product_pool_bwd", _pool_bwd_kernel)):
                    BM, warps, stages = config(dtype, two, kernel is _pool_bwd_kernel, BJ)
                    const = dict(HAS_B=True, TWO=two, RANK_MAJOR=True, RELU=True, DOT_F32=False, PREC="ieee", BM=BM,
                                 BJ=BJ, BK=BLOCK_K)
                    sig = {p: "constexpr" if p in const else ("*" + t) if p[0] in "XWBVCZD" and p not in ("DOT_F32",)
                           else "i32" for p in inspect.signature(kernel.fn).parameters}
                    stage = "two-stage" if two else "one-stage"
                    specs.append(dict(name=name, kernel=kernel, signature=sig, constexprs=const, num_warps=warps,
                                      num_stages=stages,
                                      config=f"{str(dtype)[6:]} {stage} {BM}x{BJ}x{BLOCK_K} w{warps} s{stages}"))
        for two in (False, True):
            for BJ in (32, 64):
                for name, kernel in (("product_pool_ew_fwd", _pool_ew_fwd_kernel),
                                     ("product_pool_ew_bwd", _pool_ew_bwd_kernel)):
                    const = dict(HAS_B=True, TWO=two, RANK_MAJOR=True, RELU=True, BM=EW_BM, BJ=BJ)
                    sig = {p: "constexpr" if p in const else ("*" + t) if p[0] in "UBVCZD" else "i32"
                           for p in inspect.signature(kernel.fn).parameters}
                    specs.append(dict(name=name, kernel=kernel, signature=sig, constexprs=const, num_warps=EW_WARPS,
                                      num_stages=1, config=f"{str(dtype)[6:]} {'two-stage' if two else 'one-stage'}"
                                                           f" {EW_BM}x{BJ} w{EW_WARPS}"))
    return specs


AOT_SPECS = _aot_specs()
