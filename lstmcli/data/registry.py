"""The built-in datasets: one table, REGISTRY, of what each is (files with their upstream URLs and
checksums, label names, the reader of its format, a one-line description).

The table feeds `splits.open_source`, the run folder's default name, `--dataset`'s help, `lstmcli
datasets`, and the README's table (a test keeps that in step). Adding a dataset is one entry here and,
for a new format, its reader in readers.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lstmcli.data import pairs
from lstmcli.data.download import RemoteFile, extract_once, fetch
from lstmcli.data.readers import Rows, read_ag_csv, read_imdb_dir


@dataclass(frozen=True)
class BuiltinDataset:
    name: str
    about: str  # one line: where the text comes from and what the labels mean
    label_names: tuple[str, ...]
    files: dict[str, RemoteFile]  # by role (a split's name, or "archive")
    read: Callable[[BuiltinDataset, str, Path], Rows]  # (self, split, cache folder) -> rows; fetches first
    splits: tuple[str, ...] = ("train", "test")
    recipe: str = ""  # a derived dataset's recipe version (pairs.RECIPE): a new one is new data

    @property
    def fingerprint(self) -> str:
        """Changes whenever the files could have."""
        recipe = f"{self.recipe}:" if self.recipe else ""
        return f"{self.name}:{recipe}" + ",".join(f.md5 for f in self.files.values())


def _read_ag_news(ds: BuiltinDataset, split: str, cache: Path) -> Rows:
    return read_ag_csv(fetch(ds.files[split], cache), list(ds.label_names))


def _read_ag_news_pairs(ds: BuiltinDataset, split: str, cache: Path) -> Rows:
    return pairs.ag_news_pairs(read_ag_csv(fetch(ds.files["test"], cache), list(ds.label_names)))[split]


def _read_imdb(ds: BuiltinDataset, split: str, cache: Path) -> Rows:
    root = extract_once(fetch(ds.files["archive"], cache), cache, "aclImdb")
    return read_imdb_dir(root, split, list(ds.label_names))


AG_BASE = "https://raw.githubusercontent.com/mhjabreel/CharCnn_Keras/master/data/ag_news_csv"
AG_NEWS = BuiltinDataset(
    "ag_news", "news titles and descriptions in 4 topics (120,000 train / 7,600 test); text = title + "
               "description, as torchtext", ("World", "Sports", "Business", "Sci/Tech"),
    {"train": RemoteFile("ag_news", "ag_news_csv/train.csv", f"{AG_BASE}/train.csv",
                         "b1a00f826fdfbd249f79597b59e1dc12"),
     "test": RemoteFile("ag_news", "ag_news_csv/test.csv", f"{AG_BASE}/test.csv",
                        "d52ea96a97a2d943681189a97654912d")},
    _read_ag_news)
IMDB = BuiltinDataset(
    "imdb", "movie reviews, negative or positive (25,000 train / 25,000 test); train/unsup is not read",
    ("neg", "pos"),
    {"archive": RemoteFile("imdb", "aclImdb_v1.tar.gz",
                           "http://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz",
                           "7c2ac02c03563afcf9b574c7e56c153a")},
    _read_imdb)

AG_NEWS_PAIRS = BuiltinDataset(
    "ag_news_pairs", "multi-label: AG_NEWS test articles alone or joined in pairs, labelled with the union "
                     "of their topics (5,000-odd texts, seeded; lstmcli/data/pairs.py)",
    AG_NEWS.label_names, {"test": AG_NEWS.files["test"]}, _read_ag_news_pairs, ("train", "val", "test"),
    recipe=pairs.RECIPE)

REGISTRY: dict[str, BuiltinDataset] = {ds.name: ds for ds in (AG_NEWS, IMDB, AG_NEWS_PAIRS)}
