"""Naive PyTorch Elman cell: h' = act(x W_ih^T + b_ih + h W_hh^T + b_hh). The oracle for rnn_cell."""
import torch

# Module-level so a test can swap an activation (tests/harness.py relu_kink_allowance).
ACTIVATIONS = {"tanh": torch.tanh, "relu": torch.relu, "sigmoid": torch.sigmoid}


def rnn_cell(input, hx, w_ih, w_hh, b_ih=None, b_hh=None, nonlinearity="tanh"):
    if hx is None:
        hx = input.new_zeros(input.shape[0], w_hh.shape[1])
    pre = input @ w_ih.t() + hx @ w_hh.t()
    if b_ih is not None:
        pre = pre + b_ih
    if b_hh is not None:
        pre = pre + b_hh
    return ACTIVATIONS[nonlinearity](pre)
