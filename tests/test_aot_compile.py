"""Every Triton kernel, at every config its launcher can choose, compiles for sm_80 and sm_90 with no GPU:
no register spills, shared memory within the arch limit. Prints the resource table."""
import json
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
