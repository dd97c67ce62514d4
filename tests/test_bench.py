"""`lstmcli bench` (runtime/bench.py): implementations measured by name, its table and JSON report,
each figure's share of the FLOP limit."""

import json
from pathlib import Path

import pytest

from .conftest import ok, one_line_error, run

pytestmark = pytest.mark.cpu  # the outcome depends on the CPU: also run under AVX2 emulation


def test_bench_measures_implementations_by_name():
    from typer.testing import CliRunner

    from lstmcli.cli import app
    result = CliRunner().invoke(app, ["bench", "--impl", "auto"])
    assert result.exit_code == 2 and "--impl builtin --impl scratch" in result.output
    assert isinstance(result.exception, SystemExit)  # one line, no traceback


def test_bench_writes_a_table_and_json(workdir):
    result = ok(run("bench", "--cell", "lstm", "--cell", "gru", "--embedding-dim", 8,
                    "--hidden-size", 8,
                    "--batch-size", 4, "--min-length", 3, "--max-length", 9, "--batches", 2, "--repeats", 2,
                    "--out", "b.json"))
    assert "ratio" in result.stdout and "scratch" in result.stdout
    report = json.loads(Path("b.json").read_text())
    assert set(report["results"]) == {"lstm", "gru"}
    assert report["results"]["lstm"]["scratch"]["train"] > 0 and "ratio" in report["results"]["gru"]
    # FLOP shares: a 1-layer unidirectional LSTM, E = H = 8: 2 x 4 gates x 8 x (8 + 8) FLOPs a token
    lstm = report["results"]["lstm"]
    assert lstm["flops_per_token"] == {"infer": 1024, "train": 3 * 1024}
    assert report["sgemm_flops"] > 1e8  # any CPU multiplies at more than 0.1 GFLOP/s
    # the limit is the highest GEMM rate sampled: once before, then after each of 2 encoders x 2 modes x
    # 2 rounds
    assert len(report["sgemm_samples"]) == 9 and report["sgemm_flops"] == max(report["sgemm_samples"])
    for impl in ("builtin", "scratch"):
        r = lstm[impl]
        assert r["train_share"] == pytest.approx(r["train"] * 3 * 1024 / report["sgemm_flops"])
        assert r["infer_share"] == pytest.approx(r["infer"] * 1024 / report["sgemm_flops"])
    assert "GEMM peak measured in this run" in result.stdout and "share" in result.stdout
    one_line_error(run("bench", "--min-length", 10, "--max-length", 5), 2, "--min-length")


def test_the_old_name_of_cell_warns_and_both_names_are_refused(workdir):
    small = ("--impl", "builtin", "--batches", 1, "--repeats", 1, "--hidden-size", 8, "--embedding-dim", 8,
             "--min-length", 3, "--max-length", 9, "--out", "b.json")
    result = ok(run("bench", "--encoder", "rnn", *small))
    assert "'encoder' is now 'cell' (--cell)" in result.stderr
    assert set(json.loads(Path("b.json").read_text())["results"]) == {"rnn"}
    both = run("bench", "--encoder", "rnn", "--cell", "gru", *small)
    one_line_error(both, 2, "'encoder' and 'cell' are one setting; give 'cell' only")
    assert "--encoder" not in ok(run("bench", "--help")).stdout
