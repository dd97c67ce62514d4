"""The NBSVM bag's counts: training texts of each class holding each n-gram, counted as training cuts."""

import torch

from lstmcli.config import Truncate
from lstmcli.data.batches import Truncation
from lstmcli.data.encode import EncodedSplit
from lstmcli.models.classifier import TextClassifier
from lstmcli.models.ngrams import HASH_MULTIPLIER
from lstmcli.models.spec import ModelSpec
from lstmcli.training.ngram_counts import count_into_bag, text_counts

V, BUCKETS = 10, 5


def pair(a: int, b: int) -> int:
    return V + (a * HASH_MULTIPLIER + b) % BUCKETS


def split_of(texts: list[list[int]], labels: list[int]) -> EncodedSplit:
    offsets = torch.tensor([0] + [len(t) for t in texts]).cumsum(0)
    return EncodedSplit(torch.tensor(sum(texts, []), dtype=torch.int32), offsets, torch.tensor(labels))


def expected_counts(texts, labels, num_classes=2) -> torch.Tensor:
    want = torch.zeros(V + BUCKETS, num_classes)
    for text, label in zip(texts, labels, strict=True):
        grams = set(text) | {pair(a, b) for a, b in zip(text[:-1], text[1:], strict=True)}
        for g in grams:
            want[g, label] += 1
    return want


def test_each_text_counts_once_per_ngram_under_its_label():
    texts = [[3, 4, 3, 4], [3, 5], [6], [4, 3, 3]]
    labels = [1, 0, 1, 0]
    got, holding = text_counts(split_of(texts, labels), Truncation(), V, BUCKETS, num_classes=2)
    assert got.dtype == torch.float32 and got.shape == (V + BUCKETS, 2)
    assert torch.equal(got, expected_counts(texts, labels))
    assert got[3].tolist() == [2, 1]  # in texts 1, 2 and 4, however often each repeats it
    assert torch.equal(holding, got.sum(1))  # one label a text: the texts holding a row are the sum
    # batches of any size count the same
    again = text_counts(split_of(texts, labels), Truncation(), V, BUCKETS, 2, batch_size=1)
    assert torch.equal(again[0], got) and torch.equal(again[1], holding)


def test_a_multi_label_split_counts_each_text_under_every_label_it_has():
    texts = [[3, 4], [3, 5], [6]]
    split = split_of(texts, [0, 0, 0])
    split.labels = torch.tensor([[1, 1], [0, 1], [0, 0]], dtype=torch.uint8)  # a text of no label too
    got, holding = text_counts(split, Truncation(), V, BUCKETS, 2)
    assert got[3].tolist() == [1, 2] and got[6].tolist() == [0, 0]
    assert holding[3] == 2 and holding[6] == 1


def test_counts_see_texts_cut_as_training_cuts_them():
    texts = [[1, 2, 3, 4, 5, 6], [7, 8]]
    got, _ = text_counts(split_of(texts, [0, 1]), Truncation(4, Truncate.head_tail), V, BUCKETS, 2)
    assert torch.equal(got, expected_counts([[1, 2, 5, 6], [7, 8]], [0, 1]))  # 3 and 4 were cut out


def test_count_into_bag_fills_an_nbsvm_bag_and_leaves_other_models_alone():
    texts, labels = [[3, 4], [5, 6, 5]], [0, 1]
    model = TextClassifier(ModelSpec(vocab_size=V, num_classes=2, hidden_size=4, ngram_buckets=BUCKETS,
                                     ngram_bag="nbsvm"))
    assert count_into_bag(model, split_of(texts, labels), Truncation())
    assert torch.equal(model.ngrams.counts, expected_counts(texts, labels))
    fasttext = TextClassifier(ModelSpec(vocab_size=V, num_classes=2, hidden_size=4, ngram_buckets=BUCKETS))
    before = {k: v.clone() for k, v in fasttext.state_dict().items()}
    assert not count_into_bag(fasttext, split_of(texts, labels), Truncation())
    assert all(torch.equal(before[k], v) for k, v in fasttext.state_dict().items())
    plain = TextClassifier(ModelSpec(vocab_size=V, num_classes=2))
    assert not count_into_bag(plain, split_of(texts, labels), Truncation())
