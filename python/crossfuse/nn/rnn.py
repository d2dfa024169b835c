"""Drop-in torch.nn.RNN / LSTM / GRU on crossfuse's whole-sequence layers (crossfuse.ops.rnn / lstm / gru).

Same constructor, parameter names, state_dict keys, forward(input, hx=None) and outputs as torch.nn's, batched
and unbatched input, PackedSequence in and out (enforce_sorted=False too). Beyond torch.nn:
forward(..., lengths=...) on padded input (outputs past each length are 0, the final state is the one at each
sequence's length: no packing needed), and RNN(nonlinearity='sigmoid').
"""
import warnings

import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from crossfuse.ops.rnn import layer, step_layer


class _Layers(torch.nn.Module):
    """torch.nn.RNNBase's parameters (names, shapes, order, init) and attributes, and the shared forward.

    Not a subclass of torch.nn.RNNBase on purpose: torch.compile refuses to trace those ("Attempted to wrap RNN,
    GRU, or LSTM") unless a global dynamo flag is flipped; this module compiles as it is."""
    _gates = 1

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
                 bidirectional=False, device=None, dtype=None, *, proj_size=0, backend=None):
        super().__init__()
        name = type(self).__name__
        if not isinstance(dropout, (int, float)) or isinstance(dropout, bool) or not 0 <= dropout <= 1:
            raise ValueError(f"{name}: dropout should be a number in range [0, 1] representing the probability of "
                             f"an element being zeroed, got {dropout!r}")
        for arg, v in (("input_size", input_size), ("hidden_size", hidden_size), ("num_layers", num_layers)):
            if not isinstance(v, int) or isinstance(v, bool) or v < (0 if arg == "input_size" else 1):
                raise ValueError(f"{name}: {arg} must be a positive integer, got {v!r}")
        if dropout > 0 and num_layers == 1:
            warnings.warn(f"dropout option adds dropout after all but last recurrent layer, so non-zero dropout "
                          f"expects num_layers greater than 1, but got dropout={dropout} and num_layers={num_layers}")
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.dropout = bias, batch_first, float(dropout)
        if proj_size < 0 or (proj_size and proj_size >= hidden_size):
            raise ValueError(f"{name}: proj_size has to be a non-negative integer smaller than hidden_size, got "
                             f"{proj_size}")
        self.bidirectional, self.proj_size, self.backend = bidirectional, proj_size, backend
        fk = dict(device=device, dtype=dtype)
        G, H = self._gates, hidden_size
        out_size = proj_size or H
        self._flat_weights_names = []
        for li in range(num_layers):
            for d in range(2 if bidirectional else 1):
                sfx = f"_l{li}" + ("_reverse" if d else "")
                in_size = input_size if li == 0 else out_size * (2 if bidirectional else 1)
                params = [("weight_ih", (G * H, in_size)), ("weight_hh", (G * H, out_size))]
                if bias:
                    params += [("bias_ih", (G * H,)), ("bias_hh", (G * H,))]
                if proj_size:
                    params += [("weight_hr", (proj_size, H))]
                params += self._norm_params(G, H)
                for pname, shape in params:
                    self.register_parameter(pname + sfx, torch.nn.Parameter(torch.empty(shape, **fk)))
                    self._flat_weights_names.append(pname + sfx)
        self.reset_parameters()

    def _norm_params(self, G, H):
        return []

    def reset_parameters(self):
        stdv = 1.0 / self.hidden_size ** 0.5 if self.hidden_size > 0 else 0
        for name, w in self.named_parameters():
            if name.startswith("ln_"):  # layer-norm gains 1, shifts 0
                torch.nn.init.constant_(w, 1.0 if "_weight" in name else 0.0)
            else:
                torch.nn.init.uniform_(w, -stdv, stdv)

    def flatten_parameters(self):
        """A no-op kept for torch.nn compatibility (there is no cuDNN weight buffer to compact)."""

    @property
    def _flat_weights(self):
        return [self._parameters[n] for n in self._flat_weights_names]

    @property
    def all_weights(self):
        per = len(self._flat_weights_names) // (self.num_layers * (2 if self.bidirectional else 1))
        w = self._flat_weights
        return [w[i:i + per] for i in range(0, len(w), per)]

    def _run_layer(self, li, d, x, h0, c0, lengths, zero_past=True):
        sfx = f"_l{li}" + ("_reverse" if d else "")
        p = self._parameters
        w = (p["weight_ih" + sfx], p["weight_hh" + sfx], p.get("bias_ih" + sfx), p.get("bias_hh" + sfx))
        ln = self._norms(sfx)
        if self.proj_size or ln is not None:
            return step_layer(self._kind, x, h0, c0, *w, lengths=lengths, reverse=d == 1,
                              w_hr=p.get("weight_hr" + sfx), ln=ln, backend=self.backend)
        return layer(self._kind, x, h0, c0, *w, lengths=lengths, reverse=d == 1, backend=self.backend,
                     zero_past=zero_past)

    def _norms(self, sfx):
        return None

    def extra_repr(self):
        s = f"{self.input_size}, {self.hidden_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if self.bias is not True:
            s += f", bias={self.bias}"
        if self.batch_first:
            s += ", batch_first=True"
        if self.dropout:
            s += f", dropout={self.dropout}"
        if self.bidirectional:
            s += ", bidirectional=True"
        return s

    def forward(self, input, hx=None, lengths=None):
        name = type(self).__name__
        lstm = self._kind == "lstm"
        packed = isinstance(input, PackedSequence)
        unbatched = full = False
        if packed:
            if lengths is not None:
                raise ValueError(f"{name}: lengths= is for padded input; a PackedSequence carries its own")
            bs = input.batch_sizes
            full = bs.numel() > 0 and bool((bs == bs[0]).all())
            if full:  # every sequence runs all steps: the data is already (T, B, *), in the packed batch order
                x = input.data.reshape(bs.numel(), int(bs[0]), *input.data.shape[1:])
            else:  # (T, B, *) in the packed batch order (lengths non-increasing), as torch.nn runs it
                x, lens = pad_packed_sequence(PackedSequence(input.data, bs))
                lengths = lens.to(x.device)
        else:
            if input.dim() not in (2, 3):
                raise ValueError(f"{name}: Expected input to be 2D or 3D, got {input.dim()}D instead")
            unbatched = input.dim() == 2
            x = input.unsqueeze(1) if unbatched else (input.transpose(0, 1) if self.batch_first else input)
        B = x.shape[1]
        D = 2 if self.bidirectional else 1
        h0, c0 = (hx if lstm else (hx, None)) if hx is not None else (None, None)
        if unbatched:
            h0 = None if h0 is None else h0.unsqueeze(1)
            c0 = None if c0 is None else c0.unsqueeze(1)
        for nm, t, size in (("hx[0]" if lstm else "hx", h0, self.proj_size or self.hidden_size),
                            ("hx[1]", c0, self.hidden_size)):
            if t is not None and tuple(t.shape) != (self.num_layers * D, B, size):
                raise ValueError(f"{name}: Expected {nm} of size {(self.num_layers * D, B, size)}, "
                                 f"got {tuple(t.shape)}")
        if lstm and (h0 is None) != (c0 is None):
            raise ValueError(f"{name}: expected hx to be a tuple (h_0, c_0) or None")
        order = input.sorted_indices if packed else None
        if order is not None:  # the caller's states into the packed batch order
            h0 = None if h0 is None else h0.index_select(1, order)
            c0 = None if c0 is None else c0.index_select(1, order)
        h_n, c_n = [], []
        layer_in = x
        for li in range(self.num_layers):
            outs = []
            for d in range(D):
                i = li * D + d
                out, h, c = self._run_layer(li, d, layer_in, None if h0 is None else h0[i],
                                            None if c0 is None else c0[i], lengths, zero_past=not packed)
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
            data = (output.reshape(-1, output.shape[-1]) if full else pack_padded_sequence(output, lens).data)
            output = PackedSequence(data, input.batch_sizes, input.sorted_indices, input.unsorted_indices)
            if order is not None:  # the final states back in the caller's order
                h_n = h_n.index_select(1, input.unsorted_indices)
                c_n = None if c_n is None else c_n.index_select(1, input.unsorted_indices)
        elif unbatched:
            output, h_n = output.squeeze(1), h_n.squeeze(1)
            c_n = None if c_n is None else c_n.squeeze(1)
        elif self.batch_first:
            output = output.transpose(0, 1)
        return output, ((h_n, c_n) if lstm else h_n)


class LSTM(_Layers):
    """Drop-in torch.nn.LSTM, proj_size included; forward(input, hx=None, lengths=None)."""
    _kind = "lstm"
    _gates = 4

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
                 bidirectional=False, proj_size=0, device=None, dtype=None, *, backend=None):
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, device,
                         dtype, proj_size=proj_size, backend=backend)

    def extra_repr(self):
        s = super().extra_repr()
        return s + (f", proj_size={self.proj_size}" if self.proj_size else "")


class GRU(_Layers):
    """Drop-in torch.nn.GRU; forward(input, hx=None, lengths=None)."""
    _kind = "gru"
    _gates = 3


class RNN(_Layers):
    """Drop-in torch.nn.RNN, also with nonlinearity='sigmoid'; forward(input, hx=None, lengths=None)."""

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, device=None, dtype=None, *, backend=None):
        if nonlinearity not in ("tanh", "relu", "sigmoid"):
            raise ValueError(f"RNN: expected nonlinearity in ('tanh', 'relu', 'sigmoid'), got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, device,
                         dtype, backend=backend)

    @property
    def _kind(self):
        return "rnn_" + self.nonlinearity

    def extra_repr(self):
        s = super().extra_repr()
        return s if self.nonlinearity == "tanh" else s + f", nonlinearity={self.nonlinearity!r}"


class LayerNormLSTM(_Layers):
    """LSTM with layer norm on the input and recurrent pre-activations and on the cell state (haste's
    LayerNormLSTM, with torch.nn.LSTM's arguments, gate order and parameter names, plus per layer and direction
    ln_ih_weight / ln_hh_weight (4*hidden) and ln_cell_weight / ln_cell_bias (hidden)):
    gates = LN(W_ih x) + b_ih + LN(W_hh h) + b_hh;  c' = f c + i g;  h' = o tanh(LN(c'))."""
    _kind = "lstm"
    _gates = 4

    def _norm_params(self, G, H):
        return [("ln_ih_weight", (G * H,)), ("ln_hh_weight", (G * H,)), ("ln_cell_weight", (H,)),
                ("ln_cell_bias", (H,))]

    def _norms(self, sfx):
        p = self._parameters
        return tuple(p[n + sfx] for n in ("ln_ih_weight", "ln_hh_weight", "ln_cell_weight", "ln_cell_bias"))


class LayerNormGRU(_Layers):
    """GRU with layer norm on the input and recurrent pre-activations (haste's LayerNormGRU, with torch.nn.GRU's
    arguments, gate order and parameter names, plus ln_ih_weight / ln_hh_weight (3*hidden) per layer and
    direction): gates = LN(W_ih x) + b_ih and LN(W_hh h) + b_hh, then torch.nn.GRU's update."""
    _kind = "gru"
    _gates = 3

    def _norm_params(self, G, H):
        return [("ln_ih_weight", (G * H,)), ("ln_hh_weight", (G * H,))]

    def _norms(self, sfx):
        p = self._parameters
        return (p["ln_ih_weight" + sfx], p["ln_hh_weight" + sfx])
