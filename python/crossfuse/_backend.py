"""The one dispatch mechanism: device -> available backends -> choice.

Backends: ``reference`` (pure PyTorch, any device), ``triton`` (CUDA tensors; CPU tensors only when
``TRITON_INTERPRET=1``), ``cuda`` (C++/CUDA extension) and ``cpu`` (C++ extension).
"""
from __future__ import annotations

import contextlib
import importlib
import os
import threading

import torch

BACKENDS = ("reference", "triton", "cuda", "cpu")
# Fastest first; an op only considers the backends it implements.
PREFERENCE = {"cuda": ("cuda", "triton", "reference"), "cpu": ("cpu", "reference")}
DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}

_OPS: dict[str, tuple[str, ...]] = {}
class _Local(threading.local):
    backend: str | None = None  # a class default: reading it never raises (getattr with a default costs 0.6 us)


_local = _Local()
_reasons: dict[tuple, str | None] = {}  # (backend, device type) -> why unavailable; (op, device type, asked) -> choice

try:
    from crossfuse import _C as ext  # noqa: N812
    _ext_error = None
except ImportError as e:  # pragma: no cover - exercised only on broken installs
    ext = None
    _ext_error = f"the C++ extension crossfuse._C did not load ({e})"

# Tests set this to fill every output allocation with NaN, so a kernel that skips an element is caught.
FILL_NAN = False


# With CROSSFUSE_CPU_HUGE_PAGES=1, CPU buffers from this size up ask for transparent huge pages
# (ext.cpu.advise_huge_pages). Off by default: where the kernel's THP defrag setting is "madvise" (the dev VM's), a
# fault in an advised range waits for the kernel to compact memory into a 2 MB page. On the dev VM that has ranged
# from a quarter of the 4 KB pages' cost (24 MB: 2.6 ms against 10.6) to twice it, and once to 3x: Mutan's B=256
# weight gradients (2 x 154 MB) took 185 and 334 ms advised against 93 ms each not.
HUGE_PAGES_MIN_BYTES = 4 << 20 if os.environ.get("CROSSFUSE_CPU_HUGE_PAGES") == "1" else None


def empty(shape, *, dtype, device) -> torch.Tensor:
    t = torch.empty(shape, dtype=dtype, device=device)
    if HUGE_PAGES_MIN_BYTES is not None and t.nbytes >= HUGE_PAGES_MIN_BYTES and t.is_cpu and ext is not None:
        ext.cpu.advise_huge_pages(t.data_ptr(), t.nbytes)
    return t.fill_(float("nan")) if FILL_NAN else t


class _Scratch(threading.local):
    buf: torch.Tensor | None = None


_scratch = _Scratch()
SCRATCH_MAX_BYTES = 64 << 20


def scratch(n: int) -> torch.Tensor:
    """n float32 elements on CPU that this thread's next scratch() call hands out again: for one buffer at a
    time that never outlives the call that asked for it. Fresh memory costs a page fault per 4 KB page on first
    touch, and after a loop of small ops glibc has often handed its freed memory back to the system: 3.2 MB of
    input gates (LSTM T=100 B=8 H=256) took 1.5 ms more on the 2-core dev VM, a third of the layer's time.
    Above SCRATCH_MAX_BYTES, a fresh buffer that is not kept."""
    if 4 * n > SCRATCH_MAX_BYTES:
        return empty((n,), dtype=torch.float32, device="cpu")
    buf = _scratch.buf
    if buf is None or buf.numel() < n:
        buf = _scratch.buf = empty((max(n, 1 << 14),), dtype=torch.float32, device="cpu")
    t = buf[:n]
    return t.fill_(float("nan")) if FILL_NAN else t


def interpreter_on() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _triton_reason() -> str | None:
    try:
        importlib.import_module("triton")
    except ImportError as e:
        return f"triton is not installed ({e})"
    return None


def _compute_reason(backend: str, device_type: str) -> str | None:
    if backend == "reference":
        return None
    if backend == "triton":
        reason = _triton_reason()
        if reason:
            return reason
        if device_type == "cpu" and not interpreter_on():
            return "triton runs CPU tensors only under the interpreter (set TRITON_INTERPRET=1 before importing crossfuse)"
        if device_type not in ("cpu", "cuda"):
            return f"triton has no {device_type} support here"
        return None
    if ext is None:
        return _ext_error or "the C++ extension crossfuse._C is not loaded"
    if backend == "cpu":
        return None if device_type == "cpu" else f"the cpu backend takes CPU tensors, got {device_type} tensors"
    if backend == "cuda":
        if device_type != "cuda":
            return f"the cuda backend takes CUDA tensors, got {device_type} tensors"
        if not hasattr(ext, "cuda"):
            return "crossfuse was built without CUDA kernels (no nvcc at build time, or CROSSFUSE_CUDA=off)"
        return None
    raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")


def unavailable_reason(backend: str, device_type: str) -> str | None:
    """None when ``backend`` can run tensors of ``device_type``, else why not."""
    key = (backend, device_type)
    if key not in _reasons:
        _reasons[key] = _compute_reason(backend, device_type)
    return _reasons[key]


def register_op(name: str, backends: tuple[str, ...]) -> None:
    _OPS[name] = backends


def ops() -> dict[str, tuple[str, ...]]:
    return dict(_OPS)


def _check_name(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} or None, got {backend!r}")


def choose(op: str, device: torch.device, backend: str | None = None) -> str:
    """The backend that runs ``op`` on ``device``: the one asked for, else the fastest available."""
    if backend is None:
        backend = _local.backend
    dtype = device.type
    key = (op, dtype, backend)  # cached beside the reasons, so resetting `_reasons` resets this too
    choice = _reasons.get(key)
    if choice is not None:
        return choice
    if backend is not None:
        if backend not in _OPS[op]:
            _check_name(backend)
            raise RuntimeError(f"{op}: backend {backend!r} is not implemented for this op; it has {_OPS[op]}")
        reason = unavailable_reason(backend, dtype)
        if reason is not None:
            raise RuntimeError(f"{op}: backend {backend!r} is not available for {dtype} tensors: {reason}")
        choice = backend
    else:
        choice = next((b for b in PREFERENCE.get(dtype, ()) if b in _OPS[op] and unavailable_reason(b, dtype) is None),
                      "reference")
    _reasons[key] = choice
    return choice


@contextlib.contextmanager
def use_backend(backend: str | None):
    """Run crossfuse ops inside the block on ``backend`` (None restores the automatic choice)."""
    if backend is not None:
        _check_name(backend)
    prev = _local.backend
    _local.backend = backend
    try:
        yield
    finally:
        _local.backend = prev


_raw_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None)


def cuda_stream(device: torch.device) -> int:
    """The handle of the current CUDA stream on `device`. torch's raw getter (the one Triton's launcher uses)
    skips building a torch.cuda.Stream object, a few microseconds per launch where small cells are host-bound."""
    if _raw_stream is not None:
        return _raw_stream(device.index if device.index is not None else torch.cuda.current_device())
    return torch.cuda.current_stream(device).cuda_stream
