"""rnn_cell benchmark: crossfuse.nn.RNNCell against torch.nn's (the peer) and the eager reference."""
from crossfuse.bench._cells import cell_cases


def cases(device, quick):
    return cell_cases("rnn", device, quick)
