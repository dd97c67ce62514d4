"""Benchmark: `lstmcli predict -` on each backend and precision, side by side in one run, and each one's
distance from the machine's limit for its arithmetic.

    LSTMCLI_MIRROR=../shared/datasets python benchmarks/bench_backends.py --checkpoint runs/x/best
        [--reviews 5000] [--batch-size N] [--repeats 3]

The first --reviews test reviews of the checkpoint's dataset, one per line, piped into a fresh
`lstmcli predict -c X -q -` per measurement (start-up, tokenizing and writing included), the variants
interleaved, medians of --repeats:
  torch fp32      --backend torch --precision fp32        (the baseline)
  torch auto      --backend torch (bf16 where the CPU runs it natively)
  onnx fp32       the checkpoint exported to a temporary folder, run in onnxruntime
  onnx int8       the same with --quantize int8
Limit: the recurrent layers' multiply-adds for these reviews (after the cut; 4H(E+H) per token and
direction for an LSTM), per second of each run after start-up (a one-text `predict` of the same
variant), against the best rate of this machine's square GEMMs in the variant's arithmetic: float32
(torch.mm), bfloat16 (torch.mm) and int8 (torch._int_mm, int32 sums), n = 2048, best of 5.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from lstmcli.api import export
from lstmcli.data.splits import load_splits
from lstmcli.inference.predict import Classifier
from lstmcli.models.cells import CELLS


def timed(cmd: list[str], stdin: bytes) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, input=stdin, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def gemm_limit(kind: str, n: int = 2048) -> float:
    """Multiply-adds per second of the best of 5 square products in `kind`'s arithmetic."""
    if kind == "int8":
        a = torch.randint(-127, 127, (n, n), dtype=torch.int8)
        b = torch.randint(-127, 127, (n, n), dtype=torch.int8)
        product = lambda: torch._int_mm(a, b)  # noqa: E731
    else:
        dtype = torch.bfloat16 if kind == "bf16" else torch.float32
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        product = lambda: a @ b  # noqa: E731
    product()
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        product()
        best = min(best, time.perf_counter() - start)
    return n**3 / best


def recurrent_macs(clf: Classifier, texts: list[str]) -> int:
    """Multiply-adds of the recurrent layers over `texts` as predict cuts them."""
    spec = clf.ck.model.spec
    per_token, width = 0, spec.embedding_dim
    for _ in range(spec.num_layers):  # (a multiply-add is two FLOPs)
        per_token += spec.num_directions * CELLS[spec.cell].flops_per_token(width, spec.hidden_size) // 2
        width = spec.hidden_size * spec.num_directions
    return per_token * sum(len(clf.encode(t)) for t in texts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--reviews", type=int, default=5000)
    parser.add_argument("--batch-size", type=int, help="texts per batch (default: each backend's own)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    clf = Classifier(Path(args.checkpoint), "cpu", backend="torch")
    _, splits = load_splits(clf.ck.config.data)
    texts = [" ".join(t.split()) for t in splits["test"].texts[: args.reviews]]
    stdin = "".join(t + "\n" for t in texts).encode()
    macs = recurrent_macs(clf, texts)
    with tempfile.TemporaryDirectory() as tmp:
        fp32, _ = export(args.checkpoint, Path(tmp) / "model.onnx")
        int8, _ = export(args.checkpoint, Path(tmp) / "model.int8.onnx", quantize="int8")
        base = [sys.executable, "-m", "lstmcli", "predict", "-q"]
        if args.batch_size:
            base += ["--batch-size", str(args.batch_size)]
        variants = {  # name: (arguments, arithmetic)
            "torch fp32": (["-c", args.checkpoint, "--backend", "torch", "--precision", "fp32"], "fp32"),
            "torch auto": (["-c", args.checkpoint, "--backend", "torch"], clf.ck.model.spec.precision),
            "onnx fp32": (["-c", str(fp32)], "fp32"),
            "onnx int8": (["-c", str(int8)], "int8"),
        }
        walls = {name: [] for name in variants}
        starts = {name: [] for name in variants}
        for _ in range(args.repeats):
            for name, (flags, _) in variants.items():
                walls[name].append(timed([*base, *flags, "-"], stdin))
                starts[name].append(timed([*base, *flags, "A short review."], b""))
        sizes = {"onnx fp32": fp32.stat().st_size, "onnx int8": int8.stat().st_size}
    limits = {kind: gemm_limit(kind) for kind in ("fp32", "bf16", "int8")}
    print(f"{len(texts):,} reviews, {macs / 1e9:,.1f} G recurrent multiply-adds, batch "
          f"{args.batch_size or 'the backend default'}, "
          f"{torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()}; medians of "
          f"{args.repeats}; GEMM limits: " + ", ".join(f"{k} {v / 1e9:,.0f} G/s" for k, v in limits.items()))
    print("| backend | reviews/s | x torch fp32 | start-up | G multiply-adds/s after start-up | share of "
          "its GEMM limit | model file |\n|---|---|---|---|---|---|---|")
    base_rate = len(texts) / statistics.median(walls["torch fp32"])
    for name, (_, kind) in variants.items():
        wall, start = statistics.median(walls[name]), statistics.median(starts[name])
        rate = macs / max(wall - start, 1e-9)
        size = f"{sizes[name] / 2**20:,.1f} MiB" if name in sizes else "-"
        print(f"| {name} ({kind}) | {len(texts) / wall:,.0f} | {len(texts) / wall / base_rate:.2f}x | "
              f"{start:.2f} s | {rate / 1e9:,.0f} | {rate / limits[kind]:.0%} | {size} |", flush=True)


if __name__ == "__main__":
    main()
