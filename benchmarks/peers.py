"""Benchmark: lstmcli beside the bag-of-n-gram models a user would try first, on the same data.

    pip install -e ".[bench]"
    LSTMCLI_MIRROR=../shared/datasets python benchmarks/peers.py --run runs/imdb_best [--json peers.json]
    python benchmarks/peers.py --dataset my.csv [--text-column text --label-column label]
    LSTMCLI_MIRROR=../shared/datasets python benchmarks/peers.py --run runs/ag_news_pairs   # multi-label

Multi-label data (peers_multi.py) compares micro-F1 instead, against fastText's one-vs-all loss and a
one-vs-rest TF-IDF logistic regression.

The peers, as their own docs and the literature set them up for sentiment and topic classification:
  - TF-IDF of word unigrams and bigrams (sublinear tf, min_df 2) + logistic regression (C=8, liblinear);
  - fastText supervised, word bigrams, 10 epochs, dim 100 (its other settings at their defaults).
Both see exactly what lstmcli sees: the same seeded train/validation/test carve of the same files (with
--run, the run's own data settings), the same basic_english tokens, and they train on lstmcli's training
split only (validation is held out from all three). Tokenizing the training split is timed once and
printed apart; "train s" is what each peer spends after it. Prediction throughput runs from raw text to
label (tokenizing included, as `lstmcli predict -` does) over the whole test split, single process, with
--threads threads. For lstmcli the table shows the run's test accuracy and summed epoch seconds from its
metrics.json, and its throughput measured here through the same Classifier that `lstmcli predict` uses.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import torch

from lstmcli.config import DataConfig, from_dict, resolve
from lstmcli.data.splits import load_splits
from lstmcli.data.text import basic_english
from lstmcli.inference.predict import Classifier


def tfidf_lr(train_tokens, train_labels, test_texts, test_labels) -> dict:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    start = time.perf_counter()
    vectorizer = TfidfVectorizer(analyzer=lambda tokens: tokens + [f"{a} {b}" for a, b in
                                                                   zip(tokens, tokens[1:], strict=False)],
                                 min_df=2, sublinear_tf=True)
    model = LogisticRegression(C=8, solver="liblinear", max_iter=1000)
    model.fit(vectorizer.fit_transform(train_tokens), train_labels)
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    predicted = model.predict(vectorizer.transform([basic_english(t) for t in test_texts]))
    predict_s = time.perf_counter() - start
    return _row("TF-IDF 1-2 grams + logistic regression (C=8)", predicted, test_labels, train_s, predict_s)


def fasttext_bigrams(train_tokens, train_labels, test_texts, test_labels, threads: int, seed: int) -> dict:
    import fasttext

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "train.txt"
        lines = [f"__label__{y} {' '.join(tokens)}\n" for tokens, y in zip(train_tokens, train_labels,
                                                                          strict=True)]
        random.Random(seed).shuffle(lines)  # fastText's SGD reads the file in order: not class by class
        path.write_text("".join(lines), encoding="utf-8")
        start = time.perf_counter()
        model = fasttext.train_supervised(str(path), wordNgrams=2, epoch=10, dim=100, thread=threads,
                                          seed=seed, verbose=0)
        train_s = time.perf_counter() - start
    start = time.perf_counter()
    labels, _ = model.predict([" ".join(basic_english(t)) for t in test_texts])
    predicted = [int(found[0].removeprefix("__label__")) for found in labels]
    predict_s = time.perf_counter() - start
    return _row("fastText, word bigrams, 10 epochs, dim 100", predicted, test_labels, train_s, predict_s)


def lstmcli_run(run: Path, test_texts, test_labels) -> dict:
    metrics = json.loads((run / "metrics.json").read_text())
    clf = Classifier(run / "best", torch.device("cpu"), backend="torch")
    start = time.perf_counter()
    top = clf.predict(test_texts)
    predict_s = time.perf_counter() - start
    index = {name: i for i, name in enumerate(clf.ck.label_names)}
    predicted = [index[found[0][0]] for found in top]
    row = _row(f"lstmcli {run.name} (best epoch {metrics['best_epoch']})", predicted, test_labels,
               sum(epoch["seconds"] for epoch in metrics["history"]), predict_s)
    row["run_test_accuracy"] = metrics["test"]["accuracy"]  # what `lstmcli train` measured
    return row


def _row(name: str, predicted, labels, train_s: float, predict_s: float) -> dict:
    correct = sum(int(p) == int(y) for p, y in zip(predicted, labels, strict=True))
    return {"system": name, "test_accuracy": correct / len(labels), "train_s": train_s,
            "predict_per_s": len(labels) / predict_s}


def data_config(args: argparse.Namespace) -> DataConfig:
    if args.run:  # the run's own carve, caps and data folder
        saved = Path(args.run) / "best" / "config.json"  # the checkpoint's: data, model, train
        return from_dict(json.loads(saved.read_text()), str(saved)).data
    flags = {"dataset": args.dataset, "text_column": args.text_column, "label_column": args.label_column}
    return resolve(flags={k: v for k, v in flags.items() if v is not None}).data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", help="an lstmcli run folder: its data settings, and its row in the table")
    parser.add_argument("--dataset", default="imdb", help="without --run: a built-in dataset or a path")
    parser.add_argument("--text-column")
    parser.add_argument("--label-column")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    cfg = data_config(args)
    names, splits = load_splits(cfg)
    train, test = splits["train"], splits["test"]
    if train.multi_label:
        from peers_multi import compare_multi_label
        return compare_multi_label(args, cfg, names, splits)
    start = time.perf_counter()
    train_tokens = [basic_english(t) for t in train.texts]
    print(f"{cfg.dataset}: {len(train):,} train / {len(splits['val']):,} val (unused) / {len(test):,} test; "
          f"tokenizing the training split took {time.perf_counter() - start:.1f} s")
    rows = [tfidf_lr(train_tokens, train.labels, test.texts, test.labels),
            fasttext_bigrams(train_tokens, train.labels, test.texts, test.labels, args.threads, args.seed)]
    if args.run:
        rows.append(lstmcli_run(Path(args.run), test.texts, test.labels))
    print("\n| system | test accuracy | train s | predict, texts/s |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['system']} | {100 * r['test_accuracy']:.2f}% | {r['train_s']:,.1f} | "
              f"{r['predict_per_s']:,.0f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"data": cfg.dataset, "threads": args.threads, "rows": rows},
                                              indent=2) + "\n")


if __name__ == "__main__":
    main()
