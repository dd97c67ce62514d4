"""TextClassifier: Embedding -> dropout -> recurrent encoder -> pooling -> dropout -> Linear."""

from __future__ import annotations

import torch
from torch import nn

from .builtin import BuiltinEncoder
from .scratch import ScratchEncoder

# impl name -> encoder class; every class takes (encoder, input_size, hidden_size, num_layers,
# bidirectional, dropout, pack[, peephole], weight_drop=) and returns (outputs (B, T, D*H), final (B, D*H)).
ENCODER_IMPLS: dict[str, type[nn.Module]] = {"builtin": BuiltinEncoder, "scratch": ScratchEncoder}
ENCODERS = ("lstm", "gru", "rnn")
POOLINGS = ("last", "mean", "max")
PRECISIONS = ("fp32", "bf16")


def _check(kind: str, name: str, valid) -> None:
    if name not in valid:
        raise ValueError(f"unknown {kind} {name!r}; valid: {', '.join(valid)}")


def build_encoder(impl: str, encoder: str, input_size: int, hidden_size: int, num_layers: int = 1,
                  bidirectional: bool = False, dropout: float = 0.0, pack: str = "auto",
                  peephole: bool = False, weight_drop: float = 0.0) -> nn.Module:
    _check("impl", impl, ENCODER_IMPLS)
    _check("encoder", encoder, ENCODERS)
    if peephole:
        if impl != "scratch" or encoder != "lstm":
            raise ValueError("peephole connections need encoder 'lstm' with impl 'scratch'")
        return ScratchEncoder(encoder, input_size, hidden_size, num_layers, bidirectional, dropout, pack, peephole,
                              weight_drop=weight_drop)
    return ENCODER_IMPLS[impl](encoder, input_size, hidden_size, num_layers, bidirectional, dropout, pack,
                               weight_drop=weight_drop)


def pool(outputs: torch.Tensor, final: torch.Tensor, lengths: torch.Tensor, how: str) -> torch.Tensor:
    """(B, T, F) outputs -> (B, F), looking at real positions only."""
    if how == "last":
        return final
    mask = (torch.arange(outputs.size(1), device=outputs.device)[None, :]
            < lengths.to(outputs.device)[:, None])[:, :, None]  # (B, T, 1)
    if how == "mean":
        return (outputs * mask).sum(1) / lengths.to(outputs.device, outputs.dtype)[:, None]
    return outputs.masked_fill(~mask, float("-inf")).amax(1)


class TextClassifier(nn.Module):
    def __init__(self, vocab_size: int, num_classes: int, embedding_dim: int = 128, hidden_size: int = 128,
                 encoder: str = "lstm", impl: str = "builtin", num_layers: int = 1,
                 bidirectional: bool = False, dropout: float = 0.0, pooling: str = "last", pack: str = "auto",
                 peephole: bool = False, embedding_dropout: float = 0.0, recurrent_dropout: float = 0.0,
                 precision: str = "fp32"):
        super().__init__()
        _check("pooling", pooling, POOLINGS)
        _check("precision", precision, PRECISIONS)
        if precision == "bf16" and impl != "builtin":
            raise ValueError("precision 'bf16' needs impl 'builtin' (the scratch kernels are float32/float64)")
        self.pooling, self.precision = pooling, precision
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=0)
        self.embedding_dropout = nn.Dropout(embedding_dropout)
        self.encoder = build_encoder(impl, encoder, embedding_dim, hidden_size, num_layers,
                                     bidirectional, dropout, pack, peephole, recurrent_dropout)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.encoder.output_size, num_classes)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """ids (B, T) int64 0-padded, lengths (B,) >= 1 -> logits (B, C), float32 at either precision."""
        if self.precision == "bf16":
            # autocast: the matmuls and the fused recurrent kernels take bfloat16 copies of the float32
            # weights (their gradients come back float32); the loss is computed on float32 logits
            with torch.autocast(ids.device.type, dtype=torch.bfloat16):
                return self._logits(ids, lengths).float()
        return self._logits(ids, lengths)

    def _logits(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        outputs, final = self.encoder(self.embedding_dropout(self.embedding(ids)), lengths)
        return self.head(self.dropout(pool(outputs, final, lengths, self.pooling)))
