"""What a training run will hold in memory, estimated before its model is built, against what the machine
has: a model too large for the machine is one line with the estimate, not an allocator's traceback or
the kernel's OOM killer minutes later.

The estimate guards against configurations off by orders of magnitude (a hidden_size of 57,000, three
billion n-gram buckets, texts of a million tokens); it is no exact figure, and benchmarks/RESULTS.md
compares it with real peaks. It counts, in float32:
- state: the parameters, their gradients and the optimizer's moments (Adam two, SGD with momentum one),
  and the buffers (an NBSVM bag's (F, C) counts);
- activations of one batch of `batch_size` texts of the longest length the cut lets through, for the
  forward pass and as much again for the backward: the embeddings, and per layer and direction the
  gates, cell, state and output of each step (G + 4 vectors of H); an NBSVM bag gathers a (2T, C) slice
  of its counts per text and keeps a few of that size;
- calibration: its branch logits, (P, N_val, C) float64, with their copies and the L-BFGS fit's
  temporaries, CALIBRATION_BYTES per logit (benchmarks/RESULTS.md has the runs it comes from).
What the process holds already (torch itself, the encoded data) is outside the estimate: the memory
"available" is read after it is paid.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from lstmcli.config import Config, Optimizer
from lstmcli.data.encode import EncodedData
from lstmcli.errors import LstmcliError
from lstmcli.models.cells import CELLS
from lstmcli.models.spec import BAGS, ModelSpec
from lstmcli.runtime.distributed import Dist

FLOAT = 4  # bytes
CALIBRATION_BYTES = 160  # per branch logit of a validation text, at calibration's peak


@dataclass
class Estimate:
    state: int  # bytes: parameters, gradients, optimizer moments, buffers
    activations: int  # bytes: one training batch, forward and backward
    calibration: int  # bytes: branch logits on the validation split
    batch: int
    length: int  # tokens per text in the longest batch

    @property
    def total(self) -> int:
        return self.state + self.activations + self.calibration


def estimate(cfg: Config, spec: ModelSpec, longest: int, val_size: int,
             examples: int | None = None) -> Estimate:
    """What training `spec`'s model as `cfg` says on texts of up to `longest` tokens (before the cut)
    needs at its peak; a batch holds at most `examples` texts (the largest split), whatever batch_size
    says."""
    params, buffers = spec.parameter_count()
    num_classes = spec.num_classes
    moments = 2 if cfg.train.optimizer is Optimizer.adam else int(cfg.train.momentum > 0)
    state = FLOAT * (params * (2 + moments) + buffers)
    T = min(longest, cfg.data.max_length) if cfg.data.max_length else longest
    B = min(cfg.train.batch_size, examples) if examples else cfg.train.batch_size
    E, H, D = spec.embedding_dim, spec.hidden_size, spec.num_directions
    per_token = 2 * E + spec.num_layers * D * (CELLS[spec.cell].gate_count + 4) * H + D * H
    if spec.ngram_buckets:
        constant, per_class = BAGS[spec.ngram_bag].activations_per_token
        per_token += constant + per_class * num_classes
    activations = 2 * FLOAT * B * T * per_token
    branches = len(spec.branches)
    calibration = CALIBRATION_BYTES * branches * val_size * num_classes if cfg.train.calibrate else 0
    return Estimate(state, activations, calibration, B, T)


def available_bytes(device: torch.device) -> int | None:
    """Memory a new allocation can still get on `device`: free GPU memory, or on Linux the smaller of
    MemAvailable and what the process's cgroup (a container's limit) leaves; None where unknown."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type != "cpu":
        return None
    found = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    found.extend(_cgroup_room())
    return min(found) if found else None


def _cgroup_room() -> list[int]:
    """[limit - usage] of this process's cgroup (v2) when it has a limit, else []."""
    base = Path("/sys/fs/cgroup")
    try:
        limit = (base / "memory.max").read_text().strip()
        if limit == "max":
            return []
        return [int(limit) - int((base / "memory.current").read_text().strip())]
    except (OSError, ValueError):
        return []


def _gb(n: int) -> str:
    return f"{n / 1e9:,.1f} GB" if n >= 1e8 else f"{n / 1e6:.0f} MB"


def check(cfg: Config, spec: ModelSpec, data: EncodedData, device: torch.device, dist: Dist) -> Estimate:
    """Refuse (LstmcliError) a run whose estimate exceeds the memory available to this process (the
    node's processes share the machine's); returns the estimate otherwise."""
    longest = max((int(s.lengths.max()) for s in data.splits.values() if len(s)), default=1)
    largest = max(len(s) for s in data.splits.values())
    est = estimate(cfg, spec, longest, len(data.splits["val"]), largest)
    calibration = f"; calibration {_gb(est.calibration)}" if est.calibration >= 1e8 else ""
    refuse_over(est.total, f"parameters, gradients and optimizer state {_gb(est.state)}; a batch of "
                f"{est.batch} texts of {est.length:,} tokens {_gb(est.activations)}{calibration}",
                device, dist.local_world_size if device.type == "cpu" else 1,
                "hidden_size, embedding_dim, num_layers, ngram_buckets, batch_size or max_length")
    return est


def refuse_over(need: int, detail: str, device: torch.device, processes: int, what: str) -> None:
    """LstmcliError when `need` bytes exceed this process's share of the memory available on `device`
    (`processes` share it); `detail` says what the bytes are for, `what` which settings to lower."""
    room = available_bytes(device)
    if room is None or need <= room // processes:
        return
    share = room // processes
    each = " to each process" if processes > 1 else ""
    raise LstmcliError(f"this needs about {_gb(need)} of memory ({detail}) but about {_gb(share)} is "
                       f"available on {device.type}{each}; lower {what}, or pass --skip-memory-check to "
                       f"try anyway")
