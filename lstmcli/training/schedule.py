"""Optimizer and learning-rate schedule from the config."""

from __future__ import annotations

import math

import torch

from lstmcli.config import Config, Optimizer, Scheduler


def make_optimizer(model: torch.nn.Module, cfg: Config) -> torch.optim.Optimizer:
    """Over the trainable parameters only (a frozen embedding is left out)."""
    t = cfg.train
    params = [p for p in model.parameters() if p.requires_grad]
    if t.optimizer is Optimizer.sgd:
        return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    # The fused kernel: one pass per tensor instead of ~10 (benchmarks/RESULTS.md, "Design choices");
    # the same update rule, though not bit-identical to the foreach one.
    fused = all(p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay, fused=fused)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: Config, steps_per_epoch: int):
    """constant / cosine: a LambdaLR stepped after every batch (linear warm-up first);
    plateau: ReduceLROnPlateau stepped after every epoch on validation accuracy."""
    t = cfg.train
    if t.scheduler is Scheduler.plateau:
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=t.plateau_factor,
                                                          patience=t.plateau_patience)
    total, warmup, cosine = t.epochs * steps_per_epoch, t.warmup_steps, t.scheduler is Scheduler.cosine

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if not cosine:
            return 1.0
        return 0.5 * (1 + math.cos(math.pi * min(step - warmup, total - warmup) / max(total - warmup, 1)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def step_per_batch(scheduler) -> None:
    if isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
        scheduler.step()


def step_per_epoch(scheduler, val_accuracy: float) -> None:
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        scheduler.step(val_accuracy)
