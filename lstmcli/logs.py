"""Where the library's log records go when lstmcli runs as a command: stderr, one line each.

Library modules log through `logging.getLogger(__name__)` and never print; the command line calls
`setup_logging` once per command with its --quiet and --debug. Used as a library, lstmcli leaves logging
to the program that imports it.
"""

from __future__ import annotations

import logging
import sys


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
