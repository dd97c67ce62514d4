"""checkpoint.py: a checkpoint written before the renames (`encoder` in config.json, the
branch weights stored as `branch_scale`) loads, evaluates and predicts exactly as the same checkpoint
written now; `--encoder` still trains."""

import json
import shutil
from pathlib import Path

from safetensors.torch import load_file, save_file

from .conftest import TINY, ok, run

FAST = ("--val-fraction", 0.3, "--ngram-buckets", 64)


def as_written_before(new: Path, old: Path) -> None:
    """`new` copied to `old` in the earlier format: the cell named `encoder`, `branch_scale` weights."""
    shutil.copytree(new, old)
    config = json.loads((old / "config.json").read_text())
    config["model"] = {("encoder" if k == "cell" else k): v for k, v in config["model"].items()}
    (old / "config.json").write_text(json.dumps(config))
    state = load_file(old / "model.safetensors")
    state["branch_scale"] = state.pop("branch_weights")
    save_file(state, old / "model.safetensors")


def test_a_checkpoint_written_before_the_renames_loads_and_predicts_the_same(mirror, workdir):
    result = ok(run("train", "--config", TINY, *FAST, "--encoder", "gru", "--out", "r"))
    assert "'encoder' is now 'cell' (--cell)" in result.stderr  # the old flag: a warning; it trained a GRU
    assert json.loads(Path("r/config.json").read_text())["model"]["cell"] == "gru"
    as_written_before(Path("r/best"), Path("old"))
    weights = load_file("r/best/model.safetensors")["branch_weights"]
    assert weights.tolist() != [1.0, 1.0]  # calibrated: the old name must carry real weights
    new_eval = json.loads(ok(run("eval", "--checkpoint", "r/best", "--json")).stdout)
    old_eval = json.loads(ok(run("eval", "--checkpoint", "old", "--json")).stdout)
    for key in ("accuracy", "loss", "macro_f1", "per_class", "confusion", "roc_auc"):
        assert old_eval[key] == new_eval[key], key
    texts = ["a fine film", "dull and long", "x"]
    new = ok(run("predict", "--checkpoint", "r/best", "--top-k", 2, *texts))
    old = ok(run("predict", "--checkpoint", "old", "--top-k", 2, *texts))
    assert old.stdout == new.stdout and old.stderr == ""  # loading the old format says nothing


def test_branch_weights_under_both_names_or_not_finite_are_refused(mirror, workdir):
    import torch
    ok(run("train", "--config", TINY, "--val-fraction", 0.3, "--out", "r"))
    for name, change in (("both", lambda s: s.update(branch_scale=s["branch_weights"].clone())),
                         ("nan", lambda s: s.update(branch_weights=torch.tensor([float("nan")])))):
        shutil.copytree("r/best", name)
        state = load_file(f"{name}/model.safetensors")
        change(state)
        save_file(state, f"{name}/model.safetensors")
        result = run("predict", "--checkpoint", name, "a film")
        assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.stderr
        assert ("branch_scale" if name == "both" else "not finite") in result.stderr, result.stderr
