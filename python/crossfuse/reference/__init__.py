"""Naive pure-PyTorch implementations: the oracles the kernels are tested against (in float64)."""
from .contrastive_loss import contrastive_loss
from .cross_attention import cross_attention
from .fusions import product_pool
from .gru_cell import gru_cell
from .lstm_cell import lstm_cell
from .reparameterize_kl import reparameterize_kl
from .rnn import rnn_layer
from .rnn_cell import rnn_cell

__all__ = ["rnn_cell", "lstm_cell", "gru_cell", "cross_attention", "rnn_layer", "contrastive_loss", "reparameterize_kl",
           "product_pool"]
