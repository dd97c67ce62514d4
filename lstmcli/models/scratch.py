"""From-scratch LSTM, GRU and tanh RNN: the textbook equations, with hand-written backward passes.

Equations (PyTorch's conventions, so weights move between `builtin` and `scratch` unchanged):
  LSTM  i = σ(W_ii x + b_ii + W_hi h + b_hi)    f = σ(W_if x + b_if + W_hf h + b_hf)
        g = tanh(W_ig x + b_ig + W_hg h + b_hg)  o = σ(W_io x + b_io + W_ho h + b_ho)
        c' = f ⊙ c + i ⊙ g                      h' = o ⊙ tanh(c')
  peephole LSTM (Gers & Schmidhuber 2000): i and f also see w_ci ⊙ c, w_cf ⊙ c; o sees w_co ⊙ c'.
  GRU   r = σ(W_ir x + b_ir + W_hr h + b_hr)    z = σ(W_iz x + b_iz + W_hz h + b_hz)
        n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn))                h' = (1 - z) ⊙ n + z ⊙ h
  RNN   h' = tanh(W_ih x + b_ih + W_hh h + b_hh)

Recurrent dropout (`recurrent_dropout`, AWD-LSTM's DropConnect): while training, each W_h* above is a
dropped-out copy of itself, one mask per batch, drawn as BuiltinEncoder draws it.

How they are made fast is in recurrence.py, which holds the per-layer autograd Functions.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .cells import CELLS
from .lengths import last_real, reverse_within_length
from .recurrence import GRULayer, LSTMLayer, RNNLayer, peephole_lstm
from .spec import model_problem


def _steps_active(lengths: torch.Tensor, T: int) -> list[int]:
    """n_t = how many (length-sorted, descending) sequences are still running at step t."""
    return (lengths[None, :] > torch.arange(T)[:, None]).sum(1).tolist()


class _GateRows(torch.autograd.Function):
    """w's rows (its gate blocks) in the kernels' order: w.index_select(0, rows). Its gradient is the
    inverse permutation, another row gather; indexing with w[rows] instead has for backward a zeroed
    tensor and an accumulating scatter (index_put_), which runs serially."""

    @staticmethod
    def forward(ctx, w: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        ctx.rows = rows
        return w.index_select(0, rows)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad.index_select(0, ctx.rows.argsort()), None


class ScratchRNN(nn.Module):
    """Our own multi-layer (bi)directional LSTM / GRU / RNN, batch-first, with exact variable lengths.

    Parameters have nn.LSTM's / nn.GRU's / nn.RNN's names, shapes and initialisation
    (weight_ih_l0, weight_hh_l0, bias_ih_l0, bias_hh_l0, ..._reverse), so state_dicts move both ways;
    a peephole LSTM adds weight_ci/weight_cf/weight_co per layer and direction.
    """

    def __init__(self, cell: str, input_size: int, hidden_size: int, num_layers: int = 1,
                 bidirectional: bool = False, dropout: float = 0.0, peephole: bool = False,
                 recurrent_dropout: float = 0.0):
        super().__init__()
        problem = model_problem(cell, "scratch", peephole, "fp32")
        if problem:
            raise ValueError(problem[1])
        self.hidden_size, self.num_layers = hidden_size, num_layers
        self.dropout, self.peephole, self.recurrent_dropout = dropout, peephole, recurrent_dropout
        self.suffixes = ["", "_reverse"] if bidirectional else [""]
        gates = CELLS[cell].gate_count * hidden_size
        self.cell = CELLS[cell]
        for layer in range(num_layers):
            in_size = input_size if layer == 0 else hidden_size * len(self.suffixes)
            for sfx in self.suffixes:
                shapes = {"weight_ih": (gates, in_size), "weight_hh": (gates, hidden_size),
                          "bias_ih": (gates,), "bias_hh": (gates,)}
                if self.peephole:
                    shapes |= {name: (hidden_size,) for name in ("weight_ci", "weight_cf", "weight_co")}
                for name, shape in shapes.items():
                    self.register_parameter(f"{name}_l{layer}{sfx}", nn.Parameter(torch.empty(shape)))
        # the rows of PyTorch's gate blocks in the order the kernels keep them (cells.CellKind.scratch_gates)
        H = hidden_size
        rows = [torch.arange(i * H, (i + 1) * H) for i in self.cell.scratch_gate_order()]
        self.register_buffer("_gate_rows", torch.cat(rows).long(), persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.hidden_size)  # as nn.RNNBase
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def _params(self, layer: int, sfx: str) -> dict[str, torch.Tensor]:
        """One direction's weight_ih, weight_hh, bias_ih, bias_hh, its weight_hh dropped out when training."""
        p = {name: getattr(self, f"{name}_l{layer}{sfx}")
             for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
        if self.training and self.recurrent_dropout:
            p["weight_hh"] = F.dropout(p["weight_hh"], self.recurrent_dropout, training=True)
        return p

    def _layer(self, inp: torch.Tensor, layer: int, active: list[int], lens: torch.Tensor):
        """inp (T, B, In) -> per direction, (hs (T, B, H) in its own reading order, each sequence's final
        h (B, H), for a cell with a cell state its final c (B, H), else None)."""
        seqs = [inp if d == 0 else reverse_within_length(inp, lens, time_dim=0)
                for d in range(len(self.suffixes))]
        directions = list(zip(seqs, self.suffixes, strict=True))
        return getattr(self, self.cell.scratch_layer)(directions, layer, active, lens)

    def lstm_layer(self, directions, layer: int, active: list[int], lens: torch.Tensor):
        """The LSTM's layer: both directions in one call, which the C++ kernels run side by side."""
        if self.peephole:
            return [self._peephole_direction(seq, layer, sfx, active, lens) for seq, sfx in directions]
        order, args = self._gate_rows, []
        for seq, sfx in directions:
            p = self._params(layer, sfx)
            args += [seq, *(_GateRows.apply(w, order) for w in
                            (p["weight_ih"], p["bias_ih"] + p["bias_hh"], p["weight_hh"]))]
        out = LSTMLayer.apply(active, *args)  # (hs, c_last, h_last) per direction
        return list(zip(out[::3], out[2::3], out[1::3], strict=True))

    def gru_layer(self, directions, layer: int, active: list[int], lens: torch.Tensor):
        """The GRU's layer, one direction at a time: r gates the recurrent product, so only the input
        product (with b_ih) is made for all steps at once."""
        out = []
        for seq, sfx in directions:
            p = self._params(layer, sfx)
            T, B = seq.shape[:2]
            xproj = torch.addmm(p["bias_ih"], seq.reshape(T * B, -1), p["weight_ih"].t()).view(T, B, -1)
            hs = GRULayer.apply(xproj, p["weight_hh"], p["bias_hh"], active)
            out.append((hs, last_real(hs, lens, time_dim=0), None))
        return out

    def rnn_layer(self, directions, layer: int, active: list[int], lens: torch.Tensor):
        """The tanh RNN's layer, one direction at a time."""
        out = []
        for seq, sfx in directions:
            p = self._params(layer, sfx)
            hs = RNNLayer.apply(seq, p["weight_ih"], p["bias_ih"] + p["bias_hh"], p["weight_hh"], active)
            out.append((hs, last_real(hs, lens, time_dim=0), None))
        return out

    def _peephole_direction(self, seq: torch.Tensor, layer: int, sfx: str, active: list[int],
                            lens: torch.Tensor):
        """One direction of a peephole LSTM layer: seq (T, B, In) -> hs (T, B, H), final h and c (B, H)."""
        p = self._params(layer, sfx)
        T, B = seq.shape[:2]
        bias = p["bias_ih"] + p["bias_hh"]
        xproj = torch.addmm(bias, seq.reshape(T * B, -1), p["weight_ih"].t()).view(T, B, -1)
        peep = [getattr(self, f"weight_c{gate}_l{layer}{sfx}") for gate in "ifo"]
        hs, cs = peephole_lstm(xproj, p["weight_hh"], *peep, active)
        return hs, last_real(hs, lens, time_dim=0), last_real(cs, lens, time_dim=0)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor, outputs: bool = True):
        """x (B, T, In), lengths (B,) on the CPU -> outputs (B, T, D*H) (0 at padding),
        h_n (L*D, B, H), c_n (L*D, B, H) or None: as nn.LSTM gives for a PackedSequence.
        outputs=False: None in place of the outputs, whose last layer is then not assembled."""
        order = lengths.argsort(descending=True, stable=True)
        lens = lengths[order]
        active = _steps_active(lens, x.size(1))
        # lstmcli's batches come longest first: then no row needs moving, on the way in or out
        in_order = bool((order == torch.arange(len(order))).all())
        inp = x.transpose(0, 1)  # (T, B, In) time-major, longest sequence first
        if not in_order:
            inp = inp.index_select(1, order.to(x.device))
        h_n, c_n = [], []
        for layer in range(self.num_layers):
            if layer > 0 and self.dropout and self.training:
                inp = F.dropout(inp, self.dropout, training=True)
            keep = outputs or layer < self.num_layers - 1  # as in BuiltinEncoder._padded
            outs = []
            for d, (hs, h_last, c_last) in enumerate(self._layer(inp, layer, active, lens)):
                h_n.append(h_last)
                if c_last is not None:
                    c_n.append(c_last)
                if keep:
                    outs.append(hs if d == 0 else reverse_within_length(hs, lens, time_dim=0))
            inp = (torch.cat(outs, 2) if len(outs) > 1 else outs[0]) if keep else None
        h_n, c_n = torch.stack(h_n), (torch.stack(c_n) if c_n else None)
        if not in_order:
            back = order.argsort().to(x.device)
            inp, h_n = (inp.index_select(1, back) if outputs else None), h_n[:, back]
            c_n = c_n[:, back] if c_n is not None else None
        return (inp.transpose(0, 1) if outputs else None), h_n, c_n  # outputs: a view of the time-major ones


class ScratchEncoder(nn.Module):
    """The scratch counterpart of BuiltinEncoder: (B, T, E) + lengths -> outputs, final (B, D*H)."""

    def __init__(self, cell: str, input_size: int, hidden_size: int, num_layers: int = 1,
                 bidirectional: bool = False, dropout: float = 0.0, peephole: bool = False,
                 recurrent_dropout: float = 0.0):
        super().__init__()
        self.rnn = ScratchRNN(cell, input_size, hidden_size, num_layers, bidirectional,
                              dropout if num_layers > 1 else 0.0, peephole, recurrent_dropout)
        self.num_directions = len(self.rnn.suffixes)
        self.output_size = hidden_size * self.num_directions

    def forward(self, x: torch.Tensor, lengths: torch.Tensor,
                outputs: bool = True) -> tuple[torch.Tensor | None, torch.Tensor]:
        seq, h_n, _ = self.rnn(x, lengths.cpu(), outputs)
        return seq, torch.cat(list(h_n[-self.num_directions:]), dim=-1)
