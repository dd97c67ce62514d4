"""Optional TensorBoard event files of a run (`report_to = "tensorboard"`, the `tensorboard` extra).

tensorboardX writes the standard event files without TensorBoard's own server stack, and is imported
only when asked for. Written under RUN_DIR/tensorboard, one event file per process: per step the batch's
loss and accuracy, the learning rate and the epoch's tokens/s so far; per epoch the train and validation
metrics; once the run has finished, best/'s test metrics (test/*) and the validation accuracy that chose
best/ (best/val_accuracy) at the last epoch, and the run's config on the HParams tab, linked to those
metrics. Viewing them needs TensorBoard itself, which the `tensorboard` extra does not install (the
`tensorboard-viewer` extra does): the finished run says so in one log line, with the command.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
from enum import Enum
from pathlib import Path

from lstmcli.config import Config, to_dict
from lstmcli.errors import LstmcliError
from lstmcli.training.state import EpochProgress

log = logging.getLogger(__name__)

EXTRA_HINT = "pip install 'lstmcli[tensorboard]'"
VIEWER_HINT = "pip install tensorboard && tensorboard --logdir"
TEST_METRICS = ("accuracy", "loss", "macro_f1", "roc_auc")  # roc_auc: with two labels only


def require() -> None:
    """Fail with one line (exit 2) when the extra is not installed, before any work starts."""
    try:
        import tensorboardX  # noqa: F401
    except ImportError:
        raise LstmcliError(f"report_to 'tensorboard' needs the tensorboardX package: {EXTRA_HINT}") from None


def flat_hparams(config: dict, prefix: str = "") -> dict[str, bool | int | float | str]:
    """`config` (a saved config's sections) as {"section.key": value} in the types the HParams plugin
    takes: booleans, numbers and strings as they are, enums as their value, anything else (None, lists)
    as its JSON text, as config.json shows it."""
    flat: dict[str, bool | int | float | str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat |= flat_hparams(value, f"{name}.")
        elif isinstance(value, Enum):  # before str: the config's enums are str enums
            flat[name] = value.value
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        else:
            flat[name] = json.dumps(value)
    return flat


class TensorBoard:
    """Rank 0's event writer of a run."""

    def __init__(self, run_dir: Path, steps_done: int = 0):
        """Open the writer of a run that has taken `steps_done` train steps (a resumed run: more than 0)."""
        from tensorboardX import SummaryWriter

        self.folder = Path(run_dir) / "tensorboard"
        # a resumed run purges what the stopped one wrote after its last saved step: TensorBoard hides
        # every event from purge_step on, and the resumed run's first step is steps_done + 1
        # the file name holds the time in seconds and the host: the pid keeps a resumed run started
        # within the same second as the stopped one from writing into its file
        self.writer = SummaryWriter(str(self.folder), purge_step=steps_done + 1 if steps_done else None,
                                    flush_secs=30, filename_suffix=f".{os.getpid()}")

    def on_step(self, epoch: int, steps_per_epoch: int, optimizer, p: EpochProgress):
        """A train_one_epoch step callback for `epoch`, starting from the totals `p` holds now."""
        last = [p.loss_sum, p.correct, p.seen]

        def record(step: int, p: EpochProgress) -> None:
            global_step = (epoch - 1) * steps_per_epoch + step
            seen = p.seen - last[2]
            if seen:
                self.writer.add_scalar("step/train_loss", (p.loss_sum - last[0]) / seen, global_step)
                self.writer.add_scalar("step/train_accuracy", (p.correct - last[1]) / seen, global_step)
            self.writer.add_scalar("step/lr", optimizer.param_groups[0]["lr"], global_step)
            self.writer.add_scalar("step/tokens_per_s", p.tokens / max(p.seconds, 1e-9), global_step)
            last[:] = [p.loss_sum, p.correct, p.seen]
        return record

    def on_epoch(self, stats: dict) -> None:
        """The epoch's history entry `stats` as epoch/* scalars at its epoch."""
        for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_macro_f1", "lr",
                    "tokens_per_s", "padding"):
            if key in stats:
                self.writer.add_scalar(f"epoch/{key}", stats[key], stats["epoch"])
        self.writer.flush()

    def on_finish(self, cfg: Config, metrics: dict) -> None:
        """The finished run (`metrics` as metrics.json holds them, with "test"): its final scalars, its
        config `cfg` on the HParams tab, and one log line on where the events are and how to view them.

        Called once per run, after metrics.json has its test entry: a run with one cannot be resumed, so
        the hparams summaries never repeat in a later event file."""
        tags = self._final_scalars(metrics)
        self._write_hparams(flat_hparams(to_dict(cfg)), tags)
        self.writer.flush()
        folder = shlex.quote(str(self.folder))
        log.info(f"TensorBoard events in {self.folder}; view them with: {VIEWER_HINT} {folder}")

    def _final_scalars(self, metrics: dict) -> list[str]:
        """Write best/'s test metrics and the validation accuracy that chose best/ at the last epoch
        trained, where the epoch/* scalars end; returns their tags."""
        history = metrics["history"]
        epoch = history[-1]["epoch"] if history else 0
        values = {f"test/{k}": metrics["test"].get(k) for k in TEST_METRICS}
        best = [h for h in history if h["epoch"] == metrics.get("best_epoch")]
        values["best/val_accuracy"] = best[0]["val_accuracy"] if best else None
        tags = []
        for tag, value in values.items():
            if value is not None:  # (roc_auc: None with one class in the test split)
                self.writer.add_scalar(tag, value, epoch)
                tags.append(tag)
        return tags

    def _write_hparams(self, hparams: dict, metric_tags: list[str]) -> None:
        """The HParams plugin's three summaries (experiment, session start, session end) in this run's
        own event file, its metrics the scalars `metric_tags` of this folder. add_hparams would write
        them, with copies of the metrics, into a sub-run folder of their own: two runs for one."""
        from tensorboardX.summary import hparams as hparams_summaries

        for summary in hparams_summaries(hparams, dict.fromkeys(metric_tags)):
            self.writer.file_writer.add_summary(summary)

    def close(self) -> None:
        """Flush and close the event file (a second close does nothing)."""
        self.writer.close()
