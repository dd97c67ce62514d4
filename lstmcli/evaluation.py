"""`lstmcli eval`: a checkpoint's metrics on a split of its dataset, or on every row of another file."""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

import torch

from . import checkpoint
from .fsutil import write_json
from .errors import LstmcliError
from .prepare import encode_file, prepare
from .device import resolve_device
from .train import cut_of, evaluate


def run_eval(checkpoint_dir: Path, split: str = "test", dataset: str | None = None,
             data_dir: str | None = None, batch_size: int | None = None, device: str = "auto",
             quiet: bool = False, impl: str | None = None, precision: str | None = None) -> tuple[dict, Path]:
    """Evaluate `checkpoint_dir`; returns the report and the JSON file it was written to.

    With `dataset` a single file, every row of it is evaluated (`split` is then the file's stem);
    otherwise the split is carved exactly as in training, from the checkpoint's data settings.
    """
    dev = resolve_device(device)
    ck = checkpoint.load(checkpoint_dir, str(dev), impl, precision)
    if ck.note:
        print(f"lstmcli: {ck.note}", file=sys.stderr)
    data_cfg = ck.config.data
    data_dir = data_dir or os.environ.get("LSTMCLI_DATA_DIR") or data_cfg.data_dir
    data_cfg = dataclasses.replace(data_cfg, data_dir=data_dir, dataset=dataset or data_cfg.dataset)
    if dataset and Path(dataset).is_file():
        encoded, split = encode_file(Path(dataset), data_cfg, ck.vocab, ck.label_names), Path(dataset).stem
    else:
        prepared = prepare(data_cfg, vocab=ck.vocab, label_names=ck.label_names, quiet=quiet)
        encoded = prepared.splits[split]
    if len(encoded) == 0:
        raise LstmcliError(f"split '{split}' of {data_cfg.dataset} has no examples")
    report = evaluate(ck.model, encoded, dev, batch_size or ck.config.train.batch_size,
                      cut_of(ck.config), ck.label_names)
    report = {"checkpoint": str(ck.path), "dataset": data_cfg.dataset, "split": split,
              "impl": ck.config.model.impl.value, "precision": ck.config.model.precision.value, **report,
              "device": str(dev), "torch": torch.__version__}
    out = ck.path.resolve().parent / f"eval-{split}.json"
    write_json(out, report)
    return report, out
