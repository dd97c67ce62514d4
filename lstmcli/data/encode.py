"""Texts to cached id tensors: tokenize every split once, build the vocabulary, numericalize.

Tokens are mapped to provisional ids as they are first seen (one dict lookup per token, in C), counted
with `bincount`, and remapped to vocabulary ids with one indexing op, so no split is tokenized twice
and no list of token strings is kept. The result is cached under `<data_dir>/cache/<key>/`, where the
key hashes everything that changes it: the data's fingerprint, the split settings, the vocabulary
settings (or the given vocabulary) and the tokenizer version.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import sys
from array import array
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from lstmcli.config import DataConfig
from lstmcli.data.readers import read_user_file
from lstmcli.data.splits import RawSplit, load_splits, open_source, to_split
from lstmcli.data.text import PAD, UNK, UNK_ID, Vocab, basic_english
from lstmcli.errors import DatasetError
from lstmcli.fsutil import honour_umask, temp_dir, write_failed
from lstmcli.progress import Progress

log = logging.getLogger(__name__)
TOKENIZER_VERSION = "basic_english-1"
SPLITS = ("train", "val", "test")


@dataclass
class EncodedSplit:
    """A split as flat token ids: example i is ids[offsets[i]:offsets[i+1]]."""

    ids: torch.Tensor  # (total_tokens,) int32
    offsets: torch.Tensor  # (n + 1,) int64
    labels: torch.Tensor  # (n,) int64 label ids; multi-label: (n, C) uint8, 1 where the text has label c

    def __len__(self) -> int:
        return self.labels.size(0)

    @property
    def multi_label(self) -> bool:
        return self.labels.dim() == 2

    @property
    def lengths(self) -> torch.Tensor:  # (n,) int64
        return self.offsets.diff()


@dataclass
class EncodedData:
    vocab: Vocab
    label_names: list[str]
    splits: dict[str, EncodedSplit]

    @property
    def multi_label(self) -> bool:
        return self.splits["train"].multi_label


# The most (text, label) cells a multi-label split may have: its indicators take a byte each, and
# evaluating it (per-label thresholds) holds a float32 probability each, 1.25 GiB at this bound
MAX_LABEL_CELLS = 2**28


def label_tensor(split: RawSplit, num_labels: int) -> torch.Tensor:
    """(n,) int64 label ids, or for a multi-label split (n, C) uint8 indicators (1 byte a label: a
    million texts of a hundred labels hold 100 MB); a split beyond MAX_LABEL_CELLS is refused before
    anything that size is made."""
    if not split.multi_label:
        return torch.tensor(split.labels, dtype=torch.int64)
    if len(split) * num_labels > MAX_LABEL_CELLS:
        raise DatasetError(f"multi-label: {len(split):,} texts x {num_labels:,} labels is over "
                           f"{MAX_LABEL_CELLS:,} (text, label) cells, more than lstmcli holds in memory; "
                           f"merge rare labels or split the data")
    out = torch.zeros(len(split), num_labels, dtype=torch.uint8)
    rows = [i for i, ys in enumerate(split.labels) for _ in ys]
    out[rows, [y for ys in split.labels for y in ys]] = 1
    return out


def _provisional_ids(texts: list[str], table: defaultdict,
                     progress: Progress | None = None, scale: int = 1) -> tuple[array, array]:
    """Token ids in `table` (new tokens get the next id) and per-text lengths, as int64 arrays; an
    empty text is one `<unk>`. An array("q") of the list becomes a tensor without a copy, where
    torch.tensor(list) would convert a corpus's millions of ids one Python int at a time. `progress`
    advances by `scale` per text, in steps of TICK texts (a call per text would cost more than it shows)."""
    lookup = table.__getitem__
    ids: list[int] = []
    lengths: list[int] = []
    for lo in range(0, len(texts), TICK):
        for text in texts[lo:lo + TICK]:
            tokens = basic_english(text) or [UNK]
            ids.extend(map(lookup, tokens))
            lengths.append(len(tokens))
        if progress is not None:
            progress.update(scale * len(texts[lo:lo + TICK]))
    return array("q", ids), array("q", lengths)


def _tensor(*buffers: array) -> tuple[torch.Tensor, ...]:
    """int64 tensors over the buffers' memory (which each tensor keeps alive), no copy."""
    return tuple(torch.frombuffer(b, dtype=torch.int64) if len(b) else torch.zeros(0, dtype=torch.int64)
                 for b in buffers)


# Tokenizing is pure Python, one core's work: from this many characters on (IMDB has ~65M), a forked
# child process tokenizes the second half of the texts while this one does the first. Fork only (Linux):
# a spawned child would first re-import torch, which costs more than it saves.
PARALLEL_MIN_CHARS = 8_000_000
TICK = 2_000  # texts between two progress updates
_TEXTS: list[str] = []  # what a forked child reads: inherited, never pickled


def _child_ids(lo: int, hi: int) -> tuple[list[str], array, array]:
    table: defaultdict[str, int] = defaultdict()
    table.default_factory = table.__len__
    ids, lengths = _provisional_ids(_TEXTS[lo:hi], table)
    return list(table), ids, lengths  # arrays travel back as raw bytes


def _tokenize(texts: list[str], table: defaultdict) -> tuple[torch.Tensor, torch.Tensor]:
    """`_provisional_ids` of all `texts` as tensors, in two processes when that pays."""
    with Progress("tokenizing", len(texts)) as progress:
        return _tokenize_into(texts, table, progress)


def _tokenize_into(texts: list[str], table: defaultdict,
                   progress: Progress) -> tuple[torch.Tensor, torch.Tensor]:
    global _TEXTS
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    if cpus < 2 or sys.platform != "linux" or sum(map(len, texts)) < PARALLEL_MIN_CHARS:
        return _tensor(*_provisional_ids(texts, table, progress))
    half = len(texts) // 2
    _TEXTS = texts
    try:
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork")) as pool:
            pending = pool.submit(_child_ids, half, len(texts))
            # the child does the other half at the same pace: count this half twice
            ids, lengths = _provisional_ids(texts[:half], table, progress, scale=2)
            child_tokens, child_ids, child_lengths = pending.result()
            progress.update(len(texts) - progress.done)
    except (OSError, BrokenProcessPool):  # no fork or semaphores here, or the child died: do it all here
        progress.update(-progress.done)
        return _tensor(*_provisional_ids(texts, table, progress))
    finally:
        _TEXTS = []
    # the child's ids are its own first-sight order: map them into `table`'s
    to_ours = torch.tensor([table[tok] for tok in child_tokens], dtype=torch.int64)
    ids, lengths = _tensor(ids, lengths)
    child_ids, child_lengths = _tensor(child_ids, child_lengths)
    return torch.cat([ids, to_ours[child_ids]]), torch.cat([lengths, child_lengths])


def encode_splits(splits: dict[str, RawSplit], cfg: DataConfig, vocab: Vocab | None = None,
                  num_labels: int = 0) -> tuple[Vocab, dict[str, EncodedSplit]]:
    """Numericalize `splits`, building the vocabulary from the training split unless one is given
    (`num_labels`: the width of a multi-label split's indicators)."""
    table: defaultdict[str, int] = defaultdict()
    table.default_factory = table.__len__  # first sight of a token -> next provisional id
    for special in (PAD, UNK):
        table[special]
    ids, lengths = _tokenize([text for split in splits.values() for text in split.texts], table)
    per_split = lengths.split([len(split) for split in splits.values()])
    split_ids = ids.split([int(n.sum()) for n in per_split])
    raw = dict(zip(splits, zip(split_ids, per_split, strict=True), strict=True))  # name -> (ids, lengths)
    tokens = list(table)  # provisional id -> token
    if vocab is None:
        counts = torch.bincount(raw["train"][0], minlength=len(tokens))
        token_counts = dict(zip(tokens, counts.tolist(), strict=True))
        vocab = Vocab.from_counts(token_counts, cfg.vocab_max_size, cfg.vocab_min_freq)
    stoi = {**vocab.stoi, PAD: UNK_ID}
    remap = torch.tensor([stoi.get(tok, UNK_ID) for tok in tokens], dtype=torch.int32)
    encoded = {}
    for name, (ids, lengths) in raw.items():
        offsets = torch.zeros(len(lengths) + 1, dtype=torch.int64)
        torch.cumsum(lengths, 0, out=offsets[1:])
        encoded[name] = EncodedSplit(remap[ids], offsets, label_tensor(splits[name], num_labels))
    return vocab, encoded


def cache_key(cfg: DataConfig, fingerprint: str, vocab: Vocab | None = None,
              label_names: list[str] | None = None) -> str:
    fields = dataclasses.asdict(cfg)
    for unused in ("data_dir", "max_length", "dataset"):  # where it lives, and batch-time settings
        fields.pop(unused)
    if vocab is not None:
        fields["vocab"] = hashlib.sha256(vocab.to_json().encode()).hexdigest()
        fields["label_names"] = label_names
        del fields["vocab_max_size"], fields["vocab_min_freq"]
    blob = json.dumps([TOKENIZER_VERSION, fingerprint, fields], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def encode_dataset(cfg: DataConfig, vocab: Vocab | None = None,
                   label_names: list[str] | None = None) -> EncodedData:
    """Encoded train/val/test splits for `cfg`, from the cache when it holds them.

    With a `vocab` (and `label_names`) from a checkpoint, the entry its training run cached is reused
    when it holds exactly that vocabulary; otherwise the splits are encoded with the given one.
    """
    source = open_source(cfg)
    cache = Path(cfg.data_dir) / "cache"
    trained = cache / cache_key(cfg, source.fingerprint)
    if (trained / "meta.json").is_file():
        cached = _load(trained)
        if vocab is None or (cached.vocab == vocab and cached.label_names == label_names):
            return cached
    folder = cache / cache_key(cfg, source.fingerprint, vocab, label_names)
    if vocab is not None and (folder / "meta.json").is_file():
        return _load(folder)
    names, splits = load_splits(cfg, label_names)
    vocab, encoded = encode_splits(splits, cfg, vocab, len(names))
    data = EncodedData(vocab, names, encoded)
    _save(data, folder)
    return data


def _save(data: EncodedData, folder: Path) -> None:
    """Write to a temporary folder, then rename: a reader never sees half a cache entry. The cache only
    saves time, so a folder that cannot be written (a full disk, no permission) is a warning, not an
    error: this run goes on without it, and the next one tokenizes again."""
    tmp = None
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_dir(folder)
        for name, split in data.splits.items():
            path = tmp / f"{name}.safetensors"
            save_file({"ids": split.ids, "offsets": split.offsets, "labels": split.labels}, str(path))
            honour_umask(path)
        (tmp / "vocab.json").write_text(data.vocab.to_json(), encoding="utf-8")
        (tmp / "meta.json").write_text(json.dumps({"label_names": data.label_names}), encoding="utf-8")
        os.replace(tmp, folder)
    except (OSError, SafetensorError) as exc:
        if not (folder / "meta.json").is_file():  # not a concurrent writer that won the race
            log.warning(f"token cache not saved: "
                        f"{write_failed(folder, exc, after='this run continues without it')}")
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _load(folder: Path) -> EncodedData:
    vocab = Vocab.from_json((folder / "vocab.json").read_text(encoding="utf-8"))
    names = json.loads((folder / "meta.json").read_text(encoding="utf-8"))["label_names"]
    splits = {}
    for name in SPLITS:
        t = load_file(str(folder / f"{name}.safetensors"))
        splits[name] = EncodedSplit(t["ids"], t["offsets"], t["labels"])
    return EncodedData(vocab, names, splits)


def encode_file(path: Path, cfg: DataConfig, vocab: Vocab, label_names: list[str]) -> EncodedSplit:
    """Every row of one user file, encoded with a checkpoint's vocabulary and labels (for `eval`)."""
    rows = read_user_file(path, cfg.text_column, cfg.label_column, cfg.label_separator, cfg.multi_label)
    split = to_split(rows, label_names, str(path), cfg.multi_label)
    _, encoded = encode_splits({"test": split}, cfg, vocab, len(label_names))
    return encoded["test"]
