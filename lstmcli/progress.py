"""What a person sees of long work: a bar on stderr when it is a terminal, log lines otherwise.

Everything that can take more than a couple of seconds (extracting, reading and tokenizing a dataset,
an epoch, evaluating, calibrating, predicting a stream, exporting) reports through `Progress` or
`track`. The bar is drawn only while the `lstmcli` loggers log at info (not under --quiet; a program
that imports lstmcli and has not configured logging sees nothing) and stderr is a terminal, unless the
command line forced it with --progress/--no-progress (`force_bars`). Where no bar is drawn, the same
work logs a line every `LINE_EVERY` seconds and one when it ends, so a CI log or a program that turned
logging on (`lstmcli.log_to_stderr()`) still sees it move. Nothing here ever writes to stdout.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

log = logging.getLogger("lstmcli.progress")
T = TypeVar("T")
LINE_EVERY = 30.0  # seconds between log lines where no bar is drawn: often enough to show life
_FORCED: dict[str, bool | None] = {"bars": None}  # the command line's --progress/--no-progress


def force_bars(on: bool | None) -> None:
    """--progress (True) draws bars on any stderr, --no-progress (False) never; None: on a terminal."""
    _FORCED["bars"] = on


def bars_shown() -> bool:
    """Whether a bar is drawn now: info is logged, and stderr is a terminal (or --progress)."""
    if not logging.getLogger("lstmcli").isEnabledFor(logging.INFO):
        return False
    forced = _FORCED["bars"]
    return forced if forced is not None else sys.stderr.isatty()


def _count(n: float, unit: str) -> str:
    return f"{n:,.0f} {unit}" if unit != "B" else f"{n / 2**20:,.1f} MiB"


class Progress:
    """Progress of one piece of work of `total` units (None: not known in advance).

    As a context manager: `update(n)` as units get done; on exit a bar is removed and, where no bar
    was drawn, one line says what was done and how fast (`quiet_end` leaves that to the caller, and
    `hidden` work shows nothing at all)."""

    def __init__(self, desc: str, total: int | None = None, unit: str = "texts", quiet_end: bool = False,
                 hidden: bool = False):
        self.desc, self.total, self.unit = desc, total, unit
        self.quiet_end, self.hidden = quiet_end or hidden, hidden
        self.done = 0
        self.start = self.last_line = time.perf_counter()
        self.bar = None
        if bars_shown() and not hidden:
            from tqdm import tqdm  # imported only where a bar is drawn

            self.bar = tqdm(total=total, desc=desc, unit=unit if unit == "B" else f" {unit}",
                            unit_scale=unit == "B",
                            leave=False, file=sys.stderr, dynamic_ncols=True)

    def update(self, n: int = 1, **postfix: str) -> None:
        """`n` more units are done; `postfix` (e.g. loss="0.41") shows beside the bar."""
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)
            return
        now = time.perf_counter()
        if now - self.last_line >= LINE_EVERY and not self.hidden and log.isEnabledFor(logging.INFO):
            self.last_line = now
            log.info(f"{self.desc}: {self._so_far()}")

    def _so_far(self) -> str:
        if self.unit == "B":
            return _count(self.done, "B") + (f" of {_count(self.total, 'B')}" if self.total else "")
        return f"{self.done:,}" + (f"/{self.total:,}" if self.total else "") + f" {self.unit}"

    def close(self) -> float:
        """End the bar (or log the closing line); returns the seconds the work took."""
        seconds = time.perf_counter() - self.start
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif not self.quiet_end and log.isEnabledFor(logging.INFO) and seconds >= 1.0:
            rate = self.done / max(seconds, 1e-9)
            log.info(f"{self.desc}: {self._so_far()} in {seconds:.1f} s ({_count(rate, self.unit)}/s)")
        return seconds

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is not None:
            self.quiet_end = True  # the error says what happened; no line of work "done"
        self.close()


def track(items: Iterable[T], desc: str, total: int | None = None, unit: str = "texts",
          weight=None) -> Iterator[T]:
    """`items`, with a Progress that advances by one per item (or by `weight(item)`)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with Progress(desc, total, unit) as p:
        for item in items:
            yield item
            p.update(1 if weight is None else weight(item))
