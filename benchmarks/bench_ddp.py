"""Benchmark: one IMDB training epoch in one process x 2 threads against 2 processes x 1 thread (torchrun).

    LSTMCLI_MIRROR=../shared/datasets python benchmarks/bench_ddp.py [--config imdb_lstm]
        [--max-train-examples 0] [--out /tmp/bench_ddp]

Each launch is a real `lstmcli train --epochs 1` (the second under `torchrun --standalone
--nproc-per-node 2`), so the figures include everything an epoch costs: collate, forward, backward, the
gradient all-reduce (gloo over loopback) and the optimizer. The epoch's seconds and tokens/s come from
each run's metrics.json; validation and testing are not timed. On 2 cores no gain is expected (the same
cores do the same work, plus the all-reduce of every gradient); the point is that it works and what it
costs. On a GPU machine pass --device cuda to time ranks sharing or owning GPUs.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def launch(prefix: list[str], args: argparse.Namespace, out: Path, extra: list[str]) -> dict:
    cmd = [*prefix, "-m", "lstmcli", "train", "--config", args.config, "--epochs", "1", "--quiet",
           "--max-train-examples", str(args.max_train_examples), "--device", args.device,
           "--out", str(out), *extra]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    metrics = json.loads((out / "metrics.json").read_text())
    first = metrics["history"][0]
    return {"epoch_s": first["seconds"], "tokens_per_s": first["tokens_per_s"],
            "val_accuracy": first["val_accuracy"], "wall_s": time.perf_counter() - start,
            "environment": metrics["environment"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="imdb_lstm")
    parser.add_argument("--max-train-examples", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="/tmp/bench_ddp")
    args = parser.parse_args()
    out = Path(args.out)
    one = launch([sys.executable], args, out / "one", ["--threads", "2"])
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    two = launch(torchrun, args, out / "two", [])
    for name, r in (("1 process x 2 threads", one), ("2 processes x 1 thread", two)):
        env = r["environment"]
        print(f"{name:<24} epoch {r['epoch_s']:7.1f} s  {r['tokens_per_s']:>9,.0f} tok/s  val acc "
              f"{r['val_accuracy']:.4f}  (world {env['world_size']}, {env['threads']} threads, "
              f"{env['device']})")
    print(f"2 processes / 1 process: {two['tokens_per_s'] / one['tokens_per_s']:.2f}x the tokens/s")


if __name__ == "__main__":
    main()
