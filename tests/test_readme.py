"""The README's tour runs as written: each command of its first bash block is run from a fresh folder on
the test mirror's tiny IMDB (the ones too slow to run here are parsed by the CLI instead), then its Python
snippet; a command that trains or measures says how long it takes."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.main import get_command

from lstmcli.cli import app

from .conftest import write_imdb_tar, write_sums

README = Path(__file__).resolve().parents[1] / "README.md"
BIN = Path(sys.executable).parent
COMMENT = re.compile(r"\s{2,}#\s.*$")
PARSED_ONLY = ("lstmcli bench", "lstmcli tune")  # minutes of work: checked by the CLI's own parser instead
MAY_FAIL_CHECK = "--fail-under"  # a gate: on the tiny corpus it may well say no (exit 1)


def section(title: str) -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end]


def tour() -> list[tuple[str, str]]:
    """(command, comment) of each line of the tour's bash block."""
    block = section("A tour").split("```bash\n", 1)[1].split("```", 1)[0]
    lines = []
    for line in block.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            comment = COMMENT.search(line)
            lines.append((COMMENT.sub("", line).strip(), comment.group(0).strip() if comment else ""))
    return lines


def parses(command: str) -> None:
    """The command line's parser accepts `command` (options, values, ranges) without running it."""
    args = command.split()[1:]
    group = get_command(app)
    ctx = group.make_context("lstmcli", list(args))
    name, sub, rest = group.resolve_command(ctx, [*ctx._protected_args, *ctx.args])
    sub.make_context(name, rest, parent=ctx)


@pytest.fixture
def imdb_mirror(tmp_path, workdir):
    """A mirror whose IMDB has 300 reviews a class and split: enough for a validation split with both
    labels (calibrate needs them), still seconds to train on."""
    root = tmp_path / "mirror300"
    root.mkdir()
    write_imdb_tar(root / "aclImdb_v1.tar.gz", 300, seed=5)
    write_sums(root, ["aclImdb_v1.tar.gz"])
    return root


def test_the_parse_check_refuses_what_the_cli_refuses():
    parses("lstmcli bench --bidirectional --repeats 2")
    with pytest.raises(Exception, match="No such option"):
        parses("lstmcli bench --no-such-option")
    with pytest.raises(Exception, match="greater than or equal to 1"):
        parses("lstmcli bench --repeats 0")


def test_long_commands_say_how_long_they_take():
    timed = re.compile(r"\bseconds\b|~?\d+(\.\d+)? (s|min)\b")
    for command, comment in tour():
        if command.startswith(("lstmcli train --config imdb", "lstmcli bench")):
            assert timed.search(comment), f"say how long it takes: {command}"


def test_the_tour_runs_as_written(imdb_mirror, tmp_path):
    work = tmp_path / "anywhere"
    work.mkdir()
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "LSTMCLI_MIRROR": str(imdb_mirror),
           "COLUMNS": "120"}
    env.pop("LSTMCLI_DATA_DIR", None)
    ran = 0
    for command, _ in tour():
        if command.startswith(PARSED_ONLY):
            parses(command)
            continue
        done = subprocess.run(["bash", "-c", f"set -o pipefail; {command}"], cwd=work, env=env,
                              capture_output=True, text=True)
        allowed = (0, 1) if MAY_FAIL_CHECK in command else (0,)
        assert done.returncode in allowed, f"{command}\n{done.stderr}"
        assert "Traceback" not in done.stderr, command
        ran += 1
    assert ran >= 15
    assert (work / "scored.jsonl").is_file() and (work / "model.onnx").is_file()


def test_the_python_snippet_runs_as_written(mirror, tmp_path):
    snippet = section("A tour").split("```python\n", 1)[1].split("```", 1)[0]
    done = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "LSTMCLI_MIRROR": str(mirror)})
    assert done.returncode == 0, done.stderr
    assert "epoch 1/1" in done.stderr  # log_to_stderr turned the lines on
