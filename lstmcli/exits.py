"""How a command runs and ends: its log lines go to stderr, an error a user can cause becomes one line
on stderr and its exit code, signals end it the same way, and the process leaves without the
interpreter's teardown.

Library modules log through `logging.getLogger(__name__)` and never print; `user_errors` calls
`setup_logging` once per command with its --quiet and --debug. Used as a library, lstmcli leaves
logging to the program that imports it.

Exit codes: 0 success, 1 a check failed, 2 bad usage or input, 130 interrupted, 141 stdout closed
by its reader. `--debug` (DEBUG) adds the traceback of an error.
"""

import contextlib
import functools
import logging
import os
import signal
import sys
import traceback
from collections.abc import Callable

import typer

from lstmcli.errors import EXIT_INTERRUPTED, EXIT_PIPE, EXIT_USAGE, LstmcliError
from lstmcli.progress import force_bars

DEBUG = {"on": False}


class _Stderr(logging.Handler):
    """Writes to whatever sys.stderr is when a record comes (CliRunner swaps it for each invocation).
    Info lines go out as they are; warnings and above begin with "lstmcli: "."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            prefix = "lstmcli: " if record.levelno >= logging.WARNING else ""
            sys.stderr.write(f"{prefix}{message}\n")
            sys.stderr.flush()
        except Exception:  # noqa: BLE001 (logging's own rule: a handler never raises)
            self.handleError(record)


def setup_logging(quiet: bool = False, debug: bool = False) -> None:
    """Send the `lstmcli` loggers to stderr at info, warnings only when `quiet`, everything when `debug`."""
    logger = logging.getLogger("lstmcli")
    if not any(isinstance(h, _Stderr) for h in logger.handlers):
        logger.addHandler(_Stderr())
    logger.setLevel(logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO)


def fail(message: str, code: int) -> None:
    if DEBUG["on"]:
        traceback.print_exc()
    typer.echo(f"lstmcli: error: {message}", err=True)
    raise typer.Exit(code)


def _sigterm(signum, frame):
    raise KeyboardInterrupt  # outside training's own handler, SIGTERM ends like Ctrl-C: exit 130


def user_errors(fn):
    """Turn user-caused errors into one line on stderr and their exit code; Ctrl-C into 130."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        setup_logging(quiet=bool(kwargs.get("quiet")), debug=DEBUG["on"])
        force_bars(kwargs.get("progress"))
        previous = None
        with contextlib.suppress(ValueError):  # not the main thread (an embedding program's worker)
            previous = signal.signal(signal.SIGTERM, _sigterm)
        try:
            return fn(*args, **kwargs)
        except LstmcliError as exc:
            fail(str(exc), exc.exit_code)
        except KeyboardInterrupt:
            fail("interrupted", EXIT_INTERRUPTED)
        except BrokenPipeError:  # `lstmcli predict - | head -1`: the reader has what it wanted; stop quietly
            raise typer.Exit(EXIT_PIPE) from None
        except OSError as exc:  # a folder that cannot be written, a full disk, ...
            fail(f"{exc.filename}: {exc.strerror}" if exc.filename else str(exc), EXIT_USAGE)
        finally:  # the command is over: a SIGTERM from now on (torchrun ending a launch) is no error of ours
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
    return wrapper


def _exit_status(code: int | str | None) -> int:
    """SystemExit's code as the process's: None is 0; sys.exit("message") prints it and exits 1, as
    Python does."""
    if code is None:
        return 0
    if not isinstance(code, int):
        print(code, file=sys.stderr)
        return 1
    return code


def _leave_on_signal(code: int) -> None:
    """From now on SIGINT and SIGTERM end the process at once with exit code `code`."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: os._exit(code))


def run(command: Callable[[], int]) -> None:
    """Run `command` (it returns the exit code), flush the output, and leave without the interpreter's
    teardown. Tearing torch down after inference (its allocators, thread pools, thousands of modules)
    costs a large share of a one-text `predict` (benchmarks/RESULTS.md, "Design choices"). Every
    command has closed (and renamed into place) what it wrote by the time it returns, so once stdout
    and stderr are flushed there is nothing left for the teardown to do. An exception that escapes a
    command still ends the usual way.

    Once the command has returned, SIGINT and SIGTERM end the process with the command's own exit code: one
    that arrives now (torchrun ends the other ranks of a launch whose rank failed) must not turn a finished
    command into a traceback, and a flush that blocks on a stalled pipe can still be ended. (A signal mask
    would not do: it holds for this thread only, and torch's threads would take the signal.)"""
    try:
        try:
            code = command()
        except SystemExit as exc:
            code = _exit_status(exc.code)
        _leave_on_signal(code)
    except KeyboardInterrupt:  # Ctrl-C in the moment between the command's end and the line above
        code = EXIT_INTERRUPTED
        _leave_on_signal(code)
    try:  # click.echo flushes as it writes; this covers anything written another way
        sys.stdout.flush()
        sys.stderr.flush()
    except BrokenPipeError:
        code = code or EXIT_PIPE
    except OSError:  # e.g. a full disk under a redirected stdout
        code = code or EXIT_USAGE
    os._exit(code)
