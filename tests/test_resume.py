"""Stop and resume: a real subprocess is interrupted mid-epoch, resumed, and must end exactly where an
uninterrupted run ends. And two runs with one seed are identical."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lstmcli.cli import app

from .conftest import TINY

ARGS = ["--config", TINY, "--dataset", "imdb", "--epochs", "3", "--batch-size", "2",
        "--max-train-examples", "0", "--max-eval-examples", "0", "--num-layers", "2", "--dropout", "0.3",
        "--scheduler", "cosine", "--warmup-steps", "5", "--log-every", "1"]
TIMING = {"seconds", "tokens_per_s"}


def without_timing(metrics: dict) -> dict:
    history = [{k: v for k, v in h.items() if k not in TIMING} for h in metrics["history"]]
    return {**metrics, "history": history}


def lstmcli(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "lstmcli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            **kw)


def finished(proc, timeout=300):
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def same_run(a: Path, b: Path) -> None:
    for sub in ("best", "last"):
        weights = [(run / sub / "model.safetensors").read_bytes() for run in (a, b)]
        assert weights[0] == weights[1], sub
    ma, mb = (json.loads((p / "metrics.json").read_text()) for p in (a, b))
    assert without_timing(ma) == without_timing(mb)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_mid_epoch_then_resumed_equals_uninterrupted(mirror, workdir, sig):
    code, _, err = finished(lstmcli("train", *ARGS, "--out", "ref"))
    assert code == 0, err
    proc = lstmcli("train", *ARGS, "--out", "run")
    for line in proc.stderr:  # wait until the run is well inside epoch 2
        if line.startswith("epoch 2 step 5/"):
            proc.send_signal(sig)
            break
    code, _, err = finished(proc)
    assert code == 130, err
    last_line = err.strip().splitlines()[-1]
    assert last_line.startswith("lstmcli: error: interrupted in epoch 2 after "), err
    done, total = map(int, last_line.split(" after ")[1].split(" ")[0].split("/"))
    assert 5 <= done < total  # stopped inside the epoch, not at its end
    assert "--resume run" in last_line
    state = json.loads(Path("run/last/metrics.json").read_text())
    assert state["val"] is None  # a mid-epoch checkpoint: no validation yet
    code, out, err = finished(lstmcli("train", "--resume", "run"))
    assert code == 0, err
    assert "resuming run in epoch 2" in err
    same_run(Path("ref"), Path("run"))


def test_same_seed_same_results(mirror, workdir):
    for out in ("a", "b"):
        result = CliRunner().invoke(app, ["train", *map(str, ARGS), "--quiet", "--out", out])
        assert result.exit_code == 0, result.output
    same_run(Path("a"), Path("b"))
    other = CliRunner().invoke(app, ["train", *map(str, ARGS), "--quiet", "--seed", "1", "--out", "c"])
    assert other.exit_code == 0
    assert Path("a/last/model.safetensors").read_bytes() != Path("c/last/model.safetensors").read_bytes()


def test_resume_refuses_finished_runs_and_other_flags(mirror, workdir):
    runner = CliRunner()
    args = ["train", "--config", str(TINY), "--dataset", "imdb", "--quiet", "--out", "r"]
    assert runner.invoke(app, args).exit_code == 0
    result = runner.invoke(app, ["train", "--resume", "r"])
    assert result.exit_code == 2 and "already finished" in result.stderr
    result = runner.invoke(app, ["train", "--resume", "r", "--lr", "0.1"])
    assert result.exit_code == 2 and "drop --lr" in result.stderr
    result = runner.invoke(app, ["train", "--resume", "nowhere"])
    assert result.exit_code == 2 and "not a run folder" in result.stderr
