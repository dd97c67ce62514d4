"""lstmcli/tuning without training: the [tune] table (choices, ranges, log scales, every error naming its
key), the default space and docs/tuning.md's table of it, a trial's config, --budget's durations, the
database URL's password, and best.toml's TOML read back to the same config."""

import logging
import math
import re
import tomllib
from pathlib import Path

import optuna
import pytest

from lstmcli import configs
from lstmcli.config import Config, apply, from_dict, resolve, to_dict
from lstmcli.errors import ConfigError, LstmcliError
from lstmcli.tuning.outputs import best_toml, toml_value
from lstmcli.tuning.settings import mask_url, new_settings, parse_duration
from lstmcli.tuning.space import Param, default_space, default_space_table, parse_space, trial_config
from lstmcli.tuning.study import PRUNER_STARTUP, TPE_STARTUP
from lstmcli.tuning.trial import FAILS_IN_A_ROW

DOC = Path(__file__).resolve().parents[1] / "docs" / "tuning.md"


def test_choices_and_ranges():
    space = parse_space({"hidden_size": [8, 16], "cell": ["lstm", "gru"], "bidirectional": [True, False],
                         "lr": {"low": 1e-4, "high": 1e-2, "log": True}, "epochs": {"low": 1, "high": 3},
                         "dropout": {"low": 0, "high": 0.5, "step": 0.1}}, "t.toml")
    assert space["hidden_size"] == Param("hidden_size", choices=(8, 16))
    assert space["cell"].choices == ("lstm", "gru")  # enum choices as their values: what TOML and Optuna hold
    assert space["lr"] == Param("lr", low=1e-4, high=1e-2, log=True)
    assert space["epochs"] == Param("epochs", low=1, high=3)
    assert space["dropout"] == Param("dropout", low=0.0, high=0.5, step=0.1)
    assert isinstance(space["dropout"].low, float)  # an int bound of a float field is a float
    assert parse_space({n: p.as_toml() for n, p in space.items()}, "tune.json") == space  # tune.json's form


def test_suggest_gives_the_fields_types_within_the_space():
    space = parse_space({"hidden_size": [8, 16], "lr": {"low": 1e-4, "high": 1e-2, "log": True},
                         "epochs": {"low": 1, "high": 7, "step": 2}, "cell": ["gru"]}, "t.toml")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(5):
        trial = study.ask()
        values = {n: p.suggest(trial) for n, p in space.items()}
        assert values["hidden_size"] in (8, 16) and values["cell"] == "gru"
        assert 1e-4 <= values["lr"] <= 1e-2 and isinstance(values["lr"], float)
        assert values["epochs"] in (1, 3, 5, 7) and isinstance(values["epochs"], int)
        study.tell(trial, 0.5)
        cfg = trial_config(Config(), values, Path("out"), "trial")
        assert cfg.model.hidden_size == values["hidden_size"] and cfg.train.out == "out"


@pytest.mark.parametrize("table,fragment", [
    ({"lr": 0.1}, "config key 'tune.lr': expected a list of choices or a table {low, high, log, step}"),
    ({"hiden_size": [8]}, "unknown config key 'tune.hiden_size'"),
    ({"hidden_size": ["big"]}, "config key 'tune.hidden_size': expected int, got str 'big'"),
    ({"hidden_size": [8, 0]}, "config key 'tune.hidden_size' must be >= 1, got 0"),
    ({"hidden_size": [8, 8]}, "config key 'tune.hidden_size': 8 is listed twice"),
    ({"hidden_size": []}, "config key 'tune.hidden_size': the list of choices is empty"),
    ({"bidirectional": [1]}, "config key 'tune.bidirectional': expected bool, got int 1"),
    ({"cell": ["lstm", "transformer"]}, "config key 'tune.cell': 'transformer' is not one of"),
    ({"cell": {"low": 1, "high": 2}}, "config key 'tune.cell': a range needs a number field"),
    ({"dropout": {"low": 0, "high": 1.5}}, "config key 'tune.dropout.high' must be >= 0 and < 1, got 1.5"),
    ({"epochs": {"low": True, "high": 3}}, "config key 'tune.epochs.low': expected int, got bool True"),
    ({"lr": {"low": 0, "high": 1, "log": True}}, "config key 'tune.lr': a log scale needs low > 0"),
    ({"lr": {"low": 1e-2, "high": 1e-3}}, "config key 'tune.lr': low (0.01) must be below high (0.001)"),
    ({"lr": {"low": 1e-3}}, "config key 'tune.lr': a range needs 'high'"),
    ({"lr": {"low": 1e-3, "high": 1e-2, "lg": True}}, "config key 'tune.lr.lg' is not one of low, high"),
    ({"lr": {"low": 1e-3, "high": 1e-2, "log": "yes"}}, "config key 'tune.lr.log': expected true or false"),
    ({"lr": {"low": 1e-3, "high": 1e-2, "log": True, "step": 1e-3}}, "'tune.lr': a log scale takes no step"),
    ({"epochs": {"low": 1, "high": 4, "step": 2}}, "'tune.epochs': high - low (3) is not a multiple of step"),
    ({"epochs": {"low": 1, "high": 4, "step": 1.5}}, "'tune.epochs.step': expected an int above 0, got 1.5"),
    ({"lr": {"low": 1e-3, "high": math.inf}}, "config key 'tune.lr.high': expected a finite number"),
    ({"dataset": ["a.csv", "b.csv"]}, "config key 'tune.dataset' cannot be tuned: the trials are compared"),
    ({"out": ["a"]}, "config key 'tune.out' cannot be tuned"),
    ({}, "[tune] names no field"),
])
def test_a_bad_space_names_the_key(table, fragment):
    with pytest.raises(ConfigError) as caught:
        parse_space(table, "t.toml")
    assert str(caught.value).startswith("t.toml: ") and fragment in str(caught.value), str(caught.value)


def test_a_tune_table_is_accepted_and_ignored_by_train(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[model]\nhidden_size = 16\n[tune]\nlr = {low = 1e-4, high = 1e-2, log = true}\n')
    assert resolve(path).model.hidden_size == 16 and resolve(path).train.lr == Config().train.lr
    path.write_text("tune = 3\n")
    with pytest.raises(ConfigError, match="'tune' must be a table"):
        resolve(path)
    with pytest.raises(ConfigError,
                       match="unknown section 'tunes' .expected one of data, model, train, pretrain, tune"):
        apply(Config(), {"tunes": {}}, "x")


def test_the_default_space_follows_the_base_config():
    small = default_space(resolve("imdb_small"))
    assert small["hidden_size"].choices == (32, 64, 128) and small["embedding_dim"].choices == (32, 64, 128)
    assert small["max_length"].choices == (128, 200)  # never above the base's 200
    assert small["ngram_buckets"].choices == (0, 2**18)
    assert small["epochs"] == Param("epochs", low=2, high=4)
    assert small["lr"] == Param("lr", low=3e-4, high=1e-2, log=True)
    assert default_space(Config())["max_length"].choices == (128, 256, 512)  # base 2048
    no_limit = apply(Config(), {"data": {"max_length": 0}, "model": {"ngram_buckets": 1000}}, "x")
    assert default_space(no_limit)["max_length"].choices == (128, 256, 512)
    assert default_space(no_limit)["ngram_buckets"].choices == (0, 1000)
    for config in configs.names():  # every value of every shipped config's default space is valid
        base = resolve(config)
        for name, param in default_space(base).items():
            parse_space({name: param.as_toml()}, config)


def test_the_manual_shows_the_default_space_as_the_code_has_it():
    doc = " ".join(DOC.read_text(encoding="utf-8").split())
    table = default_space_table(resolve("imdb_small"), "imdb_small")
    assert table in DOC.read_text(encoding="utf-8"), f"docs/tuning.md should hold:\n{table}"
    for said in (f"its first {TPE_STARTUP} trials are random", f"has {PRUNER_STARTUP} complete trials",
                 f"{FAILS_IN_A_ROW} failed trials in a row"):
        assert said in doc, said


def test_flags_fix_fields_and_leave_the_space(tmp_path, caplog):
    path = tmp_path / "c.toml"
    path.write_text("[tune]\nlr = [0.001, 0.01]\nhidden_size = [8, 16]\n")
    with caplog.at_level(logging.INFO, logger="lstmcli"):
        settings, base = new_settings(str(path), {"lr": 0.003, "out": "x", "epochs": None}, "20m", None,
                                      None, None, None)
    assert settings.space == {"hidden_size": [8, 16]} and settings.fixed == ["lr"]
    assert base.train.lr == 0.003 and settings.config["train"]["out"] == "" and settings.budget == 1200
    assert "--lr fixes lr for every trial: left out of the search space" in caplog.text
    assert settings.sampler_seed == base.train.seed == 0
    with pytest.raises(LstmcliError, match="nothing left to search"):
        new_settings(str(path), {"lr": 0.003, "hidden_size": 8}, "20m", None, None, None, None)
    with pytest.raises(LstmcliError, match="give --budget .e.g. 20m., --trials N, or both"):
        new_settings(str(path), {}, None, None, None, None, None)


def test_an_impossible_combination_is_named_by_its_key():
    base = apply(Config(), {"model": {"impl": "builtin"}}, "x")
    with pytest.raises(ConfigError, match=r"trial 3: config key 'model.peephole': peephole connections need"):
        trial_config(base, {"peephole": True}, Path("o"), "trial 3")


@pytest.mark.parametrize("text,seconds", [("90s", 90), ("20m", 1200), ("1.5h", 5400), ("45", 45),
                                          ("0.5", 0.5), (" 2M ", 120)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text,fragment", [("0", "above 0"), ("0m", "above 0"), ("-5m", "must be above 0"),
                                           ("soon", "not a duration"), ("5 min", "not a duration"),
                                           ("", "not a duration"), ("1e3", "not a duration")])
def test_bad_durations(text, fragment):
    with pytest.raises(LstmcliError, match=re.escape(fragment)):
        parse_duration(text)


def test_a_database_password_is_masked():
    assert mask_url("postgresql://ann:s3cret@db.example:5432/tune") == "postgresql://ann:***@db.example:5432/tune"
    assert mask_url("sqlite:////abs/study.db") == "sqlite:////abs/study.db"
    with pytest.raises(LstmcliError, match="is not a database URL"):
        mask_url("not a url")


def test_best_toml_reads_back_to_the_same_config(tmp_path):
    cfg = apply(Config(), {
        "data": {"dataset": 'we"ird\\path\n\tname\x7f é |.csv', "label_separator": "'"},
        "model": {"dropout": 0.1 + 0.2, "cell": "gru", "bidirectional": True},
        "train": {"lr": 1e-05, "weight_decay": 1.5e-300, "out": "there", "class_weights": "a:1,b:2"}}, "x")
    path = tmp_path / "best.toml"
    path.write_text(best_toml(to_dict(cfg), ["best.toml: a test"]), encoding="utf-8")
    assert tomllib.loads(path.read_text(encoding="utf-8"))["model"]["dropout"] == 0.1 + 0.2
    back = resolve(path)
    assert to_dict(back) == {**to_dict(cfg), "train": {**to_dict(cfg)["train"], "out": ""}}
    assert from_dict(to_dict(back), "x") == back
    assert [toml_value(v) for v in (True, 3, 0.5, "a\"b")] == ["true", "3", "0.5", '"a\\"b"']
