"""Fixtures: tiny corpora written in both real formats (AG_NEWS CSV, the aclImdb tarball), served
from a local mirror folder with its own SHA256SUMS, and an isolated working folder per test."""

from __future__ import annotations

import csv
import hashlib
import io
import random
import tarfile
from pathlib import Path

import pytest

SHARED_DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"

POS_WORDS = ["great", "wonderful", "superb", "moving", "brilliant", "loved"]
NEG_WORDS = ["awful", "boring", "terrible", "dull", "waste", "hated"]
FILLER = ["the", "film", "movie", "plot", "actor", "scene", "story", "it", "was", "and", "a", "of"]
AG_TOPICS = {
    1: ["minister", "election", "war", "embassy", "treaty"],
    2: ["match", "goal", "coach", "season", "cup"],
    3: ["shares", "profit", "market", "bank", "stocks"],
    4: ["software", "internet", "space", "chip", "science"],
}


def sentence(rng: random.Random, keywords: list[str], n: int = 12) -> str:
    words = [rng.choice(FILLER) for _ in range(n)] + rng.sample(keywords, 3)
    rng.shuffle(words)
    return " ".join(words)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_sums(mirror: Path, names: list[str]) -> None:
    lines = [f"{sha256(mirror / n)}  {n}\n" for n in names]
    (mirror / "SHA256SUMS").write_text("".join(lines))


def write_ag_csv(path: Path, rows_per_class: int, seed: int) -> None:
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, quoting=csv.QUOTE_ALL, lineterminator="\n")
        for i in range(rows_per_class * 4):
            label = i % 4 + 1
            title = sentence(rng, AG_TOPICS[label], 4).title()
            writer.writerow([str(label), title, sentence(rng, AG_TOPICS[label]) + ' \\ "quoted"'])


def write_imdb_tar(path: Path, per_class: int, seed: int) -> None:
    rng = random.Random(seed)
    with tarfile.open(path, "w:gz") as tar:
        for split in ("train", "test"):
            for label, words in (("pos", POS_WORDS), ("neg", NEG_WORDS)):
                for i in range(per_class):
                    text = sentence(rng, words, 20) + "<br /><br />" + sentence(rng, words, 10)
                    data = text.encode("utf-8")
                    info = tarfile.TarInfo(f"aclImdb/{split}/{label}/{i}_{8 if label == 'pos' else 2}.txt")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
            unsup = tarfile.TarInfo("aclImdb/train/unsup/0_0.txt")
            unsup.size = 5
            tar.addfile(unsup, io.BytesIO(b"skip!"))


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A fresh working folder as cwd, with no mirror or data dir inherited from the caller."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv("LSTMCLI_MIRROR", raising=False)
    monkeypatch.delenv("LSTMCLI_DATA_DIR", raising=False)
    return work


@pytest.fixture
def mirror(tmp_path, workdir, monkeypatch):
    """A local mirror holding tiny AG_NEWS and IMDB files under the upstream names, with SHA256SUMS."""
    root = tmp_path / "mirror"
    write_ag_csv(root / "ag_news_csv" / "train.csv", 30, seed=1)
    write_ag_csv(root / "ag_news_csv" / "test.csv", 10, seed=2)
    write_imdb_tar(root / "aclImdb_v1.tar.gz", 40, seed=3)
    write_sums(root, ["ag_news_csv/train.csv", "ag_news_csv/test.csv", "aclImdb_v1.tar.gz"])
    monkeypatch.setenv("LSTMCLI_MIRROR", str(root))
    return root
