"""training/class_weights.py and the weighted loss: the weights' syntax and values, the loss as the
weighted mean, and data-parallel shares that average to the global weighted mean."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import lstmcli
from lstmcli.data.batches import Truncation
from lstmcli.errors import LstmcliError
from lstmcli.inference.torch_model import as_split as _as_split
from lstmcli.runtime.distributed import SINGLE, Dist
from lstmcli.training.class_weights import resolve as resolve_weights
from lstmcli.training.fit import _step_loss

from .conftest import TINY, ok, one_line_error, run


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
    loss, totals = _step_loss(model.ck.model, split, rows, Truncation(), torch.device("cpu"), SINGLE, weight)
    from lstmcli.data.batches import collate
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
        loss, _ = _step_loss(model, split, rows, Truncation(), torch.device("cpu"), dist, weight)
        loss.backward()
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    for rows, world in ((torch.arange(5), 2), (torch.arange(5), 3), (torch.tensor([2]), 2)):
        single = grads(rows, SINGLE)
        ranks = [grads(rows, Dist(r, world, r, world, "gloo")) for r in range(world)]
        for k, g in enumerate(single):
            averaged = sum(rank[k] for rank in ranks) / world
            assert torch.allclose(averaged, g, rtol=1e-5, atol=1e-7), (rows, world, k)
