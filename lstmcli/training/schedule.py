"""Optimizer and learning-rate schedule from the config."""

from __future__ import annotations

import math

import torch

from lstmcli.config import Config, Optimizer, Scheduler


def make_optimizer(model: torch.nn.Module, cfg: Config) -> torch.optim.Optimizer:
    """Over the trainable parameters only (a frozen embedding is left out)."""
    t = cfg.train
    params = [p for p in model.parameters() if p.requires_grad]
    groups = param_groups(model, cfg)
    if t.optimizer is Optimizer.sgd:
        return torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    # The fused kernel: one pass per tensor instead of ~10 (benchmarks/RESULTS.md, "Design choices");
    # the same update rule, though not bit-identical to the foreach one.
    fused = all(p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.Adam(groups, lr=t.lr, weight_decay=t.weight_decay, fused=fused)


def param_groups(model: torch.nn.Module, cfg: Config) -> list[dict]:
    """One optimizer group per layer group of a TextClassifier (layer_groups(), top down), at lr x
    layer_lr_decay^depth, each remembering its depth (make_scheduler's gradual unfreezing reads it);
    trainable parameters only. A model without layer groups (the language model): one group at lr."""
    t = cfg.train
    # one group unless asked for more: the optimizer state of runs saved before stays loadable
    if not hasattr(model, "layer_groups") or (t.layer_lr_decay == 1 and not t.gradual_unfreezing):
        return [{"params": [p for p in model.parameters() if p.requires_grad], "layer_depth": 0}]
    groups = []
    for depth, group in enumerate(model.layer_groups()):
        params = [p for p in group if p.requires_grad]
        if params:
            groups.append({"params": params, "lr": t.lr * t.layer_lr_decay ** depth, "layer_depth": depth})
    return groups


def schedule_factor(cfg: Config, steps_per_epoch: int):
    """step (0-based) -> the factor of lr for the per-batch schedules."""
    t = cfg.train
    total, warmup = max(t.epochs * steps_per_epoch, 1), t.warmup_steps
    if t.scheduler is Scheduler.slanted_triangular:
        # ULMFiT's STLR (Howard & Ruder 2018, eq. 3): up linearly over the first cut_frac of the steps,
        # then down linearly to 1/ratio of lr at the last step
        cut_frac, ratio = 0.1, 32
        cut = max(math.floor(total * cut_frac), 1)

        def stlr(step: int) -> float:
            step = min(step, total - 1)
            p = step / cut if step < cut else 1 - (step - cut) / max(total - 1 - cut, 1)
            return (1 + p * (ratio - 1)) / ratio

        return stlr
    if t.scheduler is Scheduler.one_cycle:
        # Smith's one-cycle: linear warm-up from lr/25 to lr over 30% of the steps, then cosine down to
        # lr/1e4 (momentum is left alone)
        up, start, end = max(round(0.3 * total), 1), 1 / 25, 1e-4

        def one_cycle(step: int) -> float:
            step = min(step, total - 1)
            if step < up:
                return start + (1 - start) * step / up
            return end + (1 - end) * 0.5 * (1 + math.cos(math.pi * (step - up) / max(total - 1 - up, 1)))

        return one_cycle
    cosine = t.scheduler is Scheduler.cosine

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if not cosine:
            return 1.0
        return 0.5 * (1 + math.cos(math.pi * min(step - warmup, total - warmup) / max(total - warmup, 1)))

    return factor


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: Config, steps_per_epoch: int):
    """constant / cosine / slanted_triangular / one_cycle: a LambdaLR stepped after every batch (linear
    warm-up first for constant and cosine);
    plateau: ReduceLROnPlateau stepped after every epoch on validation accuracy."""
    t = cfg.train
    if t.scheduler is Scheduler.plateau:
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=t.plateau_factor,
                                                          patience=t.plateau_patience)
    factor = schedule_factor(cfg, steps_per_epoch)
    if t.gradual_unfreezing:
        # ULMFiT's gradual unfreezing, a function of the step alone (so a resumed run is exact): the group
        # at depth d trains from epoch d + 1 on and has lr 0 before (make_optimizer's groups, top down)
        def frozen_until(depth: int):
            return lambda step: base(step) if step // max(steps_per_epoch, 1) >= depth else 0.0

        base = factor
        factors = [frozen_until(g.get("layer_depth", 0)) for g in optimizer.param_groups]
        return torch.optim.lr_scheduler.LambdaLR(optimizer, factors)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def step_per_batch(scheduler) -> None:
    if isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
        scheduler.step()


def step_per_epoch(scheduler, val_accuracy: float) -> None:
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        scheduler.step(val_accuracy)
