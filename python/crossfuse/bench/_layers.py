"""Benchmark cases shared by the whole-sequence layers (rnn, lstm, gru): crossfuse.nn's layer on each available
backend against torch.nn's (oneDNN on CPU, cuDNN on GPU; the peer), a torch.nn cell in a Python loop, and the
eager reference; forward (inference) and forward+backward; padded, and packed with random lengths."""
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import crossfuse
from crossfuse import _backend
from crossfuse.bench.runner import Case

GATES = {"rnn": 1, "lstm": 4, "gru": 3}
NAMES = {"rnn": ("RNN", "RNNCell"), "lstm": ("LSTM", "LSTMCell"), "gru": ("GRU", "GRUCell")}
# (T, B, H): DESIGN.md's grid, trimmed on CPU where the big ones take minutes per call
GPU_SHAPES = [(T, B, H) for T in (50, 100, 1000) for B in (1, 8, 32, 64, 256) for H in (128, 256, 512, 1024)]
CPU_SHAPES = [(50, 1, 128), (100, 8, 256), (50, 32, 512), (100, 64, 1024), (1000, 8, 128)]
QUICK_GPU = [(100, 8, 256), (100, 64, 512)]  # T=1000 is the full run's: per-step launches take seconds there
QUICK_CPU = [(50, 1, 128), (100, 8, 256)]


def _cell_loop(cell, kind):
    def run(x, state):
        outs = []
        for t in range(x.shape[0]):
            state = cell(x[t], state)
            outs.append(state[0] if kind == "lstm" else state)
        return torch.stack(outs)
    return run


def layer_cases(kind, device, quick):
    layer_name, cell_name = NAMES[kind]
    if device.type == "cuda":
        shapes, dtypes = (QUICK_GPU if quick else GPU_SHAPES), [torch.float16]
    else:
        shapes, dtypes = (QUICK_CPU if quick else CPU_SHAPES), [torch.float32]
    backends = [b for b in ("cpu", "cuda", "triton") if _backend.unavailable_reason(b, device.type) is None
                and not (device.type == "cpu" and b == "triton")]
    gen = torch.Generator().manual_seed(0)
    cases = []
    for dtype in dtypes:
        for T, B, H in shapes:
            peer = getattr(torch.nn, layer_name)(H, H, device=device, dtype=dtype)
            cell = getattr(torch.nn, cell_name)(H, H, device=device, dtype=dtype)
            x = torch.randn(T, B, H, device=device, dtype=dtype)
            lengths = torch.randint(1, T + 1, (B,), generator=gen)
            lengths[0] = T
            flops = 2 * T * B * GATES[kind] * H * 2 * H
            nbytes = x.element_size() * (GATES[kind] * H * 2 * H + 2 * T * B * H)
            for packed in (False, True):
                inp = pack_padded_sequence(x, lengths, enforce_sorted=False) if packed else x
                for backward in (False, True):
                    impls = {"torch.nn": _step(peer, inp, backward)}
                    if not packed:
                        impls["torch.nn cell loop"] = _step(_cell_loop(cell, kind), x, backward, cell)
                    for b in backends:
                        ours = getattr(crossfuse.nn, layer_name)(H, H, device=device, dtype=dtype, backend=b)
                        ours.load_state_dict(peer.state_dict())
                        impls[b] = _step(ours, inp, backward)
                    mode = ("fwd+bwd" if backward else "fwd") + (" packed" if packed else "")
                    cases.append(Case(op=kind, shape=f"T={T} B={B} H={H}", mode=mode,
                                      dtype=str(dtype).replace("torch.", ""), impls=impls, peer="torch.nn",
                                      flops=flops * (3 if backward else 1), bytes=nbytes * (2 if backward else 1),
                                      meta={"T": T, "B": B, "H": H, "packed": packed}))
    return cases


def _step(model, inp, backward, params_of=None):
    params = list((params_of or model).parameters()) if hasattr(params_of or model, "parameters") else []

    def first(out):
        out = out[0] if isinstance(out, tuple) else out
        return out.data if hasattr(out, "batch_sizes") else out

    if not backward:
        def fwd():
            with torch.no_grad():
                return model(inp, None)
        return fwd

    def fwd_bwd():
        out = first(model(inp, None))
        torch.autograd.grad(out.float().sum(), params)
    return fwd_bwd
