"""Multi-label metrics: counts per label of right, false and missed labels, and the report built from them.

A multi-label model predicts every label whose probability (its own sigmoid) reaches that label's
threshold. A report (eval-SPLIT.json, metrics.json's "test") holds, with "multi_label": true:
- "accuracy": subset accuracy, the share of texts whose predicted set is exactly their set (what
  scikit-learn's accuracy_score gives on indicator matrices), also under "subset_accuracy";
- "hamming_loss": the share of (text, label) decisions that are wrong;
- "micro_f1" (with "micro_precision", "micro_recall"): F1 of all (text, label) decisions pooled;
- "macro_f1": the mean of the labels' F1, each label's P/R/F1/support under "per_class" (support: texts
  that have the label; a label never predicted has precision 0, scikit-learn's zero_division=0);
- "thresholds": the threshold each label was decided at, and "fitted_thresholds": per label the
  threshold that maximises its F1 on this split (with that F1, precision and recall), which training
  fits on the validation split and stores in the checkpoint.
Counts add up over batches and data-parallel ranks, so the metrics never depend on how they were split.
"""

from __future__ import annotations

import torch

from lstmcli.evaluation.metrics import best_f1_threshold
from lstmcli.evaluation.thresholds import stored_thresholds


def label_counts(probabilities: torch.Tensor, targets: torch.Tensor,
                 thresholds: torch.Tensor) -> torch.Tensor:
    """(B, C) probabilities, (B, C) 0/1 targets, (C,) thresholds -> (3, C) int64 counts [true positive,
    false positive, false negative] per label, and the texts whose whole set is right, as one
    (3 * C + 1,) vector that adds up over batches and ranks."""
    pred = probabilities >= thresholds
    true = targets.bool()
    per_label = torch.stack([(pred & true).sum(0), (pred & ~true).sum(0), (~pred & true).sum(0)])
    exact = (pred == true).all(1).sum()
    return torch.cat([per_label.flatten(), exact.view(1)]).long()


def report_from_counts(counts: torch.Tensor, n: int, label_names: list[str], thresholds: torch.Tensor,
                       loss: float | None = None) -> dict:
    """The report the module docstring describes, from label_counts() summed over a split of `n` texts."""
    k = len(label_names)
    tp, fp, fn = counts[:3 * k].view(3, k).double()
    exact = int(counts[3 * k])
    precision = torch.where(tp + fp > 0, tp / (tp + fp).clamp(min=1), 0.0)
    recall = torch.where(tp + fn > 0, tp / (tp + fn).clamp(min=1), 0.0)
    both = precision + recall
    f1 = torch.where(both > 0, 2 * precision * recall / both.clamp(min=1e-12), 0.0)
    TP, FP, FN = float(tp.sum()), float(fp.sum()), float(fn.sum())
    micro_p = TP / (TP + FP) if TP + FP else 0.0
    micro_r = TP / (TP + FN) if TP + FN else 0.0
    p, r, f, s = precision.tolist(), recall.tolist(), f1.tolist(), (tp + fn).long().tolist()
    report = {
        "multi_label": True,
        "n": n,
        "accuracy": exact / n if n else 0.0,
        "subset_accuracy": exact / n if n else 0.0,
        "hamming_loss": (FP + FN) / (n * k) if n else 0.0,
        "micro_f1": 2 * TP / (2 * TP + FP + FN) if TP + FP + FN else 0.0,
        "micro_precision": micro_p,
        "micro_recall": micro_r,
        "macro_f1": float(f1.mean()),
        "per_class": {name: {"precision": p[i], "recall": r[i], "f1": f[i], "support": s[i]}
                      for i, name in enumerate(label_names)},
        "labels": list(label_names),
        "thresholds": dict(zip(label_names, thresholds.double().tolist(), strict=True)),
    }
    if loss is not None:
        report["loss"] = loss
    return report


def fit_thresholds(probabilities: torch.Tensor, targets: torch.Tensor, label_names: list[str]) -> dict:
    """Per label, a threshold whose decision `probability >= t` gives that label its best F1 on these
    examples ((N, C) each), with that F1, precision and recall; None for a label no text here has.

    The best cut falls between two distinct probabilities; the threshold is their midpoint, not the
    lower one's own value: a validation text sitting exactly on its threshold would flip with float
    noise of 1e-7 (another batch size, impl or backend), and on a separable split the midpoint keeps a
    margin on both sides instead of hugging the least confident positive."""
    fitted = {}
    for c, name in enumerate(label_names):
        scores = probabilities[:, c].double()
        best = best_f1_threshold(scores, targets[:, c].long())
        if best is not None:
            below = scores[scores < best["threshold"]]
            lower = float(below.max()) if below.numel() else 0.0
            best = {**best, "threshold": (best["threshold"] + lower) / 2}
        fitted[name] = best
    return fitted


def threshold_vector(label_names: list[str], thresholds: dict | None,
                     override: float | None = None) -> torch.Tensor:
    """(C,) float32 thresholds: `override` for every label when given, else the checkpoint's stored ones
    ({label: t}; a label without one, DEFAULT_THRESHOLD)."""
    if override is not None:
        return torch.full((len(label_names),), float(override))
    return torch.tensor(stored_thresholds(thresholds, label_names, "metrics.json"))
