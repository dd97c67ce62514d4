"""Real data from ../shared/datasets: small but honest runs (a few thousand rows, one epoch).

The longer run (all of IMDB) is marked `slow` and only runs on demand: `pytest -m slow`.
"""

import json
import os
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from lstmcli.cli import app

from .conftest import SHARED_DATASETS, needs_native_bf16

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


@needs_native_bf16
def test_a_bf16_checkpoint_answers_the_same_in_fp32(real_mirror):
    """What eval/predict do with a bf16-trained checkpoint on a CPU without native bf16: run it in fp32.
    On 500 real test reviews the probabilities stay within bfloat16's epsilon (2^-7) of the bf16 run's,
    and the labels agree wherever the fp32 probability is farther than that from the 0.5 boundary."""
    run_dir, _ = train("--dataset", "imdb", "--max-train-examples", 2000, "--max-eval-examples", 500,
                       "--max-length", 200, *SMALL, "--precision", "bf16", "--out", "b16")
    root = Path("data/aclImdb/test")
    reviews = [(root / label / name).read_text(encoding="utf-8") for label in ("neg", "pos")
               for name in sorted(os.listdir(root / label))[:250]]
    assert not any("\n" in r for r in reviews)
    runs = {}
    for precision in ("bf16", "fp32"):
        out = CliRunner().invoke(app, ["predict", "--checkpoint", run_dir / "best", "--precision", precision,
                                       "--json", "--top-k", "2", "-"], input="\n".join(reviews) + "\n")
        assert out.exit_code == 0 and out.stderr == "", out.output
        runs[precision] = [{t["label"]: t["probability"] for t in json.loads(line)["top_k"]}
                           for line in out.stdout.splitlines()]
    assert len(runs["fp32"]) == len(reviews) == 500
    eps = torch.finfo(torch.bfloat16).eps
    for a, b in zip(runs["bf16"], runs["fp32"], strict=True):
        assert abs(a["pos"] - b["pos"]) <= eps, (a, b)
        if abs(b["pos"] - 0.5) > eps:
            assert (a["pos"] > 0.5) == (b["pos"] > 0.5), (a, b)


@pytest.mark.slow
def test_imdb_full_small_config(real_mirror):
    """The README's main job: configs/imdb_small.toml (a few minutes)."""
    config = Path(__file__).parents[1] / "configs" / "imdb_small.toml"
    _, metrics = train("--config", config, "--quiet", "--out", "small")
    assert metrics["test"]["accuracy"] > 0.75
