"""LanguageModel: a TextClassifier's embedding and recurrent encoder, trained to predict each next word
(the forward direction) and, in a bidirectional encoder, each previous word (the backward direction).

Its parameter names are the classifier's (`embedding.*`, `encoder.*`), so `train --init-from` copies
them across as they are. The output layer is PyTorch's adaptive softmax (Grave et al. 2017): frequent
words in a small head, rarer ones in clusters reached through smaller projections, so that a 50,000-word
output does not cost more than the encoder; both directions share it, as ELMo's do.
"""

from __future__ import annotations

import torch
from torch import nn

from .classifier import build_encoder
from .spec import ModelSpec


def usable_cutoffs(cutoffs: list[int], vocab_size: int, hidden_size: int = 1 << 30,
                   div_value: float = 4.0) -> list[int]:
    """The cluster edges that fit: nn.AdaptiveLogSoftmaxWithLoss wants each edge inside (0, vocab_size - 1),
    and gives tail cluster i vectors of hidden_size // div_value^(i+1) numbers, which must not round to 0
    (its words would all get one probability); with no edge left, one halfway makes a single tail."""
    kept = [c for c in cutoffs if c < vocab_size - 1]
    kept = [c for i, c in enumerate(kept) if int(hidden_size // div_value ** (i + 1)) >= 1]
    return kept or [max(1, vocab_size // 2)]


def pretraining_problem(spec: ModelSpec) -> str | None:
    """Why `spec`'s encoder cannot be trained as language models, or None."""
    if spec.bidirectional and spec.num_layers > 1:
        # the second layer of a bidirectional stack reads both directions of the first, so its forward
        # half has seen the word it would predict
        return ("a bidirectional encoder of more than one layer cannot be pretrained: its upper layers "
                "read both directions, so each would see the word it predicts (num_layers = 1, or "
                "bidirectional = false)")
    if spec.ngram_buckets:
        return "an n-gram bag is not pretrained: set ngram_buckets = 0 for pretraining"
    return None


class LanguageModel(nn.Module):
    def __init__(self, spec: ModelSpec, cutoffs: list[int], div_value: float = 4.0):
        super().__init__()
        problem = pretraining_problem(spec)
        if problem:
            raise ValueError(problem)
        self.spec = spec
        self.embedding = nn.Embedding(spec.vocab_size, spec.embedding_dim, padding_idx=0)
        self.embedding_dropout = nn.Dropout(spec.embedding_dropout)
        self.encoder = build_encoder(spec)
        self.dropout = nn.Dropout(spec.dropout)
        edges = usable_cutoffs(cutoffs, spec.vocab_size, spec.hidden_size, div_value)
        self.softmax = nn.AdaptiveLogSoftmaxWithLoss(spec.hidden_size, spec.vocab_size, edges, div_value)

    def hidden_states(self, ids: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ids (B, T) 0-padded, lengths (B,) -> (the states that predict a word, (N, H); their targets,
        (N,)): forward-direction states first, then backward-direction ones."""
        x = self.embedding_dropout(self.embedding(ids))
        outputs, _ = self.encoder(x, lengths, outputs=True)  # (B, T, D*H)
        outputs = self.dropout(outputs)
        H, T = self.spec.hidden_size, ids.size(1)
        lens = lengths.to(ids.device)[:, None]
        steps = torch.arange(T, device=ids.device)[None, :]
        # forward: the state at t has read words 0..t and predicts word t+1, for t + 1 < length
        ahead = steps[:, :-1] + 1 < lens  # (B, T-1)
        states, targets = [outputs[:, :-1, :H][ahead]], [ids[:, 1:][ahead]]
        if self.spec.bidirectional:
            # backward: the state at t has read words t..end and predicts word t-1, for 1 <= t < length
            behind = steps[:, 1:] < lens  # (B, T-1), for t = 1..T-1
            states.append(outputs[:, 1:, H:][behind])
            targets.append(ids[:, :-1][behind])
        return torch.cat(states), torch.cat(targets)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """ids (B, T) 0-padded, lengths (B,) -> (N,) float32: the negative log-likelihood of every
        predicted word, forward direction first (sum(lengths - 1) of them), then backward (as many)."""
        if self.spec.precision == "bf16":
            with torch.autocast(ids.device.type, dtype=torch.bfloat16):
                states, targets = self.hidden_states(ids, lengths)
            return -self.softmax(states.float(), targets).output
        states, targets = self.hidden_states(ids, lengths)
        return -self.softmax(states, targets).output
