"""TextClassifier: Embedding -> dropout -> recurrent encoder -> pooling -> dropout -> Linear."""

from __future__ import annotations

import torch
from torch import nn

from .builtin import BuiltinEncoder
from .scratch import ScratchEncoder
from .spec import ModelSpec


def build_encoder(spec: ModelSpec) -> nn.Module:
    """The recurrent encoder `spec` asks for: (B, T, E) + lengths -> outputs (B, T, D*H), final (B, D*H)."""
    args = dict(encoder=spec.encoder, input_size=spec.embedding_dim, hidden_size=spec.hidden_size,
                num_layers=spec.num_layers, bidirectional=spec.bidirectional, dropout=spec.dropout,
                recurrent_dropout=spec.recurrent_dropout)
    if spec.impl == "scratch":
        return ScratchEncoder(**args, peephole=spec.peephole)
    return BuiltinEncoder(**args, pack=spec.pack)


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
    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        self.embedding = nn.Embedding(spec.vocab_size, spec.embedding_dim, padding_idx=0)
        self.embedding_dropout = nn.Dropout(spec.embedding_dropout)
        self.encoder = build_encoder(spec)
        self.dropout = nn.Dropout(spec.dropout)
        self.head = nn.Linear(spec.hidden_size * spec.num_directions, spec.num_classes)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """ids (B, T) int64 0-padded, lengths (B,) >= 1 -> logits (B, C), float32 at either precision."""
        if self.spec.precision == "bf16":
            # autocast: the matmuls and the fused recurrent kernels take bfloat16 copies of the float32
            # weights (their gradients come back float32); the loss is computed on float32 logits
            with torch.autocast(ids.device.type, dtype=torch.bfloat16):
                return self._logits(ids, lengths).float()
        return self._logits(ids, lengths)

    def _logits(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        outputs, final = self.encoder(self.embedding_dropout(self.embedding(ids)), lengths)
        return self.head(self.dropout(pool(outputs, final, lengths, self.spec.pooling)))
