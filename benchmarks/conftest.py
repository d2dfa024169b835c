import pytest
import torch

import crossfuse

CLASSES = {"rnn": "RNNCell", "lstm": "LSTMCell", "gru": "GRUCell"}


def cell_pair(kind, B, H):
    """(torch.nn cell, crossfuse cell on the cpu backend with the same weights, input, state)."""
    name = CLASSES[kind]
    peer = getattr(torch.nn, name)(H, H)
    ours = getattr(crossfuse.nn, name)(H, H, backend="cpu")
    ours.load_state_dict(peer.state_dict())
    x, h = torch.randn(B, H), torch.randn(B, H)
    return peer, ours, x, ((h, torch.randn(B, H)) if kind == "lstm" else h)


@pytest.fixture
def no_grad():
    with torch.no_grad():
        yield


def forward_step_benchmark(kind, shapes=((1, 128), (8, 256), (64, 1024))):
    """The forward-step benchmark of one cell: torch.nn's against crossfuse's cpu backend."""
    @pytest.mark.parametrize("B,H", shapes)
    @pytest.mark.parametrize("impl", ["torch.nn", "crossfuse-cpu"])
    def test_forward_step(benchmark, no_grad, impl, B, H):
        peer, ours, x, state = cell_pair(kind, B, H)
        benchmark(peer if impl == "torch.nn" else ours, x, state)
    return test_forward_step
