"""The CPU shapes around the quick benchmark's, each against its torch.nn peer in the same interleaved rounds
(ratio = torch.nn's time / crossfuse's, above 1 crossfuse is faster):
- LSTMCell forward (no grad) at batch 1-8, hidden 128-256, and at batch 64, hidden 1024 (input size = hidden);
- LSTM / GRU / RNN layers (one layer, input = hidden) at larger batches, forward (no grad) and forward+backward;
- LSTM, T=100 B=8 H=256, forward against a torch.nn.LSTMCell loop, and on a PackedSequence of random lengths.
Run: python benchmarks/cpu_shapes.py [--out DIR] [--quick] [--suffix S]"""
import argparse

import torch
from torch.nn.utils.rnn import pack_padded_sequence

import crossfuse
from crossfuse.bench.runner import median_times, write_table

CELL_SHAPES = [(1, 128), (2, 128), (4, 128), (8, 128), (1, 256), (2, 256), (3, 256), (4, 256), (8, 256),
               (64, 1024)]
LAYER_SHAPES = [("LSTM", 50, 32, 512), ("LSTM", 50, 64, 512), ("LSTM", 50, 256, 256), ("GRU", 50, 32, 512),
                ("GRU", 20, 64, 1024), ("RNN", 50, 64, 512), ("RNN", 50, 256, 256)]
CPU = torch.device("cpu")


def _no_grad(fn, *args):
    def run():
        with torch.no_grad():
            fn(*args)
    return run


def _fwd_bwd(m, x):
    leaves = [x] + list(m.parameters())

    def run():
        out = m(x)[0]
        torch.autograd.grad(out.sum(), leaves)
    return run


def _pair(cls, *sizes):
    torch.manual_seed(0)
    peer = getattr(torch.nn, cls)(*sizes)
    ours = getattr(crossfuse.nn, cls)(*sizes)
    ours.load_state_dict(peer.state_dict())
    return peer, ours


def _row(what, shape, times, peer="torch.nn"):
    return {"what": what, "shape": shape, "peer": peer, "peer us": round(times[peer] * 1e6, 1),
            "crossfuse us": round(times["crossfuse"] * 1e6, 1), "ratio": round(times[peer] / times["crossfuse"], 2)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None, help="write <device>-<date>-cpu-shapes.json/.md here")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--suffix", default="", help="appended to the file name (...-cpu-shapes-SUFFIX)")
    args = ap.parse_args()
    rows = []
    for B, H in CELL_SHAPES:
        peer, ours = _pair("LSTMCell", H, H)
        x, state = torch.randn(B, H), (torch.randn(B, H), torch.randn(B, H))
        t = median_times({"torch.nn": _no_grad(peer, x, state), "crossfuse": _no_grad(ours, x, state)}, CPU,
                         args.quick)
        rows.append(_row("LSTMCell forward", f"B={B} H={H}", t))
        print(rows[-1], flush=True)
    for cls, T, B, H in LAYER_SHAPES:
        peer, ours = _pair(cls, H, H)
        x = torch.randn(T, B, H)
        t = median_times({"torch.nn": _no_grad(peer, x), "crossfuse": _no_grad(ours, x)}, CPU, args.quick)
        rows.append(_row(f"{cls} forward", f"T={T} B={B} H={H}", t))
        print(rows[-1], flush=True)
        xg = x.clone().requires_grad_()
        t = median_times({"torch.nn": _fwd_bwd(peer, xg), "crossfuse": _fwd_bwd(ours, xg)}, CPU, args.quick)
        rows.append(_row(f"{cls} forward+backward", f"T={T} B={B} H={H}", t))
        print(rows[-1], flush=True)
    T, B, H = 100, 8, 256
    peer, ours = _pair("LSTM", H, H)
    cell = torch.nn.LSTMCell(H, H)
    x = torch.randn(T, B, H)

    def cell_loop():
        h = c = torch.zeros(B, H)
        for step in range(T):
            h, c = cell(x[step], (h, c))
    t = median_times({"torch.nn.LSTMCell loop": _no_grad(cell_loop), "crossfuse": _no_grad(ours, x)}, CPU,
                     args.quick)
    rows.append(_row("LSTM forward", f"T={T} B={B} H={H}", t, peer="torch.nn.LSTMCell loop"))
    print(rows[-1], flush=True)
    lengths = torch.randint(1, T + 1, (B,), generator=torch.Generator().manual_seed(0))
    lengths[0] = T
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    for cls in ("LSTM", "GRU", "RNN"):
        peer, ours = _pair(cls, H, H)
        t = median_times({"torch.nn": _no_grad(peer, packed), "crossfuse": _no_grad(ours, packed)}, CPU,
                         args.quick)
        rows.append(_row(f"{cls} forward, PackedSequence (random lengths)", f"T={T} B={B} H={H}", t))
        print(rows[-1], flush=True)
    if args.out:
        name = "cpu-shapes" + (f"-{args.suffix}" if args.suffix else "")
        base = write_table(rows, args.out, name, "CPU shapes against torch.nn", __doc__)
        print("wrote", base + ".json", base + ".md")


if __name__ == "__main__":
    main()
