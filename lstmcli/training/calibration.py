"""Calibration: after training, one weight per branch of a classifier, fitted on the validation split.

A TextClassifier's logits are its branches' logits added up: the recurrent encoder's head, and an n-gram
bag's when it has one. Each branch trains on its own loss, so nothing puts the two on one scale: an
encoder that nearly fits its training split is far more confident than its test accuracy warrants,
and in a plain sum it outvotes a bag that is more accurate alone where the two disagree.

Calibration fits one positive weight per branch (model.branch_weights) to minimise the log-loss of the
weighted sum on the validation split: stacking, with P weights and no bias.
- With a bag, it decides how much each branch counts (what that gains on imdb_nbsvm:
  benchmarks/RESULTS.md, "Design choices").
- With one branch, it is temperature scaling (Guo et al. 2017). Every prediction stays what it was, and
  the probabilities become honest ones.
A weak prior keeps the weights finite where a small validation split is separable (fit_branch_weights). The
validation accuracy of a calibrated model was fitted on that split, so it is optimistic. The test
split is untouched.
"""

from __future__ import annotations

import dataclasses

import torch

from lstmcli import checkpoint
from lstmcli.data.batches import Truncation
from lstmcli.data.encode import EncodedSplit, encode_dataset
from lstmcli.errors import LstmcliError
from lstmcli.evaluation.evaluate import evaluate, rank_batches
from lstmcli.evaluation.thresholds import DEFAULT_THRESHOLD
from lstmcli.models.classifier import combine_branches
from lstmcli.models.loss import classification_loss, correct
from lstmcli.runtime.distributed import SINGLE, Dist, gather
from lstmcli.training.setup import loss_weight


@torch.no_grad()
def branch_logits(model, split: EncodedSplit, device: torch.device, batch_size: int, cut: Truncation,
                  dist: Dist = SINGLE) -> tuple[torch.Tensor, torch.Tensor]:
    """Every branch's logits on every example of `split`, float64 on the CPU: (P, N, C), and labels (N,)
    (multi-label: (N, C) 0/1).

    Under torchrun each rank runs every world_size-th batch, and every rank gets all of them back, in
    the same order, so every rank fits the same weights."""
    model.eval()
    parts, labels = [], []
    for batch in rank_batches(split, batch_size, cut, device, dist, desc="calibrating"):
        parts.append(model(batch.ids, batch.lengths, parts=True).double().cpu())  # (P, B, C)
        labels.append(batch.labels.cpu())
    p, c = len(model.branch_weights), model.spec.num_classes
    mine = (torch.cat(parts, 1) if parts else torch.zeros(p, 0, c, dtype=torch.float64),
            torch.cat(labels) if labels else split.labels[:0].clone())
    every = gather(dist, mine)
    return torch.cat([e[0] for e in every], 1), torch.cat([e[1] for e in every])


def _loss(u: torch.Tensor, parts: torch.Tensor, labels: torch.Tensor,
          class_weight: torch.Tensor | None) -> torch.Tensor:
    """The objective of log-weights u (P,): the mean log-loss (models/loss.py's: multi-label, binary
    cross-entropy) of sum_p w[p] * parts[p] ((P, N, C) against the labels) with w = exp(u), plus the
    -log of a normal prior on each w[p] around 1 (sigma 1), per example."""
    w = u.exp()
    prior = ((w - 1) ** 2).sum() / (2 * len(labels))
    return classification_loss(combine_branches(w, parts), labels, class_weight) + prior


def fit_branch_weights(parts: torch.Tensor, labels: torch.Tensor,
                       class_weight: torch.Tensor | None = None) -> torch.Tensor:
    """The weights (P,) float64, all > 0, that minimise the mean log-loss (with class weights, as
    training weighs it) of the weighted sum of `parts` (P, N, C) against `labels` (N,), a posteriori.

    They are exp(u): a weight cannot turn negative, which would reverse a branch's vote; one that points
    the wrong way goes to 0. The prior (normal around 1, the plain sum, sigma 1, on each weight) moves
    them very little on a thousand examples (it is per example, 1/N of the sum). Its use is where the
    split is separable, as a small one often is: no likelihood-best weight exists there (the larger,
    the better), and the prior keeps them finite. It costs nothing at the plain sum, so the fitted
    log-loss is never above the plain sum's.
    L-BFGS starts at u = 0, the plain sum, and is deterministic: the same logits give the same weights."""
    parts = parts.double()
    weight = None if class_weight is None else class_weight.double().cpu()
    u = torch.zeros(parts.size(0), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([u], lr=1.0, max_iter=200, tolerance_grad=1e-10, tolerance_change=1e-12,
                                  line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = _loss(u, parts, labels, weight)
        loss.backward()
        return loss

    optimizer.step(closure)
    return u.detach().exp()


def calibrate(model, split: EncodedSplit, device: torch.device, batch_size: int, cut: Truncation,
              dist: Dist = SINGLE, class_weight: torch.Tensor | None = None) -> dict:
    """Fit `model.branch_weights` on `split` (the validation split) and set it; returns what changed:
    the weights before and after, and the split's log-loss and accuracy with each."""
    parts, labels = branch_logits(model, split, device, batch_size, cut, dist)
    if labels.unique().numel() < 2:
        if labels.dim() == 2:
            raise LstmcliError(f"calibration needs a label present in some validation texts and absent in "
                               f"others; its {len(labels)} examples have every label or none")
        raise LstmcliError(f"calibration needs two labels or more in the validation split; its "
                           f"{len(labels)} examples have {labels.unique().numel()}")
    before = model.branch_weights.detach().double().cpu()
    after = fit_branch_weights(parts, labels, class_weight)

    def scored(weights: torch.Tensor) -> dict:
        logits = combine_branches(weights, parts)
        return {"loss": float(classification_loss(logits, labels)),
                "accuracy": correct(logits, labels) / len(labels)}

    model.branch_weights.copy_(after.to(model.branch_weights))
    return {"split_size": len(labels), "branches": model.spec.branches, "weights_before": before.tolist(),
            "weights": after.tolist(), "before": scored(before), "after": scored(after)}


def fit_label_thresholds(model, split: EncodedSplit, device: torch.device, batch_size: int, cut: Truncation,
                         label_names: list[str], dist: Dist = SINGLE) -> dict:
    """A multi-label model's per-label thresholds, each its F1-best on `split` (the validation split):
    {"thresholds": {label: t}, "split": "val", "n", "unfitted": labels no text there has (they keep
    DEFAULT_THRESHOLD), "micro_f1_at_0.5"}. Fitted after the branch weights, which move the
    probabilities."""
    val = evaluate(model, split, device, batch_size, cut, label_names, dist, desc="fitting thresholds")
    fitted = val["fitted_thresholds"]
    return {"thresholds": {name: f["threshold"] if f else DEFAULT_THRESHOLD for name, f in fitted.items()},
            "split": "val", "n": val["n"], "unfitted": [name for name, f in fitted.items() if not f],
            "micro_f1_at_0.5": val["micro_f1"]}


def calibrate_checkpoint(ck: checkpoint.Checkpoint, device: torch.device, data_dir: str | None = None,
                         batch_size: int | None = None) -> dict:
    """Fit the branch weights of the loaded checkpoint `ck` on the validation split its run held out
    (carved again exactly as in training) and set them in `ck.model`, and a multi-label model's
    thresholds after them (its report's "label_thresholds"); returns the report. Writing them into the
    checkpoint is the caller's (checkpoint.update)."""
    data_cfg = dataclasses.replace(ck.config.data, data_dir=data_dir or ck.config.data.data_dir)
    data = encode_dataset(data_cfg, vocab=ck.vocab, label_names=ck.label_names)
    size, cut = batch_size or ck.config.train.batch_size, Truncation.for_inference(ck.config.data)
    report = calibrate(ck.model, data.splits["val"], device, size, cut,
                       class_weight=loss_weight(ck.config, data))
    if data.multi_label:
        report["label_thresholds"] = fit_label_thresholds(ck.model, data.splits["val"], device, size, cut,
                                                          ck.label_names)
    return report
