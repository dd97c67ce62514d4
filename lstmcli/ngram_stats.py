"""The NBSVM bag's counts: how many training texts of each class hold each word and hashed bigram.

Counted once, on the training split, before training (models/ngrams.py's NbBag turns them into Naive
Bayes log-count ratios). Texts are cut as training cuts them, and a text counts once per n-gram.
"""

from __future__ import annotations

import torch

from .batching import Cut, collate, sorted_batches, truncated_lengths
from .models.ngrams import NbBag, distinct_ngram_ids
from .prepare import EncodedSplit


def text_counts(split: EncodedSplit, cut: Cut, vocab_size: int, buckets: int, num_classes: int,
                batch_size: int = 512) -> torch.Tensor:
    """(vocab_size + buckets, num_classes) float32: texts of each class holding each row; row 0 is 0."""
    rows = vocab_size + buckets
    counts = torch.zeros(num_classes, rows, dtype=torch.int64)
    for indices in sorted_batches(truncated_lengths(split, cut.length), batch_size):
        batch = collate(split, indices, cut)
        grams = distinct_ngram_ids(batch.ids, batch.lengths, vocab_size, buckets)  # (B, N)
        for c in range(num_classes):
            counts[c] += torch.bincount(grams[batch.labels == c].flatten(), minlength=rows)
    counts[:, 0] = 0  # <pad>
    return counts.t().float().contiguous()  # exact: no count reaches 2^24


def init_nb_bag(model: torch.nn.Module, split: EncodedSplit, cut: Cut) -> bool:
    """Count `split` into `model`'s NBSVM bag; False when it has no such bag."""
    bag = getattr(model, "ngrams", None)
    if not isinstance(bag, NbBag):
        return False
    counts = text_counts(split, cut, bag.vocab_size, bag.buckets, bag.counts.size(1))
    bag.set_counts(counts.to(bag.counts.device))
    return True
