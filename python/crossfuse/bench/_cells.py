"""Benchmark cases shared by the three cells: each available crossfuse backend, the eager reference and
torch.nn's cell (the peer), forward (inference) and forward+backward."""
import torch

import crossfuse
from crossfuse import _backend
from crossfuse.bench.runner import Case

QUICK = [(1, 128), (8, 256), (64, 1024)]
FULL = [(1, 128), (1, 256), (8, 128), (8, 256), (32, 512), (64, 1024), (256, 1024)]
MODULES = {"rnn": ("RNNCell", 1), "lstm": ("LSTMCell", 4), "gru": ("GRUCell", 3)}


def _step(cell, x, state, backward):
    if not backward:
        def fwd():
            with torch.no_grad():
                return cell(x, state)
        return fwd

    def fwd_bwd():
        out = cell(x, state)
        (out[0] if isinstance(out, tuple) else out).sum().backward()
    return fwd_bwd


def cell_cases(kind: str, device: torch.device, quick: bool, dtypes=None):
    name, gates = MODULES[kind]
    op = f"{kind}_cell"
    if dtypes is None:
        dtypes = [torch.float32] if device.type == "cpu" else [torch.float16, torch.bfloat16]
    backends = [b for b in ("cpu", "cuda", "triton") if _backend.unavailable_reason(b, device.type) is None]
    if device.type == "cpu":
        backends = [b for b in backends if b != "triton"]  # interpreted Triton is for tests, not timing
    cases = []
    for dtype in dtypes:
        for B, H in QUICK if quick else FULL:
            I = H
            peer = getattr(torch.nn, name)(I, H, device=device, dtype=dtype)
            x = torch.randn(B, I, device=device, dtype=dtype)
            h = torch.randn(B, H, device=device, dtype=dtype)
            state = (h, torch.randn_like(h)) if kind == "lstm" else h
            elt = torch.finfo(dtype).bits // 8
            flops = 2 * B * gates * H * (I + H)
            nbytes = elt * (gates * H * (I + H) + B * (I + 2 * H + (2 * H if kind == "lstm" else 0)))
            for backward in (False, True):
                impls = {"torch.nn": _step(peer, x, state, backward)}
                ref = getattr(crossfuse.nn, name)(I, H, device=device, dtype=dtype, backend="reference")
                ref.load_state_dict(peer.state_dict())
                impls["reference"] = _step(ref, x, state, backward)
                for b in backends:
                    ours = getattr(crossfuse.nn, name)(I, H, device=device, dtype=dtype, backend=b)
                    ours.load_state_dict(peer.state_dict())
                    impls[b] = _step(ours, x, state, backward)
                cases.append(Case(op=op, shape=f"B={B} H={H} I={I}", mode="fwd+bwd" if backward else "fwd",
                                  dtype=str(dtype).replace("torch.", ""), impls=impls, peer="torch.nn",
                                  flops=flops * (3 if backward else 1), bytes=nbytes * (2 if backward else 1),
                                  meta={"B": B, "H": H, "I": I}))
    return cases
