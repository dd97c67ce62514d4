"""Pictures: every run draws learning_curves.png and confusion_matrix.png, eval draws the confusion
matrix of its split, `lstmcli plot` redraws them from metrics.json alone; predict never loads matplotlib."""

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

from lstmcli.evaluation import plots

from .conftest import TINY, ok, one_line_error, run


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) of a PNG file, checking its signature and its first chunk."""
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    assert data[-8:-4] == b"IEND", f"{path} is cut short"
    return struct.unpack(">II", data[16:24])


def test_a_run_draws_its_pictures_and_plot_redraws_them(mirror, workdir):
    ok(run("train", "--config", TINY, "--epochs", 2, "--out", "r", "--quiet"))
    for name, (min_w, min_h) in (("learning_curves.png", (1000, 300)), ("confusion_matrix.png", (700, 400))):
        w, h = png_size(Path("r") / name)
        assert w >= min_w and h >= min_h and w <= 4000 and h <= 3000, (name, w, h)
        assert (Path("r") / name).stat().st_size > 20_000  # drawn, not an empty canvas

    result = ok(run("eval", "--checkpoint", "r/best", "--split", "val"))
    assert "confusion-val.png" in result.stderr
    png_size("r/confusion-val.png")

    before = Path("r/learning_curves.png").read_bytes()
    for name in ("learning_curves.png", "confusion_matrix.png"):
        os.remove(Path("r") / name)
    result = ok(run("plot", "--run", "r"))
    assert result.stdout.split() == ["r/learning_curves.png", "r/confusion_matrix.png"]
    assert Path("r/learning_curves.png").read_bytes() == before  # from metrics.json alone, the same picture


def test_plot_draws_runs_made_before_the_pictures_and_unfinished_ones(mirror, workdir):
    ok(run("train", "--config", TINY, "--epochs", 2, "--out", "r", "--quiet"))
    metrics = json.loads(Path("r/metrics.json").read_text())
    for entry in metrics["history"]:
        del entry["lr"]  # as written before the learning rate was recorded
    del metrics["test"]  # as a run stopped before its test
    Path("r/metrics.json").write_text(json.dumps(metrics))
    for name in ("learning_curves.png", "confusion_matrix.png"):
        os.remove(Path("r") / name)
    ok(run("plot", "--run", "r"))
    png_size("r/learning_curves.png")
    png_size("r/confusion_matrix.png")  # from best/'s validation report

    one_line_error(run("plot", "--run", "nowhere"), 2, "cannot plot nowhere")
    shutil.rmtree("r/best")
    metrics["history"] = []
    Path("r/metrics.json").write_text(json.dumps(metrics))
    one_line_error(run("plot", "--run", "r"), 2, "no finished epoch")


def test_one_epoch_and_twenty_long_labels_stay_readable(tmp_path):
    metrics = {"history": [{"epoch": 1, "train_loss": 0.7, "val_loss": 0.6, "train_accuracy": 0.5,
                            "val_accuracy": 0.6, "lr": 1e-3}], "best_epoch": 1}
    w, h = png_size(plots.learning_curves(metrics, tmp_path / "one.png"))
    assert w >= 1000
    names = [f"a rather long label name number {i}" for i in range(20)]
    confusion = [[50 if i == j else i % 3 for j in range(20)] for i in range(20)]
    path = plots.confusion_matrix({"labels": names, "confusion": confusion, "accuracy": 0.9, "n": 1000},
                                  tmp_path / "twenty.png", "twenty labels")
    w, h = png_size(path)
    assert w >= 2000 and h >= 1000  # cells grow with the number of labels, so their numbers stay legible


def test_predict_does_not_load_matplotlib(mirror, workdir):
    ok(run("train", "--config", TINY, "--out", "r", "--quiet"))
    code = ("import sys, typer.testing; from lstmcli.cli import app; "
            "args = ['predict', '--checkpoint', 'r/best', 'a fine film']; "
            "r = typer.testing.CliRunner().invoke(app, args); "
            "print(r.exit_code, 'matplotlib' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["0", "False"], out.stdout + out.stderr


def test_names_that_look_like_tex_are_drawn_as_text(tmp_path):
    # matplotlib would parse "$...$" as mathtext and fail on an unknown command after a finished run
    names = ["$\\foo$", "costs $5 to $10"]
    path = plots.confusion_matrix({"labels": names, "confusion": [[3, 1], [0, 2]], "accuracy": 0.8, "n": 6},
                                  tmp_path / "tex.png", "run $\\bar$")
    png_size(path)
    metrics = {"history": [{"epoch": 1, "train_loss": 0.7, "val_loss": float("nan"), "train_accuracy": 0.5,
                            "val_accuracy": 0.6, "lr": 1e-3}]}
    png_size(plots.learning_curves(metrics, tmp_path / "curves.png", "$\\baz$: learning curves"))
