"""Progress: bars on stderr on a terminal only (--progress/--no-progress force it), never on stdout; log
lines where no bar is drawn; and the Python API silent until the caller turns logging on."""

import logging
import subprocess
import sys

import pytest

from lstmcli import progress

from .conftest import TINY, ok, run, warnings_dropped


@pytest.fixture
def info_logged():
    logger = logging.getLogger("lstmcli")
    level = logger.level
    logger.setLevel(logging.INFO)
    yield
    logger.setLevel(level)
    progress.force_bars(None)


def test_bars_need_info_and_a_terminal_or_force(info_logged):
    assert progress.bars_shown() is sys.stderr.isatty()
    progress.force_bars(True)
    assert progress.bars_shown() is True
    logging.getLogger("lstmcli").setLevel(logging.WARNING)  # --quiet wins over --progress
    assert progress.bars_shown() is False
    logging.getLogger("lstmcli").setLevel(logging.INFO)
    progress.force_bars(False)
    assert progress.bars_shown() is False


def test_without_a_bar_long_work_logs_lines(info_logged, caplog, monkeypatch):
    progress.force_bars(False)
    monkeypatch.setattr(progress, "LINE_EVERY", 0.0)
    ticks = iter([0.0, 0.0, 1.0, 2.5])  # start; two updates; close
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(ticks))
    with caplog.at_level(logging.INFO, logger="lstmcli.progress"), progress.Progress("tokenizing", 3000) as p:
        p.update(1000)
        p.update(2000)
    assert [r.getMessage() for r in caplog.records] == [
        "tokenizing: 1,000/3,000 texts", "tokenizing: 3,000/3,000 texts",
        "tokenizing: 3,000/3,000 texts in 2.5 s (1,200 texts/s)"]


def test_progress_forced_draws_bars_on_stderr_only(mirror, workdir):
    forced = ok(run("train", "--config", TINY, "--out", "a", "--progress"))
    assert "epoch 1/1" in forced.stderr and "steps/s" in forced.stderr or "it/s" in forced.stderr
    assert forced.stdout == "a\n"
    plain = ok(run("train", "--config", TINY, "--out", "b", "--no-progress"))
    assert "\r" not in plain.stderr and "steps/s" not in plain.stderr
    quiet = ok(run("train", "--config", TINY, "--out", "c", "--progress", "-q"))
    assert warnings_dropped(quiet.stderr) == ""
    predicted = ok(run("predict", "-c", "a", "--progress", "-", input="good\nbad\n"))
    assert "predicting" in predicted.stderr and len(predicted.stdout.splitlines()) == 2


def test_the_api_is_silent_until_logging_is_turned_on(mirror, workdir):
    code = ("import lstmcli, sys\n"
            "if sys.argv[1] == 'on': lstmcli.log_to_stderr()\n"
            f"lstmcli.train({str(TINY)!r}, out='r' + sys.argv[1], epochs=1)\n")
    silent = subprocess.run([sys.executable, "-c", code, "off"], capture_output=True, text=True, check=True)
    assert silent.stderr == "" and silent.stdout == ""
    shown = subprocess.run([sys.executable, "-c", code, "on"], capture_output=True, text=True, check=True)
    assert "epoch 1/1: train loss" in shown.stderr and "test accuracy of best/" in shown.stderr
    assert shown.stdout == ""
