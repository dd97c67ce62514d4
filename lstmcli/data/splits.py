"""Datasets before encoding: a source (a built-in dataset of the registry, or a user's files) and its
seeded train/validation/test splits.

Readers give texts and label *names*; `load_splits` maps names to ids, carves validation (and test,
when the data has none) from the training split with a seed, and applies the example caps. A dataset
is multi-label when its config says so or when any training row holds a set of labels (readers.py):
each text then has a tuple of label ids, possibly empty.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lstmcli.config import DataConfig
from lstmcli.data.readers import USER_SUFFIXES, Rows, read_user_file
from lstmcli.data.registry import REGISTRY
from lstmcli.errors import DatasetError


@dataclass
class RawSplit:
    """A split's texts and label ids, before tokenizing (encode.EncodedSplit is after): an id per text,
    or with `multi_label` a sorted tuple of ids per text."""

    texts: list[str]
    labels: list[int] | list[tuple[int, ...]]
    multi_label: bool = False

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices: list[int]) -> RawSplit:
        return RawSplit([self.texts[i] for i in indices], [self.labels[i] for i in indices], self.multi_label)


@dataclass
class Source:
    """A dataset before splitting: how to read each split it ships with."""

    name: str
    label_names: list[str] | None  # None: taken (sorted) from the training split
    readers: dict[str, Callable[[], Rows]]
    fingerprint: str  # changes whenever the data could have changed


def open_source(cfg: DataConfig) -> Source:
    """The dataset named by `cfg.dataset`: a registry name or a path."""
    ds = REGISTRY.get(cfg.dataset)
    if ds is None:
        return _user_source(Path(cfg.dataset), cfg)
    cache = Path(cfg.data_dir)
    readers = {split: (lambda split=split: ds.read(ds, split, cache)) for split in ds.splits}
    return Source(ds.name, list(ds.label_names), readers, ds.fingerprint)


def _user_source(path: Path, cfg: DataConfig) -> Source:
    if path.is_dir():
        files = {f.stem: f for f in sorted(path.iterdir()) if f.suffix in USER_SUFFIXES}
        files = {s: files[s] for s in ("train", "val", "test") if s in files}
        if "train" not in files:
            raise DatasetError(f"dataset folder {path} has no train.csv, train.tsv or train.jsonl")
    elif path.is_file():
        if path.suffix not in USER_SUFFIXES:
            raise DatasetError(f"dataset file {path}: expected a .csv, .tsv or .jsonl file")
        files = {"train": path}
    else:
        raise DatasetError(f"unknown dataset '{path}': expected {', '.join(REGISTRY)}, or a path to a "
                           f"CSV/TSV/JSONL file or a folder of them")
    stamp = ";".join(f"{f.resolve()}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files.values())
    readers = {s: (lambda f=f: read_user_file(f, cfg.text_column, cfg.label_column, cfg.label_separator,
                                              cfg.multi_label))
               for s, f in files.items()}
    return Source(str(path), None, readers, f"user:{stamp}:{cfg.text_column}:{cfg.label_column}:"
                                            f"{cfg.label_separator}:{cfg.multi_label}")


def balanced_sample(labels: list[int] | list[tuple[int, ...]], n: int, rng: random.Random) -> list[int]:
    """`n` indices (sorted), taking classes (multi-label: label sets) in turn so that they stay as
    balanced as the data allows."""
    by_class: dict = {}
    for i, y in enumerate(labels):
        by_class.setdefault(y, []).append(i)
    pools = [rng.sample(idx, len(idx)) for _, idx in sorted(by_class.items())]
    chosen: list[int] = []
    depth = 0
    while len(chosen) < n:
        for pool in pools:
            if depth < len(pool) and len(chosen) < n:
                chosen.append(pool[depth])
        depth += 1
    return sorted(chosen)


def _carve(split: RawSplit, fraction: float, rng: random.Random) -> tuple[RawSplit, RawSplit]:
    """(rest, held-out): a seeded random `fraction` of `split` held out."""
    order = rng.sample(range(len(split)), len(split))
    k = round(len(split) * fraction)
    return split.subset(sorted(order[k:])), split.subset(sorted(order[:k]))


def label_set(label: str | tuple[str, ...]) -> tuple[str, ...]:
    """A row's labels as a tuple of names."""
    return label if isinstance(label, tuple) else (label,)


def names_in(labels: list) -> set[str]:
    """Every label name the rows' labels hold."""
    return {name for y in labels for name in label_set(y)}


def to_split(rows: Rows, label_names: list[str], where: str, multi_label: bool = False) -> RawSplit:
    """Texts and label ids; a row's label set where a single-label model expects one label is refused."""
    index = {name: i for i, name in enumerate(label_names)}
    unknown = sorted(names_in(rows[1]) - index.keys())
    if unknown:
        raise DatasetError(f"{where}: label {unknown[0]!r} was not seen in training "
                           f"(known: {', '.join(label_names)})")
    if multi_label:
        return RawSplit(rows[0], [tuple(sorted(index[n] for n in label_set(y))) for y in rows[1]], True)
    several = next((y for y in rows[1] if isinstance(y, tuple)), None)
    if several is not None:
        raise DatasetError(f"{where}: a row has the labels {list(several)!r}, but this model is "
                           f"single-label (one label per text)")
    return RawSplit(rows[0], [index[y] for y in rows[1]])


def _multi_label(cfg: DataConfig, train_rows: Rows, checkpoint_labels: bool) -> bool:
    """Whether the dataset is multi-label: the config says so, or (training) a training row holds a
    set of labels (training/setup.py says so in one line)."""
    if cfg.multi_label or checkpoint_labels:
        return cfg.multi_label
    return any(isinstance(y, tuple) for y in train_rows[1])


def natural_sorted(names: set[str]) -> list[str]:
    """Label names in sorted order: numerically when all are integers, else as strings."""
    if all(re.fullmatch(r"-?[0-9]+", n) for n in names):  # (str.isdigit takes "²", which int() refuses)
        return sorted(names, key=int)
    return sorted(names)


def _refuse_one_class(train_rows: Rows, where: str) -> None:
    """A training split with a single label cannot train a classifier: refused here, before any
    tokenizing, training or writing (labels.json needs two labels or more)."""
    found = names_in(train_rows[1])
    if len(found) < 2:
        only = f"the label {next(iter(found))!r}" if found else "no label"
        raise DatasetError(f"dataset {where}: every training example has {only}; a classifier needs "
                           f"at least two labels")


def load_splits(cfg: DataConfig,
                label_names: list[str] | None = None) -> tuple[list[str], dict[str, RawSplit]]:
    """Label names and the train/val/test splits as `cfg` describes them.

    `label_names` (from a checkpoint) fixes the label order; labels outside it are an error.
    """
    source = open_source(cfg)
    train_rows = source.readers["train"]()
    where = source.name
    if label_names is None:  # training (a checkpoint's labels mean eval/calibrate, which train nothing)
        _refuse_one_class(train_rows, where)
    names = label_names or source.label_names or natural_sorted(names_in(train_rows[1]))
    multi = _multi_label(cfg, train_rows, label_names is not None)
    train = to_split(train_rows, names, where, multi)
    if "test" in source.readers:
        test = to_split(source.readers["test"](), names, where, multi)
    else:
        train, test = _carve(train, cfg.test_fraction, random.Random(f"{cfg.split_seed}:test"))
    if "val" in source.readers:
        val = to_split(source.readers["val"](), names, where, multi)
    else:
        train, val = _carve(train, cfg.val_fraction, random.Random(f"{cfg.split_seed}:val"))
    splits = {"train": train, "val": val, "test": test}
    caps = {"train": cfg.max_train_examples, "val": cfg.max_eval_examples, "test": cfg.max_eval_examples}
    for name, cap in caps.items():
        if cap and len(splits[name]) > cap:
            rng = random.Random(f"{cfg.split_seed}:cap:{name}")
            splits[name] = splits[name].subset(balanced_sample(splits[name].labels, cap, rng))
    return names, splits
