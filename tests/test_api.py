"""api.py, the Python API the CLI calls: train, evaluate, load and predict as the CLI does; `import
lstmcli` stays light."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lstmcli
from lstmcli.errors import ConfigError, LstmcliError

from .conftest import TINY, ok, run


def test_the_api_trains_evaluates_and_predicts_as_the_cli_does(mirror, workdir):
    run_dir = lstmcli.train(TINY, epochs=2, out="api_run", bidirectional=True)
    assert run_dir == Path("api_run")
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["train"]["epochs"] == 2 and saved["model"]["bidirectional"] is True
    assert lstmcli.train({"data": {"max_train_examples": 50}, "train": {"epochs": 1}}, out="dict_run",
                         vocab_max_size=500).name == "dict_run"
    assert json.loads(Path("dict_run/metrics.json").read_text())["data"]["train"] == 50

    report = lstmcli.evaluate(run_dir / "best", split="val")
    cli = json.loads(ok(run("eval", "--checkpoint", run_dir / "best", "--split", "val", "--json")).stdout)
    report.pop("device"), cli.pop("device")
    assert report == cli
    assert Path(report["files"]["json"]).is_file() and Path(report["files"]["confusion_png"]).is_file()

    clf = lstmcli.load(run_dir / "best")
    texts = ["a great wonderful superb film", "awful boring dull", ""]
    ranked = clf.predict(texts, top_k=2)
    lines = ok(run("predict", "--checkpoint", run_dir / "best", "--top-k", "2", *texts)).stdout.splitlines()
    assert [f"{a}\t{p:.4f}\t{b}\t{q:.4f}" for (a, p), (b, q) in ranked] == lines
    assert clf.labels == ["neg", "pos"]
    assert clf.encode("") == [1] and clf.encode("great film")[0] == clf.ck.vocab.encode(["great"])[0]
    assert torch.allclose(clf.probabilities(texts).sum(1), torch.ones(3))

    with pytest.raises(ConfigError, match="'train.epochs'"):
        lstmcli.train(TINY, epochs=0)
    with pytest.raises(LstmcliError, match="no checkpoint"):
        lstmcli.load("nowhere")


def test_import_lstmcli_stays_light():
    code = ("import sys, lstmcli; "
            "print('torch' in sys.modules, callable(lstmcli.load), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "True", "False"]  # torch comes with the first model it runs


def test_the_onnx_backend_never_imports_torch(trained, tmp_path):
    pytest.importorskip("onnxruntime")
    ok(run("export", "-c", trained, "--quantize", "int8"))
    for args in (["-c", str(trained)], ["-c", str(trained / "best" / "model.int8.onnx")]):
        result = subprocess.run([sys.executable, "-X", "importtime", "-m", "lstmcli", "predict", *args,
                                 "--top-k", "2", "--threshold", "0.5", "a wonderful film"],
                                capture_output=True, text=True, check=True)
        assert result.stdout.startswith(("pos\t", "neg\t"))
        assert not [line for line in result.stderr.splitlines() if line.endswith("| torch")]


def test_the_api_functions_stay_functions_after_the_subpackages_load():
    """A subpackage named like an API function would replace it on first import (`lstmcli.export` was
    once the exporters' package): every API name is still the function after the CLI and all layers
    load."""
    code = ("import lstmcli, lstmcli.cli, lstmcli.exporters, lstmcli.exporters.onnx, lstmcli.training.fit, "
            "lstmcli.evaluation.evaluate, lstmcli.inference.predict\n"
            "print(all(callable(getattr(lstmcli, n)) and not type(getattr(lstmcli, n)).__name__ == 'module' "
            "for n in lstmcli.__all__))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "True"
