"""What a run needs to continue exactly where it stopped, and the Ctrl-C / SIGTERM handling that saves it.

A stopped run's `last/` checkpoint holds `trainer_state.pt` beside the weights: optimizer and scheduler
state, the RNG states, the epoch and how many of its batches are done (the batch order itself is a
pure function of (seed, epoch), so it is recomputed, not stored), the running totals of that epoch,
and the model-selection bookkeeping. It is loaded with `weights_only=True`: tensors and plain values
only, never code.
"""

from __future__ import annotations

import dataclasses
import math
import signal
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lstmcli.checkpoint import STATE_FILE
from lstmcli.errors import CheckpointError


@dataclass
class EpochProgress:
    """Running totals of the epoch in progress."""

    batches_done: int = 0
    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0
    tokens: int = 0
    seconds: float = 0.0


@dataclass
class TrainState:
    epoch: int = 1  # the epoch in progress, or the next one to start
    progress: EpochProgress = field(default_factory=EpochProgress)
    best_val: float = -math.inf
    best_epoch: int | None = None
    bad_epochs: int = 0  # epochs since the best one, for early stopping
    stopped_early: bool = False


def rng_state() -> dict:
    """This process's random number generators (dropout masks come from them)."""
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def state_dict(state: TrainState, optimizer, scheduler, rngs: list[dict]) -> dict:
    """What trainer_state.pt holds; `rngs` has every rank's rng_state() (one entry on one process)."""
    return {"train": dataclasses.asdict(state), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None, "rng": rngs[0],
            "rank_rng": rngs, "world_size": len(rngs)}


def load_state(folder: Path, optimizer, scheduler, rank: int = 0) -> tuple[TrainState, int]:
    """Restore optimizer, scheduler and this rank's RNG from `folder/trainer_state.pt`; returns the
    TrainState and the number of processes that saved it. A rank the save did not have (a resume with
    more processes) takes rank 0's generators."""
    path = Path(folder) / STATE_FILE
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        train = dict(blob["train"])
        state = TrainState(**{**train, "progress": EpochProgress(**train["progress"])})
        optimizer.load_state_dict(blob["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(blob["scheduler"])
        rngs = blob.get("rank_rng", [blob["rng"]])
        rng = rngs[rank] if rank < len(rngs) else rngs[0]
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
    except FileNotFoundError:
        raise CheckpointError(f"cannot resume: {path} is missing") from None
    except Exception as exc:  # unpickling refused, wrong keys or shapes: all mean a broken state file
        raise CheckpointError(f"cannot resume: {path} is not a usable trainer state "
                              f"({type(exc).__name__})") from None
    return state, len(rngs)


class GracefulStop:
    """While active, SIGINT and SIGTERM only set `requested`: the loop stops at the next batch boundary
    and saves. A second signal restores the default behaviour for an impatient user. A signal that
    came too late for the loop to act on (during the last epoch's validation) is raised again on leaving,
    to the handler before: it is never swallowed (`lstmcli tune` would otherwise run its next trial)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested: int | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        self.requested = signum
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def __enter__(self) -> GracefulStop:
        try:
            self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        except ValueError:  # not the main thread: signals cannot be caught here
            self._previous = {}
        return self

    def __exit__(self, exc_type, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        if self.requested is not None and exc_type is None and self._previous:
            signal.raise_signal(self.requested)  # (an exception leaving the block has acted on it)

    def __call__(self) -> bool:
        return self.requested is not None
