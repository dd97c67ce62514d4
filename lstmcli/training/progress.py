"""What a person sees of an epoch in progress: a bar on a terminal, a log line every `log_every` steps."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

from lstmcli.progress import Progress, bars_shown
from lstmcli.training.state import EpochProgress

log = logging.getLogger(__name__)
StepCallback = Callable[[int, EpochProgress], None]


def chain(*callbacks: StepCallback) -> StepCallback:
    """One step callback that calls each of `callbacks` in turn."""
    def call(step: int, p: EpochProgress) -> None:
        for callback in callbacks:
            callback(step, p)
    return call


def epoch_line(s: dict, epochs: int, improved: bool) -> str:
    """The log line of a finished epoch, from its history entry."""
    # a multi-label run: subset accuracy, and the micro-F1 that picks its best/
    val = f"micro-F1 {s['val_micro_f1']:.4f}" if "val_micro_f1" in s else f"acc {s['val_accuracy']:.4f}"
    return (f"epoch {s['epoch']}/{epochs}: train loss {s['train_loss']:.4f} acc {s['train_accuracy']:.4f}"
            f" | val loss {s['val_loss']:.4f} {val} | {s['seconds']:.1f}s "
            f"{s['tokens_per_s']:,.0f} tok/s, padding {s['padding']:.1%}{'  *best' if improved else ''}")


class EpochReporter:
    """A `train_one_epoch` step callback: lstmcli/progress.py's bar (a terminal, not --quiet) with the
    running loss, accuracy and tokens/s; and a log line every `log_every` steps, for CI logs."""

    def __init__(self, epoch: int, epochs: int, total: int, done: int, log_every: int,
                 accuracy: bool = True):
        # accuracy False (a language model): the running perplexity instead of loss and accuracy
        self.epoch, self.total, self.log_every, self.accuracy = epoch, total, log_every, accuracy
        # the epoch's own line (epoch_line) closes it; `log_every` decides the lines in between
        self.bar = Progress(f"epoch {epoch}/{epochs}", total, unit="steps", quiet_end=True,
                            hidden=not bars_shown())
        self.bar.update(done)

    def __call__(self, step: int, p: EpochProgress) -> None:
        rate = p.tokens / max(p.seconds, 1e-9)
        loss = p.loss_sum / max(p.seen, 1)
        shown = {"loss": f"{loss:.4f}", "acc": f"{p.correct / max(p.seen, 1):.4f}"} if self.accuracy else \
            {"perplexity": f"{math.exp(min(loss, 700)):.1f}"}
        self.bar.update(1, **shown, tok_s=f"{rate:,.0f}")
        if self.log_every and step % self.log_every == 0:
            what = " ".join(f"{k} {v}" for k, v in shown.items())
            log.info(f"epoch {self.epoch} step {step}/{self.total}: {what}, {rate:,.0f} tok/s")

    def __enter__(self) -> EpochReporter:
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()
