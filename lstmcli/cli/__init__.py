"""The command line: thin commands that resolve options and call one library function each.

One module per family of commands (train; pretrain; tune; evaluate: eval, calibrate; predict; tools:
bench, export, plot; info: datasets, configs, env), the options they share in options.py. Results go to
stdout, logs, progress and errors to stderr. How a command ends (one line and an exit code for an error
a user can cause, signals, the process's exit) is exits.py's; a usage error (an unknown option, a bad
value) ends the same way (options.Group).
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Annotated

import typer

from lstmcli import __version__
from lstmcli.cli import evaluate, info, predict, pretrain, serve, tools, train, tune
from lstmcli.cli.options import Command, Group
from lstmcli.exits import DEBUG, run

EXIT_CODES = ("Exit codes: 0 success, 1 a check failed, 2 bad usage or input, 130 interrupted, "
              "141 stdout closed by its reader.")
app = typer.Typer(
    cls=Group, no_args_is_help=True, add_completion=True, pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    help=f"Train, evaluate and use recurrent text classifiers (LSTM, GRU, RNN).\n\n{EXIT_CODES}")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"lstmcli {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    debug: Annotated[bool, typer.Option("--debug", help="debug logs, and the traceback of an error")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="print lstmcli's version and exit")] = False,
) -> None:
    DEBUG["on"] = debug


for name, fn in [("train", train.train), ("pretrain", pretrain.pretrain), ("tune", tune.tune),
                 ("eval", evaluate.eval_),
                 ("predict", predict.predict), ("calibrate", evaluate.calibrate), ("export", tools.export),
                 ("serve", serve.serve), ("plot", tools.plot),
                 ("bench", tools.bench), ("datasets", info.datasets), ("configs", info.configs),
                 ("env", info.env)]:
    # the list of commands shows each one's first sentence, on one line
    summary = " ".join(fn.__doc__.split("\n\n")[0].split()).split(". ")[0].rstrip(".") + "."
    app.command(name, cls=Command, short_help=summary)(fn)


def invoke(args: list[str] | None = None) -> int:
    """Run one command line; returns its exit code (Group.main: usage errors are one line too)."""
    from typer.main import get_command
    if not DEBUG["on"] and "--debug" not in (args if args is not None else sys.argv):
        # a FutureWarning of a library lstmcli calls (torch's DDP on every rank, ...) is for lstmcli's
        # developers, not for the user of a released command; --debug shows them
        warnings.filterwarnings("ignore", category=FutureWarning)
    get_command(app).main(args, prog_name="lstmcli")
    return 0  # (main ends in SystemExit, which exits.run turns into the exit code)


def main() -> None:
    """The console entry point (exits.run: exit codes, no interpreter teardown). A standard stream the
    shell closed (`>&-`, `<&-`) is None in Python: it becomes /dev/null (writes go nowhere, stdin is
    empty) instead of a traceback; `predict -o FILE x >&-` has no use for stdout."""
    for name, mode in (("stdin", "r"), ("stdout", "w"), ("stderr", "w")):
        if getattr(sys, name) is None:
            setattr(sys, name, open(os.devnull, mode, encoding="utf-8"))  # noqa: SIM115 (for the process)
    run(invoke)
