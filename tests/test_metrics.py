"""evaluation/metrics.py: accuracy, per-class precision/recall/F1, macro-F1, the confusion, ROC-AUC and
the F1-best threshold, on hand-worked cases and cross-checked against scikit-learn on random inputs."""

import pytest
import torch

from lstmcli.evaluation.metrics import best_f1_threshold, pair_counts, report_from_pairs, roc_auc

sklearn_metrics = pytest.importorskip("sklearn.metrics")  # a dev dependency


def test_roc_auc_and_the_f1_threshold_are_exact():
    scores = torch.tensor([0.9, 0.8, 0.8, 0.6, 0.4, 0.3, 0.3, 0.1])
    targets = torch.tensor([1, 1, 0, 1, 0, 1, 0, 0])
    # pairs (pos, neg) ranked right: 0.9 beats all 4 negatives, 0.8 beats 3 and ties one (1/2),
    # 0.6 beats 3, 0.3 beats 1 (0.1) and ties one (0.3) -> (4 + 3.5 + 3 + 1.5) / 16
    assert roc_auc(scores, targets) == pytest.approx(12 / 16)
    best = best_f1_threshold(scores, targets)
    # at >= 0.6: tp 3, fp 1 -> F1 6/8 = 0.75; at >= 0.3 (the ties taken together): tp 4, fp 3 -> 8/11
    assert best == pytest.approx({"threshold": 0.6, "f1": 0.75, "precision": 0.75, "recall": 0.75})
    assert roc_auc(scores, torch.zeros(8, dtype=torch.long)) is None
    assert roc_auc(torch.tensor([0.5, 0.5]), torch.tensor([0, 1])) == 0.5


def random_predictions(k: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets skewed towards the first labels (some labels then never occur) and predictions right
    about half the time."""
    g = torch.Generator().manual_seed(seed)
    targets = (torch.rand(n, generator=g) ** 2 * k).long()
    noise = torch.randint(0, k, (n,), generator=g)
    preds = torch.where(torch.rand(n, generator=g) < 0.5, targets, noise)
    return targets, preds


@pytest.mark.parametrize("k", [2, 3, 7, 60])
@pytest.mark.parametrize("seed", range(4))
def test_the_report_equals_scikit_learns(k, seed):
    targets, preds = random_predictions(k, 400, seed)
    names = [f"label {i}" for i in range(k)]
    report = report_from_pairs(pair_counts(targets, preds, k), names)
    y, p, labels = targets.numpy(), preds.numpy(), list(range(k))
    precision, recall, f1, support = sklearn_metrics.precision_recall_fscore_support(
        y, p, labels=labels, zero_division=0)
    assert report["accuracy"] == pytest.approx(sklearn_metrics.accuracy_score(y, p), rel=1e-12)
    assert report["macro_f1"] == pytest.approx(
        sklearn_metrics.f1_score(y, p, labels=labels, average="macro", zero_division=0), rel=1e-12)
    for i, name in enumerate(names):
        ours = report["per_class"][name]
        assert ours["support"] == support[i]
        assert ours["precision"] == pytest.approx(precision[i], rel=1e-12, abs=1e-15)
        assert ours["recall"] == pytest.approx(recall[i], rel=1e-12, abs=1e-15)
        assert ours["f1"] == pytest.approx(f1[i], rel=1e-12, abs=1e-15)
    dense = sklearn_metrics.confusion_matrix(y, p, labels=labels).tolist()
    if "confusion" in report:
        assert report["confusion"] == dense
    else:  # beyond DENSE_LABELS: the non-zero cells
        assert report["confusion_sparse"] == [[i, j, c] for i, row in enumerate(dense)
                                              for j, c in enumerate(row) if c]


@pytest.mark.parametrize("seed", range(6))
def test_roc_auc_equals_scikit_learns_with_and_without_ties(seed):
    g = torch.Generator().manual_seed(seed)
    n = 300
    targets = (torch.rand(n, generator=g) < 0.3 + 0.05 * seed).long()
    scores = torch.rand(n, generator=g) * 0.6 + 0.4 * targets  # informative, overlapping
    for s in (scores, (scores * 10).round() / 10):  # the second has many ties
        assert roc_auc(s, targets) == pytest.approx(sklearn_metrics.roc_auc_score(targets, s), rel=1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_the_f1_best_threshold_equals_the_best_point_of_scikit_learns_curve(seed):
    """precision_recall_curve gives precision and recall for `score >= t` at every distinct score t;
    ours is the t with the highest F1 (the highest t among equals)."""
    g = torch.Generator().manual_seed(100 + seed)
    n = 250
    targets = (torch.rand(n, generator=g) < 0.4).long()
    scores = ((torch.rand(n, generator=g) * 0.7 + 0.3 * targets) * 20).round() / 20  # ties too
    precision, recall, thresholds = sklearn_metrics.precision_recall_curve(targets, scores)
    f1 = [2 * p * r / (p + r) if p + r else 0.0 for p, r in zip(precision[:-1], recall[:-1], strict=True)]
    top = max(f1)
    best_t = max(t for t, f in zip(thresholds, f1, strict=True) if f >= top - 1e-12)
    ours = best_f1_threshold(scores, targets)
    assert ours["f1"] == pytest.approx(top, rel=1e-12)
    assert ours["threshold"] == pytest.approx(float(best_t), rel=1e-12)
    i = list(thresholds).index(best_t)
    assert ours["precision"] == pytest.approx(precision[i], rel=1e-12)
    assert ours["recall"] == pytest.approx(recall[i], rel=1e-12)
