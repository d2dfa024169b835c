"""Timing, device peaks, memory, and the JSON / Markdown / PNG writers shared by every op's benchmark."""
from __future__ import annotations

import datetime
import json
import os
import platform
import re
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

# Dense peaks: (bf16/fp16 tensor-core FLOP/s, fp32 FLOP/s, memory bytes/s).
GPU_PEAKS = {"H200": (989e12, 67e12, 4.8e12), "H100": (989e12, 67e12, 3.35e12), "A100": (312e12, 19.5e12, 2.04e12)}


@dataclass
class Case:
    """One shape of one op: `impls` maps a name to a zero-argument callable; `peer` names the one to beat."""
    op: str
    shape: str
    mode: str  # "fwd" or "fwd+bwd"
    dtype: str
    impls: dict[str, Callable[[], object]]
    peer: str
    flops: float
    bytes: float
    meta: dict = field(default_factory=dict)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model} ({os.cpu_count()} cores)"


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def peaks(device: torch.device) -> dict:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, (tc, fp32, bw) in GPU_PEAKS.items():
            if key in name:
                return {"flops_lowp": tc, "flops_fp32": fp32, "bytes": bw, "source": f"{key} datasheet"}
        return {"source": "unknown GPU"}
    # CPU: measured copy bandwidth (read + write) of a 256 MB buffer.
    a = torch.empty(64 * 2**20, dtype=torch.float32)
    b = torch.empty_like(a)
    b.copy_(a)
    t = min(_time_once(lambda: b.copy_(a), 1) for _ in range(5))
    return {"bytes": 2 * a.numel() * 4 / t, "source": "measured copy bandwidth"}


def _sync(device_type):
    if device_type == "cuda":
        torch.cuda.synchronize()


def _time_once(fn, n):
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n


def median_times(impls: dict[str, Callable], device: torch.device, quick: bool) -> dict[str, float]:
    """Median seconds per call of each implementation. On CPU the implementations take turns, one batch of
    calls each per round, so that a slow spell of a shared machine hits them all alike and the ratios hold."""
    if device.type == "cuda":
        import triton.testing
        out = {}
        for name, fn in impls.items():
            fn()
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            torch.cuda.synchronize()
            once_ms = (time.perf_counter() - t0) * 1e3
            # do_bench's rep is in ms: long calls get enough of it for 7 samples (a median of one is noise)
            rep = max(40 if quick else 100, 7 * once_ms)
            out[name] = triton.testing.do_bench(fn, warmup=10 if quick else 25, rep=rep, return_mode="median") * 1e-3
        return out
    counts = {}
    for name, fn in impls.items():
        fn()
        once = min(_time_once(fn, 1) for _ in range(3))
        counts[name] = max(1, min(10000, int((0.002 if quick else 0.01) / max(once, 1e-7))))
    samples = {name: [] for name in impls}
    for _ in range(9 if quick else 21):
        for name, fn in impls.items():
            samples[name].append(_time_once(fn, counts[name]))
    return {name: statistics.median(ts) for name, ts in samples.items()}


def peak_memory(fn: Callable, device: torch.device) -> int | None:
    """Peak bytes allocated by one call, above what was live before it; None on CPU, where torch keeps no
    allocator statistics (the profiler charges frees inside Python-level autograd functions to the function, so
    a peak rebuilt from its events is wrong; tests measure CPU peaks in a subprocess instead)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated(device) - base


def run_cases(cases: list[Case], device: torch.device, quick: bool, log=print) -> list[dict]:
    rows = []
    pk = peaks(device)
    for case in cases:
        times = median_times(case.impls, device, quick)
        peer_t = times[case.peer]
        for name, t in times.items():
            lowp = case.dtype in ("float16", "bfloat16")
            peak_flops = pk.get("flops_lowp" if lowp else "flops_fp32")
            row = {"op": case.op, "shape": case.shape, "mode": case.mode, "dtype": case.dtype, "impl": name,
                   "time_us": t * 1e6, "speedup_vs_peer": peer_t / t, "peer": case.peer,
                   "speedup_vs_reference": times.get("reference", float("nan")) / t,
                   "gflops": case.flops / t / 1e9, "gbps": case.bytes / t / 1e9,
                   "flops_share_of_peak": case.flops / t / peak_flops if peak_flops else None,
                   "bytes_share_of_peak": case.bytes / t / pk["bytes"] if pk.get("bytes") else None,
                   "peak_mem_bytes": peak_memory(case.impls[name], device), **case.meta}
            if row["peak_mem_bytes"] is not None and "output_bytes" in case.meta:  # beyond what the call returns
                row["extra_mem_bytes"] = row["peak_mem_bytes"] - case.meta["output_bytes"]
            rows.append(row)
            log(f"{case.op:<10} {case.mode:<8} {case.dtype:<9} {case.shape:<22} {name:<10} {t * 1e6:10.1f} us"
                f"  x{row['speedup_vs_peer']:.2f} vs {case.peer}")
    return rows


def markdown(rows: list[dict], device: str, header: dict) -> str:
    lines = [f"# crossfuse benchmark — {device}", "",
             *(f"- {k}: {v}" for k, v in header.items()), "",
             "Speedup = peer time / this time, measured in the same run. Absolute times count only on a GPU.", "",
             "| op | mode | dtype | shape | impl | time (µs) | × vs peer | × vs reference | GFLOP/s | GB/s | "
             "% peak BW | peak mem (KiB) |",
             "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        share = f"{100 * r['bytes_share_of_peak']:.1f}" if r["bytes_share_of_peak"] is not None else "–"
        mem = f"{r['peak_mem_bytes'] / 1024:.0f}" if r["peak_mem_bytes"] is not None else "–"
        if r.get("extra_mem_bytes") is not None:
            mem += f" ({r['extra_mem_bytes'] / 1024:.0f} extra)"
        lines.append(f"| {r['op']} | {r['mode']} | {r['dtype']} | {r['shape']} | {r['impl']} | {r['time_us']:.1f} | "
                     f"{r['speedup_vs_peer']:.2f} | {r['speedup_vs_reference']:.2f} | {r['gflops']:.2f} | "
                     f"{r['gbps']:.2f} | {share} | {mem} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: str, title: str) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    groups = sorted({(r["op"], r["mode"], r["dtype"], r["shape"]) for r in rows})
    impls = sorted({r["impl"] for r in rows})
    fig, ax = plt.subplots(figsize=(max(8, 0.45 * len(groups) * len(impls) / 2), 5))
    width = 0.8 / max(1, len(impls))
    for k, impl in enumerate(impls):
        ys = [next((r["speedup_vs_peer"] for r in rows if (r["op"], r["mode"], r["dtype"], r["shape"]) == g
                    and r["impl"] == impl), 0) for g in groups]
        ax.bar([i + k * width for i in range(len(groups))], ys, width, label=impl)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(groups))])
    ax.set_xticklabels([f"{g[0]} {g[1]}\n{g[3]} {g[2]}" for g in groups], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("speedup vs peer (same run)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_table(rows: list[dict], out_dir: str, name: str, title: str, doc: str) -> str:
    """A benchmark script's rows (dicts with the same keys) as <cpu device>-<date>-<name>.json and .md in out_dir;
    returns the path without its extension."""
    os.makedirs(out_dir, exist_ok=True)
    dev_name = device_name(torch.device("cpu"))
    base = os.path.join(out_dir, f"{slug(dev_name)}-{datetime.date.today()}-{name}")
    with open(base + ".json", "w") as f:
        json.dump({"device": dev_name, "torch": torch.__version__, "threads": torch.get_num_threads(),
                   "rows": rows}, f, indent=1)
    keys = list(rows[0]) if rows else []
    with open(base + ".md", "w") as f:
        f.write(f"# {title} on {dev_name} (torch {torch.__version__}, {torch.get_num_threads()} threads)\n\n"
                f"{doc}\n\n")
        f.write("| " + " | ".join(keys) + " |\n|" + "---|" * len(keys) + "\n")
        for r in rows:
            f.write("| " + " | ".join(str(r[k]) for k in keys) + " |\n")
    return base


def write_results(rows: list[dict], device: torch.device, out_dir: str, quick: bool, suffix: str = "") -> list[str]:
    name = device_name(device)
    date = datetime.date.today().isoformat()
    base = os.path.join(out_dir, f"{slug(name)}-{date}{'-quick' if quick else ''}{'-' + suffix if suffix else ''}")
    os.makedirs(out_dir, exist_ok=True)
    import crossfuse
    header = {"device": name, "date": date, "crossfuse": crossfuse.__version__, "torch": torch.__version__,
              "threads": torch.get_num_threads(), "quick": quick, "peaks": peaks(device)}
    try:
        import triton
        header["triton"] = triton.__version__
    except ImportError:
        pass
    with open(base + ".json", "w") as f:
        json.dump({"header": header, "rows": rows}, f, indent=1)
    with open(base + ".md", "w") as f:
        f.write(markdown(rows, name, header))
    paths = [base + ".json", base + ".md"]
    if plot(rows, base + ".png", f"crossfuse vs peers — {name}"):
        paths.append(base + ".png")
    return paths
