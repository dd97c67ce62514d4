"""File formats: the AG_NEWS CSV, the aclImdb folder, and a user's CSV/TSV/JSONL files.

Every reader returns (texts, labels), and turns what is wrong with a file into a DatasetError that
names the file and, where there is one, the line: the file's true line, counted on its bytes (for a
record whose quoted field runs over several lines, the line the record starts on).
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

from lstmcli.errors import DatasetError
from lstmcli.progress import track

USER_SUFFIXES = {".csv": ",", ".tsv": "\t", ".jsonl": None}

# texts, and per text its label's name, or a tuple of names where a row gives a set of labels (a user
# file's label cell split at the separator, or a JSONL list; splits.py turns on multi-label for those)
Label = str | tuple[str, ...]
Rows = tuple[list[str], list[Label]]

BOM = b"\xef\xbb\xbf"  # UTF-8's byte order mark, which Excel's "CSV UTF-8" starts a file with
_LONE_CR = re.compile(rb"(?<=\r)(?!\n)")  # the place after a \r that no \n follows


def read_ag_csv(path: Path, label_names: list[str]) -> Rows:
    """AG_NEWS rows `"label","title","description"` (label 1..n); text = title + " " + description (as
    torchtext)."""
    texts, labels = [], []
    n = len(label_names)
    for line, row in _csv_rows(path, ","):
        if len(row) != 3 or not row[0].strip().isdigit() or not 1 <= int(row[0]) <= n:
            raise DatasetError(f"{path} line {line}: malformed AG_NEWS row "
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
        texts.extend(_read_text(prefix + name)
                     for name in track(names, f"reading imdb {split}/{label}", unit="files"))
        labels.extend([label] * len(names))
    return texts, labels


def _read_text(path: str) -> str:
    try:
        with open(path, "rb") as fh:
            return fh.read().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc.strerror}") from None


def _open_bytes(path: Path):
    """`path` opened for reading bytes, or a DatasetError saying why it cannot be."""
    try:
        return path.open("rb")
    except FileNotFoundError:
        raise DatasetError(f"file not found: {path}") from None
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc.strerror}") from None


class _Lines:
    """The decoded lines of a file opened in binary, ends kept, split where a text file opened with
    newline="" splits them (\\n, \\r\\n and a lone \\r), so that csv sees exactly what a text file gives it.

    A text layer decodes 8 KB ahead of csv's line counter, so its decode errors would name the wrong line;
    here each line is decoded alone (UTF-8 never holds a \\r or \\n byte inside a character), a decode
    error names its own line and byte, and `count` is the number of lines handed out so far. A UTF-8
    byte order mark (Excel's "CSV UTF-8") at the start of the file is dropped.
    """

    def __init__(self, path: Path, fh):
        self.path, self.fh, self.count = path, fh, 0

    def __iter__(self):
        """Each line decoded, counted in `count` before it is handed out."""
        for raw in self._split():
            self.count += 1
            skip = len(BOM) if self.count == 1 and raw.startswith(BOM) else 0
            try:
                yield raw[skip:].decode("utf-8")
            except UnicodeDecodeError as exc:
                at = skip + exc.start
                raise DatasetError(f"{self.path} line {self.count}: not UTF-8 text (byte {raw[at]:#04x} at "
                                   f"byte offset {at} of the line: {exc.reason})") from None

    def _split(self):
        """The raw lines, ends kept."""
        for chunk in self.fh:  # a binary file's lines end at b"\n" only
            cr = chunk.find(b"\r")
            if cr == -1 or (cr == len(chunk) - 2 and chunk.endswith(b"\r\n")):
                yield chunk
            else:  # a lone \r ends a line too
                yield from (part for part in _LONE_CR.split(chunk) if part)


FIELD_LIMIT = 2**31 - 1  # characters in one CSV field: texts are cut to max_length tokens later anyway


def _csv_rows(path: Path, delimiter: str):
    """(line, row) for each record of a CSV/TSV file (blank lines give []), `line` being the line the
    record starts on (a quoted field may run over several lines)."""
    with _open_bytes(path) as fh:
        lines = _Lines(path, fh)
        reader = csv.reader(lines, delimiter=delimiter)
        while True:
            start = lines.count + 1
            # csv's 128 KiB field limit would refuse a long text that JSONL reads; it is process-wide,
            # so it is raised for this one record and put back
            default = csv.field_size_limit(FIELD_LIMIT)
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raise DatasetError(f"{path} line {start}: malformed CSV ({exc})") from None
            finally:
                csv.field_size_limit(default)
            yield start, row


def _columns(spec: str, what: str) -> list[str]:
    """The comma-separated column names or indices of a --text-column / --label-column value."""
    cols = [c.strip() for c in spec.split(",") if c.strip()]
    if not cols:
        raise DatasetError(f"--{what} is empty")
    return cols


def read_user_file(path: Path, text_column: str, label_column: str, separator: str = "",
                   multi_label: bool = False) -> Rows:
    """A CSV/TSV (header row, or headerless when every column is given as an index) or JSONL file.

    A label cell holding `separator` (e.g. `sports|politics`) is a set of labels, as is a JSONL list;
    with `multi_label`, an empty cell or list is a text with no label (else refused)."""
    text_cols, label_col = _columns(text_column, "text-column"), label_column.strip()
    headerless = path.suffix != ".jsonl" and all(c.isdigit() for c in text_cols + [label_col])
    if path.suffix == ".jsonl":
        records = _jsonl_records(path)
    else:
        records = _delimited_records(path, USER_SUFFIXES[path.suffix], headerless)
    texts, labels, first = [], [], None
    for line, rec in records:
        missing = [c for c in text_cols + [label_col] if _get(rec, c) is _MISSING]
        if missing:
            raise DatasetError(f"{path} line {line}: no column {missing[0]!r} "
                               f"(set --text-column / --label-column)")
        texts.append(" ".join(_text(path, line, rec, c) for c in text_cols))
        labels.append(_labels(path, line, _get(rec, label_col), label_col, separator, multi_label))
        first = first or (line, rec)
    if not texts:
        raise DatasetError(f"{path}: no examples")
    if headerless:
        _refuse_header(path, first, text_cols, labels)
    return texts, labels


def text_records(path: Path, text_column: str) -> tuple[list[str] | None, Iterator[tuple[dict | list, str]]]:
    """(header, (record, text) for each row) of a CSV/TSV/JSONL file, read as it goes (for predicting: no
    label). A CSV/TSV record is its row as a list, in the header's order (None: a headerless file, every
    column an index), so that writing it back keeps every column, blank-named ones too; a JSONL record
    is its object."""
    text_cols = _columns(text_column, "text-column")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return None, ((rec, _joined(path, line, rec, text_cols)) for line, rec in _jsonl_records(path))
    rows = ((line, row) for line, row in _csv_rows(path, USER_SUFFIXES[suffix]) if row)
    if all(c.isdigit() for c in text_cols):
        return None, ((row, _joined(path, line, row, text_cols)) for line, row in rows)
    first = next(rows, None)
    if first is None:
        raise DatasetError(f"{path}: no rows to classify")
    header = [name.strip() for name in first[1]]
    _refuse_duplicates(path, first[0], header, USER_SUFFIXES[suffix])
    return header, _header_rows(path, header, rows, text_cols)


def _header_rows(path: Path, header: list[str], rows, text_cols: list[str]):
    for line, row in rows:
        if len(row) != len(header):
            raise DatasetError(f"{path} line {line}: {len(row)} fields, header has {len(header)}")
        yield row, _joined(path, line, dict(zip(header, row, strict=True)), text_cols)


def _joined(path: Path, line: int, rec: dict | list, text_cols: list[str]) -> str:
    missing = [c for c in text_cols if _get(rec, c) is _MISSING]
    if missing:
        raise DatasetError(f"{path} line {line}: no column {missing[0]!r} (set --text-column)")
    return " ".join(_text(path, line, rec, c) for c in text_cols)


_MISSING = object()  # a column the record lacks (a JSON null is None, and is a different error)


def _get(rec: dict | list, col: str):
    """Column `col` of a record (an index into a headerless row, a key of a header row or JSON object)."""
    if isinstance(rec, list):
        return rec[int(col)] if int(col) < len(rec) else _MISSING
    return rec.get(col, _MISSING)


def _text(path: Path, line: int, rec: dict | list, col: str) -> str:
    """One text column of a record as a string (a JSON number is written out; a null, list or object is
    refused: Python's repr of it is no text the file meant)."""
    value = _get(rec, col)
    if value is None:
        raise DatasetError(f"{path} line {line}: text is null (column {col!r})")
    if isinstance(value, list | dict):
        kind = "list" if isinstance(value, list) else "object"
        raise DatasetError(f"{path} line {line}: text is a JSON {kind} (column {col!r}); give it as a string")
    return str(value)


def _labels(path: Path, line: int, value, col: str, separator: str, multi_label: bool) -> Label:
    """A record's label cell: one class name, or a tuple of distinct names (in the cell's order) for a
    JSON list or a cell split at `separator` (empty parts dropped: `a|` is `a`). An empty set is a text
    with no label, which only a multi-label run can learn from."""
    if isinstance(value, list):
        names = [_label(path, line, v, col) for v in value]
    elif isinstance(value, str) and separator and separator in value:
        names = [_label(path, line, part, col) for part in value.split(separator) if part.strip()]
    elif multi_label and (value == [] or (isinstance(value, str) and not value.strip())):
        names = []
    else:
        return _label(path, line, value, col)
    if not names and not multi_label:
        raise DatasetError(f"{path} line {line}: no label (column {col!r}); a text without labels needs "
                           f"multi_label = true (--multi-label)")
    return tuple(dict.fromkeys(names))


def _label(path: Path, line: int, value, col: str) -> str:
    """A label as a class name; null, empty, a JSON object or list, or one that would break predict's
    tab-separated, one-per-line output are refused."""
    if value is None:
        raise DatasetError(f"{path} line {line}: label is null (column {col!r})")
    if isinstance(value, list | dict):
        kind = "list" if isinstance(value, list) else "object"
        raise DatasetError(f"{path} line {line}: label is a JSON {kind} (column {col!r}); a label must be "
                           f"a string or a number, or a list of them")
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        # true would become "True", NaN "nan", 0.5 a class named "0.5": none is what a file means
        raise DatasetError(f"{path} line {line}: label {value!r} is not a class name (column {col!r}); "
                           f"write it as a string or a whole number")
    if isinstance(value, float):
        value = int(value)  # 3.0 is class 3, as 3 is
    label = str(value).strip()
    if not label:
        raise DatasetError(f"{path} line {line}: label is empty (column {col!r}; with multi_label = true "
                           f"an empty label means none)")
    if any(c in label for c in "\t\n\r"):
        raise DatasetError(f"{path} line {line}: label {label!r} holds a tab or line break, which predict's "
                           f"tab-separated output cannot show")
    return label


_COLUMN_NAME = re.compile(r"[^\W\d][\w.-]{0,39}")  # one word: a letter or _, then letters, digits, _ . -


def _refuse_header(path: Path, first: tuple[int, list[str]], text_cols: list[str], labels: list[str]) -> None:
    """Refuse a header row in a file read headerless (columns given as indices), where it would become a
    training example of its own class.

    The first row is taken for a header when all of these hold:
    - the file has other rows, and the first row's label cell holds a letter and occurs in none of
      them (a header's label, e.g. `label` or `Class Index`, is never a class of the data);
    - each of its text cells is one column-name-like word: a letter or `_`, then at most 39 letters,
      digits, `_`, `.` or `-` (no spaces), e.g. `text`, `Title`, `review_body`.
    A data row trips this only when its label is a class with that single example and its text is a
    single word, which a dataset worth training on does not have as its first row.
    """
    line, row = first
    label = labels[0]
    if isinstance(label, tuple):  # a header's label cell is one name
        return
    texts = [row[int(c)].strip(" ") for c in text_cols]  # a header cell holds no line breaks or tabs
    if (len(labels) > 1 and any(c.isalpha() for c in label) and labels.count(label) == 1
            and all(_COLUMN_NAME.fullmatch(t) for t in texts)):
        named = ",".join(texts)
        raise DatasetError(f"{path} line {line}: looks like a header (text {', '.join(texts)!r}, label "
                           f"{label!r}), but columns given as indices read every line as data; name the "
                           f"columns instead (--text-column {named!r} --label-column {label!r}) or remove "
                           f"the header line")


def _delimited_records(path: Path, delimiter: str, headerless: bool):
    """(line, record) for each non-blank row: a list when `headerless`, else a dict keyed by the header."""
    header = None
    for line, row in _csv_rows(path, delimiter):
        if not row:
            continue
        if headerless:
            yield line, row
        elif header is None:
            header = [name.strip() for name in row]  # "text, label" names the column "label"
            _refuse_duplicates(path, line, header, delimiter)
        elif len(row) != len(header):
            raise DatasetError(f"{path} line {line}: {len(row)} fields, header has {len(header)}")
        else:
            yield line, dict(zip(header, row, strict=True))


def _refuse_duplicates(path: Path, line: int, header: list[str], delimiter: str) -> None:
    """A column named twice would silently be read from its last place. Blank names are left alone:
    spreadsheets export trailing empty columns, and a blank name cannot be chosen anyway."""
    named = [c for c in header if c.strip()]
    twice = next((c for i, c in enumerate(named) if c in named[:i]), None)
    if twice is not None:
        raise DatasetError(f"{path} line {line}: the header names column {twice!r} twice "
                           f"({delimiter.join(header)!r}); rename one of them")


class _DuplicateKey(ValueError):
    """A JSON object that names one key twice (json keeps the last silently)."""


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    """json's object_pairs_hook: the object as a dict, refusing a repeated key as CSV headers are."""
    obj = dict(pairs)
    if len(obj) < len(pairs):
        seen: set[str] = set()
        raise _DuplicateKey(next(k for k, _ in pairs if k in seen or seen.add(k)))
    return obj


def _jsonl_records(path: Path):
    """(line, object) for each non-blank line of a JSONL file."""
    with _open_bytes(path) as fh:
        for line, raw in enumerate(_Lines(path, fh), start=1):
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw, object_pairs_hook=_unique_keys)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{path} line {line}: invalid JSON ({exc.msg})") from None
            except RecursionError:
                raise DatasetError(f"{path} line {line}: JSON nested too deeply") from None
            except _DuplicateKey as exc:
                raise DatasetError(f"{path} line {line}: the object names {exc.args[0]!r} twice") from None
            if not isinstance(rec, dict):
                raise DatasetError(f"{path} line {line}: expected a JSON object")
            yield line, rec
