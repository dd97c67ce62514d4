"""`lstmcli pretrain` and `train --init-from`: the language models read only what they may (no word
predicts itself), every source of unlabelled text, the run folder and its exact resume, torchrun, and a
classifier that starts from the pretrained weights and vocabulary; misuse ends in one line."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lstmcli.data.unlabelled import read_documents
from lstmcli.models.language_model import LanguageModel, usable_cutoffs
from lstmcli.models.spec import ModelSpec

from .conftest import ok, one_line_error, run

WORDS = ["good", "bad", "film", "movie", "great", "awful", "plot", "actor", "acting", "story", "boring",
         "wonderful", "the", "a", "is", "was", "and"]
SMALL = ["--embedding-dim", "8", "--hidden-size", "12", "--bidirectional", "--batch-size", "8",
         "--lm-cutoffs", "5,10", "--quiet"]


def write_docs(path: Path, n: int = 60, seed: int = 0) -> Path:
    import random
    rng = random.Random(seed)
    path.write_text("".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 15))) + "\n"
                            for _ in range(n)), encoding="utf-8")
    return path


def lm(bidirectional: bool, impl: str = "builtin") -> LanguageModel:
    torch.manual_seed(0)
    spec = ModelSpec(vocab_size=30, num_classes=2, embedding_dim=6, hidden_size=5, impl=impl,
                     bidirectional=bidirectional)
    return LanguageModel(spec, [8, 16]).eval()


@pytest.mark.parametrize("impl", ["builtin", "scratch"])
def test_no_direction_sees_the_word_it_predicts(impl):
    """Changing word k changes only the predictions that may read it: forward ones from state k on (and
    the one whose target it is), backward ones from state k down (and the one whose target it is)."""
    model = lm(True, impl)
    ids = torch.tensor([[3, 7, 9, 4, 12, 5, 20, 2]])
    lengths = torch.tensor([8])
    base = model(ids, lengths)
    assert base.shape == (2 * 7,)  # 7 forward predictions, then 7 backward ones
    k = 4
    other = ids.clone()
    other[0, k] = 25
    changed = (model(other, lengths) - base).abs() > 0
    fwd, bwd = changed[:7], changed[7:]  # forward j: state j -> word j+1; backward i: state i+1 -> word i
    assert not fwd[:k - 1].any() and fwd[k - 1:].all()
    assert bwd[:k + 1].all() and not bwd[k + 1:].any()


def test_padding_is_never_predicted_and_lengths_count():
    """A batch of two lengths predicts sum(length - 1) words per direction, each as alone."""
    model = lm(True)
    ids = torch.tensor([[3, 7, 9, 4], [5, 6, 0, 0]])
    both = model(ids, torch.tensor([4, 2]))
    assert both.shape == (2 * (3 + 1),)
    alone = model(ids[1:, :2], torch.tensor([2]))
    torch.testing.assert_close(both[[3, 7]], alone)


def test_a_batch_without_rare_words_still_gives_every_softmax_weight_a_gradient():
    """DDP (without find_unused_parameters) needs every parameter's gradient in every step; the adaptive
    softmax skips a tail cluster that no target of the batch falls in."""
    from types import SimpleNamespace

    from lstmcli.data.batches import Truncation
    from lstmcli.data.encode import EncodedSplit
    from lstmcli.runtime.distributed import SINGLE
    from lstmcli.training.pretrain import _step_loss
    model = lm(True)  # head: words 0-7; tails: 8-15, 16-29
    docs = EncodedSplit(torch.tensor([3, 5, 7, 2, 4, 6, 2], dtype=torch.int32), torch.tensor([0, 4, 7]),
                        torch.zeros(2, dtype=torch.int64))
    r = SimpleNamespace(plan=SimpleNamespace(dist=SINGLE, device=torch.device("cpu")), model=model,
                        wrapped=model, corpus=SimpleNamespace(documents=docs))
    loss, totals = _step_loss(r, torch.tensor([0, 1]), Truncation())
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    assert all(not p.grad.any() for p in model.softmax.tail.parameters())  # no rare word, no change
    assert totals[1] == 2 * (3 + 2)  # words predicted: both directions, each text's length - 1


def test_cutoffs_fit_the_vocabulary_and_odd_encoders_are_refused():
    assert usable_cutoffs([200, 2000, 10000], 50_000) == [200, 2000, 10000]
    assert usable_cutoffs([200, 2000], 1000) == [200] and usable_cutoffs([200], 100) == [50]
    assert usable_cutoffs([5, 10, 20], 100, hidden_size=12, div_value=4.0) == [5]  # 12 // 16 = 0
    with pytest.raises(ValueError, match="more than one layer"):
        LanguageModel(ModelSpec(vocab_size=30, num_classes=2, num_layers=2, bidirectional=True), [8])


def test_documents_from_every_kind_of_source(tmp_path):
    (tmp_path / "d.txt").write_text("one doc here\n\n  second doc  \n", encoding="utf-8")
    assert read_documents(tmp_path / "d.txt", "text") == ["one doc here", "second doc"]
    folder = tmp_path / "folder"
    (folder / "sub").mkdir(parents=True)
    (folder / "b.txt").write_text("beta\nlines joined", encoding="utf-8")
    (folder / "sub" / "a.txt").write_text("alpha", encoding="utf-8")
    (folder / "skip.md").write_text("not text", encoding="utf-8")
    assert read_documents(folder, "text") == ["beta lines joined", "alpha"]
    (tmp_path / "u.csv").write_text("id,body\n1,first row\n2,second row\n", encoding="utf-8")
    assert read_documents(tmp_path / "u.csv", "body") == ["first row", "second row"]
    (tmp_path / "u.jsonl").write_text('{"text": "a b"}\n{"text": "c d"}\n', encoding="utf-8")
    assert read_documents(tmp_path / "u.jsonl", "text") == ["a b", "c d"]


def test_pretrain_writes_a_run_folder_and_a_classifier_starts_from_it(workdir):
    docs = write_docs(Path("docs.txt"), 80)
    result = ok(run("pretrain", "--unlabelled", docs, "--out", "pre", "--epochs", "2", *SMALL))
    assert result.stdout.strip() == "pre"
    m = json.loads(Path("pre/metrics.json").read_text())
    assert m["kind"] == "language_model" and m["finished"] and len(m["history"]) == 2
    assert m["data"]["documents"] + m["data"]["held_out"] == 80 and m["data"]["held_out"] == 2
    for h in m["history"]:
        assert h["val_perplexity"] == pytest.approx(2.718281828 ** h["val_loss"])
        assert {"val_forward_perplexity", "val_backward_perplexity", "train_perplexity"} <= set(h)
    assert m["history"][1]["val_loss"] < m["history"][0]["val_loss"]
    assert Path("pre/learning_curves.png").is_file()
    Path("pre/learning_curves.png").unlink()
    drawn = json.loads(ok(run("plot", "--run", "pre", "--json")).stdout)
    assert drawn["files"] == [str(Path("pre/learning_curves.png"))]
    assert Path("pre/learning_curves.png").is_file()
    assert json.loads(Path("pre/best/labels.json").read_text()) == []
    rows = ["text,label"] + [f"{' '.join(WORDS[i % 7:i % 7 + 4])} {'great' if i % 2 else 'awful'},"
                             f"{'pos' if i % 2 else 'neg'}" for i in range(60)]
    Path("lab.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    ok(run("train", "--dataset", "lab.csv", "--init-from", "pre", "--out", "clf", "--epochs", "1",
           "--embedding-dim", "8", "--hidden-size", "12", "--bidirectional", "--quiet", "--data-dir", "d"))
    metrics = json.loads(Path("clf/metrics.json").read_text())
    assert metrics["init_from"]["path"] == str(Path("pre/best"))
    assert metrics["init_from"]["unknown_share"] == 0
    assert Path("clf/best/vocab.json").read_text() == Path("pre/best/vocab.json").read_text()
    # the classifier's first step starts from the pretrained weights: with lr 0 they are still those
    ok(run("train", "--dataset", "lab.csv", "--init-from", "pre/best", "--out", "frozen", "--epochs", "1",
           "--lr", "0", "--embedding-dim", "8", "--hidden-size", "12", "--bidirectional", "--quiet",
           "--data-dir", "d", "--no-calibrate"))
    pre, clf = load_file("pre/best/model.safetensors"), load_file("frozen/best/model.safetensors")
    shared = [k for k in pre if k.startswith(("embedding.", "encoder."))]
    assert shared and all(torch.equal(pre[k], clf[k]) for k in shared)
    ok(run("eval", "-c", "clf", "--json", "--data-dir", "d"))


def test_misuse_is_one_line(workdir):
    docs = write_docs(Path("docs.txt"), 40)
    ok(run("pretrain", "--unlabelled", docs, "--out", "pre", "--epochs", "1", *SMALL))
    Path("lab.csv").write_text("text,label\n" + "".join(f"good film {i},{i % 2}\n" for i in range(40)))
    one_line_error(run("train", "--dataset", "lab.csv", "--init-from", "pre", "--hidden-size", "12",
                       "--bidirectional", "--quiet"), 2, "model.embedding_dim", "128", "8")
    one_line_error(run("eval", "-c", "pre/best"), 2, "pretrained encoder", "--init-from")
    Path("vec.txt").write_text("good " + " ".join(["0.1"] * 8) + "\n")
    one_line_error(run("train", "--dataset", "lab.csv", "--init-from", "pre", "--embeddings", "vec.txt",
                       "--embedding-dim", "8", "--hidden-size", "12", "--bidirectional", "--quiet"), 2,
                   "train.init_from", "train.embeddings")
    one_line_error(run("train", "--dataset", "lab.csv", "--init-from", "nowhere", "--quiet"), 2, "nowhere")
    one_line_error(run("pretrain", "--unlabelled", docs, "--num-layers", "2", "--bidirectional"), 2,
                   "more than one layer")
    one_line_error(run("pretrain", "--unlabelled", "missing.txt"), 2, "missing.txt")
    one_line_error(run("pretrain", "--unlabelled", docs, "--lm-cutoffs", "10,5"), 2, "pretrain.lm_cutoffs")
    one_line_error(run("pretrain", "--unlabelled", docs, "--out", "pre"), 2, "pre")  # not empty
    one_line_error(run("pretrain", "--resume", "pre"), 2, "already finished")
    ok(run("train", "--dataset", "lab.csv", "--out", "clf", "--epochs", "1", "--quiet"))
    one_line_error(run("train", "--dataset", "lab.csv", "--init-from", "clf", "--quiet"), 2,
                   "not a pretrained encoder")
    one_line_error(run("pretrain", "--resume", "clf"), 2, "not a pretraining run")


def test_the_training_split_of_a_dataset_is_pretrained_on(mirror, workdir):
    """--dataset alone: its training split, with the vocabulary `train` builds from it."""
    ok(run("pretrain", "--dataset", "imdb", "--out", "pre", "--epochs", "1", *SMALL))
    ok(run("train", "--dataset", "imdb", "--out", "plain", "--epochs", "1", "--quiet"))
    assert Path("pre/best/vocab.json").read_text() == Path("plain/best/vocab.json").read_text()
    m = json.loads(Path("pre/metrics.json").read_text())
    assert m["data"]["source"] == "imdb: training split"
    assert m["data"]["documents"] + m["data"]["held_out"] == json.loads(
        Path("plain/metrics.json").read_text())["data"]["train"]


def lstmcli(*args):
    return subprocess.Popen([sys.executable, "-m", "lstmcli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def test_interrupted_pretraining_resumes_exactly(workdir):
    docs = write_docs(Path("docs.txt"), 200)
    args = ["pretrain", "--unlabelled", docs, "--epochs", "2", "--log-every", "1", "--scheduler", "cosine",
            *[a for a in SMALL if a != "--quiet"]]
    ref = lstmcli(*args, "--out", "ref")
    assert ref.wait(300) == 0, ref.stderr.read()
    proc = lstmcli(*args, "--out", "run")
    for line in proc.stderr:
        if line.startswith("epoch 2 step 5/"):
            proc.send_signal(signal.SIGINT)
            break
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert "interrupted in epoch 2 after" in err and "lstmcli pretrain --resume run" in err
    resumed = lstmcli("pretrain", "--resume", "run")
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    for sub in ("best", "last"):
        weights = [Path(d, sub, "model.safetensors").read_bytes() for d in ("ref", "run")]
        assert weights[0] == weights[1], sub
    drop = {"seconds", "tokens_per_s"}
    a, b = (json.loads(Path(d, "metrics.json").read_text()) for d in ("ref", "run"))
    assert [{k: v for k, v in h.items() if k not in drop} for h in a["history"]] == \
        [{k: v for k, v in h.items() if k not in drop} for h in b["history"]]


def test_two_processes_pretrain_as_one(workdir, monkeypatch):
    """torchrun with 2 processes: the global batch's mean loss, so the weights match one process's."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    docs = write_docs(Path("docs.txt"), 60)
    args = ["--unlabelled", docs, "--epochs", "1", "--impl", "builtin", *SMALL]
    ok(run("pretrain", *args, "--out", "one"))
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
              "-m", "lstmcli", "pretrain", *map(str, args), "--out", "two"]
    done = subprocess.run(launch, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    one, two = load_file("one/last/model.safetensors"), load_file("two/last/model.safetensors")
    for name, w in one.items():
        torch.testing.assert_close(two[name], w, atol=1e-5, rtol=1e-4)
    m1, m2 = (json.loads(Path(d, "metrics.json").read_text()) for d in ("one", "two"))
    assert m2["environment"]["world_size"] == 2
    assert m2["history"][0]["val_loss"] == pytest.approx(m1["history"][0]["val_loss"], abs=1e-5)
