"""Imports run one way: every dgmeta module imports only its own package or lower layers
(docs/ARCHITECTURE.md, "Layers"). Walks every import statement, local imports included."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "dgmeta"

#: unit (top-level module or sub-package of dgmeta) -> layer, lowest first
LAYERS: dict[str, int] = {
    "__init__": 0, "errors": 0, "process": 0,
    "registry": 1, "hparam_spec": 1, "device": 1, "resources": 1, "locks": 1,
    "data": 2, "models": 2, "losses": 2, "tracking": 2,
    "learners": 3, "evaluation": 3,
    "training": 4,
    "meta": 5,
    "hparams": 6,
    "runs": 7,
    "orchestration": 8,
    "cli": 9,
    "__main__": 10,
}


def unit_of(module: str) -> str:
    """``dgmeta.runs.plan`` -> ``runs``; ``dgmeta`` -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_unit(name: str, root: Path = PACKAGE) -> bool:
    return name in LAYERS or (root / name).is_dir() or (root / f"{name}.py").exists()


def imported_modules(path: Path, root: Path = PACKAGE) -> list[tuple[int, str]]:
    """(line, absolute dgmeta module) for every import in ``path``, relative ones resolved."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            # `from dgmeta import locks` imports the unit `locks`; `from dgmeta import __version__` the package
            found += [(node.lineno, f"{target}.{alias.name}" if target == "dgmeta" and is_unit(alias.name, root) else target)
                      for alias in node.names]
    return [(line, module) for line, module in found if module == "dgmeta" or module.startswith("dgmeta.")]


def violations(paths, root: Path = PACKAGE) -> list[str]:
    out = []
    for path in paths:
        source = unit_of(module_name(path, root))
        for line, module in imported_modules(path, root):
            target = unit_of(module)
            if target != source and LAYERS[target] >= LAYERS[source]:
                out.append(f"{path.relative_to(root.parent)}:{line} ({source}, layer {LAYERS[source]}) imports {module} ({target}, layer {LAYERS[target]})")
    return out


def test_every_unit_has_a_layer():
    units = {unit_of(module_name(p)) for p in PACKAGE.rglob("*.py")}
    assert units <= set(LAYERS), f"give these a layer in LAYERS and docs/ARCHITECTURE.md: {sorted(units - set(LAYERS))}"


def test_no_module_imports_a_higher_or_sibling_layer():
    assert violations(sorted(PACKAGE.rglob("*.py"))) == []


@pytest.mark.parametrize("source, line", [
    ("learners/fake.py", "from dgmeta.training.stepper import StageStepper"),
    ("training/fake.py", "def f():\n    from dgmeta.runs import plan"),
    ("meta/fake.py", "from ..runs.plan import resolve_plan"),
    ("data/fake.py", "from dgmeta import hparams"),
])
def test_the_walk_catches_upward_imports(tmp_path, source, line):
    root = tmp_path / "dgmeta"
    path = root / source
    path.parent.mkdir(parents=True)
    path.write_text(line + "\n")
    assert len(violations([path], root)) == 1
    path.write_text("from dgmeta.errors import ConfigError\nfrom . import sibling_module\n")  # lower layer, own package
    assert violations([path], root) == []
