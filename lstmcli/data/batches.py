"""Batches: length-bucketed index lists and the collate that pads them.

Bucketing keeps padding small (similar lengths share a batch) while the batch order is shuffled each
epoch, deterministically for a seed: examples are shuffled, cut into pools of `pool` batches, each
pool is sorted by length and cut into batches, and the batches are shuffled. Each batch holds its
longest text first, as PackedSequence wants and the scratch encoders use without moving rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lstmcli.config import Truncate
from lstmcli.data.cut import DEFAULT_MAX_LENGTH, Truncation  # noqa: F401 (here too, where callers import them)
from lstmcli.data.encode import EncodedSplit


@dataclass
class Batch:
    ids: torch.Tensor  # (B, T) int64, 0-padded
    lengths: torch.Tensor  # (B,) int64, >= 1
    labels: torch.Tensor  # (B,) int64, or multi-label (B, C) uint8 0/1

    def to(self, device: torch.device) -> Batch:
        # lengths stay on the CPU: packing wants them there, and indexing uses a device copy.
        return Batch(self.ids.to(device, non_blocking=True), self.lengths,
                     self.labels.to(device, non_blocking=True))

    @property
    def num_tokens(self) -> int:
        return int(self.lengths.sum())


def truncated_lengths(split: EncodedSplit, max_length: int) -> torch.Tensor:
    lengths = split.lengths
    return lengths.clamp(max=max_length) if max_length else lengths


def bucket_batches(lengths: torch.Tensor, batch_size: int, seed: int, epoch: int,
                   pool: int = 100) -> list[torch.Tensor]:
    """Index batches covering every example exactly once, in a seeded order for (seed, epoch)."""
    g = torch.Generator().manual_seed((seed * 100_003 + epoch) % 2**63)  # any seed up to 2^63-1
    order = torch.randperm(len(lengths), generator=g)
    batches: list[torch.Tensor] = []
    for chunk in order.split(batch_size * pool):
        # stable sort: ties keep their shuffled order, so equal lengths still mix across epochs
        chunk = chunk[torch.sort(lengths[chunk], descending=True, stable=True).indices]
        batches.extend(chunk.split(batch_size))
    perm = torch.randperm(len(batches), generator=g).tolist()
    return [batches[i] for i in perm]


def sorted_batches(lengths: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """Every example once, batched by length (for evaluation: little padding, fixed order)."""
    return list(torch.sort(lengths, descending=True, stable=True).indices.split(batch_size))


NO_CUT = Truncation()  # every token kept


def collate(split: EncodedSplit, indices: torch.Tensor, cut: Truncation = NO_CUT) -> Batch:
    """Pad the examples at `indices`, cut as `cut` says, into a Batch."""
    starts = split.offsets[indices]
    full = split.lengths[indices]
    lengths = truncated_lengths(split, cut.length)[indices]
    width = int(lengths.max())
    # positions (B, T): start + t where t < length, else an index we then overwrite with padding
    steps = torch.arange(width)
    mask = steps < lengths[:, None]
    offsets = starts[:, None] + steps
    if cut.keep is Truncate.head_tail and cut.length:
        # past the first half, jump over the middle of a long text to its last tokens
        skip = (full - lengths)[:, None] * (steps >= cut.head)
        offsets = offsets + skip
    pos = offsets.clamp(max=max(len(split.ids) - 1, 0))
    ids = torch.where(mask, split.ids[pos].long(), 0)
    return Batch(ids, lengths, split.labels[indices])


def padding_share(batches: list[torch.Tensor], lengths: torch.Tensor) -> float:
    """Share of padded positions over all positions of `batches`."""
    real = padded = 0
    for idx in batches:
        ls = lengths[idx]
        real += int(ls.sum())
        padded += int(ls.max()) * len(idx)
    return 1 - real / padded if padded else 0.0
