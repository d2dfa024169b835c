"""Every Triton kernel, at every config its launcher can choose, compiles for sm_80 and sm_90 with no GPU:
no register spills, shared memory within the arch limit. Prints the resource table."""
import json
import pathlib
import re
import shutil
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_every_kernel_config_compiles_without_spills(capsys):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    proc = subprocess.run([sys.executable, "-m", "crossfuse.kernels._aot"], env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    from crossfuse.kernels import KERNEL_MODULES
    assert {r["module"] for r in rows} == set(KERNEL_MODULES)
    header = f"{'kernel':<26}{'config':<40}{'arch':<7}{'regs':>5}{'spill':>7}{'smem':>8}"
    lines = [header] + [f"{r['kernel']:<26}{r['config']:<40}{r['arch']:<7}{r['registers']:>5}"
                        f"{r['stack'] + r['local']:>7}{r['shared']:>8}" for r in rows]
    with capsys.disabled():
        print("\nAOT resource table (%d compiles)\n" % len(rows) + "\n".join(lines))
    bad = [r for r in rows if r["stack"] or r["local"] or r["shared"] > r["shared_limit"]]
    assert not bad, f"spills or shared memory over the limit: {bad}"


def _nvcc():
    for path in (os.environ.get("CUDACXX"), shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"):
        if path and os.path.exists(path):
            return path
    return None


# (source, ptxas's kernel-name pattern -> label parts, kernels expected, threads per block)
CUDA_SOURCES = {
    "rnn_persistent.cu": (r"persistent_(forward|backward)_kernelI(?:NS_\d+(\w+?)E|(f))Li(\d)E", 2 * 2 * 5 * 3, 256),
    "cell_step.cu": (r"cell_step_kernel()I(?:NS_\d+(\w+?)E|(f))Li(\d)E", 2 * 5 * 3, 256),
}


@pytest.mark.skipif(_nvcc() is None, reason="nvcc not found: the build compiles no CUDA source on this machine")
@pytest.mark.parametrize("source", list(CUDA_SOURCES))
def test_cuda_kernels_compile_without_spills(source, tmp_path, capsys):
    """The CUDA sources with whole-block kernels (the persistent recurrence: every kind and dtype, forward and
    backward; the single-launch cell step), for sm_80 and sm_90 (ptxas's own report): no spills, and the registers
    leave room for their blocks."""
    pattern, expected, threads = CUDA_SOURCES[source]
    root = pathlib.Path(__file__).resolve().parents[1]
    rows = []
    for arch in (80, 90):
        proc = subprocess.run(
            [_nvcc(), "-std=c++17", "-O3", "-I", str(root / "csrc" / "include"),
             f"-gencode=arch=compute_{arch},code=sm_{arch}", "-Xptxas", "-v", "-c",
             str(root / "csrc" / "cuda" / source), "-o", str(tmp_path / "k.o")],
            capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-4000:]
        name = None
        for line in proc.stderr.splitlines():
            m = re.search(r"Compiling entry function '(\w+)' for 'sm_(\d+)'", line)
            if m:
                name = m.group(1)
                k = re.search(pattern, name)
                label = f"{k.group(1) or 'step'} {k.group(2) or 'float'} kind {k.group(4)}" if k else name
                rows.append({"kernel": label, "arch": int(m.group(2))})
            m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
            if m and name:
                rows[-1].update(stack=int(m.group(1)), spill=int(m.group(2)) + int(m.group(3)))
            m = re.search(r"Used (\d+) registers", line)
            if m and name:
                rows[-1]["registers"] = int(m.group(1))
    assert len(rows) == expected, f"expected {expected} kernels, ptxas reported {len(rows)}"
    with capsys.disabled():
        print(f"\n{source} (%d compiles)\n" % len(rows) + "\n".join(
            f"{r['kernel']:<30}sm_{r['arch']}{r['registers']:>5} regs{r['stack'] + r['spill']:>5} stack+spill"
            for r in rows))
    bad = [r for r in rows if r["stack"] or r["spill"] or r["registers"] * threads > 65536]
    assert not bad, f"spills or too many registers: {bad}"
