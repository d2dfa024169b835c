"""rnn benchmark: crossfuse.nn's whole-sequence layer against torch.nn's (the peer), a cell loop and the reference."""
from crossfuse.bench._layers import layer_cases


def cases(device, quick):
    return layer_cases("rnn", device, quick)
