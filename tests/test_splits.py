"""data/splits.py: built-in and user datasets split into seeded, disjoint train/val/test, with
class-balanced caps."""

import random

import pytest

from lstmcli.config import DataConfig
from lstmcli.data.splits import balanced_sample, load_splits
from lstmcli.errors import DatasetError


def test_builtin_splits_from_mirror(mirror, workdir):
    names, splits = load_splits(DataConfig(dataset="imdb", val_fraction=0.25))
    assert names == ["neg", "pos"]
    # 80 train reviews, unsup ignored
    assert [len(splits[s]) for s in ("train", "val", "test")] == [60, 20, 80]
    assert "<br />" in splits["train"].texts[0]
    names, splits = load_splits(DataConfig(dataset="ag_news"))
    assert names == ["World", "Sports", "Business", "Sci/Tech"]
    assert len(splits["test"]) == 40 and len(splits["train"]) + len(splits["val"]) == 120


def test_val_split_is_seeded_and_disjoint(mirror, workdir):
    a = load_splits(DataConfig(dataset="ag_news", split_seed=1))[1]
    b = load_splits(DataConfig(dataset="ag_news", split_seed=1))[1]
    c = load_splits(DataConfig(dataset="ag_news", split_seed=2))[1]
    assert a["val"].texts == b["val"].texts and a["val"].texts != c["val"].texts
    assert not set(a["val"].texts) & set(a["train"].texts)
    assert len(a["val"]) == 6  # 5% of 120


def test_caps_keep_classes_balanced(mirror, workdir):
    _, splits = load_splits(DataConfig(dataset="ag_news", max_train_examples=40, max_eval_examples=12))
    assert len(splits["train"]) == 40 and len(splits["val"]) == 6 and len(splits["test"]) == 12
    assert sorted(splits["train"].labels.count(k) for k in range(4)) == [10, 10, 10, 10]
    assert [splits["test"].labels.count(k) for k in range(4)] == [3, 3, 3, 3]


def test_balanced_sample_with_a_small_class():
    labels = [0] * 100 + [1] * 3
    chosen = balanced_sample(labels, 20, random.Random(0))
    assert len(chosen) == 20 and sum(labels[i] for i in chosen) == 3








def test_user_labels_sorted_and_test_carved(tmp_path, workdir):
    rows = "".join(f"{'good' if i % 3 else 'bad'} text {i},{['10', '2', '1'][i % 3]}\n" for i in range(90))
    (tmp_path / "u.csv").write_text("text,label\n" + rows)
    cfg = DataConfig(dataset=str(tmp_path / "u.csv"), test_fraction=0.2, val_fraction=0.1)
    names, splits = load_splits(cfg)
    assert names == ["1", "2", "10"]  # numeric labels sort as numbers
    assert len(splits["test"]) == 18 and len(splits["val"]) == 7 and len(splits["train"]) == 65


def test_user_folder_and_unseen_test_label(tmp_path, workdir):
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "train.csv").write_text("text,label\na,x\nb,y\nc,x\nd,y\n")
    (folder / "test.csv").write_text("text,label\na,x\nb,z\n")
    with pytest.raises(DatasetError, match="label 'z' was not seen in training"):
        load_splits(DataConfig(dataset=str(folder)))
    (folder / "test.csv").write_text("text,label\na,x\n")
    names, splits = load_splits(DataConfig(dataset=str(folder), val_fraction=0.25))
    assert names == ["x", "y"] and len(splits["test"]) == 1 and len(splits["val"]) == 1


def test_unknown_dataset(workdir):
    with pytest.raises(DatasetError, match="unknown dataset 'imbd': expected ag_news, imdb, ag_news_pairs, "
                                           "or a path"):
        load_splits(DataConfig(dataset="imbd"))












