"""The memory estimate that guards `train` (lstmcli/runtime/memory.py) against what training steps hold.

For each shape: build the model lstmcli would build, run a few training steps (forward, backward, Adam)
on a batch of `batch_size` random texts of `length` tokens, and report the peak against the estimate
of state + one batch's activations. On CUDA the peak is torch.cuda.max_memory_allocated; on the CPU it
is the growth of the process's peak RSS over what it held before the model was built (each shape in a
fresh process, so that one shape's heap does not hide the next one's).

    python benchmarks/bench_memory.py                 # CPU
    python benchmarks/bench_memory.py --device cuda   # GPU
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

import torch
import torch.nn.functional as F

from lstmcli.config import resolve
from lstmcli.runtime.memory import estimate
from lstmcli.runtime.plan import build_model, choose, model_spec

SHAPES = [  # (name, config overrides, batch_size, length)
    ("lstm 128", {"embedding_dim": 128, "hidden_size": 128}, 64, 500),
    ("bilstm 256", {"embedding_dim": 128, "hidden_size": 256, "bidirectional": True}, 64, 500),
    ("bilstm 512 x2", {"embedding_dim": 256, "hidden_size": 512, "bidirectional": True, "num_layers": 2},
     64, 500),
    ("gru 256 + nbsvm", {"cell": "gru", "hidden_size": 256, "ngram_buckets": 1_000_000,
                         "ngram_bag": "nbsvm"}, 64, 500),
    ("lstm 128, 2048 tokens", {"embedding_dim": 128, "hidden_size": 128}, 64, 2048),
]
VOCAB, CLASSES = 30_000, 2


def measure(index: int, device: str) -> dict:
    """Peak bytes of 3 training steps of SHAPES[index] on `device`, and the estimate."""
    name, overrides, batch, length = SHAPES[index]
    cfg = resolve(None, {**overrides, "batch_size": batch, "max_length": length, "precision": "fp32",
                         "impl": "builtin" if device == "cuda" else "auto", "calibrate": False})
    dev = torch.device(device)
    spec = model_spec(cfg.model, VOCAB, CLASSES, choose(cfg.model, dev))
    est = estimate(cfg, spec, length, 0)
    ids = torch.randint(2, VOCAB, (batch, length), device=dev)
    lengths = torch.full((batch,), length)
    labels = torch.randint(0, CLASSES, (batch,), device=dev)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    model = build_model(spec).to(dev)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(3):
        loss = F.cross_entropy(model(ids, lengths, labels=labels), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    if device == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    return {"shape": name, "batch": batch, "length": length, "device": device, "peak": peak,
            "estimate": est.state + est.activations, "ratio": (est.state + est.activations) / peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # one shape, in a child process
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(measure(args.one, args.device)))
        return
    print(f"{'shape':<24} {'batch x length':>15} {'peak':>10} {'estimate':>10} {'est/peak':>9}  "
          f"({args.device})")
    for i in range(len(SHAPES)):
        out = subprocess.run([sys.executable, __file__, "--device", args.device, "--one", str(i)],
                             capture_output=True, text=True, check=True).stdout
        r = json.loads(out)
        print(f"{r['shape']:<24} {r['batch']:>6} x {r['length']:<6} {r['peak'] / 1e9:>8.2f} GB "
              f"{r['estimate'] / 1e9:>8.2f} GB {r['ratio']:>8.2f}x")


if __name__ == "__main__":
    main()
