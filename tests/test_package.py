"""`pip wheel .` gives a wheel that installs and imports in a fresh venv, with crossfuse.kernels
packaged and the extension working."""
import os
import pathlib
import subprocess
import sys
import sysconfig

import pytest

pytestmark = pytest.mark.slow
ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_wheel_installs_and_runs_in_fresh_venv(tmp_path):
    run = lambda *a, **k: subprocess.run(a, check=True, capture_output=True, text=True, **k)  # noqa: E731
    run(sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-q", "-w", str(tmp_path / "dist"),
        str(ROOT))
    wheel = next((tmp_path / "dist").glob("crossfuse-*.whl"))
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", str(venv))
    py = venv / "bin" / "python"
    run(str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel))
    # torch and triton come from this environment, after the fresh venv's own site-packages.
    fresh_site = run(str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip()
    pathlib.Path(fresh_site, "zz_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    code = ("import crossfuse, crossfuse.kernels, crossfuse._C, torch\n"
            "assert crossfuse.__file__.startswith(%r), crossfuse.__file__\n"
            "import crossfuse.kernels.lstm_cell\n"
            "cell = crossfuse.nn.LSTMCell(3, 4)\n"
            "h, c = cell(torch.randn(2, 3))\n"
            "print(crossfuse.__version__, h.shape)\n") % str(venv)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TRITON_INTERPRET")}
    out = run(str(py), "-c", code, cwd=str(tmp_path), env=env).stdout
    assert "0.1.0 torch.Size([2, 4])" in out
