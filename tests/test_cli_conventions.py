"""One way to name things: every command's --help walked and checked against the conventions
(lstmcli/cli/options.py), --version, one-line usage errors, and a run folder taken for its best/."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.main import get_command
from typer.testing import CliRunner

import lstmcli
from lstmcli.cli import app
from lstmcli.config import Device

from .conftest import ok, one_line_error, run

COMMAND = get_command(app)
NAMES = list(COMMAND.commands)
# where each shared option means something (and so must exist); the others must not carry it
JSON = {"train", "pretrain", "tune", "eval", "predict", "calibrate", "export", "plot", "bench", "datasets",
        "configs", "env"}
# the ones that log
QUIET = {"train", "pretrain", "tune", "eval", "predict", "calibrate", "export", "bench", "serve"}
PROGRESS = QUIET - {"serve"}  # the ones with long steps to show
CHECKPOINT = {"eval", "predict", "calibrate", "export", "serve"}
POSITIONAL = {"predict": ["texts"], "serve": ["model"]}  # serve MODEL: as `fastapi run APP`, `ollama serve`


def help_of(name: str) -> str:
    result = CliRunner().invoke(app, [name, "--help"], env={"COLUMNS": "200", "TERMINAL_WIDTH": "200"})
    assert result.exit_code == 0, result.output
    return result.stdout


def options(name: str) -> dict:
    """{option name: param} of a command, hidden ones left out."""
    found = {}
    for p in COMMAND.commands[name].params:
        if not getattr(p, "hidden", False):
            for opt in [*p.opts, *getattr(p, "secondary_opts", [])]:
                found[opt] = p
    return found


def test_the_commands_in_the_tours_order():
    assert NAMES == ["train", "pretrain", "tune", "eval", "predict", "calibrate", "export", "serve", "plot",
                     "bench", "datasets", "configs", "env"]


@pytest.mark.parametrize("name", NAMES)
def test_help_follows_the_conventions(name):
    text, opts = help_of(name), options(name)
    assert "<bool>" not in text
    assert "(default:" not in text and "[default: (" not in text  # defaults read one way: [default: x]
    assert ("--json" in opts) == (name in JSON)
    assert ("--quiet" in opts) == (name in QUIET)
    assert ("--progress" in opts) == (name in PROGRESS)
    if "--device" in opts:  # (train's is a config field: None, meaning the config's default, auto)
        assert opts["--device"].default in (Device.auto, "auto") or "[default: auto]" in text
    if name in CHECKPOINT:
        assert opts["--checkpoint"].opts == ["--checkpoint", "-c"]
        assert "run folder" in text
    positional = [p for p in COMMAND.commands[name].params
                  if p.param_type_name == "argument" and not getattr(p, "hidden", False)]
    assert [p.name for p in positional] == POSITIONAL.get(name, [])


def test_bracketed_help_survives_the_markup():
    assert "lstmcli[tensorboard]" in help_of("train")


def test_every_config_field_shows_its_default():
    text = help_of("train")
    assert "[default: imdb]" in text and "[default: 2048]" in text and "[default: no-bidirectional]" in text


def test_data_dir_help_names_the_environments_folder(tmp_path):
    env = {**os.environ, "LSTMCLI_DATA_DIR": str(tmp_path / "cache"), "COLUMNS": "300"}
    for command in ("train", "eval"):
        out = subprocess.run([sys.executable, "-m", "lstmcli", command, "--help"], env=env,
                             capture_output=True, text=True, check=True).stdout
        assert str(tmp_path / "cache") in " ".join(out.split()).replace("│ ", ""), command


def test_version():
    result = ok(run("--version"))
    assert result.stdout == f"lstmcli {lstmcli.__version__}\n"


def test_a_usage_error_is_one_line_and_exit_2():
    proc = subprocess.run([sys.executable, "-m", "lstmcli", "eval", "--batch-size", "0"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    [line] = proc.stderr.splitlines()
    assert line.startswith("lstmcli: error: ") and "--batch-size" in line and "lstmcli eval --help" in line
    proc = subprocess.run([sys.executable, "-m", "lstmcli", "train", "--no-such-flag"], capture_output=True,
                          text=True)
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr


def test_short_help_and_conflicting_flags(mirror, workdir):
    assert ok(run("eval", "-h")).stdout == ok(run("eval", "--help")).stdout
    one_line_error(run("train", "--tensorboard", "--report-to", "none"), 2, "give one of them")


def test_completion_is_offered():
    text = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "200"}).stdout
    assert "--install-completion" in text and "--show-completion" in text


def test_a_run_folder_means_its_best_checkpoint(trained):
    result = ok(run("eval", "-c", trained, "--json"))
    assert json.loads(result.stdout)["checkpoint"] == str(trained / "best")
    assert result.stderr.count("is a run folder: using its best checkpoint") == 1
    by_run = ok(run("predict", "-c", trained, "a wonderful film")).stdout
    assert by_run == ok(run("predict", "-c", trained / "best", "a wonderful film")).stdout
    exported = json.loads(ok(run("export", "-c", trained, "--out", "m.onnx", "--json")).stdout)
    assert exported == {"model": "m.onnx", "metadata": "m.json", "format": "onnx", "quantize": None,
                        "bytes": Path("m.onnx").stat().st_size, "lstmcli": lstmcli.__version__}
    drawn = json.loads(ok(run("plot", "--run", trained / "best", "--json")).stdout)["files"]
    assert [Path(p).name for p in drawn] == ["learning_curves.png", "confusion_matrix.png"]
    assert all(Path(p).parent == trained for p in drawn)
    one_line_error(run("eval", "-c", "nowhere"), 2, "no checkpoint at nowhere")


def test_the_old_positional_forms_still_work_with_a_warning(trained):
    result = ok(run("export", trained, "--out", "old.onnx"))
    assert "deprecated; use --checkpoint" in result.stderr and Path("old.onnx").is_file()
    result = ok(run("plot", trained))
    assert "deprecated; use --run" in result.stderr


def test_the_version_is_in_json_reports(trained):
    for args in (["eval", "-c", trained / "best", "--json"], ["plot", "--run", trained, "--json"],
                 ["export", "-c", trained / "best", "--json", "--out", "v.onnx"]):
        assert json.loads(ok(run(*args)).stdout)["lstmcli"] == lstmcli.__version__
    metrics = json.loads((trained / "metrics.json").read_text())
    assert metrics["environment"]["lstmcli"] == lstmcli.__version__
