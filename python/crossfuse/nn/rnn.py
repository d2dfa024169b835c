"""Drop-in torch.nn.RNN / LSTM / GRU on crossfuse's whole-sequence layers (crossfuse.ops.rnn / lstm / gru).

Same constructor, parameter names, state_dict keys, forward(input, hx=None) and outputs as torch.nn's, batched
and unbatched input, PackedSequence in and out (enforce_sorted=False too). Beyond torch.nn:
forward(..., lengths=...) on padded input (outputs past each length are 0, the final state is the one at each
sequence's length: no packing needed), and RNN(nonlinearity='sigmoid').
"""
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from crossfuse.ops.rnn import layer


class _Layers:
    """The forward shared by the three modules; `_kind` names the cell."""

    def _check_args(self, proj_size=0):
        if proj_size:
            raise ValueError(f"{type(self).__name__}: proj_size > 0 is not supported by crossfuse yet "
                             f"(got {proj_size}); use torch.nn.LSTM for projected LSTMs")

    def _weights(self, layer_idx, direction):
        sfx = f"_l{layer_idx}" + ("_reverse" if direction else "")
        p = self._parameters
        return (p["weight_ih" + sfx], p["weight_hh" + sfx], p.get("bias_ih" + sfx), p.get("bias_hh" + sfx))

    def forward(self, input, hx=None, lengths=None):
        name = type(self).__name__
        lstm = self._kind == "lstm"
        packed = isinstance(input, PackedSequence)
        unbatched = False
        if packed:
            if lengths is not None:
                raise ValueError(f"{name}: lengths= is for padded input; a PackedSequence carries its own")
            x, lens = pad_packed_sequence(input)  # (T, B, *) in the caller's batch order
            lengths = lens.to(x.device)
        else:
            if input.dim() not in (2, 3):
                raise ValueError(f"{name}: Expected input to be 2D or 3D, got {input.dim()}D instead")
            unbatched = input.dim() == 2
            x = input.unsqueeze(1) if unbatched else (input.transpose(0, 1) if self.batch_first else input)
        T, B = x.shape[0], x.shape[1]
        D = 2 if self.bidirectional else 1
        h0, c0 = (hx if lstm else (hx, None)) if hx is not None else (None, None)
        if unbatched:
            h0 = None if h0 is None else h0.unsqueeze(1)
            c0 = None if c0 is None else c0.unsqueeze(1)
        for nm, t in (("hx[0]" if lstm else "hx", h0), ("hx[1]", c0)):
            if t is not None and tuple(t.shape) != (self.num_layers * D, B, self.hidden_size):
                raise ValueError(f"{name}: Expected {nm} of size {(self.num_layers * D, B, self.hidden_size)}, "
                                 f"got {tuple(t.shape)}")
        if lstm and (h0 is None) != (c0 is None):
            raise ValueError(f"{name}: expected hx to be a tuple (h_0, c_0) or None")
        h_n, c_n = [], []
        layer_in = x
        for li in range(self.num_layers):
            outs = []
            for d in range(D):
                i = li * D + d
                out, h, c = layer(self._kind, layer_in, None if h0 is None else h0[i], None if c0 is None else c0[i],
                                  *self._weights(li, d), lengths=lengths, reverse=d == 1, backend=self.backend)
                outs.append(out)
                h_n.append(h)
                c_n.append(c)
            layer_in = torch.cat(outs, -1) if D == 2 else outs[0]
            if self.dropout and self.training and li < self.num_layers - 1:
                layer_in = torch.nn.functional.dropout(layer_in, self.dropout, True)
        output = layer_in
        h_n = torch.stack(h_n)
        c_n = torch.stack(c_n) if lstm else None
        if packed:
            if input.sorted_indices is None:
                output = pack_padded_sequence(output, lens)
            else:  # keep the caller's sort, as torch.nn does
                idx = input.sorted_indices
                data = pack_padded_sequence(output.index_select(1, idx), lens[idx.cpu()]).data
                output = PackedSequence(data, input.batch_sizes, input.sorted_indices, input.unsorted_indices)
        elif unbatched:
            output, h_n = output.squeeze(1), h_n.squeeze(1)
            c_n = None if c_n is None else c_n.squeeze(1)
        elif self.batch_first:
            output = output.transpose(0, 1)
        return output, ((h_n, c_n) if lstm else h_n)


class LSTM(_Layers, torch.nn.LSTM):
    """Drop-in torch.nn.LSTM (proj_size not yet supported); forward(input, hx=None, lengths=None)."""
    _kind = "lstm"

    def __init__(self, *args, backend=None, **kwargs):
        super().__init__(*args, **kwargs)
        self._check_args(self.proj_size)
        self.backend = backend


class GRU(_Layers, torch.nn.GRU):
    """Drop-in torch.nn.GRU; forward(input, hx=None, lengths=None)."""
    _kind = "gru"

    def __init__(self, *args, backend=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.backend = backend


class RNN(_Layers, torch.nn.RNN):
    """Drop-in torch.nn.RNN, also with nonlinearity='sigmoid'; forward(input, hx=None, lengths=None)."""

    def __init__(self, *args, nonlinearity="tanh", backend=None, **kwargs):
        if len(args) > 3:  # torch.nn.RNN(input_size, hidden_size, num_layers, nonlinearity, ...)
            nonlinearity, args = args[3], args[:3] + args[4:]
        if nonlinearity not in ("tanh", "relu", "sigmoid"):
            raise ValueError(f"RNN: expected nonlinearity in ('tanh', 'relu', 'sigmoid'), got {nonlinearity!r}")
        super().__init__(*args, nonlinearity="tanh" if nonlinearity == "sigmoid" else nonlinearity, **kwargs)
        self.nonlinearity = nonlinearity
        self.backend = backend

    @property
    def _kind(self):
        return "rnn_" + self.nonlinearity
