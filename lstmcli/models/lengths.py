"""Exact variable lengths on padded tensors, for either layout (batch-first or time-major).

Both encoder implementations run a backward direction as a forward one over each sequence reversed
within its own length (padding stays where it is, so the run starts from the last real token), and
read each sequence's state at its last real position.
"""

from __future__ import annotations

import torch


def _positions(x: torch.Tensor, lengths: torch.Tensor, time_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(t, lens), broadcastable to x's first two dimensions: step indices and each sequence's length."""
    T = x.size(time_dim)
    t = torch.arange(T, device=x.device)
    lens = lengths.to(x.device)
    return (t[None, :], lens[:, None]) if time_dim == 1 else (t[:, None], lens[None, :])


def reverse_within_length(x: torch.Tensor, lengths: torch.Tensor, time_dim: int = 1) -> torch.Tensor:
    """x (B, T, F...) (time_dim 1) or (T, B, F...) (time_dim 0) with each sequence's first `length` steps
    reversed and its padding left in place; its own inverse."""
    t, lens = _positions(x, lengths, time_dim)
    src = torch.where(t < lens, lens - 1 - t, t)  # (B, T) or (T, B): the step each position reads
    other = torch.arange(x.size(1 - time_dim), device=x.device)  # the sequence index
    rows = src * x.size(1) + other[None, :] if time_dim == 0 else other[:, None] * x.size(1) + src
    return _Permute.apply(x, rows.flatten())


class _Permute(torch.autograd.Function):
    """x's first two dimensions as one of rows, those rows taken in the order `rows` gives (a permutation
    that is its own inverse, so the gradient is permuted the same way). A whole row of features at a time
    (index_select), not a gather with an index per element, whose backward is a slow scatter-add."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        ctx.rows = rows
        return x.flatten(0, 1).index_select(0, rows).view(x.shape)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad.flatten(0, 1).index_select(0, ctx.rows).view(grad.shape), None


def last_real(x: torch.Tensor, lengths: torch.Tensor, time_dim: int = 1) -> torch.Tensor:
    """x (B, T, F) or (T, B, F) -> (B, F): each sequence's entry at position length - 1."""
    last = lengths.to(x.device) - 1
    rows = torch.arange(last.numel(), device=x.device)
    return x[rows, last] if time_dim == 1 else x[last, rows]
