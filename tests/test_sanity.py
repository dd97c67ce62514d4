"""Sanity warnings: settings that run but are probably not meant, one stderr line each, never an error."""

import torch

from lstmcli.config import resolve
from lstmcli.data.encode import EncodedData, EncodedSplit
from lstmcli.data.text import Vocab
from lstmcli.training.sanity import warnings_for

from .conftest import TINY, ok, run


def split(lengths: list[int], labels: list[int]) -> EncodedSplit:
    offsets = torch.zeros(len(lengths) + 1, dtype=torch.int64)
    torch.cumsum(torch.tensor(lengths), 0, out=offsets[1:])
    return EncodedSplit(torch.ones(int(offsets[-1]), dtype=torch.int32), offsets, torch.tensor(labels))


def data(train_lengths, train_labels, val_rows=150) -> EncodedData:
    splits = {"train": split(train_lengths, train_labels), "val": split([3] * val_rows, [0] * val_rows),
              "test": split([3], [0])}
    return EncodedData(Vocab.from_counts({"a": 1}, 0, 1), ["neg", "pos"], splits)


def test_a_sound_run_warns_nothing():
    cfg = resolve(None, {"max_length": 10, "batch_size": 10, "epochs": 2, "warmup_steps": 4})
    assert warnings_for(cfg, data([5] * 40, [0, 1] * 20)) == []


def test_each_warning_in_one_line():
    cfg = resolve(None, {"max_length": 10, "batch_size": 10, "epochs": 2, "warmup_steps": 9})
    found = warnings_for(cfg, data([5] * 26 + [11] * 14, [0] * 31 + [1] * 9, val_rows=99))
    assert found == [
        "warmup_steps 9 is longer than the run (8 steps: 2 epoch(s) of 4): the learning rate never reaches "
        "lr 0.001",
        "max_length 10 cuts 14 of 40 training texts (35%); the longest has 11 tokens",
        "the validation split has 99 rows (under 100): best/ and early stopping are chosen on noise (raise "
        "val_fraction or max_eval_examples)",
        "1 label(s) with fewer than 10 training rows ('pos' 9): too few to learn them from",
    ]
    # a quarter cut exactly is not more than a quarter
    assert not any("cuts" in w for w in warnings_for(cfg, data([5] * 30 + [11] * 10, [0, 1] * 20)))


def test_train_prints_them_as_warnings_and_runs(mirror, workdir):
    result = ok(run("train", "--config", TINY, "--warmup-steps", 500, "--out", "r", "-q"))
    lines = [line for line in result.stderr.splitlines() if line.startswith("lstmcli: ")]
    assert sum("warmup_steps 500 is longer than the run" in line for line in lines) == 1
    assert any("the validation split has" in line for line in lines)
    assert "Traceback" not in result.stderr and "FutureWarning" not in result.stderr
