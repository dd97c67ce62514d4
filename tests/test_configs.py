"""Shipped configs are package data: found by name from any folder, listed with what each is for and what
it measured, and every figure they quote is one of benchmarks/RESULTS.md's."""

import json
import re
from pathlib import Path

import pytest

from lstmcli import configs
from lstmcli.config import resolve
from lstmcli.errors import ConfigError

from .conftest import ok, one_line_error, run

RESULTS_MD = Path(__file__).resolve().parents[1] / "benchmarks" / "RESULTS.md"


def test_each_config_names_itself_on_its_first_line():
    for name in configs.names():
        first = (configs.FOLDER / f"{name}.toml").read_text().split("\n", 1)[0]
        assert first.startswith(f"# {name}: ") and len(first) <= 110, first


def test_a_config_is_found_by_name_from_any_folder(workdir):
    assert resolve("imdb_small").data.max_train_examples == 10000
    assert resolve("imdb_small.toml") == resolve("imdb_small")
    Path("imdb_small").mkdir()  # a path that exists wins over a shipped name
    Path("mine.toml").write_text("[train]\nepochs = 7\n")
    assert resolve("mine.toml").train.epochs == 7
    with pytest.raises(ConfigError, match="config file not found: nope.toml .shipped configs, by name: "
                                          "ag_news_best, "):
        resolve("nope.toml")


def test_configs_lists_names_descriptions_and_measured_results():
    text = ok(run("configs")).stdout
    listed = [json.loads(line) for line in ok(run("configs", "--json")).stdout.splitlines()]
    assert [c["name"] for c in listed] == configs.names()
    for c in listed:
        assert c["about"] in text and Path(c["path"]).is_file()
    results = {c["name"]: c["result"] for c in listed}
    assert "84.90%" in results["imdb_small"] and results["tiny"] == ""
    assert f"result: {results['imdb_best']}" in text


def test_every_measured_figure_is_one_of_results_md():
    results = RESULTS_MD.read_text(encoding="utf-8")
    measured = json.loads((configs.FOLDER / "results.json").read_text())
    assert set(measured) <= set(configs.names())
    for name, line in measured.items():
        for figure in re.findall(r"\d+\.\d+%|\d+ min \d+ s|\d+(?:\.\d+)? s\b", line):
            assert figure in results, f"{name}: {figure} is not in benchmarks/RESULTS.md"


def test_an_unknown_config_name_is_one_line(workdir):
    one_line_error(run("train", "--config", "imdb_bset"), 2, "imdb_bset", "imdb_best")


def test_a_folder_named_like_a_shipped_config_does_not_hide_it(workdir):
    Path("tiny").mkdir()
    assert resolve("tiny").train.epochs == 1
    with pytest.raises(ConfigError, match="is a folder"):
        resolve("..")
