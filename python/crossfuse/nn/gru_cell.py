import torch

from crossfuse.nn._cell import params
from crossfuse.ops._cell import cell


class GRUCell(torch.nn.GRUCell):
    """Drop-in ``torch.nn.GRUCell`` on crossfuse's fused kernel. Same parameters and state_dict keys."""

    def __init__(self, input_size, hidden_size, bias=True, device=None, dtype=None, *, backend=None):
        super().__init__(input_size, hidden_size, bias, device=device, dtype=dtype)
        self.backend = backend

    def forward(self, input, hx=None):
        return cell("gru", input, hx, None, *params(self), self.backend, self)[0]
