"""Device choice: `auto` picks cuda, then mps, then cpu."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from lstmcli.errors import LstmcliError

if TYPE_CHECKING:
    import torch

# where a GPU torch could use announces itself without torch: NVIDIA's and AMD's (ROCm) kernel drivers
GPU_DRIVERS = ("/proc/driver/nvidia/version", "/dev/kfd")


def device_kind(name) -> str:
    """cpu, cuda or mps for a device name or torch.device; `auto` asks torch only where a GPU may be
    (a GPU driver, or macOS): elsewhere it is the CPU, and torch stays unimported."""
    if not isinstance(name, str):
        return name.type
    if name != "auto":
        return name.split(":")[0]
    if sys.platform != "darwin" and not any(Path(p).exists() for p in GPU_DRIVERS):
        return "cpu"
    return resolve_device("auto").type


def resolve_device(name: str) -> torch.device:
    """The torch device for `name`; an explicit device that is absent is a usage error."""
    import torch
    mps = getattr(torch.backends, "mps", None)
    available = {"cpu": True, "cuda": torch.cuda.is_available(),
                 "mps": mps is not None and mps.is_available()}
    if name not in available and name != "auto":
        raise LstmcliError(f"unknown device '{name}' (expected auto, {', '.join(available)})")
    if name == "auto":
        name = next(d for d in ("cuda", "mps", "cpu") if available[d])
    if not available[name]:
        raise LstmcliError(f"device '{name}' is not available here (torch {torch.__version__})")
    return torch.device(name)
