"""The Python API (what the CLI calls), binary thresholds and ROC-AUC, and class weights in the loss."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import lstmcli
from lstmcli.batching import Cut
from lstmcli.class_weights import resolve as resolve_weights
from lstmcli.distributed import SINGLE, Dist
from lstmcli.errors import ConfigError, LstmcliError
from lstmcli.metrics import best_f1_threshold, roc_auc
from lstmcli.predict import _as_split
from lstmcli.training import _step_loss

from .conftest import TINY, ok, one_line_error, run


def test_the_api_trains_evaluates_and_predicts_as_the_cli_does(mirror, workdir):
    run_dir = lstmcli.train(TINY, epochs=2, out="api_run", bidirectional=True)
    assert run_dir == Path("api_run")
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["train"]["epochs"] == 2 and saved["model"]["bidirectional"] is True
    assert lstmcli.train({"data": {"max_train_examples": 50}, "train": {"epochs": 1}}, out="dict_run",
                         vocab_max_size=500).name == "dict_run"
    assert json.loads(Path("dict_run/metrics.json").read_text())["data"]["train"] == 50

    report = lstmcli.evaluate(run_dir / "best", split="val")
    cli = json.loads(ok(run("eval", "--checkpoint", run_dir / "best", "--split", "val", "--json")).stdout)
    report.pop("device"), cli.pop("device")
    assert report == cli
    assert Path(report["files"]["json"]).is_file() and Path(report["files"]["confusion_png"]).is_file()

    clf = lstmcli.load(run_dir / "best")
    texts = ["a great wonderful superb film", "awful boring dull", ""]
    ranked = clf.predict(texts, top_k=2)
    lines = ok(run("predict", "--checkpoint", run_dir / "best", "--top-k", "2", *texts)).stdout.splitlines()
    assert [f"{a}\t{p:.4f}\t{b}\t{q:.4f}" for (a, p), (b, q) in ranked] == lines
    assert clf.labels == ["neg", "pos"]
    assert clf.encode("") == [1] and clf.encode("great film")[0] == clf.ck.vocab.encode(["great"])[0]
    assert torch.allclose(clf.probabilities(texts).sum(1), torch.ones(3))

    with pytest.raises(ConfigError, match="'train.epochs'"):
        lstmcli.train(TINY, epochs=0)
    with pytest.raises(LstmcliError, match="no checkpoint"):
        lstmcli.load("nowhere")


def test_import_lstmcli_stays_light():
    code = ("import sys, lstmcli; "
            "print('torch' in sys.modules, callable(lstmcli.load), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "True", "True"]  # torch comes with the first use


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


def test_class_weight_values_and_errors(mirror, workdir):
    assert resolve_weights("none", ["a", "b"], [90, 10]) is None
    assert resolve_weights("balanced", ["a", "b"], [90, 10]) == pytest.approx([100 / 180, 100 / 20])
    assert resolve_weights("b:4", ["a", "b"], [90, 10]) == [1.0, 4.0]
    with pytest.raises(LstmcliError, match="'c'.*its labels: a, b"):
        resolve_weights("c:2", ["a", "b"], [1, 1])
    for bad, why in (("pos", "expected 'none'"), ("pos:x", "not a number"), ("pos:-1", ">= 0"),
                     ("pos:0", "above 0")):
        one_line_error(run("train", "--config", TINY, "--class-weights", bad), 2, "'train.class_weights'",
                       why)
    one_line_error(run("train", "--config", TINY, "--class-weights", "good:2", "--out", "w", "-q"), 2,
                   "'good'", "its labels: neg, pos")
    assert not Path("w").exists()  # refused before the run folder is made
    ok(run("train", "--config", TINY, "--class-weights", "balanced", "--out", "w", "--quiet"))
    metrics = json.loads(Path("w/metrics.json").read_text())
    assert metrics["class_weights"] == {"neg": 76 / (2 * 36), "pos": 76 / (2 * 40)}  # 36 neg, 40 pos


def test_the_weighted_loss_is_the_weighted_mean(mirror, workdir):
    torch.manual_seed(0)
    ok(run("train", "--config", TINY, "--out", "r", "--quiet"))
    model = lstmcli.load("r/best")
    split = _as_split([[5, 6, 7], [8, 9], [10], [11, 12, 13, 14]])
    split.labels[:] = torch.tensor([0, 1, 1, 1])
    weight = torch.tensor([3.0, 0.5])
    rows = torch.arange(4)
    loss, totals = _step_loss(model.ck.model, split, rows, Cut(), torch.device("cpu"), SINGLE, weight)
    from lstmcli.batching import collate
    batch = collate(split, rows)
    logits = model.ck.model(batch.ids, batch.lengths)
    per = F.cross_entropy(logits, batch.labels, reduction="none").detach()
    expected = (per * weight[batch.labels]).sum() / weight[batch.labels].sum()
    assert loss.item() == pytest.approx(expected.item())
    assert totals[0] == pytest.approx(per.sum().item())  # reported: the unweighted loss, as validation's


@pytest.mark.parametrize("weight", [None, torch.tensor([3.0, 0.5])], ids=["unweighted", "weighted"])
def test_data_parallel_shares_average_to_the_global_weighted_mean(mirror, workdir, weight):
    """What DDP does with the ranks' losses (the mean of their gradients) equals the gradient of the
    single process's (weighted) mean over the global batch, for uneven shares and one empty share."""
    ok(run("train", "--config", TINY, "--out", "r", "--quiet"))
    model = lstmcli.load("r/best").ck.model
    split = _as_split([[5, 6, 7], [8, 9], [10], [11, 12, 13, 14], [4, 4]])
    split.labels[:] = torch.tensor([0, 1, 1, 0, 1])

    def grads(rows: torch.Tensor, dist) -> list[torch.Tensor]:
        model.zero_grad()
        loss, _ = _step_loss(model, split, rows, Cut(), torch.device("cpu"), dist, weight)
        loss.backward()
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    for rows, world in ((torch.arange(5), 2), (torch.arange(5), 3), (torch.tensor([2]), 2)):
        single = grads(rows, SINGLE)
        ranks = [grads(rows, Dist(r, world, r, world, "gloo")) for r in range(world)]
        for k, g in enumerate(single):
            averaged = sum(rank[k] for rank in ranks) / world
            assert torch.allclose(averaged, g, rtol=1e-5, atol=1e-7), (rows, world, k)
