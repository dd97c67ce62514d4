"""PyTorch's nn.LSTM / nn.GRU / nn.RNN with exact, fast variable-length handling.

On the CPU a PackedSequence costs ~20x the padded throughput, so by default we run padded tensors and
stay exact instead of packing:
  * forward direction: an RNN is causal, so outputs at t < length never see the padding after them;
    the final state is the output at position length - 1;
  * backward direction: each sequence is reversed *within its own length* (padding stays at the end),
    run forwards, and its outputs are mapped back, so it starts from the last real token.
Layers run one at a time (the reversal must happen per layer) through torch.lstm / torch.gru /
torch.rnn_tanh, the same kernels nn.LSTM calls, on the nn module's own parameters: the state_dict is
nn.LSTM's (weight_ih_l0, ..._reverse), and `pack=True` runs the module itself on a PackedSequence.
`weight_drop` > 0 is AWD-LSTM's recurrent dropout (Merity et al. 2017): while training, each weight_hh is
replaced by a dropped-out copy (one mask per batch, shared by all steps), which the fused kernels accept
as they are.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

RNN_CLASSES = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}
_KERNELS = {"lstm": torch.lstm, "gru": torch.gru, "rnn": torch.rnn_tanh}


def reverse_within_length(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """x (B, T, F) with x[b, :len_b] reversed and padding left in place; its own inverse."""
    B, T = x.shape[:2]
    t = torch.arange(T, device=x.device).expand(B, T)
    lens = lengths.to(x.device)[:, None]
    idx = torch.where(t < lens, lens - 1 - t, t)  # (B, T)
    return x.gather(1, idx[:, :, None].expand_as(x))


def last_real(outputs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """outputs (B, T, F) -> (B, F): each sequence's output at position length - 1."""
    idx = (lengths.to(outputs.device) - 1).view(-1, 1, 1).expand(-1, 1, outputs.size(2))
    return outputs.gather(1, idx).squeeze(1)


class BuiltinEncoder(nn.Module):
    """Batch-first recurrent encoder: (B, T, E) + lengths -> outputs (B, T, D*H), final (B, D*H)."""

    def __init__(self, encoder: str, input_size: int, hidden_size: int, num_layers: int = 1,
                 bidirectional: bool = False, dropout: float = 0.0, pack: str = "auto", weight_drop: float = 0.0):
        super().__init__()
        self.kind, self.pack, self.weight_drop = encoder, pack, weight_drop
        self.rnn = RNN_CLASSES[encoder](input_size, hidden_size, num_layers=num_layers, batch_first=True,
                                        bidirectional=bidirectional, dropout=dropout if num_layers > 1 else 0.0)
        self.num_directions = 2 if bidirectional else 1
        self.output_size = hidden_size * self.num_directions

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        use_pack = self.pack == "always" or (self.pack == "auto" and x.is_cuda)
        return self._packed(x, lengths) if use_pack else self._padded(x, lengths)

    def _weight_hh(self, name: str) -> torch.Tensor:
        """The recurrent weight `name` as this batch uses it: dropped out while training (weight_drop)."""
        w = getattr(self.rnn, name)
        return F.dropout(w, self.weight_drop, training=True) if self.training and self.weight_drop else w

    def _packed(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        if self.training and self.weight_drop:
            # one mask per weight_hh, drawn before the run (for one layer: as the padded path draws them)
            dropped = {name: self._weight_hh(name) for layer in range(self.rnn.num_layers)
                       for name in (f"weight_hh_l{layer}", f"weight_hh_l{layer}_reverse")[:self.num_directions]}
            out, state = functional_call(self.rnn, dropped, (packed,))
        else:
            out, state = self.rnn(packed)
        h_n = state[0] if self.kind == "lstm" else state  # (L*D, B, H)
        outputs, _ = pad_packed_sequence(out, batch_first=True, total_length=x.size(1))
        final = torch.cat(list(h_n[-self.num_directions:]), dim=-1)  # last layer, fwd then bwd
        return outputs, final

    def _run_direction(self, x: torch.Tensor, layer: int, suffix: str) -> torch.Tensor:
        rnn = self.rnn
        params = [getattr(rnn, f"weight_ih_l{layer}{suffix}"), self._weight_hh(f"weight_hh_l{layer}{suffix}"),
                  getattr(rnn, f"bias_ih_l{layer}{suffix}"), getattr(rnn, f"bias_hh_l{layer}{suffix}")]
        h0 = x.new_zeros(1, x.size(0), rnn.hidden_size)
        hx = (h0, h0) if self.kind == "lstm" else h0
        # args: input, hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first
        out = _KERNELS[self.kind](x, hx, params, True, 1, 0.0, self.training, False, True)[0]
        return out

    def _padded(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        finals = []
        for layer in range(self.rnn.num_layers):
            if layer > 0 and self.rnn.dropout and self.training:
                x = F.dropout(x, self.rnn.dropout, training=True)
            fwd = self._run_direction(x, layer, "")
            outs, finals = [fwd], [last_real(fwd, lengths)]
            if self.num_directions == 2:
                bwd_rev = self._run_direction(reverse_within_length(x, lengths), layer, "_reverse")
                outs.append(reverse_within_length(bwd_rev, lengths))
                finals.append(last_real(bwd_rev, lengths))  # after reading the whole sequence backwards
            x = torch.cat(outs, dim=-1) if len(outs) > 1 else fwd
        return x, torch.cat(finals, dim=-1)
