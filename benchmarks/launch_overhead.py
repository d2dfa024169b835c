"""Host time per call of small GPU steps (the triton cells measured 181-199 us per step on an H200 at every size,
the cuda cell 12-20 us): an empty Triton kernel with one argument and with the cell kernel's 27, the triton cell
kernel's launch alone, and whole LSTMCell steps (triton, cuda, torch.nn). benchmarks/gpu_check.sh runs it;
python3 benchmarks/launch_overhead.py after building in place."""
import time

import torch
import triton
import triton.language as tl

import crossfuse
from crossfuse.kernels import lstm_cell as K


@triton.jit
def _empty1(x):
    pass


@triton.jit
def _empty27(a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15, a16, a17, a18, a19, a20, a21,
             a22, a23, a24, a25, a26):
    pass


def host_us(fn, n=200):
    """Host microseconds per call (calls queued back to back, one sync at the end) and device-inclusive ones."""
    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    t1 = time.perf_counter()
    torch.cuda.synchronize()
    t2 = time.perf_counter()
    return (t1 - t0) / n * 1e6, (t2 - t0) / n * 1e6


def main():
    dev = torch.device("cuda")
    B, H = 1, 128
    x = torch.randn(B, H, device=dev, dtype=torch.float16)
    views = {"gi": torch.randn(B, 4 * H, device=dev, dtype=x.dtype), "gh": None,
             "bih": torch.randn(4 * H, device=dev, dtype=x.dtype), "bhh": torch.randn(4 * H, device=dev, dtype=x.dtype),
             "cx": x.clone(), "hy": torch.empty_like(x), "cy": torch.empty_like(x), "ws": None}
    ints = [t.stride(0) if i % 3 else 0 for i, t in enumerate([x] * 27)]
    cells = {b: crossfuse.nn.LSTMCell(H, H, device=dev, dtype=x.dtype, backend=b) for b in ("triton", "cuda")}
    ref = torch.nn.LSTMCell(H, H, device=dev, dtype=x.dtype)
    h = (x.clone(), x.clone())
    cases = {
        "empty triton kernel, 1 arg": lambda: _empty1[(1,)](x),
        "empty triton kernel, 27 args": lambda: _empty27[(1,)](x, *ints[1:3], x, *ints[4:6], x, *ints[7:9], x,
                                                              *ints[10:12], x, *ints[13:15], x, *ints[16:18], x,
                                                              *ints[19:21], x, *ints[22:24], x, *ints[25:27]),
        "lstm_cell triton kernel launch": lambda: K.launch("lstm", False, B, H, views),
        "torch.mm (1 x 128 x 512)": lambda: torch.mm(x, views["gi"].new_empty(H, 4 * H)),
        "crossfuse LSTMCell triton step": lambda: cells["triton"](x, h),
        "crossfuse LSTMCell cuda step": lambda: cells["cuda"](x, h),
        "torch.nn.LSTMCell step": lambda: ref(x, h),
    }
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}; "
          f"us per call: host (queued) / host+device")
    with torch.no_grad():
        for name, fn in cases.items():
            try:
                print(f"  {name:<34} {'%8.1f / %8.1f' % host_us(fn)}", flush=True)
            except Exception as err:  # report and go on: this is a diagnosis
                print(f"  {name:<34} failed: {str(err)[:100]}", flush=True)


if __name__ == "__main__":
    main()
