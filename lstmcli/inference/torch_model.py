"""The torch backend: a checkpoint folder's weights in PyTorch (inference/backends.py chooses it), and
the form its batches take. predict.py's Classifier imports this module only for this backend, so that
the onnx backend runs without torch."""

from __future__ import annotations

from array import array
from itertools import chain
from pathlib import Path

import numpy as np
import torch

from lstmcli import checkpoint
from lstmcli.config import to_dict
from lstmcli.data.batches import Truncation, collate, sorted_batches
from lstmcli.data.encode import EncodedSplit


class TorchModel:
    """A checkpoint loaded (weights from safetensors, no pickle) onto `device`, with its vocabulary,
    labels and the cut predict applies."""

    def __init__(self, path: Path, device: torch.device, impl: str | None, precision: str | None,
                 max_length: int | None):
        self.device = device
        self.ck = checkpoint.load(path, str(device), impl, precision)
        self.vocab, self.labels = self.ck.vocab, self.ck.label_names
        self.cut = Truncation.for_inference(self.ck.config.data, max_length)
        self.config = to_dict(self.ck.config)
        self.multi_label = self.ck.config.data.multi_label
        self.stored_thresholds = self.ck.metrics.get("thresholds")  # predict.py checks and applies them

    @torch.no_grad()
    def scores(self, encoded: list[list[int]], batch_size: int) -> np.ndarray:
        """(N, C) float32 probabilities (a softmax, or multi-label a sigmoid per label) of texts already
        encoded and cut, in length-sorted batches."""
        split = as_split(encoded)
        out = torch.zeros(len(encoded), len(self.labels))
        for indices in sorted_batches(split.lengths, batch_size):  # longest first, as in training
            batch = collate(split, indices).to(self.device)
            logits = self.ck.model(batch.ids, batch.lengths)
            out[indices] = (logits.sigmoid() if self.multi_label else logits.softmax(-1)).float().cpu()
        return out.numpy()


def as_split(encoded: list[list[int]]) -> EncodedSplit:
    """Texts' ids (already cut) as an unlabelled EncodedSplit, the form `collate` pads."""
    lengths = torch.tensor([len(ids) for ids in encoded], dtype=torch.int64)
    offsets = torch.zeros(len(encoded) + 1, dtype=torch.int64)
    torch.cumsum(lengths, 0, out=offsets[1:])
    flat = array("i", chain.from_iterable(encoded))  # C int: 32 bits, as EncodedSplit's ids
    ids = torch.frombuffer(flat, dtype=torch.int32) if len(flat) else torch.zeros(0, dtype=torch.int32)
    return EncodedSplit(ids, offsets, torch.zeros(len(encoded), dtype=torch.int64))
