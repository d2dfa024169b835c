"""Naive PyTorch recurrent layer (one layer, one direction) as a loop over the reference cells: the oracle for
crossfuse.ops.rnn / lstm / gru. With `lengths`, a row stops updating at its length (its output is 0 after it,
its final state is the one at its length); with reverse=True each row runs from its own last step back."""
import torch

from .gru_cell import gru_cell
from .lstm_cell import lstm_cell
from .rnn_cell import rnn_cell


def rnn_layer(kind, x, h0, c0, w_ih, w_hh, b_ih=None, b_hh=None, lengths=None, reverse=False):
    """kind: 'lstm', 'gru', 'rnn_tanh', 'rnn_relu' or 'rnn_sigmoid'; x (T, B, I). Returns (out, h_T, c_T or None)."""
    T, B = x.shape[:2]
    H = w_hh.shape[1]
    h = h0 if h0 is not None else x.new_zeros(B, H)
    c = (c0 if c0 is not None else x.new_zeros(B, H)) if kind == "lstm" else None
    outs = [None] * T
    for t in (reversed(range(T)) if reverse else range(T)):
        if kind == "lstm":
            h2, c2 = lstm_cell(x[t], (h, c), w_ih, w_hh, b_ih, b_hh)
        elif kind == "gru":
            h2, c2 = gru_cell(x[t], h, w_ih, w_hh, b_ih, b_hh), None
        else:
            h2, c2 = rnn_cell(x[t], h, w_ih, w_hh, b_ih, b_hh, nonlinearity=kind[4:]), None
        if lengths is None:
            outs[t] = h2
        else:
            on = (t < lengths.to(x.device))[:, None]
            h2 = torch.where(on, h2, h)
            c2 = torch.where(on, c2, c) if c is not None else None
            outs[t] = torch.where(on, h2, torch.zeros_like(h2))
        h, c = h2, c2
    out = torch.stack(outs) if T else x.new_zeros(0, B, H)
    return out, h, c
