"""How fast can a product-pool fusion's forward+backward be, at most, against its eager version? Every
implementation of Block / Mutan / MFB runs the same matrix products (each Linear's forward, input gradient and
weight gradient; Block's 20 chunk products as batched GEMMs): timed alone, back to back, with torch's GEMM, they
give a floor, and eager / floor is the ceiling on the speed-up of any implementation whose GEMMs are torch's.
Measured in the same interleaved rounds as eager and crossfuse, shapes as in `python -m crossfuse.bench --op
fusions` (B = 256, input_dims [2048, 2048], mm_dim 1600, chunks 20, rank 15, factor 2, output 3000).
Run: python benchmarks/fusion_gemm_floor.py [--out DIR] [Block Mutan MFB]"""
import argparse

import torch

from crossfuse import use_backend
from crossfuse.bench import fusions as F
from crossfuse.bench.runner import median_times, write_table
from crossfuse.reference import fusions as ref

B = 256


def linear_products(rows, n_in, n_out, groups=1):
    """A Linear's three products (forward, input gradient, weight gradient), batched over `groups`."""
    x = torch.randn(groups, rows, n_in)
    w = torch.randn(groups, n_out, n_in)
    dy = torch.randn(groups, rows, n_out)
    return [lambda: torch.bmm(x, w.transpose(1, 2)), lambda: torch.bmm(dy, w),
            lambda: torch.bmm(dy.transpose(1, 2), x)]


def products(name):
    d0, d1 = F.DIMS
    out = linear_products(B, F.MM, F.OUT)
    if name == "MFB":
        return out + linear_products(B, d0, 2 * F.MM) + linear_products(B, d1, 2 * F.MM)
    out += linear_products(B, d0, F.MM) + linear_products(B, d1, F.MM)
    if name == "Block":
        S = F.MM // 20
        return out + linear_products(B, S, 15 * S, 20) + linear_products(B, S, 15 * S, 20)
    return out + linear_products(B, F.MM, 15 * F.MM) + linear_products(B, F.MM, 15 * F.MM)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("names", nargs="*", default=["Block", "Mutan", "MFB"])
    ap.add_argument("--out", default=None, help="write <device>-<date>-fusion-gemm-floor.json/.md here")
    args = ap.parse_args()
    dev = torch.device("cpu")
    rows = []
    for name in args.names:
        torch.manual_seed(0)
        m = F.make(name)
        x0, x1 = torch.randn(B, F.DIMS[0], requires_grad=True), torch.randn(B, F.DIMS[1], requires_grad=True)
        leaves = [x0, x1] + list(m.parameters())

        def eager():
            torch.autograd.grad(ref.forward(m, [x0, x1]).sum(), leaves)

        def ours():
            with use_backend("cpu"):
                torch.autograd.grad(m([x0, x1]).sum(), leaves)

        prods = products(name)

        def floor():
            for p in prods:
                p()

        t = median_times({"eager": eager, "crossfuse": ours, "gemm floor": floor}, dev, quick=False)
        row = {"module": name, "B": B, **{k + " ms": round(v * 1e3, 2) for k, v in t.items()},
               "crossfuse speed-up": round(t["eager"] / t["crossfuse"], 3),
               "ceiling (eager / floor)": round(t["eager"] / t["gemm floor"], 3)}
        rows.append(row)
        print(row, flush=True)
    if args.out:
        base = write_table(rows, args.out, "fusion-gemm-floor", "Fusions' GEMM floor, forward+backward", __doc__)
        print("wrote", base + ".json", base + ".md")

if __name__ == "__main__":
    main()
