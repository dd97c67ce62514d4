"""`lstmcli tune`: a base config and a search space in, a tune folder out (lstmcli/tuning/)."""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from lstmcli.cli.options import ProgressOpt, Quiet, default_text, json_option, with_config_options
from lstmcli.errors import LstmcliError
from lstmcli.exits import DEBUG, user_errors

# the lines of a tune's own modules; the trials' training lines are left to --debug (each trial's
# metrics.json keeps its epochs), and a warning every trial repeats is said once
SHOWN = ("lstmcli.tuning", "lstmcli.progress", "lstmcli.cli")


class _TuneLines(logging.Filter):
    """What of the `lstmcli` loggers a tune shows on stderr (see SHOWN)."""

    def __init__(self) -> None:
        super().__init__()
        self.said: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            message = record.getMessage()
            first = message not in self.said
            self.said.add(message)
            return first
        return DEBUG["on"] or record.name.startswith(SHOWN)


@contextlib.contextmanager
def _tune_logging():
    """The filter on lstmcli's stderr handlers, and Optuna's own log lines off (its failed-trial
    warnings carry tracebacks; lstmcli says how each trial ended), for the command's duration."""
    import optuna

    handlers = logging.getLogger("lstmcli").handlers
    lines, verbosity = _TuneLines(), optuna.logging.get_verbosity()
    for handler in handlers:
        handler.addFilter(lines)
    optuna.logging.set_verbosity(optuna.logging.DEBUG if DEBUG["on"] else optuna.logging.ERROR)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(verbosity)
        for handler in handlers:
            handler.removeFilter(lines)


def _out_is_the_tune_folder(fn):
    """--out names the tune folder here (each trial's run folder is TUNE_DIR/trials/NNNN)."""
    sig = inspect.signature(fn)
    out = typer.Option(help="the tune folder " + default_text("runs/tune-<dataset>-<timestamp>"),
                       rich_help_panel="train options", show_default=False)
    params = [p.replace(annotation=Annotated[str | None, out]) if p.name == "out" else p
              for p in sig.parameters.values()]
    fn.__signature__ = sig.replace(parameters=params)
    fn.__annotations__ = {p.name: p.annotation for p in params}
    return fn


@_out_is_the_tune_folder
@with_config_options
@user_errors
def tune(
    config: Annotated[str | None, typer.Option(
        help="a TOML config file, or the name of a shipped one: the base of every trial, its "
             + escape("[tune]") + " table the search space (docs/tuning.md); flags fix a field for every "
             "trial")] = None,
    budget: Annotated[str | None, typer.Option(
        help="wall-clock time for the search, e.g. 90s, 20m, 1.5h (a plain number: seconds); a trial "
             "still running when it ends is stopped and counted as pruned")] = None,
    trials: Annotated[int | None, typer.Option(
        min=1, help="stop once the study has this many finished (complete or pruned) trials, counted "
                    "over every process that runs it")] = None,
    resume: Annotated[Path | None, typer.Option(
        help="continue a stopped tune folder with what is left of its budget")] = None,
    storage: Annotated[str | None, typer.Option(
        help="the study's database: any URL Optuna takes (sqlite:///FILE, postgresql://USER@HOST/DB, "
             "mysql://...) " + default_text("TUNE_DIR/study.db"))] = None,
    study: Annotated[str | None, typer.Option(
        help="the study's name in the database; processes that give the same --storage and --study run "
             "one study " + default_text("the tune folder's name"))] = None,
    sampler_seed: Annotated[int | None, typer.Option(
        min=0, help="seed of the TPE sampler; give each process of a shared study its own "
                    + default_text("the config's seed"))] = None,
    quiet: Quiet = False,
    progress: ProgressOpt = None,
    json_out: json_option("the summary (summary.json)") = False,
    force: Annotated[bool, typer.Option("--force", help="tune into an --out folder that is not empty (an "
                                        "earlier tune's trials and study.db are removed)")] = False,
    **fields: Any,
) -> None:
    """Search a config's hyperparameters with Optuna; writes a tune folder (best.toml, trials.csv,
    pictures) and prints its path.

    Each trial trains a run folder (TUNE_DIR/trials/NNNN) with values the TPE sampler picks from the
    search space; a trial whose validation score after an epoch falls behind the median of earlier
    trials is pruned. Trials are chosen on the validation split; the test split is evaluated once, for
    the best trial, at the end. Needs the tune extra: pip install 'lstmcli\\[tune]'. Ctrl-C stops at the
    next batch and exits 130; `--resume TUNE_DIR` continues, running the stopped trial on from where it
    stopped.
    """
    from lstmcli.tuning import study as tuning
    tuning.require()
    from lstmcli import api
    api.tune_process()
    with _tune_logging():
        if resume is not None:
            _only_resume_options(config, budget, trials, study, sampler_seed, force, fields)
            folder, summary = resume, tuning.resume(resume, storage)
        else:
            from lstmcli.tuning.settings import default_folder, new_settings
            settings, base = new_settings(config, fields, budget, trials, storage, study, sampler_seed)
            folder = Path(fields["out"]) if fields.get("out") else default_folder(base)
            summary = tuning.tune(settings, folder, force)
    typer.echo(json.dumps(summary) if json_out else str(folder))


def _only_resume_options(config, budget, trials, study, sampler_seed, force, fields: dict) -> None:
    """--resume continues a tune with its own settings: refuse any other (--storage aside, which gives
    a database password tune.json does not keep)."""
    given = sorted(k for k, v in fields.items() if v is not None)
    given += [name for name, value in (("config", config), ("budget", budget), ("trials", trials),
                                       ("study", study), ("sampler_seed", sampler_seed)) if value is not None]
    given += ["force"] if force else []
    if given:
        flag = given[0].replace("_", "-")
        raise LstmcliError(f"--resume continues a tune with its own settings; drop --{flag}")
