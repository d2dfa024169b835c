"""Machinery shared by the fused recurrent cells (rnn_cell, lstm_cell, gru_cell).

The two GEMMs run in torch; the gate math (bias adds, activations, state update) is one fused kernel
per backend, forward and backward; on the cpu backend a small fp32 step's forward is one C++ call, the GEMVs
included. Three entry paths share `cell_forward` / `cell_backward`: no-grad eager calls them directly (lean:
the op-call overhead matters at small shapes), eager autograd goes through `_CellFunction`, and torch.compile
sees a `torch.library.custom_op`.
"""
from __future__ import annotations

import importlib
import os
import weakref

import torch

from crossfuse import _backend
from crossfuse._autograd import once_differentiable
from crossfuse.ops import _gemm

KINDS = {"rnn_tanh": 0, "rnn_relu": 1, "rnn_sigmoid": 2, "lstm": 3, "gru": 4}
GATES = {"rnn_tanh": 1, "rnn_relu": 1, "rnn_sigmoid": 1, "lstm": 4, "gru": 3}
OP_OF = {"rnn_tanh": "rnn_cell", "rnn_relu": "rnn_cell", "rnn_sigmoid": "rnn_cell", "lstm": "lstm_cell", "gru": "gru_cell"}
# Argument slots, in the order of csrc/include/crossfuse/cell.h CellSlot.
SLOTS = ("gi", "gh", "bih", "bhh", "hx", "cx", "hy", "cy", "ws", "dhy", "dcy", "dgi", "dgh", "dhx", "dcx")
_SLOT = {name: i for i, name in enumerate(SLOTS)}
BACKENDS = ("reference", "triton", "cuda", "cpu")
for _op in ("rnn_cell", "lstm_cell", "gru_cell"):
    _backend.register_op(_op, BACKENDS)

_triton_modules: dict[str, object] = {}


def _pack(views: dict) -> list[int]:
    out = [0] * (3 * len(SLOTS))
    for name, t in views.items():
        if t is None:
            continue
        i = 3 * _SLOT[name]
        out[i] = t.data_ptr()
        if t.dim() == 1:  # a bias: every row reads the same vector
            out[i + 2] = t.stride(0)
        else:
            out[i + 1], out[i + 2] = t.stride()
    return out


def run_kernel(kind: str, backend: str, backward: bool, B: int, H: int, dtype: torch.dtype, views: dict) -> None:
    op = OP_OF[kind]
    if backend == "triton":
        mod = _triton_modules.get(op)
        if mod is None:
            mod = _triton_modules[op] = importlib.import_module(f"crossfuse.kernels.{op}")
        mod.launch(kind, backward, B, H, views)
        return
    args = (KINDS[kind], _backend.DTYPE_CODES[dtype], B, H, backward, _pack(views))
    if backend == "cpu":
        getattr(_backend.ext.cpu, op)(*args, torch.get_num_threads())
    else:
        device = next(t for t in views.values() if t is not None).device
        getattr(_backend.ext.cuda, op)(*args, _backend.cuda_stream(device))


def cell_forward(kind, backend, x, hx, cx, w_ih, w_hh, b_ih, b_hh, need_ws, plan=None):
    """Fused forward of one step: returns (hy, cy or None, workspace or None). On the cpu backend a step that
    fits the single-call kernel (fp32, small batch) is that one call, the GEMVs included (`plan`: its
    _cpu_step plan, where the caller has it)."""
    if backend == "cpu":
        out = _cpu_step(kind, x, hx, cx, w_ih, w_hh, b_ih, b_hh, need_ws, plan)
        if out is not None:
            return out if need_ws else (*out, None)
    B, H = x.shape[0], w_hh.shape[1]
    new = _backend.empty
    gi = torch.mm(x, w_ih.t())
    gh = None
    if hx is not None:
        if kind == "gru":  # r scales only the recurrent n-part, so gh stays separate
            gh = torch.mm(hx, w_hh.t())
        else:
            gi.addmm_(hx, w_hh.t())
    hy = new((B, H), dtype=x.dtype, device=x.device)
    cy = new((B, H), dtype=x.dtype, device=x.device) if kind == "lstm" else None
    ws = None
    if need_ws and kind in ("lstm", "gru"):
        ws = new((B, 4 * H), dtype=torch.float32, device=x.device)
    run_kernel(kind, backend, False, B, H, x.dtype,
               {"gi": gi, "gh": gh, "bih": b_ih, "bhh": b_hh, "hx": hx, "cx": cx, "hy": hy, "cy": cy, "ws": ws})
    return hy, cy, ws


def cell_backward(kind, backend, dhy, dcy, x, hx, cx, w_ih, w_hh, hy, ws, need):
    """Gradients (dx, dhx, dcx, dw_ih, dw_hh, db_ih, db_hh); `need` says which are wanted (None if not)."""
    B, H = x.shape[0], w_hh.shape[1]
    GH = GATES[kind] * H
    new = _backend.empty
    dgi = new((B, GH), dtype=x.dtype, device=x.device)
    dgh = new((B, GH), dtype=x.dtype, device=x.device) if kind == "gru" else None
    dhx_direct = new((B, H), dtype=x.dtype, device=x.device) if kind == "gru" and hx is not None and need[1] else None
    dcx = new((B, H), dtype=x.dtype, device=x.device) if kind == "lstm" and cx is not None and need[2] else None
    run_kernel(kind, backend, True, B, H, x.dtype,
               {"dhy": dhy, "dcy": dcy, "hx": hx, "cx": cx, "hy": hy, "ws": ws,
                "dgi": dgi, "dgh": dgh, "dhx": dhx_direct, "dcx": dcx})
    dgh = dgi if dgh is None else dgh
    mm = _gemm.mm if backend == "cpu" else torch.mm  # crossfuse's GEMM for fp32 (torch's below 16 rows, or else)
    dx = mm(dgi, w_ih) if need[0] else None
    dhx = None
    if hx is not None and need[1]:
        dhx = mm(dgh, w_hh)
        if dhx_direct is not None:
            dhx += dhx_direct
    dw_ih = mm(dgi.t(), x) if need[3] else None
    dw_hh = None
    if need[4]:
        dw_hh = mm(dgh.t(), hx) if hx is not None else torch.zeros_like(w_hh)
    db_ih = dgi.sum(0) if need[5] else None
    db_hh = None
    if need[6]:  # one sum where both biases see the same gates (all but GRU); each gradient its own tensor
        db_hh = db_ih.clone() if db_ih is not None and dgh is dgi else dgh.sum(0)
    return dx, dhx, dcx, dw_ih, dw_hh, db_ih, db_hh


class _CellFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, kind, backend, x, hx, cx, w_ih, w_hh, b_ih, b_hh, plan=None):
        hy, cy, ws = cell_forward(kind, backend, x, hx, cx, w_ih, w_hh, b_ih, b_hh, True, plan)
        ctx.kind, ctx.backend = kind, backend
        ctx.save_for_backward(x, hx, cx, w_ih, w_hh, hy, ws)
        return (hy, cy) if cy is not None else hy

    @staticmethod
    @once_differentiable  # the kernels record no graph: a second derivative raises, never comes out wrong
    def backward(ctx, dhy, dcy=None):
        grads = cell_backward(ctx.kind, ctx.backend, dhy, dcy, *ctx.saved_tensors, ctx.needs_input_grad[2:9])
        return (None, None, *grads, None)


def _define_custom_op(op: str):
    """crossfuse::<op> and crossfuse::<op>_backward, with fake and autograd registrations."""
    name = f"crossfuse::{op}"

    @torch.library.custom_op(name, mutates_args=())
    def fwd(kind: str, backend: str, x: torch.Tensor, hx: torch.Tensor | None, cx: torch.Tensor | None,
            w_ih: torch.Tensor, w_hh: torch.Tensor, b_ih: torch.Tensor | None, b_hh: torch.Tensor | None
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        backend = backend or _backend.choose(op, x.device)
        hy, cy, ws = cell_forward(kind, backend, x, hx, cx, w_ih, w_hh, b_ih, b_hh, True)
        return hy, x.new_empty(0) if cy is None else cy, x.new_empty(0) if ws is None else ws

    @fwd.register_fake
    def _(kind, backend, x, hx, cx, w_ih, w_hh, b_ih, b_hh):
        B, H = x.shape[0], w_hh.shape[1]
        hy = x.new_empty((B, H))
        cy = x.new_empty((B, H) if kind == "lstm" else (0,))
        ws = x.new_empty((B, 4 * H) if kind in ("lstm", "gru") else (0,), dtype=torch.float32 if kind in ("lstm", "gru") else x.dtype)
        return hy, cy, ws

    @torch.library.custom_op(f"{name}_backward", mutates_args=())
    def bwd(kind: str, backend: str, dhy: torch.Tensor | None, dcy: torch.Tensor | None, x: torch.Tensor,
            hx: torch.Tensor | None, cx: torch.Tensor | None, w_ih: torch.Tensor, w_hh: torch.Tensor,
            hy: torch.Tensor, ws: torch.Tensor | None, has_b_ih: bool, has_b_hh: bool) -> list[torch.Tensor]:
        backend = backend or _backend.choose(op, x.device)
        need = (True, hx is not None, cx is not None, True, True, has_b_ih, has_b_hh)
        grads = cell_backward(kind, backend, dhy, dcy, x, hx, cx, w_ih, w_hh, hy, ws, need)
        return [g if g is not None else x.new_empty(0) for g in grads]

    @bwd.register_fake
    def _(kind, backend, dhy, dcy, x, hx, cx, w_ih, w_hh, hy, ws, has_b_ih, has_b_hh):
        GH = w_hh.shape[0]
        shapes = [x.shape, hx.shape if hx is not None else (0,), cx.shape if cx is not None else (0,),
                  w_ih.shape, w_hh.shape, (GH,) if has_b_ih else (0,), (GH,) if has_b_hh else (0,)]
        return [x.new_empty(s) for s in shapes]

    def setup_context(ctx, inputs, output):
        kind, backend, x, hx, cx, w_ih, w_hh, b_ih, b_hh = inputs
        hy, _, ws = output
        ctx.kind, ctx.backend = kind, backend
        ctx.has_b = (b_ih is not None, b_hh is not None)
        ctx.save_for_backward(x, hx, cx, w_ih, w_hh, hy, ws)

    def backward(ctx, dhy, dcy, dws):
        x, hx, cx, w_ih, w_hh, hy, ws = ctx.saved_tensors
        lstm, gated = ctx.kind == "lstm", ctx.kind in ("lstm", "gru")
        g = bwd(ctx.kind, ctx.backend, dhy, dcy if lstm else None, x, hx, cx, w_ih, w_hh, hy,
                ws if gated else None, *ctx.has_b)
        return (None, None, g[0], g[1] if hx is not None else None, g[2] if cx is not None else None,
                g[3], g[4], g[5] if ctx.has_b[0] else None, g[6] if ctx.has_b[1] else None)

    fwd.register_autograd(backward, setup_context=setup_context)
    return fwd


_CUSTOM_OPS = {op: _define_custom_op(op) for op in ("rnn_cell", "lstm_cell", "gru_cell")}


_F32 = torch.float32
_CPU = torch.device("cpu")
# The C++ side's limit. Up to it the single-call step beats torch's two GEMMs at every hidden size measured on
# the 2-core dev CPU (LSTM, H 128 to 2048: 1.65x to 3.8x at batch <= 16, 1.09x to 1.46x at 32 to 64).
_STEP_MAX_BATCH = _backend.ext.cpu.cell_step_max_batch if _backend.ext is not None else 0


def _cpu_step(kind, x, hx, cx, w_ih, w_hh, b_ih, b_hh, need_ws=False, plan=None, run=True):
    """The single-call C++ step (cpu backend, fp32, small batch, unit-stride rows; x a 2-D CPU tensor, the
    callers' test): (hy, cy), or with `need_ws` (hy, cy, ws), ws the activated gates the backward reads; None
    where it does not take these arguments (the general path, with its full checks, runs instead). With
    run=False only the checks: the plan to pass back as `plan` (which skips them), or None.
    At these sizes the Python around the kernel costs as much as the kernel: one function, the weights' checks
    cached (_step_weights) and every check here a cheap attribute test (about 0.1 us each)."""
    if plan is None:
        f32 = _F32
        if x.dtype is not f32:
            return None
        B, I = x.shape
        sx = x.stride()
        if B > _STEP_MAX_BATCH or sx[1] != 1:
            return None
        w = _step_weights(kind, w_ih, w_hh, b_ih, b_hh, I, B)
        if w is None:
            return None
        H = w[0]
        sh = sc = (0, 1)
        if hx is not None and (hx.dtype is not f32 or not hx.is_cpu or hx.shape != (B, H)
                               or (sh := hx.stride())[1] != 1):
            return None
        if cx is not None and (cx.dtype is not f32 or not cx.is_cpu or cx.shape != (B, H)
                               or (sc := cx.stride())[1] != 1):
            return None
        if not run:
            return B, I, H, sx, sh, sc, w
    else:
        B, I, H, sx, sh, sc, w = plan
    if _backend.FILL_NAN:
        hy = x.new_full((B, H), float("nan"))
        cy = x.new_full((B, H), float("nan")) if kind == "lstm" else None
    else:  # new_empty with the sizes as arguments: a third of torch.empty(shape, dtype=, device=)'s cost
        hy = x.new_empty(B, H)
        cy = x.new_empty(B, H) if kind == "lstm" else None
    ws = _backend.empty((B, 4 * H), dtype=_F32, device=_CPU) if need_ws and kind in ("lstm", "gru") else None
    _backend.ext.cpu.cell_step(
        KINDS[kind], B, I, H, x.data_ptr(), sx[0], 0 if hx is None else hx.data_ptr(), sh[0],
        0 if cx is None else cx.data_ptr(), sc[0], *w[1], hy.data_ptr(), H, 0 if cy is None else cy.data_ptr(), H,
        0 if ws is None else ws.data_ptr(), torch.get_num_threads())
    return (hy, cy, ws) if need_ws else (hy, cy)


# The single-call step checks the weights once per set of tensors, their shapes, version counters and storage
# (an in-place update, an optimizer step or a `.data` swap starts over), and keeps what it found:
# id(w_hh) -> [key, weakrefs to w_ih, b_ih, b_hh (None for no bias), _step_weights' answer, packed copies]. The
# weakrefs, not ids, tell a tensor made anew each call (whose memory and id may be the last one's) from the same
# tensor.
_STEP_WEIGHTS: dict[int, list] = {}
# Weights repacked by blocks of hidden units (P[block][k][gate][unit], as the sequence's recurrence streams them; an
# RNN's blocks of 32 units as 4 gates of 8): every multiply-add then takes a whole vector of units, where the row-major
# weights need a horizontal sum per unit. GRU's 3 gates are padded to 4 (ext.cpu.cell_packed_gates), so its rows of 32
# weights run on the same 512-bit kernels; with 3 gates of 8 units they ran slower than the row-major weights at B=64
# H=1024 (5.8 ms against 4.3). On the 2-core Xeon dev VM (AVX-512), forward steps: LSTM B=8 H=256 43 us against 77, B=64
# H=1024 4.2 ms against 5.7 (at the AVX2 level 72 us against 109, 8.2 ms against 9.8); GRU B=8 H=256 42-43 us against
# 58. GRU's only up to one pass of rows (16, ext.cpu.cell_pass_rows; the C++ step's rule too): at B=64 H=1024 they ran
# 7% slower at the AVX2 level, and 15-20% slower with AVX-512 once other work had taken them out of cache. Made on the
# second call that sees the same weights, so a loop that updates them every call never pays for a copy it does not
# reuse. The copies cost as much memory as the weights (GRU's a third more); CROSSFUSE_CPU_PACK_WEIGHTS=0 turns them
# off.
_PACK_WEIGHTS = os.environ.get("CROSSFUSE_CPU_PACK_WEIGHTS", "1") != "0"
_PACK_GRU_MAX_BATCH = _backend.ext.cpu.cell_pass_rows if _backend.ext is not None else 0


def _step_weights(kind, w_ih, w_hh, b_ih, b_hh, I, B):
    """(H, pointers to w_ih, w_hh, b_ih, b_hh and the packed w_ih, w_hh (0 for none), the packed copies or None)
    if the single-call step takes these weights for input size I (batch B), else None. The caller holds the result until its
    call returns: another thread may drop the entry meanwhile, never the copies it points to."""
    try:
        key = (w_ih._version, w_hh._version, w_ih.data_ptr(), w_hh.data_ptr(), w_ih.shape, w_hh.shape, I,
               0 if b_ih is None else b_ih.data_ptr(), 0 if b_hh is None else b_hh.data_ptr())
    except (AttributeError, RuntimeError):  # not tensors, or inference tensors (no version counter): not cached
        return _check_step_weights(kind, w_ih, w_hh, b_ih, b_hh, I)
    e = _STEP_WEIGHTS.get(id(w_hh))  # an entry here is w_hh's: its finalizer drops it
    # (a bias that is None now and in the key has pointer 0 in both: a ref to dereference only for a tensor)
    if (e is not None and e[0] == key and e[1]() is w_ih and (b_ih is None or e[2]() is b_ih)
            and (b_hh is None or e[3]() is b_hh)):
        w = e[4]
        if (w is not None and e[5] is None and _PACK_WEIGHTS and I
                and (kind != "gru" or B <= _PACK_GRU_MAX_BATCH)):
            H = w[0]  # seen twice unchanged: worth a copy
            packed = (_pack_weight(w_ih, kind, H, I), _pack_weight(w_hh, kind, H, H))
            if e[5] is None:  # the packing let other threads run: the first copy made is the one kept
                e[5] = packed
                e[4] = (H, (*w[1][:4], packed[0].data_ptr(), packed[1].data_ptr()), packed)
            w = e[4]
        return w
    if e is None:
        weakref.finalize(w_hh, _STEP_WEIGHTS.pop, id(w_hh), None)
    w = _check_step_weights(kind, w_ih, w_hh, b_ih, b_hh, I)
    ref = lambda t: None if t is None else weakref.ref(t)  # noqa: E731
    _STEP_WEIGHTS[id(w_hh)] = [key, weakref.ref(w_ih), ref(b_ih), ref(b_hh), w, None]
    return w


def _check_step_weights(kind, w_ih, w_hh, b_ih, b_hh, I):
    f32 = _F32
    GH, H = w_hh.shape
    if (GH != GATES[kind] * H or w_hh.dtype is not f32 or not w_hh.is_cpu or not w_hh.is_contiguous()
            or w_ih.dtype is not f32 or not w_ih.is_cpu or not w_ih.is_contiguous() or w_ih.shape != (GH, I)):
        return None
    for b in (b_ih, b_hh):
        if b is not None and (b.dtype is not f32 or not b.is_cpu or b.shape != (GH,) or b.stride(0) != 1):
            return None
    ptr = lambda t: 0 if t is None else t.data_ptr()  # noqa: E731
    return H, (w_ih.data_ptr(), w_hh.data_ptr(), ptr(b_ih), ptr(b_hh), 0, 0), None  # no packed copies (yet)


def _pack_weight(w, kind, H, K):
    cpu = _backend.ext.cpu
    out = torch.empty(cpu.cell_packed_floats(KINDS[kind], H, K), dtype=_F32)
    cpu.pack_cell_weight(KINDS[kind], H, K, w.data_ptr(), out.data_ptr())
    return out


# The cuda backend's single-launch step (csrc/cuda/cell_step.cu): up to this many batch rows; none with
# CROSSFUSE_CUDA_CELL_STEP=0 (a kill switch: the general path instead).
_CUDA_STEP_MAX_BATCH = (_backend.ext.cell_step_max_batch if _backend.ext is not None
                        and os.environ.get("CROSSFUSE_CUDA_CELL_STEP", "1") != "0" else 0)


def _try_cuda_step(kind, x, hx, cx, w_ih, w_hh, b_ih, b_hh, run):
    """A no-grad call that fits the cuda backend's single-launch step (batch <= 32, rows of unit column stride,
    contiguous weights and biases, one dtype and device) as one kernel: both GEMVs and the gates, where the general
    path launches two GEMMs and the gate kernel and the host's launches are the time. `run(kind, dtype, B, I, H,
    pointers, strides)` launches it (the tests pass the host-thread double). None where it does not fit: the general
    path, with its full checks, runs instead."""
    dt, dev = x.dtype, x.device
    code = _backend.DTYPE_CODES.get(dt)
    if code is None or x.ndim != 2 or w_hh.ndim != 2:
        return None
    B, I = x.shape
    GH, H = w_hh.shape
    if (B > _CUDA_STEP_MAX_BATCH or GH != GATES[kind] * H or (I > 1 and x.stride(1) != 1)
            or (cx is not None and kind != "lstm")):
        return None
    for w, shape in ((w_ih, (GH, I)), (w_hh, (GH, H)), (b_ih, (GH,)), (b_hh, (GH,))):
        if w is not None and (w.dtype != dt or w.device != dev or w.shape != shape or not w.is_contiguous()):
            return None
    for s in (hx, cx):
        if s is not None and (s.dtype != dt or s.device != dev or s.shape != (B, H) or (H > 1 and s.stride(1) != 1)):
            return None
    new = (lambda: x.new_full((B, H), float("nan"))) if _backend.FILL_NAN else (lambda: x.new_empty(B, H))
    hy = new()
    cy = new() if kind == "lstm" else None
    ptr = lambda t: 0 if t is None else t.data_ptr()  # noqa: E731
    run(KINDS[kind], code, B, I, H,
        [x.data_ptr(), ptr(hx), ptr(cx), w_ih.data_ptr(), w_hh.data_ptr(), ptr(b_ih), ptr(b_hh), hy.data_ptr(), ptr(cy)],
        [x.stride(0), 0 if hx is None else hx.stride(0), 0 if cx is None else cx.stride(0)])
    return hy, cy


def _cuda_step(kind, x, hx, cx, w_ih, w_hh, b_ih, b_hh):
    """_try_cuda_step on x's GPU when that is the current device (the launch goes to the current one)."""
    if x.get_device() != torch.cuda.current_device():
        return None
    stream = _backend.cuda_stream(x.device)
    return _try_cuda_step(kind, x, hx, cx, w_ih, w_hh, b_ih, b_hh,
                          lambda *args: _backend.ext.cuda.cell_step(*args, stream))


# ---- validation -------------------------------------------------------------------------------
def _check_tensor(op, name, t, dtype, device, shape):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: expected {name} to be a torch.Tensor, got {type(t).__name__}")
    if t.dtype != dtype:
        raise TypeError(f"{op}: expected {name} to have dtype {dtype} (the dtype of input), got {t.dtype}")
    if t.device != device:
        raise ValueError(f"{op}: expected {name} on device {device} (the device of input), got {t.device}")
    if tuple(t.shape) != shape:
        raise ValueError(f"{op}: expected {name} of shape {shape}, got {tuple(t.shape)}")


def _validate(op, kind, input, hx, cx, w_ih, w_hh, b_ih, b_hh):
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"{op}: expected input to be a torch.Tensor, got {type(input).__name__}")
    if input.dtype not in _backend.DTYPE_CODES:
        raise TypeError(f"{op}: expected input of dtype float32, float16 or bfloat16, got {input.dtype}")
    if input.dim() not in (1, 2):
        raise ValueError(f"{op}: expected input to be 1-D (unbatched) or 2-D (batch, input_size), got {input.dim()}-D")
    if not isinstance(w_hh, torch.Tensor) or w_hh.dim() != 2:
        raise ValueError(f"{op}: expected w_hh to be a 2-D tensor (gates*hidden_size, hidden_size)")
    unbatched = input.dim() == 1
    B, I = (1, input.shape[0]) if unbatched else input.shape
    H = w_hh.shape[1]
    GH = GATES[kind] * H
    dtype, device = input.dtype, input.device
    _check_tensor(op, "w_hh", w_hh, dtype, device, (GH, H))
    _check_tensor(op, "w_ih", w_ih, dtype, device, (GH, I))
    state_shape = (H,) if unbatched else (B, H)
    for name, t, shape in (("b_ih", b_ih, (GH,)), ("b_hh", b_hh, (GH,)), ("hx", hx, state_shape), ("cx", cx, state_shape)):
        if t is not None:
            _check_tensor(op, name, t, dtype, device, shape)
    return unbatched


def _needs_grad(x, hx, cx, w_ih, w_hh, b_ih, b_hh):
    return torch.is_grad_enabled() and (w_hh.requires_grad or w_ih.requires_grad or x.requires_grad or any(
        t is not None and t.requires_grad for t in (hx, cx, b_ih, b_hh)))


def cell(kind, input, hx, cx, w_ih, w_hh, b_ih, b_hh, backend, module=None):
    """Validates, picks the backend and runs one cell step. hx/cx may be None (zeros). `module`: the calling
    nn cell, whose torch.nn-style input checks run when the fast path does not take the call."""
    op = OP_OF[kind]
    compiling = torch.compiler.is_compiling()
    chosen = None
    # The single-call CPU step, tried before any other check: at small sizes every microsecond of Python shows.
    if not compiling and type(input) is torch.Tensor and input.is_cpu and input.ndim == 2:
        # choose()'s cached answer, read here: a call less per step
        chosen = _backend._reasons.get((op, "cpu", _backend._local.backend if backend is None else backend)) \
            or _backend.choose(op, _CPU, backend)
        if chosen == "cpu":
            try:
                if not _needs_grad(input, hx, cx, w_ih, w_hh, b_ih, b_hh):
                    out = _cpu_step(kind, input, hx, cx, w_ih, w_hh, b_ih, b_hh)
                    if out is not None:
                        return out
                    plan = None
                else:
                    plan = _cpu_step(kind, input, hx, cx, w_ih, w_hh, b_ih, b_hh, run=False)
            except (AttributeError, TypeError, ValueError):
                plan = None  # malformed arguments: the general path says what is wrong
            if plan is not None:  # the arguments are checked: the step runs in autograd's forward
                out = _CellFunction.apply(kind, "cpu", input, hx, cx, w_ih, w_hh, b_ih, b_hh, plan)
                return out if kind == "lstm" else (out, None)
    elif not compiling and type(input) is torch.Tensor and input.is_cuda and input.ndim == 2:
        chosen = _backend.choose(op, input.device, backend)
        if chosen == "cuda" and not _needs_grad(input, hx, cx, w_ih, w_hh, b_ih, b_hh):
            try:
                out = _cuda_step(kind, input, hx, cx, w_ih, w_hh, b_ih, b_hh)
            except (AttributeError, TypeError, ValueError):
                out = None  # malformed arguments: the general path says what is wrong
            if out is not None:
                return out
    if module is not None:
        from crossfuse.nn._cell import check_input
        check_input(module, input, [t for t in (hx, cx) if t is not None])
    unbatched = _validate(op, kind, input, hx, cx, w_ih, w_hh, b_ih, b_hh)
    x = input
    if unbatched:
        x = input.unsqueeze(0)
        hx = None if hx is None else hx.unsqueeze(0)
        cx = None if cx is None else cx.unsqueeze(0)

    if compiling:
        hy, cy, _ = _CUSTOM_OPS[op](kind, backend or "", x, hx, cx, w_ih, w_hh, b_ih, b_hh)
        cy = cy if kind == "lstm" else None
    else:
        backend = chosen or _backend.choose(op, x.device, backend)
        if backend == "reference":
            hy, cy = _reference(kind, x, hx, cx, w_ih, w_hh, b_ih, b_hh)
        elif _needs_grad(x, hx, cx, w_ih, w_hh, b_ih, b_hh):
            out = _CellFunction.apply(kind, backend, x, hx, cx, w_ih, w_hh, b_ih, b_hh)
            hy, cy = out if kind == "lstm" else (out, None)
        else:
            hy, cy = cell_forward(kind, backend, x, hx, cx, w_ih, w_hh, b_ih, b_hh, False)[:2]
    if unbatched:
        hy = hy.squeeze(0)
        cy = None if cy is None else cy.squeeze(0)
    return hy, cy


def _reference(kind, x, hx, cx, w_ih, w_hh, b_ih, b_hh):
    from crossfuse import reference
    if kind == "lstm":
        state = None if hx is None and cx is None else (
            hx if hx is not None else torch.zeros_like(cx), cx if cx is not None else torch.zeros_like(hx))
        return reference.lstm_cell(x, state, w_ih, w_hh, b_ih, b_hh)
    if kind == "gru":
        return reference.gru_cell(x, hx, w_ih, w_hh, b_ih, b_hh), None
    return reference.rnn_cell(x, hx, w_ih, w_hh, b_ih, b_hh, nonlinearity=kind[4:]), None
