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
        h, c = _advance(outs, t, lengths, h2, c2, h, c)
    out = torch.stack(outs) if T else x.new_zeros(0, B, H)
    return out, h, c


def _advance(outs, t, lengths, h2, c2, h, c):
    """Records step t's output and returns the next state: rows past their length keep (h, c) and output 0."""
    if lengths is None:
        outs[t] = h2
        return h2, c2
    on = (t < lengths.to(h2.device))[:, None]
    h2 = torch.where(on, h2, h)
    c2 = torch.where(on, c2, c) if c is not None else None
    outs[t] = torch.where(on, h2, torch.zeros_like(h2))
    return h2, c2


def step_layer(kind, x, h0, c0, w_ih, w_hh, b_ih=None, b_hh=None, lengths=None, reverse=False, w_hr=None, ln=None,
               eps=1e-5):
    """LSTM with a projection (w_hr) and the layer-norm LSTM / GRU (ln: see crossfuse.ops.rnn.step_layer), in
    plain torch ops: gates = LN(W_ih x) + b_ih + LN(W_hh h) + b_hh; LSTM h = o * tanh(LN(c)), then h = W_hr h."""
    F = torch.nn.functional
    T, B = x.shape[:2]
    G = 4 if kind == "lstm" else 3
    H = w_hh.shape[0] // G
    P = w_hr.shape[0] if w_hr is not None else H
    h = h0 if h0 is not None else x.new_zeros(B, P)
    c = (c0 if c0 is not None else x.new_zeros(B, H)) if kind == "lstm" else None
    outs = [None] * T
    for t in (reversed(range(T)) if reverse else range(T)):
        gi, gh = x[t] @ w_ih.t(), h @ w_hh.t()
        if ln is not None:
            gi, gh = F.layer_norm(gi, (G * H,), ln[0], None, eps), F.layer_norm(gh, (G * H,), ln[1], None, eps)
        if b_ih is not None:
            gi = gi + b_ih
        if b_hh is not None:
            gh = gh + b_hh
        if kind == "lstm":
            i, f, g, o = (gi + gh).chunk(4, 1)
            c2 = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            cn = F.layer_norm(c2, (H,), ln[2], ln[3], eps) if ln is not None else c2
            h2 = torch.sigmoid(o) * torch.tanh(cn)
        else:
            ir, iz, inn = gi.chunk(3, 1)
            hr, hz, hn = gh.chunk(3, 1)
            r, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
            n = torch.tanh(inn + r * hn)
            h2, c2 = (1 - z) * n + z * h, None
        if w_hr is not None:
            h2 = h2 @ w_hr.t()
        h, c = _advance(outs, t, lengths, h2, c2, h, c)
    out = torch.stack(outs) if T else x.new_zeros(0, B, P)
    return out, h, c
