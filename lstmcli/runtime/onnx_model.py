"""An exported model (`lstmcli export`: model.onnx + its .json) run in onnxruntime, as `predict --backend
onnx` and `lstmcli.load(..., backend="onnx")` use it: the .json gives the tokenizer's vocabulary, the cut
and the labels; onnxruntime turns (ids, lengths) batches into logits. lstmcli's own tokenizer and
length-sorted batching (inference/predict.py) feed it exactly as they feed the PyTorch model.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from lstmcli.config import Truncate
from lstmcli.data.batches import Truncation
from lstmcli.data.text import Vocab
from lstmcli.errors import CheckpointError, LstmcliError

log = logging.getLogger(__name__)
FORMAT = "lstmcli-onnx/1"  # exporters/onnx.py writes it; a file of another format is refused


def export_name(quantize: str | None) -> str:
    """The file `lstmcli export` writes in a checkpoint folder when no --out is given."""
    return f"model.{quantize}.onnx" if quantize else "model.onnx"


NAMES = (export_name("int8"), export_name(None))  # what find_export looks for, fastest first


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
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"broken export: {meta_path} ({exc})") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise CheckpointError(f"{meta_path} is not an lstmcli export's JSON (no format {FORMAT!r}); "
                                  "re-export with this lstmcli")
        return cls(model, meta)

    def made_from(self, digest: str) -> bool:
        """Whether it was exported from the weights whose SHA-256 is `digest`."""
        return (self.meta.get("checkpoint") or {}).get("sha256") == digest


def find_export(checkpoint_dir: Path, digest: str) -> OnnxExport | None:
    """The fastest export in a checkpoint folder made from its current weights (NAMES' order); one made
    from weights since replaced (a later epoch, calibrate) is skipped with a line saying so."""
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
        log.warning("%s was exported from earlier weights of %s; not used (export again to use it)",
                    found.model, checkpoint_dir)
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
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"broken export: {export.model.with_suffix('.json')} ({exc!r})") from None
        self.export, self.quantize = export, meta.get("quantize")
        options = ort.SessionOptions()
        # as many threads as torch would use: the caller's torch.set_num_threads holds for both backends
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(export.model), options,
                                                providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(f"onnxruntime cannot load {export.model}: {first[:300]}") from None

    def eval(self) -> OnnxModel:
        """Nothing to switch (an exported graph has no dropout); here so that evaluation treats it as a
        torch model."""
        return self

    def __call__(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """ids (B, T) int64 0-padded, lengths (B,) >= 1 -> logits (B, C) float32."""
        logits = self.session.run(["logits"], {"ids": ids.cpu().numpy(), "lengths": lengths.cpu().numpy()})[0]
        return torch.from_numpy(logits)
