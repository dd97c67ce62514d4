"""Where and with what a run starts: its device, its place in a torchrun launch and CPU threads, the
precision it trains at, and its encoded data (prepared once per node)."""

from __future__ import annotations

import dataclasses
import logging
import time

import torch

from . import distributed
from .config import Config, Precision
from .device import resolve_device
from .distributed import Dist
from .errors import LstmcliError
from .precision import bound_impl, for_training
from .prepare import Prepared, prepare

log = logging.getLogger(__name__)


def precision_of(cfg: Config, device: torch.device) -> tuple[Precision, str, Config]:
    """The precision this run trains at on `device`, why, and the config its checkpoints record: `cfg`
    with that precision in place of the request, so that eval/predict know what the weights saw."""
    precision, why = for_training(cfg.model.precision, bound_impl(cfg.model.impl, cfg.model.peephole), device)
    return precision, why, dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, precision=precision))


def place(cfg: Config) -> tuple[Dist, torch.device]:
    """This process's place in a torchrun launch (or SINGLE), its device and its CPU threads."""
    dist, device = distributed.start(distributed.from_env(), resolve_device(cfg.train.device.value))
    if device.type == "cpu":
        torch.set_num_threads(distributed.threads_per_process(dist, cfg.train.threads))
    return dist, device


def prepared(cfg: Config, dist: Dist) -> Prepared:
    """The encoded splits. Under torchrun each node's local rank 0 downloads and tokenizes first; the
    other ranks wait, then read its cache."""
    start = time.perf_counter()
    if dist.local_rank == 0:
        data = prepare(cfg.data)
    distributed.barrier(dist)
    if dist.local_rank != 0:
        data = prepare(cfg.data)
    n = {s: len(data.splits[s]) for s in ("train", "val", "test")}
    if not n["train"] or not n["val"]:
        raise LstmcliError(f"dataset {cfg.data.dataset}: {n['train']} training and {n['val']} validation "
                           "examples; both need at least one (check val_fraction and max_*_examples)")
    log.info(f"{n['train']} train / {n['val']} val / {n['test']} test examples, vocabulary {len(data.vocab)} "
             f"(ready in {time.perf_counter() - start:.1f}s)")
    if cfg.data.max_length and dist.is_main:
        _note_cut(data, cfg.data.max_length)
    return data


def _note_cut(data: Prepared, max_length: int) -> None:
    """One line on how many texts max_length cuts, so that a cut is never silent."""
    lengths = torch.cat([s.lengths for s in data.splits.values()])
    longer = int((lengths > max_length).sum())
    if longer:
        log.info(f"max_length {max_length}: {longer:,} of {len(lengths):,} texts are longer and are cut "
                 f"(the longest has {int(lengths.max()):,} tokens)")


def launch_record(dist: Dist) -> dict:
    """How this run was launched, kept in its config.json beside the config (resume reads it again from
    the launch it runs in, so it is a record, not a setting)."""
    return {"world_size": dist.world_size, "backend": dist.backend,
            "threads_per_process": torch.get_num_threads()}


def launch_line(dist: Dist) -> str:
    if not dist.enabled:
        return ""
    return f"; {dist.world_size} processes ({dist.backend}), {torch.get_num_threads()} CPU thread(s) each"
