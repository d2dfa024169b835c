"""gru_cell: one fused GRU step."""
from crossfuse.ops._cell import cell


def gru_cell(input, hx, w_ih, w_hh, b_ih=None, b_hh=None, *, backend=None):
    """One ``torch.nn.GRUCell`` step; returns h'.

    input: (B, I) or (I,); hx: (B, H), (H,) or None (zeros); w_ih: (3H, I); w_hh: (3H, H);
    gates in torch's order r, z, n.
    """
    return cell("gru", input, hx, None, w_ih, w_hh, b_ih, b_hh, backend)[0]
