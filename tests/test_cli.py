"""The real CLI through Typer's CliRunner: train -> eval -> predict on tiny corpora in both formats."""

import dataclasses
import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lstmcli.cli import app
from lstmcli.runtime import precision

from .conftest import TINY, float32_tolerance, needs_native_bf16, ok, one_line_error, run, write_sums

FAST = ["--epochs", "3", "--max-train-examples", "0", "--max-eval-examples", "0", "--lr", "0.02",
        "--pooling", "max", "--batch-size", "8", "--quiet"]


@pytest.mark.parametrize("dataset,labels", [("ag_news", ["World", "Sports", "Business", "Sci/Tech"]),
                                            ("imdb", ["neg", "pos"])])
def test_train_eval_predict(mirror, workdir, dataset, labels):
    result = ok(run("train", "--config", TINY, "--dataset", dataset, *FAST, "--out", "runs/one"))
    run_dir = Path(result.stdout.strip())
    assert run_dir == Path("runs/one") and (Path("runs/latest").resolve() == run_dir.resolve())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert [h["epoch"] for h in metrics["history"]] == [1, 2, 3]
    assert metrics["test"]["accuracy"] > 0.9  # the tiny corpora are separable by keywords
    assert metrics["data"]["labels"] == labels
    assert json.loads((run_dir / "config.json").read_text())["data"]["dataset"] == dataset
    files = {"model.safetensors", "config.json", "vocab.json", "labels.json", "metrics.json"}
    assert {p.name for p in (run_dir / "best").iterdir()} == files
    assert {p.name for p in (run_dir / "last").iterdir()} == files | {"trainer_state.pt"}

    report = json.loads(ok(run("eval", "--json")).stdout)
    assert report["accuracy"] == pytest.approx(metrics["test"]["accuracy"])
    assert report["n"] == metrics["data"]["test"] and report["labels"] == labels
    assert json.loads((run_dir / "eval-test.json").read_text())["accuracy"] == report["accuracy"]
    table = ok(run("eval", "--split", "val")).stdout
    assert "macro-F1" in table and "confusion" in table and labels[0] in table
    assert ("ROC-AUC" in ok(run("eval")).stdout) == (len(labels) == 2)

    text = {"ag_news": "the coach and the cup match goal", "imdb": "a great wonderful superb film"}[dataset]
    want = {"ag_news": "Sports", "imdb": "pos"}[dataset]
    out = ok(run("predict", text, "--top-k", "2")).stdout.strip().split("\t")
    assert out[0] == want and len(out) == 4 and float(out[1]) >= float(out[3])
    lines = ok(run("predict", "--json", "-", input=f"{text}\n\nanother one\n")).stdout.strip().splitlines()
    objs = [json.loads(line) for line in lines]
    assert [o["index"] for o in objs] == [0, 1, 2] and objs[0]["label"] == want
    assert all(o["label"] in labels and 0 <= o["probability"] <= 1 for o in objs)


def as_if_trained_in_bf16(checkpoint: Path) -> None:
    """A checkpoint trained in bf16 differs from an fp32 one only in its config: weights are float32
    at either precision. This makes one on any CPU."""
    config = json.loads((checkpoint / "config.json").read_text())
    config["model"]["precision"] = "bf16"
    (checkpoint / "config.json").write_text(json.dumps(config))


def test_logs_go_to_stderr_and_quiet_keeps_only_warnings(mirror, workdir, bf16_level):
    loud = ok(run("train", "--config", TINY, "--dataset", "imdb", "--out", "loud"))
    assert loud.stdout == "loud\n"
    lines = loud.stderr.splitlines()
    assert lines[1].startswith("run folder loud; ") and "precision fp32 (as configured)" in lines[1]
    assert lines[2] == ("lstmcli: the validation split has 4 rows (under 100): best/ and early stopping are "
                        "chosen on noise (raise val_fraction or max_eval_examples)")
    assert lines[-3].startswith("epoch 1/1: train loss") and lines[-1].startswith("test accuracy of best/")
    assert lines[-2].startswith("best/ is not calibrated")  # (the tiny val split: 4 negative reviews)
    quiet = ok(run("train", "--config", TINY, "--dataset", "imdb", "--quiet", "--out", "q")).stderr
    assert quiet == lines[2] + "\n"  # warnings only
    bf16_level(precision.UNAVAILABLE)
    as_if_trained_in_bf16(Path("q/best"))
    warned = ok(run("eval", "--checkpoint", "q/best", "--quiet", "--json"))
    assert warned.stderr.startswith("lstmcli: this checkpoint was trained in bf16")
    assert warned.stderr.count("\n") == 1


def test_the_process_flushes_its_output_and_keeps_the_exit_codes(mirror, workdir):
    """`lstmcli` as a process (`python -m lstmcli` runs the same main()) leaves without the interpreter's
    teardown: what it wrote to a pipe arrives whole, and the exit codes stay the commands' own."""
    ok(run("train", "--config", TINY, "--dataset", "imdb", *FAST, "--out", "p"))
    lstmcli = [sys.executable, "-m", "lstmcli", "predict"]
    done = subprocess.run([*lstmcli, "--checkpoint", "p/best", "--json", "-"], capture_output=True, text=True,
                          input="a great wonderful superb film\nanother one\nsomething dull\n")
    assert done.returncode == 0, done.stderr
    objs = [json.loads(line) for line in done.stdout.splitlines()]
    assert [o["index"] for o in objs] == [0, 1, 2] and objs[0]["label"] == "pos"
    bad = subprocess.run([*lstmcli, "--checkpoint", "nowhere", "some text"], capture_output=True, text=True)
    assert (bad.returncode, bad.stdout) == (2, "")
    assert bad.stderr.startswith("lstmcli: error: no checkpoint at nowhere")
    assert len(bad.stderr.splitlines()) == 1
    usage = subprocess.run([*lstmcli, "--no-such-flag"], capture_output=True, text=True)
    assert usage.returncode == 2 and "No such option" in usage.stderr
    # `... | head -1`: ~400 KB of JSON lines, far more than a pipe holds; the reader leaves after one
    proc = subprocess.Popen([*lstmcli, "--checkpoint", "p/best", "--json", "-"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdin.write("a great film\n" * 4000)
    proc.stdin.close()
    assert json.loads(proc.stdout.readline())["index"] == 0
    proc.stdout.close()
    assert proc.wait(timeout=120) == 141 and proc.stderr.read() == ""


LATE_SIGTERM = """
import os, signal, sys
import typer
from lstmcli import cli
from lstmcli.errors import PeerFailed
from lstmcli.exits import user_errors

app = typer.Typer()

@app.command()
@user_errors
def failing() -> None:
    raise PeerFailed("rank 0: another process of this torchrun launch failed")

class KilledOnFlush:  # main() flushes stdout after the command; torchrun's SIGTERM lands right then
    def __init__(self, stream):
        self.stream = stream
    def __getattr__(self, name):
        return getattr(self.stream, name)
    def flush(self):
        os.kill(os.getpid(), signal.SIGTERM)
        self.stream.flush()

cli.app = app
sys.stdout = KilledOnFlush(sys.stdout)
cli.main()
"""


def test_a_sigterm_after_the_command_keeps_its_exit_code_and_prints_nothing_more(workdir):
    """Under torchrun, a rank that failed on its own is sent SIGTERM as the launch ends; landing after the
    command returned, it once raised KeyboardInterrupt in main() and printed a traceback (a CI failure)."""
    done = subprocess.run([sys.executable, "-c", LATE_SIGTERM], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == "lstmcli: error: rank 0: another process of this torchrun launch failed\n"
    # in a program that runs commands in-process, each puts back the SIGTERM handler it found
    before = signal.getsignal(signal.SIGTERM)
    one_line_error(run("train", "--dataset", "imbd"), 2, "unknown dataset 'imbd'")
    assert signal.getsignal(signal.SIGTERM) is before


def test_user_csv_dataset_and_eval_on_a_file(workdir, tmp_path):
    rows = "".join(f'"{"great fun" if i % 2 else "dull mess"} {i}",{"yes" if i % 2 else "no"}\n'
                   for i in range(200))
    data = tmp_path / "reviews.csv"
    data.write_text("text,label\n" + rows)
    ok(run("train", "--config", TINY, "--dataset", data, *FAST, "--out", "r"))
    other = tmp_path / "fresh.csv"
    other.write_text('text,label\n"great fun",yes\n"dull mess",no\n')
    report = json.loads(ok(run("eval", "--checkpoint", "r/best", "--dataset", other, "--json")).stdout)
    assert report["n"] == 2 and report["split"] == "fresh" and report["accuracy"] == 1.0
    other.write_text('text,label\n"great fun",maybe\n')
    one_line_error(run("eval", "--checkpoint", "r/best", "--dataset", other), 2,
                   "'maybe' was not seen in training")


def test_bad_input_is_one_line_and_exit_2(mirror, workdir, tmp_path):
    one_line_error(run("train", "--dataset", "imbd"), 2, "unknown dataset 'imbd'")
    bad = tmp_path / "bad.toml"
    bad.write_text("[model]\nhidden = 3\n")
    one_line_error(run("train", "--config", bad), 2, "model.hidden")
    one_line_error(run("train", "--config", tmp_path / "none.toml"), 2, "not found")
    one_line_error(run("eval", "--checkpoint", tmp_path), 2, "not an lstmcli checkpoint")
    one_line_error(run("predict", "x", "--checkpoint", tmp_path / "nope"), 2, "no checkpoint at")
    (mirror / "ag_news_csv" / "train.csv").write_text('"1","a","b"\n"1","only two"\n')
    write_sums(mirror, ["ag_news_csv/train.csv", "ag_news_csv/test.csv"])
    one_line_error(run("train", "--dataset", "ag_news"), 2, "line 2: malformed AG_NEWS row")


def test_offline_and_nothing_cached(workdir, monkeypatch):
    from lstmcli.data.download import RemoteFile
    from lstmcli.data.registry import IMDB, REGISTRY
    offline = RemoteFile("imdb", "aclImdb_v1.tar.gz", "http://127.0.0.1:9/aclImdb_v1.tar.gz", "0" * 32)
    monkeypatch.setitem(REGISTRY, "imdb", dataclasses.replace(IMDB, files={"archive": offline}))
    one_line_error(run("train", "--dataset", "imdb"), 2, "dataset 'imdb'", "http://127.0.0.1:9/aclImdb_v1.tar.gz",
                   "LSTMCLI_MIRROR")


def test_broken_checkpoint_weights(mirror, workdir):
    ok(run("train", "--config", TINY, "--dataset", "ag_news", "--quiet", "--out", "r"))
    (Path("r/best/model.safetensors")).write_bytes(b"\x80\x04not tensors")
    one_line_error(run("predict", "x", "--checkpoint", "r/best"), 2, "broken checkpoint")


def test_help_lists_every_config_field():
    from lstmcli.config import field_index
    out = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "200"}).stdout
    for name in field_index():
        assert f"--{name.replace('_', '-')}" in out


@pytest.mark.cpu
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_scratch_checkpoints_cross_evaluate(mirror, workdir, cell):
    """Train with one impl, evaluate and predict with the other: identical numbers."""
    trained = {}
    for impl in ("builtin", "scratch"):
        ok(run("train", "--config", TINY, "--dataset", "imdb", *FAST, "--cell", cell, "--impl", impl,
               "--bidirectional", "--out", impl))
        trained[impl] = json.loads(ok(run("eval", "--checkpoint", f"{impl}/best", "--json")).stdout)
        other = "scratch" if impl == "builtin" else "builtin"
        cross = json.loads(ok(run("eval", "--checkpoint", f"{impl}/best", "--json", "--impl", other)).stdout)
        assert cross["impl"] == other and cross["confusion"] == trained[impl]["confusion"]
        # two float32 computations of the same model: tiny.toml's 64 steps x (32 + 32) products per logit
        tol = float32_tolerance(64 * 64, max(1.0, trained[impl]["loss"]))
        assert cross["loss"] == pytest.approx(trained[impl]["loss"], abs=tol)
        texts = "great superb film\nawful dull waste\n"
        a, b = ([json.loads(x) for x in ok(run("predict", "--json", "--checkpoint", f"{impl}/best", *flags,
                                               "-", input=texts)).stdout.splitlines()]
                for flags in ([], ["--impl", other]))
        assert [x["label"] for x in a] == [x["label"] for x in b]
        assert [x["probability"] for x in a] == pytest.approx([x["probability"] for x in b], abs=tol)
    assert trained["scratch"]["accuracy"] > 0.9


def test_an_ngram_bag_trains_evaluates_and_predicts_through_the_cli(mirror, workdir):
    ok(run("train", "--config", TINY, "--dataset", "imdb", *FAST, "--ngram-buckets", 256, "--ngram-dim", 4,
           "--out", "ng"))
    metrics = json.loads(Path("ng/metrics.json").read_text())
    assert metrics["test"]["accuracy"] > 0.9
    saved = json.loads(Path("ng/best/config.json").read_text())["model"]
    assert (saved["ngram_buckets"], saved["ngram_dim"]) == (256, 4)
    report = json.loads(ok(run("eval", "--checkpoint", "ng/best", "--json")).stdout)
    assert report["accuracy"] == metrics["test"]["accuracy"]  # the checkpoint alone rebuilds the bag
    out = ok(run("predict", "--checkpoint", "ng/best", "a great wonderful superb film")).stdout
    assert out.startswith("pos\t")
    one_line_error(run("train", "--config", TINY, "--ngram-dim", 0), 2, "model.ngram_dim")


def test_an_nbsvm_bag_trains_evaluates_and_predicts_from_its_checkpoint_alone(mirror, workdir):
    ok(run("train", "--config", TINY, "--dataset", "imdb", *FAST, "--ngram-buckets", 256,
           "--ngram-bag", "nbsvm", "--out", "nb"))
    metrics = json.loads(Path("nb/metrics.json").read_text())
    assert metrics["test"]["accuracy"] > 0.9
    assert json.loads(Path("nb/best/config.json").read_text())["model"]["ngram_bag"] == "nbsvm"
    report = json.loads(ok(run("eval", "--checkpoint", "nb/best", "--json")).stdout)
    assert report["accuracy"] == metrics["test"]["accuracy"]  # the counts travel in the checkpoint
    out = ok(run("predict", "--checkpoint", "nb/best", "a great wonderful superb film")).stdout
    assert out.startswith("pos\t")
    Path("bad.toml").write_text('[model]\nngram_bag = "tfidf"\n')
    one_line_error(run("train", "--config", "bad.toml"), 2, "model.ngram_bag", "not one of fasttext, nbsvm")


@pytest.mark.cpu
def test_peephole_through_the_cli(mirror, workdir):
    ok(run("train", "--config", TINY, "--dataset", "imdb", *FAST, "--impl", "scratch", "--peephole",
           "--out", "p"))
    report = json.loads(ok(run("eval", "--checkpoint", "p/best", "--json")).stdout)
    assert report["accuracy"] > 0.9
    one_line_error(run("eval", "--checkpoint", "p/best", "--impl", "builtin"), 2, "peephole")




@pytest.mark.cpu
@needs_native_bf16
def test_bf16_precision_through_the_cli(mirror, workdir):
    """Where bf16 is native: a bf16 run trains at it, records it, and eval/predict run it at bf16."""
    result = ok(run("train", "--config", TINY, "--dataset", "imdb", *FAST[:-1], "--precision", "bf16",
                    "--out", "h"))
    assert "precision bf16 (as configured; CPU with" in result.stderr
    assert json.loads(Path("h/best/config.json").read_text())["model"]["precision"] == "bf16"
    assert json.loads(Path("h/metrics.json").read_text())["environment"]["precision"] == "bf16"
    report = json.loads(ok(run("eval", "--checkpoint", "h/best", "--json")).stdout)
    assert report["accuracy"] > 0.9 and report["precision"] == "bf16"
    out = ok(run("predict", "--checkpoint", "h/best", "a great wonderful superb film"))
    assert out.stdout.split("\t")[0] == "pos" and out.stderr == ""
    one_line_error(run("train", "--config", TINY, "--dataset", "imdb", "--impl", "scratch",
                       "--precision", "bf16"), 2, "model.precision", "builtin")


@pytest.mark.cpu
@pytest.mark.parametrize("level", [precision.UNAVAILABLE, precision.NOT_NATIVE])
def test_auto_trains_in_fp32_where_bf16_is_not_native(mirror, workdir, bf16_level, level):
    bf16_level(level)
    result = ok(run("train", "--config", TINY, "--dataset", "imdb", *FAST[:-1], "--precision", "auto",
                    "--out", "a"))
    assert "precision fp32 (auto: CPU (" in result.stderr
    assert json.loads(Path("a/config.json").read_text())["model"]["precision"] == "auto"  # the request
    assert json.loads(Path("a/best/config.json").read_text())["model"]["precision"] == "fp32"  # what ran
    env = json.loads(Path("a/metrics.json").read_text())["environment"]
    assert (env["precision"], env["bf16"]) == ("fp32", level)


@pytest.mark.cpu
def test_bf16_on_a_cpu_without_it(mirror, workdir, bf16_level):
    """An AVX2-only CPU: an explicit bf16 run stops before it starts; a checkpoint trained in bf16
    elsewhere evaluates and predicts in fp32 with one line on stderr, exactly as its fp32 twin does."""
    bf16_level(precision.UNAVAILABLE)
    one_line_error(run("train", "--config", TINY, "--dataset", "imdb", "--precision", "bf16", "--out", "x"),
                   2,
                   "precision bf16 cannot run on this CPU (AVX2)", "use --precision fp32")
    assert not Path("x").exists()
    ok(run("train", "--config", TINY, "--dataset", "imdb", *FAST, "--out", "f"))
    shutil.copytree("f/best", "b16")
    as_if_trained_in_bf16(Path("b16"))
    twin = json.loads(ok(run("eval", "--checkpoint", "f/best", "--json")).stdout)
    result = ok(run("eval", "--checkpoint", "b16", "--json"))
    note = "lstmcli: this checkpoint was trained in bf16; running it in fp32 (CPU (AVX2)"
    assert result.stderr.startswith(note) and len(result.stderr.splitlines()) == 1
    report = json.loads(result.stdout)
    assert report["precision"] == "fp32"
    assert (report["confusion"], report["loss"]) == (twin["confusion"], twin["loss"])
    texts = "a great wonderful superb film\nawful dull waste\n"
    result = ok(run("predict", "--checkpoint", "b16", "--json", "-", input=texts))
    assert result.stderr.startswith(note) and len(result.stderr.splitlines()) == 1
    assert result.stdout == ok(run("predict", "--checkpoint", "f/best", "--json", "-", input=texts)).stdout
    assert ok(run("eval", "--checkpoint", "b16", "--precision", "fp32", "--json")).stderr == ""
    one_line_error(run("eval", "--checkpoint", "b16", "--precision", "bf16"), 2, "use --precision fp32")
    result = ok(run("eval", "--checkpoint", "b16", "--impl", "scratch", "--json"))
    assert "running it in fp32 (impl scratch is float32)" in result.stderr
