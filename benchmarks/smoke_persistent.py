"""Smoke run of the cuda backend's cooperative recurrence (benchmarks/gpu_check.sh runs it under a timeout first):
LSTM and GRU layers, forward and backward, against the reference backend on the same GPU; exits non-zero when the
cooperative launch is not taken or a value is off."""
import importlib
import sys

import torch

import crossfuse
rnn_ops = importlib.import_module("crossfuse.ops.rnn")  # the package re-exports a function named rnn


def main():
    torch.manual_seed(0)
    ok = True
    for kind in ("LSTM", "GRU"):
        ours = getattr(crossfuse.nn, kind)(64, 256, device="cuda", backend="cuda")
        ref = getattr(crossfuse.nn, kind)(64, 256, device="cuda", backend="reference")
        ref.load_state_dict(ours.state_dict())
        x = torch.randn(20, 8, 64, device="cuda")
        taken = rnn_ops._persistent_for("cuda", kind.lower(), 8, 256, x) is not None
        grads = []
        for m in (ours, ref):
            xi = x.clone().requires_grad_()
            out = m(xi)[0]
            out.square().sum().backward()
            grads.append((out.detach(), xi.grad))
        torch.cuda.synchronize()
        err = max((a - b).abs().max().item() for a, b in zip(*grads))
        print(f"{kind}: cooperative launch {'taken' if taken else 'NOT taken'}, max |ours - reference| {err:.2e}")
        ok &= taken and err < 1e-3
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
