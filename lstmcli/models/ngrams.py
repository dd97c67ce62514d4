"""NgramBag: a fastText-style bag of words and hashed word bigrams, read beside the recurrent encoder.

Much of a review's verdict sits in short phrases ("not good", "a must", "waste of") that bag-of-n-gram
models (NBSVM, fastText) weigh directly and that a recurrent encoder, reading 500 tokens, has to carry
through its state. The classifier gives this bag a linear layer of its own and adds its logits to the
encoder's (each branch trained on its own loss), so each part learns what the other misses. Bigrams are
hashed into a fixed number of buckets (fastText's trick: no bigram vocabulary to build or store;
collisions cost little).
"""

from __future__ import annotations

import torch
from torch import nn

HASH_MULTIPLIER = 116_049_371  # fastText's bigram hash multiplier; ids < 2**31 keep the product in int64


def ngram_ids(ids: torch.Tensor, lengths: torch.Tensor, vocab_size: int, buckets: int) -> torch.Tensor:
    """ids (B, T) 0-padded, lengths (B,) -> (B, 2T - 1) rows of the bag's table: each position's word,
    then each pair of neighbouring words within the length (vocab_size + its hash bucket); 0 elsewhere.
    """
    pairs = (ids[:, :-1] * HASH_MULTIPLIER + ids[:, 1:]) % buckets + vocab_size  # (B, T-1)
    inside = torch.arange(ids.size(1) - 1, device=ids.device)[None, :] < (lengths.to(ids.device) - 1)[:, None]
    return torch.cat([ids, pairs.masked_fill(~inside, 0)], dim=1)


class NgramBag(nn.Module):
    """(ids, lengths) -> (B, dim): the mean of the vectors of a text's words and word bigrams."""

    def __init__(self, vocab_size: int, buckets: int, dim: int):
        super().__init__()
        self.vocab_size, self.buckets = vocab_size, buckets
        # row 0 is <pad>: mode "mean" leaves padding_idx rows out of both the sum and the count
        self.table = nn.EmbeddingBag(vocab_size + buckets, dim, mode="mean", padding_idx=0)
        with torch.no_grad():  # fastText's initialisation: small, so the early mean is near 0
            self.table.weight.uniform_(-1.0 / dim, 1.0 / dim)
            self.table.weight[0].zero_()

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.table(ngram_ids(ids, lengths, self.vocab_size, self.buckets))
