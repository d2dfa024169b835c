"""What the drop-in cells share: torch.nn's forward checks and the batched/unbatched handling."""
import torch


def check_input(module, input, hx_list):
    name = type(module).__name__
    if input.dim() not in (1, 2):
        raise ValueError(f"{name}: Expected input to be 1D or 2D, got {input.dim()}D instead")
    for i, h in enumerate(hx_list):
        if h is not None and h.dim() != input.dim():
            raise ValueError(f"{name}: Expected hx[{i}] to be {input.dim()}D (like input), got {h.dim()}D instead")


def bias(module):
    return (module.bias_ih, module.bias_hh) if module.bias else (None, None)
