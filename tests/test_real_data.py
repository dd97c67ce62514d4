"""Real data from ../shared/datasets: small but honest runs (a few thousand rows, one epoch).

The longer run (all of IMDB) is marked `slow` and only runs on demand: `pytest -m slow`.
"""

import csv
import json
import os
import tarfile
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


def test_imdb_one_epoch_beats_chance_and_an_nbsvm_bag_lifts_it(real_mirror):
    """A 1-epoch BiLSTM on 3,000 real reviews, then the same run with an NBSVM bag beside it: more accurate,
    and both ONNX exports (the bag's repeats dropped inside the graph) give lstmcli's logits."""
    common = ["--dataset", "imdb", "--max-train-examples", 3000, "--max-eval-examples", 1000,
              "--max-length", 200, *SMALL]
    run_dir, metrics = train(*common, "--out", "imdb")
    assert metrics["data"]["train"] == 3000 and metrics["test"]["n"] == 1000
    assert metrics["test"]["accuracy"] > 0.65, metrics["test"]
    out = CliRunner().invoke(app, ["predict", "--checkpoint", run_dir / "best", "--json",
                                   "An absolute masterpiece, wonderful acting and a great story."])
    assert json.loads(out.stdout)["label"] in ("neg", "pos")
    onnx_gives_the_same_logits(run_dir / "best")
    nb_dir, nb = train(*common, "--ngram-buckets", 2**18, "--ngram-bag", "nbsvm", "--out", "nb")
    # seen on a 2-core AVX2 EPYC: 70.7% -> 82.0% on the 1,000 test reviews
    assert nb["test"]["accuracy"] >= metrics["test"]["accuracy"] + 0.05, (metrics["test"], nb["test"])
    onnx_gives_the_same_logits(nb_dir / "best")


def onnx_gives_the_same_logits(checkpoint: Path) -> None:
    """The exported model in onnxruntime and lstmcli agree within 1e-4 on 400 real test reviews of every
    length (cut at the model's 200 tokens) and on texts of one token, in batches of mixed lengths."""
    import numpy as np
    ort = pytest.importorskip("onnxruntime")
    import lstmcli

    model = f"{checkpoint.parent.name}.onnx"  # one file per run: export refuses to replace a file
    out = CliRunner().invoke(app, ["export", "-c", str(checkpoint), "--out", model])
    assert out.exit_code == 0, out.output
    root = Path("data/aclImdb/test")
    texts = [(root / label / name).read_text(encoding="utf-8") for label in ("neg", "pos")
             for name in sorted(os.listdir(root / label))[:200]] + ["", "Great.", "dull", "ok"]
    clf = lstmcli.load(checkpoint, precision="fp32")
    encoded = [clf.encode(t) for t in texts]
    lengths = sorted({len(e) for e in encoded})
    assert lengths[0] == 1 and lengths[-1] == 200 and len(lengths) > 100
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    for start in range(0, len(texts), 64):  # in input order: each batch mixes lengths
        batch = encoded[start:start + 64]
        width = max(map(len, batch))
        ids = torch.tensor([e + [0] * (width - len(e)) for e in batch])
        lens = torch.tensor([len(e) for e in batch])
        with torch.no_grad():
            expected = clf.ck.model(ids, lens).numpy()
        got = sess.run(["logits"], {"ids": ids.numpy(), "lengths": lens.numpy()})[0]
        assert np.abs(got - expected).max() <= 1e-4, np.abs(got - expected).max()


def test_balanced_class_weights_raise_the_minority_recall(real_mirror):
    """A 90/10 sample of real IMDB training reviews (2,700 negative, 300 positive), one epoch each way:
    `class_weights = "balanced"` finds more of the rare positives on the (equally skewed) test split."""
    per_label = {"neg": 2700, "pos": 300}
    rows = []
    with tarfile.open(SHARED_DATASETS / "aclImdb_v1.tar.gz") as tar:
        for member in tar:
            parts = member.name.split("/")
            if len(parts) == 4 and parts[1] == "train" and parts[2] in per_label and per_label[parts[2]]:
                per_label[parts[2]] -= 1
                rows.append((parts[2], tar.extractfile(member).read().decode("utf-8")))
            if not any(per_label.values()):
                break
    with open("skewed.csv", "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([("label", "text"), *rows])
    recall = {}
    for weights in ("none", "balanced"):
        _, metrics = train("--dataset", "skewed.csv", "--test-fraction", 0.2, "--max-length", 200, *SMALL,
                           "--class-weights", weights, "--out", weights)
        assert metrics["test"]["per_class"]["pos"]["support"] == pytest.approx(60, abs=15)
        recall[weights] = metrics["test"]["per_class"]["pos"]["recall"]
    weights = metrics["class_weights"]  # n / (2 x count): about 1/1.8 and 5
    assert weights == {"neg": pytest.approx(1 / 1.8, rel=0.05), "pos": pytest.approx(5, rel=0.05)}
    assert recall["balanced"] >= recall["none"] + 0.2, recall


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
        # nothing on stderr but the closing line of a bar, which a slow (busy) machine logs
        said = [line for line in out.stderr.splitlines() if not line.startswith("predicting: 500 texts in ")]
        assert out.exit_code == 0 and not said, out.output
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
    """The README's main job: lstmcli/configs/imdb_small.toml (a few minutes)."""
    config = Path(__file__).parents[1] / "configs" / "imdb_small.toml"
    _, metrics = train("--config", config, "--quiet", "--out", "small")
    assert metrics["test"]["accuracy"] > 0.75
