"""data/encode.py: the encoded splits are cached under a key of everything that changes them, and
tokenizing in two processes gives what one gives."""

import os
import random

import pytest

from lstmcli.config import DataConfig
from lstmcli.data.encode import encode_dataset


def test_the_encoded_splits_are_cached_and_reused(mirror, workdir, monkeypatch):
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


def test_the_cache_key_changes_with_settings(mirror, workdir):
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
