"""`lstmcli predict`: load a checkpoint once, classify texts in length-sorted batches, top-k."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from . import checkpoint
from .batching import Batch, Cut
from .text import basic_english

DEFAULT_MAX_LENGTH = 2048
PREFIX_CHARS_PER_TOKEN = 64


class Predictor:
    def __init__(self, checkpoint_dir: Path, device: torch.device, impl: str | None = None,
                 max_length: int | None = None, precision: str | None = None):
        self.ck = checkpoint.load(checkpoint_dir, str(device), impl, precision)
        if self.ck.note:
            print(f"lstmcli: {self.ck.note}", file=sys.stderr)
        self.device = device
        # A text is cut to what the model was trained on; with no such limit, to DEFAULT_MAX_LENGTH,
        # so that a runaway input (a 10 MB line) costs milliseconds, not minutes.
        self.cut = Cut(max_length or self.ck.config.data.max_length or DEFAULT_MAX_LENGTH,
                       self.ck.config.data.truncate.value)

    def encode(self, text: str) -> list[int]:
        """Ids of the text cut as in training. A huge text cut at its head is tokenized from a prefix
        that holds more than enough whole tokens (a cut can only alter the two tokens it falls into)."""
        limit = self.cut.length
        if self.cut.keep == "head" and len(text) > limit * PREFIX_CHARS_PER_TOKEN:
            tokens = basic_english(text[: limit * PREFIX_CHARS_PER_TOKEN])
            if len(tokens) > limit + 2:
                return self.ck.vocab.encode(tokens[:limit])
        return self.ck.vocab.encode(self.cut.apply(basic_english(text)))

    @torch.no_grad()
    def predict(self, texts: list[str], top_k: int = 1, batch_size: int = 256) -> list[list[tuple[str, float]]]:
        """For each text, its `top_k` (label, probability) pairs, most probable first."""
        encoded = [self.encode(t) for t in texts]
        order = sorted(range(len(texts)), key=lambda i: -len(encoded[i]))  # longest first, as in training
        k = max(1, min(top_k, len(self.ck.label_names)))
        results: list[list[tuple[str, float]]] = [[] for _ in texts]
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            batch = _pad([encoded[i] for i in chunk]).to(self.device)
            probs = self.ck.model(batch.ids, batch.lengths).softmax(-1)
            top = probs.topk(k, dim=-1)
            for row, i in enumerate(chunk):
                results[i] = [(self.ck.label_names[j], float(p))
                              for p, j in zip(top.values[row].tolist(), top.indices[row].tolist())]
        return results


def _pad(seqs: list[list[int]]) -> Batch:
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.int64)
    ids = torch.zeros(len(seqs), int(lengths.max()), dtype=torch.int64)
    for row, s in enumerate(seqs):
        ids[row, : len(s)] = torch.tensor(s, dtype=torch.int64)
    return Batch(ids, lengths, torch.zeros(len(seqs), dtype=torch.int64))
