"""File formats: the AG_NEWS CSV, the aclImdb folder, and a user's CSV/TSV/JSONL files.

Every reader returns (texts, label names), and turns what is wrong with a file into a DatasetError that
names the file and, where there is one, the line.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

from .errors import DatasetError

USER_SUFFIXES = {".csv": ",", ".tsv": "\t", ".jsonl": None}

Rows = tuple[list[str], list[str]]  # texts, label names


def read_ag_csv(path: Path, label_names: list[str]) -> Rows:
    """AG_NEWS rows `"label","title","description"` (label 1..n); text = title + " " + description (as
    torchtext)."""
    texts, labels = [], []
    n = len(label_names)
    with _open_text(path) as fh:
        reader = csv.reader(fh)
        for row in _rows(reader, path):
            if len(row) != 3 or not row[0].strip().isdigit() or not 1 <= int(row[0]) <= n:
                raise DatasetError(f"{path} line {reader.line_num}: malformed AG_NEWS row "
                                   f"(expected \"label 1-{n}\",\"title\",\"description\"), got {row[:3]!r}")
            texts.append(row[1] + " " + row[2])
            labels.append(label_names[int(row[0]) - 1])
    return texts, labels


def read_imdb_dir(root: Path, split: str, label_names: list[str]) -> Rows:
    """aclImdb/<split>/<label>/<id>_<rating>.txt, in a fixed order (label, then file name)."""
    texts, labels = [], []
    for label in label_names:
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
                raise DatasetError(f"{path} line {reader.line_num}: {len(row)} fields, "
                                   f"header has {len(header)}")
            else:
                yield reader.line_num, dict(zip(header, row, strict=True))


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
