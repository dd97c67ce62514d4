"""The multi-label half of peers.py: lstmcli beside fastText's one-vs-all loss (its `-loss ova`, with
`predict -1 0.5`, as fastText's docs set up multi-label) and a one-vs-rest TF-IDF logistic regression,
scored by micro-F1 (with macro-F1 and subset accuracy) on the same split.

fastText's learning rate and epochs are chosen on the validation split from a small grid (its defaults,
lr 0.1 and 5 epochs, hardly move one-vs-all weights off zero on a few thousand texts); it then trains on
the training split alone, as lstmcli does. Every system decides each label on its own: fastText and the
logistic regression at probability 0.5, lstmcli at the per-label thresholds its training fitted on val.
"""

from __future__ import annotations

import json
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lstmcli.data.text import basic_english
from lstmcli.inference.predict import Classifier

GRID = [(lr, epochs) for lr in (0.1, 0.25, 0.5, 1.0) for epochs in (10, 25, 50)]


def indicators(label_sets, k: int) -> np.ndarray:
    out = np.zeros((len(label_sets), k), dtype=np.uint8)
    for i, ys in enumerate(label_sets):
        out[i, list(ys)] = 1
    return out


def scores(truth: np.ndarray, pred: np.ndarray) -> dict:
    from sklearn.metrics import accuracy_score, f1_score
    return {"micro_f1": f1_score(truth, pred, average="micro", zero_division=0),
            "macro_f1": f1_score(truth, pred, average="macro", zero_division=0),
            "subset_accuracy": accuracy_score(truth, pred)}


def fasttext_ova(train, val, test, k: int, threads: int, seed: int) -> dict:
    import fasttext

    def lines(split) -> str:
        rows = [" ".join(f"__label__{y}" for y in ys) + " " + " ".join(basic_english(t)) + "\n"
                for t, ys in zip(split.texts, split.labels, strict=True)]
        random.Random(seed).shuffle(rows)  # fastText's SGD reads the file in order
        return "".join(rows)

    def predicted(model, texts) -> np.ndarray:
        # (a list goes through fastText's multiline path, which numpy 2 does not break)
        found, _ = model.predict([" ".join(basic_english(t)) for t in texts], k=-1, threshold=0.5)
        return indicators([[int(x.removeprefix("__label__")) for x in f] for f in found], k)

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "train.txt"
        path.write_text(lines(train), encoding="utf-8")
        val_truth, chosen = indicators(val.labels, k), None
        for lr, epochs in GRID:
            model = fasttext.train_supervised(str(path), loss="ova", wordNgrams=2, dim=100, lr=lr,
                                              epoch=epochs, thread=threads, seed=seed, verbose=0)
            f1 = scores(val_truth, predicted(model, val.texts))["micro_f1"]
            if chosen is None or f1 > chosen[0]:
                chosen = (f1, lr, epochs)
        start = time.perf_counter()
        model = fasttext.train_supervised(str(path), loss="ova", wordNgrams=2, dim=100, lr=chosen[1],
                                          epoch=chosen[2], thread=threads, seed=seed, verbose=0)
        train_s = time.perf_counter() - start
    start = time.perf_counter()
    pred = predicted(model, test.texts)
    predict_s = time.perf_counter() - start
    return {"system": f"fastText -loss ova, word bigrams, dim 100, lr {chosen[1]}, {chosen[2]} epochs "
                      f"(chosen on val, micro-F1 {chosen[0]:.4f})",
            **scores(indicators(test.labels, k), pred), "train_s": train_s,
            "predict_per_s": len(test) / predict_s}


def tfidf_ovr(train, test, k: int) -> dict:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier

    start = time.perf_counter()
    vectorizer = TfidfVectorizer(analyzer=lambda tokens: tokens + [f"{a} {b}" for a, b in
                                                                   zip(tokens, tokens[1:], strict=False)],
                                 min_df=2, sublinear_tf=True)
    model = OneVsRestClassifier(LogisticRegression(C=8, solver="liblinear", max_iter=1000))
    model.fit(vectorizer.fit_transform([basic_english(t) for t in train.texts]), indicators(train.labels, k))
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    pred = model.predict(vectorizer.transform([basic_english(t) for t in test.texts]))
    predict_s = time.perf_counter() - start
    return {"system": "TF-IDF 1-2 grams + one-vs-rest logistic regression (C=8)",
            **scores(indicators(test.labels, k), pred), "train_s": train_s,
            "predict_per_s": len(test) / predict_s}


def lstmcli_multi(run: Path, test, names: list[str]) -> dict:
    metrics = json.loads((run / "metrics.json").read_text())
    clf = Classifier(run / "best", torch.device("cpu"), backend="torch")
    start = time.perf_counter()
    found = clf.predict(test.texts)  # each label at its fitted threshold
    predict_s = time.perf_counter() - start
    index = {name: i for i, name in enumerate(names)}
    pred = indicators([[index[label] for label, _ in f] for f in found], len(names))
    row = {"system": f"lstmcli {run.name} (best epoch {metrics['best_epoch']})",
           **scores(indicators(test.labels, len(names)), pred),
           "train_s": sum(epoch["seconds"] for epoch in metrics["history"]),
           "predict_per_s": len(test) / predict_s}
    row["run_test_micro_f1"] = metrics["test"]["micro_f1"]  # what `lstmcli train` measured
    return row


def compare_multi_label(args, cfg, names: list[str], splits: dict) -> None:
    """peers.py's table for a multi-label dataset."""
    train, val, test = splits["train"], splits["val"], splits["test"]
    k = len(names)
    print(f"{cfg.dataset}: {len(train):,} train / {len(val):,} val / {len(test):,} test, {k} labels "
          f"(multi-label)")
    rows = [tfidf_ovr(train, test, k), fasttext_ova(train, val, test, k, args.threads, args.seed)]
    if args.run:
        rows.append(lstmcli_multi(Path(args.run), test, names))
    print("\n| system | test micro-F1 | macro-F1 | subset accuracy | train s | predict, texts/s |\n"
          "|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['system']} | {100 * r['micro_f1']:.2f}% | {100 * r['macro_f1']:.2f}% | "
              f"{100 * r['subset_accuracy']:.2f}% | {r['train_s']:,.1f} | {r['predict_per_s']:,.0f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"data": cfg.dataset, "threads": args.threads, "rows": rows},
                                              indent=2) + "\n")
