import torch

from crossfuse.nn._cell import params
from crossfuse.ops._cell import cell
from crossfuse.ops.rnn_cell import NONLINEARITIES


class RNNCell(torch.nn.RNNCell):
    """Drop-in ``torch.nn.RNNCell`` on crossfuse's fused kernel; also takes ``nonlinearity='sigmoid'``
    (the Elman cell h' = sigmoid(W x + U h + b)). Same parameters and state_dict keys."""

    def __init__(self, input_size, hidden_size, bias=True, nonlinearity="tanh", device=None, dtype=None, *, backend=None):
        if nonlinearity not in NONLINEARITIES:
            raise ValueError(f"RNNCell: expected nonlinearity in {NONLINEARITIES}, got {nonlinearity!r}")
        super().__init__(input_size, hidden_size, bias, nonlinearity, device=device, dtype=dtype)
        self.backend = backend

    def forward(self, input, hx=None):
        if self.nonlinearity not in NONLINEARITIES:
            raise ValueError(f"RNNCell: expected nonlinearity in {NONLINEARITIES}, got {self.nonlinearity!r}")
        return cell("rnn_" + self.nonlinearity, input, hx, None, *params(self), self.backend, self)[0]
