"""The NBSVM bag's counts: how many training texts of each class hold each word and hashed bigram.

Counted once, on the training split, before training (models/ngrams.py's NbsvmBag turns them into Naive
Bayes log-count ratios). Texts are cut as training cuts them, and a text counts once per n-gram.
"""

from __future__ import annotations

import torch

from lstmcli.data.batches import Truncation, collate, sorted_batches, truncated_lengths
from lstmcli.data.encode import EncodedSplit
from lstmcli.models.classifier import TextClassifier
from lstmcli.models.ngrams import distinct_ngram_ids
from lstmcli.models.spec import BAGS


def text_counts(split: EncodedSplit, cut: Truncation, vocab_size: int, buckets: int, num_classes: int,
                batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """(vocab_size + buckets, num_classes) float32: texts of each class holding each row, and (F,)
    float32: texts holding each row; row 0 is 0 in both."""
    rows = vocab_size + buckets
    counts = torch.zeros(num_classes, rows, dtype=torch.int64)
    texts = torch.zeros(rows, dtype=torch.int64)
    for indices in sorted_batches(truncated_lengths(split, cut.length), batch_size):
        batch = collate(split, indices, cut)
        grams = distinct_ngram_ids(batch.ids, batch.lengths, vocab_size, buckets)  # (B, N)
        texts += torch.bincount(grams.flatten(), minlength=rows)
        for c in range(num_classes):
            mine = batch.labels[:, c].bool() if split.multi_label else batch.labels == c
            counts[c] += torch.bincount(grams[mine].flatten(), minlength=rows)
    counts[:, 0], texts[0] = 0, 0  # <pad>
    return counts.t().float().contiguous(), texts.float()  # exact: no count reaches 2^24


def count_into_bag(model: TextClassifier, split: EncodedSplit, cut: Truncation) -> bool:
    """Count `split` into `model`'s n-gram bag when its kind keeps counts of the training split (NBSVM);
    False when the model has no such bag."""
    spec = model.spec
    if not (spec.ngram_buckets and BAGS[spec.ngram_bag].counts_training_split):
        return False
    bag = model.ngrams
    counts, texts = text_counts(split, cut, bag.vocab_size, bag.buckets, bag.counts.size(1))
    bag.set_counts(counts.to(bag.counts.device), texts.to(bag.counts.device) if bag.multi_label else None)
    return True
