"""Naive PyTorch GRU cell (torch.nn.GRUCell's math, gates in the order r, z, n). The oracle for gru_cell."""
import torch


def gru_cell(input, hx, w_ih, w_hh, b_ih=None, b_hh=None):
    H = w_hh.shape[1]
    if hx is None:
        hx = input.new_zeros(input.shape[0], H)
    gi = input @ w_ih.t()
    gh = hx @ w_hh.t()
    if b_ih is not None:
        gi = gi + b_ih
    if b_hh is not None:
        gh = gh + b_hh
    ir, iz, in_ = gi.chunk(3, dim=1)
    hr, hz, hn = gh.chunk(3, dim=1)
    r = torch.sigmoid(ir + hr)
    z = torch.sigmoid(iz + hz)
    n = torch.tanh(in_ + r * hn)
    return (1 - z) * n + z * hx
