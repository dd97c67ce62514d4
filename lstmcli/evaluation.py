"""Evaluating a model: loss and classification metrics on every example of a split, and `lstmcli eval`
(a checkpoint on a split of its dataset, or on every row of another file)."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch
import torch.nn.functional as F

from . import checkpoint
from .batching import Cut, collate, sorted_batches, truncated_lengths
from .device import resolve_device
from .errors import LstmcliError
from .fsutil import write_json
from .metrics import classification_report
from .prepare import EncodedSplit, encode_file, prepare

log = logging.getLogger(__name__)


@torch.no_grad()
def evaluate(model, split: EncodedSplit, device: torch.device, batch_size: int, cut: Cut,
             label_names: list[str]) -> dict:
    """Loss and classification metrics of `model` on every example of `split`."""
    model.eval()
    lengths = truncated_lengths(split, cut.length)
    preds, targets, loss_sum = [], [], 0.0
    for indices in sorted_batches(lengths, batch_size):
        batch = collate(split, indices, cut).to(device)
        logits = model(batch.ids, batch.lengths)
        loss_sum += float(F.cross_entropy(logits, batch.labels, reduction="sum"))
        preds.append(logits.argmax(1).cpu())
        targets.append(batch.labels.cpu())
    n = max(len(split), 1)
    return classification_report(torch.cat(targets), torch.cat(preds), label_names, loss=loss_sum / n)


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
    if ck.note:
        log.warning(ck.note)
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
