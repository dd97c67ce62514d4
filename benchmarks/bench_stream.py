"""Benchmark: streaming `predict --input FILE` against the batch path (read everything, classify it all
at once, print), throughput and peak memory, in one run.

    LSTMCLI_MIRROR=../shared/datasets python benchmarks/bench_stream.py --checkpoint runs/x/best
        [--lines 10000 1000000] [--repeats 3]

Texts: the checkpoint's dataset's test split, cycled to each --lines count. For up to 100,000 lines the
whole reviews; above that the first sentence of each (a log line's length: a million whole reviews would
take an hour to classify, and the point of that size is memory). Each measurement is a fresh process:
  stream   `lstmcli predict -c X --input FILE -q > /dev/null`
  batch    the same checkpoint through `lstmcli.load(X).predict(all lines)` in a process that read the
           whole file first and prints each answer as `predict` does: what `predict -` did before it
           streamed
Wall time (median of --repeats, the two interleaved) and peak RSS (the process's own, from /usr/bin/time).
Then the latency of a live pipe: `lstmcli predict -` kept open, one line written every 0.2 s, the time
from writing it to reading its answer (after a first line that waits for start-up).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BATCH = """
import sys, lstmcli
lstmcli.tune_process()
clf = lstmcli.load(sys.argv[1], backend="torch")
data = open(sys.argv[2], "rb").read().decode("utf-8", errors="replace").split("\\n")
if data[-1] == "":
    data.pop()
out = sys.stdout
for ranked in clf.predict([line.removesuffix("\\r") for line in data], 1, 256):
    out.write("\\t".join(f"{lab}\\t{p:.4f}" for lab, p in ranked) + "\\n")
"""


def measured(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS in MiB) of `cmd` run with stdout to /dev/null. The peak comes from
    /usr/bin/time, a small process that forks: a child forked from this one (which holds torch and the
    texts) would count this process's pages in its own peak until it execs."""
    with tempfile.NamedTemporaryFile("r") as report:
        start = time.perf_counter()
        subprocess.run(["/usr/bin/time", "-f", "%M", "-o", report.name, *cmd], stdout=subprocess.DEVNULL,
                       check=True)
        wall = time.perf_counter() - start
        return wall, int(report.read().split()[-1]) / 1024


def latency(checkpoint: str, lines: int = 30) -> str:
    """Start-up, then the median and largest seconds from a line written into an open pipe to its answer."""
    proc = subprocess.Popen([sys.executable, "-m", "lstmcli", "predict", "-c", checkpoint, "-q", "-"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def ask(text: str) -> float:
        start = time.perf_counter()
        proc.stdin.write(text.encode() + b"\n")
        proc.stdin.flush()
        proc.stdout.readline()
        return time.perf_counter() - start

    first = ask("the first line waits for the model to load")
    times = []
    for i in range(lines):
        time.sleep(0.2)  # a log written now and then: the reader is idle between lines
        times.append(ask(f"line {i}: a wonderful, moving film with a dull ending"))
    proc.stdin.close()
    proc.wait()
    median, largest = statistics.median(times) * 1000, max(times) * 1000
    return (f"live pipe: first answer {first:.2f} s (start-up included), then median {median:.0f} ms, "
            f"largest {largest:.0f} ms over {lines} lines")


def texts_for(checkpoint: str, lines: int) -> list[str]:
    from lstmcli import checkpoint as checkpoints
    from lstmcli.data.splits import load_splits
    cfg = checkpoints.load(Path(checkpoint)).config.data
    _, splits = load_splits(cfg)
    test = [" ".join(t.split()) for t in splits["test"].texts]
    if lines > 100_000:
        test = [t.split(". ")[0] for t in test]
    return [test[i % len(test)] for i in range(lines)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--lines", type=int, nargs="+", default=[10_000, 1_000_000])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    lstmcli = [sys.executable, "-m", "lstmcli"]
    print("| lines | tokens/line | stream: texts/s | batch: texts/s | stream / batch | stream peak RSS | "
          "batch peak RSS |\n|---|---|---|---|---|---|---|")
    for n in args.lines:
        texts = texts_for(args.checkpoint, n)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "texts.txt"
            path.write_text("\n".join(texts) + "\n", encoding="utf-8")
            runs = {"stream": [], "batch": []}
            for _ in range(args.repeats):
                runs["stream"].append(measured([*lstmcli, "predict", "-c", args.checkpoint, "--input",
                                                str(path), "-q"]))
                runs["batch"].append(measured([sys.executable, "-c", BATCH, args.checkpoint, str(path)]))
        wall = {k: statistics.median(w for w, _ in v) for k, v in runs.items()}
        rss = {k: max(r for _, r in v) for k, v in runs.items()}
        words = sum(len(t.split()) for t in texts[:10_000]) / min(n, 10_000)
        print(f"| {n:,} | {words:.0f} words | {n / wall['stream']:,.0f} | {n / wall['batch']:,.0f} | "
              f"{wall['batch'] / wall['stream']:.2f} | {rss['stream']:,.0f} MiB | {rss['batch']:,.0f} MiB |",
              flush=True)
    print(latency(args.checkpoint))


if __name__ == "__main__":
    main()
