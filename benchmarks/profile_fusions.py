"""Where the time of the product-pool modules goes on a GPU: each module's forward, eager vs crossfuse, with
the projections as a batched GEMM (the default) or a plain one, and the CUDA kernels of crossfuse forwards.
Run after building in place: python3 benchmarks/profile_fusions.py [Mutan MFB ...]"""
import sys

import torch
import triton.testing

import crossfuse
from crossfuse.bench import fusions as F
from crossfuse.ops import fusions as OF
from crossfuse.reference import fusions as ref


def mm_projection(x, w):
    if w.shape[0] != 1:
        return batched(x, w)
    return torch.mm(x, w[0].t()).unsqueeze(0)


batched = OF._gemm_projection


def main(names):
    dev, dt = torch.device("cuda"), torch.bfloat16
    for name in names:
        torch.manual_seed(0)
        m = F.make(name).to(device=dev, dtype=dt)
        x = [torch.randn(1024, 2048, device=dev, dtype=dt), torch.randn(1024, 2048, device=dev, dtype=dt)]
        t = lambda f: triton.testing.do_bench(f, warmup=20, rep=100, return_mode="median") * 1e3  # noqa: E731
        with torch.no_grad(), crossfuse.use_backend("triton"):
            e = t(lambda: ref.forward(m, x))
            ob = t(lambda: m(x))
            OF._gemm_projection = mm_projection
            o = t(lambda: m(x))
            OF._gemm_projection = batched
            print(f"{name} B=1024 fwd us: eager {e:.1f} | crossfuse bmm {ob:.1f} | crossfuse mm {o:.1f}", flush=True)
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA,
                                                    torch.profiler.ProfilerActivity.CPU]) as p:
                for _ in range(5):
                    m(x)
                torch.cuda.synchronize()
            print(p.key_averages().table(sort_by="cuda_time_total", row_limit=12), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] or ["Mutan", "MFB"])
