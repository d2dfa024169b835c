"""torch.compile(fullgraph=True) traces through the cell custom ops on CPU: no graph break,
values and gradients equal to eager."""
import pytest
import torch

import crossfuse

pytestmark = pytest.mark.slow


class Stack(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = crossfuse.nn.LSTMCell(6, 8)
        self.gru = crossfuse.nn.GRUCell(8, 8)
        self.rnn = crossfuse.nn.RNNCell(8, 5, nonlinearity="sigmoid")

    def forward(self, x, h, c):
        h, c = self.lstm(x, (h, c))
        g = self.gru(h)
        return self.rnn(g), c


def test_compiled_model_matches_eager():
    torch._dynamo.reset()
    model = Stack()
    x, h, c = torch.randn(3, 6), torch.randn(3, 8), torch.randn(3, 8)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    out, c1 = compiled(x, h, c)
    ref, c_ref = model(x, h, c)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(c1, c_ref)
    g = torch.autograd.grad((out.sum() + c1.sum()), list(model.parameters()))
    g_ref = torch.autograd.grad((ref.sum() + c_ref.sum()), list(model.parameters()))
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b)


def test_inductor_compiles_the_custom_op():
    torch._dynamo.reset()
    cell = crossfuse.nn.LSTMCell(4, 3)
    x = torch.randn(2, 4)
    compiled = torch.compile(cell, fullgraph=True)
    with torch.no_grad():
        got = compiled(x)
        ref = cell(x)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b)


class CrossBlock(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = crossfuse.nn.MultiheadCrossAttention(16, 2, kdim=12, vdim=12, num_kv_heads=1)

    def forward(self, x, ctx, lengths):
        return self.attn(x, ctx, kv_lengths=lengths)[0]


def test_compiled_cross_attention_matches_eager():
    """Under the test's interpreter the Triton path is the custom op: fake, autograd and runtime all traced."""
    torch._dynamo.reset()
    model = CrossBlock()
    x, ctx, lengths = torch.randn(2, 5, 16), torch.randn(2, 7, 12), torch.tensor([7, 3])
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    out = compiled(x, ctx, lengths)
    ref = model(x, ctx, lengths)
    torch.testing.assert_close(out, ref)
    g = torch.autograd.grad(out.sum(), list(model.parameters()))
    g_ref = torch.autograd.grad(ref.sum(), list(model.parameters()))
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b)


def test_compiled_lstm_matches_eager():
    torch._dynamo.reset()
    model = crossfuse.nn.LSTM(5, 7, num_layers=2, bidirectional=True)
    x, lengths = torch.randn(4, 3, 5), torch.tensor([4, 1, 3])
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    out, (h, c) = compiled(x, lengths=lengths)
    ref, (h_ref, c_ref) = model(x, lengths=lengths)
    for a, b in ((out, ref), (h, h_ref), (c, c_ref)):
        torch.testing.assert_close(a, b)
    g = torch.autograd.grad(out.sum() + h.sum() + c.sum(), list(model.parameters()))
    g_ref = torch.autograd.grad(ref.sum() + h_ref.sum() + c_ref.sum(), list(model.parameters()))
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b)


def test_compiled_losses_match_eager():
    """contrastive_loss (cpu path) and reparameterize_kl (interpreted Triton) trace as custom ops."""
    torch._dynamo.reset()

    def f(img, txt, scale, mu, logvar, eps):
        z, kl = crossfuse.ops.reparameterize_kl(mu, logvar, eps)
        return crossfuse.ops.contrastive_loss(img, txt, scale) + z.sum() + kl.sum()

    args = [torch.randn(6, 8), torch.randn(6, 8), torch.tensor(5.0), torch.randn(3, 4), torch.randn(3, 4),
            torch.randn(3, 4)]
    leaves = [a.clone().requires_grad_() for a in args[:5]] + [args[5]]
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    got = compiled(*leaves)
    want = f(*leaves)
    torch.testing.assert_close(got, want)
    for a, b in zip(torch.autograd.grad(got, leaves[:5]), torch.autograd.grad(want, leaves[:5])):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("name", ["Block", "MFH"])
def test_compiled_fusions_match_eager(name):
    """The product-pool custom op (cpu path: its projections saved as extra outputs) traces with no break."""
    torch._dynamo.reset()
    model = crossfuse.nn.Block([6, 5], 4, mm_dim=8, chunks=2, rank=3) if name == "Block" else \
        crossfuse.nn.MFH([6, 5], 4, mm_dim=5, factor=2)
    x = [torch.randn(3, 6), torch.randn(3, 2, 5)]
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    ref = model(x)
    torch.testing.assert_close(out, ref)
    g = torch.autograd.grad(out.sum(), list(model.parameters()))
    g_ref = torch.autograd.grad(ref.sum(), list(model.parameters()))
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b)
