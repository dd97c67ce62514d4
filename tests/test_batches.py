import torch

from lstmcli.config import Truncate
from lstmcli.data.batches import Truncation, bucket_batches, collate, padding_share, sorted_batches
from lstmcli.data.encode import EncodedSplit


def make_split(lengths):
    ids = torch.cat([torch.arange(1, n + 1, dtype=torch.int32) + 100 * i for i, n in enumerate(lengths)])
    offsets = torch.zeros(len(lengths) + 1, dtype=torch.int64)
    offsets[1:] = torch.tensor(lengths).cumsum(0)
    return EncodedSplit(ids, offsets, torch.arange(len(lengths)) % 2)


def test_bucketed_batches_hold_their_longest_text_first():
    lengths = torch.randint(1, 50, (1000,), generator=torch.Generator().manual_seed(0))
    for batch in bucket_batches(lengths, 16, seed=0, epoch=1):
        assert lengths[batch].tolist() == sorted(lengths[batch].tolist(), reverse=True)


def test_every_example_once_and_seeded_order():
    lengths = torch.randint(1, 300, (1000,), generator=torch.Generator().manual_seed(0))
    a = bucket_batches(lengths, 32, seed=7, epoch=1, pool=4)
    assert sorted(torch.cat(a).tolist()) == list(range(1000))
    assert all(len(b) <= 32 for b in a)
    same = bucket_batches(lengths, 32, seed=7, epoch=1, pool=4)
    assert [b.tolist() for b in a] == [b.tolist() for b in same]
    other_epoch = bucket_batches(lengths, 32, seed=7, epoch=2, pool=4)
    assert [b.tolist() for b in a] != [b.tolist() for b in other_epoch]
    other_seed = bucket_batches(lengths, 32, seed=8, epoch=1, pool=4)
    assert [b.tolist() for b in a] != [b.tolist() for b in other_seed]


def test_bucketing_cuts_padding():
    lengths = torch.randint(1, 1000, (5000,), generator=torch.Generator().manual_seed(1))
    bucketed = bucket_batches(lengths, 64, seed=0, epoch=1)
    random_batches = list(torch.randperm(5000, generator=torch.Generator().manual_seed(0)).split(64))
    assert padding_share(bucketed, lengths) < 0.02
    assert padding_share(random_batches, lengths) > 0.3


def test_collate_pads_with_zero_and_truncates():
    split = make_split([3, 1, 5])
    batch = collate(split, torch.tensor([2, 1, 0]))
    assert batch.lengths.tolist() == [5, 1, 3]
    assert batch.ids.tolist() == [[201, 202, 203, 204, 205], [101, 0, 0, 0, 0], [1, 2, 3, 0, 0]]
    assert batch.labels.tolist() == [0, 1, 0]
    short = collate(split, torch.tensor([2, 0]), Truncation(2))
    assert short.ids.tolist() == [[201, 202], [1, 2]] and short.lengths.tolist() == [2, 2]


def test_sorted_batches_cover_all():
    lengths = torch.tensor([5, 1, 3, 2])
    batches = sorted_batches(lengths, 3)
    assert [b.tolist() for b in batches] == [[0, 2, 3], [1]]  # longest first


def test_collate_head_tail_keeps_both_ends():
    from lstmcli.data.batches import Truncation
    split = make_split([7, 3])
    batch = collate(split, torch.tensor([0, 1]), Truncation(5, Truncate.head_tail))
    # 7 tokens cut to 5: the first 3 and the last 2; a short text is left whole
    assert batch.ids.tolist() == [[1, 2, 3, 6, 7], [101, 102, 103, 0, 0]]
    assert batch.lengths.tolist() == [5, 3]


def test_truncation_apply_matches_collate():
    from lstmcli.data.batches import Truncation
    split = make_split([7])
    cuts = (Truncation(5, Truncate.head_tail), Truncation(5), Truncation(0),
            Truncation(9, Truncate.head_tail))
    for cut in cuts:
        tokens = split.ids[:7].tolist()
        assert collate(split, torch.tensor([0]), cut).ids[0].tolist() == cut.apply(tokens)
