"""Datasets: the registry (ag_news, imdb), a user's own files, readers and seeded splits.

Every reader returns texts and label *names*; `load_splits` maps names to ids, carves validation (and
test, when the data has none) from the training split with a seed, and applies the example caps.
"""

from __future__ import annotations

import csv
import json
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .config import DataConfig
from .download import RemoteFile, extract_once, fetch
from .errors import DatasetError

AG_BASE = "https://raw.githubusercontent.com/mhjabreel/CharCnn_Keras/master/data/ag_news_csv"
AG_NEWS_FILES = {
    "train": RemoteFile("ag_news", "ag_news_csv/train.csv", f"{AG_BASE}/train.csv", "b1a00f826fdfbd249f79597b59e1dc12"),
    "test": RemoteFile("ag_news", "ag_news_csv/test.csv", f"{AG_BASE}/test.csv", "d52ea96a97a2d943681189a97654912d"),
}
AG_NEWS_LABELS = ["World", "Sports", "Business", "Sci/Tech"]
IMDB_FILE = RemoteFile("imdb", "aclImdb_v1.tar.gz",
                       "http://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz",
                       "7c2ac02c03563afcf9b574c7e56c153a")
IMDB_LABELS = ["neg", "pos"]
USER_SUFFIXES = {".csv": ",", ".tsv": "\t", ".jsonl": None}

Rows = tuple[list[str], list[str]]  # texts, label names


@dataclass
class Split:
    texts: list[str]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices: list[int]) -> Split:
        return Split([self.texts[i] for i in indices], [self.labels[i] for i in indices])


@dataclass
class Source:
    """A dataset before splitting: how to read each split it ships with."""

    name: str
    label_names: list[str] | None  # None: taken (sorted) from the training split
    readers: dict[str, Callable[[], Rows]]
    fingerprint: str  # changes whenever the data could have changed


def read_ag_csv(path: Path) -> Rows:
    """AG_NEWS rows `"label","title","description"`; text = title + " " + description (as torchtext)."""
    texts, labels = [], []
    with _open_text(path) as fh:
        reader = csv.reader(fh)
        for row in _rows(reader, path):
            if len(row) != 3 or not row[0].strip().isdigit() or not 1 <= int(row[0]) <= len(AG_NEWS_LABELS):
                raise DatasetError(f"{path} line {reader.line_num}: malformed AG_NEWS row "
                                   f"(expected \"label 1-4\",\"title\",\"description\"), got {row[:3]!r}")
            texts.append(row[1] + " " + row[2])
            labels.append(AG_NEWS_LABELS[int(row[0]) - 1])
    return texts, labels


def read_imdb_dir(root: Path, split: str) -> Rows:
    """aclImdb/<split>/{neg,pos}/<id>_<rating>.txt, in a fixed order (label, then file name)."""
    texts, labels = [], []
    for label in IMDB_LABELS:
        folder = root / split / label
        # 25,000 files a split: names as plain strings, no Path object per file
        names = sorted(n for n in os.listdir(folder) if n.endswith(".txt")) if folder.is_dir() else []
        if not names:
            raise DatasetError(f"dataset 'imdb': no reviews in {folder}")
        prefix = f"{folder}{os.sep}"
        texts.extend(_read_text(prefix + name) for name in names)
        labels.extend([label] * len(names))
    return texts, labels


def _open_text(path: Path):
    try:
        return path.open(encoding="utf-8", newline="")
    except FileNotFoundError:
        raise DatasetError(f"file not found: {path}") from None
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc.strerror}") from None


def _read_text(path: str) -> str:
    try:
        with open(path, "rb") as fh:
            return fh.read().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc.strerror}") from None


def _rows(reader, path: Path):
    """Iterate a csv reader, turning decode and format errors into DatasetError with the line."""
    try:
        yield from reader
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path} line {reader.line_num + 1}: not UTF-8 text ({exc.reason})") from None
    except csv.Error as exc:
        raise DatasetError(f"{path} line {reader.line_num}: malformed CSV ({exc})") from None


def _columns(spec: str, what: str) -> list[str]:
    cols = [c.strip() for c in spec.split(",") if c.strip()]
    if not cols:
        raise DatasetError(f"--{what} is empty")
    return cols


def read_user_file(path: Path, text_column: str, label_column: str) -> Rows:
    """A CSV/TSV (header row, or headerless when every column is given as an index) or JSONL file."""
    text_cols, label_col = _columns(text_column, "text-column"), label_column.strip()
    if path.suffix == ".jsonl":
        records = _jsonl_records(path)
    else:
        records = _delimited_records(path, USER_SUFFIXES[path.suffix], all(
            c.isdigit() for c in text_cols + [label_col]))
    texts, labels = [], []
    for line, rec in records:
        missing = [c for c in text_cols + [label_col] if _get(rec, c) is None]
        if missing:
            raise DatasetError(f"{path} line {line}: no column {missing[0]!r} "
                               f"(set --text-column / --label-column)")
        texts.append(" ".join(str(_get(rec, c)) for c in text_cols))
        labels.append(str(_get(rec, label_col)).strip())
    if not texts:
        raise DatasetError(f"{path}: no examples")
    return texts, labels


def _get(rec: dict | list, col: str):
    if isinstance(rec, list):
        return rec[int(col)] if int(col) < len(rec) else None
    return rec.get(col)


def _delimited_records(path: Path, delimiter: str, headerless: bool):
    with _open_text(path) as fh:
        reader = csv.reader(fh, delimiter=delimiter)
        header = None
        for row in _rows(reader, path):
            if not row:
                continue
            if headerless:
                yield reader.line_num, row
            elif header is None:
                header = row
            elif len(row) != len(header):
                raise DatasetError(f"{path} line {reader.line_num}: {len(row)} fields, header has {len(header)}")
            else:
                yield reader.line_num, dict(zip(header, row))


def _jsonl_records(path: Path):
    with _open_text(path) as fh:
        for line, raw in enumerate(_lines(fh, path), start=1):
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{path} line {line}: invalid JSON ({exc.msg})") from None
            if not isinstance(rec, dict):
                raise DatasetError(f"{path} line {line}: expected a JSON object")
            yield line, rec


def _lines(fh, path: Path):
    try:
        yield from fh
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 text ({exc.reason})") from None


def open_source(cfg: DataConfig, quiet: bool = False) -> Source:
    """The dataset named by `cfg.dataset`: a registry name or a path."""
    cache = Path(cfg.data_dir)
    if cfg.dataset == "ag_news":
        readers = {s: (lambda f=f: read_ag_csv(fetch(f, cache, quiet))) for s, f in AG_NEWS_FILES.items()}
        return Source("ag_news", AG_NEWS_LABELS, readers, "ag_news:" + AG_NEWS_FILES["train"].md5)
    if cfg.dataset == "imdb":
        def imdb(split: str) -> Rows:
            root = extract_once(fetch(IMDB_FILE, cache, quiet), cache, "aclImdb")
            return read_imdb_dir(root, split)
        return Source("imdb", IMDB_LABELS, {s: (lambda s=s: imdb(s)) for s in ("train", "test")},
                      "imdb:" + IMDB_FILE.md5)
    return _user_source(Path(cfg.dataset), cfg)


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
        raise DatasetError(f"unknown dataset '{path}': expected ag_news, imdb, or a path to a "
                           f"CSV/TSV/JSONL file or a folder of them")
    stamp = ";".join(f"{f.resolve()}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files.values())
    readers = {s: (lambda f=f: read_user_file(f, cfg.text_column, cfg.label_column)) for s, f in files.items()}
    return Source(str(path), None, readers, f"user:{stamp}:{cfg.text_column}:{cfg.label_column}")


def balanced_sample(labels: list[int], n: int, rng: random.Random) -> list[int]:
    """`n` indices (sorted), taking classes in turn so that they stay as balanced as the data allows."""
    by_class: dict[int, list[int]] = {}
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


def _carve(split: Split, fraction: float, rng: random.Random) -> tuple[Split, Split]:
    """(rest, held-out): a seeded random `fraction` of `split` held out."""
    order = rng.sample(range(len(split)), len(split))
    k = round(len(split) * fraction)
    return split.subset(sorted(order[k:])), split.subset(sorted(order[:k]))


def to_split(rows: Rows, label_names: list[str], where: str) -> Split:
    index = {name: i for i, name in enumerate(label_names)}
    unknown = sorted(set(rows[1]) - index.keys())
    if unknown:
        raise DatasetError(f"{where}: label {unknown[0]!r} was not seen in training "
                           f"(known: {', '.join(label_names)})")
    return Split(rows[0], [index[y] for y in rows[1]])


def natural_sorted(names: set[str]) -> list[str]:
    """Label names in sorted order: numerically when all are integers, else as strings."""
    if all(n.lstrip("-").isdigit() for n in names):
        return sorted(names, key=int)
    return sorted(names)


def load_splits(cfg: DataConfig, quiet: bool = False,
                label_names: list[str] | None = None) -> tuple[list[str], dict[str, Split]]:
    """Label names and the train/val/test splits as `cfg` describes them.

    `label_names` (from a checkpoint) fixes the label order; labels outside it are an error.
    """
    source = open_source(cfg, quiet)
    train_rows = source.readers["train"]()
    names = label_names or source.label_names or natural_sorted(set(train_rows[1]))
    where = source.name
    train = to_split(train_rows, names, where)
    if "test" in source.readers:
        test = to_split(source.readers["test"](), names, where)
    else:
        train, test = _carve(train, cfg.test_fraction, random.Random(f"{cfg.split_seed}:test"))
    if "val" in source.readers:
        val = to_split(source.readers["val"](), names, where)
    else:
        train, val = _carve(train, cfg.val_fraction, random.Random(f"{cfg.split_seed}:val"))
    splits = {"train": train, "val": val, "test": test}
    caps = {"train": cfg.max_train_examples, "val": cfg.max_eval_examples, "test": cfg.max_eval_examples}
    for name, cap in caps.items():
        if cap and len(splits[name]) > cap:
            rng = random.Random(f"{cfg.split_seed}:cap:{name}")
            splits[name] = splits[name].subset(balanced_sample(splits[name].labels, cap, rng))
    return names, splits
