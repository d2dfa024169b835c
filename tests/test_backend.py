"""The one dispatch mechanism: default choice per device, per-call override, the context manager,
and errors that say why a backend is unavailable."""
import os
import subprocess
import sys
import threading

import pytest
import torch

import crossfuse
from crossfuse import _backend


def test_default_choice_per_device():
    assert _backend.choose("lstm_cell", torch.device("cpu")) == "cpu"
    # Where neither the GPU nor the extension's CUDA kernels exist, CUDA tensors still get a backend.
    assert _backend.choose("lstm_cell", torch.device("cuda")) in ("cuda", "triton", "reference")


def test_override_per_call_and_context_manager(monkeypatch):
    from crossfuse.ops import _cell
    calls = []  # the backend whose kernel ran
    step, run, ref = _backend.ext.cpu.cell_step, _cell.run_kernel, _cell._reference
    monkeypatch.setattr(_backend.ext.cpu, "cell_step", lambda *a: calls.append("cpu") or step(*a))
    monkeypatch.setattr(_cell, "run_kernel", lambda kind, backend, *a: calls.append(backend) or run(kind, backend, *a))
    monkeypatch.setattr(_cell, "_reference", lambda *a: calls.append("reference") or ref(*a))
    cell = crossfuse.nn.LSTMCell(4, 5)
    x = torch.randn(2, 4)
    with torch.no_grad():
        cell(x)
        with crossfuse.use_backend("triton"):
            cell(x)
            crossfuse.ops.gru_cell(x, None, torch.randn(15, 4), torch.randn(15, 5), backend="cpu")
        cell(x)
    assert calls == ["cpu", "triton", "cpu", "cpu"]
    with crossfuse.use_backend("reference"):
        cell(x)
    assert calls[-1] == "reference"


def test_unavailable_backend_says_why(monkeypatch):
    x = torch.randn(2, 4)
    w_ih, w_hh = torch.randn(5, 4), torch.randn(5, 5)
    with pytest.raises(RuntimeError, match="cuda.*not available for cpu tensors.*takes CUDA tensors"):
        crossfuse.ops.rnn_cell(x, None, w_ih, w_hh, backend="cuda")
    monkeypatch.setattr(_backend, "_reasons", {})
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        crossfuse.ops.rnn_cell(x, None, w_ih, w_hh, backend="triton")
    monkeypatch.setattr(_backend, "_reasons", {})
    with pytest.raises(ValueError, match="backend must be one of"):
        with crossfuse.use_backend("gpu"):
            pass


def test_default_never_picks_triton_for_cpu_without_interpreter(monkeypatch):
    monkeypatch.setattr(_backend, "_reasons", {})
    monkeypatch.delenv("TRITON_INTERPRET")
    monkeypatch.setattr(_backend, "ext", None)
    assert _backend.choose("lstm_cell", torch.device("cpu")) == "reference"
    monkeypatch.setattr(_backend, "_reasons", {})


def test_info_command():
    out = subprocess.run([sys.executable, "-m", "crossfuse", "info"], capture_output=True, text=True, check=True).stdout
    for needle in ("crossfuse 0.1.0", "torch", "triton", "extension crossfuse._C loaded", "CUDA archs 80,90",
                   "GPU", "lstm_cell", "rnn_cell", "gru_cell", "CPU kernels at "):
        assert needle in out, (needle, out)


def test_cpu_isa_cap_from_the_environment():
    """CROSSFUSE_CPU_ISA caps the cpu backend's kernels (never above what the CPU has) and info says so."""
    from crossfuse import _backend
    have = _backend.ext.cpu.isa_detected()
    code = "from crossfuse import _backend; print(_backend.ext.cpu.isa())"
    for name, level in (("baseline", 0), ("v3", 3), ("v4", 4)):
        env = dict(os.environ, CROSSFUSE_CPU_ISA=name)
        got = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
        assert int(got.stdout) == min(level, have), (name, got.stdout)
    env = dict(os.environ, CROSSFUSE_CPU_ISA="baseline")
    out = subprocess.run([sys.executable, "-m", "crossfuse", "info"], capture_output=True, text=True, check=True,
                         env=env).stdout
    assert "CPU kernels at baseline" in out, out


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_kernels_launch_on_the_current_stream(backend):
    """A side stream sleeps, then writes the inputs: a kernel launched on another stream would read them unwritten
    and disagree with the default stream's result."""
    torch.manual_seed(0)
    cell = crossfuse.nn.LSTMCell(16, 32, device="cuda", backend=backend)
    layer = crossfuse.nn.LSTM(16, 32, device="cuda", backend=backend)
    x, seq = torch.randn(4, 16, device="cuda"), torch.randn(7, 4, 16, device="cuda")
    with torch.no_grad():
        want = cell(x), layer(seq)[0]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            torch.cuda._sleep(20_000_000)
            got = cell(x * 1), layer(seq * 1)[0]
        torch.cuda.current_stream().wait_stream(side)
    for g, w in zip(got, want):
        for a, b in zip(g if isinstance(g, tuple) else (g,), w if isinstance(w, tuple) else (w,)):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("module,shape", [("LSTMCell", (3, 4)), ("GRU", (5, 3, 4))], ids=["cell", "layer"])
def test_second_derivative_raises_instead_of_coming_out_wrong(module, shape):
    """The kernels' backward records no graph: asking for a second derivative is an error, never a silent zero."""
    x = torch.randn(*shape, requires_grad=True)
    out = getattr(crossfuse.nn, module)(4, 6)(x)[0]
    (g,) = torch.autograd.grad(out.square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        g.sum().backward()


def test_large_cpu_buffers_ask_for_huge_pages_when_enabled(monkeypatch):
    assert _backend.HUGE_PAGES_MIN_BYTES is None or os.environ.get("CROSSFUSE_CPU_HUGE_PAGES") == "1"  # off by default
    monkeypatch.setattr(_backend, "HUGE_PAGES_MIN_BYTES", 4 << 20)
    advised = []
    real = _backend.ext.cpu.advise_huge_pages
    monkeypatch.setattr(_backend.ext.cpu, "advise_huge_pages", lambda p, n: advised.append((p, n)) or real(p, n))
    small = _backend.empty((1000,), dtype=torch.float32, device="cpu")
    big = _backend.empty((3, _backend.HUGE_PAGES_MIN_BYTES // 4), dtype=torch.float32, device="cpu")
    assert advised == [(big.data_ptr(), big.numel() * 4)] and small.numel() == 1000
    big.fill_(2.0)  # the advised memory is ordinary memory to write and read
    assert big.sum().item() == 2.0 * big.numel()
    # no whole 2 MB page inside, or a null range: nothing is advised, and nothing fails
    assert real(big.data_ptr(), 4096) is False and real(0, 0) is False


def test_scratch_is_one_reused_buffer_per_thread_up_to_a_bound(monkeypatch):
    a = _backend.scratch(1000)
    assert _backend.scratch(500).data_ptr() == a.data_ptr() and a.dtype == torch.float32 and a.numel() == 1000
    other = []
    t = threading.Thread(target=lambda: other.append(_backend.scratch(1000).data_ptr()))
    t.start()
    t.join()
    assert other[0] != a.data_ptr()
    monkeypatch.setattr(_backend, "SCRATCH_MAX_BYTES", 4096)
    big = _backend.scratch(2000)
    assert _backend.scratch(2000).data_ptr() != big.data_ptr()  # above the bound: a fresh buffer each time


_THREADS_SCRIPT = """
import os, sys, threading, torch, crossfuse
def tasks():
    return len(os.listdir("/proc/self/task"))
def run_all():  # each crossfuse CPU kernel with a parallel region, at sizes past its threshold
    x = torch.randn(64, 256, requires_grad=True)
    cell = crossfuse.nn.LSTMCell(256, 256, backend="cpu")
    with torch.no_grad():
        cell(x[:8])  # the single-call step
    cell(x)[0].sum().backward()  # the gate kernels, forward and backward
    lstm = crossfuse.nn.LSTM(64, 256, backend="cpu")
    lstm(torch.randn(5, 8, 64, requires_grad=True))[0].sum().backward()  # recurrence and GEMMs, both ways
    for chunks in (1, 2):  # the product pool: split over the threads (one group), whole groups per thread
        block = crossfuse.nn.Block([64, 64], 32, mm_dim=64, chunks=chunks, rank=4)
        with crossfuse.use_backend("cpu"):
            block([torch.randn(512, 64, requires_grad=True), torch.randn(512, 64)]).sum().backward()
torch.set_num_threads(int(sys.argv[1]))
out = []
def body():  # a thread OpenMP has not seen, so none of its thread pools exist yet
    before = tasks()
    run_all()
    out.append(tasks() - before)
t = threading.Thread(target=body)
t.start()
t.join()
print(out[0])
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts threads in /proc/self/task")
def test_cpu_kernels_follow_torch_set_num_threads():
    # A thread that OpenMP has not seen starts from its default thread count, whatever torch.set_num_threads said
    # (and a torch built on another OpenMP runtime never tells crossfuse's): every kernel takes torch's count.
    def new_threads(n):  # a fresh process each: no thread of an earlier run is still there, or still exiting
        run = subprocess.run([sys.executable, "-c", _THREADS_SCRIPT, str(n)], capture_output=True, text=True, check=True)
        return int(run.stdout)
    assert new_threads(1) == 0  # no worker threads where torch allows one thread
    assert new_threads(2) >= 1  # the check sees them: the same work on two threads starts a worker


def test_cpu_kernels_give_the_same_bits_on_any_thread_count(monkeypatch):
    # Threads split outputs (units, rows, tiles), never a sum: one thread's results are the two threads' results.
    # With crossfuse's GEMM: where the products go to torch.mm (MKL), their bits are MKL's, which can change with
    # the thread count (they did on the Xeon dev VM), as torch's own ops' can.
    from crossfuse.ops import _gemm
    monkeypatch.setattr(_gemm, "OWN", True)

    def run():
        torch.manual_seed(0)
        x = torch.randn(64, 256, requires_grad=True)
        cell = crossfuse.nn.LSTMCell(256, 256, backend="cpu")
        with torch.no_grad():
            step = cell(x[:8])
        gates = cell(x)
        lstm = crossfuse.nn.LSTM(64, 256, backend="cpu")
        seq = lstm(torch.randn(5, 8, 64))
        # past the product pool's and the GEMM's thresholds; one group (split over the threads) and two (a whole
        # group per thread)
        blocks = [crossfuse.nn.Block([64, 64], 32, mm_dim=64, chunks=c, rank=4) for c in (1, 2)]
        xb = torch.randn(512, 64, requires_grad=True)
        with crossfuse.use_backend("cpu"):
            zs = [block([xb, torch.randn(512, 64)]) for block in blocks]
        outs = [*step, *gates, seq[0], *seq[1], *zs]
        grads = torch.autograd.grad(sum(o.sum() for o in outs[2:]), [x, xb, *cell.parameters(), *lstm.parameters(),
                                                                       *(p for b in blocks for p in b.parameters())])
        return [o.detach() for o in outs] + list(grads)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run()
        torch.set_num_threads(2)
        two = run()
    finally:
        torch.set_num_threads(threads)
    assert len(one) == len(two) and all(torch.equal(a, b) for a, b in zip(one, two))
