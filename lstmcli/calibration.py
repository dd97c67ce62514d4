"""Calibration: after training, one weight per branch of a classifier, fitted on the validation split.

A TextClassifier's logits are its branches' logits added up: the recurrent encoder's head, and an n-gram
bag's when it has one. Each branch trains on its own loss, so nothing puts the two on one scale. On
IMDB (imdb_nbsvm) the BiLSTM ends its epochs near 98% training accuracy. Its logits are then far more
confident than its 88-90% test accuracy warrants, and in a plain sum it outvotes the NBSVM bag (91.3%
alone) where the two disagree.

Calibration fits one positive weight per branch (model.branch_scale) to minimise the log-loss of the
weighted sum on the validation split: stacking, with P weights and no bias.
- With a bag, it decides how much each branch counts. On three CPU runs of imdb_nbsvm it found about
  0.3 for the BiLSTM and 0.7 for the bag, which took their test accuracy from 91.45% to 91.80% (mean).
- With one branch, it is temperature scaling (Guo et al. 2017). Every prediction stays what it was, and
  the probabilities become honest ones.
A weak prior keeps the weights finite where a small validation split is separable (fit_scales). The
validation accuracy of a calibrated model was fitted on that split, so it is optimistic. The test
split is untouched.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import torch.nn.functional as F

from . import checkpoint
from .batching import Cut
from .device import resolve_device
from .distributed import SINGLE, Dist, gather
from .errors import LstmcliError
from .evaluation import rank_batches
from .models.classifier import weigh
from .prepare import EncodedSplit, prepare
from .run_setup import loss_weight


@torch.no_grad()
def branch_logits(model, split: EncodedSplit, device: torch.device, batch_size: int, cut: Cut,
                  dist: Dist = SINGLE) -> tuple[torch.Tensor, torch.Tensor]:
    """Every branch's logits on every example of `split`, float64 on the CPU: (P, N, C), and labels (N,).

    Under torchrun each rank runs every world_size-th batch, and every rank gets all of them back, in
    the same order, so every rank fits the same weights."""
    model.eval()
    parts, labels = [], []
    for batch in rank_batches(split, batch_size, cut, device, dist):
        parts.append(model(batch.ids, batch.lengths, parts=True).double().cpu())  # (P, B, C)
        labels.append(batch.labels.cpu())
    p, c = len(model.branch_scale), model.spec.num_classes
    mine = (torch.cat(parts, 1) if parts else torch.zeros(p, 0, c, dtype=torch.float64),
            torch.cat(labels) if labels else torch.zeros(0, dtype=torch.int64))
    every = gather(dist, mine)
    return torch.cat([e[0] for e in every], 1), torch.cat([e[1] for e in every])


def _loss(u: torch.Tensor, parts: torch.Tensor, labels: torch.Tensor,
          class_weight: torch.Tensor | None) -> torch.Tensor:
    """The objective of log-weights u (P,): the mean log-loss of sum_p w[p] * parts[p] ((P, N, C) against
    (N,)) with w = exp(u), plus the -log of a normal prior on each w[p] around 1 (sigma 1), per example."""
    w = u.exp()
    prior = ((w - 1) ** 2).sum() / (2 * len(labels))
    return F.cross_entropy(weigh(w, parts), labels, weight=class_weight) + prior


def fit_scales(parts: torch.Tensor, labels: torch.Tensor,
               class_weight: torch.Tensor | None = None) -> torch.Tensor:
    """The weights (P,) float64, all > 0, that minimise the mean log-loss (with class weights, as
    training weighs it) of the weighted sum of `parts` (P, N, C) against `labels` (N,), a posteriori.

    They are exp(u): a weight cannot turn negative, which would reverse a branch's vote; one that points
    the wrong way goes to 0. The prior (normal around 1, the plain sum, sigma 1, on each weight) moves
    them by well under 1% on a thousand examples. Its use is where the split is separable, as a small
    one often is: no likelihood-best weight exists there (the larger, the better), and the prior keeps
    them finite. It costs nothing at the plain sum, so the fitted log-loss is never above the plain sum's.
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


def calibrate(model, split: EncodedSplit, device: torch.device, batch_size: int, cut: Cut,
              dist: Dist = SINGLE, class_weight: torch.Tensor | None = None) -> dict:
    """Fit `model.branch_scale` on `split` (the validation split) and set it; returns what changed:
    the weights before and after, and the split's log-loss and accuracy with each."""
    parts, labels = branch_logits(model, split, device, batch_size, cut, dist)
    if labels.unique().numel() < 2:
        raise LstmcliError(f"calibration needs two labels or more in the validation split; its "
                           f"{len(labels)} examples have {labels.unique().numel()}")
    before = model.branch_scale.detach().double().cpu()
    after = fit_scales(parts, labels, class_weight)

    def measured(scales: torch.Tensor) -> dict:
        logits = weigh(scales, parts)
        return {"loss": float(F.cross_entropy(logits, labels)),
                "accuracy": float((logits.argmax(1) == labels).double().mean())}

    model.branch_scale.copy_(after.to(model.branch_scale))
    branches = ["encoder"] + (["ngram_bag"] if len(after) > 1 else [])
    return {"split_size": len(labels), "branches": branches, "scales_before": before.tolist(),
            "scales": after.tolist(), "before": measured(before), "after": measured(after)}


def run_calibrate(checkpoint_dir: Path, data_dir: str | None = None, batch_size: int | None = None,
                  device: str = "auto") -> dict:
    """`lstmcli calibrate`: fit the branch weights of the checkpoint at `checkpoint_dir` on the validation
    split its run held out (carved again exactly as in training) and write them into it; returns the
    report."""
    dev = resolve_device(device)
    ck = checkpoint.load(checkpoint_dir, str(dev))
    data_cfg = dataclasses.replace(ck.config.data, data_dir=data_dir or ck.config.data.data_dir)
    data = prepare(data_cfg, vocab=ck.vocab, label_names=ck.label_names)
    report = calibrate(ck.model, data.splits["val"], dev, batch_size or ck.config.train.batch_size,
                       Cut.for_inference(ck.config.data), class_weight=loss_weight(ck.config, data))
    checkpoint.update(ck.path, ck.model, {**ck.metrics, "calibration": report})
    return {"checkpoint": str(ck.path), "dataset": data_cfg.dataset, **report}


def format_calibration(report: dict) -> str:
    """`lstmcli calibrate`'s table: each branch's weight, and the split's log-loss and accuracy."""
    b, a = report["before"], report["after"]
    lines = [f"{report['checkpoint']}: calibrated on {report['dataset']} [val], n={report['split_size']}",
             f"{'branch':<12}{'weight':>9}{'was':>9}"]
    rows = zip(report["branches"], report["scales"], report["scales_before"], strict=True)
    lines += [f"{n:<12}{w:>9.4f}{was:>9.4f}" for n, w, was in rows]
    lines += [f"{'log-loss':<12}{b['loss']:>9.4f} -> {a['loss']:.4f}",
              f"{'accuracy':<12}{b['accuracy']:>9.4f} -> {a['accuracy']:.4f}"]
    return "\n".join(lines)
