"""Calibration: the branch weights fitted on the validation split (calibration.py), how the model applies
them, how checkpoints keep them (and old ones load without them), and train / `lstmcli calibrate`."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

import lstmcli
from lstmcli import checkpoint
from lstmcli.models.classifier import TextClassifier
from lstmcli.models.spec import ModelSpec
from lstmcli.training.calibration import fit_branch_weights

from .conftest import TINY, ok, one_line_error, run

# a validation split of 24 reviews of both labels (the tiny corpus's default 5% is 4 negative ones)
FAST = ["--dataset", "imdb", "--epochs", "2", "--max-train-examples", "0", "--max-eval-examples", "0",
        "--val-fraction", "0.3", "--lr", "0.02", "--pooling", "max", "--batch-size", "8", "--quiet"]


def two_class(logodds: torch.Tensor) -> torch.Tensor:
    """(P, N) log-odds of the second label -> (P, N, 2) logits."""
    return torch.stack([torch.zeros_like(logodds), logodds], -1)


def sampled(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two features and labels drawn from P(y = 1) = sigmoid(1.5 a + 0.5 b)."""
    gen = torch.Generator().manual_seed(seed)
    a, b = torch.randn(2, n, generator=gen, dtype=torch.float64)
    labels = (torch.rand(n, generator=gen, dtype=torch.float64) < torch.sigmoid(1.5 * a + 0.5 * b)).long()
    return torch.stack([a, b]), labels


def test_the_fitted_weights_are_the_most_probable_ones():
    features, labels = sampled(20000, seed=0)
    parts = two_class(features)
    weights = fit_branch_weights(parts, labels)
    assert weights.tolist() == pytest.approx([1.5, 0.5], abs=0.06)  # the weights the labels were drawn with
    u = weights.log().requires_grad_()  # at the optimum of log-loss + prior: no slope left
    w = u.exp()
    loss = F.cross_entropy(torch.einsum("p,pnc->nc", w, parts), labels) + ((w - 1) ** 2).sum() / (2 * 20000)
    loss.backward()
    assert u.grad.abs().max() < 1e-5  # (L-BFGS stops once the loss moves by < 1e-12: a slope near 1e-6)
    assert torch.equal(fit_branch_weights(parts, labels), weights)  # the same logits give the same weights


def test_a_separable_split_gets_finite_weights():
    """No weight is likelihood-best where every label is on the right side (the larger, the better): the
    prior stops the weights where a few more examples' worth of evidence would."""
    features, _ = sampled(24, seed=3)
    labels = (features[0] > 0).long()
    (t,) = fit_branch_weights(two_class(features[:1]), labels).tolist()
    assert 1 < t < 20
    assert torch.sigmoid(t * features[0]).max() < 1  # no probability saturates to exactly 1


def test_a_weight_never_turns_negative_and_one_branch_keeps_every_prediction():
    features, labels = sampled(4000, seed=1)
    truth = 1.5 * features[0] + 0.5 * features[1]
    reversed_ = fit_branch_weights(two_class(torch.stack([truth, -features[0]])), labels)
    assert reversed_[0] == pytest.approx(1, abs=0.1)  # the true log-odds, as they are
    assert 0 < reversed_[1] < 1e-3  # a branch that points the wrong way is dropped, not turned round
    overconfident = two_class(4 * truth[None])  # one branch: temperature scaling
    (t,) = fit_branch_weights(overconfident, labels).tolist()
    assert t == pytest.approx(0.25, abs=0.03)
    assert torch.equal((t * overconfident[0]).argmax(1), overconfident[0].argmax(1))


def test_class_weights_weigh_the_fit_as_they_weigh_training():
    features, labels = sampled(4000, seed=2)
    parts = two_class(torch.stack([features[0], features[1]]))
    plain = fit_branch_weights(parts, labels)
    heavy = fit_branch_weights(parts, labels, torch.tensor([1.0, 5.0]))
    assert not torch.allclose(plain, heavy)
    doubled = fit_branch_weights(parts, labels, torch.tensor([2.0, 2.0]))
    assert torch.allclose(doubled, plain)  # only the weights' ratios count


def test_the_model_adds_its_branches_times_their_weights():
    torch.manual_seed(0)
    model = TextClassifier(ModelSpec(vocab_size=30, num_classes=3, hidden_size=4, ngram_buckets=64,
                                     ngram_dim=3)).eval()
    ids, lengths = torch.tensor([[3, 4, 5], [6, 7, 0]]), torch.tensor([3, 2])
    parts = model(ids, lengths, parts=True)
    assert model.branch_weights.tolist() == [1.0, 1.0] and torch.equal(model(ids, lengths), parts.sum(0))
    model.branch_weights.copy_(torch.tensor([0.25, 3.0]))
    assert torch.equal(model(ids, lengths, parts=True), parts)  # the branches themselves are unweighted
    torch.testing.assert_close(model(ids, lengths), 0.25 * parts[0] + 3.0 * parts[1])
    assert TextClassifier(ModelSpec(vocab_size=30, num_classes=3)).branch_weights.tolist() == [1.0]


def test_train_calibrates_best_and_the_command_gives_the_same_to_an_uncalibrated_twin(mirror, workdir):
    """A run with the default `calibrate = true` and its twin trained with --no-calibrate learn the same
    weights; `lstmcli calibrate` on the twin's best/ then fits exactly what train fitted."""
    bag = ["--ngram-buckets", 256, "--ngram-bag", "nbsvm"]
    ok(run("train", "--config", TINY, *FAST, *bag, "--out", "cal"))
    ok(run("train", "--config", TINY, *FAST, *bag, "--no-calibrate", "--out", "twin"))
    metrics = json.loads(Path("cal/metrics.json").read_text())
    report = metrics["calibration"]
    assert report["branches"] == ["encoder", "ngram_bag"] and report["weights_before"] == [1.0, 1.0]
    assert report["split_size"] == metrics["data"]["val"] and report["weights"] != [1.0, 1.0]
    assert report["after"]["loss"] < report["before"]["loss"]
    saved = load_file("cal/best/model.safetensors")["branch_weights"]
    assert saved.tolist() == pytest.approx(report["weights"], rel=1e-6)  # float32 of the float64 fit
    assert json.loads(Path("cal/best/metrics.json").read_text())["calibration"] == report
    assert load_file("cal/last/model.safetensors")["branch_weights"].tolist() == [1.0, 1.0]  # to resume from
    assert "calibration" not in json.loads(Path("twin/metrics.json").read_text())
    assert load_file("twin/best/model.safetensors")["branch_weights"].tolist() == [1.0, 1.0]

    config = Path("twin/best/config.json").read_bytes()
    out = json.loads(ok(run("calibrate", "--checkpoint", "twin/best", "--json")).stdout)
    assert out["weights"] == report["weights"] and out["after"] == report["after"]
    assert Path("twin/best/config.json").read_bytes() == config  # only the weights and metrics change
    assert json.loads(ok(run("eval", "--checkpoint", "twin/best", "--json")).stdout)["accuracy"] == \
        metrics["test"]["accuracy"]
    table = ok(run("calibrate", "--checkpoint", "twin/best")).stdout
    assert "ngram_bag" in table and "log-loss" in table  # calibrating again: the same fit, now from it
    again = json.loads(Path("twin/best/metrics.json").read_text())["calibration"]
    assert again["weights"] == report["weights"]
    assert again["weights_before"] == pytest.approx(report["weights"])


def test_one_branch_is_temperature_scaling_predictions_stay_probabilities_change(mirror, workdir):
    ok(run("train", "--config", TINY, *FAST, "--no-calibrate", "--out", "plain"))
    text = "a great wonderful superb film"
    before = [json.loads(line) for line in ok(run("predict", "--checkpoint", "plain/best", "--json", "-",
                                                  input=f"{text}\nawful boring\nfilm\n")).stdout.splitlines()]
    report = json.loads(ok(run("calibrate", "--checkpoint", "plain/best", "--json")).stdout)
    assert report["branches"] == ["encoder"] and report["weights"][0] != 1.0
    assert report["after"]["accuracy"] == report["before"]["accuracy"]
    after = [json.loads(line) for line in ok(run("predict", "--checkpoint", "plain/best", "--json", "-",
                                                 input=f"{text}\nawful boring\nfilm\n")).stdout.splitlines()]
    assert [o["label"] for o in after] == [o["label"] for o in before]
    assert [o["probability"] for o in after] != [o["probability"] for o in before]


def test_a_checkpoint_from_before_calibration_loads_with_weights_of_one(mirror, workdir):
    ok(run("train", "--config", TINY, *FAST, "--ngram-buckets", 64, "--out", "old"))
    weights = Path("old/best/model.safetensors")
    state = load_file(weights)
    del state["branch_weights"]
    save_file(state, weights)  # as lstmcli wrote it before
    ck = checkpoint.load(Path("old/best"))
    assert ck.model.branch_weights.tolist() == [1.0, 1.0]
    assert ok(run("predict", "--checkpoint", "old/best", "film")).stdout.split("\t")[0] in ("neg", "pos")
    report = lstmcli.calibrate("old/best")  # the API the command calls
    assert load_file(weights)["branch_weights"].tolist() == pytest.approx(report["weights"], rel=1e-6)
    assert report["weights"] != [1.0, 1.0]


def test_a_validation_split_of_one_label_leaves_best_as_it_was(mirror, workdir):
    result = ok(run("train", "--config", TINY, *FAST[:-1], "--val-fraction", "0.05", "--out", "one"))
    why = "calibration needs two labels or more in the validation split; its 4 examples have 1"
    assert f"best/ is not calibrated: {why}" in result.stderr
    assert json.loads(Path("one/metrics.json").read_text())["calibration"] == {"skipped": why}
    assert load_file("one/best/model.safetensors")["branch_weights"].tolist() == [1.0]
    one_line_error(run("calibrate", "--checkpoint", "one/best"), 2, "two labels or more")


def test_calibrate_errors_are_one_line(mirror, workdir):
    one_line_error(run("calibrate", "--checkpoint", "nowhere"), 2, "no checkpoint at nowhere")
    Path("bad.toml").write_text("[train]\ncalibrate = 1\n")
    one_line_error(run("train", "--config", "bad.toml"), 2, "train.calibrate")
