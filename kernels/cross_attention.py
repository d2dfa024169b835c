"""Fused cross-attention: forward, and backward as two deterministic kernels (dk/dv per key tile, dq per
query tile; no atomics). Online softmax in the log2 domain with fp32 statistics.

Visibility of key j to query i in batch b (all optional, combined with AND):
  j < kv_len[b]                       (lengths; tiles past the length are never loaded)
  key_padding_mask[b, j] == 0         (True = ignore, nn.MultiheadAttention's convention)
  segments: qs >= 0, ks >= 0 and (qs == ks, or ks <= qs with SEG_LE)
A query that sees no key gets 0 and a log-sum-exp of -inf. Key tiles (and, in the dk/dv kernel, query tiles)
whose segment-id range cannot match are skipped, using per-tile (min, max) ids computed by the launcher.

Varlen (packed (total, H, D) tensors with cu_seqlens) and padded (B, H, L, D) layouts share the kernels:
a sequence starts at a row offset (cu_seqlens[b], or 0) and has its own length.
"""
import torch
import triton
import triton.language as tl

from crossfuse.kernels._common import dot_flags

_LOG2E = 1.4426950408889634
_TL = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


# ---- configs --------------------------------------------------------------------------------------------
# (BLOCK_M, BLOCK_N, num_warps, num_stages) per kernel, operand width (16-bit or fp32) and padded head dim: the
# largest tiles that compile without spills for sm_80 and sm_90 with every mask and dropout on (the AOT check
# compiles each). fp32 runs IEEE dots (TF32 only when torch allows it), which need about twice the registers.
CONFIGS = {
    "fwd": {(16, 16): (64, 64, 4, 2), (16, 32): (64, 64, 4, 2), (16, 64): (64, 64, 8, 2), (16, 128): (64, 32, 8, 2),
            (16, 256): (32, 16, 8, 1),
            (32, 16): (64, 64, 8, 2), (32, 32): (32, 32, 4, 1), (32, 64): (32, 32, 4, 1), (32, 128): (16, 16, 4, 1),
            (32, 256): (16, 32, 8, 1)},
    "dkdv": {(16, 16): (64, 64, 8, 1), (16, 32): (32, 64, 8, 1), (16, 64): (32, 64, 8, 1), (16, 128): (32, 32, 8, 1),
             (16, 256): (16, 16, 8, 1),
             (32, 16): (64, 64, 8, 1), (32, 32): (32, 64, 8, 1), (32, 64): (32, 32, 4, 1), (32, 128): (16, 32, 8, 1),
             (32, 256): (16, 16, 8, 1)},
    "dq": {(16, 16): (64, 64, 8, 1), (16, 32): (64, 64, 8, 1), (16, 64): (64, 64, 8, 1), (16, 128): (32, 64, 8, 1),
           (16, 256): (32, 16, 8, 1),
           (32, 16): (64, 64, 8, 1), (32, 32): (64, 64, 8, 1), (32, 64): (32, 64, 8, 1), (32, 128): (16, 32, 8, 1),
           (32, 256): (16, 16, 8, 1)},
}
HEAD_DIMS = (16, 32, 64, 128, 256)
# sm_80 has no wgmma: its mma.sync keeps more operands in registers, so some tiles must shrink there.
SM80_OVERRIDES = {
    "fwd": {(16, 32): (64, 64, 8, 2), (16, 64): (64, 32, 8, 2), (16, 128): (32, 32, 8, 2)},
    "dkdv": {(16, 16): (32, 32, 8, 1), (16, 32): (32, 32, 8, 1), (16, 64): (16, 32, 8, 1)},
    "dq": {(16, 64): (32, 64, 8, 1), (32, 128): (16, 16, 4, 1)},
}


def config(kernel: str, dtype: torch.dtype, BLOCK_D: int, arch: int = 90):
    key = (32 if dtype == torch.float32 else 16, BLOCK_D)
    if arch < 90 and key in SM80_OVERRIDES[kernel]:
        return SM80_OVERRIDES[kernel][key]
    return CONFIGS[kernel][key]


def device_arch(device: torch.device) -> int:
    if device.type != "cuda":
        return 90  # the interpreter: any table is exact
    major, minor = torch.cuda.get_device_capability(device)
    return 10 * major + minor


def block_d(D: int) -> int:
    return max(16, triton.next_power_of_2(D))


# ---- shared device helpers ------------------------------------------------------------------------------
@triton.jit
def _seq(b, CU, L_PAD, LEN, HAS_LEN: tl.constexpr, VARLEN: tl.constexpr):
    """(row offset, length) of sequence b."""
    if VARLEN:
        start = tl.load(CU + b)
        n = tl.load(CU + b + 1) - start
    else:
        start = b * 0
        n = b * 0 + L_PAD
    if HAS_LEN:
        n = tl.minimum(n, tl.maximum(tl.load(LEN + b), 0))
    return start, n


@triton.jit
def _head_and_seqs(bh, HQ, GROUP, CU_Q, CU_K, LQ_PAD, LK_PAD, KV_LEN, HAS_LEN: tl.constexpr, VARLEN: tl.constexpr):
    """For query head index bh = b * HQ + h: (b, h, its key head, query rows (start, length), key rows (...))."""
    b = bh // HQ
    h = bh % HQ
    q_start, q_len = _seq(b, CU_Q, LQ_PAD, KV_LEN, False, VARLEN)
    k_start, k_len = _seq(b, CU_K, LK_PAD, KV_LEN, HAS_LEN, VARLEN)
    return b, h, h // GROUP, q_start, q_len, k_start, k_len


@triton.jit
def _visible(offs_m, offs_n, q_len, k_len, b, k_start, KPM, s_kpm_b, s_kpm_n, qs, KS, s_ks_b, s_ks_n,
             HAS_KPM: tl.constexpr, HAS_SEG: tl.constexpr, SEG_LE: tl.constexpr):
    ok_n = offs_n < k_len
    vis = (offs_m < q_len)[:, None] & ok_n[None, :]
    if HAS_KPM:
        pad = tl.load(KPM + b * s_kpm_b + (k_start + offs_n) * s_kpm_n, mask=ok_n, other=1)
        vis = vis & (pad == 0)[None, :]
    if HAS_SEG:
        ks = tl.load(KS + b * s_ks_b + (k_start + offs_n) * s_ks_n, mask=ok_n, other=-1)
        if SEG_LE:
            match = ks[None, :] <= qs[:, None]
        else:
            match = ks[None, :] == qs[:, None]
        vis = vis & match & (ks >= 0)[None, :] & (qs >= 0)[:, None]
    return vis


@triton.jit
def _tile_skipped(TILES, s_t_b, t, b, lo, hi, SEG_LE: tl.constexpr):
    """Whether a tile whose ids span [tmin, tmax] (tmin > tmax: no valid id) can match ids in [lo, hi]."""
    tmin = tl.load(TILES + b * s_t_b + 2 * t)
    tmax = tl.load(TILES + b * s_t_b + 2 * t + 1)
    if SEG_LE:
        return (tmin > tmax) | (hi < lo) | (tmin > hi)
    else:
        return (tmin > tmax) | (hi < lo) | (tmin > hi) | (tmax < lo)


@triton.jit
def _keep(seed, bh, offs_m, offs_n, LQ_PAD, LK_PAD, p_drop):
    """Philox dropout mask: the same (seed, b*H+h, row, column) gives the same bit in forward and backward."""
    # 32-bit arithmetic on purpose: the index only feeds the hash, so wrapping past 2^32 is harmless, and
    # 64-bit offsets for a whole tile cost registers that spill.
    row = (bh * LQ_PAD + offs_m)[:, None] * LK_PAD + offs_n[None, :]
    return tl.rand(seed, row.to(tl.uint32, bitcast=True)) >= p_drop


@triton.jit
def _as_dot(x, DOT_F32: tl.constexpr):
    # The interpreter multiplies bf16 dot operands as raw bits (triton#11584): hand it fp32 there.
    if DOT_F32:
        return x.to(tl.float32)
    else:
        return x


@triton.jit
def _tile(base, rows, s_row, offs_d, s_d, mask_rows, mask_d, DOT_F32: tl.constexpr):
    """A (rows, head dim) tile, zeros outside the masks, in the dtype the dots take."""
    t = tl.load(base + rows[:, None] * s_row + offs_d[None, :] * s_d, mask=mask_rows[:, None] & mask_d[None, :],
                other=0.0)
    return _as_dot(t, DOT_F32)


@triton.jit
def _probs_and_ds(q, k, v, do, lse2, delta, vis, scale2, keep, p_drop, DROPOUT: tl.constexpr, PREC: tl.constexpr):
    """Backward of one (query tile, key tile) pair: the probabilities recomputed from the log-sum-exp, their
    dropped version (what multiplied v) and dS = P * (dP - delta)."""
    s = tl.dot(q, tl.trans(k), input_precision=PREC) * scale2
    p = tl.where(vis, tl.exp2(s - lse2[:, None]), 0.0)
    dp = tl.dot(do, tl.trans(v), input_precision=PREC)
    pd = p
    if DROPOUT:
        pd = tl.where(keep, p * (1.0 / (1.0 - p_drop)), 0.0)
        dp = tl.where(keep, dp * (1.0 / (1.0 - p_drop)), 0.0)
    return pd, p * (dp - delta[:, None])


# ---- forward ------------------------------------------------------------------------------------------
@triton.jit
def _fwd_kernel(Q, K, V, O, LSE,
                s_qb, s_qh, s_qm, s_qd, s_kb, s_kh, s_kn, s_kd, s_vb, s_vh, s_vn, s_vd,
                s_ob, s_oh, s_om, s_od, s_lb, s_lh, s_lm,
                CU_Q, CU_K, KV_LEN, KPM, s_kpm_b, s_kpm_n, QS, s_qs_b, s_qs_m, KS, s_ks_b, s_ks_n,
                KT, s_kt_b, seed, p_drop, scale2,
                HQ, GROUP, LQ_PAD, LK_PAD, D,
                HAS_LEN: tl.constexpr, VARLEN: tl.constexpr, HAS_KPM: tl.constexpr, HAS_SEG: tl.constexpr,
                SEG_LE: tl.constexpr, DROPOUT: tl.constexpr, DOT_F32: tl.constexpr, PREC: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    bh = tl.program_id(0)  # heads on axis 0: its limit is 2^31 - 1, axis 1's only 65535
    pid_m = tl.program_id(1)
    b, h, hk, q_start, q_len, k_start, k_len = _head_and_seqs(bh, HQ, GROUP, CU_Q, CU_K, LQ_PAD, LK_PAD, KV_LEN,
                                                              HAS_LEN, VARLEN)
    if pid_m * BLOCK_M >= q_len:
        return
    b64 = b.to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask_m = offs_m < q_len
    mask_d = offs_d < D
    rows_q = (q_start + offs_m).to(tl.int64)
    q = _tile(Q + b64 * s_qb + h * s_qh, rows_q, s_qm, offs_d, s_qd, mask_m, mask_d, DOT_F32)
    qs = offs_m * 0
    lo = 0
    hi = 0
    if HAS_SEG:
        qs = tl.load(QS + b64 * s_qs_b + offs_m * s_qs_m, mask=mask_m, other=-1)
        lo = tl.min(tl.where(qs >= 0, qs, 2147483647), 0)
        hi = tl.max(qs, 0)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    K_base = K + b64 * s_kb + hk * s_kh
    V_base = V + b64 * s_vb + hk * s_vh
    for start_n in range(0, k_len, BLOCK_N):
        skip = False
        if HAS_SEG:
            skip = _tile_skipped(KT, s_kt_b, start_n // BLOCK_N, b64, lo, hi, SEG_LE)
        if not skip:
            offs_n = start_n + tl.arange(0, BLOCK_N)
            mask_n = offs_n < k_len
            rows_k = (k_start + offs_n).to(tl.int64)
            k = _tile(K_base, rows_k, s_kn, offs_d, s_kd, mask_n, mask_d, DOT_F32)
            s = tl.dot(q, tl.trans(k), input_precision=PREC) * scale2
            vis = _visible(offs_m, offs_n, q_len, k_len, b64, k_start, KPM, s_kpm_b, s_kpm_n, qs, KS, s_ks_b,
                           s_ks_n, HAS_KPM, HAS_SEG, SEG_LE)
            s = tl.where(vis, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            p = tl.exp2(s - m_safe[:, None])
            alpha = tl.exp2(m_i - m_safe)
            l_i = l_i * alpha + tl.sum(p, 1)
            if DROPOUT:
                keep = _keep(seed, bh, offs_m, offs_n, LQ_PAD, LK_PAD, p_drop)
                p = tl.where(keep, p * (1.0 / (1.0 - p_drop)), 0.0)
            v = _tile(V_base, rows_k, s_vn, offs_d, s_vd, mask_n, mask_d, DOT_F32)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PREC)
            m_i = m_new
    seen = l_i > 0.0
    out = acc * tl.where(seen, 1.0 / tl.where(seen, l_i, 1.0), 0.0)[:, None]
    tl.store(O + b64 * s_ob + h * s_oh + rows_q[:, None] * s_om + offs_d[None, :] * s_od,
             out.to(O.dtype.element_ty), mask=mask_m[:, None] & mask_d[None, :])
    lse = tl.where(seen, (m_i + tl.log2(tl.where(seen, l_i, 1.0))) * 0.6931471805599453, float("-inf"))
    tl.store(LSE + b64 * s_lb + h * s_lh + rows_q * s_lm, lse, mask=mask_m)


# ---- backward: dk, dv per key tile ---------------------------------------------------------------------
@triton.jit
def _bwd_dkdv_kernel(Q, K, V, DO, LSE, DELTA, DK, DV,
                     s_qb, s_qh, s_qm, s_qd, s_kb, s_kh, s_kn, s_kd, s_vb, s_vh, s_vn, s_vd,
                     s_dob, s_doh, s_dom, s_dod, s_lb, s_lh, s_lm,
                     s_dkb, s_dkh, s_dkn, s_dkd, s_dvb, s_dvh, s_dvn, s_dvd,
                     CU_Q, CU_K, KV_LEN, KPM, s_kpm_b, s_kpm_n, QS, s_qs_b, s_qs_m, KS, s_ks_b, s_ks_n,
                     QT, s_qt_b, seed, p_drop, scale2, scale,
                     HKV, GROUP, LQ_PAD, LK_PAD, D,
                     HAS_LEN: tl.constexpr, VARLEN: tl.constexpr, HAS_KPM: tl.constexpr, HAS_SEG: tl.constexpr,
                     SEG_LE: tl.constexpr, DROPOUT: tl.constexpr, DOT_F32: tl.constexpr, PREC: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    bhk = tl.program_id(0)
    pid_n = tl.program_id(1)
    b = bhk // HKV
    hk = bhk % HKV
    b64 = b.to(tl.int64)
    q_start, q_len = _seq(b, CU_Q, LQ_PAD, KV_LEN, False, VARLEN)
    k_start, k_len = _seq(b, CU_K, LK_PAD, KV_LEN, HAS_LEN, VARLEN)
    k_all = LK_PAD
    if VARLEN:
        k_all = tl.load(CU_K + b + 1) - k_start
    if pid_n * BLOCK_N >= k_all:
        return
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    mask_n = offs_n < k_len
    rows_k = (k_start + offs_n).to(tl.int64)
    store_n = (offs_n < k_all)[:, None] & mask_d[None, :]  # keys past the length get a zero gradient
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    if pid_n * BLOCK_N < k_len:
        k = _tile(K + b64 * s_kb + hk * s_kh, rows_k, s_kn, offs_d, s_kd, mask_n, mask_d, DOT_F32)
        v = _tile(V + b64 * s_vb + hk * s_vh, rows_k, s_vn, offs_d, s_vd, mask_n, mask_d, DOT_F32)
        lo = 0
        hi = 0
        if HAS_SEG:
            ks = tl.load(KS + b64 * s_ks_b + (k_start + offs_n) * s_ks_n, mask=mask_n, other=-1)
            lo = tl.min(tl.where(ks >= 0, ks, 2147483647), 0)
            hi = tl.max(ks, 0)
        for g in range(0, GROUP):
            h = hk * GROUP + g
            bh = b * (HKV * GROUP) + h
            for start_m in range(0, q_len, BLOCK_M):
                skip = False
                if HAS_SEG:
                    # a query tile is useless when no id in it can see an id of this key tile
                    if SEG_LE:  # some query id must be >= the smallest key id
                        skip = _tile_skipped(QT, s_qt_b, start_m // BLOCK_M, b64, lo, 2147483646, False)
                    else:
                        skip = _tile_skipped(QT, s_qt_b, start_m // BLOCK_M, b64, lo, hi, False)
                if not skip:
                    offs_m = start_m + tl.arange(0, BLOCK_M)
                    mask_m = offs_m < q_len
                    rows_q = (q_start + offs_m).to(tl.int64)
                    q = _tile(Q + b64 * s_qb + h * s_qh, rows_q, s_qm, offs_d, s_qd, mask_m, mask_d, DOT_F32)
                    do = _tile(DO + b64 * s_dob + h * s_doh, rows_q, s_dom, offs_d, s_dod, mask_m, mask_d, DOT_F32)
                    lse = tl.load(LSE + b64 * s_lb + h * s_lh + rows_q * s_lm, mask=mask_m, other=0.0)
                    delta = tl.load(DELTA + b64 * s_lb + h * s_lh + rows_q * s_lm, mask=mask_m, other=0.0)
                    qs = offs_m * 0
                    if HAS_SEG:
                        qs = tl.load(QS + b64 * s_qs_b + offs_m * s_qs_m, mask=mask_m, other=-1)
                    vis = _visible(offs_m, offs_n, q_len, k_len, b64, k_start, KPM, s_kpm_b, s_kpm_n, qs, KS,
                                   s_ks_b, s_ks_n, HAS_KPM, HAS_SEG, SEG_LE)
                    keep = vis
                    if DROPOUT:
                        keep = _keep(seed, bh, offs_m, offs_n, LQ_PAD, LK_PAD, p_drop)
                    pd, ds = _probs_and_ds(q, k, v, do, lse * 1.4426950408889634, delta, vis, scale2, keep, p_drop,
                                           DROPOUT, PREC)
                    dv += tl.dot(tl.trans(pd.to(do.dtype)), do, input_precision=PREC)
                    dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PREC)
    tl.store(DK + b64 * s_dkb + hk * s_dkh + rows_k[:, None] * s_dkn + offs_d[None, :] * s_dkd,
             (dk * scale).to(DK.dtype.element_ty), mask=store_n)
    tl.store(DV + b64 * s_dvb + hk * s_dvh + rows_k[:, None] * s_dvn + offs_d[None, :] * s_dvd,
             dv.to(DV.dtype.element_ty), mask=store_n)


# ---- backward: dq per query tile -----------------------------------------------------------------------
@triton.jit
def _bwd_dq_kernel(Q, K, V, DO, LSE, DELTA, DQ,
                   s_qb, s_qh, s_qm, s_qd, s_kb, s_kh, s_kn, s_kd, s_vb, s_vh, s_vn, s_vd,
                   s_dob, s_doh, s_dom, s_dod, s_lb, s_lh, s_lm, s_dqb, s_dqh, s_dqm, s_dqd,
                   CU_Q, CU_K, KV_LEN, KPM, s_kpm_b, s_kpm_n, QS, s_qs_b, s_qs_m, KS, s_ks_b, s_ks_n,
                   KT, s_kt_b, seed, p_drop, scale2, scale,
                   HQ, GROUP, LQ_PAD, LK_PAD, D,
                   HAS_LEN: tl.constexpr, VARLEN: tl.constexpr, HAS_KPM: tl.constexpr, HAS_SEG: tl.constexpr,
                   SEG_LE: tl.constexpr, DROPOUT: tl.constexpr, DOT_F32: tl.constexpr, PREC: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    bh = tl.program_id(0)  # heads on axis 0: its limit is 2^31 - 1, axis 1's only 65535
    pid_m = tl.program_id(1)
    b, h, hk, q_start, q_len, k_start, k_len = _head_and_seqs(bh, HQ, GROUP, CU_Q, CU_K, LQ_PAD, LK_PAD, KV_LEN,
                                                              HAS_LEN, VARLEN)
    b64 = b.to(tl.int64)
    if pid_m * BLOCK_M >= q_len:
        return
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask_m = offs_m < q_len
    mask_d = offs_d < D
    rows_q = (q_start + offs_m).to(tl.int64)
    q = _tile(Q + b64 * s_qb + h * s_qh, rows_q, s_qm, offs_d, s_qd, mask_m, mask_d, DOT_F32)
    do = _tile(DO + b64 * s_dob + h * s_doh, rows_q, s_dom, offs_d, s_dod, mask_m, mask_d, DOT_F32)
    lse2 = tl.load(LSE + b64 * s_lb + h * s_lh + rows_q * s_lm, mask=mask_m, other=0.0) * 1.4426950408889634
    delta = tl.load(DELTA + b64 * s_lb + h * s_lh + rows_q * s_lm, mask=mask_m, other=0.0)
    qs = offs_m * 0
    lo = 0
    hi = 0
    if HAS_SEG:
        qs = tl.load(QS + b64 * s_qs_b + offs_m * s_qs_m, mask=mask_m, other=-1)
        lo = tl.min(tl.where(qs >= 0, qs, 2147483647), 0)
        hi = tl.max(qs, 0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start_n in range(0, k_len, BLOCK_N):
        skip = False
        if HAS_SEG:
            skip = _tile_skipped(KT, s_kt_b, start_n // BLOCK_N, b64, lo, hi, SEG_LE)
        if not skip:
            offs_n = start_n + tl.arange(0, BLOCK_N)
            mask_n = offs_n < k_len
            rows_k = (k_start + offs_n).to(tl.int64)
            k = _tile(K + b64 * s_kb + hk * s_kh, rows_k, s_kn, offs_d, s_kd, mask_n, mask_d, DOT_F32)
            v = _tile(V + b64 * s_vb + hk * s_vh, rows_k, s_vn, offs_d, s_vd, mask_n, mask_d, DOT_F32)
            vis = _visible(offs_m, offs_n, q_len, k_len, b64, k_start, KPM, s_kpm_b, s_kpm_n, qs, KS, s_ks_b,
                           s_ks_n, HAS_KPM, HAS_SEG, SEG_LE)
            keep = vis
            if DROPOUT:
                keep = _keep(seed, bh, offs_m, offs_n, LQ_PAD, LK_PAD, p_drop)
            _, ds = _probs_and_ds(q, k, v, do, lse2, delta, vis, scale2, keep, p_drop, DROPOUT, PREC)
            dq += tl.dot(ds.to(k.dtype), k, input_precision=PREC)
    tl.store(DQ + b64 * s_dqb + h * s_dqh + rows_q[:, None] * s_dqm + offs_d[None, :] * s_dqd,
             (dq * scale).to(DQ.dtype.element_ty), mask=mask_m[:, None] & mask_d[None, :])


@triton.jit
def _dropout_mask_kernel(OUT, s_b, s_h, s_m, s_n, seed, p_drop, HQ, LQ_PAD, LK_PAD,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """The keep mask the kernels use, materialised (tests compare against the reference with it)."""
    bh = tl.program_id(2)
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    keep = _keep(seed, bh, offs_m, offs_n, LQ_PAD, LK_PAD, p_drop)
    b = (bh // HQ).to(tl.int64)
    h = bh % HQ
    tl.store(OUT + b * s_b + h * s_h + offs_m[:, None].to(tl.int64) * s_m + offs_n[None, :] * s_n, keep.to(tl.int8),
             mask=(offs_m < LQ_PAD)[:, None] & (offs_n < LK_PAD)[None, :])


# ---- launchers ------------------------------------------------------------------------------------------
def tile_ranges(ids: torch.Tensor, block: int) -> torch.Tensor:
    """(B, tiles, 2) int32: the smallest and largest non-negative id of each tile of `block` positions;
    (2^31 - 1, -1) where a tile holds none."""
    B, L = ids.shape
    nt = triton.cdiv(max(L, 1), block)
    padded = ids.new_full((B, nt * block), -1)
    padded[:, :L] = ids
    t = padded.view(B, nt, block)
    valid = t >= 0
    lo = torch.where(valid, t, torch.full_like(t, 2 ** 31 - 1)).amin(-1)
    hi = torch.where(valid, t, torch.full_like(t, -1)).amax(-1)
    return torch.stack([lo, hi], -1).to(torch.int32).contiguous()


def _layout(t, varlen):
    """(batch, head, row, dim) strides of a (B, H, L, D) tensor, or of a packed (total, H, D) one."""
    if varlen:
        return [0, t.stride(1), t.stride(0), t.stride(2)]
    return list(t.stride())


def _stat_layout(t, varlen):
    """(batch, head, row) strides of the fp32 statistics: (B, H, L), or (H, total) when packed."""
    return [0, t.stride(0), t.stride(1)] if varlen else list(t.stride())


class Problem:
    """What the three kernels share: sizes, masks and flags, prepared once per call."""

    def __init__(self, q, k, *, cu_q=None, cu_k=None, max_q=0, max_k=0, kv_lengths=None, key_padding_mask=None,
                 q_segment_ids=None, kv_segment_ids=None, segment_le=False, scale=1.0, dropout_p=0.0, seed=0):
        self.varlen = cu_q is not None
        if self.varlen:
            self.B = cu_q.numel() - 1
            self.HQ, self.D = q.shape[1], q.shape[2]
            self.HKV = k.shape[1]
            self.LQ, self.LK = int(max_q), int(max_k)
        else:
            self.B, self.HQ, self.LQ, self.D = q.shape
            self.HKV, self.LK = k.shape[1], k.shape[2]
        self.dummy = q
        self.cu_q, self.cu_k = cu_q, cu_k
        self.kv_len, self.kpm = kv_lengths, key_padding_mask
        self.qs, self.ks = q_segment_ids, kv_segment_ids
        self.seg_le = segment_le
        self.scale, self.p_drop, self.seed = float(scale), float(dropout_p), int(seed)
        self.BLOCK_D = block_d(self.D)
        dtype = self.dtype = q.dtype
        self.arch = device_arch(q.device)
        flags = dot_flags(dtype)
        self.dot_f32, self.prec = flags["DOT_F32"], flags["PREC"]

    def mask_args(self):
        d = self.dummy
        kpm = self.kpm if self.kpm is not None else d
        qs = self.qs if self.qs is not None else d
        ks = self.ks if self.ks is not None else d
        return [self.cu_q if self.varlen else d, self.cu_k if self.varlen else d,
                self.kv_len if self.kv_len is not None else d,
                kpm, *(kpm.stride() if self.kpm is not None else (0, 0)),
                qs, *(qs.stride() if self.qs is not None else (0, 0)),
                ks, *(ks.stride() if self.ks is not None else (0, 0))]

    def tiles(self, ids, block):
        if ids is None:
            return self.dummy, 0
        t = tile_ranges(ids, block)
        return t, t.stride(0)

    def flags(self):
        return dict(HAS_LEN=self.kv_len is not None, VARLEN=self.varlen, HAS_KPM=self.kpm is not None,
                    HAS_SEG=self.qs is not None, SEG_LE=self.seg_le, DROPOUT=self.p_drop > 0.0,
                    DOT_F32=self.dot_f32, PREC=self.prec, BLOCK_D=self.BLOCK_D)


def forward(pb: Problem, q, k, v, out, lse):
    if pb.B * pb.HQ == 0 or pb.LQ == 0:
        return
    BM, BN, warps, stages = config("fwd", pb.dtype, pb.BLOCK_D, pb.arch)
    kt, s_kt = pb.tiles(pb.ks, BN)
    grid = (pb.B * pb.HQ, triton.cdiv(pb.LQ, BM))
    _fwd_kernel[grid](q, k, v, out, lse, *_layout(q, pb.varlen), *_layout(k, pb.varlen), *_layout(v, pb.varlen),
                      *_layout(out, pb.varlen), *_stat_layout(lse, pb.varlen), *pb.mask_args(), kt, s_kt,
                      pb.seed, pb.p_drop, pb.scale * _LOG2E, pb.HQ, pb.HQ // pb.HKV, pb.LQ, pb.LK, pb.D,
                      **pb.flags(), BLOCK_M=BM, BLOCK_N=BN, num_warps=warps, num_stages=stages)


def backward(pb: Problem, q, k, v, out, lse, do, dq, dk, dv):
    if pb.B * pb.HKV == 0:
        return
    delta = torch.empty_like(lse)  # same strides as lse: the kernels index both with lse's
    if lse.numel():
        delta.copy_(_rowdot(do, out, pb.varlen))
    common = [*_layout(q, pb.varlen), *_layout(k, pb.varlen), *_layout(v, pb.varlen), *_layout(do, pb.varlen),
              *_stat_layout(lse, pb.varlen)]
    BM, BN, warps, stages = config("dkdv", pb.dtype, pb.BLOCK_D, pb.arch)
    qt, s_qt = pb.tiles(pb.qs, BM)
    if pb.LK:
        _bwd_dkdv_kernel[(pb.B * pb.HKV, triton.cdiv(pb.LK, BN))](
            q, k, v, do, lse, delta, dk, dv, *common, *_layout(dk, pb.varlen), *_layout(dv, pb.varlen),
            *pb.mask_args(), qt, s_qt, pb.seed, pb.p_drop, pb.scale * _LOG2E, pb.scale,
            pb.HKV, pb.HQ // pb.HKV, pb.LQ, pb.LK, pb.D, **pb.flags(), BLOCK_M=BM, BLOCK_N=BN,
            num_warps=warps, num_stages=stages)
    BM, BN, warps, stages = config("dq", pb.dtype, pb.BLOCK_D, pb.arch)
    kt, s_kt = pb.tiles(pb.ks, BN)
    if pb.LQ:
        _bwd_dq_kernel[(pb.B * pb.HQ, triton.cdiv(pb.LQ, BM))](
            q, k, v, do, lse, delta, dq, *common, *_layout(dq, pb.varlen), *pb.mask_args(), kt, s_kt,
            pb.seed, pb.p_drop, pb.scale * _LOG2E, pb.scale, pb.HQ, pb.HQ // pb.HKV, pb.LQ, pb.LK, pb.D,
            **pb.flags(), BLOCK_M=BM, BLOCK_N=BN, num_warps=warps, num_stages=stages)


def _rowdot(do, out, varlen):
    """delta = rowsum(dO * O) in fp32, laid out like the log-sum-exp: (B, H, L), or (H, total) when packed."""
    d = (do.float() * out.float()).sum(-1)
    return d.transpose(0, 1) if varlen else d


def dropout_mask(B, HQ, LQ, LK, seed, p_drop, device):
    """The (B, HQ, LQ, LK) keep mask (bool) the kernels draw for this seed."""
    out = torch.empty((B, HQ, LQ, LK), dtype=torch.int8, device=device)
    if out.numel():
        _dropout_mask_kernel[(triton.cdiv(LQ, 32), triton.cdiv(LK, 32), B * HQ)](
            out, *out.stride(), int(seed), float(p_drop), HQ, LQ, LK, BLOCK_M=32, BLOCK_N=32)
    return out.bool()


# ---- AOT specs: every (head-dim config, dtype) the launchers can choose, heaviest flag set -------------------
def _aot_specs():
    import inspect
    import itertools
    ptr_args = {"Q", "K", "V", "O", "DO", "DQ", "DK", "DV"}
    f32_ptrs = {"LSE", "DELTA"}
    i32_ptrs = {"CU_Q", "CU_K", "KV_LEN", "QS", "KS", "KT", "QT"}
    floats = {"p_drop", "scale2", "scale"}
    specs = []
    variants = [dict(VARLEN=False, HAS_LEN=True, HAS_KPM=True, HAS_SEG=True, SEG_LE=False, DROPOUT=True),
                dict(VARLEN=True, HAS_LEN=False, HAS_KPM=False, HAS_SEG=False, SEG_LE=False, DROPOUT=True)]
    for arch, dtype, bd, vi in itertools.product((80, 90), _TL, HEAD_DIMS, range(len(variants))):
        tl_t, flags = _TL[dtype], variants[vi]
        if vi == 1 and dtype != torch.float16:
            continue  # varlen differs from padded only in address arithmetic
        for kname, kernel, kind in (("cross_attention_fwd", _fwd_kernel, "fwd"),
                                    ("cross_attention_bwd_dkdv", _bwd_dkdv_kernel, "dkdv"),
                                    ("cross_attention_bwd_dq", _bwd_dq_kernel, "dq")):
            BM, BN, warps, stages = config(kind, dtype, bd, arch)
            const = dict(flags, DOT_F32=False, PREC="ieee", BLOCK_M=BM, BLOCK_N=BN, BLOCK_D=bd)
            sig = {}
            for name in inspect.signature(kernel.fn).parameters:
                if name in const:
                    sig[name] = "constexpr"
                elif name in ptr_args:
                    sig[name] = "*" + tl_t
                elif name in f32_ptrs:
                    sig[name] = "*fp32"
                elif name in i32_ptrs:
                    sig[name] = "*i32"
                elif name == "KPM":
                    sig[name] = "*u8"
                elif name in floats:
                    sig[name] = "fp32"
                else:
                    sig[name] = "i32"
            tag = "varlen" if flags["VARLEN"] else "masked"
            specs.append(dict(name=kname, kernel=kernel, signature=sig, constexprs=const, num_warps=warps,
                              num_stages=stages, archs=(arch,),
                              config=f"{str(dtype)[6:]} D<={bd} {BM}x{BN} w{warps} s{stages} {tag}"))
    sig = {name: "i32" for name in inspect.signature(_dropout_mask_kernel.fn).parameters}
    sig.update(OUT="*i8", p_drop="fp32", BLOCK_M="constexpr", BLOCK_N="constexpr")
    specs.append(dict(name="cross_attention_dropout_mask", kernel=_dropout_mask_kernel, signature=sig,
                      constexprs=dict(BLOCK_M=32, BLOCK_N=32), num_warps=4, num_stages=1, config="32x32 w4"))
    return specs


AOT_SPECS = _aot_specs()
