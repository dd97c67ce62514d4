"""An exported model (`lstmcli export`: model.onnx + its .json) run in onnxruntime, as `predict --backend
onnx` and `lstmcli.load(..., backend="onnx")` use it: the .json gives the tokenizer's vocabulary, the cut
and the labels; onnxruntime turns (ids, lengths) batches into logits. lstmcli's own tokenizer feeds it
length-sorted batches, padded in numpy: this path never imports torch, which would take most of a
short `predict`'s time to load.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lstmcli.config import Truncate
from lstmcli.data.cut import Truncation
from lstmcli.data.text import PAD_ID, Vocab
from lstmcli.errors import CheckpointError, LstmcliError

log = logging.getLogger(__name__)
FORMAT = "lstmcli-onnx/1"  # exporters/onnx.py writes it; a file of another format is refused


def export_name(quantize: str | None) -> str:
    """The file `lstmcli export` writes in a checkpoint folder when no --out is given."""
    return f"model.{quantize}.onnx" if quantize else "model.onnx"


NAMES = (export_name("int8"), export_name(None))  # what find_export looks for, fastest first


def physical_cores() -> int:
    """Cores this process may run on, hyper-threads counted once where Linux says how they pair."""
    if not hasattr(os, "sched_getaffinity"):  # (not Linux)
        return os.cpu_count() or 1
    cpus = sorted(os.sched_getaffinity(0))
    siblings = set()
    for cpu in cpus:
        try:
            text = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list").read_text()
        except OSError:
            return len(cpus)
        siblings.add(text.strip())
    return max(1, len(siblings))


def onnxruntime_available() -> bool:
    """Whether onnxruntime can be imported here (the `export` extra installs it)."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass
class OnnxExport:
    """An exported model's two files and what its .json says."""

    model: Path
    meta: dict

    @classmethod
    def read(cls, model: Path) -> OnnxExport:
        """The export at `model` (its .json beside it); anything missing or malformed: CheckpointError."""
        meta_path = model.with_suffix(".json")
        if not model.is_file():
            raise CheckpointError(f"{model}: no such ONNX model file")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise CheckpointError(f"{model} has no {meta_path.name} beside it (lstmcli export writes both; "
                                  "it holds the vocabulary and labels)") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            why = str(exc)[:200] or type(exc).__name__
            raise CheckpointError(f"broken export: {meta_path} ({why})") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise CheckpointError(f"{meta_path} is not an lstmcli export's JSON (no format {FORMAT!r}); "
                                  "re-export with this lstmcli")
        return cls(model, meta)

    def made_from(self, digest: str) -> bool:
        """Whether it was exported from the checkpoint files whose digest (checkpoint.files_digest) is
        `digest`."""
        return (self.meta.get("checkpoint") or {}).get("sha256") == digest


def find_export(checkpoint_dir: Path, digest: str) -> OnnxExport | None:
    """The fastest export in a checkpoint folder made from its current files (NAMES' order); one made
    before they changed (a later epoch, calibrate, an edited config) is skipped with a line saying so."""
    for name in NAMES:
        if not (checkpoint_dir / name).is_file():
            continue
        try:
            found = OnnxExport.read(checkpoint_dir / name)
        except CheckpointError as exc:
            log.warning("%s; not used", exc)
            continue
        if found.made_from(digest):
            return found
        log.warning("%s was exported before %s's weights, config, vocabulary or labels changed; not used "
                    "(export again to use it)", found.model, checkpoint_dir)
    return None


class OnnxModel:
    """(ids, lengths) -> logits in onnxruntime, with the vocabulary, cut and labels of its export."""

    def __init__(self, export: OnnxExport, max_length: int | None = None, threads: int | None = None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise LstmcliError("--backend onnx needs onnxruntime: pip install 'lstmcli[export]'") from None
        meta = export.meta
        try:
            self.vocab = Vocab(list(meta["vocab"]))
            self.labels: list[str] = list(meta["labels"])
            cut = meta["cut"]
            self.cut = Truncation(max_length or int(cut["max_length"]), Truncate(cut["truncate"]))
            if self.cut.length < 1 or not all(isinstance(x, str) for x in [*self.vocab.itos, *self.labels]):
                raise ValueError("a cut under 1 token, or a label or token that is not a string")
            self.multi_label = meta.get("multi_label", False) is True
            # a multi-label export's {label: threshold}, which inference/predict.py checks and applies
            self.stored_thresholds = meta.get("thresholds")
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"broken export: {export.model.with_suffix('.json')} ({exc!r})") from None
        self.export, self.quantize = export, meta.get("quantize")
        options = ort.SessionOptions()
        # one thread per core (onnxruntime's default counts hyper-threads), as torch's default
        options.intra_op_num_threads = threads or physical_cores()
        options.inter_op_num_threads = 1
        # denormal floats as zero, as `tune_process` has torch do: a state decaying through many steps
        # reaches them, and x86 CPUs handle them a hundred times slower
        options.add_session_config_entry("session.set_denormal_as_zero", "1")
        try:
            self.session = ort.InferenceSession(str(export.model), options,
                                                providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(f"onnxruntime cannot load {export.model}: {first[:300]}") from None
        classes = self.session.get_outputs()[0].shape[-1]
        if isinstance(classes, int) and classes != len(self.labels):
            raise CheckpointError(f"broken export: {export.model} gives {classes} logits, its .json names "
                                  f"{len(self.labels)} labels")

    def logits(self, ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """ids (B, T) int64 0-padded, lengths (B,) int64 >= 1 -> logits (B, C) float32. A failure of the
        model (a .json whose vocabulary outgrows the model's table, ...) is a CheckpointError."""
        try:
            return self.session.run(["logits"], {"ids": ids, "lengths": lengths})[0]
        except Exception as exc:  # onnxruntime's own error types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(f"onnxruntime failed on {self.export.model} (does its .json belong to "
                                  f"it?): {first[:300]}") from None

    def scores(self, encoded: list[list[int]], batch_size: int) -> np.ndarray:
        """(N, C) float32 probabilities (a softmax, or multi-label a sigmoid per label) of texts already
        encoded and cut, in length-sorted batches of `batch_size` (longest first, as the PyTorch backend
        batches them)."""
        lengths = np.fromiter((max(len(ids), 1) for ids in encoded), dtype=np.int64, count=len(encoded))
        order = np.argsort(-lengths, kind="stable")
        out = np.zeros((len(encoded), len(self.labels)), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            ids = np.full((len(rows), int(lengths[rows].max())), PAD_ID, dtype=np.int64)
            for i, row in enumerate(rows):
                ids[i, :len(encoded[row])] = encoded[row]
            logits = self.logits(ids, lengths[rows])
            if self.multi_label:
                out[rows] = 1 / (1 + np.exp(-logits.astype(np.float64)))  # (float64: no overflow warning)
                continue
            exp = np.exp(logits - logits.max(axis=1, keepdims=True))  # softmax, shifted not to overflow
            out[rows] = exp / exp.sum(axis=1, keepdims=True)
        return out

    def eval(self) -> OnnxModel:
        """Nothing to switch (an exported graph has no dropout); here so that evaluation treats it as a
        torch model."""
        return self

    def __call__(self, ids, lengths):
        """As a torch model for evaluation: torch tensors ids (B, T), lengths (B,) -> logits (B, C)."""
        import torch
        return torch.from_numpy(self.logits(ids.cpu().numpy(), lengths.cpu().numpy()))
