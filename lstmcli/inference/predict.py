"""Classifier: a loaded model that classifies texts in length-sorted batches (top-k, or a binary decision
at a probability threshold), on either backend (backends.py). `lstmcli predict`, `lstmcli serve` and
`lstmcli.load` use it."""

from __future__ import annotations

from array import array
from itertools import chain
from pathlib import Path

import torch

from lstmcli import checkpoint
from lstmcli.config import Truncate, to_dict
from lstmcli.data.batches import DEFAULT_MAX_LENGTH, Truncation, collate, sorted_batches
from lstmcli.data.encode import EncodedSplit
from lstmcli.data.text import basic_english
from lstmcli.evaluation.metrics import check_threshold
from lstmcli.inference.backends import choose_backend
from lstmcli.runtime.onnx_model import OnnxModel

__all__ = ["Classifier", "DEFAULT_MAX_LENGTH", "as_json"]
PREFIX_CHARS_PER_TOKEN = 64


class Classifier:
    """A model loaded once to classify texts: a checkpoint folder's weights in PyTorch (weights from
    safetensors, no pickle), or an export of it in onnxruntime (backends.py chooses)."""

    def __init__(self, path: str | Path, device: str | torch.device = "cpu", impl: str | None = None,
                 max_length: int | None = None, precision: str | None = None, backend: str = "auto"):
        self.device = torch.device(device)
        self.ck = None  # the PyTorch backend's checkpoint
        chosen = choose_backend(Path(path), backend, self.device, impl, precision)
        self.backend, self.export = chosen.name, chosen.export
        if chosen.export is not None:
            onnx = OnnxModel(chosen.export, max_length)
            self.model, self.vocab, self.labels, self.cut = onnx, onnx.vocab, onnx.labels, onnx.cut
            self.config = chosen.export.meta.get("checkpoint", {}).get("config")
        else:
            self.ck = checkpoint.load(chosen.path, str(self.device), impl, precision)
            self.model, self.vocab, self.labels = self.ck.model, self.ck.vocab, self.ck.label_names
            self.cut = Truncation.for_inference(self.ck.config.data, max_length)
            self.config = to_dict(self.ck.config)

    def encode(self, text: str) -> list[int]:
        """Ids of the text cut as in training. A huge text cut at its head is tokenized from a prefix
        that holds more than enough whole tokens (a cut can only alter the two tokens it falls into)."""
        limit = self.cut.length
        if self.cut.keep is Truncate.head and len(text) > limit * PREFIX_CHARS_PER_TOKEN:
            tokens = basic_english(text[: limit * PREFIX_CHARS_PER_TOKEN])
            if len(tokens) > limit + 2:
                return self.vocab.encode(tokens[:limit])
        return self.vocab.encode(self.cut.apply(basic_english(text)))

    @torch.no_grad()
    def probabilities(self, texts: list[str], batch_size: int = 256) -> torch.Tensor:
        """(len(texts), classes) float32: each text's probability of each label (`labels` order)."""
        split = _as_split([self.encode(t) for t in texts])
        out = torch.zeros(len(texts), len(self.labels))
        for indices in sorted_batches(split.lengths, batch_size):  # longest first, as in training
            batch = collate(split, indices).to(self.device)
            out[indices] = self.model(batch.ids, batch.lengths).softmax(-1).float().cpu()
        return out

    def rank(self, probs: torch.Tensor, top_k: int = 1,
             threshold: float | None = None) -> list[list[tuple[str, float]]]:
        """probabilities() rows -> for each, its `top_k` (label, probability) pairs, the predicted first.

        `threshold` (two labels only): the second label (labels[1], e.g. IMDB's "pos") is predicted when
        its probability is at least `threshold`, else the first; without it, the most probable label."""
        if threshold is not None:
            check_threshold(threshold, self.labels)
        k = max(1, min(top_k, len(self.labels)))
        if threshold is None:
            order = probs.topk(k, dim=-1).indices
        else:
            decided = (probs[:, 1] >= threshold).long()  # (N,) 1 = the positive label
            order = torch.stack([decided, 1 - decided], dim=1)[:, :k]
        return [[(self.labels[j], float(row[j])) for j in idx] for row, idx in zip(probs, order.tolist(),
                                                                                    strict=True)]

    def predict(self, texts: list[str], top_k: int = 1, batch_size: int = 256,
                threshold: float | None = None) -> list[list[tuple[str, float]]]:
        """For each text, its `top_k` (label, probability) pairs, the predicted label first (see rank)."""
        if threshold is not None:
            check_threshold(threshold, self.labels)
        return self.rank(self.probabilities(texts, batch_size), top_k, threshold)


def as_json(index: int, ranked: list[tuple[str, float]]) -> dict:
    """One text's answer as `predict --json` prints it and `lstmcli serve` returns it."""
    return {"index": index, "label": ranked[0][0], "probability": ranked[0][1],
            "top_k": [{"label": label, "probability": p} for label, p in ranked]}


def _as_split(encoded: list[list[int]]) -> EncodedSplit:
    """Texts' ids (already cut) as an unlabelled EncodedSplit, the form `collate` pads."""
    lengths = torch.tensor([len(ids) for ids in encoded], dtype=torch.int64)
    offsets = torch.zeros(len(encoded) + 1, dtype=torch.int64)
    torch.cumsum(lengths, 0, out=offsets[1:])
    flat = array("i", chain.from_iterable(encoded))  # C int: 32 bits, as EncodedSplit's ids
    ids = torch.frombuffer(flat, dtype=torch.int32) if len(flat) else torch.zeros(0, dtype=torch.int32)
    return EncodedSplit(ids, offsets, torch.zeros(len(encoded), dtype=torch.int64))
