"""Ahead-of-time compile of every Triton kernel config for sm_80 / sm_90 without a GPU.

Run as `python -m crossfuse.kernels._aot` (not under TRITON_INTERPRET): prints one JSON row per
(kernel, config, arch) with registers, spill (stack/local) bytes and shared memory.
"""
import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor

# Shared memory a block may use, per arch (bytes): sm_80 163 KB, sm_90 227 KB.
SMEM_LIMIT = {80: 163 * 1024, 90: 227 * 1024}
ARCHS = (80, 90)


def _specs():
    from crossfuse.kernels import KERNEL_MODULES
    out = []
    for mod in KERNEL_MODULES:
        for i, spec in enumerate(importlib.import_module(f"crossfuse.kernels.{mod}").AOT_SPECS):
            out.extend((mod, i, arch) for arch in spec.get("archs", ARCHS))  # a spec may name its archs
    return out


def _compile(job):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    mod, i, arch = job
    spec = importlib.import_module(f"crossfuse.kernels.{mod}").AOT_SPECS[i]
    names = list(spec["signature"])
    # "aligned": arguments the JIT would see as multiples of 16 (tt.divisibility), as for typical inputs
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in spec.get("aligned", ())}
    src = ASTSource(fn=spec["kernel"], signature=spec["signature"], constexprs=spec["constexprs"], attrs=attrs)
    k = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                       options={"num_warps": spec["num_warps"], "num_stages": spec["num_stages"]})
    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(k.asm["cubin"])
        f.flush()
        usage = subprocess.run([cuobjdump, "--dump-resource-usage", f.name], capture_output=True, text=True,
                               check=True).stdout
    field = lambda n: int(re.search(rf"\b{n}:(\d+)", usage).group(1))  # noqa: E731
    return {"module": mod, "kernel": spec["name"], "config": spec["config"], "arch": f"sm_{arch}", "registers": field("REG"),
            "stack": field("STACK"), "local": field("LOCAL"), "shared": int(k.metadata.shared),
            "shared_limit": SMEM_LIMIT[arch]}


def main():
    if os.environ.get("TRITON_INTERPRET") == "1":
        sys.exit("crossfuse.kernels._aot: unset TRITON_INTERPRET (interpreted kernels cannot be compiled)")
    jobs = _specs()
    with ProcessPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
        for row in pool.map(_compile, jobs):
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
