"""Evaluating a model: loss and classification metrics on every example of a split, and `lstmcli eval`
(a checkpoint on a split of its dataset, or on every row of another file)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import torch.nn.functional as F

from . import checkpoint
from .batching import Cut, collate, sorted_batches, truncated_lengths
from .device import resolve_device
from .distributed import SINGLE, Dist, sum_
from .errors import LstmcliError
from .fsutil import write_json
from .metrics import confusion_matrix, report_from_confusion
from .prepare import EncodedSplit, encode_file, prepare


@torch.no_grad()
def evaluate(model, split: EncodedSplit, device: torch.device, batch_size: int, cut: Cut,
             label_names: list[str], dist: Dist = SINGLE) -> dict:
    """Loss and classification metrics of `model` on every example of `split`.

    Under torchrun each rank runs every world_size-th of the same length-sorted batches and the counts
    are summed, so the confusion matrix is the single process's and the loss differs only by the order
    of its float sum."""
    model.eval()
    k = len(label_names)
    confusion, loss_sum = torch.zeros(k, k, dtype=torch.int64), 0.0
    batches = sorted_batches(truncated_lengths(split, cut.length), batch_size)
    for indices in batches[dist.rank::dist.world_size]:
        batch = collate(split, indices, cut).to(device)
        logits = model(batch.ids, batch.lengths)
        loss_sum += float(F.cross_entropy(logits, batch.labels, reduction="sum"))
        confusion += confusion_matrix(batch.labels.cpu(), logits.argmax(1).cpu(), k)
    confusion = sum_(dist, confusion)
    loss_sum = float(sum_(dist, torch.tensor([loss_sum], dtype=torch.float64)))
    return report_from_confusion(confusion, label_names, loss=loss_sum / max(len(split), 1))


def run_eval(checkpoint_dir: Path, split: str = "test", dataset: str | None = None,
             data_dir: str | None = None, batch_size: int | None = None, device: str = "auto",
             impl: str | None = None, precision: str | None = None) -> tuple[dict, Path]:
    """Evaluate `checkpoint_dir`; returns the report and the JSON file it was written to.

    With `dataset` a single file, every row of it is evaluated (`split` is then the file's stem);
    otherwise the split is carved exactly as in training, from the checkpoint's data settings, reading
    the data from `data_dir` (default: the folder the checkpoint was trained from).
    """
    dev = resolve_device(device)
    ck = checkpoint.load(checkpoint_dir, str(dev), impl, precision)
    data_cfg = dataclasses.replace(ck.config.data, data_dir=data_dir or ck.config.data.data_dir,
                                   dataset=dataset or ck.config.data.dataset)
    if dataset and Path(dataset).is_file():
        encoded, split = encode_file(Path(dataset), data_cfg, ck.vocab, ck.label_names), Path(dataset).stem
    else:
        encoded = prepare(data_cfg, vocab=ck.vocab, label_names=ck.label_names).splits[split]
    if len(encoded) == 0:
        raise LstmcliError(f"split '{split}' of {data_cfg.dataset} has no examples")
    report = evaluate(ck.model, encoded, dev, batch_size or ck.config.train.batch_size,
                      Cut.of(ck.config.data), ck.label_names)
    report = {"checkpoint": str(ck.path), "dataset": data_cfg.dataset, "split": split,
              "impl": ck.config.model.impl.value, "precision": ck.config.model.precision.value, **report,
              "device": str(dev), "torch": torch.__version__}
    out = ck.path.resolve().parent / f"eval-{split}.json"
    write_json(out, report)
    return report, out
