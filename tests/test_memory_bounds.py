"""Bounded memory: texts are cut by default (and the cut is said), and a model or batch too large for
the memory available is refused before anything is allocated, with the estimate in the message."""

import io
import json
import tarfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lstmcli.config import Config, from_dict
from lstmcli.models.classifier import TextClassifier
from lstmcli.models.spec import ModelSpec
from lstmcli.runtime import memory
from lstmcli.runtime.plan import choose, model_spec

from .conftest import TINY, ok, run, write_sums
from .conftest import one_line_error as one_line

TRAIN = ("train", "--config", TINY, "--dataset", "imdb", "--quiet")


@pytest.mark.parametrize("cell,impl,peephole,bidirectional,layers,bag", [
    ("lstm", "builtin", False, True, 2, ""), ("gru", "scratch", False, False, 3, "fasttext"),
    ("rnn", "builtin", False, True, 1, "nbsvm"), ("lstm", "scratch", True, True, 2, "nbsvm"),
])
def test_the_parameter_count_is_the_built_models(cell, impl, peephole, bidirectional, layers, bag):
    spec = ModelSpec(vocab_size=97, num_classes=5, cell=cell, impl=impl, peephole=peephole,
                     embedding_dim=7, hidden_size=6, num_layers=layers, bidirectional=bidirectional,
                     ngram_buckets=13 if bag else 0, ngram_bag=bag or "fasttext", ngram_dim=4)
    model = TextClassifier(spec)
    persistent = model.state_dict()
    buffers = sum(b.numel() for name, b in model.named_buffers() if name in persistent)
    assert spec.parameter_count() == (sum(p.numel() for p in model.parameters()), buffers)


@pytest.fixture
def eight_gb(monkeypatch):
    """This machine, as far as lstmcli can tell, has 8 GB available: the refusals below then hold on any
    machine the suite runs on."""
    monkeypatch.setattr(memory, "available_bytes", lambda device: 8 * 10**9)


@pytest.mark.hostile
@pytest.mark.parametrize("flag,value", [("--hidden-size", "57000"), ("--ngram-buckets", "3000000000"),
                                        ("--embedding-dim", "10000000"), ("--max-length", "0")])
def test_a_run_too_large_for_the_memory_is_refused_before_it_is_built(mirror, workdir, eight_gb, flag, value):
    if flag == "--max-length":  # no cut, and one text of a million tokens in the data
        archive = mirror / "aclImdb_v1.tar.gz"
        tar_with_a_huge_review(archive)
        write_sums(mirror, ["aclImdb_v1.tar.gz"])
    result = run(*TRAIN, flag, value, "--out", "r")
    one_line(result, 2, "this needs about", "GB of memory", "8.0 GB is available", "--skip-memory-check")
    assert not Path("r").exists()


def tar_with_a_huge_review(archive: Path) -> None:
    """Add one training review of a million tokens to the mirror's aclImdb tarball."""
    with tarfile.open(archive) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers() if m.isfile()]
    with tarfile.open(archive, "w:gz") as tar:
        for member, data in members:
            tar.addfile(member, io.BytesIO(data))
        huge = ("great " * 1_000_000).encode()
        info = tarfile.TarInfo("aclImdb/train/pos/999_9.txt")
        info.size = len(huge)
        tar.addfile(info, io.BytesIO(huge))


def test_a_batch_size_beyond_the_data_is_no_reason_to_refuse(mirror, workdir, eight_gb):
    ok(run(*TRAIN, "--batch-size", "10000000", "--out", "r"))


@pytest.mark.hostile
def test_the_check_can_be_skipped_and_passes_an_ordinary_run(mirror, workdir, monkeypatch):
    real, room = memory.available_bytes, {"bytes": 1000}  # a machine with 1 KB free
    monkeypatch.setattr(memory, "available_bytes", lambda device: room["bytes"] or real(device))
    one_line(run(*TRAIN, "--out", "r"), 2, "this needs about")
    ok(run(*TRAIN, "--out", "r", "--skip-memory-check"))
    room["bytes"] = None
    ok(run(*TRAIN, "--out", "s"))  # this machine's real memory holds the tiny run


def test_the_estimate_holds_what_a_tiny_run_allocates(mirror, workdir):
    """The estimate is above the bytes of the model's own tensors (weights, gradients, Adam's moments)."""
    ok(run(*TRAIN, "--out", "r"))
    cfg_dict = json.loads(Path("r/config.json").read_text())
    cfg_dict.pop("launch")
    cfg = from_dict(cfg_dict, "config.json")
    state = torch.load("r/last/trainer_state.pt", weights_only=True)
    weights = sum(t.numel() * t.element_size() for t in load_file("r/last/model.safetensors").values())
    moments = sum(t.numel() * t.element_size() for s in state["optimizer"]["state"].values()
                  for t in s.values() if t.dim())
    vocab = len(json.loads(Path("r/last/vocab.json").read_text())["itos"])
    spec = model_spec(cfg.model, vocab, 2, choose(cfg.model, torch.device("cpu")))
    est = memory.estimate(cfg, spec, 64, 4)
    assert est.state >= 2 * weights + moments - 8  # weights, gradients, moments
    assert est.activations > 0 and est.length == 64


@pytest.mark.hostile
def test_bench_refuses_a_shape_too_large(workdir, eight_gb):
    one_line(run("bench", "--hidden-size", "57000", "--cell", "lstm"), 2, "this needs about",
             "--skip-memory-check")
    one_line(run("bench", "--batches", "100000000", "--cell", "rnn"), 2, "this needs about")
    assert not Path("bench.json").exists()


@pytest.mark.hostile
def test_bench_threads_are_bounded(workdir):
    result = run("bench", "--threads", "100000")
    assert result.exit_code == 2 and "1024" in result.output and "Traceback" not in result.output


@pytest.mark.hostile
def test_one_huge_text_is_cut_by_default_and_the_cut_is_said(workdir, tmp_path):
    path = tmp_path / "huge.jsonl"
    rows = [{"text": f"a fine short text number {i}", "label": "pos" if i % 2 else "neg"} for i in range(40)]
    rows[3]["text"] = "word " * 1_000_000  # one 5 MB line
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert Config().data.max_length == 2048
    result = run("train", "--dataset", path, "--embedding-dim", "8", "--hidden-size", "8", "--epochs", "1",
                 "--batch-size", "8", "--val-fraction", "0.25", "--out", "r")  # the default max_length
    ok(result)
    assert "max_length 2048: 1 of 40 texts are longer and are cut (the longest has 1,000,000 tokens)" \
        in result.stderr


@pytest.mark.hostile
def test_eval_of_a_checkpoint_trained_uncut_cuts_a_huge_text(workdir, tmp_path):
    """A checkpoint trained with max_length 0 is evaluated with predict's cut, DEFAULT_MAX_LENGTH tokens:
    one text of a million tokens costs no more than one of 2,048."""
    rows = [{"text": f"a fine short text number {i}", "label": "pos" if i % 2 else "neg"} for i in range(40)]
    (tmp_path / "small.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ok(run("train", "--dataset", tmp_path / "small.jsonl", "--embedding-dim", "8", "--hidden-size", "8",
           "--max-length", "0", "--val-fraction", "0.25", "--out", "r", "--quiet"))
    rows[0]["text"] = "fine " * 1_000_000
    (tmp_path / "huge.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = json.loads(ok(run("eval", "--checkpoint", "r/best", "--dataset", tmp_path / "huge.jsonl",
                               "--json", "--quiet")).stdout)
    assert report["n"] == 40
    from lstmcli.data.batches import DEFAULT_MAX_LENGTH, Truncation
    assert Truncation.for_inference(from_dict(json.loads(Path("r/best/config.json").read_text()), "c").data) \
        == Truncation(DEFAULT_MAX_LENGTH)
