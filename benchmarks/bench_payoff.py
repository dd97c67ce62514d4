"""Does a user's own unlabelled text pay off? From IMDB's real training reviews: a labelled set of 300
rows (balanced), 1,000 held-out rows, and 6,000 further reviews with their labels dropped, all disjoint.
`lstmcli pretrain` on the unlabelled ones, then `train --init-from` on the labelled ones, against `train`
on the labelled rows alone; both scored on the held-out rows with `lstmcli eval --dataset`.

    LSTMCLI_MIRROR=../shared/datasets python benchmarks/bench_payoff.py --out /tmp/payoff \
        [--seeds 0,1,2] [--lm-epochs 8] [--train-option=--adversarial=at ...]

The language model is pretrained once (seed 0) and every classifier seed starts from it; the data sets
are the same for every seed. Prints one JSON line per seed and one for the means (the lift = pretrained
minus alone, in held-out accuracy). Figures: benchmarks/RESULTS.md, "Pretraining"."""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import subprocess
import sys
from pathlib import Path

# the same encoder in every run; max_length 128 keeps the first ~128 words of a review
MODEL = ["--embedding-dim", "64", "--hidden-size", "64", "--bidirectional", "--max-length", "128",
         "--vocab-max-size", "20000", "--quiet"]
CLASSIFY = ["--pooling", "max", "--dropout", "0.3", "--epochs", "15", "--lr", "0.003", "--batch-size",
            "16", "--val-fraction", "0.2"]


def write_sets(root: Path, seed: int = 0) -> None:
    """labelled.csv (300 rows, balanced), heldout.csv (1,000), unlabelled.txt (6,000 reviews, a line each),
    disjoint, from IMDB's training split read by lstmcli's own reader (through LSTMCLI_MIRROR)."""
    from lstmcli.data.registry import REGISTRY
    ds = REGISTRY["imdb"]
    texts, labels = ds.read(ds, "train", root / "imdb")
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    by_label = {name: [i for i in order if labels[i] == name] for name in ds.label_names}
    labelled = [i for name in ds.label_names for i in by_label[name][:150]]
    heldout = [i for name in ds.label_names for i in by_label[name][150:650]]
    taken = set(labelled) | set(heldout)
    unlabelled = [i for i in order if i not in taken][:6000]
    for name, rows in (("labelled", labelled), ("heldout", heldout)):
        with (root / f"{name}.csv").open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["text", "label"])
            writer.writerows([texts[i], labels[i]] for i in rows)
    (root / "unlabelled.txt").write_text("".join(" ".join(texts[i].split()) + "\n" for i in unlabelled),
                                         encoding="utf-8")


def lstmcli(root: Path, *args: str) -> str:
    """Run the real CLI in `root`; its stdout, or exit with its stderr."""
    done = subprocess.run([sys.executable, "-m", "lstmcli", *args], cwd=root, capture_output=True,
                          text=True)
    if done.returncode:
        sys.exit(f"lstmcli {' '.join(args[:2])} failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return done.stdout


def heldout_accuracy(root: Path, run_dir: str) -> float:
    report = lstmcli(root, "eval", "-c", run_dir, "--dataset", "heldout.csv", "--json", "--quiet")
    return json.loads(report)["accuracy"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="a folder for the data sets and runs")
    ap.add_argument("--seeds", default="0,1,2", help="classifier seeds, comma-separated")
    ap.add_argument("--lm-epochs", type=int, default=8, help="pretraining epochs")
    ap.add_argument("--train-option", action="append", default=[],
                    help="an extra option of both trainings, e.g. --train-option=--adversarial=at")
    args = ap.parse_args()
    if not os.environ.get("LSTMCLI_MIRROR"):
        print("note: LSTMCLI_MIRROR is unset, so IMDB is downloaded from its upstream", file=sys.stderr)
    root = args.out
    root.mkdir(parents=True, exist_ok=True)
    if not (root / "unlabelled.txt").is_file():
        write_sets(root)
    if not (root / "pre" / "best").is_dir():
        lstmcli(root, "pretrain", "--unlabelled", "unlabelled.txt", *MODEL, "--epochs", str(args.lm_epochs),
                "--batch-size", "32", "--lr", "0.003", "--seed", "0", "--out", "pre")
    history = json.loads((root / "pre" / "metrics.json").read_text())["history"]
    rows = []
    for seed in args.seeds.split(","):
        common = ["--dataset", "labelled.csv", *MODEL, *CLASSIFY, *args.train_option, "--data-dir", "d",
                  "--seed", seed]
        lstmcli(root, "train", *common, "--out", f"alone{seed}")
        lstmcli(root, "train", *common, "--init-from", "pre", "--out", f"pretrained{seed}")
        row = {"seed": int(seed), "alone": heldout_accuracy(root, f"alone{seed}"),
               "pretrained": heldout_accuracy(root, f"pretrained{seed}")}
        row["lift"] = round(row["pretrained"] - row["alone"], 4)
        rows.append(row)
        print(json.dumps(row), flush=True)
    mean = {k: round(sum(r[k] for r in rows) / len(rows), 4) for k in ("alone", "pretrained", "lift")}
    print(json.dumps({"mean": mean, "lm_val_perplexity": history[-1]["val_perplexity"],
                      "train_options": args.train_option}))


if __name__ == "__main__":
    main()
