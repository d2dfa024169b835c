"""Where the time of the fused contrastive losses goes on a GPU, and how the paths (S from cuBLAS blocks or from
the kernels' own tl.dot), the launch configs and the block sizes change it: forward, forward+backward and peak
extra memory against the eager losses of the benchmark, for each variant. Run after building in place:
python3 benchmarks/profile_contrastive.py [B ...]"""
import sys

import torch
import torch.nn.functional as F
import triton.testing

import crossfuse
from crossfuse.bench.contrastive_loss import _eager
from crossfuse.kernels import contrastive_loss as K

DEFAULTS = {name: getattr(K, name) for name in ("ROWS_CONFIGS", "DS_CONFIGS", "FOLD_CONFIGS", "S_FROM_CUBLAS",
                                                "S_BLOCK_COLS", "FOLD_SPLITS", "FOLD_PROGRAMS", "DS_CHUNK_BYTES")}
VARIANTS = {  # name: the kernel module's settings that differ from its defaults
    "default": {},
    "unsplit": {"FOLD_SPLITS": 1},
    "8 per SM": {"FOLD_PROGRAMS": 8},
    "cublas": {"S_FROM_CUBLAS": True},
    "cublas 1 sp": {"S_FROM_CUBLAS": True, "FOLD_SPLITS": 1},
    "cublas 8/SM": {"S_FROM_CUBLAS": True, "FOLD_PROGRAMS": 8},
    "cublas f8/16": {"S_FROM_CUBLAS": True, "FOLD_CONFIGS": {"rows": (8, 256, 0, 4, 1), "cols": (16, 128, 0, 4, 1)}},
}


def configure(settings):
    for name, value in dict(DEFAULTS, **settings).items():
        setattr(K, name, value)


def ms(f):
    return triton.testing.do_bench(f, warmup=10, rep=300, return_mode="median")  # rep in ms: ~10 samples


def peak_extra(f, out_bytes):
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    f()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base - out_bytes) / 2**20


def main(sizes):
    dev, dt, D = torch.device("cuda"), torch.float16, 512
    for B in sizes:
        e = F.normalize(torch.randn(2, B, D, device=dev), dim=-1).to(dt)
        i, t = e[0].requires_grad_(), e[1].requires_grad_()
        scale = torch.tensor(30.0, device=dev, requires_grad=True)
        bias = torch.tensor(-10.0, device=dev, requires_grad=True)
        out_bytes = 2 * B * D * 2
        for kind in ("clip", "siglip"):
            eager = _eager(kind)
            step_e = lambda: torch.autograd.grad(eager(i, t, scale, bias).float(), (i, t, scale))  # noqa: E731
            te = ms(step_e)
            print(f"B={B} D={D} {kind} fp16  eager fwd+bwd {te:.2f} ms, extra {peak_extra(step_e, out_bytes):.0f} MiB",
                  flush=True)

            def loss():
                return crossfuse.ops.contrastive_loss(i, t, scale, logit_bias=bias if kind == "siglip" else None,
                                                      kind=kind, backend="triton")
            step = lambda: torch.autograd.grad(loss().float(), (i, t, scale))  # noqa: E731
            for name, variant in VARIANTS.items():
                configure(variant)
                try:
                    tf, tb = ms(lambda: loss()), ms(step)
                    print(f"  {name:<12} fwd {tf:7.2f} ms  fwd+bwd {tb:7.2f} ms  x{te / tb:.2f} vs eager  "
                          f"extra {peak_extra(step, out_bytes):.1f} MiB", flush=True)
                except Exception as err:  # a config that does not fit this GPU: report and go on
                    print(f"  {name:<12} failed: {str(err)[:120]}", flush=True)
            configure({})
            if B <= 4096:  # small B: where do host and device time go (launches, syncs, kernels)?
                step()
                torch.cuda.synchronize()
                acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
                with torch.profiler.profile(activities=acts) as prof:
                    for _ in range(5):
                        step()
                    torch.cuda.synchronize()
                print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=14, max_name_column_width=48),
                      flush=True)
        cols = min(B, K.S_BLOCK_COLS)
        rows = K.DS_CHUNK_BYTES // 4 // cols
        blocks = [(r0, c0) for r0 in range(0, B, rows) for c0 in range(0, B, cols)]
        print(f"  the forward's S blocks alone ({len(blocks)} of {rows}x{cols}, fp32 out): "
              f"{ms(lambda: [K._mm_f32(i[r0:r0 + rows], t[c0:c0 + cols]) for r0, c0 in blocks]):.2f} ms", flush=True)
        C = min(B, K.DS_CHUNK_BYTES // 2 // B // 128 * 128)
        ds = torch.randn(C, B, device=dev, dtype=dt)
        print(f"  the backward's GEMMs alone (dS chunk {C} rows, 2 sides): "
              f"{2 * ms(lambda: [torch.mm(ds, t) for _ in range(B // C)]):.2f} ms", flush=True)


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [4096, 32768])
