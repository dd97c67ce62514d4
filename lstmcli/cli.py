"""The command line: thin commands that resolve options and call one library function each.

Results go to stdout, logs and errors to stderr. How a command ends (an error a user can cause as one
line and an exit code, signals, the process's exit) is exits.py's.
"""

import inspect
import json
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from lstmcli.config import (
    MAX_THREADS,
    RENAMED,
    Cell,
    Device,
    Impl,
    Precision,
    env_data_dir,
    field_index,
    renamed_value,
)
from lstmcli.data.registry import REGISTRY
from lstmcli.errors import CheckFailed, LstmcliError
from lstmcli.exits import DEBUG, run, user_errors
from lstmcli.exporters import FORMATS

EXIT_CODES = ("Exit codes: 0 success, 1 a check failed, 2 bad usage or input, 130 interrupted, "
              "141 stdout closed by its reader.")
app = typer.Typer(
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    help=f"Train, evaluate and use recurrent text classifiers (LSTM, GRU, RNN).\n\n{EXIT_CODES}")
DEFAULT_CHECKPOINT = Path("runs/latest/best")
QUIET_HELP = "warnings only: no progress bars or logs"
THRESHOLD_HELP = ("two labels only: predict the second label (e.g. pos) when its probability is at least "
                  "this, else the first (default: the more probable one)")
PRECISION_HELP = ("run the checkpoint at this precision (default: the one it was trained at, but fp32 where "
                  "the device has no native bf16, said on stderr)")


@app.callback()
def main_options(
    debug: Annotated[bool, typer.Option("--debug", help="debug logs, and the traceback of an error")] = False,
) -> None:
    DEBUG["on"] = debug


class Metric(str, Enum):
    accuracy = "accuracy"
    macro_f1 = "macro_f1"


class SplitName(str, Enum):
    test = "test"
    val = "val"
    train = "train"


def with_config_options(fn):
    """Add one `--<field>` option per config field (help from the dataclass) to a `**fields` command."""
    sig = inspect.signature(fn, eval_str=True)
    params = [p for p in sig.parameters.values() if p.kind != p.VAR_KEYWORD]
    extra = {"dataset": f"; built in: {', '.join(REGISTRY)}"}
    for name, info in field_index().items():
        default = info.default.value if isinstance(info.default, Enum) else info.default
        option = typer.Option(help=f"{info.help}{extra.get(name, '')} (default: {default!r})",
                              rich_help_panel=f"{info.section} options", show_default=False)
        annotation = Annotated[info.type | None, option]
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None,
                                        annotation=annotation))
    for old, new in RENAMED.items():  # the old names of renamed fields: hidden, with a warning
        info = field_index()[new.split(".")[1]]
        option = typer.Option(f"--{old.split('.')[1].replace('_', '-')}", hidden=True)
        params.append(inspect.Parameter(old.split(".")[1], inspect.Parameter.KEYWORD_ONLY, default=None,
                                        annotation=Annotated[info.type | None, option]))
    fn.__signature__ = sig.replace(parameters=params)
    fn.__annotations__ = {p.name: p.annotation for p in params}
    return fn


@app.command()
@with_config_options
@user_errors
def train(
    config: Annotated[Path | None, typer.Option(help="TOML config; flags override its values")] = None,
    resume: Annotated[Path | None, typer.Option(help="continue a stopped run folder")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help=QUIET_HELP)] = False,
    json_out: Annotated[bool, typer.Option("--json", help="print metrics.json and run_dir as JSON")] = False,
    tensorboard: Annotated[bool, typer.Option("--tensorboard", help="= --report-to tensorboard")] = False,
    force: Annotated[bool, typer.Option("--force", help="train into an --out folder that is not empty: "
                                        "files of the same names are replaced, an earlier run's best/ and "
                                        "last/ removed")] = False,
    skip_memory_check: Annotated[bool, typer.Option(
        "--skip-memory-check", help="start even when the run is estimated to need more memory than is "
                                    "available")] = False,
    **fields: Any,
) -> None:
    """Train a classifier; writes a run folder (config.json, metrics.json, best/, last/) and prints its path.

    Ctrl-C or SIGTERM stops at the next batch, saves last/ with everything needed to continue, and
    exits 130; `--resume RUN_DIR` continues exactly where it stopped. A run folder that holds anything
    is refused unless --force; two trainings into one folder: the second is refused.
    """
    from lstmcli import api
    api.tune_process()
    if tensorboard:
        fields["report_to"] = fields.get("report_to") or "tensorboard"
    if resume is not None:
        given = sorted(k for k, v in fields.items() if v is not None) + (["config"] if config else [])
        given += ["force"] if force else []
        if given:
            flag = given[0].replace("_", "-")
            raise LstmcliError(f"--resume continues a run with its own config; drop --{flag}")
        run_dir = api.resume(resume)
    else:
        run_dir = api.train(config, force=force, skip_memory_check=skip_memory_check, **fields)
    from lstmcli.runtime import distributed
    if not distributed.from_env().is_main:
        return  # under torchrun, rank 0 answers for the run
    if json_out:
        metrics = json.loads((run_dir / "metrics.json").read_text())
        typer.echo(json.dumps({"run_dir": str(run_dir), **metrics}))
    else:
        typer.echo(str(run_dir))


@app.command("eval")
@user_errors
def eval_(
    checkpoint: Annotated[Path, typer.Option(help="checkpoint folder")] = DEFAULT_CHECKPOINT,
    split: Annotated[SplitName, typer.Option(help="split to evaluate")] = SplitName.test,
    dataset: Annotated[str | None, typer.Option(help="other data: a dataset, or a file (all rows)")] = None,
    data_dir: Annotated[str | None, typer.Option(help="dataset cache folder (default: $LSTMCLI_DATA_DIR, "
                                                    "else the one the checkpoint was trained from)")] = None,
    batch_size: Annotated[int | None, typer.Option(help="examples per batch")] = None,
    device: Annotated[Device, typer.Option(help="device")] = Device.auto,
    impl: Annotated[Impl | None, typer.Option(help="run the weights in this implementation")] = None,
    precision: Annotated[Precision | None, typer.Option(help=PRECISION_HELP)] = None,
    fail_under: Annotated[float | None, typer.Option(help="exit 1 when --metric is below this")] = None,
    metric: Annotated[Metric, typer.Option(help="the metric --fail-under checks")] = Metric.accuracy,
    threshold: Annotated[float | None, typer.Option(help=THRESHOLD_HELP)] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help=QUIET_HELP)] = False,
) -> None:
    """Accuracy, loss, macro-F1, per-class P/R/F1 and the confusion matrix of a checkpoint; with two
    labels also ROC-AUC and the threshold that maximises F1 on the split (choose it on val, apply it to
    test with --threshold). Writes eval-SPLIT.json and confusion-SPLIT.png beside the checkpoint."""
    from lstmcli import api
    from lstmcli.reports import format_report
    if fail_under is not None and not 0.0 <= fail_under <= 1.0:  # (NaN fails this too)
        raise LstmcliError(f"--fail-under must be a number in [0, 1], got {fail_under}")
    if batch_size is not None and batch_size < 1:
        raise LstmcliError(f"--batch-size must be >= 1, got {batch_size}")
    api.tune_process()
    report = api.evaluate(checkpoint, split.value, dataset, data_dir or env_data_dir(), batch_size,
                          device.value, impl and impl.value, precision and precision.value, threshold)
    if json_out:
        typer.echo(json.dumps(report))
    else:
        title = f"{report['dataset']} [{report['split']}] with {report['checkpoint']}"
        typer.echo(format_report(report, title))
        typer.echo(f"\nwritten to {report['files']['json']} and {report['files']['confusion_png']}", err=True)
    if fail_under is not None and report[metric.value] < fail_under:
        raise CheckFailed(f"{metric.value} {report[metric.value]:.4f} is below --fail-under {fail_under}")


@app.command()
@user_errors
def calibrate(
    checkpoint: Annotated[Path, typer.Option(help="checkpoint folder")] = DEFAULT_CHECKPOINT,
    data_dir: Annotated[str | None, typer.Option(help="dataset cache folder (default: $LSTMCLI_DATA_DIR, "
                                                    "else the one the checkpoint was trained from)")] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="examples per batch")] = None,
    device: Annotated[Device, typer.Option(help="device")] = Device.auto,
    json_out: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
) -> None:
    """Fit one weight per branch of a checkpoint (the encoder's, an n-gram bag's) on its run's validation
    split and write them into it. train does this itself (unless --no-calibrate); this is for
    checkpoints trained without it. Afterwards its val metrics are fitted ones; test stays untouched."""
    from lstmcli import api
    from lstmcli.reports import format_calibration
    api.tune_process()
    report = api.calibrate(checkpoint, data_dir or env_data_dir(), batch_size, device.value)
    typer.echo(json.dumps(report) if json_out else format_calibration(report))


def read_texts(texts: list[str]) -> list[str]:
    """The texts to classify: `-` reads one text per line from stdin (bad bytes replaced).

    Lines end at "\n" (and a "\r" before it) only, as for `wc -l`: str.splitlines would also cut at
    \x85, \u2028 and other separators that occur inside real texts (IMDB's reviews hold \x85), and the
    outputs would no longer line up with the input lines.
    """
    out: list[str] = []
    for text in texts:
        if text == "-":
            data = sys.stdin.buffer.read().decode("utf-8", errors="replace")
            lines = data.split("\n")
            if lines[-1] == "":
                lines.pop()  # the newline that ends the last line
            out.extend(line.removesuffix("\r") for line in lines)
        else:
            out.append(text)
    return out


@app.command()
@user_errors
def predict(
    texts: Annotated[list[str], typer.Argument(help="texts to classify; '-' reads one per line from stdin")],
    checkpoint: Annotated[Path, typer.Option(help="checkpoint folder")] = DEFAULT_CHECKPOINT,
    top_k: Annotated[int, typer.Option(min=1, help="how many labels to show per text")] = 1,
    batch_size: Annotated[int, typer.Option(min=1, help="texts per batch")] = 256,
    device: Annotated[Device, typer.Option(help="device")] = Device.cpu,
    impl: Annotated[Impl | None, typer.Option(help="run the weights in this implementation")] = None,
    precision: Annotated[Precision | None, typer.Option(help=PRECISION_HELP)] = None,
    max_length: Annotated[int | None, typer.Option(min=1, help="tokens kept per text (default: the "
                          "checkpoint's max_length, else 2048)")] = None,
    threshold: Annotated[float | None, typer.Option(help=THRESHOLD_HELP)] = None,
    json_out: Annotated[bool, typer.Option("--json", help="one JSON object per input line")] = False,
) -> None:
    """Classify texts: the label and its probability (or the top k) for each."""
    from lstmcli import api
    inputs = read_texts(texts)
    if not inputs:
        raise LstmcliError("no texts to classify (standard input was empty)")
    api.tune_process()
    clf = api.load(checkpoint, device.value, impl and impl.value, precision and precision.value, max_length)
    for i, ranked in enumerate(clf.predict(inputs, top_k, batch_size, threshold)):
        if json_out:
            typer.echo(json.dumps({"index": i, "label": ranked[0][0], "probability": ranked[0][1],
                                   "top_k": [{"label": lab, "probability": p} for lab, p in ranked]}))
        else:
            typer.echo("\t".join(f"{lab}\t{p:.4f}" for lab, p in ranked))


@app.command()
@user_errors
def bench(
    cell: Annotated[list[Cell] | None, typer.Option(help="recurrent cells to measure (repeat it; default: "
                                                    "all)")] = None,
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
    device: Annotated[Device, typer.Option(help="device")] = Device.cpu,
    threads: Annotated[int, typer.Option(min=1, max=MAX_THREADS, help="CPU threads")] = 2,
    out: Annotated[Path, typer.Option(help="where to write the JSON report")] = Path("bench.json"),
    json_out: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
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
    write_json(out, report)
    typer.echo(json.dumps(report) if json_out else format_bench(report))


ExportFormat = Enum("ExportFormat", [(name, name) for name in FORMATS], type=str)  # export/__init__.py


@app.command()
@user_errors
def export(
    checkpoint: Annotated[Path, typer.Argument(help="checkpoint folder")] = DEFAULT_CHECKPOINT,
    format: Annotated[ExportFormat, typer.Option("--format", help="model format: " + "; ".join(
        f"{name}: {about}" for name, about in FORMATS.items()))] = ExportFormat.onnx,
    out: Annotated[Path, typer.Option(help="model file; its labels, vocabulary and tokenizer go to the same "
                                      "name with .json")] = Path("model.onnx"),
    force: Annotated[bool, typer.Option("--force", help="replace --out and its .json if they exist "
                                        "(regular files only)")] = False,
) -> None:
    """Write the checkpoint as a model that runs without lstmcli: ONNX, (ids, lengths) -> logits, with
    dynamic batch and sequence axes, plus a JSON of labels, vocabulary, tokenizer rules and cut."""
    from lstmcli import api
    model, meta = api.export(checkpoint, out, format.value, force)
    typer.echo(str(model))
    typer.echo(f"labels, vocabulary and tokenizer: {meta}", err=True)


@app.command()
@user_errors
def plot(
    run_dir: Annotated[Path, typer.Argument(help="run folder")] = Path("runs/latest"),
) -> None:
    """Redraw a run's learning_curves.png and confusion_matrix.png from its metrics.json (any run, also
    one made before lstmcli drew them, or one still in progress); prints the files."""
    from lstmcli.evaluation.plots import plot_run
    for path in plot_run(run_dir):
        typer.echo(str(path))


@app.command("datasets")
@user_errors
def datasets_(
    json_out: Annotated[bool, typer.Option("--json", help="one JSON object per dataset")] = False,
) -> None:
    """The built-in datasets: name, classes, what they hold, and the upstream files (LSTMCLI_MIRROR
    replaces their host with a folder or URL of your own)."""
    from lstmcli.data.registry import REGISTRY
    for ds in REGISTRY.values():
        files = {role: {"name": f.name, "url": f.url, "md5": f.md5} for role, f in ds.files.items()}
        if json_out:
            typer.echo(json.dumps({"name": ds.name, "labels": list(ds.label_names), "about": ds.about,
                                   "files": files}))
        else:
            typer.echo(f"{ds.name}: {', '.join(ds.label_names)}; {ds.about}")
            for f in ds.files.values():
                typer.echo(f"  {f.url} (md5 {f.md5})")


def main() -> None:
    """The console entry point (exits.run: one-line errors, exit codes, no interpreter teardown)."""
    run(app)
