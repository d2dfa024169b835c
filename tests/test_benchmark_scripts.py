"""The scripts that only a GPU machine runs (benchmarks/gpu_check.sh and the scripts beside it) at least
parse here: CI never runs them, and a GPU session's few minutes are not to be lost on a typo."""
import pathlib
import py_compile
import shutil
import subprocess

import pytest

BENCH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.parametrize("script", sorted(p.name for p in BENCH.glob("*.py")))
def test_benchmark_script_compiles(script, tmp_path):
    py_compile.compile(str(BENCH / script), cfile=str(tmp_path / "out.pyc"), doraise=True)


@pytest.mark.skipif(shutil.which("bash") is None,
                    reason="bash is not installed: the scripts it would parse are bash scripts")
@pytest.mark.parametrize("script", sorted(p.name for p in BENCH.glob("*.sh")))
def test_shell_script_parses(script):
    subprocess.run(["bash", "-n", str(BENCH / script)], check=True)
