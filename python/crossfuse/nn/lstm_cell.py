import torch

from crossfuse.nn._cell import check_input, params
from crossfuse.ops._cell import cell
from crossfuse.ops.lstm_cell import lstm_cell


class LSTMCell(torch.nn.LSTMCell):
    """Drop-in ``torch.nn.LSTMCell`` on crossfuse's fused kernel. Same parameters and state_dict keys."""

    def __init__(self, input_size, hidden_size, bias=True, device=None, dtype=None, *, backend=None):
        super().__init__(input_size, hidden_size, bias, device=device, dtype=dtype)
        self.backend = backend

    def forward(self, input, hx=None):
        if hx is not None and not (isinstance(hx, (tuple, list)) and len(hx) == 2):
            check_input(self, input, ())
            return lstm_cell(input, hx, *params(self), backend=self.backend)  # raises the TypeError
        h, c = (None, None) if hx is None else hx
        return cell("lstm", input, h, c, *params(self), self.backend, self)
