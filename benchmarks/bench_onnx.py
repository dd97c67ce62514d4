"""Benchmark: a checkpoint exported to ONNX, in onnxruntime, against lstmcli on the same reviews.

    LSTMCLI_MIRROR=../shared/datasets python benchmarks/bench_onnx.py --checkpoint runs/x/best
        [--reviews 5000] [--batch-size 256] [--repeats 3]

The first --reviews texts of the checkpoint's dataset's test split are encoded once (`Classifier.encode`,
as `predict` does) and cut into the same length-sorted batches; then, in this process and interleaved,
lstmcli's model (float32, and at the checkpoint's own precision when that is bf16) and the exported model
in onnxruntime (CPU, as many threads as torch uses) run every batch. Tokenizing is left out: both need it
alike. Prints reviews/s and tokens/s (medians of --repeats) and the largest logit difference.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from bench_predict import encoded_batches, parse_args  # this folder's sibling script

from lstmcli.api import export
from lstmcli.data.splits import load_splits
from lstmcli.inference.predict import Classifier
from lstmcli.runtime.process import tune_process


def main() -> None:
    tune_process()  # the process settings the CLI uses (denormal flush, heap reuse)
    args = parse_args(__doc__)

    models = {"lstmcli fp32": Classifier(args.checkpoint, "cpu", precision="fp32")}
    own = Classifier(args.checkpoint, "cpu", backend="torch")
    if own.ck.model.spec.precision == "bf16":
        models["lstmcli bf16"] = own
    clf = models["lstmcli fp32"]
    _, splits = load_splits(clf.ck.config.data)
    texts = splits["test"].texts[: args.reviews]
    batches, tokens = encoded_batches(clf, texts, args.batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        onnx_file, _ = export(args.checkpoint, Path(tmp) / "model.onnx")
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        session = ort.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])
    feeds = [{"ids": b.ids.numpy(), "lengths": b.lengths.numpy()} for b in batches]

    def run_torch(c: Classifier) -> list[np.ndarray]:
        with torch.no_grad():
            return [c.ck.model(b.ids, b.lengths).numpy() for b in batches]

    runners = {name: (lambda c=c: run_torch(c)) for name, c in models.items()}
    runners["onnxruntime"] = lambda: [session.run(["logits"], f)[0] for f in feeds]
    seconds: dict[str, list[float]] = {name: [] for name in runners}
    outputs = {}
    for _ in range(args.repeats):
        for name, fn in runners.items():
            start = time.perf_counter()
            outputs[name] = fn()
            seconds[name].append(time.perf_counter() - start)
    diff = max(float(np.abs(a - b).max()) for a, b in zip(outputs["onnxruntime"], outputs["lstmcli fp32"],
                                                          strict=True))
    print(f"{len(texts):,} reviews, {tokens:,} tokens after the cut, batch {args.batch_size}, "
          f"{torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()}, onnxruntime "
          f"{ort.__version__}; medians of {args.repeats}")
    for name, times in seconds.items():
        med = statistics.median(times)
        print(f"{name:<14} {med:7.2f} s {len(texts) / med:>8,.0f} reviews/s {tokens / med:>10,.0f} tok/s")
    print(f"largest |logit difference|, onnxruntime vs lstmcli fp32: {diff:.2e}")


if __name__ == "__main__":
    main()
