"""`lstmcli bench`, `export` and `plot`: kernel speed, a checkpoint carried out, a run drawn."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from lstmcli import __version__
from lstmcli.cli.options import (
    DEFAULT_CHECKPOINT,
    Checkpoint,
    DeviceOpt,
    ProgressOpt,
    Quiet,
    default_text,
    json_option,
)
from lstmcli.config import MAX_THREADS, Cell, Device, Impl, renamed_value
from lstmcli.errors import LstmcliError
from lstmcli.exits import user_errors
from lstmcli.exporters import FORMATS
from lstmcli.exporters.quantize import QUANTIZATIONS

log_deprecated = "lstmcli: {what} as an argument is deprecated; use {flag} {path}"


@user_errors
def bench(
    cell: Annotated[list[Cell] | None, typer.Option(help="recurrent cells to measure (repeat it) " +
                                                    default_text("all"), show_default=False)] = None,
    encoder: Annotated[list[Cell] | None, typer.Option(hidden=True)] = None,  # --cell's old name
    impl: Annotated[list[Impl], typer.Option(help="implementations to measure (repeat it)")] = [
        i for i in Impl if i is not Impl.auto],
    embedding_dim: Annotated[int, typer.Option(min=1, help="embedding size")] = 128,
    hidden_size: Annotated[int, typer.Option(min=1, help="recurrent state size")] = 256,
    batch_size: Annotated[int, typer.Option(min=1, help="examples per batch")] = 64,
    min_length: Annotated[int, typer.Option(min=1, help="shortest sequence")] = 50,
    max_length: Annotated[int, typer.Option(min=1, help="longest sequence")] = 400,
    num_layers: Annotated[int, typer.Option(min=1, help="stacked layers")] = 1,
    bidirectional: Annotated[bool, typer.Option(help="add a backward direction")] = False,
    batches: Annotated[int, typer.Option(min=1, help="batches per timed pass")] = 6,
    repeats: Annotated[int, typer.Option(min=1, help="timed passes; the median is reported")] = 5,
    device: DeviceOpt = Device.auto,
    threads: Annotated[int, typer.Option(min=1, max=MAX_THREADS, help="CPU threads")] = 2,
    out: Annotated[Path, typer.Option(help="where to write the JSON report")] = Path("bench.json"),
    json_out: json_option("the report instead of a table") = False,
    quiet: Quiet = False,
    progress: ProgressOpt = None,
    skip_memory_check: Annotated[bool, typer.Option(
        "--skip-memory-check", help="start even when the shape is estimated to need more memory than is "
                                    "available")] = False,
) -> None:
    """Training and inference tokens/s of each cell x impl, with scratch/builtin ratios."""
    from lstmcli.api import tune_process
    from lstmcli.fsutil import refuse_non_regular, write_json
    from lstmcli.reports import format_bench
    from lstmcli.runtime.bench import BenchShape, run_bench
    refuse_non_regular(out, "bench writes its report to a regular file: choose another --out")
    cells = renamed_value("encoder", "cell", encoder or None, cell or None) or list(Cell)
    if min_length > max_length:
        raise LstmcliError(f"--min-length {min_length} is above --max-length {max_length}")
    if Impl.auto in impl:
        raise LstmcliError("--impl auto picks builtin or scratch for a run; bench measures them by name "
                           "(--impl builtin --impl scratch)")
    shape = BenchShape(embedding_dim, hidden_size, batch_size, min_length, max_length, num_layers,
                       bidirectional, batches, repeats)
    tune_process()
    report = run_bench([c.value for c in cells], [i.value for i in impl], shape, device.value, threads,
                       memory_check=not skip_memory_check)
    report = {"lstmcli": __version__, **report}
    write_json(out, report)
    typer.echo(json.dumps(report) if json_out else format_bench(report))


ExportFormat = Enum("ExportFormat", [(name, name) for name in FORMATS], type=str)  # exporters/__init__.py
Quantization = Enum("Quantization", [(n, n) for n in QUANTIZATIONS], type=str)  # exporters/quantize.py


@user_errors
def export(
    checkpoint: Checkpoint = DEFAULT_CHECKPOINT,
    legacy: Annotated[Path | None, typer.Argument(hidden=True, show_default=False)] = None,
    format: Annotated[ExportFormat, typer.Option("--format", help="model format: " + "; ".join(
        f"{name}: {about}" for name, about in FORMATS.items()))] = ExportFormat.onnx,
    quantize: Annotated[Quantization | None, typer.Option(help="store the model quantized: " + "; ".join(
        f"{name}: {about}" for name, about in QUANTIZATIONS.items()), show_default=False)] = None,
    out: Annotated[Path | None, typer.Option(
        help="model file; its labels, vocabulary and tokenizer go to the same name with .json "
             + default_text("model.onnx, or model.int8.onnx, in the checkpoint folder, where predict "
                            "--backend auto finds it"),
        show_default=False)] = None,
    force: Annotated[bool, typer.Option("--force", help="replace --out and its .json if they exist "
                                        "(regular files only)")] = False,
    json_out: json_option("the two files' paths") = False,
    quiet: Quiet = False,
    progress: ProgressOpt = None,
) -> None:
    """Write the checkpoint as a model that runs without lstmcli: ONNX, (ids, lengths) -> logits, with
    dynamic batch and sequence axes, plus a JSON of labels, vocabulary, tokenizer rules and cut."""
    from lstmcli import api
    if legacy is not None:  # `lstmcli export CHECKPOINT`, the form before --checkpoint
        if checkpoint != DEFAULT_CHECKPOINT:
            raise LstmcliError(f"two checkpoints: --checkpoint {checkpoint} and {legacy}; give --checkpoint "
                               "only")
        typer.echo(log_deprecated.format(what="the checkpoint", flag="--checkpoint", path=legacy), err=True)
        checkpoint = legacy
    model, meta = api.export(checkpoint, out, format.value, force, quantize and quantize.value)
    if json_out:
        typer.echo(json.dumps({"model": str(model), "metadata": str(meta), "format": format.value,
                               "quantize": quantize and quantize.value, "bytes": model.stat().st_size,
                               "lstmcli": __version__}))
        return
    typer.echo(str(model))
    if not quiet:
        typer.echo(f"labels, vocabulary and tokenizer: {meta}", err=True)


@user_errors
def plot(
    run: Annotated[Path, typer.Option(help="run folder (or a checkpoint in it)")] = Path("runs/latest"),
    legacy: Annotated[Path | None, typer.Argument(hidden=True, show_default=False)] = None,
    json_out: json_option("the files drawn") = False,
) -> None:
    """Redraw a run's learning_curves.png and confusion_matrix.png from its metrics.json (any run, also
    one made before lstmcli drew them, or one still in progress); prints the files."""
    from lstmcli.evaluation.plots import plot_run
    if legacy is not None:  # `lstmcli plot RUN_DIR`, the form before --run
        if run != Path("runs/latest"):
            raise LstmcliError(f"two runs: --run {run} and {legacy}; give --run only")
        typer.echo(log_deprecated.format(what="the run folder", flag="--run", path=legacy), err=True)
        run = legacy
    written = plot_run(run)
    if json_out:
        typer.echo(json.dumps({"files": [str(p) for p in written], "lstmcli": __version__}))
        return
    for path in written:
        typer.echo(str(path))
