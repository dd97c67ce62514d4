"""`--tensorboard` / `report_to = "tensorboard"`: standard event files under RUN_DIR/tensorboard, read
back here with a reader of the format's own (length-prefixed records of Event protos), and one clear line
when the extra is missing."""

import json
import struct
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from .conftest import TINY, ok, one_line_error, run

event_pb2 = pytest.importorskip("tensorboardX.proto.event_pb2")


def read_scalars(folder: Path) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} of every scalar in the event files under `folder` (later files win)."""
    scalars: dict[str, dict[int, float]] = defaultdict(dict)
    files = sorted(folder.glob("events.out.tfevents.*"))
    assert files, f"no event files in {folder}"
    for path in files:
        data, pos = path.read_bytes(), 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])  # after the length's CRC
            pos += 12 + length + 4  # and the data's CRC
            for value in event.summary.value:
                scalars[value.tag][event.step] = value.simple_value
    return scalars


def test_tensorboard_events_hold_the_run(mirror, workdir):
    ok(run("train", "--config", TINY, "--epochs", 2, "--batch-size", 19, "--tensorboard", "--out", "r", "-q"))
    metrics = json.loads(Path("r/metrics.json").read_text())
    scalars = read_scalars(Path("r/tensorboard"))
    assert metrics["data"]["train"] == 76  # 4 batches of 19
    steps_per_epoch = 4
    for tag in ("step/train_loss", "step/train_accuracy", "step/lr", "step/tokens_per_s"):
        assert sorted(scalars[tag]) == list(range(1, 2 * steps_per_epoch + 1)), tag
    for h in metrics["history"]:
        for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr"):
            assert scalars[f"epoch/{key}"][h["epoch"]] == pytest.approx(h[key], rel=1e-6), key
    assert all(0 <= v <= 1 for v in scalars["step/train_accuracy"].values())
    # the per-step losses of equal batches average to the epoch's train loss
    mean = sum(scalars["step/train_loss"][s] for s in range(1, steps_per_epoch + 1)) / steps_per_epoch
    assert mean == pytest.approx(metrics["history"][0]["train_loss"], rel=1e-5)
    config = json.loads(Path("r/config.json").read_text())
    assert config["train"]["report_to"] == "tensorboard"


def test_without_the_extra_it_is_one_line_and_exit_2(mirror, workdir, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # import tensorboardX now raises ImportError
    one_line_error(run("train", "--config", TINY, "--report-to", "tensorboard", "--out", "r"), 2,
                   "tensorboardX", "pip install 'lstmcli[tensorboard]'")
    assert not Path("r").exists()
    ok(run("train", "--config", TINY, "--out", "r", "-q"))  # not asked for: not needed


def test_a_resumed_run_continues_its_event_steps(mirror, workdir):
    import os
    import signal
    import subprocess

    args = [sys.executable, "-m", "lstmcli", "train", "--config", TINY, "--epochs", "2", "--batch-size", "4",
            "--log-every", "1", "--tensorboard", "--out", "r"]
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    for line in proc.stderr:
        if line.startswith("epoch 2 step 3/"):
            proc.send_signal(signal.SIGINT)
            break
    proc.communicate(timeout=120)
    assert proc.returncode == 130
    ok(run("train", "--resume", "r", "-q"))
    scalars = read_scalars(Path("r/tensorboard"))
    assert len(list(Path("r/tensorboard").glob("events.out.tfevents.*"))) == 2  # one file per process
    assert sorted(scalars["step/train_loss"]) == list(range(1, 2 * 19 + 1))  # 76 reviews in batches of 4
    assert sorted(scalars["epoch/val_accuracy"]) == [1, 2]
