"""Decision thresholds for two labels: `predict --threshold` and `eval --threshold` decide by the
second label's probability, and a model of more labels refuses one."""

import json

import pytest

import lstmcli

from .conftest import TINY, ok, one_line_error, run


def test_thresholds_in_predict_and_eval(mirror, workdir):
    ok(run("train", "--config", TINY, "--out", "r", "--quiet"))
    clf = lstmcli.load("r/best")
    texts = ["a great wonderful superb film", "awful boring dull", "a film"]
    p_pos = clf.probabilities(texts)[:, 1]
    assert [r[0][0] for r in clf.predict(texts, threshold=0.0)] == ["pos"] * 3
    assert [r[0][0] for r in clf.predict(texts, threshold=1.0)] == ["pos" if p >= 1 else "neg" for p in p_pos]
    middle = float(p_pos.sort().values[1])  # the second-lowest probability: texts at or above it are pos
    decided = clf.predict(texts, top_k=2, threshold=middle)
    assert [r[0][0] for r in decided] == ["pos" if p >= middle else "neg" for p in p_pos]
    assert all(dict(r)["pos"] == pytest.approx(float(p)) for r, p in zip(decided, p_pos, strict=True))
    out = ok(run("predict", "--checkpoint", "r/best", "--threshold", middle, "--json", *texts)).stdout
    assert [json.loads(line)["label"] for line in out.splitlines()] == [r[0][0] for r in decided]

    # (the tiny corpus's validation split has 4 reviews, all negative: its test split stands in for it)
    first = json.loads(ok(run("eval", "--checkpoint", "r/best", "--json")).stdout)
    assert first["positive_label"] == "pos" and first["threshold"] is None and 0.5 <= first["roc_auc"] <= 1
    best = first["best_threshold"]
    again = json.loads(ok(run("eval", "--checkpoint", "r/best", "--threshold", best["threshold"],
                              "--json")).stdout)
    assert again["threshold"] == best["threshold"]
    assert again["per_class"]["pos"]["f1"] == pytest.approx(best["f1"])  # what eval promised
    assert again["per_class"]["pos"]["recall"] == pytest.approx(best["recall"])
    val = json.loads(ok(run("eval", "--checkpoint", "r/best", "--split", "val", "--json")).stdout)
    assert val["roc_auc"] is None and val["best_threshold"] is None  # one class only: undefined, not 0
    one_line_error(run("predict", "--checkpoint", "r/best", "--threshold", 1.5, "x"), 2, "[0, 1]")


def test_a_threshold_needs_two_labels(mirror, workdir):
    ok(run("train", "--config", TINY, "--dataset", "ag_news", "--out", "ag", "--quiet"))
    one_line_error(run("predict", "--checkpoint", "ag/best", "--threshold", 0.3, "x"), 2, "two labels",
                   "has 4")
    one_line_error(run("eval", "--checkpoint", "ag/best", "--threshold", 0.3), 2, "two labels")
    report = json.loads(ok(run("eval", "--checkpoint", "ag/best", "--json")).stdout)
    assert "roc_auc" not in report
