"""The configs shipped with lstmcli, as package data: `--config imdb_best` finds `imdb_best.toml` here
from any folder, and `lstmcli configs` lists them.

Each file's first line is `# NAME: what it is for`. Each one's result lives in results.json here (a
line per config, the one `lstmcli configs` prints); benchmarks/RESULTS.md has the whole tables, and
tests/test_configs.py checks that every figure in results.json is one of RESULTS.md's.
"""

from __future__ import annotations

import json
from pathlib import Path

FOLDER = Path(__file__).parent


def names() -> list[str]:
    """The shipped configs' names, sorted."""
    return sorted(p.stem for p in FOLDER.glob("*.toml"))


def find(config: str | Path) -> Path:
    """The file `config` names: a path that exists, else a shipped config's name (`imdb_best`, or
    `imdb_best.toml`). A name that is neither is returned as given, for the caller's "not found"."""
    path = Path(config)
    if path.is_file() or path.parent != Path("."):  # (a folder named like a shipped config is not one)
        return path
    shipped = FOLDER / f"{path.stem}.toml"
    return shipped if path.suffix in ("", ".toml") and shipped.is_file() else path


def about(path: Path) -> str:
    """A config's one-line description: its first line, `# NAME: description`."""
    first = path.read_text(encoding="utf-8").split("\n", 1)[0]
    return first.lstrip("# ").split(": ", 1)[-1].strip()


def listing() -> list[dict]:
    """Each shipped config: name, path, description and its result ("" where there is none)."""
    results = json.loads((FOLDER / "results.json").read_text(encoding="utf-8"))
    return [{"name": name, "path": str(FOLDER / f"{name}.toml"), "about": about(FOLDER / f"{name}.toml"),
             "result": results.get(name, "")} for name in names()]
