"""Pooling over time: an encoder's outputs (B, T, F) -> one vector (B, F) per sequence, from its real steps.

Batches are length-sorted, so most of the width is real in every row: the steps up to the shortest
length are reduced as they are (a view), and only the tail past it is masked; masking all T steps
would copy the whole (B, T, F) tensor, the model's largest activation.

Max pooling in training is an autograd Function (_MaxOverTime) for its backward. Autograd's, through
amax and the two slices, makes zeros of the outputs' shape twice, copies each slice's gradient into one
and adds them, and the scratch encoder then copies the sum back to its time-major layout: several
passes over (B, T, F) for B x F non-zeros. _MaxOverTime writes the gradient once, in the outputs' own
layout (benchmarks/RESULTS.md, "Design choices").
"""

from __future__ import annotations

import torch


def _tail_inside(outputs: torch.Tensor, lengths: torch.Tensor, shortest: int) -> torch.Tensor:
    """(B, T - shortest, 1) bool: which steps past the shortest length are real."""
    steps = torch.arange(shortest, outputs.size(1), device=outputs.device)
    return (steps[None, :] < lengths[:, None])[:, :, None]


def _empty_laid_out(shape: torch.Size, stride: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """An uninitialised tensor of `shape` whose dimensions lie in memory in the order `stride` gives (a
    transposed view's gradient is a transposed tensor), so that the gradient reaches the encoder in the
    layout it wrote its outputs in; dtype and device of `like`."""
    order = sorted(range(len(shape)), key=lambda d: -stride[d])  # outermost dimension first
    empty = like.new_empty([shape[d] for d in order])
    return empty.permute([order.index(d) for d in range(len(shape))])


def _max(outputs: torch.Tensor, shortest: int, inside: torch.Tensor) -> torch.Tensor:
    """(B, F): the max over the first `shortest` steps and the real ones of the tail (`inside`)."""
    top = outputs[:, :shortest].amax(1)  # (B, F)
    if outputs.size(1) > shortest:  # (amax of an empty dimension is an error)
        top = torch.maximum(top, outputs[:, shortest:].masked_fill(~inside, float("-inf")).amax(1))
    return top


class _MaxOverTime(torch.autograd.Function):
    """outputs (B, T, F) -> (B, F): _max's value, with the gradient shared among the real steps that hold
    the maximum, as amax shares it (ties are rare but for bf16)."""

    @staticmethod
    def forward(ctx, outputs: torch.Tensor, shortest: int, inside: torch.Tensor) -> torch.Tensor:
        top = _max(outputs, shortest, inside)
        ctx.save_for_backward(outputs, top, inside)
        ctx.shortest = shortest
        return top

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        outputs, top, inside = ctx.saved_tensors
        s = ctx.shortest
        hits = [outputs[:, :s] == top[:, None], (outputs[:, s:] == top[:, None]) & inside]  # (B, ., F) bool
        share = grad / (hits[0].sum(1) + hits[1].sum(1))  # (B, F): what each maximum's step gets
        d_outputs = _empty_laid_out(outputs.shape, outputs.stride(), grad)
        zero = grad.new_zeros(())
        torch.where(hits[0], share[:, None], zero, out=d_outputs[:, :s])  # every position written once
        torch.where(hits[1], share[:, None], zero, out=d_outputs[:, s:])
        return d_outputs, None, None


def pool(outputs: torch.Tensor | None, final: torch.Tensor, lengths: torch.Tensor, how: str) -> torch.Tensor:
    """(B, T, F) outputs -> (B, F), looking at real positions only ("last": the final state `final`;
    the encoder then gives None for the outputs)."""
    if how == "last":
        return final
    lengths = lengths.to(outputs.device)
    shortest = int(lengths.min())
    inside = _tail_inside(outputs, lengths, shortest)
    if how == "mean":
        tail = outputs[:, shortest:] * inside
        return (outputs[:, :shortest].sum(1) + tail.sum(1)) / lengths.to(outputs.dtype)[:, None]
    if torch.is_grad_enabled() and outputs.requires_grad:  # its own backward (see the module's docstring)
        return _MaxOverTime.apply(outputs, shortest, inside)
    return _max(outputs, shortest, inside)
