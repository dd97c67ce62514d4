"""Device choice: `auto` picks cuda, then mps, then cpu."""

from __future__ import annotations

import torch

from lstmcli.errors import LstmcliError


def resolve_device(name: str) -> torch.device:
    """The torch device for `name`; an explicit device that is absent is a usage error."""
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
