"""Classifier: a loaded checkpoint that classifies texts in length-sorted batches (top-k, or a binary
decision at a probability threshold). `lstmcli predict` and `lstmcli.load` return/use it."""

from __future__ import annotations

from array import array
from itertools import chain
from pathlib import Path

import torch

from lstmcli import checkpoint
from lstmcli.config import Truncate
from lstmcli.data.batches import DEFAULT_MAX_LENGTH, Truncation, collate, sorted_batches
from lstmcli.data.encode import EncodedSplit
from lstmcli.data.text import basic_english
from lstmcli.evaluation.metrics import check_threshold

__all__ = ["Classifier", "DEFAULT_MAX_LENGTH"]
PREFIX_CHARS_PER_TOKEN = 64


class Classifier:
    """A checkpoint folder, loaded once (weights from safetensors, no pickle) to classify texts."""

    def __init__(self, checkpoint_dir: str | Path, device: str | torch.device = "cpu",
                 impl: str | None = None, max_length: int | None = None, precision: str | None = None):
        self.device = torch.device(device)
        self.ck = checkpoint.load(Path(checkpoint_dir), str(self.device), impl, precision)
        self.cut = Truncation.for_inference(self.ck.config.data, max_length)

    def encode(self, text: str) -> list[int]:
        """Ids of the text cut as in training. A huge text cut at its head is tokenized from a prefix
        that holds more than enough whole tokens (a cut can only alter the two tokens it falls into)."""
        limit = self.cut.length
        if self.cut.keep is Truncate.head and len(text) > limit * PREFIX_CHARS_PER_TOKEN:
            tokens = basic_english(text[: limit * PREFIX_CHARS_PER_TOKEN])
            if len(tokens) > limit + 2:
                return self.ck.vocab.encode(tokens[:limit])
        return self.ck.vocab.encode(self.cut.apply(basic_english(text)))

    @property
    def labels(self) -> list[str]:
        """The label names, in the order of the model's outputs."""
        return self.ck.label_names

    @torch.no_grad()
    def probabilities(self, texts: list[str], batch_size: int = 256) -> torch.Tensor:
        """(len(texts), classes) float32: each text's probability of each label (`labels` order)."""
        split = _as_split([self.encode(t) for t in texts])
        out = torch.zeros(len(texts), len(self.labels))
        for indices in sorted_batches(split.lengths, batch_size):  # longest first, as in training
            batch = collate(split, indices).to(self.device)
            out[indices] = self.ck.model(batch.ids, batch.lengths).softmax(-1).float().cpu()
        return out

    def predict(self, texts: list[str], top_k: int = 1, batch_size: int = 256,
                threshold: float | None = None) -> list[list[tuple[str, float]]]:
        """For each text, its `top_k` (label, probability) pairs, the predicted label first.

        `threshold` (two labels only): the second label (labels[1], e.g. IMDB's "pos") is predicted when
        its probability is at least `threshold`, else the first; without it, the most probable label."""
        if threshold is not None:
            check_threshold(threshold, self.labels)
        probs = self.probabilities(texts, batch_size)
        k = max(1, min(top_k, len(self.labels)))
        if threshold is None:
            order = probs.topk(k, dim=-1).indices
        else:
            decided = (probs[:, 1] >= threshold).long()  # (N,) 1 = the positive label
            order = torch.stack([decided, 1 - decided], dim=1)[:, :k]
        return [[(self.labels[j], float(row[j])) for j in idx] for row, idx in zip(probs, order.tolist(),
                                                                                    strict=True)]


def _as_split(encoded: list[list[int]]) -> EncodedSplit:
    """Texts' ids (already cut) as an unlabelled EncodedSplit, the form `collate` pads."""
    lengths = torch.tensor([len(ids) for ids in encoded], dtype=torch.int64)
    offsets = torch.zeros(len(encoded) + 1, dtype=torch.int64)
    torch.cumsum(lengths, 0, out=offsets[1:])
    flat = array("i", chain.from_iterable(encoded))  # C int: 32 bits, as EncodedSplit's ids
    ids = torch.frombuffer(flat, dtype=torch.int32) if len(flat) else torch.zeros(0, dtype=torch.int32)
    return EncodedSplit(ids, offsets, torch.zeros(len(encoded), dtype=torch.int64))
