"""Export formats: a checkpoint as a model that runs without lstmcli, one module per format. (Named
exporters, not export, so that the subpackage never hides the API function `lstmcli.export`.)

FORMATS is the one table of them: `lstmcli export --format` offers its keys, and `api.export` runs the
module of that name's `export(checkpoint_dir, out, force, quantize) -> (model file, JSON beside it)`.
quantize.py's QUANTIZATIONS is the table of `--quantize` choices.
"""

from __future__ import annotations

import importlib
from pathlib import Path

FORMATS = {
    "onnx": "(ids, lengths) -> logits, dynamic batch and sequence axes; onnxruntime runs it",
}


def export(checkpoint_dir: Path, out: Path | None = None, format: str = "onnx", force: bool = False,
           quantize: str | None = None) -> tuple[Path, Path]:
    """Write the checkpoint in `format` (a key of FORMATS), `quantize`d if given (int8); `out` None: the
    format's default name in the checkpoint folder. Returns the model file and its JSON."""
    if format not in FORMATS:
        from lstmcli.errors import LstmcliError
        raise LstmcliError(f"unknown export format {format!r}; valid: {', '.join(FORMATS)}")
    module = importlib.import_module(f"lstmcli.exporters.{format}")
    return module.export(Path(checkpoint_dir), None if out is None else Path(out), force, quantize)
