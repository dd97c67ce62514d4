"""Batch scoring of a table: each row of a CSV/TSV/JSONL file written back, in order, with the
prediction in new columns (as Ludwig's `predict --dataset` does), read and written as it goes.

Columns added: `predicted_label`, `predicted_probability`, and with top k > 1 `predicted_top_k` (a JSON
list of {label, probability}). A multi-label model's: `predicted_labels` and `predicted_probabilities`,
in a CSV/TSV joined by its label separator (`sports|politics`, `0.9100|0.6200`: a scored file can be
trained on again), in JSONL as lists. A file that already has them (scored before) gets them replaced.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import TextIO

from lstmcli.data.readers import USER_SUFFIXES, text_records
from lstmcli.errors import LstmcliError
from lstmcli.inference.predict import Classifier

LABEL, PROBABILITY, TOP_K = "predicted_label", "predicted_probability", "predicted_top_k"
LABELS, PROBABILITIES = "predicted_labels", "predicted_probabilities"


class _Writer:
    """Writes records back in the input's format with the prediction columns set: a CSV/TSV row keeps
    every column where it was (the prediction's columns replaced in place, or added at the end), a JSONL
    object every key."""

    def __init__(self, out: TextIO, suffix: str, top_k: int | None, header: list[str] | None,
                 separator: str | None = None):
        """`separator`: a multi-label model's label separator (None: a single-label model)."""
        self.out, self.top_k, self.separator = out, top_k or 1, separator
        self.csv = None if suffix == ".jsonl" else csv.writer(out, delimiter=USER_SUFFIXES[suffix],
                                                             lineterminator="\n")
        if separator is not None:
            names = [LABELS, PROBABILITIES]
        else:
            names = [LABEL, PROBABILITY] + ([TOP_K] if self.top_k > 1 else [])
        self.names = names
        self.slots: list[int] = []  # where each prediction column goes in a CSV/TSV row
        if self.csv is not None and header is not None:
            header = list(header)
            for name in names:
                if name not in header:
                    header.append(name)
                self.slots.append(header.index(name))
            self.csv.writerow(header)
        self.width = len(header) if header is not None else None

    def _added(self, ranked: list[tuple[str, float]]) -> list:
        if self.separator is not None:
            labels, probabilities = [lab for lab, _ in ranked], [p for _, p in ranked]
            if self.csv is None:
                return [labels, probabilities]
            return [self.separator.join(labels), self.separator.join(f"{p:.4f}" for p in probabilities)]
        added = [ranked[0][0], ranked[0][1]]
        if self.top_k > 1:
            added.append([{"label": lab, "probability": p} for lab, p in ranked])
        return added

    def write(self, rec: dict | list, ranked: list[tuple[str, float]]) -> None:
        added = self._added(ranked)
        if self.csv is None:
            self.out.write(json.dumps({**rec, **dict(zip(self.names, added, strict=True))},
                                      ensure_ascii=False) + "\n")
            return
        if len(added) > 2:
            added[2] = json.dumps(added[2], ensure_ascii=False)
        if self.width is None:  # a headerless file: the new columns at the end of each row
            self.csv.writerow([*rec, *added])
            return
        row = list(rec) + [""] * (self.width - len(rec))
        for slot, value in zip(self.slots, added, strict=True):
            row[slot] = value
        self.csv.writerow(row)


def _chunks(records: Iterator, size: int) -> Iterator[list]:
    while chunk := list(islice(records, size)):
        yield chunk


def score_table(clf: Classifier, path: Path, text_column: str, out: TextIO, top_k: int | None,
                batch_size: int | None, threshold: float | None, window: int, progress=None) -> int:
    """Write every row of `path` to `out` with its prediction, `window` rows at a time (sorted by length
    within it, as `Classifier.predict` does); returns the number of rows."""
    header, records = text_records(path, text_column)
    separator = None
    if clf.multi_label:
        separator = ((clf.config or {}).get("data") or {}).get("label_separator") or "|"
    writer, done = _Writer(out, path.suffix.lower(), top_k, header, separator), 0
    for chunk in _chunks(records, window):
        recs, texts = zip(*chunk, strict=True)
        for rec, ranked in zip(recs, clf.predict(list(texts), top_k, batch_size, threshold), strict=True):
            writer.write(rec, ranked)
        out.flush()
        done += len(chunk)
        if progress is not None:
            progress.update(len(chunk))
    if done == 0:
        raise LstmcliError(f"{path}: no rows to classify")
    return done
