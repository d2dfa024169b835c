"""rnn / lstm / gru recurrence in Triton (one layer, one direction). The input projection of every step comes
precomputed (one torch GEMM, b_ih folded in); per step, R.h (tl.dot) and the gate math are one fused pass,
and the recurrent state lives in an fp32 scratch (half and bfloat16 inputs keep an fp32 state).

Forward, two launch shapes of one kernel:
- persistent (H <= PERSISTENT_MAX_H): one launch for the whole sequence; a program owns a batch tile and the
  whole hidden state, loops over time and meets its own threads at a barrier between steps;
- per step (larger H): one launch per step in which the programs split the hidden units too.
Backward, persistent shape only (larger H steps over the fused cell kernels, python/crossfuse/ops/rnn.py):
a reverse-time kernel of the same structure writes the gate gradients and carries dh and dc; the weight
gradients are large torch GEMMs afterwards. Rows stop at their length (`lengths`): a row past it keeps its
state and gets zero gate gradients, as in the CPU kernel (csrc/cpu/rnn_sequence.cpp).
"""
import torch
import triton
import triton.language as tl

from crossfuse.kernels._common import dot_flags, sigmoid, store, tanh

KIND_CODES = {"rnn_tanh": 0, "rnn_relu": 1, "rnn_sigmoid": 2, "lstm": 3, "gru": 4}
GATES = {0: 1, 1: 1, 2: 1, 3: 4, 4: 3}
# (BLOCK_B, BLOCK_J, BLOCK_K, num_warps) per (operand width, launch: persistent / per step / backward);
# BLOCK_B is tl.dot's smallest M. The largest spill-free tiles of the AOT check, which compiles each with every
# kind and dtype (fp32 spills with wider unit blocks); the per-step launch takes narrow blocks for more programs.
CONFIGS = {(16, "persistent"): (16, 64, 32, 8), (16, "per step"): (16, 16, 32, 4), (16, "backward"): (16, 32, 32, 8),
           (32, "persistent"): (16, 16, 32, 4), (32, "per step"): (16, 16, 32, 4), (32, "backward"): (16, 16, 32, 4)}
# The persistent kernel reads the whole R (G*H x H) once per step on one SM: past this the per-step launch,
# which spreads the hidden units over SMs, is expected to win. A first guess from the arithmetic (R from L2
# at ~100 GB/s per SM), to be tuned on a GPU.
PERSISTENT_MAX_H = {16: 256, 32: 128}
_TL = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def _width(dtype):
    return 32 if dtype == torch.float32 else 16


def persistent(H: int, dtype: torch.dtype) -> bool:
    return H <= PERSISTENT_MAX_H[_width(dtype)]


def fits(B: int, H: int) -> bool:
    """Offsets within one step (a (B, 4H) slice, R) fit the kernels' int32 tile offsets."""
    return 4 * B * H < 2**31 and 4 * H * H < 2**31


@triton.jit
def _act(x, KIND: tl.constexpr):
    if KIND == 0:
        y = tanh(x)
    elif KIND == 1:
        y = tl.maximum(x, 0.0)
    else:
        y = sigmoid(x)
    return y


@triton.jit
def _act_grad(y, KIND: tl.constexpr):
    """d act / dx through the output y = act(x)."""
    if KIND == 0:
        d = 1.0 - y * y
    elif KIND == 1:
        d = tl.where(y > 0.0, 1.0, 0.0)
    else:
        d = y * (1.0 - y)
    return d


@triton.jit
def _i64(x):
    """x as int64: 64-bit offsets from a loop index (also a python int under the interpreter)."""
    return x + tl.zeros([], tl.int64)


@triton.jit
def _tile(P, off, m):
    """fp32 values of P[off], 0 where masked off. Offsets inside a step are int32 (the launcher checks that
    they fit), so that a tile holds one register per element, not a 64-bit address."""
    return tl.load(P + off, mask=m, other=0.0).to(tl.float32)


@triton.jit
def _rh_gate(acc, h, W, s_w, wrows, mj, offs_k, mk, DOT_F32: tl.constexpr, PREC: tl.constexpr):
    """acc + h @ W[wrows, offs_k]^T (one gate's rows of R)."""
    w = tl.load(W + wrows[:, None] * s_w + offs_k[None, :], mask=mj[:, None] & mk[None, :], other=0.0)
    if DOT_F32:  # the interpreter multiplies bf16 dot operands as raw bits (triton#11584)
        w = w.to(tl.float32)
    return tl.dot(h, tl.trans(w), acc, input_precision=PREC)


@triton.jit
def _rh(SH, rows, mb, W, s_w, H, offs_j, mj, G: tl.constexpr, DOT_F32: tl.constexpr, PREC: tl.constexpr,
        BLOCK_B: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_K: tl.constexpr):
    """The G gates' R.h for hidden units offs_j: h (fp32, rows of SH) in W's dtype against R's rows."""
    a0 = tl.zeros([BLOCK_B, BLOCK_J], tl.float32)
    a1 = a0
    a2 = a0
    a3 = a0
    wr = offs_j
    for k0 in range(0, H, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mk = offs_k < H
        h = tl.load(SH + rows[:, None] * H + offs_k[None, :], mask=mb[:, None] & mk[None, :], other=0.0)
        if not DOT_F32:
            h = h.to(W.dtype.element_ty)
        a0 = _rh_gate(a0, h, W, s_w, wr, mj, offs_k, mk, DOT_F32, PREC)
        if G > 1:
            a1 = _rh_gate(a1, h, W, s_w, wr + H, mj, offs_k, mk, DOT_F32, PREC)
            a2 = _rh_gate(a2, h, W, s_w, wr + 2 * H, mj, offs_k, mk, DOT_F32, PREC)
        if G > 3:
            a3 = _rh_gate(a3, h, W, s_w, wr + 3 * H, mj, offs_k, mk, DOT_F32, PREC)
    return a0, a1, a2, a3


@triton.jit
def _fwd_kernel(GI, s_gt, s_gb, W, s_w, BHH, LENS, HS, CS, WS, ST, step0, n_steps, T, B, H,
                KIND: tl.constexpr, G: tl.constexpr, HAS_BHH: tl.constexpr, HAS_LENS: tl.constexpr,
                HAS_WS: tl.constexpr, REVERSE: tl.constexpr, SYNC: tl.constexpr, DOT_F32: tl.constexpr,
                PREC: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_K: tl.constexpr):
    """Steps [step0, step0 + n_steps) for a tile of batch rows (grid axis 0) and every BLOCK_J-th block of
    hidden units from program_id(1) (grid axis 1). ST (fp32, (2, 2, B, H)): h and c, ping-pong by step parity.
    HS, CS (T, B, H) and WS (T, B, 4H; LSTM i f g o, GRU r z n hn, fp32) contiguous."""
    offs_b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    mb = offs_b < B
    rows = offs_b
    if HAS_LENS:
        lens = tl.load(LENS + rows, mask=mb, other=0)
    for s in range(step0, step0 + n_steps):
        if REVERSE:
            t = T - 1 - s
        else:
            t = s
        src = _i64(s % 2)
        SH = ST + src * B * H
        SC = ST + (2 + src) * B * H
        DH = ST + (1 - src) * B * H
        DC = ST + (3 - src) * B * H
        t64 = _i64(t)
        j_first = tl.program_id(1) * BLOCK_J
        if SYNC:  # persistent: every block of hidden units; per step: this program's block
            j_end = H
        else:
            j_end = j_first + 1
        for j0 in range(j_first, j_end, BLOCK_J):
            offs_j = j0 + tl.arange(0, BLOCK_J)
            mj = offs_j < H
            m2 = mb[:, None] & mj[None, :]
            a0, a1, a2, a3 = _rh(SH, rows, mb, W, s_w, H, offs_j, mj, G, DOT_F32, PREC, BLOCK_B, BLOCK_J, BLOCK_K)
            oh = rows[:, None] * H + offs_j[None, :]  # (B, H) state and outputs
            gi = GI + t64 * s_gt
            og = rows[:, None] * s_gb + offs_j[None, :]
            x0 = _tile(gi, og, m2) + a0
            if HAS_BHH:
                x0 += tl.load(BHH + offs_j, mask=mj, other=0.0).to(tl.float32)[None, :]
            if G > 1:
                x1 = _tile(gi, og + H, m2) + a1
                x2 = _tile(gi, og + 2 * H, m2)
                if HAS_BHH:
                    x1 += tl.load(BHH + H + offs_j, mask=mj, other=0.0).to(tl.float32)[None, :]
                    a2 += tl.load(BHH + 2 * H + offs_j, mask=mj, other=0.0).to(tl.float32)[None, :]
            if G > 3:
                x2 += a2
                x3 = _tile(gi, og + 3 * H, m2) + a3
                if HAS_BHH:
                    x3 += tl.load(BHH + 3 * H + offs_j, mask=mj, other=0.0).to(tl.float32)[None, :]
            hp = _tile(SH, oh, m2)
            if KIND == 3:
                cp = _tile(SC, oh, m2)
                g0 = sigmoid(x0)
                g1 = sigmoid(x1)
                g2 = tanh(x2)
                g3 = sigmoid(x3)
                c2 = g1 * cp + g0 * g2
                h2 = g3 * tanh(c2)
            elif KIND == 4:
                g0 = sigmoid(x0)
                g1 = sigmoid(x1)
                g3 = a2  # hn = gh_n + b_hn
                g2 = tanh(x2 + g0 * g3)
                h2 = (1.0 - g1) * g2 + g1 * hp
            else:
                h2 = _act(x0, KIND)
            if HAS_LENS:  # a row past its length keeps its state (forward) or has not started (reverse)
                on = (t < lens)[:, None]
                h2 = tl.where(on, h2, hp)
                if KIND == 3:
                    c2 = tl.where(on, c2, cp)
            tl.store(DH + oh, h2, mask=m2)
            store(HS + t64 * B * H, 0, 1, 0, oh, m2, h2)
            if KIND == 3:
                tl.store(DC + oh, c2, mask=m2)
                store(CS + t64 * B * H, 0, 1, 0, oh, m2, c2)
            if HAS_WS:
                if G > 1:
                    if HAS_LENS:
                        g0 = tl.where(on, g0, 0.0)
                        g1 = tl.where(on, g1, 0.0)
                        g2 = tl.where(on, g2, 0.0)
                        g3 = tl.where(on, g3, 0.0)
                    wsp = WS + t64 * B * 4 * H
                    ow = rows[:, None] * (4 * H) + offs_j[None, :]
                    tl.store(wsp + ow, g0, mask=m2)
                    tl.store(wsp + ow + H, g1, mask=m2)
                    tl.store(wsp + ow + 2 * H, g2, mask=m2)
                    tl.store(wsp + ow + 3 * H, g3, mask=m2)
        if SYNC:  # the next step reads every unit of this one's state
            tl.debug_barrier()


@triton.jit
def _bwd_kernel(DOUT, HS, CS, WS, H0, C0, W, s_w, LENS, DGI, DGH, ST, T, B, H,
                KIND: tl.constexpr, G: tl.constexpr, HAS_DOUT: tl.constexpr, HAS_H0: tl.constexpr,
                HAS_C0: tl.constexpr, HAS_LENS: tl.constexpr, REVERSE: tl.constexpr, DOT_F32: tl.constexpr,
                PREC: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_K: tl.constexpr):
    """The reverse-time loop for a tile of batch rows, persistent. ST (fp32, (5, B, H)): dh and dc ping-pong
    by step parity, then GRU's direct dh term. Per step: the gate gradients into DGI (and DGH, GRU) in the
    inputs' dtype, a barrier, then dh_prev = dG R (tl.dot over the G*H gate columns), a barrier."""
    offs_b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    mb = offs_b < B
    rows = offs_b
    if HAS_LENS:
        lens = tl.load(LENS + rows, mask=mb, other=0)
    GH = G * H
    if REVERSE:
        first = T - 1
    else:
        first = 0
    for s in range(0, T):
        if REVERSE:
            t = s
            p = t + 1
        else:
            t = T - 1 - s
            p = t - 1
        src = _i64(s % 2)
        SDH = ST + src * B * H
        SDC = ST + (2 + src) * B * H
        NDH = ST + (1 - src) * B * H
        NDC = ST + (3 - src) * B * H
        DIRECT = ST + 4 * B * H
        t64 = _i64(t)
        p64 = _i64(p)
        for j0 in range(0, H, BLOCK_J):  # the gate gradients of step t
            offs_j = j0 + tl.arange(0, BLOCK_J)
            mj = offs_j < H
            m2 = mb[:, None] & mj[None, :]
            oh = rows[:, None] * H + offs_j[None, :]
            og = rows[:, None] * GH + offs_j[None, :]
            ow = rows[:, None] * (4 * H) + offs_j[None, :]
            dh = _tile(SDH, oh, m2)
            if HAS_LENS:
                on = (t < lens)[:, None]
            if HAS_DOUT:
                d_out = _tile(DOUT + t64 * B * H, oh, m2)
                if HAS_LENS:
                    d_out = tl.where(on, d_out, 0.0)
                dh += d_out
            dgp = DGI + t64 * B * GH
            if KIND == 3:
                wsp = WS + t64 * B * 4 * H
                gi_ = _tile(wsp, ow, m2)
                gf = _tile(wsp, ow + H, m2)
                gg = _tile(wsp, ow + 2 * H, m2)
                go = _tile(wsp, ow + 3 * H, m2)
                if t == first:
                    if HAS_C0:
                        cp = _tile(C0, oh, m2)
                    else:
                        cp = tl.zeros([BLOCK_B, BLOCK_J], tl.float32)
                else:
                    cp = _tile(CS + p64 * B * H, oh, m2)
                dc = _tile(SDC, oh, m2)
                tc = tanh(gg * gi_ + gf * cp)
                dc2 = dc + dh * go * (1.0 - tc * tc)
                d0 = dc2 * gg * gi_ * (1.0 - gi_)
                d1 = dc2 * cp * gf * (1.0 - gf)
                d2 = dc2 * gi_ * (1.0 - gg * gg)
                d3 = dh * tc * go * (1.0 - go)
                dcp = dc2 * gf
                if HAS_LENS:
                    d0 = tl.where(on, d0, 0.0)
                    d1 = tl.where(on, d1, 0.0)
                    d2 = tl.where(on, d2, 0.0)
                    d3 = tl.where(on, d3, 0.0)
                    dcp = tl.where(on, dcp, dc)
                tl.store(NDC + oh, dcp, mask=m2)
                store(dgp, 0, 1, 0, og, m2, d0)
                store(dgp, 0, 1, 0, og + H, m2, d1)
                store(dgp, 0, 1, 0, og + 2 * H, m2, d2)
                store(dgp, 0, 1, 0, og + 3 * H, m2, d3)
            elif KIND == 4:
                wsp = WS + t64 * B * 4 * H
                r = _tile(wsp, ow, m2)
                z = _tile(wsp, ow + H, m2)
                n = _tile(wsp, ow + 2 * H, m2)
                hn = _tile(wsp, ow + 3 * H, m2)
                if t == first:
                    if HAS_H0:
                        hp = _tile(H0, oh, m2)
                    else:
                        hp = tl.zeros([BLOCK_B, BLOCK_J], tl.float32)
                else:
                    hp = _tile(HS + p64 * B * H, oh, m2)
                dn = dh * (1.0 - z) * (1.0 - n * n)
                dz = dh * (hp - n) * z * (1.0 - z)
                dr = dn * hn * r * (1.0 - r)
                dhn = dn * r
                direct = dh * z
                if HAS_LENS:
                    dn = tl.where(on, dn, 0.0)
                    dz = tl.where(on, dz, 0.0)
                    dr = tl.where(on, dr, 0.0)
                    dhn = tl.where(on, dhn, 0.0)
                tl.store(DIRECT + oh, direct, mask=m2)
                dhp = DGH + t64 * B * GH
                store(dgp, 0, 1, 0, og, m2, dr)
                store(dgp, 0, 1, 0, og + H, m2, dz)
                store(dgp, 0, 1, 0, og + 2 * H, m2, dn)
                store(dhp, 0, 1, 0, og, m2, dr)
                store(dhp, 0, 1, 0, og + H, m2, dz)
                store(dhp, 0, 1, 0, og + 2 * H, m2, dhn)
            else:
                y = _tile(HS + t64 * B * H, oh, m2)
                d0 = dh * _act_grad(y, KIND)
                if HAS_LENS:
                    d0 = tl.where(on, d0, 0.0)
                store(dgp, 0, 1, 0, og, m2, d0)
        tl.debug_barrier()
        if KIND == 4:
            DG = DGH + t64 * B * GH
        else:
            DG = DGI + t64 * B * GH
        for j0 in range(0, H, BLOCK_J):  # dh_prev = dG R for hidden units offs_j
            offs_j = j0 + tl.arange(0, BLOCK_J)
            mj = offs_j < H
            m2 = mb[:, None] & mj[None, :]
            oh = rows[:, None] * H + offs_j[None, :]
            acc = tl.zeros([BLOCK_B, BLOCK_J], tl.float32)
            for k0 in range(0, GH, BLOCK_K):
                offs_k = k0 + tl.arange(0, BLOCK_K)
                mk = offs_k < GH
                dg = tl.load(DG + rows[:, None] * GH + offs_k[None, :], mask=mb[:, None] & mk[None, :], other=0.0)
                w = tl.load(W + offs_k[:, None] * s_w + offs_j[None, :], mask=mk[:, None] & mj[None, :], other=0.0)
                if DOT_F32:
                    dg = dg.to(tl.float32)
                    w = w.to(tl.float32)
                acc = tl.dot(dg, w, acc, input_precision=PREC)
            if KIND == 4:
                acc += _tile(DIRECT, oh, m2)
            if HAS_LENS:  # a row outside its steps passes its dh through
                acc = tl.where((t < lens)[:, None], acc, _tile(SDH, oh, m2))
            tl.store(NDH + oh, acc, mask=m2)
        tl.debug_barrier()


def _lens(lengths, dummy):
    return (lengths, True) if lengths is not None else (dummy, False)


def forward(kind, gi, w_hh, b_hh, h0, c0, lengths, reverse, hs, cs, ws):
    """Fills hs (and cs, ws) from gi (T, B, G*H, unit stride along gates); R = w_hh with rows contiguous."""
    T, B, _ = gi.shape
    H = w_hh.shape[1]
    code = KIND_CODES[kind]
    whole = persistent(H, gi.dtype)
    BLOCK_B, BLOCK_J, BLOCK_K, warps = CONFIGS[_width(gi.dtype), "persistent" if whole else "per step"]
    st = torch.zeros((2, 2, B, H), dtype=torch.float32, device=gi.device)
    if h0 is not None:
        st[0, 0].copy_(h0)
    if c0 is not None:
        st[1, 0].copy_(c0)
    lens, has_lens = _lens(lengths, st)
    args = (gi, gi.stride(0), gi.stride(1), w_hh, w_hh.stride(0), b_hh if b_hh is not None else st, lens, hs,
            cs if cs is not None else hs, ws if ws is not None else st, st)
    flags = dict(KIND=code, G=GATES[code], HAS_BHH=b_hh is not None, HAS_LENS=has_lens, HAS_WS=ws is not None,
                 REVERSE=reverse, BLOCK_B=BLOCK_B, BLOCK_J=BLOCK_J, BLOCK_K=BLOCK_K, num_warps=warps,
                 **dot_flags(gi.dtype))
    nb = triton.cdiv(B, BLOCK_B)
    if whole:
        _fwd_kernel[(nb, 1)](*args, 0, T, T, B, H, SYNC=True, **flags)
    else:
        for s in range(T):
            _fwd_kernel[(nb, triton.cdiv(H, BLOCK_J))](*args, s, 1, T, B, H, SYNC=False, **flags)


def backward(kind, dout, dhT, dcT, h0, c0, w_hh, hs, cs, ws, lengths, reverse, dgi, dgh):
    """The persistent reverse-time loop: fills dgi (and dgh, GRU); returns fp32 (dh0, dc0 or None)."""
    T, B, H = hs.shape
    code = KIND_CODES[kind]
    BLOCK_B, BLOCK_J, BLOCK_K, warps = CONFIGS[_width(hs.dtype), "backward"]
    st = torch.zeros((5, B, H), dtype=torch.float32, device=hs.device)
    if dhT is not None:
        st[0].copy_(dhT)
    if dcT is not None:
        st[2].copy_(dcT)
    lens, has_lens = _lens(lengths, st)
    c = lambda t: t.contiguous() if t is not None else st  # noqa: E731
    _bwd_kernel[(triton.cdiv(B, BLOCK_B),)](
        c(dout), hs, cs if cs is not None else hs, ws if ws is not None else st, c(h0), c(c0), w_hh, w_hh.stride(0),
        lens, dgi, dgh if dgh is not None else dgi, st, T, B, H, KIND=code, G=GATES[code],
        HAS_DOUT=dout is not None, HAS_H0=h0 is not None, HAS_C0=c0 is not None, HAS_LENS=has_lens,
        REVERSE=reverse, BLOCK_B=BLOCK_B, BLOCK_J=BLOCK_J, BLOCK_K=BLOCK_K, num_warps=warps, **dot_flags(hs.dtype))
    last = T % 2
    return st[last], (st[2 + last] if kind == "lstm" else None)


def _aot_specs():
    specs = []
    for dtype, tl_t in _TL.items():
        io = "*" + tl_t
        for kind, code in KIND_CODES.items():
            for launch in ("persistent", "per step", "backward"):
                name, sync = ("rnn_bwd", True) if launch == "backward" else ("rnn_fwd", launch == "persistent")
                BLOCK_B, BLOCK_J, BLOCK_K, warps = CONFIGS[_width(dtype), launch]
                const = dict(KIND=code, G=GATES[code], HAS_LENS=True, REVERSE=False, DOT_F32=False, PREC="ieee",
                             BLOCK_B=BLOCK_B, BLOCK_J=BLOCK_J, BLOCK_K=BLOCK_K)
                if name == "rnn_fwd":
                    sig = {"GI": io, "s_gt": "i32", "s_gb": "i32", "W": io, "s_w": "i32", "BHH": io,
                           "LENS": "*i64", "HS": io, "CS": io, "WS": "*fp32", "ST": "*fp32", "step0": "i32",
                           "n_steps": "i32", "T": "i32", "B": "i32", "H": "i32"}
                    const.update(HAS_BHH=True, HAS_WS=True, SYNC=sync)
                    kernel = _fwd_kernel
                else:
                    sig = {"DOUT": io, "HS": io, "CS": io, "WS": "*fp32", "H0": io, "C0": io, "W": io, "s_w": "i32",
                           "LENS": "*i64", "DGI": io, "DGH": io, "ST": "*fp32", "T": "i32", "B": "i32", "H": "i32"}
                    const.update(HAS_DOUT=True, HAS_H0=True, HAS_C0=True)
                    kernel = _bwd_kernel
                sig.update({k: "constexpr" for k in const})
                specs.append(dict(name=name, kernel=kernel, signature=sig, constexprs=const, num_warps=warps,
                                  num_stages=1, config=f"{kind} {tl_t} {launch} "
                                                       f"{BLOCK_B}x{BLOCK_J}x{BLOCK_K} w{warps}"))
    return specs


AOT_SPECS = _aot_specs()
