"""Triton helpers shared by the crossfuse kernels: fp32 activations, optional strided loads, the launch
configs of the elementwise kernels and the specs the AOT compile check walks."""
import os

import torch
import triton
import triton.language as tl

# (BLOCK, num_warps) the elementwise launchers choose from; the AOT check compiles each.
ELEMENTWISE_CONFIGS = ((256, 4), (1024, 8))
_TL_TYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def dot_flags(dtype) -> dict:
    """DOT_F32 / PREC for the kernels' tl.dot: fp32 operands for bf16 under the interpreter (it multiplies bf16
    dot operands as raw bits, triton#11584); tf32 for fp32 only where torch allows it for matmuls."""
    tf32 = dtype == torch.float32 and not interpreted() and torch.backends.cuda.matmul.allow_tf32
    return dict(DOT_F32=interpreted() and dtype == torch.bfloat16, PREC="tf32" if tf32 else "ieee")


def pick_elementwise_config(H: int):
    return ELEMENTWISE_CONFIGS[0] if H <= 256 else ELEMENTWISE_CONFIGS[1]


# Divisions use the approximate (2 ulp) fp32 divide: the IEEE one branches to a subroutine call whose
# register saves show up as stack bytes in the AOT check.
@triton.jit
def sigmoid(x):
    return tl.fdiv(tl.full(x.shape, 1.0, tl.float32), 1.0 + tl.exp(-x))


@triton.jit
def tanh(x):
    # sign(x) (1 - e) / (1 + e), e = exp(-2|x|): no overflow, no cancellation for large |x|
    e = tl.exp(-2.0 * tl.abs(x))
    t = tl.fdiv(1.0 - e, 1.0 + e)
    return tl.where(x < 0, -t, t)


@triton.jit
def rnn_act(x, ACT: tl.constexpr):
    """The Elman cell's activation: 0 tanh, 1 relu, 2 sigmoid."""
    if ACT == 0:
        y = tanh(x)
    elif ACT == 1:
        y = tl.maximum(x, 0.0)
    else:
        y = sigmoid(x)
    return y


@triton.jit
def rnn_act_backward(dy, y, ACT: tl.constexpr):
    """dy * act'(x), through the output y = act(x)."""
    if ACT == 0:
        d = dy * (1.0 - y * y)
    elif ACT == 1:
        d = tl.where(y > 0.0, dy, 0.0)
    else:
        d = dy * y * (1.0 - y)
    return d


@triton.jit
def row_col(B, H, BLOCK: tl.constexpr):
    """(row, columns, mask) of this program's block of a (B, H) grid: grid axis 0 is the row, axis 1 the
    column block. No integer division (a 64-bit one is a slow subroutine call on the GPU); int64 offsets."""
    b = tl.program_id(0).to(tl.int64)
    j = tl.program_id(1).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    return b, j, j < H


@triton.jit
def load(ptr, s0, s1, b, col, mask, HAS: tl.constexpr):
    """fp32 values of an optional strided 2-D tensor; zeros when absent."""
    if HAS:
        return tl.load(ptr + b * s0 + col * s1, mask=mask, other=0.0).to(tl.float32)
    else:
        return (col * 0).to(tl.float32)


@triton.jit
def store(ptr, s0, s1, b, col, mask, val, HAS: tl.constexpr = True):
    if HAS:
        if ptr.dtype.element_ty == tl.bfloat16:
            # Round to nearest even by hand: the interpreter's fp32 -> bf16 cast truncates. On a GPU the
            # value is already representable, so the cast below is exact and the result the same.
            u = val.to(tl.uint32, bitcast=True)
            u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
            val = u.to(tl.float32, bitcast=True)
        tl.store(ptr + b * s0 + col * s1, val.to(ptr.dtype.element_ty), mask=mask)


def slot_args(views: dict, names, dummy: torch.Tensor):
    """(tensor, row stride, column stride) per slot, and HAS_<SLOT> flags; biases broadcast over rows."""
    args, flags = [], {}
    for name in names:
        t = views.get(name)
        flags["HAS_" + name.upper()] = t is not None
        if t is None:
            args += [dummy, 0, 0]
        elif t.dim() == 1:
            args += [t, 0, t.stride(0)]
        else:
            args += [t, t.stride(0), t.stride(1)]
    return args, flags


def launch_elementwise(kernel, names, views, B, H, extra_constexprs=None):
    n = B * H
    if n == 0:
        return
    dummy = next(t for t in views.values() if t is not None)
    args, flags = slot_args(views, names, dummy)
    block, warps = pick_elementwise_config(H)
    grid = (B, triton.cdiv(H, block))
    kernel[grid](*args, B, H, **flags, **(extra_constexprs or {}), BLOCK=block, num_warps=warps)


def aot_specs(name, kernel, names, ws_slots=("ws",), extra_constexprs=None):
    """Every (dtype, config) the launcher can choose, all optional slots present (the heaviest variant)."""
    specs = []
    for dtype, tl_t in _TL_TYPES.items():
        for block, warps in ELEMENTWISE_CONFIGS:
            sig, const = {}, {}
            for s in names:
                sig[s] = "*fp32" if s in ws_slots else "*" + tl_t
                sig[s + "_s0"] = "i32"
                sig[s + "_s1"] = "i32"
            sig["B"] = sig["H"] = "i32"
            for s in names:
                sig["HAS_" + s.upper()] = "constexpr"
                const["HAS_" + s.upper()] = True
            for k, v in (extra_constexprs or {}).items():
                sig[k] = "constexpr"
                const[k] = v
            sig["BLOCK"] = "constexpr"
            const["BLOCK"] = block
            specs.append(dict(name=name, kernel=kernel, signature=sig, constexprs=const, num_warps=warps,
                              num_stages=1, config=f"{dtype}".replace("torch.", "") + f" BLOCK={block} warps={warps}"))
    return specs
