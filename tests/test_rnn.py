"""Whole-sequence layers: crossfuse.ops.rnn / lstm / gru against the float64 reference (outputs, final states
and every gradient under the tolerance rule), and crossfuse.nn.RNN / LSTM / GRU against torch.nn with
transplanted weights: layers, directions, batch_first, PackedSequence, lengths=, dropout, bad input."""
import importlib
import sys

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import crossfuse
from crossfuse.reference.rnn import rnn_layer
from harness import assert_within_rule, backend_cases, cpu_isa, isa_cases, leaf_like, relu_kink_allowance, strided

layer = importlib.import_module("crossfuse.ops.rnn").layer
KINDS = ("lstm", "gru", "rnn_tanh", "rnn_relu", "rnn_sigmoid")
GATES = {"lstm": 4, "gru": 3}
# (T, B, I, H, lengths, reverse, with_state)
SHAPES = [(1, 1, 1, 1, None, False, True), (7, 5, 13, 37, (7, 3, 0, 5, 1), False, True),
          (6, 4, 8, 19, (2, 6, 1, 6), True, False), (5, 3, 6, 9, None, True, True)]
# large enough for the CPU kernel's threads (its backward splits B = 6 by rows, B = 3 by columns) and its
# three-row GEMV tiles, and one step with no state (the cells' single call, threaded); the Triton kernel's tiles
# have their own test below
THREAD_SHAPES = [(5, 6, 8, 64, (5, 2, 4, 0, 5, 3), False, True), (4, 3, 7, 67, None, True, False),
                 (1, 6, 8, 64, None, False, False),
                 # non-increasing lengths (a PackedSequence's order): steps on the active prefix of rows only,
                 # the backward split by rows and by columns
                 (6, 6, 8, 64, (6, 5, 5, 3, 1, 0), False, True), (5, 3, 7, 67, (5, 2, 0), True, True)]


def _inputs(kind, T, B, I, H, with_state, dtype, device):
    G = GATES.get(kind, 1)
    r = lambda *s, k=1.0: (torch.randn(*s, device=device) * k).to(dtype)  # noqa: E731
    s = H ** -0.5
    t = {"x": r(T, B, I), "w_ih": r(G * H, I, k=s), "w_hh": r(G * H, H, k=s), "b_ih": r(G * H, k=s),
         "b_hh": r(G * H, k=s), "h0": r(B, H) if with_state else None,
         "c0": r(B, H) if with_state and kind == "lstm" else None}
    return t


def _run(impl, kind, t, lengths, reverse, cot, **kw):
    names = [k for k, v in t.items() if v is not None]
    leaves = {k: leaf_like(t[k]) for k in names}
    a = {k: leaves.get(k) for k in t}
    if impl == "reference":
        out, h, c = rnn_layer(kind, a["x"], a["h0"], a["c0"], a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"], lengths,
                              reverse)
    else:
        out, h, c = layer(kind, a["x"], a["h0"], a["c0"], a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"],
                          lengths=lengths, reverse=reverse, **kw)
    outs = [out, h] + ([c] if c is not None else [])
    loss = sum((o.double() * w).sum() for o, w in zip(outs, cot))
    grads = torch.autograd.grad(loss, [leaves[k] for k in names])
    return outs, dict(zip(names, grads))


def _layer_cases():
    cases = [(*s, *b.values) + (b.marks,) for s in SHAPES
             for b in backend_cases(backends=("reference", "cpu", "triton", "cuda"))]
    cases += [(*s, *b.values) + (b.marks,) for s in THREAD_SHAPES for b in backend_cases(backends=("cpu",))]
    return [pytest.param(*c[:-1], marks=c[-1]) for c in cases]


@pytest.mark.parametrize("T,B,I,H,lengths,reverse,with_state,backend,device,dtype", _layer_cases())
@pytest.mark.parametrize("kind", KINDS)
def test_layer_against_reference(kind, backend, device, dtype, T, B, I, H, lengths, reverse, with_state):
    _check_layer(kind, backend, device, dtype, T, B, I, H, lengths, reverse, with_state)


# The CPU recurrence's packed GEMV at each instruction-set level: AVX-512 takes rows in groups of up to 8 (B 11:
# 8 + 3; B 16: 8 + 8), one or two rows with k split over accumulator sets; unit blocks with a partial one (H 37;
# the RNN's blocks of 32 units: H 37, 40, 137 and 300 end in one, 24 is one; 37 rows: passes of 16).
# (the last two: the backward's dh = dG W_hh on 64-column blocks with AVX-512, split by rows (9 rows: groups of 4
# and 1) and by columns (3 rows, H = 300: blocks and tails on both threads))
ISA_SHAPES = [(5, 1, 29, 37, None, False, True), (4, 2, 16, 40, (4, 1), True, True),
              (5, 11, 29, 37, None, False, False), (4, 16, 8, 24, (4, 3, 0, 4, 1, 2, 4, 4, 3, 2, 1, 4, 4, 2, 3, 4),
                                                    False, True),
              (3, 9, 8, 137, (3, 1, 3, 0, 2, 3, 3, 1, 2), False, True), (3, 3, 5, 300, None, True, True),
              # LSTM's AVX-512 step (up to 8 rows, packed): more units than it takes at once (chunks of 128 and the
              # rest), on the prefix of rows still going
              (4, 5, 6, 300, (4, 4, 3, 2, 1), False, True),
              # past one pass of rows (16 + 16 + 5), packed too: unsorted lengths, then the prefix of a packed batch
              (4, 37, 6, 40, tuple((i * 7) % 5 for i in range(37)), False, True),
              (5, 37, 6, 21, tuple(sorted(((i * 3) % 6 for i in range(37)), reverse=True)), True, False),
              # 130 rows: each thread its own rows, a GEMM per step on the shared BLAS (where torch's is shared)
              (4, 130, 6, 20, tuple((i * 7) % 5 for i in range(130)), False, True),
              (5, 130, 6, 19, tuple(sorted(((i * 7) % 6 for i in range(130)), reverse=True)), True, False)]


@pytest.mark.parametrize("isa", isa_cases())
@pytest.mark.parametrize("T,B,I,H,lengths,reverse,with_state", ISA_SHAPES)
@pytest.mark.parametrize("kind", ("lstm", "gru", "rnn_tanh"))
def test_cpu_kernels_at_each_isa_level(kind, T, B, I, H, lengths, reverse, with_state, isa):
    with cpu_isa(isa):
        _check_layer(kind, "cpu", "cpu", torch.float32, T, B, I, H, lengths, reverse, with_state)


def _check_layer(kind, backend, device, dtype, T, B, I, H, lengths, reverse, with_state):
    t = _inputs(kind, T, B, I, H, with_state, dtype, device)
    lens = None if lengths is None else torch.tensor(lengths, device=device)
    n_out = 3 if kind == "lstm" else 2
    cot = [torch.randn(T, B, H, dtype=torch.float64, device=device)] + \
          [torch.randn(B, H, dtype=torch.float64, device=device) for _ in range(n_out - 1)]
    t64 = {k: None if v is None else v.double() for k, v in t.items()}
    ref_out, ref_g = _run("reference", kind, t64, lens, reverse, cot)
    low_out, low_g = _run("reference", kind, t, lens, reverse, cot)
    out, g = _run("crossfuse", kind, t, lens, reverse, cot, backend=backend)
    for i, name in enumerate(("out", "h_n", "c_n")[:n_out]):
        assert_within_rule(name, out[i], low_out[i], ref_out[i], dtype)
    allow = {name: None for name in ref_g}
    if kind == "rnn_relu":
        allow = relu_kink_allowance(lambda: _run("reference", kind, t64, lens, reverse, cot)[1], ref_g, dtype)
    for name in ref_g:
        assert_within_rule("d" + name, g[name], low_g[name], ref_g[name], dtype, allow[name])
    with torch.no_grad():  # the no-grad path (no workspace) gives the same values
        fast = layer(kind, t["x"], t["h0"], t["c0"], t["w_ih"], t["w_hh"], t["b_ih"], t["b_hh"], lengths=lens,
                     reverse=reverse, backend=backend)
    for i, name in enumerate(("out", "h_n", "c_n")[:n_out]):
        assert_within_rule("no-grad " + name, fast[i], low_out[i], ref_out[i], dtype)


def _launch_cases():
    """(launch, reverse, backend, device, dtype): the spread launch (a grid barrier between programs) only on a
    GPU; the interpreter runs programs one after another."""
    out = []
    for p in backend_cases(backends=("triton",), dtypes=(torch.float32, torch.float16)):
        backend, device, dtype = p.values
        for launch, reverse in (("persistent", False), ("per step", True), ("spread", False)):
            if launch != "spread" or device == "cuda":
                out.append(pytest.param(launch, reverse, backend, device, dtype, marks=p.marks,
                                        id=f"{launch}-{p.id}"))
    return out


@pytest.mark.parametrize("launch,reverse,backend,device,dtype", _launch_cases())
@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh"])
def test_triton_recurrence_over_tiles_and_launch_shapes(kind, launch, reverse, backend, device, dtype,
                                                        monkeypatch):
    """kernels/rnn.py with two batch tiles and several blocks of hidden units, in each launch shape (after a
    per-step forward the backward steps over the fused cell kernels)."""
    kernels = importlib.import_module("crossfuse.kernels.rnn")
    limit = 0 if launch == "per step" else 1 << 30
    monkeypatch.setattr(kernels, "PERSISTENT_MAX_H", {16: limit, 32: limit})
    if launch != "spread":
        monkeypatch.setattr(kernels, "_programs", lambda *a: 1)
    else:
        assert kernels.plan(18, 70, dtype, torch.device(device))[2] > 1
    lengths = tuple((3 * i) % 5 for i in range(18))
    test_layer_against_reference(kind, backend, device, dtype, 4, 18, 5, 70, lengths, reverse, True)


@pytest.mark.parametrize("backend,device,dtype", backend_cases(backends=("cpu", "cuda"), dtypes=(torch.float32,)))
@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh"])
def test_non_contiguous_inputs_weights_and_states(kind, backend, device, dtype, monkeypatch):
    """Every tensor a strided view with NaN in its gaps: the kernels read only the view's elements (and the
    contiguous copies made for them live through the call)."""
    contiguous = _inputs

    def strided_inputs(*args):
        out = {}
        for k, t in contiguous(*args).items():
            out[k] = None if t is None else strided(t.shape, t.dtype, t.device).copy_(t)
        return out

    monkeypatch.setattr(sys.modules[__name__], "_inputs", strided_inputs)
    test_layer_against_reference(kind, backend, device, dtype, 5, 6, 7, 67, (5, 2, 4, 0, 5, 3), False, True)


# (T, B, I, H, lengths, reverse, with_state, SMs, threads per block, staged columns): the CUDA cooperative
# recurrence's bodies on host threads. 8 blocks of 9 units (the last holds 7) of 16 threads, two output tiles
# per thread, batch chunks of 12 and 6 rows (LSTM; GRU 16 and 2), 32 columns staged per pass (three passes
# forward, nine back); then one row, where threads split each output tile's sum; then one block of 256 threads
# with every column staged at once.
PERSISTENT_SHAPES = [(4, 18, 5, 70, tuple((3 * i) % 5 for i in range(18)), False, True, 8, 16, 32),
                     (5, 1, 6, 9, (3,), True, True, 2, 64, 32), (3, 3, 4, 37, None, False, False, 1, 256, None)]


@pytest.mark.parametrize("T,B,I,H,lengths,reverse,with_state,sms,threads,kc", PERSISTENT_SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", KINDS)
def test_cuda_persistent_recurrence_on_host_threads(kind, dtype, T, B, I, H, lengths, reverse, with_state, sms,
                                                    threads, kc, monkeypatch):
    """csrc/cuda/rnn_persistent.cu's forward and backward bodies (crossfuse/rnn_persistent.h), run by the CPU
    build with a host thread per CUDA thread, inside the whole layer (the cuda backend's path) against the
    float64 reference."""
    rnn_ops = importlib.import_module("crossfuse.ops.rnn")
    ext = crossfuse._backend.ext
    plan = rnn_ops.persistent_plan(kind, B, H, sms, 1 << 30, threads, kc)
    assert plan is not None and (kc is None or plan[3] == kc) and plan[1] <= sms
    calls = []

    def on_host_threads(backend, kind_, B_, H_, x):
        calls.append(backend)
        return plan, lambda *args: ext.cpu.rnn_persistent_emulate(*args, threads)

    monkeypatch.setattr(rnn_ops, "_persistent_for", on_host_threads)
    test_layer_against_reference(kind, "cpu", "cpu", dtype, T, B, I, H, lengths, reverse, with_state)
    assert len(calls) == 3  # forward, backward, the no-grad forward


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", KINDS)
def test_cuda_persistent_recurrence_on_gpu(kind, dtype):
    """The cooperative launch itself (several blocks, lengths, both directions) on the GPU."""
    rnn_ops = importlib.import_module("crossfuse.ops.rnn")
    x = torch.empty(1, 18, 5, device="cuda", dtype=dtype)
    assert rnn_ops._persistent_for("cuda", kind, 18, 70, x) is not None, "the cooperative launch is not taken"
    lengths = tuple((3 * i) % 5 for i in range(18))
    for reverse in (False, True):
        test_layer_against_reference(kind, "cuda", "cuda", dtype, 4, 18, 5, 70, lengths, reverse, True)


def _flatten(res):
    out, state = res
    states = list(state) if isinstance(state, tuple) else [state]
    return [out.data if hasattr(out, "batch_sizes") else out] + states


@pytest.mark.parametrize("cls,kw", [("LSTM", {}), ("GRU", {}), ("RNN", {"nonlinearity": "relu"}),
                                    ("RNN", {"nonlinearity": "tanh"})])
@pytest.mark.parametrize("num_layers,bidirectional,batch_first,with_state",
                         [(1, False, False, False), (2, True, True, True), (3, True, False, True)])
def test_module_matches_torch_nn(cls, kw, num_layers, bidirectional, batch_first, with_state):
    theirs = getattr(torch.nn, cls)(13, 37, num_layers=num_layers, bidirectional=bidirectional,
                                    batch_first=batch_first, **kw)
    ours = getattr(crossfuse.nn, cls)(13, 37, num_layers=num_layers, bidirectional=bidirectional,
                                      batch_first=batch_first, **kw)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    ours.load_state_dict(theirs.state_dict())
    theirs.load_state_dict(ours.state_dict())
    T, B, D = 6, 5, 2 if bidirectional else 1
    x = torch.randn((B, T, 13) if batch_first else (T, B, 13))
    hx = None
    if with_state:
        h0 = torch.randn(num_layers * D, B, 37)
        hx = (h0, torch.randn_like(h0)) if cls == "LSTM" else h0
    theirs64 = getattr(torch.nn, cls)(13, 37, num_layers=num_layers, bidirectional=bidirectional,
                                      batch_first=batch_first, **kw).double()
    theirs64.load_state_dict(theirs.state_dict())

    def run(model, dtype):
        xs = leaf_like(x.to(dtype))
        hs = None if hx is None else tuple(leaf_like(h.to(dtype)) for h in (hx if isinstance(hx, tuple) else (hx,)))
        outs = _flatten(model(xs, None if hs is None else (hs if cls == "LSTM" else hs[0])))
        loss = sum((o.double() * torch.ones_like(o.double()).mul_(0.5 + i)).sum() for i, o in enumerate(outs))
        leaves = [xs] + list(hs or ()) + list(model.parameters())
        return outs, torch.autograd.grad(loss, leaves)

    ref_out, ref_g = run(theirs64, torch.float64)
    low_out, low_g = run(theirs, torch.float32)
    out, g = run(ours, torch.float32)
    for i, (a, lo, r) in enumerate(zip(out, low_out, ref_out)):
        assert_within_rule(f"output {i}", a, lo, r, torch.float32)
    for i, (a, lo, r) in enumerate(zip(g, low_g, ref_g)):
        assert_within_rule(f"grad {i}", a, lo, r, torch.float32)


@pytest.mark.parametrize("cls", ["LSTM", "GRU", "RNN"])
def test_packed_unsorted_and_lengths_match_each_sequence_alone(cls):
    torch.manual_seed(1)
    m = getattr(crossfuse.nn, cls)(4, 6, num_layers=2, bidirectional=True)
    T, B = 7, 5
    lengths = torch.tensor([3, 7, 1, 5, 2])
    x = torch.randn(T, B, 4)
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    out_p, st_p = m(packed)
    out_l, st_l = m(x, lengths=lengths)
    theirs = getattr(torch.nn, cls)(4, 6, num_layers=2, bidirectional=True)
    theirs.load_state_dict(m.state_dict())
    want_p, want_st = theirs(packed)
    torch.testing.assert_close(out_p.data, want_p.data)
    assert torch.equal(out_p.sorted_indices, want_p.sorted_indices)
    for b in range(B):
        n = int(lengths[b])
        alone, st_alone = m(x[:n, b:b + 1])
        torch.testing.assert_close(out_l[:n, b], alone[:, 0], atol=1e-6, rtol=1e-5)
        assert (out_l[n:, b] == 0).all()
        for a, s in zip(st_l if isinstance(st_l, tuple) else (st_l,), st_alone if isinstance(st_alone, tuple)
                        else (st_alone,)):
            torch.testing.assert_close(a[:, b], s[:, 0], atol=1e-6, rtol=1e-5)
    for a, s in zip(st_p if isinstance(st_p, tuple) else (st_p,), st_l if isinstance(st_l, tuple) else (st_l,)):
        torch.testing.assert_close(a, s)


@pytest.mark.parametrize("cls", ["LSTM", "GRU", "RNN"])
def test_packed_inference_matches_torch_nn(cls):
    """No-grad inference on a PackedSequence (unsorted lengths, two bidirectional layers): the input projection of
    the rows still going only (enough padding at T x B = 108), the outputs past each length left as they come (the
    re-packing drops them); padded input with lengths= still gets zeros there."""
    torch.manual_seed(3)
    m = getattr(crossfuse.nn, cls)(5, 7, num_layers=2, bidirectional=True)
    theirs = getattr(torch.nn, cls)(5, 7, num_layers=2, bidirectional=True)
    theirs.load_state_dict(m.state_dict())
    T, B = 12, 9
    lengths = torch.tensor([3, 12, 1, 7, 5, 12, 2, 9, 4])
    x = torch.randn(T, B, 5)
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    with torch.no_grad():
        (out, st), (want, want_st) = m(packed), theirs(packed)
        out_l, _ = m(x, lengths=lengths)
    # fp32 both sides, summed in other orders (oneDNN's GEMMs, ours): a few ulps apart
    torch.testing.assert_close(out.data, want.data, atol=1e-5, rtol=1e-5)
    for a, b in zip(st if isinstance(st, tuple) else (st,), want_st if isinstance(want_st, tuple) else (want_st,)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    for b in range(B):
        assert (out_l[int(lengths[b]):, b] == 0).all()


@pytest.mark.parametrize("cls", ["LSTM", "GRU", "RNN"])
def test_lengths_all_zero(cls):
    """lengths= of zeros (no row takes a step; T x B = 90, where other lengths that never increase get the
    projection of the rows still going only): outputs 0, final states the initial ones."""
    m = getattr(crossfuse.nn, cls)(6, 20)
    x, h0 = torch.randn(10, 9, 6), torch.randn(1, 9, 20)
    hx = (h0, torch.randn(1, 9, 20)) if cls == "LSTM" else h0
    with torch.no_grad():
        out, st = m(x, hx, lengths=torch.zeros(9, dtype=torch.long))
    assert (out == 0).all()
    for a, b in zip(st if isinstance(st, tuple) else (st,), hx if isinstance(hx, tuple) else (hx,)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("cls", ["LSTM", "GRU", "RNN"])
def test_packed_unsorted_with_states_and_gradients_match_torch_nn(cls):
    """A PackedSequence of unsorted lengths runs in its packed (sorted) order, the caller's initial states moved
    into it and the final states back: outputs, final states and the gradients of the data, h0 (and c0) as
    torch.nn's."""
    torch.manual_seed(2)
    m = getattr(crossfuse.nn, cls)(4, 6, num_layers=2, bidirectional=True)
    theirs = getattr(torch.nn, cls)(4, 6, num_layers=2, bidirectional=True)
    theirs.load_state_dict(m.state_dict())
    T, B = 6, 4
    x = torch.randn(T, B, 4)
    lengths = torch.tensor([2, 6, 1, 4])
    states = [torch.randn(4, B, 6) for _ in range(2 if cls == "LSTM" else 1)]
    results = []
    for mod in (m, theirs):
        xs = x.clone().requires_grad_()
        st = [s.clone().requires_grad_() for s in states]
        out, fin = mod(pack_padded_sequence(xs, lengths, enforce_sorted=False), tuple(st) if cls == "LSTM" else st[0])
        fin = list(fin) if isinstance(fin, tuple) else [fin]
        loss = (out.data * torch.arange(out.data.numel()).view_as(out.data).sin()).sum() + sum(
            (f * (k + 2)).sum() for k, f in enumerate(fin))
        results.append([out.data, *fin, *torch.autograd.grad(loss, [xs, *st])])
    for a, b in zip(*results):  # fp32 both sides, summed in other orders (oneDNN's GEMMs, ours): a few ulps apart
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cls", ["LSTM", "GRU"])
def test_packed_equal_lengths_in_a_permuted_order(cls):
    """Sequences of one length (no padding to undo): states go in and come out in the caller's order, the output
    stays in the packed order."""
    torch.manual_seed(2)
    m = getattr(crossfuse.nn, cls)(4, 6, num_layers=2, bidirectional=True)
    theirs = getattr(torch.nn, cls)(4, 6, num_layers=2, bidirectional=True)
    theirs.load_state_dict(m.state_dict())
    T, B = 5, 3
    order = torch.tensor([2, 0, 1])
    data = torch.randn(T * B, 4, requires_grad=True)
    packed = PackedSequence(data, torch.full((T,), B), order, torch.argsort(order))
    h0 = torch.randn(4, B, 6)
    hx = (h0, torch.randn(4, B, 6)) if cls == "LSTM" else h0
    for state in (None, hx):
        out, st = m(packed, state)
        want, want_st = theirs(packed, state)
        torch.testing.assert_close(out.data, want.data)
        assert torch.equal(out.sorted_indices, want.sorted_indices)
        for a, w in zip(st if isinstance(st, tuple) else (st,), want_st if isinstance(want_st, tuple) else (want_st,)):
            torch.testing.assert_close(a, w)
        g, = torch.autograd.grad(out.data.sum(), data)
        want_g, = torch.autograd.grad(want.data.sum(), data)
        torch.testing.assert_close(g, want_g)


def test_unbatched_zero_batch_and_single_step():
    m = crossfuse.nn.LSTM(3, 4, num_layers=2)
    theirs = torch.nn.LSTM(3, 4, num_layers=2)
    theirs.load_state_dict(m.state_dict())
    x = torch.randn(5, 3)
    for a, b in zip(_flatten(m(x)), _flatten(theirs(x))):  # unbatched (T, I)
        torch.testing.assert_close(a, b)
    out, (h, c) = m(torch.randn(4, 0, 3))
    assert out.shape == (4, 0, 4) and h.shape == (2, 0, 4)
    out, (h, c) = m(torch.randn(1, 1, 3))
    torch.testing.assert_close(out[0], h[-1])


@pytest.mark.parametrize("cls", ["LSTM", "GRU", "RNN"])
def test_single_step_is_the_cells_one_call(cls, monkeypatch):
    # A decoder feeds one step at a time: T = 1 on CPU is the cells' single C++ call (input GEMV included), with
    # and without autograd, never the input GEMM then the sequence loop; values as torch.nn's, both ways.
    from crossfuse import _backend
    calls = []
    for name in ("cell_step", "rnn_sequence"):
        real = getattr(_backend.ext.cpu, name)
        monkeypatch.setattr(_backend.ext.cpu, name, lambda *a, real=real, name=name: calls.append(name) or real(*a))
    m = getattr(crossfuse.nn, cls)(5, 7, num_layers=2)
    theirs = getattr(torch.nn, cls)(5, 7, num_layers=2)
    theirs.load_state_dict(m.state_dict())
    x = torch.randn(1, 3, 5, requires_grad=True)
    with torch.no_grad():
        for a, b in zip(_flatten(m(x)), _flatten(theirs(x))):
            torch.testing.assert_close(a, b)
    assert calls == ["cell_step"] * 2  # one call per layer
    ours, ref = m(x)[0].sum(), theirs(x)[0].sum()
    assert calls == ["cell_step"] * 4
    for a, b in zip(torch.autograd.grad(ours, [x, *m.parameters()]), torch.autograd.grad(ref, [x, *theirs.parameters()])):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("isa", isa_cases())
@pytest.mark.parametrize("cls", ["LSTM", "GRU", "RNN"])
def test_kept_packed_recurrent_weights_follow_changes(cls, isa, monkeypatch):
    """From the second forward that sees the same w_hh, the CPU recurrence runs on a kept packed copy (LSTM, RNN;
    GRU where it pads its gates, at AVX-512) instead of packing again: values as torch.nn's on every call, also
    after an in-place update and after the weight is replaced."""
    rnn = importlib.import_module("crossfuse.ops.rnn")
    given = []
    real = rnn._backend.ext.cpu.rnn_sequence
    monkeypatch.setattr(rnn._backend.ext.cpu, "rnn_sequence", lambda *a: given.append(a[-2] != 0) or real(*a))
    with cpu_isa(isa):
        m = getattr(crossfuse.nn, cls)(13, 37)
        theirs = getattr(torch.nn, cls)(13, 37)
        x = torch.randn(6, 3, 13)
        expect_copy = cls != "GRU" or crossfuse._backend.ext.cpu.isa() >= 4
        with torch.no_grad():
            for step in range(5):
                if step == 3:
                    m.weight_hh_l0.mul_(0.5)  # in place: the copy is stale
                if step == 4:
                    m.weight_hh_l0 = torch.nn.Parameter(torch.randn_like(m.weight_hh_l0) * 0.2)
                theirs.load_state_dict(m.state_dict())
                for a, b in zip(_flatten(m(x)), _flatten(theirs(x))):  # fp32 sums in other orders: a few ulps
                    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # seen once, then twice (the copy is made and used), a change (seen once), a new tensor (seen once)
    assert given == [False, expect_copy, expect_copy, False, False]


def test_dropout_between_layers():
    m = crossfuse.nn.GRU(8, 64, num_layers=2, dropout=0.5)
    x = torch.randn(3, 2, 8)
    m.eval()
    torch.testing.assert_close(m(x)[0], m(x)[0])
    with torch.no_grad():  # the kept fraction of the first layer's output, through the dropout the module applies
        y = torch.nn.functional.dropout(torch.ones(200000), m.dropout, True)
    assert abs((y > 0).float().mean().item() - 0.5) < 0.01
    m.train()
    assert not torch.equal(m(x)[0], m(x)[0])


def test_bad_input_names_the_argument():
    x = torch.randn(4, 2, 3)
    w_ih, w_hh = torch.randn(20, 3), torch.randn(20, 5)
    with pytest.raises(TypeError, match="w_hh to have dtype"):
        crossfuse.ops.lstm(x, None, w_ih, w_hh.double())
    with pytest.raises(ValueError, match=r"w_ih of shape \(20, 3\)"):
        crossfuse.ops.lstm(x, None, torch.randn(20, 4), w_hh)
    with pytest.raises(ValueError, match=r"input of shape \(seq_len, batch, input_size\)"):
        crossfuse.ops.lstm(x[0], None, w_ih, w_hh)
    with pytest.raises(ValueError, match="lengths in"):
        crossfuse.ops.lstm(x, None, w_ih, w_hh, lengths=torch.tensor([5, 1]))
    with pytest.raises(TypeError, match="lengths to be an integer tensor"):
        crossfuse.ops.lstm(x, None, w_ih, w_hh, lengths=torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="Expected hx"):
        crossfuse.nn.GRU(3, 5)(x, torch.randn(2, 2, 5))
    with pytest.raises(ValueError, match="nonlinearity"):
        crossfuse.nn.RNN(3, 5, nonlinearity="gelu")
    # a single step tries the cells' one call first: malformed arguments still get the layer's errors
    with pytest.raises(TypeError, match="w_ih to be a torch.Tensor"):
        crossfuse.ops.lstm(x[:1], None, w_ih.tolist(), w_hh)
    with pytest.raises(ValueError, match=r"h0 of shape \(2, 5\)"):
        crossfuse.ops.lstm(x[:1], (torch.randn(3, 5), torch.randn(2, 5)), w_ih, w_hh)


@pytest.mark.parametrize("bidirectional,with_state", [(False, True), (True, False)])
def test_lstm_proj_size_matches_torch_nn(bidirectional, with_state):
    theirs = torch.nn.LSTM(6, 9, num_layers=2, proj_size=4, bidirectional=bidirectional)
    ours = crossfuse.nn.LSTM(6, 9, num_layers=2, proj_size=4, bidirectional=bidirectional)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    ours.load_state_dict(theirs.state_dict())
    theirs64 = torch.nn.LSTM(6, 9, num_layers=2, proj_size=4, bidirectional=bidirectional).double()
    theirs64.load_state_dict(theirs.state_dict())
    D = 2 if bidirectional else 1
    x = torch.randn(5, 3, 6)
    hx = (torch.randn(2 * D, 3, 4), torch.randn(2 * D, 3, 9)) if with_state else None

    def run(model, dtype):
        xs = leaf_like(x.to(dtype))
        hs = None if hx is None else tuple(leaf_like(h.to(dtype)) for h in hx)
        out, (h, c) = model(xs, hs)
        loss = (out.double() * 0.5).sum() + (h.double() * 1.5).sum() + (c.double() * 2.5).sum()
        return [out, h, c], torch.autograd.grad(loss, [xs] + list(hs or ()) + list(model.parameters()))

    ref_out, ref_g = run(theirs64, torch.float64)
    low_out, low_g = run(theirs, torch.float32)
    out, g = run(ours, torch.float32)
    for i, (a, lo, r) in enumerate(zip(out + list(g), low_out + list(low_g), ref_out + list(ref_g))):
        assert_within_rule(f"value {i}", a, lo, r, torch.float32)


@pytest.mark.parametrize("backend,device,dtype", backend_cases(backends=("reference", "cpu", "triton")))
@pytest.mark.parametrize("cls", ["LayerNormLSTM", "LayerNormGRU"])
def test_layer_norm_variants_against_their_reference(cls, backend, device, dtype):
    torch.manual_seed(2)
    m = getattr(crossfuse.nn, cls)(6, 9, num_layers=2, bidirectional=True, backend=backend, device=device,
                                   dtype=dtype)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if n.startswith("ln_"):  # move the gains and shifts off their initial 1 and 0
                p.add_(torch.randn_like(p) * 0.3)
    ref = {}
    for key, dt in (("64", torch.float64), ("low", dtype)):
        r = getattr(crossfuse.nn, cls)(6, 9, num_layers=2, bidirectional=True, backend="reference", device=device,
                                       dtype=dt)
        r.load_state_dict(m.state_dict())
        ref[key] = r
    x = torch.randn(5, 3, 6, device=device)
    lengths = torch.tensor([5, 2, 4], device=device)
    h0 = torch.randn(4, 3, 9, device=device)
    hx = (h0, torch.randn_like(h0)) if cls == "LayerNormLSTM" else h0

    def run(model, dt):
        xs = leaf_like(x.to(dt))
        hs = tuple(leaf_like(h.to(dt)) for h in (hx if isinstance(hx, tuple) else (hx,)))
        out, st = model(xs, hs if isinstance(hx, tuple) else hs[0], lengths=lengths)
        vals = [out] + (list(st) if isinstance(st, tuple) else [st])
        loss = sum((v.double() * (0.5 + i)).sum() for i, v in enumerate(vals))
        return vals, torch.autograd.grad(loss, [xs, *hs] + list(model.parameters()))

    ref_v, ref_g = run(ref["64"], torch.float64)
    low_v, low_g = run(ref["low"], dtype)
    v, g = run(m, dtype)
    for i, (a, lo, r) in enumerate(zip(v + list(g), low_v + list(low_g), ref_v + list(ref_g))):
        assert_within_rule(f"value {i}", a, lo, r, dtype)
