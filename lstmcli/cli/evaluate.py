"""`lstmcli eval` and `lstmcli calibrate`: a checkpoint's metrics on a split, or its branches weighted."""

from __future__ import annotations

import json
from enum import Enum
from typing import Annotated

import typer

from lstmcli.cli.options import (
    DEFAULT_CHECKPOINT,
    Backend,
    Checkpoint,
    DeviceOpt,
    ProgressOpt,
    Quiet,
    data_dir_help,
    default_text,
    json_option,
)
from lstmcli.config import Device, Impl, Precision, env_data_dir
from lstmcli.errors import CheckFailed, LstmcliError
from lstmcli.exits import user_errors

THRESHOLD_HELP = ("two labels: predict the second label (e.g. pos) when its probability is at least this, "
                  "else the first " + default_text("the more probable one") + "; multi-label: every label "
                  "whose probability is at least this " + default_text("each label's fitted threshold"))
PRECISION_HELP = ("run the checkpoint at this precision (fp32 where the device has no native bf16, said on "
                  "stderr) " + default_text("the one it was trained at"))

BATCH_HELP = "examples per batch " + default_text("the checkpoint's")


class Metric(str, Enum):
    accuracy = "accuracy"  # multi-label: subset accuracy
    macro_f1 = "macro_f1"
    micro_f1 = "micro_f1"  # multi-label only


class SplitName(str, Enum):
    test = "test"
    val = "val"
    train = "train"


@user_errors
def eval_(
    checkpoint: Checkpoint = DEFAULT_CHECKPOINT,
    split: Annotated[SplitName, typer.Option(help="split to evaluate")] = SplitName.test,
    dataset: Annotated[str | None, typer.Option(help="other data: a dataset, or a file (all rows)")] = None,
    text_column: Annotated[str | None, typer.Option(help="--dataset FILE: its text column(s) " + default_text(
        "the training data's"), show_default=False)] = None,
    label_column: Annotated[str | None, typer.Option(help="--dataset FILE: its label column " + default_text(
        "the training data's"), show_default=False)] = None,
    data_dir: Annotated[str | None, typer.Option(help=data_dir_help(), show_default=False)] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help=BATCH_HELP, show_default=False)] = None,
    backend: Annotated[Backend, typer.Option(
        help="torch: the checkpoint's weights; onnx: its folder's export (int8 first), as predict "
             "--backend onnx runs it; auto: as predict chooses")] = Backend.torch,
    device: DeviceOpt = Device.auto,
    impl: Annotated[Impl | None, typer.Option(
        help="run the weights in this implementation " + default_text("the checkpoint's"))] = None,
    precision: Annotated[Precision | None, typer.Option(help=PRECISION_HELP)] = None,
    fail_under: Annotated[float | None, typer.Option(help="exit 1 when --metric is below this")] = None,
    metric: Annotated[Metric, typer.Option(help="the metric --fail-under checks (a multi-label model's "
                                           "accuracy is its subset accuracy)")] = Metric.accuracy,
    threshold: Annotated[float | None, typer.Option(help=THRESHOLD_HELP)] = None,
    json_out: json_option("the report instead of a table") = False,
    quiet: Quiet = False,
    progress: ProgressOpt = None,
) -> None:
    """Accuracy, loss, macro-F1, per-class P/R/F1 and the confusion matrix of a checkpoint; with two
    labels also ROC-AUC and the threshold that maximises F1 on the split (choose it on val, apply it to
    test with --threshold). A multi-label model: micro- and macro-F1, subset accuracy, Hamming loss and
    per-label P/R/F1 at its stored thresholds (--threshold sets one for all). Writes eval-SPLIT.json and
    confusion-SPLIT.png (multi-label: label-f1-SPLIT.png) beside the checkpoint (an export's:
    eval-SPLIT.int8.json, ...)."""
    from lstmcli import api
    from lstmcli.reports import format_report
    if fail_under is not None and not 0.0 <= fail_under <= 1.0:  # (NaN fails this too)
        raise LstmcliError(f"--fail-under must be a number in [0, 1], got {fail_under}")
    api.tune_process()
    report = api.evaluate(checkpoint, split.value, dataset, data_dir or env_data_dir(), batch_size,
                          device.value, impl and impl.value, precision and precision.value, threshold,
                          text_column, label_column, backend.value)
    if json_out:
        typer.echo(json.dumps(report))
    else:
        title = f"{report['dataset']} [{report['split']}] with {report['checkpoint']}"
        typer.echo(format_report(report, title))
        if not quiet:
            typer.echo(f"\nwritten to {' and '.join(report['files'].values())}", err=True)
    if fail_under is not None and metric.value not in report:
        raise LstmcliError(f"--metric {metric.value} is a multi-label model's; this one has one label per "
                           f"text (use accuracy or macro_f1)")
    if fail_under is not None and report[metric.value] < fail_under:
        raise CheckFailed(f"{metric.value} {report[metric.value]:.4f} is below --fail-under {fail_under}")


@user_errors
def calibrate(
    checkpoint: Checkpoint = DEFAULT_CHECKPOINT,
    data_dir: Annotated[str | None, typer.Option(help=data_dir_help(), show_default=False)] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help=BATCH_HELP, show_default=False)] = None,
    device: DeviceOpt = Device.auto,
    json_out: json_option("the weights and log-losses instead of a table") = False,
    quiet: Quiet = False,
    progress: ProgressOpt = None,
) -> None:
    """Fit one weight per branch of a checkpoint (the encoder's, an n-gram bag's) on its run's validation
    split and write them into it. train does this itself (unless --no-calibrate); this is for
    checkpoints trained without it. Afterwards its val metrics are fitted ones; test stays untouched."""
    from lstmcli import api
    from lstmcli.reports import format_calibration
    api.tune_process()
    report = api.calibrate(checkpoint, data_dir or env_data_dir(), batch_size, device.value)
    typer.echo(json.dumps(report) if json_out else format_calibration(report))
