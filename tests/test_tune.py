"""`lstmcli tune` for real, on a tiny CSV corpus: a short tune and everything it writes, the pruner, two
processes on one SQLite study, a tune killed mid-trial and resumed, the budget as a wall-clock limit,
the missing extra, and the one-line errors. (The search space's parsing: tests/test_tune_space.py.)"""

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState, create_trial

from lstmcli.config import from_dict, resolve, to_dict
from lstmcli.tuning.settings import Settings
from lstmcli.tuning.study import PRUNER_STARTUP, open_study
from lstmcli.tuning.trial import FAILS_IN_A_ROW, epoch_reporter

from .conftest import FILLER, NEG_WORDS, POS_WORDS, ok, one_line_error, run

BASE = """\
[data]
dataset = "reviews.csv"
val_fraction = 0.3
max_length = 50

[model]
embedding_dim = 16
hidden_size = 16

[train]
epochs = {epochs}
batch_size = 32
lr = 0.01

[tune]
lr = {{low = 1e-3, high = 3e-2, log = true}}
hidden_size = [8, 16]
"""
OUTPUTS = {"tune.json", "study.db", "trials", "trials.csv", "trials.json", "best.toml", "history.png",
           "importances.png", "summary.json"}


@pytest.fixture
def corpus(workdir):
    """reviews.csv (300 rows, two labels told apart by keywords) and base.toml (2 epochs a trial), in
    the working folder; slow.toml has 12 epochs a trial, for the tests that stop one midway."""
    rng = random.Random(0)
    with open("reviews.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        for i in range(300):
            label = ("neg", "pos")[i % 2]
            words = [rng.choice(FILLER) for _ in range(12)] + rng.sample((NEG_WORDS, POS_WORDS)[i % 2], 2)
            rng.shuffle(words)
            writer.writerow([" ".join(words), label])
    for name, epochs in (("base.toml", 2), ("slow.toml", 12), ("slower.toml", 40)):
        Path(name).write_text(BASE.format(epochs=epochs), encoding="utf-8")
    return workdir


def load(folder: Path, name: str | None = None):
    return optuna.load_study(study_name=name or folder.name, storage=f"sqlite:///{folder.resolve()}/study.db")


def cli(*args) -> subprocess.Popen:
    """`lstmcli ARGS` in its own process, its output kept."""
    return subprocess.Popen([sys.executable, "-m", "lstmcli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def epochs_done(run_dir: Path) -> int:
    """How many epochs a run folder has finished and saved (0 before its first last/)."""
    try:
        history = json.loads((run_dir / "metrics.json").read_text())["history"]
    except (OSError, ValueError, KeyError):
        return 0
    return len(history) if (run_dir / "last").is_dir() else 0


def test_a_short_tune_writes_every_output(corpus):
    result = ok(run("tune", "--config", "base.toml", "--trials", 3, "--out", "tuned", "--json"))
    summary, folder = json.loads(result.stdout), Path("tuned")
    assert {p.name for p in folder.iterdir()} >= OUTPUTS
    study = load(folder)
    assert [(t.number, t.state) for t in study.trials] == [(n, TrialState.COMPLETE) for n in range(3)]
    rows = json.loads((folder / "trials.json").read_text())
    with open(folder / "trials.csv", newline="") as fh:
        lines = list(csv.DictReader(fh))
    for t, row, line in zip(study.trials, rows, lines, strict=True):
        run_dir = folder.resolve() / "trials" / f"{t.number:04d}"
        assert row["number"] == t.number == int(line["number"])
        assert row["state"] == line["state"] == "COMPLETE"
        assert row["params"] == t.params and float(line["lr"]) == t.params["lr"]
        assert row["val_score"] == t.value == float(line["val_score"]) and line["pruned"] == "False"
        assert row["epochs_trained"] == 2 == int(line["epochs_trained"])
        assert row["run_dir"] == line["run_dir"] == str(run_dir)
        assert list(row["intermediate"]) == ["1", "2"] and max(row["intermediate"].values()) == t.value
        assert (run_dir / "best").is_dir() and (run_dir / "last").is_dir()
    best = study.best_trial
    assert summary["best"]["trial"] == best.number and summary["best"]["val_score"] == best.value
    assert summary["trials"] == {"total": 3, "complete": 3, "pruned": 0, "fail": 0, "running": 0,
                                 "waiting": 0}
    trial_cfg = from_dict(best.user_attrs["config"], "trial")
    assert to_dict(resolve(folder / "best.toml")) == {**to_dict(trial_cfg),
                                                      "train": {**to_dict(trial_cfg)["train"], "out": ""}}
    # the test split is read once, for the best trial only
    tested = [t.number for t in study.trials
              if "test" in json.loads((Path(t.user_attrs["run_dir"]) / "metrics.json").read_text())]
    assert tested == [best.number] and summary["test"]["n"] > 0
    assert (Path(best.user_attrs["run_dir"]) / "confusion_matrix.png").is_file()
    record = json.loads((folder / "tune.json").read_text())
    assert record["trials"] == 3 and record["budget"] is None and record["study"] == "tuned"
    assert record["space"] == {"lr": {"low": 1e-3, "high": 3e-2, "log": True}, "hidden_size": [8, 16]}
    assert all((folder / p).read_bytes()[:4] == b"\x89PNG" for p in ("history.png", "importances.png"))
    assert result.stderr.count("trial 0: lr=") == 1
    assert "trial 2: complete, validation accuracy" in result.stderr
    assert "epoch 1/2" not in result.stderr  # the trials' own training lines are left out
    assert "Traceback" not in result.stderr


def test_the_pruner_stops_a_trial_that_falls_behind(tmp_path):
    settings = Settings({}, {}, None, None, f"sqlite:///{tmp_path}/p.db", "p", 0)
    study = open_study(settings, create=True)  # the pruner the command uses
    early = study.ask()
    epoch_reporter(early, {})(1, 0.0)  # before PRUNER_STARTUP complete trials, nothing is judged
    study.tell(early, state=TrialState.FAIL)
    for _ in range(PRUNER_STARTUP):
        study.add_trial(create_trial(value=0.9, intermediate_values={1: 0.8, 2: 0.9}))
    trial, scores = study.ask(), {}
    on_epoch = epoch_reporter(trial, scores)
    on_epoch(1, 0.85)  # above the median after epoch 1: goes on
    with pytest.raises(optuna.TrialPruned, match="pruned after epoch 2: validation 0.7000 is below"):
        on_epoch(2, 0.7)  # its best, 0.85, is below the others' 0.9 after epoch 2
    assert scores == {1: 0.85, 2: 0.7} and study.trials[-1].intermediate_values == {1: 0.85, 2: 0.7}


def test_a_tune_prunes_a_trial_behind_the_study(corpus):
    storage = f"sqlite:///{Path('shared.db').resolve()}"
    earlier = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    for _ in range(PRUNER_STARTUP):  # trials that reached a validation accuracy of 1 after one epoch
        earlier.add_trial(create_trial(value=0.5, intermediate_values={1: 1.0}))
    result = ok(run("tune", "--config", "base.toml", "--lr", 1e-7, "--storage", storage, "--study", "s",
                    "--trials", PRUNER_STARTUP + 1, "--out", "t"))
    assert "--lr fixes lr for every trial" in result.stderr
    last = json.loads(Path("t/trials.json").read_text())[-1]
    assert last["state"] == "PRUNED" and last["pruned"] and last["epochs_trained"] == 1
    assert last["reason"].startswith("pruned after epoch 1: validation")
    assert list(last["params"]) == ["hidden_size"]
    summary = json.loads(Path("t/summary.json").read_text())
    # the earlier trials are not lstmcli's: they have no config to write
    assert summary["best"] is None and not Path("t/best.toml").exists()
    assert "no trial completed, so no best.toml" in result.stderr


def test_two_processes_run_one_sqlite_study(corpus):
    storage, want = f"sqlite:///{Path('shared.db').resolve()}", 4
    procs = [cli("tune", "--config", "base.toml", "--storage", storage, "--study", "both", "--trials", want,
                 "--out", out, "--sampler-seed", seed, "-q") for out, seed in (("a", 1), ("b", 2))]
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0 and "Traceback" not in err, err
    trials = optuna.load_study(study_name="both", storage=storage).trials
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)  # none lost, none stuck
    # --trials counts the whole study; a process inside a trial when the other reached it finishes it
    assert want <= len(trials) <= want + 1
    assert sorted(t.number for t in trials) == list(range(len(trials)))
    # every trial ran once, in the folder of the process that ran it, under its own number
    folders = sorted((out, int(p.name)) for out in "ab" for p in Path(out, "trials").glob("[0-9]*"))
    assert folders == sorted((Path(t.user_attrs["tune_dir"]).name, t.number) for t in trials)
    for out in "ab":  # each process wrote the whole study's table at its end
        numbers = [r["number"] for r in json.loads(Path(out, "trials.json").read_text())]
        assert set(numbers) <= {t.number for t in trials} and len(numbers) >= want


def test_a_killed_tune_resumes_its_trial_from_last(corpus):
    proc = cli("tune", "--config", "slow.toml", "--trials", 1, "--out", "k", "-q")
    deadline = time.monotonic() + 300  # (a wait for an epoch, not a timing: a busy machine takes longer)
    while not epochs_done(Path("k/trials/0000")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    one_line_error(run("tune", "--resume", "k"), 2, "tune folder", "is in use by another lstmcli process")
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    before = json.loads(Path("k/trials/0000/metrics.json").read_text())["history"]
    assert load(Path("k")).trials[0].state == TrialState.RUNNING and 1 <= len(before) < 12

    result = ok(run("tune", "--resume", "k"))
    assert result.stdout == "k\n"
    assert "trial 1 (trial 0 again, from where it stopped): " in result.stderr
    killed, again = load(Path("k")).trials
    assert killed.state == TrialState.FAIL and again.state == TrialState.COMPLETE  # 1 finished, as asked
    assert again.params == killed.params and again.user_attrs["resumed_from"] == 0
    assert again.user_attrs["run_dir"] == killed.user_attrs["run_dir"] == str(Path("k/trials/0000").resolve())
    history = json.loads(Path("k/trials/0000/metrics.json").read_text())["history"]
    epochs = [h["epoch"] for h in history]
    # continued, not started again: the epochs before the kill kept as they were, none listed twice (a
    # kill after metrics.json's line but before last/ trains that epoch again, exactly: only its
    # timings differ)
    def untimed(rows):
        return [{k: v for k, v in h.items() if k not in ("seconds", "tokens_per_s")} for h in rows]
    assert untimed(history[:len(before)]) == untimed(before)
    assert epochs == sorted(set(epochs)) and epochs[-1] == 12
    assert sorted(again.intermediate_values) == epochs
    assert sorted(p.name for p in Path("k/trials").iterdir()) == ["0000", "latest"]
    rows = json.loads(Path("k/trials.json").read_text())
    assert rows[0]["reason"] == "its tune process ended during it; re-run as trial 1"


def test_the_budget_stops_a_running_trial(corpus):
    start = time.monotonic()
    ok(run("tune", "--config", "slower.toml", "--budget", "1.5s", "--out", "b"))
    assert time.monotonic() - start < 30
    [row] = json.loads(Path("b/trials.json").read_text())  # 40 epochs never fit in the budget
    assert row["state"] == "PRUNED" and row["reason"] == "stopped by the budget"
    assert row["epochs_trained"] < 40 and Path(row["run_dir"], "last").is_dir()
    assert 1.5 <= json.loads(Path("b/tune.json").read_text())["seconds_spent"] < 30


def test_without_optuna_one_line_and_exit_2(corpus, tmp_path):
    shim = tmp_path / "shim" / "optuna"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError('No module named optuna')\n")
    env = {**os.environ, "PYTHONPATH": str(shim.parent)}
    done = subprocess.run([sys.executable, "-m", "lstmcli", "tune", "--config", "base.toml", "--trials", "1"],
                          env=env, capture_output=True, text=True)
    assert done.returncode == 2 and not Path("runs").exists()
    assert done.stderr == "lstmcli: error: lstmcli tune needs Optuna: pip install 'lstmcli[tune]'\n"
    helped = subprocess.run([sys.executable, "-m", "lstmcli", "tune", "--help"], env=env, capture_output=True,
                            text=True)
    assert helped.returncode == 0 and "--budget" in helped.stdout


def test_the_command_line_loads_optuna_for_tune_only():
    code = ("import sys\nfrom typer.testing import CliRunner\nfrom lstmcli.cli import app\n"
            "for args in (['--help'], ['tune', '--help'], ['train', '--help']):\n"
            "    assert CliRunner().invoke(app, args).exit_code == 0\n"
            "print('optuna' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


@pytest.mark.parametrize("args,fragment", [
    (["--config", "base.toml"], "a tune needs to know when to stop: give --budget"),
    (["--config", "base.toml", "--budget", "0"], "--budget '0': a budget must be above 0"),
    (["--config", "base.toml", "--budget", "soon"], "--budget 'soon' is not a duration"),
    (["--config", "bad.toml", "--trials", "1"], "bad.toml: config key 'tune.hidden_size': expected int"),
    (["--config", "base.toml", "--trials", "1", "--storage", "nowhere"], "is not a database URL"),
    (["--resume", "nowhere"], "is not a tune folder (it has no tune.json)"),
    (["--resume", "nowhere", "--lr", "0.1"], "--resume continues a tune with its own settings; drop --lr"),
    (["--config", "base.toml", "--trials", "1", "--out", "old"], "holds a tune; continue it with lstmcli "
                                                                 "tune --resume"),
    (["--config", "base.toml", "--trials", "1", "--out", "mine"], "is not empty"),
    (["--config", "base.toml", "--trials", "0"], "--trials"),
])
def test_user_errors_are_one_line(corpus, args, fragment):
    Path("bad.toml").write_text('[tune]\nhidden_size = ["big"]\n')
    Path("old").mkdir()
    Path("old/tune.json").write_text("{}")
    Path("mine").mkdir()
    Path("mine/notes.txt").write_text("mine")
    one_line_error(run("tune", *args), 2, fragment)
    assert Path("mine/notes.txt").read_text() == "mine"


def test_a_space_whose_every_trial_fails_stops(corpus):
    Path("never.toml").write_text(BASE.format(epochs=1).split("[tune]")[0].replace(
        "[model]", '[model]\nimpl = "builtin"') + "[tune]\npeephole = [true]\n")
    result = run("tune", "--config", "never.toml", "--trials", 2, "--out", "f", "-q")
    one_line_error(result, 2, f"the last {FAILS_IN_A_ROW} trials failed", "config key 'model.peephole'")
    rows = json.loads(Path("f/trials.json").read_text())
    assert [r["state"] for r in rows] == ["FAIL"] * FAILS_IN_A_ROW
    assert all("peephole connections need" in r["reason"] for r in rows)
