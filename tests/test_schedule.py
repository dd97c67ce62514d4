"""training/schedule.py: the optimizer and the learning-rate schedules (warm-up, cosine, plateau)."""

import torch

from lstmcli.config import resolve
from lstmcli.training.schedule import make_optimizer, make_scheduler, step_per_batch, step_per_epoch


def test_schedules():
    model = torch.nn.Linear(2, 2)
    cfg = resolve(None, {"scheduler": "cosine", "warmup_steps": 2, "epochs": 2, "lr": 1.0})
    opt = make_optimizer(model, cfg)
    sched = make_scheduler(opt, cfg, steps_per_epoch=3)  # 6 steps in all
    lrs = []
    for _ in range(6):
        lrs.append(round(opt.param_groups[0]["lr"], 6))
        opt.step()
        step_per_batch(sched)
    assert lrs == [0.5, 1.0, 1.0, 0.853553, 0.5, 0.146447]
    cfg = resolve(None, {"scheduler": "plateau", "plateau_patience": 0, "plateau_factor": 0.5, "lr": 1.0})
    opt = make_optimizer(model, cfg)
    sched = make_scheduler(opt, cfg, 3)
    for acc in (0.5, 0.6, 0.6, 0.6):
        step_per_epoch(sched, acc)
    assert opt.param_groups[0]["lr"] == 0.25
