"""Many labels: the confusion is counted as (true, predicted) pairs, so evaluation, reports and
pictures grow with the examples and the labels, not with the labels squared; beyond 50 labels a report
holds the sparse confusion and the picture draws the 50 most frequent labels; `plot` on a malformed
metrics.json ends in one line."""

import csv
import json
from pathlib import Path

import pytest
import torch

from lstmcli.evaluation import metrics, plots
from lstmcli.evaluation.metrics import DENSE_LABELS, merge_pairs, pair_counts, report_from_pairs
from lstmcli.reports import format_report

from .conftest import TINY, ok, one_line_error, run
from .test_plots import png_size


def dense_report(targets: torch.Tensor, preds: torch.Tensor, names: list[str]) -> dict:
    """The computation reports were made with before pair counts: a dense k x k confusion matrix."""
    k = len(names)
    confusion = torch.bincount(targets * k + preds, minlength=k * k).view(k, k)
    tp, support, predicted = confusion.diag().double(), confusion.sum(1).double(), confusion.sum(0).double()
    precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), 0.0)
    recall = torch.where(support > 0, tp / support.clamp(min=1), 0.0)
    denom = precision + recall
    f1 = torch.where(denom > 0, 2 * precision * recall / denom.clamp(min=1e-12), 0.0)
    n = int(support.sum())
    return {"n": n, "accuracy": float(tp.sum() / n) if n else 0.0, "macro_f1": float(f1.mean()),
            "per_class": {name: {"precision": float(precision[i]), "recall": float(recall[i]),
                                 "f1": float(f1[i]), "support": int(support[i])}
                          for i, name in enumerate(names)},
            "confusion": confusion.tolist(), "labels": list(names)}


def random_predictions(k: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets and predictions in 0..k-1, right about a third of the time, some labels never seen."""
    g = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, max(1, k - k // 5), (n,), generator=g)  # the last fifth never true
    preds = torch.where(torch.rand(n, generator=g) < 0.35, targets, torch.randint(0, k, (n,), generator=g))
    return targets, preds


@pytest.mark.parametrize("k", [2, 7, 60])
def test_pair_counts_give_the_dense_computation_s_numbers(k):
    names = [f"label {i}" for i in range(k)]
    for seed in range(3):
        targets, preds = random_predictions(k, 500, seed)
        expected = dense_report(targets, preds, names)
        if k > DENSE_LABELS:  # the same numbers, the confusion as its non-zero cells instead
            dense = expected.pop("confusion")
            expected["confusion_sparse"] = [[i, j, c] for i, row in enumerate(dense)
                                            for j, c in enumerate(row) if c]
        batches = [pair_counts(t, p, k) for t, p in zip(targets.split(37), preds.split(37), strict=True)]
        ranks = [merge_pairs(batches[:5]), merge_pairs(batches[5:]), merge_pairs([])]  # as torchrun merges
        whole = report_from_pairs(pair_counts(targets, preds, len(names)), names)
        assert whole == expected  # every number exactly as the dense computation
        assert metrics.report_from_pairs(merge_pairs(ranks), names) == expected
        assert ("confusion" in expected) == (k <= DENSE_LABELS)


@pytest.mark.hostile
def test_ten_thousand_labels_make_a_small_report():
    k, n = 10_000, 3_000
    names = [f"class {i}" for i in range(k)]
    targets, preds = random_predictions(k, n, seed=7)
    report = report_from_pairs(pair_counts(targets, preds, len(names)), names)
    assert "confusion" not in report
    cells = report["confusion_sparse"]
    assert sum(c for _, _, c in cells) == n == report["n"]
    assert cells == sorted(cells) and len({(i, j) for i, j, _ in cells}) == len(cells)
    assert all(0 <= i < k and 0 <= j < k and c > 0 for i, j, c in cells)
    assert len(report["per_class"]) == k
    assert sum(c["support"] for c in report["per_class"].values()) == n
    assert len(json.dumps(report)) < 2_000_000  # the dense matrix alone would be 200 MB of JSON

    table = format_report(report, "title").splitlines()
    assert len(table) < k + 10 and max(map(len, table)) < 300
    assert "confusion_sparse" in table[-1] and "10,000 labels" in table[-1]


def sparse_report(supports: list[int]) -> dict:
    """A report in the sparse form whose label i has supports[i] true examples, all predicted right but
    one of each, which goes to label 0."""
    cells = {}
    for i, s in enumerate(supports):
        for j, c in ((i, s - 1), (0, 1)):
            if s and c:
                cells[i, j] = cells.get((i, j), 0) + c
    return {"labels": [f"L{i}" for i in range(len(supports))], "accuracy": 0.5, "n": sum(supports),
            "confusion_sparse": [[i, j, c] for (i, j), c in sorted(cells.items())]}


def drawn(monkeypatch, report: dict):
    """The confusion figure plots.confusion_matrix makes of `report` (not rendered)."""
    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: figures.append(fig) or path)
    plots.confusion_matrix(report, Path("unused.png"), "run")
    return figures[0]


def test_the_picture_of_sixty_labels_draws_the_fifty_most_frequent(monkeypatch):
    supports = [5 + (i * 7) % 11 for i in range(60)]
    for i in (3, 17, 18, 40, 41, 42, 50, 51, 58, 59):
        supports[i] = 1 + i % 2  # the ten rarest labels
    report = sparse_report(supports)
    expected = [f"L{i}" for i in range(60) if supports[i] > 2]
    fig = drawn(monkeypatch, report)
    counts, shares = fig.axes[:2]
    for ax in (counts, shares):
        assert [t.get_text() for t in ax.get_xticklabels()] == expected
        assert [t.get_text() for t in ax.get_yticklabels()] == expected
    assert "50 most frequent of 60 labels" in fig._suptitle.get_text()
    assert counts.images[0].get_array().sum() == sum(s for s in supports if s > 2)  # the rows drawn

    dense = [[0] * 60 for _ in range(60)]
    for i, j, c in report.pop("confusion_sparse"):
        dense[i][j] = c
    fig = drawn(monkeypatch, {**report, "confusion": dense})  # a report written before the sparse form
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == expected


def test_which_labels_a_picture_draws():
    assert plots.most_supported([3, 0, 1]) == [0, 1, 2]
    support = [1] * 10_000
    support[9_999], support[5] = 9, 8
    chosen = plots.most_supported(support)
    assert chosen == list(range(49)) + [9_999]  # the two most frequent, then the earliest of the ties


def write_user_csv(path: Path, classes: int, rows: int) -> None:
    """A user CSV (text,label) with `rows` rows of each of `classes` labels."""
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        for r in range(rows):
            for c in range(classes):
                writer.writerow([f"about topic{c} and word{(r * 31 + c) % 97} here", f"class {c:02d}"])


@pytest.mark.hostile
def test_a_user_dataset_of_sixty_classes_trains_evaluates_and_plots(workdir):
    write_user_csv(workdir / "many.csv", classes=60, rows=3)
    ok(run("train", "--config", TINY, "--dataset", workdir / "many.csv", "--epochs", "1", "--out", "r",
           "--quiet"))
    test = json.loads(Path("r/metrics.json").read_text())["test"]
    assert "confusion" not in test and len(test["labels"]) == 60
    assert sum(c for _, _, c in test["confusion_sparse"]) == test["n"] > 0
    assert "confusion" not in json.loads(Path("r/best/metrics.json").read_text())["val"]
    png_size("r/confusion_matrix.png")

    result = ok(run("eval", "--checkpoint", "r/best", "--split", "test"))
    assert "eval-test.json" in result.stdout.splitlines()[-1] and "confusion_sparse" in result.stdout
    assert "confusion_sparse" in json.loads(Path("r/eval-test.json").read_text())
    Path("r/confusion_matrix.png").unlink()
    assert ok(run("plot", "--run", "r")).stdout.split() == ["r/learning_curves.png", "r/confusion_matrix.png"]
    png_size("r/confusion_matrix.png")


def good_metrics() -> dict:
    """A metrics.json that plot draws; each malformed case spoils one part of it."""
    return {"history": [{"epoch": 1, "train_loss": 0.7, "val_loss": 0.6, "train_accuracy": 0.5,
                         "val_accuracy": 0.6, "lr": 1e-3}], "best_epoch": 1,
            "test": {"labels": ["a", "b", "c"], "accuracy": 0.5, "n": 4,
                     "confusion": [[1, 0, 0], [1, 1, 0], [0, 0, 1]]}}


def dense_test(confusion) -> dict:
    """good_metrics' test report with another dense confusion."""
    return {**good_metrics()["test"], "confusion": confusion}


def sparse_test(cells) -> dict:
    """good_metrics' test report with a sparse confusion instead."""
    return {"labels": ["a", "b", "c"], "accuracy": 0.5, "n": 4, "confusion_sparse": cells}


MALFORMED = {
    "a list": [good_metrics()],
    "a number": 3,
    "history an object": {"history": {"epoch": 1}},
    "history entry a number": {"history": [1, 2]},
    "history entry a list": {"history": [["epoch", 1]]},
    "epoch missing": {"history": [{"train_loss": 0.5}]},
    "epoch a string": {"history": [{"epoch": "1", "train_loss": 0.5}]},
    "loss a string": {"history": [{"epoch": 1, "train_loss": "0.5"}]},
    "lr a string": {"history": [{"epoch": 1, "lr": "1e-3"}, {"epoch": 2, "lr": 1e-3}]},
    "accuracy a bool": {"history": [{"epoch": 1, "val_accuracy": True}]},
    "best epoch a string": {"history": [{"epoch": 1}], "best_epoch": "1"},
    "test a list": {"test": [1, 2]},
    "labels a string": {"test": {**good_metrics()["test"], "labels": "abc"}},
    "test accuracy a string": {"test": {**good_metrics()["test"], "accuracy": "0.5"}},
    "n a string": {"test": {**good_metrics()["test"], "n": "4"}},
    "no confusion": {"test": {"labels": ["a"], "accuracy": 1.0, "n": 1}},
    "confusion not square": {"test": dense_test([[1, 0, 0], [1, 1, 0]])},
    "confusion of other labels": {"test": dense_test([[1, 0], [0, 1]])},
    "confusion ragged": {"test": dense_test([[1, 0, 0], [1, 1], [0, 0, 1]])},
    "confusion of floats": {"test": dense_test([[1.5, 0, 0], [1, 1, 0], [0, 0, 1]])},
    "confusion of strings": {"test": dense_test([["1", 0, 0], [1, 1, 0], [0, 0, 1]])},
    "confusion negative": {"test": dense_test([[-1, 0, 0], [1, 1, 0], [0, 0, 1]])},
    "confusion a number": {"test": dense_test(7)},
    "confusion huge": {"test": dense_test([[2 ** 70, 0, 0], [1, 1, 0], [0, 0, 1]])},
    "sparse index out of range": {"test": sparse_test([[0, 0, 1], [1, 3, 2]])},
    "sparse index negative": {"test": sparse_test([[-1, 0, 1]])},
    "sparse cell short": {"test": sparse_test([[0, 0]])},
    "sparse count a string": {"test": sparse_test([[0, 0, "1"]])},
    "sparse cell an object": {"test": sparse_test([{"true": 0, "predicted": 0, "count": 1}])},
    "sparse not a list": {"test": sparse_test("0,0,1")},
}


@pytest.mark.hostile
@pytest.mark.parametrize("kind", MALFORMED)
def test_plot_on_a_malformed_metrics_json_says_so_in_one_line(workdir, kind):
    value = MALFORMED[kind]
    if isinstance(value, dict):
        value = {**good_metrics(), **value}
    Path("r").mkdir()
    path = Path("r/metrics.json")
    path.write_text(json.dumps(value, indent=1))
    before = path.read_bytes()
    one_line_error(run("plot", "--run", "r"), 2, "metrics.json")
    assert path.read_bytes() == before
    assert sorted(p.name for p in Path("r").iterdir()) == ["metrics.json"]  # nothing drawn


@pytest.mark.hostile
def test_plot_on_a_malformed_validation_report_names_best_s_metrics_json(workdir):
    Path("r/best").mkdir(parents=True)
    Path("r/metrics.json").write_text(json.dumps({"history": good_metrics()["history"]}))
    Path("r/best/metrics.json").write_text(json.dumps({"epoch": 1, "val": sparse_test([[0, 9, 1]])}))
    one_line_error(run("plot", "--run", "r"), 2, "best/metrics.json", "confusion_sparse")
