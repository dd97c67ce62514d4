"""Optional TensorBoard event files of a run (`report_to = "tensorboard"`, the `tensorboard` extra).

tensorboardX writes the standard event files without TensorBoard's own server stack, and is imported
only when asked for. Written under RUN_DIR/tensorboard: per step the batch's loss and accuracy, the
learning rate and the epoch's tokens/s so far; per epoch the train and validation metrics.
"""

from __future__ import annotations

import os
from pathlib import Path

from lstmcli.errors import LstmcliError
from lstmcli.training.state import EpochProgress

EXTRA_HINT = "pip install 'lstmcli[tensorboard]'"


def require() -> None:
    """Fail with one line (exit 2) when the extra is not installed, before any work starts."""
    try:
        import tensorboardX  # noqa: F401
    except ImportError:
        raise LstmcliError(f"report_to 'tensorboard' needs the tensorboardX package: {EXTRA_HINT}") from None


class TensorBoard:
    def __init__(self, run_dir: Path, first_step: int = 0):
        from tensorboardX import SummaryWriter

        # a resumed run purges what the stopped one wrote after its last saved step
        # the file name holds the time in seconds and the host: the pid keeps a resumed run started
        # within the same second as the stopped one from writing into its file
        self.writer = SummaryWriter(str(Path(run_dir) / "tensorboard"), purge_step=first_step or None,
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
        for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_macro_f1", "lr",
                    "tokens_per_s", "padding"):
            if key in stats:
                self.writer.add_scalar(f"epoch/{key}", stats[key], stats["epoch"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
