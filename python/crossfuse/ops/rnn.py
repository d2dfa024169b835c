"""rnn / lstm / gru: one recurrent layer in one direction over a whole sequence.

The input projection of all steps is one torch GEMM. The recurrence: on the `cpu` backend (fp32) the time
loop runs in C++ (csrc/cpu/rnn_sequence.cpp: per step the R.h GEMV tiles and the gate math in one pass,
OpenMP over hidden units); on `triton`, R.h and the gate math fused in kernels/rnn.py (persistent over the
sequence, or a launch per step where it cannot be: see its `plan`); on `cuda`, one cooperative launch with R
on-chip (csrc/cuda/rnn_persistent.cu) where R fits in the SMs' shared memory, else a step loop around torch's
R.h GEMM and the fused cell kernel. Variable lengths are handled inside: a row stops updating at its length.
The backward is a reverse-time loop (C++ on `cpu`, the persistent kernels where the forward is persistent, else
the fused cell backward kernels), then one large GEMM per weight gradient.
"""
from __future__ import annotations

import importlib
import os
import weakref

import torch

from crossfuse import _backend
from crossfuse._autograd import once_differentiable
from crossfuse.ops import _cell as _cell_ops, _gemm
from crossfuse.ops._cell import _CPU, BACKENDS, GATES, KINDS, _cpu_step, _needs_grad, run_kernel

OPS = ("rnn", "lstm", "gru")
for _op in OPS:
    _backend.register_op(_op, BACKENDS)


def _triton_rnn():
    return importlib.import_module("crossfuse.kernels.rnn")


# ---- the cuda backend's cooperative launch (crossfuse/rnn_persistent.h) -------------------------------------
# At least this many hidden units per block: fewer blocks meet at each step's barrier when H is small. A first
# guess, to be tuned on a GPU.
PERSISTENT_MIN_UNITS = 4
_cuda_limits: dict[int, tuple] = {}


def persistent_plan(kind, B, H, sms, smem_bytes, threads=None, max_kc=None):
    """(T-independent) plan (U, blocks, BC, KC, shared bytes) of the persistent recurrence, or None where R does
    not fit on-chip. `threads` per block and at most `max_kc` columns staged per pass (tests vary them)."""
    ext = _backend.ext
    return ext.rnn_persistent_plan(GATES[kind], B, H, threads or ext.rnn_persistent_threads, smem_bytes, sms,
                                   PERSISTENT_MIN_UNITS, max_kc or ext.rnn_persistent_max_kc)


def _persistent_for(backend, kind, B, H, x):
    """(plan, runner) of the cooperative launch for the `cuda` backend on x's GPU, or None (another backend, no
    cooperative launch, R too large for the SMs' shared memory, nothing to do)."""
    ext = _backend.ext
    if backend != "cuda" or not x.is_cuda or B * H == 0 or ext is None or not hasattr(ext, "cuda"):
        return None
    if os.environ.get("CROSSFUSE_CUDA_PERSISTENT", "1") == "0":  # the step loop instead (a kill switch)
        return None
    device = x.device
    index = device.index if device.index is not None else torch.cuda.current_device()
    limits = _cuda_limits.get(index)
    if limits is None:
        with torch.cuda.device(index):
            limits = _cuda_limits[index] = ext.cuda.rnn_persistent_limits()
    sms, smem, cooperative = limits
    plan = persistent_plan(kind, B, H, sms, smem) if cooperative else None
    if plan is None:
        return None

    def run(*args):
        with torch.cuda.device(index):
            ext.cuda.rnn_persistent(*args, _backend.cuda_stream(device))
    return plan, run


def _ptr(t):
    return 0 if t is None else t.data_ptr()


def _contig(t):
    return None if t is None else t.contiguous()


# The CPU recurrence runs on w_hh packed by unit block; by itself it repacks w_hh on every call.
# From the second call that sees the same, unchanged w_hh (an inference loop, not a training step) it gets a kept
# copy instead: on the Xeon dev VM the repack took 70 us of an LSTM forward's 4 ms at T=100 B=8 H=256 and 1.4 ms at
# H=1024. id(w_hh) -> [key, weakref to w_hh, the copy or None (seen once)], dropped with w_hh; the copy costs
# w_hh's memory again (GRU's a third more); CROSSFUSE_CPU_PACK_WEIGHTS=0 turns it off with the cells' copies.
_SEQ_PACKED: dict[int, list] = {}


def _kept_packed_w_hh(kind, w_hh, T, B):
    """(the packed copy or None, its gates per k) for rnn_sequence's w_packed."""
    cpu = _backend.ext.cpu
    if (not _cell_ops._PACK_WEIGHTS or (kind == "gru" and cpu.isa() < 4) or not w_hh.is_contiguous()
            or not cpu.sequence_packs(KINDS[kind], T, B, w_hh.shape[1], torch.get_num_threads())):
        return None, 0  # where the C++ runs unpacked, or packs GRU's 3 gates unpadded
    try:
        key = (w_hh._version, w_hh.data_ptr(), w_hh.shape)
    except RuntimeError:  # an inference tensor: no version counter to tell a change by
        return None, 0
    e = _SEQ_PACKED.get(id(w_hh))
    if e is not None and e[1]() is w_hh and e[0] == key:
        if e[2] is None:
            e[2] = _cell_ops._pack_weight(w_hh, kind, w_hh.shape[1], w_hh.shape[1])
        return e[2], cpu.cell_packed_gates(KINDS[kind])
    if e is None:
        weakref.finalize(w_hh, _SEQ_PACKED.pop, id(w_hh), None)
    _SEQ_PACKED[id(w_hh)] = [key, weakref.ref(w_hh), None]
    return None, 0


def persistent_forward(kind, gi, w_hh, b_hh, h0, c0, lengths, reverse, hs, cs, ws, plan, run):
    """Fills hs (and cs, ws) through `run` (the CUDA launch, or its host emulation) with `plan`; hs, cs, ws
    contiguous."""
    T, B, _ = gi.shape
    H = w_hh.shape[1]
    U, blocks, BC, KC, _ = plan
    gi = gi if gi.stride(2) == 1 else gi.contiguous()
    st = torch.zeros((2, 2, B, H), dtype=torch.float32, device=gi.device)
    if h0 is not None:
        st[0, 0].copy_(h0)
    if c0 is not None:
        st[1, 0].copy_(c0)
    w_hh, b_hh = w_hh.contiguous(), _contig(b_hh)
    lens = None if lengths is None else lengths.to(device=gi.device, dtype=torch.int64).contiguous()
    p = [gi.data_ptr(), gi.stride(0), gi.stride(1), w_hh.data_ptr(), w_hh.stride(0), _ptr(b_hh), _ptr(lens),
         hs.data_ptr(), _ptr(cs), _ptr(ws), st.data_ptr(), 0, 0, 0, 0, 0]
    run(KINDS[kind], _backend.DTYPE_CODES[gi.dtype], False, [T, B, H, U, blocks, BC, KC], reverse, p)


def persistent_backward(kind, dout, dhT, dcT, h0, c0, w_hh, hs, cs, ws, lengths, reverse, dgi, dgh, plan, run):
    """Fills dgi (and dgh, GRU) through `run`; returns fp32 (dh0, dc0 or None)."""
    T, B, H = hs.shape
    U, blocks, BC, KC, _ = plan
    st = torch.zeros((5, B, H), dtype=torch.float32, device=hs.device)
    if dhT is not None:
        st[0].copy_(dhT)
    if dcT is not None and kind == "lstm":
        st[2].copy_(dcT)
    w_hh, dout, h0, c0 = map(_contig, (w_hh, dout, h0, c0))
    lens = None if lengths is None else lengths.to(device=hs.device, dtype=torch.int64).contiguous()
    p = [0, 0, 0, w_hh.data_ptr(), w_hh.stride(0), 0, _ptr(lens), hs.data_ptr(), _ptr(cs), _ptr(ws), st.data_ptr(),
         _ptr(dout), _ptr(h0), _ptr(c0), dgi.data_ptr(), _ptr(dgh if kind == "gru" else None)]
    run(KINDS[kind], _backend.DTYPE_CODES[hs.dtype], True, [T, B, H, U, blocks, BC, KC], reverse, p)
    last = T % 2
    return st[last], (st[2 + last] if kind == "lstm" else None)


def _op_of(kind):
    return kind if kind in ("lstm", "gru") else "rnn"


def layer_forward(kind, backend, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, need_ws):
    """(hs (T, B, H) states, cs or None, ws or None): the state after every step; rows past their length hold."""
    T, B, I = x.shape
    H = w_hh.shape[1]
    coop = _persistent_for(backend, kind, B, H, x)
    cpu32 = coop is None and backend == "cpu" and x.dtype == torch.float32
    if cpu32 and T == 1 and lengths is None:  # one step (a decoder's): the cells' single call, input GEMV included
        step = _cpu_step(kind, x[0], h0, c0, w_ih, w_hh, b_ih, b_hh, need_ws)
        if step is not None:
            hy, cy, ws = step if need_ws else (*step, None)
            return hy.unsqueeze(0), None if cy is None else cy.unsqueeze(0), None if ws is None else ws.unsqueeze(0)
    gi_rows = None
    if cpu32:  # on CPU a GEMM with a bias first copies it into every row of gi: the recurrence adds b_ih instead
        GH = w_ih.shape[0]  # gi never leaves this call: a reused buffer (no page faults)
        lens = None if lengths is None else lengths.to(torch.int64).contiguous()
        going = _rows_going(lens, T, B)
        if going is not None:  # lengths that never increase (a PackedSequence): the projection of those rows only
            mask, gi_rows = going
            xs = x[mask]  # (rows, I) in step order, as a PackedSequence's data
            gi = _gemm.mm(xs, w_ih.t(), out=_backend.scratch(xs.shape[0] * GH).view(-1, GH)).view(-1, 1, GH)
        else:
            gi = _gemm.mm(x.reshape(T * B, I), w_ih.t(),
                          out=_backend.scratch(T * B * GH).view(T * B, GH)).view(T, B, GH)
    else:
        gi = torch.nn.functional.linear(x, w_ih, b_ih)  # (T, B, G*H), b_ih folded in
    new = _backend.empty
    hs = new((T, B, H), dtype=x.dtype, device=x.device)
    cs = new((T, B, H), dtype=x.dtype, device=x.device) if kind == "lstm" else None
    ws = new((T, B, 4 * H), dtype=torch.float32, device=x.device) if need_ws and kind in ("lstm", "gru") else None
    if T * B * H == 0:
        return hs, cs, ws
    if coop is not None:
        persistent_forward(kind, gi, w_hh, b_hh, h0, c0, lengths, reverse, hs, cs, ws, *coop)
        return hs, cs, ws
    if cpu32:
        gi = gi.contiguous()
        keep = [*map(_contig, (w_hh, b_ih, b_hh, h0, c0)), lens]  # alive until the call returns
        packed, gates = _kept_packed_w_hh(kind, w_hh, T, B)
        sgt, sgb = (0, GH) if gi_rows is not None else (gi.stride(0), gi.stride(1))
        _backend.ext.cpu.rnn_sequence(KINDS[kind], T, B, H, gi.data_ptr(), sgt, sgb,
                                      *map(_ptr, keep), reverse, hs.data_ptr(), _ptr(cs), _ptr(ws),
                                      torch.get_num_threads(), _ptr(packed), gates, _ptr(gi_rows))
        return hs, cs, ws
    if backend == "triton" and _triton_rnn().fits(B, H):
        _triton_rnn().forward(kind, gi.contiguous(), w_hh.contiguous(), None if b_hh is None else b_hh.contiguous(),
                              h0, c0, None if lengths is None else lengths.contiguous(), reverse, hs, cs, ws)
        return hs, cs, ws
    h, c = h0, c0
    for t in (reversed(range(T)) if reverse else range(T)):
        gh = torch.mm(h, w_hh.t()) if h is not None else None
        if kind == "lstm" and c is None and h is not None:
            c = torch.zeros_like(h)
        run_kernel(kind, backend, False, B, H, x.dtype,
                   {"gi": gi[t], "gh": gh, "bih": None, "bhh": b_hh, "hx": h, "cx": c, "hy": hs[t],
                    "cy": None if cs is None else cs[t], "ws": None if ws is None else ws[t]})
        if lengths is not None:
            on = (t < lengths)[:, None]
            hs[t] = torch.where(on, hs[t], h if h is not None else torch.zeros_like(hs[t]))
            if cs is not None:
                cs[t] = torch.where(on, cs[t], c if c is not None else torch.zeros_like(cs[t]))
        h = hs[t]
        c = None if cs is None else cs[t]
    return hs, cs, ws


def _rows_going(lens, T, B):
    """(mask (T, B) of the rows still going at each step, each step's first row among them) where lengths never
    increase and leave a good share of the T x B rows out (a PackedSequence's random lengths: about half), else
    None: the input projection then runs on those rows alone (on the Xeon VM the projection of every row took 1.35
    of an LSTM forward's 3.7 ms at T=100 B=8 H=256)."""
    if lens is None or B < 2 or T * B < 64:
        return None
    if not bool((lens[1:] <= lens[:-1]).all()):
        return None
    going = (lens[None, :] > torch.arange(T)[:, None])  # (T, B): row b runs step t
    per_step = going.sum(1)
    total = int(per_step.sum())
    if total == 0 or total > 0.9 * T * B:  # no rows at all, or hardly any padding: the plain GEMM
        return None
    return going, (torch.cumsum(per_step, 0) - per_step).contiguous()


def _backward_steps_cpu(kind, dout, dhT, dcT, h0, c0, w_hh, hs, cs, ws, lengths, reverse, dgi, dgh):
    """The reverse-time loop in C++ (fp32); returns (dh0, dc0)."""
    T, B, H = hs.shape
    c, ptr = _contig, _ptr
    dh, dc = hs.new_empty(B, H), (hs.new_empty(B, H) if kind == "lstm" else None)
    keep = [c(dout), c(dhT), c(dcT), c(h0), c(c0), c(w_hh), c(lengths)]
    _backend.ext.cpu.rnn_sequence_backward(
        KINDS[kind], T, B, H, *map(ptr, keep[:3]), hs.data_ptr(), ptr(cs), ptr(ws), *map(ptr, keep[3:]), reverse,
        dgi.data_ptr(), ptr(dgh if kind == "gru" else None), dh.data_ptr(), ptr(dc), torch.get_num_threads())
    return dh, dc


def _backward_steps(kind, backend, dout, dhT, dcT, hprev, c0, w_hh, hs, cs, ws, lengths, reverse, dgi, dgh):
    """The reverse-time loop over the backend's fused cell backward; returns (dh0, dc0)."""
    T, B, H = hs.shape
    dt = hs.dtype
    dh = dhT.to(dt) if dhT is not None else hs.new_zeros(B, H)
    dc = (dcT.to(dt) if dcT is not None else hs.new_zeros(B, H)) if kind == "lstm" else None
    first = T - 1 if reverse else 0
    for t in (range(T) if reverse else reversed(range(T))):
        c_prev = None
        if kind == "lstm":
            c_prev = cs[t + 1 if reverse else t - 1] if t != first else (c0 if c0 is not None else hs.new_zeros(B, H))
        on = None if lengths is None else (t < lengths)[:, None]
        dh_t = dh + (dout[t] if on is None else torch.where(on, dout[t], torch.zeros_like(dout[t])))
        dhx_direct = torch.empty((B, H), dtype=dt, device=hs.device) if kind == "gru" else None
        dcx = torch.empty((B, H), dtype=dt, device=hs.device) if kind == "lstm" else None
        run_kernel(kind, backend, True, B, H, dt,
                   {"dhy": dh_t, "dcy": dc, "hx": hprev[t], "cx": c_prev, "hy": hs[t],
                    "ws": None if ws is None else ws[t], "dgi": dgi[t], "dgh": dgh[t] if kind == "gru" else None,
                    "dhx": dhx_direct, "dcx": dcx})
        if on is not None:  # rows past their length: no gate gradient, the state gradient passes through
            dgi[t] = torch.where(on, dgi[t], torch.zeros_like(dgi[t]))
            if kind == "gru":
                dgh[t] = torch.where(on, dgh[t], torch.zeros_like(dgh[t]))
        dh_new = torch.mm(dgh[t], w_hh)
        if dhx_direct is not None:
            dh_new = dh_new + dhx_direct
        if on is not None:
            dh_new = torch.where(on, dh_new, dh_t)
            if dc is not None:
                dcx = torch.where(on, dcx, dc)
        dh, dc = dh_new, dcx
    return dh, dc


def layer_backward(kind, backend, dout, dhT, dcT, x, h0, c0, w_ih, w_hh, hs, cs, ws, lengths, reverse, need):
    """Gradients (dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh): the reverse-time loop gives the gate gradients,
    then one large GEMM per weight gradient."""
    T, B, _ = x.shape
    H = w_hh.shape[1]
    GH = GATES[kind] * H
    h_first = (h0 if h0 is not None else x.new_zeros(B, H))[None]
    if backend == "cpu" and x.dtype == torch.float32 and x.is_cpu:
        # The gate gradients and the shifted states never leave this call: one reused buffer. Fresh, they cost a
        # page fault per 4 KB (LSTM T=100 B=8 H=256: 1000 faults, about 1 ms of a 12 ms training step).
        n, m = T * B * GH, T * B * H
        buf = _backend.scratch((2 * n if kind == "gru" else n) + m)
        dgi = buf[:n].view(T, B, GH)
        dgh = buf[n:2 * n].view(T, B, GH) if kind == "gru" else dgi
        hprev = buf[buf.numel() - m:].view(T, B, H)
        torch.cat([hs[1:], h_first] if reverse else [h_first, hs[:-1]], out=hprev)  # the state before step t
    else:
        dgi = torch.empty((T, B, GH), dtype=x.dtype, device=x.device)
        dgh = torch.empty((T, B, GH), dtype=x.dtype, device=x.device) if kind == "gru" else dgi
        hprev = torch.cat([hs[1:], h_first]) if reverse else torch.cat([h_first, hs[:-1]])  # the state before step t
    coop = _persistent_for(backend, kind, B, H, x) if T * B * H else None
    if coop is not None:
        dh, dc = persistent_backward(kind, dout, dhT, dcT, h0, c0, w_hh, hs, cs, ws, lengths, reverse, dgi, dgh,
                                     *coop)
        dh, dc = dh.to(x.dtype), None if dc is None else dc.to(x.dtype)
    elif backend == "cpu" and x.dtype == torch.float32 and T * B * H:
        dh, dc = _backward_steps_cpu(kind, dout, dhT, dcT, h0, c0, w_hh, hs, cs, ws, lengths, reverse, dgi, dgh)
    elif (backend == "triton" and T * B * H and _triton_rnn().fits(B, H)
          and _triton_rnn().plan(B, H, x.dtype, x.device, backward=True)[0]):
        dh, dc = _triton_rnn().backward(kind, dout, dhT, dcT if kind == "lstm" else None, h0, c0, w_hh.contiguous(),
                                        hs, cs, ws, lengths, reverse, dgi, dgh if kind == "gru" else None)
        dh, dc = dh.to(x.dtype), None if dc is None else dc.to(x.dtype)
    else:
        dh, dc = _backward_steps(kind, backend, dout, dhT, dcT, hprev, c0, w_hh, hs, cs, ws, lengths, reverse,
                                 dgi, dgh)
    flat = lambda t: t.reshape(T * B, -1)  # noqa: E731
    dx = _gemm.mm(flat(dgi), w_ih).view(T, B, -1) if need[0] else None
    dw_ih = _gemm.mm(flat(dgi).t(), flat(x)) if need[3] else None
    dw_hh = _gemm.mm(flat(dgh).t(), flat(hprev)) if need[4] else None
    db_ih = dgi.sum((0, 1)) if need[5] else None
    db_hh = dgh.sum((0, 1)) if need[6] else None
    return dx, dh if need[1] else None, dc if need[2] else None, dw_ih, dw_hh, db_ih, db_hh


def _outputs(hs, cs, lengths, reverse):
    T = hs.shape[0]
    out = hs
    if lengths is not None:
        past = torch.arange(T, device=hs.device)[:, None] >= lengths[None, :]
        out = hs.masked_fill(past[..., None], 0.0)  # one pass (torch.where also filled a tensor of zeros first)
    last = 0 if reverse else T - 1
    return out, hs[last], None if cs is None else cs[last]


class _LayerFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, kind, backend, lengths, reverse, x, h0, c0, w_ih, w_hh, b_ih, b_hh):
        hs, cs, ws = layer_forward(kind, backend, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, True)
        ctx.args = (kind, backend, lengths, reverse)
        ctx.save_for_backward(x, h0, c0, w_ih, w_hh, hs, cs, ws)
        out, hT, cT = _outputs(hs, cs, lengths, reverse)
        return out, hT.clone(), None if cT is None else cT.clone()

    @staticmethod
    @once_differentiable  # the kernels record no graph: a second derivative raises, never comes out wrong
    def backward(ctx, dout, dhT, dcT):
        kind, backend, lengths, reverse = ctx.args
        x, h0, c0, w_ih, w_hh, hs, cs, ws = ctx.saved_tensors
        grads = layer_backward(kind, backend, dout, dhT, dcT, x, h0, c0, w_ih, w_hh, hs, cs, ws, lengths, reverse,
                               ctx.needs_input_grad[4:11])
        return (None, None, None, None) + grads


# ---- torch.library custom ops (what torch.compile traces) -------------------------------------------------
def _empty0(x):
    return x.new_empty(0)


@torch.library.custom_op("crossfuse::rnn_layer", mutates_args=())
def _layer_op(kind: str, backend: str, reverse: bool, lengths: torch.Tensor | None, x: torch.Tensor,
              h0: torch.Tensor | None, c0: torch.Tensor | None, w_ih: torch.Tensor, w_hh: torch.Tensor,
              b_ih: torch.Tensor | None, b_hh: torch.Tensor | None) -> list[torch.Tensor]:
    backend = backend or _backend.choose(_op_of(kind), x.device)
    hs, cs, ws = layer_forward(kind, backend, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, True)
    out, hT, cT = _outputs(hs, cs, lengths, reverse)
    # outputs of a custom op must not alias one another
    return [out.clone() if lengths is None else out, hT.clone(), _empty0(x) if cT is None else cT.clone(), hs,
            _empty0(x) if cs is None else cs, _empty0(x) if ws is None else ws]


@_layer_op.register_fake
def _(kind, backend, reverse, lengths, x, h0, c0, w_ih, w_hh, b_ih, b_hh):
    T, B, _ = x.shape
    H = w_hh.shape[1]
    lstm, gated = kind == "lstm", kind in ("lstm", "gru")
    return [x.new_empty(T, B, H), x.new_empty(B, H), x.new_empty((B, H) if lstm else (0,)), x.new_empty(T, B, H),
            x.new_empty((T, B, H) if lstm else (0,)),
            x.new_empty((T, B, 4 * H) if gated else (0,), dtype=torch.float32 if gated else x.dtype)]


@torch.library.custom_op("crossfuse::rnn_layer_backward", mutates_args=())
def _layer_backward_op(kind: str, backend: str, reverse: bool, lengths: torch.Tensor | None, dout: torch.Tensor,
                       dhT: torch.Tensor, dcT: torch.Tensor | None, x: torch.Tensor, h0: torch.Tensor | None,
                       c0: torch.Tensor | None, w_ih: torch.Tensor, w_hh: torch.Tensor, hs: torch.Tensor,
                       cs: torch.Tensor | None, ws: torch.Tensor | None, has_b_ih: bool, has_b_hh: bool
                       ) -> list[torch.Tensor]:
    backend = backend or _backend.choose(_op_of(kind), x.device)
    need = (True, h0 is not None, c0 is not None, True, True, has_b_ih, has_b_hh)
    grads = layer_backward(kind, backend, dout, dhT, dcT, x, h0, c0, w_ih, w_hh, hs, cs, ws, lengths, reverse, need)
    return [g if g is not None else _empty0(x) for g in grads]


@_layer_backward_op.register_fake
def _(kind, backend, reverse, lengths, dout, dhT, dcT, x, h0, c0, w_ih, w_hh, hs, cs, ws, has_b_ih, has_b_hh):
    GH = w_hh.shape[0]
    shapes = [x.shape, h0.shape if h0 is not None else (0,), c0.shape if c0 is not None else (0,), w_ih.shape,
              w_hh.shape, (GH,) if has_b_ih else (0,), (GH,) if has_b_hh else (0,)]
    return [x.new_empty(s) for s in shapes]


def _setup_context(ctx, inputs, output):
    kind, backend, reverse, lengths, x, h0, c0, w_ih, w_hh, b_ih, b_hh = inputs
    _, _, _, hs, cs, ws = output
    ctx.args = (kind, backend, reverse)
    ctx.has = (h0 is not None, c0 is not None, b_ih is not None, b_hh is not None)
    ctx.save_for_backward(lengths, x, h0, c0, w_ih, w_hh, hs, cs, ws)


def _layer_op_backward(ctx, grads):
    dout, dhT, dcT = grads[:3]
    kind, backend, reverse = ctx.args
    lengths, x, h0, c0, w_ih, w_hh, hs, cs, ws = ctx.saved_tensors
    lstm, gated = kind == "lstm", kind in ("lstm", "gru")
    g = _layer_backward_op(kind, backend, reverse, lengths, dout, dhT, dcT if lstm else None, x, h0, c0, w_ih, w_hh,
                           hs, cs if lstm else None, ws if gated else None, ctx.has[2], ctx.has[3])
    return (None, None, None, None, g[0], g[1] if ctx.has[0] else None, g[2] if ctx.has[1] else None, g[3], g[4],
            g[5] if ctx.has[2] else None, g[6] if ctx.has[3] else None)


_layer_op.register_autograd(_layer_op_backward, setup_context=_setup_context)


def _check(op, kind, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{op}: expected input to be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _backend.DTYPE_CODES:
        raise TypeError(f"{op}: expected input of dtype float32, float16 or bfloat16, got {x.dtype}")
    if x.dim() != 3:
        raise ValueError(f"{op}: expected input of shape (seq_len, batch, input_size), got {tuple(x.shape)}")
    T, B, I = x.shape
    if T == 0:  # as torch.nn's layers: there is no final state of an empty sequence
        raise ValueError(f"{op}: expected a sequence length of at least 1, got input of shape {tuple(x.shape)}")
    if not isinstance(w_hh, torch.Tensor) or w_hh.dim() != 2:
        raise ValueError(f"{op}: expected w_hh to be a 2-D tensor (gates*hidden_size, hidden_size)")
    H = w_hh.shape[1]
    GH = GATES[kind] * H
    for name, t, shape in (("w_ih", w_ih, (GH, I)), ("w_hh", w_hh, (GH, H)), ("b_ih", b_ih, (GH,)),
                           ("b_hh", b_hh, (GH,)), ("h0", h0, (B, H)), ("c0", c0, (B, H))):
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: expected {name} to be a torch.Tensor, got {type(t).__name__}")
        if t.dtype != x.dtype:
            raise TypeError(f"{op}: expected {name} to have dtype {x.dtype} (the dtype of input), got {t.dtype}")
        if t.device != x.device:
            raise ValueError(f"{op}: expected {name} on device {x.device} (the device of input), got {t.device}")
        if tuple(t.shape) != shape:
            raise ValueError(f"{op}: expected {name} of shape {shape}, got {tuple(t.shape)}")
    if lengths is not None:
        if not isinstance(lengths, torch.Tensor) or lengths.dtype.is_floating_point or lengths.dtype == torch.bool:
            raise TypeError(f"{op}: expected lengths to be an integer tensor, got "
                            f"{lengths.dtype if isinstance(lengths, torch.Tensor) else type(lengths).__name__}")
        if tuple(lengths.shape) != (B,):
            raise ValueError(f"{op}: expected lengths of shape {(B,)}, got {tuple(lengths.shape)}")
        if lengths.numel() and not torch.compiler.is_compiling() and (int(lengths.min()) < 0 or int(lengths.max()) > T):
            raise ValueError(f"{op}: expected lengths in [0, {T}], got {lengths.min().item()}..{lengths.max().item()}")
        return lengths.to(device=x.device, dtype=torch.int64)
    return None


def _one_step(kind, op, input, h0, c0, w_ih, w_hh, b_ih, b_hh, backend):
    """A no-grad single step on the cpu backend that fits the cells' single call, before any other check (its
    own checks are the ones that matter there, and a decoder calls this once per token): (out, h_n, c_n), or None
    and the general path, with its full checks, runs."""
    if not (type(input) is torch.Tensor and input.is_cpu and input.ndim == 3 and input.shape[0] == 1) or (
            torch.compiler.is_compiling() or _backend.choose(op, _CPU, backend) != "cpu"):
        return None
    try:
        if _needs_grad(input, h0, c0, w_ih, w_hh, b_ih, b_hh):
            return None
        step = _cpu_step(kind, input[0], h0, c0, w_ih, w_hh, b_ih, b_hh)
    except (AttributeError, TypeError, ValueError):
        return None  # malformed arguments: the general path says what is wrong
    if step is None:
        return None
    hy, cy = step
    return hy.unsqueeze(0), hy, cy


def layer(kind, input, h0, c0, w_ih, w_hh, b_ih=None, b_hh=None, *, lengths=None, reverse=False, backend=None,
          zero_past=True):
    """One layer, one direction: (out, h_n, c_n or None). zero_past=False leaves the outputs past each length as
    they come (the state carried on) where no gradient is recorded, for a caller that drops them (the modules
    re-packing a PackedSequence): it saves a pass over the outputs."""
    op = _op_of(kind)
    if lengths is None:
        out = _one_step(kind, op, input, h0, c0, w_ih, w_hh, b_ih, b_hh, backend)
        if out is not None:
            return out
    lengths = _check(op, kind, input, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths)
    if torch.compiler.is_compiling():
        if backend == "reference":
            from crossfuse.reference.rnn import rnn_layer
            return rnn_layer(kind, input, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse)
        out, hT, cT = _layer_op(kind, backend or "", reverse, lengths, input, h0, c0, w_ih, w_hh, b_ih, b_hh)[:3]
        return out, hT, cT if kind == "lstm" else None
    chosen = _backend.choose(op, input.device, backend)
    if chosen == "reference":
        from crossfuse.reference.rnn import rnn_layer
        return rnn_layer(kind, input, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse)
    if _needs_grad(input, h0, c0, w_ih, w_hh, b_ih, b_hh):
        return _LayerFunction.apply(kind, chosen, lengths, reverse, input, h0, c0, w_ih, w_hh, b_ih, b_hh)
    hs, cs, _ = layer_forward(kind, chosen, input, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, False)
    return _outputs(hs, cs, lengths if zero_past else None, reverse)


def lstm(input, hx, w_ih, w_hh, b_ih=None, b_hh=None, *, lengths=None, reverse=False, backend=None):
    """One LSTM layer, one direction: input (T, B, I), hx (h0, c0) of (B, H) or None. Returns (out (T, B, H),
    (h_n, c_n)). lengths (B,): rows stop at their length (out 0 after it); reverse=True runs each row from its
    own last step back."""
    h0, c0 = (None, None) if hx is None else hx
    out, h, c = layer("lstm", input, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths=lengths, reverse=reverse,
                      backend=backend)
    return out, (h, c)


def gru(input, hx, w_ih, w_hh, b_ih=None, b_hh=None, *, lengths=None, reverse=False, backend=None):
    """One GRU layer, one direction (see lstm). Returns (out, h_n)."""
    out, h, _ = layer("gru", input, hx, None, w_ih, w_hh, b_ih, b_hh, lengths=lengths, reverse=reverse,
                      backend=backend)
    return out, h


def rnn(input, hx, w_ih, w_hh, b_ih=None, b_hh=None, *, nonlinearity="tanh", lengths=None, reverse=False,
        backend=None):
    """One Elman RNN layer (tanh, relu or sigmoid), one direction (see lstm). Returns (out, h_n)."""
    if nonlinearity not in ("tanh", "relu", "sigmoid"):
        raise ValueError(f"rnn: expected nonlinearity in ('tanh', 'relu', 'sigmoid'), got {nonlinearity!r}")
    out, h, _ = layer("rnn_" + nonlinearity, input, hx, None, w_ih, w_hh, b_ih, b_hh, lengths=lengths,
                      reverse=reverse, backend=backend)
    return out, h


# ---- the fused gate math with precomputed gate inputs, under autograd (for the layer-norm and projected
# variants, whose per-step pre-activations come from torch ops) ------------------------------------------------
class _GateFunction(torch.autograd.Function):
    """(hy, cy or None) from gate inputs gi (B, G*H; b_ih folded in) and gh (B, G*H; without b_hh), through the
    backend's fused cell kernel forward and backward."""

    @staticmethod
    def forward(ctx, kind, backend, gi, gh, b_hh, hx, cx):
        B, GH = gi.shape
        H = GH // GATES[kind]
        new = _backend.empty
        hy = new((B, H), dtype=gi.dtype, device=gi.device)
        cy = new((B, H), dtype=gi.dtype, device=gi.device) if kind == "lstm" else None
        ws = new((B, 4 * H), dtype=torch.float32, device=gi.device) if kind in ("lstm", "gru") else None
        run_kernel(kind, backend, False, B, H, gi.dtype,
                   {"gi": gi, "gh": gh, "bih": None, "bhh": b_hh, "hx": hx, "cx": cx, "hy": hy, "cy": cy, "ws": ws})
        ctx.kind, ctx.backend = kind, backend
        ctx.save_for_backward(hx, cx, hy, ws)
        return (hy, cy) if cy is not None else (hy, hy.new_empty(0))

    @staticmethod
    @once_differentiable  # the kernels record no graph: a second derivative raises, never comes out wrong
    def backward(ctx, dhy, dcy):
        kind, backend = ctx.kind, ctx.backend
        hx, cx, hy, ws = ctx.saved_tensors
        B, H = hy.shape
        GH = GATES[kind] * H
        dt = hy.dtype
        dgi = torch.empty((B, GH), dtype=dt, device=hy.device)
        dgh = torch.empty((B, GH), dtype=dt, device=hy.device) if kind == "gru" else None
        dhx = torch.empty((B, H), dtype=dt, device=hy.device) if kind == "gru" else None
        dcx = torch.empty((B, H), dtype=dt, device=hy.device) if kind == "lstm" else None
        run_kernel(kind, backend, True, B, H, dt,
                   {"dhy": dhy, "dcy": dcy if kind == "lstm" else None, "hx": hx, "cx": cx, "hy": hy, "ws": ws,
                    "dgi": dgi, "dgh": dgh, "dhx": dhx, "dcx": dcx})
        dgh = dgi if dgh is None else dgh
        db_hh = dgh.sum(0) if ctx.needs_input_grad[4] else None
        return None, None, dgi, dgh, db_hh, dhx, dcx


def _gates(kind, backend, gi, gh, b_hh, hx, cx):
    hy, cy = _GateFunction.apply(kind, backend, gi, gh, b_hh, hx, cx)
    return hy, (cy if kind == "lstm" else None)


def step_layer(kind, input, h0, c0, w_ih, w_hh, b_ih=None, b_hh=None, *, lengths=None, reverse=False, w_hr=None,
               ln=None, eps=1e-5, backend=None):
    """A layer as a step loop under autograd around the fused gate kernel: for LSTM projections (w_hr: h = W_hr
    (o * tanh(c))) and the layer-norm variants (ln = (gamma_ih, gamma_hh, gamma_c, beta_c) for LSTM, (gamma_ih,
    gamma_hh) for GRU: gates = LN(W_ih x; gamma_ih) + b_ih + LN(W_hh h; gamma_hh) + b_hh, and for LSTM
    h = o * tanh(LN(c; gamma_c, beta_c))). Returns (out, h_T, c_T or None)."""
    op = _op_of(kind)
    T, B, _ = input.shape
    H = w_hh.shape[0] // GATES[kind]
    P = w_hr.shape[0] if w_hr is not None else H
    backend = _backend.choose(op, input.device, backend)
    if backend == "reference":
        from crossfuse.reference.rnn import step_layer as ref
        return ref(kind, input, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths=lengths, reverse=reverse, w_hr=w_hr, ln=ln,
                   eps=eps)
    dtype = input.dtype
    if dtype != torch.float32:  # half / bfloat16: the state and every step in fp32, the result in the input dtype
        f = lambda t: None if t is None else t.float()  # noqa: E731
        out, h, c = step_layer(kind, f(input), f(h0), f(c0), f(w_ih), f(w_hh), f(b_ih), f(b_hh), lengths=lengths,
                               reverse=reverse, w_hr=f(w_hr), ln=None if ln is None else tuple(map(f, ln)), eps=eps,
                               backend=backend)
        return out.to(dtype), h.to(dtype), None if c is None else c.to(dtype)
    gi_all = torch.nn.functional.linear(input, w_ih)
    if ln is not None:
        gi_all = torch.nn.functional.layer_norm(gi_all, (gi_all.shape[-1],), ln[0], None, eps)
    if b_ih is not None:
        gi_all = gi_all + b_ih
    h = h0 if h0 is not None else input.new_zeros(B, P)
    c = (c0 if c0 is not None else input.new_zeros(B, H)) if kind == "lstm" else None
    outs = [None] * T
    for t in (reversed(range(T)) if reverse else range(T)):
        gh = torch.mm(h, w_hh.t())
        if ln is not None:
            gh = torch.nn.functional.layer_norm(gh, (gh.shape[-1],), ln[1], None, eps)
        if kind == "lstm" and ln is not None:  # o * tanh(LN(c')): the kernel gives c', torch the rest
            _, c2 = _gates(kind, backend, gi_all[t], gh, b_hh, h, c)
            o = torch.sigmoid(gi_all[t, :, 3 * H:] + gh[:, 3 * H:] + (0 if b_hh is None else b_hh[3 * H:]))
            h2 = o * torch.tanh(torch.nn.functional.layer_norm(c2, (H,), ln[2], ln[3], eps))
        else:
            h2, c2 = _gates(kind, backend, gi_all[t], gh, b_hh, h if kind == "gru" else None, c)
        if w_hr is not None:
            h2 = torch.mm(h2, w_hr.t())
        if lengths is not None:
            on = (t < lengths)[:, None]
            h2 = torch.where(on, h2, h)
            c2 = torch.where(on, c2, c) if c is not None else None
            outs[t] = torch.where(on, h2, torch.zeros_like(h2))
        else:
            outs[t] = h2
        h, c = h2, c2
    out = torch.stack(outs) if T else input.new_zeros(0, B, P)
    return out, h, c
