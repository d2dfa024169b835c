"""Fused contrastive losses over the tiles of S = scale * A B^T (+ bias), S never stored: extra memory O(rows).

One direction of the loss at a time: rows of A against all rows of B.
  CLIP (InfoNCE):  loss_i = lse_j S_ij - sum_j t_ij S_ij,  t_ij = (1 - eps) [la_i == lb_j] / n_i + eps / Nb
  SigLIP:          loss_i = sum_j softplus(-z_ij (S_ij + bias)),  z_ij = +1 where la_i == lb_j, else -1
Three kernels: the row statistics (forward), dA (per A tile, looping over B tiles) and dB (per B tile, looping
over A tiles), both recomputing S; no atomics, so the backward is deterministic.
"""
import inspect

import torch
import triton
import triton.language as tl

from crossfuse.kernels._common import dot_flags

_LOG2E = 1.4426950408889634
_LN2 = 0.6931471805599453
_TL = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
# (BLOCK_M, BLOCK_N, num_warps, num_stages) per operand width and padded D chunk; the AOT check compiles each.
CONFIGS = {16: (64, 32, 8, 2), 32: (32, 32, 4, 1)}
BLOCK_K = 64  # D is walked in chunks of 64: any D, registers independent of D


def config(dtype):
    return CONFIGS[32 if dtype == torch.float32 else 16]


@triton.jit
def _scores(A, B, offs_m, offs_n, Ma, Nb, D, s_am, s_ad, s_bn, s_bd, scale, bias, DOT_F32: tl.constexpr,
            PREC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """scale * A[offs_m] B[offs_n]^T + bias in fp32, D walked in BLOCK_K chunks."""
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    rows_a = offs_m.to(tl.int64)
    rows_b = offs_n.to(tl.int64)
    for k0 in range(0, D, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mk = offs_k < D
        a = tl.load(A + rows_a[:, None] * s_am + offs_k[None, :] * s_ad, mask=(offs_m < Ma)[:, None] & mk[None, :],
                    other=0.0)
        b = tl.load(B + rows_b[:, None] * s_bn + offs_k[None, :] * s_bd, mask=(offs_n < Nb)[:, None] & mk[None, :],
                    other=0.0)
        if DOT_F32:  # the interpreter multiplies bf16 dot operands as raw bits (triton#11584)
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc += tl.dot(a, tl.trans(b), input_precision=PREC)
    return acc * scale + bias


@triton.jit
def _column_tile(A, B, LB, n0, offs_m, Ma, Nb, D, s_am, s_ad, s_bn, s_bd, scale, bias, DOT_F32: tl.constexpr,
                 PREC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """(rows, mask, labels, scores) of the B rows [n0, n0 + BLOCK_N) against the A rows offs_m."""
    offs_n = n0 + tl.arange(0, BLOCK_N)
    mn = offs_n < Nb
    lb = tl.load(LB + offs_n, mask=mn, other=-2)
    s = _scores(A, B, offs_m, offs_n, Ma, Nb, D, s_am, s_ad, s_bn, s_bd, scale, bias, DOT_F32, PREC, BLOCK_M, BLOCK_N,
                BLOCK_K)
    return offs_n, mn, lb, s


@triton.jit
def _rows_kernel(A, B, LA, LB, STATS, Ma, Nb, D, s_am, s_ad, s_bn, s_bd, scale, bias,
                 SIGLIP: tl.constexpr, DOT_F32: tl.constexpr, PREC: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """Per row i of A, into STATS (Ma, 4) fp32: CLIP (lse, sum of S over positives, positive count, sum of S);
    SigLIP (sum of softplus(-z (S + bias)), 0, positive count, 0)."""
    pid = tl.program_id(0)
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    mm = offs_m < Ma
    la = tl.load(LA + offs_m, mask=mm, other=-1)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    pos = tl.zeros([BLOCK_M], tl.float32)
    cnt = tl.zeros([BLOCK_M], tl.float32)
    tot = tl.zeros([BLOCK_M], tl.float32)
    for n0 in range(0, Nb, BLOCK_N):
        offs_n, mn, lb, s = _column_tile(A, B, LB, n0, offs_m, Ma, Nb, D, s_am, s_ad, s_bn, s_bd, scale, bias, DOT_F32,
                                         PREC, BLOCK_M, BLOCK_N, BLOCK_K)
        valid = mn[None, :] & mm[:, None]
        same = (la[:, None] == lb[None, :]) & valid
        cnt += tl.sum(same.to(tl.float32), 1)
        if SIGLIP:
            x = tl.where(same, -s, s)  # softplus(-z s): z = +1 on positives
            sp = tl.maximum(x, 0.0) + tl.log2(1.0 + tl.exp2(-tl.abs(x) * 1.4426950408889634)) * 0.6931471805599453
            tot += tl.sum(tl.where(valid, sp, 0.0), 1)
        else:
            s2 = tl.where(valid, s * 1.4426950408889634, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s2, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            l_i = l_i * tl.exp2(m_i - m_safe) + tl.sum(tl.exp2(s2 - m_safe[:, None]), 1)
            m_i = m_new
            pos += tl.sum(tl.where(same, s, 0.0), 1)
            tot += tl.sum(tl.where(valid, s, 0.0), 1)
    if SIGLIP:
        first = tot
    else:
        first = (m_i + tl.log2(tl.where(l_i > 0.0, l_i, 1.0))) * 0.6931471805599453
    base = STATS + offs_m.to(tl.int64) * 4
    tl.store(base, first, mask=mm)
    tl.store(base + 1, pos, mask=mm)
    tl.store(base + 2, cnt, mask=mm)
    tl.store(base + 3, tot, mask=mm)


@triton.jit
def _dscores(s, la, lb, valid, lse, cnt, w, eps, Nb, SIGLIP: tl.constexpr):
    """d loss / d S for the tile, each row weighted by w (the upstream gradient over the row count)."""
    same = (la[:, None] == lb[None, :]) & valid
    if SIGLIP:
        x = tl.where(same, -s, s)
        sig = 1.0 / (1.0 + tl.exp2(-x * 1.4426950408889634))  # d softplus(x) / dx
        ds = tl.where(same, -sig, sig)
    else:
        p = tl.exp2((s - lse[:, None]) * 1.4426950408889634)
        t = tl.where(same, (1.0 - eps) / tl.where(cnt > 0.0, cnt, 1.0)[:, None], 0.0) + eps / Nb
        ds = p - t
    return tl.where(valid, ds * w[:, None], 0.0)


@triton.jit
def _accumulate(ACC, rows, mrows, ds, X, s_x, s_xd, offs_x, mx, D, DOT_F32: tl.constexpr, PREC: tl.constexpr,
                BLOCK_K: tl.constexpr):
    """ACC[rows, :] += ds @ X[offs_x, :] in fp32, D in BLOCK_K chunks. ACC (rows, D) fp32 belongs to this program
    alone (its rows), so the read-modify-write needs no atomics."""
    for k0 in range(0, D, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mk = offs_k < D
        x = tl.load(X + offs_x.to(tl.int64)[:, None] * s_x + offs_k[None, :] * s_xd, mask=mx[:, None] & mk[None, :],
                    other=0.0)
        if DOT_F32:
            x = x.to(tl.float32)
        ptr = ACC + rows.to(tl.int64)[:, None] * D + offs_k[None, :]
        m2 = mrows[:, None] & mk[None, :]
        tl.store(ptr, tl.load(ptr, mask=m2, other=0.0) + tl.dot(ds.to(x.dtype), x, input_precision=PREC), mask=m2)


@triton.jit
def _grad_a_kernel(A, B, LA, LB, STATS, W, DA32, DSS, Ma, Nb, D, s_am, s_ad, s_bn, s_bd, scale, bias, eps,
                   SIGLIP: tl.constexpr, DOT_F32: tl.constexpr, PREC: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """DA32 (Ma, D) fp32, zero on entry, receives dS B (the launcher scales and casts); DSS (Ma, 2) per row the
    sums of dS * (S - bias) and dS (for d scale and d bias)."""
    pid = tl.program_id(0)
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    mm = offs_m < Ma
    la = tl.load(LA + offs_m, mask=mm, other=-1)
    lse = tl.load(STATS + offs_m.to(tl.int64) * 4, mask=mm, other=0.0)
    cnt = tl.load(STATS + offs_m.to(tl.int64) * 4 + 2, mask=mm, other=0.0)
    w = tl.load(W + offs_m, mask=mm, other=0.0)
    dss = tl.zeros([BLOCK_M], tl.float32)
    dsum = tl.zeros([BLOCK_M], tl.float32)
    for n0 in range(0, Nb, BLOCK_N):
        offs_n, mn, lb, s = _column_tile(A, B, LB, n0, offs_m, Ma, Nb, D, s_am, s_ad, s_bn, s_bd, scale, bias, DOT_F32,
                                         PREC, BLOCK_M, BLOCK_N, BLOCK_K)
        ds = _dscores(s, la, lb, mn[None, :] & mm[:, None], lse, cnt, w, eps, Nb, SIGLIP)
        dss += tl.sum(ds * (s - bias), 1)
        dsum += tl.sum(ds, 1)
        _accumulate(DA32, offs_m, mm, ds, B, s_bn, s_bd, offs_n, mn, D, DOT_F32, PREC, BLOCK_K)
    tl.store(DSS + offs_m.to(tl.int64) * 2, dss, mask=mm)
    tl.store(DSS + offs_m.to(tl.int64) * 2 + 1, dsum, mask=mm)


@triton.jit
def _grad_b_kernel(A, B, LA, LB, STATS, W, DB32, Ma, Nb, D, s_am, s_ad, s_bn, s_bd, scale, bias, eps,
                   SIGLIP: tl.constexpr, DOT_F32: tl.constexpr, PREC: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """DB32 (Nb, D) fp32, zero on entry, receives dS^T A for this program's B rows."""
    pid = tl.program_id(0)
    offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    mn = offs_n < Nb
    lb = tl.load(LB + offs_n, mask=mn, other=-2)
    for m0 in range(0, Ma, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        mm = offs_m < Ma
        la = tl.load(LA + offs_m, mask=mm, other=-1)
        lse = tl.load(STATS + offs_m.to(tl.int64) * 4, mask=mm, other=0.0)
        cnt = tl.load(STATS + offs_m.to(tl.int64) * 4 + 2, mask=mm, other=0.0)
        w = tl.load(W + offs_m, mask=mm, other=0.0)
        s = _scores(A, B, offs_m, offs_n, Ma, Nb, D, s_am, s_ad, s_bn, s_bd, scale, bias, DOT_F32, PREC, BLOCK_M,
                    BLOCK_N, BLOCK_K)
        ds = _dscores(s, la, lb, mn[None, :] & mm[:, None], lse, cnt, w, eps, Nb, SIGLIP)
        _accumulate(DB32, offs_n, mn, tl.trans(ds), A, s_am, s_ad, offs_m, mm, D, DOT_F32, PREC, BLOCK_K)


# ---- launchers ------------------------------------------------------------------------------------------
def rows(a, b, la, lb, scale, bias, siglip):
    """(Ma, 4) fp32 row statistics of one direction (see _rows_kernel)."""
    Ma, D = a.shape
    stats = torch.empty((Ma, 4), dtype=torch.float32, device=a.device)
    if Ma == 0:
        return stats
    BM, BN, warps, stages = config(a.dtype)
    _rows_kernel[(triton.cdiv(Ma, BM),)](a, b, la, lb, stats, Ma, b.shape[0], D, *a.stride(), *b.stride(),
                                        float(scale), float(bias), SIGLIP=siglip, **dot_flags(a.dtype), BLOCK_M=BM,
                                        BLOCK_N=BN, BLOCK_K=BLOCK_K, num_warps=warps, num_stages=stages)
    return stats


def grads(a, b, la, lb, stats, w, scale, bias, eps, siglip):
    """(dA, dB) of one direction in fp32 (rows weighted by w), and the (Ma, 2) per-row sums of dS * (S - bias) and
    dS (for the scale and bias gradients)."""
    Ma, D = a.shape
    Nb = b.shape[0]
    da = torch.zeros((Ma, D), dtype=torch.float32, device=a.device)
    db = torch.zeros((Nb, D), dtype=torch.float32, device=a.device)
    dss = torch.zeros((Ma, 2), dtype=torch.float32, device=a.device)
    BM, BN, warps, stages = config(a.dtype)
    common = dict(SIGLIP=siglip, **dot_flags(a.dtype), BLOCK_M=BM, BLOCK_N=BN, BLOCK_K=BLOCK_K, num_warps=warps,
                  num_stages=stages)
    if Ma and Nb and D:
        _grad_a_kernel[(triton.cdiv(Ma, BM),)](a, b, la, lb, stats, w, da, dss, Ma, Nb, D, *a.stride(), *b.stride(),
                                               float(scale), float(bias), float(eps), **common)
        _grad_b_kernel[(triton.cdiv(Nb, BN),)](a, b, la, lb, stats, w, db, Ma, Nb, D, *a.stride(), *b.stride(),
                                               float(scale), float(bias), float(eps), **common)
    return da.mul_(scale), db.mul_(scale), dss


def _aot_specs():
    specs = []
    ptrs = {"A": "*{t}", "B": "*{t}", "DA32": "*fp32", "DB32": "*fp32", "LA": "*i32", "LB": "*i32",
            "STATS": "*fp32", "W": "*fp32", "DSS": "*fp32"}
    floats = {"scale", "bias", "eps"}
    for dtype, tl_t in _TL.items():
        BM, BN, warps, stages = config(dtype)
        for siglip in (False, True):
            for name, kernel in (("contrastive_rows", _rows_kernel), ("contrastive_grad_a", _grad_a_kernel),
                                 ("contrastive_grad_b", _grad_b_kernel)):
                const = dict(SIGLIP=siglip, DOT_F32=False, PREC="ieee", BLOCK_M=BM, BLOCK_N=BN, BLOCK_K=BLOCK_K)
                sig = {}
                for p in inspect.signature(kernel.fn).parameters:
                    sig[p] = ("constexpr" if p in const else ptrs[p].format(t=tl_t) if p in ptrs
                              else "fp32" if p in floats else "i32")
                specs.append(dict(name=name, kernel=kernel, signature=sig, constexprs=const, num_warps=warps,
                                  num_stages=stages, config=f"{str(dtype)[6:]} {'siglip' if siglip else 'clip'} "
                                                              f"{BM}x{BN}x{BLOCK_K} w{warps} s{stages}"))
    return specs


AOT_SPECS = _aot_specs()
