"""Class weights of the training loss: `none`, `balanced` (n / (k * n_c), scikit-learn's rule: each label
weighs as much in total), or `label:w,label:w` (labels left out weigh 1). config.py checks the syntax
(parse_class_weights) before anything loads; `resolve` needs the training split's label counts.

A multi-label model's weights are positive weights (models/loss.py): `balanced` gives label c
(n - n_c) / n_c, so that its texts weigh as much as those without it, and `label:w` sets one."""

from __future__ import annotations

from lstmcli.config import parse_class_weights
from lstmcli.errors import LstmcliError


def resolve(spec: str, label_names: list[str], counts: list[int],
            multi_label_texts: int | None = None) -> list[float] | None:
    """One weight per label (label_names order), or None for `none`; `counts` are each label's texts,
    `multi_label_texts` a multi-label split's number of texts (None: single-label)."""
    parsed = parse_class_weights(spec)
    if parsed == "none":
        return None
    if parsed == "balanced" and multi_label_texts is not None:
        n = multi_label_texts
        return [(n - c) / c if c else 1.0 for c in counts]
    if parsed == "balanced":
        n, k = sum(counts), len(label_names)
        return [n / (k * c) if c else 1.0 for c in counts]
    unknown = [label for label in parsed if label not in label_names]
    if unknown:
        raise LstmcliError(f"class_weights names label(s) {', '.join(map(repr, unknown))} that the data does "
                           f"not have; its labels: {', '.join(label_names)}")
    return [parsed.get(name, 1.0) for name in label_names]
