"""Fused contrastive losses over the tiles of S = scale * A B^T (+ bias); S is never stored whole.

A direction is rows of A against all rows of B:
  CLIP (InfoNCE):  loss_i = lse_j S_ij - sum_j t_ij S_ij,  t_ij = (1 - eps) [la_i == lb_j] / n_i + eps / Nb
  SigLIP:          loss_i = sum_j softplus(-z_ij (S_ij + bias)),  z_ij = +1 where la_i == lb_j, else -1
Forward: _fold_kernel folds tiles of S into running statistics of a direction's rows (an online logsumexp for
CLIP, sums for SigLIP), each program a tile of rows and a slice of the columns (FOLD_SPLITS), the slices merged
at the end (_finish): S's tiles read from capped fp32 blocks of S that cuBLAS forms (its fp32 accumulators kept),
each block folded into its rows' statistics and its columns' (CLIP's both directions from one pass over S), or,
without S_FROM_CUBLAS, formed by the kernel itself (tl.dot, one direction per launch).
Backward: per chunk of rows, one kernel writes dS (one or both directions at once, in the inputs' dtype) and a
cuBLAS GEMM turns it into those rows' gradient; the chunk is capped in bytes (DS_CHUNK_BYTES), so extra memory
is O(B); deterministic, no atomics.
"""
import inspect

import torch
import triton
import triton.language as tl

from crossfuse.kernels._common import dot_flags

_TL = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
# The tl.dot paths: (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) per operand width (16 or 32 bits) and,
# for the forward, loss (SigLIP's epilogue holds more registers); the fastest spill-free ones measured on an
# H200. The AOT check compiles each.
ROWS_CONFIGS = {(16, False): (64, 128, 64, 8, 3), (16, True): (64, 64, 64, 8, 3), (32, False): (32, 32, 16, 4, 1),
                (32, True): (32, 32, 16, 4, 1)}
DS_CONFIGS = {16: (128, 64, 64, 8, 3), 32: (32, 32, 32, 4, 1)}
# The folds of fp32 S blocks (memory-bound): (BLOCK_M kept, BLOCK_N reduced, 0, warps, 1) of the row fold (rows
# kept) and the column fold (columns kept, contiguous).
FOLD_CONFIGS = {"rows": (16, 128, 0, 4, 1), "cols": (32, 64, 0, 4, 1)}
# The forward's S from cuBLAS blocks (CLIP's two directions from one pass) rather than the kernel's own tl.dot
# (one pass per direction): on an H200 (fp16, D = 512) fwd+bwd within 5% of each other, the blocks ahead for CLIP
# at B = 4096 and 32768 and SigLIP at 4096, behind for SigLIP at 32768 (benchmarks/results, 2026-11-28).
S_FROM_CUBLAS = True
S_BLOCK_COLS = 4096  # the forward's S blocks: at most this many columns (rows: as many as DS_CHUNK_BYTES allows)
FOLD_PROGRAMS = 4  # per SM: the folds split the reduced axis until about this many programs run per SM
FOLD_SPLITS = None  # or a fixed number of slices of the reduced axis (tests)
DS_CHUNK_BYTES = 32 << 20  # the S block / the dS scratch: 0.8% of the fp32 logits at B = 32768
STATS = 6  # columns of a direction's row statistics (see _fold_kernel)
LN2 = 0.6931471805599453
# (own, loop): which directions' terms dS holds (the direction whose rows the chunk is, the other's, or both)
TERMS = ((True, False), (False, True), (True, True))


def _width(dtype):
    return 32 if dtype == torch.float32 else 16


def _rows_along_d(t):
    """The kernels read rows contiguous along D (unit stride: vector loads, fewer address registers)."""
    return t if t.stride(1) == 1 or t.shape[1] <= 1 else t.contiguous()


def _mm_f32(x, y):
    """x y^T in fp32: 16-bit products accumulate in fp32 on every path, and cuBLAS hands its fp32 result back
    (out_dtype) rather than rounding it to 16 bits. The CPU (interpreter) path upcasts, which is exact too."""
    if x.dtype == torch.float32:
        return torch.mm(x, y.t())
    if x.is_cuda:
        return torch.mm(x, y.t(), out_dtype=torch.float32)
    return torch.mm(x.float(), y.float().t())


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
def _tile(X, Y, S, s_k, s_r, offs_k, offs_r, k0, r0, n_k, n_r, D, s_xm, s_yn, scale, bias, FROM_S: tl.constexpr,
          DOT_F32: tl.constexpr, PREC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
          BLOCK_K: tl.constexpr):
    """The tile of S at block-local (offs_k, offs_r): read from the fp32 block S (A B^T, strides s_k, s_r), or
    formed from rows k0 + offs_k of X and r0 + offs_r of Y."""
    if FROM_S:
        m = (offs_k < n_k)[:, None] & (offs_r < n_r)[None, :]
        s = tl.load(S + offs_k.to(tl.int64)[:, None] * s_k + offs_r.to(tl.int64)[None, :] * s_r, mask=m, other=0.0)
        return s * scale + bias
    return _scores(X, Y, k0 + offs_k, r0 + offs_r, k0 + n_k, r0 + n_r, D, s_xm, s_yn, scale, bias, DOT_F32, PREC,
                   BLOCK_M, BLOCK_N, BLOCK_K)


@triton.jit
def _siglip_terms(s, same):
    """(softplus(x), d softplus(x) / dS) with x = -z S: z = +1 on positives; one exp2 for both."""
    x = tl.where(same, -s, s)
    u = tl.exp2(-tl.abs(x) * 1.4426950408889634)
    inv = 1.0 / (1.0 + u)
    sig = tl.where(x >= 0.0, inv, u * inv)
    return tl.maximum(x, 0.0) + tl.log2(1.0 + u) * 0.6931471805599453, tl.where(same, -sig, sig)


@triton.jit
def _fold_kernel(X, Y, S, s_k, s_r, LK, LR, ST, s_split, k0, r0, n_k, n_r, r_len, D, s_xm, s_yn, scale, bias,
                 SIGLIP: tl.constexpr, FROM_S: tl.constexpr, DOT_F32: tl.constexpr, PREC: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """Folds a block of S (n_k kept x n_r reduced entries; the kept ones are rows k0 + .. of their direction,
    labels LK, the reduced ones r0 + .., labels LR) into running statistics of the kept rows: program (i, j)
    folds kept tile i over the reduced slice [j r_len, (j + 1) r_len) into slot j of ST (rows of 6 fp32, slots
    s_split apart). Per row, with G = d loss / d S along it:
    CLIP:   running max of S log2(e), sum of S over positives, positive count, sum of S, sum of p S, sum of p
            (p = exp2(S log2(e) - running max); _finish merges the slots into lse and the softmax-weighted sum);
    SigLIP: loss, 0, positive count, 0, sum of G (S - bias), sum of G."""
    offs_k = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    lo = tl.program_id(1) * r_len
    hi = tl.minimum(lo + r_len, n_r)
    mk = offs_k < n_k
    lk = tl.load(LK + k0 + offs_k, mask=mk, other=-1)
    st = ST + tl.program_id(1).to(tl.int64) * s_split + (k0 + tl.where(mk, offs_k, 0)).to(tl.int64) * 6
    m_i = tl.load(st, mask=mk, other=0.0)
    pos = tl.load(st + 1, mask=mk, other=0.0)
    cnt = tl.load(st + 2, mask=mk, other=0.0)
    tot = tl.load(st + 3, mask=mk, other=0.0)
    g1 = tl.load(st + 4, mask=mk, other=0.0)
    g2 = tl.load(st + 5, mask=mk, other=0.0)
    for n0 in range(lo, hi, BLOCK_N):
        offs_r = n0 + tl.arange(0, BLOCK_N)
        mr = offs_r < hi
        lr = tl.load(LR + r0 + offs_r, mask=mr, other=-2)
        s = _tile(X, Y, S, s_k, s_r, offs_k, offs_r, k0, r0, n_k, hi, D, s_xm, s_yn, scale, bias, FROM_S, DOT_F32,
                  PREC, BLOCK_M, BLOCK_N, BLOCK_K)
        valid = mk[:, None] & mr[None, :]
        same = (lk[:, None] == lr[None, :]) & valid
        cnt += tl.sum(same.to(tl.float32), 1)
        if SIGLIP:
            sp, ds = _siglip_terms(s, same)
            ds = tl.where(valid, ds, 0.0)
            m_i += tl.sum(tl.where(valid, sp, 0.0), 1)
            g1 += tl.sum(ds * (s - bias), 1)
            g2 += tl.sum(ds, 1)
        else:
            s2 = tl.where(valid, s * 1.4426950408889634, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s2, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            alpha = tl.exp2(m_i - m_safe)
            p = tl.exp2(s2 - m_safe[:, None])
            g2 = g2 * alpha + tl.sum(p, 1)
            g1 = g1 * alpha + tl.sum(tl.where(valid, p * s, 0.0), 1)
            m_i = m_new
            pos += tl.sum(tl.where(same, s, 0.0), 1)
            tot += tl.sum(tl.where(valid, s, 0.0), 1)
    tl.store(st, m_i, mask=mk)  # SigLIP: the loss sum rides in this column
    tl.store(st + 1, pos, mask=mk)
    tl.store(st + 2, cnt, mask=mk)
    tl.store(st + 3, tot, mask=mk)
    tl.store(st + 4, g1, mask=mk)
    tl.store(st + 5, g2, mask=mk)


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
def _new_stats(splits, n, siglip, device):
    st = torch.zeros((splits, n, STATS), dtype=torch.float32, device=device)
    if not siglip:
        st[..., 0] = float("-inf")  # the running max of an online logsumexp
    return st


def _finish(st, siglip):
    """Merges the slots of running statistics into a direction's (n, 6) statistics: CLIP's max-relative sums
    rescaled to a common max, then lse and the softmax-weighted sum of S; SigLIP's are sums."""
    if siglip:
        return st.sum(0)
    m = st[..., 0].amax(0)
    w = torch.exp2(st[..., 0] - torch.where(m == float("-inf"), 0.0, m))  # 0 for an empty slot
    out = (st * w[..., None]).sum(0)
    out[:, 1:4] = st[:, :, 1:4].sum(0)  # plain sums: no rescaling
    l = torch.where(out[:, 5] > 0, out[:, 5], 1.0)
    out[:, 0] = (m + torch.log2(l)) * LN2  # -inf for a direction with no columns
    out[:, 4] /= l
    out[:, 5] = 0.0
    return out


def _splits(kept_tiles, reduced_tiles, device):
    if FOLD_SPLITS is not None:
        return FOLD_SPLITS
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1
    return max(1, min(reduced_tiles, triton.cdiv(FOLD_PROGRAMS * sms, kept_tiles)))


def _fold(st, lk, lr, k0, r0, n_k, n_r, scale, bias, siglip, s=None, x=None, y=None):
    """Folds S's block (kept rows k0.. x reduced r0..) into st's slots: from the fp32 block s (its element [i, j]
    at s[i * s_k + j * s_r] given as the tuple (s, s_k, s_r)), or formed from x's and y's rows."""
    if s is not None:
        S, s_k, s_r = s
        BM, BN, BK, warps, stages = FOLD_CONFIGS["rows" if s_r == 1 else "cols"]
        X, Y, d, flags, strides = S, S, 0, dict(DOT_F32=False, PREC="ieee"), (s_k, s_r, 0, 0)
    else:
        BM, BN, BK, warps, stages = ROWS_CONFIGS[_width(x.dtype), siglip]
        X, Y, S, d, flags, strides = x, y, st, x.shape[1], dot_flags(x.dtype), (0, 0, x.stride(0), y.stride(0))
    r_len = triton.cdiv(triton.cdiv(n_r, st.shape[0]), BN) * BN
    grid = (triton.cdiv(n_k, BM), triton.cdiv(n_r, r_len))
    _fold_kernel[grid](X, Y, S, strides[0], strides[1], lk, lr, st, st.stride(0), k0, r0, n_k, n_r, r_len, d,
                       strides[2], strides[3], float(scale), float(bias), SIGLIP=siglip, FROM_S=s is not None,
                       **flags, BLOCK_M=BM, BLOCK_N=BN, BLOCK_K=max(BK, 16), num_warps=warps, num_stages=stages)


def stats(a, b, la, lb, scale, bias, siglip, both):
    """(Ma, 6) fp32 statistics of the direction rows of a against b and, when both, (Nb, 6) of rows of b
    against a (else None); see _fold_kernel."""
    Ma, Nb = a.shape[0], b.shape[0]
    a, b = _rows_along_d(a), _rows_along_d(b)
    if S_FROM_CUBLAS and Ma and Nb:
        cols = min(Nb, S_BLOCK_COLS)
        rows = min(Ma, max(16, DS_CHUNK_BYTES // 4 // cols))
        (rm, rn, *_), (cm, cn, *_) = FOLD_CONFIGS["rows"], FOLD_CONFIGS["cols"]
        sa = _new_stats(_splits(triton.cdiv(rows, rm), triton.cdiv(cols, rn), a.device), Ma, siglip, a.device)
        sb = _new_stats(_splits(triton.cdiv(cols, cm), triton.cdiv(rows, cn), a.device), Nb, siglip,
                        a.device) if both else None
        for r0 in range(0, Ma, rows):
            r = min(rows, Ma - r0)
            for c0 in range(0, Nb, cols):
                c = min(cols, Nb - c0)
                s = _mm_f32(a[r0:r0 + r], b[c0:c0 + c])
                _fold(sa, la, lb, r0, c0, r, c, scale, bias, siglip, s=(s, s.stride(0), 1))
                if both:
                    _fold(sb, lb, la, c0, r0, c, r, scale, bias, siglip, s=(s, 1, s.stride(0)))
                del s  # before the next block is allocated
        return _finish(sa, siglip), None if sb is None else _finish(sb, siglip)
    out = []
    for x, y, lx, ly in ((a, b, la, lb), (b, a, lb, la))[:2 if both else 1]:
        BM, BN = ROWS_CONFIGS[_width(x.dtype), siglip][:2]
        st = _new_stats(_splits(triton.cdiv(x.shape[0], BM), triton.cdiv(y.shape[0], BN), x.device), x.shape[0],
                        siglip, x.device)
        if x.shape[0] and y.shape[0]:
            _fold(st, lx, ly, 0, 0, x.shape[0], y.shape[0], scale, bias, siglip, x=x, y=y)
        out.append(_finish(st, siglip))
    return out[0], out[1] if both else None


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
    ptrs = {"X": "*{t}", "Y": "*{t}", "DS": "*{t}", "S": "*fp32", "LX": "*i32", "LY": "*i32", "LK": "*i32",
            "LR": "*i32", "ST": "*fp32", "SX": "*fp32", "SY": "*fp32", "WX": "*fp32", "WY": "*fp32"}
    floats = {"scale", "bias", "eps"}

    def spec(name, kernel, tl_t, cfg, const, label, unit=None):
        BM, BN, BK, warps, stages = cfg
        const = dict(const, DOT_F32=False, PREC="ieee", BLOCK_M=BM, BLOCK_N=BN, BLOCK_K=max(BK, 16))
        if unit:  # an fp32 S block's unit stride, which the JIT specialises away
            const[unit] = 1
        sig = {p: ("constexpr" if p in const else ptrs[p].format(t=tl_t) if p in ptrs else "fp32" if p in floats
                   else "i32") for p in inspect.signature(kernel.fn).parameters}
        # as the JIT specialises them for torch's aligned tensors with D a multiple of 16
        aligned = [p for p in sig if p in ptrs or p in ("D", "s_xm", "s_yn", "s_k", "s_r", "r_len")]
        return dict(name=name, kernel=kernel, signature=sig, constexprs=const, num_warps=warps, num_stages=stages,
                    aligned=[p for p in aligned if p not in const],
                    config=f"{label} {BM}x{BN}x{BK} w{warps} s{stages}")

    for dtype, tl_t in _TL.items():
        dt = str(dtype)[6:]
        for siglip in (False, True):
            kind = "siglip" if siglip else "clip"
            specs.append(spec("contrastive_fold", _fold_kernel, tl_t, ROWS_CONFIGS[_width(dtype), siglip],
                              dict(SIGLIP=siglip, FROM_S=False), f"{dt} {kind}"))
            for own, loop in TERMS[:2 if siglip else 3]:  # SigLIP has one direction
                specs.append(spec("contrastive_dscores", _dscores_kernel, tl_t, DS_CONFIGS[_width(dtype)],
                                  dict(SIGLIP=siglip, OWN=own, LOOP=loop),
                                  f"{dt} {kind} {'own' * own}{'+' * (own and loop)}{'loop' * loop}"))
    for siglip in (False, True):  # the folds of an fp32 S block: X / Y unused
        for axis, cfg in FOLD_CONFIGS.items():
            specs.append(spec("contrastive_fold", _fold_kernel, "fp32", cfg, dict(SIGLIP=siglip, FROM_S=True),
                              f"S block {'siglip' if siglip else 'clip'} {axis}", "s_r" if axis == "rows" else "s_k"))
    return specs


AOT_SPECS = _aot_specs()
