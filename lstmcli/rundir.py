"""A run folder's name, its `latest` link, and the record of where it ran."""

from __future__ import annotations

import platform
from datetime import datetime
from pathlib import Path

import torch

from . import __version__
from .config import Config, Impl, Precision
from .distributed import Dist
from .precision import bf16_support
from .registry import REGISTRY


def default_out(cfg: Config) -> Path:
    """runs/<dataset>-<encoder>-<timestamp>, the dataset named by its registry name or its file's stem."""
    name = cfg.data.dataset if cfg.data.dataset in REGISTRY else Path(cfg.data.dataset).stem
    return Path("runs") / f"{name}-{cfg.model.encoder.value}-{datetime.now():%Y%m%d-%H%M%S}"


def point_latest(run_dir: Path) -> None:
    """`<parent>/latest` -> run_dir, replaced atomically."""
    link = run_dir.parent / "latest"
    tmp = run_dir.parent / f".latest.{run_dir.name}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(run_dir.name)
    tmp.replace(link)


def environment(device: torch.device, precision: Precision, impl: Impl, dist: Dist) -> dict:
    """What the numbers of a run depend on besides its config (threads: per process)."""
    return {"lstmcli": __version__, "torch": torch.__version__, "python": platform.python_version(),
            "device": str(device), "threads": torch.get_num_threads(), "precision": precision.value,
            "impl": impl.value,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "bf16": bf16_support(device.type).level, "world_size": dist.world_size, "backend": dist.backend}
