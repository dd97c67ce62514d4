import json
import os
import random

import pytest

from lstmcli.config import DataConfig
from lstmcli.data.encode import encode_dataset
from lstmcli.data.readers import read_ag_csv, read_user_file
from lstmcli.data.registry import AG_NEWS
from lstmcli.data.splits import balanced_sample, load_splits
from lstmcli.errors import DatasetError


def test_ag_csv_reader_joins_title_and_description(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text('"3","Wall St. Bears","Reuters - Short-sellers, ""quoted""\\band"\n"1","T","D"\n')
    texts, labels = read_ag_csv(path, list(AG_NEWS.label_names))
    assert texts == ['Wall St. Bears Reuters - Short-sellers, "quoted"\\band', "T D"]
    assert labels == ["Business", "World"]


@pytest.mark.parametrize("bad", ['"3","only two"\n', '"9","a","b"\n', '"x","a","b"\n'])
def test_ag_csv_malformed_row_names_the_line(tmp_path, bad):
    path = tmp_path / "t.csv"
    path.write_text('"1","ok","fine"\n"2","ok","fine"\n' + bad)
    with pytest.raises(DatasetError, match=r"t\.csv line 3: malformed AG_NEWS row"):
        read_ag_csv(path, list(AG_NEWS.label_names))


def test_ag_csv_unclosed_quote_is_a_dataset_error(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text('"1","ok","fine"\n"2","broken\n')
    with pytest.raises(DatasetError, match="line"):
        read_ag_csv(path, list(AG_NEWS.label_names))


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


def test_user_csv_tsv_jsonl(tmp_path):
    (tmp_path / "a.csv").write_text('text,label,extra\n"hello, world",pos,1\nbad day,neg,2\n')
    (tmp_path / "a.tsv").write_text("label\ttext\npos\thello\n")
    records = [json.dumps({"text": "hi", "label": 1}), "", json.dumps({"text": "yo", "label": 0})]
    (tmp_path / "a.jsonl").write_text("\n".join(records) + "\n")
    assert read_user_file(tmp_path / "a.csv", "text", "label") == (["hello, world", "bad day"],
                                                                   ["pos", "neg"])
    assert read_user_file(tmp_path / "a.tsv", "text", "label") == (["hello"], ["pos"])
    assert read_user_file(tmp_path / "a.jsonl", "text", "label") == (["hi", "yo"], ["1", "0"])


def test_user_headerless_columns_joined(tmp_path):
    (tmp_path / "ag.csv").write_text('"2","Title","Body text"\n')
    assert read_user_file(tmp_path / "ag.csv", "1,2", "0") == (["Title Body text"], ["2"])


def test_user_file_errors_name_the_line(tmp_path):
    (tmp_path / "a.csv").write_text("text,label\nok,pos\nshort\n")
    with pytest.raises(DatasetError, match=r"a\.csv line 3: 1 fields, header has 2"):
        read_user_file(tmp_path / "a.csv", "text", "label")
    (tmp_path / "b.csv").write_text("body,label\nok,pos\n")
    with pytest.raises(DatasetError, match="no column 'text'"):
        read_user_file(tmp_path / "b.csv", "text", "label")
    (tmp_path / "c.jsonl").write_text('{"text": "a", "label": 1}\n{oops\n')
    with pytest.raises(DatasetError, match=r"c\.jsonl line 2: invalid JSON"):
        read_user_file(tmp_path / "c.jsonl", "text", "label")
    (tmp_path / "d.csv").write_bytes(b"text,label\n\xff\xfe,pos\n")
    with pytest.raises(DatasetError, match="not UTF-8"):
        read_user_file(tmp_path / "d.csv", "text", "label")


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
    with pytest.raises(DatasetError, match="unknown dataset 'imbd': expected ag_news, imdb, or a path"):
        load_splits(DataConfig(dataset="imbd"))


def test_prepare_caches_and_reuses(mirror, workdir, monkeypatch):
    cfg = DataConfig(dataset="ag_news", data_dir="d")
    first = encode_dataset(cfg)
    assert first.vocab.itos[:2] == ["<pad>", "<unk>"]
    assert first.splits["train"].ids.dtype.is_floating_point is False
    import lstmcli.data.encode as prep
    monkeypatch.setattr(prep, "load_splits", lambda *a, **k: pytest.fail("tokenized again"))
    again = encode_dataset(cfg)
    assert again.vocab == first.vocab
    for s in ("train", "val", "test"):
        assert again.splits[s].ids.equal(first.splits[s].ids)
        assert again.splits[s].labels.equal(first.splits[s].labels)
    # a checkpoint's own vocabulary reuses that entry too
    assert encode_dataset(cfg, vocab=first.vocab, label_names=first.label_names).vocab == first.vocab


def test_prepare_key_changes_with_settings(mirror, workdir):
    a = encode_dataset(DataConfig(dataset="ag_news", vocab_max_size=10))
    b = encode_dataset(DataConfig(dataset="ag_news", vocab_max_size=20))
    assert len(a.vocab) == 10 and len(b.vocab) == 20


def _tiny_splits():
    from lstmcli.data.splits import RawSplit
    rng = random.Random(0)
    words = [f"w{i}" for i in range(40)] + ["<pad>", "<unk>", "Big", "big."]
    texts = [" ".join(rng.choice(words) for _ in range(rng.randrange(0, 12))) for _ in range(101)]
    return {"train": RawSplit(texts[:60], [0] * 60), "val": RawSplit(texts[60:70], [1] * 10),
            "test": RawSplit(texts[70:], [0] * 31)}


def _encoded(monkeypatch, min_chars):
    import lstmcli.data.encode as prep
    monkeypatch.setattr(prep, "PARALLEL_MIN_CHARS", min_chars)
    vocab, enc = prep.encode_splits(_tiny_splits(), DataConfig(vocab_max_size=30))
    return vocab, {name: (s.ids.tolist(), s.offsets.tolist()) for name, s in enc.items()}


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="the two-process path needs 2 CPUs")
def test_two_process_tokenizing_equals_one_process(monkeypatch):
    """Above PARALLEL_MIN_CHARS a forked child tokenizes half the texts with its own provisional ids;
    the merged result must be the one-process result exactly (vocabulary, ids, offsets)."""
    import lstmcli.data.encode as prep
    pools = []

    class Recorded(prep.ProcessPoolExecutor):
        def __init__(self, *args, **kwargs):
            pools.append(self)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(prep, "ProcessPoolExecutor", Recorded)
    one = _encoded(monkeypatch, 10**12)
    assert pools == []
    two = _encoded(monkeypatch, 0)
    assert len(pools) == 1 and two == one
    assert prep._TEXTS == []  # the texts are not held after the child is done


def test_tokenizing_falls_back_to_one_process_when_fork_fails(monkeypatch):
    import lstmcli.data.encode as prep
    one = _encoded(monkeypatch, 10**12)

    def no_fork(*args, **kwargs):
        raise OSError("no semaphores here")

    monkeypatch.setattr(prep, "ProcessPoolExecutor", no_fork)
    monkeypatch.setattr(prep.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert _encoded(monkeypatch, 0) == one
