"""TextClassifier: Embedding -> dropout -> recurrent encoder -> pooling -> dropout -> Linear, and
optionally an n-gram bag beside it (ngrams.py: a fastText bag -> Linear, or an NBSVM bag), whose logits
are added, each branch's times its weight (branch_weights: ones until training/calibration.py fits
them)."""

from __future__ import annotations

import torch
from torch import nn

from . import ngrams
from .builtin import BuiltinEncoder
from .pooling import pool
from .scratch import ScratchEncoder
from .spec import BAGS, ModelSpec


def build_encoder(spec: ModelSpec) -> nn.Module:
    """The recurrent encoder `spec` asks for: (B, T, E) + lengths -> outputs (B, T, D*H), final (B, D*H)."""
    args = dict(cell=spec.cell, input_size=spec.embedding_dim, hidden_size=spec.hidden_size,
                num_layers=spec.num_layers, bidirectional=spec.bidirectional, dropout=spec.dropout,
                recurrent_dropout=spec.recurrent_dropout)
    if spec.impl == "scratch":
        return ScratchEncoder(**args, peephole=spec.peephole)
    return BuiltinEncoder(**args, pack=spec.pack)


def combine_branches(weights: torch.Tensor, parts: torch.Tensor) -> torch.Tensor:
    """(P,) branch weights, (P, B, C) branch logits -> (B, C): how a TextClassifier combines its branches
    (training/calibration.py fits the weights through this same function)."""
    return torch.einsum("p,pbc->bc", weights, parts)


class TextClassifier(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        self.embedding = nn.Embedding(spec.vocab_size, spec.embedding_dim, padding_idx=0)
        self.embedding_dropout = nn.Dropout(spec.embedding_dropout)
        self.encoder = build_encoder(spec)
        self.dropout = nn.Dropout(spec.dropout)
        self.head = nn.Linear(spec.hidden_size * spec.num_directions, spec.num_classes)
        self.ngrams, self.ngram_head = None, None  # the n-gram bag, and its head when it needs one
        if spec.ngram_buckets:
            bag = BAGS[spec.ngram_bag]
            width = spec.num_classes if bag.own_logits else spec.ngram_dim
            extra = {"multi_label": True} if spec.multi_label and bag.counts_training_split else {}
            self.ngrams = getattr(ngrams, bag.module)(spec.vocab_size, spec.ngram_buckets, width, **extra)
            if not bag.own_logits:
                self.ngram_head = nn.Linear(spec.ngram_dim, spec.num_classes)
        # (P,) one weight per branch, fitted after training on the validation split (calibration.py)
        self.register_buffer("branch_weights", torch.ones(len(spec.branches)))

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor, parts: bool = False,
                labels: torch.Tensor | None = None, noise: torch.Tensor | None = None) -> torch.Tensor:
        """ids (B, T) int64 0-padded, lengths (B,) >= 1 -> logits (B, C), float32 at either precision.

        parts=True: each branch's own logits, (P, B, C) with P = 1 + (n-gram bag or not), which combine()
        weighs and adds up. Training gives each branch its own loss (training/fit.py's _step_loss), so
        that the bag, which fits the training set within an epoch or two, does not leave the encoder
        without a gradient: the two learn as two classifiers and predict as one (their log-odds add).
        labels (B,) (multi-label: (B, C) 0/1): given in training only, for a bag that counted the training
        texts (NbsvmBag). A multi-label model's logits are each label's log-odds (a sigmoid each); a
        single-label model's are a softmax's. noise (B, T, E): added to the embedded text the recurrent
        encoder reads (adversarial training, training/adversarial.py); the n-gram bag reads ids."""
        if self.spec.precision == "bf16":
            # autocast: the matmuls and the fused recurrent kernels take bfloat16 copies of the float32
            # weights (their gradients come back float32); the loss is computed on float32 logits
            with torch.autocast(ids.device.type, dtype=torch.bfloat16):
                branches = self._branches(ids, lengths, labels, noise).float()
        else:
            branches = self._branches(ids, lengths, labels, noise)
        return branches if parts else self.combine(branches)

    def layer_groups(self) -> list[list[nn.Parameter]]:
        """The parameters from the top down, for discriminative learning rates and gradual unfreezing
        (ULMFiT): [the head(s) and any n-gram bag], encoder layer L, ..., encoder layer 1, [embedding].
        Every parameter is in exactly one group (the embedding's even when frozen: the optimizer leaves
        out what does not require a gradient); branch_weights is a buffer."""
        top = [p for m in (self.head, self.ngrams, self.ngram_head) if m is not None for p in m.parameters()]
        layers: list[list[nn.Parameter]] = [[] for _ in range(self.spec.num_layers)]
        for name, p in self.encoder.named_parameters():
            # scratch: weight_ih_l0, weight_hh_l1_reverse; builtin: rnn.weight_ih_l0(_reverse)
            layer = name.removesuffix("_reverse").rpartition("_l")[2]
            if not layer.isdigit():
                raise ValueError(f"encoder parameter {name!r} belongs to no layer")
            layers[int(layer)].append(p)
        return [top, *reversed(layers), [self.embedding.weight]]

    def combine(self, parts: torch.Tensor) -> torch.Tensor:
        """(P, B, C) branch logits -> (B, C): their sum, each times its weight in branch_weights."""
        return combine_branches(self.branch_weights.to(parts.dtype), parts)

    def _branches(self, ids: torch.Tensor, lengths: torch.Tensor,
                  labels: torch.Tensor | None, noise: torch.Tensor | None = None) -> torch.Tensor:
        x = self.embedding_dropout(self.embedding(ids))
        if noise is not None:
            x = x + noise.to(x.dtype)
        # pooling "last" reads the final states only: the per-step outputs are then not assembled
        outputs, final = self.encoder(x, lengths, outputs=self.spec.pooling != "last")
        logits = [self.head(self.dropout(pool(outputs, final, lengths, self.spec.pooling)))]  # (B, C)
        if self.ngrams is not None:
            # no dropout: a bag of averaged n-gram vectors is a linear model in its counts (fastText
            # trains it without any), and dropping half of its few dimensions only slows it down
            reads_labels = BAGS[self.spec.ngram_bag].counts_training_split  # leaves each text out
            bag = self.ngrams(ids, lengths, labels) if reads_labels else self.ngrams(ids, lengths)
            if self.ngram_head is not None:  # a vector of its own: the head makes logits of it
                bag = self.ngram_head(bag)
            logits.append(bag.to(logits[0].dtype))
        return torch.stack(logits)  # (P, B, C)
