"""The training loss of a classifier's logits, one function for training, validation and calibration.

Single-label: the softmax's cross-entropy, labels (B,) ids, `weight` (C,) each label's weight (the
weighted mean is F.cross_entropy's: sum w_y * loss / sum w_y). Multi-label: a sigmoid per label with
binary cross-entropy, labels (B, C) 0/1, `weight` (C,) each label's positive weight (BCEWithLogits's
pos_weight: a missed label costs w times a false one); a text's loss is the sum over its C labels, as
the cross-entropy is one number per text, so that the learning rate means the same in both.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor | None = None,
                        reduction: str = "mean") -> torch.Tensor:
    """logits (B, C); labels (B,) int64 or multi-label (B, C) 0/1 -> the loss, `reduction` "mean" (over
    texts, or over their weights) or "sum" (over texts)."""
    if labels.dim() == 1:
        return F.cross_entropy(logits, labels, weight=weight, reduction=reduction)
    per_text = F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype), pos_weight=weight,
                                                  reduction="none").sum(1)  # (B,)
    return per_text.sum() if reduction == "sum" else per_text.mean()


def decide(logits: torch.Tensor, multi_label: bool) -> torch.Tensor:
    """What a model predicts from logits (B, C) without thresholds: single-label its most probable
    label (B,), multi-label (B, C) 0/1 for every label more likely than not (probability >= 0.5)."""
    return (logits >= 0).to(torch.uint8) if multi_label else logits.argmax(1)


def correct(logits: torch.Tensor, labels: torch.Tensor) -> int:
    """Texts whose prediction is exactly right: the label, or (multi-label) the whole set."""
    preds = decide(logits, labels.dim() == 2)
    if labels.dim() == 1:
        return int((preds == labels).sum())
    return int((preds == labels.to(torch.uint8)).all(1).sum())
