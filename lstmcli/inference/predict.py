"""Classifier: a loaded model that classifies texts in length-sorted batches (top-k, or a binary decision
at a probability threshold; a multi-label model: every label at or over its threshold), on either
backend (backends.py). `lstmcli predict`, `lstmcli serve` and
`lstmcli.load` use it. Nothing here imports torch: the torch backend (torch_model.py) brings it in."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lstmcli.config import Truncate
from lstmcli.data.cut import DEFAULT_MAX_LENGTH
from lstmcli.data.text import basic_english
from lstmcli.evaluation.thresholds import check_threshold, stored_thresholds
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
        self.multi_label: bool = self.model.multi_label
        where = chosen.export.model.with_suffix(".json") if chosen.export else self.ck.path / "metrics.json"
        # (C,) each label's threshold: a multi-label model's fitted ones (training/fit.py), else unused
        self.thresholds = np.asarray(stored_thresholds(self.model.stored_thresholds, self.labels, str(where)),
                                     dtype=np.float32)

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

    def rank(self, probs, top_k: int | None = None,
             threshold: float | None = None) -> list[list[tuple[str, float]]]:
        """scores() rows -> for each, its (label, probability) pairs, the predicted first.

        Single-label: the `top_k` (default 1) most probable; `threshold` (two labels only): the second
        label (labels[1], e.g. IMDB's "pos") is predicted when its probability is at least `threshold`,
        else the first. Multi-label: every label whose probability reaches its threshold (`threshold`
        for all of them when given, else each label's fitted one), most probable first, at most `top_k`
        (default all); a text may get none."""
        if threshold is not None:
            check_threshold(threshold, self.labels, self.multi_label)
        probs = np.asarray(probs)
        if self.multi_label:
            return self._rank_multi(probs, top_k, threshold)
        k = max(1, min(top_k or 1, len(self.labels)))
        if threshold is None:
            order = np.argsort(-probs, axis=1, kind="stable")[:, :k]  # ties: the earlier label first
        else:
            decided = (probs[:, 1] >= threshold).astype(np.int64)  # (N,) 1 = the positive label
            order = np.stack([decided, 1 - decided], axis=1)[:, :k]
        return [[(self.labels[j], float(row[j])) for j in idx] for row, idx in zip(probs, order.tolist(),
                                                                                    strict=True)]

    def _rank_multi(self, probs: np.ndarray, top_k: int | None,
                    threshold: float | None) -> list[list[tuple[str, float]]]:
        """rank() for a multi-label model: (N, C) sigmoid probabilities -> each text's labels over their
        thresholds, most probable first (ties: the earlier label), at most `top_k`."""
        over = probs >= (self.thresholds if threshold is None else np.float32(threshold))  # (N, C)
        order = np.argsort(-probs, axis=1, kind="stable")
        out = []
        for row, chosen, idx in zip(probs, over, order.tolist(), strict=True):
            picked = [(self.labels[j], float(row[j])) for j in idx if chosen[j]]
            out.append(picked[:top_k] if top_k else picked)
        return out

    def predict(self, texts: list[str], top_k: int | None = None, batch_size: int | None = None,
                threshold: float | None = None) -> list[list[tuple[str, float]]]:
        """For each text its (label, probability) pairs, the predicted first (see rank): the `top_k`
        most probable (default 1), or a multi-label model's labels over their thresholds."""
        if threshold is not None:
            check_threshold(threshold, self.labels, self.multi_label)
        return self.rank(self.scores(texts, batch_size), top_k, threshold)


def as_json(index: int, ranked: list[tuple[str, float]], multi_label: bool = False) -> dict:
    """One text's answer as `predict --json` prints it and `lstmcli serve` returns it: the label, its
    probability and the top k; a multi-label model's, the list of its labels (possibly empty)."""
    pairs = [{"label": label, "probability": p} for label, p in ranked]
    if multi_label:
        return {"index": index, "labels": pairs}
    return {"index": index, "label": ranked[0][0], "probability": ranked[0][1], "top_k": pairs}
