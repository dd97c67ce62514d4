"""The rules of docs/architecture.md that code can check: the layers import downwards only, the models
import torch only, only the command line prints, reading a config loads no torch, every path the doc
names exists, and the README's dataset table lists the registry (tests/test_process.py checks that
importing or loading changes nothing process-wide)."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lstmcli.data.registry import REGISTRY

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lstmcli"
STDLIB_FOR_MODELS = {"__future__", "dataclasses", "math", "typing", "collections"}
# The layers, lowest first. A unit is a folder of lstmcli/ or a module at its root; a unit imports
# from its own folder and from lower layers only. Units in one layer do not import each other.
LAYERS = [
    {"models"},  # torch only
    {"errors"},
    {"progress"},
    {"fsutil"},
    {"configs"},
    {"config"},
    {"data"},
    {"runtime"},
    {"checkpoint"},
    {"evaluation"},
    {"training"},
    {"inference", "exporters", "tuning"},
    {"reports", "exits", "serving"},
    {"api"},
    {"cli"},
    {"__main__", "__init__"},  # the package's entry points
]
RANK = {unit: i for i, layer in enumerate(LAYERS) for unit in layer}


def imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(level, module, names) of every import in a file, also those inside functions; level 0 is
    absolute, 1 a sibling module."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(0, alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.level, node.module or "", [a.name for a in node.names]))
    return found


def unit_of(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def targets(path: Path) -> list[str]:
    """The lstmcli units a file imports (absolute imports: lstmcli's own modules use those, but for the
    models, which import each other relatively)."""
    units = []
    for level, module, names in imports(path):
        if level or not (module == "lstmcli" or module.startswith("lstmcli.")):
            continue
        parts = module.split(".")[1:]
        if parts:
            units.append(parts[0])
        else:  # from lstmcli import x, y
            units += [name for name in names if name != "__version__"]  # the package's own attribute
    return units


UNITS = sorted({unit_of(p) for p in PACKAGE.rglob("*.py")})


def test_every_unit_has_a_layer():
    assert set(UNITS) <= set(RANK), f"not in LAYERS: {set(UNITS) - set(RANK)}"
    assert len([p for p in PACKAGE.glob("*.py")]) <= 10  # the package's root stays small


@pytest.mark.parametrize("unit", UNITS)
def test_each_layer_imports_only_downwards(unit):
    for path in sorted(PACKAGE.rglob("*.py")):
        if unit_of(path) != unit:
            continue
        for target in targets(path):
            where = f"{path.relative_to(ROOT)} ({unit}, layer {RANK[unit]})"
            assert target == unit or RANK[target] < RANK[unit], f"{where} imports {target} ({RANK[target]})"


@pytest.mark.parametrize("path", sorted((PACKAGE / "models").glob("*.py")), ids=lambda p: p.name)
def test_models_import_torch_and_each_other_only(path):
    for level, module, _ in imports(path):
        top = module.split(".")[0]
        assert level == 1 or top == "torch" or top in STDLIB_FOR_MODELS, f"{path.name} imports {module}"


def test_only_the_command_line_prints():
    for path in sorted(PACKAGE.rglob("*.py")):
        if unit_of(path) in ("cli", "exits"):  # the commands, and how their errors end them
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
                assert name not in ("print", "echo"), f"{path.relative_to(ROOT)}:{node.lineno} prints"


def test_evaluation_stands_without_the_training_loop():
    for path in (PACKAGE / "evaluation").glob("*.py"):
        assert "training" not in targets(path), path.name


def test_reading_a_config_loads_no_torch():
    code = "import sys, lstmcli.config; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"


def test_architecture_doc_names_only_paths_that_exist():
    """Every lstmcli/, tests/, benchmarks/ or configs/ path in docs/architecture.md exists, and every
    folder of the package is described there."""
    doc = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    named = set(re.findall(r"`((?:lstmcli|tests|benchmarks|configs|docs)/[\w./-]*)`", doc))
    assert len(named) > 30
    missing = sorted(p for p in named if not (ROOT / p.rstrip("/")).exists())
    assert not missing, f"docs/architecture.md names paths that do not exist: {missing}"
    folders = {f"lstmcli/{p.name}/" for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert folders <= named, f"folders the doc does not describe: {folders - named}"


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
    """matplotlib (drawing), tensorboardX, onnx and optuna (extras) never at a module's top level: a
    command that does not draw, log events, export or tune neither pays for them nor needs them
    installed."""
    heavy = {"matplotlib", "tensorboardX", "onnx", "onnxruntime", "optuna"}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            for name in names:
                assert name.split(".")[0] not in heavy, f"{path.relative_to(ROOT)} imports {name} at the top"
