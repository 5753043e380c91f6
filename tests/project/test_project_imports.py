"""The import graph of `deos_dsl` and `passes`: named layers, no package cycle, passes that never
import each other. Every import counts, also one inside a function (the CLI loads torch lazily).

Layers, bottom up (a package imports only from layers below it):
errors, files -> frontend, ops, embedded -> data -> compiler -> cost -> passes -> pipeline ->
tasks -> search -> measure -> study -> cli.
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parents[2]
LAYERS = (
    ("deos_dsl", "deos_dsl.errors", "deos_dsl.files"),
    ("deos_dsl.frontend", "deos_dsl.ops", "deos_dsl.embedded"),
    ("deos_dsl.data",),
    ("deos_dsl.compiler",),
    ("deos_dsl.cost",),
    ("deos_dsl.passes",),
    ("deos_dsl.pipeline",),
    ("deos_dsl.tasks",),
    ("deos_dsl.search",),
    ("deos_dsl.measure",),
    ("deos_dsl.study",),
    ("deos_dsl.cli",),
)
RANK = {package: rank for rank, packages in enumerate(LAYERS) for package in packages}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[0] == "passes":  # installed as deos_dsl.passes
        parts = ["deos_dsl", *parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _sources() -> dict[str, Path]:
    files = [*(ROOT / "deos_dsl").rglob("*.py"), *(ROOT / "passes").rglob("*.py")]
    return {_module_name(path): path for path in files}


def _package(module: str) -> str:
    """`deos_dsl.compiler.sites` -> `deos_dsl.compiler`; top-level modules are their own package."""
    return ".".join(module.split(".")[:2])


def _imports(module: str, path: Path, modules: set[str]) -> set[str]:
    """The deos modules `module` imports anywhere in its file (functions and type-only blocks too)."""
    found = set()
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".")[: len(module.split(".")) - node.level + int(is_package)]
                base = ".".join([*parts, *([node.module] if node.module else [])])
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


def _graph() -> tuple[nx.DiGraph, nx.DiGraph]:
    sources = _sources()
    modules, packages = nx.DiGraph(), nx.DiGraph()
    for module, path in sources.items():
        for target in _imports(module, path, set(sources)):
            modules.add_edge(module, target)
            if _package(module) != _package(target) and not module.startswith(f"{_package(target)}."):
                packages.add_edge(_package(module), _package(target))
    return modules, packages


def test_every_package_has_a_layer():
    assert {_package(module) for module in _sources()} == set(RANK)


def test_no_package_cycle():
    _, packages = _graph()
    assert list(nx.simple_cycles(packages)) == []


def test_every_import_goes_down_a_layer():
    _, packages = _graph()
    upward = [(a, b) for a, b in packages.edges if RANK[a] <= RANK[b]]
    assert upward == []


def test_passes_never_import_each_other():
    modules, _ = _graph()
    between = [(a, b) for a, b in modules.edges if a.startswith("deos_dsl.passes.") and b.startswith("deos_dsl.passes")]
    assert between == []


def test_no_type_checking_imports():
    """A type-only import is how a cycle hides; the layers make them unnecessary."""
    assert [module for module, path in _sources().items() if "TYPE_CHECKING" in path.read_text(encoding="utf-8")] == []


def test_the_checker_sees_an_import_inside_a_function(tmp_path: Path):
    path = tmp_path / "probe.py"
    path.write_text("def f():\n    from deos_dsl.cli import main\n    from . import errors\n")
    assert _imports("deos_dsl.probe", path, {"deos_dsl.cli", "deos_dsl.errors", "deos_dsl"}) == {
        "deos_dsl.cli", "deos_dsl.errors", "deos_dsl"}
