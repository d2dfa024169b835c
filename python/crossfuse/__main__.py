"""`python -m crossfuse info`: versions, the extension, CUDA archs, the GPU, and each op's backend."""
import argparse
import platform
import sys


def info() -> str:
    import torch

    import crossfuse
    from crossfuse import _backend

    lines = [f"crossfuse {crossfuse.__version__}", f"python    {platform.python_version()}",
             f"torch     {torch.__version__}"]
    try:
        import triton
        lines.append(f"triton    {triton.__version__}")
    except ImportError:
        lines.append("triton    not installed")
    ext = _backend.ext
    if ext is None:
        lines.append(f"extension not loaded: {_backend._ext_error}")
    else:
        lines.append(f"extension crossfuse._C loaded (OpenMP {'on' if ext.openmp else 'off'})")
        levels = {4: "AVX-512 (x86-64-v4)", 3: "AVX2 + FMA (x86-64-v3)", 0: "baseline"}
        lines.append(f"CPU kernels at {levels[ext.cpu.isa()]}"
                     + ("" if ext.cpu.isa() == ext.cpu.isa_detected() else
                        f", capped by CROSSFUSE_CPU_ISA (the CPU has {levels[ext.cpu.isa_detected()]})"))
        from crossfuse.ops import _gemm
        lines.append("CPU GEMM  " + ("crossfuse's (csrc/cpu/gemm.cpp)" if _gemm.OWN else "torch.mm (faster on this CPU)")
                     + " for the cpu backend's fp32 products"
                     + (", torch's BLAS inside the C++ kernels" if ext.cpu.has_blas_sgemm() else "")
                     + "; CROSSFUSE_CPU_GEMM=own|torch overrides")
        lines.append(f"CUDA archs {ext.cuda_archs or 'none (built without CUDA kernels)'}")
    if torch.cuda.is_available():
        lines.append(f"GPU       {torch.cuda.get_device_name(0)} (sm_{''.join(map(str, torch.cuda.get_device_capability(0)))})")
    else:
        lines.append("GPU       none")
    lines.append(f"triton interpreter {'on' if _backend.interpreter_on() else 'off'}")
    lines.append("")
    ops = sorted(_backend.ops())
    w = max(len(op) for op in ops + ["op"]) + 2
    lines.append(f"{'op':<{w}}{'CPU tensors':<14}{'CUDA tensors':<14}")
    for op in ops:
        row = [op]
        for dev in ("cpu", "cuda"):
            row.append(_backend.choose(op, torch.device(dev)))
        lines.append(f"{row[0]:<{w}}{row[1]:<14}{row[2]:<14}")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m crossfuse")
    parser.add_argument("command", choices=["info"], help="info: versions, build and backend choice")
    parser.parse_args(argv)
    print(info())


if __name__ == "__main__":
    sys.exit(main())
