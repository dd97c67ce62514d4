"""inference/predict.py: what `predict` reads, how it truncates, and that no text makes it fail."""

import json
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lstmcli import checkpoint as ckpt
from lstmcli.config import resolve
from lstmcli.data.text import Vocab, basic_english
from lstmcli.inference.predict import Classifier
from lstmcli.runtime.plan import build_model, choose, model_spec

from .conftest import one_line_error as one_line
from .conftest import run


@pytest.fixture(scope="module")
def clf(tmp_path_factory):
    """A checkpoint written directly (no training), so the property test needs no data."""
    folder = tmp_path_factory.mktemp("ck") / "best"
    cfg = resolve(None, {"embedding_dim": 8, "hidden_size": 8, "max_length": 50})
    vocab = Vocab.build([["great", "awful", "film"]])
    torch.manual_seed(0)
    model = build_model(model_spec(cfg.model, len(vocab), 2, choose(cfg.model, torch.device("cpu"))))
    ckpt.save(folder, cfg, vocab, ["neg", "pos"], model, {})
    return Classifier(folder, torch.device("cpu"))


def test_predict_input_handling(trained):
    one_line(run("predict", "--checkpoint", "r/best", "-", input=""), 2, "no texts")
    result = run("predict", "--checkpoint", "r/best", "--json", "-", input=b"caf\xe9 great\n\x00\x1b[31m\n")
    assert result.exit_code == 0 and len(result.stdout.splitlines()) == 2
    # one output per "\n"-ended line, whatever other separators the lines hold; CRLF and a missing
    # final newline are fine
    lines = ["good\x85 fun", "a\u2028b\x0cc\x1dd", "", "bad\r", "last"]
    result = run("predict", "--checkpoint", "r/best", "--json", "-", input="\n".join(lines).encode())
    assert result.exit_code == 0
    assert [json.loads(x)["index"] for x in result.stdout.split("\n") if x] == [0, 1, 2, 3, 4]
    huge = "great superb film " * 600_000  # about 10 MB in one line
    result = run("predict", "--checkpoint", "r/best", "--json", "-", input=huge + "\n")
    assert result.exit_code == 0 and json.loads(result.stdout)["label"] in ("neg", "pos")


def test_predict_truncates_exactly(trained):
    p = Classifier(Path("r/best"), torch.device("cpu"), max_length=5)
    text = "one two three four five six seven " * 200
    assert p.encode(text) == p.ck.vocab.encode(basic_english(text)[:5])
    assert p.encode("x" * 10_000 + " two") == p.ck.vocab.encode(["x" * 10_000, "two"])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(max_size=200) | st.sampled_from(["", " ", "\n", "\x00", "<br />", "🙂" * 50]),
                min_size=1, max_size=8))
def test_predict_never_fails_on_any_text(clf, texts):
    results = clf.predict(texts, top_k=2)
    assert len(results) == len(texts)
    for ranked in results:
        assert [lab for lab, _ in ranked][0] in ("neg", "pos") and 0 <= ranked[0][1] <= 1
