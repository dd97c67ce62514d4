"""The check a decision threshold passes before any text is read (torch-free: `predict` on the onnx
backend runs without importing torch)."""

from __future__ import annotations

from lstmcli.errors import LstmcliError


def check_threshold(threshold: float, labels: list[str]) -> None:
    """A decision threshold needs a model of two labels and a probability in [0, 1]."""
    if len(labels) != 2:
        raise LstmcliError(f"--threshold decides between two labels; this model has {len(labels)}")
    if not 0.0 <= threshold <= 1.0:
        raise LstmcliError(f"--threshold must be a probability in [0, 1], got {threshold}")
