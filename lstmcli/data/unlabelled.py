"""Unlabelled text for `lstmcli pretrain`: documents read from a text file, a folder of text files or a
user file's text column, or a dataset's training split; numericalized as labelled data is
(encode.py), with a seeded share of the documents held out to measure perplexity on."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from lstmcli.config import Config
from lstmcli.data.encode import EncodedSplit, encode_dataset, encode_splits
from lstmcli.data.readers import USER_SUFFIXES, text_records
from lstmcli.data.splits import RawSplit
from lstmcli.data.text import Vocab
from lstmcli.errors import DatasetError

log = logging.getLogger(__name__)


@dataclass
class Corpus:
    """Documents as one EncodedSplit, and which of them train and which measure perplexity."""

    vocab: Vocab
    documents: EncodedSplit
    train: torch.Tensor  # (n_train,) int64 indices into documents
    val: torch.Tensor  # (n_val,) int64
    source: str  # where the documents came from, for the run's record


def _read_lines(path: Path) -> list[str]:
    try:
        with path.open(encoding="utf-8", errors="replace") as fh:
            return [line.strip() for line in fh if line.strip()]
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc.strerror or exc}") from None


def read_documents(path: Path, text_column: str) -> list[str]:
    """The documents at `path`: a line each of a text file (blank lines skipped), a file each of a folder
    of .txt files (sorted by name, so that the order and the held-out share are the same everywhere),
    or the text_column of each row of a CSV/TSV/JSONL file."""
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        if not files:
            raise DatasetError(f"{path}: a folder without .txt files")
        docs = [" ".join(p.read_text(encoding="utf-8", errors="replace").split()) for p in files]
    elif not path.is_file():
        raise DatasetError(f"unlabelled text not found: {path}")
    elif path.suffix.lower() in USER_SUFFIXES:
        _, records = text_records(path, text_column)
        docs = [text.strip() for _, text in records]
    else:
        docs = _read_lines(path)
    docs = [d for d in docs if d]
    if len(docs) < 2:
        raise DatasetError(f"{path}: {len(docs)} non-empty document(s); pretraining needs at least two")
    return docs


def _holdout(n: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, val) indices of n documents: a seeded `fraction` of them (at least one) held out."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    k = min(max(1, round(n * fraction)), n - 1)
    return torch.tensor(sorted(order[k:])), torch.tensor(sorted(order[:k]))


def load_corpus(cfg: Config) -> Corpus:
    """The documents `cfg.pretrain.unlabelled` names (or, when it is empty, the training split of
    `cfg.data.dataset`, with the vocabulary `lstmcli train` would build from it), numericalized."""
    if cfg.pretrain.unlabelled:
        path = Path(cfg.pretrain.unlabelled)
        texts = read_documents(path, cfg.data.text_column)
        vocab, encoded = encode_splits({"train": RawSplit(texts, [0] * len(texts))}, cfg.data)
        documents, source = encoded["train"], str(path)
    else:
        # the split `train` trains on (its val and test never reach the language model)
        data = encode_dataset(cfg.data)
        vocab, documents = data.vocab, data.splits["train"]
        source = f"{cfg.data.dataset}: training split"
    train, val = _holdout(len(documents), cfg.pretrain.lm_val_fraction, cfg.data.split_seed)
    return Corpus(vocab, documents, train, val, source)
