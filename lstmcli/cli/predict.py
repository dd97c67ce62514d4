"""`lstmcli predict`: texts from the arguments, a stream (stdin, `-`) or a file (`--input`), answered as
they come; a CSV/TSV/JSONL file comes back as itself with the prediction in new columns."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from lstmcli.cli.evaluate import PRECISION_HELP, THRESHOLD_HELP
from lstmcli.cli.options import (
    DEFAULT_CHECKPOINT,
    Backend,
    BackendOpt,
    Checkpoint,
    DeviceOpt,
    ProgressOpt,
    Quiet,
    default_text,
)
from lstmcli.config import Device, Impl, Precision
from lstmcli.data.readers import USER_SUFFIXES
from lstmcli.errors import LstmcliError
from lstmcli.exits import user_errors

WINDOW = 32  # batches read ahead and sorted by length together: nearly the padding of a global sort
WINDOW_BATCH = 256  # ... batches of at least this many texts: narrow batches sort as well as wide ones


@user_errors
def predict(
    texts: Annotated[list[str] | None, typer.Argument(
        help="texts to classify; '-' reads one per line from stdin, answering each as it comes",
        show_default=False)] = None,
    input: Annotated[Path | None, typer.Option(
        "--input", "-i", help="a file to classify: CSV, TSV or JSONL (by suffix) come back as rows with "
                              "predicted_label and predicted_probability added; any other file is one "
                              "text per line; '-' is stdin")] = None,
    text_column: Annotated[str, typer.Option(help="--input CSV/TSV/JSONL: the text column(s), "
                                             "comma-separated to join; digits = a headerless file")] = "text",
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="write the results to this file (whole, or not at all), not stdout")] = None,
    checkpoint: Checkpoint = DEFAULT_CHECKPOINT,
    top_k: Annotated[int | None, typer.Option(
        min=1, help="how many labels to show per text, most probable first " + default_text(
            "1; a multi-label model: every label over its threshold"), show_default=False)] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="texts per batch " + default_text(
        "256 on the torch backend, 16 on onnx"), show_default=False)] = None,
    backend: BackendOpt = Backend.auto,
    device: DeviceOpt = Device.auto,
    impl: Annotated[Impl | None, typer.Option(
        help="run the weights in this implementation " + default_text("the checkpoint's"))] = None,
    precision: Annotated[Precision | None, typer.Option(help=PRECISION_HELP)] = None,
    max_length: Annotated[int | None, typer.Option(min=1, help="tokens kept per text " + default_text(
                          "the checkpoint's max_length, else 2048"), show_default=False)] = None,
    threshold: Annotated[float | None, typer.Option(help=THRESHOLD_HELP)] = None,
    json_out: Annotated[bool, typer.Option("--json", help="one JSON object per input text")] = False,
    force: Annotated[bool, typer.Option("--force", help="replace an existing --output file")] = False,
    quiet: Quiet = False,
    progress: ProgressOpt = None,
) -> None:
    """Classify texts: the label and its probability (or the top k) for each, in input order, each
    written as soon as its batch is done (`tail -f log | lstmcli predict -` answers line by line)."""
    from lstmcli import api
    from lstmcli.inference.stream import keep_bytes
    from lstmcli.progress import Progress
    texts = texts or []
    if input is not None and texts:
        raise LstmcliError("give texts as arguments or --input FILE, not both")
    if input is None and not texts:
        raise LstmcliError("no texts to classify: give them as arguments, '-' for stdin, or --input FILE")
    table = input is not None and input.suffix.lower() in USER_SUFFIXES
    if table and json_out:
        raise LstmcliError(f"--json: {input} comes back as {input.suffix[1:].upper()} rows; drop --json")
    if input is not None and str(input) != "-" and not input.exists():
        raise LstmcliError(f"--input {input}: no such file")
    if input is not None and input.is_dir():
        raise LstmcliError(f"--input {input} is a folder; give a file")
    if output is not None and str(output) == "-":
        output = None  # `-o -`: stdout, as `-i -` is stdin
    clf = api.load(checkpoint, device.value, impl and impl.value, precision and precision.value, max_length,
                   backend.value)
    if clf.backend == "torch":  # (the onnx backend sets its own, without importing torch)
        api.tune_process()
    if threshold is not None:  # before the input: a stream may take its time to say anything
        from lstmcli.evaluation.thresholds import check_threshold
        check_threshold(threshold, clf.labels, clf.multi_label)
    size = max(batch_size or 0, WINDOW_BATCH) * WINDOW
    # a bar on the terminal that also shows the answers would be torn by every line they print
    hidden = output is None and sys.stdout.isatty()
    with _output(output, force) as out, Progress("predicting", unit="texts", hidden=hidden) as shown:
        if table:
            from lstmcli.inference.tables import score_table
            score_table(clf, input, text_column, out, top_k, batch_size, threshold, size, shown)
            return
        done = 0
        for chunk in _chunks(texts, input, size, keep_bytes(clf.cut.length)):
            for i, ranked in enumerate(clf.predict(chunk, top_k, batch_size, threshold), start=done):
                out.write(_line(i, ranked, json_out, clf.multi_label))
            out.flush()  # a reader at the other end of a pipe gets each batch as it is done
            done += len(chunk)
            shown.update(len(chunk))
        if done == 0:
            raise LstmcliError("no texts to classify (the input was empty)")


def _chunks(texts: list[str], input: Path | None, size: int, keep: int | None) -> Iterator[list[str]]:
    """The texts in micro-batches: arguments as they are, `-` (stdin) and a text file as they come."""
    from lstmcli.inference.stream import micro_batches
    if input is not None:
        if str(input) == "-":
            yield from micro_batches(sys.stdin.buffer, size, keep=keep)
        else:
            with input.open("rb") as fh:
                yield from micro_batches(fh, size, keep=keep)
        return
    given: list[str] = []
    for text in texts:
        if text != "-":
            given.append(text)
            continue
        if given:  # the arguments before it, answered first: order is kept
            yield given
            given = []
        yield from micro_batches(sys.stdin.buffer, size, keep=keep)
    if given:
        yield given


def _line(i: int, ranked: list[tuple[str, float]], json_out: bool, multi_label: bool = False) -> str:
    """One text's answer: `label<TAB>probability` (pairs for top k, or a multi-label model's labels: an
    empty line for a text with none, so that line i still answers text i), or a JSON object."""
    if json_out:
        from lstmcli.inference.predict import as_json
        return json.dumps(as_json(i, ranked, multi_label)) + "\n"
    return "\t".join(f"{lab}\t{p:.4f}" for lab, p in ranked) + "\n"


@contextlib.contextmanager
def _output(path: Path | None, force: bool):
    """stdout, or a file written beside `path` and renamed over it once complete (never half a file);
    an existing `path` only with `force`, and never anything but a regular file."""
    if path is None:
        yield sys.stdout
        return
    from lstmcli.fsutil import atomic_text, refuse_non_regular
    refuse_non_regular(path, "predict writes its results to a regular file: choose another --output")
    if path.exists() and not force:
        raise LstmcliError(f"{path} exists; add --force to replace it, or choose another --output")
    with atomic_text(path) as fh:
        yield fh
