"""config.py: defaults, then a TOML file, then flags; unknown keys and wrong types named; renamed keys;
the choices the model tables offer."""

import json
from pathlib import Path

import pytest

from lstmcli.config import Cell, Config, Pooling, from_dict, resolve, to_dict
from lstmcli.errors import ConfigError

from .conftest import TINY, ok, one_line_error, run


def write(tmp_path, text):
    path = tmp_path / "run.toml"
    path.write_text(text)
    return path


def test_defaults_then_file_then_flags(tmp_path, monkeypatch):
    monkeypatch.setenv("LSTMCLI_DATA_DIR", "/env/data")
    path = write(tmp_path, '[model]\ncell = "gru"\nhidden_size = 32\n[train]\nlr = 1\n')
    cfg = resolve(path, {"hidden_size": 16, "epochs": None, "bidirectional": True})
    assert cfg.model.cell is Cell.gru  # from the file
    assert cfg.model.hidden_size == 16  # the flag wins over the file
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)  # ints are accepted for floats
    assert cfg.train.epochs == Config().train.epochs  # None = flag not given
    assert cfg.model.bidirectional is True
    assert cfg.data.data_dir == "/env/data"


def test_file_overrides_env_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("LSTMCLI_DATA_DIR", "/env/data")
    assert resolve(write(tmp_path, '[data]\ndata_dir = "d"\n')).data.data_dir == "d"


@pytest.mark.parametrize("text,key", [
    ("[model]\nhiden_size = 3\n", "model.hiden_size"),
    ("[modle]\nhidden_size = 3\n", "modle"),
    ("[train]\nhidden_size = 3\n", "train.hidden_size"),  # a real key in the wrong section
    ('[model]\nhidden_size = "big"\n', "model.hidden_size"),
    ("[model]\nbidirectional = 1\n", "model.bidirectional"),
    ("[train]\nepochs = true\n", "train.epochs"),
    ("[train]\nepochs = 2.5\n", "train.epochs"),
    ('[model]\ncell = "transformer"\n', "model.cell"),
])
def test_bad_keys_and_types_name_the_key(tmp_path, text, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        resolve(write(tmp_path, text))


def test_enum_error_lists_choices(tmp_path):
    with pytest.raises(ConfigError, match="lstm, gru, rnn"):
        resolve(write(tmp_path, '[model]\ncell = "cnn"\n'))


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        resolve(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        resolve(write(tmp_path, "[model\n"))


def test_dict_round_trip_is_plain_json():
    cfg = resolve(None, {"pooling": Pooling.max, "cell": "rnn"})
    data = json.loads(json.dumps(to_dict(cfg)))
    assert data["model"]["pooling"] == "max"
    assert from_dict(data, "x") == cfg


def test_shipped_configs_load():
    from pathlib import Path
    for path in sorted((Path(__file__).parents[1] / "configs").glob("*.toml")):
        resolve(path)


@pytest.mark.parametrize("flags,key", [
    ({"val_fraction": 1.0}, "data.val_fraction"),
    ({"batch_size": 0}, "train.batch_size"),
    ({"dropout": -0.1}, "model.dropout"),
    ({"num_layers": 0}, "model.num_layers"),
    ({"peephole": True, "impl": "builtin"}, "model.peephole"),
    ({"peephole": True, "impl": "scratch", "cell": "gru"}, "model.peephole"),
])
def test_out_of_range_values_name_the_key(flags, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        resolve(None, flags)


def test_peephole_with_scratch_lstm_is_valid():
    cfg = resolve(None, {"peephole": True, "impl": "scratch"})
    assert cfg.model.peephole and cfg.model.impl.value == "scratch"


@pytest.mark.hostile
@pytest.mark.parametrize("flag,value,fragment", [
    ("--lr", "nan", "'train.lr': expected a finite number, got nan"),
    ("--lr", "inf", "'train.lr': expected a finite number, got inf"),
    ("--dropout", "nan", "'model.dropout': expected a finite number"),
    ("--val-fraction", "nan", "'data.val_fraction': expected a finite number"),
    ("--seed", "99999999999999999999", "'train.seed': 99999999999999999999 is outside the 64-bit"),
    ("--seed", "-1", "'train.seed' must be >= 0"),
    ("--split-seed", "-5", "'data.split_seed' must be >= 0"),
    ("--threads", "100000", "'train.threads' must be >= 0 and <= 1024"),
    ("--hidden-size", "-3", "'model.hidden_size' must be >= 1"),
    ("--num-layers", "100000", "'model.num_layers' must be >= 1 and <= 1024"),
    ("--batch-size", str(2**63 - 1), "'train.batch_size' must be >= 1 and <= 2147483647"),
])
def test_bad_numbers_on_the_command_line_are_one_line(workdir, flag, value, fragment):
    one_line_error(run("train", flag, value, "--out", "r"), 2, fragment)
    assert not Path("r").exists()


@pytest.mark.hostile
@pytest.mark.parametrize("text,fragment", [
    ("[train]\nlr = nan\n", "'train.lr': expected a finite number, got nan"),
    ("[model]\ndropout = inf\n", "'model.dropout': expected a finite number, got inf"),
    ("[train]\nweight_decay = -inf\n", "'train.weight_decay': expected a finite number"),
])
def test_bad_numbers_in_a_config_file_are_one_line(workdir, tmp_path, text, fragment):
    one_line_error(run("train", "--config", write(tmp_path, text)), 2, fragment)


@pytest.mark.hostile
@pytest.mark.parametrize("value", ["nan", "1.5", "-0.1", "inf"])
def test_fail_under_is_a_number_in_0_1(workdir, value):
    one_line_error(run("eval", "--checkpoint", "nowhere", "--fail-under", value), 2,
                   f"--fail-under must be a number in [0, 1], got {float(value)}")


@pytest.mark.hostile
def test_a_nan_threshold_is_refused(mirror, workdir):
    ok(run("train", "--config", TINY, "--dataset", "imdb", "--out", "r", "--quiet"))
    for command in (["eval", "--checkpoint", "r/best"], ["predict", "--checkpoint", "r/best", "a film"]):
        one_line_error(run(*command, "--threshold", "nan"), 2, "--threshold must be a probability in [0, 1]")


def test_the_old_name_of_a_renamed_key_still_works_with_a_warning(tmp_path, caplog):
    """`encoder` became `cell`: a config file, a flag or an API keyword with the old name still works,
    with one warning; both names at once is an error naming them."""
    path = write(tmp_path, '[model]\nencoder = "gru"\n')
    with caplog.at_level("WARNING", logger="lstmcli"):
        assert resolve(path).model.cell is Cell.gru
        assert resolve(None, {"encoder": "rnn"}).model.cell is Cell.rnn
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 2 and "'model.encoder' is now 'model.cell'" in said[0]
    assert "'encoder' is now 'cell' (--cell)" in said[1]
    with pytest.raises(ConfigError, match="'encoder' and 'cell' are one setting"):
        resolve(None, {"encoder": "rnn", "cell": "gru"})
    with pytest.raises(ConfigError, match="'model.encoder' and 'model.cell'"):
        resolve(write(tmp_path, '[model]\nencoder = "gru"\ncell = "lstm"\n'))
    caplog.clear()
    assert from_dict({"model": {"encoder": "gru"}}, "config.json").model.cell is Cell.gru  # a checkpoint's
    assert not caplog.records  # silently


def test_the_config_offers_the_model_tables_choices():
    """The config's choices are the models' tables (cells.py, spec.py), nothing else."""
    from lstmcli.config import Impl, NgramBag, Precision
    from lstmcli.models.cells import CELLS
    from lstmcli.models.spec import BAGS, IMPLS, PRECISIONS
    assert [c.value for c in Cell] == list(CELLS)
    assert [i.value for i in Impl] == ["auto", *IMPLS]
    assert [b.value for b in NgramBag] == list(BAGS)
    assert [p.value for p in Precision] == ["auto", *PRECISIONS]
