"""The package layers of docs/architecture.md: every import inside ``tsn`` points to a lower layer or its own."""

from __future__ import annotations

import ast
from pathlib import Path

TSN = Path(__file__).resolve().parent.parent / "tsn"

# Lowest first; a module may import its own layer and those before it.
LAYERS = [
    {"tsn.errors", "tsn.fileio", "tsn.layout", "tsn.runtime"},
    {"tsn.config", "tsn.checkpoint"},
    {"tsn.io"},
    {"tsn.data"},
    {"tsn.jobs", "tsn.models"},
    {"tsn.build"},
    {"tsn.evaluation"},
    {"tsn.training"},
    {"tsn.apps"},
    {"tsn.measure"},
    {"tsn.cli"},
]


def layer_of(module: str) -> int:
    parts = module.split(".")
    for depth in (2, 1):
        name = ".".join(parts[:depth])
        for index, layer in enumerate(LAYERS):
            if name in layer:
                return index
    raise AssertionError(f"{module}: in no layer of tests/test_architecture.py")


def imported_tsn_modules(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tsn"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("tsn"))
    return found


def test_every_import_points_down() -> None:
    upward = []
    for path in sorted(TSN.rglob("*.py")):
        module = ".".join(path.relative_to(TSN.parent).with_suffix("").parts).removesuffix(".__init__")
        if module == "tsn":
            continue  # the package's __init__ sets the allocator before anything else
        own = layer_of(module)
        for imported in imported_tsn_modules(path):
            if imported != "tsn" and layer_of(imported) > own:
                upward.append(f"{module} imports {imported}")
    assert upward == []


def test_jobs_and_models_do_not_import_each_other() -> None:
    for package, other in (("jobs", "tsn.models"), ("models", "tsn.jobs")):
        for path in (TSN / package).rglob("*.py"):
            assert not any(m.startswith(other) for m in imported_tsn_modules(path)), path
