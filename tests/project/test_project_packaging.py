"""Packaging invariants: every Python package in the tree is installed, under ``deos_dsl`` only."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _config() -> dict:
    with open(ROOT / "pyproject.toml", "rb") as handle:
        return tomllib.load(handle)["tool"]["setuptools"]


def _installed_package_dirs() -> dict[str, Path]:
    """Map each declared package name to the source folder it is built from."""
    config = _config()
    mapping = config["package-dir"]
    dirs = {}
    for package in config["packages"]:
        parent = max((name for name in mapping if package == name or package.startswith(name + ".")), key=len)
        relative = package[len(parent):].lstrip(".").replace(".", "/")
        dirs[package] = ROOT / mapping[parent] / relative
    return dirs


def test_every_declared_package_exists():
    for package, folder in _installed_package_dirs().items():
        assert (folder / "__init__.py").is_file(), f"{package} -> {folder} has no __init__.py"


def test_every_source_package_is_declared():
    """A package folder missing from pyproject would vanish from a non-editable install."""
    declared = {folder.resolve() for folder in _installed_package_dirs().values()}
    roots = [ROOT / "deos_dsl", ROOT / "passes", ROOT / "grammar", ROOT / "spaces"]
    for root in roots:
        for init in root.rglob("__init__.py"):
            assert init.parent.resolve() in declared, f"{init.parent} is not listed in pyproject packages"


def test_everything_installs_under_the_deos_namespace():
    assert all(name == "deos_dsl" or name.startswith("deos_dsl.") for name in _config()["packages"])
