"""The cuda backend's cooperative recurrence (csrc/cuda/rnn_persistent.cu) on a GPU, for tuning: each layer
shape at several minimum units per block (ops/rnn.py PERSISTENT_MIN_UNITS), against cuDNN (torch.nn's layer,
the peer) and the triton backend, forward (inference) and forward+backward; ratio = cuDNN time / this time,
measured in the same run. Run after building in place: python3 benchmarks/profile_rnn.py [--quick]"""
import importlib
import sys

import torch
import triton.testing

import crossfuse

rnn_ops = importlib.import_module("crossfuse.ops.rnn")
SHAPES = [(100, 8, 256), (100, 32, 512), (100, 64, 1024), (1000, 8, 256)]
QUICK = [(100, 8, 256), (100, 32, 512)]


def timed(fn):
    return triton.testing.do_bench(fn, warmup=10, rep=60, return_mode="median") * 1e3  # us


def step(model, x, backward):
    if not backward:
        def fwd():
            with torch.no_grad():
                model(x)
        return fwd
    params = list(model.parameters())

    def fwd_bwd():
        out, _ = model(x)
        torch.autograd.grad(out.float().sum(), [x] + params)
    return fwd_bwd


def main(quick):
    dev, dt = torch.device("cuda"), torch.float16
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}; times in us, x = cuDNN / this")
    for kind in ("LSTM", "GRU"):
        for T, B, H in QUICK if quick else SHAPES:
            torch.manual_seed(0)
            peer = getattr(torch.nn, kind)(H, H, device=dev, dtype=dt)
            ours = getattr(crossfuse.nn, kind)(H, H, device=dev, dtype=dt, backend="cuda")
            tri = getattr(crossfuse.nn, kind)(H, H, device=dev, dtype=dt, backend="triton")
            ours.load_state_dict(peer.state_dict())
            tri.load_state_dict(peer.state_dict())
            x = torch.randn(T, B, H, device=dev, dtype=dt, requires_grad=True)
            for backward in (False, True):
                mode = "fwd+bwd" if backward else "fwd"
                base = timed(step(peer, x, backward))
                row = [f"{kind} T={T} B={B} H={H} {mode}: cuDNN {base:.0f}"]
                row.append(f"triton {timed(step(tri, x, backward)):.0f}")
                for units in (1, 2, 4, 8, 16):
                    rnn_ops.PERSISTENT_MIN_UNITS = units
                    plan = rnn_ops._persistent_for("cuda", kind.lower(), B, H, x)
                    if plan is None:
                        row.append(f"u{units} -")
                        continue
                    t = timed(step(ours, x, backward))
                    row.append(f"u{units}({plan[0][1]} blocks) {t:.0f} x{base / t:.2f}")
                print(" | ".join(row), flush=True)


if __name__ == "__main__":
    main("--quick" in sys.argv)
