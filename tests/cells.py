"""The cell test suite, shared by test_rnn_cell.py, test_lstm_cell.py and test_gru_cell.py."""
import gc

import pytest
import torch

import crossfuse
from crossfuse import reference
from harness import FLOOR, assert_within_rule, backend_cases, cpu_isa, isa_cases, leaf_like, relu_kink_allowance, strided

GATES = {"rnn_tanh": 1, "rnn_relu": 1, "rnn_sigmoid": 1, "lstm": 4, "gru": 3}
# (B, I, H, variant): zero batch, size one, odd and prime sizes; variants: plain, no bias, zero state, strided.
# B = 37: the CPU single-call step in three passes of batch rows (16 + 16 + 5), its hidden units split over threads.
SHAPES = [(0, 5, 7, "plain"), (1, 1, 1, "plain"), (3, 13, 37, "strided"), (7, 63, 113, "nobias"),
          (5, 8, 257, "nostate"), (37, 20, 40, "plain")]


def make_inputs(kind, B, I, H, variant, dtype, device):
    GH = GATES[kind] * H
    scale = 1 / H ** 0.5
    if variant == "strided":
        x = strided((B, I), dtype, device)
        t = {"x": x, "hx": strided((B, H), dtype, device), "w_ih": strided((GH, I), dtype, device, scale),
             "w_hh": strided((GH, H), dtype, device, scale), "b_ih": strided((GH,), dtype, device, scale),
             "b_hh": strided((GH,), dtype, device, scale)}
        if kind == "lstm":
            t["cx"] = strided((B, H), dtype, device)
    else:
        r = lambda *s, k=1.0: (torch.randn(*s, device=device) * k).to(dtype)  # noqa: E731
        t = {"x": r(B, I), "hx": r(B, H), "w_ih": r(GH, I, k=scale), "w_hh": r(GH, H, k=scale),
             "b_ih": r(GH, k=scale), "b_hh": r(GH, k=scale)}
        if kind == "lstm":
            t["cx"] = r(B, H)
    if variant == "nobias":
        t["b_ih"] = t["b_hh"] = None
    if variant == "nostate":
        t["hx"] = None
        t.pop("cx", None)
    return t


def call(kind, impl, t, **kw):
    """Runs one cell step; returns a tuple of outputs (h,) or (h, c)."""
    args = (t["w_ih"], t["w_hh"], t["b_ih"], t["b_hh"])
    if kind == "lstm":
        hx = None if t["hx"] is None else (t["hx"], t["cx"])
        return tuple(impl.lstm_cell(t["x"], hx, *args, **kw))
    if kind == "gru":
        return (impl.gru_cell(t["x"], t["hx"], *args, **kw),)
    return (impl.rnn_cell(t["x"], t["hx"], *args, nonlinearity=kind[4:], **kw),)


def grads(kind, impl, t, cotangents, **kw):
    leaves = {k: leaf_like(v) for k, v in t.items() if v is not None}
    full = {k: leaves.get(k) for k in t}
    outs = call(kind, impl, full, **kw)
    loss = sum((o.double() * c).sum() for o, c in zip(outs, cotangents))
    names = list(leaves)
    gs = torch.autograd.grad(loss, [leaves[n] for n in names], allow_unused=True)
    return outs, dict(zip(names, gs))


def check_cell(kind, backend, device, dtype, B, I, H, variant):
    t = make_inputs(kind, B, I, H, variant, dtype, device)
    t64 = {k: None if v is None else v.detach().double() for k, v in t.items()}
    n_out = 2 if kind == "lstm" else 1
    cot = [torch.randn(B, H, dtype=torch.float64, device=device) for _ in range(n_out)]
    ref_out, ref_g = grads(kind, reference, t64, cot)
    low_out, low_g = grads(kind, reference, t, cot)
    out, g = grads(kind, crossfuse.ops, t, cot, backend=backend)
    for i in range(n_out):
        assert_within_rule(f"out{i}", out[i], low_out[i], ref_out[i], dtype)
    allow = {name: None for name in ref_g}
    if kind == "rnn_relu":
        allow = relu_kink_allowance(lambda: grads(kind, reference, t64, cot)[1], ref_g, dtype)
    for name in ref_g:
        assert_within_rule(f"d{name}", g[name], low_g[name], ref_g[name], dtype, allow[name])
    # The no-grad path (no workspace; on CPU at small B*H the single-call step with its own GEMVs).
    with torch.no_grad():
        fast = call(kind, crossfuse.ops, t, backend=backend)
    for i in range(n_out):
        assert_within_rule(f"no-grad out{i}", fast[i], low_out[i], ref_out[i], dtype)


def parametrize_cells(kinds):
    return pytest.mark.parametrize("kind", kinds), pytest.mark.parametrize("backend,device,dtype", backend_cases()), \
        pytest.mark.parametrize("B,I,H,variant", SHAPES)


__all__ = ["check_cell", "make_inputs", "call", "grads", "parametrize_cells", "FLOOR"]

MODULES = {"rnn_tanh": ("RNNCell", {"nonlinearity": "tanh"}), "rnn_relu": ("RNNCell", {"nonlinearity": "relu"}),
           "rnn_sigmoid": ("RNNCell", {"nonlinearity": "sigmoid"}), "lstm": ("LSTMCell", {}), "gru": ("GRUCell", {})}


def make_module(kind, lib, *args, **kw):
    name, extra = MODULES[kind]
    if lib is torch.nn and kind == "rnn_sigmoid":
        extra = {"nonlinearity": "tanh"}  # torch.nn has no sigmoid cell; its weights still load
    return getattr(lib, name)(*args, **extra, **kw)


def check_module(kind, backend):
    """Same parameters and state_dict keys as torch.nn; weights load both ways; outputs match torch.nn's."""
    ours = make_module(kind, crossfuse.nn, 11, 19, backend=backend)
    theirs = make_module(kind, torch.nn, 11, 19)
    assert isinstance(ours, type(theirs)) or kind == "rnn_sigmoid"
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    ours.load_state_dict(theirs.state_dict())
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(6, 11)
    for hx in (None, (torch.randn(6, 19), torch.randn(6, 19)) if kind == "lstm" else torch.randn(6, 19)):
        a, b = ours(x, hx), theirs(x, hx)
        if kind == "rnn_sigmoid":
            pre = x @ ours.weight_ih.t() + ours.bias_ih + ours.bias_hh + (0 if hx is None else hx @ ours.weight_hh.t())
            b = torch.sigmoid(pre)
        for u, v in zip(a if kind == "lstm" else (a,), b if kind == "lstm" else (b,)):
            torch.testing.assert_close(u, v, rtol=1e-5, atol=1e-5)
    # Unbatched input, like torch.nn: 1-D in, 1-D out.
    x1 = torch.randn(11)
    h1 = None
    a = ours(x1, h1)
    b = ours(x1.unsqueeze(0))
    for u, v in zip(a if kind == "lstm" else (a,), b if kind == "lstm" else (b,)):
        assert u.dim() == 1
        torch.testing.assert_close(u, v.squeeze(0))
    with pytest.raises(ValueError, match="input"):
        ours(torch.randn(2, 3, 11))


def check_deterministic(kind, backend):
    """Backward repeated 5 times gives bitwise identical gradients."""
    t = make_inputs(kind, 9, 10, 21, "plain", torch.float32, "cpu")
    cot = [torch.randn(9, 21, dtype=torch.float64) for _ in range(2 if kind == "lstm" else 1)]
    first = grads(kind, crossfuse.ops, t, cot, backend=backend)[1]
    for _ in range(4):
        again = grads(kind, crossfuse.ops, t, cot, backend=backend)[1]
        for k in first:
            assert torch.equal(first[k], again[k]), k


def check_bad_inputs(kind):
    op = {"lstm": "lstm_cell", "gru": "gru_cell"}.get(kind, "rnn_cell")
    t = make_inputs(kind, 4, 6, 8, "plain", torch.float32, "cpu")

    def expect(err, arg, **changes):
        with pytest.raises(err, match=f"{op}.*{arg}"):
            call(kind, crossfuse.ops, {**t, **changes})

    expect(TypeError, "input", x=t["x"].double())  # dtype
    expect(TypeError, "input", x=t["x"].tolist())  # not a tensor
    expect(TypeError, "w_ih", w_ih=t["w_ih"].half())  # mixed dtype
    expect(ValueError, "w_ih", w_ih=t["w_ih"][:, :5])  # input size mismatch
    expect(ValueError, "w_hh", w_hh=t["w_hh"][:-1])  # gate count mismatch
    expect(ValueError, "b_ih", b_ih=t["b_ih"][:3])
    expect(ValueError, "hx", hx=t["hx"][:, :7])  # hidden size mismatch
    expect(ValueError, "hx", hx=t["hx"][:3])  # batch mismatch
    expect(ValueError, "input", x=t["x"].reshape(1, 4, 6))  # rank
    if kind == "lstm":
        expect(ValueError, "cx", cx=t["cx"][:, :2])
    meta = t["w_hh"].to("meta")
    expect(ValueError, "w_hh", w_hh=meta)  # device mismatch
    with pytest.raises(ValueError, match="backend"):
        call(kind, crossfuse.ops, t, backend="fastest")


def make_tests(kinds):
    """The test functions for one op's kinds; each test_<op>.py installs them in its namespace."""
    kind_p, backend_p, shape_p = parametrize_cells(kinds)

    @kind_p
    @backend_p
    @shape_p
    def test_against_reference(kind, backend, device, dtype, B, I, H, variant):
        check_cell(kind, backend, device, dtype, B, I, H, variant)

    @pytest.mark.parametrize("kind", kinds)
    @pytest.mark.parametrize("backend", ["cpu", "triton"])
    def test_module_is_drop_in(kind, backend):
        check_module(kind, backend)

    @pytest.mark.parametrize("kind", kinds)
    @pytest.mark.parametrize("backend", ["cpu", "triton"])
    def test_backward_is_deterministic(kind, backend):
        check_deterministic(kind, backend)

    @pytest.mark.parametrize("kind", kinds)
    def test_bad_input(kind):
        check_bad_inputs(kind)

    @pytest.mark.parametrize("kind", kinds)
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
    @pytest.mark.parametrize("B,I,H,variant,threads", STEP_SHAPES)
    def test_cuda_single_launch_step_on_host_threads(kind, dtype, B, I, H, variant, threads):
        check_cuda_step(kind, dtype, B, I, H, variant, threads)

    @pytest.mark.gpu
    @pytest.mark.parametrize("kind", kinds)
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
    @pytest.mark.parametrize("B,I,H,variant,threads", STEP_SHAPES)
    def test_cuda_single_launch_step_on_gpu(kind, dtype, B, I, H, variant, threads):
        check_cuda_step(kind, dtype, B, I, H, variant, threads, device="cuda")

    @pytest.mark.parametrize("kind", kinds)
    def test_cpu_training_forward_is_one_call(kind, monkeypatch):
        check_training_step(kind, monkeypatch)

    @pytest.mark.parametrize("kind", kinds)
    @pytest.mark.parametrize("isa", isa_cases())
    @pytest.mark.parametrize("B,I,H,variant", ISA_SHAPES)
    def test_cpu_kernels_at_each_isa_level(kind, isa, B, I, H, variant):
        with cpu_isa(isa):
            check_cell(kind, "cpu", "cpu", torch.float32, B, I, H, variant)

    @pytest.mark.parametrize("kind", kinds)
    @pytest.mark.parametrize("isa", isa_cases())
    @pytest.mark.parametrize("B,I,H,variant", PACKED_SHAPES)
    def test_cpu_packed_weights_at_each_isa_level(kind, isa, B, I, H, variant, monkeypatch):
        with cpu_isa(isa):
            check_packed_step(kind, B, I, H, variant, monkeypatch)

    @pytest.mark.parametrize("kind", kinds)
    def test_cpu_packed_weights_follow_weight_changes(kind, monkeypatch):
        check_packed_weights_follow_changes(kind, monkeypatch)

    return {f.__name__: f for f in (test_against_reference, test_module_is_drop_in, test_backward_is_deterministic,
                                    test_bad_input, test_cuda_single_launch_step_on_host_threads,
                                    test_cuda_single_launch_step_on_gpu, test_cpu_training_forward_is_one_call,
                                    test_cpu_kernels_at_each_isa_level, test_cpu_packed_weights_at_each_isa_level,
                                    test_cpu_packed_weights_follow_weight_changes)}


# The single-call step's GEMV tiles at each level: a reduction of 16-wide steps with an 8-wide and a scalar tail
# (I = 29 = 16 + 8 + 5), one of 16-wide steps and a scalar tail (H = 37); batch rows in threes, pairs and alone.
ISA_SHAPES = [(1, 29, 37, "plain"), (3, 29, 37, "nobias"), (8, 32, 24, "plain"), (13, 29, 37, "strided")]


def check_training_step(kind, monkeypatch):
    """fp32 on CPU at a small batch with autograd on: the forward is the single C++ step (both GEMVs and the
    gates), which keeps the activated gates for the backward (LSTM, GRU); check_cell checks its values."""
    from crossfuse import _backend
    calls = []
    real = _backend.ext.cpu.cell_step
    monkeypatch.setattr(_backend.ext.cpu, "cell_step", lambda *a: calls.append(a[-2]) or real(*a))  # ws
    t = make_inputs(kind, 4, 6, 5, "plain", torch.float32, "cpu")
    for v in t.values():
        if v is not None:
            v.requires_grad_()
    outs = call(kind, crossfuse.ops, t, backend="cpu")
    assert len(calls) == 1 and (calls[0] != 0) == (kind in ("lstm", "gru"))  # the workspace, for gated cells
    sum(o.sum() for o in outs).backward()
    assert all(v.grad is not None for v in t.values() if v is not None)


# (B, I, H, variant, threads per block): one row; the passes of 8 batch rows (8 + 8 + 4); odd sizes with rows
# split over 7 and 64 threads (a row's threads and the groups of them); no bias; no state; 256 threads as launched.
STEP_SHAPES = [(1, 1, 1, "plain", 7), (20, 20, 40, "plain", 64), (7, 63, 113, "nobias", 7), (5, 8, 57, "nostate", 64),
               (32, 16, 24, "plain", 256), (0, 5, 7, "plain", 64), (3, 13, 37, "strided", 64)]


def check_cuda_step(kind, dtype, B, I, H, variant, threads, device="cpu"):
    """The cuda backend's single-launch step (crossfuse/cell_step_cuda.h) against float64: on host threads
    (`threads` per block) for CPU tensors, launched for CUDA ones; a strided input falls back (None) to the
    general path."""
    from crossfuse import _backend
    from crossfuse.ops import _cell
    t = make_inputs(kind, B, I, H, variant, dtype, device)
    t64 = {k: None if v is None else v.double() for k, v in t.items()}
    ref, low = call(kind, reference, t64), call(kind, reference, t)
    args = (kind, t["x"], t["hx"], t.get("cx"), t["w_ih"], t["w_hh"], t["b_ih"], t["b_hh"])
    if device == "cpu":
        got = _cell._try_cuda_step(*args, lambda *a: _backend.ext.cpu.cell_step_emulate(*a, threads))
    else:
        got = _cell._cuda_step(*args)
    if variant == "strided":
        assert got is None
        return
    for i, (g, lo, r) in enumerate(zip(got, low, ref)):
        assert_within_rule(f"out{i}", g, lo, r, dtype)


# The single-call step on repacked weights: H not a multiple of the 8-unit blocks (37, 13, 300), one unit, one
# input feature; rows in one pass of up to 8, in passes of 16 (37 = 16 + 16 + 5) and at the step's limit (64); no
# bias, no state; more units than LSTM's AVX-512 step takes at once (300: chunks of 128 and the rest, on 1 or 2
# threads); strided inputs (not the single-call step: nothing packed).
PACKED_SHAPES = [(1, 29, 37, "plain"), (1, 1, 1, "plain"), (8, 32, 24, "nobias"), (13, 7, 13, "nostate"),
                 (37, 20, 40, "plain"), (64, 9, 16, "plain"), (0, 5, 7, "plain"), (3, 13, 37, "strided"),
                 (2, 40, 300, "plain"), (5, 11, 300, "nostate")]


def _record_packed(monkeypatch):
    """A list that gets, for each cell_step call, whether it ran on repacked weights (its w_ih_packed pointer)."""
    from crossfuse import _backend
    seen = []
    real = _backend.ext.cpu.cell_step
    monkeypatch.setattr(_backend.ext.cpu, "cell_step", lambda *a: seen.append(a[14] != 0) or real(*a))
    return seen


def _check_no_grad(kind, t):
    t64 = {k: None if v is None else v.detach().double() for k, v in t.items()}
    ref, low = call(kind, reference, t64), call(kind, reference, t)
    with torch.no_grad():
        got = call(kind, crossfuse.ops, t, backend="cpu")
    for i, (g, lo, r) in enumerate(zip(got, low, ref)):
        assert_within_rule(f"out{i}", g, lo, r, torch.float32)


def check_packed_step(kind, B, I, H, variant, monkeypatch):
    """LSTM, RNN, and GRU up to 16 rows: the first call with a set of weights runs on them as they are, the second
    repacks them and runs on the copies, as does the third (the RNN's by blocks of 32 units). Outputs (no grad)
    and then every gradient (autograd, the same leaves twice: the forward keeps its workspace) match the float64
    reference."""
    seen = _record_packed(monkeypatch)
    t = make_inputs(kind, B, I, H, variant, torch.float32, "cpu")
    for _ in range(3):
        _check_no_grad(kind, t)
    from crossfuse.ops import _cell
    packs = kind != "gru" or B <= _cell._PACK_GRU_MAX_BATCH
    assert seen == ([] if variant == "strided" else [False, packs, packs])
    t64 = {k: None if v is None else v.detach().double() for k, v in t.items()}
    cot = [torch.randn(B, H, dtype=torch.float64) for _ in range(2 if kind == "lstm" else 1)]
    ref_out, ref_g = grads(kind, reference, t64, cot)
    low_out, low_g = grads(kind, reference, t, cot)
    leaves = {k: None if v is None else leaf_like(v) for k, v in t.items()}
    names = [k for k, v in leaves.items() if v is not None]
    for _ in range(2):
        outs = call(kind, crossfuse.ops, leaves, backend="cpu")
        loss = sum((o.double() * c).sum() for o, c in zip(outs, cot))
        g = dict(zip(names, torch.autograd.grad(loss, [leaves[n] for n in names])))
        for i in range(len(outs)):
            assert_within_rule(f"out{i}", outs[i], low_out[i], ref_out[i], torch.float32)
        for n in names:
            assert_within_rule(f"d{n}", g[n], low_g[n], ref_g[n], torch.float32)


def check_packed_weights_follow_changes(kind, monkeypatch):
    """The copies are remade after an in-place update or a `.data` swap of either weight, never used for other
    tensors (a weight made anew each call may get the last one's memory), and not made when turned off."""
    from crossfuse.ops import _cell
    seen = _record_packed(monkeypatch)
    t = make_inputs(kind, 5, 12, 19, "plain", torch.float32, "cpu")
    changes = [(lambda: t["w_hh"].mul_(0.5), False), (lambda: t["w_ih"].add_(0.01), False),
               (lambda: setattr(t["w_ih"], "data", t["w_ih"].data * 2), False),
               (lambda: t["b_ih"].add_(0.5), True)]  # biases are read as they are: their change keeps the copies
    for change, keeps in changes:
        _check_no_grad(kind, t)
        _check_no_grad(kind, t)
        change()
        seen.clear()
        _check_no_grad(kind, t)
        assert seen == [keeps]
    w_ih = t["w_ih"]
    seen.clear()
    for _ in range(4):
        t["w_ih"] = w_ih * torch.rand(()) * 2  # new values in a new tensor, often at the last one's address
        _check_no_grad(kind, t)
    assert not any(seen)
    monkeypatch.setattr(_cell, "_PACK_WEIGHTS", False)
    t = make_inputs(kind, 5, 12, 19, "plain", torch.float32, "cpu")
    seen.clear()
    for _ in range(3):
        _check_no_grad(kind, t)
    assert seen == [False] * 3
    ident = id(t["w_hh"])
    assert ident in _cell._STEP_WEIGHTS
    del t, changes
    gc.collect()
    assert ident not in _cell._STEP_WEIGHTS  # the cache never keeps a weight alive
