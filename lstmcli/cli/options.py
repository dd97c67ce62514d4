"""What every command shares: the command classes that render help one way, the options that mean the
same thing everywhere (--checkpoint, --device, --quiet, --json, --progress), and the `--<field>` options
that `train` builds from the config's fields.

Conventions, checked by tests/test_cli_conventions.py: a checkpoint is `--checkpoint/-c` and may be a
run folder (its best/); `--device` defaults to auto; defaults read `[default: x]`; flags show no type.
"""

from __future__ import annotations

import inspect
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from typer.core import TyperCommand, TyperGroup

from lstmcli.config import RENAMED, Device, env_data_dir, field_index
from lstmcli.data.registry import REGISTRY
from lstmcli.errors import EXIT_INTERRUPTED, EXIT_PIPE, EXIT_USAGE
from lstmcli.inference.backends import BACKENDS


def _plain_flags(params: list) -> list:
    """A flag takes no value: show no type for it (Typer draws `<bool>` beside every flag)."""
    for p in params:
        if getattr(p, "is_flag", False):
            p.metavar = ""
    return params


class Command(TyperCommand):
    """Every lstmcli command: its flags show no `<bool>`."""

    def get_params(self, ctx):
        return _plain_flags(super().get_params(ctx))


class Group(TyperGroup):
    """The `lstmcli` group: commands in the order they were added (the tour's order), flags plain, and a
    usage error (an unknown option, a value out of range) one line on stderr and exit 2, as every other
    error a user can cause, instead of Typer's box."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except Exception as exc:  # Typer's vendored click classes are not importable by a stable name
            if type(exc).__name__ == "Abort":  # Ctrl-C or end of input at a prompt: as an interrupt
                sys.exit(EXIT_INTERRUPTED)
            if not hasattr(exc, "format_message"):
                raise
            where = getattr(getattr(exc, "ctx", None), "command_path", None) or prog_name or "lstmcli"
            message = " ".join(exc.format_message().split())
            if not message:  # `lstmcli` alone: the help it printed is the answer
                sys.exit(getattr(exc, "exit_code", EXIT_USAGE))
            print(f"lstmcli: error: {message} (see '{where} --help')", file=sys.stderr)
            sys.exit(getattr(exc, "exit_code", EXIT_USAGE))
        except BrokenPipeError:  # `lstmcli --help | head -1`: the reader has what it wanted
            sys.exit(EXIT_PIPE)
        sys.exit(code if isinstance(code, int) else 0)

    def get_params(self, ctx):
        return _plain_flags(super().get_params(ctx))

    def list_commands(self, ctx):
        return list(self.commands)


def default_text(value, flag: str = "") -> str:
    """A default as Typer shows its own, `[default: x]` (escaped: help text is rich markup); a flag's as
    Typer shows a flag's (`no-bidirectional`); nothing for an empty one (the help says what it means)."""
    shown = value.value if isinstance(value, Enum) else value
    if isinstance(shown, bool) and flag:
        shown = flag if shown else f"no-{flag}"
    return escape(f"[default: {shown}]") if shown not in ("", None) else ""


DEFAULT_CHECKPOINT = Path("runs/latest/best")
Checkpoint = Annotated[Path, typer.Option(
    "--checkpoint", "-c", help="checkpoint folder, or a run folder (meaning its best/)")]
Backend = Enum("Backend", [(name, name) for name in BACKENDS], type=str)  # inference/backends.py
BackendOpt = Annotated[Backend, typer.Option(help="what runs the model: " + "; ".join(
    f"{name}: {about}" for name, about in BACKENDS.items()))]
DeviceOpt = Annotated[Device, typer.Option(
    help="cpu, cuda, mps, or auto: a GPU when there is one, else the CPU")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="warnings only: no progress or log lines")]
ProgressOpt = Annotated[bool | None, typer.Option(
    "--progress/--no-progress", show_default=False,
    help="draw progress bars on stderr even off a terminal / never " + default_text("on a terminal"))]


def json_option(what: str):
    """The --json flag of a command, saying what it prints."""
    return Annotated[bool, typer.Option("--json", help=f"print {what} as JSON")]


def data_dir_help() -> str:
    """--data-dir's help, with the default this process would use."""
    env = env_data_dir()
    where = f"$LSTMCLI_DATA_DIR = {env}" if env else "$LSTMCLI_DATA_DIR when set, else the one the " \
                                                   "checkpoint was trained from"
    return f"dataset cache folder {escape(f'[default: {where}]')}"


def with_config_options(fn):
    """Add one `--<field>` option per config field (help from the dataclass) to a `**fields` command."""
    sig = inspect.signature(fn, eval_str=True)
    params = [p for p in sig.parameters.values() if p.kind != p.VAR_KEYWORD]
    extra = {"dataset": f"; built in: {', '.join(REGISTRY)}"}
    env = env_data_dir()
    for name, info in field_index().items():
        default = env if name == "data_dir" and env else info.default
        note = " (from $LSTMCLI_DATA_DIR)" if name == "data_dir" and env else ""
        shown = default_text(default, name.replace("_", "-"))
        option = typer.Option(help=f"{escape(info.help)}{extra.get(name, '')} {shown}{note}".rstrip(),
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
