"""Naive PyTorch LSTM cell (torch.nn.LSTMCell's math, gates in the order i, f, g, o). The oracle for lstm_cell."""
import torch


def lstm_cell(input, hx, w_ih, w_hh, b_ih=None, b_hh=None):
    H = w_hh.shape[1]
    if hx is None:
        zeros = input.new_zeros(input.shape[0], H)
        hx = (zeros, zeros)
    h, c = hx
    gates = input @ w_ih.t() + h @ w_hh.t()
    if b_ih is not None:
        gates = gates + b_ih
    if b_hh is not None:
        gates = gates + b_hh
    i, f, g, o = gates.chunk(4, dim=1)
    i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
    c1 = f * c + i * g
    h1 = o * torch.tanh(c1)
    return h1, c1
