"""Fused contrastive losses over the tiles of S = scale * A B^T (+ bias); S is never stored whole.

A direction is rows of A against all rows of B:
  CLIP (InfoNCE):  loss_i = lse_j S_ij - sum_j t_ij S_ij,  t_ij = (1 - eps) [la_i == lb_j] / n_i + eps / Nb
  SigLIP:          loss_i = sum_j softplus(-z_ij (S_ij + bias)),  z_ij = +1 where la_i == lb_j, else -1
Forward: one kernel gives a direction's row statistics, including the sums the scale and bias gradients need
(CLIP's symmetric loss launches it twice, A and B swapped). Backward: per chunk of rows, one kernel writes
dS (one or both directions at once, in the inputs' dtype) and a cuBLAS GEMM turns it into those rows'
gradient; the chunk is capped in bytes (DS_CHUNK_BYTES), so extra memory is O(B); deterministic, no atomics.
"""
import inspect

import torch
import triton
import triton.language as tl

from crossfuse.kernels._common import dot_flags

_TL = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) per operand width (16 or 32 bits) and, for the forward,
# loss (SigLIP's epilogue holds more registers); the fastest spill-free ones measured on an H200. The AOT check
# compiles each.
ROWS_CONFIGS = {(16, False): (64, 128, 64, 8, 3), (16, True): (64, 64, 64, 8, 3), (32, False): (32, 32, 32, 4, 1),
                (32, True): (32, 32, 32, 4, 1)}
DS_CONFIGS = {16: (128, 64, 64, 8, 3), 32: (32, 32, 32, 4, 1)}
DS_CHUNK_BYTES = 32 << 20  # the dS scratch: 0.8% of the fp32 logits at B = 32768
STATS = 6  # columns of a direction's row statistics (see _rows_kernel)
# (own, loop): which directions' terms dS holds (the direction whose rows the chunk is, the other's, or both)
TERMS = ((True, False), (False, True), (True, True))


def _width(dtype):
    return 32 if dtype == torch.float32 else 16


def _rows_along_d(t):
    """The kernels read rows contiguous along D (unit stride: vector loads, fewer address registers)."""
    return t if t.stride(1) == 1 or t.shape[1] <= 1 else t.contiguous()


@triton.jit
def _scores(X, Y, offs_m, offs_n, M, N, D, s_xm, s_yn, scale, bias, DOT_F32: tl.constexpr,
            PREC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """scale * X[offs_m] Y[offs_n]^T + bias in fp32, D walked in BLOCK_K chunks (rows contiguous along D)."""
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    rows_x = offs_m.to(tl.int64)
    rows_y = offs_n.to(tl.int64)
    for k0 in range(0, D, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mk = offs_k < D
        x = tl.load(X + rows_x[:, None] * s_xm + offs_k[None, :], mask=(offs_m < M)[:, None] & mk[None, :],
                    other=0.0)
        y = tl.load(Y + rows_y[:, None] * s_yn + offs_k[None, :], mask=(offs_n < N)[:, None] & mk[None, :],
                    other=0.0)
        if DOT_F32:  # the interpreter multiplies bf16 dot operands as raw bits (triton#11584)
            x = x.to(tl.float32)
            y = y.to(tl.float32)
        acc += tl.dot(x, tl.trans(y), input_precision=PREC)
    return acc * scale + bias


@triton.jit
def _siglip_terms(s, same):
    """(softplus(x), d softplus(x) / dS) with x = -z S: z = +1 on positives; one exp2 for both."""
    x = tl.where(same, -s, s)
    u = tl.exp2(-tl.abs(x) * 1.4426950408889634)
    inv = 1.0 / (1.0 + u)
    sig = tl.where(x >= 0.0, inv, u * inv)
    return tl.maximum(x, 0.0) + tl.log2(1.0 + u) * 0.6931471805599453, tl.where(same, -sig, sig)


@triton.jit
def _rows_kernel(X, Y, LX, LY, STATS, M, N, D, s_xm, s_yn, scale, bias,
                 SIGLIP: tl.constexpr, DOT_F32: tl.constexpr, PREC: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """Per row i of X, into STATS (M, 6) fp32, with G = d loss_i / d S_i.:
    CLIP:   lse, sum of S over positives, positive count, sum of S, sum of softmax * S, 0;
    SigLIP: loss, 0, positive count, 0, sum of G * (S - bias), sum of G."""
    pid = tl.program_id(0)
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    mm = offs_m < M
    lx = tl.load(LX + offs_m, mask=mm, other=-1)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    pos = tl.zeros([BLOCK_M], tl.float32)
    cnt = tl.zeros([BLOCK_M], tl.float32)
    tot = tl.zeros([BLOCK_M], tl.float32)
    g1 = tl.zeros([BLOCK_M], tl.float32)
    g2 = tl.zeros([BLOCK_M], tl.float32)
    for n0 in range(0, N, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        mn = offs_n < N
        ly = tl.load(LY + offs_n, mask=mn, other=-2)
        s = _scores(X, Y, offs_m, offs_n, M, N, D, s_xm, s_yn, scale, bias, DOT_F32, PREC, BLOCK_M,
                    BLOCK_N, BLOCK_K)
        valid = mn[None, :] & mm[:, None]
        same = (lx[:, None] == ly[None, :]) & valid
        cnt += tl.sum(same.to(tl.float32), 1)
        if SIGLIP:
            sp, ds = _siglip_terms(s, same)
            ds = tl.where(valid, ds, 0.0)
            tot += tl.sum(tl.where(valid, sp, 0.0), 1)
            g1 += tl.sum(ds * (s - bias), 1)
            g2 += tl.sum(ds, 1)
        else:
            s2 = tl.where(valid, s * 1.4426950408889634, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s2, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            alpha = tl.exp2(m_i - m_safe)
            p = tl.exp2(s2 - m_safe[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            g1 = g1 * alpha + tl.sum(tl.where(valid, p * s, 0.0), 1)
            m_i = m_new
            pos += tl.sum(tl.where(same, s, 0.0), 1)
            tot += tl.sum(tl.where(valid, s, 0.0), 1)
    base = STATS + offs_m.to(tl.int64) * 6
    if SIGLIP:
        tl.store(base, tot, mask=mm)
        tl.store(base + 1, tl.zeros([BLOCK_M], tl.float32), mask=mm)
        tl.store(base + 3, tl.zeros([BLOCK_M], tl.float32), mask=mm)
        tl.store(base + 4, g1, mask=mm)
    else:
        l_safe = tl.where(l_i > 0.0, l_i, 1.0)
        tl.store(base, (m_i + tl.log2(l_safe)) * 0.6931471805599453, mask=mm)
        tl.store(base + 1, pos, mask=mm)
        tl.store(base + 3, tot, mask=mm)
        tl.store(base + 4, g1 / l_safe, mask=mm)
    tl.store(base + 2, cnt, mask=mm)
    tl.store(base + 5, g2, mask=mm)


@triton.jit
def _dterm(s, same, st, w, eps, n, SIGLIP: tl.constexpr):
    """One direction's d loss / d S on a tile, times its row weights w; st points at that direction's row
    statistics (its lse and positive count), w and st broadcast along the tile's other axis; n = its columns."""
    if SIGLIP:
        _, ds = _siglip_terms(s, same)
    else:
        lse = tl.load(st)
        cnt = tl.load(st + 2)
        p = tl.exp2((s - lse) * 1.4426950408889634)
        ds = p - (tl.where(same, (1.0 - eps) / tl.where(cnt > 0.0, cnt, 1.0), 0.0) + eps / n)
    return ds * w


@triton.jit
def _dscores_kernel(X, Y, LX, LY, SX, SY, WX, WY, DS, r0, C, M, N, D, s_xm, s_yn, scale, bias, eps,
                    SIGLIP: tl.constexpr, OWN: tl.constexpr, LOOP: tl.constexpr, DOT_F32: tl.constexpr,
                    PREC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """DS (C, N) in DS's dtype: dS of X rows [r0, r0 + C) against every Y row, adding the X-rows direction
    (OWN: statistics SX, row weights WX) and / or the Y-rows direction (LOOP: SY, WY). Out-of-range rows and
    columns are neither read nor written."""
    offs_c = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_m = r0 + offs_c
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mm = offs_c < C
    mn = offs_n < N
    lx = tl.load(LX + offs_m, mask=mm, other=-1)
    ly = tl.load(LY + offs_n, mask=mn, other=-2)
    s = _scores(X, Y, offs_m, offs_n, r0 + C, N, D, s_xm, s_yn, scale, bias, DOT_F32, PREC, BLOCK_M,
                BLOCK_N, BLOCK_K)
    valid = mm[:, None] & mn[None, :]
    same = (lx[:, None] == ly[None, :]) & valid
    ds = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    if OWN:
        rows = offs_m.to(tl.int64)
        w = tl.load(WX + rows, mask=mm, other=0.0)[:, None]
        ds += _dterm(s, same, SX + tl.where(mm, rows, 0)[:, None] * 6, w, eps, N, SIGLIP)
    if LOOP:
        cols = offs_n.to(tl.int64)
        w = tl.load(WY + cols, mask=mn, other=0.0)[None, :]
        ds += _dterm(s, same, SY + tl.where(mn, cols, 0)[None, :] * 6, w, eps, M, SIGLIP)
    tl.store(DS + offs_c.to(tl.int64)[:, None] * N + offs_n[None, :], ds.to(DS.dtype.element_ty), mask=valid)


# ---- launchers ------------------------------------------------------------------------------------------
def rows(a, b, la, lb, scale, bias, siglip):
    """(Ma, 6) fp32 row statistics of one direction (see _rows_kernel)."""
    Ma, D = a.shape
    stats = torch.empty((Ma, STATS), dtype=torch.float32, device=a.device)
    if Ma == 0:
        return stats
    a, b = _rows_along_d(a), _rows_along_d(b)
    BM, BN, BK, warps, stages = ROWS_CONFIGS[_width(a.dtype), siglip]
    _rows_kernel[(triton.cdiv(Ma, BM),)](a, b, la, lb, stats, Ma, b.shape[0], D, a.stride(0), b.stride(0),
                                        float(scale), float(bias), SIGLIP=siglip, **dot_flags(a.dtype), BLOCK_M=BM,
                                        BLOCK_N=BN, BLOCK_K=BK, num_warps=warps, num_stages=stages)
    return stats


def _grad(x, y, lx, ly, sx, sy, wx, wy, scale, bias, eps, siglip):
    """d loss / d X, unscaled (dS Y), in X's dtype; sx / wx (sy / wy) None leaves that direction out."""
    M, D = x.shape
    N = y.shape[0]
    dx = torch.empty((M, D), dtype=x.dtype, device=x.device)
    if N == 0 or D == 0:
        return dx.zero_()
    x, y = _rows_along_d(x), _rows_along_d(y)
    BM, BN, BK, warps, stages = DS_CONFIGS[_width(x.dtype)]
    C = min(M, max(BM, DS_CHUNK_BYTES // x.element_size() // N // BM * BM))
    ds = torch.empty((C, N), dtype=x.dtype, device=x.device)
    flags = dict(SIGLIP=siglip, OWN=sx is not None, LOOP=sy is not None, **dot_flags(x.dtype), BLOCK_M=BM,
                 BLOCK_N=BN, BLOCK_K=BK, num_warps=warps, num_stages=stages)
    args = (x, y, lx, ly, sx if sx is not None else ds, sy if sy is not None else ds, wx if wx is not None else ds,
            wy if wy is not None else ds, ds)
    for r0 in range(0, M, C):
        c = min(C, M - r0)
        _dscores_kernel[(triton.cdiv(c, BM), triton.cdiv(N, BN))](*args, r0, c, M, N, D, x.stride(0), y.stride(0),
                                                                float(scale), float(bias), float(eps), **flags)
        torch.mm(ds[:c], y, out=dx[r0:r0 + c])
    return dx


def grads(a, b, la, lb, sa, wa, sb, wb, scale, bias, eps, siglip):
    """(dA, dB) in the inputs' dtype. dS is the A-rows direction's (statistics sa, row weights wa), plus the
    B-rows direction's when sb / wb are given (CLIP's symmetric loss: both from one pass per side). The
    weights are divided by their largest magnitude first so that dS does not underflow in 16 bits."""
    wmax = wa.abs().amax() if wa.numel() else wa.new_zeros(())
    if wb is not None and wb.numel():
        wmax = torch.maximum(wmax, wb.abs().amax())
    wmax = wmax.clamp_min(torch.finfo(torch.float32).tiny)
    wa = (wa / wmax).contiguous()
    wb = (wb / wmax).contiguous() if wb is not None else None
    da = _grad(a, b, la, lb, sa, sb, wa, wb, scale, bias, eps, siglip)
    db = _grad(b, a, lb, la, sb, sa, wb, wa, scale, bias, eps, siglip)
    factor = wmax * scale
    return da.mul_(factor), db.mul_(factor)


def _aot_specs():
    specs = []
    ptrs = {"X": "*{t}", "Y": "*{t}", "DS": "*{t}", "LX": "*i32", "LY": "*i32", "STATS": "*fp32", "SX": "*fp32",
            "SY": "*fp32", "WX": "*fp32", "WY": "*fp32"}
    floats = {"scale", "bias", "eps"}

    def spec(name, kernel, tl_t, cfg, const, label):
        BM, BN, BK, warps, stages = cfg
        const = dict(const, DOT_F32=False, PREC="ieee", BLOCK_M=BM, BLOCK_N=BN, BLOCK_K=BK)
        sig = {p: ("constexpr" if p in const else ptrs[p].format(t=tl_t) if p in ptrs else "fp32" if p in floats
                   else "i32") for p in inspect.signature(kernel.fn).parameters}
        # as the JIT specialises them for torch's aligned tensors with D a multiple of 16
        aligned = [p for p in sig if p in ptrs or p in ("D", "s_xm", "s_yn")]
        return dict(name=name, kernel=kernel, signature=sig, constexprs=const, num_warps=warps, num_stages=stages,
                    aligned=aligned, config=f"{label} {BM}x{BN}x{BK} w{warps} s{stages}")

    for dtype, tl_t in _TL.items():
        dt = str(dtype)[6:]
        for siglip in (False, True):
            kind = "siglip" if siglip else "clip"
            specs.append(spec("contrastive_rows", _rows_kernel, tl_t, ROWS_CONFIGS[_width(dtype), siglip],
                              dict(SIGLIP=siglip), f"{dt} {kind}"))
            for own, loop in TERMS[:2 if siglip else 3]:  # SigLIP has one direction
                specs.append(spec("contrastive_dscores", _dscores_kernel, tl_t, DS_CONFIGS[_width(dtype)],
                                  dict(SIGLIP=siglip, OWN=own, LOOP=loop),
                                  f"{dt} {kind} {'own' * own}{'+' * (own and loop)}{'loop' * loop}"))
    return specs


AOT_SPECS = _aot_specs()
