"""`lstmcli bench`: training and inference tokens/s of each cell kind x impl at one shape.

Training = forward + backward + optimizer step of a whole TextClassifier; inference = forward under
no_grad. Batches have lengths drawn uniformly from [min_length, max_length] and are bucketed (sorted,
then cut), as in training. Each measurement is repeated, impls interleaved so that machine drift hits
both alike, and the median is reported.

Each figure is also given as a share of its FLOP limit: this machine's float32 GEMM rate, sampled in
the same run, divided by the encoder's matrix-multiply FLOPs per token. The rate is sampled before the
measurements and after each round of them, and the highest sample is the limit: a shared cloud CPU's
GEMM rate moves within minutes, and the highest is the one that flatters no share. The
recurrent encoder is all GEMMs, so the share says how much of the machine the whole step (embedding to
optimizer) turns into useful products; what it loses goes to small GEMMs, element-wise work, memory
traffic and Python.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from lstmcli.config import Config
from lstmcli.models.cells import CELLS
from lstmcli.models.classifier import TextClassifier
from lstmcli.models.spec import ModelSpec
from lstmcli.runtime import native
from lstmcli.runtime.device import resolve_device
from lstmcli.runtime.memory import estimate, refuse_over


@dataclass
class BenchShape:
    embedding_dim: int = 128
    hidden_size: int = 256
    batch_size: int = 64
    min_length: int = 50
    max_length: int = 400
    num_layers: int = 1
    bidirectional: bool = False
    batches: int = 6
    repeats: int = 5
    vocab_size: int = 20000


def encoder_flops(cell: str, shape: BenchShape) -> int:
    """Matrix-multiply FLOPs per token of the encoder's forward pass, every layer and direction
    (cells.CellKind.flops_per_token). Training costs 3x that: backward forms a gradient for the inputs and
    one for the weights, each the size of the forward product. The embedding lookup, pooling and head
    are left out."""
    directions = 2 if shape.bidirectional else 1
    total, inputs = 0, shape.embedding_dim
    for _ in range(shape.num_layers):
        total += directions * CELLS[cell].flops_per_token(inputs, shape.hidden_size)
        inputs = directions * shape.hidden_size
    return total


def sgemm_peak(device: torch.device, repeats: int = 5) -> float:
    """This machine's float32 GEMM rate in FLOP/s: the best of `repeats` square products at n = 1024
    and 2048 (large enough for the BLAS to reach its peak, small enough to take a second)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    best = 0.0
    for n in (1024, 2048):
        a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
        torch.mm(a, b)  # warm-up: the BLAS's buffers and thread pool
        for _ in range(repeats):
            sync()
            start = time.perf_counter()
            torch.mm(a, b)
            sync()
            best = max(best, 2 * n**3 / (time.perf_counter() - start))
    return best


def make_batches(shape: BenchShape, device: torch.device,
                 seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    n = shape.batch_size * shape.batches
    lengths = torch.randint(shape.min_length, shape.max_length + 1, (n,), generator=g)
    lengths = lengths.sort(descending=True).values
    batches = []
    for chunk in lengths.split(shape.batch_size):
        ids = torch.randint(2, shape.vocab_size, (len(chunk), int(chunk.max())), generator=g)
        ids[torch.arange(ids.size(1))[None, :] >= chunk[:, None]] = 0
        batches.append((ids.to(device), chunk))
    return batches


def _time_pass(model, batches, optimizer, train: bool) -> float:
    """Seconds for one pass over `batches`."""
    sync = torch.cuda.synchronize if batches[0][0].is_cuda else (lambda: None)
    sync()
    start = time.perf_counter()
    for ids, lengths in batches:
        if train:
            targets = torch.zeros(len(lengths), dtype=torch.long, device=ids.device)
            loss = F.cross_entropy(model(ids, lengths), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # as training does by default
            optimizer.step()
        else:
            with torch.no_grad():
                model(ids, lengths)
    sync()
    return time.perf_counter() - start


def _measure(cell: str, impls: list[str], shape: BenchShape, batches, tokens: int, dev: torch.device,
             seed: int, peaks: list[float]) -> dict[str, dict[str, float]]:
    """{impl: {mode: median tokens/s}} of one cell kind; appends a GEMM rate sample to `peaks` after each
    round (every impl once)."""
    models = {}
    for impl in impls:
        torch.manual_seed(seed)
        model = TextClassifier(_spec(cell, impl, shape)).to(dev)
        # fused on a CPU or GPU, as training makes it (training/schedule.py, make_optimizer): the
        # unfused Adam's ~10 passes over every parameter are not part of a training step
        fused = dev.type in ("cpu", "cuda")
        models[impl] = (model, torch.optim.Adam(model.parameters(), lr=1e-3, fused=fused))
    times = {(impl, mode): [] for impl in impls for mode in ("train", "infer")}
    for mode in ("train", "infer"):
        for model, opt in models.values():  # warm-up
            model.train(mode == "train")
            _time_pass(model, batches[:1], opt, mode == "train")
        for _ in range(shape.repeats):
            for impl, (model, opt) in models.items():
                model.train(mode == "train")
                times[(impl, mode)].append(_time_pass(model, batches, opt, mode == "train"))
            peaks.append(sgemm_peak(dev, repeats=2))
    return {impl: {mode: tokens / statistics.median(times[(impl, mode)]) for mode in ("train", "infer")}
            for impl in impls}


def memory_needed(cells: list[str], impls: list[str], shape: BenchShape) -> int:
    """Bytes a bench of `shape` holds at its peak (memory.estimate's rules): the batches, and for the
    largest cell one model per impl with its optimizer plus one training batch's activations."""
    batches = 8 * shape.batch_size * shape.batches * shape.max_length  # int64 ids
    cfg = Config()
    cfg.train = dataclasses.replace(cfg.train, batch_size=shape.batch_size, calibrate=False)
    cfg.data = dataclasses.replace(cfg.data, max_length=shape.max_length)
    worst = 0
    for cell in cells:
        est = estimate(cfg, _spec(cell, "builtin", shape), shape.max_length, 0)
        worst = max(worst, est.state * len(impls) + est.activations)
    return batches + worst


def _spec(cell: str, impl: str, shape: BenchShape) -> ModelSpec:
    """The model a bench of `shape` measures: two classes, no bag."""
    return ModelSpec(vocab_size=shape.vocab_size, num_classes=2, cell=cell, impl=impl,
                     embedding_dim=shape.embedding_dim, hidden_size=shape.hidden_size,
                     num_layers=shape.num_layers, bidirectional=shape.bidirectional)


def run_bench(cells: list[str], impls: list[str], shape: BenchShape, device: str = "cpu",
              threads: int = 2, seed: int = 0, memory_check: bool = True) -> dict:
    """Median tokens/s per (cell, impl, mode), their shares of the FLOP limit, scratch/builtin ratios.
    A shape too large for the memory available is refused first (unless not `memory_check`)."""
    dev = resolve_device(device)
    if memory_check:
        refuse_over(memory_needed(cells, impls, shape), "models, optimizer state, batches and "
                    "activations", dev, 1, "--hidden-size, --embedding-dim, --num-layers, --batch-size, "
                    "--batches or --max-length")
    if dev.type == "cpu":
        torch.set_num_threads(threads)
    # what ran the scratch time loops: the C++ kernels serve CPU tensors only
    loops = ("c++" if dev.type == "cpu" and native.ensure() else "python") if "scratch" in impls else "none"
    if loops == "c++" and native.uses_packed_gemm():
        loops += " (MKL packed GEMM)"
    peaks = [sgemm_peak(dev)]
    batches = make_batches(shape, dev, seed)
    tokens = sum(int(lengths.sum()) for _, lengths in batches)
    results = {cell: _measure(cell, impls, shape, batches, tokens, dev, seed, peaks) for cell in cells}
    peak = max(peaks)  # one limit for every figure, known once every rate is in
    for cell, by_impl in results.items():
        flops = {"train": 3 * encoder_flops(cell, shape), "infer": encoder_flops(cell, shape)}
        for rates in by_impl.values():
            rates["train_share"] = rates["train"] * flops["train"] / peak
            rates["infer_share"] = rates["infer"] * flops["infer"] / peak
        if {"builtin", "scratch"} <= set(impls):
            by_impl["ratio"] = {mode: by_impl["scratch"][mode] / by_impl["builtin"][mode]
                                for mode in ("train", "infer")}
        by_impl["flops_per_token"] = flops
    return {"shape": asdict(shape), "device": str(dev), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "scratch_loops": loops, "sgemm_flops": peak, "sgemm_samples": peaks,
            "tokens_per_pass": tokens, "results": results}
