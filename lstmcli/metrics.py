"""Classification metrics from predictions: accuracy, macro-F1, per-class P/R/F1, confusion matrix."""

from __future__ import annotations

import torch

from .errors import LstmcliError


def confusion_matrix(targets: torch.Tensor, preds: torch.Tensor, k: int) -> torch.Tensor:
    """(k, k) int64: [i][j] counts examples of class i predicted as j."""
    return torch.bincount(targets * k + preds, minlength=k * k).view(k, k)


def classification_report(targets: torch.Tensor, preds: torch.Tensor, label_names: list[str],
                          loss: float | None = None) -> dict:
    """All metrics as a JSON-ready dict. confusion[i][j] counts examples of class i predicted as j."""
    return report_from_confusion(confusion_matrix(targets, preds, len(label_names)), label_names, loss)


def report_from_confusion(confusion: torch.Tensor, label_names: list[str], loss: float | None = None) -> dict:
    """classification_report's dict from a confusion matrix (e.g. one summed over data-parallel ranks)."""
    tp = confusion.diag().double()
    support = confusion.sum(1).double()
    predicted = confusion.sum(0).double()
    precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), 0.0)
    recall = torch.where(support > 0, tp / support.clamp(min=1), 0.0)
    denom = precision + recall
    f1 = torch.where(denom > 0, 2 * precision * recall / denom.clamp(min=1e-12), 0.0)
    n = int(support.sum())
    report = {
        "n": n,
        "accuracy": float(tp.sum() / n) if n else 0.0,
        "macro_f1": float(f1.mean()),
        "per_class": {
            name: {"precision": float(precision[i]), "recall": float(recall[i]),
                   "f1": float(f1[i]), "support": int(support[i])}
            for i, name in enumerate(label_names)
        },
        "confusion": confusion.tolist(),
        "labels": list(label_names),
    }
    if loss is not None:
        report["loss"] = loss
    return report


def format_report(report: dict, title: str = "") -> str:
    """A readable table of a classification_report."""
    names = report["labels"]
    width = max(8, *(len(n) for n in names))
    lines = [title] if title else []
    loss = f"  loss {report['loss']:.4f}" if "loss" in report else ""
    lines.append(f"accuracy {report['accuracy']:.4f}  macro-F1 {report['macro_f1']:.4f}{loss}  "
                 f"(n={report['n']})")
    if report.get("threshold") is not None:
        lines.append(f"decided at threshold {report['threshold']:.4f} on p({report['positive_label']})")
    if report.get("roc_auc") is not None:
        best = report["best_threshold"]
        lines.append(f"ROC-AUC {report['roc_auc']:.4f}  best F1 of {report['positive_label']} "
                     f"{best['f1']:.4f} at threshold {best['threshold']:.4f} (precision "
                     f"{best['precision']:.4f}, recall {best['recall']:.4f})")
    lines.append("")
    lines.append(f"{'class':<{width}}  precision  recall      f1  support")
    for name in names:
        c = report["per_class"][name]
        lines.append(f"{name:<{width}}  {c['precision']:9.4f}  {c['recall']:6.4f}  {c['f1']:6.4f}  "
                     f"{c['support']:7d}")
    lines.append("")
    lines.append("confusion (rows: true, columns: predicted)")
    cell = max(7, *(len(str(v)) for row in report["confusion"] for v in row))
    lines.append(" " * width + "  " + " ".join(f"{n[:cell]:>{cell}}" for n in names))
    for name, row in zip(names, report["confusion"], strict=True):
        lines.append(f"{name:<{width}}  " + " ".join(f"{v:>{cell}}" for v in row))
    return "\n".join(lines)


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


def check_threshold(threshold: float, labels: list[str]) -> None:
    """A decision threshold needs a model of two labels and a probability in [0, 1]."""
    if len(labels) != 2:
        raise LstmcliError(f"--threshold decides between two labels; this model has {len(labels)}")
    if not 0.0 <= threshold <= 1.0:
        raise LstmcliError(f"--threshold must be a probability in [0, 1], got {threshold}")
