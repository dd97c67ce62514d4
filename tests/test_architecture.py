"""The rules of docs/architecture.md that code can check: what the models import, who prints, what a
config costs to read, and the README's dataset table against the registry."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from lstmcli.registry import REGISTRY

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lstmcli"
STDLIB_FOR_MODELS = {"__future__", "dataclasses", "math", "typing", "collections"}


def imports(path: Path) -> list[tuple[int, str]]:
    """(level, module) of every import in a file; level 0 is absolute, 1 a sibling module."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(0, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.level, node.module or ""))
    return found


@pytest.mark.parametrize("path", sorted((PACKAGE / "models").glob("*.py")), ids=lambda p: p.name)
def test_models_import_torch_and_each_other_only(path):
    for level, module in imports(path):
        top = module.split(".")[0]
        assert level == 1 or top == "torch" or top in STDLIB_FOR_MODELS, f"{path.name} imports {module}"


def test_only_the_command_line_prints():
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name in ("cli.py", "exits.py"):  # the commands, and how their errors end them
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
                assert name not in ("print", "echo"), f"{path.relative_to(ROOT)}:{node.lineno} prints"


def test_evaluation_stands_without_the_training_loop():
    assert all(module.split(".")[-1] != "training" for _, module in imports(PACKAGE / "evaluation.py"))


def test_reading_a_config_loads_no_torch():
    code = "import sys, lstmcli.config; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"


def test_readme_lists_the_registry():
    """One row per built-in dataset, with its label names and every upstream URL."""
    rows = {line.split("|")[1].strip(" `"): line for line in (ROOT / "README.md").read_text().splitlines()
            if line.startswith("| `") and line.count("|") == 5}
    builtin = {name for name, row in rows.items() if "http" in row}
    assert builtin == set(REGISTRY)
    for name, ds in REGISTRY.items():
        cells = [c.strip() for c in rows[name].split("|")]
        assert cells[2] == ", ".join(ds.label_names)
        assert all(f.url in cells[4] for f in ds.files.values())


def test_optional_and_heavy_packages_are_imported_only_where_used():
    """matplotlib (drawing), tensorboardX and onnx (extras) never at a module's top level: a command that
    does not draw, log events or export neither pays for them nor needs them installed."""
    heavy = {"matplotlib", "tensorboardX", "onnx", "onnxruntime"}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            for name in names:
                assert name.split(".")[0] not in heavy, f"{path.relative_to(ROOT)} imports {name} at the top"
