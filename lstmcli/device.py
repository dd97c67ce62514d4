"""Device choice (`auto` picks cuda, then mps, then cpu) and the process-wide float and memory settings
for it."""

from __future__ import annotations

import torch

from .errors import LstmcliError
from .memory import keep_freed_memory


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
    return set_up(torch.device(name))


def set_up(device: torch.device) -> torch.device:
    """`device`, with this process set up to run models on it (whoever chose the device)."""
    # Gradients that fade through hundreds of forget gates reach denormal floats, which x86 CPUs
    # handle ~100x slower: measured here, one LSTM backward took 2.95 s instead of 0.24 s. Flushing
    # them to zero changes nothing above 1e-38.
    torch.set_flush_denormal(True)
    if device.type == "cpu":
        keep_freed_memory()  # no fresh page mappings for each step's buffers (memory.py)
    return device
