"""lstmcli: train, evaluate and use recurrent text classifiers, from the command line or from Python.

    import lstmcli
    clf = lstmcli.load("runs/latest/best")
    clf.predict(["text", ...], top_k=2)

`train`, `resume`, `evaluate`, `calibrate`, `load`, `export`, `tune_process` and `log_to_stderr` are
lstmcli.api's (see there); they are imported on first use, so that `import lstmcli` (and the CLI's
start-up) does not pay for torch until it is needed. Importing or loading never changes a process-wide
setting.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

__version__ = "0.2.0"
__all__ = ["train", "resume", "evaluate", "calibrate", "load", "export", "tune_process", "log_to_stderr",
           "Classifier", "Config"]
_API = __all__[:8]

# a library's loggers say nothing until the program configures logging (or calls log_to_stderr): without
# a handler of its own, Python's last-resort handler would print lstmcli's warnings anyway
logging.getLogger("lstmcli").addHandler(logging.NullHandler())

if TYPE_CHECKING:
    from lstmcli.api import calibrate, evaluate, export, load, log_to_stderr, resume, train, tune_process
    from lstmcli.config import Config
    from lstmcli.inference.predict import Classifier


def __getattr__(name: str):
    if name in _API:
        from lstmcli import api
        return getattr(api, name)
    if name == "Classifier":
        from lstmcli.inference.predict import Classifier
        return Classifier
    if name == "Config":
        from lstmcli.config import Config
        return Config
    raise AttributeError(f"module 'lstmcli' has no attribute {name!r}")
