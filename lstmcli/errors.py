"""User-facing errors: each carries the one line the CLI prints and the exit code it ends with."""

from __future__ import annotations

EXIT_OK, EXIT_CHECK_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_PIPE = 141  # the reader of stdout went away: what a shell reports for a process ended by SIGPIPE


class LstmcliError(Exception):
    """An error the user can fix (bad input, missing data, bad config): printed as one line, exit 2."""

    exit_code = EXIT_USAGE


class DatasetError(LstmcliError):
    """A dataset could not be fetched, verified or read."""


class ConfigError(LstmcliError):
    """A config file or flag names an unknown key or gives a value of the wrong type."""


class CheckpointError(LstmcliError):
    """A folder is not a usable lstmcli checkpoint."""


class CheckFailed(LstmcliError):
    """A check the user asked for failed (e.g. `eval --fail-under`), or training diverged."""

    exit_code = EXIT_CHECK_FAILED


class PeerFailed(LstmcliError):
    """Under torchrun, another process of the launch died or stopped answering."""

    exit_code = EXIT_CHECK_FAILED


class Interrupted(LstmcliError):
    """Stopped by SIGINT/SIGTERM after saving what is needed to resume."""

    exit_code = EXIT_INTERRUPTED
