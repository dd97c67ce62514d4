"""Bags of words and hashed word bigrams, read beside the recurrent encoder.

Much of a review's verdict sits in short phrases ("not good", "a must", "waste of") that bag-of-n-gram
models (NBSVM, fastText) weigh directly and that a recurrent encoder, reading 500 tokens, has to carry
through its state. The classifier adds a bag's logits to the encoder's (each branch trained on its own
loss), so each part learns what the other misses. Bigrams are hashed into a fixed number of buckets
(fastText's trick: no bigram vocabulary to build or store; collisions cost little). Two bags:

- FastTextBag (`ngram_bag = "fasttext"`): the mean of learned n-gram vectors, then a linear head.
- NbsvmBag (`ngram_bag = "nbsvm"`): NBSVM (Wang & Manning 2012) as a layer: each n-gram a text holds
  counts once, weighted by its Naive Bayes log-count ratio (from the training split's counts, a buffer
  set before training) times a learned weight per n-gram (Howard's "NBSVM++" parameterisation).
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


def distinct_ngram_ids(ids: torch.Tensor, lengths: torch.Tensor, vocab_size: int,
                       buckets: int) -> torch.Tensor:
    """As ngram_ids, but each row's repeats replaced by 0 (<pad>), so that every n-gram a text holds
    appears once (NBSVM's binarized features); rows come back sorted, largest first."""
    rows = ngram_ids(ids, lengths, vocab_size, buckets).sort(dim=1, descending=True).values  # (B, N)
    repeat = torch.zeros_like(rows, dtype=torch.bool)
    repeat[:, 1:] = rows[:, 1:] == rows[:, :-1]
    return rows.masked_fill(repeat, 0)


class FastTextBag(nn.Module):
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


class NbsvmBag(nn.Module):
    """(ids, lengths) -> (B, C) logits: sum over the distinct n-grams g of a text of
    (GAIN * w[g] + W_ADJ) * r[g] * R_SCALE, plus a bias.

    r[g, c] is the Naive Bayes log-count ratio of class c against the rest: with n[g, c] the number of
    training texts of class c holding g, p = n[g, c] + 1 and q = (texts of other classes holding g) + 1,
    r = log(p / |p|_1) - log(q / |q|_1) (Wang & Manning 2012). The counts n are a buffer that
    training/ngram_counts.py fills from the training split before training (zeros until then; row 0, <pad>,
    adds nothing). With w = 0 this is a Naive Bayes classifier; training learns how far to trust each
    n-gram (the SVM half of NBSVM). W_ADJ and R_SCALE are Howard's NBSVM++ values (0.4, 1/10).

    Given the batch's `labels` (training), each text is left out of the counts it reads: otherwise an
    n-gram seen in one training text points at that text's label with a ratio it never has on unseen
    text, the bag fits the training set at once and w learns little. Adam moves w by about the learning
    rate per step whatever the gradient's scale, and the bag wants a rate about 5x the encoder's, hence
    GAIN. IMDB runs back both choices (benchmarks/RESULTS.md, "Design choices").
    """

    W_ADJ, R_SCALE, GAIN, SMOOTHING = 0.4, 0.1, 5.0, 1.0

    def __init__(self, vocab_size: int, buckets: int, num_classes: int, multi_label: bool = False):
        super().__init__()
        self.vocab_size, self.buckets, self.multi_label = vocab_size, buckets, multi_label
        rows = vocab_size + buckets
        self.register_buffer("counts", torch.zeros(rows, num_classes))  # (F, C): n
        self.register_buffer("norms", torch.full((2, num_classes), self.SMOOTHING * rows))  # |p|_1, |q|_1
        if multi_label:
            # (F,): training texts holding each n-gram. With label sets, "the rest" of class c is every
            # text without c (texts of several labels, or none, included), which the class counts alone
            # cannot give: q = texts - n
            self.register_buffer("texts", torch.zeros(rows))
        self.weight = nn.Embedding(rows, 1, padding_idx=0)  # (F, 1): w
        self.bias = nn.Parameter(torch.zeros(num_classes))
        with torch.no_grad():
            self.weight.weight.uniform_(-0.1 / self.GAIN, 0.1 / self.GAIN)
            self.weight.weight[0].zero_()

    def set_counts(self, counts: torch.Tensor, texts: torch.Tensor | None = None) -> None:
        """`counts` (F, C): how many training texts of each class hold each row of the table; a
        multi-label bag also takes `texts` (F,): how many training texts hold it."""
        if counts.shape != self.counts.shape:
            raise ValueError(f"counts of shape {tuple(counts.shape)}; this bag's are "
                             f"{tuple(self.counts.shape)}")
        if self.multi_label != (texts is not None):
            raise ValueError("a multi-label bag takes the texts' counts too, a single-label one does not")
        with torch.no_grad():
            self.counts.copy_(counts)
            self.counts[0].zero_()
            if texts is not None:
                self.texts.copy_(texts)
                self.texts[0] = 0
            others = self._rest(self.counts, self.texts if self.multi_label else None)
            self.norms.copy_(torch.stack([self.counts.sum(0), others.sum(0)]) + self.SMOOTHING * len(counts))

    @staticmethod
    def _rest(counts: torch.Tensor, texts: torch.Tensor | None) -> torch.Tensor:
        """(..., C): the texts not of class c holding each n-gram (`texts` (...,): multi-label)."""
        if texts is None:
            return counts.sum(-1, keepdim=True) - counts
        return texts.unsqueeze(-1) - counts

    def ratios(self, counts: torch.Tensor, texts: torch.Tensor | None = None) -> torch.Tensor:
        """(..., C) counts (and a multi-label bag's (...,) texts) -> (..., C) log-count ratios r."""
        p = counts + self.SMOOTHING
        q = self._rest(counts, texts) + self.SMOOTHING
        return (p / self.norms[0]).log() - (q / self.norms[1]).log()

    def table(self) -> torch.Tensor:
        """(F, C): what each n-gram adds to the logits of a text it is in (the bag is linear in its
        distinct n-grams); row 0 is 0."""
        r = self.ratios(self.counts, self.texts if self.multi_label else None)
        rows = (self.GAIN * self.weight.weight + self.W_ADJ) * r * self.R_SCALE
        return torch.cat([torch.zeros_like(rows[:1]), rows[1:]])

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor,
                labels: torch.Tensor | None = None) -> torch.Tensor:
        """labels: (B,) ids, or a multi-label bag's (B, C) 0/1 indicators."""
        grams = distinct_ngram_ids(ids, lengths, self.vocab_size, self.buckets)  # (B, N)
        real = (grams != 0).unsqueeze(-1)  # (B, N, 1)
        counts = self.counts[grams]  # (B, N, C)
        texts = self.texts[grams] if self.multi_label else None  # (B, N)
        if labels is not None:  # leave each training text out of its own counts
            own = (labels.to(counts.dtype) if self.multi_label
                   else nn.functional.one_hot(labels, counts.size(-1)))
            counts = counts - real * own.unsqueeze(1)
            texts = None if texts is None else texts - real.squeeze(-1).to(texts.dtype)
        r = self.ratios(counts, texts).masked_fill(~real, 0.0)  # (B, N, C)
        w = self.GAIN * self.weight(grams) + self.W_ADJ  # (B, N, 1)
        return (w * r).sum(1) * self.R_SCALE + self.bias  # (B, C)
