"""Drop-in nn.Modules: same constructor, parameter names, state_dict keys and forward as torch.nn's."""
from .contrastive_loss import ClipLoss, SigLipLoss
from .fusions import (GMU, MCB, MFB, MFH, MLB, Block, BlockTucker, ConcatMLP, FiLM, GatedTanh, LinearSum, Mutan,
                      Tucker)
from .cross_attention import BidirectionalCrossAttention, GatedCrossAttentionBlock, MultiheadCrossAttention
from .gru_cell import GRUCell
from .lstm_cell import LSTMCell
from .rnn import GRU, LSTM, RNN, LayerNormGRU, LayerNormLSTM
from .rnn_cell import RNNCell

__all__ = ["RNNCell", "LSTMCell", "GRUCell", "MultiheadCrossAttention", "GatedCrossAttentionBlock",
           "BidirectionalCrossAttention", "RNN", "LSTM", "GRU", "LayerNormLSTM",
           "LayerNormGRU", "ClipLoss", "SigLipLoss", "LinearSum", "ConcatMLP", "MLB", "MFB", "MFH", "Mutan",
           "Tucker", "Block", "BlockTucker", "MCB", "GMU", "FiLM", "GatedTanh"]
