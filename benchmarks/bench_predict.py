"""Benchmark: `lstmcli predict -` against its own encoder, and its start-up against `import torch`.

    LSTMCLI_MIRROR=../shared/datasets python benchmarks/bench_predict.py --checkpoint runs/x/best
        [--reviews 5000] [--batch-size 256] [--repeats 3]

In one run, on the first --reviews texts of the checkpoint's dataset's test split:
  predict -      `lstmcli predict --checkpoint X -` as a user runs it, a fresh process reading the texts
                 on stdin and writing a line each; wall time, so start-up, tokenizing and output count
  whole model    the checkpoint's TextClassifier on the same ids in the same batches (what `predict`
                 makes of the texts: cut, sorted longest first, batch size as given), in this process
  encoder alone  the recurrent encoder alone on the embedded batches: the ceiling `predict` can reach
Tokens/s count real tokens (the cut texts' ids). Start-up: `lstmcli predict "one text"` against
`python -c "import torch"`, best of --repeats, each a fresh process. Each timing is the median of
--repeats, the three kinds interleaved so that machine drift hits them alike.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from lstmcli.data.batches import collate, sorted_batches
from lstmcli.data.splits import load_splits
from lstmcli.inference.predict import Classifier
from lstmcli.inference.torch_model import as_split as _as_split
from lstmcli.runtime.process import tune_process


def timed(cmd: list[str], stdin: bytes = b"") -> float:
    start = time.perf_counter()
    subprocess.run(cmd, input=stdin, check=True, stdout=subprocess.DEVNULL,
                   env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return time.perf_counter() - start


def parse_args(doc: str) -> argparse.Namespace:
    """The options this script shares with bench_onnx.py: a checkpoint, how many of its dataset's test
    reviews, the batch size and the repeats."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--reviews", type=int, default=5000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    return parser.parse_args()


def encoded_batches(clf: Classifier, texts: list[str], batch_size: int) -> tuple[list, int]:
    """`texts` as `predict` batches them (encoded and cut, longest first), and their number of tokens."""
    split = _as_split([clf.encode(t) for t in texts])
    batches = [collate(split, idx) for idx in sorted_batches(split.lengths, batch_size)]
    return batches, int(split.lengths.sum())


def in_process(clf: Classifier, texts: list[str], batch_size: int):
    """(seconds of the whole model, seconds of the encoder alone, tokens) over `texts`' batches."""
    batches, tokens = encoded_batches(clf, texts, batch_size)
    model = clf.ck.model
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=model.spec.precision == "bf16")
    with torch.no_grad(), autocast:
        embedded = [model.embedding(b.ids) for b in batches]  # the encoder's input, outside its timing
        start = time.perf_counter()
        for b in batches:
            model(b.ids, b.lengths)
        whole = time.perf_counter() - start
        start = time.perf_counter()
        for x, b in zip(embedded, batches, strict=True):
            model.encoder(x, b.lengths)
        encoder = time.perf_counter() - start
    return whole, encoder, tokens


def main() -> None:
    tune_process()  # the process settings the CLI uses (denormal flush, heap reuse)
    args = parse_args(__doc__)

    clf = Classifier(Path(args.checkpoint), torch.device("cpu"), backend="torch")
    _, splits = load_splits(clf.ck.config.data)
    texts = [t.replace("\r", " ").replace("\n", " ") for t in splits["test"].texts[: args.reviews]]
    stdin = "".join(t + "\n" for t in texts).encode()
    lstmcli = [sys.executable, "-m", "lstmcli", "predict", "--checkpoint", args.checkpoint,
               "--backend", "torch", "--batch-size", str(args.batch_size)]
    runs: dict[str, list[float]] = {"predict": [], "whole": [], "encoder": [], "start": [], "torch": []}
    for _ in range(args.repeats):
        runs["predict"].append(timed([*lstmcli, "-"], stdin))
        whole, encoder, tokens = in_process(clf, texts, args.batch_size)
        runs["whole"].append(whole)
        runs["encoder"].append(encoder)
        runs["start"].append(timed([*lstmcli, "A short review."]))
        runs["torch"].append(timed([sys.executable, "-c", "import torch"]))
    med = {k: statistics.median(v) for k, v in runs.items()}
    env = f"{torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()}"
    print(f"{len(texts):,} reviews, {tokens:,} tokens after the cut, batch {args.batch_size}, precision "
          f"{clf.ck.model.spec.precision}, {env}; medians of {args.repeats}")
    for name, key in (("predict - (process, wall)", "predict"), ("whole model", "whole"),
                      ("encoder alone", "encoder")):
        print(f"{name:<26} {med[key]:7.2f} s {tokens / med[key]:>10,.0f} tok/s "
              f"{len(texts) / med[key]:>8,.0f} reviews/s {med['encoder'] / med[key]:6.0%} of the encoder")
    print(f"start-up: predict one text {min(runs['start']):.2f} s, python -c 'import torch' "
          f"{min(runs['torch']):.2f} s: {min(runs['start']) / min(runs['torch']):.2f}x")


if __name__ == "__main__":
    main()
