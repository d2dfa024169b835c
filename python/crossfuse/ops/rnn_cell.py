"""rnn_cell: one fused Elman RNN step (tanh, relu or sigmoid)."""
from crossfuse.ops._cell import cell

NONLINEARITIES = ("tanh", "relu", "sigmoid")


def rnn_cell(input, hx, w_ih, w_hh, b_ih=None, b_hh=None, *, nonlinearity="tanh", backend=None):
    """h' = act(input W_ih^T + b_ih + hx W_hh^T + b_hh), like ``torch.nn.RNNCell``.

    input: (B, I) or (I,); hx: (B, H), (H,) or None (zeros); w_ih: (H, I); w_hh: (H, H).
    """
    if nonlinearity not in NONLINEARITIES:
        raise ValueError(f"rnn_cell: expected nonlinearity in {NONLINEARITIES}, got {nonlinearity!r}")
    return cell("rnn_" + nonlinearity, input, hx, None, w_ih, w_hh, b_ih, b_hh, backend)[0]
