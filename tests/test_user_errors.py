"""Bad input ends in one clear line and exit 2, nothing on disk damaged; checks exit 1; saves are atomic."""

import io
import json
import os
import pickle
import tarfile
from pathlib import Path

import pytest
import torch

import lstmcli.checkpoint as ckpt
from lstmcli.errors import LstmcliError

from .conftest import TINY, run, write_sums
from .conftest import one_line_error as one_line


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}




def tar_bytes(members):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_archive_problems_exit_2_and_leave_no_partial_cache(mirror, workdir):
    archive = mirror / "aclImdb_v1.tar.gz"
    good = archive.read_bytes()
    archive.write_bytes(good[: len(good) // 2])  # truncated, but the mirror's checksum says it is right
    write_sums(mirror, ["aclImdb_v1.tar.gz"])
    one_line(run("train", "--dataset", "imdb"), 2, "cannot extract")
    assert not Path("data/aclImdb").exists() and not list(Path("data").glob(".aclImdb*"))
    Path("data/aclImdb_v1.tar.gz").unlink()
    archive.write_bytes(tar_bytes([("aclImdb/train/pos/0_9.txt", b"fine"), ("../escape.txt", b"owned")]))
    write_sums(mirror, ["aclImdb_v1.tar.gz"])
    one_line(run("train", "--dataset", "imdb"), 2, "cannot extract")
    assert not list(workdir.parent.rglob("escape.txt"))
    Path("data/aclImdb_v1.tar.gz").unlink()
    archive.write_bytes(good)  # the checksum file now disagrees with the archive
    one_line(run("train", "--dataset", "imdb"), 2, "checksum mismatch")
    assert not Path("data/aclImdb_v1.tar.gz").exists()


def test_user_file_problems(workdir, tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    one_line(run("train", "--dataset", empty), 2, "no examples")
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"text,label\ngood,pos\n\xff\xfebad,neg\n")
    one_line(run("train", "--dataset", bad), 2, "not UTF-8")
    assert not Path("runs").exists()  # nothing was started


def test_non_utf8_review_is_named(mirror, workdir):
    good = [(f"aclImdb/{s}/{y}/{i}_5.txt", b"ok text") for s in ("train", "test") for y in ("neg", "pos")
            for i in range(3)]
    data = tar_bytes([*good, ("aclImdb/train/pos/9_9.txt", b"caf\xe9")])
    (mirror / "aclImdb_v1.tar.gz").write_bytes(data)
    write_sums(mirror, ["aclImdb_v1.tar.gz"])
    one_line(run("train", "--dataset", "imdb"), 2, "9_9.txt: not UTF-8")


def test_broken_checkpoints_are_refused_and_left_alone(trained, tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "pytorch_model.bin").write_bytes(b"x")
    one_line(run("predict", "x", "--checkpoint", foreign), 2, "not an lstmcli checkpoint")
    partial = tmp_path / "partial"
    partial.mkdir()
    for name in ("config.json", "vocab.json"):
        (partial / name).write_bytes((trained / "best" / name).read_bytes())
    one_line(run("eval", "--checkpoint", partial), 2, "lacks model.safetensors, labels.json")
    odd = tmp_path / "odd"
    odd.mkdir()
    for p in (trained / "best").iterdir():
        (odd / p.name).write_bytes(p.read_bytes())
    (odd / "config.json").write_text('{"model": {"layers": 3}}')
    one_line(run("predict", "x", "--checkpoint", odd), 2, "model.layers")
    before = snapshot(trained)
    one_line(run("eval", "--checkpoint", odd), 2, "model.layers")
    assert snapshot(trained) == before and not list(tmp_path.glob("eval-*.json"))


class Payload:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_pickle_payload_is_never_executed(trained):
    weights = trained / "best" / "model.safetensors"
    weights.write_bytes(pickle.dumps({"w": Payload()}))
    one_line(run("predict", "x", "--checkpoint", "r/best"), 2, "broken checkpoint")
    torch.save({"evil": Payload()}, trained / "last" / "trainer_state.pt")
    json_metrics = json.loads((trained / "metrics.json").read_text())
    del json_metrics["test"]
    (trained / "metrics.json").write_text(json.dumps(json_metrics))
    one_line(run("train", "--resume", "r", "--quiet"), 2, "not a usable trainer state")
    assert not Path("pwned").exists()


def test_fail_under_gates_on_a_metric(trained):
    report = json.loads(run("eval", "--checkpoint", "r/best", "--json").stdout)
    assert run("eval", "--checkpoint", "r/best", "--fail-under", report["accuracy"] - 0.01).exit_code == 0
    assert report["macro_f1"] < 1.0  # (a tiny model on tiny data)
    result = run("eval", "--checkpoint", "r/best", "--fail-under", 1.0, "--metric", "macro_f1", "--json")
    one_line(result, 1, "macro_f1")
    assert json.loads(result.stdout)["macro_f1"] == report["macro_f1"]  # the report still comes out


def test_debug_shows_the_traceback(workdir):
    result = run("--debug", "train", "--dataset", "nope")
    assert result.exit_code == 2 and "Traceback" in result.stderr and "unknown dataset" in result.stderr












def test_failed_save_keeps_the_previous_checkpoint(trained, monkeypatch):
    before = snapshot(trained / "best")
    loaded = ckpt.load(trained / "best")

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(ckpt, "write_json", disk_full)  # fails after the weights were written
    with pytest.raises(LstmcliError, match="cannot write .*best: No space left on device"):
        ckpt.save(trained / "best", loaded.config, loaded.vocab, loaded.label_names, loaded.model, {})
    assert snapshot(trained / "best") == before
    # no temporary folder left (.lock is the run folder's lock file)
    assert not [p for p in trained.iterdir() if p.name.startswith(".") and p.name != ".lock"]
    ckpt.load(trained / "best")


def test_unwritable_output_is_one_line(mirror, workdir):
    Path("blocked").write_text("a file where the run folder should go")
    one_line(run("train", "--config", TINY, "--dataset", "imdb", "--out", "blocked/run", "--quiet"), 2,
             "blocked/run: Not a directory")




