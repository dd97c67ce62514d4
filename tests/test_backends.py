"""`export --quantize int8` and the onnx backend of predict, eval and `lstmcli.load`: what gets int8,
where an export goes, when `auto` runs it (and when it must not: weights changed since, torch-only
options, no onnxruntime), and that its answers are the PyTorch model's."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

import lstmcli
from lstmcli import checkpoint
from lstmcli.inference import backends

from .conftest import TINY, ok, one_line_error, run

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.cpu  # int8 kernels differ by CPU: also run under AVX2 emulation

TEXTS = ["a wonderful, moving film", "dull and far too long", "", "the plot, the acting: superb",
         "worst film ever " * 40]


def ops(path: Path) -> set[str]:
    return {node.op_type for node in onnx.load(str(path)).graph.node}


def answers(*args) -> list[dict]:
    result = ok(run("predict", "--json", "--top-k", "2", *args, *TEXTS))
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_int8_export_goes_into_the_checkpoint_and_predict_auto_runs_it(trained):
    best = trained / "best"
    result = ok(run("export", "-c", trained, "--quantize", "int8", "--json"))
    report = json.loads(result.stdout)
    assert report["model"] == str(best / "model.int8.onnx") and report["quantize"] == "int8"
    assert report["bytes"] == (best / "model.int8.onnx").stat().st_size
    meta = json.loads((best / "model.int8.json").read_text())
    assert meta["quantize"] == "int8" and meta["checkpoint"]["sha256"] == checkpoint.files_digest(best)
    assert "DynamicQuantizeLSTM" in ops(best / "model.int8.onnx")
    assert "LSTM" not in ops(best / "model.int8.onnx")
    assert (best / "model.int8.onnx").stat().st_size < (best / "model.safetensors").stat().st_size / 2
    torch_answers = answers("-c", trained, "--backend", "torch", "--precision", "fp32")
    auto = run("predict", "-c", trained, "a film")
    assert "backend onnx (auto): " + str(best / "model.int8.onnx") in auto.stderr
    int8 = answers("-c", trained)
    for got, want in zip(int8, torch_answers, strict=True):  # int8 rounding, not another model
        mine = {pair["label"]: pair["probability"] for pair in got["top_k"]}
        theirs = {pair["label"]: pair["probability"] for pair in want["top_k"]}
        assert mine == pytest.approx(theirs, abs=0.02)
        if want["probability"] > 0.5 + 0.02:  # a text this near the boundary may go either way
            assert got["label"] == want["label"]
    assert lstmcli.load(trained).backend == "onnx"
    assert lstmcli.load(trained, backend="torch").backend == "torch"


def test_an_fp32_export_answers_as_pytorch_does(trained, tmp_path):
    ok(run("export", "-c", trained))
    assert (trained / "best" / "model.onnx").is_file() and "LSTM" in ops(trained / "best" / "model.onnx")
    onnx_answers = answers("-c", trained, "--backend", "onnx")
    file_answers = answers("-c", trained / "best" / "model.onnx")
    torch_answers = answers("-c", trained, "--backend", "torch", "--precision", "fp32")
    assert onnx_answers == file_answers
    for got, want in zip(onnx_answers, torch_answers, strict=True):
        assert got["label"] == want["label"]
        assert got["probability"] == pytest.approx(want["probability"], abs=1e-5)


def test_an_export_of_earlier_weights_is_never_used(trained):
    best = trained / "best"
    ok(run("export", "-c", trained, "--quantize", "int8"))
    model = lstmcli.load(trained, backend="torch").ck.model
    with torch.no_grad():
        model.head.bias += 1.0  # new weights, as a later epoch or calibrate would write
    checkpoint.update(best, model, {})
    result = ok(run("predict", "-c", trained, "a film"))
    assert "was exported before" in result.stderr and "backend onnx" not in result.stderr
    one_line_error(run("predict", "-c", best, "--backend", "onnx", "a film"), 2, "holds no export of the "
                   "checkpoint as it is now", "--quantize int8")
    assert lstmcli.load(trained).backend == "torch"


def test_an_export_of_other_labels_or_config_is_never_used(trained):
    best = trained / "best"
    ok(run("export", "-c", best, "--quantize", "int8"))
    (best / "labels.json").write_text('["negative", "positive"]')
    result = ok(run("predict", "-c", best, "a film"))
    assert "was exported before" in result.stderr and result.stdout.startswith(("negative", "positive"))
    direct = ok(run("predict", "-c", best / "model.int8.onnx", "a film"))
    assert "exported before the checkpoint beside it changed" in direct.stderr


def test_a_broken_or_foreign_export_json_is_one_line(trained):
    ok(run("export", "-c", trained, "--out", "m.onnx"))
    meta = json.loads(Path("m.json").read_text())
    Path("three.json").write_text(json.dumps({**meta, "labels": ["a", "b", "c"]}))
    Path("deep.json").write_text("[" * 100_000 + "]" * 100_000)
    Path("cut.json").write_text(json.dumps({**meta, "cut": {"max_length": 0, "truncate": "head"}}))
    Path("big.json").write_text(json.dumps({**meta, "vocab": meta["vocab"] + [f"w{i}" for i in range(5000)]}))
    for name in ("three", "deep", "cut", "big"):
        shutil.copy("m.onnx", f"{name}.onnx")
    one_line_error(run("predict", "-c", "three.onnx", "a"), 2, "gives 2 logits, its .json names 3 labels")
    one_line_error(run("predict", "-c", "deep.onnx", "a"), 2, "broken export: deep.json")
    one_line_error(run("predict", "-c", "cut.onnx", "a"), 2, "broken export: cut.json")
    one_line_error(run("predict", "-c", "big.onnx", "w4999"), 2, "onnxruntime failed on big.onnx")
    for out in ("", ".", ".."):
        one_line_error(run("export", "-c", trained, "--out", out), 2, "give a file name")


def test_torch_only_options_and_wrong_pairings(trained, monkeypatch):
    ok(run("export", "-c", trained, "--quantize", "int8"))
    onnx_file = trained / "best" / "model.int8.onnx"
    assert "backend onnx" not in run("predict", "-c", trained, "--precision", "fp32", "a").stderr
    assert "backend onnx" not in run("predict", "-c", trained, "--impl", "builtin", "a").stderr
    one_line_error(run("predict", "-c", trained, "--backend", "onnx", "--impl", "scratch", "a"), 2,
                   "--impl scratch is a torch backend option")
    one_line_error(run("predict", "-c", onnx_file, "--backend", "torch", "a"), 2, "is an exported model")
    one_line_error(run("predict", "-c", onnx_file, "--precision", "fp32", "a"), 2, "drop it")
    shutil.copy(onnx_file, "lonely.onnx")
    one_line_error(run("predict", "-c", "lonely.onnx", "a"), 2, "has no lonely.json beside it")
    Path("bad.onnx").write_bytes(b"not a model")
    shutil.copy(onnx_file.with_suffix(".json"), "bad.json")
    one_line_error(run("predict", "-c", "bad.onnx", "a"), 2, "onnxruntime cannot load bad.onnx")
    monkeypatch.setattr("lstmcli.runtime.onnx_model.onnxruntime_available", lambda: False)
    assert lstmcli.load(trained).backend == "torch"  # auto without onnxruntime: PyTorch, silently


def test_eval_of_the_export_is_reported_beside_the_checkpoints_own(trained):
    ok(run("export", "-c", trained, "--quantize", "int8"))
    own = json.loads(ok(run("eval", "-c", trained, "--json")).stdout)
    int8 = json.loads(ok(run("eval", "-c", trained, "--backend", "onnx", "--json")).stdout)
    assert own["backend"] == "torch" and int8["backend"] == "onnx" and int8["quantize"] == "int8"
    assert int8["files"]["json"].endswith("eval-test.int8.json")
    assert own["files"]["json"].endswith("eval-test.json")
    assert int8["n"] == own["n"] and abs(int8["accuracy"] - own["accuracy"]) <= 0.02


def test_quantizing_leaves_the_root_logger_as_it_was(trained):
    before = list(logging.getLogger().handlers)
    lstmcli.export(trained, "q.onnx", quantize="int8")
    assert logging.getLogger().handlers == before


def test_the_tables_become_8_bit_and_gru_warns(workdir, mirror):
    ok(run("train", "--config", TINY, "--quiet", "--out", "bag", "--ngram-buckets", "64",
           "--ngram-bag", "nbsvm"))
    lstmcli.export("bag", "bag.onnx", quantize="int8")
    vocab = len(json.loads(Path("bag.json").read_text())["vocab"])
    kinds = {tuple(init.dims): init.data_type for init in onnx.load("bag.onnx").graph.initializer}
    eight_bits = (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)
    assert kinds[(vocab + 64, 2)] in eight_bits  # the NBSVM table: (words + buckets, classes)
    assert kinds[(vocab, 32)] in eight_bits  # the word embeddings
    ok(run("train", "--config", TINY, "--quiet", "--out", "gru", "--cell", "gru"))
    result = ok(run("export", "-c", "gru", "--quantize", "int8"))
    assert "no int8 GRU operator" in result.stderr


def test_the_backend_table_is_what_the_flag_offers():
    from lstmcli.cli.options import Backend
    assert [b.value for b in Backend] == list(backends.BACKENDS) == ["auto", "torch", "onnx"]
