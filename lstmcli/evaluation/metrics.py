"""Classification metrics from predictions: accuracy, macro-F1, per-class P/R/F1, confusion counts.

The confusion is counted as (true, predicted) pairs, never as a k x k matrix, so that evaluating
costs memory and time in the examples and the labels, not in the labels squared. A report (metrics.json's
"test", a checkpoint's "val", eval-SPLIT.json, `eval --json`) holds it in one of two forms:

- up to DENSE_LABELS labels, "confusion": a list of k lists of k ints, confusion[i][j] the examples of
  label i predicted as label j;
- beyond that, "confusion_sparse": a list of [true_index, predicted_index, count], one per non-zero
  cell, sorted by true index then predicted index; the counts sum to "n". There is then no "confusion".

Indices are positions in the report's "labels".
"""

from __future__ import annotations

import torch

# The most labels a report holds as a dense "confusion" matrix: beyond, its k x k cells (mostly zeros)
# would make the report grow with the labels squared, so it holds the non-zero cells only.
DENSE_LABELS = 50

Pairs = tuple[torch.Tensor, torch.Tensor]  # (keys true * k + predicted, counts): sorted, distinct keys


def pair_counts(targets: torch.Tensor, preds: torch.Tensor, k: int) -> Pairs:
    """The non-zero confusion cells of these examples: keys true * k + predicted (int64) and counts."""
    return torch.unique(targets.long() * k + preds.long(), sorted=True, return_counts=True)


def merge_pairs(parts: list[Pairs]) -> Pairs:
    """One Pairs holding the counts of all `parts` (batches, or data-parallel ranks) added up."""
    if not parts:
        return torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64)
    keys, inverse = torch.unique(torch.cat([p[0] for p in parts]), sorted=True, return_inverse=True)
    counts = torch.zeros(len(keys), dtype=torch.int64)
    return keys, counts.index_add_(0, inverse, torch.cat([p[1] for p in parts]).long())


def report_from_pairs(pairs: Pairs, label_names: list[str], loss: float | None = None) -> dict:
    """All metrics as a JSON-ready dict from confusion pair counts (of batches, or merged over
    data-parallel ranks), its confusion in the form the module docstring describes."""
    keys, counts = pairs
    k = len(label_names)
    true, pred = keys // k, keys % k
    per_label = torch.zeros(3, k, dtype=torch.int64)  # examples right, true, predicted, per label
    hit = true == pred
    per_label[0].index_add_(0, true[hit], counts[hit])
    per_label[1].index_add_(0, true, counts)
    per_label[2].index_add_(0, pred, counts)
    report = _scores(*per_label.double(), label_names)
    if k <= DENSE_LABELS:
        dense = torch.zeros(k * k, dtype=torch.int64)
        dense[keys] = counts
        report["confusion"] = dense.view(k, k).tolist()
    else:
        report["confusion_sparse"] = torch.stack([true, pred, counts], 1).tolist()
    report["labels"] = list(label_names)
    if loss is not None:
        report["loss"] = loss
    return report


def _scores(tp: torch.Tensor, support: torch.Tensor, predicted: torch.Tensor, label_names: list[str]) -> dict:
    """n, accuracy, macro-F1 and per-class P/R/F1/support from per-label counts (float64 tensors)."""
    precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), 0.0)
    recall = torch.where(support > 0, tp / support.clamp(min=1), 0.0)
    denom = precision + recall
    f1 = torch.where(denom > 0, 2 * precision * recall / denom.clamp(min=1e-12), 0.0)
    n = int(support.sum())
    p, r, f, s = precision.tolist(), recall.tolist(), f1.tolist(), support.long().tolist()
    return {
        "n": n,
        "accuracy": float(tp.sum() / n) if n else 0.0,
        "macro_f1": float(f1.mean()),
        "per_class": {name: {"precision": p[i], "recall": r[i], "f1": f[i], "support": s[i]}
                      for i, name in enumerate(label_names)},
    }


def selection_score(report: dict) -> float:
    """The validation figure that picks best/, early stopping, the plateau schedule and tune's trials:
    micro-F1 for a multi-label model (its subset accuracy counts a text right only when every one of
    its labels is), else accuracy."""
    return report["micro_f1"] if report.get("multi_label") else report["accuracy"]


def roc_auc(scores: torch.Tensor, targets: torch.Tensor) -> float | None:
    """Area under the ROC curve of `scores` (higher = more positive) for binary `targets` (1 = positive):
    the Mann-Whitney U statistic with tied scores given their average rank; None with one class only."""
    y = targets.bool()
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if not n_pos or not n_neg:
        return None
    ordered, idx = scores.double().sort()
    _, inverse, counts = torch.unique_consecutive(ordered, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    average = ends - (counts.double() - 1) / 2  # the mean of ranks end - count + 1 .. end
    ranks = torch.empty_like(average[inverse])
    ranks[idx] = average[inverse]
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def best_f1_threshold(scores: torch.Tensor, targets: torch.Tensor) -> dict | None:
    """The threshold t on `scores` whose decision `score >= t` gives the positive class its best F1 on
    these examples (the highest such t on ties), with that F1, precision and recall."""
    n_pos = int(targets.sum())
    if not n_pos:
        return None
    ordered, idx = scores.double().sort(descending=True)
    y = targets[idx].double()
    tp, fp = y.cumsum(0), (1 - y).cumsum(0)
    last_of_tie = torch.ones_like(ordered, dtype=torch.bool)  # a cut can only fall between distinct scores
    last_of_tie[:-1] = ordered[:-1] != ordered[1:]
    f1 = torch.where(last_of_tie, 2 * tp / (tp + fp + n_pos), -1.0)
    i = int(f1.argmax())
    return {"threshold": float(ordered[i]), "f1": float(f1[i]), "precision": float(tp[i] / (tp[i] + fp[i])),
            "recall": float(tp[i] / n_pos)}
