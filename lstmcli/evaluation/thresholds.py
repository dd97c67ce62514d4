"""The check a decision threshold passes before any text is read (torch-free: `predict` on the onnx
backend runs without importing torch)."""

from __future__ import annotations

import math

from lstmcli.errors import CheckpointError, LstmcliError

DEFAULT_THRESHOLD = 0.5  # a multi-label model's label more likely than not, where none was fitted


def check_threshold(threshold: float, labels: list[str], multi_label: bool = False) -> None:
    """A decision threshold needs a model of two labels, or a multi-label model (where it replaces
    every label's own), and a probability in [0, 1]."""
    if len(labels) != 2 and not multi_label:
        raise LstmcliError(f"--threshold decides between two labels, or every label of a multi-label "
                           f"model; this model has {len(labels)} labels, one per text")
    if not 0.0 <= threshold <= 1.0:
        raise LstmcliError(f"--threshold must be a probability in [0, 1], got {threshold}")


def stored_thresholds(value, labels: list[str], where: str) -> list[float]:
    """A multi-label model's per-label thresholds as a checkpoint (metrics.json "thresholds") or an
    export's .json stores them, {label: probability}, in `labels` order (DEFAULT_THRESHOLD for a label
    it lacks, or for all when there are none); anything else is a CheckpointError naming `where`."""
    if value is None:
        return [DEFAULT_THRESHOLD] * len(labels)
    ok = isinstance(value, dict) and all(  # (0 <= t first: math.isfinite overflows on a huge int)
        isinstance(t, int | float) and not isinstance(t, bool) and 0 <= t <= 1 and math.isfinite(t)
        for t in value.values())
    if not ok:
        raise CheckpointError(f"broken checkpoint: {where} \"thresholds\" is not an object of label -> "
                              f"probability in [0, 1]")
    return [float(value.get(name, DEFAULT_THRESHOLD)) for name in labels]
