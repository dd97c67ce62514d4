"""training/fit.py: early stopping, and a non-finite loss that stops training with last/ intact."""

import json
from pathlib import Path

from .conftest import TINY, run
from .conftest import one_line_error as one_line


def test_early_stopping_and_non_finite_loss(mirror, workdir, monkeypatch):
    result = run("train", "--config", TINY, "--dataset", "imdb", "--epochs", "6", "--lr", "0",
                 "--patience", "2",
                 "--quiet", "--out", "es")
    assert result.exit_code == 0
    metrics = json.loads(Path("es/metrics.json").read_text())
    assert len(metrics["history"]) == 3 and metrics["stopped_early"] == {"epoch": 3, "patience": 2}

    import lstmcli.training.fit as training
    real, calls = training.classification_loss, {"n": 0}

    def nan_on_call_5(*args, **kwargs):
        loss = real(*args, **kwargs)
        if kwargs.get("reduction") is None:  # the loss trained on, not the one reported
            calls["n"] += 1
            if calls["n"] == 5:
                return loss * float("nan")
        return loss
    monkeypatch.setattr(training, "classification_loss", nan_on_call_5)
    result = run("train", "--config", TINY, "--dataset", "imdb", "--epochs", "3", "--quiet", "--out", "nan")
    one_line(result, 1, "non-finite loss nan in epoch 2 at step 2")  # 3 batches of 32 per epoch
    last = json.loads(Path("nan/last/metrics.json").read_text())
    assert last["epoch"] == 1  # the last good checkpoint stays
