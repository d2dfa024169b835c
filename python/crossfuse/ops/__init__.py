"""Functional ops. Each takes ``backend=`` (None: the fastest available for the inputs' device)."""
from .contrastive_loss import contrastive_loss
from .cross_attention import cross_attention, cross_attention_varlen
from .fusions import compact_bilinear_pooling, product_pool, signed_sqrt_normalize
from .gru_cell import gru_cell
from .lstm_cell import lstm_cell
from .reparameterize_kl import reparameterize_kl
from .rnn import gru, lstm, rnn
from .rnn_cell import rnn_cell

__all__ = ["rnn_cell", "lstm_cell", "gru_cell", "cross_attention", "cross_attention_varlen",
           "rnn", "lstm", "gru", "contrastive_loss", "reparameterize_kl", "product_pool", "signed_sqrt_normalize",
           "compact_bilinear_pooling"]
