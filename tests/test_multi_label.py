"""Multi-label classification: label sets read from files, the sigmoid head and its loss, the NBSVM bag's
one-vs-rest counts, the metrics (checked against scikit-learn's), per-label thresholds fitted on val,
and the whole path through the real CLI: train, eval, predict, table scoring, export, the onnx backend,
calibrate and plot; and the seeded `ag_news_pairs` dataset."""

import csv
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score, hamming_loss, precision_recall_fscore_support

from lstmcli.config import resolve
from lstmcli.data import pairs
from lstmcli.data.readers import read_user_file
from lstmcli.data.splits import load_splits
from lstmcli.errors import DatasetError
from lstmcli.evaluation.metrics import best_f1_threshold
from lstmcli.evaluation.multilabel import fit_thresholds, label_counts, report_from_counts
from lstmcli.models.loss import classification_loss, correct
from lstmcli.models.ngrams import NbsvmBag, distinct_ngram_ids
from lstmcli.training.class_weights import resolve as resolve_weights

from .conftest import TINY, ok, one_line_error, run

TOPICS = {"sport": ["goal", "match", "coach", "cup"], "politics": ["vote", "senate", "law", "party"],
          "tech": ["chip", "robot", "code", "cloud"]}
FILLER = ["the", "a", "of", "and", "to", "in", "it", "is"]


def write_multi_csv(path: Path, n: int, seed: int, empty: bool = True) -> list[tuple[str, ...]]:
    """A CSV of `n` texts with 0-2 topics each ('sport|tech'); its label sets."""
    rng, sets = random.Random(seed), []
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        for _ in range(n):
            labels = rng.sample(sorted(TOPICS), rng.choice([1, 1, 2, 0] if empty else [1, 2]))
            words = [w for t in labels for w in rng.sample(TOPICS[t], 3)] + rng.sample(FILLER, 5)
            rng.shuffle(words)
            writer.writerow([" ".join(words), "|".join(labels)])
            sets.append(tuple(labels))
    return sets


# --- reading label sets -------------------------------------------------------------------------------

def test_a_label_cell_splits_at_the_separator_and_a_jsonl_list_is_a_set(tmp_path):
    f = tmp_path / "d.csv"
    f.write_text("text,label\nx,a|b\ny,b\nz,a| b |a\n")
    assert read_user_file(f, "text", "label", "|")[1] == [("a", "b"), "b", ("a", "b")]
    assert read_user_file(f, "text", "label", "")[1] == ["a|b", "b", "a| b |a"]  # no separator: one name
    j = tmp_path / "d.jsonl"
    j.write_text('{"text": "x", "label": ["a", 3]}\n{"text": "y", "label": "b"}\n'
                 '{"text": "z", "label": []}\n')
    assert read_user_file(j, "text", "label", "|", multi_label=True)[1] == [("a", "3"), "b", ()]
    with pytest.raises(DatasetError, match="line 3: no label .*multi_label = true"):
        read_user_file(j, "text", "label", "|")
    with pytest.raises(DatasetError, match="line 1: label is a JSON object"):
        j.write_text('{"text": "x", "label": [{"a": 1}]}\n')
        read_user_file(j, "text", "label", "|")


def test_an_empty_label_is_a_text_without_labels_only_in_a_multi_label_run(tmp_path):
    f = tmp_path / "d.csv"
    f.write_text("text,label\nx,a|b\ny,\n")
    assert read_user_file(f, "text", "label", "|", multi_label=True)[1] == [("a", "b"), ()]
    with pytest.raises(DatasetError, match="line 3: label is empty .*multi_label = true"):
        read_user_file(f, "text", "label", "|")


def test_label_sets_make_the_splits_multi_label_with_sorted_ids(tmp_path):
    f = tmp_path / "d.csv"
    write_multi_csv(f, 60, seed=0, empty=False)
    names, splits = load_splits(resolve(flags={"dataset": str(f), "data_dir": str(tmp_path)}).data)
    assert names == ["politics", "sport", "tech"]
    assert all(s.multi_label for s in splits.values())
    assert all(list(ys) == sorted(set(ys)) for s in splits.values() for ys in s.labels)
    single = tmp_path / "s.csv"
    single.write_text("text,label\n" + "".join(f"t{i},{'ab'[i % 2]}\n" for i in range(20)))
    _, plain = load_splits(resolve(flags={"dataset": str(single), "data_dir": str(tmp_path)}).data)
    assert not plain["train"].multi_label and isinstance(plain["train"].labels[0], int)


# --- loss, bag, weights -------------------------------------------------------------------------------

def test_the_loss_is_each_texts_summed_binary_cross_entropy():
    torch.manual_seed(0)
    logits, y = torch.randn(5, 3), torch.randint(0, 2, (5, 3), dtype=torch.uint8)
    w = torch.tensor([1.0, 2.0, 0.5])
    p = logits.sigmoid().double()
    each = -(w.double() * y * p.log() + (1 - y) * (1 - p).log())  # pos_weight scales the positive term
    assert classification_loss(logits, y, w).item() == pytest.approx(float(each.sum(1).mean()), rel=1e-6)
    assert classification_loss(logits, y, w, "sum").item() == pytest.approx(float(each.sum()), rel=1e-6)
    exact = torch.tensor([[3.0, -1.0, 2.0]])
    assert correct(exact, torch.tensor([[1, 0, 1]], dtype=torch.uint8)) == 1
    assert correct(exact, torch.tensor([[1, 0, 0]], dtype=torch.uint8)) == 0


def test_balanced_weights_of_a_multi_label_split_are_positive_weights():
    assert resolve_weights("balanced", ["a", "b", "c"], [10, 40, 0], 50) == [4.0, 0.25, 1.0]
    assert resolve_weights("b:3", ["a", "b"], [1, 1], 5) == [1.0, 3.0]


def test_a_multi_label_nbsvm_bag_counts_the_rest_as_texts_without_the_label():
    """Its ratios read q = texts holding g without label c; given the batch's labels, each text is left
    out of its own counts: exactly the bag counted on the other texts."""
    V, B, C = 12, 7, 3
    rng = torch.Generator().manual_seed(0)
    ids = torch.randint(2, V, (6, 5), generator=rng)
    lengths = torch.tensor([5, 4, 5, 3, 2, 5])
    labels = torch.tensor([[1, 0, 1], [0, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 1], [1, 0, 0]],
                          dtype=torch.uint8)

    def counted(rows):
        grams = distinct_ngram_ids(ids[rows], lengths[rows], V, B)
        counts, texts = torch.zeros(V + B, C), torch.zeros(V + B)
        for r, g in zip(rows, grams, strict=True):
            g = g[g != 0]
            counts[g] += labels[r].float()
            texts[g] += 1
        bag = NbsvmBag(V, B, C, multi_label=True)
        bag.set_counts(counts, texts)
        return bag

    full = counted(list(range(6)))
    q = full.texts[:, None] - full.counts
    assert torch.equal(full._rest(full.counts, full.texts), q)
    with torch.no_grad():
        left_out = full(ids, lengths, labels)
        for i in range(6):
            alone = counted([r for r in range(6) if r != i])
            alone.weight.weight.copy_(full.weight.weight)
            alone.norms.copy_(full.norms)  # (norms come from the whole split, as in training)
            assert torch.allclose(left_out[i], alone(ids[i:i + 1], lengths[i:i + 1])[0], atol=1e-5)


# --- metrics against scikit-learn ---------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(5))
def test_metrics_equal_scikit_learns_on_random_label_sets(seed):
    rng = np.random.default_rng(seed)
    n, k = int(rng.integers(1, 60)), int(rng.integers(2, 7))
    y = (rng.random((n, k)) < rng.random(k)).astype(np.uint8)
    probs = rng.random((n, k)).astype(np.float32)
    t = rng.random(k).astype(np.float32)
    names = [f"l{i}" for i in range(k)]
    chunks = np.array_split(np.arange(n), 3)  # counts add up over batches
    counts = sum(label_counts(torch.from_numpy(probs[c]), torch.from_numpy(y[c]), torch.from_numpy(t))
                 for c in chunks)
    r = report_from_counts(counts, n, names, torch.from_numpy(t))
    pred = (probs >= t).astype(np.uint8)
    assert r["micro_f1"] == pytest.approx(f1_score(y, pred, average="micro", zero_division=0))
    assert r["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro", zero_division=0))
    assert r["accuracy"] == r["subset_accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert r["hamming_loss"] == pytest.approx(hamming_loss(y, pred))
    p, rc, f, s = precision_recall_fscore_support(y, pred, average=None, zero_division=0)
    for i, name in enumerate(names):
        got = r["per_class"][name]
        assert (got["precision"], got["recall"], got["f1"]) == pytest.approx((p[i], rc[i], f[i]))
        assert got["support"] == s[i]


def test_fitted_thresholds_are_each_labels_f1_best_cut_at_a_midpoint():
    rng = np.random.default_rng(7)
    y = (rng.random((80, 3)) < 0.4).astype(np.uint8)
    y[:, 2] = 0  # a label no text has: no threshold
    probs = np.clip(y * 0.3 + rng.random((80, 3)) * 0.7, 0, 1).astype(np.float32)
    fitted = fit_thresholds(torch.from_numpy(probs), torch.from_numpy(y), ["a", "b", "c"])
    assert fitted["c"] is None
    for c, name in enumerate("ab"):
        best = max(f1_score(y[:, c], probs[:, c] >= cut) for cut in np.unique(probs[:, c]))
        assert fitted[name]["f1"] == pytest.approx(best)
        assert f1_score(y[:, c], probs[:, c] >= np.float32(fitted[name]["threshold"])) == pytest.approx(best)
        cut = best_f1_threshold(torch.from_numpy(probs[:, c]), torch.from_numpy(y[:, c]).long())
        lower = probs[:, c][probs[:, c] < np.float32(cut["threshold"])].max()
        assert fitted[name]["threshold"] == pytest.approx((cut["threshold"] + float(lower)) / 2)
        assert fitted[name]["f1"] == cut["f1"]  # the same decisions as the cut at the lower score


# --- the CLI, end to end ------------------------------------------------------------------------------

@pytest.fixture
def multi_run(workdir):
    """A tiny multi-label run `m` trained through the CLI on a CSV with texts of 0-2 labels."""
    write_multi_csv(Path("multi.csv"), 300, seed=1)
    ok(run("train", "--config", TINY, "--dataset", "multi.csv", "--multi-label", "--epochs", "3",
           "--ngram-buckets", "500", "--ngram-bag", "nbsvm", "--max-eval-examples", "0",
           "--val-fraction", "0.2", "--quiet", "--out", "m"))
    return Path("m")


def test_a_run_found_multi_label_says_so_and_records_it(workdir):
    write_multi_csv(Path("sets.csv"), 120, seed=2, empty=False)
    result = ok(run("train", "--config", TINY, "--dataset", "sets.csv", "--out", "r"))
    line = next(x for x in result.stderr.splitlines() if x.startswith("multi-label: "))
    assert "training texts have several labels; one sigmoid per label" in line
    for config in ("r/config.json", "r/best/config.json"):
        assert json.loads(Path(config).read_text())["data"]["multi_label"] is True
    metrics = json.loads(Path("r/metrics.json").read_text())
    assert "val_micro_f1" in metrics["history"][0] and metrics["test"]["multi_label"] is True
    assert Path("r/label_f1.png").is_file() and not Path("r/confusion_matrix.png").exists()


def test_thresholds_are_fitted_on_val_and_used_by_eval_and_predict(multi_run):
    best = json.loads((multi_run / "best" / "metrics.json").read_text())
    thresholds = best["thresholds"]
    assert sorted(thresholds) == ["politics", "sport", "tech"]
    assert best["thresholds_fitted"]["split"] == "val"
    report = json.loads(ok(run("eval", "-c", multi_run, "--json")).stdout)
    assert report["thresholds"] == pytest.approx(thresholds)
    for key in ("micro_f1", "macro_f1", "subset_accuracy", "hamming_loss", "per_class", "fitted_thresholds"):
        assert key in report
    metrics = json.loads((multi_run / "metrics.json").read_text())
    assert report["micro_f1"] == metrics["test"]["micro_f1"]  # test was decided at the fitted thresholds
    texts = ["goal match vote senate", "the a of and", "chip robot code"]
    lines = ok(run("predict", "-c", multi_run, *texts)).stdout.splitlines()
    assert len(lines) == 3  # a line per text, an empty one for a text with no label over its threshold
    probs = json.loads(ok(run("predict", "-c", multi_run, "--json", "--threshold", "0", *texts)).stdout
                       .splitlines()[0])["labels"]
    assert len(probs) == 3 and [p["probability"] for p in probs] == sorted(
        (p["probability"] for p in probs), reverse=True)
    by_label = {p["label"]: p["probability"] for p in probs}
    want = [(lab, p) for lab, p in sorted(by_label.items(), key=lambda kv: -kv[1]) if p >= thresholds[lab]]
    got = json.loads(ok(run("predict", "-c", multi_run, "--json", texts[0])).stdout)["labels"]
    assert [g["label"] for g in got] == [lab for lab, _ in want]
    assert [g["probability"] for g in got] == pytest.approx([p for _, p in want])
    capped = json.loads(ok(run("predict", "-c", multi_run, "--json", "--threshold", "0", "--top-k", "1",
                               texts[0])).stdout)
    assert [c["label"] for c in capped["labels"]] == [probs[0]["label"]]
    none = json.loads(ok(run("predict", "-c", multi_run, "--json", "--threshold", "1", texts[1])).stdout)
    assert none == {"index": 0, "labels": []}


def test_the_model_learns_the_label_sets(multi_run):
    report = json.loads(ok(run("eval", "-c", multi_run, "--json", "--split", "test")).stdout)
    assert report["micro_f1"] > 0.9, report  # three topics of four keywords each: an easy task
    # every label decided at 0.9999: most labels missed, and the gate says so
    gate = run("eval", "-c", multi_run, "-q", "--threshold", "0.9999", "--fail-under", "0.9",
               "--metric", "micro_f1")
    one_line_error(gate, 1, "micro_f1", "below --fail-under 0.9")


def test_tables_come_back_with_the_predicted_label_sets(multi_run):
    Path("in.csv").write_text("id,text\n1,goal match vote senate\n2,chip robot\n")
    ok(run("predict", "-c", multi_run, "-i", "in.csv", "-o", "out.csv", "--threshold", "0.0"))
    rows = list(csv.DictReader(Path("out.csv").read_text().splitlines()))
    assert [r["id"] for r in rows] == ["1", "2"]
    assert len(rows[0]["predicted_labels"].split("|")) == 3
    assert len(rows[0]["predicted_probabilities"].split("|")) == 3
    Path("in.jsonl").write_text('{"text": "goal match", "k": 1}\n')
    ok(run("predict", "-c", multi_run, "-i", "in.jsonl", "-o", "out.jsonl"))
    row = json.loads(Path("out.jsonl").read_text())
    assert row["k"] == 1 and isinstance(row["predicted_labels"], list)


def test_an_export_carries_the_thresholds_and_predicts_as_torch(multi_run):
    pytest.importorskip("onnxruntime")
    ok(run("export", "-c", multi_run))
    meta = json.loads((multi_run / "best" / "model.json").read_text())
    best = json.loads((multi_run / "best" / "metrics.json").read_text())
    assert meta["multi_label"] is True and meta["thresholds"] == best["thresholds"]
    assert "sigmoid" in meta["outputs"]["logits"]
    texts = ["goal match vote senate", "chip robot code cloud", "the a of"]
    a = [json.loads(x) for x in ok(run("predict", "-c", multi_run, "--json", "--threshold", "0", "--backend",
                                       "torch", *texts)).stdout.splitlines()]
    b = [json.loads(x) for x in ok(run("predict", "-c", multi_run, "--json", "--threshold", "0", "--backend",
                                       "onnx", *texts)).stdout.splitlines()]
    for x, y in zip(a, b, strict=True):
        assert [p["label"] for p in x["labels"]] == [p["label"] for p in y["labels"]]
        expected = [p["probability"] for p in y["labels"]]
        assert [p["probability"] for p in x["labels"]] == pytest.approx(expected, abs=1e-5)


def test_calibrate_fits_the_thresholds_again_and_plot_draws_label_f1(multi_run):
    before = json.loads((multi_run / "best" / "metrics.json").read_text())["thresholds"]
    report = json.loads(ok(run("calibrate", "-c", multi_run, "--json")).stdout)
    after = json.loads((multi_run / "best" / "metrics.json").read_text())
    assert after["thresholds"] == report["label_thresholds"]["thresholds"]
    assert sorted(after["thresholds"]) == sorted(before)
    (multi_run / "label_f1.png").unlink()
    ok(run("plot", multi_run))
    assert (multi_run / "label_f1.png").is_file()


def test_a_single_label_model_refuses_label_sets(trained):
    Path("sets.csv").write_text("text,label\ngreat film,pos|neg\n")
    one_line_error(run("eval", "-c", trained / "best", "--dataset", "sets.csv"), 2, "single-label")
    gate = run("eval", "-c", trained / "best", "-q", "--metric", "micro_f1", "--fail-under", "0.5")
    one_line_error(gate, 2, "multi-label model's")


# --- ag_news_pairs ------------------------------------------------------------------------------------

def test_ag_news_pairs_is_seeded_disjoint_and_mixes_one_and_two_labels(mirror, workdir):
    cfg = resolve(flags={"dataset": "ag_news_pairs"}).data
    names, splits = load_splits(cfg)
    assert names == ["World", "Sports", "Business", "Sci/Tech"]
    again = load_splits(cfg)[1]
    assert all(splits[s].texts == again[s].texts and splits[s].labels == again[s].labels for s in splits)
    sizes = {len(ys) for s in splits.values() for ys in s.labels}
    assert sizes == {1, 2}
    from lstmcli.data.readers import read_ag_csv
    rows = read_ag_csv(mirror / "ag_news_csv" / "test.csv", names)
    dealt = pairs.deal(len(rows[0]), random.Random(pairs.PAIRS_SEED))
    assert sorted(i for part in dealt.values() for i in part) == list(range(len(rows[0])))
    articles = {s: {rows[0][i] for i in dealt[s]} for s in dealt}
    for s, split in splits.items():  # every text is made of its own split's articles
        assert all(any(text.startswith(a) for a in articles[s]) for text in split.texts)
    ok(run("train", "--config", TINY, "--dataset", "ag_news_pairs", "--quiet", "--out", "p"))
    assert json.loads(Path("p/metrics.json").read_text())["test"]["multi_label"] is True


# --- resume and DDP work unchanged --------------------------------------------------------------------

PAIRS = ["--config", TINY, "--dataset", "ag_news_pairs", "--epochs", "2", "--batch-size", "3",
         "--ngram-buckets", "64", "--ngram-bag", "nbsvm", "--class-weights", "balanced", "--log-every", "1"]


def test_a_multi_label_run_stopped_mid_epoch_resumes_exactly(mirror, workdir):
    import signal

    from .test_resume import finished, lstmcli, same_run
    code, _, err = finished(lstmcli("train", *PAIRS, "--out", "ref"))
    assert code == 0, err
    proc = lstmcli("train", *PAIRS, "--out", "run")
    for line in proc.stderr:
        if line.startswith("epoch 2 step 3/"):
            proc.send_signal(signal.SIGINT)
            break
    code, _, err = finished(proc)
    assert code == 130, err
    code, _, err = finished(lstmcli("train", "--resume", "run"))
    assert code == 0, err
    same_run(Path("ref"), Path("run"))


def test_two_processes_train_a_multi_label_model_as_one_does(mirror, workdir):
    from .test_distributed import finished, torchrun, weights
    args = [*PAIRS, "--impl", "builtin", "--dropout", "0"]
    ok(run("train", *args, "--quiet", "--out", "one"))
    code, _, err = finished(torchrun(*args, "--out", "two"))
    assert code == 0, err
    m1, m2 = (json.loads(Path(d, "metrics.json").read_text()) for d in ("one", "two"))
    for h1, h2 in zip(m1["history"], m2["history"], strict=True):
        assert (h1["train_accuracy"], h1["val_micro_f1"]) == (h2["train_accuracy"], h2["val_micro_f1"])
        assert h2["train_loss"] == pytest.approx(h1["train_loss"], rel=1e-4)
    assert m1["test"]["per_class"] == m2["test"]["per_class"]
    assert m2["thresholds"]["thresholds"] == pytest.approx(m1["thresholds"]["thresholds"], abs=1e-5)
    one, two = weights(Path("one")), weights(Path("two"))
    assert all(torch.allclose(one[k], two[k], atol=1e-4) for k in one)


def test_label_sets_too_large_to_hold_are_refused_before_they_are_made(monkeypatch):
    from lstmcli.data import encode
    from lstmcli.data.splits import RawSplit
    monkeypatch.setattr(encode, "MAX_LABEL_CELLS", 11)
    split = RawSplit(["a", "b", "c", "d"], [(0,), (0, 1), (), (1,)], multi_label=True)
    assert encode.label_tensor(split, 2).shape == (4, 2)
    with pytest.raises(DatasetError, match="4 texts x 3 labels is over 11"):
        encode.label_tensor(split, 3)


def test_broken_thresholds_and_metrics_are_one_line(multi_run):
    metrics = multi_run / "best" / "metrics.json"
    saved = metrics.read_text()
    for broken in ('{"thresholds": {"sport": ' + "9" * 400 + '}}', "[1, 2]"):
        metrics.write_text(broken)
        one_line_error(run("predict", "-c", multi_run / "best", "goal"), 2, "broken checkpoint")
    metrics.write_text(saved)


def test_label_names_that_only_look_like_numbers_sort_as_text(tmp_path):
    from lstmcli.data.splits import natural_sorted
    assert natural_sorted({"10", "-2", "3"}) == ["-2", "3", "10"]
    assert natural_sorted({"²", "1", "--1"}) == sorted({"²", "1", "--1"})
