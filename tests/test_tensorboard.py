"""`--tensorboard` / `report_to = "tensorboard"`: standard event files under RUN_DIR/tensorboard, read
back here with a reader of the format's own (length-prefixed records of Event protos) that hides what a
resumed run purges, as TensorBoard does; the test metrics and the HParams plugin's summaries of a finished
run, the line that says how to view them, and one clear line when the extra is missing."""

import json
import struct
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from .conftest import TINY, ok, one_line_error, run

event_pb2 = pytest.importorskip("tensorboardX.proto.event_pb2")
plugin_hparams_pb2 = pytest.importorskip("tensorboardX.proto.plugin_hparams_pb2")
api_pb2 = pytest.importorskip("tensorboardX.proto.api_pb2")


def read_events(folder: Path) -> list:
    """Every Event in the event files under `folder`, file by file in name (= start time) order."""
    files = sorted(folder.glob("events.out.tfevents.*"))
    assert files, f"no event files in {folder}"
    events = []
    for path in files:
        data, pos = path.read_bytes(), 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            record = data[pos + 12:pos + 12 + length]  # after the length's CRC
            events.append(event_pb2.Event.FromString(record))
            pos += 12 + length + 4  # and the data's CRC
    return events


def read_scalars(folder: Path) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} of every scalar TensorBoard shows (later files win; a session START, which a
    resumed run's file begins with, hides every earlier value at its step or later)."""
    scalars: dict[str, dict[int, float]] = defaultdict(dict)
    for event in read_events(folder):
        if event.HasField("session_log") and event.session_log.status == event_pb2.SessionLog.START:
            for values in scalars.values():
                for step in [s for s in values if s >= event.step]:
                    del values[step]
        for value in event.summary.value:
            if value.metadata.plugin_data.plugin_name != "hparams":
                scalars[value.tag][event.step] = value.simple_value
    return scalars


def read_hparams(folder: Path) -> dict[str, list]:
    """{tag: [HParamsPluginData, ...]}: every HParams plugin summary in the event files under `folder`."""
    found = defaultdict(list)
    for event in read_events(folder):
        for value in event.summary.value:
            if value.metadata.plugin_data.plugin_name == "hparams":
                found[value.tag].append(
                    plugin_hparams_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content))
    return found


def hparam_value(value):
    """The Python value of a google.protobuf Value the session start info holds."""
    return getattr(value, value.WhichOneof("kind"))


def check_finished_run(run_dir: Path) -> None:
    """The events of a finished run hold its test metrics (test/*) and best/'s validation accuracy as
    metrics.json has them, at its last epoch, and once each the HParams summaries: every config.json
    value as it is there, linked to those scalars."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    config = json.loads((run_dir / "config.json").read_text())
    scalars = read_scalars(run_dir / "tensorboard")
    last, test = metrics["history"][-1]["epoch"], metrics["test"]
    assert test["roc_auc"] is not None  # two labels: every test metric is there
    expected = {f"test/{k}": test[k] for k in ("accuracy", "loss", "macro_f1", "roc_auc")}
    expected["best/val_accuracy"] = metrics["history"][metrics["best_epoch"] - 1]["val_accuracy"]
    for tag, value in expected.items():
        assert scalars[tag] == {last: pytest.approx(value, rel=1e-6)}, tag
    hparams = read_hparams(run_dir / "tensorboard")
    assert sorted(hparams) == ["_hparams_/experiment", "_hparams_/session_end_info",
                               "_hparams_/session_start_info"]
    assert all(len(found) == 1 for found in hparams.values()), {t: len(f) for t, f in hparams.items()}
    (experiment,), (start,), (end,) = (hparams[f"_hparams_/{t}"] for t in
                                       ("experiment", "session_start_info", "session_end_info"))
    assert sorted(m.name.tag for m in experiment.experiment.metric_infos) == sorted(expected)
    config.pop("launch")
    # the plugin's types: booleans, numbers and strings as they are, anything else as its JSON text
    flat = {f"{section}.{key}": value if isinstance(value, (bool, int, float, str)) else json.dumps(value)
            for section, table in config.items() for key, value in table.items()}
    assert {h.name for h in experiment.experiment.hparam_infos} == set(flat)
    values = {name: hparam_value(v) for name, v in start.session_start_info.hparams.items()}
    assert values == flat  # exact: numbers are doubles, the rest strings and booleans
    assert values["model.hidden_size"] == config["model"]["hidden_size"] == 32
    assert values["train.lr"] == config["train"]["lr"] == 0.003
    assert end.session_end_info.status == api_pb2.Status.Value("STATUS_SUCCESS")


def test_tensorboard_events_hold_the_run(mirror, workdir):
    result = ok(run("train", "--config", TINY, "--epochs", 2, "--batch-size", 19, "--tensorboard",
                    "--out", "r"))
    hints = [line for line in result.stderr.splitlines() if "tensorboard --logdir" in line]
    assert hints == ["TensorBoard events in r/tensorboard; view them with: "
                     "pip install tensorboard && tensorboard --logdir r/tensorboard"]
    check_finished_run(Path("r"))
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


def test_hparams_flatten_the_config_into_the_plugins_types():
    from lstmcli.config import Optimizer
    from lstmcli.training.tensorboard import flat_hparams

    config = {"model": {"hidden_size": 8, "bidirectional": True},
              "train": {"optimizer": Optimizer.sgd, "lr": 0.5, "out": "", "tags": ["a", "b"], "limit": None,
                        "extra": {"depth": 2}}}
    flat = flat_hparams(config)
    assert flat == {"model.hidden_size": 8, "model.bidirectional": True, "train.optimizer": "sgd",
                    "train.lr": 0.5, "train.out": "", "train.tags": '["a", "b"]', "train.limit": "null",
                    "train.extra.depth": 2}
    assert type(flat["train.optimizer"]) is str  # the enum's value, not the str enum itself


def test_without_the_extra_it_is_one_line_and_exit_2(mirror, workdir, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # import tensorboardX now raises ImportError
    one_line_error(run("train", "--config", TINY, "--report-to", "tensorboard", "--out", "r"), 2,
                   "tensorboardX", "pip install 'lstmcli[tensorboard]'")
    assert not Path("r").exists()
    result = ok(run("train", "--config", TINY, "--out", "r"))  # not asked for: not needed
    assert "tensorboard --logdir" not in result.stderr


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
    # 76 reviews in batches of 4; step 22, the stopped run's last, stays: the resumed one purges from 23 on
    assert sorted(scalars["step/train_loss"]) == list(range(1, 2 * 19 + 1))
    assert sorted(scalars["epoch/val_accuracy"]) == [1, 2]
    check_finished_run(Path("r"))  # the resumed process wrote the HParams summaries, and only it
