"""Batch scoring of a table: each row of a CSV/TSV/JSONL file written back, in order, with the
prediction in new columns (as Ludwig's `predict --dataset` does), read and written as it goes.

Columns added: `predicted_label`, `predicted_probability`, and with top k > 1 `predicted_top_k` (a JSON
list of {label, probability}). A file that already has them (scored before) gets them replaced.
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


class _Writer:
    """Writes records back in the input's format with the prediction columns set."""

    def __init__(self, out: TextIO, suffix: str, top_k: int):
        self.out, self.suffix, self.top_k = out, suffix, top_k
        self.csv = None if suffix == ".jsonl" else csv.writer(out, delimiter=USER_SUFFIXES[suffix],
                                                             lineterminator="\n")
        self.header: list[str] | None = None

    def _added(self, ranked: list[tuple[str, float]]) -> dict:
        added = {LABEL: ranked[0][0], PROBABILITY: ranked[0][1]}
        if self.top_k > 1:
            added[TOP_K] = [{"label": lab, "probability": p} for lab, p in ranked]
        return added

    def write(self, rec: dict | list, ranked: list[tuple[str, float]]) -> None:
        added = self._added(ranked)
        if self.csv is None:
            self.out.write(json.dumps({**rec, **added}, ensure_ascii=False) + "\n")
            return
        if TOP_K in added:
            added[TOP_K] = json.dumps(added[TOP_K], ensure_ascii=False)
        if isinstance(rec, list):  # a headerless file: the new columns at the end of each row
            self.csv.writerow([*rec, *added.values()])
            return
        if self.header is None:
            self.header = [*rec, *(c for c in added if c not in rec)]
            self.csv.writerow(self.header)
        row = {**rec, **added}
        self.csv.writerow([row.get(c, "") for c in self.header])


def _chunks(records: Iterator, size: int) -> Iterator[list]:
    while chunk := list(islice(records, size)):
        yield chunk


def score_table(clf: Classifier, path: Path, text_column: str, out: TextIO, top_k: int, batch_size: int,
                threshold: float | None, window: int, progress=None) -> int:
    """Write every row of `path` to `out` with its prediction, `window` rows at a time (sorted by length
    within it, as `Classifier.predict` does); returns the number of rows."""
    writer, done = _Writer(out, path.suffix, top_k), 0
    for chunk in _chunks(text_records(path, text_column), window):
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
