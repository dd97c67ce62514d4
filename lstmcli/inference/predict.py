"""Classifier: a loaded model that classifies texts in length-sorted batches (top-k, or a binary decision
at a probability threshold), on either backend (backends.py). `lstmcli predict`, `lstmcli serve` and
`lstmcli.load` use it. Nothing here imports torch: the torch backend (torch_model.py) brings it in."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lstmcli.config import Truncate
from lstmcli.data.cut import DEFAULT_MAX_LENGTH
from lstmcli.data.text import basic_english
from lstmcli.evaluation.thresholds import check_threshold
from lstmcli.inference.backends import BATCH_SIZES, choose_backend, device_for
from lstmcli.runtime.device import device_kind
from lstmcli.runtime.onnx_model import OnnxModel

__all__ = ["Classifier", "DEFAULT_MAX_LENGTH", "as_json"]
PREFIX_CHARS_PER_TOKEN = 64


class Classifier:
    """A model loaded once to classify texts: a checkpoint folder's weights in PyTorch (weights from
    safetensors, no pickle), or an export of it in onnxruntime (backends.py chooses). `device`: a
    torch.device or its name, or auto. `threads`: onnxruntime's threads (default: one per core); the
    torch backend uses torch's own setting (torch.set_num_threads), which only the caller changes."""

    def __init__(self, path: str | Path, device="cpu", impl: str | None = None,
                 max_length: int | None = None, precision: str | None = None, backend: str = "auto",
                 threads: int | None = None):
        device = device_for(backend, device)
        chosen = choose_backend(Path(path), backend, device_kind(device), impl, precision)
        self.backend, self.export, self.ck = chosen.name, chosen.export, None
        self.batch_size = BATCH_SIZES[chosen.name]  # the backend's own default
        if chosen.export is not None:
            self.model = OnnxModel(chosen.export, max_length, threads)
            self.config = (chosen.export.meta.get("checkpoint") or {}).get("config")  # (older exports: none)
        else:
            from lstmcli.inference.torch_model import TorchModel
            from lstmcli.runtime.device import resolve_device
            device = resolve_device(device) if isinstance(device, str) else device
            self.model = TorchModel(chosen.path, device, impl, precision, max_length)
            self.ck, self.config = self.model.ck, self.model.config
        self.vocab, self.labels, self.cut = self.model.vocab, self.model.labels, self.model.cut

    def encode(self, text: str) -> list[int]:
        """Ids of the text cut as in training. A huge text cut at its head is tokenized from a prefix
        that holds more than enough whole tokens (a cut can only alter the two tokens it falls into)."""
        limit = self.cut.length
        if self.cut.keep is Truncate.head and len(text) > limit * PREFIX_CHARS_PER_TOKEN:
            tokens = basic_english(text[: limit * PREFIX_CHARS_PER_TOKEN])
            if len(tokens) > limit + 2:
                return self.vocab.encode(tokens[:limit])
        return self.vocab.encode(self.cut.apply(basic_english(text)))

    def scores(self, texts: list[str], batch_size: int | None = None) -> np.ndarray:
        """(len(texts), classes) float32 numpy array: each text's probability of each label (`labels`
        order), in length-sorted batches of `batch_size` texts (default: backends.BATCH_SIZES')."""
        return self.model.scores([self.encode(t) for t in texts], batch_size or self.batch_size)

    def probabilities(self, texts: list[str], batch_size: int | None = None):
        """scores() as a torch.Tensor (imports torch)."""
        import torch
        return torch.from_numpy(self.scores(texts, batch_size))

    def rank(self, probs, top_k: int = 1, threshold: float | None = None) -> list[list[tuple[str, float]]]:
        """scores() rows -> for each, its `top_k` (label, probability) pairs, the predicted first.

        `threshold` (two labels only): the second label (labels[1], e.g. IMDB's "pos") is predicted when
        its probability is at least `threshold`, else the first; without it, the most probable label."""
        if threshold is not None:
            check_threshold(threshold, self.labels)
        probs = np.asarray(probs)
        k = max(1, min(top_k, len(self.labels)))
        if threshold is None:
            order = np.argsort(-probs, axis=1, kind="stable")[:, :k]  # ties: the earlier label first
        else:
            decided = (probs[:, 1] >= threshold).astype(np.int64)  # (N,) 1 = the positive label
            order = np.stack([decided, 1 - decided], axis=1)[:, :k]
        return [[(self.labels[j], float(row[j])) for j in idx] for row, idx in zip(probs, order.tolist(),
                                                                                    strict=True)]

    def predict(self, texts: list[str], top_k: int = 1, batch_size: int | None = None,
                threshold: float | None = None) -> list[list[tuple[str, float]]]:
        """For each text, its `top_k` (label, probability) pairs, the predicted label first (see rank)."""
        if threshold is not None:
            check_threshold(threshold, self.labels)
        return self.rank(self.scores(texts, batch_size), top_k, threshold)


def as_json(index: int, ranked: list[tuple[str, float]]) -> dict:
    """One text's answer as `predict --json` prints it and `lstmcli serve` returns it."""
    return {"index": index, "label": ranked[0][0], "probability": ranked[0][1],
            "top_k": [{"label": label, "probability": p} for label, p in ranked]}
