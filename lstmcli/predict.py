"""`lstmcli predict`: load a checkpoint once, classify texts in length-sorted batches, top-k."""

from __future__ import annotations

from array import array
from itertools import chain
from pathlib import Path

import torch

from . import checkpoint
from .batching import Cut, collate, sorted_batches
from .config import Truncate
from .prepare import EncodedSplit
from .text import basic_english

DEFAULT_MAX_LENGTH = 2048
PREFIX_CHARS_PER_TOKEN = 64


class Predictor:
    def __init__(self, checkpoint_dir: Path, device: torch.device, impl: str | None = None,
                 max_length: int | None = None, precision: str | None = None):
        self.ck = checkpoint.load(checkpoint_dir, str(device), impl, precision)
        self.device = device
        # A text is cut to what the model was trained on; with no such limit, to DEFAULT_MAX_LENGTH,
        # so that a runaway input (a 10 MB line) costs milliseconds, not minutes.
        self.cut = Cut(max_length or self.ck.config.data.max_length or DEFAULT_MAX_LENGTH,
                       self.ck.config.data.truncate)

    def encode(self, text: str) -> list[int]:
        """Ids of the text cut as in training. A huge text cut at its head is tokenized from a prefix
        that holds more than enough whole tokens (a cut can only alter the two tokens it falls into)."""
        limit = self.cut.length
        if self.cut.keep is Truncate.head and len(text) > limit * PREFIX_CHARS_PER_TOKEN:
            tokens = basic_english(text[: limit * PREFIX_CHARS_PER_TOKEN])
            if len(tokens) > limit + 2:
                return self.ck.vocab.encode(tokens[:limit])
        return self.ck.vocab.encode(self.cut.apply(basic_english(text)))

    @torch.no_grad()
    def predict(self, texts: list[str], top_k: int = 1,
                batch_size: int = 256) -> list[list[tuple[str, float]]]:
        """For each text, its `top_k` (label, probability) pairs, most probable first."""
        split = _as_split([self.encode(t) for t in texts])
        k = max(1, min(top_k, len(self.ck.label_names)))
        results: list[list[tuple[str, float]]] = [[] for _ in texts]
        for indices in sorted_batches(split.lengths, batch_size):  # longest first, as in training
            batch = collate(split, indices).to(self.device)
            top = self.ck.model(batch.ids, batch.lengths).softmax(-1).topk(k, dim=-1)
            rows = zip(indices.tolist(), top.values.tolist(), top.indices.tolist(), strict=True)
            for i, probs, labels in rows:
                results[i] = [(self.ck.label_names[j], p) for p, j in zip(probs, labels, strict=True)]
        return results


def _as_split(encoded: list[list[int]]) -> EncodedSplit:
    """Texts' ids (already cut) as an unlabelled EncodedSplit, the form `collate` pads."""
    lengths = torch.tensor([len(ids) for ids in encoded], dtype=torch.int64)
    offsets = torch.zeros(len(encoded) + 1, dtype=torch.int64)
    torch.cumsum(lengths, 0, out=offsets[1:])
    flat = array("i", chain.from_iterable(encoded))  # C int: 32 bits, as EncodedSplit's ids
    ids = torch.frombuffer(flat, dtype=torch.int32) if len(flat) else torch.zeros(0, dtype=torch.int32)
    return EncodedSplit(ids, offsets, torch.zeros(len(encoded), dtype=torch.int64))
