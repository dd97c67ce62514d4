"""Class weights of the training loss: `none`, `balanced` (n / (k * n_c), scikit-learn's rule: each label
weighs as much in total), or `label:w,label:w` (labels left out weigh 1). config.py checks the syntax
(parse_class_weights) before anything loads; `resolve` needs the training split's label counts."""

from __future__ import annotations

from lstmcli.config import parse_class_weights
from lstmcli.errors import LstmcliError


def resolve(spec: str, label_names: list[str], counts: list[int]) -> list[float] | None:
    """One weight per label (label_names order), or None for `none`."""
    parsed = parse_class_weights(spec)
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
