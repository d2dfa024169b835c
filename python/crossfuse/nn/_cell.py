"""What the drop-in cells share: torch.nn's forward checks and the batched/unbatched handling."""


def check_input(module, input, hx_list):
    nd = input.ndim
    if nd != 1 and nd != 2:
        raise ValueError(f"{type(module).__name__}: Expected input to be 1D or 2D, got {nd}D instead")
    for i, h in enumerate(hx_list):
        if h is not None and h.ndim != nd:
            raise ValueError(f"{type(module).__name__}: Expected hx[{i}] to be {nd}D (like input), got {h.ndim}D instead")


def params(module):
    """(weight_ih, weight_hh, bias_ih, bias_hh), read from `_parameters` directly: Module.__getattr__ costs
    about 0.7 us per parameter, a noticeable share of a small cell step. bias=False registers the biases as None."""
    p = module._parameters
    return p["weight_ih"], p["weight_hh"], p.get("bias_ih"), p.get("bias_hh")
