"""lstm_cell: one fused LSTM step."""
from crossfuse.ops._cell import cell


def lstm_cell(input, hx, w_ih, w_hh, b_ih=None, b_hh=None, *, backend=None):
    """One ``torch.nn.LSTMCell`` step; returns (h', c').

    input: (B, I) or (I,); hx: a tuple (h, c) of (B, H) or (H,) tensors, or None (zeros);
    w_ih: (4H, I); w_hh: (4H, H); gates in torch's order i, f, g, o.
    """
    if hx is None:
        h = c = None
    elif isinstance(hx, (tuple, list)) and len(hx) == 2:
        h, c = hx
    else:
        raise TypeError(f"lstm_cell: expected hx to be a tuple (h, c) or None, got {type(hx).__name__}")
    return cell("lstm", input, h, c, w_ih, w_hh, b_ih, b_hh, backend)
