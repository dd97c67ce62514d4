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


def test_a_resume_drops_the_record_of_an_epoch_last_has_not_finished(mirror, workdir):
    """metrics.json is written before last/ at an epoch's end: a kill between the two leaves a record of
    an epoch that last/ has not finished; the resumed run runs it again and records it once."""
    import time

    from lstmcli.config import resolve
    from lstmcli.errors import Interrupted
    from lstmcli.training import fit
    from lstmcli.training.setup import Hooks
    cfg = resolve(TINY, {"dataset": "imdb", "epochs": 2, "out": "run"})
    with pytest.raises(Interrupted):
        fit.run(cfg, hooks=Hooks(deadline=time.monotonic()))  # stops after the first batch of epoch 1
    metrics = json.loads(Path("run/metrics.json").read_text())
    fake = {"epoch": 1, "train_loss": 9.0, "val_accuracy": 0.0}
    metrics.update(history=[fake], best_epoch=1, stopped_early={"epoch": 1, "patience": 1})
    Path("run/metrics.json").write_text(json.dumps(metrics))
    fit.resume(Path("run"))
    done = json.loads(Path("run/metrics.json").read_text())
    assert [h["epoch"] for h in done["history"]] == [1, 2] and done["history"][0] != fake
    assert "stopped_early" not in done and done["best_epoch"] in (1, 2)


def test_a_signal_too_late_for_the_loop_is_raised_again_on_leaving():
    """GracefulStop holds a Ctrl-C for the loop; one the loop never acted on is not swallowed."""
    import os

    from lstmcli.training.state import GracefulStop
    with pytest.raises(KeyboardInterrupt), GracefulStop() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop()  # held, not raised, while the loop runs
    with pytest.raises(RuntimeError, match="acted on"), GracefulStop() as stop:  # raised on: no more
        os.kill(os.getpid(), signal.SIGINT)
        raise RuntimeError("acted on")
    with GracefulStop() as stop:  # no signal: nothing
        pass
    assert not stop()
