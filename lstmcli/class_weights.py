"""Class weights of the training loss: `none`, `balanced` (n / (k * n_c), scikit-learn's rule: each label
weighs as much in total), or `label:w,label:w` (labels left out weigh 1). Pure Python: config.py checks
the syntax with `parse` before anything loads; `resolve` needs the training split's label counts."""

from __future__ import annotations

import math

from .errors import LstmcliError


def parse(spec: str) -> str | dict[str, float]:
    """"none", "balanced", or {label: weight}; ValueError says what is wrong."""
    if spec in ("none", "balanced"):
        return spec
    weights: dict[str, float] = {}
    for item in spec.split(","):
        label, sep, value = item.strip().rpartition(":")
        if not sep or not label:
            raise ValueError(f"expected 'none', 'balanced' or 'label:weight,label:weight', got {spec!r}")
        try:
            weight = float(value)
        except ValueError:
            raise ValueError(f"weight {value!r} of label {label!r} is not a number") from None
        if not math.isfinite(weight) or weight < 0:
            raise ValueError(f"weight of label {label!r} must be a finite number >= 0, got {value}")
        weights[label] = weight
    if not any(weights.values()):
        raise ValueError("at least one weight must be above 0")
    return weights


def resolve(spec: str, label_names: list[str], counts: list[int]) -> list[float] | None:
    """One weight per label (label_names order), or None for `none`."""
    parsed = parse(spec)
    if parsed == "none":
        return None
    if parsed == "balanced":
        n, k = sum(counts), len(label_names)
        return [n / (k * c) if c else 1.0 for c in counts]
    unknown = [label for label in parsed if label not in label_names]
    if unknown:
        raise LstmcliError(f"class_weights names label(s) {', '.join(map(repr, unknown))} that the data does "
                           f"not have; its labels: {', '.join(label_names)}")
    return [parsed.get(name, 1.0) for name in label_names]
