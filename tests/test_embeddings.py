"""Pretrained vectors: coverage, exact rows, freezing, and bad files."""

import json
from pathlib import Path

import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from lstmcli.cli import app
from lstmcli.data.embeddings import load_vectors
from lstmcli.data.text import Vocab

from .conftest import TINY

WORDS = ["great", "wonderful", "awful", "boring", "film", "notinthecorpus"]


def vectors_file(path: Path, dim: int, header: bool = False) -> dict:
    g = torch.Generator().manual_seed(0)
    vecs = {w: torch.randn(dim, generator=g) for w in WORDS}
    lines = [f"{len(vecs)} {dim}\n"] if header else []
    lines += [w + " " + " ".join(f"{v:.6f}" for v in vec.tolist()) + "\n" for w, vec in vecs.items()]
    path.write_text("".join(lines))
    return {w: torch.tensor([float(f"{v:.6f}") for v in vec.tolist()]) for w, vec in vecs.items()}


def test_load_vectors_glove_and_word2vec(tmp_path):
    vocab = Vocab.build([["great", "film", "plot"]])
    for header in (False, True):
        vecs = vectors_file(tmp_path / "v.txt", 4, header)
        ids, rows, lines = load_vectors(tmp_path / "v.txt", vocab, 4)
        assert lines == 6 and sorted(ids.tolist()) == sorted([vocab.stoi["great"], vocab.stoi["film"]])
        assert torch.equal(rows[ids.tolist().index(vocab.stoi["great"])], vecs["great"])


def test_train_with_frozen_and_trainable_vectors(mirror, workdir, tmp_path):
    vecs = vectors_file(tmp_path / "glove.txt", 32)
    runner = CliRunner()
    for freeze in (True, False):
        out = f"run-{freeze}"
        args = ["train", "--config", str(TINY), "--dataset", "imdb",
                "--embeddings", str(tmp_path / "glove.txt"),
                "--quiet", "--out", out] + (["--freeze-embeddings"] if freeze else [])
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        metrics = json.loads(Path(out, "metrics.json").read_text())
        vocab = json.loads(Path(out, "best", "vocab.json").read_text())["itos"]
        e = metrics["embeddings"]
        assert e["found"] == 5 and e["vectors_read"] == 6 and e["vocab"] == len(vocab) - 2
        weight = load_file(str(Path(out, "best", "model.safetensors")))["embedding.weight"]
        row = weight[vocab.index("great")]
        assert torch.equal(row, vecs["great"]) == freeze
        assert torch.equal(weight[0], torch.zeros(32))  # padding stays zero


def test_bad_vector_files_are_one_line(mirror, workdir, tmp_path):
    vectors_file(tmp_path / "v.txt", 8)
    result = CliRunner().invoke(app, ["train", "--config", str(TINY), "--dataset", "imdb", "--quiet",
                                      "--embeddings", str(tmp_path / "v.txt")])
    assert result.exit_code == 2 and "line 1: 8 numbers, but --embedding-dim is 32" in result.stderr
    result = CliRunner().invoke(app, ["train", "--config", str(TINY), "--dataset", "imdb", "--quiet",
                                      "--embeddings", str(tmp_path / "none.txt")])
    assert result.exit_code == 2 and "embeddings file not found" in result.stderr
    assert not Path("runs").exists()  # nothing was started
