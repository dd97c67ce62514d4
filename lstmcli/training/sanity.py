"""Settings that run but are probably not what was meant: one warning line each, never an error.

Checked once the data is encoded, before the first step, on rank 0 only (under torchrun the other ranks
see the same data and would say the same)."""

from __future__ import annotations

import math

import torch

from lstmcli.config import Config
from lstmcli.data.encode import EncodedData

CUT_SHARE = 0.25  # more of the training texts than this cut by max_length: the model misses their ends
MIN_VAL = 100  # validation rows below this: the early stopping and best/ choice ride on noise
MIN_PER_LABEL = 10  # training rows of a label below this: too few to learn it from


def warnings_for(cfg: Config, data: EncodedData) -> list[str]:
    """The warnings of a run of `cfg` on `data`, as one-line messages (none when all is well)."""
    t, found = cfg.train, []
    train = data.splits["train"]
    steps = cfg.train.epochs * math.ceil(len(train) / t.batch_size)
    if t.warmup_steps > steps:
        found.append(f"warmup_steps {t.warmup_steps} is longer than the run ({steps} steps: {t.epochs} "
                     f"epoch(s) of {math.ceil(len(train) / t.batch_size)}): the learning rate never "
                     f"reaches lr {t.lr}")
    if cfg.data.max_length and len(train):
        cut = int((train.lengths > cfg.data.max_length).sum())
        if cut > CUT_SHARE * len(train):
            found.append(f"max_length {cfg.data.max_length} cuts {cut:,} of {len(train):,} training texts "
                         f"({cut / len(train):.0%}); the longest has {int(train.lengths.max()):,} tokens")
    if len(data.splits["val"]) < MIN_VAL:
        found.append(f"the validation split has {len(data.splits['val'])} rows (under {MIN_VAL}): best/ "
                     f"and early stopping are chosen on noise (raise val_fraction or max_eval_examples)")
    if train.multi_label:
        counts = train.labels.sum(0, dtype=torch.int64).tolist()
    else:
        counts = torch.bincount(train.labels, minlength=len(data.label_names)).tolist()
    few = [(name, n) for name, n in zip(data.label_names, counts, strict=True) if n < MIN_PER_LABEL]
    if few:
        shown = ", ".join(f"{name!r} {n}" for name, n in few[:5]) + (", ..." if len(few) > 5 else "")
        found.append(f"{len(few)} label(s) with fewer than {MIN_PER_LABEL} training rows ({shown}): too few "
                     f"to learn them from")
    return found
