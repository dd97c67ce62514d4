"""Which engine runs a model for predict, serve, eval and `lstmcli.load`: the one table of backends, and
the rule `auto` follows.

- torch: the checkpoint's weights in PyTorch (any device, --impl, --precision).
- onnx: an export of it (`lstmcli export`, fp32 or int8) in onnxruntime, on the CPU.
`auto` takes onnx when the model given is an .onnx file, or when its checkpoint folder holds an export
of the checkpoint as it is now (its four files' digest; model.int8.onnx first, then model.onnx) and
onnxruntime is installed,
on a CPU device with no --impl or --precision asked for; torch otherwise. benchmarks/RESULTS.md
("Faster prediction") has the figures behind preferring the int8 export.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lstmcli.errors import LstmcliError

if TYPE_CHECKING:
    from lstmcli.runtime.onnx_model import OnnxExport

log = logging.getLogger(__name__)

BACKENDS = {
    "auto": "onnx when an export of the checkpoint as it is now is in its folder (int8 first) and "
            "onnxruntime is installed, else torch",
    "torch": "PyTorch, from the checkpoint's weights",
    "onnx": "onnxruntime, from an export (lstmcli export; an .onnx file or the one in the checkpoint "
            "folder), on the CPU",
}


# texts per model batch when none is asked for: PyTorch's GEMMs gain from wide batches; onnxruntime's
# recurrent operators run faster in narrow ones, whose step activations stay in cache (RESULTS.md)
BATCH_SIZES = {"torch": 256, "onnx": 16}


@dataclass
class Chosen:
    name: str  # "torch" or "onnx"
    path: Path  # the checkpoint folder (run folders resolved to best/), or the .onnx file
    export: OnnxExport | None = None  # what onnx runs


def device_for(backend: str, device):
    """The device to run on: `auto` is the CPU for the onnx backend, which runs there GPU or not."""
    return "cpu" if backend == "onnx" and device == "auto" else device


def _torch_only(impl: str | None, precision: str | None, device: str) -> str | None:
    """What, among the arguments, only PyTorch runs (None: nothing)."""
    if impl is not None:
        return f"--impl {impl}"
    if precision is not None:
        return f"--precision {precision}"
    if device != "cpu":
        return f"--device {device}"
    return None


def choose_backend(path: Path, backend: str, device: str, impl: str | None = None,
                   precision: str | None = None) -> Chosen:
    """The backend that runs `path` (a checkpoint or run folder, or an exported .onnx file) on a
    device of kind `device` (cpu, cuda, mps)."""
    from lstmcli import checkpoint
    from lstmcli.runtime.onnx_model import (
        NAMES,
        OnnxExport,
        export_name,
        find_export,
        onnxruntime_available,
    )
    if backend not in BACKENDS:
        raise LstmcliError(f"unknown backend {backend!r}; valid: {', '.join(BACKENDS)}")
    torch_only = _torch_only(impl, precision, device)
    if path.suffix.lower() == ".onnx":  # an export: onnxruntime runs it, nothing else can
        if backend == "torch":
            raise LstmcliError(f"{path} is an exported model: it runs on --backend onnx; give the checkpoint "
                               "folder to run it in PyTorch")
        if torch_only:
            raise LstmcliError(f"{torch_only}: an exported model runs in onnxruntime on the CPU; drop it")
        export = OnnxExport.read(path)
        if (path.parent / "model.safetensors").is_file() and (path.parent / "config.json").is_file():
            try:
                current = export.made_from(checkpoint.files_digest(path.parent))
            except OSError:  # a checkpoint folder missing a file: nothing to compare with
                current = True
            if not current:
                log.warning("%s was exported before the checkpoint beside it changed; running it as it is "
                            "(export again for the checkpoint's current state)", path)
        return Chosen("onnx", path, export)
    if backend == "onnx" and torch_only:
        raise LstmcliError(f"{torch_only} is a torch backend option; drop it or use --backend torch")
    folder = checkpoint.resolve(path)
    if backend == "torch" or (backend == "auto" and (torch_only or not onnxruntime_available())):
        return Chosen("torch", folder)
    present = [name for name in NAMES if (folder / name).is_file()]
    found = find_export(folder, checkpoint.files_digest(folder)) if present else None
    if found is not None:
        if backend == "auto":
            log.info("backend onnx (auto): %s", found.model)
        return Chosen("onnx", folder, found)
    if backend == "onnx":
        raise LstmcliError(f"--backend onnx: {folder} holds no export of the checkpoint as it is now; run "
                           f"`lstmcli export -c {folder} --quantize int8` (writes {export_name('int8')}) "
                           "or give an .onnx file")
    return Chosen("torch", folder)
