"""`lstmcli export --format onnx`: onnxruntime gives lstmcli's logits for every model shape, any batch of
any lengths (1 included), whatever the padding holds; the JSON beside it is enough to use it."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lstmcli.data.text import basic_english
from lstmcli.exporters.onnx import build_onnx
from lstmcli.models.classifier import TextClassifier
from lstmcli.models.spec import ModelSpec

from .conftest import TINY, ok, one_line_error, run

pytestmark = pytest.mark.cpu  # the outcome depends on the CPU: also run under AVX2 emulation

ort = pytest.importorskip("onnxruntime")
VOCAB = 60

SHAPES = [  # cell, impl, bidirectional, pooling, layers, n-gram buckets, peephole, bag
    ("lstm", "builtin", True, "last", 1, 0, False, "fasttext"),
    ("lstm", "builtin", False, "mean", 2, 0, False, "fasttext"),
    ("lstm", "builtin", True, "max", 1, 16, False, "fasttext"),
    ("gru", "builtin", True, "max", 2, 0, False, "fasttext"),
    ("gru", "builtin", False, "last", 1, 0, False, "fasttext"),
    ("rnn", "builtin", True, "mean", 1, 0, False, "fasttext"),
    ("rnn", "builtin", False, "last", 2, 0, False, "fasttext"),
    ("lstm", "scratch", True, "last", 2, 0, False, "fasttext"),
    ("lstm", "scratch", True, "max", 1, 16, True, "fasttext"),
    ("gru", "scratch", True, "mean", 1, 0, False, "fasttext"),
    ("rnn", "scratch", False, "max", 1, 8, False, "fasttext"),
    ("lstm", "builtin", True, "max", 1, 16, False, "nbsvm"),
    ("gru", "scratch", False, "mean", 2, 64, False, "nbsvm"),
]


def session(model: TextClassifier):
    proto = build_onnx(model, VOCAB)
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])


def padded_batch(gen: torch.Generator, lengths: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    lens = torch.tensor(lengths)
    ids = torch.randint(1, VOCAB, (len(lengths), max(lengths)), generator=gen)
    ids[torch.arange(max(lengths))[None, :] >= lens[:, None]] = 0
    return ids, lens


@pytest.mark.parametrize("cell,impl,bidirectional,pooling,layers,buckets,peephole,bag", SHAPES)
def test_onnx_logits_equal_lstmcli_for_every_shape(cell, impl, bidirectional, pooling, layers, buckets,
                                                    peephole, bag):
    torch.manual_seed(0)
    spec = ModelSpec(vocab_size=VOCAB, num_classes=3, cell=cell, impl=impl, bidirectional=bidirectional,
                     pooling=pooling, num_layers=layers, ngram_buckets=buckets, ngram_dim=8,
                     peephole=peephole, embedding_dim=16, hidden_size=12, ngram_bag=bag)
    model = TextClassifier(spec).eval()
    if bag == "nbsvm":  # counts as if from training texts; the random texts below repeat n-grams
        model.ngrams.set_counts(torch.randint(0, 30, (VOCAB + buckets, 3)).float())
    with torch.no_grad():  # weights of a trained size (not init's +-1/sqrt(H)), so that errors would show
        for p in model.parameters():
            p.mul_(3.0)
        model.branch_weights.copy_(torch.tensor([0.7, 1.9])[: len(model.branch_weights)])  # as calibrated
    sess = session(model)
    gen = torch.Generator().manual_seed(1)
    for lengths in ([1], [5, 1, 3], [17, 16, 9, 4, 2, 1, 1, 13], [40] * 2 + [1] * 3):
        ids, lens = padded_batch(gen, lengths)
        with torch.no_grad():
            expected = model(ids, lens).numpy()
        got = sess.run(["logits"], {"ids": ids.numpy(), "lengths": lens.numpy()})[0]
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() <= 1e-4, (lengths, got, expected)
        # whatever sits past a length is ignored
        junk = ids.clone()
        junk[junk == 0] = 7
        got_junk = sess.run(["logits"], {"ids": junk.numpy(), "lengths": lens.numpy()})[0]
        np.testing.assert_allclose(got_junk, got, rtol=0, atol=1e-6)
        # a text's logits do not depend on the batch it is in, nor on the padded width
        last = {"ids": ids[-1:, : lengths[-1]].numpy(), "lengths": lens[-1:].numpy()}
        alone = sess.run(["logits"], last)[0]
        np.testing.assert_allclose(alone[0], got[-1], rtol=0, atol=1e-5)
    assert abs(expected).max() > 0.1  # (the comparison is not between near-zero numbers)


def test_export_cli_writes_a_model_that_needs_only_its_json(mirror, workdir):
    ok(run("train", "--config", TINY, "--bidirectional", "--pooling", "mean", "--ngram-buckets", 256,
           "--out", "r", "--quiet"))
    result = ok(run("export", "-c", "r/best", "--format", "onnx", "--out", "exported/model.onnx"))
    assert result.stdout.strip() == "exported/model.onnx"
    meta = json.loads(Path("exported/model.json").read_text())
    assert meta["labels"] == ["neg", "pos"] and meta["vocab"][:2] == ["<pad>", "<unk>"]
    assert meta["cut"] == {"max_length": 400, "truncate": "head"}

    def encode(text: str) -> list[int]:  # what a program without lstmcli does with the JSON alone
        text = text.lower()
        for old, new in meta["tokenizer"]["replace"]:
            text = text.replace(old, new)
        index = {t: i for i, t in enumerate(meta["vocab"])}
        ids = [index.get(t, meta["unk_id"]) for t in text.split()][: meta["cut"]["max_length"]]
        return ids or meta["empty_text"]

    texts = ["A wonderful, moving film!", "", "dull", "Boring (very) boring. " * 30,
             "Great acting; great story"]
    import lstmcli
    clf = lstmcli.load("r/best")
    encoded = [encode(t) for t in texts]
    assert encoded == [clf.encode(t) for t in texts]
    assert encoded[0] == clf.ck.vocab.encode(basic_english(texts[0]))
    width = max(map(len, encoded))
    ids = np.array([e + [0] * (width - len(e)) for e in encoded], dtype=np.int64)
    lengths = np.array([len(e) for e in encoded], dtype=np.int64)
    sess = ort.InferenceSession("exported/model.onnx", providers=["CPUExecutionProvider"])
    logits = sess.run(["logits"], {"ids": ids, "lengths": lengths})[0]
    probs = torch.tensor(logits).softmax(-1)
    np.testing.assert_allclose(probs.numpy(), clf.probabilities(texts).numpy(), rtol=0, atol=1e-5)


def test_export_errors_are_one_line(mirror, workdir):
    one_line_error(run("export", "-c", "nowhere"), 2, "no checkpoint at nowhere")
    ok(run("train", "--config", TINY, "--max-length", 0, "--out", "r", "--quiet"))
    one_line_error(run("export", "-c", "r/best", "--out", "m.json"), 2, "another suffix")
    ok(run("export", "-c", "r/best", "--out", "m.onnx"))
    assert json.loads(Path("m.json").read_text())["cut"]["max_length"] == 2048  # what predict cuts at
    result = run("export", "-c", "r/best", "--format", "tflite")
    assert result.exit_code == 2 and "tflite" in result.output


def test_without_the_extra_export_is_one_line(mirror, workdir, monkeypatch):
    ok(run("train", "--config", TINY, "--out", "r", "--quiet"))
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now raises ImportError
    one_line_error(run("export", "-c", "r/best"), 2, "needs the onnx package",
                   "pip install 'lstmcli[export]'")
    assert not Path("model.onnx").exists() and not Path("model.json").exists()


def test_every_kind_of_bag_has_an_onnx_graph():
    from lstmcli.exporters.onnx import BAG_GRAPHS
    from lstmcli.models.spec import BAGS
    assert set(BAG_GRAPHS) == set(BAGS)
