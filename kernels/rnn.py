"""rnn / lstm / gru recurrence in Triton (one layer, one direction). The input projection of every step comes
precomputed (one torch GEMM, b_ih folded in); per step, R.h (tl.dot) and the gate math are one fused pass,
and the recurrent state lives in an fp32 scratch (half and bfloat16 inputs keep an fp32 state).

Forward, one kernel in three launch shapes (`plan`):
- persistent, spread: one launch for the whole sequence; a batch tile's programs split its hidden units and
  meet at a grid barrier (a counter in global memory) after each step; at most one program per SM, so all
  are resident; the state is read past L1. On a GPU with SMs to spare;
- persistent, one program per batch tile owning the whole hidden state (a barrier of its own threads per
  step): under the interpreter, and on a GPU whose SMs the batch tiles already fill, up to PERSISTENT_MAX_H;
- per step, above that: a launch per step in which the programs split the hidden units too.
Backward, persistent (spread or not) where the forward is: a reverse-time kernel of the same structure writes
the gate gradients and carries dh and dc, two barriers per step; otherwise python/crossfuse/ops/rnn.py steps
over the fused cell kernels. The weight gradients are large torch GEMMs afterwards. Rows stop at their length
(`lengths`): a row past it keeps its state and gets zero gate gradients, as in the CPU kernel
(csrc/cpu/rnn_sequence.cpp).
"""
import torch
import triton
import triton.language as tl

from crossfuse.kernels._common import dot_flags, interpreted, rnn_act, rnn_act_backward, sigmoid, store, tanh

KIND_CODES = {"rnn_tanh": 0, "rnn_relu": 1, "rnn_sigmoid": 2, "lstm": 3, "gru": 4}
GATES = {0: 1, 1: 1, 2: 1, 3: 4, 4: 3}
# (BLOCK_B, BLOCK_J, BLOCK_K, num_warps) per (operand width, launch: persistent / per step / backward);
# BLOCK_B is tl.dot's smallest M. The largest spill-free tiles of the AOT check, which compiles each with every
# kind and dtype (fp32 spills with wider unit blocks); the per-step launch takes narrow blocks for more programs.
CONFIGS = {(16, "persistent"): (16, 64, 32, 8), (16, "per step"): (16, 16, 32, 4), (16, "backward"): (16, 32, 32, 8),
           (32, "persistent"): (16, 16, 32, 4), (32, "per step"): (16, 16, 32, 4), (32, "backward"): (16, 16, 32, 4)}
# One program per batch tile reads the whole R (G*H x H) once per step on one SM: past this the per-step
# launch, which spreads the hidden units over SMs, is expected to win. A first guess from the arithmetic (R
# from L2 at ~100 GB/s per SM), to be tuned on a GPU.
PERSISTENT_MAX_H = {16: 256, 32: 128}
_TL = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def _width(dtype):
    return 32 if dtype == torch.float32 else 16


def persistent(H: int, dtype: torch.dtype) -> bool:
    return H <= PERSISTENT_MAX_H[_width(dtype)]


def _programs(B: int, H: int, BLOCK_B: int, BLOCK_J: int, device: torch.device) -> int:
    """Programs per batch tile of a persistent launch: 1 under the interpreter (its programs run one after
    another, so a grid barrier would never open) and where the batch tiles alone fill the SMs; else up to one
    per block of hidden units, a power of two (few compiled variants), all programs of the launch at most one
    per SM so that they are co-resident."""
    if device.type != "cuda" or interpreted():
        return 1
    per = min(triton.cdiv(H, BLOCK_J), torch.cuda.get_device_properties(device).multi_processor_count
              // triton.cdiv(B, BLOCK_B))
    return 1 << (per.bit_length() - 1) if per > 1 else 1


def plan(B: int, H: int, dtype: torch.dtype, device: torch.device, backward: bool = False):
    """(launch, config, programs per batch tile): persistent with the hidden units spread over programs where
    the GPU has SMs to spare, else persistent on one program per batch tile up to PERSISTENT_MAX_H, else a
    launch per step (forward; the backward then steps over the cell kernels: launch None)."""
    w = _width(dtype)
    spread = CONFIGS[w, "backward" if backward else "per step"]
    n = _programs(B, H, spread[0], spread[1], device)
    if n > 1:
        return "persistent", spread, n
    if persistent(H, dtype):
        return "persistent", CONFIGS[w, "backward" if backward else "persistent"], 1
    return (None, None, 1) if backward else ("per step", CONFIGS[w, "per step"], 1)


def fits(B: int, H: int) -> bool:
    """Offsets within one step (a (B, 4H) slice, R) fit the kernels' int32 tile offsets."""
    return 4 * B * H < 2**31 and 4 * H * H < 2**31


@triton.jit
def _i64(x):
    """x as int64: 64-bit offsets from a loop index (also a python int under the interpreter)."""
    return x + tl.zeros([], tl.int64)


@triton.jit
def _tile(P, off, m, CG: tl.constexpr = False):
    """fp32 values of P[off], 0 where masked off. Offsets inside a step are int32 (the launcher checks that
    they fit), so that a tile holds one register per element, not a 64-bit address. CG: read from L2, past
    this SM's L1 (state that other programs wrote since this one last read it)."""
    if CG:
        v = tl.load(P + off, mask=m, other=0.0, cache_modifier=".cg")
    else:
        v = tl.load(P + off, mask=m, other=0.0)
    return v.to(tl.float32)


@triton.jit
def _grid_sync(BAR, target, SPIN_LIMIT: tl.constexpr = 1 << 20):
    """Every program sharing the counter BAR has arrived `target` times in all: each arrives once (a scalar
    atomic is one thread's: thread 0, the value shared through shared memory), then polls. The launcher makes
    those programs co-resident (at most one per SM). Past SPIN_LIMIT polls a program opens every later
    barrier of its tile (a count no target reaches) rather than hang: the results are then wrong, and the
    tests say so."""
    tl.debug_barrier()  # this program's stores come before its arrival
    tl.atomic_add(BAR, 1, sem="release", scope="gpu")
    seen = tl.atomic_add(BAR, 0, sem="acquire", scope="gpu")
    polls = 0
    while (seen < target) & (polls < SPIN_LIMIT):
        seen = tl.atomic_add(BAR, 0, sem="acquire", scope="gpu")
        polls += 1
    if polls >= SPIN_LIMIT:
        tl.atomic_add(BAR, 1 << 29, sem="relaxed", scope="gpu")
    tl.debug_barrier()


@triton.jit
def _gates4(WSP, ow, m2, H):
    """The four fp32 gate tiles a step saved (LSTM i f g o, GRU r z n hn)."""
    return _tile(WSP, ow, m2), _tile(WSP, ow + H, m2), _tile(WSP, ow + 2 * H, m2), _tile(WSP, ow + 3 * H, m2)


@triton.jit
def _state_before(t, first, P0, HAS_P0: tl.constexpr, PREV, oh, m2, BLOCK_B: tl.constexpr, BLOCK_J: tl.constexpr):
    """The state a step started from: the saved one of the step before, or the initial one (zeros if none)."""
    if t == first:
        if HAS_P0:
            v = _tile(P0, oh, m2)
        else:
            v = tl.zeros([BLOCK_B, BLOCK_J], tl.float32)
    else:
        v = _tile(PREV, oh, m2)
    return v


@triton.jit
def _rh_gate(acc, h, W, s_w, wrows, mj, offs_k, mk, DOT_F32: tl.constexpr, PREC: tl.constexpr):
    """acc + h @ W[wrows, offs_k]^T (one gate's rows of R)."""
    w = tl.load(W + wrows[:, None] * s_w + offs_k[None, :], mask=mj[:, None] & mk[None, :], other=0.0)
    if DOT_F32:  # the interpreter multiplies bf16 dot operands as raw bits (triton#11584)
        w = w.to(tl.float32)
    return tl.dot(h, tl.trans(w), acc, input_precision=PREC)


@triton.jit
def _rh(SH, rows, mb, W, s_w, H, offs_j, mj, G: tl.constexpr, DOT_F32: tl.constexpr, PREC: tl.constexpr,
        CG: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_K: tl.constexpr):
    """The G gates' R.h for hidden units offs_j: h (fp32, rows of SH) in W's dtype against R's rows."""
    a0 = tl.zeros([BLOCK_B, BLOCK_J], tl.float32)
    a1 = a0
    a2 = a0
    a3 = a0
    wr = offs_j
    for k0 in range(0, H, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mk = offs_k < H
        h = _tile(SH, rows[:, None] * H + offs_k[None, :], mb[:, None] & mk[None, :], CG)
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
def _fwd_kernel(GI, s_gt, s_gb, W, s_w, BHH, LENS, HS, CS, WS, ST, BAR, step0, n_steps, T, B, H,
                KIND: tl.constexpr, G: tl.constexpr, HAS_BHH: tl.constexpr, HAS_LENS: tl.constexpr,
                HAS_WS: tl.constexpr, REVERSE: tl.constexpr, PERSISTENT: tl.constexpr, J_PROGS: tl.constexpr,
                DOT_F32: tl.constexpr, PREC: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_J: tl.constexpr,
                BLOCK_K: tl.constexpr):
    """Steps [step0, step0 + n_steps) for a tile of batch rows (grid axis 0). Persistent: program_id(1) of
    J_PROGS takes every J_PROGS-th block of hidden units, and the programs of a tile meet after each step
    (a barrier, or the counter BAR[tile] across programs); per step: one block per program. ST (fp32,
    (2, 2, B, H)): h and c, ping-pong by step parity. HS, CS (T, B, H), WS (T, B, 4H; LSTM i f g o, GRU
    r z n hn, fp32) contiguous."""
    CG: tl.constexpr = J_PROGS > 1
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
        if PERSISTENT:
            j_end = H
        else:
            j_end = j_first + 1
        for j0 in range(j_first, j_end, BLOCK_J * J_PROGS):
            offs_j = j0 + tl.arange(0, BLOCK_J)
            mj = offs_j < H
            m2 = mb[:, None] & mj[None, :]
            a0, a1, a2, a3 = _rh(SH, rows, mb, W, s_w, H, offs_j, mj, G, DOT_F32, PREC, CG, BLOCK_B, BLOCK_J,
                                 BLOCK_K)
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
            hp = _tile(SH, oh, m2, CG)
            if KIND == 3:
                cp = _tile(SC, oh, m2, CG)
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
                h2 = rnn_act(x0, KIND)
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
        if PERSISTENT:  # the next step reads every unit of this one's state
            if J_PROGS > 1:
                _grid_sync(BAR + tl.program_id(0), (s + 1 - step0) * J_PROGS)
            else:
                tl.debug_barrier()


@triton.jit
def _bwd_kernel(DOUT, HS, CS, WS, H0, C0, W, s_w, LENS, DGI, DGH, ST, BAR, T, B, H,
                KIND: tl.constexpr, G: tl.constexpr, HAS_DOUT: tl.constexpr, HAS_H0: tl.constexpr,
                HAS_C0: tl.constexpr, HAS_LENS: tl.constexpr, REVERSE: tl.constexpr, J_PROGS: tl.constexpr,
                DOT_F32: tl.constexpr, PREC: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_J: tl.constexpr,
                BLOCK_K: tl.constexpr):
    """The reverse-time loop for a tile of batch rows (grid axis 0), persistent; program_id(1) of J_PROGS
    takes every J_PROGS-th block of hidden units. ST (fp32, (5, B, H)): dh and dc ping-pong by step parity,
    then GRU's direct dh term. Per step: the gate gradients into DGI (and DGH, GRU) in the inputs' dtype, the
    programs meet, then dh_prev = dG R (tl.dot over the G*H gate columns), the programs meet."""
    CG: tl.constexpr = J_PROGS > 1
    j_first = tl.program_id(1) * BLOCK_J
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
        for j0 in range(j_first, H, BLOCK_J * J_PROGS):  # the gate gradients of step t
            offs_j = j0 + tl.arange(0, BLOCK_J)
            mj = offs_j < H
            m2 = mb[:, None] & mj[None, :]
            oh = rows[:, None] * H + offs_j[None, :]
            og = rows[:, None] * GH + offs_j[None, :]
            ow = rows[:, None] * (4 * H) + offs_j[None, :]
            dh = _tile(SDH, oh, m2, CG)
            if HAS_LENS:
                on = (t < lens)[:, None]
            if HAS_DOUT:
                d_out = _tile(DOUT + t64 * B * H, oh, m2)
                if HAS_LENS:
                    d_out = tl.where(on, d_out, 0.0)
                dh += d_out
            dgp = DGI + t64 * B * GH
            if KIND == 3:
                gi_, gf, gg, go = _gates4(WS + t64 * B * 4 * H, ow, m2, H)
                if t == first:  # _state_before inline: through it ptxas keeps 8 stack bytes here (sm_90)
                    if HAS_C0:
                        cp = _tile(C0, oh, m2)
                    else:
                        cp = tl.zeros([BLOCK_B, BLOCK_J], tl.float32)
                else:
                    cp = _tile(CS + p64 * B * H, oh, m2)
                dc = _tile(SDC, oh, m2, CG)
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
                r, z, n, hn = _gates4(WS + t64 * B * 4 * H, ow, m2, H)
                hp = _state_before(t, first, H0, HAS_H0, HS + p64 * B * H, oh, m2, BLOCK_B, BLOCK_J)
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
                d0 = rnn_act_backward(dh, _tile(HS + t64 * B * H, oh, m2), KIND)
                if HAS_LENS:
                    d0 = tl.where(on, d0, 0.0)
                store(dgp, 0, 1, 0, og, m2, d0)
        if J_PROGS > 1:
            _grid_sync(BAR + tl.program_id(0), (2 * s + 1) * J_PROGS)
        else:
            tl.debug_barrier()
        if KIND == 4:
            DG = DGH + t64 * B * GH
        else:
            DG = DGI + t64 * B * GH
        for j0 in range(j_first, H, BLOCK_J * J_PROGS):  # dh_prev = dG R for hidden units offs_j
            offs_j = j0 + tl.arange(0, BLOCK_J)
            mj = offs_j < H
            m2 = mb[:, None] & mj[None, :]
            oh = rows[:, None] * H + offs_j[None, :]
            acc = tl.zeros([BLOCK_B, BLOCK_J], tl.float32)
            for k0 in range(0, GH, BLOCK_K):
                offs_k = k0 + tl.arange(0, BLOCK_K)
                mk = offs_k < GH
                if CG:
                    dg = tl.load(DG + rows[:, None] * GH + offs_k[None, :], mask=mb[:, None] & mk[None, :],
                                 other=0.0, cache_modifier=".cg")
                else:
                    dg = tl.load(DG + rows[:, None] * GH + offs_k[None, :], mask=mb[:, None] & mk[None, :],
                                 other=0.0)
                w = tl.load(W + offs_k[:, None] * s_w + offs_j[None, :], mask=mk[:, None] & mj[None, :], other=0.0)
                if DOT_F32:
                    dg = dg.to(tl.float32)
                    w = w.to(tl.float32)
                acc = tl.dot(dg, w, acc, input_precision=PREC)
            if KIND == 4:
                acc += _tile(DIRECT, oh, m2, CG)
            if HAS_LENS:  # a row outside its steps passes its dh through
                acc = tl.where((t < lens)[:, None], acc, _tile(SDH, oh, m2, CG))
            tl.store(NDH + oh, acc, mask=m2)
        if J_PROGS > 1:
            _grid_sync(BAR + tl.program_id(0), (2 * s + 2) * J_PROGS)
        else:
            tl.debug_barrier()


def _lens(lengths, dummy):
    return (lengths, True) if lengths is not None else (dummy, False)


def forward(kind, gi, w_hh, b_hh, h0, c0, lengths, reverse, hs, cs, ws):
    """Fills hs (and cs, ws) from gi (T, B, G*H, unit stride along gates); R = w_hh with rows contiguous."""
    T, B, _ = gi.shape
    H = w_hh.shape[1]
    code = KIND_CODES[kind]
    launch, (BLOCK_B, BLOCK_J, BLOCK_K, warps), n = plan(B, H, gi.dtype, gi.device)
    st = torch.zeros((2, 2, B, H), dtype=torch.float32, device=gi.device)
    if h0 is not None:
        st[0, 0].copy_(h0)
    if c0 is not None:
        st[1, 0].copy_(c0)
    nb = triton.cdiv(B, BLOCK_B)
    bar = torch.zeros(nb, dtype=torch.int32, device=gi.device)
    lens, has_lens = _lens(lengths, st)
    args = (gi, gi.stride(0), gi.stride(1), w_hh, w_hh.stride(0), b_hh if b_hh is not None else st, lens, hs,
            cs if cs is not None else hs, ws if ws is not None else st, st, bar)
    flags = dict(KIND=code, G=GATES[code], HAS_BHH=b_hh is not None, HAS_LENS=has_lens, HAS_WS=ws is not None,
                 REVERSE=reverse, BLOCK_B=BLOCK_B, BLOCK_J=BLOCK_J, BLOCK_K=BLOCK_K, num_warps=warps, num_stages=1,
                 **dot_flags(gi.dtype))
    if launch == "persistent":
        _fwd_kernel[(nb, n)](*args, 0, T, T, B, H, PERSISTENT=True, J_PROGS=n, **flags)
    else:
        for s in range(T):
            _fwd_kernel[(nb, triton.cdiv(H, BLOCK_J))](*args, s, 1, T, B, H, PERSISTENT=False, J_PROGS=1, **flags)


def backward(kind, dout, dhT, dcT, h0, c0, w_hh, hs, cs, ws, lengths, reverse, dgi, dgh):
    """The persistent reverse-time loop (where plan(..., backward=True) gives one): fills dgi (and dgh, GRU);
    returns fp32 (dh0, dc0 or None)."""
    T, B, H = hs.shape
    code = KIND_CODES[kind]
    _, (BLOCK_B, BLOCK_J, BLOCK_K, warps), n = plan(B, H, hs.dtype, hs.device, backward=True)
    st = torch.zeros((5, B, H), dtype=torch.float32, device=hs.device)
    if dhT is not None:
        st[0].copy_(dhT)
    if dcT is not None:
        st[2].copy_(dcT)
    nb = triton.cdiv(B, BLOCK_B)
    bar = torch.zeros(nb, dtype=torch.int32, device=hs.device)
    lens, has_lens = _lens(lengths, st)
    c = lambda t: t.contiguous() if t is not None else st  # noqa: E731
    _bwd_kernel[(nb, n)](
        c(dout), hs, cs if cs is not None else hs, ws if ws is not None else st, c(h0), c(c0), w_hh, w_hh.stride(0),
        lens, dgi, dgh if dgh is not None else dgi, st, bar, T, B, H, KIND=code, G=GATES[code],
        HAS_DOUT=dout is not None, HAS_H0=h0 is not None, HAS_C0=c0 is not None, HAS_LENS=has_lens,
        REVERSE=reverse, J_PROGS=n, BLOCK_B=BLOCK_B, BLOCK_J=BLOCK_J, BLOCK_K=BLOCK_K, num_warps=warps, num_stages=1,
        **dot_flags(hs.dtype))
    last = T % 2
    return st[last], (st[2 + last] if kind == "lstm" else None)


def _aot_specs():
    """Every (kind, dtype, launch); the spread persistent launch at 8 programs per batch tile (the count only
    changes a loop step and the barrier's target)."""
    specs = []
    for dtype, tl_t in _TL.items():
        io = "*" + tl_t
        for kind, code in KIND_CODES.items():
            for launch, cfg, n in (("persistent", "persistent", 1), ("spread", "per step", 8),
                                   ("per step", "per step", 1), ("backward", "backward", 1),
                                   ("spread backward", "backward", 8)):
                BLOCK_B, BLOCK_J, BLOCK_K, warps = CONFIGS[_width(dtype), cfg]
                const = dict(KIND=code, G=GATES[code], HAS_LENS=True, REVERSE=False, J_PROGS=n, DOT_F32=False,
                             PREC="ieee", BLOCK_B=BLOCK_B, BLOCK_J=BLOCK_J, BLOCK_K=BLOCK_K)
                if "backward" not in launch:
                    sig = {"GI": io, "s_gt": "i32", "s_gb": "i32", "W": io, "s_w": "i32", "BHH": io,
                           "LENS": "*i64", "HS": io, "CS": io, "WS": "*fp32", "ST": "*fp32", "BAR": "*i32",
                           "step0": "i32", "n_steps": "i32", "T": "i32", "B": "i32", "H": "i32"}
                    const.update(HAS_BHH=True, HAS_WS=True, PERSISTENT=launch != "per step")
                    name, kernel = "rnn_fwd", _fwd_kernel
                else:
                    sig = {"DOUT": io, "HS": io, "CS": io, "WS": "*fp32", "H0": io, "C0": io, "W": io, "s_w": "i32",
                           "LENS": "*i64", "DGI": io, "DGH": io, "ST": "*fp32", "BAR": "*i32", "T": "i32",
                           "B": "i32", "H": "i32"}
                    const.update(HAS_DOUT=True, HAS_H0=True, HAS_C0=True)
                    name, kernel = "rnn_bwd", _bwd_kernel
                sig.update({k: "constexpr" for k in const})
                specs.append(dict(name=name, kernel=kernel, signature=sig, constexprs=const, num_warps=warps,
                                  num_stages=1, config=f"{kind} {tl_t} {launch} "
                                                       f"{BLOCK_B}x{BLOCK_J}x{BLOCK_K} w{warps}"))
    return specs


AOT_SPECS = _aot_specs()
