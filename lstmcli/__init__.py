"""lstmcli: train, evaluate and use recurrent text classifiers, from the command line or from Python.

    import lstmcli
    clf = lstmcli.load("runs/latest/best")
    clf.predict(["text", ...], top_k=2)

`train`, `resume`, `evaluate`, `calibrate`, `load` and `export` are lstmcli.api's (see there); they are
imported on first use, so that `import lstmcli` (and the CLI's start-up) does not pay for torch until it
is needed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"
__all__ = ["train", "resume", "evaluate", "calibrate", "load", "export", "Classifier", "Config"]

if TYPE_CHECKING:
    from .api import calibrate, evaluate, export, load, resume, train
    from .config import Config
    from .predict import Classifier


def __getattr__(name: str):
    if name in ("train", "resume", "evaluate", "calibrate", "load", "export"):
        from . import api
        return getattr(api, name)
    if name == "Classifier":
        from .predict import Classifier
        return Classifier
    if name == "Config":
        from .config import Config
        return Config
    raise AttributeError(f"module 'lstmcli' has no attribute {name!r}")
