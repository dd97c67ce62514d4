"""PyTorch's nn.LSTM / nn.GRU / nn.RNN with exact, fast variable-length handling.

On the CPU a PackedSequence costs many times the padded throughput (benchmarks/RESULTS.md, "Design
choices"), so by default we run padded tensors and stay exact instead of packing:
  * forward direction: an RNN is causal, so outputs at t < length never see the padding after them;
    the final state is the output at position length - 1;
  * backward direction: each sequence is reversed *within its own length* (padding stays at the end),
    run forwards, and its outputs are mapped back, so it starts from the last real token.
Layers run one at a time (the reversal must happen per layer) through torch.lstm / torch.gru /
torch.rnn_tanh, the same kernels nn.LSTM calls, on the nn module's own parameters: the state_dict is
nn.LSTM's (weight_ih_l0, ..._reverse), and `pack=True` runs the module itself on a PackedSequence.
`recurrent_dropout` > 0 is AWD-LSTM's weight drop (Merity et al. 2017): while training, each weight_hh
is replaced by a dropped-out copy (one mask per batch, shared by all steps), which the fused kernels
accept as they are.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .cells import CELLS
from .lengths import last_real, reverse_within_length


class BuiltinEncoder(nn.Module):
    """Batch-first recurrent encoder: (B, T, E) + lengths -> outputs (B, T, D*H), final (B, D*H).
    outputs=False: the last layer's per-step outputs are not assembled and None comes back in their place
    (pooling "last" reads `final` only)."""

    def __init__(self, cell: str, input_size: int, hidden_size: int, num_layers: int = 1,
                 bidirectional: bool = False, dropout: float = 0.0, pack: str = "auto",
                 recurrent_dropout: float = 0.0):
        super().__init__()
        self.cell, self.pack, self.recurrent_dropout = CELLS[cell], pack, recurrent_dropout
        self.kernel = getattr(torch, self.cell.torch_kernel)  # what nn's module calls for one layer
        module = getattr(nn, self.cell.torch_module)  # nn.LSTM, nn.GRU, nn.RNN
        self.rnn = module(input_size, hidden_size, num_layers=num_layers, batch_first=True,
                          bidirectional=bidirectional, dropout=dropout if num_layers > 1 else 0.0)
        self.num_directions = 2 if bidirectional else 1
        self.output_size = hidden_size * self.num_directions

    def forward(self, x: torch.Tensor, lengths: torch.Tensor,
                outputs: bool = True) -> tuple[torch.Tensor | None, torch.Tensor]:
        use_pack = self.pack == "always" or (self.pack == "auto" and x.is_cuda)
        return self._packed(x, lengths, outputs) if use_pack else self._padded(x, lengths, outputs)

    def _weight_hh(self, name: str) -> torch.Tensor:
        """The recurrent weight `name` as this batch uses it: dropped out while training."""
        w = getattr(self.rnn, name)
        p = self.recurrent_dropout
        return F.dropout(w, p, training=True) if self.training and p else w

    def _packed(self, x: torch.Tensor, lengths: torch.Tensor, outputs: bool):
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        if self.training and self.recurrent_dropout:
            # one mask per weight_hh, drawn before the run (for one layer: as the padded path draws them)
            names = [f"weight_hh_l{layer}{sfx}" for layer in range(self.rnn.num_layers)
                     for sfx in ("", "_reverse")[:self.num_directions]]
            dropped = {name: self._weight_hh(name) for name in names}
            out, state = functional_call(self.rnn, dropped, (packed,))
        else:
            out, state = self.rnn(packed)
        h_n = state[0] if self.cell.cell_state else state  # (L*D, B, H)
        padded = pad_packed_sequence(out, batch_first=True, total_length=x.size(1))[0] if outputs else None
        final = torch.cat(list(h_n[-self.num_directions:]), dim=-1)  # last layer, fwd then bwd
        return padded, final

    def _run_direction(self, x: torch.Tensor, layer: int, suffix: str) -> torch.Tensor:
        rnn = self.rnn
        params = [getattr(rnn, f"weight_ih_l{layer}{suffix}"), self._weight_hh(f"weight_hh_l{layer}{suffix}"),
                  getattr(rnn, f"bias_ih_l{layer}{suffix}"), getattr(rnn, f"bias_hh_l{layer}{suffix}")]
        h0 = x.new_zeros(1, x.size(0), rnn.hidden_size)
        hx = (h0, h0) if self.cell.cell_state else h0
        # args: input, hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first
        out = self.kernel(x, hx, params, True, 1, 0.0, self.training, False, True)[0]
        return out

    def _padded(self, x: torch.Tensor, lengths: torch.Tensor, outputs: bool):
        finals = []
        for layer in range(self.rnn.num_layers):
            # the last layer's outputs are assembled (backward direction mapped back, directions side by
            # side: two copies of the whole sequence) only for a pooling that reads them
            keep = outputs or layer < self.rnn.num_layers - 1
            if layer > 0 and self.rnn.dropout and self.training:
                x = F.dropout(x, self.rnn.dropout, training=True)
            fwd = self._run_direction(x, layer, "")
            outs, finals = [fwd], [last_real(fwd, lengths)]
            if self.num_directions == 2:
                bwd_rev = self._run_direction(reverse_within_length(x, lengths), layer, "_reverse")
                if keep:
                    outs.append(reverse_within_length(bwd_rev, lengths))
                finals.append(last_real(bwd_rev, lengths))  # after reading the whole sequence backwards
            x = (torch.cat(outs, dim=-1) if len(outs) > 1 else fwd) if keep else None
        return x, torch.cat(finals, dim=-1)
