"""Real data from ../shared/datasets: small but honest runs (a few thousand rows, one epoch).

The longer run (all of IMDB) is marked `slow` and only runs on demand: `pytest -m slow`.
"""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lstmcli.cli import app

from .conftest import SHARED_DATASETS

pytestmark = pytest.mark.skipif(not (SHARED_DATASETS / "SHA256SUMS").is_file(),
                                reason=f"no local mirror at {SHARED_DATASETS}")
SMALL = ["--embedding-dim", "64", "--hidden-size", "64", "--bidirectional", "--pooling", "max",
         "--batch-size", "32", "--lr", "0.003", "--epochs", "1", "--quiet"]


@pytest.fixture
def real_mirror(workdir, monkeypatch):
    monkeypatch.setenv("LSTMCLI_MIRROR", str(SHARED_DATASETS))


def train(*args):
    result = CliRunner().invoke(app, ["train", *map(str, args)])
    assert result.exit_code == 0, result.output + str(result.exception or "")
    run_dir = Path(result.stdout.strip())
    return run_dir, json.loads((run_dir / "metrics.json").read_text())


def test_imdb_one_epoch_beats_chance(real_mirror):
    run_dir, metrics = train("--dataset", "imdb", "--max-train-examples", 3000, "--max-eval-examples", 1000,
                             "--max-length", 200, *SMALL, "--out", "imdb")
    assert metrics["data"]["train"] == 3000 and metrics["test"]["n"] == 1000
    assert metrics["test"]["accuracy"] > 0.65, metrics["test"]
    out = CliRunner().invoke(app, ["predict", "--checkpoint", run_dir / "best", "--json",
                                   "An absolute masterpiece, wonderful acting and a great story."])
    assert json.loads(out.stdout)["label"] in ("neg", "pos")


def test_ag_news_real_text_via_user_file(real_mirror):
    """The AG_NEWS test file (real text) trained on as a user CSV, split with a seed."""
    path = SHARED_DATASETS / "ag_news_csv" / "test.csv"
    _, metrics = train("--dataset", path, "--text-column", "1,2", "--label-column", "0",
                       "--test-fraction", 0.2, "--max-length", 60, *SMALL, "--out", "ag")
    assert metrics["data"]["labels"] == ["1", "2", "3", "4"]
    assert metrics["data"]["test"] == 1520
    assert metrics["test"]["accuracy"] > 0.6, metrics["test"]  # chance is 0.25


def test_ag_news_train_file_is_not_in_the_mirror(real_mirror):
    result = CliRunner().invoke(app, ["train", "--dataset", "ag_news"])
    assert result.exit_code == 2
    assert "ag_news_csv/train.csv" in result.stderr and "LSTMCLI_MIRROR" in result.stderr


@pytest.mark.slow
def test_imdb_full_small_config(real_mirror):
    """The README's main job: configs/imdb_small.toml (a few minutes)."""
    config = Path(__file__).parents[1] / "configs" / "imdb_small.toml"
    _, metrics = train("--config", config, "--quiet", "--out", "small")
    assert metrics["test"]["accuracy"] > 0.75
